"""Model switch and rollback: `spark-voice models list | use ROLE FILE | rollback ROLE`.

`use` validates the file for its role (see :mod:`spark_voice.models.inspect`), then rewrites the
role's variable in ``.env`` (next to ``.env.default``) atomically: the new text goes to a temp file
in the same folder, is fsync'ed and renamed over ``.env``; every other line and comment is kept.
The value it replaces is kept in a comment right above the variable::

    # spark-voice previous LLM_MODEL=gpt-oss-20b-mxfp4.gguf
    LLM_MODEL=my-finetune.Q8_0.gguf

(``# spark-voice previous LLM_MODEL (unset)`` when .env did not set it). `rollback` pops the
most recent of those comments and restores that value (or removes the line again), so uses and
rollbacks nest. A running server reads .env at start-up: restart it to pick up the change
(with docker compose: ``up -d`` recreates the container).

Edits refuse values holding a newline or NUL, run under an flock (two `use` at once lose nothing),
keep a symlinked ``.env`` a symlink, and treat a multi-line quoted value as one assignment.

Length: the .env line editor (quoting, history comments, multi-line values, locking) and the
commands built on it stay together: `use`, `rollback` and `verify` share every helper.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import ConfigError, ModelNotFound
from ..types import ROLES
from .inspect import TTS_REQUIRED_FILES, ModelInfo, describe, validate

ROLE_VARS = {"llm": "LLM_MODEL", "stt": "STT_MODEL", "embedding": "EMBEDDING_MODEL", "tts": "TTS_MODEL_LOCAL_DIR"}
MARK = "# spark-voice previous"
HISTORY_KEEP = 10  # previous values kept per variable
_FILE_GLOBS = {"llm": ("*.gguf",), "embedding": ("*.gguf",), "stt": ("*.bin", "*.ggml")}


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown model role {role!r}; accepted values: {', '.join(ROLES)}")
    return role


def role_dir(settings, role: str) -> Path:
    """The folder a role's models live in (bare names in .env are relative to it)."""
    _check_role(role)
    if role == "llm":
        return settings.path(settings.llm_model_dir)
    if role == "stt":
        return settings.path(settings.stt_model_local_dir)
    if role == "embedding":
        return settings.path(settings.embedding_model_dir)
    return settings.path(settings.models_dir) / "tts"


def env_file(settings) -> Path:
    return Path(settings.root_dir) / ".env"


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# ------------------------------------------------------------------------------------ list
def list_models(settings) -> dict[str, dict[str, Any]]:
    """Per role: the configured (active) model, the variable and where its value comes from, and
    the candidates found under the role's folder (each validated for the role)."""
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        var = ROLE_VARS[role]
        active = settings.model_path(role)
        folder = role_dir(settings, role)
        cands: list[Path] = []
        if folder.is_dir():
            if role == "tts":
                cands = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                               and any((p / n).exists() for n in TTS_REQUIRED_FILES))
            else:
                seen: set[Path] = set()
                for pattern in _FILE_GLOBS[role]:
                    seen.update(p for p in folder.glob(pattern) if p.is_file())
                cands = sorted(seen)
        if active.exists() and not any(_same(active, c) for c in cands):
            cands.insert(0, active)
        items = []
        for c in cands:
            d = describe(role, c)
            d["active"] = _same(c, active)
            d["name"] = c.name
            items.append(d)
        out[role] = {"variable": var, "value": str(getattr(settings, var.lower())),
                     "source": settings.sources.get(var.lower(), "default"), "active": str(active),
                     "active_exists": active.exists(), "folder": str(folder), "models": items,
                     "history": previous_values(settings, role)}
    return out


# ------------------------------------------------------------------------------------ .env editing
_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def _quote(value: str) -> str:
    if value == "" or re.search(r"[\s#\"'$`\\]", value):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def _history_line(var: str, value: str | None) -> str:
    return f"{MARK} {var} (unset)" if value is None else f"{MARK} {var}={_quote(value)}"


