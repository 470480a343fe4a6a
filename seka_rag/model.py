""":class:`SekaModel`: the public facade — load a model, highlight, generate, stream and score."""

from __future__ import annotations

import contextlib
import hashlib
import numbers
import os
import re
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar, copy_context
from pathlib import Path
from typing import Any

import torch

from .architectures import geometry, text_config
from .errors import HighlightError, ProjectionError, SekaError, SteeringConfigError
from .highlight import (
    DEFAULT_MARKERS,
    Batch,
    EncodedPrompt,
    Highlight,
    Markers,
    Prompt,
    _is_role_text_pairs,
    _not_a_prompt,
    encode_prompt,
    pad_batch,
    prepare_prompt,
)
from .adaptive import (
    ROUTER_SETTINGS,
    ROUTERS,
    AdaptiveEdit,
    ExpertSet,
    RoutingConfig,
    RoutingResult,
    as_query_embeddings,
    embedding_weights,
    fixed_weights,
)
from .models.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    cache_root,
    closest_embedded,
    embedded_model,
    ensure_converted,
    save_converted,
)
from .projection import Projection
from .steering import ActiveEdit, HeadSelection, KeyEditor, SteeringConfig, edit_matrices

class _Default:
    """The "not given" default: the model's own setting (markers, projection) applies."""

    def __repr__(self) -> str:
        return "<model default>"


_UNSET: Any = _Default()
SHIPPED_PROJECTIONS = Path(__file__).parent / "data" / "projections"
SHIPPED_EXPERTS = Path(__file__).parent / "data" / "experts"
#: The embedding router's default query keeps the last this-many characters of the prompt's text.
_ROUTING_TEXT_CHARS = 1000
#: the stream a context (thread / async task) read last: only its reader records a stream's routing
_STREAM_READER: ContextVar[object | None] = ContextVar("seka_stream_reader", default=None)
# from_pretrained arguments that say *which files* to read: the config and tokenizer need them too
_HUB_KWARGS = ("revision", "token", "trust_remote_code", "subfolder", "local_files_only", "force_download",
               "proxies", "code_revision")


def shipped_experts_path(name: str) -> Path:
    """Directory of the AdaSEKA expert set shipped for embedded model ``name``."""
    return SHIPPED_EXPERTS / name


def shipped_projection_path(name: str) -> Path:
    """Path of the calibrated projection shipped for embedded model ``name``."""
    return SHIPPED_PROJECTIONS / f"{name}.safetensors"


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SekaError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SekaError(f"device {device!r} was asked for, but this torch build sees no CUDA GPU")
    return resolved


def _cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 / AMX): 2-4x faster than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" or _cpu_has_fast_bf16() else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise SekaError(f"invalid dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


#: every model's last routing in this thread / async task: ``(weakref to the SekaModel, RoutingResult)`` pairs
_LAST_ROUTING: ContextVar[tuple] = ContextVar("seka_last_routing", default=())


