"""PASTA (Zhang et al., 2023, "Tell Your Model Where to Attend"): our own, framework-free implementation.

In selected (layer, query head) pairs, the attention probabilities of every query to the
**non-highlighted prompt tokens** are multiplied by ``alpha`` (0 < α ≤ 1) and each row is
renormalised. That is exactly adding ``log α`` to the attention logits of those key positions
before the softmax, which is what this module does::

    softmax(s + log α · [k is a non-highlighted prompt token] · [head selected])

How it hooks attention (transformers ≥ 5)
    Importing this module registers an attention function named :data:`PASTA_ATTENTION`
    (``"seka_pasta"``) in ``transformers.AttentionInterface`` and SDPA's mask builder under the
    same name in ``transformers.masking_utils.AttentionMaskInterface``. When a PASTA call is active
    in the current context and the module is a decoder layer with selected heads, the function
    turns the mask into an additive float one, adds the per-head bias (batch, heads, 1, keys) and
    runs the family's own ``eager_attention_forward`` (so Gemma's scaling and soft-capping,
    sliding-window masks, GQA ``repeat_kv`` are all the model's own code). Every other call —
    layers without selected heads, and calls outside a PASTA block — runs transformers' SDPA
    kernel, exactly as the model would without PASTA. A model whose own attention is eager is
    switched to the twin :data:`PASTA_ATTENTION_EAGER` (``"seka_pasta_eager"``) instead, which
    keeps eager attention and eager's masks wherever PASTA does not steer.

    PASTA must materialise the attention logits of the layers it steers, so SDPA / FlashAttention
    kernels cannot run those layers: they pay eager attention's time and its (batch, heads,
    queries, keys) memory, the others do not. :func:`pasta` switches the model to one of the two on
    entry (``set_attn_implementation``) and back to its previous implementation when the last
    PASTA block on that model exits (reference counted, thread-safe). While any PASTA block is
    open, *other* calls on the same model (other threads) run the model's own kernel family in
    every layer (SDPA for a model on flash attention: equal up to float rounding). Load the model
    with ``attn_implementation="seka_pasta"`` (after importing this module) to skip the switching
    altogether.

Which keys, which queries
    Every query — the prompt's during prefill and each generated token's during decoding — has its
    attention to the prompt's non-highlighted tokens scaled. Tokens after the prompt (generated
    tokens, or the continuation being scored) are never scaled: like the reference implementation,
    which edits the attention mask over ``[:input_len]`` only. Scoring therefore equals generation.

Head selection
    :func:`select_pasta_heads` profiles every (layer, head) alone on a small set of synthetic items
    (by default :func:`profiling_items`: the *dev* split of the conflict evaluation, disjoint by
    entity from every test item) and ranks heads by how much steering that head alone raises the
    highlighted answer's margin log p(target) − log p(other) — the paper's model profiling, with
    margins in place of task accuracy.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...architectures import decoder_layers, geometry, layer_module
from ...errors import HighlightError, UnsupportedModelError
from ...highlight import EncodedPrompt, pad_batch
from ...steering import expand_rows
from ._common import (
    prepare_generation,
    _DEFAULT,
    BaselineConfigError,
    Row,
    check_batch_size,
    check_real,
    cut_at_stop,
    forward_logits,
    joined_rows,
    prompt_positions,
    reject_extra,
    require_highlight,
    score_rows,
)
from ..scoring import continuation_ids

#: Name of the attention implementation this module registers with transformers (layers PASTA does
#: not steer run SDPA, with SDPA's masks).
PASTA_ATTENTION = "seka_pasta"
#: The same for a model whose own attention is eager: layers PASTA does not steer stay eager, with
#: eager's float masks (so a forward that outlives the switch back to eager still gets its masks).
PASTA_ATTENTION_EAGER = "seka_pasta_eager"
_PASTA_NAMES = (PASTA_ATTENTION, PASTA_ATTENTION_EAGER)

#: The paper's scaling coefficient.
DEFAULT_ALPHA = 0.01

#: ``heads=``: "all" or {layer: [query heads]}.
PastaHeads = str | Mapping[int, Sequence[int]]


class PastaUnsupportedError(UnsupportedModelError):
    """The model cannot run PASTA: its attention does not go through transformers' AttentionInterface."""


