"""``Seka``: a LlamaIndex LLM that runs a SEKA-steered model in process."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import BaseNode, NodeWithScore

from langchain_seka._compat import HostedModelArguments
from langchain_seka._loading import model_label
from langchain_seka import _cancel as cancellable
from langchain_seka._cancel import athread_iter, run_cancellable
from langchain_seka._routing import automatic_routing
from langchain_seka._settings import SekaSettings, routing_info, usage_counts
from langchain_seka._text import (
    MARKER_ROLES,
    as_document_list,
    as_marker_roles,
    document_text,
    escape_markers,
    mark_up,
    parse_lenient,
    texts_in_prompt,
)
from seka_rag import Markers, SekaError, SekaModel
from seka_rag.highlight import has_chat_template

from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt  # noqa: E402

__all__ = ["Seka"]

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


@dataclass
class _Call:
    model: SekaModel
    name: str
    prompt: Any  # marker-free text, or marker-free messages
    highlights: list | None
    gen: dict[str, Any]
    routing: dict[str, Any]  #: AdaSEKA arguments for the engine (automatic query included)
    markers: Markers | None = None  #: the inline markers the prompt was read with


class Seka(SekaSettings, HostedModelArguments, CustomLLM):
    """LlamaIndex LLM over a SEKA-steered language model, running in this process.

    ``Seka()`` uses the default embedded model; ``model=`` takes a ``SekaModel`` or a shared model
    name (``Seka(model="smollm2-135m")``), loaded on first use and shared with every wrapper
    (LlamaIndex or LangChain) that names it. Generation settings are fields — ``max_new_tokens``
    (alias ``max_tokens``), ``do_sample``, ``temperature``, ``top_p``, ``stop``, ``gain_pos``,
    ``gain_neg``, ``layers``, ``heads``, ``steer``, ``chat_template``, ``router``, ``routing`` — and
    per-call keyword arguments of ``complete`` / ``chat`` and their stream and async forms.

    Highlights come from inline markers (``<<`` ``>>``; the ``markers`` setting picks another pair,
    e.g. ``("⟦", "⟧")`` for prompts holding code with ``<<`` / ``>>`` — give the postprocessor the
    same pair — or None for none) in the prompt or in system, user and tool message contents (an
    assistant message is read literally; ``marker_roles=("system",)`` reads them in system messages
    only, so a context chat engine's user can type ``1 << 4`` on a model with a chat template; not in
    query engines, whose QA prompt puts the context in the user message) — which is how
    :class:`~llama_index.postprocessor.seka_highlight.SekaHighlightPostprocessor` marks retrieved
    evidence — and from ``highlights=`` (substrings, or ``(start, end)`` /
    ``(message_index, start, end)`` spans of the marker-free text). Markers are read leniently: a
    marker whose partner was cut off by a response synthesizer's re-chunking is kept as literal
    text, and highlights separated only by whitespace (per-word marking) are merged into one span.

    AdaSEKA (a model with an expert set: ``adaptive=True`` for a named model, or a ``SekaModel``
    loaded with ``SekaModel.default(name, adaptive=True)`` / ``experts=``): ``router`` is
    ``"attention"``, ``"embedding"``, ``"projection"`` or ``{expert: weight}`` (None: the model's
    default), ``routing`` holds router parameters; both are fields and per-call arguments, passed
    to the engine unchanged, as are per-call ``query_embedding=`` and ``query=``.

    With the embedding router the retriever's query embedding reaches the engine by itself:
    ``SekaHighlightPostprocessor`` remembers each query bundle's text and embedding, and a call
    whose prompt contains that query text passes the embedding on, so the question is not embedded
    a second time. When the vector cannot serve — the index's embedding model has another size than
    the expert prototypes, or there is none (LlamaIndex's async retrievers keep theirs off the
    query bundle, unless the bundle given to ``aquery`` already carries one) — the query text is
    passed instead and the engine embeds the question once (not the whole prompt). A per-call
    ``query_embedding=`` or ``query=`` takes precedence; with any other router nothing is added.
    Each response's ``raw["routing"]`` tells which experts fired (``model.last_routing`` too, in the
    thread that ran a sync call).

    Token counts are in each response's ``raw["usage"]`` (where LlamaIndex's ``TokenCountingHandler``
    reads them) and ``additional_kwargs``. Unknown constructor arguments are errors; ``timeout``,
    ``max_retries``, ``api_key`` and ``base_url`` are accepted and do nothing (generation runs in
    process).
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, protected_namespaces=(),
                              extra="forbid")

    marker_roles: tuple[str, ...] = Field(
        default=("system", "user", "tool"),
        description="Roles whose message text is read for inline markers ('developer' counts as system, "
        "'function' as tool); the others are read literally (an assistant's always are). ('system',) suits "
        "the context chat engines on a model with a chat template: the retrieved context, which the "
        "postprocessor marks, is in the system message, and the user's own text (code with << / >>) stays "
        "literal. Not for query engines: their QA prompt puts the context in the user message.",
    )
    context_window: int | None = Field(
        default=None, ge=1,
        description="Report a smaller context window than the model's in metadata (LlamaIndex packs "
        "prompts to fit it); larger than the model's is an error.",
    )

    @field_validator("marker_roles", mode="before")
    @classmethod
    def _check_marker_roles(cls, value: Any) -> Any:
        return as_marker_roles(value)

    @model_validator(mode="after")
    def _no_batch_size(self) -> "Seka":
        if self.batch_size != type(self).model_fields["batch_size"].default:  # (the default survives to_dict)
            raise ValueError(
                "Seka answers one prompt per call (LlamaIndex's LLM interface has no batched completion), so "
                "batch_size would do nothing here; it applies to LangChain's ChatSeka / SekaLLM batch"
            )
        return self

    def predict_and_call(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the in-process model has no function calling (and LlamaIndex's ReAct fallback
        fails on it in llama-index-core 0.14)."""
        raise NotImplementedError(
            "Seka does not support function calling (predict_and_call): describe the tools in the prompt and parse "
            "the reply yourself, or use an agent framework with a function-calling model"
        )

    async def apredict_and_call(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: see :meth:`predict_and_call`."""
        return self.predict_and_call(*args, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex records for this class when it serialises it."""
        return "Seka_llm"

    # ------------------------------------------------------------------------------ metadata
    @property
    def metadata(self) -> LLMMetadata:
        """Context window, output size, model name, and whether it is a chat model (loads the model)."""
        model = self.seka_model()
        if self.context_window is not None and self.context_window > model.context_window:
            raise SekaError(
                f"context_window={self.context_window} is larger than the model's {model.context_window} tokens: "
                "LlamaIndex would pack prompts the model cannot read (their start would be cut off); "
                "leave it unset, or set at most the model's window"
            )
        return LLMMetadata(
            context_window=self.context_window or model.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self._use_chat(model, self.chat_template),
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    @staticmethod
    def _use_chat(model: SekaModel, chat: bool | None) -> bool:
        return has_chat_template(model.tokenizer) if chat is None else bool(chat)

    # ------------------------------------------------------------------------------ preparing calls
    def _settings(self, kwargs: dict[str, Any]) -> tuple[SekaModel, str, dict, list, dict, list, Markers | None]:
        kwargs = dict(kwargs)
        highlights = kwargs.pop("highlights", None)
        documents = _document_texts(kwargs.pop("documents", None))
        routing = self.routing_request(kwargs)
        override = kwargs.pop("model", None)
        model = self.seka_model(override)
        name = model_label(override if override is not None else self.model)
        markers = self.inline_markers(model, kwargs)
        stop = kwargs.pop("stop", None)
        gen = self.generation_kwargs(kwargs, stop)
        if isinstance(highlights, str):
            highlights = [highlights]
        elif highlights is not None and not isinstance(highlights, (list, tuple)):
            raise SekaError(f"highlights= takes a list of substrings or spans, got {type(highlights).__name__}")
        # a two- or three-integer list is a span, as a tuple is (JSON has no tuples)
        highlights = [tuple(h) if isinstance(h, list) and len(h) in (2, 3) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in h) else h for h in highlights or []]
        return model, name, gen, highlights, routing, documents, markers

    @staticmethod
    def _with_retrieval_query(model: SekaModel, routing: dict, texts: Sequence[str]) -> dict:
        """``routing`` plus the remembered retrieval query whose text occurs in the prompt (embedding router)."""
        return {**routing, **automatic_routing(model, routing, texts)}

    def _prepare_text(self, prompt: str, kwargs: dict[str, Any]) -> _Call:
        if not isinstance(prompt, str):
            raise SekaError(f"the prompt must be a string, got {type(prompt).__name__}")
        model, name, gen, extra, routing, documents, markers = self._settings(kwargs)
        clean, spans = parse_lenient(prompt, markers)
        highlights = [*spans, *extra, *texts_in_prompt(documents, [clean])]
        routing = self._with_retrieval_query(model, routing, [prompt, clean])
        return _Call(model, name, clean, highlights or None, gen, routing, markers)

    def _prepare_messages(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Call:
        model, name, gen, extra, routing, documents, markers = self._settings(kwargs)
        prompt, highlights, raw = [], [], []
        for i, message in enumerate(messages):
            role = _ROLES.get(message.role, str(getattr(message.role, "value", message.role)))
            if role not in self.marker_roles:  # the model's own text, or a role read literally: as it is
                clean, spans = message.content or "", []
            else:
                clean, spans = parse_lenient(message.content or "", markers)
            prompt.append({"role": role, "content": clean})
            highlights += [(i, s, e) for s, e in spans]
            raw += [message.content or "", clean]
        if len(messages) == 1:  # (start, end) spans of the one message, as for a completion prompt
            extra = [(0, *h) if isinstance(h, tuple) and len(h) == 2 else h for h in extra]
        extra += texts_in_prompt(documents, [m["content"] for m in prompt])
        routing = self._with_retrieval_query(model, routing, raw)
        return _Call(model, name, prompt, [*highlights, *extra] or None, gen, routing, markers)

    def _run(self, call: _Call) -> str:
        return cancellable.generate(call.model, call.prompt, call.highlights, markers=None, **call.gen,
                                    **call.routing)

    def _run_stream(self, call: _Call) -> Iterator[str]:
        for piece in call.model.stream(call.prompt, call.highlights, markers=None, **call.gen, **call.routing):
            if piece:
                yield piece

    def _usage(self, call: _Call, text: str) -> dict[str, Any]:
        counts = usage_counts(
            call.model, call.prompt, call.highlights, chat=call.gen["chat"],
            max_new_tokens=call.gen["max_new_tokens"], text=text, markers=None,
        )
        return {
            "prompt_tokens": counts["input_tokens"],
            "completion_tokens": counts["output_tokens"],
            "total_tokens": counts["total_tokens"],
            "highlighted_tokens": counts["highlighted_tokens"],
            "model_name": call.name,
            # read in the engine call's thread, so async callers get it with the response
            **({"routing": routing} if (routing := routing_info(call.model)) else {}),
        }

    @staticmethod
    def _raw(usage: dict[str, Any]) -> dict[str, Any]:
        """``raw`` of a response: the usage where LlamaIndex's token counting looks for it, and which
        experts the call used (``routing``, when an expert set steered it)."""
        raw = {"usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
               "model_name": usage["model_name"]}
        if usage.get("routing"):
            raw["routing"] = usage["routing"]
        return raw

    def _completion_call(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> _Call:
        if not isinstance(prompt, str):
            raise SekaError(f"the prompt must be a string, got {type(prompt).__name__}")
        if not formatted:
            rewritten = self.completion_to_prompt(prompt)
            highlights = kwargs.get("highlights")
            if rewritten != prompt and isinstance(highlights, (list, tuple)) and any(
                    isinstance(h, (tuple, list)) for h in highlights):
                raise SekaError(
                    "completion_to_prompt rewrites the prompt, so (start, end) spans of it would land elsewhere: "
                    "highlight substrings (or use inline << >> markers), or pass formatted=True"
                )
            prompt = rewritten
        return self._prepare_text(prompt, kwargs)

    def _chat_call(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Call:
        if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
            raise SekaError(f"chat takes a list of ChatMessage objects, got {type(messages).__name__}")
        for i, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                hint = " (write ChatMessage(role=..., content=...))" if isinstance(message, Mapping) else ""
                raise SekaError(f"message {i} is a {type(message).__name__}, not a ChatMessage{hint}")
            _check_text_only(message, i)
        transcript = self._needs_transcript(kwargs)
        if not transcript and self.messages_to_prompt is not generic_messages_to_prompt:  # the user's own
            raise SekaError(
                "messages_to_prompt= is used only for a model without a chat template (or with "
                "chat_template=False); this model renders chats with its own template, so it would do nothing"
            )
        if transcript:
            highlights = kwargs.get("highlights")
            if isinstance(highlights, (list, tuple)) and any(isinstance(h, (tuple, list)) for h in highlights):
                raise SekaError(
                    "this model has no chat template, so the messages are joined into one transcript and "
                    "(start, end) / (message, start, end) spans would land elsewhere: highlight substrings "
                    "(or use inline << >> markers) instead"
                )
            markers = self.inline_markers(self.seka_model(kwargs.get("model")), dict(kwargs))
            messages = [_transcript_safe(m, markers, self.marker_roles) for m in messages]
            return self._prepare_text(self.messages_to_prompt(messages), {**kwargs, "chat_template": False})
        return self._prepare_messages(messages, kwargs)

    def _needs_transcript(self, kwargs: dict[str, Any]) -> bool:
        chat = kwargs.get("chat_template", self.chat_template)
        return not self._use_chat(self.seka_model(kwargs.get("model")), chat)

    # ------------------------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Complete ``prompt``, steering toward its highlights; per-call settings as keyword arguments."""
        return self._complete(prompt, formatted, kwargs)

    def _complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        call = self._completion_call(prompt, formatted, kwargs)
        text = self._run(call)
        usage = self._usage(call, text)
        return CompletionResponse(text=text, additional_kwargs=usage, raw=self._raw(usage))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding responses with the text so far and each new ``delta``."""
        call = self._completion_call(prompt, formatted, kwargs)
        return self._completion_stream(call)

    def _completion_stream(self, call: _Call) -> CompletionResponseGen:
        text = ""
        for piece in self._run_stream(call):
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        usage = self._usage(call, text)
        yield CompletionResponse(text=text, delta="", additional_kwargs=usage, raw=self._raw(usage))

    # ------------------------------------------------------------------------------ chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a chat, steering toward highlighted message text; per-call settings as keyword arguments."""
        return self._chat(messages, kwargs)

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        call = self._chat_call(messages, kwargs)
        text = self._run(call)
        usage = self._usage(call, text)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text), additional_kwargs=usage,
            raw=self._raw(usage),
        )

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, yielding responses with the message so far and each new ``delta``."""
        call = self._chat_call(messages, kwargs)
        return self._chat_stream(call)

    def _chat_stream(self, call: _Call) -> ChatResponseGen:
        text = ""
        for piece in self._run_stream(call):
            text += piece
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
        usage = self._usage(call, text)
        yield ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta="",
            additional_kwargs=usage, raw=self._raw(usage),
        )

    # ------------------------------------------------------------------------------ async
    # The public async methods load the model in a worker thread first: LlamaIndex's callback
    # wrapper reads ``metadata`` (which needs the model) on the event loop before the body runs.
    async def _aload(self, kwargs: dict[str, Any]) -> None:
        await _in_thread(self.seka_model)  # the one metadata describes
        if kwargs.get("model") is not None:
            await _in_thread(self.seka_model, kwargs["model"])

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` in a worker thread (the model runs in-process)."""
        await self._aload(kwargs)
        return await self._acomplete(prompt, formatted=formatted, **kwargs)

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` as an async generator; generation runs in a worker thread."""
        await self._aload(kwargs)
        return await self._astream_complete(prompt, formatted=formatted, **kwargs)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` in a worker thread (the model runs in-process)."""
        await self._aload(kwargs)
        return await self._achat(messages, **kwargs)

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` as an async generator; generation runs in a worker thread."""
        await self._aload(kwargs)
        return await self._astream_chat(messages, **kwargs)

    @llm_completion_callback()
    async def _acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await _in_thread(self._complete, prompt, formatted, kwargs)  # the events fire once, here

    @llm_completion_callback()
    async def _astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        call = self._completion_call(prompt, formatted, kwargs)
        return athread_iter(lambda: self._completion_stream(call))

    @llm_chat_callback()
    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await _in_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        call = self._chat_call(messages, kwargs)
        return athread_iter(lambda: self._chat_stream(call))


