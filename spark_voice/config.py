"""Settings: one class mirroring `.env.default`. Nothing else in spark_voice reads os.environ.

Precedence, lowest first: `.env.default` < profile preset < `.env` < process environment <
keyword overrides given to :meth:`Settings.load`. The field defaults below equal `.env.default`
(a test keeps them in step), so an installed wheel without the file behaves the same.

Length: one field per line of `.env.default` (over 100 knobs) in one class, so that the two files
can be compared line by line; the loader and helpers are short.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError
from .types import PROVIDERS, Role

Profile = Literal["prod", "dev", "mock"]
Device = Literal["cuda", "cpu"]
OnOffAuto = Literal["on", "off", "auto"]

# What each profile changes on top of .env.default (.env and the environment still win).
PROFILE_PRESETS: dict[str, dict[str, str]] = {
    "prod": {},
    "dev": {
        "BACKEND": "cpu",
        "LLM_MODEL": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "LLM_N_GPU_LAYERS": "0",
        "LLM_FLASH_ATTN": "off",
        "LLM_TEMPERATURE": "0.2",  # SmolLM2-135M rambles at 0.7; 0.2 is its recommended setting
        "EMBEDDING_MODEL": "all-MiniLM-L6-v2.gguf",
        "EMBEDDING_NGPU": "0",
        "EMBEDDING_DOCUMENT_PREFIX": "",
        "EMBEDDING_QUERY_PREFIX": "",
        # whisper base quantised to q8_0 by `models prepare --small`: faster on the CPU, same WER / CER
        # on our clips (README Performance); the f16 ggml-base.bin stays selectable (`models use stt`)
        "STT_MODEL": "ggml-base-q8_0.bin",
        "TTS_PROVIDER": "kokoro,piper",
        "TTS_FALLBACK": "none",
        "TTS_BACKEND": "cpu",
    },
    "mock": {
        "BACKEND": "cpu",
        "LLM_PROVIDER": "mock",
        "LLM_FALLBACK": "none",
        "STT_PROVIDER": "mock",
        "STT_FALLBACK": "none",
        "TTS_PROVIDER": "mock",
        "TTS_FALLBACK": "none",
        "TTS_BACKEND": "cpu",
        "RAG_EMBEDDING_PROVIDER": "mock",
        "RAG_EMBEDDING_FALLBACK": "none",
        "LLM_N_GPU_LAYERS": "0",
        "EMBEDDING_NGPU": "0",
    },
}

SECRET_FIELDS = {"serve_api_key"}
LLM_PROVIDERS = tuple(PROVIDERS["llm"])
STT_PROVIDERS = tuple(PROVIDERS["stt"])
TTS_PROVIDERS = tuple(PROVIDERS["tts"])
EMBED_PROVIDERS = tuple(PROVIDERS["embedding"])
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


def _provider_list(value: str, accepted: tuple[str, ...], allow_none: bool, allow_list: bool = True) -> str:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise ValueError(f"empty; accepted values: {', '.join(accepted)}")
    if len(items) > 1 and not allow_list:
        raise ValueError(f"one provider expected; accepted values: {', '.join(accepted)}")
    if allow_none and items == ["none"]:
        return "none"
    bad = [v for v in items if v not in accepted]
    if bad:
        extra = " or none" if allow_none else ""
        raise ValueError(f"unknown provider {bad[0]!r}; accepted values: {', '.join(accepted)}{extra}"
                         + (" (a comma list is allowed)" if allow_list else ""))
    return ",".join(items)


class Settings(BaseSettings):
    """Every knob of spark-voice. Field `foo_bar` is environment variable `FOO_BAR`."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True, frozen=True)

    # general
    spark_voice_profile: Profile = "dev"
    backend: Device = "cuda"
    models_dir: Path = Path("./models")
    data_dir: Path = Path("./data")
    log_format: Literal["json", "text", "auto"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # LLM
    llm_provider: str = "llama_cpp"
    llm_fallback: str = "none"
    llm_image: str = "spark-voice:cuda13-sm121"
    llm_platform: str = "linux/arm64"
    llm_ubuntu_version: str = "24.04"
    llm_cuda_version: str = "13.0.0"
    llm_cuda_arch: int = Field(121, ge=50, le=200)
    llama_cpp_ref: str = "0.3.36"
    pywhispercpp_ref: str = "1.5.1"
    llm_local_port: int = Field(8080, ge=1, le=65535)
    llm_port: int = Field(8080, ge=1, le=65535)
    llm_model_dir: Path = Path("./models/llm")
    llm_model: str = "gpt-oss-20b-mxfp4.gguf"
    llm_ctx_size: int = Field(8192, ge=256, le=1_048_576)
    llm_threads: int = Field(2, ge=1, le=512)
    llm_n_gpu_layers: int = Field(-1, ge=-1)
    llm_flash_attn: OnOffAuto = "auto"
    llm_endpoint: str = ""
    llm_system_prompt: str = ("You are a helpful voice assistant. Answer briefly in the language of the user, "
                              "in one to three short sentences, without markdown.")
    llm_temperature: float = Field(0.7, ge=0.0, le=2.0)
    llm_top_p: float = Field(0.95, gt=0.0, le=1.0)
    llm_max_tokens: int = Field(256, ge=1, le=131072)
    llm_seed: int = -1
    llm_reasoning_effort: Literal["low", "medium", "high"] = "low"
    llm_emit_analysis: bool = False
    llm_history_turns: int = Field(8, ge=0, le=1000)

    # STT
    stt_provider: str = "whisper_cpp"
    stt_fallback: str = "none"
    stt_image: str = "spark-voice:cuda13-sm121"
    stt_model_local_dir: Path = Path("./models/stt")
    stt_model: str = "ggml-base.bin"
    stt_language: str = "ja"
    stt_threads: int = Field(2, ge=1, le=512)
    stt_port: int = Field(8081, ge=1, le=65535)
    stt_endpoint: str = ""
    stt_vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    stt_partial_interval_ms: int = Field(500, ge=100, le=10_000)
    stt_silence_ms: int = Field(500, ge=100, le=10_000)
    stt_max_utterance_s: float = Field(30.0, ge=1.0, le=600.0)
    stt_vad_model: str = ""
    stt_final_ctx: Literal["full", "fitted"] = "fitted"
    stt_final_ctx_margin_s: float = Field(1.0, ge=0.0, le=30.0)
    stt_turn_detection: Literal["on", "off"] = "on"
    stt_turn_model: str = ""
    stt_turn_threshold: float = Field(0.25, gt=0.0, lt=1.0)
    stt_turn_short_silence_ms: int = Field(200, ge=64, le=10_000)
    stt_turn_long_silence_ms: int = Field(2000, ge=100, le=30_000)
    stt_turn_threads: int = Field(2, ge=1, le=64)
    barge_in_policy: Literal["smart", "immediate"] = "smart"
    barge_in_min_speech_ms: int = Field(800, ge=0, le=60_000)
    barge_in_resume_ms: int = Field(1500, ge=0, le=60_000)
    barge_in_backchannels: str = ("はい,うん,ええ,そう,そうそう,そうですね,そうですか,なるほど,"
                                  "へえ,へー,ほう,ふーん,うんうん,はいはい,ああ,あー,はーい,了解,確かに,"
                                  "yeah,yes,yep,yup,uh-huh,uh huh,mm-hmm,mhm,mm,hmm,"
                                  "okay,ok,right,sure,i see,got it,alright,all right,cool,nice,wow,oh")
    turn_speculative: Literal["on", "off"] = "off"
    turn_speculative_stable: int = Field(1, ge=1, le=20)
    turn_speculative_threads: int = Field(0, ge=0, le=512)

    # TTS
    tts_provider: str = "fish"
    tts_fallback: str = "kokoro,piper"
    tts_image: str = "spark-voice:cuda13-sm121"
    tts_fish_ref: str = "d3df50503b36314a964f66cac1af1e19e95bcfa3"
    tts_fish_load_timeout: float = Field(600.0, gt=0.0, le=86_400.0)
    tts_fish_codec_config: str = Field("modded_dac_vq", pattern=r"^[A-Za-z0-9_.\-]+$")
    tts_model_local_dir: Path = Path("./models/tts/openaudio-s1-mini")
    tts_reference_local_dir: Path = Path("./references/tts")
    tts_backend: Device = "cuda"
    tts_port: int = Field(8082, ge=1, le=65535)
    tts_default_voice: str = ""
    tts_output_format: Literal["opus", "wav", "flac", "pcm"] = "opus"
    tts_sample_rate: int = Field(44100, ge=8000, le=192000)
    tts_threads: int = Field(2, ge=1, le=512)
    tts_piper_dir: Path = Path("./models/tts/piper")
    tts_kokoro_dir: Path = Path("./models/tts/kokoro-ja")
    tts_chunk_rule: Literal["eager", "sentence"] = "eager"
    tts_chunk_first_max: float = Field(12.0, ge=4.0, le=1000.0)
    tts_chunk_max: float = Field(40.0, ge=4.0, le=1000.0)
    tts_chunk_force_ms: int = Field(1200, ge=0, le=60_000)

    # embeddings
    embedding_image: str = "spark-voice:cuda13-sm121"
    embedding_endpoint: str = ""
    embedding_model_dir: Path = Path("./models/embedding")
    embedding_model: str = "nomic-embed-text-v1.5.Q8_0.gguf"
    embedding_port: int = Field(9000, ge=1, le=65535)
    embedding_parallel: int = Field(4, ge=1, le=256)
    embedding_ubatch: int = Field(512, ge=1, le=65536)
    embedding_ngpu: int = Field(-1, ge=-1)
    embedding_pooling: Literal["mean", "cls", "last", "none"] = "mean"
    embedding_threads: int = Field(2, ge=1, le=512)
    embedding_document_prefix: str = "search_document: "
    embedding_query_prefix: str = "search_query: "

    # RAG
    rag_index_path: Path = Path("./data/faiss/index.bin")
    rag_top_k: int = Field(3, ge=1, le=100)
    rag_embedding_provider: str = "llama_cpp"
    rag_embedding_fallback: str = "none"
    rag_enabled: OnOffAuto = "auto"
    rag_chunk_chars: int = Field(400, ge=50, le=20_000)
    rag_chunk_overlap: int = Field(80, ge=0, le=10_000)
    rag_index_type: Literal["flat", "hnsw", "ivf", "sq8"] = "flat"
    rag_min_score: float = Field(0.2, ge=-1.0, le=1.0)
    rag_threads: int = Field(2, ge=1, le=512)
    rag_max_file_mb: float = Field(10.0, gt=0, le=100_000)

    tools_builtin: str = ""  # tools
    tools_timezone: str = "Asia/Tokyo"
    tools_max_calls: int = Field(4, ge=0, le=64)
    tools_timeout_s: float = Field(10.0, gt=0, le=3600)

    # server
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8080, ge=1, le=65535)
    serve_api_key: str = ""
    serve_insecure: bool = False
    serve_token_ttl_min: float = Field(10.0, gt=0, le=1440)
    serve_max_body_mb: float = Field(25.0, gt=0, le=4096)
    serve_max_audio_s: float = Field(900.0, gt=0, le=86_400)
    serve_max_json_depth: int = Field(32, ge=2, le=512)
    serve_max_chat_chars: int = Field(200_000, ge=1, le=100_000_000)
    serve_max_embedding_chars: int = Field(32_000, ge=1, le=100_000_000)
    serve_max_embedding_inputs: int = Field(2048, ge=1, le=1_000_000)
    serve_max_sessions: int = Field(8, ge=1, le=10_000)
    serve_ws_idle_timeout_s: float = Field(300.0, gt=0, le=86_400)
    serve_ws_max_session_s: float = Field(3600.0, gt=0, le=7 * 86_400)
    serve_ws_max_pending_s: float = Field(30.0, gt=0, le=3600)
    serve_ws_send_queue: int = Field(256, ge=8, le=100_000)
    serve_queue_size: int = Field(8, ge=1, le=10_000)
    serve_queue_timeout_s: float = Field(120.0, gt=0, le=3600)
    serve_latency_window: int = Field(20, ge=1, le=10_000)
    serve_allowed_origins: str = "self,localhost"

    # batch jobs (spark-voice batch; --ray)
    batch_actors: int = Field(0, ge=0, le=10_000)
    batch_cpus_per_actor: int = Field(0, ge=0, le=1024)
    batch_gpus_per_actor: float = Field(-1.0, ge=-1.0, le=64.0)
    batch_inflight_per_actor: int = Field(2, ge=1, le=1000)
    batch_max_retries: int = Field(2, ge=0, le=100)
    batch_actor_restarts: int = Field(4, ge=-1, le=10_000)

    # where the settings came from (not an environment variable)
    root_dir: Path = Field(default=Path("."), exclude=True)
    sources: dict[str, str] = Field(default_factory=dict, exclude=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Settings.load() does the merging itself, so that profile presets sit between files.
        return (init_settings,)

    @field_validator("llm_provider", "llm_fallback")
    @classmethod
    def _v_llm(cls, v: str, info) -> str:
        fb = info.field_name.endswith("fallback")
        return _provider_list(v, LLM_PROVIDERS, allow_none=fb, allow_list=fb)

    @field_validator("stt_provider", "stt_fallback")
    @classmethod
    def _v_stt(cls, v: str, info) -> str:
        fb = info.field_name.endswith("fallback")
        return _provider_list(v, STT_PROVIDERS, allow_none=fb, allow_list=fb)

    @field_validator("tts_provider", "tts_fallback")
    @classmethod
    def _v_tts(cls, v: str, info) -> str:
        return _provider_list(v, TTS_PROVIDERS, allow_none=info.field_name.endswith("fallback"))

    @field_validator("rag_embedding_provider", "rag_embedding_fallback")
    @classmethod
    def _v_emb(cls, v: str, info) -> str:
        fb = info.field_name.endswith("fallback")
        return _provider_list(v, EMBED_PROVIDERS, allow_none=fb, allow_list=fb)

    @field_validator("serve_allowed_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        for item in (x.strip() for x in v.split(",")):
            if item and item not in ("self", "localhost", "*") and not _ORIGIN_RE.match(item):
                raise ValueError(f"SERVE_ALLOWED_ORIGINS: {item!r} is not an origin; accepted values: "
                                 "self, localhost, *, or scheme://host[:port] (comma-separated)")
        return v

    @field_validator("stt_language")
    @classmethod
    def _v_lang(cls, v: str) -> str:
        v = v.strip().lower()
        if not (v == "auto" or re.fullmatch(r"[a-z]{2,3}", v)):
            raise ValueError("expected a language code such as ja, en, or auto")
        return v

    @field_validator("tools_builtin", "tools_timezone")
    @classmethod
    def _v_tools(cls, v: str, info) -> str:
        from .tools import check_builtin_setting  # the names and time zones tools know

        return check_builtin_setting(info.field_name, v)

    @field_validator("embedding_pooling")
    @classmethod
    def _v_pool(cls, v: str) -> str:
        if v == "none":
            raise ValueError("pooling 'none' gives token vectors, not sentence vectors; "
                             "accepted values: mean, cls, last")
        return v

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: str | Path | None = None, *, environ: dict[str, str] | None = None,
             use_dotenv: bool = True, **overrides: Any) -> "Settings":
        """Build settings from `.env.default`, the profile preset, `.env`, the environment, overrides.

        root: the folder holding `.env.default` / `.env` (default: $SPARK_VOICE_HOME, else the
        current directory if it has a `.env.default`, else the source checkout of this package).
        environ: the environment to read (default os.environ; tests pass their own dict).
        overrides: field names or variable names, e.g. ``profile="mock"`` or ``LLM_THREADS=1``.
        """
        env = dict(os.environ if environ is None else environ)
        root_dir = _find_root(root, env)
        fields = set(cls.model_fields) - {"root_dir", "sources"}
        merged: dict[str, str] = {}
        sources: dict[str, str] = {}

        def take(values: dict[str, Any], source: str, strict: bool) -> None:
            for key, value in values.items():
                name = key.lower()
                if name not in fields:
                    if strict:
                        raise ConfigError(f"{key.upper()}: unknown setting in {source} "
                                          f"(see .env.default for the accepted names)")
                    continue
                merged[name] = "" if value is None else value
                sources[name] = source

        def read(name: str) -> dict:
            path = root_dir / name
            return dict(dotenv_values(path)) if use_dotenv and path.is_file() else {}

        take(read(".env.default"), ".env.default", strict=False)
        user_vals = read(".env")
        env_vals = {k: v for k, v in env.items() if k.lower() in fields}
        ovr = {("spark_voice_profile" if k.lower() == "profile" else k.lower()): v for k, v in overrides.items()}

        # the profile is known only once every layer has been seen
        profile = str(ovr.get("spark_voice_profile")
                      or env_vals.get("SPARK_VOICE_PROFILE")
                      or user_vals.get("SPARK_VOICE_PROFILE")
                      or merged.get("spark_voice_profile") or "dev").strip()
        if profile not in PROFILE_PRESETS:
            raise ConfigError(f"SPARK_VOICE_PROFILE: invalid value {profile!r}; accepted values: "
                              f"{', '.join(PROFILE_PRESETS)}")
        take(PROFILE_PRESETS[profile], f"profile {profile}", strict=True)
        take(user_vals, ".env", strict=False)
        take(env_vals, "environment", strict=False)
        take(ovr, "argument", strict=True)
        merged["spark_voice_profile"] = profile
        try:
            s = cls(**merged, root_dir=root_dir, sources=sources)  # type: ignore[arg-type]  # strings; validated
        except ValidationError as exc:
            raise ConfigError(_format_validation(exc, sources)) from None
        return s

    # ------------------------------------------------------------------ helpers
    @property
    def profile(self) -> str:
        return self.spark_voice_profile

    def path(self, p: str | Path) -> Path:
        """Resolve a configured path against the settings root."""
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else (self.root_dir / p).resolve()

    def model_path(self, role: str) -> Path:
        """The model file (or folder for tts) that a role is configured to use."""
        if role == "llm":
            return self._in_dir(self.llm_model, self.llm_model_dir)
        if role == "stt":
            return self._in_dir(self.stt_model, self.stt_model_local_dir)
        if role == "embedding":
            return self._in_dir(self.embedding_model, self.embedding_model_dir)
        if role == "tts":
            return self.path(self.tts_model_local_dir)
        raise ConfigError(f"unknown model role {role!r}; accepted values: llm, stt, embedding, tts")

    def _in_dir(self, name: str, folder: Path) -> Path:
        p = Path(os.path.expanduser(name))
        if p.is_absolute():
            return p
        if len(p.parts) > 1:  # ./models/llm/x.gguf style: relative to the root
            return self.path(p)
        return self.path(folder) / p

    def providers(self, role: Role) -> tuple[list[str], list[str]]:
        """(providers, fallbacks) of a role: llm, stt, tts, embedding."""
        prov, fb = {
            "llm": (self.llm_provider, self.llm_fallback),
            "stt": (self.stt_provider, self.stt_fallback),
            "tts": (self.tts_provider, self.tts_fallback),
            "embedding": (self.rag_embedding_provider, self.rag_embedding_fallback),
        }[role]
        return prov.split(","), ([] if fb == "none" else fb.split(","))

    def as_env(self, mask_secrets: bool = True) -> dict[str, str]:
        """Effective settings as VARIABLE -> string, secrets masked."""
        out = {}
        for name in type(self).model_fields:
            if name in ("root_dir", "sources"):
                continue
            v = getattr(self, name)
            s = str(v).lower() if isinstance(v, bool) else str(v)
            if mask_secrets and name in SECRET_FIELDS and s:
                s = "***"
            out[name.upper()] = s
        return out


def _find_root(root: str | Path | None, env: dict[str, str]) -> Path:
    if root is not None:
        return Path(root).resolve()
    if env.get("SPARK_VOICE_HOME"):
        return Path(env["SPARK_VOICE_HOME"]).resolve()
    cwd = Path.cwd()
    if (cwd / ".env.default").is_file():
        return cwd
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".env.default").is_file():
        return checkout
    return cwd


def _format_validation(exc: ValidationError, sources: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err.get("loc") else "?"
        value = err.get("input")
        msg = err.get("msg", "invalid")
        ctx = err.get("ctx") or {}
        if err.get("type") == "literal_error" and "expected" in ctx:
            msg = f"accepted values: {ctx['expected']}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        src = sources.get(name, "default")
        lines.append(f"{name.upper()}: invalid value {value!r} (from {src}); {msg}")
    return "invalid settings:\n  " + "\n  ".join(lines)