def _parse_history(line: str, var: str) -> tuple[bool, str | None]:
    """(is a history line of var, previous value or None for unset)."""
    s = line.strip()
    if s == f"{MARK} {var} (unset)":
        return True, None
    prefix = f"{MARK} {var}="
    if s.startswith(prefix):
        return True, _unquote(s[len(prefix):])
    return False, None


def check_env_value(var: str, value: str | None) -> None:
    """Refuse what one .env line cannot hold: a newline would let the next edit read the rest of the
    value as a live variable; NUL ends the value early."""
    if value is not None and any(c in value for c in ("\n", "\r", "\0")):
        raise ConfigError(f"{var}: the value contains a newline or NUL character; refusing to write it to .env")


def _continuations(lines: list[str]) -> set[int]:
    """Indexes of lines inside a multi-line quoted value (python-dotenv reads those): they are
    text of the value above, never assignments or history lines of their own."""
    out: set[int] = set()
    quote = ""
    for i, line in enumerate(lines):
        if quote:
            out.add(i)
            if _closes(line, quote):
                quote = ""
            continue
        m = _ASSIGN.match(line)
        if m:
            rest = line[m.end():].lstrip()
            if rest[:1] in ("'", '"') and not _closes(rest[1:], rest[0]):
                quote = rest[0]
    return out


def _closes(text: str, quote: str) -> bool:
    """Does `text` hold the closing `quote` (backslash escapes count inside double quotes)?"""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quote == '"':
            i += 2
            continue
        if c == quote:
            return True
        i += 1
    return False


def _span_end(lines: list[str], i: int) -> int:
    """One past the last line of the assignment at `i` (its continuation lines included)."""
    skip = _continuations(lines)
    j = i + 1
    while j in skip:
        j += 1
    return j


def read_env_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def _find_assign(lines: list[str], var: str) -> int | None:
    idx = None
    skip = _continuations(lines)
    for i, line in enumerate(lines):
        if i in skip:
            continue
        m = _ASSIGN.match(line)
        if m and m.group(1) == var:
            idx = i  # the last assignment wins (as in python-dotenv)
    return idx


def current_env_value(lines: list[str], var: str) -> str | None:
    i = _find_assign(lines, var)
    if i is None:
        return None
    return _unquote(lines[i].split("=", 1)[1])


def _history_block(lines: list[str], var: str) -> list[int]:
    """Indexes of var's history comments (oldest first), wherever they are in the file."""
    skip = _continuations(lines)
    return [i for i, line in enumerate(lines) if i not in skip and _parse_history(line, var)[0]]


def previous_values(settings, role: str) -> list[str | None]:
    """The values `rollback` would restore for a role, most recent first (None = unset in .env)."""
    var = ROLE_VARS[_check_role(role)]
    lines = read_env_lines(env_file(settings))
    return [_parse_history(lines[i], var)[1] for i in reversed(_history_block(lines, var))]


def atomic_write_text(path: Path, text: str) -> None:
    """Write text atomically, keeping the permissions of an existing file (an .env may hold an API
    key); a new file gets 0600."""
    path = Path(path)
    fsutil.atomic_write_text(path, text, mode=None if path.exists() else 0o600)


def _render(lines: list[str]) -> str:
    return "\n".join(lines) + ("\n" if lines else "")


def set_env_value(path: Path, var: str, value: str | None, *, record_previous: bool = True) -> str | None:
    """Set (or, with value None, remove) ``var`` in the .env file at ``path``, atomically.

    With record_previous, the value it had (or its absence) is pushed as a history comment right
    above the assignment. Returns the previous .env value (None when unset). Values with a
    newline or NUL are refused (ConfigError); the edit holds a lock against concurrent edits; a
    symlinked .env stays a symlink."""
    check_env_value(var, value)
    with fsutil.locked(path):
        return _set_env_value(Path(path), var, value, record_previous)


