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

from ..backends.base import Audio
from ..errors import BackendUnavailable, MissingDependency, SparkVoiceError

INSTALL_HINT = "pip install 'spark-voice[audio]' and, on Debian/Ubuntu, sudo apt-get install libportaudio2"


def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except ImportError as exc:
        raise MissingDependency("sounddevice", "audio",
                                f"{exc}; also needs the PortAudio library: sudo apt-get install libportaudio2") from None
    except OSError as exc:  # the package is there, the PortAudio shared library is not
        raise BackendUnavailable(f"sounddevice cannot load PortAudio ({exc}); {INSTALL_HINT}") from None
    return sd


def output_devices() -> list[dict]:
    """The output devices PortAudio sees: [{index, name, channels, default_samplerate, default}]."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_out = sd.default.device[1] if sd.default.device is not None else -1
    except Exception as exc:
        raise BackendUnavailable(f"cannot list audio devices: {exc}; {INSTALL_HINT}") from None
    return [{"index": i, "name": d["name"], "channels": d["max_output_channels"],
             "default_samplerate": d["default_samplerate"], "default": i == default_out}
            for i, d in enumerate(devices) if d.get("max_output_channels", 0) > 0]


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
