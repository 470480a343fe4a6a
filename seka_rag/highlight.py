"""Highlights → token mask.

A highlight can be given three ways, all ending as character spans of the text the tokenizer sees:

* inline, between markers (default ``<<`` and ``>>``; they do not collide with Markdown ``**bold**``);
  write ``\\<<`` or ``\\>>`` for a literal marker, or pass ``markers=None`` to turn parsing off;
* as substrings (every occurrence is highlighted);
* as character spans ``(start, end)`` of the prompt text (after marker removal), or
  ``(message_index, start, end)`` of a message's content when the prompt is a list of messages.

When the prompt goes through the chat template, spans inside message contents are carried to the
offsets of the rendered prompt, and the fast tokenizer's offset mapping turns them into a token mask.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from .errors import HighlightError

Span = tuple[int, int]
#: One highlight: a substring, a (start, end) span, or a (message_index, start, end) span.
Highlight = Union[str, tuple[int, int], tuple[int, int, int]]
#: A prompt: plain text or a list of chat messages ``{"role": ..., "content": ...}``.
Prompt = Union[str, Sequence[dict]]


@dataclass(frozen=True)
class Markers:
    """Inline highlight markers. ``escape`` placed before a marker makes it literal text.

    ``escape`` is one character, or ``""`` for none; ``start`` and ``end`` differ, and ``end`` must not
    begin with ``start`` (it would be read as another start).
    """

    start: str = "<<"
    end: str = ">>"
    escape: str = "\\"

    def __post_init__(self) -> None:
        for name in ("start", "end", "escape"):
            if not isinstance(getattr(self, name), str):
                raise HighlightError(f"highlight markers are strings: {name} is {getattr(self, name)!r}")
        if not self.start or not self.end:
            raise HighlightError("highlight markers must be non-empty strings")
        if self.start == self.end:
            raise HighlightError("the start and end highlight markers must differ")
        if self.escape in (self.start, self.end):
            raise HighlightError(f"the escape {self.escape!r} must differ from the markers: it would make every "
                                 "marker literal text")
        if self.end.startswith(self.start):
            raise HighlightError(f"the end marker {self.end!r} must not begin with the start marker {self.start!r}: "
                                 "it would be read as another start, and no highlight could close")
        if len(self.escape) > 1:
            raise HighlightError(f"the escape must be one character (or empty, for none), not {self.escape!r}")


DEFAULT_MARKERS = Markers()


def marker_events(text: str, markers: Markers) -> Iterator[tuple[str, int, str]]:
    """Scan ``text`` for inline markers: ``(kind, position, piece)`` with kind ``"text"`` (``piece`` is
    literal text), ``"start"`` or ``"end"`` (an unescaped marker at ``position``).

    A run of escapes before a marker: pairs are literal escapes, an odd one makes the marker literal;
    escapes anywhere else are ordinary text. After a start, overlapping closing markers (``">>>"``)
    close at the last one, so highlighted text may end with a character of the marker (``"<<a>>>"``
    highlights ``"a>"``; a highlight followed by a literal ``">"`` needs another character between).
    The one scanner of :func:`parse_markers` and of lenient parsers built on it.
    """
    esc, start, end = markers.escape, markers.start, markers.end
    pos, is_open = 0, False
    while pos < len(text):
        if esc and text.startswith(esc, pos):
            run, rest = 0, pos
            while text.startswith(esc, rest):
                run, rest = run + 1, rest + len(esc)
            marker = next((m for m in (start, end) if text.startswith(m, rest)), None)
            kept = run if marker is None else run // 2
            if kept:
                yield "text", pos, esc * kept
            pos = rest
            if marker is not None and run % 2 == 1:
                yield "text", rest, marker
                pos = rest + len(marker)
            continue
        if text.startswith(start, pos):
            yield "start", pos, start
            is_open, pos = True, pos + len(start)
            continue
        if is_open and text.startswith(end, pos) and any(text.startswith(end, pos + k) for k in range(1, len(end))):
            yield "text", pos, text[pos]
            pos += 1
            continue
        if text.startswith(end, pos):
            yield "end", pos, end
            is_open, pos = False, pos + len(end)
            continue
        yield "text", pos, text[pos]
        pos += 1


def parse_markers(text: str, markers: Markers | None = DEFAULT_MARKERS) -> tuple[str, list[Span]]:
    """Remove inline markers from ``text``; return the clean text and the marked spans.

    Raises :class:`HighlightError` for nested, unbalanced or empty marked regions. The marker rules
    are those of :func:`marker_events`.
    """
    if markers is None:
        return text, []
    out: list[str] = []
    spans: list[Span] = []
    open_at: int | None = None
    open_piece = open_pos = 0
    length = 0
    start, end = markers.start, markers.end
    for kind, pos, piece in marker_events(text, markers):
        if kind == "text":
            out.append(piece)
            length += len(piece)
        elif kind == "start":
            if open_at is not None:
                raise HighlightError(
                    f"nested highlight marker {start!r} at character {pos}: highlights cannot be "
                    f"nested ({_literal_hint(markers, start)})"
                )
            open_at, open_piece, open_pos = length, len(out), pos
        else:
            if open_at is None:
                raise HighlightError(
                    f"unbalanced highlight marker {end!r} at character {pos} has no opening "
                    f"{start!r} ({_literal_hint(markers, end)})"
                )
            if not "".join(out[open_piece:]).strip():
                raise HighlightError(f"empty highlight at character {pos}: the marked text has no content")
            spans.append((open_at, length))
            open_at = None
    if open_at is not None:
        raise HighlightError(
            f"unbalanced highlight marker: {start!r} at character {open_pos} opened but never closed with {end!r} "
            f"({_literal_hint(markers, start)})"
        )
    return "".join(out), spans


def _literal_hint(markers: Markers, marker: str) -> str:
    """How to write ``marker`` as text, for the shell as for Python (``repr`` would double a backslash)."""
    off = "turn inline markers off: markers=None in Python, --no-markers on the command line"
    if not markers.escape:
        return f"these markers have no escape string: {off}"
    literal = markers.escape + marker
    return f"for a literal marker write {literal} (in Python source r\"{literal}\"), or {off}"


def escape_markers(text: str, markers: Markers | None = DEFAULT_MARKERS) -> str:
    """``text`` with every marker string escaped, so it is read back literally.

    Use it on text you do not control (retrieved documents, code, tool output) before adding it to a
    prompt that uses inline markers. Code often contains ``<<`` and ``>>`` (bit shifts, C++ streams,
    heredocs); unescaped, they would be read as highlight markers. Escapes already standing before a
    marker are doubled, so they stay text too. To wrap such text in a highlight, use
    :func:`mark_highlight`, which also takes care of the text's last characters.

    The result is literal on its own, not glued to a marker: keep a space or newline between it and a
    marker beside it (text ending in ``"<"`` or an escape right before ``"<<"``, or starting with
    ``">"`` right after ``">>"``, joins that marker).
    """
    if not isinstance(text, str):
        raise HighlightError(f"escape_markers takes a string, got {type(text).__name__}")
    if markers is None or not text:
        return text
    needles = sorted({markers.start, markers.end}, key=len, reverse=True)
    if not any(n in text for n in needles):
        return text
    if not markers.escape:
        raise HighlightError(
            f"the text contains a highlight marker ({markers.start!r} or {markers.end!r}) and these "
            "markers have no escape string, so it cannot be carried literally"
        )
    esc = re.escape(markers.escape)
    pattern = re.compile(f"((?:{esc})*)(" + "|".join(re.escape(n) for n in needles) + ")")
    return pattern.sub(lambda m: m.group(1) * 2 + markers.escape + m.group(2), text)


def mark_highlight(text: str, markers: Markers = DEFAULT_MARKERS) -> str:
    """``text`` wrapped in highlight markers so that exactly ``text`` is highlighted, whatever it holds.

    ``f"Context: {mark_highlight(doc)}"`` is safe for any retrieved document or code: markers inside
    it are escaped (:func:`escape_markers`), and a trailing escape character (a Windows path
    ``C:\\dir\\``) or a trailing character of the closing marker (``</div>``) stays inside the highlight.
    What stands just outside it is not covered: keep a space or newline between the result and text
    ending in ``"<"`` or an escape before it, or starting with ``">"`` after it.
    """
    if markers is None:
        raise HighlightError("mark_highlight needs markers (markers=None turns inline highlights off)")
    if not isinstance(text, str) or not text.strip():
        raise HighlightError(f"a highlight needs some text, got {text!r}")
    body, esc = escape_markers(text, markers), markers.escape
    if esc:
        # escapes standing right before a closing marker that starts at the body's end, or inside
        # it ("a\\>" + ">>"), would make it literal: doubled, they stay text
        for at in range(max(0, len(body) - len(markers.end) + 1), len(body) + 1):
            if not (body + markers.end).startswith(markers.end, at):
                continue
            run = 0
            while at - (run + 1) * len(esc) >= 0 and body.startswith(esc, at - (run + 1) * len(esc)):
                run += 1
            if run:
                body = body[:at] + esc * run + body[at:]
            break
    return f"{markers.start}{body}{markers.end}"


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Sort spans and merge overlapping or touching ones."""
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def find_substring_spans(text: str, needle: str) -> list[Span]:
    """Every (non-overlapping) occurrence of ``needle`` in ``text``."""
    spans = []
    at = text.find(needle)
    while at != -1:
        spans.append((at, at + len(needle)))
        at = text.find(needle, at + len(needle))
    return spans


