"""Bounded audio decoding: what an untrusted upload may cost before an engine sees it.

A compressed file can decode to far more samples than its size suggests (an hour of FLAC silence is
~1 MB; a WAV header may claim 8 Hz, so resampling to 16 kHz multiplies it by 2000). So:

* the sample rate must lie in [MIN_RATE, MAX_RATE] and the channels in [1, MAX_CHANNELS];
* the duration the header announces is checked against `max_seconds` before any sample is decoded;
* decoding then runs block by block (the header may lie or not know the length), mixing to mono
  and resampling each block at once, and stops as soon as `max_seconds` is passed.

Memory is thus bounded by one block plus `max_seconds` of mono audio at the output rate.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..errors import AudioError, AudioTooLong
from ..types import Audio

MIN_RATE = 4_000
MAX_RATE = 384_000
MAX_CHANNELS = 32
BLOCK_SAMPLES = 1 << 20  # samples (all channels) decoded per block: 4 MiB of float32


def check_rate(rate: int, name: str = "audio") -> None:
    """Refuse sample rates no real recording has (a forged header of 8 Hz or 10 MHz)."""
    if not MIN_RATE <= int(rate) <= MAX_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is outside the accepted range "
                         f"{MIN_RATE}-{MAX_RATE} Hz")


def too_long(name: str, seconds: float, max_seconds: float, what: str = "") -> AudioTooLong:
    return AudioTooLong(f"{name}: the audio is {what}{seconds:.0f} s long; the limit is {max_seconds:g} s "
                        "(SERVE_MAX_AUDIO_S); split it or send a shorter file")


def decode_bounded(src: bytes | bytearray | memoryview | str | os.PathLike, *, max_seconds: float,
                   sample_rate: int | None = None, name: str = "<bytes>") -> Audio:
    """Decode encoded audio to mono float32 (resampled to `sample_rate` when given) or raise
    AudioError / AudioTooLong; never holds more than `max_seconds` of audio plus one block."""
    import soundfile as sf

    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise AudioError(f"{name}: empty file")
        fileobj: Any = io.BytesIO(bytes(src))
    else:
        fileobj = os.fspath(src)
    try:
        f = sf.SoundFile(fileobj)
    except Exception as exc:  # LibsndfileError / RuntimeError / TypeError
        reason = str(exc).strip() or type(exc).__name__
        raise AudioError(f"{name}: cannot decode audio ({reason}); supported: WAV, FLAC, OGG/Opus/Vorbis, "
                         "MP3 and other libsndfile formats") from None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        check_rate(rate, name)
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"{name}: {channels} channels; at most {MAX_CHANNELS} are accepted")
        max_frames = int(max_seconds * rate)
        announced = int(f.frames) if 0 < f.frames < (1 << 62) else 0
        if announced > max_frames:  # the header says so: refuse before decoding anything
            raise too_long(name, announced / rate, max_seconds)
        out_rate = int(sample_rate or rate)
        resampler = None
        if out_rate != rate:
            import soxr

            resampler = soxr.ResampleStream(rate, out_rate, 1, dtype="float32", quality="HQ")
        block = max(256, BLOCK_SAMPLES // channels)
        parts: list[np.ndarray] = []
        seen = 0
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except Exception as exc:
                reason = str(exc).strip() or type(exc).__name__
                raise AudioError(f"{name}: cannot decode audio ({reason})") from None
            n = len(data)
            seen += n
            if seen > max_frames:
                raise too_long(name, seen / rate, max_seconds, "more than ")
            last = n < block
            mono = data[:, 0] if channels == 1 else data.mean(axis=1, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)
            if len(mono):
                parts.append(np.array(mono, dtype=np.float32))  # a copy: not a view of the block
            if last:
                break
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return Audio(samples, out_rate)
