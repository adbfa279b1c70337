"""Cheap inspection of model files: what a file is, without loading an engine.

* GGUF (llama.cpp: llm, embedding): header and metadata (general.architecture, general.name,
  general.file_type -> quantisation, context length, pooling), tensor count and tensor types.
  Token arrays are skipped, tensor data is never read: a 12 GB gpt-oss-20b is inspected in
  milliseconds.
* whisper.cpp ggml (stt): magic 0x67676d6c and the eleven int32 hparams -> model size (tiny ...
  large-v3, turbo), multilingual or English-only (n_vocab >= 51865), weight type.
* TTS checkpoint folder (Fish Speech / OpenAudio S1 mini): the files the engine needs.

``validate(role, path)`` raises :class:`spark_voice.errors.ConfigError` saying why a file cannot
serve a role; ``describe(role, path)`` gives a dict for `models list/verify` and `doctor`.
No third-party dependency (the ``gguf`` package is not needed at run time).

Length: the three binary formats are parsed here side by side because `validate` and `describe`
treat them alike; each parser is short and self-contained.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError, ModelNotFound
from ..types import ROLES
from .ggml import GGML_MAGIC  # whisper.cpp legacy ggml file ("lmgg" on disk)

GGUF_MAGIC = b"GGUF"

# llama.h llama_ftype
LLAMA_FTYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
    24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
    31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
    41: "Q2_0",
}
# ggml.h ggml_type
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
    25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
    39: "MXFP4", 40: "NVFP4", 41: "Q1_0", 42: "Q2_0",
}
# whisper.cpp hparams ftype (% 1000; the thousands are the quantisation version)
WHISPER_FTYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
                  10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K"}

# llama.cpp architectures that make sentence embeddings (encoders) - never a chat LLM
EMBEDDING_ARCHS = frozenset({
    "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2", "jina-bert-v3",
    "eurobert", "t5encoder", "gemma-embedding", "llama-embed", "pangu-embedded-embed",
})
# architectures that are not text models at all (vision projectors, audio codecs)
NON_TEXT_ARCHS = frozenset({"clip", "wavtokenizer-dec", "whisper", "mmproj"})

WHISPER_HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
                   "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")
# (n_audio_layer, n_audio_state) -> size name
WHISPER_SIZES = {(4, 384): "tiny", (6, 512): "base", (12, 768): "small", (24, 1024): "medium",
                 (32, 1280): "large"}

TTS_REQUIRED_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth")


@dataclass
class ModelInfo:
    """What a model file is. ``kind``: gguf | whisper-ggml | tts-checkpoint | onnx-voices."""

    path: str
    kind: str
    size_bytes: int
    architecture: str = ""
    name: str = ""
    quantization: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size_human(self) -> str:
        return human_size(self.size_bytes)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = self.size_human
        return d

    def summary(self) -> str:
        bits = [b for b in (self.architecture, self.name, self.quantization) if b]
        return f"{self.size_human}" + (f", {', '.join(bits)}" if bits else "")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------ GGUF
class _Reader:
    def __init__(self, f: BinaryIO, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ConfigError(f"{self.path}: truncated GGUF file (header ends early)")
        return b

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > 1 << 24:
            raise ConfigError(f"{self.path}: corrupt GGUF file (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self.f.seek(n, io.SEEK_CUR)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _value(r: _Reader, typ: int, keep_array: bool) -> Any:
    if typ in _SCALARS:
        fmt = _SCALARS[typ]
        return struct.unpack(fmt, r.read(struct.calcsize(fmt)))[0]
    if typ == 8:
        return r.string()
    if typ == 9:
        item_type, n = r.u32(), r.u64()
        if item_type in _SCALARS:
            size = struct.calcsize(_SCALARS[item_type])
            if not keep_array:
                r.skip(size * n)
                return {"array": GGUF_VALUE_TYPES.get(item_type, str(item_type)), "len": n}
            return [_value(r, item_type, False) for _ in range(n)]
        if item_type == 8:
            if not keep_array:
                for _ in range(n):
                    r.skip(r.u64())
                return {"array": "string", "len": n}
            return [r.string() for _ in range(n)]
        if item_type == 9:
            return [_value(r, 9, False) for _ in range(n)]
        raise ConfigError(f"{r.path}: corrupt GGUF file (array of unknown type {item_type})")
    raise ConfigError(f"{r.path}: corrupt GGUF file (metadata value of unknown type {typ})")


GGUF_VALUE_TYPES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
                    7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def read_gguf(path: str | Path, *, tensors: bool = True) -> dict[str, Any]:
    """GGUF header: ``{"version", "n_tensors", "metadata": {key: value}, "tensor_types": {type: count}}``.

    Large arrays (token lists, merges) are summarised as ``{"array": type, "len": n}``; small arrays
    (under 64 items) are kept. Tensor data is never read."""
    path = Path(path)
    with open(path, "rb") as raw:
        f = io.BufferedReader(raw, buffer_size=1 << 20)
        r = _Reader(f, path)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ConfigError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        version = r.u32()
        if version not in (2, 3):
            raise ConfigError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_kv > 1_000_000 or n_tensors > 10_000_000:
            raise ConfigError(f"{path}: corrupt GGUF header ({n_kv} metadata keys, {n_tensors} tensors)")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            typ = r.u32()
            if typ == 9:
                pos = f.tell()
                item_type, n = r.u32(), r.u64()
                f.seek(pos)
                meta[key] = _value(r, typ, keep_array=n < 64 and item_type != 9)
            else:
                meta[key] = _value(r, typ, keep_array=False)
        types: dict[str, int] = {}
        n_params = 0
        if tensors:
            for _ in range(n_tensors):
                r.skip(r.u64())  # name
                n_dims = r.u32()
                if n_dims > 8:
                    raise ConfigError(f"{path}: corrupt GGUF tensor info ({n_dims} dimensions)")
                dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
                ttype = r.u32()
                r.skip(8)  # offset
                name = GGML_TYPES.get(ttype, f"type{ttype}")
                types[name] = types.get(name, 0) + 1
                count = 1
                for d in dims:
                    count *= d
                n_params += count
    return {"version": version, "n_tensors": n_tensors, "metadata": meta, "tensor_types": types,
            "n_params": n_params}


def inspect_gguf(path: str | Path) -> ModelInfo:
    path = Path(path)
    h = read_gguf(path)
    meta = h["metadata"]
    arch = str(meta.get("general.architecture", ""))
    ftype = meta.get("general.file_type")
    if isinstance(ftype, int):
        quant = LLAMA_FTYPES.get(ftype, f"ftype {ftype}")
    else:  # no file type recorded: the most common non-f32 tensor type
        big = {k: v for k, v in h["tensor_types"].items() if k != "F32"} or h["tensor_types"]
        quant = max(big, key=lambda k: big[k]) if big else ""
    details: dict[str, Any] = {"gguf_version": h["version"], "n_tensors": h["n_tensors"],
                               "n_params": h["n_params"], "tensor_types": h["tensor_types"]}
    for key in ("context_length", "embedding_length", "block_count", "pooling_type", "expert_count"):
        if f"{arch}.{key}" in meta:
            details[key] = meta[f"{arch}.{key}"]
    if "tokenizer.ggml.model" in meta:
        details["tokenizer"] = meta["tokenizer.ggml.model"]
    details["chat_template"] = "tokenizer.chat_template" in meta
    return ModelInfo(path=str(path), kind="gguf", size_bytes=path.stat().st_size, architecture=arch,
                     name=str(meta.get("general.name", "")), quantization=quant, details=details)


# ------------------------------------------------------------------------------------ whisper.cpp
def read_whisper_hparams(path: str | Path) -> dict[str, int]:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4 + 4 * len(WHISPER_HPARAMS))
    if len(head) < 4:
        raise ConfigError(f"{path}: empty or truncated file, not a whisper.cpp model")
    magic = struct.unpack("<I", head[:4])[0]
    if magic != GGML_MAGIC:
        hint = " (this is a GGUF file: an LLM or embedding model?)" if head[:4] == GGUF_MAGIC else ""
        raise ConfigError(f"{path}: not a whisper.cpp ggml model (magic 0x{magic:08x}, expected "
                          f"0x{GGML_MAGIC:08x}){hint}")
    if len(head) < 4 + 4 * len(WHISPER_HPARAMS):
        raise ConfigError(f"{path}: truncated whisper.cpp model (header ends early)")
    values = struct.unpack(f"<{len(WHISPER_HPARAMS)}i", head[4:])
    hp = dict(zip(WHISPER_HPARAMS, values, strict=True))
    if not (0 < hp["n_vocab"] < 1_000_000 and 0 < hp["n_audio_state"] <= 8192 and 0 < hp["n_audio_layer"] <= 128
            and 0 < hp["n_text_layer"] <= 128 and hp["n_mels"] in (80, 128)):
        raise ConfigError(f"{path}: implausible whisper.cpp hparams {hp} (corrupt file?)")
    return hp


def whisper_size_name(hp: dict[str, int]) -> str:
    base = WHISPER_SIZES.get((hp["n_audio_layer"], hp["n_audio_state"]), "")
    if not base:
        return f"custom ({hp['n_audio_layer']} layers x {hp['n_audio_state']})"
    if base == "large":
        if hp["n_text_layer"] == 4:
            return "large-v3-turbo"
        return "large-v3" if hp["n_mels"] == 128 else "large"
    return base if hp["n_vocab"] >= 51865 else f"{base}.en"


def inspect_whisper(path: str | Path) -> ModelInfo:
    path = Path(path)
    hp = read_whisper_hparams(path)
    multilingual = hp["n_vocab"] >= 51865
    ftype = hp["ftype"] % 1000
    quant = WHISPER_FTYPES.get(ftype, f"ftype {ftype}")
    size = path.stat().st_size
    details: dict[str, Any] = {"hparams": hp, "multilingual": multilingual,
                               "languages": "99 languages" if multilingual else "English only"}
    return ModelInfo(path=str(path), kind="whisper-ggml", size_bytes=size, architecture="whisper",
                     name=whisper_size_name(hp), quantization=quant, details=details)


# ------------------------------------------------------------------------------------ TTS
def inspect_tts_checkpoint(path: str | Path) -> ModelInfo:
    path = Path(path)
    if not path.is_dir():
        kind = "a file" if path.exists() else "missing"
        raise ConfigError(f"{path}: a TTS checkpoint is a folder ({kind}); it must hold "
                          f"{', '.join(TTS_REQUIRED_FILES)}")
    missing = [n for n in TTS_REQUIRED_FILES if not (path / n).is_file()]
    if missing:
        raise ConfigError(f"{path}: not a Fish Speech / OpenAudio checkpoint: missing {', '.join(missing)} "
                          f"(needs {', '.join(TTS_REQUIRED_FILES)})")
    empty = [n for n in TTS_REQUIRED_FILES if (path / n).stat().st_size == 0]
    if empty:
        raise ConfigError(f"{path}: empty file(s) {', '.join(empty)} (interrupted download?)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}/config.json: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}/config.json: expected a JSON object")
    details = {k: config[k] for k in ("model_type", "dim", "n_layer", "n_head", "vocab_size",
                                      "num_codebooks", "max_seq_len") if k in config}
    return ModelInfo(path=str(path), kind="tts-checkpoint", size_bytes=_dir_size(path),
                     architecture=str(config.get("model_type", "fish-speech")), name=path.name,
                     quantization=_dtype_of(config), details=details)


def _dtype_of(config: dict) -> str:
    for key in ("torch_dtype", "dtype"):
        if isinstance(config.get(key), str):
            return config[key]
    return ""


def inspect_onnx_voices(path: str | Path) -> ModelInfo:
    """A folder of onnxruntime voices (kokoro, piper): at least one .onnx file."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: voice folder missing")
    onnx = sorted(p.name for p in path.rglob("*.onnx"))
    if not onnx:
        raise ConfigError(f"{path}: no .onnx voice model inside")
    return ModelInfo(path=str(path), kind="onnx-voices", size_bytes=_dir_size(path), name=path.name,
                     details={"onnx": onnx})


