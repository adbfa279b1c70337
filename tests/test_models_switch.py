"""Model inspection, `models use` / `rollback` (atomic .env edits) and `models verify`, on a temp
root with tiny model files written here (GGUF via the gguf package, the tiny gpt-oss builder, a
whisper.cpp ggml header, a TTS checkpoint layout)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import gguf  # the convert extra (part of [cpu])
import numpy as np
import pytest

from spark_voice.config import Settings
from spark_voice.errors import ConfigError, ModelNotFound
from spark_voice.models import inspect as mi
from spark_voice.models import switch

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ tiny files
def write_gguf(path: Path, arch: str, *, name: str = "tiny", file_type: int | None = 2,
               pooling: int | None = None, tokenizer: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_context_length(128)
    w.add_block_count(1)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(100)])  # > 64 items: summarised, not kept
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_whisper(path: Path, *, n_vocab: int = 51865, layers: int = 6, state: int = 512, n_mels: int = 80,
                  ftype: int = 1, text_layers: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    hp = [n_vocab, 1500, state, 8, layers, 448, state, 8, text_layers or layers, n_mels, ftype]
    path.write_bytes(struct.pack("<12i", mi.GGML_MAGIC, *hp) + b"\0" * 4096)
    return path


def write_tts(folder: Path, skip: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in mi.TTS_REQUIRED_FILES:
        if n == skip:
            continue
        content = json.dumps({"model_type": "dual_ar", "dim": 1024}) if n == "config.json" else "x" * 10
        (folder / n).write_text(content)
    return folder


@pytest.fixture(scope="module")
def tiny_gptoss(tmp_path_factory) -> Path:
    from tiny_gptoss import build_tiny_gptoss

    return Path(build_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny-gpt-oss.gguf"))


@pytest.fixture
def home(tmp_path, tiny_gptoss, monkeypatch) -> Path:
    """A temp settings root: .env.default of the checkout, models/<role>/ with tiny files."""
    shutil.copy(ROOT / ".env.default", tmp_path / ".env.default")
    models = tmp_path / "models"
    (models / "llm").mkdir(parents=True)
    shutil.copy(tiny_gptoss, models / "llm" / "tiny-gpt-oss.gguf")
    write_gguf(models / "llm" / "tiny-llama.Q4_0.gguf", "llama", name="tiny llama", file_type=2)
    write_gguf(models / "embedding" / "tiny-bert.gguf", "bert", name="tiny bert", file_type=1, pooling=1)
    write_whisper(models / "stt" / "ggml-base.bin")
    write_whisper(models / "stt" / "ggml-tiny.en.bin", n_vocab=51864, layers=4, state=384)
    write_tts(models / "tts" / "openaudio-s1-mini")
    for var in ("LLM_MODEL", "STT_MODEL", "EMBEDDING_MODEL", "TTS_MODEL_LOCAL_DIR", "SPARK_VOICE_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPARK_VOICE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings(home: Path, **over) -> Settings:
    return Settings.load(home, environ={}, profile="prod", **over)


def temp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------ inspect
def test_inspect_gguf_gptoss(tiny_gptoss):
    info = mi.inspect_file(tiny_gptoss)
    assert info.kind == "gguf" and info.architecture == "gpt-oss"
    assert info.details["tokenizer"] == "gpt2" and info.details["chat_template"] is True
    assert info.details["n_tensors"] > 0 and info.size_bytes == tiny_gptoss.stat().st_size
    assert mi.validate("llm", tiny_gptoss).architecture == "gpt-oss"
    with pytest.raises(ConfigError, match="causal LLM"):
        mi.validate("embedding", tiny_gptoss)


def test_inspect_gguf_quantisation_and_roles(tmp_path):
    llama = write_gguf(tmp_path / "a.gguf", "llama", file_type=38)
    info = mi.validate("llm", llama)
    assert info.quantization == "MXFP4_MOE" and info.name == "tiny"
    assert info.details["tensor_types"] == {"F16": 1, "F32": 1}
    bert = write_gguf(tmp_path / "b.gguf", "nomic-bert", file_type=7, pooling=1)
    assert mi.validate("embedding", bert).quantization == "Q8_0"
    with pytest.raises(ConfigError, match="embedding model"):
        mi.validate("llm", bert)
    # a decoder that declares mean/last pooling (Qwen3-Embedding style) is an embedding model
    qwen_emb = write_gguf(tmp_path / "q.gguf", "qwen3", pooling=3)
    assert mi.validate("embedding", qwen_emb).architecture == "qwen3"
    # no file type recorded: the dominant non-f32 tensor type stands in
    assert mi.inspect_gguf(write_gguf(tmp_path / "n.gguf", "llama", file_type=None)).quantization == "F16"
    with pytest.raises(ConfigError, match="tokenizer"):
        mi.validate("llm", write_gguf(tmp_path / "nt.gguf", "llama", tokenizer=False))
    with pytest.raises(ConfigError, match="not a text model"):
        mi.validate("llm", write_gguf(tmp_path / "c.gguf", "clip"))


def test_inspect_whisper_header(tmp_path):
    base = mi.validate("stt", write_whisper(tmp_path / "ggml-base.bin"))
    assert (base.name, base.quantization, base.details["multilingual"]) == ("base", "F16", True)
    en = mi.inspect_whisper(write_whisper(tmp_path / "t.bin", n_vocab=51864, layers=4, state=384, ftype=2007))
    assert (en.name, en.quantization, en.details["multilingual"]) == ("tiny.en", "Q8_0", False)
    v3 = mi.inspect_whisper(write_whisper(tmp_path / "l.bin", layers=32, state=1280, n_mels=128, n_vocab=51866))
    assert v3.name == "large-v3"
    turbo = mi.inspect_whisper(write_whisper(tmp_path / "lt.bin", layers=32, state=1280, n_mels=128,
                                             n_vocab=51866, text_layers=4))
    assert turbo.name == "large-v3-turbo"


def test_inspect_rejects_wrong_formats(tmp_path, tiny_gptoss):
    with pytest.raises(ConfigError, match="GGUF file"):
        mi.validate("stt", tiny_gptoss)
    with pytest.raises(ConfigError, match="whisper.cpp model: role stt"):
        mi.validate("llm", write_whisper(tmp_path / "w.bin"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x01")
    with pytest.raises(ConfigError, match="truncated"):
        mi.validate("llm", junk)
    (tmp_path / "txt.bin").write_text("hello world, not a model")
    with pytest.raises(ConfigError, match="not a whisper.cpp"):
        mi.validate("stt", tmp_path / "txt.bin")
    with pytest.raises(ModelNotFound):
        mi.validate("llm", tmp_path / "absent.gguf")
    with pytest.raises(ConfigError, match="unknown model role"):
        mi.validate("vision", tiny_gptoss)


def test_inspect_tts_layout(tmp_path):
    ok = mi.validate("tts", write_tts(tmp_path / "s1"))
    assert ok.kind == "tts-checkpoint" and ok.architecture == "dual_ar"
    with pytest.raises(ConfigError, match="missing codec.pth"):
        mi.validate("tts", write_tts(tmp_path / "s2", skip="codec.pth"))
    bad = write_tts(tmp_path / "s3")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        mi.validate("tts", bad)


# ------------------------------------------------------------------------------------ use / rollback
def test_use_and_rollback_nest(home):
    envp = home / ".env"
    s = settings(home)
    assert not envp.exists()
    r1 = switch.use_model(s, "llm", "tiny-gpt-oss.gguf")
    assert (r1.value, r1.previous, r1.info.architecture) == ("tiny-gpt-oss.gguf", None, "gpt-oss")
    text = envp.read_text()
    assert "# spark-voice previous LLM_MODEL (unset)\nLLM_MODEL=tiny-gpt-oss.gguf\n" in text
    s = settings(home)
    assert s.model_path("llm") == home / "models" / "llm" / "tiny-gpt-oss.gguf"
    assert s.sources["llm_model"] == ".env"

    r2 = switch.use_model(s, "llm", home / "models" / "llm" / "tiny-llama.Q4_0.gguf")
    assert (r2.value, r2.previous) == ("tiny-llama.Q4_0.gguf", "tiny-gpt-oss.gguf")
    assert switch.previous_values(settings(home), "llm") == ["tiny-gpt-oss.gguf", None]

    back = switch.rollback(settings(home), "llm")
    assert back.value == "tiny-gpt-oss.gguf" and back.info.architecture == "gpt-oss"
    assert settings(home).llm_model == "tiny-gpt-oss.gguf"
    back = switch.rollback(settings(home), "llm")
    assert back.value is None  # .env no longer sets it: the .env.default value is back
    assert "LLM_MODEL=" not in envp.read_text()
    assert settings(home).llm_model == "gpt-oss-20b-mxfp4.gguf"
    with pytest.raises(ConfigError, match="nothing to roll back"):
        switch.rollback(settings(home), "llm")
    assert temp_leftovers(home) == []


def test_use_preserves_other_lines_and_comments(home):
    envp = home / ".env"
    original = ("# my settings\n"
                "SPARK_VOICE_PROFILE=prod\n"
                "\n"
                "# the model\n"
                "LLM_MODEL=gpt-oss-20b-mxfp4.gguf   # the big one\n"
                'EMBEDDING_DOCUMENT_PREFIX="search_document: "\n'
                "SERVE_API_KEY=secret\n")
    envp.write_text(original)
    os.chmod(envp, 0o600)
    res = switch.use_model(settings(home), "embedding", "tiny-bert.gguf")
    assert res.previous is None
    res = switch.use_model(settings(home), "llm", "tiny-llama.Q4_0.gguf")
    assert res.previous == "gpt-oss-20b-mxfp4.gguf"
    lines = envp.read_text().splitlines()
    assert lines[:4] == ["# my settings", "SPARK_VOICE_PROFILE=prod", "", "# the model"]
    assert lines[4:6] == ["# spark-voice previous LLM_MODEL=gpt-oss-20b-mxfp4.gguf", "LLM_MODEL=tiny-llama.Q4_0.gguf"]
    assert 'EMBEDDING_DOCUMENT_PREFIX="search_document: "' in lines and "SERVE_API_KEY=secret" in lines
    assert lines[-2:] == ["# spark-voice previous EMBEDDING_MODEL (unset)", "EMBEDDING_MODEL=tiny-bert.gguf"]
    assert envp.stat().st_mode & 0o777 == 0o600  # an .env may hold a key: permissions kept
    s = settings(home)
    assert s.embedding_document_prefix == "search_document: " and s.serve_api_key == "secret"
    switch.rollback(s, "llm")
    switch.rollback(settings(home), "embedding")
    assert envp.read_text() == original.replace("   # the big one", "")
    assert temp_leftovers(home) == []


@pytest.mark.parametrize("role,bad", [
    ("llm", "models/embedding/tiny-bert.gguf"),     # embedding arch as LLM
    ("llm", "models/stt/ggml-base.bin"),            # whisper file as LLM
    ("embedding", "models/llm/tiny-gpt-oss.gguf"),  # causal LLM as embedding
    ("stt", "models/llm/tiny-llama.Q4_0.gguf"),     # GGUF as whisper
    ("tts", "models/llm"),                          # not a checkpoint folder
])
def test_invalid_file_refused_env_unchanged(home, role, bad):
    envp = home / ".env"
    envp.write_text("# keep me\nLLM_THREADS=2\n")
    before = envp.read_bytes(), envp.stat().st_mtime_ns
    with pytest.raises(ConfigError):
        switch.use_model(settings(home), role, home / bad)
    assert (envp.read_bytes(), envp.stat().st_mtime_ns) == before
    assert temp_leftovers(home) == []


def test_missing_file_refused(home):
    with pytest.raises(ModelNotFound, match="nope.gguf"):
        switch.use_model(settings(home), "llm", "nope.gguf")
    assert not (home / ".env").exists()


def test_env_write_is_atomic_on_failure(home, monkeypatch):
    envp = home / ".env"
    envp.write_text("LLM_MODEL=gpt-oss-20b-mxfp4.gguf\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(switch.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        switch.use_model(settings(home), "llm", "tiny-llama.Q4_0.gguf")
    assert envp.read_text() == "LLM_MODEL=gpt-oss-20b-mxfp4.gguf\n"
    assert temp_leftovers(home) == []


def test_use_tts_folder_and_paths_outside_the_role_folder(home, tmp_path_factory):
    other = write_tts(home / "models" / "tts" / "my voice model")  # a space: quoted in .env
    res = switch.use_model(settings(home), "tts", other)
    assert res.value == "./models/tts/my voice model"
    assert settings(home).model_path("tts") == other
    outside = write_gguf(tmp_path_factory.mktemp("elsewhere") / "x.gguf", "qwen2")
    res = switch.use_model(settings(home), "llm", outside)
    assert res.value == str(outside.resolve())
    assert settings(home).model_path("llm") == outside.resolve()


def test_use_warns_when_environment_overrides(home):
    s = Settings.load(home, environ={"LLM_MODEL": "x.gguf"}, profile="prod")
    res = switch.use_model(s, "llm", "tiny-llama.Q4_0.gguf")
    assert res.warnings and "environment" in res.warnings[0]


def test_list_models(home):
    switch.use_model(settings(home), "stt", "ggml-tiny.en.bin")
    data = switch.list_models(settings(home))
    assert set(data) == {"llm", "stt", "embedding", "tts"}
    stt = data["stt"]
    assert stt["variable"] == "STT_MODEL" and stt["source"] == ".env" and stt["history"] == [None]
    by_name = {m["name"]: m for m in stt["models"]}
    assert by_name["ggml-tiny.en.bin"]["active"] and not by_name["ggml-base.bin"]["active"]
    assert by_name["ggml-base.bin"]["info"]["name"] == "base"
    llm = {m["name"]: m for m in data["llm"]["models"]}
    assert llm["tiny-gpt-oss.gguf"]["ok"] and not data["llm"]["active_exists"]
    assert [m["name"] for m in data["tts"]["models"]] == ["openaudio-s1-mini"]


# ------------------------------------------------------------------------------------ CLI
def run_cli(*argv: str) -> int:
    from spark_voice.cli import main

    return main(list(argv))


def test_cli_verify_reports_and_fix_lines(home, capsys):
    rc = run_cli("models", "verify", "--profile", "prod", "--set", "TTS_FALLBACK=none")
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  llm" in out and "gpt-oss-20b-mxfp4.gguf" in out
    assert "fix: put the model at" in out and "spark-voice models use llm" in out
    assert "ok    stt" in out and "base, F16" in out
    assert "ok    tts" in out  # the checkpoint layout of openaudio-s1-mini
    assert run_cli("models", "use", "llm", "tiny-gpt-oss.gguf", "--profile", "prod") == 0
    assert run_cli("models", "use", "embedding", "tiny-bert.gguf", "--profile", "prod") == 0
    capsys.readouterr()
    rc = run_cli("models", "verify", "--profile", "prod", "--set", "TTS_FALLBACK=none", "--json")
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["ok"] is True
    llm = next(m for m in data["models"] if m["role"] == "llm")
    assert llm["info"]["architecture"] == "gpt-oss" and llm["info"]["size_bytes"] > 0


def test_cli_verify_warns_english_only_model_for_japanese(home, capsys):
    switch.use_model(settings(home), "stt", "ggml-tiny.en.bin")
    run_cli("models", "verify", "--profile", "prod", "--set", "STT_LANGUAGE=ja", "--set", "TTS_FALLBACK=none")
    assert "English-only" in capsys.readouterr().out


def test_cli_use_invalid_exit_code_and_rollback(home, capsys):
    assert run_cli("models", "use", "llm", "models/stt/ggml-base.bin") == 2
    assert "not a GGUF file" in capsys.readouterr().err
    assert not (home / ".env").exists()
    assert run_cli("models", "use", "stt", "ggml-tiny.en.bin") == 0
    assert "STT_MODEL=ggml-tiny.en.bin" in capsys.readouterr().out
    assert run_cli("models", "list", "stt") == 0
    out = capsys.readouterr().out
    assert "* ggml-tiny.en.bin" in out and "rollback -> (remove from .env)" in out
    assert run_cli("models", "rollback", "stt", "--json") == 0
    assert json.loads(capsys.readouterr().out)["value"] is None
    assert run_cli("models", "rollback", "stt") == 2


def test_dev_profile_quantised_whisper_switch_and_rollback(home):
    """The dev profile uses the q8_0 whisper base that `models prepare --small` writes; `models use stt
    ggml-base.bin` puts the f16 one in .env (it beats the profile preset), rollback returns to q8_0."""
    write_whisper(home / "models" / "stt" / "ggml-base-q8_0.bin", ftype=2007)

    def dev() -> Settings:
        return Settings.load(home, environ={}, profile="dev")

    assert dev().stt_model == "ggml-base-q8_0.bin" and dev().sources["stt_model"] == "profile dev"
    info = mi.validate("stt", dev().model_path("stt"))
    assert info.quantization == "Q8_0"
    r = switch.use_model(dev(), "stt", "ggml-base.bin")
    assert (r.value, r.previous) == ("ggml-base.bin", None)
    assert dev().stt_model == "ggml-base.bin" and dev().sources["stt_model"] == ".env"
    back = switch.rollback(dev(), "stt")
    assert back.value is None and dev().stt_model == "ggml-base-q8_0.bin"
    assert settings(home).stt_model == "ggml-base.bin"  # prod keeps the f16 file
