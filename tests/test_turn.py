"""Turn-taking on mock engines: end-of-turn policy, barge-in policy, back-channels and resume in
VoiceSession and over /v1/voice. The real Smart Turn model runs in tests/test_turn_real.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import tone
from spark_voice import Audio, VoicePipeline
from spark_voice.backends.mock import MockLLM, MockSTT, MockTTS
from spark_voice.session import VoiceSession
from spark_voice.turn import EndOfTurn, MockTurnModel
from spark_voice.turn.features import N_FRAMES, N_MELS, WINDOW_SAMPLES, last_window, log_mel, mel_filters
from spark_voice.turn.interrupt import DEFAULT_BACKCHANNELS, BargeInPolicy, Interruption

SR = 16000


def falling(seconds: float = 1.0) -> np.ndarray:
    """A tone whose level falls over its last 0.4 s, as a voice at the end of a sentence."""
    a = tone(seconds)
    k = int(0.4 * SR)
    a[-k:] *= np.linspace(1.0, 0.2, k, dtype=np.float32)
    return a


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def frames(a: np.ndarray, n: int = 320):
    return [Audio(a[i:i + n], SR) for i in range(0, len(a), n)]


# ------------------------------------------------------------------ features
def test_log_mel_shape_range_and_padding_at_the_start():
    x = tone(2.0)
    w = last_window(x)
    assert len(w) == WINDOW_SAMPLES and not w[:WINDOW_SAMPLES - len(x)].any()  # zeros first, speech last
    assert np.array_equal(w[-len(x):], x)
    long = np.concatenate([np.ones(SR, np.float32) * 0.5, tone(8.0)])
    assert np.array_equal(last_window(long), long[-WINDOW_SAMPLES:])  # the last 8 s are kept
    f = log_mel(w)
    assert f.shape == (N_MELS, N_FRAMES) and f.dtype == np.float32
    assert f.max() - f.min() <= 2.0 + 1e-6  # clamped to max - 8 in log10, then / 4
    # the 220 Hz tone lands in a low mel band, only in the last 2 s (frames 600..800)
    band = int(np.argmax(f[:, 700]))
    assert band < 10 and f[band, 700] > f[band, 300] + 0.5


def test_mel_filters_are_slaney_normalised():
    fb = mel_filters()
    assert fb.shape == (201, 80) and (fb >= 0).all()
    hz = np.linspace(0, 8000, 201)
    areas = (fb * (hz[1] - hz[0])).sum(axis=0)  # unit area per filter (Slaney norm), up to sampling
    assert np.allclose(areas[5:], 1.0, rtol=0.15)


# ------------------------------------------------------------------ end-of-turn policy
def test_end_of_turn_policy_asks_then_waits_for_the_long_silence():
    eot = EndOfTurn(MockTurnModel(fixed=0.2), threshold=0.5, short_ms=200, long_ms=1000)
    assert eot.on_pause(tone(1.0)) is False and eot.holding
    assert eot.waited(500) is False
    assert eot.waited(1000) is True and not eot.holding
    eot2 = EndOfTurn(MockTurnModel(fixed=0.9))
    assert eot2.on_pause(tone(1.0)) is True
    assert eot.stats["incomplete"] == 1 and eot.stats["timeout"] == 1 and eot2.stats["complete"] == 1


def test_end_of_turn_model_failure_falls_back_to_silence():
    class Broken:
        def predict(self, samples):
            raise RuntimeError("boom")

    eot = EndOfTurn(Broken(), long_ms=300)
    assert eot.on_pause(tone(0.5)) is False and eot.waited(300) is True


def test_mock_turn_model_is_deterministic():
    m = MockTurnModel()
    rising = np.concatenate([tone(1.0, amp=0.1), tone(0.4, amp=0.4)])
    assert m.predict(falling()) == 1.0 and m.predict(tone(1.0)) == 0.0 and m.predict(rising) == 0.0
    assert m.predict(falling()) == 1.0  # the same answer every time


def _stream_events(stt, audio):
    s = stt.stream()
    out = []
    for f in frames(audio):
        out += s.feed(f)
    return out + s.flush()


def test_mock_stream_holds_an_incomplete_pause_and_ends_a_complete_one():
    def eot():
        return EndOfTurn(MockTurnModel(), short_ms=200, long_ms=1200)

    stt = MockSTT(language="en", end_of_turn=eot)
    # voice rising before a 600 ms pause, then more speech: one utterance, not two
    paused = np.concatenate([silence(0.2), tone(1.0, amp=0.3), tone(0.4, amp=0.6), silence(0.6),
                             falling(0.8), silence(1.0)])
    evs = _stream_events(stt, paused)
    finals = [e for e in evs if e.kind == "final"]
    ends = [e for e in evs if e.kind == "speech_end"]
    assert len(finals) == 1 and len([e for e in evs if e.kind == "speech_start"]) == 1
    assert ends[0].reason == "complete" and ends[0].silence_ms <= 250
    # complete turn: ends after the short pause instead of the fixed 500 ms
    evs = _stream_events(stt, np.concatenate([silence(0.2), falling(1.0), silence(0.8)]))
    end = next(e for e in evs if e.kind == "speech_end")
    assert end.reason == "complete" and end.silence_ms < 500
    # incomplete and the user never goes on: the long silence ends it
    evs = _stream_events(stt, np.concatenate([silence(0.2), tone(1.0, amp=0.1), tone(0.4, amp=0.4), silence(1.6)]))
    end = next(e for e in evs if e.kind == "speech_end")
    assert end.reason == "timeout" and 1150 <= end.silence_ms <= 1300


def test_mock_profile_builds_the_turn_stand_in(mock_settings):
    p = VoicePipeline.from_settings(mock_settings)
    s = p.stt.stream() if hasattr(p.stt, "stream") else None
    inner = getattr(s, "eot", None) or getattr(getattr(s, "_s", None), "eot", None)
    assert inner is not None and isinstance(inner.model, MockTurnModel)
    assert inner.short_ms == mock_settings.stt_turn_short_silence_ms


# ------------------------------------------------------------------ barge-in policy
def test_backchannels_and_real_words():
    p = BargeInPolicy()
    for t in ("はい", "はい。", "うん、うん", "ええ", "なるほど", "そうですね。", "Uh-huh.", "mm-hmm", "Okay.",
              "yeah, right",
              "ええと", "um", "はいえ。", "うん、ね"):
        assert p.real_words(t) == 0, t
    for t in ("ちょっと待って", "いいえ、違います", "wait", "Stop please.", "ええと、明日は", "yeah but no",
              "はい、雨"):
        assert p.real_words(t) >= 1, t
    assert p.is_backchannel("はい") and not p.is_backchannel("") and not p.is_backchannel("待って")


def test_backchannel_setting_matches_the_default_list(mock_settings):
    assert BargeInPolicy.from_settings(mock_settings).backchannels == DEFAULT_BACKCHANNELS


def test_interruption_state_machine():
    pol = BargeInPolicy(min_speech_ms=800, resume_ms=1500)
    i = Interruption(pol, start=10.0)
    assert i.on_text("はい") is None and i.on_time(10.3, voiced_ms=300) is None
    assert i.on_text("はい。", final=True) == "resume"
    i = Interruption(pol, start=10.0)
    assert i.on_text("ちょっと") == "barge_in" and i.on_text("待って") is None  # decided once
    i = Interruption(pol, start=10.0)
    assert i.on_time(10.9, voiced_ms=850) == "barge_in"  # long speech, no transcript yet
    i = Interruption(pol, start=10.0)
    assert i.on_time(11.6, voiced_ms=200) == "resume"    # a cough and nothing within the timeout


# ------------------------------------------------------------------ VoiceSession
class ScriptedSTT(MockSTT):
    """Short utterances (< 0.45 s of voice) say a back-channel, longer ones ask a question."""

    def __init__(self, backchannel: str = "はい", **kw) -> None:
        super().__init__(partial_interval=0.2, silence=0.3, language="ja", **kw)
        self.backchannel = backchannel

    def _text_for(self, seconds: float) -> str:
        if seconds <= 0.0:
            return ""
        return self.backchannel if seconds < 0.45 else "明日の天気を教えてください。"


def _session(mock_settings, stt, **kw):
    llm = MockLLM(token_delay=0.02, answer="明日は晴れです。" * 20)
    p = VoicePipeline(stt, llm, MockTTS(), settings=mock_settings, language="ja")
    events: list = []
    return VoiceSession(p, events.append, **kw), events


def _wait_for(events, pred, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(pred(e) for e in events):
            return
        time.sleep(0.01)
    raise AssertionError("event did not come: " + ", ".join(e.stage for e in events[-20:]))


def test_backchannel_does_not_interrupt_and_the_answer_resumes(mock_settings):
    sess, events = _session(mock_settings, ScriptedSTT())
    for f in frames(np.concatenate([silence(0.2), tone(1.0), silence(0.4)])):
        sess.feed(f)
    _wait_for(events, lambda e: e.stage == "tts.chunk")
    rid = next(e.request_id for e in events if e.stage == "tts.chunk")
    for f in frames(np.concatenate([tone(0.3, freq=330.0), silence(0.4)])):  # "はい" over the answer
        sess.feed(f)
    sess.wait(20)
    stages = [e.stage for e in events]
    assert "turn.paused" in stages and "turn.resumed" in stages and "turn.barge_in" not in stages
    assert stages.index("turn.paused") < stages.index("turn.resumed")
    done = [e for e in events if e.stage == "turn.done"]
    assert len(done) == 1 and done[0].request_id == rid and not done[0].data.get("cancelled")
    # the answer was spoken to its end: no chunk lost while paused, in order
    chunks = [e for e in events if e.stage == "tts.chunk" and e.request_id == rid]
    assert "".join(e.text for e in chunks).count("明日は晴れです。") >= 20 or len(chunks) >= 10
    assert sess.stats["backchannels"] == 1 and sess.stats["resumed"] == 1
    assert len(sess.turns) == 1  # the back-channel started no turn


def test_false_interruption_by_noise_resumes(mock_settings):
    sess, events = _session(mock_settings, Cough())
    for f in frames(np.concatenate([silence(0.2), tone(1.0), silence(0.4)])):
        sess.feed(f)
    _wait_for(events, lambda e: e.stage == "tts.chunk")
    for f in frames(np.concatenate([tone(0.15, freq=500.0), silence(0.5)])):
        sess.feed(f)
    _wait_for(events, lambda e: e.stage == "turn.resumed")
    sess.wait(20)
    assert not any(e.stage == "turn.barge_in" for e in events)
    assert [e.data.get("cancelled") for e in events if e.stage == "turn.done"] == [False]


def test_real_words_barge_in(mock_settings):
    sess, events = _session(mock_settings, ScriptedSTT())
    for f in frames(np.concatenate([silence(0.2), tone(1.0), silence(0.4)])):
        sess.feed(f)
    _wait_for(events, lambda e: e.stage == "tts.chunk")
    rid = next(e.request_id for e in events if e.stage == "tts.chunk")
    for f in frames(np.concatenate([tone(0.9, freq=330.0), silence(0.4)])):  # a question over the answer
        sess.feed(f)
    sess.wait(20)
    barge = [e for e in events if e.stage == "turn.barge_in"]
    assert barge and barge[0].request_id == rid and barge[0].data["reason"] in ("words", "speech")
    done = {e.request_id: e.data.get("cancelled") for e in events if e.stage == "turn.done"}
    assert done[rid] is True and len(done) == 2
    # nothing of the cancelled answer was sent after the barge-in
    i = next(i for i, e in enumerate(events) if e.stage == "turn.barge_in")
    assert not any(e.stage == "tts.chunk" and e.request_id == rid for e in events[i:])


def test_immediate_policy_cancels_on_any_onset(mock_settings):
    sess, events = _session(mock_settings, ScriptedSTT(), barge_in=BargeInPolicy(mode="immediate"))
    for f in frames(np.concatenate([silence(0.2), tone(1.0), silence(0.4)])):
        sess.feed(f)
    _wait_for(events, lambda e: e.stage == "tts.chunk")
    for f in frames(np.concatenate([tone(0.3, freq=330.0), silence(0.4)])):
        sess.feed(f)
    sess.wait(20)
    assert any(e.stage == "turn.barge_in" for e in events) and not any(e.stage == "turn.paused" for e in events)


# ------------------------------------------------------------------ /v1/voice
class Cough(ScriptedSTT):
    def _text_for(self, seconds: float) -> str:  # a cough: the recogniser finds no words
        return "" if seconds < 0.25 else super()._text_for(seconds)


@pytest.mark.parametrize("kind", ["backchannel", "cough"])
def test_ws_backchannel_or_cough_pauses_and_resumes(tmp_path, kind):
    import asyncio
    import json

    import websockets
    from test_serve import Server, _send_audio, _ws_events, _ws_url, settings_for

    from spark_voice.backends.mock import MockEmbedder
    from spark_voice.serve.app import create_app

    s = settings_for(tmp_path)
    stt = ScriptedSTT(backchannel="uh-huh") if kind == "backchannel" else Cough(backchannel="uh-huh")
    stt.language = "en"
    over = tone(0.3, freq=330.0) if kind == "backchannel" else tone(0.15, freq=500.0)
    pipe = VoicePipeline(stt, MockLLM(token_delay=0.02, answer="It will be sunny tomorrow. " * 12), MockTTS(),
                         settings=s, language="en")

    async def go(url):
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()  # session.created
            await ws.send(json.dumps({"type": "start", "language": "en", "format": "pcm"}))
            await _send_audio(ws, np.concatenate([silence(0.2), tone(1.0), silence(0.4)]))
            first = await _ws_events(ws, lambda e: e["type"] == "llm.sentence")
            await _send_audio(ws, np.concatenate([over, silence(0.4)]))  # "uh-huh", or a cough
            rest = await _ws_events(ws, lambda e: e["type"] == "turn.done", timeout=30)
            return first + rest

    with Server(create_app(s, pipe, embedder=MockEmbedder())) as srv:
        srv.wait_ready()
        events = asyncio.run(go(_ws_url(srv)))
    kinds = [e["type"] for e in events]
    assert "turn.paused" in kinds and "turn.resumed" in kinds and "turn.barge_in" not in kinds, kinds
    assert kinds.index("turn.paused") < kinds.index("turn.resumed")
    done = events[-1]
    assert not done.get("cancelled")
    rid = done["request_id"]
    assert len({e["request_id"] for e in events if e["type"] == "turn.done"}) == 1
    chunks = [e for e in events if e["type"] == "tts.chunk" and e["request_id"] == rid]
    assert chunks and [c["seq"] for c in chunks] == sorted(c["seq"] for c in chunks)  # in order, none lost
    assert sum(c["bytes"] for c in chunks) > 0


# ------------------------------------------------------------------ talk's speaker
def test_speaker_pauses_resumes_where_it_stopped_and_clears(monkeypatch):
    import sys

    from test_talk import fake_sounddevice

    written: list = []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(np.zeros(10, np.float32), written))
    from spark_voice.audio.devices import Speaker

    sp = Speaker()
    try:
        sp.pause()
        sp.play(Audio(tone(0.5, 16000), 16000))
        time.sleep(0.3)
        assert written == [] and sp.paused and sp.speaking  # held, not dropped
        sp.resume()
        deadline = time.time() + 5
        while sum(n for _, n in written) < 8000 and time.time() < deadline:
            time.sleep(0.01)
        assert sum(n for _, n in written) == 8000  # all of it, once
        sp.pause()
        sp.play(Audio(tone(0.5, 16000), 16000))
        sp.clear()  # barge-in: the queued chunk is dropped and the output is no longer paused
        time.sleep(0.2)
        assert sum(n for _, n in written) == 8000 and not sp.paused
    finally:
        sp.close()
