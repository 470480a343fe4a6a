"""LlamaIndex node postprocessor of seka-rag: ``from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor``."""

from llama_index.postprocessor.seka_highlight.base import SekaHighlightPostprocessor

__all__ = ["SekaHighlightPostprocessor"]
