"""One fish-speech pin everywhere (TTS_FISH_REF in .env.default): README, Dockerfile, compose,
Settings, the adapter's install advice, doctor, the test environment script; and doctor's report
of an installed fish-speech (commit, editable source tree, S1 or S2 era)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from conftest import ROOT

PIN = dotenv_values(ROOT / ".env.default")["TTS_FISH_REF"] or ""


def test_the_pin_is_the_last_s1_commit():
    assert PIN == "d3df50503b36314a964f66cac1af1e19e95bcfa3"
    vendor = ROOT.parent / "shared" / "vendor" / "README.md"
    if vendor.is_file():  # the vendored tree is this commit
        assert PIN in vendor.read_text(encoding="utf-8")


def test_every_installer_uses_the_pin():
    from spark_voice.backends import tts_fish
    from spark_voice.config import Settings

    assert Settings.model_fields["tts_fish_ref"].default == PIN
    assert tts_fish.PINNED_COMMIT == PIN and PIN[:7] in tts_fish.INSTALL_HINT
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^ARG TTS_FISH_REF={PIN}$", dockerfile, re.M)
    assert "pip install -e /opt/fish-speech" in dockerfile and 'checkout "${TTS_FISH_REF}"' in dockerfile
    assert "git+https://github.com/fishaudio" not in dockerfile  # never a non-editable install
    assert f"${{TTS_FISH_REF:-{PIN}}}" in (ROOT / "docker" / "compose.yaml").read_text()
    assert "TTS_FISH_REF=" in (ROOT / "scripts" / "fish_env.sh").read_text()  # reads .env.default
    makefile = (ROOT / "Makefile").read_text()
    assert "vendor-fish:" in makefile and "TTS_FISH_REF" in makefile
    # the `fish` extra cannot install an editable tree, so it must not name fish-speech
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("fish-speech" in d or "fish_speech" in d for d in extras["fish"])


def test_readme_installs_the_pin_editable():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(PIN) >= 2
    for m in re.finditer(r"git clone https://github\.com/fishaudio/fish-speech[^\n]*", readme):
        line = m.group(0)
        assert f"checkout {PIN}" in line, f"README clones fish-speech without the pin: {line}"
    for m in re.finditer(r"pip install[^\n]*fish-speech[^\n]*", readme):
        assert "-e " in m.group(0), f"README installs fish-speech non-editable: {m.group(0)}"


# --------------------------------------------------------------------------- doctor
def _tree(tmp_path: Path, *, s1: bool = True, editable: bool = True, commit: str | None = PIN) -> Path:
    site = tmp_path / "site"
    pkg = site / "fish_speech"
    (pkg / "models" / "dac").mkdir(parents=True)
    (pkg / "tokenizer.py").write_text("import tiktoken\n" if s1 else "from transformers import AutoTokenizer\n")
    if s1:
        (pkg / "models" / "dac" / "modded_dac.py").write_text("")
    if editable:
        (site / ".project-root").write_text("")
    if commit:
        (site / ".fish-speech-commit").write_text(commit + "\n")
    return site


@pytest.fixture
def fish_settings(tmp_path):
    from spark_voice.config import Settings

    return Settings.load(tmp_path, environ={}, use_dotenv=False, profile="prod", TTS_FALLBACK="kokoro,piper")


def _doctor(monkeypatch, site: Path | None, settings):
    from spark_voice import doctor

    monkeypatch.delitem(sys.modules, "fish_speech", raising=False)
    if site is not None:
        monkeypatch.syspath_prepend(str(site))
    else:
        monkeypatch.setitem(sys.modules, "fish_speech", None)
    return doctor.collect(settings, gpu=False, models=False)


def _fish_problems(report) -> list[dict]:
    return [p for p in report["problems"] if p["check"] == "fish_speech"]


def test_doctor_reports_a_pinned_editable_s1_install(tmp_path, monkeypatch, fish_settings):
    r = _doctor(monkeypatch, _tree(tmp_path), fish_settings)
    fs = r["fish_speech"]
    assert fs["installed"] and fs["editable"] and fs["era"] == "s1" and fs["commit"] == PIN
    assert _fish_problems(r) == []
    from spark_voice.doctor import format_text

    assert f"commit {PIN[:12]}, editable source tree, S1" in format_text(r)


@pytest.mark.parametrize("kind", ["s2", "not_editable", "other_commit", "missing"])
def test_doctor_warns_with_the_pinned_install_command(tmp_path, monkeypatch, fish_settings, kind):
    site = {"s2": lambda: _tree(tmp_path, s1=False), "not_editable": lambda: _tree(tmp_path, editable=False),
            "other_commit": lambda: _tree(tmp_path, commit="0123456789abcdef0123456789abcdef01234567"),
            "missing": lambda: None}[kind]()
    probs = _fish_problems(_doctor(monkeypatch, site, fish_settings))
    assert len(probs) == 1, probs
    msg, fix = probs[0]["message"], probs[0]["fix"]
    expect = {"s2": "S2-era", "not_editable": "not a source tree", "other_commit": "TTS_FISH_REF pins",
              "missing": "not installed"}[kind]
    assert expect in msg and "pip install -e" in fix and PIN[:7] in fix
