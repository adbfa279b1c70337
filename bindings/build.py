"""Build llama-cpp-python and pywhispercpp from source with a preset of CMakePresets.json.

    python -m bindings.build --preset cuda-sm121                  # both wheels -> ./wheelhouse
    python -m bindings.build --preset cpu --only llama --dry-run  # print the commands and env
    python -m bindings.build --list                               # the presets and their flags

What it does, per binding:

* resolves the configure preset (``inherits`` chains, child over parent, earlier parent over later
  parent, as CMake does) into cache variables, plus the binding-specific ones kept under
  ``vendor["spark-voice/bindings"][<binding>]`` (merged through ``inherits`` the same way);
* turns them into ``CMAKE_ARGS`` (``-DNAME=VALUE``; ``true``/``false`` -> ``ON``/``OFF``;
  ``{"type": T, "value": V}`` -> ``-DNAME:T=V``; ``null`` removes an inherited variable);
* runs ``pip wheel --no-deps --no-cache-dir --no-binary <pkg> <pkg>==<ref> -w <wheelhouse>`` with
  that environment. ``--no-cache-dir`` matters: pip's wheel cache is keyed on the requirement only
  and would hand back a wheel built with other CMAKE_ARGS (e.g. a CPU build for a CUDA preset).

The versions come from the settings (LLAMA_CPP_REF, PYWHISPERCPP_REF in .env.default, .env or the
environment; ``--llama-ref`` / ``--whisper-ref`` win). A ref is a release version (``0.3.36``) or
anything pip accepts as a requirement (a local sdist, a ``git+https://...@tag`` URL).

pywhispercpp specifics: its setup.py reads CMAKE_ARGS too (and passes every environment variable
as ``-D``), takes its version from PYWHISPERCPP_VERSION (its sdist reports 0.0.0 otherwise, which
pip rejects), and is linked statically (BUILD_SHARED_LIBS=OFF): one self-contained extension
module, whose ggml never meets the ggml of llama-cpp-python's shared libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
PRESETS_FILE = ROOT / "CMakePresets.json"
VENDOR_KEY = "spark-voice/bindings"
BINDINGS = ("llama", "whisper")
PACKAGES = {"llama": "llama-cpp-python", "whisper": "pywhispercpp"}
REF_VARS = {"llama": "LLAMA_CPP_REF", "whisper": "PYWHISPERCPP_REF"}
DEFAULT_REFS = {"llama": "0.3.36", "whisper": "1.5.1"}
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


class BuildError(Exception):
    """A preset, a ref or the toolchain is unusable; the message says what to fix."""


# ------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """A configure preset with its ``inherits`` chain resolved."""

    name: str
    cache: dict[str, Any]                       # cacheVariables common to both bindings
    per_binding: dict[str, dict[str, Any]]      # binding -> its extra cacheVariables
    environment: dict[str, str] = field(default_factory=dict)
    description: str = ""
    hidden: bool = False

    def variables(self, binding: str) -> dict[str, Any]:
        """Cache variables of one binding: the common ones, then its own (which win)."""
        if binding not in BINDINGS:
            raise BuildError(f"unknown binding {binding!r}; accepted values: {', '.join(BINDINGS)}")
        out = dict(self.cache)
        out.update(self.per_binding.get(binding, {}))
        return {k: v for k, v in out.items() if v is not None}

    @property
    def cuda(self) -> bool:
        return _is_on(self.cache.get("GGML_CUDA"))


def _is_on(value: Any) -> bool:
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool):
        return value
    return str(value).strip().upper() in ("ON", "1", "TRUE", "YES", "Y")


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, dict]:
    """The raw configure presets of a CMakePresets.json, by name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path}: invalid JSON: {exc}") from None
    out: dict[str, dict] = {}
    for p in data.get("configurePresets", []):
        name = p.get("name")
        if not name:
            raise BuildError(f"{path}: a configure preset has no name")
        if name in out:
            raise BuildError(f"{path}: configure preset {name!r} is defined twice")
        out[name] = p
    return out