def _set_env_value(path: Path, var: str, value: str | None, record_previous: bool) -> str | None:
    lines = read_env_lines(path)
    previous = current_env_value(lines, var)
    hist = set(_history_block(lines, var))
    history = [lines[j] for j in sorted(hist)]
    keep = [line for j, line in enumerate(lines) if j not in hist]
    if record_previous:
        history = (history + [_history_line(var, previous)])[-HISTORY_KEEP:]
    i = _find_assign(keep, var)
    if i is not None:
        del keep[i:_span_end(keep, i)]
        pos = i
    else:
        if not keep:
            keep = ["# spark-voice settings: overrides .env.default (see there for every variable)."]
        pos = len(keep)
    keep[pos:pos] = history + ([f"{var}={_quote(value)}"] if value is not None else [])
    atomic_write_text(path, _render(keep))
    return previous


# ------------------------------------------------------------------------------------ use / rollback
@dataclass
class SwitchResult:
    role: str
    variable: str
    value: str | None          # what .env now says (None = removed: .env.default / profile applies)
    previous: str | None       # what .env said before
    path: str                  # the model the role now resolves to
    info: ModelInfo | None
    env_path: str
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "variable": self.variable, "value": self.value, "previous": self.previous,
                "path": self.path, "env": self.env_path, "info": self.info.as_dict() if self.info else None,
                "warnings": self.warnings}


def _shadow_warnings(settings, var: str) -> list[str]:
    if settings.sources.get(var.lower()) == "environment":
        return [f"{var} is also set in the process environment, which overrides .env: unset it "
                f"(or change it there) for this switch to take effect"]
    return []


def resolve_candidate(settings, role: str, file: str | Path) -> Path:
    """Find FILE: as given (absolute, or relative to the current folder), else in the role's
    folder, else relative to the settings root."""
    p = Path(os.path.expanduser(str(file)))
    if p.is_absolute():
        return p
    for cand in (Path.cwd() / p, role_dir(settings, role) / p, Path(settings.root_dir) / p):
        if cand.exists():
            return cand.resolve()
    return (role_dir(settings, role) / p).resolve()


def env_value_for(settings, role: str, path: Path) -> str:
    """How .env names the model: a bare name inside the role's folder (llm/stt/embedding), a
    ./relative path inside the settings root, else the absolute path."""
    path = path.resolve()
    folder = role_dir(settings, role).resolve()
    if role != "tts" and path.parent == folder:
        return path.name
    root = Path(settings.root_dir).resolve()
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return "./" + rel.as_posix()


def use_model(settings, role: str, file: str | Path) -> SwitchResult:
    """Validate FILE for ROLE and make it the active model in .env (atomically, keeping the previous
    value for `rollback`). Raises ModelNotFound / ConfigError and leaves .env untouched on failure."""
    _check_role(role)
    path = resolve_candidate(settings, role, file)
    if not path.exists():
        raise ModelNotFound(f"{file}: not found (looked in the current folder, {role_dir(settings, role)} "
                            f"and {settings.root_dir})")
    info = validate(role, path)
    var = ROLE_VARS[role]
    value = env_value_for(settings, role, path)
    envp = env_file(settings)
    previous = set_env_value(envp, var, value)
    return SwitchResult(role, var, value, previous, str(path), info, str(envp), _shadow_warnings(settings, var))


def _rollback_locked(envp: Path, role: str, var: str) -> tuple[str | None, str | None]:
    lines = read_env_lines(envp)
    hist = _history_block(lines, var)
    if not hist:
        raise ConfigError(f"nothing to roll back for {role}: {envp} has no '{MARK} {var}' line "
                          f"(`spark-voice models use {role} FILE` records one)")
    last = hist[-1]
    _, prev = _parse_history(lines[last], var)
    check_env_value(var, prev)
    current = current_env_value(lines, var)
    del lines[last]
    i = _find_assign(lines, var)
    if i is not None:
        del lines[i:_span_end(lines, i)]
    if prev is not None:
        lines.insert(len(lines) if i is None else i, f"{var}={_quote(prev)}")
    atomic_write_text(envp, _render(lines))
    return prev, current