# ---------------------------------------------------------------------------------------------
# Configuration


def _check_alpha(alpha: Any) -> float:
    a = check_real("alpha", alpha)
    if not 0 < a <= 1:
        raise BaselineConfigError(
            f"alpha must be in (0, 1]: the factor applied to the attention of non-highlighted tokens "
            f"(1 = no steering, the paper uses {DEFAULT_ALPHA}), got {alpha!r}"
        )
    return a


def _normalise_heads(heads: Any) -> str | dict[int, tuple[int, ...]]:
    if isinstance(heads, str):
        if heads != "all":
            raise BaselineConfigError(f"heads must be 'all' or {{layer: [query heads]}}, got {heads!r}")
        return heads
    if not isinstance(heads, Mapping):
        raise BaselineConfigError(f"heads must be 'all' or {{layer: [query heads]}}, got {type(heads).__name__}")
    out: dict[int, tuple[int, ...]] = {}
    for layer, hs in heads.items():
        if isinstance(layer, str) and layer.lstrip("-").isdigit():  # keys read back from JSON
            layer = int(layer)
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise BaselineConfigError(f"heads must map layer indices to head lists, got layer {layer!r}")
        if isinstance(hs, (str, bytes)) or not isinstance(hs, Sequence | set | range | frozenset):
            raise BaselineConfigError(f"heads[{layer}] must be a list of query head indices, got {hs!r}")
        for h in hs:
            if isinstance(h, bool) or not isinstance(h, numbers.Integral):
                raise BaselineConfigError(f"heads[{layer}] must hold integer head indices, got {h!r}")
        if hs:
            out[int(layer)] = tuple(sorted({int(h) for h in hs}))
    if not out:
        raise BaselineConfigError("heads selects no head: give at least one {layer: [heads]} entry, or 'all'")
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class PastaConfig:
    """PASTA's settings: the scaling ``alpha`` and the steered ``heads``.

    ``alpha`` in (0, 1] multiplies the attention of non-highlighted prompt tokens (1: no effect;
    the paper's default 0.01). ``heads`` is ``"all"`` (every query head of every layer: the paper
    shows this hurts; use a profiled selection) or ``{layer: [query head indices]}``, e.g.
    :meth:`HeadProfile.config`. Query heads, not KV heads: with grouped-query attention each query
    head is steered on its own.
    """

    alpha: float = DEFAULT_ALPHA
    heads: PastaHeads = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        object.__setattr__(self, "heads", _normalise_heads(self.heads))

    def head_table(self, num_layers: int, num_heads: int) -> dict[int, tuple[int, ...]]:
        """``{layer: heads}`` for a model of ``num_layers`` layers and ``num_heads`` query heads; checks ranges."""
        if self.heads == "all":
            return {layer: tuple(range(num_heads)) for layer in range(num_layers)}
        for layer, hs in self.heads.items():
            if not 0 <= layer < num_layers:
                raise BaselineConfigError(f"the heads name layer {layer}, but this model has layers 0..{num_layers - 1} "
                                          "(heads profiled on another model? `seka-rag profile-pasta` profiles this one)")
            bad = [h for h in hs if not 0 <= h < num_heads]
            if bad:
                raise BaselineConfigError(
                    f"head {bad[0]} of layer {layer} is out of range: the model has query heads 0..{num_heads - 1}"
                )
        return dict(self.heads)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (layer keys as strings)."""
        heads = self.heads if isinstance(self.heads, str) else {str(k): list(v) for k, v in self.heads.items()}
        return {"alpha": self.alpha, "heads": heads}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PastaConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(alpha=data.get("alpha", DEFAULT_ALPHA), heads=data.get("heads", "all"))


# ---------------------------------------------------------------------------------------------
# The attention function


@dataclass
class PastaState:
    """One PASTA call: which modules are steered, the per-head bias, and which keys it applies to."""

    model: nn.Module
    modules: dict[int, int]  #: id(attention module) → layer index
    head_bias: dict[int, torch.Tensor]  #: layer → (query heads,) float32: log α where selected, else 0
    penalised: torch.Tensor  #: (batch, tokens) bool: non-highlighted prompt tokens
    seen: dict[int, int] = field(default_factory=dict)  #: layer → tokens processed so far (decoding)

    def bias(self, layer: int, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor | None:
        """The additive (batch, heads, 1, keys) bias of one attention call, or None if the layer is not steered."""
        head_bias = self.head_bias.get(layer)
        if head_bias is None:
            return None
        q_len, k_len = query.shape[2], key.shape[2]
        # Absolute index one past the last key. A call whose keys are all its own queries starts
        # from an empty cache (a prefill); a decode step appends its queries to what came before.
        end = k_len if q_len == k_len else self.seen.get(layer, 0) + q_len
        self.seen[layer] = end
        start = end - k_len
        if start < 0:
            raise BaselineConfigError(
                "PASTA found cached keys that were not computed inside this PASTA block; start the "
                "block before the prompt's prefill"
            )
        pen = expand_rows(self.penalised, query.shape[0]).to(query.device)
        width = pen.shape[1]
        cols = torch.zeros((pen.shape[0], k_len), dtype=torch.bool, device=query.device)
        hi = min(end, width)
        if hi > start:  # the keys that are prompt positions (a sliding-window cache may have dropped some)
            cols[:, : hi - start] = pen[:, start:hi]
        hb = head_bias.to(device=query.device)
        return cols[:, None, None, :].to(hb.dtype) * hb[None, :, None, None]


_ACTIVE_PASTA: ContextVar[PastaState | None] = ContextVar("seka_active_pasta", default=None)

_EAGER: dict[type, Callable] = {}


def _eager_function(module: nn.Module) -> Callable:
    """The family's own ``eager_attention_forward`` (defined in the module's modeling file)."""
    cls = type(module)
    fn = _EAGER.get(cls)
    if fn is None:
        fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if fn is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as fn
        _EAGER[cls] = fn
    return fn


def _additive_mask(attention_mask: torch.Tensor | None, module: nn.Module, query: torch.Tensor,
                   key: torch.Tensor) -> torch.Tensor | None:
    """The mask as eager attention needs it: additive float, causal when the module is causal.

    PASTA attention builds SDPA's masks (boolean, or None meaning "causal" — or, for a layer
    within its sliding window, "causal"); a steered layer converts them here. A float mask (a
    forward started under eager attention) passes through.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    if attention_mask is None:
        if q_len == 1 or not getattr(module, "is_causal", False):
            return None
        allowed = torch.ones((q_len, k_len), dtype=torch.bool, device=query.device).tril(k_len - q_len)
        attention_mask = allowed[None, None]
    if attention_mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=query.dtype, device=query.device)
        attention_mask = torch.where(attention_mask, zero, torch.finfo(query.dtype).min)
    return attention_mask


