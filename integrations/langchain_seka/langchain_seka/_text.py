"""Framework-free text helpers shared by both integrations.

* :func:`mark_up` wraps character spans of a text in the engine's inline markers so that the engine
  recovers exactly the same text, whatever the text contains (marker strings are escaped, and the
  span edges are nudged off characters that would fuse with a marker). With ``per_word=True`` every
  whitespace-free run is wrapped on its own, so a splitter that cuts only at whitespace (LlamaIndex's
  ``compact`` / ``refine`` / ``tree_summarize`` re-packing) can never separate an opening marker from
  its closing one.
* :func:`parse_lenient` is the receiving side for such text: the engine's marker parser, except that
  a marker left unbalanced by a split is kept as literal text instead of failing, and highlights
  separated only by whitespace are merged back into one span.
* :func:`sentence_spans` is a small, dependency-free sentence splitter (character spans).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from seka_rag import HighlightError, Markers, SekaError
from seka_rag.highlight import (
    DEFAULT_MARKERS,
    escape_markers,
    mark_highlight,
    marker_events,
    merge_spans,
    parse_markers,
)

Span = tuple[int, int]

__all__ = [
    "Span",
    "as_document_list",
    "as_highlight_list",
    "as_markers",
    "escape_markers",
    "mark_up",
    "merge_whitespace_gaps",
    "parse_lenient",
    "sentence_spans",
]


def _word_spans(text: str, start: int, end: int) -> list[Span]:
    return [(start + m.start(), start + m.end()) for m in re.finditer(r"\S+", text[start:end])]


def _safe_regions(text: str, regions: Sequence[Span], markers: Markers) -> list[Span]:
    """Nudge region starts so the markers placed around them parse back as intended.

    An escape character right before an opening marker would turn it literal, and a character of the
    opening marker right before a region would open it early: such characters are moved into the
    region. A region's own last characters need nothing (:func:`~seka_rag.highlight.mark_highlight`
    keeps a trailing escape or ``>`` inside the highlight).
    """
    lead = set(markers.escape) | set(markers.start)
    out: list[Span] = []
    prev_end = 0
    for s, e in regions:
        while s > prev_end and text[s - 1] in lead:
            s -= 1
        if e > s and text[s:e].strip():
            out.append((s, e))
            prev_end = e
    return out


def mark_up(
    text: str,
    spans: Sequence[Span],
    markers: Markers | None = DEFAULT_MARKERS,
    *,
    per_word: bool = False,
) -> tuple[str, list[Span]]:
    """Wrap ``spans`` of ``text`` in ``markers``; return the marked text and the exact spans it encodes.

    The returned spans are what the engine will highlight after removing the markers (they can differ
    from ``spans`` by a character at an edge, see :func:`_safe_regions`); the clean text is always
    exactly ``text``.
    """
    if markers is None:
        raise SekaError("mark_up needs markers (the model was loaded with markers=None)")
    for s, e in spans:
        if not 0 <= s <= e <= len(text):
            raise HighlightError(f"span ({s}, {e}) is out of range for a text of {len(text)} characters")
    regions = merge_spans([(s, e) for s, e in spans if e > s])
    if per_word:
        regions = [w for s, e in regions for w in _word_spans(text, s, e)]
    regions = _safe_regions(text, regions, markers)
    pieces: list[str] = []
    pos = 0
    for s, e in regions:
        pieces += [escape_markers(text[pos:s], markers), mark_highlight(text[s:e], markers)]
        pos = e
    pieces.append(escape_markers(text[pos:], markers))
    marked = "".join(pieces)
    clean, found = parse_markers(marked, markers)
    if clean != text:  # pragma: no cover - a bug, not a user error
        raise SekaError("internal error: marked-up text does not parse back to the original")
    return marked, found


def _marker_tokens(text: str, markers: Markers) -> list[tuple[int, str]]:
    """Positions of unescaped start / end markers, as the engine's parser scans them."""
    return [(pos, kind) for kind, pos, _ in marker_events(text, markers) if kind != "text"]


