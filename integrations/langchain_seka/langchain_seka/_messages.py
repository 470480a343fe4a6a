"""LangChain messages and documents → the engine's prompt and highlights (shared by ChatSeka and SekaLLM)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, ChatMessage

from seka_rag import HighlightError, Markers, SekaError
from seka_rag.highlight import DEFAULT_MARKERS, escape_markers, parse_markers

from ._text import MARKER_ROLES, document_text, texts_in_prompt

_ROLE_BY_TYPE = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}
# streamed messages (AIMessageChunk, ...) keep their base message's role: a streamed reply stored in a
# chat history comes back as an AIMessageChunk on the next turn
_ROLE_BY_TYPE.update({
    "AIMessageChunk": "assistant", "HumanMessageChunk": "user", "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool", "FunctionMessageChunk": "tool",
})
_ROLE_ALIASES = {"human": "user", "ai": "assistant", "model": "assistant", "developer": "system", "function": "tool"}
_MEDIA_BLOCKS = {"image", "image_url", "audio", "input_audio", "video", "file", "media", "document", "input_image",
                 "input_file"}
#: content blocks that carry text: LangChain's "text" and "text-plain", OpenAI's Responses "input_text" / "output_text"
_TEXT_BLOCKS = {"text", "text-plain", "input_text", "output_text"}
#: an answer's own reasoning and tool-call blocks: not sent (its tool calls are written from ``tool_calls``)
_ANSWER_ONLY_BLOCKS = {"reasoning", "thinking", "redacted_thinking", "tool_use", "tool_call", "tool_call_chunk",
                       "invalid_tool_call", "server_tool_call", "server_tool_call_chunk", "server_tool_result",
                       "server_tool_use", "web_search_tool_result"}  # (the last two: Anthropic's own names)


def message_text(message: BaseMessage) -> str:
    """The text of a message (its text blocks joined; a refusal block's text, a JSON block as JSON); refuse
    images and other media, and any block whose text it cannot tell (nothing is dropped in silence). An AI
    message's reasoning and tool-call blocks are left out: its tool calls are written from
    ``message.tool_calls``."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind in _MEDIA_BLOCKS:
            raise SekaError(f"ChatSeka takes text only; message has a {kind!r} content block")
        if kind in _TEXT_BLOCKS and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "refusal" and isinstance(block.get("refusal"), str):  # OpenAI: an answer's refusal is its text
            parts.append(block["refusal"])
        elif kind == "json" and "json" in block:  # a tool's JSON output
            parts.append(json.dumps(block["json"], ensure_ascii=False, default=str))
        elif kind in _ANSWER_ONLY_BLOCKS and message.type in ("ai", "AIMessageChunk"):
            continue
        else:
            raise SekaError(f"ChatSeka takes text only and cannot read a {kind!r} content block of a "
                            f"{message.type} message; give its text as a string or a {{'type': 'text'}} block")
    return "".join(parts)


def to_engine_messages(
    messages: Sequence[BaseMessage], markers: Markers | None = DEFAULT_MARKERS,
    marker_roles: Sequence[str] = MARKER_ROLES,
) -> list[dict[str, str]]:
    """One ``{"role", "content"}`` dict per message, in order (so message indices are preserved).

    Inline highlight markers in the contents of ``marker_roles`` (system, user and tool by default)
    are left in place for the engine to parse; system, user or tool messages outside ``marker_roles``
    have their marker strings escaped, so they are read literally (a custom role's message is read).
    An assistant message is the model's own text (``std::cout << x``): it is always read literally
    and never breaks a later turn. Its tool calls are written after
    its text, one ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` block each (the format
    Qwen's and Hermes-style chat templates use), so the model sees which tool it called and how.
    """
    out = []
    for message in messages:
        if isinstance(message, ChatMessage):
            role = _ROLE_ALIASES.get(message.role, message.role)
        else:
            role = _ROLE_BY_TYPE.get(message.type)
            if role is None:
                raise SekaError(f"ChatSeka cannot send a {type(message).__name__} ({message.type!r}) to the model")
        text = message_text(message)
        if role == "assistant":
            calls = [_tool_call_text(c) for c in getattr(message, "tool_calls", None) or []]
            text = "\n".join(part for part in (text, *calls) if part)
        if role == "assistant" or (role in MARKER_ROLES and role not in marker_roles):  # read literally
            text = escape_markers(text, markers)
        out.append({"role": role, "content": text})
    return out


def _tool_call_text(call: dict[str, Any]) -> str:
    payload = json.dumps({"name": call.get("name"), "arguments": call.get("args", {})}, ensure_ascii=False, default=str)
    return f"<tool_call>\n{payload}\n</tool_call>"


def document_highlights(
    documents: Sequence[Any], contents: Sequence[str], markers: Markers | None = DEFAULT_MARKERS
) -> list[str]:
    """Substring highlights for ``documents``: each document's text, which must occur in the prompt.

    ``contents`` are the prompt's message contents (markers still in them); a document is looked
    up in their marker-free text, as the engine will see it.
    """
    clean = []
    for c in contents:
        try:
            clean.append(parse_markers(c, markers)[0] if markers is not None else c)
        except HighlightError:
            clean.append(c)  # the engine will report the marker problem itself
    return texts_in_prompt([document_text(doc) for doc in documents], clean, markers)
