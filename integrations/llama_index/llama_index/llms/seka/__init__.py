"""LlamaIndex LLM integration of seka-rag: ``from llama_index.llms.seka import Seka``."""

try:
    from llama_index.llms.seka.base import Seka
except ModuleNotFoundError as exc:  # llama-index-core not installed: name the extra
    from seka_rag.errors import missing_extra

    raise missing_extra(exc, "llama_index.core", "llamaindex") from exc

__all__ = ["Seka"]
