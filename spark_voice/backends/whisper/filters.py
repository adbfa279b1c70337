"""What whisper writes that is not speech: decode loops, subtitle hallucinations, and text joining.

* :func:`trim_repeats`: a short-context (partial) decode can loop; a phrase repeated 4+ times in
  a row is collapsed to one copy.
* :func:`is_hallucination`: whisper learnt from video subtitles to write "ご視聴ありがとうございました"
  or "Thanks for watching" on noise and room tone. A transcript that is only one of these is
  dropped by the recogniser unless the VAD finds speech in the audio.
* :func:`join_texts`: segment texts joined without spaces for Japanese / Chinese / Korean (or
  when every piece starts or ends in a CJK character), with spaces otherwise.
"""

from __future__ import annotations

import re

__all__ = ["HALLUCINATIONS", "is_cjk", "is_hallucination", "join_texts", "trim_repeats"]

_REPEAT_RE = re.compile(r"(.{1,20}?)(?:\s*\1){3,}", re.DOTALL)

# lower-case, punctuation and spaces removed (see _key)
HALLUCINATIONS = frozenset({
    "ご視聴ありがとうございました", "ご清聴ありがとうございました", "チャンネル登録よろしくお願いします",
    "チャンネル登録お願いします", "最後までご視聴いただきありがとうございます", "おやすみなさい",
    "thankyouforwatching", "thanksforwatching", "thankyou", "you", "bye",
    "subtitlesbytheamaraorgcommunity", "pleasesubscribe",
})


def trim_repeats(text: str) -> str:
    """Collapse a phrase repeated 4+ times in a row (a short-context decode loop) to one copy."""
    return _REPEAT_RE.sub(r"\1", text)


def _key(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def is_hallucination(text: str) -> bool:
    """True when `text` is only one of whisper's well-known non-speech phrases."""
    return _key(text) in HALLUCINATIONS


def is_cjk(ch: str) -> bool:
    """A CJK ideograph, kana, CJK punctuation or full-width form."""
    o = ord(ch)
    return 0x3000 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF


def join_texts(texts: list[str], language: str) -> str:
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        return ""
    if language in ("ja", "zh", "ko") or all(is_cjk(t[-1]) or is_cjk(t[0]) for t in texts):
        return "".join(texts)
    return " ".join(texts)
