""":class:`SekaModel`: the public facade — load a model, highlight, generate, stream and score."""

from __future__ import annotations

import hashlib
import numbers
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from .architectures import geometry, text_config
from .errors import HighlightError, SekaError, SteeringConfigError
from .highlight import (
    DEFAULT_MARKERS,
    Batch,
    EncodedPrompt,
    Highlight,
    Markers,
    Prompt,
    encode_prompt,
    pad_batch,
    prepare_prompt,
)
from .models.embedded import DEFAULT_MODEL, cache_root, embedded_model, ensure_converted, save_converted
from .projection import Projection
from .steering import HeadSelection, KeyEditor, SteeringConfig, edit_matrices

_UNSET: Any = object()
SHIPPED_PROJECTIONS = Path(__file__).parent / "data" / "projections"


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


class SekaModel:
    """A causal language model whose highlighted prompt tokens get SEKA key edits.

    Build one with :meth:`default` (an embedded offline model and its shipped projection) or
    :meth:`from_pretrained` (any supported Hugging Face model), or wrap a loaded model and tokenizer.

    Every call takes ``highlights=`` (substrings, ``(start, end)`` character spans, or
    ``(message_index, start, end)`` for chat messages) in addition to inline markers (``<<`` … ``>>``
    by default), ``steer=False`` to run with no edit at all, and per-call ``gain_pos``,
    ``gain_neg``, ``layers`` and ``heads`` overriding the projection's stored defaults.
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
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.geometry = geometry(model)
        self.model_id = model_id or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.markers = markers
        config = text_config(model.config)
        self.context_window = int(context_window or getattr(config, "max_position_embeddings", 0) or 2048)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._editor = KeyEditor(model)
        self.projection: Projection | None = None
        if projection is not None:
            self.load_projection(projection)

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
        **model_kwargs: Any,
    ) -> "SekaModel":
        """Load a supported Hugging Face model (hub id, local directory, or GGUF file in a directory).

        A GGUF is dequantised once and cached as safetensors under ``cache_dir``
        (default ``$SEKA_RAG_CACHE`` or ``~/.cache/seka-rag``), so later loads take seconds.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from transformers import AutoConfig

        from .architectures import spec_for

        device = _default_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        source = str(name_or_dir)
        if gguf_file is not None:
            source = str(_converted_gguf(Path(name_or_dir), gguf_file, cache_dir))
        try:
            spec_for(AutoConfig.from_pretrained(source).model_type)  # unsupported: fail before loading weights
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype, attn_implementation=attn_implementation, **model_kwargs
            )
        except OSError as exc:  # not found locally / offline hub
            raise SekaError(f"could not load model {str(name_or_dir)!r}: {exc}") from None
        model.to(device)
        return cls(model, tokenizer, projection, model_id=model_id or str(name_or_dir))

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
    ) -> "SekaModel":
        """An embedded offline model (``"qwen2.5-coder-0.5b"`` or ``"smollm2-135m"``) with its shipped projection."""
        spec = embedded_model(name)
        directory = ensure_converted(spec, cache_dir)
        if projection is _UNSET:
            shipped = shipped_projection_path(name)
            projection = shipped if shipped.is_file() else None
        return cls.from_pretrained(
            directory, projection=projection, device=device, dtype=dtype,
            attn_implementation=attn_implementation, model_id=spec.model_id,
        )

    def load_projection(self, projection: Projection | str | os.PathLike) -> Projection:
        """Attach a projection (object or file); raises :class:`ProjectionError` if it does not fit."""
        if not isinstance(projection, Projection):
            projection = Projection.load(projection)
        projection.check_fits(self.geometry, self.model_id)
        self.projection = projection
        return projection

    @property
    def device(self) -> torch.device:
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
    ) -> EncodedPrompt:
        """Token ids and highlight mask of one prompt, as the model will see it."""
        if isinstance(highlights, str):
            highlights = [highlights]
        prepared = prepare_prompt(
            prompt, self.tokenizer, highlights,
            markers=self.markers if markers is _UNSET else markers, chat=chat,
        )
        return encode_prompt(prepared, self.tokenizer, self.context_window if max_length is None else max_length)

    def highlighted_tokens(
        self,
        prompt: Prompt,
        highlights: Sequence[Highlight] | str | None = None,
        *,
        chat: bool | None = None,
        markers: Markers | None = _UNSET,
    ) -> list[str]:
        """The tokens a highlight covers, in order — to preview what will be steered."""
        enc = self.encode(prompt, highlights, chat=chat, markers=markers)
        return [self.tokenizer.decode([t]) for t, on in zip(enc.input_ids, enc.highlight) if on]

    def _encode_many(self, prompts, highlights, chat, markers, max_length) -> list[EncodedPrompt]:
        if highlights is None:
            highlights = [None] * len(prompts)
        elif not isinstance(highlights, Sequence) or isinstance(highlights, str) or len(highlights) != len(prompts):
            raise HighlightError(
                "for a list of prompts, highlights must be a list with one entry per prompt "
                "(each a list of highlights, or None)"
            )
        return [self.encode(p, h, chat=chat, markers=markers, max_length=max_length) for p, h in zip(prompts, highlights)]

    # ------------------------------------------------------------------ steering
    def _steering_matrices(self, gain_pos, gain_neg, layers, heads) -> dict[int, torch.Tensor]:
        if self.projection is None:
            raise SekaError(
                "this model has no projection: pass projection= when loading, call "
                "load_projection(), or build one with `seka-rag build-projection`"
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
    ):
        """Context manager: edit the keys at ``highlight_mask`` (batch, tokens) during the block.

        Does nothing when ``steer`` is False or no token is highlighted.
        """
        if not isinstance(steer, bool):
            raise SteeringConfigError(f"steer must be True or False, got {steer!r}")
        if not steer:
            return nullcontext()
        anything = bool(highlight_mask.any())
        if self.projection is None and not anything:
            return nullcontext()  # nothing to steer, nothing to complain about
        matrices = self._steering_matrices(gain_pos, gain_neg, layers, heads)  # validates per-call settings
        if not anything:
            return nullcontext()
        return self._editor.apply(matrices, highlight_mask.to(self.device))

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
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SekaError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=bool(do_sample),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if do_sample:
            if temperature is not None:
                if not isinstance(temperature, numbers.Real) or not temperature > 0:
                    raise SekaError(f"temperature must be a positive number when sampling, got {temperature!r}")
                kwargs["temperature"] = float(temperature)
            if top_p is not None:
                if not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
                    raise SekaError(f"top_p must be in (0, 1], got {top_p!r}")
                kwargs["top_p"] = float(top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=_stop_list(stop), tokenizer=self.tokenizer)
        return kwargs

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
        batch_size: int = 8,
    ) -> str | list[str]:
        """Generate a continuation of ``prompt`` (or of each prompt in a list, batched).

        A plain-text prompt goes through the chat template when the tokenizer has one
        (``chat=False`` sends it raw). Returns the new text only, cut at the first ``stop`` string.
        For a list of prompts, ``highlights`` is a list with one entry per prompt.
        """
        single = _is_single_prompt(prompt)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            return []
        if single:
            highlights = [highlights]
        gen = self._generation_kwargs(max_new_tokens, do_sample, temperature, top_p, stop)
        encoded = self._encode_many(prompts, highlights, chat, markers, self._prompt_budget(max_new_tokens))
        steer_kw = dict(steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads)
        outputs: list[str] = []
        bs = _check_batch_size(batch_size)
        for start in range(0, len(encoded), bs):
            rows = encoded[start : start + bs]
            batch = pad_batch(rows, self.tokenizer.pad_token_id, side="left").to(self.device)
            with torch.inference_mode(), self.steering(batch.highlight_mask, **steer_kw):
                out = self.model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, **gen
                )
            new = out[:, batch.input_ids.shape[1] :]
            outputs.extend(_cut_at_stop(t, stop) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
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
    ) -> Iterator[str]:
        """Like :meth:`generate` for one prompt, yielding text pieces as tokens are produced."""
        from transformers import TextIteratorStreamer

        gen = self._generation_kwargs(max_new_tokens, do_sample, temperature, top_p, stop)
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=self._prompt_budget(max_new_tokens))
        batch = pad_batch([enc], self.tokenizer.pad_token_id).to(self.device)
        steering = self.steering(
            batch.highlight_mask, steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads
        )
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop = _stop_list(stop)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []
        abandoned = threading.Event()  # set when the consumer stops reading: generation ends early

        class _Abandoned(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), abandoned.is_set(), dtype=torch.bool, device=input_ids.device)

        def run() -> None:
            try:
                with torch.inference_mode(), steering:
                    self.model.generate(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Abandoned()]), **gen
                    )
            except BaseException as exc:  # surfaced in the consuming thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text, sent = "", 0  # all text so far, and how much of it was yielded
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
                    sent = safe
        finally:
            abandoned.set()
            worker.join()
        if failure:
            raise failure[0]
        if len(text) > sent:
            yield text[sent:]

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
        batch_size: int = 8,
    ) -> list[float]:
        """Log-probability of each continuation right after the prompt (summed over its tokens).

        With the chat template the continuation follows the assistant-turn opening.
        """
        if isinstance(continuations, str) or not isinstance(continuations, Sequence) or not continuations:
            raise SekaError("continuations must be a non-empty list of strings")
        cont_ids = []
        for c in continuations:
            if not isinstance(c, str) or not c:
                raise SekaError(f"each continuation must be a non-empty string, got {c!r}")
            cont_ids.append(self.tokenizer(c, add_special_tokens=False)["input_ids"])
        longest = max(len(c) for c in cont_ids)
        enc = self.encode(prompt, highlights, chat=chat, markers=markers, max_length=self._prompt_budget(longest, "continuation tokens"))
        return self.score_encoded(
            [(enc, ids) for ids in cont_ids], steer=steer, gain_pos=gain_pos, gain_neg=gain_neg,
            layers=layers, heads=heads, batch_size=batch_size,
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
        batch_size: int = 8,
    ) -> list[float]:
        """Score (encoded prompt, continuation token ids) pairs in left-padded batches."""
        scores: list[float] = []
        bs = _check_batch_size(batch_size)
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            joined = [
                EncodedPrompt(enc.input_ids + ids, enc.highlight + [False] * len(ids), enc.text)
                for enc, ids in chunk
            ]
            batch = pad_batch(joined, self.tokenizer.pad_token_id, side="left").to(self.device)
            keep = max(len(ids) for _, ids in chunk) + 1
            with torch.inference_mode(), self.steering(
                batch.highlight_mask, steer=steer, gain_pos=gain_pos, gain_neg=gain_neg, layers=layers, heads=heads
            ):
                logits = self._forward_logits(batch, keep)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, (_, ids) in enumerate(chunk):
                n = len(ids)
                target = torch.tensor(ids, device=logprobs.device)
                picked = logprobs[i, keep - 1 - n : keep - 1].gather(-1, target[:, None])
                scores.append(float(picked.sum()))
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
            meta = self.projection.meta
            edited = meta.default_layers if meta.default_layers is not None else meta.layers
            proj = f"{len(edited)} of {meta.num_layers} layers edited by default"
        return f"SekaModel({self.model_id!r}, device={self.device}, projection={proj})"


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SekaError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


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
    """``stop`` as a list of non-empty strings (a single string is one stop sequence)."""
    if not stop:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise SekaError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return stops


def _cut_at_stop(text: str, stop: str | Sequence[str] | None) -> str:
    stop = _stop_list(stop)
    if not stop:
        return text
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def _converted_gguf(directory: Path, gguf_file: str, cache_dir) -> Path:
    """Dequantise a GGUF once and cache it as safetensors; key the cache on the file's identity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = (directory / gguf_file) if directory.is_dir() else directory
    if not gguf_path.is_file():
        raise SekaError(f"GGUF file {str(gguf_path)!r} does not exist")
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root(cache_dir) / "converted" / f"gguf-{key}"
    if (target / "config.json").is_file():
        return target
    tmp = target.with_name(target.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    save_converted(model, tokenizer, tmp)
    os.replace(tmp, target)
    return target