def _steered_or(unsteered: Callable, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Any):
    """Eager attention plus PASTA's per-head bias in a steered layer; ``unsteered`` attention anywhere else."""
    state = _ACTIVE_PASTA.get()
    layer = None if state is None else state.modules.get(id(module))
    bias = None if layer is None else state.bias(layer, query, key)
    if bias is None:  # not steered here: the kernel the model runs without PASTA
        return unsteered(module, query, key, value, attention_mask, **kwargs)
    attention_mask = _additive_mask(attention_mask, module, query, key)
    if attention_mask is None:
        attention_mask = bias.to(query.dtype)
    else:
        attention_mask = attention_mask[..., : key.shape[2]] + bias.to(attention_mask.dtype)
    return _eager_function(module)(module, query, key, value, attention_mask, **kwargs)


def _pasta_forward(name: str, unsteered: Callable[[nn.Module], Callable], doc: str) -> Callable:
    """An attention function for transformers: PASTA in steered layers, ``unsteered(module)`` elsewhere."""

    def forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return _steered_or(unsteered(module), module, query, key, value, attention_mask, **kwargs)

    forward.__name__ = forward.__qualname__ = name
    forward.__doc__ = doc
    return forward


#: Eager attention plus PASTA's per-head bias in a steered layer, else SDPA (registered as ``"seka_pasta"``).
pasta_attention_forward = _pasta_forward(
    "pasta_attention_forward", lambda module: _sdpa_function(),
    "Eager attention plus PASTA's per-head bias in a steered layer, else SDPA (registered as ``\"seka_pasta\"``).")
