"""LlamaIndex ``Seka`` LLM with a tiny random model: metadata, exact engine calls, streams, async."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from langchain_seka import _loading
from llama_index.llms.seka import Seka

MARKED = "Doc 1: The tower is in Paris.\nDoc 2: <<The>> <<tower>> <<is>> <<in>> <<Rome.>>\nWhere is the tower?"
CLEAN = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?"
ROME = (CLEAN.index("The tower is in Rome."), CLEAN.index("The tower is in Rome.") + len("The tower is in Rome."))


def test_construction_is_lazy_and_shared(counting_loader, tiny_seka, monkeypatch):
    loads = counting_loader
    llm, other = Seka(max_new_tokens=12), Seka(max_tokens=3)
    assert loads == [] and llm.max_new_tokens == 12 and other.max_new_tokens == 3
    meta = llm.metadata
    assert loads == [_loading.DEFAULT_MODEL]
    assert meta.context_window == tiny_seka.context_window and meta.num_output == 12
    assert meta.is_chat_model is True and meta.model_name == _loading.DEFAULT_MODEL
    other.complete("hi")
    assert loads == [_loading.DEFAULT_MODEL]  # shared


def test_metadata(tiny_seka, tiny_plain_seka):
    meta = Seka(model=tiny_seka, max_new_tokens=5, context_window=100).metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.model_name) == (100, 5, True, "tiny-llama")
    assert Seka(model=tiny_plain_seka).metadata.is_chat_model is False
    assert Seka(model=tiny_seka, chat_template=False).metadata.is_chat_model is False


def test_complete_sends_clean_text_and_merged_spans(tiny_seka, spy):
    llm = Seka(model=tiny_seka, max_new_tokens=4, gain_pos=2.5)
    response = llm.complete(MARKED)
    call = spy.last
    assert call["prompt"] == CLEAN and call["highlights"] == [ROME]
    assert call["kwargs"]["markers"] is None and call["kwargs"]["gain_pos"] == 2.5
    assert call["kwargs"]["max_new_tokens"] == 4 and call["kwargs"]["chat"] is None
    assert response.text and response.additional_kwargs["prompt_tokens"] > 0
    assert response.additional_kwargs["highlighted_tokens"] > 0
    llm.complete(CLEAN, highlights=["Paris"])
    assert spy.last["highlights"] == ["Paris"]
    llm.complete("a lone >> marker and <<an open one")  # cut out of a marked text: kept literally
    assert spy.last["prompt"] == "a lone >> marker and <<an open one" and spy.last["highlights"] is None


def test_chat_sends_messages_and_message_spans(tiny_seka, spy):
    llm = Seka(model=tiny_seka, max_new_tokens=4)
    messages = [ChatMessage(role=MessageRole.SYSTEM, content="Answer briefly."),
                ChatMessage(role=MessageRole.USER, content=MARKED)]
    response = llm.chat(messages)
    assert spy.last["prompt"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": CLEAN}]
    assert spy.last["highlights"] == [(1, *ROME)]
    assert response.message.role == MessageRole.ASSISTANT and response.message.content


def test_chat_without_a_template_uses_messages_to_prompt(tiny_plain_seka, spy_on):
    spy = spy_on(tiny_plain_seka)
    Seka(model=tiny_plain_seka, max_new_tokens=2).chat([ChatMessage(role=MessageRole.USER, content=MARKED)])
    assert isinstance(spy.last["prompt"], str) and CLEAN in spy.last["prompt"]
    assert spy.last["kwargs"]["chat"] is False and len(spy.last["highlights"]) == 1


def test_streams_match_the_plain_calls(tiny_seka):
    llm = Seka(model=tiny_seka, max_new_tokens=8)
    text = llm.complete("Hello").text
    responses = list(llm.stream_complete("Hello"))
    assert "".join(r.delta for r in responses) == text == responses[-1].text
    assert len([r for r in responses if r.delta]) >= 2
    assert responses[-1].additional_kwargs["completion_tokens"] > 0
    messages = [ChatMessage(role=MessageRole.USER, content="Hello")]
    chat_text = llm.chat(messages).message.content
    chunks = list(llm.stream_chat(messages))
    assert "".join(c.delta for c in chunks) == chat_text == chunks[-1].message.content


async def test_async_forms_match_sync(tiny_seka):
    llm = Seka(model=tiny_seka, max_new_tokens=6)
    messages = [ChatMessage(role=MessageRole.USER, content=MARKED)]
    assert (await llm.acomplete(MARKED)).text == llm.complete(MARKED).text
    assert (await llm.achat(messages)).message.content == llm.chat(messages).message.content
    gen = await llm.astream_complete(MARKED)
    assert "".join([r.delta async for r in gen]) == llm.complete(MARKED).text
    gen = await llm.astream_chat(messages)
    assert "".join([r.delta async for r in gen]) == llm.chat(messages).message.content


def test_predict_through_a_prompt_template(tiny_seka, spy):
    from llama_index.core.prompts import PromptTemplate

    llm = Seka(model=tiny_seka, max_new_tokens=3)
    llm.predict(PromptTemplate("Context: {ctx}\nQ: {q}"), ctx="<<Rome>> Paris", q="where?")
    call = spy.last
    assert call["prompt"][-1]["content"] == "Context: Rome Paris\nQ: where?"
    assert call["highlights"] == [(len(call["prompt"]) - 1, 9, 13)]


def test_routing_arguments_reach_the_engine_unchanged(tiny_seka, spy):
    from seka_rag import SekaError, SteeringConfigError

    llm = Seka(model=tiny_seka, max_new_tokens=2)
    llm.complete("<<hi>>", router="projection")
    assert spy.last["kwargs"]["router"] == "projection"  # the single projection: valid without experts
    llm.complete("<<hi>>")
    assert "router" not in spy.last["kwargs"]  # unset: nothing is sent
    # the engine's own errors, not the wrapper's: query= / query_embedding= need the embedding router,
    # and a router other than the projection needs an expert set (tests/integrations/unit/test_routing.py)
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        llm.complete("hi", query_embedding=[0.1])
    assert spy.last["kwargs"]["query_embedding"] == [0.1]
    with pytest.raises(SekaError, match="expert set"):
        Seka(model=tiny_seka, max_new_tokens=2, router="embedding").complete("<<hi>>")


def test_namespace_packages_leave_llama_index_core_alone():
    from pathlib import Path

    import llama_index
    import llama_index.core
    import llama_index.llms.seka
    import llama_index.postprocessor.seka_highlight

    source = Path(__file__).resolve().parents[3] / "integrations" / "llama_index" / "llama_index"
    installed = Path(llama_index.llms.seka.__file__).parents[2]  # the checkout's (editable) or site-packages'
    for ours in (source, installed):
        for sub in ("", "llms", "postprocessor", "embeddings"):
            # namespace packages, shared with llama-index-core and its other integrations: an
            # __init__.py of ours would hide theirs
            assert not (ours / sub / "__init__.py").exists(), (ours, sub)
    assert getattr(llama_index, "__file__", None) is None  # still a namespace package
    from llama_index.core import VectorStoreIndex  # noqa: F401  (core still imports)


def test_llamaindex_side_does_not_need_langchain():
    import subprocess
    import sys

    code = (
        "import sys; import llama_index.llms.seka, llama_index.postprocessor.seka_highlight; "
        "assert not any(m.startswith('langchain_core') for m in sys.modules), 'langchain_core imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_documents_and_single_message_spans(tiny_seka, spy):
    from llama_index.core.schema import NodeWithScore, TextNode

    from seka_rag import HighlightError

    llm = Seka(model=tiny_seka, max_new_tokens=2)
    node = NodeWithScore(node=TextNode(text="The tower is in Rome."), score=0.9)
    llm.complete(CLEAN, documents=[node])
    assert spy.last["highlights"] == ["The tower is in Rome."]
    llm.chat([ChatMessage(role=MessageRole.USER, content=CLEAN)], documents=["The tower is in Paris."])
    assert spy.last["highlights"] == ["The tower is in Paris."]
    with pytest.raises(HighlightError, match="does not occur in the prompt"):
        llm.complete(CLEAN, documents=["Madrid"])
    # (start, end) of the one message, as the docstring says (mapped to message 0)
    llm.chat([ChatMessage(role=MessageRole.USER, content=CLEAN)], highlights=[ROME])
    assert spy.last["highlights"] == [(0, *ROME)]
    from langchain_core.documents import Document

    llm.complete(CLEAN, documents=[(Document(page_content="The tower is in Rome."), 0.7)])  # a scored pair
    assert spy.last["highlights"] == ["The tower is in Rome."]


def test_spans_are_refused_when_messages_become_a_transcript(tiny_plain_seka, spy_on):
    from seka_rag import SekaError

    spy = spy_on(tiny_plain_seka)
    llm = Seka(model=tiny_plain_seka, max_new_tokens=2)
    with pytest.raises(SekaError, match="no chat template"):
        llm.chat([ChatMessage(role=MessageRole.USER, content=CLEAN)], highlights=[ROME])
    assert spy.calls == []
    llm.chat([ChatMessage(role=MessageRole.USER, content=CLEAN)], highlights=["The tower is in Rome."])
    assert spy.last["highlights"] == ["The tower is in Rome."]


def test_non_text_blocks_are_refused(tiny_seka, spy):
    from llama_index.core.base.llms.types import ImageBlock, TextBlock

    from seka_rag import SekaError

    llm = Seka(model=tiny_seka, max_new_tokens=2)
    message = ChatMessage(role=MessageRole.USER,
                          blocks=[ImageBlock(url="https://example.com/a.png"), TextBlock(text="What is this?")])
    calls = len(spy.calls)
    with pytest.raises(SekaError, match="message 0 holds a ImageBlock"):
        llm.chat([message])
    with pytest.raises(SekaError, match="text-only"):
        list(llm.stream_chat([message]))
    assert len(spy.calls) == calls  # refused before the engine runs
    from llama_index.core.base.llms.types import CachePoint, CacheControl

    hinted = ChatMessage(role=MessageRole.USER,
                         blocks=[TextBlock(text="What is this?"), CachePoint(cache_control=CacheControl(type="ephemeral"))])
    llm.chat([hinted])  # a cache hint carries nothing to read: skipped, not refused
    # the legacy form of a tool call (an agent's history from another LLM) is refused too, not dropped
    called = ChatMessage(role=MessageRole.ASSISTANT, content="",
                         additional_kwargs={"tool_calls": [{"id": "1", "type": "function",
                                                            "function": {"name": "lookup", "arguments": "{}"}}]})
    with pytest.raises(SekaError, match="message 1 holds tool calls"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="Price?"), called])
    assert spy.last["prompt"] == [{"role": "user", "content": "What is this?"}]


async def test_async_calls_fire_the_llm_events_once(tiny_seka):
    from llama_index.core.callbacks import CallbackManager, LlamaDebugHandler
    from llama_index.core.callbacks.schema import CBEventType

    debug = LlamaDebugHandler()
    llm = Seka(model=tiny_seka, max_new_tokens=2, callback_manager=CallbackManager([debug]))
    await llm.acomplete("Hello")
    await llm.achat([ChatMessage(role=MessageRole.USER, content="Hello")])
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 2  # one per call, not one more for the sync body


async def test_async_calls_load_the_model_off_the_event_loop(counting_loader, tiny_seka, monkeypatch):
    import asyncio
    import threading

    from langchain_seka import _loading as loading

    load_threads = []
    original = loading.SekaModel.default

    def slow_default(name, **kwargs):
        load_threads.append(threading.current_thread())
        return original(name, **kwargs)

    monkeypatch.setattr(loading.SekaModel, "default", staticmethod(slow_default))
    llm = Seka(max_new_tokens=2)
    response = await llm.acomplete("Hello")
    assert response.text is not None and len(load_threads) == 1
    assert load_threads[0] is not threading.main_thread()  # loaded in a worker, not on the loop
    gen = await Seka(max_new_tokens=2).astream_chat([ChatMessage(role=MessageRole.USER, content="Hi")])
    assert [r async for r in gen]
    assert len(load_threads) == 1  # shared afterwards
    assert asyncio.get_running_loop()


def test_marker_roles_read_user_text_literally(tiny_seka, tiny_plain_seka, spy, spy_on):
    code = "In Python, what is 1 << 4 and what is 16 >> 2?"
    messages = [ChatMessage(role=MessageRole.SYSTEM, content=f"Context: {MARKED}"),
                ChatMessage(role=MessageRole.USER, content=code)]
    Seka(model=tiny_seka, max_new_tokens=2).chat(messages)  # the default reads markers in user text too
    assert spy.last["prompt"][1]["content"] == "In Python, what is 1  4 and what is 16  2?"
    assert (1, 21, 39) in spy.last["highlights"]  # " 4 and what is 16 " of the mangled question
    Seka(model=tiny_seka, max_new_tokens=2, marker_roles=("system",)).chat(messages)
    assert spy.last["prompt"][1]["content"] == code  # the user's code as typed
    start = len("Context: ") + ROME[0]
    assert spy.last["highlights"] == [(0, start, start + ROME[1] - ROME[0])]  # the context's highlight only
    plain = spy_on(tiny_plain_seka)  # no chat template: a direct chat() becomes one transcript, same rule
    Seka(model=tiny_plain_seka, max_new_tokens=2, marker_roles="system").chat(messages)
    assert code in plain.last["prompt"] and len(plain.last["highlights"]) == 1
    for bad in (("assistant",), ("user", "boss"), 5):
        with pytest.raises(ValueError, match="marker_roles"):
            Seka(model=tiny_seka, marker_roles=bad)
    assert Seka.from_dict(Seka(model="smollm2-135m", marker_roles=["system"]).to_dict()).marker_roles == ("system",)
    assert Seka(model=tiny_seka, marker_roles=("developer", "function")).marker_roles == ("system", "tool")
    developer = [ChatMessage(role=MessageRole.DEVELOPER, content=f"Context: {MARKED}"),
                 ChatMessage(role=MessageRole.USER, content=code)]
    Seka(model=tiny_seka, max_new_tokens=2, marker_roles=("system",)).chat(developer)
    assert spy.last["highlights"] == [(0, start, start + ROME[1] - ROME[0])]