def _check_span(span: Sequence[int], length: int, where: str) -> Span:
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in span):
        raise HighlightError(f"highlight span {tuple(span)!r} must hold integer character offsets")
    s, e = int(span[0]), int(span[1])
    if 0 <= s <= length and 0 <= e <= length and s >= e:
        raise HighlightError(
            f"highlight span ({s}, {e}) is empty or reversed: its start must be before its end "
            "(spans are (start, end) character offsets, end exclusive)"
        )
    if not (0 <= s < e <= length):
        raise HighlightError(
            f"highlight span ({s}, {e}) is out of range for {where} of {length} characters "
            "(need 0 <= start < end <= length)"
        )
    return s, e


@dataclass
class PreparedPrompt:
    """A prompt ready to tokenize: the exact text, and highlighted character spans in it."""

    text: str
    spans: list[Span] = field(default_factory=list)
    add_special_tokens: bool = True
    chat: bool = False
    routing_text: str = ""  #: the prompt's own text outside the highlights (no chat template)
    #: characters at the start that a too-long prompt keeps (the chat template's opening and system
    #: messages): its tokens are dropped right after them instead
    keep_head: int = 0


#: Message roles that chat templates use. Any other role is passed to the template as it is, except a near
#: miss of one of these ("usr", "asistant", "User"), which is an error that names the role meant.
KNOWN_ROLES = ("system", "user", "assistant", "tool", "developer", "function", "ipython", "model", "observation",
               "environment", "tool_response", "chatbot")


