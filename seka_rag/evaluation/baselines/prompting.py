"""Prompt-only emphasis: the highlighted text is marked *visibly in the prompt*, with no steering at all.

The baseline every steering method has to beat: tell the model in words which text matters.

``"markers"``   the highlighted text wrapped in ``**`` … ``**`` (Markdown bold, which chat models read
                as emphasis): ``Doc 2: **The tower is in Rome.**``
``"important"`` an ``IMPORTANT:`` note right before the highlighted text:
                ``Doc 2: IMPORTANT: The tower is in Rome.``
``"note"``      the prompt unchanged, followed by a closing note quoting each highlighted text:
                ``... \\n\\nIMPORTANT: pay close attention to this text: "The tower is in Rome."``

Score or generate the emphasised prompt with ``steer=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ...errors import HighlightError
from ...highlight import DEFAULT_MARKERS, Markers, escape_markers, find_substring_spans, merge_spans, parse_markers
from ._common import BaselineConfigError

#: The emphasis styles :func:`emphasize_prompt` knows.
STYLES = ("markers", "important", "note")

#: What ``"markers"`` wraps the highlighted text in.
EMPHASIS_MARKERS = ("**", "**")
#: What ``"important"`` puts before the highlighted text.
IMPORTANT_PREFIX = "IMPORTANT: "
#: The closing note of ``"note"`` (one line per highlighted text).
NOTE_TEMPLATE = 'IMPORTANT: pay close attention to this text: "{text}"'


def emphasize_prompt(
    prompt: str,
    highlights: str | Sequence[str] | None = None,
    style: str = "markers",
    *,
    markers: Markers | None = DEFAULT_MARKERS,
) -> str:
    """``prompt`` with its highlighted text emphasised visibly (see :data:`STYLES`); no steering involved.

    The highlighted text is given inline between ``markers`` (``<<`` … ``>>``; they are removed) and/or
    as substrings in ``highlights`` (every occurrence). Literal markers written escaped (``\\<<``)
    stay escaped in the result, so it can go back through :class:`~seka_rag.SekaModel` with the
    same ``markers``. Raises :class:`HighlightError` when nothing is highlighted or a substring is
    missing, :class:`BaselineConfigError` for an unknown style.
    """
    if style not in STYLES:
        raise BaselineConfigError(f"style must be one of {', '.join(map(repr, STYLES))}, got {style!r}")
    if not isinstance(prompt, str):
        raise HighlightError(f"prompt emphasis takes a plain-text prompt, not {type(prompt).__name__}")
    if isinstance(highlights, str):
        highlights = [highlights]
    text, spans = parse_markers(prompt, markers)
    for h in highlights or []:
        if not isinstance(h, str) or not h.strip():
            raise HighlightError(f"each highlight must be a non-empty substring, got {h!r}")
        found = find_substring_spans(text, h)
        if not found:
            shown = h if len(h) <= 60 else h[:57] + "..."
            raise HighlightError(f"highlight {shown!r} does not occur in the prompt")
        spans.extend(found)
    spans = merge_spans(spans)
    if not spans:
        raise HighlightError("nothing to emphasise: the prompt has no highlight (mark it with << >> or pass highlights=)")

    def lit(s: str) -> str:
        return escape_markers(s, markers) if markers is not None else s

    if style == "note":
        notes = "\n".join(NOTE_TEMPLATE.format(text=lit(text[s:e])) for s, e in spans)
        return f"{lit(text)}\n\n{notes}"
    before, after = EMPHASIS_MARKERS if style == "markers" else (IMPORTANT_PREFIX, "")
    parts, at = [], 0
    for s, e in spans:
        parts.extend((lit(text[at:s]), before, lit(text[s:e]), after))
        at = e
    parts.append(lit(text[at:]))
    return "".join(parts)


def emphasize_item(item: Any, style: str = "markers") -> Any:
    """A copy of a :class:`~seka_rag.evaluation.families.FamilyItem` whose prompt emphasises its highlight.

    ``highlight`` stays a substring of the new prompt, so the item scores through
    :func:`~seka_rag.evaluation.families.score_items` as before (use ``steer=False``).
    """
    return dataclasses.replace(item, prompt=emphasize_prompt(item.prompt, [item.highlight], style, markers=None))


def emphasize_items(items: Sequence[Any], style: str = "markers") -> list[Any]:
    """:func:`emphasize_item` of every item."""
    return [emphasize_item(it, style) for it in items]


__all__ = ["EMPHASIS_MARKERS", "IMPORTANT_PREFIX", "NOTE_TEMPLATE", "STYLES", "emphasize_item", "emphasize_items",
           "emphasize_prompt"]
