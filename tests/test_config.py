import re
from pathlib import Path

import pytest

from spark_voice.config import PROFILE_PRESETS, Settings
from spark_voice.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_match_env_default():
    """The class defaults mirror .env.default line by line (an installed wheel behaves the same)."""
    from dotenv import dotenv_values

    file_vals = dotenv_values(ROOT / ".env.default")
    fields = {k for k in Settings.model_fields if k not in ("root_dir", "sources")}
    assert {k.lower() for k in file_vals} == fields, "every setting is in .env.default and vice versa"
    s = Settings.load(ROOT, environ={}, use_dotenv=False, profile="prod")
    env = s.as_env(mask_secrets=False)
    for key, value in file_vals.items():
        if key == "SPARK_VOICE_PROFILE":
            continue
        got = env[key]
        if isinstance(getattr(s, key.lower()), float):
            assert float(got) == float(value), key
        else:
            assert got == str(Path(value)) if key.endswith(("_DIR", "_PATH")) else got == value, key


def test_runtime_spec_variables_present():
    text = (ROOT / ".env.default").read_text()
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M))
    spec = """LLM_IMAGE LLM_PLATFORM LLM_UBUNTU_VERSION LLM_CUDA_VERSION LLM_CUDA_ARCH LLAMA_CPP_REF LLM_LOCAL_PORT
    LLM_PORT LLM_MODEL_DIR LLM_MODEL LLM_CTX_SIZE LLM_THREADS LLM_N_GPU_LAYERS LLM_FLASH_ATTN LLM_ENDPOINT STT_IMAGE
    STT_MODEL_LOCAL_DIR STT_MODEL STT_LANGUAGE STT_THREADS STT_PORT STT_ENDPOINT TTS_IMAGE TTS_MODEL_LOCAL_DIR
    TTS_REFERENCE_LOCAL_DIR TTS_BACKEND TTS_PORT TTS_DEFAULT_VOICE TTS_OUTPUT_FORMAT TTS_SAMPLE_RATE EMBEDDING_IMAGE
    EMBEDDING_ENDPOINT EMBEDDING_MODEL EMBEDDING_PORT EMBEDDING_PARALLEL EMBEDDING_UBATCH EMBEDDING_NGPU
    EMBEDDING_POOLING RAG_INDEX_PATH RAG_TOP_K RAG_EMBEDDING_PROVIDER BACKEND SPARK_VOICE_PROFILE""".split()
    assert not set(spec) - names
    assert "LLM_CUDA_ARCH=121" in text and "STT_LANGUAGE=ja" in text and "TTS_SAMPLE_RATE=44100" in text
    assert "LLM_PORT=8080" in text and "EMBEDDING_PORT=9000" in text and "TTS_OUTPUT_FORMAT=opus" in text


def test_precedence_default_profile_dotenv_environment(tmp_path):
    write(tmp_path / ".env.default", "SPARK_VOICE_PROFILE=dev\nLLM_MODEL=big.gguf\nLLM_THREADS=4\nSTT_THREADS=3\n")
    s = Settings.load(tmp_path, environ={})
    assert s.profile == "dev"
    assert s.llm_model == PROFILE_PRESETS["dev"]["LLM_MODEL"]  # preset beats .env.default
    assert s.llm_threads == 4 and s.sources["llm_threads"] == ".env.default"
    write(tmp_path / ".env", "LLM_MODEL=mine.gguf\nLLM_THREADS=1\n")
    s = Settings.load(tmp_path, environ={})
    assert s.llm_model == "mine.gguf" and s.sources["llm_model"] == ".env"  # .env beats the preset
    s = Settings.load(tmp_path, environ={"LLM_THREADS": "2", "PATH": "/bin"})
    assert s.llm_threads == 2 and s.sources["llm_threads"] == "environment"
    s = Settings.load(tmp_path, environ={"LLM_THREADS": "2"}, LLM_THREADS=1)
    assert s.llm_threads == 1