# ------------------------------------------------------------------------------------ roles
def inspect_file(path: str | Path) -> ModelInfo:
    """Identify a model file by its content (GGUF, whisper ggml, TTS checkpoint folder)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file or folder")
    if path.is_dir():
        if any((path / n).exists() for n in TTS_REQUIRED_FILES):
            return inspect_tts_checkpoint(path)
        return inspect_onnx_voices(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return inspect_gguf(path)
    if len(head) == 4 and struct.unpack("<I", head)[0] == GGML_MAGIC:
        return inspect_whisper(path)
    raise ConfigError(f"{path}: unknown model format (neither GGUF nor whisper.cpp ggml)")


def is_embedding_gguf(info: ModelInfo) -> bool:
    """An encoder architecture, or a GGUF declaring mean/cls/last pooling (e.g. Qwen3-Embedding)."""
    return info.architecture in EMBEDDING_ARCHS or info.details.get("pooling_type") in (1, 2, 3)


def validate(role: str, path: str | Path) -> ModelInfo:
    """Check that ``path`` can serve ``role``; returns its :class:`ModelInfo`.

    llm: a GGUF of a causal text architecture with a tokenizer (gpt-oss, llama, qwen2, ...);
    embedding: a GGUF of an embedding architecture (bert, nomic-bert, ...) or any GGUF that declares
    a pooling type; stt: a whisper.cpp ggml model; tts: a Fish Speech / OpenAudio checkpoint folder.
    Raises ConfigError (wrong kind of file) or ModelNotFound (missing)."""
    if role not in ROLES:
        raise ConfigError(f"unknown model role {role!r}; accepted values: {', '.join(ROLES)}")
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"{path}: no such {'folder' if role == 'tts' else 'file'}")
    if role == "tts":
        return inspect_tts_checkpoint(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; the {role} model is a single file")
    if role == "stt":
        return inspect_whisper(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        what = " (this is a whisper.cpp model: role stt?)" if (
            len(head) == 4 and struct.unpack("<I", head)[0] == GGML_MAGIC) else ""
        raise ConfigError(f"{path}: not a GGUF file{what}; the {role} model must be a llama.cpp GGUF")
    info = inspect_gguf(path)
    arch = info.architecture
    if not arch:
        raise ConfigError(f"{path}: GGUF without general.architecture")
    if arch in NON_TEXT_ARCHS:
        raise ConfigError(f"{path}: architecture {arch!r} is not a text model (a projector or codec file)")
    if "tokenizer" not in info.details:
        raise ConfigError(f"{path}: GGUF has no tokenizer (tokenizer.ggml.model); llama.cpp cannot load it")
    embedding = is_embedding_gguf(info)
    if role == "llm" and embedding:
        raise ConfigError(f"{path}: architecture {arch!r} is an embedding model, not a chat LLM "
                          f"(use it with `models use embedding`)")
    if role == "embedding" and not embedding:
        raise ConfigError(f"{path}: architecture {arch!r} is a causal LLM without a pooling type, not an "
                          f"embedding model (expected one of: {', '.join(sorted(EMBEDDING_ARCHS))})")
    return info


def describe(role: str, path: str | Path) -> dict[str, Any]:
    """A JSON-able report: ``{"role", "path", "exists", "ok", "error", "info"}``."""
    path = Path(path)
    out: dict[str, Any] = {"role": role, "path": str(path), "exists": path.exists(), "ok": False,
                           "error": None, "info": None}
    try:
        info = validate(role, path)
    except (ConfigError, ModelNotFound, OSError) as exc:
        out["error"] = str(exc)
        return out
    out["ok"] = True
    out["info"] = info.as_dict()
    return out
