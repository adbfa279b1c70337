"""whisper.cpp's legacy ggml model files: the magic number and a structural completeness check.

Used by ``spark-voice models prepare`` / ``verify`` (is a converted or downloaded file whole?), by
``models inspect`` and the whisper converter (the magic), and by the whisper.cpp backend before it
hands a file to the engine. Imports nothing else of spark_voice.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ["GGML_MAGIC", "GGML_MAGIC_BYTES", "check_ggml_file"]

GGML_MAGIC = 0x67676D6C         # whisper.cpp ggml model files, as a little-endian uint32 ...
GGML_MAGIC_BYTES = b"lmgg"      # ... and as the first four bytes on disk

# ggml tensor types: (elements per block, bytes per block)
GGML_BLOCKS: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292), 30: (1, 2)}


def check_ggml_file(path: str | os.PathLike[str]) -> str:
    """'' when a whisper.cpp ggml file is complete, else why not (bad magic, truncated, no tensors).

    whisper.cpp accepts a file cut after its vocabulary as an "empty model for testing", and
    pywhispercpp turns a failed load into a context that crashes when used: check first.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        def ints(n: int) -> tuple[int, ...]:
            b = f.read(4 * n)
            if len(b) != 4 * n:
                raise EOFError
            return struct.unpack(f"<{n}i", b)

        try:
            if f.read(4) != GGML_MAGIC_BYTES:
                return "bad magic (not a whisper.cpp ggml file)"
            ints(11)  # hparams
            n_mel, n_fft = ints(2)
            f.seek(4 * n_mel * n_fft, 1)
            (n_tokens,) = ints(1)
            for _ in range(n_tokens):
                f.seek(ints(1)[0], 1)
            n_tensors = 0
            while f.tell() < size:
                n_dims, name_len, ttype = ints(3)
                if not (0 < n_dims <= 4 and 0 < name_len < 512):
                    return f"corrupt tensor header at byte {f.tell() - 12}"
                ne = ints(n_dims)
                f.seek(name_len, 1)
                if ttype not in GGML_BLOCKS:
                    return ""  # a type we do not know: leave the check to whisper.cpp
                per, nbytes = GGML_BLOCKS[ttype]
                n = 1
                for d in ne:
                    n *= d
                f.seek(n // per * nbytes, 1)
                n_tensors += 1
            end = f.tell()
        except EOFError:
            return f"truncated ({size} bytes)"
    if n_tensors == 0:
        return f"no tensors (truncated at {size} bytes?)"
    return "" if end == size else f"truncated ({size} bytes, tensor data runs past the end)"
