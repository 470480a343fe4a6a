"""LlamaIndex node postprocessor of seka-rag: ``from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor``."""

try:
    from llama_index.postprocessor.seka_highlight.base import SekaHighlightPostprocessor
except ModuleNotFoundError as exc:  # llama-index-core not installed: name the extra
    from seka_rag.errors import missing_extra

    raise missing_extra(exc, "llama_index.core", "llamaindex") from exc

__all__ = ["SekaHighlightPostprocessor"]
