"""SPA (Tian & Zhang, 2024, "Selective Prompt Anchoring"): our own, framework-free implementation.

At every decoding step SPA runs the model twice — on the prompt as given, and on the prompt with
the highlighted ("anchor") tokens masked — and interpolates the two next-token logit vectors::

    logits = ω · logits(original) + (1 − ω) · logits(masked)
           = logits(masked) + ω · (logits(original) − logits(masked))

``ω`` (``strength``) = 1 gives exactly the unsteered model (the masked pass gets weight 0);
ω > 1 extrapolates along the anchors' contribution, amplifying their influence; 0 ≤ ω < 1 damps
it (ω = 0: the model without the anchors' content).

Masking
    The anchor tokens' **ids** are replaced by one mask token, the tokenizer's pad token by default
    (``mask_token_id=`` to choose another, e.g. an unk or a reserved token); positions, attention
    mask and the prompt's length are unchanged, so both passes see the same layout. The reference
    implementation replaces the anchors' *embeddings* with a mask embedding; a token id is the
    same operation with that token's embedding, and keeps both passes plain ``input_ids`` forwards
    (any attention kernel, KV caches as usual). A scored continuation and generated tokens are
    never masked.

Cost
    Two forward passes per scored chunk and per generated token, and two KV caches during
    generation: that is the method; benchmarks should report it (``SpaConfig.passes == 2``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...highlight import Batch, pad_batch
from ._common import (
    prepare_generation,
    _DEFAULT,
    BaselineConfigError,
    Row,
    cache_argument,
    check_real,
    cut_at_stop,
    eos_ids,
    forward_logits,
    output_cache,
    reject_extra,
    require_highlight,
    score_rows,
)

#: A moderate default amplification; tune ``strength`` on dev data for each model.
DEFAULT_STRENGTH = 1.5


@dataclass(frozen=True)
class SpaConfig:
    """SPA's settings: the interpolation ``strength`` ω ≥ 0 and the token the anchors are masked with.

    ``mask_token_id`` None means the tokenizer's pad token (EOS when it has none, as
    :class:`~seka_rag.SekaModel` sets it).
    """

    strength: float = DEFAULT_STRENGTH
    mask_token_id: int | None = None

    #: forward passes per scored chunk / generated token
    passes = 2

    def __post_init__(self) -> None:
        w = check_real("strength", self.strength)
        if w < 0:
            raise BaselineConfigError(
                f"strength must be >= 0 (1 = unsteered, > 1 amplifies the highlighted text), got {self.strength!r}"
            )
        object.__setattr__(self, "strength", w)
        m = self.mask_token_id
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 0):
            raise BaselineConfigError(f"mask_token_id must be a token id (a non-negative integer) or None, got {m!r}")

    def mask_id(self, model) -> int:
        """The token id anchors are replaced with on ``model``."""
        if self.mask_token_id is not None:
            size = getattr(model.model.get_input_embeddings(), "num_embeddings", None)
            if size is not None and self.mask_token_id >= size:
                raise BaselineConfigError(f"mask_token_id {self.mask_token_id} is outside the vocabulary ({size} tokens)")
            return self.mask_token_id
        return int(model.tokenizer.pad_token_id)


def _check_config(config: Any, strength: float | None = None) -> SpaConfig:
    if config is None:
        return SpaConfig() if strength is None else SpaConfig(strength=strength)
    if strength is not None:
        raise BaselineConfigError("pass strength= or config=, not both")
    if isinstance(config, SpaConfig):
        return config
    if isinstance(config, Mapping):
        return SpaConfig(**config)
    raise BaselineConfigError(f"config must be a SpaConfig (or a dict of its fields), got {type(config).__name__}")


def masked_ids(input_ids: torch.Tensor, highlight_mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``input_ids`` with every highlighted position replaced by ``mask_id``."""
    return torch.where(highlight_mask.to(input_ids.device).bool(), torch.full_like(input_ids, mask_id), input_ids)


def interpolate(original: torch.Tensor, masked: torch.Tensor, strength: float) -> torch.Tensor:
    """``ω · original + (1 − ω) · masked`` in float32 (exactly ``original`` for ω = 1)."""
    return original.float() * strength + masked.float() * (1.0 - strength)


