"""Audio decode / encode / resample (soundfile + soxr), and atomic file writes.

Opus (OGG container) is encoded by libsndfile, which accepts only 8/12/16/24/48 kHz. Rule: a
requested rate that Opus accepts is used as is; any other rate (e.g. TTS_SAMPLE_RATE=44100) is
encoded at 48 kHz and :func:`encode` reports the real rate. WAV/FLAC/PCM use the requested rate.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import AudioError
from ..fsutil import atomic_write_bytes  # noqa: F401  (re-exported)
from ..types import Audio

AudioInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray, Audio]
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
FORMATS = ("opus", "wav", "flac", "pcm")
MEDIA_TYPES = {"opus": "audio/ogg", "wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/L16"}
EXTENSIONS = {"opus": ".ogg", "wav": ".wav", "flac": ".flac", "pcm": ".pcm"}


def load_audio(src: AudioInput, sample_rate: int | None = None, *, source_rate: int | None = None,
               name: str | None = None, max_seconds: float | None = None) -> Audio:
    """Decode a path, encoded bytes, a numpy array (needs `source_rate`) or Audio into mono float32.

    With `sample_rate`, the result is resampled to it. Raises AudioError naming the file and reason.
    max_seconds: for untrusted files or bytes: refuse (AudioTooLong) audio longer than this, from
    the header before decoding when it tells the length, else while decoding block by block; the
    sample rate must also be plausible (see :mod:`spark_voice.audio.limits`).
    """
    if max_seconds is not None and isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        from .limits import decode_bounded

        if not isinstance(src, (bytes, bytearray, memoryview)) and not Path(os.fspath(src)).is_file():
            raise AudioError(f"{src}: no such file")
        return decode_bounded(src, max_seconds=max_seconds, sample_rate=sample_rate,
                              name=name or (str(src) if not isinstance(src, (bytes, bytearray, memoryview))
                                            else "<bytes>"))
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
    return audio.resampled(sample_rate)


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


# --------------------------------------------------------------------------- streaming encoder
OGG_PAGE_LATENCY_MS = 100.0  # how much Opus audio libsndfile may hold before it emits an Ogg page
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h
_WAV_STREAM_SIZE = 0xFFFFFFFF  # RIFF/data size of a WAV whose length is unknown (streaming convention)


class _ByteSink(io.RawIOBase):
    """A write-only, append-mostly file for libsndfile: bytes written since the last `take()` are
    handed out; a write behind what was already handed out (libsndfile patching a header at close)
    is dropped and counted in `rewrites`."""

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._sent = 0   # bytes handed out before _pending
        self._pos = 0
        self.rewrites = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # libsndfile never reads a file it opened for writing
        return 0

    def write(self, b) -> int:
        data = bytes(b)
        start = self._pos - self._sent
        if start < 0:  # behind what the client already has: cannot be sent any more
            self.rewrites += 1
            keep = data[-start:] if len(data) > -start else b""
            data, start = keep, 0
        end = start + len(data)
        if end > len(self._pending):
            self._pending.extend(b"\0" * (end - len(self._pending)))
        self._pending[start:end] = data
        self._pos += len(b)
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        size = self._sent + len(self._pending)
        self._pos = offset if whence == 0 else (self._pos + offset if whence == 1 else size + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = bytes(self._pending)
        self._sent += len(out)
        self._pending.clear()
        return out


class StreamEncoder:
    """Encode audio chunks as they come, for a streaming HTTP/websocket response.

        enc = StreamEncoder("opus", 44100)      # enc.rate == 48000 (Opus rule, see module doc)
        yield enc.header()
        for chunk in tts.synthesize(text):
            yield enc.add(chunk)                 # bytes ready now (may be b"")
        yield enc.finish()

    header() + every add() + finish(), concatenated, is one valid file of the format.

    * opus: a chunked Ogg/Opus stream from libsndfile writing into a file-like sink, with the Ogg
      page latency set to OGG_PAGE_LATENCY_MS so each add() returns the pages of (almost) all audio
      given so far; header() is empty (libsndfile writes the Opus headers with the first audio).
    * wav: a 16-bit PCM WAV header whose RIFF and data sizes are 0xFFFFFFFF (length unknown, the
      usual streaming convention; libsndfile, ffmpeg and browsers read it), then raw frames.
    * pcm: raw s16le frames, no header (media type audio/L16; rate in the response headers).
    * flac: not streamed: the whole file comes from finish(). libsndfile writes STREAMINFO's
      total length at close; a stream sent without it ("length unknown") is legal FLAC, but
      libsndfile itself (so soundfile and our load_audio) cannot read such a stream back.
    Chunks at another rate are resampled with a stateful soxr stream (no clicks between chunks);
    a change of input rate mid-stream (two voices in one answer) starts a new resampler.
    """

    def __init__(self, fmt: str = "opus", sample_rate: int | None = None, *,
                 page_latency_ms: float = OGG_PAGE_LATENCY_MS) -> None:
        if fmt not in FORMATS:
            raise AudioError(f"unknown audio format {fmt!r}; accepted values: {', '.join(FORMATS)}")
        self.fmt = fmt
        self.requested_rate = sample_rate
        self.rate = encoded_rate(fmt, sample_rate) if sample_rate else 0  # fixed at the first chunk if 0
        self.page_latency_ms = page_latency_ms
        self.media_type = MEDIA_TYPES[fmt]
        self.frames = 0
        self._header_taken = False
        self._sink: Any = None  # _ByteSink once opened
        self._sf: Any = None  # soundfile.SoundFile
        self._resampler: Any = None  # soxr.ResampleStream
        self._in_rate = 0
        self._finished = False

    @property
    def duration(self) -> float:
        """Seconds of audio encoded so far."""
        return self.frames / self.rate if self.rate else 0.0

    def _open(self) -> None:
        if self._sink is not None or self.fmt in ("pcm", "wav"):
            return
        import soundfile as sf

        self._sink = _ByteSink()
        fmt, subtype = ("OGG", "OPUS") if self.fmt == "opus" else ("FLAC", "PCM_16")
        self._sf = sf.SoundFile(self._sink, "w", self.rate, 1, format=fmt, subtype=subtype)
        if self.fmt == "opus":
            lat = sf._ffi.new("double*", float(self.page_latency_ms))
            sf._snd.sf_command(self._sf._file, _SFC_SET_OGG_PAGE_LATENCY_MS, lat, sf._ffi.sizeof("double"))

    def header(self) -> bytes:
        """Bytes to send before any audio (WAV header; empty for pcm/opus). Taken once."""
        if self._header_taken:
            return b""
        if not self.rate:
            raise AudioError("StreamEncoder.header(): the sample rate is not known yet; give sample_rate")
        self._header_taken = True
        if self.fmt == "wav":
            return _wav_stream_header(self.rate)
        self._open()
        return self._sink.take() if self.fmt == "opus" else b""

    def _resample(self, audio: Audio, last: bool = False) -> np.ndarray:
        if audio.sample_rate == self.rate and self._resampler is None:
            return audio.samples
        import soxr

        out = []
        if self._resampler is not None and audio.sample_rate != self._in_rate:
            out.append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self._resampler = None
        if audio.sample_rate == self.rate:
            out.append(audio.samples)
        else:
            if self._resampler is None:
                self._resampler = soxr.ResampleStream(audio.sample_rate, self.rate, 1, dtype="float32",
                                                      quality="HQ")
                self._in_rate = audio.sample_rate
            out.append(self._resampler.resample_chunk(audio.samples, last=last))
            if last:
                self._resampler = None
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _emit(self, samples: np.ndarray) -> bytes:
        samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        self.frames += len(samples)
        if self.fmt in ("pcm", "wav"):
            return (samples * 32767.0).astype("<i2").tobytes()
        if len(samples):
            self._sf.write(samples)
        return self._sink.take() if self.fmt == "opus" else b""

    def add(self, audio: Audio) -> bytes:
        """Encode one chunk; returns the bytes ready now (the header first, if not taken yet)."""
        if self._finished:
            raise AudioError("StreamEncoder.add() after finish()")
        if not self.rate:
            self.rate = encoded_rate(self.fmt, audio.sample_rate)
        head = self.header()
        self._open()
        return head + self._emit(self._resample(audio))

    def finish(self) -> bytes:
        """Flush the resampler and the encoder; returns the last bytes. Idempotent."""
        if self._finished:
            return b""
        if not self.rate:
            self.rate = encoded_rate(self.fmt, self.requested_rate or 24000)
        head = self.header()
        self._open()
        tail = b""
        if self._resampler is not None:
            tail = self._emit(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self._resampler = None
        if self.fmt == "opus" and self.frames == 0:
            tail += self._emit(np.zeros(int(self.rate * 0.02), dtype=np.float32))  # a valid, silent stream
        self._finished = True
        if self._sf is not None:
            self._sf.close()
            tail += self._sink.take()
        return head + tail


def _wav_stream_header(rate: int, channels: int = 1, bits: int = 16) -> bytes:
    import struct

    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", _WAV_STREAM_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
            + b"data" + struct.pack("<I", _WAV_STREAM_SIZE))
