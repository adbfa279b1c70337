"""Deterministic mock backends (is_mock = True): for unit tests and the mock profile only.

They need nothing but numpy, behave like the real engines at the contract level (streaming,
cancellation, sample rates, L2-normalised vectors) and are fast. Knobs for tests: token_delay,
chunk_delay, fail (raise on use), so that fallbacks, barge-in and overload can be exercised.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import BackendUnavailable, ContextOverflow, VoiceError
from ..text import chunk_text, guess_language
from ..turn.speculative import PartialTracker
from ..types import SAMPLE_RATE_STT, Audio, LlmDelta, Segment, SttEvent, Transcript, Voice
from .base import BaseBackend


class _Mock(BaseBackend):
    provider = "mock"
    is_mock = True

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.fail = fail  # when set, every use raises BackendUnavailable(fail)
        self.calls = 0

    def _use(self) -> None:
        self.calls += 1
        if self.fail:
            raise BackendUnavailable(self.fail)

    @property
    def endpoint(self) -> str:
        return f"inproc:mock:{self.role}"

    @classmethod
    def from_settings(cls, settings) -> "_Mock":
        return cls()


class MockSTT(_Mock):
    """Energy-based: speech = 30 ms frames with RMS above `threshold`. Text names the duration
    (or is `text`; `partial_text`: what the partials say instead, e.g. a speculation that misses)."""

    role = "stt"

    def __init__(self, text: str | None = None, threshold: float = 0.01, partial_interval: float = 0.5,
                 silence: float = 0.5, fail: str | None = None, language: str = "en", end_of_turn=None,
                 partial_text: str | None = None) -> None:
        super().__init__(fail)
        self.text, self.threshold, self.partial_text = text, threshold, partial_text
        self.partial_interval, self.silence, self.language = partial_interval, silence, language
        self.end_of_turn = end_of_turn  # a callable -> spark_voice.turn.EndOfTurn per stream, or None

    @classmethod
    def from_settings(cls, settings) -> "MockSTT":
        lang = settings.stt_language if settings.stt_language != "auto" else "en"
        eot = None
        if settings.stt_turn_detection != "off":
            def eot():
                from ..turn import build_end_of_turn

                return build_end_of_turn(settings, mock=True)
        return cls(partial_interval=settings.stt_partial_interval_ms / 1000.0,
                   silence=settings.stt_silence_ms / 1000.0, language=lang, end_of_turn=eot)

    def _speech_seconds(self, audio: Audio) -> float:
        a = audio.samples
        n = int(0.03 * audio.sample_rate) or 1
        frames = len(a) // n
        if frames == 0:
            return 0.0
        rms = np.sqrt((a[: frames * n].reshape(frames, n) ** 2).mean(axis=1))
        return float((rms > self.threshold).sum() * 0.03)

    def _text_for(self, seconds: float) -> str:
        if seconds <= 0.0:
            return ""
        if self.text is not None:
            return self.text
        if self.language == "ja":
            return f"モックの文字起こしです。音声は{seconds:.1f}秒でした。"
        return f"This is a mock transcript of {seconds:.1f} seconds of speech."

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        self._use()
        t0 = time.perf_counter()
        speech = self._speech_seconds(audio)
        text = self._text_for(speech)
        segs = [Segment(0.0, audio.duration, text)] if text else []
        return Transcript(text, segs, language or self.language, {"total": time.perf_counter() - t0})

    def stream(self, language: str | None = None, *, silence_ms: int | None = None,
               vad_threshold: float | None = None, prefix_padding_ms: int | None = None,
               end_of_turn=None) -> "MockSttStream":
        """Overrides for this stream like the real recogniser's: `silence_ms` (fixed silence, no
        end-of-turn model), `end_of_turn` (a factory). vad_threshold and prefix_padding_ms are
        taken and not used: the mock's speech detector is an energy threshold."""
        self._use()
        return MockSttStream(self, language or self.language, silence_ms=silence_ms, end_of_turn=end_of_turn)


