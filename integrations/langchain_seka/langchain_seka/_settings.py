"""Generation settings shared by every wrapper (LangChain ``ChatSeka`` / ``SekaLLM``, LlamaIndex ``Seka``).

A pydantic mixin: the fields, their per-call overrides, and the translation into keyword arguments of
:meth:`SekaModel.generate` / :meth:`SekaModel.stream`. Framework-free (pydantic only).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from seka_rag import SekaError, SekaModel

from ._loading import model_label, resolve_model

#: Per-call keyword arguments that override a setting of the same name (``max_tokens`` is an alias).
OVERRIDABLE = (
    "max_new_tokens", "do_sample", "temperature", "top_p", "gain_pos", "gain_neg",
    "layers", "heads", "steer", "chat_template",
)

__all__ = ["OVERRIDABLE", "SekaSettings", "routing_kwargs", "usage_counts"]


class SekaSettings(BaseModel):
    """The SEKA generation settings every wrapper exposes as fields."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=())

    model: Any = Field(
        default=None,
        description="A SekaModel, or the name of a shared model (an embedded model such as "
        "'smollm2-135m', or one registered with register_model). None: the default embedded model. "
        "Loaded lazily on first use and shared by every wrapper naming it.",
    )
    max_new_tokens: int = Field(default=256, ge=1, alias="max_tokens", description="Most tokens to generate.")
    do_sample: bool | None = Field(
        default=None, description="Sample instead of greedy decoding. None: sample when temperature > 0."
    )
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature (sampling only).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass (sampling only).")
    stop: list[str] | None = Field(default=None, description="Stop sequences: output is cut at the first one.")
    gain_pos: float | None = Field(default=None, description="SEKA g+ (None: the projection's default).")
    gain_neg: float | None = Field(default=None, description="SEKA g- (None: the projection's default).")
    layers: list[int] | None = Field(default=None, description="Layers to edit (None: the projection's).")
    heads: Any = Field(default=None, description="KV heads to edit: None, 'all' or {layer: [heads]}.")
    steer: bool = Field(default=True, description="False: ignore every highlight (plain generation).")
    chat_template: bool | None = Field(
        default=None,
        description="Format prompts with the tokenizer's chat template (the engine's chat=; "
        "None: when the tokenizer has one).",
    )
    router: Any = Field(
        default=None,
        description="AdaSEKA embedding router, passed to the engine once it accepts one. The engine "
        "has no router yet: setting this raises NotImplementedError at call time.",
    )
    batch_size: int = Field(default=8, ge=1, description="Rows per forward pass in batched generation.")

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: Any) -> Any:
        if value is None or isinstance(value, (str, SekaModel)):
            return value
        raise ValueError(f"model must be a SekaModel or a model name, got {type(value).__name__}")

    @field_serializer("model")
    def _serialize_model(self, value: Any) -> str:
        return model_label(value)

    # ------------------------------------------------------------------------------ helpers
    @property
    def model_name(self) -> str:
        """Name of the model, without loading it."""
        return model_label(self.model)

    def seka_model(self, override: SekaModel | str | None = None) -> SekaModel:
        """The model to run (``override``: a per-call ``model=``), loading a shared one on first use."""
        return resolve_model(self.model if override is None else override)

    def generation_kwargs(self, overrides: dict[str, Any] | None = None, stop: list[str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``SekaModel.generate`` / ``stream`` (without prompt and highlights).

        ``overrides`` holds per-call values (keys of :data:`OVERRIDABLE`, or ``max_tokens``);
        ``stop`` given per call replaces the ``stop`` setting.
        """
        overrides = dict(overrides or {})
        if "max_tokens" in overrides:
            overrides.setdefault("max_new_tokens", overrides.pop("max_tokens"))
        unknown = sorted(set(overrides) - set(OVERRIDABLE))
        if unknown:
            raise SekaError(
                f"unknown argument(s) {', '.join(unknown)}; per-call settings are "
                f"{', '.join(OVERRIDABLE)}, max_tokens, stop, highlights, query_embedding and model"
            )
        values = {name: getattr(self, name) for name in OVERRIDABLE}
        values.update(overrides)
        do_sample = values["do_sample"]
        if do_sample is None:
            do_sample = values["temperature"] is not None and values["temperature"] > 0
        values["do_sample"] = bool(do_sample)
        values["stop"] = list(self.stop or []) if stop is None else list(stop)
        if not values["stop"]:
            values["stop"] = None
        values["chat"] = values.pop("chat_template")  # the engine's name
        return values


def _accepts(method: Callable, name: str) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return name in params


def routing_kwargs(method: Callable, router: Any = None, query_embedding: Any = None) -> dict[str, Any]:
    """The AdaSEKA routing hook: pass ``router`` / ``query_embedding`` to the engine if it takes them.

    The engine (``seka_rag``) has no embedding router yet; until it does, asking for routing raises
    :class:`NotImplementedError` instead of silently steering without it. Nothing is faked here:
    once ``SekaModel.generate`` / ``stream`` accept ``router=`` / ``query_embedding=``, the values are
    passed through unchanged.
    """
    extras: dict[str, Any] = {}
    for name, value in (("router", router), ("query_embedding", query_embedding)):
        if value is None:
            continue
        if not _accepts(method, name):
            raise NotImplementedError(
                f"{name}= needs AdaSEKA's query-embedding router, which this version of seka_rag "
                f"does not provide ({getattr(method, '__qualname__', method)} takes no {name!r}); "
                "leave it unset for plain SEKA steering"
            )
        extras[name] = value
    return extras


def usage_counts(
    model: SekaModel,
    prompt: Any,
    highlights: Any,
    *,
    chat: bool | None,
    max_new_tokens: int,
    text: str,
    **encode_kwargs: Any,
) -> dict[str, int]:
    """Token counts of one call: prompt tokens as the model saw them, generated tokens, highlighted tokens.

    The prompt is re-encoded exactly as the engine encodes it (same truncation); the output count is
    the tokenizer's count of the returned text, at most ``max_new_tokens`` (the engine returns
    text, not token ids, so this is an estimate when decoding is not reversible).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = model.encode(
            prompt, highlights, chat=chat, max_length=max(1, model.context_window - max_new_tokens), **encode_kwargs
        )
    output = len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    output = min(output, max_new_tokens)  # re-tokenising decoded text can overshoot (e.g. partial UTF-8)
    return {
        "input_tokens": len(enc.input_ids),
        "output_tokens": output,
        "total_tokens": len(enc.input_ids) + output,
        "highlighted_tokens": int(sum(enc.highlight)),
    }
