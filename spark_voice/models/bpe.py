"""Byte-level BPE (GPT-2 style) vocabulary helpers shared by the model converters and fixtures.

Byte-level BPE vocabularies (GPT-2, whisper, tiktoken / o200k) write every byte as a printable
unicode character so that a token is a plain string; :func:`bytes_to_unicode` is that table and
:func:`unicode_to_bytes` its inverse. Imports nothing else of spark_voice.
"""

from __future__ import annotations

__all__ = ["bytes_to_unicode", "unicode_to_bytes"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte -> printable unicode char table (same as tiktoken / HF)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def unicode_to_bytes() -> dict[str, int]:
    """Inverse of :func:`bytes_to_unicode` (BPE vocab strings -> raw bytes)."""
    return {c: b for b, c in bytes_to_unicode().items()}
