"""Whisper-style log-mel features in numpy (the input of the Smart Turn model).

Our own implementation of what ``transformers.WhisperFeatureExtractor`` computes for 16 kHz
audio with ``n_mels=80``, ``chunk_length=8`` (128 000 samples, 800 frames), ``do_normalize=True``:

1. the waveform is normalised to zero mean, unit variance (float32, eps 1e-7);
2. STFT: ``n_fft`` 400 (25 ms), hop 160 (10 ms), periodic Hann window, centred frames
   (reflect padding of n_fft/2 on both sides), power spectrum |X|^2 in float64;
3. a Slaney-scale, Slaney-normalised (area) triangular filter bank of 80 filters, 0 - 8 kHz;
4. ``log10(max(mel, 1e-10))``, the last frame dropped (801 -> 800), clamped to ``max - 8``,
   then ``(x + 4) / 4``.

Smart Turn sees the *last* 8 s of the turn: longer audio keeps its end, shorter audio is padded
with zeros *at the start* (:func:`last_window`), as pipecat does before calling the extractor.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE   # 128 000
N_FRAMES = WINDOW_SAMPLES // HOP          # 800


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels / 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = 3.0 * hz / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log, lin)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = 200.0 * mel / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, lin)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters on the Slaney scale, each of unit area."""
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    bins_hz = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bins_hz[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins_hz[:, None]) / (upper - centre)[None, :]
    tri = np.clip(np.minimum(rising, falling), 0.0, None)
    return tri * (2.0 / (upper - lower))[None, :]


_FILTERS = mel_filters()
_HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))  # periodic Hann


def last_window(samples: np.ndarray, n: int = WINDOW_SAMPLES) -> np.ndarray:
    """The last `n` samples; shorter input is padded with zeros at the start."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(x) >= n:
        return x[len(x) - n:]
    return np.concatenate([np.zeros(n - len(x), np.float32), x])


def log_mel(samples: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """float32 (80, 800) features of exactly 8 s of 16 kHz audio (pad / cut with :func:`last_window`)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(x) != WINDOW_SAMPLES:
        x = np.concatenate([x, np.zeros(max(0, WINDOW_SAMPLES - len(x)), np.float32)])[:WINDOW_SAMPLES]
    if normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    power = np.abs(np.fft.rfft(padded[idx] * _HANN, axis=1)) ** 2          # (frames, 201)
    mel = np.log10(np.maximum(power @ _FILTERS, 1e-10)).T[:, :-1]            # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)