def merge_whitespace_gaps(text: str, spans: Sequence[Span]) -> list[Span]:
    """Merge highlight spans separated only by whitespace (undoes per-word marking)."""
    merged: list[list[int]] = []
    for s, e in merge_spans(spans):
        if merged and not text[merged[-1][1] : s].strip():
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def parse_lenient(
    text: str, markers: Markers | None = DEFAULT_MARKERS, *, merge_gaps: bool = True
) -> tuple[str, list[Span]]:
    """Like the engine's marker parser, but tolerant of text cut out of a larger marked text.

    A marker without its partner (a chunk boundary fell inside a marked run), an empty or blank
    ``<< >>`` and a nested one are kept as literal text rather than raising. With ``merge_gaps`` highlights separated only by
    whitespace become one span.
    """
    if markers is None:
        return text, []
    try:
        clean, spans = parse_markers(text, markers)
    except HighlightError:
        if not markers.escape:
            raise
        tokens = _marker_tokens(text, markers)
        keep: set[int] = set()
        open_at: int | None = None
        for pos, kind in tokens:
            if kind == "start":
                open_at = pos  # an earlier unclosed start becomes literal
            elif open_at is not None:
                if text[open_at + len(markers.start) : pos].strip():  # not an empty or blank <<  >>
                    keep.update((open_at, pos))
                open_at = None
        out, last = [], 0
        for pos, _kind in tokens:
            if pos in keep:
                continue
            out.append(text[last:pos])
            out.append(markers.escape)
            last = pos
        out.append(text[last:])
        clean, spans = parse_markers("".join(out), markers)
    if merge_gaps:
        spans = merge_whitespace_gaps(clean, spans)
    return clean, spans


_SENTENCE_END = re.compile(r"[.!?。！？]+[\"'”’)\]]*(?=\s|$)|\n")


def sentence_spans(text: str) -> list[Span]:
    """Character spans of the sentences of ``text`` (ends at . ! ? followed by space, and at newlines).

    A deliberately simple splitter: abbreviations such as "e.g. this" split too.
    """
    spans: list[Span] = []

    def add(s: int, e: int) -> None:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))

    start = 0
    for m in _SENTENCE_END.finditer(text):
        add(start, m.start() if m.group(0) == "\n" else m.end())
        start = m.end()
    add(start, len(text))
    return spans


def is_scored_document(value: Any) -> bool:
    """A ``(Document, score)`` pair, as ``similarity_search_with_score`` returns (by duck typing)."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(getattr(value[0], "page_content", None), str)
            and isinstance(value[1], numbers.Real) and not isinstance(value[1], bool))  # numpy scores too


def _as_list(value: Any, one: bool, what: str) -> list[Any]:
    """``value`` as a list: ``[]`` for None, ``[value]`` when it is ``one`` item, else its items; a value that is
    no list-like collection is a :class:`~seka_rag.SekaError` saying ``what`` was expected."""
    if value is None:
        return []
    if one:
        return [value]
    if isinstance(value, (Mapping, bytes)) or not isinstance(value, Iterable):
        raise SekaError(f"{what}, got {type(value).__name__}")
    return list(value)


def as_document_list(documents: Any, single: tuple[type, ...] = ()) -> list[Any]:
    """``documents=`` as a list: a lone document becomes a list of one.

    A lone document is a string, a LangChain ``Document`` (anything with a ``page_content`` string),
    a ``(Document, score)`` pair, or an instance of one of the ``single`` types (the caller's own
    document types, e.g. LlamaIndex nodes). Without this a string would be read character by
    character, and a pydantic document field by field. ``None`` gives ``[]``; anything else that is
    not a list-like collection is a :class:`~seka_rag.SekaError`.
    """
    one = (isinstance(documents, str) or isinstance(getattr(documents, "page_content", None), str)
           or is_scored_document(documents) or bool(single and isinstance(documents, single)))
    return _as_list(documents, one, "documents= takes a document or a list of documents (LangChain Documents, "
                                    "(Document, score) pairs or strings)")


def as_highlight_list(highlights: Any) -> list[Any]:
    """``highlights=`` as a list: one substring becomes a list of one; ``None`` gives ``[]``.

    Anything that is not a string or a list-like collection (of substrings or spans) is a
    :class:`~seka_rag.SekaError`, instead of a ``TypeError`` from deep inside.
    """
    items = _as_list(highlights, isinstance(highlights, str),
                     "highlights= takes a substring, or a list of substrings or spans")
    nested = next((h for h in items if isinstance(h, (list, tuple)) and h and all(isinstance(x, str) for x in h)), None)
    if nested is not None:  # [["a"], ["b"]]: one list per input, as the engine's generate takes for a batch
        raise SekaError(
            f"highlights= is one list for the whole call (batch() gives every input the same one), but it holds "
            f"a list ({nested!r}); for a highlight per input, mark it inline in each input (<<...>>), or put "
            "SekaHighlight before the prompt in the chain"
        )
    return items


#: the message roles inline markers may be read in (an assistant message is the model's own text)
MARKER_ROLES = ("system", "user", "tool")


def as_marker_roles(value: Any) -> tuple[str, ...]:
    """A ``marker_roles`` setting checked: a role or a list of roles among :data:`MARKER_ROLES`
    (``developer`` counts as system, ``function`` as tool). Raises ``ValueError`` otherwise."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(r, str) for r in value):
        raise ValueError(f"marker_roles takes a list of roles, e.g. ('system', 'user'), got {value!r}")
    value = [{"developer": "system", "function": "tool"}.get(r, r) for r in value]
    unknown = [r for r in value if r not in MARKER_ROLES]
    if unknown:
        raise ValueError(f"marker_roles {unknown} are not roles markers can be read in; choose from "
                         f"{', '.join(MARKER_ROLES)} (an assistant message is always read literally)")
    return tuple(dict.fromkeys(value))


