"""``ChatSeka``: a LangChain chat model that runs a SEKA-steered model in process."""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import Field, field_validator

from seka_rag import HighlightError, SekaError, SekaModel
from seka_rag.highlight import has_chat_template, parse_markers

from . import _cancel as cancellable
from ._cancel import athread_iter, run_cancellable
from ._loading import model_label
from ._messages import document_highlights, to_engine_messages
from ._compat import HostedModelArguments
from ._settings import SekaSettings, cache_in_use, call_digest, load_for_cache_key, routing_info, usage_counts
from ._text import as_document_list, as_highlight_list, as_marker_roles
from .llms import langsmith_params

__all__ = ["ChatSeka"]


def _as_langchain_passes_them(inputs: list[Any], convert) -> list[list[BaseMessage]]:
    """Each input's messages as LangChain hands them to ``_generate`` / ``_agenerate`` (converted, then
    normalised: e.g. a text ``file`` block becomes a ``text-plain`` one)."""
    try:
        from langchain_core.language_models._utils import _normalize_messages
    except ImportError:  # pragma: no cover - an older langchain-core, which did not normalise
        def _normalize_messages(messages):
            return list(messages)
    return [_normalize_messages(convert(i).to_messages()) for i in inputs]


@dataclass
class _Call:
    """One prepared engine call: model, prompt, highlights and engine keyword arguments."""

    model: SekaModel
    model_name: str
    prompt: Any
    highlights: list | None
    gen: dict[str, Any]
    routing: dict[str, Any] = field(default_factory=dict)  #: AdaSEKA arguments for the engine

    def key(self) -> tuple[str, str]:
        return repr(self.prompt), repr(self.highlights)


