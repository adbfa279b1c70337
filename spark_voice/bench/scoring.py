"""Transcript scoring shared by the benchmarks and the tests: WER on English words, CER on Japanese
characters after normalisation (NFKC, kanji digits -> digits, no punctuation or spaces)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["cer", "edit_distance", "norm_ja", "wer", "words"]

_KANJI_DIGITS = str.maketrans("〇一二三四五六七八九", "0123456789")


def edit_distance(ref: Sequence[object], hyp: Sequence[object]) -> int:
    """Levenshtein distance between two sequences (words or characters)."""
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def wer(ref: str, hyp: str) -> float:
    """Word error rate on lower-case words."""
    r = words(ref)
    return edit_distance(r, words(hyp)) / max(1, len(r))


def norm_ja(text: str) -> str:
    """NFKC (full/half width), kanji digits -> digits, no punctuation or spaces."""
    t = unicodedata.normalize("NFKC", text).translate(_KANJI_DIGITS)
    return "".join(ch for ch in t if not (unicodedata.category(ch)[0] in "PZS" or ch.isspace()))


def cer(ref: str, hyp: str) -> float:
    """Character error rate after :func:`norm_ja`."""
    r = norm_ja(ref)
    return edit_distance(r, norm_ja(hyp)) / max(1, len(r))
