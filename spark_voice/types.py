"""The package's data types and vocabulary, in one place. Imports nothing else of spark_voice.

- Data passed between stages: :class:`Audio`, :class:`Segment`, :class:`Transcript`,
  :class:`SttEvent`, :class:`LlmDelta`, :class:`Voice`, :class:`Hit`, :class:`BackendInfo`.
- :data:`Role` / :data:`ROLES`: the four engine roles (stt, llm, tts, embedding). Settings,
  the registry, the models tooling, the server and the bench all say "role" for this.
- :class:`Stage`: the names of pipeline events (``stt.final``, ``llm.token`` ...). "stage" means
  an event stage only.
- :data:`PROVIDERS`: provider name -> backend class path, per role (read by settings validation
  and by the registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, Sequence, get_args

import numpy as np

SAMPLE_RATE_STT: Final = 16_000

# ----------------------------------------------------------------------------- vocabulary
Role = Literal["stt", "llm", "tts", "embedding"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

# role -> provider -> "module:Class" (module relative to spark_voice.backends)
PROVIDERS: Final[dict[Role, dict[str, str]]] = {
    "stt": {"whisper_cpp": "stt_whisper_cpp:WhisperCppSTT", "mock": "mock:MockSTT"},
    "llm": {"llama_cpp": "llm_llama_cpp:LlamaCppLLM", "mock": "mock:MockLLM"},
    "tts": {"fish": "tts_fish:FishTTS", "kokoro": "tts_kokoro:KokoroTTS", "piper": "tts_piper:PiperTTS",
            "mock": "mock:MockTTS"},
    "embedding": {"llama_cpp": "embed_llama_cpp:LlamaCppEmbedder", "mock": "mock:MockEmbedder"},
}


class Stage:
    """Event stage names (the ``stage`` of :class:`spark_voice.events.Event`)."""

    TURN_START: Final = "turn.start"
    STT_SPEECH_START: Final = "stt.speech_start"
    STT_PARTIAL: Final = "stt.partial"
    STT_SPEECH_END: Final = "stt.speech_end"
    STT_FINAL: Final = "stt.final"
    RAG_HITS: Final = "rag.hits"
    LLM_SPECULATIVE: Final = "llm.speculative"
    LLM_TOKEN: Final = "llm.token"
    LLM_ANALYSIS: Final = "llm.analysis"
    LLM_SENTENCE: Final = "llm.sentence"
    LLM_TOOL_CALL: Final = "llm.tool_call"
    TOOL_RESULT: Final = "tool.result"
    TTS_CHUNK: Final = "tts.chunk"
    TURN_BARGE_IN: Final = "turn.barge_in"
    TURN_PAUSED: Final = "turn.paused"
    TURN_RESUMED: Final = "turn.resumed"
    TURN_DONE: Final = "turn.done"
    ERROR: Final = "error"

    ALL: Final = (TURN_START, STT_SPEECH_START, STT_PARTIAL, STT_SPEECH_END, STT_FINAL, RAG_HITS, LLM_SPECULATIVE,
                  LLM_TOKEN,
                  LLM_ANALYSIS, LLM_SENTENCE, LLM_TOOL_CALL, TOOL_RESULT, TTS_CHUNK, TURN_BARGE_IN, TURN_PAUSED,
                  TURN_RESUMED, TURN_DONE, ERROR)


# ----------------------------------------------------------------------------- data types
@dataclass
class Audio:
    """Mono float32 samples in [-1, 1] at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        a = np.asarray(self.samples)
        if a.ndim == 2:  # (frames, channels) -> mono
            a = a.mean(axis=1)
        if a.dtype == np.int16:
            a = a.astype(np.float32) / 32768.0
        self.samples = np.ascontiguousarray(a, dtype=np.float32)
        self.sample_rate = int(self.sample_rate)

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0

    @classmethod
    def empty(cls, sample_rate: int = SAMPLE_RATE_STT) -> "Audio":
        return cls(np.zeros(0, dtype=np.float32), sample_rate)

    def resampled(self, sample_rate: int) -> "Audio":
        """soxr high-quality resampling; returns self when the rate already matches."""
        if self.sample_rate == sample_rate:
            return self
        if len(self.samples) == 0:
            return Audio(self.samples, sample_rate)
        import soxr  # a core dependency; imported here to keep `import spark_voice` light

        return Audio(soxr.resample(self.samples, self.sample_rate, sample_rate, quality="HQ"), sample_rate)

    @classmethod
    def concat(cls, parts: Sequence["Audio"], sample_rate: int | None = None) -> "Audio":
        if not parts:
            return cls.empty(sample_rate or SAMPLE_RATE_STT)
        sr = sample_rate or parts[0].sample_rate
        return cls(np.concatenate([p.resampled(sr).samples for p in parts]), sr)


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, resample, total ...


@dataclass
class SttEvent:
    """What a streaming recogniser reports. `audio_time`: seconds of input audio consumed."""

    kind: Literal["speech_start", "partial", "final", "speech_end"]
    text: str = ""
    audio_time: float = 0.0
    language: str = ""
    segments: list[Segment] = field(default_factory=list)
    # speech_end only: ms of silence the endpointing waited after the last voiced frame, and why the
    # turn ended ("silence": fixed silence, "complete": the end-of-turn model, "timeout": long silence,
    # "flush": end of input)
    silence_ms: float = 0.0
    reason: str = ""


@dataclass
class LlmDelta:
    """A piece of generated text. gpt-oss emits channels; other models only `final`.

    ``kind``: ``text`` (spoken when the channel is ``final``, or ``commentary`` without a
    recipient: a preamble) or ``tool_call`` (arguments of a call to ``recipient``, e.g.
    ``functions.get_weather``; never spoken; ``index`` tells calls apart). Backends that know
    nothing of tools only ever yield ``text`` deltas.
    """

    text: str
    channel: Literal["final", "analysis", "commentary"] = "final"
    kind: Literal["text", "tool_call"] = "text"
    recipient: str = ""
    content_type: str = ""
    index: int = 0

    @property
    def spoken(self) -> bool:
        """Text meant for the user: the final answer or a preamble (commentary, no recipient)."""
        return self.kind == "text" and not self.recipient and self.channel in ("final", "commentary")

    @property
    def tool_name(self) -> str:
        """The function name of a tool call (``functions.`` prefix removed)."""
        r = self.recipient
        return r[len("functions."):] if r.startswith("functions.") else r


@dataclass
class Voice:
    name: str
    language: str  # primary language code: ja, en, ...
    provider: str = ""
    sample_rate: int = 0
    description: str = ""


@dataclass
class Hit:
    """A retrieved chunk."""

    text: str
    source: str
    score: float
    chunk_id: int = -1
    start: int = 0
    end: int = 0

    def to_dict(self, *, text_chars: int | None = None) -> dict[str, object]:
        """The JSON shape used by events and the server (text included when text_chars is given)."""
        d: dict[str, object] = {"source": self.source, "score": round(float(self.score), 4),
                                "chunk_id": self.chunk_id}
        if text_chars is not None:
            d["text"] = self.text[:text_chars]
        return d


@dataclass
class BackendInfo:
    """What /health reports of a provider."""

    provider: str
    endpoint: str
    is_mock: bool = False
    loaded: bool = False
    ready: bool = False
    fallback_count: int = 0
    last_error: str = ""
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
