"""``SekaHighlightPostprocessor``: mark which retrieved nodes (or sentences in them) the Seka LLM highlights.

How the highlight reaches the LLM: a response synthesizer never hands nodes to the LLM, only
prompts built from node text — and the default ``compact`` mode joins the chunks and re-splits them
to fill the context window, ``refine`` re-splits oversized chunks, ``tree_summarize`` re-packs them.
So the postprocessor packs the highlight *into the text* in a split-proof way: each highlighted
whitespace-free run (word) is wrapped in the engine's markers on its own (``<<The>> <<tower>> <<is>>
<<in>> <<Rome.>>``). Every LlamaIndex splitter cuts at whitespace (characters only for a single
over-long word), so no cut can separate a marker from its partner, and overlapping chunks simply
repeat whole marked words. :class:`~llama_index.llms.seka.Seka` reads the markers back, merges
runs separated only by whitespace into one span, and keeps any marker whose partner was cut off as
literal text. Marker strings already in node text are escaped, so they are never mistaken for
highlights.

The node's metadata also records what was highlighted (``metadata["seka_highlights"]``, excluded
from the text the LLM and the embedder see). Nodes are copied, never modified in place, so the
docstore keeps the original text.

For AdaSEKA's embedding router, the postprocessor also remembers the query bundle's text and the
query embedding the retriever computed (``langchain_seka._routing.remember_query``, a context
variable): a :class:`~llama_index.llms.seka.Seka` call whose prompt contains that query text then
routes with the retriever's vector instead of embedding the question again.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from llama_index.core.bridge.pydantic import ConfigDict, Field, field_serializer, field_validator, model_validator
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import Document, MetadataMode, NodeWithScore, QueryBundle, TextNode

from langchain_seka._routing import remember_query
from langchain_seka._select import check_policy, select
from langchain_seka._text import as_markers, escape_markers, mark_up, merge_whitespace_gaps
from seka_rag import Markers, SekaError
from seka_rag.highlight import DEFAULT_MARKERS

__all__ = ["SekaHighlightPostprocessor"]


def _holds_text(node: Any) -> bool:
    """A node whose text the synthesizer writes into the prompt: a TextNode, or a Document (a plain Node
    subclass in llama-index-core 0.14, which an index built from documents retrieves as they are)."""
    text = getattr(node, "text", None)
    return isinstance(node, (TextNode, Document)) and isinstance(text, str) and bool(text.strip())


class SekaHighlightPostprocessor(BaseNodePostprocessor):
    """Choose the evidence to highlight among retrieved nodes; mark it for the Seka LLM.

    Policies: ``"top_k"`` (the ``k`` best nodes by retriever score, by rank without scores),
    ``"threshold"`` (nodes whose score is ``>= threshold``, or ``<=`` with
    ``higher_is_better=False``), ``"sentences"`` (the ``k`` sentences most similar to the query,
    only those with cosine similarity ``>= threshold`` when it is set; ``encoder`` as in
    ``langchain_seka.SekaHighlight``, default the offline all-MiniLM-L6-v2), ``"all"``, ``"none"``.
    Node order and scores are left unchanged. Every query bundle's text and retriever embedding are
    remembered for the Seka LLM's AdaSEKA embedding router (see the module docstring).

    Text the response synthesizer puts into the prompt reaches the model literally: marker strings
    (``x << 2``) in node texts, in the metadata the LLM sees, and — with ``escape_query`` (default) —
    in the query are escaped. The query is escaped in the query bundle itself, which the query
    engine hands on to the synthesizer; set ``escape_query=False`` if something other than the Seka
    LLM reads the bundle afterwards.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")  # a misspelt option is an error

    policy: Literal["top_k", "threshold", "sentences", "all", "none"] = Field(default="top_k")
    k: int = Field(default=1, ge=1, description="top_k: nodes; sentences: sentences.")
    threshold: float | None = Field(default=None, description="threshold: minimum score (maximum with higher_is_better=False); top_k: the same, optional (the k best passing it); sentences: minimum cosine similarity in [-1, 1].")
    higher_is_better: bool = Field(default=True, description="False when scores are distances.")
    encoder: Any = Field(default=None, exclude=True, description="Sentence encoder for the sentences policy.")
    markers: Markers = Field(
        default=DEFAULT_MARKERS,
        description="The inline markers the Seka LLM reads: a Markers or a (start, end) pair, the same as Seka's.",
    )
    metadata_key: str = Field(default="seka_highlights", description="Metadata key recording the highlighted texts.")
    escape_query: bool = Field(default=True, description="Escape marker strings in the query bundle's text.")

    @field_validator("markers", mode="before")
    @classmethod
    def _check_markers(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "markers=None: the postprocessor tells the Seka LLM what to highlight by marking the nodes' text, so "
                "it needs a marker pair; give it the same pair as Seka (e.g. ('[[', ']]') on both when texts hold "
                "code with << / >>)"
            )
        return as_markers(value, allow_model=False, allow_none=False)

    @field_serializer("markers")
    def _serialize_markers(self, value: Markers) -> list[str]:  # saved with to_dict / to_json, read back by from_dict
        return [value.start, value.end, value.escape]

    @model_validator(mode="after")
    def _check(self) -> "SekaHighlightPostprocessor":
        check_policy(self.policy, self.k, self.threshold)
        return self

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex records for this class when it serialises it."""
        return "SekaHighlightPostprocessor"

    @staticmethod
    def _remember(query_bundle: QueryBundle | None) -> None:
        """Keep the query text and the retriever's query embedding for the Seka LLM's embedding router."""
        if query_bundle is not None:
            remember_query(query_bundle.query_str, getattr(query_bundle, "embedding", None))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        self._remember(query_bundle)  # here, in the caller's context (the worker thread gets a copy)
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        self._remember(query_bundle)
        text_nodes = [i for i, n in enumerate(nodes) if _holds_text(n.node)]
        texts = [nodes[i].node.get_content(metadata_mode=MetadataMode.NONE) for i in text_nodes]
        scores = [nodes[i].score for i in text_nodes]
        question = query_bundle.query_str if query_bundle is not None else None
        if self.policy == "sentences" and (not question or not question.strip()) and texts:
            raise SekaError("the 'sentences' policy needs the query: call postprocess_nodes(nodes, query_str=...) "
                            "or pass query_bundle= (a query engine does this for you)")
        selection = select(
            self.policy, texts, scores, question=question, k=self.k, threshold=self.threshold,
            higher_is_better=self.higher_is_better, encoder=self.encoder,
        )
        self._escape_query(query_bundle)
        out = list(nodes)
        for j, i in enumerate(text_nodes):
            text, spans = texts[j], selection.spans.get(j)
            metadata = self._escaped_metadata(nodes[i].node)
            if spans:
                marked, exact = mark_up(text, spans, self.markers, per_word=True)
                out[i] = self._copy(nodes[i], marked, [text[s:e] for s, e in merge_whitespace_gaps(text, exact)],
                                    metadata)
            elif escape_markers(text, self.markers) != text or metadata:
                out[i] = self._copy(nodes[i], escape_markers(text, self.markers), None, metadata)
        return out

    def _escape_query(self, query_bundle: QueryBundle | None) -> None:
        """Escape the query's marker strings in place, once per bundle (see the class docstring)."""
        if not self.escape_query or query_bundle is None:
            return
        if getattr(query_bundle, "_seka_escaped", False):
            return
        query_bundle.query_str = escape_markers(query_bundle.query_str, self.markers)
        try:
            query_bundle._seka_escaped = True
        except AttributeError:  # pragma: no cover - a bundle type that takes no new attributes
            pass

    def _escaped_metadata(self, node: Any) -> dict[str, Any]:
        """The string metadata values the LLM sees whose marker strings need escaping, escaped."""
        hidden = set(getattr(node, "excluded_llm_metadata_keys", ()) or ())
        return {k: escape_markers(v, self.markers) for k, v in (getattr(node, "metadata", None) or {}).items()
                if k not in hidden and isinstance(v, str) and escape_markers(v, self.markers) != v}

    def _copy(self, item: NodeWithScore, text: str, highlights: list[str] | None,
              metadata: dict[str, Any] | None = None) -> NodeWithScore:
        node = item.node.model_copy()
        node.set_content(text)
        if metadata:
            node.metadata = {**node.metadata, **metadata}
        if highlights is not None:
            node.metadata = {**node.metadata, self.metadata_key: highlights}
            for attr in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
                keys = list(getattr(node, attr))
                if self.metadata_key not in keys:
                    keys.append(self.metadata_key)
                setattr(node, attr, keys)
        return NodeWithScore(node=node, score=item.score)

