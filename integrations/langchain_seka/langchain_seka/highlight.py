"""Retriever → highlight adapter: choose the evidence to highlight and format it as marked-up context.

:class:`SekaHighlight` is a runnable. Its input is ``{"question": ..., "documents": [...]}`` — the
documents exactly as any retriever returns them (``Document`` objects, ``(Document, score)`` pairs
from ``similarity_search_with_score``, or strings). Its output is the input dict plus:

``context``
    the documents formatted one after another, the chosen parts wrapped in the engine's inline
    markers (``<<`` ``>>``; marker strings inside documents are escaped) — drop it into any prompt
    template and ``ChatSeka`` highlights exactly those parts;
``context_text``
    the same context without markers;
``highlight_spans``
    ``(start, end)`` character spans of ``context_text`` that are highlighted;
``highlights``
    the highlighted texts;
``highlighted_documents``
    indices of the documents with a highlight;
``question_text``
    the question as given, when it is a string. ``question`` itself comes back with any marker
    strings in it escaped (``1 \\<< 4``), so the model reads it literally, not as a highlight.

The documents are written in the order they arrive (a retriever's: best first). ``order_by`` names a
metadata key to sort them by first (ascending; e.g. each passage's original position, so the context
keeps a fixed order and the retriever only decides what is highlighted); ``documents`` and
``highlighted_documents`` then follow that order. Scores travel with their documents, so the
selection is the same either way.

So it composes in LCEL::

    chain = (
        {"question": RunnablePassthrough(), "documents": retriever}
        | SekaHighlight(policy="top_k", k=1)
        | prompt            # uses {context} and {question}
        | ChatSeka()
    )

(or ``SekaHighlight(...).with_retriever(retriever) | prompt | ChatSeka()``). A bare list of
documents (``retriever | highlight``) works for the ``top_k`` / ``threshold`` / ``all`` policies;
the ``sentences`` policy needs the question.

Policies (see :mod:`langchain_seka._select`): ``"top_k"`` (the ``k`` best documents by retriever
score, by rank without scores), ``"threshold"`` (documents whose score passes ``threshold``),
``"sentences"`` (the ``k`` sentences most similar to the question, optionally only those with
cosine similarity ``>= threshold``), ``"all"``, ``"none"``.
"""

from __future__ import annotations

import decimal
import numbers
import string
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.documents import Document
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnableSerializable,
)
from pydantic import ConfigDict, Field, field_validator, model_validator

from seka_rag import Markers, SekaError
from seka_rag.highlight import DEFAULT_MARKERS, merge_spans

from ._select import check_policy, select
from ._text import as_markers, document_text, escape_markers, mark_up

__all__ = ["SCORE_KEYS", "SekaHighlight"]

#: Metadata keys searched, in order, for a retriever score when ``score_key`` is not set.
SCORE_KEYS = ("score", "relevance_score", "similarity_score", "similarity", "_score", "distance")


