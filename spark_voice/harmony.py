"""OpenAI harmony (gpt-oss) output: detection and an incremental parser on token ids.

gpt-oss writes every message as ``<|start|>{role}<|channel|>{channel}<|message|>{text}<|end|>``;
the last message of a turn ends with ``<|return|>`` (or ``<|call|>`` for a tool call) instead of
``<|end|>``. A tool call carries a recipient and usually a content type::

    <|channel|>analysis<|message|>Need the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"X"}<|call|>

:class:`HarmonyParser` is fed the generated tokens one at a time as ``(token_id, piece_bytes)``.
The markers are recognised by *token id* (the special tokens of the GGUF vocabulary), never in
the detokenised text: a literal ``"<|end|>"`` written by the model as ordinary tokens is text.
Each message gets a role, channel, recipient and content type; deltas carry them.

Rules (as the gpt-oss chat template implies):

- a message with a recipient (``to=functions.x``) is a tool call: never final, whatever its
  channel (no channel at all: ``commentary``);
- a header whose role is not ``assistant`` (the model going on into a ``<|start|>user`` turn)
  ends the answer (:attr:`HarmonyParser.stop` ``"role"``);
- output with no header at all (plain text right after the prompt's ``<|start|>assistant``) is
  the final answer, with a warning; a message without a channel (and no recipient) too;
- an unknown channel name is reported as ``analysis`` so that it is never spoken;
- ``<|end|>`` ends a message only; ``<|return|>``, ``<|call|>`` and ``<|endoftext|>`` end the
  generation (:attr:`HarmonyParser.done`); ``<|call|>`` ends it as a tool call.
"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

log = logging.getLogger("spark_voice.harmony")

CHANNELS = ("analysis", "commentary", "final")
MARKERS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>",
           "<|endoftext|>", "<|startoftext|>", "<|endofprompt|>")
STOP_MARKERS = ("<|return|>", "<|call|>", "<|endoftext|>")
# o200k_harmony ids of the real gpt-oss vocabulary (a GGUF's own ids are looked up at load time)
O200K_HARMONY_IDS: dict[int, str] = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
    200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>",
    200012: "<|call|>", 200018: "<|endofprompt|>",
}
MAX_HEADER_CHARS = 256

_MARKER_RE = re.compile("(" + "|".join(re.escape(m) for m in MARKERS) + ")")


def is_harmony_metadata(metadata: Mapping[str, str]) -> bool:
    """True for a gpt-oss GGUF: ``general.architecture == "gpt-oss"`` or a harmony chat template."""
    if str(metadata.get("general.architecture", "")).lower() == "gpt-oss":
        return True
    return "<|channel|>" in str(metadata.get("tokenizer.chat_template", ""))


@dataclass
class HarmonyMessage:
    """One message of the generation. ``end``: the marker that closed it ("" while open or cut)."""

    index: int
    role: str = "assistant"
    channel: str = ""
    recipient: str = ""
    content_type: str = ""
    content: str = ""
    end: str = ""

    @property
    def is_tool_call(self) -> bool:
        return bool(self.recipient)

    @property
    def is_final(self) -> bool:
        return self.channel == "final" and not self.recipient


@dataclass
class HarmonyDelta:
    """A piece of message content with the header of its message."""

    text: str
    channel: str
    recipient: str = ""
    content_type: str = ""
    index: int = 0
    role: str = "assistant"


@dataclass
class _Header:
    role: str = ""
    channel: str = ""
    recipient: str = ""
    content_type: str = ""
    seg: str = ""          # header text since the last marker
    part: str = "role"     # what `seg` is: role | rest (role known) | channel | constrain
    warned: list[str] = field(default_factory=list)


class HarmonyParser:
    """Incremental harmony parser on token ids.

    ``specials`` maps the token ids of the harmony markers to their text (default: the
    o200k_harmony ids). ``feed(token_id, piece)`` takes one generated token with its bytes
    (ordinary tokens; a special token's bytes are ignored) and returns the new
    :class:`HarmonyDelta`s. ``in_header=True`` (default): generation starts right after the
    prompt's ``<|start|>assistant``, i.e. inside a message header with the role known.
    """

    def __init__(self, specials: Mapping[int, str] | None = None, *, in_header: bool = True) -> None:
        self.specials = dict(O200K_HARMONY_IDS if specials is None else specials)
        self.messages: list[HarmonyMessage] = []   # completed (and the open one, last)
        self.warnings: list[str] = []
        self.done = False
        self.stop = ""              # "return" | "call" | "endoftext" | "role" | "" (not stopped)
        self.state = "header" if in_header else "idle"
        self._head = _Header(role="assistant", part="rest") if in_header else _Header()
        self._msg: HarmonyMessage | None = None
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # ------------------------------------------------------------------ public
    @property
    def stop_marker(self) -> str:
        return f"<|{self.stop}|>" if self.stop in ("return", "call", "endoftext") else ""

    @property
    def current(self) -> HarmonyMessage | None:
        """The message whose content is being generated (None in a header or between messages)."""
        return self._msg if self.state == "message" else None

    @property
    def tool_calls(self) -> list[HarmonyMessage]:
        """Complete tool-call messages (closed by ``<|call|>``, ``<|end|>`` or ``<|return|>``)."""
        return [m for m in self.messages if m.recipient and m.end]

    def feed(self, token: int, piece: bytes = b"") -> list[HarmonyDelta]:
        if self.done:
            return []
        out: list[HarmonyDelta] = []
        marker = self.specials.get(token)
        if marker is None:
            self._text(self._dec.decode(piece), out)
        else:
            self._text(self._dec.decode(b"", final=True), out)
            self._dec.reset()
            self._marker(marker, out)
        return out

    def feed_many(self, tokens: Iterable[tuple[int, bytes]]) -> list[HarmonyDelta]:
        out: list[HarmonyDelta] = []
        for tok, piece in tokens:
            out += self.feed(tok, piece)
        return out

    def finish(self) -> list[HarmonyDelta]:
        """End of generation (max_tokens, cancel): release text of an unfinished header/message."""
        out: list[HarmonyDelta] = []
        if self.done:
            return out
        self._text(self._dec.decode(b"", final=True), out)
        if self._is_headerless():
            self._headerless(out)
        self.state = "idle"
        return out

    # ------------------------------------------------------------------ internals
    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)
            log.warning(msg)

    def _emit(self, text: str, out: list[HarmonyDelta]) -> None:
        m = self._msg
        if m is None or not text:
            return
        m.content += text
        if out and out[-1].index == m.index:
            out[-1].text += text
        else:
            out.append(HarmonyDelta(text, m.channel, m.recipient, m.content_type, m.index, m.role))

    def _text(self, text: str, out: list[HarmonyDelta]) -> None:
        if not text:
            return
        if self.state == "message":
            self._emit(text, out)
            return
        if self.state == "idle":  # text after <|end|> without <|start|>: a header-less message
            self.state, self._head = "header", _Header(role="assistant", part="rest")
        if self.state != "header":
            return
        h = self._head
        h.seg += text
        if h.part == "role":
            m = re.match(r"\s*(\S+)\s", h.seg)
            if m and not m.group(1).startswith("to="):
                h.role, h.seg, h.part = m.group(1), h.seg[m.end():], "rest"
                if h.role != "assistant":
                    self._stop_role()
                    return
        if h.part == "rest" and not h.recipient and h.role == "assistant":
            rest = h.seg.lstrip()
            if rest and not (rest.startswith("to=") or "to=".startswith(rest)):
                self._headerless(out)
                return
        if len(h.seg) > MAX_HEADER_CHARS:
            self._warn("harmony: header too long; message treated as analysis (not spoken)")
            self._open(out, channel="analysis")

    def _is_headerless(self) -> bool:
        """Header text that is not a header (plain text where the header should be)."""
        h = self._head
        return (self.state == "header" and h.part == "rest" and h.role == "assistant" and bool(h.seg.strip())
                and not h.recipient and not any(w.startswith("to=") for w in h.seg.split()))

    def _headerless(self, out: list[HarmonyDelta]) -> None:
        text = self._head.seg.lstrip()
        self._warn("harmony: output without a message header; treated as the final answer")
        self._head.seg = ""
        self._open(out, channel="final")
        self._emit(text, out)

    def _stop_role(self) -> None:
        self._warn(f"harmony: the model went on into a {self._head.role!r} message; answer ended there")
        self.done, self.stop, self.state = True, "role", "idle"

    def _parse_seg(self) -> None:
        h = self._head
        words = h.seg.split()
        h.seg = ""
        for w in words:
            if w.startswith("to="):
                h.recipient = w[3:]
            elif h.part == "role" and not h.role:
                h.role = w
            elif h.part == "channel" and not h.channel:
                h.channel = w
            elif h.part in ("channel", "constrain") and not h.content_type:
                h.content_type = w
        if h.part == "role":
            h.part = "rest"

    def _open(self, out: list[HarmonyDelta], channel: str | None = None) -> None:
        h = self._head
        if channel is None:
            self._parse_seg()
            if h.role and h.role != "assistant":
                self._stop_role()
                return
            channel = h.channel
            if channel and channel not in CHANNELS:
                self._warn(f"harmony: unknown channel {channel!r}; treated as analysis (not spoken)")
                channel = "analysis"
            if not channel:
                if h.recipient:
                    channel = "commentary"
                else:
                    self._warn("harmony: message without a channel; treated as the final answer")
                    channel = "final"
        self._msg = HarmonyMessage(len(self.messages), h.role or "assistant", channel, h.recipient,
                                   h.content_type)
        self.messages.append(self._msg)
        self.state = "message"

    def _close(self, end: str) -> None:
        if self._msg is not None and self.state == "message":
            self._msg.end = end
        self._msg = None

    def _marker(self, marker: str, out: list[HarmonyDelta]) -> None:
        h = self._head
        if marker in STOP_MARKERS:
            if self._is_headerless():
                self._headerless(out)
            self._close(marker)
            self.done, self.stop, self.state = True, marker[2:-2], "idle"
            return
        if marker == "<|start|>":
            self._close("")  # a new message without <|end|>: the previous one is complete as is
            self.state, self._head = "header", _Header()
        elif marker in ("<|channel|>", "<|constrain|>"):
            if self.state == "message":  # a new header without <|end|><|start|>
                self._close("")
                self.state, self._head = "header", _Header(role=self._msg.role if self._msg else "assistant",
                                                            part="rest")
                h = self._head
            if self.state == "idle":
                self.state, self._head = "header", _Header(role="assistant", part="rest")
                h = self._head
            if self.state == "header":
                self._parse_seg()
                if h.role and h.role != "assistant":
                    self._stop_role()
                    return
                h.part = "channel" if marker == "<|channel|>" else "constrain"
        elif marker == "<|message|>":
            if self.state == "idle":
                self._head = _Header(role="assistant", part="rest")
                self.state = "header"
            if self.state == "header":
                self._open(out)
        elif marker == "<|end|>":
            if self.state == "message":
                self._close(marker)
            self.state, self._head = "idle", _Header()
        # <|startoftext|>, <|endofprompt|>: dropped


def text_tokens(text: str, specials: Mapping[int, str] | None = None) -> list[tuple[int, bytes]]:
    """Split harmony *text* into ``(id, bytes)`` tokens: markers become their special ids, the
    text between them one ordinary token (id -1). For logs and tests: real output is parsed on
    the engine's token ids, where a marker written as text stays text."""
    ids = {v: k for k, v in (O200K_HARMONY_IDS if specials is None else specials).items()}
    out: list[tuple[int, bytes]] = []
    for part in _MARKER_RE.split(text):
        if not part:
            continue
        out.append((ids[part], b"") if part in ids else (-1, part.encode("utf-8")))
    return out


def merge(deltas: Iterable[HarmonyDelta]) -> list[tuple[str, str]]:
    """``(channel, text)`` runs of deltas (consecutive pieces of one channel joined)."""
    out: list[tuple[str, str]] = []
    for d in deltas:
        if not d.text:
            continue
        if out and out[-1][0] == d.channel:
            out[-1] = (d.channel, out[-1][1] + d.text)
        else:
            out.append((d.channel, d.text))
    return out


def parse(text: str, *, in_header: bool = True) -> list[tuple[str, str]]:
    """Parse a whole harmony string (convenience for tests and logs): ``(channel, text)`` runs."""
    p = HarmonyParser(in_header=in_header)
    return merge(p.feed_many(text_tokens(text)) + p.finish())
