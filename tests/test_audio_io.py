"""Audio output: encode / write at TTS_SAMPLE_RATE (Opus rate rule), the streaming encoder for the
server, and the optional sounddevice playback (clear errors without PortAudio / device)."""

from __future__ import annotations

import io
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, need
from spark_voice import Audio
from spark_voice.audio.io import MEDIA_TYPES, StreamEncoder, encode, encoded_rate, load_audio, resample, write_audio
from spark_voice.errors import AudioError, BackendUnavailable, MissingDependency


def tone_audio(seconds=1.0, sr=22050, freq=220.0) -> Audio:
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    return Audio((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


# --------------------------------------------------------------------------- whole-file encoding
@pytest.mark.parametrize("fmt,rate,real", [("opus", 44100, 48000), ("opus", 24000, 24000), ("opus", 22050, 48000),
                                           ("wav", 44100, 44100), ("flac", 44100, 44100), ("pcm", 44100, 44100),
                                           ("wav", 16000, 16000)])
def test_encode_rate_rule(fmt, rate, real):
    a = tone_audio(1.0, 22050)
    data, got = encode(a, fmt, rate)
    assert got == real == encoded_rate(fmt, rate)
    if fmt == "pcm":
        assert len(data) == 2 * round(a.duration * real)
        back = load_audio(np.frombuffer(data, "<i2"), source_rate=real)
    else:
        back = load_audio(data)
        assert back.sample_rate == real
    assert abs(back.duration - 1.0) < 0.03


def test_written_ogg_decodes_with_rate_channels_duration(tmp_path):
    a = tone_audio(2.5, 24000)
    path, rate = write_audio(tmp_path / "answer.ogg", a, sample_rate=44100)
    assert rate == 48000
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "OPUS", 48000, 1)
    assert abs(info.duration - 2.5) < 0.03
    p2, r2 = write_audio(tmp_path / "answer.wav", a, sample_rate=44100)
    i2 = sf.info(str(p2))
    assert (r2, i2.samplerate, i2.channels, i2.subtype) == (44100, 44100, 1, "PCM_16")
    assert abs(i2.duration - 2.5) < 0.01
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_real_voice_ogg(tmp_path):
    """A real synthesised answer (piper) written as .ogg at TTS_SAMPLE_RATE=44100."""
    from spark_voice.backends.tts_piper import PiperTTS

    d = ROOT / "models" / "tts" / "piper"
    need(any(d.glob("*.onnx")), f"{d} has no piper voice: run `spark-voice models prepare --small`")
    tts = PiperTTS(d, threads=2)
    audio = Audio.concat(list(tts.synthesize("This answer is written as an Ogg Opus file.")))
    path, rate = write_audio(tmp_path / "a.ogg", audio, "opus", 44100)
    back = load_audio(path)
    assert rate == 48000 and back.sample_rate == 48000 and abs(back.duration - audio.duration) < 0.03
    # the content survives: correlation with the original after resampling
    ref = resample(audio, 48000).samples
    n = min(len(ref), len(back.samples))
    assert np.corrcoef(ref[:n], back.samples[:n])[0, 1] > 0.5


# --------------------------------------------------------------------------- streaming encoder
def chunks_mixed_rates():
    return [tone_audio(1.0, 22050), tone_audio(0.5, 22050, 330.0), tone_audio(1.0, 24000, 440.0)]


@pytest.mark.parametrize("fmt,rate,real", [("opus", 44100, 48000), ("opus", 24000, 24000), ("wav", 44100, 44100),
                                           ("pcm", 16000, 16000), ("flac", 44100, 44100)])
def test_stream_encoder_concatenation_is_a_valid_file(fmt, rate, real):
    enc = StreamEncoder(fmt, rate)
    assert enc.rate == real and enc.media_type == MEDIA_TYPES[fmt]
    parts = [enc.header()] + [enc.add(c) for c in chunks_mixed_rates()] + [enc.finish()]
    data = b"".join(parts)
    if fmt == "pcm":
        back = load_audio(np.frombuffer(data, "<i2"), source_rate=real)
    else:
        back = load_audio(data)
        assert back.sample_rate == real
    assert abs(back.duration - 2.5) < 0.03 and abs(enc.duration - 2.5) < 0.03
    assert enc.finish() == b""  # idempotent
    if fmt in ("opus", "wav", "pcm"):  # really streamed: bytes come with each chunk, not only at the end
        assert all(len(p) > 0 for p in parts[1:4])
        assert sum(len(p) for p in parts[1:4]) > 0.8 * len(data)


def test_stream_encoder_wav_header_first():
    enc = StreamEncoder("wav", 24000)
    head = enc.header()
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and len(head) == 44
    assert enc.header() == b""  # taken once
    body = enc.add(tone_audio(0.5, 24000))
    assert len(body) == 2 * 12000


def test_stream_encoder_rate_from_first_chunk_and_empty_stream():
    enc = StreamEncoder("opus")
    data = enc.add(tone_audio(0.5, 22050)) + enc.finish()
    assert enc.rate == 48000 and load_audio(data).sample_rate == 48000
    empty = StreamEncoder("opus", 24000).finish()
    back = load_audio(empty)
    assert back.sample_rate == 24000 and back.duration < 0.05


def test_stream_encoder_bad_use():
    with pytest.raises(AudioError, match="accepted values"):
        StreamEncoder("mp3", 24000)
    enc = StreamEncoder("pcm", 16000)
    enc.finish()
    with pytest.raises(AudioError):
        enc.add(tone_audio(0.1, 16000))


def test_stream_encoder_bounded_memory():
    """Many chunks: the encoder keeps nothing it has already handed out."""
    enc = StreamEncoder("opus", 48000)
    chunk = tone_audio(0.5, 48000)
    for _ in range(60):  # 30 s
        enc.add(chunk)
        assert len(enc._sink._pending) < 20_000
    assert len(enc.finish()) > 0


# --------------------------------------------------------------------------- playback
def test_playback_without_sounddevice(monkeypatch):
    from spark_voice.audio import devices

    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(MissingDependency) as e:
        devices.play(tone_audio(0.1))
    assert "spark-voice[audio]" in str(e.value) and "libportaudio2" in str(e.value)
    assert isinstance(e.value, BackendUnavailable)


def test_playback_without_portaudio(monkeypatch):
    from spark_voice.audio import devices

    class Finder:  # what `import sounddevice` does when libportaudio2 is missing
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(BackendUnavailable, match="libportaudio2") as e:
        devices.output_devices()
    assert "spark-voice[audio]" in str(e.value)


def fake_sounddevice(monkeypatch, *, device_ok=True):
    written = []

    class OutputStream:
        def __init__(self, samplerate, channels, dtype, device=None):
            self.samplerate = samplerate

        def start(self):
            pass

        def write(self, data):
            written.append((self.samplerate, data.shape))

        def stop(self):
            pass

        def close(self):
            pass

    def check_output_settings(device=None, channels=None, dtype=None):
        if not device_ok:
            raise RuntimeError("Error querying device -1")

    sd = types.SimpleNamespace(OutputStream=OutputStream, check_output_settings=check_output_settings,
                               play=lambda *a, **k: written.append(("play", len(a[0]))),
                               query_devices=lambda: [{"name": "out", "max_output_channels": 2,
                                                       "default_samplerate": 48000.0}],
                               default=types.SimpleNamespace(device=(0, 0)))
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return written


def test_playback_without_output_device(monkeypatch):
    from spark_voice.audio import devices

    fake_sounddevice(monkeypatch, device_ok=False)
    with pytest.raises(BackendUnavailable, match="no usable audio output device"):
        devices.play(tone_audio(0.1))


def test_play_stream_resamples_to_first_rate(monkeypatch):
    from spark_voice.audio import devices

    written = fake_sounddevice(monkeypatch)
    secs = devices.play_stream(iter([tone_audio(0.5, 22050), tone_audio(0.5, 24000)]))
    assert abs(secs - 1.0) < 0.01
    assert [w[0] for w in written] == [22050, 22050] and written[1][1] == (11025, 1)
    assert devices.output_devices()[0]["default"] is True
    devices.play(tone_audio(0.1, 16000))
    assert written[-1] == ("play", 1600)


def test_bytes_roundtrip_via_io():
    a = tone_audio(0.3, 16000)
    data, _ = encode(a, "wav")
    assert sf.info(io.BytesIO(data)).samplerate == 16000