def _as_score(value: Any) -> float | None:
    """A metadata value as a score: any real number (NumPy's and 0-d tensors' included), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, numbers.Real) or isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a 0-d torch / NumPy array
        item = value.item()
        return float(item) if isinstance(item, numbers.Real) and not isinstance(item, bool) else None
    return None


def _as_list(documents: Any) -> list:
    """The documents of one input as a list: a lone string, Document or (Document, score) pair counts as one."""
    if documents is None:
        return []
    if isinstance(documents, (str, Document)) or (
            isinstance(documents, tuple) and len(documents) == 2 and isinstance(documents[0], Document)
            and _as_score(documents[1]) is not None):  # one (Document, score) pair, not two documents
        return [documents]
    return list(documents)


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return ""


class SekaHighlight(RunnableSerializable[Any, dict]):
    """Format retrieved documents as context and mark the evidence to highlight (see the module doc)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    policy: Literal["top_k", "threshold", "sentences", "all", "none"] = Field(
        default="top_k", description="What to highlight."
    )
    k: int = Field(default=1, ge=1, description="top_k: documents to highlight; sentences: sentences to highlight.")
    threshold: float | None = Field(
        default=None,
        description="threshold: minimum retriever score (maximum if higher_is_better=False); top_k: the same, "
        "optional (the k best of the documents passing it); sentences: minimum cosine similarity in [-1, 1] "
        "(optional).",
    )
    score_key: str | None = Field(
        default=None, description=f"Metadata key of the retriever score (None: the first of {SCORE_KEYS} present)."
    )
    higher_is_better: bool | None = Field(
        default=None,
        description="False when the score is a distance, e.g. the (Document, score) pairs of FAISS's and Chroma's "
        "similarity_search_with_score. None: True, except for scores read from a 'distance' metadata key "
        "(lower is better there).",
    )
    encoder: Any = Field(
        default=None,
        description="sentences: a sentence-transformers model, LangChain Embeddings, model path or "
        "callable texts -> vectors (None: the offline all-MiniLM-L6-v2).",
    )
    document_template: str = Field(
        default="Document {index}: {content}",
        description="How one document is written: {index} (1-based), {content}, and metadata fields (a field "
        "no document has is an error; one some documents lack is left empty in those).",
    )
    separator: str = Field(default="\n", description="Between formatted documents.")
    order_by: str | None = Field(
        default=None,
        description="Metadata key to sort the documents by (ascending) before formatting, e.g. their "
        "original position; None keeps the order they arrive in. Does not change what is highlighted.",
    )
    markers: Markers | None = Field(
        default=DEFAULT_MARKERS,
        description="The inline markers written around the highlights: the model's (a Markers or a (start, end) "
        "pair, e.g. ('[[', ']]') with ChatSeka(markers=('[[', ']]'))), or None to leave the context unmarked "
        "and pass the output's 'highlights' to ChatSeka's highlights= instead.",
    )
    question_key: str = Field(
        default="question",
        description="Input key of the question (e.g. 'input' in create_retrieval_chain-style chains); it comes "
        "back under the same key with marker strings escaped.",
    )
    documents_key: str = Field(default="documents", description="Input key of the retrieved documents.")

    @field_validator("markers", mode="before")
    @classmethod
    def _check_markers(cls, value: Any) -> Any:
        return as_markers(value, allow_model=False)

    @model_validator(mode="after")
    def _check(self) -> "SekaHighlight":
        check_policy(self.policy, self.k, self.threshold)
        if self.document_template.count("{content}") != 1:
            raise SekaError("document_template must contain {content} exactly once")
        return self

    # ------------------------------------------------------------------------------ runnable
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict:
        """Format the retrieved documents in ``input`` and mark the evidence to highlight.

        Returns the input dict plus ``context`` (marked up), ``context_text``, the highlighted spans and
        the selection (see the module docstring)."""
        if kwargs:  # bind(k=2) / invoke(x, k=2): settings are fields here
            raise SekaError(f"SekaHighlight takes no per-call arguments ({', '.join(sorted(kwargs))}): its settings "
                            "are fields, e.g. SekaHighlight(policy='top_k', k=2)")
        return self._call_with_config(self._highlight, input, config, run_type="parser")

    def with_retriever(self, retriever: Runnable) -> Runnable:
        """``{"question": passthrough, "documents": retriever} | self``: question string in, output dict out.

        The input is the question string itself (what a retriever takes). For a dict input (a
        question beside history, say), compose it yourself:
        ``{"question": itemgetter("question"), "documents": itemgetter("question") | retriever,
        "history": itemgetter("history")} | highlight``.
        """

        def question_only(question: Any) -> Any:
            if not isinstance(question, str):
                raise SekaError(
                    f"with_retriever takes the question string (what the retriever reads), got "
                    f"{type(question).__name__}; for a dict input build the step yourself: "
                    f"{{{self.question_key!r}: itemgetter({self.question_key!r}), {self.documents_key!r}: "
                    f"itemgetter({self.question_key!r}) | retriever, ...}} | SekaHighlight(...)"
                )
            return question

        parallel = RunnableParallel({self.question_key: RunnablePassthrough(), self.documents_key: retriever})
        return RunnableLambda(question_only, name="question") | parallel | self

    # ------------------------------------------------------------------------------ work
    def _check_template_fields(self, docs: list[Document]) -> None:
        """Refuse a template field that no document has (a typo); one some documents lack is left empty there."""
        try:
            named = {f for _, f, _, _ in string.Formatter().parse(self.document_template) if f}
        except ValueError as exc:
            raise SekaError(f"document_template {self.document_template!r} is not a valid template: {exc}") from None
        have = set().union(*(d.metadata for d in docs)) if docs else set()
        unknown = sorted(f for f in named if f.split(".")[0].split("[")[0] not in have | {"index", "content"})
        if unknown and docs:
            raise SekaError(
                f"document_template names {', '.join('{' + f + '}' for f in unknown)}, which no document's metadata "
                f"has (their fields: {sorted(map(str, have))}); a field only some documents have is left empty in "
                "the others"
            )

    def _split_input(self, input: Any) -> tuple[dict, str | None, list]:
        if isinstance(input, dict):
            if self.documents_key not in input:
                # the documents under another name: the key whose value looks like documents
                listed = [str(k) for k, v in input.items() if k != self.question_key and _looks_like_documents(v)]
                hint = f"; set documents_key={listed[0]!r}" if len(listed) == 1 else ""
                raise SekaError(
                    f"SekaHighlight expects a dict with {self.documents_key!r} (and {self.question_key!r}); "
                    f"got keys {sorted(input)}{hint}"
                )
            others = sorted(str(k) for k in input if k != self.documents_key)
            if self.question_key not in input and others:  # the question under another name: never write "None"
                hint = f"; set question_key={others[0]!r}" if len(others) == 1 else ""
                raise SekaError(
                    f"SekaHighlight reads the question from {self.question_key!r}, which the input lacks "
                    f"(keys: {sorted(map(str, input))}){hint}"
                )
            return dict(input), input.get(self.question_key), _as_list(input[self.documents_key])
        if isinstance(input, Sequence) and not isinstance(input, str):
            return {}, None, list(input)
        raise SekaError(
            f"SekaHighlight expects {{{self.question_key!r}: ..., {self.documents_key!r}: [...]}} or a list "
            f"of documents, got {type(input).__name__}"
        )

    def _score(self, doc: Document, given: float | None) -> tuple[float | None, str | None]:
        """The document's score and where it came from (``None`` for a (Document, score) pair)."""
        if given is not None:
            return float(given), None
        keys = [self.score_key] if self.score_key else SCORE_KEYS
        for key in keys:
            value = _as_score(doc.metadata.get(key))
            if value is not None:
                return value, key
        return None, None

    def _direction(self, sources: list[str | None]) -> bool:
        """``higher_is_better`` for this call: the setting, or from the metadata keys the scores came from."""
        if self.higher_is_better is not None:
            return self.higher_is_better
        found = {k for k in sources if k is not None}
        if "distance" in found and len(found) > 1:
            raise SekaError(
                f"the documents' scores come from metadata keys {sorted(found)}, distances and similarities mixed: "
                "set score_key (and higher_is_better) to say which to use"
            )
        return found != {"distance"}

    def _ordered(self, docs: list[Document], scores: list[float | None]) -> tuple[list[Document], list[float | None]]:
        """``docs`` (and their scores) sorted by ``metadata[order_by]``, ties in arrival order."""
        key = self.order_by
        missing = [i for i, d in enumerate(docs) if key not in d.metadata]
        if missing:
            raise SekaError(
                f"order_by={key!r}: document {missing[0]} has no metadata[{key!r}]; "
                "give every document that key, or leave order_by unset"
            )
        try:
            order = sorted(range(len(docs)), key=lambda i: docs[i].metadata[key])
        except TypeError:
            raise SekaError(f"order_by={key!r}: the documents' metadata[{key!r}] values cannot be compared") from None
        return [docs[i] for i in order], [scores[i] for i in order]

    def _highlight(self, input: Any) -> dict:
        out, question, raw = self._split_input(input)
        docs: list[Document] = []
        scores: list[float | None] = []
        sources: list[str | None] = []
        for item in raw:
            given = None
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Document):
                item, given = item
            if isinstance(item, str):
                item = Document(page_content=item)
            if not isinstance(item, Document):
                raise SekaError(f"documents must be LangChain Documents, (Document, score) pairs or strings, got {type(item).__name__}")
            docs.append(item)
            score, source = self._score(item, given)
            scores.append(score)
            sources.append(source)
        if self.score_key and docs and all(s is None for s in scores) and self.policy in ("top_k", "threshold"):
            raise SekaError(f"score_key={self.score_key!r}: no document has a number under metadata[{self.score_key!r}] "
                            f"(their keys: {sorted(set().union(*(map(str, d.metadata) for d in docs)))})")
        if self.order_by is not None:
            docs, scores = self._ordered(docs, scores)

        selection = select(
            self.policy, [d.page_content for d in docs], scores, question=question, k=self.k,
            threshold=self.threshold, higher_is_better=self._direction(sources), encoder=self.encoder,
        )
        self._check_template_fields(docs)
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0
        for i, doc in enumerate(docs):
            if i:
                parts.append(self.separator)
                length += len(self.separator)
            fields = _Missing({k: v for k, v in doc.metadata.items() if isinstance(k, str)})
            fields.update(index=i + 1, content="\x00")
            try:
                block = string.Formatter().vformat(self.document_template, (), fields)
            except (IndexError, ValueError, AttributeError, KeyError) as exc:
                raise SekaError(f"document_template {self.document_template!r} is not a valid template: {exc}") from None
            before, _, after = block.partition("\x00")
            start = length + len(before)
            spans.extend((start + s, start + e) for s, e in selection.spans.get(i, []))
            parts += [before, doc.page_content, after]
            length += len(before) + len(doc.page_content) + len(after)
        context_text = "".join(parts)
        if self.markers is None:  # unmarked: the highlights travel as texts (highlights=)
            context, exact = context_text, merge_spans([(s, e) for s, e in spans if e > s])
        else:
            context, exact = mark_up(context_text, spans, self.markers)
        if isinstance(question, str):  # read literally by the model: a << in the question is not a highlight
            out["question_text"] = question
            question = escape_markers(question, self.markers)
        out.update(
            {
                self.question_key: question,
                self.documents_key: docs,
                "context": context,
                "context_text": context_text,
                "highlight_spans": exact,
                "highlights": [context_text[s:e] for s, e in exact],
                "highlighted_documents": selection.documents,
            }
        )
        if question is None and (not isinstance(input, dict) or self.question_key not in input):
            out.pop(self.question_key)
        return out


def _looks_like_documents(value: Any) -> bool:
    """Whether a chain value looks like documents: a Document, a (Document, score) pair, or a non-empty
    list of those (strings are too common a value to guess from)."""
    def one(v: Any) -> bool:
        return not isinstance(v, str) and _is_document(v)

    if isinstance(value, list) and value:
        return all(one(v) for v in value)
    return one(value)


def _is_document(value: Any) -> bool:
    try:
        document_text(value)  # the one place that says what a document is (duck-typed page_content)
    except SekaError:
        return False
    return True
