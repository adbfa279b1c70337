"""Sentence chunker between the LLM and TTS (Japanese and English), and language guessing.

The chunker releases text as soon as a clause is speakable: after a sentence end (。！？!?. and
full-width forms, newline), or after a clause mark (、，,;；:：) once the pending text is long
enough, never producing chunks shorter than `min_chars` (short pieces wait for the next boundary).
`flush()` returns what is left at the end of the stream.
"""

from __future__ import annotations

import re

SENTENCE_END = set("。！？!?…\n")
CLAUSE_MARKS = set("、，,;；:：")
CLOSERS = set("」』）)】\"'”’")
QUOTE_OPEN, QUOTE_CLOSE = "「『（【“", "」』）】”"  # brackets that can hold whole sentences
_JA_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")
_ABBREV = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|vs|etc|e\.g|i\.e|No|Jr|Sr)|\b[A-Z])\.$")


class SentenceChunker:
    """Feed streamed text with :meth:`push`; get speakable chunks back."""

    def __init__(self, min_chars: int = 6, clause_chars: int = 24, max_chars: int = 220):
        self.min_chars = min_chars        # never emit shorter chunks (except at flush)
        self.clause_chars = clause_chars  # split at a comma only once this much is pending
        self.max_chars = max_chars        # force a split at a space when no punctuation comes
        self._buf = ""

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            if chunk:
                out.append(chunk)
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _find_cut(self) -> int | None:
        buf = self._buf
        n = len(buf)
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
            elif ch in CLAUSE_MARKS and i + 1 >= self.clause_chars:
                if i + 1 < n or ch in "、，":
                    j = i + 1
                    if len(buf[:j].strip()) >= self.min_chars:
                        return j
        if n > self.max_chars:
            sp = buf.rfind(" ", 0, self.max_chars)
            return sp + 1 if sp > self.min_chars else self.max_chars
        return None

    @staticmethod
    def _is_period_end(buf: str, i: int) -> bool:
        if i + 1 < len(buf) and not buf[i + 1].isspace() and buf[i + 1] not in CLOSERS:
            return False  # 3.14, e.g.x, example.com
        return not _ABBREV.search(buf[: i + 1])


def chunk_text(text: str, **kw) -> list[str]:
    """Split a whole text into speakable chunks."""
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
