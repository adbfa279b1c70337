"""Tools the assistant can call: plain Python functions (sync or async) with a JSON schema.

    from spark_voice.tools import tool

    @tool
    def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict:
        '''Current weather of a city.

        Args:
            city: City name, e.g. Tokyo.
            unit: Temperature unit.
        '''
        ...

The schema of the arguments comes from the type hints (through pydantic), the descriptions from
the docstring (its first paragraph for the function; ``Args:`` (Google) or ``:param x:``
(reST) lines for the parameters). :class:`ToolRegistry` runs calls with validation, a timeout
and cancellation; errors come back as results (``{"error": ...}``) for the model to read, never
as exceptions. Built-in tools (``current_time``, ``search_documents``) are opt-in by settings
(``TOOLS_BUILTIN``).

Length: definition (schema from hints and docstrings), execution, tool_choice and the built-ins
are one small public API that the pipeline, the LLM backend and the server share.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .errors import ToolError

__all__ = ["Tool", "ToolCall", "ToolError", "ToolRegistry", "ToolResult", "tool", "builtin_tools"]

log = logging.getLogger("spark_voice.tools")

MAX_RESULT_CHARS = 8000
BUILTIN_TOOLS = ("current_time", "search_documents")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


ToolChoice = Union[str, dict[str, Any], None]  # "auto" | "none" | "required" | {"type": "function", ...}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------- docstrings
def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google- or reST-style docstring."""
    doc = inspect.cleandoc(doc or "")
    if not doc:
        return "", {}
    params: dict[str, str] = {}
    lines = doc.splitlines()
    desc_lines: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        desc_lines.append(lines[i].strip())
        i += 1
    for m in re.finditer(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.+(?:\n(?!\s*:)\s+.+)*)", doc, re.M):
        params[m.group(1)] = " ".join(m.group(2).split())
    in_args, cur, indent = False, None, None
    for line in lines:
        s = line.strip()
        if re.match(r"^(Args|Arguments|Parameters)\s*:\s*$", s):
            in_args, cur, indent = True, None, None
            continue
        if not in_args:
            continue
        if not s:
            cur = None
            continue
        ind = len(line) - len(line.lstrip())
        if re.match(r"^[A-Z][A-Za-z ]*:\s*$", s) and (indent is None or ind < indent):
            in_args = False  # the next section (Returns:, Raises:)
            continue
        arg = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", s)
        if arg and (indent is None or ind <= indent):
            indent = ind
            cur = arg.group(1)
            params[cur] = arg.group(2).strip()
        elif cur is not None:
            params[cur] = (params[cur] + " " + s).strip()
    return " ".join(desc_lines), params


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


# --------------------------------------------------------------------------- Tool
@dataclass
class Tool:
    """A callable tool: name, description, JSON schema of the arguments, the function."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    timeout: float | None = None      # seconds; None: the registry's default
    strict: bool = False
    model: Any = None                 # pydantic model validating the arguments
    is_async: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # still usable as the plain function
        return self.fn(*args, **kwargs)

    def spec(self) -> dict[str, Any]:
        """OpenAI function-tool spec."""
        fn: dict[str, Any] = {"name": self.name, "description": self.description, "parameters": self.parameters}
        if self.strict:
            fn["strict"] = True
        return {"type": "function", "function": fn}

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                      timeout: float | None = None, strict: bool = False) -> "Tool":
        from pydantic import ConfigDict, Field, create_model

        name = name or fn.__name__
        if not _NAME_RE.match(name):
            raise ToolError(f"tool name {name!r} must be 1-64 letters, digits, _ or -")
        desc, pdesc = _doc_parts(fn.__doc__ or "")
        try:
            hints = inspect.get_annotations(fn, eval_str=True)
        except Exception as exc:
            raise ToolError(f"tool {name}: type hints could not be resolved: {exc}") from exc
        fields: dict[str, Any] = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ToolError(f"tool {name}: *args/**kwargs cannot be described to a model")
            if p.kind is p.POSITIONAL_ONLY:
                raise ToolError(f"tool {name}: positional-only parameter {p.name!r}")
            ann = hints.get(p.name, Any)
            default = ... if p.default is p.empty else p.default
            fields[p.name] = (ann, Field(default, description=pdesc.get(p.name)))
        config = ConfigDict(extra="forbid" if strict else "ignore", arbitrary_types_allowed=False)
        try:
            model = create_model(f"{name}_args", __config__=config, **fields)
            schema = _strip_titles(model.model_json_schema())
        except Exception as exc:
            raise ToolError(f"tool {name}: no JSON schema for its parameters: {exc}") from exc
        schema.setdefault("properties", {})
        if strict:
            schema["additionalProperties"] = False
        return cls(name, description if description is not None else desc, schema, fn,
                   timeout=timeout, strict=strict, model=model,
                   is_async=inspect.iscoroutinefunction(fn))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float | None = None, strict: bool = False) -> Any:
    """Decorator: ``@tool`` or ``@tool(name=..., timeout=...)`` turns a function into a :class:`Tool`."""
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout=timeout, strict=strict)
    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Any) -> Tool:
    if isinstance(obj, Tool):
        return obj
    if callable(obj):
        return Tool.from_function(obj)
    raise ToolError(f"not a tool: {obj!r} (pass a function or a Tool)")


# --------------------------------------------------------------------------- calls and results
@dataclass
class ToolCall:
    """A call the model made: ``arguments`` is the JSON text the model wrote."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolResult:
    call_id: str
    name: str
    content: str                     # what the model reads (JSON or text)
    ok: bool = True
    error: str = ""
    ms: float = 0.0
    timed_out: bool = False
    cancelled: bool = False


