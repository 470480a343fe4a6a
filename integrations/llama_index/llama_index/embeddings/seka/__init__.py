"""Offline sentence-transformers embeddings for LlamaIndex: ``from llama_index.embeddings.seka import SentenceTransformerEmbedding``."""

from llama_index.embeddings.seka.base import SentenceTransformerEmbedding

__all__ = ["SentenceTransformerEmbedding"]
