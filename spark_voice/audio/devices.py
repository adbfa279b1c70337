"""Optional playback through the speakers (sounddevice + PortAudio), imported only when used.

    from spark_voice.audio.devices import play, play_stream, output_devices
    play(audio)                                  # blocks until played
    play_stream(tts.synthesize("Hello."))        # plays chunks as they come

Without the `sounddevice` package, without the PortAudio library, or without an output device,
these raise BackendUnavailable saying what to install: `pip install 'spark-voice[audio]'` and
`sudo apt-get install libportaudio2` (Debian/Ubuntu).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, MissingDependency, SparkVoiceError
from ..types import Audio

INSTALL_HINT = "pip install 'spark-voice[audio]' and, on Debian/Ubuntu, sudo apt-get install libportaudio2"


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except ImportError as exc:
        raise MissingDependency(
            "sounddevice", "audio", f"{exc}; also needs the PortAudio library: sudo apt-get install libportaudio2"
        ) from None
    except OSError as exc:  # the package is there, the PortAudio shared library is not
        raise BackendUnavailable(f"sounddevice cannot load PortAudio ({exc}); {INSTALL_HINT}") from None
    return sd


def _devices(kind: str) -> list[dict]:
    sd = _sounddevice()
    slot, key = (0, "max_input_channels") if kind == "input" else (1, "max_output_channels")
    try:
        devices = sd.query_devices()
        default = sd.default.device[slot] if sd.default.device is not None else -1
    except Exception as exc:
        raise BackendUnavailable(f"cannot list audio devices: {exc}; {INSTALL_HINT}") from None
    return [{"index": i, "name": d["name"], "channels": d[key], "default_samplerate": d["default_samplerate"],
             "default": i == default} for i, d in enumerate(devices) if d.get(key, 0) > 0]


def output_devices() -> list[dict]:
    """The output devices PortAudio sees: [{index, name, channels, default_samplerate, default}]."""
    return _devices("output")


def input_devices() -> list[dict]:
    """The input devices PortAudio sees: [{index, name, channels, default_samplerate, default}]."""
    return _devices("input")


def _check_output(sd: Any, device: int | str | None) -> None:
    try:
        sd.check_output_settings(device=device, channels=1, dtype="float32")
    except Exception as exc:
        raise BackendUnavailable(f"no usable audio output device ({exc}); connect one or choose another "
                                 f"with device=; {INSTALL_HINT}") from None


def play(audio: Audio, *, device: int | str | None = None, blocking: bool = True) -> None:
    """Play mono audio at its own rate."""
    sd = _sounddevice()
    _check_output(sd, device)
    try:
        sd.play(np.asarray(audio.samples, dtype=np.float32), audio.sample_rate, device=device, blocking=blocking)
    except Exception as exc:
        raise BackendUnavailable(f"audio playback failed: {exc}") from None


def play_stream(chunks: Iterable[Audio], *, device: int | str | None = None) -> float:
    """Play chunks as they arrive through one output stream (rate of the first chunk; later chunks
    at another rate are resampled). Returns the seconds played."""
    from .io import resample

    sd = _sounddevice()
    _check_output(sd, device)
    stream, rate, played = None, 0, 0.0
    try:
        for chunk in chunks:
            if stream is None:
                rate = chunk.sample_rate
                stream = sd.OutputStream(samplerate=rate, channels=1, dtype="float32", device=device)
                stream.start()
            a = resample(chunk, rate)
            if len(a.samples):
                stream.write(np.ascontiguousarray(a.samples.reshape(-1, 1)))
                played += a.duration
    except SparkVoiceError:
        raise
    except Exception as exc:  # PortAudio errors
        raise BackendUnavailable(f"audio playback failed: {exc}") from None
    finally:
        if stream is not None:
            stream.stop()
            stream.close()
    return played



class Microphone:
    """Mono float32 frames from an input device, `frame_ms` long, at `sample_rate`.

        with Microphone() as mic:
            for frame in mic.frames(seconds=10):   # Audio objects; stops after `seconds` if given
                session.feed(frame)
    """

    def __init__(self, *, sample_rate: int = 16_000, frame_ms: int = 20, device: int | str | None = None) -> None:
        import queue

        self.sample_rate, self.device = sample_rate, device
        self.blocksize = int(sample_rate * frame_ms / 1000)
        self._q: queue.Queue = queue.Queue(maxsize=500)  # 10 s of 20 ms frames; older ones drop
        self._stream: Any = None  # sounddevice.InputStream
        self.dropped = 0

    def __enter__(self) -> "Microphone":
        sd = _sounddevice()
        try:
            sd.check_input_settings(device=self.device, channels=1, dtype="float32", samplerate=self.sample_rate)
            self._stream = sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                                          blocksize=self.blocksize, device=self.device, callback=self._callback)
            self._stream.start()
        except SparkVoiceError:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"no usable microphone ({exc}); connect one or choose another with "
                                     f"--input-device; {INSTALL_HINT}") from None
        return self

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        import queue

        try:
            self._q.put_nowait(np.array(indata[:, 0], dtype=np.float32))
        except queue.Full:
            self.dropped += 1

    def frames(self, seconds: float | None = None):
        import queue
        import time

        end = None if seconds is None else time.monotonic() + seconds
        while end is None or time.monotonic() < end:
            try:
                yield Audio(self._q.get(timeout=0.5), self.sample_rate)
            except queue.Empty:
                continue

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


class Speaker:
    """Plays chunks in order on a background thread; `clear()` drops what is queued (barge-in);
    `pause()` stops the output within ~40 ms and `resume()` goes on where it stopped."""

    def __init__(self, *, device: int | str | None = None) -> None:
        import queue
        import threading

        self.device = device
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._playing = threading.Event()  # cleared while paused
        self._playing.set()
        self._dropped = 0                  # clear() generation: a chunk being written stops too
        self._thread = threading.Thread(target=self._run, name="speaker", daemon=True)
        self._sd = _sounddevice()
        _check_output(self._sd, device)
        self.error: Exception | None = None
        self._thread.start()

    @property
    def speaking(self) -> bool:
        return self._busy.is_set() or not self._q.empty()

    def play(self, chunk: Audio) -> None:
        self._q.put(chunk)

    def pause(self) -> None:
        self._playing.clear()

    def resume(self) -> None:
        self._playing.set()

    @property
    def paused(self) -> bool:
        return not self._playing.is_set()

    def clear(self) -> None:
        import queue

        self._dropped += 1
        self._playing.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return

    def _run(self) -> None:
        import queue

        from .io import resample

        stream, rate = None, 0
        try:
            while not self._stop.is_set():
                try:
                    chunk = self._q.get(timeout=0.1)
                except queue.Empty:
                    self._busy.clear()
                    continue
                self._busy.set()
                if stream is None:
                    rate = chunk.sample_rate
                    stream = self._sd.OutputStream(samplerate=rate, channels=1, dtype="float32", device=self.device)
                    stream.start()
                a = resample(chunk, rate)
                gen = self._dropped
                step = max(1, int(0.04 * rate))  # write in 40 ms slices: pause / clear act quickly
                for i in range(0, len(a.samples), step):
                    while not self._playing.wait(0.05):
                        if self._stop.is_set():
                            return
                    if gen != self._dropped or self._stop.is_set():
                        break
                    stream.write(np.ascontiguousarray(a.samples[i:i + step].reshape(-1, 1)))
        except Exception as exc:  # reported by the caller
            self.error = exc
        finally:
            self._busy.clear()
            if stream is not None:
                stream.stop()
                stream.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
