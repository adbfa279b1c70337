"""The prompt of a turn: system prompt + retrieved context + history + the user's words.

One function builds it for the voice turn (:class:`spark_voice.pipeline.VoicePipeline`) and for
``POST /v1/chat/completions`` with retrieval, so both ask the model the same way.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .types import Hit

Message = dict[str, Any]

CONTEXT_INTRO = "Use the following context if it helps; do not read source names aloud."


def context_block(hits: Sequence[Hit]) -> str:
    """The retrieved chunks as the model sees them: ``[n] (source) text`` lines."""
    lines = "\n".join(f"[{i + 1}] ({h.source}) {h.text.strip()}" for i, h in enumerate(hits))
    return f"{CONTEXT_INTRO}\nContext:\n{lines}"


def with_context(messages: Sequence[Message], hits: Sequence[Hit]) -> list[Message]:
    """`messages` (copied) with the context appended to the first system message, or put in a new
    system message at the front when there is none. No hits: the messages unchanged."""
    msgs = [dict(m) for m in messages]
    if not hits:
        return msgs
    note = context_block(hits)
    for m in msgs:
        if m["role"] == "system":
            m["content"] = f"{m['content']}\n\n{note}" if m["content"] else note
            return msgs
    return [{"role": "system", "content": note}, *msgs]


def build_messages(system_prompt: str, user_text: str | None, *, hits: Sequence[Hit] = (),
                   history: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The messages of a voice turn: [system], history..., user (context in the system message).
    `user_text` None: no user message (a turn resumed after tool results in the history)."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs += [dict(m) for m in history]
    if user_text is not None:
        msgs.append({"role": "user", "content": user_text})
    return with_context(msgs, hits)