async def _in_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn`` in a worker thread, in a copy of this context; a cancelled call stops generating."""
    return await run_cancellable(fn, *args, **kwargs)




#: Blocks that carry nothing for the model to read (a cache hint) or that a chat history may hold
#: without the model needing them (an earlier turn's reasoning): skipped, as ``message.content`` does.
_SKIPPED_BLOCKS = {"CachePoint", "ThinkingBlock"}


def _check_text_only(message: ChatMessage, index: int) -> None:
    """Refuse images, audio, documents and other content blocks the text-only model cannot read."""
    for block in getattr(message, "blocks", None) or []:
        if not isinstance(block, TextBlock) and type(block).__name__ not in _SKIPPED_BLOCKS:
            raise SekaError(
                f"message {index} holds a {type(block).__name__}; Seka runs a text-only model, so only "
                "text content is supported"
            )
    extra = getattr(message, "additional_kwargs", None) or {}
    if extra.get("tool_calls") or extra.get("function_call"):  # the legacy form of a ToolCallBlock
        raise SekaError(
            f"message {index} holds tool calls (additional_kwargs[{'tool_calls' if extra.get('tool_calls') else 'function_call'!r}]); "
            "Seka runs a text-only model without tool calling, so they cannot be sent to it: drop them, or "
            "write the call into the message's text"
        )


def _transcript_safe(message: ChatMessage, markers: Markers | None,
                          marker_roles: Sequence[str] = MARKER_ROLES) -> ChatMessage:
    """A message made safe to join into a transcript: an assistant message (or one whose role is not in
    ``marker_roles``) with its marker strings escaped (read literally); any other with its highlights
    kept and every marker without a partner *in that message* escaped, so a ``<<`` of one message never
    pairs with a ``>>`` of another."""
    if not message.content or markers is None:
        return message
    if _ROLES.get(message.role, "assistant") not in marker_roles:
        return ChatMessage(role=message.role, content=escape_markers(message.content, markers))
    clean, spans = parse_lenient(message.content, markers, merge_gaps=False)
    return ChatMessage(role=message.role, content=mark_up(clean, spans, markers)[0] if spans
                       else escape_markers(clean, markers))


def _document_texts(documents: Any) -> list[str]:
    """``documents=``: LlamaIndex nodes (``NodeWithScore`` or ``BaseNode``), LangChain Documents or strings."""
    texts = []
    for doc in as_document_list(documents, single=(BaseNode, NodeWithScore)):
        if isinstance(doc, NodeWithScore):
            doc = doc.node
        if isinstance(doc, BaseNode):
            texts.append(doc.get_content())
        elif isinstance(doc, str) or isinstance(getattr(doc, "page_content", None), str) or isinstance(doc, tuple):
            texts.append(document_text(doc))
        else:
            raise SekaError(f"documents= takes LlamaIndex nodes (NodeWithScore or BaseNode), LangChain Documents "
                            f"or strings, got {type(doc).__name__}")
    return texts