#: The same with eager attention where PASTA does not steer (registered as ``"seka_pasta_eager"``).
pasta_eager_attention_forward = _pasta_forward(
    "pasta_eager_attention_forward", lambda module: _eager_function(module),
    "As :func:`pasta_attention_forward`, with eager attention where PASTA does not steer (``\"seka_pasta_eager\"``).")


def _sdpa_function() -> Callable:
    """The attention function transformers runs for ``"sdpa"`` (any override registered under that name included)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def register_pasta_attention() -> None:
    """Register :data:`PASTA_ATTENTION` and :data:`PASTA_ATTENTION_EAGER` with transformers (idempotent; done on import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(PASTA_ATTENTION, pasta_attention_forward)
    AttentionMaskInterface.register(PASTA_ATTENTION, sdpa_mask)
    AttentionInterface.register(PASTA_ATTENTION_EAGER, pasta_eager_attention_forward)
    AttentionMaskInterface.register(PASTA_ATTENTION_EAGER, eager_mask)


register_pasta_attention()


# ---------------------------------------------------------------------------------------------
# Switching a model to the PASTA attention function


def _hf(model) -> nn.Module:
    return getattr(model, "model", model) if not isinstance(model, nn.Module) else model


_MODULES: "weakref.WeakKeyDictionary[nn.Module, dict[int, int]]" = weakref.WeakKeyDictionary()


def _attention_modules(hf: nn.Module) -> dict[int, int]:
    """id(decoder attention module) → layer index."""
    got = _MODULES.get(hf)
    if got is None:
        spec = geometry(hf).spec
        path = spec.key_module.rsplit(".", 1)[0]  # "self_attn.k_proj" → "self_attn"
        got = {id(layer_module(layer, path)): i for i, layer in enumerate(decoder_layers(hf))}
        _MODULES[hf] = got
    return got


def _implementations(hf: nn.Module) -> list[str]:
    """``config._attn_implementation`` as each decoder attention module sees it."""
    spec = geometry(hf).spec
    path = spec.key_module.rsplit(".", 1)[0]
    return [getattr(layer_module(layer, path).config, "_attn_implementation", None) for layer in decoder_layers(hf)]


_SWITCH_LOCK = threading.Lock()
_SWITCHED: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()  # model → [count, previous]


def _set_implementation(hf: nn.Module, name: str) -> None:
    setter = getattr(hf, "set_attn_implementation", None)
    if setter is None:
        raise PastaUnsupportedError(
            f"{type(hf).__name__} has no set_attn_implementation (transformers >= 5 needed); load it with "
            f"attn_implementation={PASTA_ATTENTION!r} after importing seka_rag.evaluation.baselines"
        )
    try:
        setter(name)
    except (ValueError, KeyError, ImportError) as exc:
        raise PastaUnsupportedError(f"could not switch {type(hf).__name__} to {name!r} attention: {exc}") from None


@contextmanager
def pasta_attention(model) -> Iterator[None]:
    """Run the block with the model on PASTA's attention function, then restore its own.

    :data:`PASTA_ATTENTION` for a model on SDPA (or any other implementation),
    :data:`PASTA_ATTENTION_EAGER` for a model on eager attention: either way, layers PASTA does not
    steer keep the model's kernel family and masks. Reference counted per model: the first block to
    enter switches, the last to leave restores the previous implementation. Raises
    :class:`PastaUnsupportedError` when the model's attention does not dispatch through
    ``AttentionInterface``.
    """
    hf = _hf(model)
    with _SWITCH_LOCK:
        entry = _SWITCHED.get(hf)
        if entry is None:
            previous = _implementations(hf)[0]
            if previous not in _PASTA_NAMES:
                target = PASTA_ATTENTION_EAGER if previous == "eager" else PASTA_ATTENTION
                _set_implementation(hf, target)
                if any(impl != target for impl in _implementations(hf)):
                    _set_implementation(hf, previous)
                    raise PastaUnsupportedError(
                        f"{type(hf).__name__} does not dispatch attention through transformers' "
                        "AttentionInterface, so PASTA cannot bias its attention"
                    )
            entry = _SWITCHED[hf] = [0, previous]
        entry[0] += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _SWITCHED[hf]
                if entry[1] not in _PASTA_NAMES:
                    _set_implementation(hf, entry[1])


# ---------------------------------------------------------------------------------------------
# The per-call context manager


def _check_config(config: Any) -> PastaConfig:
    if config is None:
        return PastaConfig()
    if isinstance(config, PastaConfig):
        return config
    if isinstance(config, Mapping):
        return PastaConfig(**config)
    raise BaselineConfigError(f"config must be a PastaConfig (or a dict of its fields), got {type(config).__name__}")


@contextmanager
def pasta(
    model,
    highlight_mask: torch.Tensor,
    config: PastaConfig | Mapping[str, Any] | None = None,
    *,
    prompt_mask: torch.Tensor | None = None,
) -> Iterator[PastaState]:
    """Context manager: PASTA-steer every forward of ``model`` (a :class:`~seka_rag.SekaModel`) in the block.

    ``highlight_mask`` (batch, tokens) marks the highlighted tokens of the (left-padded) batch the
    block runs; ``prompt_mask`` (same shape, default: every position) marks which positions are
    prompt — positions outside it (a scored continuation) and tokens generated later are never
    scaled. Like :meth:`SekaModel.steering`, the state lives in a :class:`contextvars.ContextVar`:
    concurrent threads each see their own call, and nothing stays active after the block (also
    after an exception). Raises :class:`HighlightError` when no token is highlighted.
    """
    cfg = _check_config(config)
    hf = _hf(model)
    geom = geometry(hf)
    table = cfg.head_table(geom.num_layers, geom.num_query_heads)
    if not isinstance(highlight_mask, torch.Tensor) or highlight_mask.dim() != 2:
        raise HighlightError("highlight_mask must be a (batch, tokens) tensor")
    device = next(hf.parameters()).device
    highlight = highlight_mask.to(device=device, dtype=torch.bool)
    if not bool(highlight.any()):
        raise HighlightError("PASTA needs a highlight: no token of the batch is highlighted")
    penalised = ~highlight
    if prompt_mask is not None:
        if tuple(prompt_mask.shape) != tuple(highlight.shape):
            raise HighlightError(f"prompt_mask has shape {tuple(prompt_mask.shape)}, expected {tuple(highlight.shape)}")
        penalised &= prompt_mask.to(device=device, dtype=torch.bool)
    log_alpha = math.log(cfg.alpha)
    head_bias = {}
    for layer, hs in table.items():
        b = torch.zeros(geom.num_query_heads, dtype=torch.float32, device=device)
        b[list(hs)] = log_alpha
        head_bias[layer] = b
    state = PastaState(hf, _attention_modules(hf), head_bias, penalised)
    with pasta_attention(hf):
        token = _ACTIVE_PASTA.set(state)
        try:
            yield state
        finally:
            _ACTIVE_PASTA.reset(token)


def pasta_active() -> bool:
    """Whether a PASTA call is active in the current context (for tests and diagnostics)."""
    return _ACTIVE_PASTA.get() is not None


# ---------------------------------------------------------------------------------------------
# Scoring and generation


def pasta_score(
    model,
    rows: Sequence[Row],
    config: PastaConfig | Mapping[str, Any] | None = None,
    *,
    batch_size: int = 8,
    **extra: Any,
) -> list[float]:
    """Like :meth:`SekaModel.score_encoded` (summed log-probs per (prompt, continuation) row), with PASTA.

    Every prompt needs a highlighted token. Each chunk of ``batch_size`` rows is one forward pass.
    """
    reject_extra("PASTA", extra)
    cfg = _check_config(config)
    require_highlight([enc for enc, _ in rows], "PASTA")

    def logits(batch, keep, chunk):
        with pasta(model, batch.highlight_mask, cfg, prompt_mask=prompt_positions(batch, [len(i) for _, i in chunk])):
            return forward_logits(model, batch, keep)

    return score_rows(model, rows, batch_size, logits)


def pasta_scorer(model, config: PastaConfig | Mapping[str, Any] | None = None) -> Callable[..., list[float]]:
    """``score_encoded``-compatible scorer for :func:`seka_rag.evaluation.families.score_items` (``scorer=``)."""
    cfg = _check_config(config)

    def scorer(rows: Sequence[Row], *, batch_size: int = 8, **extra: Any) -> list[float]:
        return pasta_score(model, rows, cfg, batch_size=batch_size, **extra)

    return scorer


def pasta_generate(
    model,
    prompt: Any,
    highlights: Any = None,
    *,
    config: PastaConfig | Mapping[str, Any] | None = None,
    max_new_tokens: int = 64,
    chat: bool | None = None,
    markers: Any = _DEFAULT,
    stop: str | Sequence[str] | None = None,
    batch_size: int = 8,
) -> str | list[str]:
    """Greedy continuation of ``prompt`` (or each of a list of prompts, batched) with PASTA.

    Same conventions as :meth:`SekaModel.generate`: highlights inline (``<< >>``) or as
    ``highlights=``, one entry per prompt for a list; the new text only, cut at ``stop``.
    """
    cfg = _check_config(config)
    single, encoded, stops, bs = prepare_generation(
        model, prompt, highlights, max_new_tokens=max_new_tokens, chat=chat, markers=markers, stop=stop,
        batch_size=batch_size, method="PASTA",
    )
    pad = model.tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(encoded), bs):
        batch = pad_batch(encoded[start : start + bs], pad, side="left").to(model.device)
        with torch.inference_mode(), pasta(model, batch.highlight_mask, cfg):
            ids = model.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                num_return_sequences=1, num_beams=1, use_cache=True, return_dict_in_generate=False,
                tokenizer=model.tokenizer,  # as SekaModel.generate: whatever the checkpoint's generation config asks
            )
        new = ids[:, batch.input_ids.shape[1] :]
        out.extend(cut_at_stop(t, stops) for t in model.tokenizer.batch_decode(new, skip_special_tokens=True))
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# Head selection by profiling