def rollback(settings, role: str) -> SwitchResult:
    """Restore the value a role's variable had in .env before the last `use` (or remove it again)."""
    _check_role(role)
    var = ROLE_VARS[role]
    envp = env_file(settings)
    with fsutil.locked(envp):
        prev, current = _rollback_locked(envp, role, var)
    # the model the restored value resolves to
    if prev is not None:
        target = settings.model_copy(update={var.lower(): prev}).model_path(role)
    else:  # back to .env.default / the profile preset
        from ..config import Settings

        target = Settings.load(settings.root_dir, profile=settings.profile).model_path(role)
    try:
        info = validate(role, target)
    except (ConfigError, ModelNotFound):
        info = None
    return SwitchResult(role, var, prev, current, str(target), info, str(envp), _shadow_warnings(settings, var))


# ------------------------------------------------------------------------------------ verify
def configured_models(settings) -> list[tuple[str, str, Path]]:
    """(role, what, path) of every model file the configured providers need (fallbacks included;
    mock providers need none)."""
    out: list[tuple[str, str, Path]] = []

    def uses(stage: str, name: str) -> bool:
        prov, fb = settings.providers(stage)
        return name in prov or name in fb

    if uses("llm", "llama_cpp"):
        out.append(("llm", "llm", settings.model_path("llm")))
    if uses("stt", "whisper_cpp"):
        out.append(("stt", "stt", settings.model_path("stt")))
    if uses("embedding", "llama_cpp") and settings.rag_enabled != "off":
        out.append(("embedding", "embedding", settings.model_path("embedding")))
    if uses("tts", "fish"):
        out.append(("tts", "tts", settings.model_path("tts")))
    if uses("tts", "kokoro"):
        out.append(("tts", "kokoro", settings.path(settings.tts_kokoro_dir)))
    if uses("tts", "piper"):
        out.append(("tts", "piper", settings.path(settings.tts_piper_dir)))
    return out


def _fix_line(settings, role: str, what: str, path: Path, exists: bool) -> str:
    if what in ("kokoro", "piper"):
        return f"run `spark-voice models prepare --small --role tts` (fills {path})"
    if not exists:
        if settings.profile == "dev":
            return f"run `spark-voice models prepare --small --role {role}`"
        try:
            from .prepare import PROD_HINTS

            hint = PROD_HINTS.get(role, "the model")
        except ImportError:  # pragma: no cover - prepare is optional here
            hint = "the model"
        kind = "folder" if role == "tts" else "file"
        return (f"put the model at {path} (expected: {hint}), or point {ROLE_VARS[role]} at another "
                f"{kind} with `spark-voice models use {role} PATH`")
    prev = previous_values(settings, role)
    extra = f", or `spark-voice models rollback {role}`" if prev else ""
    return f"`spark-voice models use {role} FILE` with a valid {role} model{extra}"


def verify_models(settings) -> list[dict[str, Any]]:
    """One report per configured model: role, what, path, ok, error, info (size, quantisation ...),
    warnings and, when not ok, a concrete fix."""
    from .inspect import inspect_onnx_voices

    reports = []
    for role, what, path in configured_models(settings):
        if what in ("kokoro", "piper"):
            rep: dict[str, Any] = {"role": role, "path": str(path), "exists": path.exists(), "ok": False,
                                   "error": None, "info": None}
            try:
                rep["info"] = inspect_onnx_voices(path).as_dict()
                rep["ok"] = True
            except ConfigError as exc:
                rep["error"] = str(exc)
        else:
            rep = describe(role, path)
        rep["what"] = what
        rep["warnings"] = []
        if role == "stt" and rep["ok"]:
            multi = rep["info"]["details"].get("multilingual")
            lang = settings.stt_language
            if not multi and lang not in ("en", "auto"):
                rep["warnings"].append(f"STT_LANGUAGE={lang} but {path.name} is English-only: use a "
                                       f"multilingual model such as ggml-base.bin")
        if not rep["ok"]:
            rep["fix"] = _fix_line(settings, role, what, path, rep["exists"])
        reports.append(rep)
    return reports
