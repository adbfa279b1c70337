"""Audio decode / encode / resample (soundfile + soxr), and atomic file writes.

Opus (OGG container) is encoded by libsndfile, which accepts only 8/12/16/24/48 kHz. Rule: a
requested rate that Opus accepts is used as is; any other rate (e.g. TTS_SAMPLE_RATE=44100) is
encoded at 48 kHz and :func:`encode` reports the real rate. WAV/FLAC/PCM use the requested rate.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..backends.base import Audio
from ..errors import AudioError

AudioInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray, Audio]
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
FORMATS = ("opus", "wav", "flac", "pcm")
MEDIA_TYPES = {"opus": "audio/ogg", "wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/L16"}
EXTENSIONS = {"opus": ".ogg", "wav": ".wav", "flac": ".flac", "pcm": ".pcm"}


def load_audio(src: AudioInput, sample_rate: int | None = None, *, source_rate: int | None = None,
               name: str | None = None) -> Audio:
    """Decode a path, encoded bytes, a numpy array (needs `source_rate`) or Audio into mono float32.

    With `sample_rate`, the result is resampled to it. Raises AudioError naming the file and reason.
    """
    if isinstance(src, Audio):
        audio = src
    elif isinstance(src, np.ndarray):
        if source_rate is None:
            raise AudioError("a numpy array needs its sample rate (source_rate= / sample_rate=)")
        audio = _from_array(src, source_rate, name or "array")
    elif isinstance(src, (bytes, bytearray, memoryview)):
        audio = _decode(io.BytesIO(bytes(src)), name or "<bytes>", len(src))
    else:
        path = Path(os.fspath(src))
        if not path.is_file():
            raise AudioError(f"{path}: no such file")
        audio = _decode(str(path), str(path), path.stat().st_size)
    return resample(audio, sample_rate) if sample_rate else audio


def _from_array(a: np.ndarray, sr: int, name: str) -> Audio:
    a = np.asarray(a)
    if a.ndim not in (1, 2):
        raise AudioError(f"{name}: expected a 1-D (mono) or 2-D (frames, channels) array, got shape {a.shape}")
    if a.ndim == 2 and a.shape[0] < a.shape[1] and a.shape[0] <= 8:
        a = a.T  # (channels, frames) -> (frames, channels)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        a = a.astype(np.float32) / float(max(abs(info.min), info.max))
    if not np.all(np.isfinite(a)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return Audio(a.astype(np.float32, copy=False), sr)


def _decode(fileobj, name: str, size: int) -> Audio:
    import soundfile as sf

    if size == 0:
        raise AudioError(f"{name}: empty file")
    try:
        data, sr = sf.read(fileobj, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        reason = str(exc).strip() or type(exc).__name__
        raise AudioError(f"{name}: cannot decode audio ({reason}); supported: WAV, FLAC, OGG/Opus/Vorbis, "
                         "MP3 and other libsndfile formats") from None
    return Audio(data, sr)


def resample(audio: Audio, sample_rate: int) -> Audio:
    """soxr high-quality resampling; returns the same object when the rate already matches."""
    if audio.sample_rate == sample_rate or len(audio.samples) == 0:
        return audio if audio.sample_rate == sample_rate else Audio(audio.samples, sample_rate)
    import soxr

    return Audio(soxr.resample(audio.samples, audio.sample_rate, sample_rate, quality="HQ"), sample_rate)


def encoded_rate(fmt: str, sample_rate: int) -> int:
    """The rate a format really encodes at when `sample_rate` is requested."""
    if fmt == "opus" and sample_rate not in OPUS_RATES:
        return 48000
    return sample_rate


def encode(audio: Audio, fmt: str = "opus", sample_rate: int | None = None) -> tuple[bytes, int]:
    """Encode to opus (OGG) / wav / flac / pcm (s16le). Returns (bytes, real sample rate)."""
    import soundfile as sf

    if fmt not in FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}; accepted values: {', '.join(FORMATS)}")
    rate = encoded_rate(fmt, sample_rate or audio.sample_rate)
    a = resample(audio, rate)
    samples = np.clip(a.samples, -1.0, 1.0)
    if fmt == "pcm":
        return (samples * 32767.0).astype("<i2").tobytes(), rate
    buf = io.BytesIO()
    if fmt == "opus":
        if len(samples) == 0:
            samples = np.zeros(int(rate * 0.02), dtype=np.float32)  # a valid, silent stream
        sf.write(buf, samples, rate, format="OGG", subtype="OPUS")
    elif fmt == "wav":
        sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    else:
        sf.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), rate


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write temp file in the same folder, fsync, rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def format_for_path(path: str | os.PathLike, default: str = "opus") -> str:
    ext = Path(path).suffix.lower()
    return {".ogg": "opus", ".opus": "opus", ".wav": "wav", ".flac": "flac", ".pcm": "pcm",
            ".raw": "pcm"}.get(ext, default)


def write_audio(path: str | os.PathLike, audio: Audio, fmt: str | None = None,
                sample_rate: int | None = None) -> tuple[Path, int]:
    """Encode and write atomically; format from `fmt` or the extension. Returns (path, real rate)."""
    fmt = fmt or format_for_path(path)
    data, rate = encode(audio, fmt, sample_rate)
    return atomic_write_bytes(path, data), rate
