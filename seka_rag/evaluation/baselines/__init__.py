"""Baselines for the side-by-side evaluation: prompt-only emphasis, PASTA and SPA — our own implementations.

* :mod:`.prompting` — the highlighted text emphasised visibly in the prompt (``**…**`` or an
  ``IMPORTANT:`` note), no steering.
* :mod:`.pasta` — PASTA (Zhang et al., 2023): in selected heads, the attention to non-highlighted
  prompt tokens is scaled by α and renormalised; a registered attention function
  (``"seka_pasta"``: eager attention in the layers with selected heads, SDPA elsewhere), heads
  chosen by profiling on synthetic dev items.
* :mod:`.spa` — SPA (Tian & Zhang, 2024): logits interpolated between the prompt and the prompt with
  the highlighted tokens masked; two forward passes per step.
* :mod:`.methods` — every method (also unsteered, SEKA, AdaSEKA) behind one interface for
  scoring task-family items and generating.

Importing this package registers the ``"seka_pasta"`` attention implementation with transformers.
"""

from ._common import BaselineConfigError
from .methods import (
    Method,
    Pasta,
    PromptEmphasis,
    Seka,
    Spa,
    Unsteered,
    evaluate_family_with,
    generate_with,
    score_items_with,
)
from .pasta import (
    DEFAULT_ALPHA,
    PASTA_ATTENTION,
    PASTA_ATTENTION_EAGER,
    HeadProfile,
    PastaConfig,
    PastaUnsupportedError,
    pasta,
    pasta_active,
    pasta_attention,
    pasta_generate,
    pasta_score,
    pasta_scorer,
    profiling_items,
    select_pasta_heads,
)
from .prompting import STYLES, emphasize_item, emphasize_items, emphasize_prompt
from .spa import DEFAULT_STRENGTH, SpaConfig, spa_generate, spa_score, spa_scorer

__all__ = [
    "BaselineConfigError",
    "DEFAULT_ALPHA",
    "DEFAULT_STRENGTH",
    "HeadProfile",
    "Method",
    "PASTA_ATTENTION",
    "PASTA_ATTENTION_EAGER",
    "Pasta",
    "PastaConfig",
    "PastaUnsupportedError",
    "PromptEmphasis",
    "STYLES",
    "Seka",
    "Spa",
    "SpaConfig",
    "Unsteered",
    "emphasize_item",
    "emphasize_items",
    "emphasize_prompt",
    "evaluate_family_with",
    "generate_with",
    "pasta",
    "pasta_active",
    "pasta_attention",
    "pasta_generate",
    "pasta_score",
    "pasta_scorer",
    "profiling_items",
    "score_items_with",
    "select_pasta_heads",
    "spa_generate",
    "spa_score",
    "spa_scorer",
]
