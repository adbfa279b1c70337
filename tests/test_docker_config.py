"""docker/Dockerfile and docker/compose.yaml against .env.default (no docker engine needed):
every ${VAR} they use is a setting of .env.default with the same default, every image variable of
.env.default is used, the compose profiles / GPU reservation / healthcheck / mounts are there."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml  # the test extra installs pyyaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
IMAGE_SUFFIXES = ("_IMAGE", "_PLATFORM", "_UBUNTU_VERSION", "_CUDA_VERSION", "_CUDA_ARCH", "_REF")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
BUILTIN = {"PATH"}  # the base image's own environment


def env_default() -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: (v or "") for k, v in dotenv_values(ROOT / ".env.default").items()}


def uses(text: str) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, default) of every ${...} in text."""
    return [(m.group(1), m.group(2), m.group(3)) for m in VAR.finditer(text)]


def dockerfile_args() -> dict[str, str | None]:
    out = {}
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_variable_used_is_in_env_default():
    env = env_default()
    for path in (COMPOSE, DOCKERFILE):
        missing = sorted({n for n, _, _ in uses(path.read_text()) if n not in env and n not in BUILTIN})
        assert not missing, f"{path.name} uses variables that .env.default lacks: {missing}"


def test_compose_defaults_equal_env_default():
    env = env_default()
    for name, op, default in uses(COMPOSE.read_text()):
        assert op == ":-", f"${{{name}}} in compose.yaml needs a ':-' default (the .env.default value)"
        assert default == env[name], f"compose default of {name} is {default!r}, .env.default says {env[name]!r}"


def test_dockerfile_arg_defaults_equal_env_default():
    env = env_default()
    args = dockerfile_args()
    assert {"LLM_CUDA_VERSION", "LLM_UBUNTU_VERSION", "LLM_CUDA_ARCH", "LLAMA_CPP_REF", "PYWHISPERCPP_REF"} <= set(args)
    for name, default in args.items():
        assert name in env, f"Dockerfile ARG {name} is not in .env.default"
        assert (default or "") == env[name], f"Dockerfile ARG {name}={default!r}, .env.default says {env[name]!r}"


def test_every_image_variable_is_used():
    env = env_default()
    image_vars = sorted(k for k in env if k.endswith(IMAGE_SUFFIXES))
    assert {"LLM_IMAGE", "LLM_PLATFORM", "LLM_UBUNTU_VERSION", "LLM_CUDA_VERSION", "LLM_CUDA_ARCH",
            "LLAMA_CPP_REF", "PYWHISPERCPP_REF"} <= set(image_vars)
    used = {n for p in (COMPOSE, DOCKERFILE) for n, _, _ in uses(p.read_text())}
    unused = [v for v in image_vars if v not in used]
    assert not unused, f".env.default image variables not used by docker/: {unused}"


def test_compose_build_args_match_dockerfile_args(compose):
    build = compose["services"]["prod"]["build"]
    assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert set(build["args"]) == set(dockerfile_args())
    for name, value in build["args"].items():
        assert value.startswith(f"${{{name}:-"), f"build arg {name} must come from the .env variable {name}"
    assert build["platforms"] == ["${LLM_PLATFORM:-linux/arm64}"]


def test_compose_profiles_and_services(compose):
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert {"prod", "mock", "dev"} <= profiles
    for name in ("prod", "mock", "dev"):
        s = services[name]
        assert s["image"] == "${LLM_IMAGE:-spark-voice:cuda13-sm121}"
        assert s["platform"] == "${LLM_PLATFORM:-linux/arm64}"
        assert s["ports"] == ["${LLM_LOCAL_PORT:-8080}:${LLM_PORT:-8080}"]
        assert s["environment"]["SERVE_PORT"] == "${LLM_PORT:-8080}"
        assert s["environment"]["SPARK_VOICE_PROFILE"] == name
        cmd = s["command"]
        assert cmd[:3] == ["python", "-m", "spark_voice.serve"] and "0.0.0.0" in cmd
        hc = " ".join(s["healthcheck"]["test"])
        assert "/ready" in hc and "${LLM_PORT:-8080}" in hc
    assert "--reload" in services["dev"]["command"] and "--reload" not in services["prod"]["command"]
    assert ["..:/src"] == services["dev"]["volumes"] and services["dev"]["environment"]["PYTHONPATH"] == "/src"


def test_prod_mounts_and_gpu(compose):
    prod = compose["services"]["prod"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prod["volumes"]}
    assert mounts == {"../models": "/app/models", "../data": "/app/data", "../references": "/app/references"}
    for host in mounts:
        assert (DOCKER / host).resolve().parent == ROOT
    devices = prod["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in compose["services"]["mock"]  # mock runs anywhere
    assert prod["env_file"] == [{"path": "../.env", "required": False}]


def test_dockerfile_stages_and_build_command():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)
    assert froms[0] == ("nvidia/cuda:${LLM_CUDA_VERSION}-devel-ubuntu${LLM_UBUNTU_VERSION}", "build")
    assert froms[-1] == ("nvidia/cuda:${LLM_CUDA_VERSION}-runtime-ubuntu${LLM_UBUNTU_VERSION}", "runtime")
    m = re.search(r"python -m bindings\.build --preset (\S+) --cuda-arch \"\$\{LLM_CUDA_ARCH\}\"", text)
    assert m, "the build stage must build the bindings with bindings.build and LLM_CUDA_ARCH"
    from bindings.build import resolve_preset

    assert resolve_preset(m.group(1)).cuda and m.group(1) == "cuda-sm121"
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert 'CMD ["python", "-m", "spark_voice.serve", "--host", "0.0.0.0"]' in text


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    text = DOCKERFILE.read_text()
    sources = []
    for line in text.splitlines():
        m = re.match(r"^COPY\s+(?!--from)(.+)$", line.strip())
        if m:
            sources += m.group(1).split()[:-1]
    assert {"CMakePresets.json", ".env.default", "bindings", "pyproject.toml", "spark_voice"} <= set(sources)
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        state = False
        for pat in ignore:
            neg = pat.startswith("!")
            if fnmatch.fnmatch(path, pat.lstrip("!")):
                state = not neg
        return state

    for src in sources:
        if src != "README.md":  # the lead's README (pyproject's readme) is checked by the packaging
            assert (ROOT / src).exists(), f"COPY source {src} missing"
        assert not ignored(src), f"COPY source {src} is excluded by .dockerignore"
    for secret in (".env", "models", "data", ".venv"):
        assert ignored(secret), f".dockerignore must exclude {secret}"
