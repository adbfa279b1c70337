"""How tool calls and results are written for each kind of chat template (no engine needed).

- gpt-oss (harmony): :func:`harmony_messages` -- one call per assistant message, each followed by
  its result (the template names a result after the latest call);
- a template with its own tool format (``tools`` in the Jinja source): :func:`template_messages`;
- any other template: :func:`prompted_messages` describes the functions in the system message and
  writes calls / results as ``<tool_call>`` / ``<tool_response>`` text; :class:`ToolText` finds
  such calls in a model's streamed output.

Also the text helpers of the llama.cpp backend: message content as text, stop strings held back
across token boundaries.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from ..tools import ToolCall, parse_tool_json


def _content(content: Any) -> str:
    """Message content as text: None -> "", OpenAI content parts -> their text joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


class StopStrings:
    """Hold back text that may be the start of a stop string; cut at the first full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.buf = ""
        self.hit = False
        self.after = ""  # text after the stop string

    def push(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.buf += text
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            stop = next(s for s in self.stops if self.buf.find(s) == cut)
            out, self.after, self.buf, self.hit = self.buf[:cut], self.buf[cut + len(stop):], "", True
            return out
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:n]):
                    keep = n
                    break
        out = self.buf[:len(self.buf) - keep]
        self.buf = self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def call_schema(name: str, params: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def _arguments(args: Any) -> Any:
    """Tool-call arguments as a JSON object when they parse (templates render them with tojson)."""
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except ValueError:
            return args
    return args if args is not None else {}


def _calls(m: dict) -> list[dict]:
    out = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function") or c
        out.append({"id": c.get("id", ""), "name": str(fn.get("name", "")),
                    "arguments": _arguments(fn.get("arguments"))})
    return out


def harmony_messages(messages: Sequence[dict]) -> list[dict]:
    """OpenAI messages for the gpt-oss template: one tool call per assistant message, each
    followed by its result (the template names a result after the latest call)."""
    msgs = list(messages)
    out: list[dict] = []
    i = 0
    while i < len(msgs):
        m = msgs[i]
        base = {k: v for k, v in m.items() if k not in ("tool_calls", "content")}
        if m.get("role") == "assistant" and m.get("tool_calls"):
            j = i + 1
            results = []
            while j < len(msgs) and msgs[j].get("role") == "tool":
                results.append(msgs[j])
                j += 1
            by_id = {r.get("tool_call_id"): r for r in results if r.get("tool_call_id")}
            left = list(results)
            for k, c in enumerate(_calls(m)):
                out.append({**base, "content": _content(m.get("content")) if k == 0 else "",
                            "tool_calls": [{"function": {"name": c["name"], "arguments": c["arguments"]}}]})
                r = by_id.get(c["id"]) or (left[0] if left else None)
                if r is not None and r in left:
                    left.remove(r)
                    out.append({"role": "tool", "content": _content(r.get("content"))})
            out += [{"role": "tool", "content": _content(r.get("content"))} for r in left]
            i = j
            continue
        out.append({**base, "content": _content(m.get("content"))})
        i += 1
    return out


def template_messages(messages: Sequence[dict]) -> list[dict]:
    """OpenAI messages for a chat template with its own tool format (arguments as objects)."""
    out = []
    for m in messages:
        d = {k: v for k, v in m.items() if k != "tool_calls"}
        d["content"] = _content(m.get("content"))
        if m.get("tool_calls"):
            d["tool_calls"] = [{"id": c["id"], "type": "function",
                                "function": {"name": c["name"], "arguments": c["arguments"]}} for c in _calls(m)]
        out.append(d)
    return out


TOOL_PROMPT = ("You can call these functions (JSON schemas):\n{specs}\n"
               "To call one, answer with only <tool_call>{{\"name\": \"NAME\", \"arguments\": {{...}}}}</tool_call>. "
               "A function's result comes back in <tool_response>; then answer the user.")


def prompted_messages(messages: Sequence[dict], tools: Sequence[dict]) -> list[dict]:
    """OpenAI messages for a template without a tool format: the functions are described in the
    system message, calls and results written as <tool_call>/<tool_response> text."""
    out: list[dict] = []
    for m in messages:
        role = m.get("role")
        content = _content(m.get("content"))
        if role == "assistant" and m.get("tool_calls"):
            calls = "".join("<tool_call>" + json.dumps({"name": c["name"], "arguments": c["arguments"]},
                                                       ensure_ascii=False) + "</tool_call>" for c in _calls(m))
            out.append({"role": "assistant", "content": (content + "\n" if content else "") + calls})
        elif role == "tool":
            out.append({"role": "tool", "content": f"<tool_response>{content}</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        specs = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        text = TOOL_PROMPT.format(specs=specs)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


class ToolText:
    """Finds tool calls a non-harmony model writes as text: ``<tool_call>{...}</tool_call>``
    (Hermes/Qwen style) or an answer that is only a JSON call object (Llama 3.1 style). Text
    before a call is passed through; the call text is never."""

    OPEN = "<tool_call>"

    def __init__(self) -> None:
        self.hold = StopStrings([self.OPEN])
        self.start = True
        self.json_mode = False
        self.buf = ""
        self.calls_text: str | None = None

    def push(self, text: str) -> str:
        if self.calls_text is not None:
            self.calls_text += text
            return ""
        if self.json_mode:
            self.buf += text
            return ""
        if self.start:
            self.buf += text
            s = self.buf.lstrip()
            if not s:
                return ""
            self.start = False
            if s[0] in "{[":
                self.json_mode = True
                return ""
            text, self.buf = self.buf, ""
        out = self.hold.push(text)
        if self.hold.hit:
            self.calls_text = self.hold.after
        return out

    def finish(self, pending: str = "") -> tuple[str, list[ToolCall]]:
        text = pending
        if self.calls_text is not None:
            blocks = re.findall(r"(.*?)(?:</tool_call>|$)", self.calls_text, re.S)
            calls = [c for b in blocks if b.strip() for c in parse_tool_json(b.replace(self.OPEN, "").strip())]
            return text, calls
        if self.json_mode:
            calls = parse_tool_json(self.buf.strip())
            return (text, calls) if calls else (self.buf + text, [])
        if not self.hold.hit:
            text += self.hold.flush()
        return text, []
