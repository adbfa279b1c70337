"""Long audio for whisper: silence checks and cutting into windows of at most 30 s at pauses.

whisper decodes 30 s at a time. Longer input is cut into windows of at most :data:`WINDOW_S`
at pauses found by the VAD (spans without speech are left out, short spans packed together);
without a VAD the cut falls on the quietest 32 ms frame in the second half of a window, so the
working memory of a decode stays that of one window.
"""

from __future__ import annotations

import numpy as np

from ...audio.vad import FRAME, speech_spans
from ...types import SAMPLE_RATE_STT

__all__ = ["MIN_SECONDS", "SILENT_PEAK", "WINDOW_S", "is_silent", "plan_windows"]

SR = SAMPLE_RATE_STT
MIN_SECONDS = 0.1          # shorter input is not decoded
SILENT_PEAK = 1e-4         # peak below this (-80 dBFS) counts as digital silence
WINDOW_S = 30.0            # whisper's window; longer input is cut into windows at pauses


def is_silent(samples: np.ndarray) -> bool:
    """Too short to decode (< 0.1 s at 16 kHz) or digitally silent."""
    return len(samples) < int(MIN_SECONDS * SR) or float(np.max(np.abs(samples))) < SILENT_PEAK


def plan_windows(samples: np.ndarray, speech_probs: np.ndarray | None,
                 threshold: float) -> list[tuple[int, int]]:
    """Windows (start, end sample) of at most 30 s of 16 kHz `samples`, cut at pauses.

    `speech_probs`: the VAD's speech probability per 32 ms frame, or None (no VAD: one span,
    cut at the quietest frames by energy). Spans without speech are left out.
    """
    n = len(samples)
    frames = n // FRAME
    if speech_probs is not None:
        score = speech_probs
        spans = speech_spans(score, threshold, min_silence_ms=300, pad_ms=200)
        spans = [(s, min(e, n)) for s, e in spans]
        if n > frames * FRAME and spans and spans[-1][1] >= frames * FRAME:
            spans[-1] = (spans[-1][0], n)
    else:
        rms = np.sqrt((samples[:frames * FRAME].reshape(frames, FRAME) ** 2).mean(axis=1))
        score = rms / (float(rms.max()) or 1.0)
        spans = [(0, n)]
    limit = int(WINDOW_S * SR)
    windows: list[tuple[int, int]] = []
    for s, e in spans:
        # split a span longer than a window at its quietest frame in the window's second half
        while e - s > limit:
            lo, hi = (s + limit // 2) // FRAME, (s + limit) // FRAME
            cut = (lo + int(np.argmin(score[lo:hi]))) * FRAME if hi > lo else s + limit
            cut = min(max(cut, s + FRAME), s + limit)
            _add_window(windows, s, cut, limit)
            s = cut
        _add_window(windows, s, e, limit)
    return windows


def _add_window(windows: list[tuple[int, int]], s: int, e: int, limit: int) -> None:
    if e <= s:
        return
    if windows and e - windows[-1][0] <= limit:  # pack short spans together (gap included)
        windows[-1] = (windows[-1][0], e)
    else:
        windows.append((s, e))