def profiling_items(n: int = 16, seed: int = 0) -> list:
    """``n`` PASTA profiling items from the conflict evaluation's **dev** split (never a test entity).

    Returned as :class:`~seka_rag.evaluation.families.FamilyItem` (family ``"conflict"``): each dev
    item's four cases (both document orders × either document highlighted), so the unsteered
    mean margin is zero and a head scores only by following the highlight.
    """
    from ..families import conflict_family_items

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BaselineConfigError(f"n must be a positive integer, got {n!r}")
    return conflict_family_items(n, seed, split="dev")


@dataclass
class HeadProfile:
    """Result of :func:`select_pasta_heads`: each head's effect and the selected heads.

    ``scores[(layer, head)]`` is the mean margin gain (nats) over the profiling items when PASTA
    steers that head alone with ``alpha``, relative to ``baseline`` (the unsteered mean margin);
    ``selected`` the ``top`` best heads as (layer, head, score), best first.
    """

    alpha: float
    proxy: str
    n_items: int
    baseline: float
    scores: dict[tuple[int, int], float]
    selected: list[tuple[int, int, float]]

    def ranking(self) -> list[tuple[int, int, float]]:
        """Every profiled head as (layer, head, score), best first (ties: lower layer, then head)."""
        return sorted(((l, h, s) for (l, h), s in self.scores.items()), key=lambda r: (-r[2], r[0], r[1]))

    @property
    def heads(self) -> dict[int, list[int]]:
        """The selected heads as ``{layer: [heads]}`` (PastaConfig's ``heads``)."""
        out: dict[int, list[int]] = {}
        for layer, head, _ in sorted(self.selected):
            out.setdefault(layer, []).append(head)
        return out

    def config(self, alpha: float | None = None, top: int | None = None) -> PastaConfig:
        """A :class:`PastaConfig` steering the selected heads (or the ``top`` best) with ``alpha`` (default: the profiled one)."""
        chosen = self.selected if top is None else self.ranking()[: check_top(top)]
        heads: dict[int, list[int]] = {}
        for layer, head, _ in chosen:
            heads.setdefault(layer, []).append(head)
        return PastaConfig(alpha=self.alpha if alpha is None else alpha, heads=heads)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (see :meth:`save`)."""
        return {
            "alpha": self.alpha, "proxy": self.proxy, "n_items": self.n_items, "baseline": self.baseline,
            "selected": [list(s) for s in self.selected],
            "scores": [[l, h, s] for (l, h), s in sorted(self.scores.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HeadProfile":
        """Inverse of :meth:`to_dict`."""
        return cls(
            alpha=float(data["alpha"]), proxy=str(data["proxy"]), n_items=int(data["n_items"]),
            baseline=float(data["baseline"]),
            scores={(int(l), int(h)): float(s) for l, h, s in data["scores"]},
            selected=[(int(l), int(h), float(s)) for l, h, s in data["selected"]],
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as JSON (the lead runs profiling once per model and reuses it)."""
        Path(path).expanduser().write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HeadProfile":
        """Read a profile written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).expanduser().read_text(encoding="utf-8")))


PROXIES = ("divergence", "full")


def check_top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise BaselineConfigError(f"top must be a positive integer, got {top!r}")
    return top


def _divergence_rows(model, items: Sequence[Any]) -> list[tuple[EncodedPrompt, int, int]]:
    """Per item: prompt + the answers' common prefix, and the first tokens where the answers differ."""
    rows = []
    for i, item in enumerate(items):
        t, o = continuation_ids(model, item.target), continuation_ids(model, item.others[0])
        j = 0
        while j < min(len(t), len(o)) and t[j] == o[j]:
            j += 1
        if j == min(len(t), len(o)):
            raise BaselineConfigError(
                f"item {i}: answers {item.target!r} and {item.others[0]!r} do not differ in a token both have "
                "(one is a prefix of the other); use proxy='full'"
            )
        enc = model.encode(item.prompt, [item.highlight], max_length=model.context_window - j)
        joined = joined_rows([(enc, t[:j])])[0]
        rows.append((joined, t[j], o[j]))
    return rows


