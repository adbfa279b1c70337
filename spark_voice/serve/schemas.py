"""Pydantic models of the request bodies, carrying their limits; validation errors become OpenAI's
400 error object (see :func:`parse_body`)."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from ..errors import InputTooLarge
from .limits import check_json_depth
from .openai_compat import SPEECH_FORMATS, ApiError, bad_request

MAX_SPEECH_CHARS = 4096
DEFAULT_MAX_JSON_DEPTH = 32  # = SERVE_MAX_JSON_DEPTH's default; routes pass the setting
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
# Custom error types raised by validators below that are also the OpenAI error `code`.
_OWN_CODES = {"unsupported_format", "invalid_value"}

M = TypeVar("M", bound=BaseModel)
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use


def _invalid(message: str, code: str = "invalid_value") -> PydanticCustomError:
    return PydanticCustomError(code, message)


# ------------------------------------------------------------------------------ speech
class SpeechRequest(_Body):
    model: str | None = None
    input: Annotated[str, Field(max_length=MAX_SPEECH_CHARS)]
    voice: str | dict[str, Any] | None = None
    response_format: str | None = None
    stream_format: Literal["audio"] | None = None
    sample_rate: Annotated[StrictInt, Field(ge=8000, le=192000)] | None = None
    language: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, v: str) -> str:
        if not v.strip():
            raise _invalid("`input` must be a non-empty string")
        return v

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and v not in SPEECH_FORMATS:
            raise _invalid(f"unsupported response_format {v!r}; accepted values: {', '.join(SPEECH_FORMATS)}",
                           "unsupported_format")
        return v

    @field_validator("voice")
    @classmethod
    def _voice(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(v, dict) and not isinstance(v.get("id"), str):
            raise _invalid('`voice` must be a string or {"id": ...}')
        return v

    @property
    def voice_name(self) -> str | None:
        return str(self.voice["id"]) if isinstance(self.voice, dict) else self.voice


# ------------------------------------------------------------------------------ chat
class ContentPart(_Body):
    type: str
    text: str = ""


_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


class ToolCallFunction(_Body):
    name: str
    arguments: str | dict[str, Any] = ""

    @property
    def arguments_text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments, ensure_ascii=False)


class ToolCallIn(_Body):
    """A call in an assistant message of the history."""

    id: str = ""
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionSpec(_Body):
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOOL_NAME.match(v):
            raise _invalid(f"function name {v!r} must be 1-64 letters, digits, _ or -")
        return v

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "object") != "object":
            raise _invalid("function parameters must be a JSON schema of type object")
        return v


class ToolSpec(_Body):
    type: Literal["function"]
    function: FunctionSpec

    def spec(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.function.name, "description": self.function.description,
                              "parameters": {"type": "object", "properties": {}, **(self.function.parameters or {})}}
        if self.function.strict:
            fn["strict"] = True
        return {"type": "function", "function": fn}


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in CHAT_ROLES:
            raise _invalid(f"role {v!r} is not one of {', '.join(CHAT_ROLES)}")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        for part in v if isinstance(v, list) else ():
            if part.type not in ("text", "input_text"):
                raise _invalid(f"part type {part.type!r} is not supported (text only)")
        return v

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def as_prompt(self) -> dict[str, Any]:
        """The message as the engines take it ({"role", "content"}; developer -> system; an
        assistant's tool calls and a tool result's call id kept)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text}
        if self.role == "assistant" and self.tool_calls:
            out["tool_calls"] = [{"id": c.id or f"call_{i}", "type": "function",
                                  "function": {"name": c.function.name, "arguments": c.function.arguments_text}}
                                 for i, c in enumerate(self.tool_calls)]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id or ""
        return out


class StreamOptions(_Body):
    include_usage: StrictBool = False


class ChatRequest(_Body):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    n: Literal[1] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    stop: str | list[str] | None = None
    rag: StrictBool | None = None

    @field_validator("messages")
    @classmethod
    def _has_user(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in v):
            raise _invalid("`messages` needs at least one user message")
        calls: set[str] = set()
        for m in v:
            calls.update(c.id for c in m.tool_calls or () if c.id)
            if m.role == "tool" and (not m.tool_call_id or m.tool_call_id not in calls):
                raise _invalid(f"a tool message's tool_call_id ({m.tool_call_id!r}) must answer an earlier "
                               "assistant tool call")
        return v

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, v: list[ToolSpec] | None) -> list[ToolSpec] | None:
        names = [t.function.name for t in v or ()]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise _invalid(f"two tools are named {dup!r}")
        return v

    def tool_specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools or ()]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def prompt(self) -> list[dict[str, Any]]:
        return [m.as_prompt() for m in self.messages]


# ------------------------------------------------------------------------------ embeddings
class EmbeddingsRequest(_Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    input_type: Literal["document", "query"] = "document"
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> Any:
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise _invalid("`input` must be a non-empty string or a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise _invalid("token-id input is not supported; send strings")
        if any(not t.strip() for t in texts):
            raise _invalid("`input` must not contain empty strings")
        return v

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else [str(t) for t in self.input]


# ------------------------------------------------------------------------------ parsing
def _param(loc: tuple[int | str, ...]) -> str:
    """A field path in OpenAI's style (``messages[0].role``); union branch tags are left out."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _FIELD_RE.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def validation_error(exc: ValidationError) -> ApiError:
    """The first error of a ValidationError as OpenAI's 400 object (no Python exception text)."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    # of a union's branches, report the one a validator of ours raised, else the first
    err = next((e for e in errors if e["type"] in _OWN_CODES), errors[0])
    param = _param(tuple(err["loc"])) or None
    code = err["type"] if err["type"] in _OWN_CODES else "invalid_value"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    return bad_request(f"`{param}`: {msg}" if param and not msg.startswith("`") else msg, param=param, code=code)


def parse_json(raw: bytes | str, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> object:
    """JSON text -> object, or a 400 ApiError (invalid_json) naming the reason: syntax, or nesting
    deeper than `max_depth` (measured before json.loads, see limits.json_depth)."""
    try:
        check_json_depth(raw, max_depth)
    except InputTooLarge as exc:
        raise bad_request(f"the request body is not accepted: {exc}", code="invalid_json") from None
    try:
        return json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "too deeply nested"
        raise bad_request(f"the request body is not valid JSON: {reason}", code="invalid_json") from None


def parse_body(raw: bytes, model: type[M], max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> M:
    """JSON bytes -> a validated request model, or an ApiError 400 in OpenAI's shape."""
    body = parse_json(raw, max_depth)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
