"""Generation settings shared by every wrapper (LangChain ``ChatSeka`` / ``SekaLLM``, LlamaIndex ``Seka``).

A pydantic mixin: the fields, their per-call overrides, and the translation into keyword arguments of
:meth:`SekaModel.generate` / :meth:`SekaModel.stream`. Framework-free (pydantic only).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from seka_rag import Markers, SekaError, SekaModel
from seka_rag import __version__ as seka_rag_version

from ._loading import loaded_model, model_label, resolve_model
from ._text import as_markers

#: Per-call keyword arguments that override a setting of the same name (``max_tokens`` is an alias).
OVERRIDABLE = (
    "max_new_tokens", "do_sample", "temperature", "top_p", "gain_pos", "gain_neg",
    "layers", "heads", "steer", "chat_template",
)

#: Per-call keyword arguments for AdaSEKA's router, passed to the engine (``router`` and ``routing``
#: override the fields of the same name; ``query`` / ``query_embedding`` exist only per call).
ROUTING_ARGS = ("router", "routing", "query", "query_embedding")

__all__ = ["OVERRIDABLE", "ROUTING_ARGS", "SekaSettings", "call_digest", "routing_kwargs", "usage_counts"]


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
        default=None, description="Sample instead of greedy decoding. None: sample when temperature > 0, or top_p is "
        "set without a temperature (temperature 0: greedy)."
    )
    temperature: float | None = Field(default=None, ge=0, description="Sampling temperature (sampling only).")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass (sampling only).")
    stop: list[str] | None = Field(default=None, description="Stop sequences: output is cut at the first one.")
    gain_pos: float | None = Field(default=None, description="SEKA g+ (None: the projection's default).")
    gain_neg: float | None = Field(default=None, description="SEKA g- (None: the projection's default).")
    layers: list[int] | None = Field(default=None, description="Layers to edit (None: the projection's).")
    heads: Any = Field(default=None, description="KV heads to edit: None, 'all' or {layer: [heads]} (exactly those heads; "
                                                "other layers are not edited).")
    steer: bool = Field(default=True, description="False: ignore every highlight (plain generation).")
    chat_template: bool | None = Field(
        default=None,
        description="Format prompts with the tokenizer's chat template (the engine's chat=; "
        "None: when the tokenizer has one).",
    )
    router: Any = Field(
        default=None,
        description="AdaSEKA router: 'attention' (the model's own last-token query), 'embedding' (a "
        "query embedding against the experts' prototypes), 'projection' (the single projection, no "
        "experts) or {expert: weight}. None: the model's default router. Needs a model with an "
        "expert set (adaptive=True, or a SekaModel loaded with SekaModel.default(name, "
        "adaptive=True) or experts=...). A router name is checked here; weights and the expert set are checked by "
        "the engine.",
    )
    routing: dict[str, Any] | None = Field(
        default=None,
        description="AdaSEKA router parameters (seka_rag.adaptive.RoutingConfig fields: gain, top_k, "
        "temperature, signed, embedding_gain, embedding_temperature, embedding_top1) over the expert set's defaults.",
    )
    adaptive: bool = Field(
        default=False,
        description="Load a model given by name with its AdaSEKA expert set "
        "(SekaModel.default(name, adaptive=True)), shared apart from the plain instance; with a "
        "SekaModel object, require that it has an expert set.",
    )
    batch_size: int = Field(default=8, ge=1, description="Rows per forward pass in batched generation.")
    markers: Any = Field(
        default="model",
        description="Inline highlight markers read in prompt text: 'model' (the model's own, << and >> unless it "
        "was loaded with others), a Markers or (start, end) pair (e.g. ('[[', ']]') when prompts hold code with "
        "<< / >>; give the highlighter the same pair), or None (no inline markers: text is taken literally; "
        "highlight with highlights= / documents=). An assistant message's text is always taken literally.",
    )

    @field_validator("markers")
    @classmethod
    def _check_markers(cls, value: Any) -> Any:
        return as_markers(value)

    @model_validator(mode="before")
    @classmethod
    def _one_length_setting(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_tokens" in data and "max_new_tokens" in data:
            raise ValueError("give max_tokens or max_new_tokens (the same setting), not both")
        return data

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # one sequence, as per call

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        if value is not None and not all(value):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("gain_pos", "gain_neg", "temperature")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        return value

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: Any) -> Any:
        if value is not None and (not value or any(i < 0 for i in value)):
            raise ValueError(f"layers must be a non-empty list of layer indices >= 0 (None: the projection's), got {value!r}")
        return value

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, value: Any) -> Any:
        if value is None or value == "all":
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"heads must be None, 'all' or {{layer: [KV heads]}}, got {value!r}")
        out = {}
        for key, heads in value.items():
            if isinstance(key, str) and key.strip().isdigit():  # a JSON / YAML config's keys are strings
                key = int(key)
            if isinstance(key, bool) or not isinstance(key, numbers.Integral):
                raise ValueError(f"heads: the keys are layer numbers, got {key!r}")
            if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
                raise ValueError(f"heads[{key}] must be a list of KV head numbers, got {heads!r}")
            out[int(key)] = heads
        return out

    @field_validator("router")
    @classmethod
    def _check_router(cls, value: Any) -> Any:
        from seka_rag.adaptive import ROUTERS

        if value is None or (isinstance(value, str) and value in ROUTERS) or isinstance(value, Mapping):
            return value
        raise ValueError(f"router must be one of {', '.join(map(repr, ROUTERS))} or an {{expert: weight}} dict, "
                         f"got {value!r}")

    @field_serializer("markers")
    def _serialize_markers(self, value: Any) -> Any:
        return [value.start, value.end, value.escape] if isinstance(value, Markers) else value

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
        return resolve_model(self.model if override is None else override, adaptive=self.adaptive)

    def inline_markers(self, model: SekaModel, kwargs: dict[str, Any] | None = None) -> Markers | None:
        """The markers prompt text is parsed with for ``model``: a per-call ``markers=`` popped from
        ``kwargs`` if there is one, else the ``markers`` setting; ``"model"`` resolved to the model's."""
        value = self.markers
        if kwargs is not None and "markers" in kwargs:
            try:
                value = self._check_markers(kwargs.pop("markers"))
            except ValueError as exc:
                raise SekaError(str(exc)) from None
        return model.markers if value == "model" else value

    def identifying_params(self) -> dict[str, Any]:
        """Every setting that can change the output (LangChain's cache key; tracing)."""
        params = {"model_name": self.model_name}
        # two models may share a name (a registered one replaced, a shipped projection upgraded): the key
        # holds what the model edits with, once the model is loaded or registered, and the library version
        model = self.model if isinstance(self.model, SekaModel) else loaded_model(self.model, adaptive=self.adaptive)
        if model is not None:
            params.update({k: v for k, v in model_identity(model).items() if k != "model_name"})
        params["seka_rag_version"] = seka_rag_version
        for name in ("max_new_tokens", "do_sample", "temperature", "top_p", "gain_pos", "gain_neg",
                     "layers", "heads", "steer", "chat_template", "router", "routing", "adaptive"):
            params[name] = getattr(self, name)
        # not under "stop": LangChain writes the per-call stop there, over whatever this returns, and
        # the field applies whenever no stop is given per call
        params["stop_setting"] = self.stop
        params["markers"] = self._serialize_markers(self.markers)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's own tokenizer (loads the model), for token counting; a
        ``custom_get_token_ids`` given to the LangChain wrapper is used instead."""
        custom = getattr(self, "custom_get_token_ids", None)
        if custom is not None:
            return custom(text)
        return self.seka_model().tokenizer.encode(text, add_special_tokens=False)

    def generation_kwargs(self, overrides: dict[str, Any] | None = None, stop: list[str] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``SekaModel.generate`` / ``stream`` (without prompt and highlights).

        ``overrides`` holds per-call values (keys of :data:`OVERRIDABLE`, or ``max_tokens``);
        ``stop`` given per call replaces the ``stop`` setting.
        """
        overrides = dict(overrides or {})
        if "max_tokens" in overrides:
            if "max_new_tokens" in overrides:
                raise SekaError("give max_tokens or max_new_tokens (the same setting), not both")
            overrides["max_new_tokens"] = overrides.pop("max_tokens")
            given_as = {"max_new_tokens": "max_tokens"}
        else:
            given_as = {}
        unknown = sorted(set(overrides) - set(OVERRIDABLE))
        if unknown:
            raise SekaError(
                f"unknown argument(s) {', '.join(unknown)}; per-call settings are "
                f"{', '.join(OVERRIDABLE)}, max_tokens, stop, markers, highlights, documents, model, "
                f"{', '.join(ROUTING_ARGS)}"
            )
        values = {name: getattr(self, name) for name in OVERRIDABLE}
        values.update(self._validated(overrides, given_as))
        do_sample = values["do_sample"]
        if do_sample is None:  # sampling settings given: sample (temperature 0 means greedy)
            temperature = values["temperature"]
            do_sample = (temperature is not None and temperature > 0) or (
                temperature is None and values["top_p"] is not None
            )
        values["do_sample"] = bool(do_sample)
        values["stop"] = _stop_list(self.stop if stop is None else stop)
        values["chat"] = values.pop("chat_template")  # the engine's name
        return values

    def _validated(self, overrides: dict[str, Any], given_as: Mapping[str, str] = {}) -> dict[str, Any]:
        """Per-call values checked (and coerced) as the fields of the same name are at construction."""
        from pydantic import ValidationError

        probe = self.model_copy()
        out = {}
        for name, value in overrides.items():
            if name not in ("do_sample", "steer", "chat_template") and _holds_bool(value):
                raise SekaError(f"{name}={value!r}: a number is expected, not True / False")
            try:
                self.__pydantic_validator__.validate_assignment(probe, name, value)
            except ValidationError as exc:
                problem = exc.errors()[0].get("msg", str(exc))
                raise SekaError(f"{given_as.get(name, name)}={value!r}: {problem}") from None
            out[name] = getattr(probe, name)
        return out

    def routing_request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pop the per-call routing arguments (:data:`ROUTING_ARGS`) from ``kwargs``; the engine kwargs.

        A per-call ``router`` replaces the field; a per-call ``routing`` dict is laid over the field's
        (a ``RoutingConfig`` object replaces it); ``query`` / ``query_embedding`` go through as given.
        """
        router = kwargs.pop("router", None)
        routing = kwargs.pop("routing", None)
        query = kwargs.pop("query", None)
        query_embedding = kwargs.pop("query_embedding", None)
        if router is None:
            router = self.router
        if routing is None:
            routing = self.routing
        elif isinstance(routing, Mapping) and self.routing:
            routing = {**self.routing, **routing}
        return routing_kwargs(router, query_embedding, query, routing)


def _holds_bool(value: Any) -> bool:
    """Whether ``value`` is, or is a list holding, True / False (which pydantic would read as 1 / 0)."""
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data, written out in full (arrays as lists of numbers, not abbreviated)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, SekaModel):
        return {"model": model_identity(value)}
    if isinstance(value, Markers):
        return {"markers": [value.start, value.end, value.escape]}
    if isinstance(getattr(value, "page_content", None), str):
        return {"page_content": value.page_content, "metadata": _plain(getattr(value, "metadata", None))}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays
        data = value.detach().cpu() if hasattr(value, "detach") else value
        return {"array": data.tolist(), "shape": list(getattr(value, "shape", ()))}
    if is_dataclass(value) and not isinstance(value, type):
        return {type(value).__name__: _plain(asdict(value))}
    return repr(value)


def call_digest(kwargs: Mapping[str, Any]) -> str | None:
    """A digest of a call's own keyword arguments, for LangChain's cache key (None when there are none).

    LangChain puts per-call arguments into a chat model's cache key with ``repr``, which abbreviates
    arrays of more than 1,000 numbers (``[0.1, 0.2, ..., 0.9]``: two vectors could share a key), and leaves them out
    of a text LLM's key altogether (a call with ``highlights=`` would get the unsteered call's cached
    answer). The digest writes every value in full and hashes it.
    """
    if not kwargs:
        return None
    text = json.dumps(_plain(dict(kwargs)), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def model_identity(model: Any) -> Any:
    """What tells two models apart in a cache key: the name, and for a loaded model its projection and experts."""
    if not isinstance(model, SekaModel):
        return model_label(model)
    projection = model.projection
    experts = getattr(model, "experts", None)
    return {
        "model_name": model_label(model),
        "dtype": str(getattr(model.model, "dtype", "")),
        # every tensor and setting of the edit (two projections may differ only in, say, layer_scale)
        "projection": None if projection is None else projection.fingerprint(),
        "experts": None if experts is None else [
            (e.name, e.projection.fingerprint(), getattr(e, "gain_scale", 1.0)) for e in experts],
        "expert_routing": None if experts is None else _plain(getattr(experts, "routing", None)),
        "default_router": _plain(getattr(model, "router", None)),
    }


def _stop_list(stop: Any) -> list[str] | None:
    """Stop sequences as a list (a lone string is one sequence, not one per character); None if empty."""
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise SekaError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return list(stop) or None


def routing_kwargs(
    router: Any = None, query_embedding: Any = None, query: Any = None, routing: Any = None
) -> dict[str, Any]:
    """The AdaSEKA routing arguments of ``SekaModel.generate`` / ``stream``: the ones that are set.

    Passed through unchanged — the engine validates them and raises a clear error for a bad value
    (an unknown router, a query embedding of the wrong size, ``query_embedding=`` with a router other
    than ``"embedding"``, a router on a model without an expert set); nothing is dropped or faked here.
    """
    pairs = (("router", router), ("query_embedding", query_embedding), ("query", query), ("routing", routing))
    return {name: value for name, value in pairs if value is not None}


def routing_info(model: Any, row: int = 0) -> dict[str, Any] | None:
    """Which experts row ``row`` of the model's last call in this thread used (None: no expert set used,
    or the row was not steered): ``{"router": ..., "weights": {expert: mean weight}}``. Read right after
    the engine call, in its thread, and carried in the response, so async callers see it too."""
    result = getattr(model, "last_routing", None)
    if result is None or row >= result.weights.shape[0]:
        return None
    if bool(result.expert_weights()[row].isnan().any()):
        return None
    return {"router": result.router, "weights": result.summary(row)}


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
    enc = model.encode(  # the call itself warned about any truncation: no second warning (and no
        # process-wide warnings.catch_warnings, which concurrent calls would leave switched off)
        prompt, highlights, chat=chat, max_length=max(1, model.context_window - max_new_tokens), warn=False,
        **encode_kwargs)
    output = len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    output = min(output, max_new_tokens)  # re-tokenising decoded text can overshoot (e.g. partial UTF-8)
    return {
        "input_tokens": len(enc.input_ids),
        "output_tokens": output,
        "total_tokens": len(enc.input_ids) + output,
        "highlighted_tokens": int(sum(enc.highlight)),
    }


def cache_in_use(wrapper: Any) -> bool:
    """Whether LangChain will look this wrapper's calls up in an LLM cache (its own, or the global one)."""
    from langchain_core.caches import BaseCache
    from langchain_core.globals import get_llm_cache

    cache = getattr(wrapper, "cache", None)
    return cache is not False and (isinstance(cache, BaseCache) or get_llm_cache() is not None)


def load_for_cache_key(wrapper: Any, kwargs: dict[str, Any]) -> None:
    """With an LLM cache in use, load the wrapper's model before LangChain builds the cache key, so the
    key holds what the model edits with from the first call on (a key built before loading lacks it,
    so the first call's entry would never be found again). A model that cannot load raises here, once."""
    if cache_in_use(wrapper):
        wrapper.seka_model(kwargs.get("model"))