def select_pasta_heads(
    model,
    items: Sequence[Any] | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    top: int = 8,
    layers: Sequence[int] | None = None,
    proxy: str = "divergence",
    batch_size: int = 8,
    progress: bool = True,
) -> HeadProfile:
    """Profile each (layer, query head) alone with PASTA and select the ``top`` heads that help most.

    ``items`` are :class:`~seka_rag.evaluation.families.FamilyItem`-like objects (``prompt``,
    ``highlight``, ``target``, ``others``; only ``others[0]`` is used); default
    :func:`profiling_items` (16 conflict dev cases). A head's score is the mean, over items, of
    the margin log p(target) − log p(other) with PASTA on that head alone, minus the unsteered
    mean margin. ``proxy="divergence"`` (default, cheap): one forward of the prompt plus the
    answers' common prefix per item, and the margin of the first token where the two answers
    differ; ``proxy="full"``: both whole answers scored (two rows per item). ``layers`` restricts
    the profiled layers (default all). Cost: layers × heads × ⌈rows / batch_size⌉ forward passes.
    """
    alpha = _check_alpha(alpha)
    top = check_top(top)
    bs = check_batch_size(batch_size)
    if proxy not in PROXIES:
        raise BaselineConfigError(f"proxy must be one of {PROXIES}, got {proxy!r}")
    if items is None:
        items = profiling_items()
    items = list(items)
    if not items:
        raise BaselineConfigError("no profiling items")
    for i, item in enumerate(items):
        if not getattr(item, "others", None):
            raise BaselineConfigError(f"profiling item {i} has no competing answer")
    geom = geometry(_hf(model))
    if layers is None:
        layers = list(range(geom.num_layers))
    else:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence | range | set):
            raise BaselineConfigError(f"layers must be a list of layer indices, got {layers!r}")
        layers = sorted({int(l) for l in layers})
        bad = [l for l in layers if not 0 <= l < geom.num_layers]
        if bad or not layers:
            raise BaselineConfigError(f"layers must be indices in 0..{geom.num_layers - 1}, got {bad or 'none'}")
    candidates = [(l, h) for l in layers for h in range(geom.num_query_heads)]
    if top > len(candidates):
        raise BaselineConfigError(f"top={top} but only {len(candidates)} heads are profiled")

    if proxy == "divergence":
        rows = _divergence_rows(model, items)
        pad = model.tokenizer.pad_token_id
        batches = [(pad_batch([r[0] for r in rows[s : s + bs]], pad, side="left").to(model.device),
                    torch.tensor([r[1] for r in rows[s : s + bs]]), torch.tensor([r[2] for r in rows[s : s + bs]]))
                   for s in range(0, len(rows), bs)]
        require_highlight([r[0] for r in rows], "PASTA")

        def mean_margin(cfg: PastaConfig | None) -> float:
            total = 0.0
            for batch, t, o in batches:
                with torch.inference_mode():
                    if cfg is None:
                        with pasta_attention(model):  # the model's own kernel in every layer (no PASTA call)
                            logits = forward_logits(model, batch, 1)
                    else:
                        with pasta(model, batch.highlight_mask, cfg):
                            logits = forward_logits(model, batch, 1)
                lp = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
                total += float((lp.gather(1, t[:, None]) - lp.gather(1, o[:, None])).sum())
            return total / len(rows)
    else:
        from ..families import score_items

        def mean_margin(cfg: PastaConfig | None) -> float:
            if cfg is None:
                with pasta_attention(model):
                    margins = score_items(model, items, batch_size=bs, progress=False, shared_prefix=False, steer=False)
            else:
                margins = score_items(model, items, batch_size=bs, progress=False, scorer=pasta_scorer(model, cfg))
            return sum(margins) / len(margins)

    baseline = mean_margin(None)
    scores: dict[tuple[int, int], float] = {}
    iterator: Any = candidates
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(candidates, desc="PASTA head profiling", leave=False)
    for layer, head in iterator:
        scores[(layer, head)] = mean_margin(PastaConfig(alpha=alpha, heads={layer: [head]})) - baseline
    ranking = sorted(((l, h, s) for (l, h), s in scores.items()), key=lambda r: (-r[2], r[0], r[1]))
    return HeadProfile(alpha=alpha, proxy=proxy, n_items=len(items), baseline=baseline, scores=scores,
                       selected=ranking[:top])


__all__ = [
    "DEFAULT_ALPHA",
    "PASTA_ATTENTION",
    "PASTA_ATTENTION_EAGER",
    "HeadProfile",
    "PastaConfig",
    "PastaState",
    "PastaUnsupportedError",
    "pasta",
    "pasta_active",
    "pasta_attention",
    "pasta_attention_forward",
    "pasta_eager_attention_forward",
    "pasta_generate",
    "pasta_score",
    "pasta_scorer",
    "profiling_items",
    "register_pasta_attention",
    "select_pasta_heads",
]
