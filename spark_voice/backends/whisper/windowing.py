"""Long audio for whisper: silence checks and cutting into windows of at most 30 s at pauses;
short audio: the encoder context (``audio_ctx``) fitted to it (:func:`ctx_frames`).

whisper decodes 30 s at a time. Longer input is cut into windows of at most :data:`WINDOW_S`
at pauses found by the VAD (spans without speech are left out, short spans packed together);
without a VAD the cut falls on the quietest 32 ms frame in the second half of a window, so the
working memory of a decode stays that of one window.
"""

from __future__ import annotations

import math

import numpy as np

from ...audio.vad import FRAME, speech_spans
from ...types import SAMPLE_RATE_STT

__all__ = ["CTX_STEP", "FINAL_MIN_CTX", "FLASH_ATTN", "MIN_SECONDS", "PARTIAL_MARGIN_S", "PARTIAL_MIN_CTX",
           "SILENT_PEAK", "WINDOW_S", "ctx_frames", "final_frames", "is_silent", "partial_frames", "plan_windows"]

SR = SAMPLE_RATE_STT
MIN_SECONDS = 0.1          # shorter input is not decoded
SILENT_PEAK = 1e-4         # peak below this (-80 dBFS) counts as digital silence
WINDOW_S = 30.0            # whisper's window; longer input is cut into windows at pauses
# Shortened encoder contexts (audio_ctx) are multiples of CTX_STEP. whisper.cpp runs with flash
# attention (FLASH_ATTN, also its default): the encoder self-attention and the decoder
# cross-attention then read GGML_PAD(audio_ctx, 256) keys and values *without a mask*, so with any
# other audio_ctx the rows past it hold whatever an earlier decode left there (whisper.cpp 1.8 as
# vendored by pywhispercpp 1.5.1, src/whisper.cpp: n_ctx_pad / n_audio_ctx_pad). That made fitted
# decodes depend on the previous call: 448 frames turned 駅まで into エキマで right after a full decode
# and not in a fresh context. Rounding up to 256 keeps every row that is read written by this decode.
FLASH_ATTN = True
CTX_STEP = 256
PARTIAL_MIN_CTX = 256      # encoder frames (20 ms each) for partial decodes, at least ...
PARTIAL_MARGIN_S = 1.0     # ... the utterance plus this margin, rounded up to CTX_STEP
# Fitted finals: at least FINAL_MIN_CTX encoder frames, the utterance plus STT_FINAL_CTX_MARGIN_S
# rounded up to CTX_STEP. On 30 clips of our voices (12 en, 18 ja, 2.3-5.2 s), f16 and q8_0 base,
# 256 and 512 frames gave the same WER en (0.043, as the full decode) and CER ja (0.042; full 0.029:
# one clip wrote 京都 in kana / other kanji); 256 decoded 27 % faster. The 384 / 448 frames tried
# before went wrong for the stale-row reason above, not for the shorter context. README Performance.
FINAL_MIN_CTX = 256


def ctx_frames(seconds: float, minimum: int) -> int:
    """Encoder frames (50 per second) covering `seconds`, a multiple of CTX_STEP (see there), at
    least `minimum`, at most whisper's whole window (1500; its padding rows are never written)."""
    return min(1500, max(minimum, math.ceil(seconds * 50 / CTX_STEP) * CTX_STEP))


def final_frames(seconds: float) -> int:
    """The encoder context of a fitted final of `seconds` (margin included by the caller)."""
    return ctx_frames(seconds, FINAL_MIN_CTX)


def partial_frames(seconds: float) -> int:
    """The encoder context of a partial decode of `seconds` of audio."""
    return ctx_frames(seconds + PARTIAL_MARGIN_S, PARTIAL_MIN_CTX)


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