def as_markers(value: Any, *, allow_model: bool = True, allow_none: bool = True) -> Any:
    """A ``markers`` setting checked and normalised: a ``Markers``, a ``(start, end)`` or ``(start, end,
    escape)`` tuple of strings (made a ``Markers``), ``None`` (no inline markers; if ``allow_none``) or
    ``"model"`` (the model's own; if ``allow_model``). Raises ``ValueError`` (pydantic reports it as a
    validation error) for anything else."""
    if isinstance(value, Markers) or (value is None and allow_none) or (allow_model and value == "model"):
        return value
    if isinstance(value, (tuple, list)) and len(value) in (2, 3) and all(isinstance(v, str) for v in value):
        return Markers(*value)  # raises HighlightError (a ValueError) for empty or equal strings
    allowed = ["'model'"] * allow_model + ["None"] * allow_none + ["a Markers", "a (start, end) or (start, end, escape) tuple of strings"]
    raise ValueError(f"markers must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")


def document_text(document: Any) -> str:
    """The text of a LangChain ``Document`` (or a ``(Document, score)`` pair) or a string.

    Read by duck typing (``page_content``), so the LlamaIndex side needs no LangChain import.
    """
    if isinstance(document, tuple) and document and isinstance(getattr(document[0], "page_content", None), str):
        document = document[0]  # (document, score) from similarity_search_with_score
    if isinstance(getattr(document, "page_content", None), str):
        return document.page_content
    if isinstance(document, str):
        return document
    raise SekaError(
        f"documents= takes LangChain Documents, (Document, score) pairs or strings, "
        f"got {type(document).__name__}"
    )


def texts_in_prompt(texts: Sequence[str], contents: Sequence[str],
                    markers: Markers | None = DEFAULT_MARKERS) -> list[str]:
    """Substring highlights for documents' ``texts``, each of which must occur in one of ``contents``.

    ``contents`` are the prompt's marker-free texts; empty documents are skipped.
    """
    out = []
    for i, text in enumerate(texts):
        text = text.strip()
        if not text:
            continue
        if not any(text in c for c in contents):
            shown = text if len(text) <= 60 else text[:57] + "..."
            held = [m for m in ((markers.start, markers.end) if markers is not None else ()) if m in text]
            hint = (f"; it holds the highlight marker {held[0]!r}, which the prompt read as markup: insert it "
                    "with seka_rag.escape_markers(text) (or seka_rag.mark_highlight(text) to highlight it)"
                    if held else "")
            raise HighlightError(
                f"document {i} ({shown!r}) does not occur in the prompt, so it cannot be highlighted; "
                f"put the documents' text in the prompt unchanged (or pass highlights= instead){hint}"
            )
        out.append(text)
    return out
