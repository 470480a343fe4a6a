"""``SekaLLM``: a LangChain text-completion LLM (string in, string out) over a SEKA-steered model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.runnables.config import get_config_list
from pydantic import Field

from seka_rag import HighlightError, SekaError, SekaModel

from . import _cancel as cancellable
from ._cancel import athread_iter, run_cancellable
from ._loading import model_label
from ._messages import document_highlights
from ._compat import HostedModelArguments
from ._settings import SekaSettings, _stop_list, cache_in_use, call_digest, load_for_cache_key, routing_info, usage_counts
from ._text import as_document_list, as_highlight_list

__all__ = ["SekaLLM"]

#: the digest of the running generate call's own arguments (see SekaLLM.generate)
_CALL_DIGEST: ContextVar[str | None] = ContextVar("langchain_seka_llm_call", default=None)
#: LangChain's own keyword arguments of generate: not part of what the model is asked
_LANGCHAIN_ARGS = frozenset({"tags", "metadata", "run_name", "run_id"})


def _one_prompts_mistake(out: list[Any]) -> bool:
    """Whether a batch failed for one prompt's own mistake (its markers, its highlights), not for a setting's
    error, which is the same for every prompt."""
    return isinstance(next((o for o in out if isinstance(o, Exception)), None), HighlightError)


class SekaLLM(SekaSettings, HostedModelArguments, LLM):
    """Text-completion LLM over a SEKA-steered model (see :class:`~langchain_seka.ChatSeka`).

    The prompt is a string; it goes through the model's chat template as one user turn unless
    ``chat_template=False`` or the tokenizer has none (then it is sent raw). Highlights: inline ``<<`` ``>>`` markers (the ``markers`` setting: another
    pair, or None for none), ``highlights=`` (substrings or
    ``(start, end)`` spans of the marker-free prompt) and ``documents=``. ``batch`` / ``generate``
    over several prompts run batched forward passes. Same fields as ``ChatSeka``; ``timeout``,
    ``max_retries``, ``api_key`` and ``base_url`` are accepted and do nothing.

    AdaSEKA routing as in ``ChatSeka``: the ``router`` / ``routing`` fields (or per call), and per
    call ``query_embedding=`` (the retriever's query vector; one per prompt in a batch) or
    ``query=``, all passed to the engine unchanged.
    """

    model_config = HostedModelArguments.model_config  # extra="forbid": unknown arguments are errors

    streaming: bool = Field(
        default=False,
        description="Generate through the streamer in invoke too, so token callbacks fire (one prompt per "
        "call: a batch is refused).",
    )

    @property
    def _llm_type(self) -> str:
        return "seka"

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """Not supported: there is no constrained decoding or tool calling to enforce a schema."""
        raise NotImplementedError(
            "SekaLLM does not support with_structured_output (no tool calling or JSON mode): ask for JSON in the "
            "prompt and parse it with an output parser, e.g. langchain_core.output_parsers.JsonOutputParser"
        )

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[str]:
        """Every prompt in one batched engine call; with ``return_exceptions=True`` a failing batch is
        retried prompt by prompt, so only the bad prompts come back as exceptions (LangChain's own LLM
        batching returns the batch's one error for every prompt)."""
        if not self._retries_one_by_one(inputs, config, return_exceptions):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        out = super().batch(inputs, config, return_exceptions=True, **kwargs)
        if not _one_prompts_mistake(out):
            return out
        # find which prompt, one by one (each prompt then has a failed run for the batch and one of its own)
        return [super(SekaLLM, self).batch([x], c, return_exceptions=True, **kwargs)[0]
                for x, c in zip(inputs, get_config_list(config, len(inputs)))]

    async def abatch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[str]:
        """:meth:`batch` with LangChain's own async batching: one batched engine call in a worker thread
        (the event loop stays free), while the runs and callbacks (async handlers included) happen on
        this event loop."""
        if not self._retries_one_by_one(inputs, config, return_exceptions):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        out = await super().abatch(inputs, config, return_exceptions=True, **kwargs)
        if not _one_prompts_mistake(out):
            return out
        return [(await super(SekaLLM, self).abatch([x], c, return_exceptions=True, **kwargs))[0]
                for x, c in zip(inputs, get_config_list(config, len(inputs)))]

    def _retries_one_by_one(self, inputs: list[Any], config: Any, return_exceptions: bool) -> bool:
        """Whether a batch that fails is retried prompt by prompt: with ``return_exceptions=True``, so that
        only the bad prompts come back as exceptions (LangChain's own LLM batching returns the batch's
        one error for every prompt); not when LangChain already runs the prompts one by one."""
        configs = get_config_list(config, len(inputs))
        return (return_exceptions and len(inputs) >= 2 and not self.streaming
                and not any(c.get("max_concurrency") for c in configs))  # LangChain's chunks come back through here

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params = self.identifying_params()
        digest = _CALL_DIGEST.get()
        if digest is not None:  # inside generate / agenerate: that call's own arguments
            params["call_digest"] = digest
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return langsmith_params(self, "llm", stop, kwargs)

    # LangChain builds a text LLM's cache key from the fields and `stop` only: the call's own
    # arguments (highlights=, documents=, gains, router, ...) join it through _identifying_params
    def generate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                 **kwargs: Any) -> LLMResult:
        """LangChain's ``generate``, with this call's arguments (``highlights=``, ``documents=``, gains,
        router...) in the cache key, so a cached answer is only reused for the same arguments."""
        load_for_cache_key(self, kwargs)
        token = _CALL_DIGEST.set(call_digest({k: v for k, v in kwargs.items() if k not in _LANGCHAIN_ARGS}))
        try:
            return super().generate(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _CALL_DIGEST.reset(token)

    async def agenerate(self, prompts: list[str], stop: list[str] | None = None, callbacks: Any = None,
                        **kwargs: Any) -> LLMResult:
        """LangChain's ``agenerate``, with this call's arguments in the cache key (see :meth:`generate`)."""
        if cache_in_use(self):
            await asyncio.to_thread(load_for_cache_key, self, kwargs)  # the event loop stays free while it loads
        token = _CALL_DIGEST.set(call_digest({k: v for k, v in kwargs.items() if k not in _LANGCHAIN_ARGS}))
        try:
            return await super().agenerate(prompts, stop=stop, callbacks=callbacks, **kwargs)
        finally:
            _CALL_DIGEST.reset(token)

    def _prepare(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]):
        kwargs = dict(kwargs)
        highlights = kwargs.pop("highlights", None)
        documents = kwargs.pop("documents", None)
        routing = self.routing_request(kwargs)
        override = kwargs.pop("model", None)
        model = self.seka_model(override)
        markers = self.inline_markers(model, kwargs)
        gen = self.generation_kwargs(kwargs, stop)
        gen["markers"] = markers
        highlights = as_highlight_list(highlights)
        documents = as_document_list(documents)
        if documents:
            highlights += document_highlights(documents, [prompt], markers)
        name = model_label(override if override is not None else self.model)
        return model, name, highlights or None, gen, routing

    def _generation(self, model: SekaModel, name: str, prompt: str, highlights, gen, text: str,
                    row: int = 0) -> Generation:
        counts = usage_counts(model, prompt, highlights, chat=gen["chat"], max_new_tokens=gen["max_new_tokens"],
                              text=text, markers=gen["markers"])
        info: dict[str, Any] = {"model_name": name, "usage": counts}
        routing = routing_info(model, row)  # read in the engine call's thread (async callers see it here)
        if routing:
            info["routing"] = routing
        return Generation(text=text, generation_info=info)

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        model, _, highlights, gen, routing = self._prepare(prompt, stop, kwargs)
        return cancellable.generate(model, prompt, highlights, **gen, **routing)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """All prompts in one batched engine call (the kwargs apply to every prompt).

        ``query_embedding=`` / ``query=`` may be one value for every prompt or a list with one per
        prompt (the engine's per-prompt form).
        """
        if self.streaming:
            return self._generate_streamed(prompts, stop, run_manager, kwargs)
        prepared = [self._prepare(p, stop, kwargs) for p in prompts]
        model, name, _, gen, routing = prepared[0]
        if len(prompts) == 1:
            texts = [cancellable.generate(model, prompts[0], prepared[0][2], **gen, **routing)]
        else:
            texts = cancellable.generate(
                model, list(prompts), [p[2] for p in prepared], batch_size=self.batch_size, progress=False, **gen, **routing)
        generations = [
            [self._generation(model, name, prompt, p[2], gen, text, row)]
            for row, (prompt, p, text) in enumerate(zip(prompts, prepared, texts))
        ]
        return _result(generations, name)

    @staticmethod
    def _check_one_streamed(prompts: list[str]) -> None:
        if len(prompts) != 1:
            # LangChain hands a batch's _generate one run manager: the tokens of every prompt would
            # be reported to the first prompt's run
            raise SekaError(
                f"streaming=True streams one prompt at a time, got {len(prompts)}: call invoke per prompt, "
                "or batch with streaming=False (one batched forward pass)"
            )

    def _generate_streamed(self, prompts: list[str], stop, run_manager, kwargs: dict[str, Any]) -> LLMResult:
        """``streaming=True``: the prompt through :meth:`_stream`, so every token reaches the callbacks."""
        self._check_one_streamed(prompts)
        text, info = "", {}
        for chunk in self._stream(prompts[0], stop, run_manager, **kwargs):
            text += chunk.text
            info = chunk.generation_info or info
        return _result([[Generation(text=text, generation_info=info)]], info.get("model_name"))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        """:meth:`_generate` in a worker thread: the same batching and usage as the sync calls. With
        ``streaming=True`` the prompt goes through :meth:`_astream`, so async token callbacks run on
        this event loop as each token arrives."""
        if self.streaming:
            self._check_one_streamed(prompts)
            text, info = "", {}
            async for chunk in self._astream(prompts[0], stop, run_manager, **kwargs):
                text += chunk.text
                info = chunk.generation_info or info
            return _result([[Generation(text=text, generation_info=info)]], info.get("model_name"))
        return await run_cancellable(self._generate, prompts, stop, run_manager.get_sync() if run_manager else None,
                                     **kwargs)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """:meth:`_stream` driven in a worker thread; the async callbacks get each token on this loop."""
        async for chunk in athread_iter(lambda: self._stream(prompt, stop, None, **kwargs)):
            if run_manager is not None and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        model, name, highlights, gen, routing = self._prepare(prompt, stop, kwargs)
        pieces: list[str] = []
        for piece in cancellable.stream(model, prompt, highlights, **gen, **routing):
            if not piece:
                continue
            pieces.append(piece)
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        final = self._generation(model, name, prompt, highlights, gen, "".join(pieces))
        yield GenerationChunk(text="", generation_info=final.generation_info)


def _result(generations: list[list[Generation]], name: str | None) -> LLMResult:
    totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    for (g,) in generations:
        for k in totals:
            totals[k] += g.generation_info["usage"][k]
    return LLMResult(generations=generations, llm_output={"token_usage": totals, "model_name": name})


def langsmith_params(settings: Any, model_type: str, stop: list[str] | None, kwargs: dict[str, Any]) -> LangSmithParams:
    """LangSmith tracing parameters of a ChatSeka / SekaLLM call (per-call values over the fields)."""
    override = kwargs.get("model")
    params = LangSmithParams(
        ls_provider="seka",
        ls_model_name=model_label(override) if override is not None else settings.model_name,
        ls_model_type=model_type,
        ls_max_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", settings.max_new_tokens)),
    )
    temperature = kwargs.get("temperature", settings.temperature)
    if temperature is not None:
        params["ls_temperature"] = temperature
    stops = _stop_list(stop) if stop is not None else settings.stop  # a bad per-call stop: a SekaError here
    if stops:
        params["ls_stop"] = [stops] if isinstance(stops, str) else list(stops)
    return params
