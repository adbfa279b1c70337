"""Sentence chunker between the LLM and TTS (Japanese and English), and language guessing.

The chunker releases text as soon as a clause is speakable: after a sentence end (。！？!?. and
full-width forms, newline), or after a clause mark (、，,;；:：) once the pending text is long
enough, never producing chunks shorter than `min_chars` (short pieces wait for the next boundary).
`flush()` returns what is left at the end of the stream.

Two rules (``rule=``):

* ``eager`` (the streaming pipeline's default; TTS_CHUNK_RULE) never stalls: the *first* chunk of
  a stream is released at a clause mark once it has `first_clause_chars`, and a run without any
  punctuation is released at its best break point once it is `first_max` (first chunk) or
  `max_len` (later chunks) long, or once `force_ms` have passed since its first character came
  and it has at least `min_force` — lengths in Japanese-character units (a Latin character counts
  half, so 20 means 20 kana/kanji or 40 Latin characters). The best break point: in Japanese after
  a particle (は が を に で と も へ から まで ので けど ...) before a kanji/katakana/Latin word,
  else at any hiragana → kanji/katakana script change; in English before a conjunction or
  preposition, else at a word boundary; never inside a number or a Latin word.
* ``sentence`` (the rule before; :func:`chunk_text` uses it to cut whole texts inside the TTS
  backends) releases only at sentence ends and late clause marks, and cuts a run without
  punctuation only at `max_chars`.

Sentences inside 「…」 stay whole under both rules unless the length limits force a release.
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Callable

SENTENCE_END = set("。！？!?…\n")
CLAUSE_MARKS = set("、，,;；:：")
CLOSERS = set("」』）)】\"'”’")
QUOTE_OPEN, QUOTE_CLOSE = "「『（【“", "」』）】”"  # brackets that can hold whole sentences
_JA_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
_ABBREV = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|vs|etc|e\.g|i\.e|No|Jr|Sr)|\b[A-Z])\.$")

# Japanese particles (longest first) after which a phrase may end; "の" binds tighter (weaker break)
_JA_PARTICLES = ("から", "まで", "より", "ので", "のに", "けど", "けれど", "ても", "でも", "では", "には",
                 "とは", "へは", "ながら", "たり", "し", "は", "が", "を", "に", "で", "と", "も", "へ",
                 "や", "て", "ば")
_EN_BREAK_BEFORE = {"and", "but", "or", "so", "because", "which", "that", "who", "when", "while", "where",
                    "if", "although", "though", "then", "to", "with", "for", "in", "on", "at", "from",
                    "about", "after", "before", "since", "until", "as"}
CHUNK_RULES = ("eager", "sentence")


def _kind(ch: str) -> str:
    o = ord(ch)
    if 0x3040 <= o <= 0x309F:
        return "hira"
    if 0x30A0 <= o <= 0x30FF or 0xFF66 <= o <= 0xFF9F:
        return "kata"
    if 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF:
        return "kanji"
    if ch.isdigit():
        return "digit"
    if ch.isalpha():
        return "latin"
    if ch.isspace():
        return "space"
    return "other"


def _width(text: str) -> float:
    """Length in Japanese-character units: wide (CJK) characters count 1, others 0.5."""
    return sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.5 for c in text)


class SentenceChunker:
    """Feed streamed text with :meth:`push`; get speakable chunks back."""

    def __init__(self, min_chars: int = 6, clause_chars: int = 24, max_chars: int = 220, *,
                 rule: str = "eager", first_clause_chars: int = 6, first_max: float = 20,
                 max_len: float = 40, force_ms: float = 1200, min_force: float = 8,
                 clock: Callable[[], float] = time.monotonic):
        if rule not in CHUNK_RULES:
            raise ValueError(f"unknown chunk rule {rule!r}; accepted values: {', '.join(CHUNK_RULES)}")
        self.min_chars = min_chars        # never emit shorter chunks (except at flush)
        self.clause_chars = clause_chars  # split at a comma only once this much is pending
        self.max_chars = max_chars        # force a split at a space when no punctuation comes
        self.rule = rule
        self.first_clause_chars = first_clause_chars
        self.first_max, self.max_len = float(first_max), float(max_len)
        self.force_ms, self.min_force = float(force_ms), float(min_force)
        self._clock = clock
        self._buf = ""
        self._since: float | None = None  # when the first pending character came
        self.released = 0                 # chunks released so far
        self.forced = 0                   # of which forced by length / time (no punctuation)

    @classmethod
    def from_settings(cls, settings, **kw) -> "SentenceChunker":
        """The streaming chunker configured by TTS_CHUNK_* (rule, first/max length, force ms)."""
        if settings is None:
            return cls(**kw)
        return cls(rule=settings.tts_chunk_rule, first_max=settings.tts_chunk_first_max,
                   max_len=settings.tts_chunk_max, force_ms=settings.tts_chunk_force_ms, **kw)

    def push(self, text: str) -> list[str]:
        if text and not self._buf.strip():
            self._since = self._clock()
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            self._since = self._clock() if self._buf else None
            if chunk:
                out.append(chunk)
                self.released += 1
        return out

    def poll(self) -> list[str]:
        """Release by time alone (no new text came): what `push("")` does."""
        return self.push("")

    def flush(self) -> list[str]:
        rest, self._buf, self._since = self._buf.strip(), "", None
        if rest:
            self.released += 1
        return [rest] if rest else []

    # ------------------------------------------------------------------ rules
    def _find_cut(self) -> int | None:
        buf = self._buf
        n = len(buf)
        eager = self.rule == "eager"
        clause_at = self.first_clause_chars if eager and self.released == 0 else self.clause_chars
        depth = 0  # inside 「…」 and friends a sentence end does not end the sentence
        for i, ch in enumerate(buf):
            if ch in QUOTE_OPEN:
                depth += 1
            elif ch in QUOTE_CLOSE:
                depth = max(0, depth - 1)
            if depth and ch != "\n":
                continue
            if ch in SENTENCE_END or (ch == "." and self._is_period_end(buf, i)):
                j = i + 1
                while j < n and (buf[j] in SENTENCE_END or buf[j] in CLOSERS or buf[j] == "."):
                    j += 1
                if j == n and ch in ".!?" and not buf.endswith("\n"):
                    return None  # an ASCII mark at the very end may continue ("3." -> "3.5", "?!")
                if buf[j - 1] in CLOSERS:  # 「はい。」と言った: a quoted sentence inside a sentence
                    if j == n:
                        return None
                    if not buf[j].isspace() and buf[j] not in SENTENCE_END:
                        continue
                if len(buf[:j].strip()) >= self.min_chars:
                    return j
            elif ch in CLAUSE_MARKS and len(buf[:i + 1].strip()) >= clause_at:
                if i + 1 < n or ch in "、，":
                    j = i + 1
                    if len(buf[:j].strip()) >= self.min_chars:
                        return j
        if eager:
            return self._forced_cut(buf)
        if n > self.max_chars:
            sp = buf.rfind(" ", 0, self.max_chars)
            return sp + 1 if sp > self.min_chars else self.max_chars
        return None

    def _forced_cut(self, buf: str) -> int | None:
        """A run without a usable mark: cut at its best break point when it is too long or too old."""
        limit = self.first_max if self.released == 0 else self.max_len
        if any(q in buf for q in QUOTE_OPEN):  # a quoted sentence gets the longer limit to stay whole
            limit = max(limit, self.max_len)
        width = _width(buf)
        by_time = (self._since is not None and self.force_ms > 0 and width >= self.min_force
                   and (self._clock() - self._since) * 1000.0 >= self.force_ms)
        if width < limit and not by_time and len(buf) <= self.max_chars:
            return None
        # candidate cuts: from half the limit (or min_force when forced by time) up to the limit
        lo_w = self.min_force if by_time and width < limit else limit / 2
        best, best_score, w = None, 0, 0.0
        for p in range(1, len(buf)):
            w += _width(buf[p - 1])
            if w > limit:
                break
            if w < lo_w:
                continue
            score = _break_score(buf, p)
            if score and score >= best_score:  # ties: the later cut
                best, best_score = p, score
        if best is None:
            if width < limit and len(buf) <= self.max_chars:
                return None  # forced by time but no natural break yet: wait for one
            best = max(1, min(len(buf), _prefix_len(buf, limit)))
            while best < len(buf) and _kind(buf[best - 1]) in ("latin", "digit") \
                    and _kind(buf[best]) in ("latin", "digit"):
                best += 1  # never cut inside a word or number
        self.forced += 1
        return best

    @staticmethod
    def _is_period_end(buf: str, i: int) -> bool:
        if i + 1 < len(buf) and not buf[i + 1].isspace() and buf[i + 1] not in CLOSERS:
            return False  # 3.14, e.g.x, example.com
        return not _ABBREV.search(buf[: i + 1])


def _prefix_len(buf: str, limit: float) -> int:
    w = 0.0
    for i, c in enumerate(buf):
        w += _width(c)
        if w > limit:
            return i
    return len(buf)


def _break_score(buf: str, p: int) -> int:
    """How good a cut between buf[p-1] and buf[p] is: 0 never, 1 word boundary, 2-3 phrase end."""
    a, b = buf[p - 1], buf[p]
    ka, kb = _kind(a), _kind(b)
    if kb == "space" or (ka in ("latin", "digit") and kb in ("latin", "digit")) or b in CLOSERS:
        return 0  # cut after the space; never inside a word, a number or before a closing mark
    if ka == "space":  # English: a word starts at p
        word = re.match(r"[A-Za-z']+", buf[p:])
        complete = p + (word.end() if word else 0) < len(buf)  # the word may still be growing
        return 2 if word and complete and word.group(0).lower() in _EN_BREAK_BEFORE else 1
    if ka == "hira" and kb in ("kanji", "kata", "latin", "digit"):
        head = buf[:p]
        if any(head.endswith(x) for x in _JA_PARTICLES):
            return 3
        return 2 if not head.endswith("の") else 1
    if ka in ("kata", "kanji") and kb in ("latin", "digit") or ka in ("latin", "digit") and kb in ("kanji", "kata",
                                                                                                   "hira"):
        return 1
    if ka == "kata" and kb == "kanji" or ka == "kanji" and kb == "kata":
        return 1
    return 0


def chunk_text(text: str, **kw) -> list[str]:
    """Split a whole text into speakable chunks (the ``sentence`` rule unless `rule=` says else)."""
    kw.setdefault("rule", "sentence")
    c = SentenceChunker(**kw)
    return c.push(text) + c.flush()


def guess_language(text: str) -> str:
    """'ja' when the text has kana/kanji, else 'en' (a cheap router for TTS voices)."""
    return "ja" if _JA_RE.search(text or "") else "en"


# Whisper writes sounds it hears as a whole bracketed note: [BLANK_AUDIO], [Music], (phone ringing),
# (upbeat music), （音楽）, (エンディング), 【拍手】, and music as ♪ ... ♪. Speech itself is never
# bracketed, so any short bracketed note (not glued to a word, as in f(x)) and the ♪ signs are dropped.
_MARKER_RE = re.compile(r"\s*(?<![A-Za-z0-9])(?:\[[^\[\]\n]{0,40}\]|\([^()\n]{0,40}\)"
                        r"|（[^（）\n]{0,30}）|【[^【】\n]{0,30}】|\*[^*\n]{0,30}\*|[♪♫♬]+)\s*")


def drop_markers(text: str) -> str:
    """Remove whisper non-speech markers such as [BLANK_AUDIO], (music), (phone ringing), （音楽）, ♪."""
    def gap(m: re.Match) -> str:  # no space between Japanese characters
        before, after = text[m.start() - 1:m.start()], text[m.end():m.end() + 1]
        return "" if _JA_RE.match(before or " ") or _JA_RE.match(after or " ") else " "

    return re.sub(r"\s{2,}", " ", _MARKER_RE.sub(gap, text)).strip()
