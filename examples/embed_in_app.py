#!/usr/bin/env python
"""spark_voice inside another application, with a custom backend plugged in.

The "application" is a small help-desk kiosk. It keeps its own answering logic -- a rule-based
FAQ model that implements spark_voice's ``LanguageModel`` protocol -- and takes speech-to-text
and text-to-speech from the configured engines (whisper.cpp / Kokoro / Piper, or the mocks).
It listens to the pipeline's events to drive its own (here: printed) user interface, and
cancels a turn when the user walks away.

    python examples/embed_in_app.py --profile mock
    python examples/embed_in_app.py --profile dev --audio examples/audio/question_en.wav

Any backend can be replaced this way: a class with the protocol's methods (``stream_chat`` for
a LanguageModel; ``transcribe``/``stream`` for SpeechToText; ``voices``/``synthesize`` for
TextToSpeech) plus ``load/probe/info/close`` -- subclassing ``BaseBackend`` provides those.
"""

from __future__ import annotations

import argparse
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from spark_voice import Event, LlmDelta, Settings, VoicePipeline
from spark_voice.backends.base import BaseBackend, LanguageModel
from spark_voice.backends.registry import build

HERE = Path(__file__).resolve().parent


class FaqModel(BaseBackend):
    """A LanguageModel that answers from a fixed FAQ (word overlap), streamed word by word."""

    provider = "faq"
    role = "llm"

    def __init__(self, faq: dict[str, str], fallback: str) -> None:
        super().__init__()
        self.faq, self.fallback = faq, fallback

    @property
    def endpoint(self) -> str:
        return "inproc:faq"

    def answer_for(self, question: str) -> str:
        words = set(re.findall(r"\w+", question.lower()))
        best, score = self.fallback, 0
        for key, answer in self.faq.items():
            s = len(words & set(key.split()))
            if s > score:
                best, score = answer, s
        return best

    def stream_chat(self, messages: list[dict], *, max_tokens: int | None = None,
                    temperature: float | None = None,
                    cancel: threading.Event | None = None) -> Iterator[LlmDelta]:
        question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        for i, word in enumerate(re.findall(r"\S+\s*", self.answer_for(question))):
            if (cancel is not None and cancel.is_set()) or (max_tokens is not None and i >= max_tokens):
                return
            yield LlmDelta(word)


class Kiosk:
    """The host application: owns the pipeline, renders its events, keeps its own log."""

    def __init__(self, settings: Settings) -> None:
        llm = FaqModel({
            "opening hours open close": "We are open from nine to six, Monday to Saturday.",
            "where toilet restroom": "The restrooms are on the second floor, next to the lifts.",
            "capital france paris": "The capital of France is Paris. Enjoy your trip!",
        }, fallback="Sorry, I do not know that yet. A member of staff will help you.")
        assert isinstance(llm, LanguageModel)  # the runtime-checkable protocol
        self.pipe = VoicePipeline(build("stt", settings), llm, build("tts", settings), settings=settings,
                                  language="en", system_prompt="")
        self.log: list[str] = []
        self._ui = threading.Lock()  # events arrive from the LLM and TTS worker threads

    def show(self, line: str) -> None:
        with self._ui:
            print(line, flush=True)

    def on_event(self, ev: Event) -> None:
        if ev.stage == "stt.final":
            self.log.append(f"heard: {ev.text}")
            self.show(f"[screen] You said: {ev.text}")
        elif ev.stage == "llm.sentence":
            self.show(f"[screen] {ev.text}")
        elif ev.stage == "tts.chunk":
            self.show(f"[speaker] playing {ev.audio.duration:.2f} s")
        elif ev.stage == "error":
            self.show(f"[screen] something went wrong: {ev.text}")

    def ask(self, audio: Path | None = None, text: str | None = None) -> str:
        turn = self.pipe.run(audio, text=text, on_event=self.on_event)
        self.log.append(f"answered {turn.request_id} in {turn.latencies.get('end_to_end', 0):.0f} ms")
        return turn.answer

    def walk_away(self, text: str) -> bool:
        """Start a turn and cancel it as soon as the first sentence shows: barge-in / user left."""
        def cancel_early(ev: Event) -> None:
            if ev.stage == "llm.token":
                self.pipe.cancel(ev.request_id)
        return self.pipe.run(text=text, on_event=cancel_early).cancelled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="spark_voice embedded in an app, with a custom LLM")
    ap.add_argument("--profile", choices=["prod", "dev", "mock"])
    ap.add_argument("--audio", type=Path, default=HERE / "audio" / "question_en.wav")
    args = ap.parse_args(argv)
    settings = Settings.load(**({"profile": args.profile} if args.profile else {}))
    app = Kiosk(settings)
    if args.audio.exists():
        print("answer:", app.ask(audio=args.audio))
    print("answer:", app.ask(text="What are your opening hours?"))
    print("cancelled when the user left:", app.walk_away("Where is the restroom?"))
    print("app log:", *app.log, sep="\n  ")
    app.pipe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
