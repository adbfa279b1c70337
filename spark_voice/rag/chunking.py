"""Japanese-aware text splitter for RAG ingestion.

:func:`split_text` cuts a document into chunks of at most ``size`` characters that end, in order of
preference, at a paragraph break (blank line), a sentence end (。！？!?… ．｡, a newline, or an English
full stop that is not an abbreviation such as "Dr." or "e.g."), a clause mark (、，,;；:：), a space,
or — for unbroken text — exactly ``size`` characters. Each chunk is greedy: it takes as many whole
sentences as fit. The next chunk starts up to ``overlap`` characters before the previous end, at the
earliest sentence (else clause, else word) boundary inside that window, so the overlap repeats whole
sentences whenever they are short enough.

Offsets are character offsets into the text given (Python ``str`` indices, after any decoding):
``text[c.start:c.end] == c.text`` for every chunk. Leading and trailing whitespace is not part of a
chunk. The punctuation tables come from :mod:`spark_voice.text` (the TTS sentence chunker), so
both splitters agree on what a sentence end is.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from ..errors import ConfigError
from ..text import _ABBREV, CLAUSE_MARKS, CLOSERS, SENTENCE_END

# sentence ends beyond the TTS chunker's set: full-width/half-width ideographic full stops
_SENT_END = (set(SENTENCE_END) | set("．｡‼⁇⁈⁉")) - {"\n"}
_CLAUSE = set(CLAUSE_MARKS) | set("､")
_CLOSE = set(CLOSERS) | set("〕〉》」』］｝")

# boundary levels, strongest first
PARAGRAPH, SENTENCE, CLAUSE, SPACE = 4, 3, 2, 1


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: ``text == document[start:end]``."""

    text: str
    start: int
    end: int


def _boundaries(text: str) -> dict[int, list[int]]:
    """Sorted cut positions (a cut at i splits text[:i] | text[i:]) per level."""
    levels: dict[int, int] = {}

    def mark(pos: int, level: int) -> None:
        if 0 < pos < len(text) and levels.get(pos, 0) < level:
            levels[pos] = level

    n = len(text)
    for m in re.finditer(r"\n[ \t\u3000]*\n\s*", text):  # blank line(s): paragraph
        mark(m.end(), PARAGRAPH)
        mark(m.start(), PARAGRAPH)
    for m in re.finditer(r"\n", text):
        mark(m.end(), SENTENCE)
    for i, ch in enumerate(text):
        if ch in _SENT_END or (ch == "." and _is_period_end(text, i)):
            j = i + 1
            while j < n and (text[j] in _SENT_END or text[j] in _CLOSE or text[j] == "."):
                j += 1
            quoted = text[j - 1] in _CLOSE and j < n and not text[j].isspace()
            mark(j, CLAUSE if quoted else SENTENCE)  # 「本当？」と言った: a quote inside a sentence
        elif ch in _CLAUSE:
            j = i + 1
            while j < n and text[j] in _CLOSE:
                j += 1
            mark(j, CLAUSE)
        elif ch.isspace():
            mark(i + 1, SPACE)
    out: dict[int, list[int]] = {PARAGRAPH: [], SENTENCE: [], CLAUSE: [], SPACE: []}
    for pos in sorted(levels):
        out[levels[pos]].append(pos)
    return out


def _is_period_end(text: str, i: int) -> bool:
    nxt = text[i + 1] if i + 1 < len(text) else ""
    if nxt and not nxt.isspace() and nxt not in _CLOSE:
        return False  # 3.14, e.g.x, example.com
    return not _ABBREV.search(text[max(0, i - 12): i + 1])


def _last_at_least(cuts: dict[int, list[int]], lo: int, hi: int, min_level: int) -> int | None:
    """The last cut in [lo, hi] of the strongest level >= min_level that has one."""
    for level in (PARAGRAPH, SENTENCE, CLAUSE, SPACE):
        if level < min_level:
            break
        lst = cuts[level]
        k = bisect.bisect_right(lst, hi) - 1
        if k >= 0 and lst[k] >= lo:
            return lst[k]
    return None


def _first_in(cuts: dict[int, list[int]], lo: int, hi: int, levels: tuple[int, ...]) -> int | None:
    """The earliest cut in [lo, hi] among the given levels."""
    best = None
    for level in levels:
        lst = cuts[level]
        k = bisect.bisect_left(lst, lo)
        if k < len(lst) and lst[k] <= hi and (best is None or lst[k] < best):
            best = lst[k]
    return best


def split_text(text: str, size: int = 400, overlap: int = 80) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``size`` characters with about ``overlap`` repeated."""
    if size < 1:
        raise ConfigError(f"RAG_CHUNK_CHARS must be positive, got {size}")
    if overlap < 0 or overlap >= size:
        raise ConfigError(f"RAG_CHUNK_OVERLAP ({overlap}) must be >= 0 and smaller than "
                          f"RAG_CHUNK_CHARS ({size})")
    n = len(text)
    cuts = _boundaries(text)
    paragraphs = set(cuts[PARAGRAPH])
    chunks: list[Chunk] = []
    pos = _skip_space(text, 0)
    prev_end = 0  # a chunk must reach past the previous one (not only repeat its overlap)
    while pos < n:
        limit = pos + size
        if _strip_end(text, pos, n) <= limit:
            end = n
        else:
            # prefer a strong boundary in the second half of the window, else any boundary
            lo = max(pos + 1, prev_end + 1)
            end = (_last_at_least(cuts, max(lo, pos + size // 2), limit, SPACE)
                   or _last_at_least(cuts, lo, limit, SPACE) or limit)
        e = _strip_end(text, pos, end)
        if e > pos:
            chunks.append(Chunk(text[pos:e], pos, e))
        if end >= n:
            break
        nxt = prev_end = end
        if overlap and end not in paragraphs:  # no overlap across a paragraph break
            lo = max(pos + 1, end - overlap)
            nxt = (_first_in(cuts, lo, end - 1, (PARAGRAPH, SENTENCE))
                   or _first_in(cuts, lo, end - 1, (CLAUSE,))
                   or _first_in(cuts, lo, end - 1, (SPACE,))
                   or (lo if not _in_word(text, lo) else end))
        pos = _skip_space(text, max(nxt, pos + 1))
    return chunks


def _skip_space(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i


def _strip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _in_word(text: str, i: int) -> bool:
    """True inside a run of ASCII letters/digits (never cut an English word for the overlap)."""
    return 0 < i < len(text) and text[i - 1].isascii() and text[i - 1].isalnum() \
        and text[i].isascii() and text[i].isalnum()
