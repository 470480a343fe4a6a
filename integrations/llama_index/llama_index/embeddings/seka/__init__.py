"""Offline sentence-transformers embeddings for LlamaIndex: ``from llama_index.embeddings.seka import SentenceTransformerEmbedding``."""

try:
    from llama_index.embeddings.seka.base import SentenceTransformerEmbedding
except ModuleNotFoundError as exc:  # llama-index-core not installed: name the extra
    from seka_rag.errors import missing_extra

    raise missing_extra(exc, "llama_index.core", "llamaindex") from exc

__all__ = ["SentenceTransformerEmbedding"]