@dataclass
class _BatchPlan:
    """The inputs of one ``ChatSeka.batch`` call, generated together in one batched engine call.

    ``batch`` runs LangChain's own ``generate`` (callbacks, tracing, cache) over all inputs; the
    first ``_generate`` it makes computes every input's answer at once, later ones pick theirs up.
    """

    owner: "ChatSeka"
    message_lists: list[list[BaseMessage]]
    stop: list[str] | None
    kwargs: dict[str, Any]
    results: list[list[Any]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the batched call failed (or could not be prepared): every input then runs on its own, so each
    #: reports its own error (with ``return_exceptions=True``, only the bad inputs fail)
    failed: bool = False
    fail_quietly: bool = False

    def text_for(self, call: _Call) -> tuple[str, dict[str, Any] | None] | None:
        with self.lock:
            if self.failed:
                return None
            if self.results is None:
                try:
                    calls = [self.owner._prepare(m, self.stop, self.kwargs) for m in self.message_lists]
                    texts = self.owner._run_many(calls)
                except Exception:
                    self.failed = True
                    if not self.fail_quietly:
                        raise
                    return None
                self.results = [[c.key(), t, False, routing_info(calls[0].model, i)]
                                for i, (c, t) in enumerate(zip(calls, texts))]
            key = call.key()
            for row in self.results:
                if not row[2] and row[0] == key:
                    row[2] = True
                    return row[1], row[3]
        return None


_BATCH: ContextVar[_BatchPlan | None] = ContextVar("langchain_seka_batch", default=None)


@dataclass
class _AsyncBatch:
    """The inputs of one ``ChatSeka.abatch`` call, generated in one batched engine call in a worker thread.

    Each input runs through LangChain's ``ainvoke`` (its own run and callbacks, on the caller's event
    loop) knowing its row (:data:`_ASYNC_ROW`); the first to reach the model starts the batched call,
    and every input awaits it on the event loop, holding no thread while it waits.
    """

    owner: "ChatSeka"
    message_lists: list[list[BaseMessage]]
    stop: list[str] | None
    kwargs: dict[str, Any]
    #: when the batched call fails, each input runs alone to meet its own error (``return_exceptions``);
    #: otherwise every input raises the batched call's error
    alone_on_failure: bool = True
    task: asyncio.Future | None = None
    waiting: int = 0
    claimed: set[int] = field(default_factory=set)

    def claim(self, row: int, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> bool:
        """Whether this call is input ``row`` of the batch (its messages and the batch's settings, not yet
        answered): a call nested in it (a callback handler's own call) runs on its own."""
        if row in self.claimed or self.message_lists[row] != list(messages) or stop != self.stop:
            return False
        if kwargs.keys() != self.kwargs.keys() or any(kwargs[k] is not v for k, v in self.kwargs.items()):
            return False
        self.claimed.add(row)
        return True

    def _compute(self) -> list[tuple[Any, ChatResult]]:
        calls = [self.owner._prepare(m, self.stop, self.kwargs) for m in self.message_lists]
        texts = self.owner._run_many(calls)
        return [self.owner._chat_result(c, t, routing_info(calls[0].model, i))
                for i, (c, t) in enumerate(zip(calls, texts))]

    async def answer(self, row: int) -> ChatResult | None:
        """Row ``row``'s result of the batched call; when that call failed, None (the row then runs on its
        own and reports its own error) or, without ``alone_on_failure``, its error. When every input
        waiting for it is cancelled, the call is cancelled too, and stops generating."""
        if self.task is None:
            self.task = asyncio.ensure_future(run_cancellable(self._compute))
        self.waiting += 1
        try:
            results = await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiting == 1 and not self.task.done():
                self.task.cancel()
            raise
        except Exception:
            if not self.alone_on_failure:
                raise
            return None  # each input retries alone and meets its own error
        finally:
            self.waiting -= 1
        return results[row]

    def row_kwargs(self, row: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` for input ``row`` run on its own: a per-input ``query`` / ``query_embedding`` list cut
        to its row."""
        from seka_rag.model import _chunk

        n = len(self.message_lists)
        return {k: (_chunk(v, row, row + 1, n, k) if k in ("query", "query_embedding") and v is not None else v)
                for k, v in kwargs.items()}


#: ``(batch, row)`` while an input of :meth:`ChatSeka.abatch` runs
_ASYNC_ROW: ContextVar[tuple[_AsyncBatch, int] | None] = ContextVar("langchain_seka_async_row", default=None)


class ChatSeka(SekaSettings, HostedModelArguments, BaseChatModel):
    """Chat model over a SEKA-steered language model, running in this process.

    Tell the model which part of its prompt matters, in any of three ways (they combine):

    * inline markers in system, user and tool message contents: ``"Doc 2: <<The tower is in Rome.>>"``
      (write ``\\<<`` for a literal marker; ``markers=("⟦", "⟧")`` picks another pair when prompts
      hold code with ``<<`` / ``>>``, ``markers=None`` reads none; assistant messages are always
      literal);
    * ``highlights=``: substrings, or ``(message_index, start, end)`` character spans of a message's
      marker-free content (``(start, end)`` when the input is a single message / string) — per call
      (``invoke(..., highlights=[...])``) or bound (``chat.bind(highlights=[...])``);
    * ``documents=``: LangChain ``Document`` objects (or strings) whose text appears in the prompt
      — the retriever's evidence.

    ``ChatSeka()`` uses the default embedded model; ``model=`` takes a ``SekaModel`` or a shared
    model name (``ChatSeka(model="smollm2-135m")``). Construction is cheap: the model loads on first
    use and is shared by every instance that names it.

    Generation settings are fields (``max_new_tokens``, alias ``max_tokens``; ``do_sample``;
    ``temperature``; ``top_p``; ``stop``; ``gain_pos`` / ``gain_neg``; ``layers``; ``heads``;
    ``steer``; ``chat_template``; ``markers``; ``router``; ``routing``), each also accepted per call. Per call,
    ``model=`` switches to another shared model. ``adaptive=True`` loads a named model with its
    AdaSEKA expert set (shared apart from the plain one).

    AdaSEKA (a model with an expert set: ``adaptive=True`` for a named model, or a ``SekaModel``
    loaded with ``SekaModel.default(name, adaptive=True)`` / ``experts=``): ``router`` is
    ``"attention"``, ``"embedding"``, ``"projection"`` or ``{expert: weight}`` (None: the model's
    default); ``routing`` holds router parameters. For the embedding router pass the retriever's
    query vector per call — ``chat.bind(query_embedding=vector)`` or ``invoke(..., query_embedding=...)``
    — so no second embedding is computed, or ``query=`` (the question text; the engine embeds it
    once). Without either, the engine embeds the prompt text outside the highlights. These go to
    the engine unchanged; it rejects a query with any router but ``"embedding"``. Each response's
    ``response_metadata["routing"]`` tells which experts fired (``model.last_routing`` too, in the
    thread that ran a sync call).

    ``batch`` runs one batched engine call over its inputs, also inside a chain (``(prompt | chat).batch``)
    where every input has its own config and run.
    ``stream`` yields text as tokens are produced. Usage metadata carries token counts; the response
    metadata carries ``model_name`` and ``highlighted_tokens``.

    Not supported yet: tool calling (``bind_tools``), structured output (``with_structured_output``),
    JSON mode, and non-text content (images, audio, files).

    Standard LangChain constructor arguments for hosted models are accepted and do nothing here:
    ``timeout`` (no effect: to bound an async call, cancel it or wrap it in ``asyncio.wait_for``;
    generation then stops after the current token), ``max_retries`` (there is no
    service to retry), ``api_key`` and ``base_url`` (there is no service).
    """

    model_config = HostedModelArguments.model_config  # extra="forbid": unknown arguments are errors

    streaming: bool = Field(default=False, description="Generate through the streamer in invoke too.")
    marker_roles: tuple[str, ...] = Field(
        default=("system", "user", "tool"),
        description="Roles whose message text is read for inline markers ('developer' counts as system, "
        "'function' as tool); the others are read literally (an assistant's always are). ('system',) suits "
        "chat apps whose users type code with << / >>, with SekaHighlight's context in a system message.",
    )

    @field_validator("marker_roles", mode="before")
    @classmethod
    def _check_marker_roles(cls, value: Any) -> Any:
        return as_marker_roles(value)

    # ------------------------------------------------------------------------------ LangChain hooks
    @property
    def _llm_type(self) -> str:
        return "seka-chat"

    def _get_llm_string(self, stop: list[str] | None = None, **kwargs: Any) -> str:
        load_for_cache_key(self, kwargs)  # LangChain asks for it only when a cache is in use
        return super()._get_llm_string(stop=stop, **kwargs)

    async def agenerate(self, messages: list[list[BaseMessage]], stop: list[str] | None = None,
                        callbacks: Any = None, **kwargs: Any) -> ChatResult:
        """LangChain's ``agenerate``; with a cache in use, the model loads in a worker thread first, so
        building the cache key does not block the event loop."""
        if cache_in_use(self):
            await asyncio.to_thread(load_for_cache_key, self, kwargs)
        return await super().agenerate(messages, stop=stop, callbacks=callbacks, **kwargs)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self.identifying_params(), "marker_roles": list(self.marker_roles)}

    # ------------------------------------------------------------------------------ not supported
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Not supported: the in-process model has no tool-calling interface yet."""
        raise NotImplementedError(
            "ChatSeka does not support tool calling (bind_tools): describe the tools in the prompt and parse "
            "the reply yourself (see examples/agent_step.py in the seka-rag checkout); tool calls already in the history are shown to "
            "the model as <tool_call> blocks"
        )

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """Not supported: there is no constrained decoding or tool calling to enforce a schema."""
        raise NotImplementedError(
            "ChatSeka does not support with_structured_output (no tool calling or JSON mode): ask for JSON in "
            "the prompt and parse it with an output parser, e.g. langchain_core.output_parsers.JsonOutputParser"
        )

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return langsmith_params(self, "chat", stop, kwargs)

    def _combine_llm_outputs(self, llm_outputs: list[dict | None]) -> dict:
        """The batch's token usage summed (LangChain's default drops every llm_output)."""
        totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        names = []
        for output in llm_outputs:
            if output and "token_usage" in output:
                for key in totals:
                    totals[key] += output["token_usage"].get(key, 0)
                names.append(output.get("model_name"))
        if not names:  # streamed or cached: usage is in each message's usage_metadata only
            return {}
        combined: dict[str, Any] = {"token_usage": totals}
        if names and all(n == names[0] for n in names):
            combined["model_name"] = names[0]
        return combined

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Prompt tokens of ``messages`` exactly as a call sends them: chat template applied, markers removed
        (what ``usage_metadata["input_tokens"]`` reports, without the window's truncation)."""
        if tools:
            warnings.warn("ChatSeka does not support tool calling: tool schemas are not counted", UserWarning,
                          stacklevel=2)
        if not messages:
            return 0
        if self.custom_get_token_ids is not None:
            return super().get_num_tokens_from_messages(messages)
        try:
            call = self._prepare(messages, None, {})
            encoded = call.model.encode(call.prompt, call.highlights, chat=call.gen["chat"],
                                        markers=call.gen["markers"], max_length=10**9, warn=False)
        except SekaError:  # e.g. trim_messages cut a message inside a highlight: count the text as it is
            return super().get_num_tokens_from_messages(messages)
        return len(encoded.input_ids)

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """LangChain's invocation parameters (and cache key) plus a digest of the per-call arguments
        written out in full (LangChain's own ``repr`` abbreviates an array of more than 1,000 numbers)."""
        params = super()._get_invocation_params(stop=stop, **kwargs)
        digest = call_digest({k: v for k, v in kwargs.items() if k != "stream"})
        if digest is not None:
            params["call_digest"] = digest
        return params

    # ------------------------------------------------------------------------------ preparing calls
    def _prepare(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        kwargs = dict(kwargs)
        kwargs.pop("stream", None)  # LangChain's own routing flag
        highlights = kwargs.pop("highlights", None)
        documents = kwargs.pop("documents", None)
        routing = self.routing_request(kwargs)
        override = kwargs.pop("model", None)
        model = self.seka_model(override)
        markers = self.inline_markers(model, kwargs)
        gen = self.generation_kwargs(kwargs, stop)
        gen["markers"] = markers
        prompt: Any = to_engine_messages(messages, markers, self.marker_roles)
        highlights = as_highlight_list(highlights)
        documents = as_document_list(documents)
        if len(prompt) == 1:  # a single message (e.g. invoke("text")): (start, end) spans refer to it
            highlights = [(0, *h) if isinstance(h, (tuple, list)) and len(h) == 2 else h for h in highlights]
        if documents:
            highlights += document_highlights(documents, [m["content"] for m in prompt], markers)
        chat = gen["chat"]
        if chat is False or (chat is None and not has_chat_template(model.tokenizer)):
            prompt, highlights = _plain_transcript(prompt, highlights, markers)
            gen["chat"] = False
            gen["markers"] = None  # every highlight is a span or a substring of the marker-free transcript
        return _Call(
            model=model,
            model_name=model_label(override if override is not None else self.model),
            prompt=prompt,
            highlights=highlights or None,
            gen=gen,
            routing=routing,
        )

    def _run_many(self, calls: list[_Call]) -> list[str]:
        """Generate for prepared calls sharing one model and settings, in batched forward passes.

        The calls come from one ``batch`` and share its keyword arguments, routing included: a
        ``query_embedding`` / ``query`` list with one entry per input goes to the engine as it is
        (its per-prompt form), so the batch stays one batched pass.
        """
        first = calls[0]
        return cancellable.generate(
            first.model, [c.prompt for c in calls], [c.highlights for c in calls],
            batch_size=self.batch_size, progress=False, **first.gen, **first.routing,
        )

    def _generation(self, call: _Call, text: str, routing: dict[str, Any] | None = None) -> ChatGeneration:
        counts = usage_counts(
            call.model, call.prompt, call.highlights, chat=call.gen["chat"],
            max_new_tokens=call.gen["max_new_tokens"], text=text, markers=call.gen["markers"],
        )
        message = AIMessage(
            content=text,
            usage_metadata=UsageMetadata(
                input_tokens=counts["input_tokens"],
                output_tokens=counts["output_tokens"],
                total_tokens=counts["total_tokens"],
            ),
            response_metadata={"model_name": call.model_name, "highlighted_tokens": counts["highlighted_tokens"],
                               **({"routing": routing} if routing else {})},
        )
        return ChatGeneration(message=message)

    # ------------------------------------------------------------------------------ generation
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        plan = _BATCH.get()
        planned = plan.text_for(call) if plan is not None and plan.owner is self else None
        if planned is None:
            text = cancellable.generate(call.model, call.prompt, call.highlights, **call.gen, **call.routing)
            planned = text, routing_info(call.model)
        return self._chat_result(call, *planned)

    def _chat_result(self, call: _Call, text: str, routing: dict[str, Any] | None) -> ChatResult:
        generation = self._generation(call, text, routing)
        usage = generation.message.usage_metadata or {}
        token_usage = {k: usage.get(k, 0) for k in ("input_tokens", "output_tokens", "total_tokens")}
        # llm_output too, as SekaLLM fills it: older handlers read token usage there, not in usage_metadata
        return ChatResult(generations=[generation],
                          llm_output={"token_usage": token_usage, "model_name": call.model_name})

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """:meth:`_generate` in a worker thread; a cancelled or timed-out call stops generating. An input of
        :meth:`abatch` takes its answer from the batch's one engine call instead."""
        row = _ASYNC_ROW.get()
        if row is not None and row[0].owner is self and row[0].claim(row[1], messages, stop, kwargs):
            batch, index = row
            result = await batch.answer(index)
            if result is not None:
                return result
            kwargs = batch.row_kwargs(index, kwargs)  # alone: its own row of per-input routing lists
        return await run_cancellable(self._generate, messages, stop, run_manager.get_sync() if run_manager else None,
                                     **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        pieces: list[str] = []
        for piece in cancellable.stream(call.model, call.prompt, call.highlights, **call.gen, **call.routing):
            if not piece:
                continue
            pieces.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        final = self._generation(call, "".join(pieces), routing_info(call.model)).message
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=final.usage_metadata,
                response_metadata=final.response_metadata,
                chunk_position="last",
            )
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """:meth:`_stream` driven in a worker thread, as LangChain's default does, except that a consumer
        who stops early has the stream closed in that thread too, so the event loop never waits for the
        token being generated."""
        sync_manager = run_manager.get_sync() if run_manager else None
        async for chunk in athread_iter(lambda: self._stream(messages, stop, sync_manager, **kwargs)):
            yield chunk

    # ------------------------------------------------------------------------------ batching
    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer every input in one batched engine call (one forward pass per ``batch_size`` rows).

        Inputs with differing configs (callbacks, tags, metadata, run names — every input of a chain's
        ``batch`` has its own) keep their own runs and callbacks and still share one batched engine
        call: the first to reach the model answers them all; when that call fails, every input runs on
        its own, so each reports its own error. With one shared config, a failing batched call raises
        its error (with ``return_exceptions=True``: the inputs are retried one by one, and only the
        failing ones come back as exceptions).
        Per-call keyword arguments (e.g. ``highlights``) apply to every input; ``query_embedding=``
        (and ``query=``) may be one value for all inputs or a list with one per input, which the
        engine routes row by row in the same batched pass.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        keys = ("callbacks", "tags", "metadata", "run_name")
        shared = all(c.get(k) == configs[0].get(k) for c in configs for k in keys) and not any(
            c.get("run_id") for c in configs
        )
        if len(inputs) == 1:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        try:
            messages = _as_langchain_passes_them(inputs, self._convert_input)
        except Exception:
            if shared and not return_exceptions:
                raise
            # a bad input among per-input configs: LangChain's own batching reports it (per input)
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        if not shared:
            # e.g. inside a chain (`(prompt | chat).batch(...)`): every input has its own callbacks and
            # run, so LangChain runs them one by one, and the first to reach the model generates every
            # input's answer in one batched engine call; the others pick theirs up
            plan = _BatchPlan(self, messages, kwargs.get("stop"), {k: v for k, v in kwargs.items() if k != "stop"},
                              fail_quietly=True)
            token = _BATCH.set(plan)
            try:
                return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
            finally:
                _BATCH.reset(token)
        stop = kwargs.pop("stop", None)
        token = _BATCH.set(_BatchPlan(self, messages, stop, dict(kwargs)))
        try:
            result = self.generate(
                messages, stop=stop, callbacks=configs[0].get("callbacks"), tags=configs[0].get("tags"),
                metadata=configs[0].get("metadata"), run_name=configs[0].get("run_name"), **kwargs,
            )
        except Exception:
            if not return_exceptions:
                raise
            result = None
        finally:
            _BATCH.reset(token)
        if result is None:  # find out which inputs fail, one by one
            return super().batch(inputs, config, return_exceptions=True, stop=stop, **kwargs)
        return [gens[0].message for gens in result.generations]

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Every input's answer in one batched engine call, as :meth:`batch` (with ``streaming`` off).

        Each input runs through LangChain's ``ainvoke``, so its run and callbacks (async handlers
        included) happen on this event loop; the engine works in one worker thread, and the inputs
        await it on the loop. When the batched call fails, its error is raised, or, with
        ``return_exceptions=True``, every input runs on its own, so that only the failing ones come back
        as exceptions. Every input's run ends before ``abatch`` returns or raises; cancelling ``abatch``
        cancels them. Under a streaming callback (``astream_events``, LangGraph's message streaming)
        LangChain streams each input on its own, and so does ``streaming=True``.
        ``max_concurrency`` in the config limits how many inputs run at once.
        """
        if len(inputs) < 2:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        try:
            messages = _as_langchain_passes_them(inputs, self._convert_input)
        except Exception:  # a bad input: LangChain's own batching reports it (per input)
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        batch = _AsyncBatch(self, messages, kwargs.get("stop"), {k: v for k, v in kwargs.items() if k != "stop"},
                            alone_on_failure=return_exceptions)
        limit = configs[0].get("max_concurrency")
        slots = asyncio.Semaphore(limit) if limit else None

        async def one(row: int) -> Any:
            token = _ASYNC_ROW.set((batch, row))
            try:
                if slots is None:
                    return await self.ainvoke(inputs[row], configs[row], **kwargs)
                async with slots:
                    return await self.ainvoke(inputs[row], configs[row], **kwargs)
            finally:
                _ASYNC_ROW.reset(token)

        # every input's run ends before abatch does (a cancelled abatch cancels them); then the first error
        results = await asyncio.gather(*(one(row) for row in range(len(inputs))), return_exceptions=True)
        # only Exceptions come back in the list (as in LangChain's own abatch): a cancellation or an interrupt
        # is raised whatever return_exceptions says
        error = next((r for r in results if isinstance(r, BaseException)
                      and not (return_exceptions and isinstance(r, Exception))), None)
        if error is not None:
            raise error
        return results

def _plain_transcript(messages: list[dict], highlights: list, markers) -> tuple[str, list]:
    """Messages → one plain-text prompt for a tokenizer without a chat template; move spans with them.

    A single user message is sent as its own text. Otherwise each message becomes ``"Role:
    content"``, joined by blank lines, ending with ``"Assistant:"``. Each message's markers are parsed
    on their own, as with a chat template (a ``<<`` in one message never pairs with a ``>>`` in
    another), and become character spans of the marker-free text, like ``(message_index, start,
    end)`` spans; so every transcript goes to the engine without markers, and the inputs of one batch
    share that setting.
    """
    single = len(messages) == 1 and messages[0]["role"] == "user"
    raw, offsets, lengths, spans, pos = [], [], [], [], 0
    for i, m in enumerate(messages):
        label = "" if single else f"{m['role'].capitalize()}: "
        if i:
            raw.append("\n\n")
            pos += 2
        raw.append(label)
        pos += len(label)
        offsets.append(pos)
        clean, found = m["content"], []
        if markers is not None:
            try:
                clean, found = parse_markers(m["content"], markers)
            except HighlightError as exc:
                raise HighlightError(f"message {i}: {exc}") from None
        raw.append(clean)
        lengths.append(len(clean))
        spans.extend((pos + s, pos + e) for s, e in found)
        pos += len(clean)
    if messages[-1]["role"] != "assistant" and not single:
        raw.append("\n\nAssistant:")
    for h in highlights:
        if isinstance(h, (tuple, list)) and len(h) == 3:
            i, s, e = (int(x) for x in h)
            if not 0 <= i < len(messages):
                raise HighlightError(f"highlight span names message {i}, but there are {len(messages)}")
            if not 0 <= s < e <= lengths[i]:
                raise HighlightError(
                    f"highlight span ({s}, {e}) is out of range for message {i} of {lengths[i]} characters"
                )
            spans.append((offsets[i] + s, offsets[i] + e))
        else:
            spans.append(h)
    return "".join(raw), spans
