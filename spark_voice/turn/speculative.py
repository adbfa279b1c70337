"""Speculative start: the turn's LLM begins on the last stable partial while the final transcript
is decoded, and its output is used only when the final confirms it.

When the end-of-turn detector ends the turn (Smart Turn complete, the fixed silence, the long
silence) a streaming recogniser asks its ``on_turn_end`` hook *before* it decodes the final,
passing the last partial and how many partial decodes in a row gave that same text
(:class:`PartialTracker`). When TURN_SPECULATIVE=on and at least TURN_SPECULATIVE_STABLE decodes
agreed, the pipeline starts a :class:`Speculation`: retrieval, prompt and generation on the partial
text, in a thread of its own, with every delta buffered (nothing is emitted). When the final
arrives, :func:`same_words` compares it with the partial (case, punctuation, whitespace and
full/half width ignored: NFKC + casefold, letters and digits only). Same words: the turn consumes
the buffered deltas and then the rest of the same generation (the LLM is called once); otherwise
the speculation is cancelled and the turn starts on the final. The turn reports which with an
``llm.speculative`` event (``hit``) after ``stt.final``.

Threads (:class:`ThreadBudget`): while the final decode and the speculative prefill run at the
same time their threads are summed <= cores: the LLM gets TURN_SPECULATIVE_THREADS (0: half the
cores), the final decode the rest; once the final is in, the LLM goes back to LLM_THREADS (its
thread count is read between tokens).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import unicodedata
from typing import Callable, Iterable, Iterator, Protocol

from ..types import Hit, LlmDelta

__all__ = ["PartialTracker", "Speculation", "ThreadBudget", "TurnEndHook", "normalize_words", "same_words"]


Generate = Callable[[list[dict], threading.Event, dict, Callable[[], int]], Iterable[LlmDelta]]


class TurnEndHook(Protocol):
    """``on_turn_end(partial, agreeing, speech_end_language) -> threads``: called by a stream when
    the turn ends, before the final decode; returns the threads the final decode may use (0: its own)."""

    def __call__(self, partial: str, agreeing: int, language: str) -> int: ...


def normalize_words(text: str) -> str:
    """The words of a transcript without case, punctuation, symbols, whitespace or width
    differences (NFKC folds full-width Latin and half-width kana): ``"Hello, World!"`` and
    ``"hello world"`` -> ``"helloworld"``; ``"明日は、晴れ。"`` -> ``"明日は晴れ"``."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in t if unicodedata.category(c)[0] in "LN")


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same words (see :func:`normalize_words`); empty never matches."""
    na = normalize_words(a)
    return bool(na) and na == normalize_words(b)


class PartialTracker:
    """Stability of a stream's partials: how many partial decodes in a row gave the same words
    (recognisers report a partial only when its text changes, so this counts decodes, not events)."""

    def __init__(self) -> None:
        self.text = ""
        self.agreeing = 0
        self._norm = ""

    def reset(self) -> None:
        self.text, self.agreeing, self._norm = "", 0, ""

    def decoded(self, text: str) -> None:
        norm = normalize_words(text)
        if not norm:
            return
        self.agreeing = self.agreeing + 1 if norm == self._norm else 1
        self.text, self._norm = text, norm


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class ThreadBudget:
    """Threads of the LLM and of the final decode while both run (summed <= cores)."""

    def __init__(self, llm_threads: int, stt_threads: int, overlap_threads: int = 0, cores: int | None = None) -> None:
        self.cores = cores or available_cores()
        self.llm_threads, self.stt_threads = max(1, llm_threads), max(1, stt_threads)
        want = overlap_threads or max(1, self.cores // 2)
        # leave the final decode at least one core when there is more than one
        self.llm_overlap = max(1, min(want, self.llm_threads, self.cores - 1 if self.cores > 1 else 1))
        self.stt_overlap = max(1, min(self.stt_threads, self.cores - self.llm_overlap))


class Speculation:
    """One speculative LLM run on a partial transcript; deltas buffered until :meth:`deltas`.

    `prepare(text) -> (hits, rag_data, messages, kwargs)` runs in the speculation's thread
    (retrieval + prompt), then ``generate(messages, cancel, kwargs, n_threads)`` streams the deltas
    (``n_threads()``: the LLM's threads now, see :class:`ThreadBudget`)."""

    _END = object()

    def __init__(self, request_id: str, text: str, language: str, budget: ThreadBudget,
                 prepare: Callable[[str], tuple[list[Hit], dict, list[dict], dict]],
                 generate: Generate) -> None:
        self.request_id, self.text, self.language, self.budget = request_id, text, language, budget
        self.cancel_event = threading.Event()
        self.hits: list[Hit] = []
        self.rag: dict = {}
        self.messages: list[dict] = []
        self.kwargs: dict = {}
        self.error: BaseException | None = None
        self.tokens = 0                 # spoken text deltas produced so far
        self.t_start = time.perf_counter()
        self.t_first: float | None = None  # first delta
        self.overlap = True             # the final decode is running: the LLM keeps to its share
        self._prepare, self._generate = prepare, generate
        self._q: queue.Queue[object] = queue.Queue()
        self._prepared = threading.Event()
        self._consumed = False
        self._thread = threading.Thread(target=self._work, name=f"speculate-{request_id}", daemon=True)
        self._thread.start()

    def llm_threads(self) -> int:
        """The LLM's thread count now (read by the engine between tokens)."""
        return self.budget.llm_overlap if self.overlap else self.budget.llm_threads

    def end_overlap(self) -> None:
        self.overlap = False

    def _work(self) -> None:
        try:
            self.hits, self.rag, self.messages, self.kwargs = self._prepare(self.text)
            self._prepared.set()
            if self.cancel_event.is_set():
                return
            for d in self._generate(self.messages, self.cancel_event, self.kwargs, self.llm_threads):
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                if d.spoken and d.text:
                    self.tokens += 1
                self._q.put(d)
                if self.cancel_event.is_set():
                    break
        except BaseException as exc:  # handed to the turn (a miss restarts, a hit re-raises)
            self.error = exc
        finally:
            self._prepared.set()
            self._q.put(self._END)

    @property
    def failed(self) -> bool:
        """The generation ended with an error before producing anything (the turn restarts it)."""
        return not self._thread.is_alive() and self.error is not None and self.t_first is None

    def matches(self, final: str) -> bool:
        return same_words(self.text, final)

    def cancel(self) -> None:
        self.overlap = False
        self.cancel_event.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_prepared(self) -> None:
        self._prepared.wait()

    def deltas(self, cancel: threading.Event) -> Iterator[LlmDelta]:
        """The buffered deltas, then the rest of the generation as it comes (once). `cancel`: the
        turn's cancel event (stops the speculation too). A generation error is raised here."""
        if self._consumed:
            raise RuntimeError("a speculation is consumed once")
        self._consumed = True
        self.end_overlap()
        ended = False
        try:
            while not cancel.is_set():
                try:
                    item = self._q.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is self._END:
                    ended = True
                    if self.error is not None:
                        raise self.error
                    return
                assert isinstance(item, LlmDelta)
                yield item
        finally:
            if not ended:  # cancelled, or the consumer stopped early: stop the generation
                self.cancel()
