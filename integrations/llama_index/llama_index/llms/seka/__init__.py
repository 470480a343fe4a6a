"""LlamaIndex LLM integration of seka-rag: ``from llama_index.llms.seka import Seka``."""

from llama_index.llms.seka.base import Seka

__all__ = ["Seka"]