def spa_score(
    model,
    rows: Sequence[Row],
    config: SpaConfig | Mapping[str, Any] | None = None,
    *,
    strength: float | None = None,
    batch_size: int = 8,
    **extra: Any,
) -> list[float]:
    """Like :meth:`SekaModel.score_encoded` (summed log-probs per (prompt, continuation) row), with SPA.

    The log-softmax is taken of the interpolated logits at every continuation position. Give
    ``config`` or just ``strength``. Every prompt needs a highlighted token.
    """
    reject_extra("SPA", extra)
    cfg = _check_config(config, strength)
    require_highlight([enc for enc, _ in rows], "SPA")
    mask_id = cfg.mask_id(model)

    def logits(batch: Batch, keep: int, chunk) -> torch.Tensor:
        original = forward_logits(model, batch, keep)
        masked = forward_logits(model, batch, keep, masked_ids(batch.input_ids, batch.highlight_mask, mask_id))
        return interpolate(original, masked, cfg.strength)

    return score_rows(model, rows, batch_size, logits)


def spa_scorer(model, config: SpaConfig | Mapping[str, Any] | None = None, *,
               strength: float | None = None) -> Callable[..., list[float]]:
    """``score_encoded``-compatible scorer for :func:`seka_rag.evaluation.families.score_items` (``scorer=``)."""
    cfg = _check_config(config, strength)

    def scorer(rows: Sequence[Row], *, batch_size: int = 8, **extra: Any) -> list[float]:
        return spa_score(model, rows, cfg, batch_size=batch_size, **extra)

    return scorer


def _prefill(model, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor):
    return model.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                       logits_to_keep=1)


def spa_generate(
    model,
    prompt: Any,
    highlights: Any = None,
    *,
    config: SpaConfig | Mapping[str, Any] | None = None,
    strength: float | None = None,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    markers: Any = _DEFAULT,
    stop: str | Sequence[str] | None = None,
    batch_size: int = 8,
) -> str | list[str]:
    """Greedy continuation of ``prompt`` (or each of a list of prompts, batched) with SPA.

    Two KV caches (original and masked prompt); at each step the next token is the argmax of the
    interpolated logits and is fed to both. Stops at the model's EOS (per row) or after
    ``max_new_tokens``; returns the new text only, cut at ``stop``. Same prompt / highlight
    conventions as :meth:`SekaModel.generate`.
    """
    cfg = _check_config(config, strength)
    single, encoded, stops, bs = prepare_generation(
        model, prompt, highlights, max_new_tokens=max_new_tokens, chat=chat, markers=markers, stop=stop,
        batch_size=batch_size, method="SPA",
    )
    mask_id = cfg.mask_id(model)
    pad = model.tokenizer.pad_token_id
    eos = eos_ids(model)
    cache_arg = cache_argument(model.model)
    texts: list[str] = []
    for start in range(0, len(encoded), bs):
        batch = pad_batch(encoded[start : start + bs], pad, side="left").to(model.device)
        n = batch.input_ids.shape[0]
        attention = batch.attention_mask
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generated = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=model.device)
        done = torch.zeros(n, dtype=torch.bool, device=model.device)
        with torch.inference_mode():
            orig = _prefill(model, batch.input_ids, attention, positions)
            mask = _prefill(model, masked_ids(batch.input_ids, batch.highlight_mask, mask_id), attention, positions)
            caches = (output_cache(orig), output_cache(mask))
            for step in range(max_new_tokens):
                logits = interpolate(orig.logits[:, -1], mask.logits[:, -1], cfg.strength)
                nxt = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits.argmax(-1))
                generated[:, step] = nxt
                if eos:
                    done |= torch.isin(nxt, torch.tensor(sorted(eos), device=nxt.device))
                if step == max_new_tokens - 1 or bool(done.all()):
                    break
                attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype, device=attention.device)], 1)
                positions = positions[:, -1:] + 1
                step_kw = dict(input_ids=nxt[:, None], attention_mask=attention, position_ids=positions, use_cache=True)
                orig = model.model(**step_kw, **{cache_arg: caches[0]})
                mask = model.model(**step_kw, **{cache_arg: caches[1]})
        for row in generated.tolist():
            keep = []
            for t in row:
                if t in eos:
                    break
                keep.append(t)
            texts.append(cut_at_stop(model.tokenizer.decode(keep, skip_special_tokens=True), stops))
    return texts[0] if single else texts


__all__ = [
    "DEFAULT_STRENGTH",
    "SpaConfig",
    "interpolate",
    "masked_ids",
    "spa_generate",
    "spa_score",
    "spa_scorer",
]
