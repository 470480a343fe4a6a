"""Shared plumbing of the baselines: validation errors, prompt encoding, row scoring, decoding helpers.

Every baseline scores ``(EncodedPrompt, continuation ids)`` rows exactly as
:meth:`seka_rag.SekaModel.score_encoded` does (prompt and continuation joined, left-padded batches,
summed log-probabilities of the continuation tokens), so its numbers line up with SEKA's and with
:func:`seka_rag.evaluation.families.score_items`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import HighlightError, SekaError, SteeringConfigError
from ...highlight import Batch, EncodedPrompt, pad_batch
from ...model import continuation_logprobs

#: One scored row: an encoded prompt and the token ids of a continuation.
Row = tuple[EncodedPrompt, list[int]]


class BaselineConfigError(SteeringConfigError):
    """Invalid settings of a baseline method (PASTA's α or heads, SPA's strength, a prompt style...)."""


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or :class:`BaselineConfigError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BaselineConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite float, or :class:`BaselineConfigError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise BaselineConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def reject_extra(method: str, extra: dict[str, Any]) -> None:
    """Baseline scorers take no SEKA steering keywords: say so instead of silently ignoring them."""
    if extra:
        raise BaselineConfigError(
            f"{method} does not take SEKA steering keywords ({', '.join(sorted(extra))}); "
            "score SEKA / AdaSEKA with model.score_encoded instead"
        )


def require_highlight(rows: Sequence[EncodedPrompt], method: str) -> None:
    """Raise :class:`HighlightError` unless every prompt has at least one highlighted token."""
    for i, enc in enumerate(rows):
        if not any(enc.highlight):
            raise HighlightError(
                f"{method} needs a highlight: prompt {i} has no highlighted token "
                "(pass highlights= or mark the text with << >>)"
            )


def joined_rows(rows: Sequence[Row]) -> list[EncodedPrompt]:
    """Prompt + continuation as one encoded row; continuation tokens are never highlighted."""
    return [
        EncodedPrompt(enc.input_ids + list(ids), enc.highlight + [False] * len(ids), enc.text, enc.truncated,
                      enc.routing_text)
        for enc, ids in rows
    ]


def forward_logits(model, batch: Batch, keep: int, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the last ``keep`` positions of a left-padded batch (``input_ids`` replaces the batch's ids)."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model.model(
        input_ids=batch.input_ids if input_ids is None else input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    return out.logits[:, -keep:]


def score_rows(
    model,
    rows: Sequence[Row],
    batch_size: int,
    logits_fn: Callable[[Batch, int, Sequence[Row]], torch.Tensor],
) -> list[float]:
    """Summed log-probabilities of each row's continuation, like ``SekaModel.score_encoded``.

    Rows are joined, split into chunks of ``batch_size`` (in the given order), left-padded and
    passed to ``logits_fn(batch, keep, chunk)``, which returns the (batch, keep, vocab) logits of
    the last ``keep`` positions; the log-softmax of those logits scores the continuation tokens.
    """
    bs = check_batch_size(batch_size)
    scores: list[float] = []
    for start in range(0, len(rows), bs):
        chunk = rows[start : start + bs]
        batch = pad_batch(joined_rows(chunk), model.tokenizer.pad_token_id, side="left").to(model.device)
        keep = max(len(ids) for _, ids in chunk) + 1
        with torch.inference_mode():
            logits = logits_fn(batch, keep, chunk)
        scores.extend(continuation_logprobs(logits[:, -keep:], [ids for _, ids in chunk]))
    return scores


def prompt_positions(batch: Batch, continuation_lengths: Sequence[int]) -> torch.Tensor:
    """(batch, tokens) bool: the prompt's positions of joined, left-padded rows (not the continuation's)."""
    width = batch.input_ids.shape[1]
    mask = torch.ones((len(continuation_lengths), width), dtype=torch.bool, device=batch.input_ids.device)
    for i, n in enumerate(continuation_lengths):
        if n:
            mask[i, width - n :] = False
    return mask


def encode_prompts(model, prompts: Sequence[Any], highlights: Sequence[Any] | None, *, reserve: int,
                   chat: bool | None, markers: Any) -> list[EncodedPrompt]:
    """Encode each prompt with ``model.encode`` leaving ``reserve`` tokens of the window free."""
    if highlights is None:
        highlights = [None] * len(prompts)
    elif isinstance(highlights, str) or len(highlights) != len(prompts):
        raise HighlightError(
            "for a list of prompts, highlights must be a list with one entry per prompt "
            "(each a list of highlights, or None)"
        )
    if reserve >= model.context_window:
        raise BaselineConfigError(
            f"max_new_tokens ({reserve}) leaves no room for the prompt in the model's window of "
            f"{model.context_window} tokens"
        )
    kw: dict[str, Any] = {"chat": chat, "max_length": model.context_window - reserve}
    if markers is not _DEFAULT:
        kw["markers"] = markers
    return [model.encode(p, h, **kw) for p, h in zip(prompts, highlights)]


class _Default:
    def __repr__(self) -> str:
        return "<model default>"


#: Sentinel: "use the model's own markers".
_DEFAULT: Any = _Default()


def prepare_generation(model, prompt: Any, highlights: Any, *, max_new_tokens: Any, chat: bool | None,
                       markers: Any, stop: Any, batch_size: Any, method: str):
    """Checked arguments of a baseline's greedy generation: (single, encoded prompts, stops, batch size)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BaselineConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    single = is_single_prompt(prompt)
    prompts = [prompt] if single else list(prompt)
    if single:
        highlights = [highlights]
    stops = stop_list(stop)
    encoded = encode_prompts(model, prompts, highlights, reserve=max_new_tokens, chat=chat, markers=markers)
    require_highlight(encoded, method)
    return single, encoded, stops, check_batch_size(batch_size)


def is_single_prompt(prompt: Any) -> bool:
    """A string or one chat conversation (a list of message dicts), as opposed to a list of prompts."""
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, Sequence) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list of non-empty strings, checked as :meth:`SekaModel.generate` checks it."""
    from ...model import _stop_list

    try:
        return _stop_list(stop)
    except SekaError as exc:
        raise BaselineConfigError(str(exc)) from None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` cut at the first occurrence of any stop string, as :meth:`SekaModel.generate` cuts it."""
    from ...model import _cut_at_stop

    return _cut_at_stop(text, stops)


def eos_ids(model) -> set[int]:
    """The EOS token ids greedy decoding stops at (the generation config's, as ``generate`` uses)."""
    eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def cache_argument(module) -> str:
    """Name of the forward argument taking a KV cache (``cache`` in recent transformers)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out) -> Any:
    """The KV cache a forward returned (``cache`` or, before the rename, ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache
