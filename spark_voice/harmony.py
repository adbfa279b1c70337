"""OpenAI harmony (gpt-oss) output: detection and an incremental channel parser.

gpt-oss writes every message as ``<|start|>{role}<|channel|>{channel}<|message|>{text}<|end|>``;
the last message of a turn ends with ``<|return|>`` (or ``<|call|>`` for a tool call) instead of
``<|end|>``. A typical voice answer, after the prompt's trailing ``<|start|>assistant``::

    <|channel|>analysis<|message|>User greets. Reply briefly.<|end|>
    <|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|return|>

:class:`HarmonyParser` is fed the generated text as it arrives (pieces may split anywhere, even
inside a marker) and returns ``(channel, text)`` deltas for the ``analysis``, ``commentary`` and
``final`` channels. ``<|end|>`` only ends a message; ``<|return|>``, ``<|call|>`` and
``<|endoftext|>`` end the generation (:attr:`HarmonyParser.done`). Header text (role, recipient
``to=...``, ``<|constrain|>json``) is never emitted. An unknown channel name is reported as
``analysis`` so that it is never spoken.
"""

from __future__ import annotations

import re
from typing import Mapping

CHANNELS = ("analysis", "commentary", "final")
STOP_MARKERS = ("<|return|>", "<|call|>", "<|endoftext|>")

# a complete marker, and a possibly incomplete one at the end of the buffer
_MARKER = re.compile(r"<\|([A-Za-z0-9_]{1,40})\|>")
_PARTIAL = re.compile(r"<(?:\|[A-Za-z0-9_]{0,40}(?:\|)?)?\Z")


def is_harmony_metadata(metadata: Mapping[str, str]) -> bool:
    """True for a gpt-oss GGUF: ``general.architecture == "gpt-oss"`` or a harmony chat template."""
    if str(metadata.get("general.architecture", "")).lower() == "gpt-oss":
        return True
    return "<|channel|>" in str(metadata.get("tokenizer.chat_template", ""))


class HarmonyParser:
    """Incremental harmony parser. ``feed(text)`` -> list of ``(channel, text)`` deltas.

    ``in_header=True`` (default): generation starts right after the prompt's
    ``<|start|>assistant``, i.e. inside a message header. A full transcript starting with
    ``<|start|>`` parses the same way.
    """

    def __init__(self, *, in_header: bool = True, role: str = "assistant") -> None:
        self.state = "header" if in_header else "idle"
        self.role = role if in_header else ""
        self.channel = ""           # channel of the current message ("" until known)
        self.recipient = ""         # "to=..." of the current message, if any
        self.done = False           # a stop marker was seen
        self.stop_marker = ""       # which one
        self._buf = ""              # text not yet processed (a possible partial marker)
        self._head = ""             # header / channel text being collected
        self.messages = 0           # completed messages

    # ------------------------------------------------------------------ public
    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.done or not text:
            return []
        self._buf += text
        out: list[tuple[str, str]] = []
        buf = self._buf
        pos = 0
        while pos < len(buf):
            i = buf.find("<", pos)
            if i < 0:
                self._text(buf[pos:], out)
                pos = len(buf)
                break
            if i > pos:
                self._text(buf[pos:i], out)
                pos = i
            m = _MARKER.match(buf, i)
            if m is not None:
                self._marker(m.group(0), out)
                pos = m.end()
                if self.done:
                    pos = len(buf)
                    break
                continue
            if _PARTIAL.match(buf, i):  # could still become a marker: wait for more text
                break
            self._text("<", out)        # a literal "<"
            pos = i + 1
        self._buf = buf[pos:]
        return _merge(out)

    def finish(self) -> list[tuple[str, str]]:
        """End of generation: release held-back text of an unfinished message."""
        out: list[tuple[str, str]] = []
        if self._buf and not self.done:
            self._text(self._buf, out)
        self._buf = ""
        if self.state == "message":
            self.messages += 1
        self.state = "idle"
        return _merge(out)

    # ------------------------------------------------------------------ internals
    def _text(self, text: str, out: list[tuple[str, str]]) -> None:
        if not text:
            return
        if self.state == "message":
            out.append((self.channel or "final", text))
        elif self.state in ("header", "channel"):
            self._head += text
        # idle / constrain: ignored

    def _open_message(self) -> None:
        if self.state == "header":
            self._parse_header(self._head)
        elif self.state == "channel":
            self._parse_channel(self._head)
        if not self.channel:
            self.channel = "final"
        self._head = ""
        self.state = "message"

    def _parse_header(self, head: str) -> None:
        role = ""
        for w in head.split():
            if w.startswith("to="):
                self.recipient = w[3:]
            elif not role:
                role = w
        if role:
            self.role = role

    def _parse_channel(self, text: str) -> None:
        words = text.split()
        name = ""
        for w in words:
            if w.startswith("to="):
                self.recipient = w[3:]
            elif not name:
                name = w
        self.channel = name if name in CHANNELS else ("analysis" if name else "")

    def _marker(self, marker: str, out: list[tuple[str, str]]) -> None:
        if marker in STOP_MARKERS:
            if self.state == "message":
                self.messages += 1
            self.done, self.stop_marker, self.state = True, marker, "idle"
            return
        if marker == "<|start|>":
            if self.state == "message":
                self.messages += 1
            self.state, self._head, self.role, self.channel, self.recipient = "header", "", "", "", ""
        elif marker == "<|channel|>":
            if self.state == "header":
                self._parse_header(self._head)
            elif self.state == "message":  # a new header without <|end|><|start|>
                self.messages += 1
                self.recipient = ""
            self.state, self._head, self.channel = "channel", "", ""
        elif marker == "<|constrain|>":
            if self.state == "header":
                self._parse_header(self._head)
            elif self.state == "channel":
                self._parse_channel(self._head)
            if self.state in ("header", "channel"):
                self.state, self._head = "constrain", ""
        elif marker == "<|message|>":
            if self.state in ("header", "channel", "constrain"):
                self._open_message()
            elif self.state == "idle":  # <|message|> without a header: be lenient
                self.channel = self.channel or "final"
                self.state = "message"
        elif marker == "<|end|>":
            if self.state == "message":
                self.messages += 1
            self.state, self._head = "idle", ""
        # any other special token (<|startoftext|>, <|reserved_...|>) is dropped


def _merge(parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for ch, t in parts:
        if not t:
            continue
        if out and out[-1][0] == ch:
            out[-1] = (ch, out[-1][1] + t)
        else:
            out.append((ch, t))
    return out


def parse(text: str, *, in_header: bool = True) -> list[tuple[str, str]]:
    """Parse a whole harmony string (convenience for tests and logs)."""
    p = HarmonyParser(in_header=in_header)
    return _merge(p.feed(text) + p.finish())
