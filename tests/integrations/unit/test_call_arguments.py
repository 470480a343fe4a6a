"""Per-call arguments and settings reach the model as a user means them, and cached answers respect them.

A lone document or highlight is one item (not a string read character by character); a value of the
wrong kind is a clear error; every argument that changes the answer is part of LangChain's cache key;
the markers setting takes the same forms everywhere; an async stream the consumer leaves stops
generating; LlamaIndex settings that would do nothing are refused.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from pydantic import ValidationError

from langchain_seka import ChatSeka, SekaHighlight, SekaLLM
from langchain_seka._settings import call_digest
from llama_index.embeddings.seka import SentenceTransformerEmbedding
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor
from seka_rag import Markers, SekaError

PROMPT = "Doc 1: The tower is in Paris. Doc 2: The tower is in Rome. Where is the tower?"
EVIDENCE = "The tower is in Rome."


# ------------------------------------------------------------------------------ one document, one highlight
@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
@pytest.mark.parametrize("single", [EVIDENCE, Document(page_content=EVIDENCE), (Document(page_content=EVIDENCE), 0.9),
                                    (Document(page_content=EVIDENCE), np.float32(0.3))])  # FAISS scores are numpy
def test_a_lone_document_is_one_document(cls, single, tiny_seka, spy):
    llm = cls(model=tiny_seka, max_tokens=2)
    llm.invoke(PROMPT, documents=[EVIDENCE])
    as_list = spy.last["highlights"]
    llm.invoke(PROMPT, documents=single)
    assert spy.last["highlights"] == as_list
    assert EVIDENCE in as_list


def test_a_lone_langchain_document_is_one_document_in_llamaindex(tiny_seka, spy):
    Seka(model=tiny_seka, max_tokens=2).complete(PROMPT, documents=Document(page_content=EVIDENCE))
    assert spy.last["highlights"] == [EVIDENCE]


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
@pytest.mark.parametrize("argument", ["documents", "highlights"])
def test_a_value_that_is_no_list_is_a_clear_error(cls, argument, tiny_seka):
    with pytest.raises(SekaError, match=f"{argument}= takes"):
        cls(model=tiny_seka, max_tokens=2).invoke(PROMPT, **{argument: 5})


def test_llamaindex_documents_that_are_no_list_are_a_clear_error(tiny_seka):
    with pytest.raises(SekaError, match="documents= takes"):
        Seka(model=tiny_seka, max_tokens=2).complete(PROMPT, documents=5)


# ------------------------------------------------------------------------------ cache keys
def test_text_llm_cache_key_holds_the_call_arguments(tiny_seka, spy):
    llm = SekaLLM(model=tiny_seka, max_tokens=2, cache=InMemoryCache())
    llm.invoke(PROMPT)
    llm.invoke(PROMPT, highlights=[EVIDENCE])  # not the unsteered call's cached answer
    assert len(spy.calls) == 2 and spy.last["highlights"] == [EVIDENCE]
    llm.invoke(PROMPT, highlights=[EVIDENCE])  # the same call again: cached
    llm.invoke(PROMPT, highlights=[EVIDENCE], gain_pos=3.0)  # another gain: not cached
    assert len(spy.calls) == 3


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
def test_the_stop_setting_is_part_of_the_cache_key(cls, tiny_seka, spy):
    cache = InMemoryCache()
    cls(model=tiny_seka, max_tokens=2, cache=cache).invoke(PROMPT)
    cls(model=tiny_seka, max_tokens=2, cache=cache, stop=["tower"]).invoke(PROMPT)
    assert len(spy.calls) == 2 and spy.last["kwargs"]["stop"] == ["tower"]
    cls(model=tiny_seka, max_tokens=2, cache=cache, stop=["tower"]).invoke(PROMPT)
    assert len(spy.calls) == 2


def test_call_digest_writes_long_vectors_in_full():
    a, b = np.zeros(2048), np.zeros(2048)
    b[1000] = 1.0
    assert repr(a) == repr(b)  # numpy abbreviates more than 1,000 numbers: what LangChain's own key would hold
    assert call_digest({"query_embedding": a}) != call_digest({"query_embedding": b})
    assert call_digest({"query_embedding": a}) == call_digest({"query_embedding": np.zeros(2048)})
    assert call_digest({}) is None


def test_chat_model_cache_key_tells_query_embeddings_apart(tiny_seka):
    chat = ChatSeka(model=tiny_seka)
    a, b = np.zeros(2048), np.zeros(2048)
    b[1000] = 1.0
    assert chat._get_invocation_params(query_embedding=a)["call_digest"] != \
        chat._get_invocation_params(query_embedding=b)["call_digest"]
    assert "call_digest" not in chat._get_invocation_params()


def test_batch_with_one_config_returns_a_bad_input_as_its_exception(tiny_seka):
    out = ChatSeka(model=tiny_seka, max_tokens=2).batch(["hello", 123], return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[1], ValueError)
    with pytest.raises(ValueError):
        ChatSeka(model=tiny_seka, max_tokens=2).batch(["hello", 123])


# ------------------------------------------------------------------------------ markers
def test_highlighter_takes_a_marker_pair_or_none():
    docs = [Document(page_content="The tower is in Rome."), Document(page_content="Bridges are long.")]
    paired = SekaHighlight(policy="top_k", k=1, markers=("[[", "]]")).invoke({"question": "q", "documents": docs})
    assert paired["context"].count("[[") == 1 and "<<" not in paired["context"]
    assert SekaHighlight(markers=("[[", "]]")).markers == Markers("[[", "]]")
    unmarked = SekaHighlight(policy="top_k", k=1, markers=None).invoke({"question": "q", "documents": docs})
    assert unmarked["context"] == unmarked["context_text"] == paired["context_text"]
    assert unmarked["highlights"] == paired["highlights"] == ["The tower is in Rome."]
    with pytest.raises(ValidationError, match="markers must be"):
        SekaHighlight(markers="[[")


def test_postprocessor_takes_a_marker_pair_and_explains_none():
    post = SekaHighlightPostprocessor(policy="all", markers=("[[", "]]"))
    assert post.markers == Markers("[[", "]]")
    out = post.postprocess_nodes([NodeWithScore(node=TextNode(text="Rome."), score=1.0)], QueryBundle("q"))
    assert out[0].node.get_content() == "[[Rome.]]"
    with pytest.raises(ValidationError, match="needs a marker pair"):
        SekaHighlightPostprocessor(markers=None)


# ------------------------------------------------------------------------------ LlamaIndex LLM
def test_llamaindex_refuses_settings_that_would_do_nothing(tiny_seka):
    with pytest.raises(ValidationError, match="batch_size would do nothing"):
        Seka(model=tiny_seka, batch_size=64)
    assert Seka.from_dict(Seka(model=tiny_seka).to_dict()).batch_size == 8  # a round trip still loads
    with pytest.raises(SekaError, match="larger than the model's"):
        Seka(model=tiny_seka, context_window=tiny_seka.context_window + 1).metadata
    assert Seka(model=tiny_seka, context_window=100).metadata.context_window == 100


def test_async_stream_stops_generating_when_the_consumer_leaves(tiny_seka, monkeypatch):
    produced, closed = [], threading.Event()

    def slow_stream(prompt, highlights=None, **kwargs):
        try:
            for i in range(500):
                time.sleep(0.005)
                produced.append(i)
                yield f"t{i} "
        finally:
            closed.set()

    monkeypatch.setattr(tiny_seka, "stream", slow_stream)

    async def first_delta() -> tuple[str, bool, int]:
        gen = await Seka(model=tiny_seka, max_tokens=500).astream_complete("hello")
        async for response in gen:
            delta = response.delta
            break
        await gen.aclose()
        # the event loop stays alive meanwhile (its closing would stop the worker on its own)
        was_closed = await asyncio.to_thread(closed.wait, 5)
        await asyncio.sleep(0.2)
        return delta, was_closed, len(produced)

    delta, was_closed, n_produced = asyncio.run(first_delta())
    assert delta == "t0 "
    assert was_closed, "the engine's stream was never closed"
    assert n_produced < 100


# ------------------------------------------------------------------------------ LlamaIndex embeddings
class _Encoder:
    """A stand-in sentence-transformers model that records the threads it encodes in."""

    def __init__(self):
        self.threads: list[int] = []

    def encode(self, texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True):
        self.threads.append(threading.get_ident())
        return np.ones((len(texts), 3), dtype=np.float32)


def test_embedding_model_name_chooses_the_model(monkeypatch, tmp_path):
    import langchain_seka._select as select

    loaded = []
    monkeypatch.setattr(select, "_load_sentence_transformer", lambda path: loaded.append(str(path)) or _Encoder())
    import llama_index.embeddings.seka.base as base

    monkeypatch.setattr(base, "load_encoder", select.load_encoder)
    emb = SentenceTransformerEmbedding(model_name=str(tmp_path))
    assert emb.get_text_embedding("x") == [1.0, 1.0, 1.0] and loaded == [str(tmp_path)]
    assert SentenceTransformerEmbedding(model=str(tmp_path)).model_name == str(tmp_path)
    with pytest.raises(ValidationError, match="name different models"):
        SentenceTransformerEmbedding(model=str(tmp_path), model_name="other")
    with pytest.raises(ValidationError):
        SentenceTransformerEmbedding(modle="x")


def test_embedding_async_methods_leave_the_event_loop_free():
    encoder = _Encoder()
    emb = SentenceTransformerEmbedding(model=encoder)

    async def run() -> int:
        await emb.aget_query_embedding("q")
        await emb.aget_text_embedding_batch(["a", "b", "c"])
        return threading.get_ident()

    loop_thread = asyncio.run(run())
    assert encoder.threads and loop_thread not in encoder.threads
    assert len(encoder.threads) == 2  # the batch is one encoder call, not one per text


def test_langchain_embeddings_take_model_name_too(monkeypatch, tmp_path):
    import langchain_seka._select as select
    from langchain_seka import SentenceTransformerEmbeddings

    loaded = []
    monkeypatch.setattr(select, "_load_sentence_transformer", lambda path: loaded.append(str(path)) or _Encoder())
    emb = SentenceTransformerEmbeddings(model_name=str(tmp_path))
    assert emb.embed_query("x") == [1.0, 1.0, 1.0] and loaded == [str(tmp_path)]
    assert SentenceTransformerEmbeddings(model=str(tmp_path)).model_name == str(tmp_path)
    with pytest.raises(ValidationError, match="name different models"):
        SentenceTransformerEmbeddings(model=str(tmp_path), model_name="other")
    with pytest.raises(SekaError, match="take text strings, got dict"):
        SentenceTransformerEmbeddings(model=_Encoder()).embed_query({"question": "x"})


@pytest.mark.parametrize("cls", ["langchain", "llamaindex"])
def test_a_missing_embedding_directory_is_named_not_looked_up_online(cls, tmp_path):
    from langchain_seka import SentenceTransformerEmbeddings

    missing = str(tmp_path / "nowhere")
    emb = SentenceTransformerEmbeddings(model_name=missing) if cls == "langchain" else SentenceTransformerEmbedding(
        model_name=missing)
    with pytest.raises(SekaError, match="no such directory.*nothing is downloaded"):
        emb.embed_query("x") if cls == "langchain" else emb.get_query_embedding("x")


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
def test_one_highlight_list_per_input_is_refused_with_the_way_to_do_it(cls, tiny_seka):
    with pytest.raises(SekaError, match="one list for the whole call.*mark it inline"):
        cls(model=tiny_seka, max_tokens=2).batch([PROMPT, PROMPT], highlights=[["Paris."], ["Rome."]])


def test_sentences_policy_without_a_query_names_llamaindex_arguments():
    pp = SekaHighlightPostprocessor(policy="sentences", k=1, encoder=lambda texts: np.ones((len(texts), 3)))
    with pytest.raises(SekaError, match="query_str="):
        pp.postprocess_nodes([NodeWithScore(node=TextNode(text="A. B."), score=1.0)])


def test_an_encoder_directory_is_loaded_once_per_process(monkeypatch, tmp_path):
    import langchain_seka._select as select

    class Model(_Encoder):  # looks like a sentence-transformers model
        def similarity(self, a, b):  # pragma: no cover - never called here
            return None

    loads = []
    monkeypatch.setattr(select, "_load_from_disk", lambda path: loads.append(path) or Model())
    monkeypatch.setattr(select, "_loaded_encoders", {})
    for _ in range(3):
        select.as_encoder(str(tmp_path))(["a sentence"])
    SentenceTransformerEmbedding(model_name=str(tmp_path)).get_text_embedding("x")
    assert len(loads) == 1


def test_token_counts_leave_the_warning_filters_alone(tiny_seka):
    import warnings

    from langchain_seka._settings import usage_counts

    before = list(warnings.filters)
    counts = usage_counts(tiny_seka, "The tower is in <<Rome>>. " * 40, None, chat=None, max_new_tokens=4, text="")
    assert counts["input_tokens"] <= tiny_seka.context_window - 4 and warnings.filters == before


@pytest.mark.parametrize("which", ["chat", "llm", "llamaindex"])
def test_a_cancelled_async_call_tells_the_generation_to_stop(tiny_seka, monkeypatch, which):
    seen = []

    def generate(*args, cancel=None, **kwargs):  # stands in for a long generation
        seen.append(cancel)
        assert cancel is not None and cancel.wait(5)  # set by the cancellation, not by the timeout
        return "stopped"

    monkeypatch.setattr(tiny_seka, "generate", generate)

    async def run():
        if which == "chat":
            call = ChatSeka(model=tiny_seka, max_tokens=300).ainvoke(PROMPT)
        elif which == "llm":
            call = SekaLLM(model=tiny_seka, max_tokens=300).ainvoke(PROMPT)
        else:
            call = Seka(model=tiny_seka, max_new_tokens=300).acomplete(PROMPT)
        task = asyncio.ensure_future(call)
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(seen) == 1 and seen[0].is_set()


def test_a_cancelled_abatch_caches_no_cut_short_answer(tiny_seka, monkeypatch):
    from langchain_core.globals import set_llm_cache

    started = threading.Event()

    def generate(prompt, *args, cancel=None, **kwargs):  # a long generation, cut short when cancelled
        if cancel is None:
            out = "FULL ANSWER"
        else:
            started.set()
            assert cancel.wait(5)
            out = "cut short"
        return [out] * len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], dict) else out

    monkeypatch.setattr(tiny_seka, "generate", generate)
    chat = ChatSeka(model=tiny_seka, max_tokens=300, cache=True)
    set_llm_cache(InMemoryCache())
    try:
        async def run():
            task = asyncio.ensure_future(chat.abatch([PROMPT, PROMPT + " Again?"]))
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.3)  # the worker thread ends its cut-short batch

        asyncio.run(run())
        assert [m.content for m in chat.batch([PROMPT, PROMPT + " Again?"])] == ["FULL ANSWER"] * 2
    finally:
        set_llm_cache(None)


@pytest.mark.parametrize("how", ["astream", "ainvoke streaming"])
def test_async_token_callbacks_of_sekallm_run_on_the_callers_loop(tiny_seka, how):
    from langchain_core.callbacks import AsyncCallbackHandler

    seen = []

    class Tokens(AsyncCallbackHandler):
        async def on_llm_new_token(self, token, **kwargs):
            seen.append(asyncio.get_running_loop())

    async def run():
        loop = asyncio.get_running_loop()
        if how == "astream":
            llm = SekaLLM(model=tiny_seka, max_tokens=6)
            pieces = [p async for p in llm.astream(PROMPT, config={"callbacks": [Tokens()]})]
        else:
            llm = SekaLLM(model=tiny_seka, max_tokens=6, streaming=True)
            pieces = [await llm.ainvoke(PROMPT, config={"callbacks": [Tokens()]})]
        return loop, pieces

    loop, pieces = asyncio.run(run())
    assert "".join(pieces) and seen and all(s is loop for s in seen)


@pytest.mark.parametrize("wrapper", ["chat", "llm"])
def test_the_first_cached_call_is_found_again(counting_loader, tiny_seka, spy, wrapper):
    # before the model is loaded the cache key could not hold what it edits with, so the first call's
    # entry was never read again: the wrapper loads the model before LangChain builds the key
    cls = ChatSeka if wrapper == "chat" else SekaLLM
    llm = cls(max_tokens=2, cache=InMemoryCache())
    from langchain_seka import _loading

    def text(out):
        return getattr(out, "content", out)

    first = llm.invoke("Hello there")
    calls = len(spy.calls)
    assert text(llm.invoke("Hello there")) == text(first) and len(spy.calls) == calls  # a hit: no generation
    assert counting_loader == [_loading.DEFAULT_MODEL]
    uncached = cls(max_tokens=2, cache=False)
    uncached.invoke("Hello there")
    assert len(spy.calls) == calls + 1


def test_chat_marker_roles_keep_user_code_literal(tiny_seka, spy):
    from langchain_core.messages import HumanMessage, SystemMessage

    code = "What does x << 2 >> 1 do?"
    messages = [SystemMessage("Context: <<The tower is in Rome.>>"), HumanMessage(code)]
    ChatSeka(model=tiny_seka, max_tokens=2).invoke(messages)
    assert spy.last["prompt"][1]["content"].startswith("What does x \\<< 2 \\>> 1") is False  # read as markers
    ChatSeka(model=tiny_seka, max_tokens=2, marker_roles=("system",)).invoke(messages)
    engine = spy.last
    assert engine["prompt"][1]["content"] == "What does x \\<< 2 \\>> 1 do?"  # escaped: read literally
    assert [tiny_seka.highlighted_tokens(engine["prompt"], engine["highlights"])] != [[]]
    text = "".join(tiny_seka.highlighted_tokens(engine["prompt"], engine["highlights"]))
    assert "Rome" in text and "2" not in text
    for bad in (("assistant",), "boss"):
        with pytest.raises(ValueError, match="marker_roles"):
            ChatSeka(model=tiny_seka, marker_roles=bad)
    key = ChatSeka(model=tiny_seka, marker_roles=("system",))._identifying_params
    assert key["marker_roles"] == ["system"] != ChatSeka(model=tiny_seka)._identifying_params["marker_roles"]


def test_a_missing_documents_key_names_the_likely_one():
    from langchain_core.messages import HumanMessage

    with pytest.raises(SekaError, match="set documents_key='context'"):
        SekaHighlight().invoke({"question": "q", "context": [Document(page_content="a")]})
    with pytest.raises(SekaError, match="set documents_key='context'"):
        SekaHighlight().invoke({"question": "q", "context": (Document(page_content="a"), 0.5)})
    for no_guess in ({"a": [], "b": []}, {"question": "q", "chat_history": [HumanMessage("hi")]}):
        with pytest.raises(SekaError) as info:
            SekaHighlight().invoke(no_guess)
        assert "documents_key=" not in str(info.value)


def test_async_calls_reuse_the_first_cached_answer_and_a_failed_load_runs_once(counting_loader, tiny_seka, spy,
                                                                               monkeypatch):
    from langchain_seka import _loading

    for cls in (ChatSeka, SekaLLM):
        llm = cls(max_tokens=2, cache=InMemoryCache())

        async def twice():
            first = await llm.ainvoke("Hello there")
            calls = len(spy.calls)
            second = await llm.ainvoke("Hello there")
            return getattr(first, "content", first), getattr(second, "content", second), calls

        first, second, calls = asyncio.run(twice())
        assert first == second and len(spy.calls) == calls  # a hit: no second generation
    attempts = []

    def failing(name, **kwargs):
        attempts.append(name)
        raise SekaError("cannot load")

    monkeypatch.setattr(_loading, "_models", {})
    monkeypatch.setattr(_loading.SekaModel, "default", staticmethod(failing))
    for call in (lambda: ChatSeka(cache=InMemoryCache()).invoke("hi"),
                 lambda: asyncio.run(ChatSeka(cache=InMemoryCache()).ainvoke("hi")),
                 lambda: SekaLLM(cache=InMemoryCache()).invoke("hi")):
        attempts.clear()
        with pytest.raises(SekaError, match="cannot load"):
            call()
        assert len(attempts) == 1  # one attempt, not one for the key and one for the call


def test_custom_roles_are_read_and_function_is_a_tool(tiny_seka):
    from langchain_core.messages import ChatMessage

    from langchain_seka._messages import to_engine_messages

    out = to_engine_messages([ChatMessage(role="context", content="<<x>>"), ChatMessage(role="function", content="<<y>>")],
                             marker_roles=("system",))
    assert out == [{"role": "context", "content": "<<x>>"}, {"role": "tool", "content": "\\<<y\\>>"}]
    assert to_engine_messages([ChatMessage(role="function", content="<<y>>")])[0]["content"] == "<<y>>"
