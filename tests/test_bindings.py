"""bindings.build: CMakePresets.json -> CMAKE_ARGS of the llama-cpp-python / pywhispercpp source
builds, the pinned versions, --dry-run. The real `cpu` build (about 17 minutes on 2 busy cores)
runs only with SPARK_VOICE_TEST_BUILD=1 (SPARK_VOICE_TEST_BUILD_ONLY=llama|whisper narrows it,
SPARK_VOICE_TEST_WHEELHOUSE keeps the wheels; SPARK_VOICE_TEST_BUILD=reuse tests the wheels an
earlier run left there without rebuilding)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bindings import build as bb

ROOT = Path(__file__).resolve().parent.parent

COMMON_LLAMA = ["-DLLAVA_BUILD=OFF", "-DLLAMA_CURL=OFF"]
COMMON_WHISPER = ["-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_POSITION_INDEPENDENT_CODE=ON", "-DWHISPER_BUILD_TESTS=OFF",
                  "-DWHISPER_BUILD_EXAMPLES=OFF"]
CUDA = ["-DGGML_CUDA=ON", "-DGGML_CUDA_FA=ON", "-DGGML_CUDA_NCCL=OFF"]
# preset -> the cache variables both bindings get (then COMMON_LLAMA / COMMON_WHISPER)
EXPECTED = {
    "cpu": ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", "-DGGML_CUDA=OFF"],
    "cuda-sm121": ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=ON", *CUDA,
                   "-DCMAKE_CUDA_ARCHITECTURES=121", "-DGGML_CPU_ARM_ARCH=armv8.6-a+fp16"],
    "cuda-sm90": ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", *CUDA,
                  "-DCMAKE_CUDA_ARCHITECTURES=90"],
    "cuda-native": ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_OPENMP=ON", *CUDA,
                    "-DCMAKE_CUDA_ARCHITECTURES=native"],
}


def test_presets_file_is_valid_cmake_presets():
    data = json.loads((ROOT / "CMakePresets.json").read_text())
    assert data["version"] >= 3
    names = [p["name"] for p in data["configurePresets"]]
    assert len(names) == len(set(names))
    assert set(bb.visible_presets()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_maps_to_cmake_args(name):
    preset = bb.resolve_preset(name)
    assert bb.cmake_args(preset, "llama") == EXPECTED[name] + COMMON_LLAMA
    assert bb.cmake_args(preset, "whisper") == EXPECTED[name] + COMMON_WHISPER
    assert preset.cuda == name.startswith("cuda")


def test_cuda_arch_override():
    p = bb.resolve_preset("cuda-sm121")
    assert "-DCMAKE_CUDA_ARCHITECTURES=90;121" in bb.cmake_args(p, "llama", cuda_arch="90;121")
    assert "-DCMAKE_CUDA_ARCHITECTURES=121a-real" in bb.cmake_args(p, "whisper", cuda_arch="121a-real")
    with pytest.raises(bb.BuildError, match="expected e.g. 121"):
        bb.cmake_args(p, "llama", cuda_arch="sm_121")
    with pytest.raises(bb.BuildError, match="does not build CUDA"):
        bb.cmake_args(bb.resolve_preset("cpu"), "llama", cuda_arch="121")


def _presets(*items) -> dict:
    return {p["name"]: p for p in items}


def test_inherits_precedence_and_value_forms():
    presets = _presets(
        {"name": "a", "hidden": True, "cacheVariables": {"X": "a", "Y": "a", "GONE": "a"},
         "vendor": {bb.VENDOR_KEY: {"llama": {"cacheVariables": {"L": "a"}}}}},
        {"name": "b", "hidden": True, "cacheVariables": {"X": "b", "Z": "b"}, "environment": {"E": "b"}},
        {"name": "c", "inherits": ["a", "b"],  # earlier parent wins over later parent
         "cacheVariables": {"Y": "c", "GONE": None, "FLAG": True, "OFF_": False,
                            "T": {"type": "STRING", "value": "v"}},
         "vendor": {bb.VENDOR_KEY: {"whisper": {"cacheVariables": {"W": "c", "X": "w"}}}}},
    )
    p = bb.resolve_preset("c", presets)
    # order: the parents' variables (last parent first), then the preset's own, then the binding's
    assert bb.cmake_args(p, "llama") == ["-DX=a", "-DZ=b", "-DY=c", "-DFLAG=ON", "-DOFF_=OFF", "-DT:STRING=v",
                                         "-DL=a"]
    assert bb.cmake_args(p, "whisper") == ["-DX=w", "-DZ=b", "-DY=c", "-DFLAG=ON", "-DOFF_=OFF", "-DT:STRING=v",
                                           "-DW=c"]
    assert p.environment == {"E": "b"}


def test_preset_errors():
    with pytest.raises(bb.BuildError, match="unknown preset 'nope'; accepted values: cpu"):
        bb.resolve_preset("nope")
    cyc = _presets({"name": "x", "inherits": "y"}, {"name": "y", "inherits": "x"})
    with pytest.raises(bb.BuildError, match="cycle"):
        bb.resolve_preset("x", cyc)
    with pytest.raises(bb.BuildError, match="inherits unknown preset"):
        bb.resolve_preset("x", _presets({"name": "x", "inherits": "ghost"}))
    with pytest.raises(bb.BuildError, match="unknown binding"):
        bb.resolve_preset("x", _presets({"name": "x", "vendor": {bb.VENDOR_KEY: {"torch": {}}}}))
    for bad in ("has space", "${sourceDir}/x"):
        with pytest.raises(bb.BuildError):
            bb.cmake_args(bb.resolve_preset("x", _presets({"name": "x", "cacheVariables": {"V": bad}})), "llama")


def test_refs_come_from_settings(monkeypatch):
    from spark_voice.config import Settings

    s = Settings.load(ROOT, environ={})
    assert bb.pinned_refs(ROOT, environ={}) == {"llama": s.llama_cpp_ref, "whisper": s.pywhispercpp_ref}
    refs = bb.pinned_refs(ROOT, environ={"LLAMA_CPP_REF": "0.3.20", "PYWHISPERCPP_REF": "1.4.0"})
    assert refs == {"llama": "0.3.20", "whisper": "1.4.0"}
    # the Docker build stage has no spark_voice dependencies yet: the plain reader gives the same
    monkeypatch.setitem(sys.modules, "spark_voice.config", None)
    assert bb.pinned_refs(ROOT, environ={}) == {"llama": s.llama_cpp_ref, "whisper": s.pywhispercpp_ref}
    assert bb.pinned_refs(ROOT, environ={"LLAMA_CPP_REF": "0.3.20"})["llama"] == "0.3.20"


def test_requirement_forms():
    assert bb.requirement("llama", "0.3.36") == "llama-cpp-python==0.3.36"
    assert bb.requirement("whisper", "1.5.1") == "pywhispercpp==1.5.1"
    url = "git+https://github.com/abetlen/llama-cpp-python@v0.3.36"
    assert bb.requirement("llama", url) == url
    with pytest.raises(bb.BuildError, match="LLAMA_CPP_REF is empty"):
        bb.requirement("llama", " ")


def test_plan_commands_and_env(tmp_path):
    p = bb.resolve_preset("cuda-sm121")
    steps = bb.plan(p, refs={"llama": "0.3.36", "whisper": "1.5.1"}, wheelhouse=tmp_path, python="py", jobs=4,
                    cuda_arch="121", cudacxx="/usr/local/cuda/bin/nvcc")
    llama, whisper = steps
    assert llama.argv == ["py", "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary",
                          "llama-cpp-python", "-w", str(tmp_path), "llama-cpp-python==0.3.36"]
    assert llama.env["CMAKE_ARGS"] == " ".join(EXPECTED["cuda-sm121"] + COMMON_LLAMA)
    assert llama.env["CMAKE_BUILD_PARALLEL_LEVEL"] == "4" and llama.env["CUDACXX"] == "/usr/local/cuda/bin/nvcc"
    assert whisper.argv[-1] == "pywhispercpp==1.5.1" and "--no-cache-dir" in whisper.argv
    assert whisper.env["PYWHISPERCPP_VERSION"] == "1.5.1"  # its sdist says 0.0.0 otherwise
    assert "FORCE_CMAKE" not in whisper.env
    # the shell line round-trips
    words = shlex.split(llama.shell())
    assert words[0] == "env" and words[-len(llama.argv):] == llama.argv
    only = bb.plan(bb.resolve_preset("cpu"), refs={"llama": "0.3.36", "whisper": "1.5.1"}, wheelhouse=tmp_path,
                   only="whisper", cudacxx="/x/nvcc")
    assert [s.binding for s in only] == ["whisper"] and "CUDACXX" not in only[0].env


def test_dry_run_output(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_REF", raising=False)
    monkeypatch.delenv("PYWHISPERCPP_REF", raising=False)
    wh = tmp_path / "wh"
    assert bb.main(["--preset", "cuda-sm121", "--dry-run", "--wheelhouse", str(wh), "--jobs", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("env ")]
    assert len(lines) == 2
    llama, whisper = (shlex.split(ln) for ln in lines)
    assert f"CMAKE_ARGS={' '.join(EXPECTED['cuda-sm121'] + COMMON_LLAMA)}" in llama
    assert llama[-1] == "llama-cpp-python==0.3.36" and "--no-cache-dir" in llama
    assert "CMAKE_BUILD_PARALLEL_LEVEL=3" in llama
    assert whisper[-1] == "pywhispercpp==1.5.1" and "PYWHISPERCPP_VERSION=1.5.1" in whisper
    assert "# preset cuda-sm121" in out and str(wh) in out
    assert not wh.exists()  # a dry run builds and writes nothing
    assert bb.main(["--preset", "cpu", "--dry-run", "--only", "llama", "--llama-ref", "0.3.30"]) == 0
    out = capsys.readouterr().out
    assert "llama-cpp-python==0.3.30" in out and "pywhispercpp" not in out


def test_cli_errors_and_list(capsys):
    assert bb.main(["--preset", "base", "--dry-run"]) == 2
    assert "hidden" in capsys.readouterr().err
    assert bb.main(["--preset", "gpu", "--dry-run"]) == 2
    assert "accepted values: cpu, cuda-sm121" in capsys.readouterr().err
    assert bb.main(["--dry-run"]) == 2
    assert bb.main(["--preset", "cpu", "--cuda-arch", "121", "--dry-run"]) == 2
    assert bb.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "cuda-sm121" in out and "-DCMAKE_CUDA_ARCHITECTURES=121" in out


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "bindings.build", "--preset", "cpu", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pip wheel" in proc.stdout and "-DGGML_CUDA=OFF" in proc.stdout


# ------------------------------------------------------------------------------------ real build
# 1: build here; reuse: test the wheels already in SPARK_VOICE_TEST_WHEELHOUSE (built by an earlier run)
BUILD = os.environ.get("SPARK_VOICE_TEST_BUILD", "") in ("1", "reuse")


@pytest.mark.build
@pytest.mark.slow
@pytest.mark.skipif(not BUILD, reason="compiles llama-cpp-python / pywhispercpp (minutes): "
                                      "set SPARK_VOICE_TEST_BUILD=1")
def test_real_cpu_build(tmp_path):
    """Build the cpu preset from source, install the wheels into a throwaway target folder and
    use them from a fresh interpreter (they shadow the installed bindings there)."""
    only = os.environ.get("SPARK_VOICE_TEST_BUILD_ONLY") or None
    wh = Path(os.environ.get("SPARK_VOICE_TEST_WHEELHOUSE") or tmp_path / "wheelhouse")
    argv = [sys.executable, "-m", "bindings.build", "--preset", "cpu", "--wheelhouse", str(wh)]
    if only:
        argv += ["--only", only]
    if os.environ.get("SPARK_VOICE_TEST_BUILD") != "reuse":
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        manifest = json.loads((wh / "build-cpu.json").read_text())
        assert all(r["wheel"] for r in manifest["results"])
    wheels = sorted(wh.glob("*.whl"))
    names = {w.name.split("-")[0] for w in wheels}
    assert names >= ({"llama_cpp_python", "pywhispercpp"} if not only else
                     {"llama_cpp_python" if only == "llama" else "pywhispercpp"})
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), *map(str, wheels)],
                   check=True, capture_output=True, timeout=600)
    code = (
        "import json, sys\n"
        "out = {}\n"
        "try:\n"
        "    import llama_cpp\n"
        "    out['llama'] = [llama_cpp.__file__, llama_cpp.llama_supports_gpu_offload()]\n"
        "except ImportError: pass\n"
        "try:\n"
        "    import _pywhispercpp as pw\n"
        "    out['whisper'] = [pw.__file__, pw.whisper_print_system_info()]\n"
        "except ImportError: pass\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    if only in (None, "llama"):
        assert out["llama"][0].startswith(str(target)) and out["llama"][1] is False
        # the fresh build runs a real model
        from tiny_gptoss import build_tiny_gptoss

        model = build_tiny_gptoss(tmp_path / "tiny.gguf")
        gen = ("import llama_cpp\n"
               f"m = llama_cpp.Llama(model_path={str(model)!r}, n_ctx=256, n_threads=1, n_threads_batch=1,"
               " verbose=False)\n"
               "r = m.create_completion('Hello', max_tokens=4, temperature=0.0)\n"
               "print(r['usage']['completion_tokens'])\n")
        res = subprocess.run([sys.executable, "-c", gen], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and int(res.stdout.strip().splitlines()[-1]) >= 1, res.stderr[-2000:]
    if only in (None, "whisper"):
        assert out["whisper"][0].startswith(str(target)) and "CUDA" not in out["whisper"][1]


def test_pyproject_pins_match_env_default_refs():
    """The binding versions live in .env.default; pyproject's extras must ask for the same ones."""
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # 3.10: the copy pip vendors
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

    from dotenv import dotenv_values

    root = Path(__file__).resolve().parent.parent
    env = dotenv_values(root / ".env.default")
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"llama-cpp-python=={env['LLAMA_CPP_REF']}" in extras["llm"]
    assert f"llama-cpp-python=={env['LLAMA_CPP_REF']}" in extras["embed"]
    assert f"pywhispercpp=={env['PYWHISPERCPP_REF']}" in extras["stt"]
