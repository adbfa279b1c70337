"""`spark-voice talk` with a fake sounddevice (no PortAudio device here): microphone frames from a
WAV go through a VoiceSession and the spoken answer reaches the output stream."""

import sys
import threading
import time
import types

import numpy as np

from conftest import tone
from spark_voice.cli import main


def fake_sounddevice(mic_audio: np.ndarray, written: list):
    sd = types.ModuleType("sounddevice")
    sd.default = types.SimpleNamespace(device=(0, 1))

    def query_devices():
        return [{"name": "fake mic", "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 16000},
                {"name": "fake speaker", "max_input_channels": 0, "max_output_channels": 2,
                 "default_samplerate": 48000}]

    class InputStream:
        def __init__(self, samplerate, channels, dtype, blocksize, device, callback):
            self.cb, self.block = callback, blocksize
            self._stop = threading.Event()

        def start(self):
            def run():
                for i in range(0, len(mic_audio), self.block):
                    if self._stop.is_set():
                        return
                    block = mic_audio[i:i + self.block]
                    self.cb(block.reshape(-1, 1), len(block), None, None)
                    time.sleep(0.002)  # faster than real time
            threading.Thread(target=run, daemon=True).start()

        def stop(self):
            self._stop.set()

        def close(self):
            pass

    class OutputStream:
        def __init__(self, samplerate, channels, dtype, device):
            self.rate = samplerate

        def start(self):
            pass

        def write(self, data):
            written.append((self.rate, len(data)))

        def stop(self):
            pass

        def close(self):
            pass

    sd.query_devices = query_devices
    sd.check_input_settings = lambda **kw: None
    sd.check_output_settings = lambda **kw: None
    sd.InputStream, sd.OutputStream = InputStream, OutputStream
    return sd


def test_talk_hears_and_answers(monkeypatch, capsys):
    sr = 16000
    speech = np.concatenate([np.zeros(sr // 4, np.float32), tone(1.0, sr), np.zeros(sr, np.float32)])
    written: list = []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(speech, written))
    assert main(["talk", "--profile", "mock", "--seconds", "3", "--set", "STT_LANGUAGE=en"]) == 0
    out = capsys.readouterr()
    assert "you: This is a mock transcript" in out.out and "assistant: You said:" in out.out
    assert written and sum(n for _, n in written) > 0.5 * written[0][0]  # over half a second spoken
    assert "latency p50" in out.err


def test_talk_lists_devices(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(np.zeros(10, np.float32), []))
    assert main(["talk", "--list-devices"]) == 0
    out = capsys.readouterr().out
    assert "input    0  fake mic  (default)" in out and "output   1  fake speaker  (default)" in out


def test_talk_without_portaudio_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails
    assert main(["talk", "--profile", "mock", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "spark-voice[audio]" in err and "libportaudio2" in err and "Traceback" not in err
