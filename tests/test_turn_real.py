"""Turn-taking on the real engines: Smart Turn v3.2 (ONNX) on the bundled pause / complete /
back-channel clips (made with our own voices), in whisper.cpp streams and in a VoiceSession."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, cer, need, need_module, wer
from spark_voice.backends.base import Audio
from spark_voice.backends.whisper.windowing import CTX_STEP, FINAL_MIN_CTX

pytestmark = pytest.mark.real
SR = 16000


def clip(name: str) -> Audio:
    from spark_voice.audio.io import load_audio

    p = EXAMPLES / f"{name}.wav"
    need(p.is_file(), f"{p} missing")
    return load_audio(p, SR)


@pytest.fixture(scope="module")
def settings():
    from spark_voice.config import Settings

    return Settings.load(ROOT, environ={}, profile="dev", STT_THREADS="2", TTS_THREADS="2", LLM_THREADS="2")


@pytest.fixture(scope="module")
def turn_model(settings):
    need_module("onnxruntime", "stt")
    from spark_voice.turn import find_turn_model, load_turn_model

    try:
        path = find_turn_model(settings)
    except Exception as exc:
        need(False, f"{exc}")
    return load_turn_model(path, threads=2)


def test_features_match_pipecat_reference(turn_model):
    """Our numpy log-mel equals the extractor shipped next to the model (pipecat's vendored copy of
    transformers' WhisperFeatureExtractor), loaded from its file without importing pipecat."""
    from spark_voice.turn.features import last_window, log_mel
    from spark_voice.turn.smart_turn import packaged_turn_model

    ref_file = packaged_turn_model().parent.parent / "_whisper_features.py"
    need(ref_file.is_file(), f"{ref_file} missing (pip install --no-deps pipecat-ai)")
    spec = importlib.util.spec_from_file_location("_pipecat_whisper_features", ref_file)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    for name in ("question_ja", "pause_en"):
        x = last_window(clip(name).samples)
        np.testing.assert_allclose(log_mel(x), ref.compute_whisper_log_mel_features(x), atol=1e-5)
    assert turn_model.features(clip("question_en").samples).shape == (1, 80, 800)


def _pause_points(samples: np.ndarray, settings) -> list[int]:
    """Sample positions 200 ms after each point where the VAD sees the voice stop."""
    from spark_voice.audio.vad import FRAME, find_vad_model, load_vad

    p = load_vad(find_vad_model(settings)).probs(samples)
    voiced = p >= 0.5
    return [min(len(samples), (i + 7) * FRAME) for i in range(1, len(p)) if voiced[i - 1] and not voiced[i]]


@pytest.mark.parametrize("name", ["pause_ja", "pause_en"])
def test_model_hears_the_mid_sentence_pause_as_incomplete(turn_model, settings, name):
    a = clip(name).samples
    points = _pause_points(a, settings)
    # the pause of 0.6 s sits in the middle of the clip
    mid = [c for c in points if 1.0 * SR < c < len(a) - 1.2 * SR]
    assert mid, points
    # STT_TURN_THRESHOLD sits between the two with margin (measured: mid-sentence 0.07-0.08)
    assert turn_model.predict(a[:mid[-1]]) < settings.stt_turn_threshold / 2
    assert turn_model.predict(a) >= settings.stt_turn_threshold  # the whole sentence is complete


@pytest.mark.parametrize("name", ["question_ja", "question_en"])
def test_model_hears_complete_questions(turn_model, settings, name):
    assert turn_model.predict(clip(name).samples) >= max(0.5, settings.stt_turn_threshold)


def _ask_points(samples: np.ndarray, settings) -> list[int]:
    """Where a stream asks the turn model: the stream's own detector (VAD hysteresis, a pause of
    STT_TURN_SHORT_SILENCE_MS) over the clip followed by 1 s of silence; sample positions."""
    from spark_voice.audio.vad import FRAME, SpeechDetector, find_vad_model, load_vad

    x = np.concatenate([samples, np.zeros(SR, np.float32)])
    det = SpeechDetector(threshold=settings.stt_vad_threshold, min_silence_ms=settings.stt_turn_short_silence_ms)
    probs = load_vad(find_vad_model(settings)).probs(x)
    return [(i + 1) * FRAME for i, p in enumerate(probs) if det.feed(float(p)) == "end"]


@pytest.mark.parametrize("name", ["question_ja", "question_en", "pause_ja", "pause_en"])
def test_threshold_separates_pauses_from_ends_where_the_stream_asks(turn_model, settings, name):
    """STT_TURN_THRESHOLD on the bundled clips, at the points where a stream asks the model: the
    sentence end is above it with margin (measured 0.37 for pause_en's Piper voice, 0.98-0.99 for
    the others), the mid-sentence pause of a pause clip well below it (measured 0.07-0.08)."""
    a = clip(name).samples
    x = np.concatenate([a, np.zeros(SR, np.float32)])
    points = _ask_points(a, settings)
    assert len(points) == (2 if name.startswith("pause") else 1), [p / SR for p in points]
    *mids, end = points
    assert turn_model.predict(x[:end]) >= settings.stt_turn_threshold * 1.2, name
    for p in mids:
        assert turn_model.predict(x[:p]) < settings.stt_turn_threshold / 2, (name, p / SR)


def _stt(settings, language: str, **kw):
    need_module("pywhispercpp", "stt")
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT

    s = settings.model_copy(update={"stt_language": language, "stt_model": "ggml-base.bin", **kw})
    need(s.model_path("stt").is_file(), "ggml-base.bin missing: run `spark-voice models prepare --small`")
    stt = WhisperCppSTT.from_settings(s)
    stt.load()
    return stt


def _events(stt, audio: Audio, language: str):
    s = stt.stream(language)
    assert s.end_of_turn is not None
    out = []
    for i in range(0, len(audio.samples), SR // 50):
        out += s.feed(Audio(audio.samples[i:i + SR // 50], SR))
    return out + s.flush()


@pytest.mark.parametrize("name", ["pause_ja", "pause_en"])
def test_stream_waits_through_the_pause(settings, name):
    """No early cut-off: one utterance, one final with both halves of the sentence."""
    lang = name[-2:]
    stt = _stt(settings, lang)
    try:
        evs = _events(stt, clip(name), lang)
    finally:
        stt.close()
    finals = [e for e in evs if e.kind == "final"]
    assert len(finals) == 1 and [e.kind for e in evs].count("speech_start") == 1, [(e.kind, e.text) for e in evs]
    text = finals[0].text
    words = ("会議", "時") if lang == "ja" else ("weather", "weekend")
    assert all(w in text.lower() for w in words), text
    end = next(e for e in evs if e.kind == "speech_end")
    assert end.reason == "complete", end  # the sentence end is heard as complete: no 2 s wait


@pytest.mark.parametrize("name", ["question_ja", "question_en"])
def test_stream_ends_a_complete_turn_early(settings, name):
    lang = name[-2:]
    stt = _stt(settings, lang)
    try:
        evs = _events(stt, clip(name), lang)
    finally:
        stt.close()
    end = next(e for e in evs if e.kind == "speech_end")
    assert end.reason == "complete" and end.silence_ms < settings.stt_silence_ms
    assert len([e for e in evs if e.kind == "final"]) == 1


def test_fitted_final_matches_the_full_context(settings):
    # the full-context reference in a context of its own: with flash attention a full decode reads
    # 36 padding rows that a shorter decode in the same context may have written
    # (spark_voice/backends/whisper/windowing.py)
    stt, full_stt = _stt(settings, "ja", stt_final_ctx="fitted"), _stt(settings, "ja", stt_final_ctx="full")
    try:
        for name in ("question_en", "question_ja", "pause_ja"):
            a, lang = clip(name), name[-2:]
            full = full_stt.transcribe(a, lang).text
            fitted = stt.transcribe(a, lang).text
            ctx = stt._final_params(lang, a.duration)["audio_ctx"]
            assert ctx % CTX_STEP == 0 and FINAL_MIN_CTX <= ctx <= 512  # short clips: a short context
            score = cer(full, fitted) if lang == "ja" else wer(full, fitted)
            assert score <= 0.05, (name, full, fitted)
    finally:
        stt.close()
        full_stt.close()


def test_voice_session_backchannel_does_not_interrupt(settings):
    """The real pipeline (whisper, SmolLM2, Kokoro): "はい" spoken over the answer pauses it, the
    answer resumes and finishes, no new turn starts."""
    from spark_voice.pipeline import VoicePipeline
    from spark_voice.session import VoiceSession

    need(settings.model_path("llm").is_file(), "LLM missing: run `spark-voice models prepare --small`")
    pipe = VoicePipeline.from_settings(settings.model_copy(update={"stt_language": "ja", "llm_max_tokens": 48,
                                                                   "rag_enabled": "off"}))
    events: list = []
    try:
        sess = VoiceSession(pipe, events.append)
        for name, pace in (("question_ja", 0.0), ("backchannel_ja", 0.02)):
            if name == "backchannel_ja":
                deadline = time.time() + 120
                while not any(e.stage == "tts.chunk" for e in events) and time.time() < deadline:
                    time.sleep(0.05)
                assert any(e.stage == "tts.chunk" for e in events), "no answer audio"
            a = clip(name).samples
            for i in range(0, len(a), SR // 50):
                sess.feed(Audio(a[i:i + SR // 50], SR))
                if pace:
                    time.sleep(pace)
        sess.flush()
        sess.wait(180)
        sess.close()
    finally:
        pipe.close()
    stages = [e.stage for e in events]
    finals = [e.text for e in events if e.stage == "stt.final"]
    assert "turn.barge_in" not in stages, finals
    done = [e for e in events if e.stage == "turn.done"]
    assert len(done) == 1 and not done[0].data.get("cancelled")
    assert "turn.paused" in stages and "turn.resumed" in stages, finals


def test_speculative_turn_on_the_real_engines(settings):
    """Speculative start on whisper.cpp + SmolLM2 + Piper: the streamed turn completes with an
    answer whichever way the speculation goes, and a speculation on the final's own words is kept
    (a hit: the answer streams from it, after stt.final)."""
    import llama_cpp

    from spark_voice.pipeline import VoicePipeline
    from spark_voice.types import Transcript

    need(settings.model_path("llm").is_file(), "LLM missing: run `spark-voice models prepare --small`")
    s = settings.model_copy(update={"stt_language": "en", "llm_max_tokens": 24, "rag_enabled": "off",
                                    "turn_speculative": "on", "turn_speculative_stable": 1})
    pipe = VoicePipeline.from_settings(s, load=True)
    answer_stages = ("llm.token", "llm.sentence", "tts.chunk")
    try:
        a = clip("question_en")
        audio = Audio(np.concatenate([a.samples, np.zeros(int(2.5 * SR), np.float32)]), SR)
        turn = pipe.run(audio, streaming_stt=True)
        stages = [e.stage for e in turn.events]
        assert "france" in turn.transcript.lower() and turn.answer and not turn.error and not turn.cancelled
        assert "tts.chunk" in stages
        i_final = stages.index("stt.final")
        assert not any(st in answer_stages for st in stages[:i_final]), stages
        spec = [e for e in turn.events if e.stage == "llm.speculative"]
        assert len(spec) <= 1 and turn.speculative == ("" if not spec else ("hit" if spec[0].data["hit"] else "miss"))
        # a speculation on exactly the final's words is kept
        pipe.reset()
        sp = pipe.speculate("real-spec", turn.transcript, 2, "en")
        assert sp is not None and sp.budget.llm_overlap + sp.budget.stt_overlap <= max(2, sp.budget.cores)
        events: list = []
        t2 = pipe.turn(events.append, transcript=Transcript(turn.transcript, [], "en"), request_id="real-spec",
                       speculation=sp)
        assert t2.speculative == "hit" and t2.answer and not t2.error
        assert [e.data["hit"] for e in events if e.stage == "llm.speculative"] == [True]
        assert "".join(e.text for e in events if e.stage == "llm.token").strip() == t2.answer
        assert any(e.stage == "tts.chunk" for e in events)
        assert not sp.running and pipe._specs == {}
        # the LLM's threads came back to LLM_THREADS after a generation that ran on fewer
        llm = pipe.llm
        assert llama_cpp.llama_n_threads(llm.llm.ctx) == llm.n_threads == 2
    finally:
        pipe.close()


def test_llama_threads_follow_the_budget_between_tokens(settings):
    need_module("llama_cpp", "llm")
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM

    need(settings.model_path("llm").is_file(), "LLM missing: run `spark-voice models prepare --small`")
    llm = LlamaCppLLM.from_settings(settings)
    import llama_cpp

    seen: list[int] = []

    def threads() -> int:
        n = 1 if len(seen) < 3 else 2
        seen.append(llama_cpp.llama_n_threads(llm.llm.ctx))
        return n

    try:
        msgs = [{"role": "user", "content": "Count from one to ten."}]
        out = "".join(d.text for d in llm.stream_chat(msgs, max_tokens=8, temperature=0.0, n_threads=threads))
        assert out.strip()
        # read before each decode: the prompt and first tokens on 1 thread, then back to 2
        assert seen[0] == 2 and 1 in seen[1:4] and seen[-1] == 2
        assert llama_cpp.llama_n_threads(llm.llm.ctx) == 2
    finally:
        llm.close()