def _as_messages(prompt: Prompt, template: str | None = None) -> list[dict] | None:
    """``prompt`` as a list of message dicts (None for plain text), checked; ``template``, the chat template's
    source, tells a role it uses (``'human'`` in a ShareGPT-style template) from another API's name for one."""
    if isinstance(prompt, str):
        return None
    if isinstance(prompt, Sequence) and all(isinstance(m, dict) for m in prompt) and prompt:
        for i, m in enumerate(prompt):
            if "role" not in m or not isinstance(m.get("content"), str):
                raise HighlightError(
                    f"message {i} must be a dict with a 'role' and a string 'content'"
                )
            role = m["role"]
            if not isinstance(role, str) or not role:
                raise HighlightError(f"message {i} has role {role!r}; a role is a non-empty string such as 'user'")
            other = _OTHER_NAMES.get(role.strip().lower())  # LangChain's / other APIs' name for a template role
            if other is not None and not any(q + role + q in (template or "") for q in "'\""):
                raise HighlightError(f"message {i} has role {role!r}; chat templates call it {other!r} "
                                     "(this model's template does not name that role)")
            close = [] if role in KNOWN_ROLES else difflib.get_close_matches(role.lower(), KNOWN_ROLES, n=1, cutoff=0.7)
            if close and close[0] != role:  # "usr", "asistant", "User": a slip, not a role of some template
                raise HighlightError(f"message {i} has role {role!r}; did you mean {close[0]!r}?")
        return [dict(m) for m in prompt]
    raise HighlightError(_not_a_prompt(prompt))


