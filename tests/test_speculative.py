"""Speculative start on mock engines: the LLM starts on the last stable partial while the final is
decoded; a final with the same words keeps that generation (the LLM is called once), another one
restarts on the final; nothing of the speculation reaches the client before the final confirms it.
The real engines run it in tests/test_turn_real.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import tone
from spark_voice import Audio, VoicePipeline
from spark_voice.backends.mock import MockLLM, MockSTT, MockTTS
from spark_voice.session import VoiceSession
from spark_voice.turn.speculative import PartialTracker, ThreadBudget, normalize_words, same_words

SR = 16000
QUESTION = "What is the weather like tomorrow?"
ANSWER_EVENTS = ("rag.hits", "llm.token", "llm.analysis", "llm.sentence", "llm.tool_call", "tool.result",
                 "tts.chunk")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def frames(a: np.ndarray, n: int = 320):
    return [Audio(a[i:i + n], SR) for i in range(0, len(a), n)]


def utterance() -> np.ndarray:
    return np.concatenate([silence(0.2), tone(1.2), silence(0.6)])


@pytest.fixture
def spec_settings(mock_settings):
    return mock_settings.model_copy(update={"turn_speculative": "on", "turn_speculative_stable": 2})


def _pipe(settings, partial_text: str | None = None, token_delay: float = 0.0, answer: str | None = None,
          text: str = QUESTION):
    stt = MockSTT(text=text, partial_text=partial_text, partial_interval=0.1, silence=0.3)
    llm = MockLLM(token_delay=token_delay, answer=answer)
    return VoicePipeline(stt, llm, MockTTS(), settings=settings, language="en"), llm


def _check_nothing_before_final(events) -> None:
    """No answer event before the final of its turn, and llm.speculative right after stt.final."""
    stages = [e.stage for e in events]
    i_final = stages.index("stt.final")
    assert not any(s in ANSWER_EVENTS for s in stages[:i_final]), stages
    if "llm.speculative" in stages:
        assert stages.index("llm.speculative") > i_final


# ------------------------------------------------------------------ pieces
@pytest.mark.parametrize("a,b", [
    ("Hello, World!", "hello world"),
    ("ＨＥＬＬＯ　ｗｏｒｌｄ！", "Hello world."),        # full-width Latin and space
    ("明日は、晴れ。", "明日は晴れ"),                     # Japanese punctuation
    ("ｱｼﾀﾊ ﾊﾚ", "アシタハハレ"),                           # half-width kana
    ("「三時」からです？", "三時からです"),
    ("It's 3 p.m.", "its 3pm"),
])
def test_same_words_ignores_case_punctuation_width(a, b):
    assert same_words(a, b)


@pytest.mark.parametrize("a,b", [("What is the weather", "What is the weather tomorrow"),
                                 ("明日は晴れ", "明日は雨"), ("", ""), ("...", "!")])
def test_different_words_never_match(a, b):
    assert not same_words(a, b)


def test_normalize_words_keeps_letters_and_digits_only():
    assert normalize_words("  Ｔｏｋｙｏ, 2026年！ ") == "tokyo2026年"


def test_partial_tracker_counts_agreeing_decodes():
    t = PartialTracker()
    t.decoded("What is")
    t.decoded("What is the weather")
    assert t.agreeing == 1
    t.decoded("what is the weather?")
    t.decoded("What is the weather.")
    assert t.agreeing == 3 and t.text == "What is the weather."
    t.decoded("")  # an empty decode says nothing
    assert t.agreeing == 3
    t.reset()
    assert t.agreeing == 0 and t.text == ""


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("llm,stt,overlap", [(2, 2, 0), (8, 8, 0), (1, 4, 0), (4, 1, 3), (16, 16, 2)])
def test_thread_budget_never_exceeds_the_cores(cores, llm, stt, overlap):
    b = ThreadBudget(llm, stt, overlap, cores=cores)
    assert b.llm_overlap >= 1 and b.stt_overlap >= 1 and b.llm_overlap <= llm and b.stt_overlap <= stt
    if cores > 1:
        assert b.llm_overlap + b.stt_overlap <= cores
    assert (b.llm_threads, b.stt_threads) == (llm, stt)


def test_thread_budget_on_two_cores_is_one_and_one():
    b = ThreadBudget(2, 2, 0, cores=2)
    assert (b.llm_overlap, b.stt_overlap) == (1, 1)


# ------------------------------------------------------------------ VoicePipeline streaming path
def test_hit_keeps_the_speculative_generation(spec_settings):
    pipe, llm = _pipe(spec_settings)
    audio = Audio(utterance(), SR)
    turn = pipe.run(audio, streaming_stt=True)
    spec = [e for e in turn.events if e.stage == "llm.speculative"]
    assert len(spec) == 1 and spec[0].data["hit"] is True and turn.speculative == "hit"
    assert llm.calls == 1  # the LLM was called once: the speculative generation is the answer
    assert QUESTION in turn.answer and turn.transcript == QUESTION
    _check_nothing_before_final(turn.events)
    assert "".join(e.text for e in turn.events if e.stage == "llm.token").strip() == turn.answer
    assert any(e.stage == "tts.chunk" for e in turn.events) and not turn.cancelled
    # the thread budget was applied while the final decode ran (1 of 2 cores), never above LLM_THREADS
    assert llm.thread_log and max(llm.thread_log) <= spec_settings.llm_threads
    assert pipe._specs == {}


def test_miss_restarts_on_the_final(spec_settings):
    pipe, llm = _pipe(spec_settings, partial_text="What is the weather", token_delay=0.005)
    turn = pipe.run(Audio(utterance(), SR), streaming_stt=True)
    spec = [e for e in turn.events if e.stage == "llm.speculative"]
    assert len(spec) == 1 and spec[0].data["hit"] is False and turn.speculative == "miss"
    assert spec[0].text == "What is the weather"
    # the turn called the LLM on the final (the speculation may have been cancelled before its call)
    assert llm.calls in (1, 2)
    assert "tomorrow" in turn.answer  # answered on the final text
    # nothing of the speculative answer ("You said: What is the weather This is ...") was sent
    said = "".join(e.text for e in turn.events if e.stage in ("llm.token", "llm.sentence", "tts.chunk"))
    assert "weather This" not in said and "weather like tomorrow" in said
    assert llm.last_messages[-1]["content"].endswith(QUESTION)
    _check_nothing_before_final(turn.events)
    assert pipe._specs == {}


def test_off_does_not_speculate(mock_settings):
    pipe, llm = _pipe(mock_settings.model_copy(update={"turn_speculative": "off"}))
    turn = pipe.run(Audio(utterance(), SR), streaming_stt=True)
    assert not any(e.stage == "llm.speculative" for e in turn.events) and turn.speculative == ""
    assert llm.calls == 1 and QUESTION in turn.answer


def test_unstable_partials_do_not_speculate(spec_settings):
    # the mock's default text names the seconds of speech: every partial differs
    stt = MockSTT(partial_interval=0.1, silence=0.3)
    pipe = VoicePipeline(stt, MockLLM(), MockTTS(), settings=spec_settings, language="en")
    turn = pipe.run(Audio(utterance(), SR), streaming_stt=True)
    assert not any(e.stage == "llm.speculative" for e in turn.events)
    stable1 = VoicePipeline(MockSTT(partial_interval=0.1, silence=0.3), MockLLM(), MockTTS(), language="en",
                            settings=spec_settings.model_copy(update={"turn_speculative_stable": 1}))
    turn = stable1.run(Audio(utterance(), SR), streaming_stt=True)
    assert len([e for e in turn.events if e.stage == "llm.speculative"]) == 1  # the last partial as it is


def test_two_utterances_in_one_clip_speculate_on_the_whole_turn(spec_settings):
    pipe, llm = _pipe(spec_settings)
    a = np.concatenate([utterance(), utterance()])
    turn = pipe.run(Audio(a, SR), streaming_stt=True)
    spec = [e for e in turn.events if e.stage == "llm.speculative"]
    assert len(spec) == 1 and spec[0].data["hit"] is True and turn.transcript == f"{QUESTION} {QUESTION}"
    assert llm.calls in (1, 2)  # the first utterance's speculation was dropped when speech went on


def test_cancel_during_speculation_cleans_up(spec_settings):
    pipe, llm = _pipe(spec_settings, token_delay=0.05, answer="word " * 200)
    spec = pipe.speculate("rid-1", QUESTION, 3, "en")
    assert spec is not None and pipe._specs == {"rid-1": spec}
    deadline = time.time() + 10
    while spec.tokens == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert spec.tokens > 0 and spec.llm_threads() == spec.budget.llm_overlap
    pipe.cancel("rid-1")
    spec.join(10)
    assert not spec.running and spec.cancel_event.is_set() and pipe._specs == {}
    assert spec.tokens < 200
    # and cancel() of every turn reaches speculations too
    spec2 = pipe.speculate("rid-2", QUESTION, 3, "en")
    assert spec2 is not None
    pipe.cancel()
    spec2.join(10)
    assert not spec2.running and pipe._specs == {}


def test_a_turn_cancelled_while_consuming_the_speculation_stops_it(spec_settings):
    pipe, llm = _pipe(spec_settings, token_delay=0.02, answer="word " * 2000)
    events: list = []
    done = threading.Event()

    def run():
        pipe.run(Audio(utterance(), SR), streaming_stt=True, request_id="r1", on_event=events.append)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.time() + 10
    while not any(e.stage == "llm.token" for e in events) and time.time() < deadline:
        time.sleep(0.01)
    pipe.cancel("r1")
    assert done.wait(10)
    fin = [e for e in events if e.stage == "turn.done"]
    assert fin and fin[0].data.get("cancelled") is True
    assert [e.data["hit"] for e in events if e.stage == "llm.speculative"] == [True]
    assert pipe._specs == {} and llm.calls == 1
    assert sum(1 for e in events if e.stage == "llm.token") < 2000


def test_generation_error_in_the_speculation_restarts_on_the_final(spec_settings):
    class FailOnce(MockLLM):
        def stream_chat(self, messages, **kw):
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError("engine hiccup")
            return super().stream_chat(messages, **kw)

    stt = MockSTT(text=QUESTION, partial_interval=0.1, silence=0.3)
    llm = FailOnce()
    pipe = VoicePipeline(stt, llm, MockTTS(), settings=spec_settings, language="en")
    turn = pipe.run(Audio(utterance(), SR), streaming_stt=True)
    assert len([e for e in turn.events if e.stage == "llm.speculative"]) == 1  # the last partial as it is
    assert QUESTION in turn.answer and not turn.error


# ------------------------------------------------------------------ VoiceSession
def _session(settings, **kw):
    pipe, llm = _pipe(settings, **kw)
    events: list = []
    return VoiceSession(pipe, events.append), events, llm


def _feed(sess, a):
    for f in frames(a):
        sess.feed(f)


def test_session_hit_and_miss(spec_settings):
    sess, events, llm = _session(spec_settings)
    _feed(sess, utterance())
    sess.wait(20)
    _feed(sess, silence(0.5))
    assert [e.data["hit"] for e in events if e.stage == "llm.speculative"] == [True]
    assert llm.calls == 1 and QUESTION in sess.turns[-1].answer and sess.turns[-1].speculative == "hit"
    _check_nothing_before_final(events)
    sess.close()

    sess, events, llm = _session(spec_settings, partial_text="What is the")
    _feed(sess, utterance())
    sess.wait(20)
    assert [e.data["hit"] for e in events if e.stage == "llm.speculative"] == [False]
    assert llm.calls in (1, 2) and "tomorrow" in sess.turns[-1].answer
    said = "".join(e.text for e in events if e.stage in ("llm.token", "llm.sentence", "tts.chunk"))
    assert "the This" not in said
    _check_nothing_before_final(events)
    sess.close()
    assert sess.pipeline._specs == {}


class BackchannelSTT(MockSTT):
    """Short utterances (< 0.45 s of voice) say "uh-huh", longer ones ask the question."""

    def _text_for(self, seconds: float) -> str:
        return "" if seconds <= 0.0 else ("uh-huh" if seconds < 0.45 else QUESTION)


def test_session_does_not_speculate_over_an_answer(spec_settings):
    """Speech over a running answer may be a back-channel or a barge-in: no speculation then."""
    llm = MockLLM(token_delay=0.03, answer="It will be sunny. " * 40)
    pipe = VoicePipeline(BackchannelSTT(partial_interval=0.1, silence=0.3), llm, MockTTS(), settings=spec_settings,
                         language="en")
    events: list = []
    sess = VoiceSession(pipe, events.append)
    _feed(sess, utterance())
    deadline = time.time() + 10
    while not any(e.stage == "tts.chunk" for e in events) and time.time() < deadline:
        time.sleep(0.01)
    _feed(sess, np.concatenate([tone(0.3, freq=330.0), silence(0.6)]))  # "uh-huh" over the answer
    assert sess.stats["backchannels"] == 1
    sess.wait(30)
    assert [e.data["hit"] for e in events if e.stage == "llm.speculative"] == [True]  # the first turn only
    assert not any(e.stage == "turn.barge_in" for e in events)
    assert len([e for e in events if e.stage == "turn.done"]) == 1 and llm.calls == 1
    sess.close()
    assert pipe._specs == {}


def test_session_close_during_speculation_cleans_up(spec_settings):
    sess, events, llm = _session(spec_settings, token_delay=0.05, answer="word " * 200)
    hook = sess._stream.on_turn_end
    assert hook is not None
    assert hook(QUESTION, 2, "en") == sess._spec.budget.stt_overlap  # the final decode's share
    spec = sess._spec
    sess.close()
    spec.join(10)
    assert not spec.running and spec.cancel_event.is_set() and sess.pipeline._specs == {}
    assert not any(e.stage in ANSWER_EVENTS for e in events)


def test_session_unanswered_utterance_drops_the_speculation(spec_settings):
    pipe, llm = _pipe(spec_settings, token_delay=0.02, answer="word " * 100)
    events: list = []
    sess = VoiceSession(pipe, events.append, respond_to=lambda rid, tr: False)
    _feed(sess, utterance())
    time.sleep(0.2)
    assert not any(e.stage in ANSWER_EVENTS for e in events) and pipe._specs == {}
    assert llm.calls <= 1  # started (or cancelled before its call), never answered
    sess.close()


# ------------------------------------------------------------------ /v1/voice
def test_ws_voice_reports_the_speculation_and_answers_after_the_final(tmp_path):
    import asyncio
    import json

    import websockets
    from test_serve import Server, _send_audio, _ws_events, _ws_url, settings_for

    from spark_voice.backends.mock import MockEmbedder
    from spark_voice.serve.app import create_app

    s = settings_for(tmp_path, TURN_SPECULATIVE="on")
    pipe, llm = _pipe(s, token_delay=0.005)

    async def go(url):
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()  # session.created
            await ws.send(json.dumps({"type": "start", "language": "en", "format": "pcm"}))
            await _send_audio(ws, utterance())
            return await _ws_events(ws, lambda e: e["type"] == "turn.done", timeout=30)

    with Server(create_app(s, pipe, embedder=MockEmbedder())) as srv:
        srv.wait_ready()
        events = asyncio.run(go(_ws_url(srv)))
    kinds = [e["type"] for e in events]
    assert "llm.speculative" in kinds, kinds
    spec = events[kinds.index("llm.speculative")]
    assert spec["hit"] is True and "tokens" in spec
    i_final = kinds.index("stt.final")
    assert kinds.index("llm.speculative") > i_final
    assert not any(k in ANSWER_EVENTS for k in kinds[:i_final])
    assert "tts.chunk" in kinds and not events[-1].get("cancelled")


def test_stream_wrappers_pass_the_hook_on():
    from spark_voice.bench.clips import PacedSTT
    from spark_voice.serve.engines import EngineGate, GatedSttStream

    def hook(partial: str, agreeing: int, language: str) -> int:
        return 1

    inner = MockSTT(text=QUESTION).stream("en")
    paced = PacedSTT(MockSTT()).stream("en")
    paced.inner = inner
    paced.on_turn_end = hook
    assert inner.on_turn_end is hook and paced.on_turn_end is hook
    inner2 = MockSTT(text=QUESTION).stream("en")
    gated = GatedSttStream(inner2, EngineGate("stt", 1, 1))
    gated.on_turn_end = hook
    assert inner2.on_turn_end is hook and gated.on_turn_end is hook


def test_bench_compares_on_and_off_side_by_side(mock_settings):
    from spark_voice.bench.speculative_compare import format_speculative, run_speculative

    stt = MockSTT(text=QUESTION, partial_interval=0.1, silence=0.3)
    pipe = VoicePipeline(stt, MockLLM(), MockTTS(), settings=mock_settings, language="en")
    lines: list[str] = []
    rep = run_speculative(pipe, mock_settings, rounds=1, paced=None, printer=lines.append)
    turns = rep["turns"]
    assert turns and {t["spec"] for t in turns} == {"on", "off"}
    assert sum(1 for t in turns if t["spec"] == "on") == rep["hits"] + rep["misses"] + rep["none"]
    assert rep["hits"] >= 1 and all(t["outcome"] == "none" for t in turns if t["spec"] == "off")
    assert "eos_first_audio" in rep["en"] and rep["en"]["eos_first_audio"]["on_p50"] is not None
    assert pipe.settings.turn_speculative == mock_settings.turn_speculative  # restored
    out = format_speculative(rep)
    assert "hits" in out[0] and any("end of speech -> first audio" in x for x in out)
