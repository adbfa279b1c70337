"""Voice-turn latency (partial, final, first token, tts_start, end to end), component floors,
pipeline overhead and streaming vs sequential first audio -- the same run as `spark-voice bench`.

    python benchmarks/bench_voice.py --profile dev -n 10            # small CPU models
    python benchmarks/bench_voice.py --profile dev -n 10 --realtime # frames paced like a microphone
    python benchmarks/bench_voice.py --profile mock -n 3            # no models

Writes results/<YYYYmmdd-HHMMSS>-<commit>/{bench.json,turns.csv,latency.png}; see
spark_voice/bench/ (its package docstring) for what each number means. Timings only; nothing is asserted.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

if __name__ == "__main__":
    from spark_voice.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