#: Role names other APIs use (LangChain's message types, a few chat UIs) for the template roles.
_OTHER_NAMES = {"human": "user", "ai": "assistant", "bot": "assistant", "gpt": "assistant"}


def _not_a_prompt(prompt: Any) -> str:
    """Why ``prompt`` is not one prompt, with the likely fix for the common shapes."""
    what = "a prompt must be a string or a non-empty list of {'role': ..., 'content': ...} messages"
    if isinstance(prompt, Mapping) and "content" in prompt:
        return f"{what}; this is one message: wrap it in a list, [{{'role': ..., 'content': ...}}]"
    if _is_role_text_pairs([prompt]):
        return f"{what}; a (role, text) pair is not a message here: write [{{'role': role, 'content': text}}]"
    if isinstance(prompt, (list, tuple)) and prompt:
        if _is_role_text_pairs(prompt):
            return f"{what}; (role, text) pairs are not messages here: write [{{'role': role, 'content': text}}, ...]"
        if all(isinstance(p, (str, list, tuple)) for p in prompt):
            return (f"{what}, not a list of {len(prompt)} prompts: this call takes one prompt "
                    "(generate takes a list of prompts)")
        if any(isinstance(m, Mapping) for m in prompt):
            bad = next(i for i, m in enumerate(prompt) if not isinstance(m, dict))
            return f"{what}; entry {bad} of the messages is a {type(prompt[bad]).__name__}, not a dict"
    if isinstance(prompt, (list, tuple)) and not prompt:
        return f"{what}, not an empty list"
    return f"{what}, not {type(prompt).__name__}"


