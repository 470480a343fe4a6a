"""Embedded offline models and the GGUF conversion cache."""

from .embedded import (
    CACHE_ENV,
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    cache_root,
    embedded_model,
    ensure_converted,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_root",
    "embedded_model",
    "ensure_converted",
]