def _content(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " …(truncated)"
    return text


def _error_content(msg: str) -> str:
    return json.dumps({"error": msg}, ensure_ascii=False)


class ToolRegistry:
    """Named tools and their execution (timeout per call, cancellation, errors as results)."""

    def __init__(self, tools: Iterable[Any] = (), *, timeout: float = 10.0, max_calls: int = 4) -> None:
        self.tools: dict[str, Tool] = {}
        self.timeout = float(timeout)
        self.max_calls = int(max_calls)
        for t in tools:
            self.add(t)

    def add(self, obj: Any) -> Tool:
        t = as_tool(obj)
        self.tools[t.name] = t
        return t

    def __call__(self, fn: Callable[..., Any] | None = None, **kw: Any) -> Any:
        """Decorator registering a function: ``@registry`` or ``@registry(timeout=2)``."""
        def wrap(f: Callable[..., Any]) -> Tool:
            return self.add(Tool.from_function(f, **kw))
        return wrap(fn) if fn is not None else wrap

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def __bool__(self) -> bool:
        return bool(self.tools)

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools.values()]

    def execute(self, call: ToolCall, *, cancel: threading.Event | None = None,
                timeout: float | None = None) -> ToolResult:
        """Run one call; never raises for the tool's own failures (they become the result)."""
        t0 = time.perf_counter()

        def done(content: str, **kw: Any) -> ToolResult:
            return ToolResult(call.id, call.name, content, ms=round((time.perf_counter() - t0) * 1000, 3), **kw)

        t = self.tools.get(call.name)
        if t is None:
            msg = f"unknown tool {call.name!r}; available: {', '.join(self.tools) or 'none'}"
            return done(_error_content(msg), ok=False, error=msg)
        try:
            args = json.loads(call.arguments) if call.arguments.strip() else {}
        except ValueError as exc:
            msg = f"arguments are not valid JSON: {exc}"
            return done(_error_content(msg), ok=False, error=msg)
        if not isinstance(args, dict):
            msg = "arguments must be a JSON object"
            return done(_error_content(msg), ok=False, error=msg)
        try:
            parsed = t.model.model_validate(args) if t.model is not None else None
            kwargs = {k: getattr(parsed, k) for k in type(parsed).model_fields} if parsed is not None else args
        except Exception as exc:  # pydantic.ValidationError
            msg = f"invalid arguments for {t.name}: {exc}"
            return done(_error_content(msg), ok=False, error=msg)
        limit = t.timeout if t.timeout is not None else (self.timeout if timeout is None else timeout)
        state: dict[str, Any] = {}
        finished = threading.Event()

        def run() -> None:
            try:
                if t.is_async:
                    loop = asyncio.new_event_loop()
                    try:
                        task = loop.create_task(t.fn(**kwargs))
                        state["loop"], state["task"] = loop, task
                        state["value"] = loop.run_until_complete(task)
                    finally:
                        state.pop("loop", None)
                        loop.close()
                else:
                    state["value"] = t.fn(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the model
                state["exc"] = exc
            finally:
                finished.set()

        worker = threading.Thread(target=run, name=f"tool-{t.name}", daemon=True)
        worker.start()
        deadline = time.perf_counter() + limit if limit and limit > 0 else None
        stop = ""
        while not finished.wait(0.02):
            if cancel is not None and cancel.is_set():
                stop = "cancelled"
            elif deadline is not None and time.perf_counter() >= deadline:
                stop = "timeout"
            if stop:
                loop, task = state.get("loop"), state.get("task")
                if loop is not None and task is not None:  # async: really cancel it
                    try:
                        loop.call_soon_threadsafe(task.cancel)
                    except RuntimeError:
                        pass
                # a sync function cannot be interrupted: it finishes in its (daemon) thread
                break
        if stop == "cancelled":
            return done(_error_content("cancelled"), ok=False, error="cancelled", cancelled=True)
        if stop == "timeout":
            msg = f"{t.name} timed out after {limit:g} s"
            log.warning("tool timed out", extra={"tool": t.name, "timeout_s": limit})
            return done(_error_content(msg), ok=False, error=msg, timed_out=True)
        if "exc" in state:
            err = state["exc"]
            msg = f"{type(err).__name__}: {err}"
            log.warning("tool failed", extra={"tool": t.name, "error": msg})
            return done(_error_content(msg), ok=False, error=msg)
        return done(_content(state.get("value")))


# --------------------------------------------------------------------------- tool_choice / text formats
def normalize_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """OpenAI ``tool_choice`` -> (mode, name): mode auto | none | required | function."""
    names = [str((t.get("function") or {}).get("name", "")) for t in tools]
    if choice is None:
        return ("auto" if tools else "none"), ""
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ToolError(f"tool_choice must be auto, none, required or a function, not {choice!r}")
        if choice != "none" and not tools:
            raise ToolError(f"tool_choice {choice!r} needs tools")
        return choice, ""
    if isinstance(choice, Mapping):
        fn = choice.get("function") if isinstance(choice.get("function"), Mapping) else None
        name = str((fn or {}).get("name") or choice.get("name") or "")
        if not name:
            raise ToolError("tool_choice: a named choice needs {'type': 'function', 'function': {'name': ...}}")
        if name not in names:
            raise ToolError(f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})")
        return "function", name
    raise ToolError("tool_choice must be a string or an object")