def _is_role_text_pairs(prompt: Any) -> bool:
    """Whether ``prompt`` is a list of LangChain-style ``(role, text)`` tuples."""
    return (isinstance(prompt, (list, tuple)) and bool(prompt)
            and all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in prompt))


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template (prompts are then rendered as a user turn)."""
    return bool(getattr(tokenizer, "chat_template", None))


#: Where one message's content stands in the rendered chat prompt: the rendered offset of the content's
#: character 0, and the range ``(lo, hi)`` of its characters the template reproduced there (all of them,
#: unless the template trims the content's leading / trailing whitespace).
_Placement = tuple[int, int, int]


def _render_chat(tokenizer, messages: list[dict], continue_last: bool) -> tuple[str, list[_Placement | None]]:
    """Render messages with the chat template; return the text and where each content stands in it.

    With ``continue_last`` the final (assistant) message is left open for the model to continue;
    otherwise the assistant turn is opened after the last message. A content the template does not
    reproduce gets None.
    """
    options = dict(tokenize=False, add_generation_prompt=not continue_last)
    if continue_last:
        options["continue_final_message"] = True
    try:
        rendered = tokenizer.apply_chat_template(messages, **options)
    except Exception as exc:  # a template that validates the conversation (roles must alternate, no system role)
        if type(exc).__module__.split(".")[0] != "jinja2" and "template" not in type(exc).__name__.lower():
            raise
        if type(exc).__name__ == "TemplateSyntaxError":
            raise HighlightError(f"the model's chat template is not valid Jinja: {exc}") from exc
        hint = ""
        if "system" in str(exc).lower() or "alternate" in str(exc).lower():
            hint = ("; this template takes no system message or needs user / assistant turns to alternate: put "
                    "the system text at the start of the first user message, and join consecutive turns of one role")
        raise HighlightError(f"the model's chat template failed on these messages: {exc}{hint}") from exc
    # Exact placement: render again with unique sentinels in place of each content.
    sentinels = [f"\x00SEKA{i}\x00" for i in range(len(messages))]
    probe = [dict(m, content=s) for m, s in zip(messages, sentinels)]
    try:
        templated = tokenizer.apply_chat_template(probe, **options)
    except Exception:  # a template that validates contents; fall back to searching
        templated = None
    # each content at most once (a template may drop one, e.g. the system message when the answer is
    # continued): rebuilt in the order the template put them (it may move one, e.g. fold the system
    # message into the last user turn), the text must be the rendered prompt exactly
    placed = templated is not None and all(templated.count(s) <= 1 for s in sentinels)
    order = list(range(len(messages)))
    if placed:  # a dropped message is not placed at all; the others in the template's order
        order = sorted((i for i in order if sentinels[i] in templated), key=lambda i: templated.index(sentinels[i]))
        starts: list[_Placement | None] = [None] * len(messages)
        text, length, cursor = [], 0, 0
        for i in order:
            at = templated.index(sentinels[i])
            text.append(templated[cursor:at])
            length += at - cursor
            content = messages[i]["content"]
            starts[i] = (length, 0, len(content))
            text.append(content)
            length += len(content)
            cursor = at + len(sentinels[i])
        text.append(templated[cursor:])
        if "".join(text) == rendered:
            return rendered, starts
    # The template transforms contents (e.g. trims them): locate each one in the order the template put
    # them (message order when the sentinels do not tell), never inside the template's own text before
    # it (a system header can repeat words of the message).
    gaps: dict[int, int] | None = None
    if placed:
        gaps, end = {}, 0
        for i in order:
            at = templated.index(sentinels[i])
            gaps[i], end = at - end, at + len(sentinels[i])
    # cursor: the end of the last content placed; ahead: where the template's own text says the next
    # content starts (every message's wrapper counted, an empty one's too)
    starts, cursor, ahead = [None] * len(messages), 0, 0
    for i in order:
        content = messages[i]["content"]
        expected = None if gaps is None else ahead + gaps[i]
        if content:  # an empty one has nothing to place (and a template may drop the whole message)
            starts[i] = _locate(rendered, content, cursor, expected)
        if starts[i] is not None:  # None: content not reproduced; spans in it cannot be placed
            cursor = ahead = starts[i][0] + starts[i][2]
        elif expected is not None:  # not found where expected; whitespace alone was trimmed away: no length
            ahead = expected + (len(content) if content.strip() else 0)
    return rendered, starts


def _locate(rendered: str, content: str, cursor: int, expected: int | None) -> _Placement | None:
    """Where ``content`` stands in ``rendered``, from ``cursor`` on: whole, or with its leading and
    trailing whitespace trimmed by the template. ``expected``: where the template's own text between
    contents puts it, tried first (a later message may hold the same words)."""
    lead = len(content) - len(content.lstrip())
    stripped = content.strip()

    def whole_or_trimmed(pos: int) -> _Placement | None:
        if rendered.startswith(content, pos):
            return pos, 0, len(content)
        if stripped and rendered.startswith(stripped, pos):
            return pos - lead, lead, lead + len(stripped)
        return None

    if expected is not None and (hit := whole_or_trimmed(expected)) is not None:
        return hit
    if not stripped:  # whitespace alone matches any space: placed only where expected (it holds no highlight)
        return None
    for start in ((expected, cursor) if expected is not None else (cursor,)):
        # a template that drops a message's wrapper (an empty one) makes ``expected`` overshoot
        pos = rendered.find(stripped, start)
        if pos == -1:
            continue
        if pos - lead >= start and rendered.startswith(content, pos - lead):  # whole, from its first character
            return pos - lead, 0, len(content)
        return pos - lead, lead, lead + len(stripped)
    return None


def prepare_prompt(
    prompt: Prompt,
    tokenizer,
    highlights: Sequence[Highlight] | None = None,
    *,
    markers: Markers | None = DEFAULT_MARKERS,
    chat: bool | None = None,
) -> PreparedPrompt:
    """Remove markers, apply the chat template if wanted, and place every highlight as a char span.

    ``chat=None`` uses the chat template when the tokenizer has one; a list of messages always
    needs one.
    """
    template = getattr(tokenizer, "chat_template", None)
    messages = _as_messages(prompt, template if isinstance(template, str) else None)
    if highlights is not None and (isinstance(highlights, str) or not isinstance(highlights, Sequence)):
        raise HighlightError(
            "highlights must be a list of substrings or (start, end) spans, "
            f"not {type(highlights).__name__}"
        )
    highlights = list(highlights or [])
    if messages is None and len(highlights) == 2 and all(isinstance(h, int) for h in highlights):
        raise HighlightError(
            f"highlights={tuple(highlights)!r} looks like one (start, end) span: wrap it in a list, e.g. [{tuple(highlights)!r}]"
        )
    if chat is None:
        chat = has_chat_template(tokenizer)
    if messages is not None and not chat:
        raise HighlightError(
            "a list of chat messages needs chat=True and a tokenizer with a chat template"
        )
    if chat and not has_chat_template(tokenizer):
        raise HighlightError("chat=True but this tokenizer has no chat template; pass chat=False")

    if messages is None:
        contents = [prompt]
    else:
        contents = [m["content"] for m in messages]
    clean: list[str] = []
    spans_per_content: list[list[Span]] = []
    for c in contents:
        text, spans = parse_markers(c, markers)
        clean.append(text)
        spans_per_content.append(spans)

    for h in highlights:
        if isinstance(h, str):
            if not h.strip():
                raise HighlightError("empty highlight: a highlight substring must contain text")
            found = False
            for i, text in enumerate(clean):
                occ = find_substring_spans(text, h)
                spans_per_content[i].extend(occ)
                found = found or bool(occ)
            if not found:
                shown = h if len(h) <= 60 else h[:57] + "..."
                hint = ""
                if markers is not None and (markers.start in h or markers.end in h):
                    hint = (" (highlights are matched against the prompt with its markers removed: give the text "
                            "without them)")
                raise HighlightError(f"highlight {shown!r} does not occur in the prompt{hint}")
        elif isinstance(h, tuple | list) and len(h) == 2 and messages is None:
            spans_per_content[0].append(_check_span(h, len(clean[0]), "the prompt"))
        elif isinstance(h, tuple | list) and len(h) == 3 and messages is not None:
            if isinstance(h[0], bool) or not isinstance(h[0], numbers.Integral):
                raise HighlightError(f"highlight span {tuple(h)!r}: the message index must be an integer")
            idx = int(h[0])
            if not 0 <= idx < len(clean):
                raise HighlightError(f"highlight span names message {idx}, but there are {len(clean)}")
            spans_per_content[idx].append(_check_span(h[1:], len(clean[idx]), f"message {idx}"))
        else:
            form = "(start, end)" if messages is None else "(message_index, start, end)"
            nested = " (one prompt takes a flat list of highlights)" if isinstance(h, list) and h and all(
                isinstance(x, str) for x in h) else ""
            raise HighlightError(f"cannot use {h!r} as a highlight: give a substring or a {form} span{nested}")

    outside = "\n".join(
        t for t in (_outside_spans(text, spans) for text, spans in zip(clean, spans_per_content)) if t
    )
    if not chat:
        return PreparedPrompt(clean[0], merge_spans(spans_per_content[0]), True, False, outside)

    if messages is None:
        messages = [{"role": "user", "content": clean[0]}]
    else:
        messages = [dict(m, content=c) for m, c in zip(messages, clean)]
    continue_last = messages[-1]["role"] == "assistant"  # continue a started answer, do not close it
    rendered, starts = _render_chat(tokenizer, messages, continue_last)
    spans: list[Span] = []
    for i, (placement, content_spans) in enumerate(zip(starts, spans_per_content)):
        if not content_spans:
            continue
        if placement is None:
            raise HighlightError(
                f"the chat template does not reproduce message {i}'s content verbatim, so its "
                "highlights cannot be placed; pass chat=False and format the prompt yourself"
            )
        start, lo, hi = placement
        for s, e in content_spans:  # a template that trims the content keeps only characters lo..hi
            s, e = max(s, lo), min(e, hi)
            if s >= e:
                raise HighlightError(
                    f"a highlight in message {i} holds only whitespace at the content's start or end, which the "
                    "chat template trims away: highlight the text beside it"
                )
            spans.append((start + s, start + e))
    first = next((i for i, m in enumerate(messages) if m.get("role") != "system"), None)
    keep_head = 0  # the opening and system messages stay: up to the first kept character of the first other
    if first is not None and starts[first] is not None:
        keep_head = starts[first][0] + starts[first][1]
    return PreparedPrompt(rendered, merge_spans(spans), add_special_tokens=False, chat=True, routing_text=outside,
                          keep_head=keep_head)


def _outside_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with the highlighted spans cut out (whitespace tidied)."""
    parts, at = [], 0
    for s, e in merge_spans(spans):
        parts.append(text[at:s])
        at = e
    parts.append(text[at:])
    return " ".join(" ".join(parts).split())