def resolve_preset(name: str, presets: dict[str, dict] | None = None) -> Preset:
    """Resolve ``name`` through its ``inherits`` chain (CMake's precedence rules)."""
    presets = load_presets() if presets is None else presets
    if name not in presets:
        visible = [n for n, p in presets.items() if not p.get("hidden")]
        raise BuildError(f"unknown preset {name!r}; accepted values: {', '.join(visible)}")

    def walk(n: str, stack: tuple[str, ...]) -> tuple[dict, dict, dict]:
        if n in stack:
            raise BuildError(f"preset inheritance cycle: {' -> '.join(stack + (n,))}")
        if n not in presets:
            raise BuildError(f"preset {stack[-1]!r} inherits unknown preset {n!r}")
        p = presets[n]
        parents = p.get("inherits", [])
        parents = [parents] if isinstance(parents, str) else list(parents)
        cache: dict = {}
        env: dict = {}
        per: dict = {b: {} for b in BINDINGS}
        # the earlier parent wins, so apply the parents last-to-first
        for parent in reversed(parents):
            c, e, pb = walk(parent, stack + (n,))
            cache.update(c)
            env.update(e)
            for b in BINDINGS:
                per[b].update(pb[b])
        cache.update(p.get("cacheVariables", {}) or {})
        env.update(p.get("environment", {}) or {})
        vendor = ((p.get("vendor") or {}).get(VENDOR_KEY) or {})
        unknown = set(vendor) - set(BINDINGS)
        if unknown:
            raise BuildError(f"preset {n!r}: vendor {VENDOR_KEY!r} has unknown binding(s) "
                             f"{', '.join(sorted(unknown))}; accepted values: {', '.join(BINDINGS)}")
        for b in BINDINGS:
            per[b].update((vendor.get(b) or {}).get("cacheVariables", {}) or {})
        return cache, env, per

    cache, env, per = walk(name, ())
    p = presets[name]
    return Preset(name=name, cache=cache, per_binding=per, environment={k: str(v) for k, v in env.items()
                                                                         if v is not None},
                  description=p.get("displayName") or p.get("description", ""), hidden=bool(p.get("hidden")))


def visible_presets(presets: dict[str, dict] | None = None) -> list[str]:
    presets = load_presets() if presets is None else presets
    return [n for n, p in presets.items() if not p.get("hidden")]


def _cmake_value(name: str, value: Any) -> str:
    if isinstance(value, dict):
        typ, val = value.get("type"), value.get("value")
        if val is None:
            raise BuildError(f"cache variable {name}: object form needs a 'value'")
        val = _cmake_value(name, val).split("=", 1)[1]
        return f"-D{name}:{typ}={val}" if typ else f"-D{name}={val}"
    if isinstance(value, bool):
        value = "ON" if value else "OFF"
    value = str(value)
    if "${" in value or "$env{" in value:
        raise BuildError(f"cache variable {name}={value!r}: preset macros are not expanded by bindings.build")
    if any(c.isspace() for c in value):
        # pywhispercpp splits CMAKE_ARGS on spaces: a value with spaces cannot pass through it
        raise BuildError(f"cache variable {name}={value!r}: values with spaces are not supported")
    return f"-D{name}={value}"


def cmake_args(preset: Preset, binding: str, cuda_arch: str | None = None) -> list[str]:
    """The ``-D`` arguments of one binding's build. ``cuda_arch`` overrides CMAKE_CUDA_ARCHITECTURES
    (CUDA presets only; e.g. LLM_CUDA_ARCH=121 from .env)."""
    variables = preset.variables(binding)
    if cuda_arch is not None and str(cuda_arch).strip():
        if not preset.cuda:
            raise BuildError(f"--cuda-arch {cuda_arch}: preset {preset.name!r} does not build CUDA "
                             f"(GGML_CUDA is off); pick a cuda-* preset")
        arch = str(cuda_arch).strip()
        if not re.fullmatch(r"(native|all|all-major|[0-9]{2,3}[af]?(-real|-virtual)?(;[0-9]{2,3}[af]?"
                            r"(-real|-virtual)?)*)", arch):
            raise BuildError(f"--cuda-arch {arch!r}: expected e.g. 121, 90, 90;121, native")
        variables["CMAKE_CUDA_ARCHITECTURES"] = arch
    return [_cmake_value(k, v) for k, v in variables.items()]


# ------------------------------------------------------------------------------------ refs
def _parse_dotenv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        k = k.strip().removeprefix("export ").strip()
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        else:
            v = v.split(" #", 1)[0].strip()
        out[k] = v
    return out