class SekaModel:
    """A causal language model whose highlighted prompt tokens get SEKA key edits.

    Build one with :meth:`default` (an embedded offline model and its shipped projection) or
    :meth:`from_pretrained` (any supported Hugging Face model), or wrap a loaded model and tokenizer:
    ``SekaModel(model, tokenizer, projection=None, markers=DEFAULT_MARKERS, context_window=None,
    experts=None, router=None, model_id=None)``. ``markers=None`` reads no inline markers;
    ``context_window`` defaults to the config's ``max_position_embeddings`` (else 2048). A tokenizer
    without a pad token gets its EOS token (else the generation config's pad or EOS token) as the pad
    token, on the tokenizer passed in; with none of these it is an error.

    Every call takes ``highlights=`` (substrings, ``(start, end)`` character spans, or
    ``(message_index, start, end)`` for chat messages) in addition to inline markers (``<<`` … ``>>``
    by default), ``steer=False`` to run with no edit at all, and per-call ``gain_pos``,
    ``gain_neg``, ``layers`` and ``heads`` overriding the projection's stored defaults.

    With an :class:`~seka_rag.adaptive.ExpertSet` (``experts=``, or ``default(adaptive=True)``) the
    edit is AdaSEKA's per-prompt mixture of experts: ``router="attention"`` (the model's own
    last-token query, inside the same forward pass) or ``"embedding"`` (a sentence embedding of
    ``query=`` / ``query_embedding=`` / the last 1,000 characters of the prompt outside its
    highlights), per call or as the
    model's default; ``router="projection"`` uses the single projection. After each call
    :attr:`last_routing` tells which experts fired; :meth:`route` computes it without generating.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        projection: Projection | str | os.PathLike | None = None,
        *,
        model_id: str | None = None,
        markers: Markers | None = DEFAULT_MARKERS,
        context_window: int | None = None,
        experts: ExpertSet | str | os.PathLike | None = None,
        router: str | None = None,
    ):
        _check_model_and_tokenizer(model, tokenizer)
        if markers is not None and not isinstance(markers, Markers):
            raise HighlightError(f"markers must be a Markers(start, end) or None (no inline markers), not {markers!r}")
        if isinstance(context_window, float) and context_window.is_integer():
            context_window = int(context_window)  # 2048.0, e.g. read from a JSON config
        if context_window is not None and not _is_count(context_window):
            raise SekaError(f"context_window must be a positive integer (None: the model's), got {context_window!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.geometry = geometry(model)
        self.model_id = model_id or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.markers = markers
        config = text_config(model.config)
        self.context_window = int(context_window or getattr(config, "max_position_embeddings", 0) or 2048)
        if self.tokenizer.pad_token_id is None:
            _set_pad_token(self.tokenizer, model)
        self._editor = KeyEditor.for_model(model)  # one set of hooks per model, however often it is wrapped
        self.projection: Projection | None = None
        self.experts: ExpertSet | None = None
        #: the default router of calls that do not pass ``router=`` (None: the single projection)
        self.router: str | None = None
        #: sentence encoder of the embedding router (None: the offline all-MiniLM-L6-v2)
        self.embedding_encoder: Any = None
        if projection is not None:
            self.load_projection(projection)
        if experts is not None:
            self.load_experts(experts, router=router)
        elif router is not None:
            raise SekaError("router= needs an expert set: pass experts= as well")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike,
        *,
        gguf_file: str | None = None,
        projection: Projection | str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        cache_dir: str | os.PathLike | None = None,
        model_id: str | None = None,
        experts: ExpertSet | str | os.PathLike | None = None,
        router: str | None = None,
        **model_kwargs: Any,
    ) -> "SekaModel":
        """Load a supported Hugging Face model (hub id, local directory, GGUF file in a directory, or the
        name of an embedded model, which loads as :meth:`default` does, with its shipped projection
        unless ``projection=`` names another).

        A GGUF (``gguf_file=``, a file in the local directory ``name_or_dir``) is dequantised once
        and cached as safetensors under ``cache_dir`` (default ``$SEKA_RAG_CACHE`` or
        ``~/.cache/seka-rag``), so later loads take seconds. Without ``gguf_file``, ``cache_dir`` is
        the Hugging Face hub cache, as in ``transformers``. The hub arguments among
        ``model_kwargs`` (``revision``, ``token``, ``trust_remote_code``, ``subfolder``,
        ``local_files_only``, ...) go to the config, the tokenizer and the weights alike; the rest
        go to ``AutoModelForCausalLM.from_pretrained`` only.

        ``experts=`` (an :class:`~seka_rag.adaptive.ExpertSet` or its directory) turns on AdaSEKA,
        and ``router=`` (``"attention"``, the default, or ``"embedding"``) is then the default router
        of every call. Without a projection or an expert set, a prompt with no highlight generates
        unsteered and a highlighted call raises :class:`SekaError` naming how to get one (pass
        ``steer=False`` to run it unsteered).
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .architectures import spec_for

        if not isinstance(name_or_dir, (str, os.PathLike)):
            raise SekaError(f"name_or_dir must be a model directory, hub id or embedded model's name, got {name_or_dir!r}")
        if "torch_dtype" in model_kwargs:  # transformers' older name of dtype=
            if dtype is not None:
                raise SekaError("pass dtype= only (torch_dtype is its older name)")
            dtype = model_kwargs.pop("torch_dtype")
        if isinstance(dtype, str) and dtype == "auto":
            raise SekaError("dtype='auto' is not supported: leave dtype unset (bfloat16 where the hardware runs it "
                            "fast, else float32) or name one, e.g. 'float32'")
        for key in model_kwargs:  # a slip in one of seka-rag's own arguments: say so before anything loads
            _refuse_misspelt_argument(key, cls.from_pretrained)
        if isinstance(projection, (str, os.PathLike)):  # a missing or corrupt file: said before the model loads
            projection = Projection.load(projection)
        if isinstance(name_or_dir, str) and name_or_dir.startswith("~"):
            name_or_dir = os.path.expanduser(name_or_dir)  # transformers would read "~" as part of a hub id
        name = str(name_or_dir)
        if gguf_file is None and not Path(name).exists():
            if name in EMBEDDED_MODELS:  # an embedded model's name: load it, as the CLI's --model does
                if model_kwargs or model_id is not None:
                    given = sorted(model_kwargs) + (["model_id"] if model_id is not None else [])
                    raise SekaError(f"{name!r} is an embedded model: {given} do not apply to it")
                return cls.default(name, projection=_UNSET if projection is None else projection, device=device,
                                   dtype=dtype, attn_implementation=attn_implementation, cache_dir=cache_dir,
                                   experts=experts, router=router)
            close = closest_embedded(name, cutoff=0.8)
            if close and "/" not in name:  # a misspelt embedded name: say so now, not after hub retries
                raise SekaError(f"no local directory or embedded model named {name!r}; did you mean {close!r}? "
                                f"(embedded: {', '.join(EMBEDDED_MODELS)}; hub ids look like 'org/name')")
        if gguf_file is None and not Path(name).exists() and _looks_like_path(name):
            raise SekaError(f"no directory {name!r}: give an existing model directory, an embedded model's name "
                            f"({', '.join(EMBEDDED_MODELS)}) or a hub id ('org/name')")
        subfolder = str(model_kwargs.get("subfolder") or "")
        if gguf_file is None and Path(name).is_dir() and not (Path(name) / subfolder / "config.json").is_file():
            ggufs = sorted(p.name for p in Path(name).glob("*.gguf"))
            hint = f"; for a GGUF pass gguf_file= (here: {', '.join(ggufs)})" if ggufs else ""
            where = f"{name!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
            raise SekaError(f"{where} is a directory without a config.json, so it holds no Hugging Face model{hint}")
        _check_attn_implementation(attn_implementation)
        device = _default_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        source = str(name_or_dir)
        hub_kwargs = {k: model_kwargs.pop(k) for k in _HUB_KWARGS if k in model_kwargs}
        if gguf_file is not None:
            source = str(_converted_gguf(Path(name_or_dir), gguf_file, cache_dir))
        elif cache_dir is not None:
            hub_kwargs["cache_dir"] = str(cache_dir)
        try:
            spec_for(AutoConfig.from_pretrained(source, **hub_kwargs).model_type)  # unsupported: fail before loading weights
            tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype, attn_implementation=attn_implementation, **hub_kwargs, **model_kwargs
            )
        except OSError as exc:  # not found locally / offline hub
            _raise_if_damaged_cache(source, exc)
            local = "" if Path(name).exists() else f" (there is no local directory {name!r} either)"
            raise SekaError(f"could not load model {str(name_or_dir)!r}{local}: {exc}") from None
        except TypeError as exc:  # a keyword the model class does not take reaches its __init__
            unknown = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
            if unknown is None or unknown.group(1) not in model_kwargs:
                _raise_if_damaged_cache(source, exc)
                raise
            raise SekaError(f"from_pretrained() got an unexpected keyword argument {unknown.group(1)!r}: it is not "
                            f"one of seka-rag's arguments, and the model class does not take it either ({exc})") from None
        except Exception as exc:  # a truncated weights file, a missing tokenizer file, ...
            _raise_if_damaged_cache(source, exc)
            raise
        model.to(device)
        if model_id is None:  # a local directory by its full path, however it was written (./m, m/, ~/m)
            model_id = str(Path(name).resolve()) if Path(name).is_dir() else str(name_or_dir)
        return cls(model, tokenizer, projection, model_id=model_id, experts=experts, router=router)

    @classmethod
    def default(
        cls,
        name: str = DEFAULT_MODEL,
        *,
        projection: Projection | str | os.PathLike | None = _UNSET,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        cache_dir: str | os.PathLike | None = None,
        adaptive: bool = False,
        experts: ExpertSet | str | os.PathLike | None = None,
        router: str | None = None,
    ) -> "SekaModel":
        """An embedded offline model (``"qwen2.5-coder-0.5b"`` or ``"smollm2-135m"``) with its shipped projection.

        ``projection=``: another projection (object or file) instead of the shipped one; ``None``
        loads none (the model then steers only with an expert set, or not at all). ``adaptive=True``
        also loads the model's shipped AdaSEKA expert set (router ``"attention"`` unless ``router=``
        says otherwise); ``experts=`` loads another one.
        """
        if not isinstance(adaptive, bool):
            raise SekaError(f"adaptive must be True or False, got {adaptive!r}")
        if router is not None and not adaptive and experts is None:
            raise SekaError(f"router={router!r} chooses among AdaSEKA experts: pass adaptive=True (the expert set "
                            "shipped for this model) or experts=DIR as well")
        _check_attn_implementation(attn_implementation)  # before a first conversion writes the model
        spec = embedded_model(name)
        if adaptive and experts is None:
            experts = shipped_experts_path(name)
            if not (experts / "experts.json").is_file():
                raise SekaError(
                    f"no expert set is shipped for {name!r}; build one with "
                    f"`seka-rag build-experts --model {name} --out DIR` and pass experts=DIR"
                )
        if isinstance(projection, (str, os.PathLike)):  # a missing or corrupt file: said before the model loads
            projection = Projection.load(projection)
        directory = ensure_converted(spec, cache_dir)
        if projection is _UNSET:
            shipped = shipped_projection_path(name)
            projection = shipped if shipped.is_file() else None
        return cls.from_pretrained(
            directory, projection=projection, device=device, dtype=dtype,
            attn_implementation=attn_implementation, model_id=spec.model_id, experts=experts, router=router,
        )

    def load_projection(self, projection: Projection | str | os.PathLike) -> Projection:
        """Attach a projection (object or file); raises :class:`ProjectionError` if it does not fit.

        On a model with an expert set, calls keep routing among the experts; the projection is what
        ``router="projection"`` uses."""
        if isinstance(projection, ExpertSet):
            raise ProjectionError("that is an AdaSEKA expert set, not a projection: pass it as experts= "
                                  "(or call load_experts)")
        if not isinstance(projection, Projection):
            projection = Projection.load(projection)
        projection.check_fits(self.geometry, self.model_id)
        self.projection = projection
        return projection

    @property
    def last_routing(self) -> RoutingResult | None:
        """Which experts the last call *in this thread / async task* used.

        None when that call steered nothing with an expert set: no expert set, ``router="projection"``,
        ``steer=False``, nothing highlighted, or the call failed. Row ``i`` is prompt (or scored row)
        ``i`` of that call; a row without a highlighted token, and KV heads the call did not edit, are
        NaN (see :class:`~seka_rag.adaptive.RoutingResult`). :meth:`stream` sets it when its iteration
        ends.
        """
        for owner, value in _LAST_ROUTING.get():
            if owner() is self:
                return value
        return None

    @last_routing.setter
    def last_routing(self, value: RoutingResult | None) -> None:
        # one context variable for every model, holding (weak reference, result) pairs: a model that is
        # gone leaves nothing behind in the threads and tasks that used it
        kept = tuple((owner, v) for owner, v in _LAST_ROUTING.get() if owner() is not None and owner() is not self)
        _LAST_ROUTING.set(kept + (((weakref.ref(self), value),) if value is not None else ()))

    def load_experts(self, experts: ExpertSet | str | os.PathLike, *, router: str | None = None) -> ExpertSet:
        """Attach an AdaSEKA expert set (object or directory) and make ``router`` the default router
        (``"attention"`` unless given; ``"embedding"`` needs the set's prototype embeddings)."""
        if isinstance(experts, Projection):
            raise ProjectionError("that is a single projection, not an expert set: pass it as projection= "
                                  "(or call load_projection)")
        if not isinstance(experts, ExpertSet):
            experts = ExpertSet.load(experts)
        experts.check_fits(self.geometry, self.model_id)
        router = "attention" if router is None else router
        if router not in ("attention", "embedding"):
            raise SteeringConfigError(f"the default router must be 'attention' or 'embedding', got {router!r}")
        if router == "embedding":
            experts.prototypes()  # raises when the set has none
        self.experts = experts
        self.router = router
        return experts

    @property
    def device(self) -> torch.device:
        """The device of the model's weights (where prompts are sent)."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ preparing prompts
    def encode(
        self,
        prompt: Prompt,
        highlights: Sequence[Highlight] | str | None = None,
        *,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        max_length: int | None = None,
        warn: bool = True,
    ) -> EncodedPrompt:
        """Token ids and highlight mask of one prompt, as the model will see it.

        ``warn=False`` leaves out the warning for a truncated prompt (e.g. when only counting tokens; the
        ``truncated`` field still says how many were dropped)."""
        _check_prompt_options(chat, markers)
        if isinstance(highlights, str):
            highlights = [highlights]
        prepared = prepare_prompt(
            prompt, self.tokenizer, highlights,
            markers=self.markers if markers is _UNSET else markers, chat=None if chat is None else bool(chat),
        )
        return encode_prompt(prepared, self.tokenizer, self.context_window if max_length is None else max_length,
                             warn=warn)

    def highlighted_tokens(
        self,
        prompt: Prompt,
        highlights: Sequence[Highlight] | str | None = None,
        *,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """The tokens a highlight covers, in order — to preview what will be steered.

        A prompt longer than the model's window is cut as :meth:`generate` with ``max_new_tokens``
        would cut it (None: to the whole window, as :meth:`encode` does).
        """
        budget = None if max_new_tokens is None else self._prompt_budget(_check_max_new_tokens(max_new_tokens))
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=budget)
        return [self.tokenizer.decode([t]) for t, on in zip(enc.input_ids, enc.highlight) if on]

    def _encode_many(self, prompts, highlights, chat, markers, max_length, batch: bool = True) -> list[EncodedPrompt]:
        if highlights is None:
            highlights = [None] * len(prompts)
        elif not isinstance(highlights, Sequence) or isinstance(highlights, str) or len(highlights) != len(prompts):
            raise HighlightError(
                "for a list of prompts, highlights must be a list with one entry per prompt "
                "(each a list of highlights, or None)"
            )
        flat = [i for i, h in enumerate(highlights) if isinstance(h, str)] if batch else []
        if flat:  # ["a", "b"] for two prompts: "a" in the first and "b" in the second, or both in both?
            raise HighlightError(
                f"for a list of prompts, highlights holds one list per prompt; entry {flat[0]} is a string "
                f"({highlights[flat[0]]!r}): write [[...], [...]] (e.g. [['a'], ['b']], or [['a', 'b']] * "
                f"{len(prompts)} for both in every prompt), or mark the highlights inline"
            )
        _check_prompt_options(chat, markers)  # the call's options: an error here is no one prompt's
        encoded = []
        for i, (p, h) in enumerate(zip(prompts, highlights)):
            try:
                encoded.append(self.encode(p, h, chat=chat, markers=markers, max_length=max_length))
            except SekaError as exc:
                if len(prompts) > 1:  # which of the batch's prompts is wrong
                    exc.args = (f"prompt {i}: {exc}", *exc.args[1:])
                raise
        return encoded

    # ------------------------------------------------------------------ steering
    def _steering_matrices(self, gain_pos, gain_neg, layers, heads) -> dict[int, torch.Tensor]:
        if self.projection is None:
            raise SekaError(
                "this model has no projection: pass projection= when loading (--projection FILE on the command "
                "line), call load_projection(), or build one with `seka-rag build-projection`"
            )
        config = SteeringConfig(gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads)
        return edit_matrices(self.projection, config)

    def steering(
        self,
        highlight_mask: torch.Tensor,
        *,
        steer: bool = True,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        router: str | Mapping[str, float] | None = None,
        query: str | Sequence[str] | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        query_index: torch.Tensor | None = None,
        rows: Sequence[EncodedPrompt] | None = None,
    ) -> "SteeringBlock":
        """Context manager: edit the keys at ``highlight_mask`` (batch, tokens) during the block.

        Does nothing when ``steer`` is False (the other settings are still checked, so a bad value is an
        error either way) or no token is highlighted. With an expert set, ``router``
        picks AdaSEKA's router (default: the model's); ``query_index`` (batch,) is each row's last
        prompt token (default: the last position, as in a left-padded prompt batch) and ``rows`` the
        encoded prompts (the embedding router's default query is their text outside the highlights).
        After the block, ``.result`` (and :attr:`last_routing`) holds the routing weights (None when the
        block raised).

        A mask of fewer rows than the model's batch is repeated to fit it when the batch is a whole
        multiple (as ``generate`` expands rows for beams or ``num_return_sequences``); build one mask
        row per prompt row otherwise.

        One block steers **one generation**: the first forward pass (the prompt's prefill) edits the
        highlighted keys, which the KV cache then carries through the decode steps; later forward passes
        of the prompt's length inside the same block run unedited, and a longer one (generating without a
        KV cache, which re-runs the prompt at every step) raises :class:`SteeringConfigError`: generate
        with ``use_cache=True``. Open a new block for each call of ``model(...)`` /
        ``model.generate(...)`` on a fresh prompt.
        """
        if not _is_bool(steer):
            raise SteeringConfigError(f"steer must be True or False, got {steer!r}")
        steer = bool(steer)
        if not isinstance(highlight_mask, torch.Tensor) or highlight_mask.dim() != 2:
            got = tuple(highlight_mask.shape) if isinstance(highlight_mask, torch.Tensor) else type(highlight_mask).__name__
            raise SteeringConfigError(f"highlight_mask must be a (batch, tokens) tensor, got {got}")
        router = self._resolve_router(router, query, query_embedding, routing)
        anything = bool(highlight_mask.any())
        if not (steer and anything):  # nothing will be routed: check what the router would have read
            self._check_router_inputs(router, query, query_embedding, routing, highlight_mask.shape[0])
        settings_given = [name for name, v in (("gain_pos", gain_pos), ("gain_neg", gain_neg), ("layers", layers),
                                                ("heads", heads)) if v is not None]
        if settings_given and router is None and self.projection is None:
            raise SteeringConfigError(
                f"this model has no projection, so {', '.join(settings_given)} would change nothing: load one "
                "(projection= when loading, or load_projection()), or leave them out"
            )
        if not steer:
            if settings_given:  # a bad value is an error all the same
                if router is None and self.projection is not None:
                    self._steering_matrices(gain_pos, gain_neg, layers, heads)
                elif router is not None:  # against the experts, as the steered call would be
                    config = SteeringConfig(gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads)
                    self.experts.stacked(config, self._routing_settings(routing), want_route=router == "attention",
                                         device=self.device)
            return SteeringBlock(self)
        if router is None:
            if self.projection is None and not anything:
                return SteeringBlock(self)  # nothing to steer, nothing to complain about
            matrices = self._steering_matrices(gain_pos, gain_neg, layers, heads)  # validates per-call settings
            if not anything:
                return SteeringBlock(self)
            edit = ActiveEdit(self._editor, matrices, highlight_mask.to(self.device).bool())
            return SteeringBlock(self, edit)
        experts = self.experts  # one set routes and edits this call, even if load_experts() runs meanwhile
        config = SteeringConfig(gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads)
        settings = self._routing_settings(routing, experts)
        stacked = experts.stacked(config, settings, want_route=router == "attention", device=self.device)
        if not anything:
            return SteeringBlock(self)
        mask = highlight_mask.to(self.device).bool()
        n = mask.shape[0]
        weights = None
        if isinstance(router, Mapping):
            weights = fixed_weights(router, experts.names, n)
        elif router == "embedding":
            prototypes = experts.prototypes()  # raises before any query is embedded
            weights = embedding_weights(self._query_embeddings(n, query, query_embedding, rows, experts), prototypes,
                                        settings)
        if query_index is None:
            query_index = torch.full((n,), mask.shape[1] - 1, dtype=torch.long)
        edit = AdaptiveEdit(
            self._editor, {}, mask, stacked=stacked, routing=settings,
            router=router if isinstance(router, str) else "fixed", fixed_weights=weights,
            query_index=query_index.to(self.device), num_query_heads=self.geometry.num_query_heads,
            head_dim=self.geometry.head_dim, expert_names=tuple(experts.names),
        )
        return SteeringBlock(self, edit)

    def _resolve_router(self, router, query, query_embedding, routing):
        """The effective router of a call: None (single projection), a router name, or fixed weights."""
        if router is None:
            router = self.router
        if isinstance(router, Mapping):
            if self.experts is None:
                raise SekaError("router={expert: weight} needs an expert set: load one with experts=")
            if not router:
                raise SteeringConfigError(
                    "router={} names no expert: give at least one {expert: weight} "
                    f"(experts: {', '.join(self.experts.names)}); for no edit at all, pass steer=False instead"
                )
        elif router is not None:
            if not isinstance(router, str) or router not in ROUTERS:
                raise SteeringConfigError(
                    f"router must be one of {', '.join(map(repr, ROUTERS))} or a {{expert: weight}} mapping, got {router!r}"
                )
            if router == "projection":
                router = None
            elif self.experts is None:
                raise SekaError(
                    f"router={router!r} needs an AdaSEKA expert set: load the model with "
                    "SekaModel.default(adaptive=True) or experts=..."
                )
        if (query is not None or query_embedding is not None) and router != "embedding":
            raise SteeringConfigError(
                "query= and query_embedding= choose experts for the embedding router; "
                f"this call uses {'the single projection' if router is None else repr(router)}: pass router='embedding'"
            )
        if routing is not None and router is None:
            raise SteeringConfigError("routing= sets AdaSEKA router parameters; this call uses the single projection")
        if routing is not None and isinstance(router, Mapping):
            raise SteeringConfigError(
                "routing= sets the attention and embedding routers' parameters; a fixed {expert: weight} router "
                "uses its weights as given (scale them to change the edit's strength)"
            )
        if isinstance(routing, Mapping) and isinstance(router, str) and routing:
            # settings for both routers may travel together; only the other router's alone are a mistake
            other = ROUTER_SETTINGS["embedding" if router == "attention" else "attention"]
            unused = sorted(set(routing) & other)
            if len(unused) == len(routing):
                raise SteeringConfigError(
                    f"routing settings {unused} belong to the "
                    f"{'embedding' if router == 'attention' else 'attention'} router; this call uses router={router!r}"
                )
        return router

    def _check_router_inputs(self, router, query, query_embedding, routing, n: int) -> None:
        """Check what the router of a call will read (weights, settings, query) without computing anything,
        so a mistake is an error even when the call ends up steering nothing (``steer=False``, no highlight)."""
        if router is None:
            return
        self._routing_settings(routing)
        if isinstance(router, Mapping):
            fixed_weights(router, self.experts.names, 1)
        elif router == "embedding":
            prototypes = self.experts.prototypes()
            if query_embedding is not None:
                if query is not None:
                    raise SteeringConfigError("pass query= or query_embedding=, not both")
                embedding_weights(as_query_embeddings(query_embedding, n), prototypes, RoutingConfig())
            elif query is not None:
                _query_texts(query, n)

    def _routing_settings(self, routing, experts: ExpertSet | None = None) -> RoutingConfig:
        """The call's routing settings: ``routing`` over the stored defaults of ``experts`` (the model's set)."""
        base = (self.experts if experts is None else experts).routing
        if routing is None:
            return base
        if isinstance(routing, RoutingConfig):
            return routing.validate()  # a whole RoutingConfig replaces the set's stored defaults
        if isinstance(routing, Mapping):
            return base.replace(**routing)
        raise SteeringConfigError(f"routing must be a RoutingConfig or a dict of its fields, got {type(routing).__name__}")

    def _query_embeddings(self, n: int, query, query_embedding, rows, experts: ExpertSet) -> torch.Tensor:
        """(n, dim) unit-norm embeddings routing each row: given, embedded from ``query``, or from the prompt
        (embedded with the encoder of ``experts``' prototypes)."""
        if query_embedding is not None:
            if query is not None:
                raise SteeringConfigError("pass query= or query_embedding=, not both")
            return as_query_embeddings(query_embedding, n)
        if query is not None:
            texts = _query_texts(query, n)
        elif rows is not None:
            # the encoder reads ~256 word pieces: keep the end of the prompt, where the question usually is
            texts = [(r.routing_text or r.text)[-_ROUTING_TEXT_CHARS:] for r in rows]
        else:
            raise SteeringConfigError("the embedding router needs query= or query_embedding= here")
        from .embeddings import DEFAULT_EMBEDDING_MODEL, embed

        if self.embedding_encoder is None and experts.embedding_model.split("/")[-1] != DEFAULT_EMBEDDING_MODEL:
            raise SteeringConfigError(
                f"this expert set's prototypes were embedded with {experts.embedding_model!r}: set "
                "model.embedding_encoder to that encoder (a callable or a SentenceTransformer), or pass "
                "query_embedding= vectors from it"
            )
        unique = list(dict.fromkeys(texts))
        vectors = embed(unique, self.embedding_encoder)
        zero = [t for t, v in zip(unique, vectors) if not bool(v.any())]
        if zero:  # every expert would weigh the same, silently
            raise SteeringConfigError(f"the embedding encoder returned an all-zero vector for the routing query "
                                      f"{zero[0][:60]!r}; check the encoder, or pass query= / query_embedding=")
        at = {t: i for i, t in enumerate(unique)}
        return vectors[[at[t] for t in texts]]

    def route(
        self,
        prompt: Prompt,
        highlights: Any = None,
        *,
        router: str | Mapping[str, float] | None = None,
        query: str | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        max_new_tokens: int = 64,
    ) -> RoutingResult:
        """The expert weights AdaSEKA gives ``prompt`` (one steered prefill, no generation).

        ``router`` (default: the model's), ``query`` / ``query_embedding`` (the embedding router's
        query; default: the prompt outside its highlights), ``routing`` (router parameters) and the
        gain / layer / head settings are those of :meth:`generate`. The prompt is cut to fit the
        window as :meth:`generate` with ``max_new_tokens`` would cut it, so a long prompt is routed
        as that call would route it. Raises :class:`HighlightError` when nothing is highlighted and
        :class:`SekaError` when the call would use the single projection (``router="projection"``, or
        a model without experts): there is nothing to route then.
        """
        self.last_routing = None  # a call that fails leaves no earlier routing behind
        budget = self._prompt_budget(_check_max_new_tokens(max_new_tokens))
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=budget)
        if not any(enc.highlight):
            raise HighlightError("nothing to route: the prompt has no highlighted tokens")
        batch = pad_batch([enc], self.tokenizer.pad_token_id).to(self.device)
        block = self.steering(
            batch.highlight_mask, router=router, query=query, query_embedding=query_embedding, routing=routing,
            gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads, rows=[enc],
        )
        if block.edit is None or not isinstance(block.edit, AdaptiveEdit):
            raise SekaError("this call uses the single projection, not an expert set: there is nothing to route")
        with torch.inference_mode(), block:
            self._forward_logits(batch, 1)
        return block.result

    def _prompt_budget(self, reserved: int, what: str = "max_new_tokens") -> int:
        """Tokens left for the prompt once ``reserved`` are kept for the output."""
        if reserved >= self.context_window:
            raise SekaError(
                f"{what} ({reserved}) leaves no room for the prompt in the model's window of "
                f"{self.context_window} tokens"
            )
        return self.context_window - reserved

    # ------------------------------------------------------------------ generation
    def _generation_kwargs(self, max_new_tokens, do_sample, temperature, top_p, stop) -> dict:
        max_new_tokens = _check_max_new_tokens(max_new_tokens)
        if not _is_bool(do_sample):
            raise SekaError(f"do_sample must be True or False, got {do_sample!r}")
        _stop_list(stop)  # checked before any work
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=bool(do_sample),  # a numpy bool becomes a Python one
            pad_token_id=self.tokenizer.pad_token_id,
            # one answer per prompt, whatever the checkpoint's generation_config.json asks for
            num_return_sequences=1,
            num_beams=1,
            # the edit is applied once, in the prefill, and lives on in the cache: a checkpoint that turns
            # the cache off (use_cache: false, common after gradient-checkpointed fine-tuning) would
            # re-run the prompt unedited at every step
            use_cache=True,
            return_dict_in_generate=False,  # a tensor of ids, whatever the checkpoint asks for
            tokenizer=self.tokenizer,  # for stop_strings in a checkpoint's generation config
        )
        if temperature is not None and (
            isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 <= temperature < float("inf")
        ):
            raise SekaError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
            raise SekaError(f"top_p must be in (0, 1], got {top_p!r}")
        if do_sample:
            if temperature is not None:
                if not temperature > 0:
                    raise SekaError(f"temperature must be a positive number when sampling, got {temperature!r}")
                kwargs["temperature"] = float(temperature)
            if top_p is not None:
                kwargs["top_p"] = float(top_p)
        else:
            ignored = [name for name, value in (("temperature", temperature), ("top_p", top_p))
                       if value is not None and not (name == "temperature" and value == 0)]
            if ignored:
                warnings.warn(
                    f"{' and '.join(ignored)} only {'applies' if len(ignored) == 1 else 'apply'} when sampling: "
                    "pass do_sample=True, or this "
                    "call decodes greedily without them",
                    UserWarning, stacklevel=3,
                )
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _stop_criteria(self, stop, prompt_length: int, extra: Sequence[Any] = ()):
        """``stopping_criteria`` for ``generate``: a row ends once its *new* text holds a stop string
        (the prompt's own tail never counts, unlike transformers' ``stop_strings``)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        stops = _stop_list(stop)
        tokenizer = self.tokenizer
        # a token holds at least one byte (a character is at most four), so a stop string completed by
        # the newest token lies within this many last tokens (an earlier one would have stopped the row)
        tail = 4 * max((len(s) for s in stops), default=0) + 4

        class _StopInNewText(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                start = max(prompt_length, input_ids.shape[1] - tail)
                # special tokens kept (a stop string may be one: "<|im_end|>", "</s>") and skipped, as in the
                # text the call returns ("b<|im_end|>c" reads "bc" there)
                tail_ids = input_ids[:, start:]
                kept = tokenizer.batch_decode(tail_ids, skip_special_tokens=False)
                skipped = tokenizer.batch_decode(tail_ids, skip_special_tokens=True)
                return torch.tensor([any(s in t or s in u for s in stops) for t, u in zip(kept, skipped)],
                                    dtype=torch.bool, device=input_ids.device)

        criteria = list(extra) + ([_StopInNewText()] if stops else [])
        return StoppingCriteriaList(criteria) if criteria else None

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        highlights: Any = None,
        *,
        steer: bool = True,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        router: str | Mapping[str, float] | None = None,
        query: str | Sequence[str] | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        batch_size: int = 8,
        cancel: threading.Event | None = None,
        progress: bool | None = None,
    ) -> str | list[str]:
        """Generate a continuation of ``prompt`` (or of each prompt in a list, batched).

        ``cancel``: a :class:`threading.Event` another thread may set to stop generating after the
        current token (the text so far is returned; e.g. when an async caller gives up on the call).
        ``progress``: a progress bar over the batches (None: when there is more than one batch and
        stderr is a terminal).

        A plain-text prompt goes through the chat template when the tokenizer has one
        (``chat=False`` sends it raw). Returns the new text only, cut at the first ``stop`` string.
        For a list of prompts, ``highlights`` is a list with one entry per prompt (and so is
        ``query`` / ``query_embedding`` when each prompt has its own). ``router``, ``query``,
        ``query_embedding`` and ``routing`` steer with the model's AdaSEKA expert set. An empty list
        of prompts gives an empty list. ``temperature`` / ``top_p`` apply with ``do_sample=True``
        (given without it, they are checked, and a warning says the call decodes greedily;
        ``temperature=0`` is greedy decoding and says nothing). ``stop`` takes a string or a list.

        Settings in the checkpoint's ``generation_config`` still apply (e.g. ``repetition_penalty``),
        except ``use_cache`` (always on: the edit lives in the KV cache), ``num_beams``,
        ``num_return_sequences``, ``return_dict_in_generate`` and ``do_sample`` (this call's). Its
        ``stop_strings`` end generation but, unlike ``stop``, stay in the returned text.

        Errors: :class:`HighlightError` for a prompt or highlight that cannot be placed,
        :class:`SteeringConfigError` for gains, layers, heads or router settings, :class:`SekaError`
        for anything else a caller can fix.
        """
        self.last_routing = None  # a call that fails or has nothing to do leaves no earlier routing behind
        single = _is_single_prompt(prompt)
        if isinstance(prompt, Mapping) or _is_role_text_pairs(prompt):  # one message / a LangChain-style chat
            raise HighlightError(_not_a_prompt(prompt))
        if not single and (isinstance(prompt, (str, bytes, Mapping)) or not isinstance(prompt, Sequence)):
            raise HighlightError(
                "prompt must be a string, a list of {'role': ..., 'content': ...} messages, or a list of "
                f"such prompts, not {type(prompt).__name__}"
            )
        prompts = [prompt] if single else list(prompt)
        if not prompts:  # nothing to generate, but every setting is checked as for a batch
            self._generation_kwargs(_check_max_new_tokens(max_new_tokens), do_sample, temperature, top_p,
                                    _stop_list(stop))
            _check_batch_size(batch_size)
            _cancelled(cancel)
            _check_progress(progress)
            _check_prompt_options(chat, markers)
            if highlights is not None and (not isinstance(highlights, Sequence) or len(highlights)):
                raise HighlightError("for a list of prompts, highlights must be a list with one entry per prompt "
                                     "(each a list of highlights, or None): here, an empty list")
            # the queries too: one per prompt, so an empty list (or no vectors) is none at all
            no_rows = [isinstance(v, (list, tuple)) and not v or (len(getattr(v, "shape", ())) == 2 and v.shape[0] == 0)
                       for v in (query, query_embedding)]
            self.steering(torch.zeros((1, 1), dtype=torch.bool), steer=steer, gain_pos=gain_pos, gain_neg=gain_neg,
                          layers=layers, heads=heads, router=router, routing=routing,
                          query=None if no_rows[0] else query, query_embedding=None if no_rows[1] else query_embedding)
            return []
        if single:
            highlights = [highlights]
        max_new_tokens = _check_max_new_tokens(max_new_tokens)
        stop = _stop_list(stop)  # once: a generator of stop strings is read here
        gen = self._generation_kwargs(max_new_tokens, do_sample, temperature, top_p, stop)
        encoded = self._encode_many(prompts, highlights, chat, markers, self._prompt_budget(max_new_tokens),
                                    batch=not single)
        steer_kw = dict(steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads,
                        router=router, routing=routing)
        outputs: list[str] = []
        routed: list[RoutingResult | None] = []
        bs = _check_batch_size(batch_size)
        cancelled = _cancelled(cancel)  # checks its type now
        n = len(encoded)
        with _progress_bar(-(-n // bs), progress, "generate") as bar, _forget_routing_on_error(self):
            for start in range(0, n, bs):
                rows = encoded[start : start + bs]
                if cancel is not None and cancel.is_set():  # the caller gave up: no further batches
                    outputs.extend("" for _ in rows)
                    routed.append(len(rows))
                    bar.update(1)
                    continue
                batch = pad_batch(rows, self.tokenizer.pad_token_id, side="left").to(self.device)
                block = self.steering(
                    batch.highlight_mask, rows=rows, query=_chunk(query, start, start + bs, n),
                    query_embedding=_chunk(query_embedding, start, start + bs, n, "query_embedding"), **steer_kw,
                )
                with torch.inference_mode(), block:
                    out = self.model.generate(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        stopping_criteria=self._stop_criteria(stop, batch.input_ids.shape[1], cancelled), **gen
                    )
                routed.append(block.result if block.result is not None else len(rows))
                new = out[:, batch.input_ids.shape[1] :]
                outputs.extend(_cut_at_stop(t, stop) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
                bar.update(1)
        self.last_routing = RoutingResult.concat(routed)
        return outputs[0] if single else outputs

    def stream(
        self,
        prompt: Prompt,
        highlights: Any = None,
        *,
        steer: bool = True,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        router: str | Mapping[str, float] | None = None,
        query: str | Sequence[str] | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Like :meth:`generate` for one prompt, yielding text pieces as tokens are produced.

        Bad arguments raise here, when ``stream`` is called; generation starts when iteration does.
        Generation stops when the consumer stops iterating, or when ``cancel`` (a
        :class:`threading.Event`) is set. :attr:`last_routing` is set when the iteration ends, in the
        thread (or task) that read this stream last; a stream closed elsewhere (by the garbage collector,
        or after another stream was read) sets nothing.
        """
        from transformers import TextIteratorStreamer

        self.last_routing = None  # a call that fails leaves no earlier routing behind
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            raise SekaError(f"stream takes one prompt (a string or a list of messages), got a list of {len(prompt)} "
                            "strings: stream them one by one, or use generate([...]) for a batch")
        max_new_tokens = _check_max_new_tokens(max_new_tokens)
        stop = _stop_list(stop)  # once: a generator of stop strings is read here
        gen = self._generation_kwargs(max_new_tokens, do_sample, temperature, top_p, stop)
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=self._prompt_budget(max_new_tokens))
        batch = pad_batch([enc], self.tokenizer.pad_token_id).to(self.device)
        steering = self.steering(
            batch.highlight_mask, steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads,
            router=router, query=query, query_embedding=query_embedding, routing=routing, rows=[enc],
        )
        from transformers import StoppingCriteria

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        abandoned = threading.Event()  # set when the consumer stops reading: generation ends early

        class _Abandoned(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), abandoned.is_set(), dtype=torch.bool, device=input_ids.device)

        stopping = self._stop_criteria(stop, batch.input_ids.shape[1], [_Abandoned(), *_cancelled(cancel)])

        def pieces() -> Iterator[str]:  # the call's checks above run now; generation starts on iteration
            def run() -> None:
                try:
                    with torch.inference_mode(), steering:
                        self.model.generate(
                            input_ids=batch.input_ids, attention_mask=batch.attention_mask, streamer=streamer,
                            stopping_criteria=stopping, **gen
                        )
                except BaseException as exc:  # surfaced in the consuming thread
                    failure.append(exc)
                    streamer.end()

            context = copy_context()
            worker = threading.Thread(target=context.run, args=(run,), daemon=True)
            worker.start()
            text, sent = "", 0  # all text so far, and how much of it was yielded
            reading = object()  # marks the context (thread / task) that reads this stream
            _STREAM_READER.set(reading)
            try:
                for piece in streamer:
                    text += piece
                    if stop:
                        cut = _cut_at_stop(text, stop)
                        if len(cut) < len(text):
                            text = cut
                            break
                        safe = len(text) - _pending_stop_prefix(text, stop)  # may still start a stop string
                    else:
                        safe = len(text)
                    if safe > sent:
                        yield text[sent:safe]
                        _STREAM_READER.set(reading)  # the reader, even if it moved to another thread or task
                        sent = safe
            finally:
                abandoned.set()
                # a stream the garbage collector closes runs this in whatever thread or task collects it,
                # which neither waits for the worker (it stops after its current token) nor gets the routing
                if _STREAM_READER.get() is reading:
                    worker.join()
                    self.last_routing = steering.result
            if failure:
                raise failure[0]
            if len(text) > sent:
                yield text[sent:]

        return pieces()

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompt: Prompt,
        continuations: Sequence[str],
        highlights: Any = None,
        *,
        steer: bool = True,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        router: str | Mapping[str, float] | None = None,
        query: str | Sequence[str] | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> list[float]:
        """Log-probability of each continuation right after the prompt (summed over its tokens).

        ``progress``: a progress bar over the batches (None: when there is more than one batch and
        stderr is a terminal).

        In bfloat16 (the default on CPUs with native bf16 and on CUDA) a score can move by a few tenths
        of a nat with ``batch_size``, since padding changes the kernels' rounding; compare scores
        from calls with the same batch size, or load the model with ``dtype="float32"``.

        With the chat template the continuation follows the assistant-turn opening. Without it (a raw
        prompt, ``chat=False``) it is appended exactly as given, as in text completion: include its
        leading space (``" Paris"``) when it starts a new word.
        """
        self.last_routing = None  # a call that fails leaves no earlier routing behind
        if isinstance(continuations, str) or not isinstance(continuations, Sequence) or not continuations:
            raise SekaError("continuations must be a non-empty list of strings")
        for name, value in (("query", query), ("query_embedding", query_embedding)):
            rows = _entry_count(value)
            if rows is not None and rows != 1:
                raise SteeringConfigError(
                    f"score has one prompt, so {name} takes one entry, not {rows}: every continuation is "
                    "scored under the same edit (score_encoded takes one per row)"
                )
        if isinstance(query, (list, tuple)) and len(query) == 1:
            query = query[0]  # the one prompt's query, for every continuation's row
        cont_ids = []
        for c in continuations:
            if not isinstance(c, str) or not c:
                raise SekaError(f"each continuation must be a non-empty string, got {c!r}")
            cont_ids.append(self.tokenizer(c, add_special_tokens=False)["input_ids"])
        longest = max(len(c) for c in cont_ids)
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=self._prompt_budget(longest, "continuation tokens"))
        return self.score_encoded(
            [(enc, ids) for ids in cont_ids], steer=steer, gain_pos=gain_pos, gain_neg=gain_neg,
            layers=layers, heads=heads, router=router, query=query, query_embedding=query_embedding,
            routing=routing, batch_size=batch_size, progress=progress,
        )

    def score_encoded(
        self,
        rows: Sequence[tuple[EncodedPrompt, list[int]]],
        *,
        steer: bool = True,
        gain_pos: float | None = None,
        gain_neg: float | None = None,
        layers: Sequence[int] | None = None,
        heads: HeadSelection = None,
        router: str | Mapping[str, float] | None = None,
        query: str | Sequence[str] | None = None,
        query_embedding: Any = None,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> list[float]:
        """Score (encoded prompt, continuation token ids) pairs in left-padded batches.

        AdaSEKA's attention router reads each row's last *prompt* token, not the continuation's.
        ``progress`` as in :meth:`score`.
        """
        scores: list[float] = []
        routed: list[RoutingResult | None] = []
        self.last_routing = None  # a call that fails leaves no earlier routing behind
        bs = _check_batch_size(batch_size)
        n = len(rows)
        with _progress_bar(-(-n // bs), progress, "score") as bar, _forget_routing_on_error(self):
            for start in range(0, n, bs):
                chunk = rows[start : start + bs]
                joined = [
                    EncodedPrompt(enc.input_ids + ids, enc.highlight + [False] * len(ids), enc.text, enc.truncated,
                                  enc.routing_text)
                    for enc, ids in chunk
                ]
                batch = pad_batch(joined, self.tokenizer.pad_token_id, side="left").to(self.device)
                keep = max(len(ids) for _, ids in chunk) + 1
                width = batch.input_ids.shape[1]
                last_prompt = torch.tensor([width - 1 - len(ids) for _, ids in chunk], dtype=torch.long)
                block = self.steering(
                    batch.highlight_mask, steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers,
                    heads=heads, router=router, routing=routing, query=_chunk(query, start, start + bs, n),
                    query_embedding=_chunk(query_embedding, start, start + bs, n, "query_embedding"),
                    query_index=last_prompt, rows=joined,
                )
                with torch.inference_mode(), block:
                    logits = self._forward_logits(batch, keep)
                routed.append(block.result if block.result is not None else len(chunk))
                scores.extend(continuation_logprobs(logits, [ids for _, ids in chunk]))
                bar.update(1)
        self.last_routing = RoutingResult.concat(routed)
        return scores

    def _forward_logits(self, batch: Batch, keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` positions of a left-padded batch."""
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            use_cache=False,
        )
        return out.logits[:, -keep:]

    def __repr__(self) -> str:
        if self.projection is None:
            proj = "none"
        else:
            edited = self.projection.edited_layers
            proj = f"{len(edited)} of {self.projection.meta.num_layers} layers edited by default"
        experts = "" if self.experts is None else f", experts={self.experts.names}, router={self.router!r}"
        return f"SekaModel({self.model_id!r}, device={self.device}, projection={proj}{experts})"


class SteeringBlock:
    """The context manager :meth:`SekaModel.steering` returns; ``result`` holds the routing after it."""

    def __init__(self, owner: "SekaModel", edit: ActiveEdit | None = None):
        self.owner = owner
        self.edit = edit
        self.result: RoutingResult | None = None
        self._cm = None

    def __enter__(self) -> "SteeringBlock":
        if self.edit is not None:
            self._cm = self.owner._editor.activate(self.edit)
            self._cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._cm is not None:
            self._cm.__exit__(exc_type, exc, tb)
            self._cm = None
        if isinstance(self.edit, AdaptiveEdit):  # a failed call routed nothing to report
            self.result = (None if exc_type is not None
                           else self.edit.result(list(self.edit.expert_names), self.edit.highlight.shape[0]))
        self.owner.last_routing = self.result
        return False


@contextlib.contextmanager
def _forget_routing_on_error(model: "SekaModel") -> Iterator[None]:
    """Leave ``last_routing`` None when the block fails, even after an earlier batch of the call routed."""
    try:
        yield
    except BaseException:
        model.last_routing = None
        raise


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path (a hub id is ``"org/name"``, one slash, no leading dot)."""
    return (name.startswith(("/", "./", "../", "~", "\\")) or name.endswith(("/", os.sep)) or name.count("/") > 1
            or bool(re.match(r"^[A-Za-z]:[\\/]", name)))


def _check_attn_implementation(value: Any) -> None:
    """Refuse an attention implementation transformers does not know, before any weights load
    (None: transformers' own choice)."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise SekaError(f"attn_implementation must be a string such as 'sdpa' or 'eager', got {value!r}")
    if "/" in value:  # a kernel from the hub ("kernels-community/..."): transformers checks it
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())]
    if value not in known and value.removeprefix("paged|") not in known:
        raise SekaError(f"unknown attn_implementation {value!r}; choose one of {', '.join(known)}")


def _query_texts(query: Any, n: int) -> list[str]:
    """``query=`` as one text per row: a string for every row, or a list with one per prompt."""
    if not isinstance(query, (str, Sequence)) or isinstance(query, bytes):
        raise SteeringConfigError(f"query must be a non-empty string, or one per prompt ({n}), got {query!r}")
    texts = [query] * n if isinstance(query, str) else list(query)
    if len(texts) != n or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SteeringConfigError(f"query must be a non-empty string, or one per prompt ({n})")
    return texts


def _entry_count(value: Any) -> int | None:
    """How many per-prompt entries a ``query`` / ``query_embedding`` holds: rows of a 2-D array, items
    of a list of texts or vectors, 1 for a single text or vector; None when it is not given."""
    if value is None or isinstance(value, (str, Mapping)):
        return None if value is None else 1
    if hasattr(value, "shape") and hasattr(value, "__getitem__"):  # torch / numpy arrays
        return value.shape[0] if len(value.shape) == 2 else 1
    if isinstance(value, Sequence) and value and not isinstance(value[0], numbers.Real):
        return len(value)
    return 1  # one vector of numbers for every prompt


def _chunk(value: Any, start: int, stop: int, n: int, name: str = "query") -> Any:
    """The slice of a per-prompt argument (a list with one entry per prompt) for one batch.

    One entry for every prompt is kept whole; any other count is an error here, whatever the batch
    size (a batch that happens to hold as many rows must not take another batch's entries)."""
    texts = isinstance(value, (str, bytes, Mapping)) or (
        isinstance(value, Sequence) and any(isinstance(v, (str, bytes)) for v in value))
    if name == "query_embedding" and texts:
        raise SteeringConfigError("query_embedding must be a vector of numbers (or one per prompt); "
                                  "for a text, pass query= instead")
    rows = _entry_count(value)
    if rows is None or rows == 1:
        return value
    if rows != n:
        raise SteeringConfigError(f"{name} has {rows} entries for {n} prompts: give one per prompt, or one for all")
    return value[start:stop] if hasattr(value, "shape") else list(value[start:stop])


def _cancelled(event: threading.Event | None) -> list:
    """A stopping criterion that ends generation once ``event`` is set (none without an event)."""
    if event is None:
        return []
    if not hasattr(event, "is_set"):
        raise SekaError(f"cancel must be a threading.Event, got {type(event).__name__}")
    from transformers import StoppingCriteria

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return [_Cancelled()]


def continuation_logprobs(logits: torch.Tensor, continuations: Sequence[Sequence[int]]) -> list[float]:
    """Summed log-probability of each row's continuation, from the logits of a left-padded batch's last
    positions (``logits[:, -k:]`` for ``k`` = the longest continuation + 1: the last prompt token's and the
    continuation's own, of which the last one predicts nothing)."""
    keep = logits.shape[1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    out = []
    for i, ids in enumerate(continuations):
        target = torch.tensor(list(ids), device=logprobs.device)
        picked = logprobs[i, keep - 1 - len(ids) : keep - 1].gather(-1, target[:, None])
        out.append(float(picked.sum()))
    return out


def _refuse_misspelt_argument(key: str, method: Any) -> None:
    """Raise when ``key`` (passed on to transformers) looks like a slip for one of ``method``'s own arguments."""
    import difflib
    import inspect

    if key == "adaptive":
        raise SekaError("adaptive=True belongs to SekaModel.default(); with from_pretrained, pass experts=DIR")
    ours = [p for p in inspect.signature(method).parameters if p not in ("cls", "self", "model_kwargs")]
    close = difflib.get_close_matches(key, ours, n=1, cutoff=0.85)
    if close:
        raise SekaError(f"unknown argument {key!r}; did you mean {close[0]!r}?")


def _set_pad_token(tokenizer: Any, model: Any) -> None:
    """Give a tokenizer without a pad token one: its end-of-sequence token, else the model's generation
    config's pad or end-of-sequence token (padded positions are masked, so any real token serves)."""
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return
    config = getattr(model, "generation_config", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            token = tokenizer.convert_ids_to_tokens(value)
            if isinstance(token, str):
                tokenizer.pad_token = token
                return
    raise SekaError(
        "the tokenizer has neither a pad token nor an end-of-sequence token, and the model's generation config "
        "names none: set one before building SekaModel (e.g. tokenizer.pad_token = tokenizer.bos_token)"
    )


def _check_model_and_tokenizer(model: Any, tokenizer: Any) -> None:
    """What ``SekaModel(model, tokenizer)`` needs: a loaded causal LM (compiled or not) and its own tokenizer."""
    if isinstance(model, (str, os.PathLike)):
        raise SekaError(f"SekaModel() wraps a loaded model; to load {str(model)!r}, use SekaModel.from_pretrained()")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        hint = " (model and tokenizer swapped?)" if hasattr(tokenizer, "config") else ""
        raise SekaError(f"model must be a loaded Hugging Face causal LM, got {type(model).__name__}{hint}")
    if not callable(getattr(model, "generate", None)):
        raise SekaError(f"{type(model).__name__} has no language-model head: load the model with "
                        "AutoModelForCausalLM (or SekaModel.from_pretrained)")
    if not callable(tokenizer) or not hasattr(tokenizer, "decode") or not hasattr(tokenizer, "pad_token_id"):
        hint = " (for a processor, pass processor.tokenizer)" if hasattr(tokenizer, "tokenizer") else ""
        raise SekaError(f"tokenizer must be the model's Hugging Face tokenizer, got {type(tokenizer).__name__}{hint}")
    # the base vocabulary, not len(tokenizer): a checkpoint may add tokens it never embeds (Gemma 3's image token)
    vocabulary = getattr(tokenizer, "vocab_size", None)
    rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    if isinstance(rows, int) and isinstance(vocabulary, int) and vocabulary > rows:
        raise SekaError(f"the tokenizer's vocabulary has {vocabulary} tokens but the model embeds only {rows}: it "
                        "belongs to another model (load both from the same checkpoint)")


def _check_progress(progress: Any) -> None:
    if progress is not None and not _is_bool(progress):
        raise SekaError(f"progress must be True, False or None (a bar for calls of several batches), got {progress!r}")


def _progress_bar(batches: int, progress: Any, desc: str):
    """A tqdm bar over a call's batches: ``progress`` True / False, or None for a bar when there is more
    than one batch and stderr is a terminal."""
    from tqdm.auto import tqdm

    _check_progress(progress)
    disable = (not progress) if progress is not None else (None if batches > 1 else True)
    return tqdm(total=batches, desc=desc, unit="batch", disable=disable, leave=False)


def _check_prompt_options(chat: Any, markers: Any) -> None:
    """``chat=`` and per-call ``markers=``, checked before any prompt is read."""
    if chat is not None and not _is_bool(chat):
        raise SekaError(f"chat must be True, False or None (use the template when there is one), got {chat!r}")
    if markers is not _UNSET and markers is not None and not isinstance(markers, Markers):
        raise HighlightError(f"markers must be a Markers(start, end) or None (no inline markers), not {markers!r}")


def _is_count(value: Any) -> bool:
    """A positive whole number: a Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not _is_bool(value) and value >= 1


def _check_max_new_tokens(value: Any) -> int:
    if not _is_count(value):
        raise SekaError(f"max_new_tokens must be a positive integer, got {value!r}")
    return int(value)


def _is_bool(value: Any) -> bool:
    """True / False, numpy's included."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"))


def _check_batch_size(batch_size: Any) -> int:
    if not _is_count(batch_size):
        raise SekaError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _is_single_prompt(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        return True  # one chat conversation
    return False


def _pending_stop_prefix(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list of non-empty strings (a single string is one stop sequence; None, no stop)."""
    if stop is None:
        return []
    if isinstance(stop, (bytes, Mapping)) or not isinstance(stop, (str, Iterable)):
        raise SekaError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise SekaError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return stops


def _cut_at_stop(text: str, stop: str | Sequence[str] | None) -> str:
    stop = _stop_list(stop)
    if not stop:
        return text
    cuts = [text.find(s) for s in stop if s in text]  # _stop_list: no empty strings
    return text[: min(cuts)] if cuts else text


def _converted_gguf(directory: Path, gguf_file: str, cache_dir) -> Path:
    """Dequantise a GGUF once and cache it as safetensors; key the cache on the file's identity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not directory.exists():
        raise SekaError(
            f"gguf_file= is read from a local directory, and {str(directory)!r} is not one; GGUF files "
            "are not downloaded from the hub: download the file and pass its directory"
        )
    gguf_path = (directory / gguf_file) if directory.is_dir() else directory
    if not gguf_path.is_file():
        raise SekaError(f"GGUF file {str(gguf_path)!r} does not exist")
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root(cache_dir) / "converted" / f"gguf-{key}"
    source = {"gguf": str(gguf_path.resolve()), "size": st.st_size}
    if _gguf_converted(target, source):
        return target
    import shutil

    from .models.embedded import gguf_progress_bars, make_cache_folder, publish, write_marker

    # a private work folder: a crashed conversion leaves nothing half-written under the cache key,
    # and two processes converting at once do not write into one folder
    work = make_cache_folder(target.parent)
    try:
        with gguf_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        save_converted(model, tokenizer, work / "converted")
        write_marker(work / "converted", source)
        publish(work / "converted", target, lambda path: _gguf_converted(path, source))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _raise_if_damaged_cache(source: str, exc: BaseException) -> None:
    """A load of a model folder that seka-rag converted into its cache failed: say that the folder is
    damaged and how to get a good one, instead of the loader's own error."""
    from .models.embedded import MARKER, is_complete

    # a complete copy (every file at its recorded size; an older marker records none) is not to blame:
    # the load failed for another reason (an option, a missing package), which its own error names
    if isinstance(exc, SekaError) or not (Path(source) / MARKER).is_file() or is_complete(Path(source)):
        return
    raise SekaError(
        f"the converted model cached in {source!r} could not be loaded ({type(exc).__name__}: {exc}); the copy is "
        "damaged: delete that folder and the next load converts the model again"
    ) from exc


def _gguf_converted(target: Path, source: dict) -> bool:
    """Whether ``target`` holds a finished conversion of the GGUF ``source``; a folder an older seka-rag
    wrote (a config.json, no marker) counts as one."""
    from .models.embedded import MARKER, is_complete

    if (target / MARKER).is_file():
        return is_complete(target, **source)
    return (target / "config.json").is_file()