class MockSttStream:
    def __init__(self, stt: MockSTT, language: str, silence_ms: int | None = None, end_of_turn=None) -> None:
        self.stt, self.language = stt, language
        self.silence_s = stt.silence if silence_ms is None else silence_ms / 1000.0
        self.t = 0.0            # seconds of audio consumed
        self.in_speech = False
        self.speech = 0.0       # seconds of speech in the current utterance
        self.silence = 0.0
        self.since_partial = 0.0
        self._rest = np.zeros(0, dtype=np.float32)
        factory = end_of_turn if end_of_turn is not None else (stt.end_of_turn if silence_ms is None else None)
        self.eot = factory() if factory is not None else None
        self._asked = False     # the end-of-turn model was asked about the current pause
        self._utt: list[np.ndarray] = []  # the utterance's frames (last 8 s) for the turn model
        self.partials = PartialTracker()
        self.on_turn_end = None  # spark_voice.turn.speculative.TurnEndHook, called before the final

    def feed(self, audio: Audio) -> list[SttEvent]:
        from ..audio.io import resample

        a = np.concatenate([self._rest, resample(audio, SAMPLE_RATE_STT).samples])
        n = int(0.03 * SAMPLE_RATE_STT)
        frames = len(a) // n
        self._rest = a[frames * n:]
        out: list[SttEvent] = []
        for i in range(frames):
            f = a[i * n:(i + 1) * n]
            voiced = float(np.sqrt((f ** 2).mean())) > self.stt.threshold
            self.t += 0.03
            if voiced:
                if not self.in_speech:
                    self.in_speech, self.speech, self.since_partial = True, 0.0, 0.0
                    self._utt = []
                    self.partials.reset()
                    out.append(SttEvent("speech_start", audio_time=self.t, language=self.language))
                if self._asked and self.eot is not None:
                    self.eot.resume()  # speech after a pause the model called incomplete
                self._asked = False
                self.speech += 0.03
                self.silence = 0.0
            elif self.in_speech:
                self.silence += 0.03
            if self.in_speech:
                self._utt.append(f)
                del self._utt[:max(0, len(self._utt) - 267)]  # the last 8 s
                self.since_partial += 0.03
                if self.since_partial >= self.stt.partial_interval and self.silence == 0.0:
                    self.since_partial = 0.0
                    text = self.stt.partial_text if self.stt.partial_text is not None else self.stt._text_for(
                        self.speech)
                    self.partials.decoded(text)
                    out.append(SttEvent("partial", text, self.t, self.language))
                if self.eot is None:
                    if self.silence >= self.silence_s - 1e-9:
                        out += self._final("silence")
                elif not self._asked and self.silence >= self.eot.short_ms / 1000.0 - 1e-9:
                    self._asked = True
                    if self.eot.on_pause(np.concatenate(self._utt)):
                        out += self._final("complete")
                elif self._asked and self.eot.waited(self.silence * 1000.0 + 1e-6):
                    out += self._final("timeout")
        return out

    @property
    def voiced_ms(self) -> float:
        return self.speech * 1000.0 if self.in_speech else 0.0

    def _final(self, reason: str = "flush") -> list[SttEvent]:
        if self.on_turn_end is not None and self.partials.text:
            self.on_turn_end(self.partials.text, self.partials.agreeing, self.language)
        text = self.stt._text_for(self.speech)
        waited = round(self.silence * 1000.0, 1)
        self.in_speech, self.speech, self.silence, self._asked = False, 0.0, 0.0, False
        return [SttEvent("speech_end", audio_time=self.t, language=self.language, silence_ms=waited, reason=reason),
                SttEvent("final", text, self.t, self.language, [Segment(0.0, self.t, text)])]

    def flush(self) -> list[SttEvent]:
        return self._final() if self.in_speech else []