def test_profile_from_env_file_and_mock_preset(tmp_path):
    write(tmp_path / ".env.default", "SPARK_VOICE_PROFILE=dev\n")
    write(tmp_path / ".env", "SPARK_VOICE_PROFILE=mock\n")
    s = Settings.load(tmp_path, environ={})
    assert s.profile == "mock" and s.llm_provider == "mock" and s.tts_provider == "mock"
    s = Settings.load(tmp_path, environ={"SPARK_VOICE_PROFILE": "prod"})
    assert s.profile == "prod" and s.llm_provider == "llama_cpp"


@pytest.mark.parametrize("var,value,expect", [
    ("LLM_THREADS", "abc", "LLM_THREADS"),
    ("LLM_THREADS", "0", "greater than or equal to 1"),
    ("TTS_OUTPUT_FORMAT", "mp3", "'opus', 'wav', 'flac' or 'pcm'"),
    ("BACKEND", "rocm", "'cuda' or 'cpu'"),
    ("LLM_PROVIDER", "openai", "accepted values: llama_cpp, mock"),
    ("TTS_PROVIDER", "kokoro,espeak", "accepted values: fish, kokoro, piper, mock"),
    ("EMBEDDING_POOLING", "none", "accepted values: mean, cls, last"),
    ("STT_LANGUAGE", "日本語", "language code"),
    ("LLM_REASONING_EFFORT", "max", "'low', 'medium' or 'high'"),
])
def test_invalid_values_name_variable_and_accepted_values(tmp_path, var, value, expect):
    with pytest.raises(ConfigError) as ei:
        Settings.load(tmp_path, environ={var: value}, profile="prod")
    msg = str(ei.value)
    assert var in msg and expect in msg and "environment" in msg


def test_invalid_profile(tmp_path):
    with pytest.raises(ConfigError, match="SPARK_VOICE_PROFILE.*prod, dev, mock"):
        Settings.load(tmp_path, environ={"SPARK_VOICE_PROFILE": "staging"})


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="LLM_THREDS"):
        Settings.load(tmp_path, environ={}, LLM_THREDS=2)


def test_paths_resolve_against_root(tmp_path):
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="dev")
    assert s.model_path("llm") == tmp_path / "models" / "llm" / PROFILE_PRESETS["dev"]["LLM_MODEL"]
    s = Settings.load(tmp_path, environ={"LLM_MODEL": "/abs/x.gguf", "STT_MODEL": "./other/ggml.bin"})
    assert s.model_path("llm") == Path("/abs/x.gguf")
    assert s.model_path("stt") == tmp_path / "other" / "ggml.bin"
    with pytest.raises(ConfigError):
        s.model_path("vision")


def test_secrets_masked(tmp_path):
    s = Settings.load(tmp_path, environ={"SERVE_API_KEY": "sekrit"})
    assert s.as_env()["SERVE_API_KEY"] == "***"
    assert s.as_env(mask_secrets=False)["SERVE_API_KEY"] == "sekrit"


def test_no_other_module_reads_settings_from_environ():
    """Settings come from spark_voice.config only. Native-runtime knobs (OMP_*, ORT_*, ...) that the
    code sets or checks for the engines are not settings and are allowed."""
    fields = {k.upper() for k in Settings.model_fields}
    pat = re.compile(r"""os\.(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z0-9_]+)["']\s*(\]\s*=(?!=))?""")
    offenders = []
    for p in (ROOT / "spark_voice").rglob("*.py"):
        if p.name == "config.py":
            continue
        for m in pat.finditer(p.read_text(encoding="utf-8")):
            name, is_assignment = m.group(1), m.group(2)
            if name in fields and not is_assignment:
                offenders.append(f"{p.relative_to(ROOT)}: reads {name}")
    assert not offenders, "settings must come from spark_voice.config:\n" + "\n".join(offenders)