def pinned_refs(root: Path = ROOT, environ: dict[str, str] | None = None) -> dict[str, str]:
    """LLAMA_CPP_REF / PYWHISPERCPP_REF from the settings (.env.default < .env < environment).

    Uses spark_voice.config.Settings when importable; the build stage of the Docker image runs
    before spark-voice and its dependencies are installed, so a plain reader of the same files
    stands in there (same precedence)."""
    env = dict(os.environ if environ is None else environ)
    try:
        from spark_voice.config import Settings
    except ImportError:
        values = DEFAULT_REFS | {}
        merged = _parse_dotenv(root / ".env.default") | _parse_dotenv(root / ".env")
        for b, var in REF_VARS.items():
            values[b] = env.get(var) or merged.get(var) or DEFAULT_REFS[b]
        return values
    s = Settings.load(root, environ=env)
    return {"llama": s.llama_cpp_ref, "whisper": s.pywhispercpp_ref}


def requirement(binding: str, ref: str) -> str:
    ref = ref.strip()
    if not ref:
        raise BuildError(f"{REF_VARS[binding]} is empty; set a release version such as {DEFAULT_REFS[binding]}")
    if _VERSION_RE.match(ref):
        return f"{PACKAGES[binding]}=={ref}"
    return ref  # a local sdist / source folder / VCS URL, as pip accepts it