@dataclass
class EncodedPrompt:
    """Token ids of one prompt and which of them are highlighted."""

    input_ids: list[int]
    highlight: list[bool]
    text: str
    truncated: int = 0  #: tokens dropped from the start (after any kept head: chat opening, system messages, BOS)
    routing_text: str = ""  #: the prompt's text outside the highlights (the embedding router's default query)


def encode_prompt(
    prepared: PreparedPrompt, tokenizer, max_length: int | None = None, *, warn: bool = True
) -> EncodedPrompt:
    """Tokenize a prepared prompt and mark the tokens overlapping a highlighted span.

    Prompts longer than ``max_length`` lose tokens from their start (with a warning): from right
    after the chat template's opening and system messages for a chat prompt (which are kept), else
    after any leading special tokens (BOS). A highlight whose tokens are all dropped raises
    :class:`HighlightError`. The warning points at the first caller outside seka-rag.
    """
    offsets = None  # read only where highlights need them; a truncation reads them then
    if not prepared.spans:
        ids = tokenizer(prepared.text, add_special_tokens=prepared.add_special_tokens)["input_ids"]
        covering: list[int] = [-1] * len(ids)
    else:
        if not getattr(tokenizer, "is_fast", False):
            raise HighlightError("highlights need a fast tokenizer (one with an offset mapping)")
        enc = tokenizer(
            prepared.text,
            add_special_tokens=prepared.add_special_tokens,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        # special tokens are never highlighted: those the tokenizer added, and those written in the text
        # itself (a chat prompt is tokenised without adding any, so its template's markers count by id)
        special_ids = set(getattr(tokenizer, "all_special_ids", None) or [])
        special_ids |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                        if getattr(t, "special", False)}  # e.g. Llama-3's <|start_header_id|>
        special = [bool(m) or t in special_ids for m, t in zip(enc["special_tokens_mask"], ids)]
        covering = _covering_span(offsets, special, prepared.spans)
        missing = set(range(len(prepared.spans))) - set(covering)
        if missing:
            s, e = prepared.spans[min(missing)]
            only_special = any(special[t] and a < e and b > s for t, (a, b) in enumerate(offsets))
            raise HighlightError(f"highlight {prepared.text[s:e]!r} covers no token of the prompt"
                                 + (" but control tokens, which are never highlighted" if only_special else ""))
    if not ids:
        raise HighlightError(
            "the prompt has no tokens (an empty text without a chat template, on a tokenizer that adds no "
            "beginning-of-sequence token): give it some text"
        )
    truncated = 0
    if max_length is not None and len(ids) > max_length:
        truncated = len(ids) - max_length
        head = _head_tokens(prepared, tokenizer, ids, offsets)
        if head + 1 >= max_length:  # the head would leave fewer than two tokens: cut from the very start
            head = 0
        dropped = covering[head:head + truncated]
        lost = set(dropped) - set(covering[:head] + covering[head + truncated:]) - {-1}
        if lost:
            s, e = prepared.spans[min(lost)]
            shown = prepared.text[s:e] if e - s <= 60 else prepared.text[s : s + 57] + "..."
            raise HighlightError(
                f"highlight {shown!r} was truncated away: the prompt ({len(ids)} tokens) is longer "
                f"than the {max_length} tokens it may use (the model's window, less any tokens reserved "
                "for the answer); shorten the prompt or move the highlight later"
            )
        ids = ids[:head] + ids[head + truncated:]
        covering = covering[:head] + covering[head + truncated:]
        where = (f"the {truncated} tokens after the first {head} (the prompt's opening up to its first non-system "
                 "message, kept) were dropped" if prepared.chat and head else
                 f"the first {truncated} tokens{' after the first ' + str(head) + ' (special tokens, kept)' if head else ''}"
                 " were dropped")
        if warn:
            warnings.warn(
                f"prompt of {len(ids) + truncated} tokens is longer than the {max_length} tokens it may use "
                f"(the model's window, less any tokens reserved for the answer); {where}",
                stacklevel=_outside_stacklevel(),
            )
    return EncodedPrompt(list(ids), [c >= 0 for c in covering], prepared.text, truncated, prepared.routing_text)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised by this module's caller that names the first frame outside
    seka-rag (the user's call of generate / score / encode / build_projection ...), however deep the path."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def leading_special_tokens(ids: Sequence[int], tokenizer) -> int:
    """How many of ``ids`` at the start are the tokenizer's special tokens (a BOS, a template's first marker)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return next((i for i, t in enumerate(ids) if t not in special), len(ids))


def _head_tokens(prepared: PreparedPrompt, tokenizer, ids: Sequence[int], offsets) -> int:
    """How many leading tokens a truncation keeps: those ending by ``prepared.keep_head`` characters
    (the chat opening and system messages), leading special tokens included. ``offsets``: the prompt's
    offset mapping if it was read already (else read here, on a fast tokenizer)."""
    if offsets is None and getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prepared.text, add_special_tokens=prepared.add_special_tokens,
                            return_offsets_mapping=True)["offset_mapping"]
    if offsets is None:  # no offsets: the head's own tokens, if they prefix the prompt's
        head = tokenizer(prepared.text[:prepared.keep_head], add_special_tokens=prepared.add_special_tokens)["input_ids"]
        if prepared.keep_head and list(ids[:len(head)]) == list(head):
            return len(head)
        return leading_special_tokens(ids, tokenizer)
    if len(offsets) != len(ids):
        return 0
    head = 0
    for _, end in offsets:
        if end > prepared.keep_head:
            break
        head += 1
    return head


def _covering_span(offsets, special, spans: Sequence[Span]) -> list[int]:
    """Index of the (sorted, disjoint) span each token overlaps, or -1; one pass over both lists."""
    out = [-1] * len(offsets)
    j = 0
    for t, (a, b) in enumerate(offsets):
        if special[t]:
            continue  # special tokens carry no text
        while j < len(spans) and spans[j][1] <= a and not (a == b and spans[j][0] < a < spans[j][1]):
            j += 1
        for k in range(j, len(spans)):
            s, e = spans[k]
            if s >= max(b, a + 1):
                break
            # overlapping tokens; a zero-width token (trimmed whitespace) strictly inside a span
            if (a < e and b > s) or (a == b and s < a < e):
                out[t] = k
                break
    return out


@dataclass
class Batch:
    """A padded batch: ids, attention mask and highlight mask, all (batch, tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    highlight_mask: torch.Tensor

    def to(self, device) -> "Batch":
        """The same batch with every tensor on ``device``."""
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.highlight_mask)))


def pad_batch(rows: Sequence[EncodedPrompt], pad_id: int, side: str = "left") -> Batch:
    """Pad encoded prompts to one length (left padding for generation, right for scoring)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    hl = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(r.input_ids, dtype=torch.long)
        att[i, sl] = 1
        hl[i, sl] = torch.tensor(r.highlight, dtype=torch.bool)
    return Batch(ids, att, hl)


def describe_highlight(encoded: EncodedPrompt, tokenizer) -> list[tuple[int, str]]:
    """(position, token text) of every highlighted token, for previewing what a highlight covers."""
    return [
        (i, tokenizer.decode([tok]))
        for i, (tok, on) in enumerate(zip(encoded.input_ids, encoded.highlight))
        if on
    ]
