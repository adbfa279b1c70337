"""Barge-in policy: when does speech over the assistant interrupt it?

Any VAD onset used to cancel the answer, so a cough, a back-channel ("はい", "うん", "uh-huh") or
the assistant's own voice from a speaker stopped it. Now (BARGE_IN_POLICY=smart):

1. speech starts while the assistant is answering -> *possible* interruption: the audio out pauses
   (event ``turn.paused``; the answer keeps being generated and its audio is held);
2. it is a real interruption (-> cancel the answer, ``turn.barge_in``) as soon as a partial or final
   transcript holds at least one real word (a word that is neither a back-channel nor a filler), or
   the speech has lasted BARGE_IN_MIN_SPEECH_MS;
3. it was not (-> ``turn.resumed``, the held audio goes out where it stopped) when the utterance
   ends with only back-channels / fillers / nothing in its transcript, or when no word came within
   BARGE_IN_RESUME_MS of its start and the speech has stopped.

``immediate`` keeps the old rule (any onset cancels). :class:`Interruption` is the pure state
machine (audio-time based, so tests are deterministic); VoiceSession drives it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

DEFAULT_BACKCHANNELS = ("はい", "うん", "ええ", "そう", "そうそう", "そうですね", "そうですか", "なるほど",
                        "へえ", "へー", "ほう", "ふーん", "うんうん", "はいはい", "ああ", "あー", "はーい",
                        "了解", "確かに",
                        "yeah", "yes", "yep", "yup", "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "okay", "ok",
                        "right", "sure", "i see", "got it", "alright", "all right", "cool", "nice", "wow", "oh")
# hesitation sounds: never a word either
FILLERS = ("ええと", "えーと", "えっと", "えー", "あの", "あのー", "うーん", "んー", "ん", "えと", "ま", "まあ",
           "uh", "um", "er", "erm", "ah", "eh")

_PUNCT_RE = re.compile(r"[\s\W_]+", re.UNICODE)
_KANA_RE = re.compile(r"[\u3040-\u30ff]")


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").lower().strip()


@dataclass
class BargeInPolicy:
    """Which speech interrupts the assistant (settings BARGE_IN_*)."""

    mode: str = "smart"               # smart | immediate
    min_speech_ms: float = 800.0
    resume_ms: float = 1500.0
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS

    @classmethod
    def from_settings(cls, settings) -> "BargeInPolicy":
        if settings is None:
            return cls()
        words = tuple(w.strip() for w in str(settings.barge_in_backchannels).split(",") if w.strip())
        return cls(mode=settings.barge_in_policy, min_speech_ms=settings.barge_in_min_speech_ms,
                   resume_ms=settings.barge_in_resume_ms, backchannels=words or DEFAULT_BACKCHANNELS)

    def real_words(self, text: str) -> int:
        """How many words of `text` are neither back-channels nor fillers (Japanese: character runs
        left after removing them, so "はい、はい" -> 0 and "ちょっと待って" -> 1)."""
        t = _norm(text)
        if not t:
            return 0
        phrases = sorted({_norm(w) for w in (*self.backchannels, *FILLERS) if w}, key=len, reverse=True)
        ja = bool(re.search(r"[\u3040-\u30ff\u3400-\u9fff]", t))
        if ja:
            for p in phrases:
                t = t.replace(p, " ")
            t = re.sub(r"[ーっ〜~]+", " ", t)  # lengthening marks left over ("はーい" variants)
            # a lone kana left over ("はいえ" -> "え", "うんね" -> "ね") is an interjection, a particle or a
            # recognition artefact of a short back-channel, not a word; kanji and longer runs are words
            return len([r for r in _PUNCT_RE.split(t) if r and not (len(r) == 1 and _KANA_RE.match(r))])
        rest = " " + " ".join(w for w in _PUNCT_RE.split(t.replace("-", " ")) if w) + " "
        for p in phrases:
            p = " " + " ".join(_PUNCT_RE.split(p.replace("-", " "))).strip() + " "
            while p in rest:
                rest = rest.replace(p, " ")
        return len(rest.split())

    def is_backchannel(self, text: str) -> bool:
        return bool(_norm(text)) and self.real_words(text) == 0


@dataclass
class Interruption:
    """One possible interruption (speech that started while the assistant answered).

    Feed it what the recogniser says (audio time in seconds); each method returns
    "barge_in", "resume" or None (undecided)."""

    policy: BargeInPolicy
    start: float                       # audio time of speech_start
    in_speech: bool = True
    words_seen: bool = False
    decided: str | None = None
    log: list[str] = field(default_factory=list)

    def _decide(self, what: str | None) -> str | None:
        if what and not self.decided:
            self.decided = what
            return what
        return None

    def on_text(self, text: str, final: bool = False) -> str | None:
        if self.decided:
            return None
        if self.policy.real_words(text) > 0:
            self.words_seen = True
            return self._decide("barge_in")
        if final:  # the utterance is over and held only back-channels / fillers / nothing
            return self._decide("resume")
        return None

    def on_speech_end(self) -> None:
        self.in_speech = False

    def on_time(self, now: float, voiced_ms: float | None = None) -> str | None:
        """`now`: audio time; `voiced_ms`: voiced audio of the utterance so far, when the recogniser
        knows it (else the time since the onset counts while in speech)."""
        if self.decided:
            return None
        elapsed_ms = (now - self.start) * 1000.0
        speech_ms = voiced_ms if voiced_ms is not None else (elapsed_ms if self.in_speech else 0.0)
        if speech_ms >= self.policy.min_speech_ms:
            return self._decide("barge_in")
        if elapsed_ms >= self.policy.resume_ms and not self.words_seen:
            return self._decide("resume")  # no word within the timeout
        return None
