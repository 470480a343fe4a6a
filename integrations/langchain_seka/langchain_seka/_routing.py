"""Hand the retriever's query embedding to AdaSEKA's embedding router (framework-free).

A retrieval pipeline has already embedded the question once (the retriever needs the vector to
search). :func:`remember_query` records that ``(query text, query embedding)`` pair in a context
variable — LlamaIndex's :class:`~llama_index.postprocessor.seka_highlight.SekaHighlightPostprocessor`
does so for every query bundle it sees — and :func:`automatic_routing` gives it back to the LLM
wrapper at call time, so the embedding router needs no second embedding.

It is used only when it plainly belongs to the call: the call's router is ``"embedding"``, the call
passes no ``query=`` / ``query_embedding=`` of its own, and the prompt contains the remembered query
text (a response synthesizer's prompt does). A vector of another size than the expert prototypes
(the index uses another embedding model) is not passed; the query *text* is, and the engine embeds
it once with the prototypes' model; so is it when the retrieval had no vector to share (LlamaIndex's
async retrievers keep theirs off the query bundle). Values live in a :class:`~contextvars.ContextVar`:
a thread or asyncio task sees only what was remembered in its own context (or the context it was
started from); at most :data:`MAX_REMEMBERED` queries are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

__all__ = ["MAX_REMEMBERED", "automatic_routing", "clear_queries", "recall_query", "remember_query"]

#: How many recent (query, embedding) pairs a context keeps (several retrievals may precede a synthesis).
MAX_REMEMBERED = 8

_Entry = tuple[str, tuple[float, ...] | None]
_RECENT: ContextVar[tuple[_Entry, ...]] = ContextVar("seka_retrieval_queries", default=())


def remember_query(query: str | None, embedding: Sequence[float] | None = None) -> None:
    """Record a retrieval's query text and (when it has one) its query embedding in this context."""
    if not isinstance(query, str) or not query.strip():
        return
    vector = None
    if embedding is not None:
        try:
            vector = tuple(float(x) for x in embedding)
        except (TypeError, ValueError):
            vector = None
        if not vector:
            vector = None
    kept = tuple(e for e in _RECENT.get() if e[0] != query)
    _RECENT.set(((query, vector), *kept)[:MAX_REMEMBERED])


def clear_queries() -> None:
    """Forget every remembered query of this context."""
    _RECENT.set(())


def recall_query(prompt_text: str | Sequence[str]) -> tuple[str, list[float] | None] | None:
    """The newest remembered query whose text occurs in ``prompt_text`` (a text, or several: e.g. a
    chat's message contents); None if none does.

    The newest, not the longest: an earlier query also occurs in a prompt that quotes it (a retrieved
    FAQ entry, a chat history), and the request being answered is the one retrieved last.
    """
    texts = [prompt_text] if isinstance(prompt_text, str) else list(prompt_text)
    for query, vector in _RECENT.get():  # newest first
        if any(query in t for t in texts):
            return query, None if vector is None else list(vector)
    return None


def automatic_routing(model: Any, engine_kwargs: dict[str, Any], prompt_text: str | Sequence[str]) -> dict[str, Any]:
    """``query_embedding=`` (or ``query=``) for the engine from the remembered retrieval, or ``{}``.

    ``engine_kwargs`` are the call's routing arguments (see ``_settings.routing_kwargs``); nothing is
    added when they already name a query, when the effective router (theirs, else the model's
    default) is not ``"embedding"``, when no remembered query occurs in the prompt, or when the model
    has no expert prototypes (the engine then reports that itself).
    """
    if "query" in engine_kwargs or "query_embedding" in engine_kwargs:
        return {}
    router = engine_kwargs.get("router")
    if router is None:
        router = getattr(model, "router", None)
    if not isinstance(router, str) or router != "embedding":
        return {}
    experts = getattr(model, "experts", None)
    if experts is None or not experts.has_prototypes:
        return {}
    found = recall_query(prompt_text)
    if found is None:
        return {}
    query, vector = found
    if vector is not None and len(vector) == int(experts.prototypes().shape[1]):
        return {"query_embedding": vector}
    return {"query": query}