def tool_by_name(tools: Sequence[Mapping[str, Any]], name: str) -> dict[str, Any]:
    for t in tools:
        fn = t.get("function") or {}
        if fn.get("name") == name:
            return dict(fn)
    raise ToolError(f"no tool named {name!r}")


def parameters_schema(fn: Mapping[str, Any]) -> dict[str, Any]:
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return dict(params)


def parse_tool_json(text: str) -> list[ToolCall]:
    """Tool calls written as JSON: ``{"name": ..., "arguments"|"parameters": {...}}`` or a list."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    out = []
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            return []
        args = it.get("arguments", it.get("parameters", {}))
        if isinstance(args, str):
            args_text = args
        else:
            args_text = json.dumps(args, ensure_ascii=False)
        out.append(ToolCall(it["name"], args_text))
    return out


# --------------------------------------------------------------------------- built-ins
def current_time_tool(default_timezone: str = "Asia/Tokyo") -> Tool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    def current_time(timezone: str | None = None) -> dict:
        """The current date and time.

        Args:
            timezone: IANA time zone name such as Asia/Tokyo or Europe/Paris; the assistant's own zone when omitted.
        """
        from datetime import datetime

        name = timezone or default_timezone
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        now = datetime.now(zone)
        return {"datetime": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A"), "timezone": name}

    return Tool.from_function(current_time)


def search_documents_tool(retriever: Any, top_k: int = 3) -> Tool:
    def search_documents(query: str) -> list:
        """Search the user's documents (the local knowledge base) and return the best matching passages.

        Args:
            query: What to look for, in the words of the documents.
        """
        hits = retriever.search(query, top_k)
        return [{"source": h.source, "score": round(float(h.score), 3), "text": h.text.strip()} for h in hits]

    return Tool.from_function(search_documents)


def check_builtin_setting(field: str, value: str) -> str:
    """Validate TOOLS_BUILTIN (known names, comma separated) or TOOLS_TIMEZONE (an IANA zone)."""
    if field == "tools_timezone":
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value.strip())
        except Exception:
            raise ValueError("expected an IANA time zone name such as Asia/Tokyo or UTC") from None
        return value.strip()
    names = [w.strip() for w in value.split(",") if w.strip()]
    bad = [n for n in names if n not in BUILTIN_TOOLS]
    if bad:
        raise ValueError(f"unknown built-in tool {bad[0]!r}; accepted: {', '.join(BUILTIN_TOOLS)} (comma separated)")
    return ",".join(names)


def builtin_tools(settings: Any, retriever: Any = None) -> list[Tool]:
    """The built-in tools named in ``TOOLS_BUILTIN`` (comma separated)."""
    wanted = [w.strip() for w in str(getattr(settings, "tools_builtin", "") or "").split(",") if w.strip()]
    out: list[Tool] = []
    for name in wanted:
        if name == "current_time":
            out.append(current_time_tool(getattr(settings, "tools_timezone", "Asia/Tokyo")))
        elif name == "search_documents":
            if retriever is None:
                log.warning("tools: search_documents needs a RAG index; not offered")
                continue
            out.append(search_documents_tool(retriever, getattr(settings, "rag_top_k", 3)))
        else:
            raise ToolError(f"TOOLS_BUILTIN: unknown tool {name!r} (known: {', '.join(BUILTIN_TOOLS)})")
    return out