class MockLLM(_Mock):
    """Streams a deterministic answer word by word: it repeats the question back."""

    role = "llm"

    def __init__(self, token_delay: float = 0.0, answer: str | None = None, fail: str | None = None,
                 n_ctx: int | None = None, max_tokens: int = 256) -> None:
        super().__init__(fail)
        self.token_delay, self.answer = token_delay, answer
        self.n_ctx, self.default_max_tokens = n_ctx, int(max_tokens)
        self.last_messages: list[dict] = []
        self.thread_log: list[int] = []

    @classmethod
    def from_settings(cls, settings) -> "MockLLM":
        """Honours LLM_CTX_SIZE like the real engine (a prompt that cannot fit is a ContextOverflow)."""
        return cls(n_ctx=int(settings.llm_ctx_size), max_tokens=int(settings.llm_max_tokens))

    def _check_context(self, messages: list[dict], max_tokens: int | None) -> None:
        """Like LlamaCppLLM.fit: history may be dropped, but the system message + the last user
        message + the answer's budget must fit in n_ctx (words stand in for tokens)."""
        if self.n_ctx is None:
            return
        head = [m for m in messages[:1] if m.get("role") in ("system", "developer")]
        last_user = [m for m in reversed(messages) if m.get("role") == "user"][:1]
        need = self.count_prompt_tokens(head + last_user)
        reserve = self.default_max_tokens if max_tokens is None else int(max_tokens)
        if need + reserve > self.n_ctx:
            raise ContextOverflow(
                f"the prompt needs {need} tokens (system message + last user message) and {reserve} more are "
                f"reserved for the answer, but the context holds {self.n_ctx} (LLM_CTX_SIZE); shorten the "
                "message or raise LLM_CTX_SIZE")

    def _answer(self, messages: list[dict]) -> str:
        if self.answer is not None:
            return self.answer
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        user = re.sub(r"\s+", " ", str(user)).strip()[:200]
        if guess_language(user) == "ja":
            return f"「{user}」と聞こえました。これはモックの回答です。"
        return f"You said: {user} This is a mock answer."

    def count_prompt_tokens(self, messages: list[dict]) -> int:
        """Words stand in for tokens."""
        return sum(len(str(m.get("content", "")).split()) for m in messages)

    supports_tools = True

    def _tool_call(self, messages: list[dict], tools: list[dict], tool_choice) -> tuple[str, str] | None:
        """Which tool the mock calls: the named one, else one whose name's words all occur in the
        user's last message (``current_time`` for "what is the current time"), else under
        ``required`` the first. Never right after a tool result. Required arguments are filled
        from the user text (strings), 1 (numbers) or false."""
        import json

        from ..tools import normalize_tool_choice

        mode, name = normalize_tool_choice(tool_choice, tools)
        if mode == "none" or not tools or (messages and messages[-1].get("role") == "tool" and mode == "auto"):
            return None
        user = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        fns = [t.get("function") or {} for t in tools]
        fn = next((f for f in fns if f.get("name") == name), None) if name else next(
            (f for f in fns if all(w in user.lower() for w in str(f.get("name", "")).lower().split("_") if w)), None)
        if fn is None and mode == "required":
            fn = fns[0]
        if fn is None:
            return None
        params = fn.get("parameters") or {}
        args = {}
        for p in params.get("required", []):
            typ = str((params.get("properties", {}).get(p) or {}).get("type", "string"))
            args[p] = {"integer": 1, "number": 1, "boolean": False}.get(typ, user)
        return str(fn.get("name")), json.dumps(args, ensure_ascii=False)

    def stream_chat(self, messages: list[dict], *, max_tokens: int | None = None,
                    temperature: float | None = None, cancel: threading.Event | None = None,
                    tools: list[dict] | None = None, tool_choice=None,
                    stats: dict | None = None, n_threads: Callable[[], int] | None = None) -> Iterator[LlmDelta]:
        """`n_threads`: read before each token like the real engine; the values go to `thread_log`."""
        self._use()
        self._check_context(list(messages), max_tokens)
        self.last_messages = list(messages)
        st = stats if stats is not None else {}
        st.clear()
        st.update(prompt_tokens=sum(len(str(m.get("content") or "").split()) + 4 for m in messages),
                  completion_tokens=0, finish_reason="stop")
        call = self._tool_call(messages, list(tools or []), tool_choice)
        if call is not None:
            st["completion_tokens"] = len(call[1].split()) + 3
            st["finish_reason"] = "tool_calls"
            yield LlmDelta(call[1], "commentary", kind="tool_call", recipient=f"functions.{call[0]}",
                           content_type="json")
            return
        answer = self._answer(messages)
        if messages and messages[-1].get("role") == "tool" and self.answer is None:
            answer = f"The tool said: {str(messages[-1].get('content') or '')[:200]}"
        pieces = re.findall(r"\S+\s*|\s+", answer)
        if guess_language(answer) == "ja":  # a few characters per token
            pieces = [p for s in pieces for p in re.findall(r".{1,3}", s, re.S)]
        for i, piece in enumerate(pieces):
            if cancel is not None and cancel.is_set():
                st["finish_reason"] = "cancelled"
                return
            if max_tokens is not None and i >= max_tokens:
                st["finish_reason"] = "length"
                return
            if n_threads is not None:
                self.thread_log.append(int(n_threads()))
            if self.token_delay:
                if cancel is not None:
                    if cancel.wait(self.token_delay):
                        st["finish_reason"] = "cancelled"
                        return
                else:
                    time.sleep(self.token_delay)
            st["completion_tokens"] = i + 1
            yield LlmDelta(piece)


class MockTTS(_Mock):
    """A tone per chunk, 60 ms per character, at 24 kHz; two voices (mock-en, mock-ja)."""

    role = "tts"
    sample_rate = 24_000

    def __init__(self, chunk_delay: float = 0.0, fail: str | None = None) -> None:
        super().__init__(fail)
        self.chunk_delay = chunk_delay

    def voices(self) -> list[Voice]:
        return [Voice("mock-en", "en", "mock", self.sample_rate), Voice("mock-ja", "ja", "mock", self.sample_rate)]

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        self._use()
        names = [v.name for v in self.voices()]
        if voice and voice not in names:
            raise VoiceError(f"unknown voice {voice!r}; available voices: {', '.join(names)}")
        for chunk in chunk_text(text or ""):
            if cancel is not None and cancel.is_set():
                return
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
            n = int(min(len(chunk), 200) * 0.06 * self.sample_rate)
            seed = int(hashlib.md5(chunk.encode()).hexdigest()[:4], 16)
            freq = 180.0 + seed % 200
            t = np.arange(n, dtype=np.float32) / self.sample_rate
            env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01) if n else t
            yield Audio((0.2 * np.sin(2 * np.pi * freq * t) * env).astype(np.float32), self.sample_rate)


class MockEmbedder(_Mock):
    """Hashed character n-grams -> a fixed-size unit vector; similar texts get similar vectors."""

    role = "embedding"

    def __init__(self, dim: int = 64, fail: str | None = None) -> None:
        super().__init__(fail)
        self.dim = dim
        self.model_id = f"mock-ngram-{dim}"

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        self._use()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            t = re.sub(r"\s+", " ", str(text).lower())
            for n in (2, 3):
                for i in range(max(0, len(t) - n + 1)):
                    h = int.from_bytes(hashlib.blake2b(t[i:i + n].encode(), digest_size=4).digest(), "little")
                    out[row, h % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out