# ------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Step:
    binding: str
    package: str
    requirement: str
    argv: list[str]
    env: dict[str, str]     # set on top of the current environment

    def shell(self) -> str:
        """The step as one shell command line (what --dry-run prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"env {env} {shlex.join(self.argv)}"


def plan(preset: Preset, *, refs: dict[str, str], wheelhouse: str | Path, only: str | None = None,
         python: str = sys.executable, jobs: int | None = None, cuda_arch: str | None = None,
         verbose: bool = False, cudacxx: str | None = None) -> list[Step]:
    """The pip commands (and their environment) that build the wheels of ``preset``."""
    bindings = BINDINGS if only in (None, "", "all") else (only,)
    for b in bindings:
        if b not in BINDINGS:
            raise BuildError(f"--only {b!r}: accepted values: {', '.join(BINDINGS)}")
    jobs = jobs or os.cpu_count() or 1
    steps = []
    for b in bindings:
        pkg = PACKAGES[b]
        req = requirement(b, refs[b])
        argv = [python, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", pkg,
                "-w", str(wheelhouse)]
        if verbose:
            argv.append("-v")
        argv.append(req)
        env = dict(preset.environment)
        env["CMAKE_ARGS"] = " ".join(cmake_args(preset, b, cuda_arch))
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs)
        if b == "llama":
            env["FORCE_CMAKE"] = "1"
        if b == "whisper" and _VERSION_RE.match(refs[b].strip()):
            env["PYWHISPERCPP_VERSION"] = refs[b].strip()
        if cudacxx and preset.cuda:
            env["CUDACXX"] = cudacxx
        steps.append(Step(b, pkg, req, argv, env))
    return steps


def find_nvcc(environ: dict[str, str] | None = None) -> tuple[str | None, bool]:
    """(nvcc path, found on PATH). CMake finds nvcc on PATH or through CUDACXX; the CUDA images and
    DGX OS install it under /usr/local/cuda/bin, which is not always on PATH."""
    env = os.environ if environ is None else environ
    if env.get("CUDACXX"):
        return env["CUDACXX"], True
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found, True
    for cand in ("/usr/local/cuda/bin/nvcc",):
        if Path(cand).is_file():
            return cand, False
    return None, False


def _newest_wheel(wheelhouse: Path, package: str, since: float) -> Path | None:
    stem = package.replace("-", "_").lower()
    cands = [p for p in wheelhouse.glob("*.whl")
             if p.name.lower().startswith(stem + "-") and p.stat().st_mtime >= since - 1]
    return max(cands, key=lambda p: p.stat().st_mtime, default=None)


def run_steps(steps: Sequence[Step], wheelhouse: Path, preset: Preset) -> list[dict]:
    wheelhouse.mkdir(parents=True, exist_ok=True)
    results = []
    for step in steps:
        print(f"==> {step.package}: {step.requirement}  [{preset.name}]", flush=True)
        print(f"    CMAKE_ARGS={step.env['CMAKE_ARGS']}", flush=True)
        t0 = time.time()
        proc = subprocess.run(step.argv, env={**os.environ, **step.env})
        secs = time.time() - t0
        if proc.returncode != 0:
            raise BuildError(f"{step.package} build failed (exit {proc.returncode}) after {secs:.0f} s; "
                             f"rerun with -v for the compiler output")
        wheel = _newest_wheel(wheelhouse, step.package, t0)
        print(f"<== {step.package}: {wheel.name if wheel else '?'} in {secs:.0f} s", flush=True)
        results.append({"binding": step.binding, "package": step.package, "requirement": step.requirement,
                        "wheel": wheel.name if wheel else None, "seconds": round(secs, 1),
                        "cmake_args": step.env["CMAKE_ARGS"]})
    return results


def _write_manifest(wheelhouse: Path, preset: Preset, results: list[dict]) -> Path:
    path = wheelhouse / f"build-{preset.name}.json"
    data = {"preset": preset.name, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0], "results": results}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bindings.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", help="configure preset of CMakePresets.json (see --list)")
    p.add_argument("--presets-file", default=str(PRESETS_FILE), help="default: %(default)s")
    p.add_argument("--wheelhouse", default=str(ROOT / "wheelhouse"), help="output folder (default: %(default)s)")
    p.add_argument("--only", choices=BINDINGS, help="build one binding only")
    p.add_argument("--cuda-arch", help="override CMAKE_CUDA_ARCHITECTURES of a cuda-* preset (e.g. LLM_CUDA_ARCH)")
    p.add_argument("--llama-ref", help="llama-cpp-python version/requirement (default: LLAMA_CPP_REF)")
    p.add_argument("--whisper-ref", help="pywhispercpp version/requirement (default: PYWHISPERCPP_REF)")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default: CPU count)")
    p.add_argument("--python", default=sys.executable, help="interpreter whose pip builds (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and their environment, build nothing")
    p.add_argument("--list", action="store_true", help="list the presets and their CMake flags")
    p.add_argument("-v", "--verbose", action="store_true", help="show the compiler output (pip -v)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        presets = load_presets(args.presets_file)
        if args.list:
            for name in visible_presets(presets):
                pr = resolve_preset(name, presets)
                print(f"{name:<12} {pr.description}")
                for b in BINDINGS:
                    print(f"    {b:<8} {' '.join(cmake_args(pr, b))}")
            return 0
        if not args.preset:
            raise BuildError(f"--preset is required; accepted values: {', '.join(visible_presets(presets))}")
        preset = resolve_preset(args.preset, presets)
        if preset.hidden:
            raise BuildError(f"preset {preset.name!r} is hidden (a base for others); accepted values: "
                             f"{', '.join(visible_presets(presets))}")
        refs = pinned_refs()
        if args.llama_ref:
            refs["llama"] = args.llama_ref
        if args.whisper_ref:
            refs["whisper"] = args.whisper_ref
        cudacxx = None
        if preset.cuda:
            nvcc, on_path = find_nvcc()
            if nvcc is None and not args.dry_run:
                raise BuildError("nvcc not found: install the CUDA toolkit (13.0 for the DGX Spark) and put its "
                                 "bin/ on PATH, or set CUDACXX=/path/to/nvcc")
            if nvcc and not on_path:
                cudacxx = nvcc
        wheelhouse = Path(args.wheelhouse).resolve()
        steps = plan(preset, refs=refs, wheelhouse=wheelhouse, only=args.only, python=args.python,
                     jobs=args.jobs, cuda_arch=args.cuda_arch, verbose=args.verbose, cudacxx=cudacxx)
        if args.dry_run:
            print(f"# preset {preset.name}: {preset.description}")
            print(f"# wheelhouse {wheelhouse}")
            for s in steps:
                print(f"# {s.package} ({s.requirement})")
                print(s.shell())
            return 0
        results = run_steps(steps, wheelhouse, preset)
        manifest = _write_manifest(wheelhouse, preset, results)
        total = sum(r["seconds"] for r in results)
        print(f"built {len(results)} wheel(s) into {wheelhouse} in {total:.0f} s (manifest {manifest.name})")
        print(f"install: pip install --no-index --find-links {wheelhouse} "
              + " ".join(s.package for s in steps))
        return 0
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
