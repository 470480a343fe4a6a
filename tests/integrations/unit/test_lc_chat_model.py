"""ChatSeka / SekaLLM with a tiny random model: exact engine calls, streaming, batching, async, callbacks."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_seka import ChatSeka, SekaLLM, _loading
from seka_rag import HighlightError, SekaError

DOCS = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"
PLAIN = DOCS.replace("<<", "").replace(">>", "")


class Tags(BaseCallbackHandler):
    def __init__(self):
        self.tags = []

    def on_chat_model_start(self, serialized, messages, *, tags=None, **kwargs):
        self.tags.append(list(tags or []))


class Tokens(BaseCallbackHandler):
    def __init__(self):
        self.tokens: list[str] = []
        self.ends = 0

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs):
        self.ends += 1


# ------------------------------------------------------------------------------------- construction
def test_construction_is_cheap_lazy_and_shared(counting_loader, tiny_seka, monkeypatch):
    loads = counting_loader
    a, b = ChatSeka(max_tokens=3), ChatSeka(max_new_tokens=3)
    c = ChatSeka(model="smollm2-135m", max_tokens=3)
    assert loads == []  # nothing loads at construction
    assert a.model_name == _loading.DEFAULT_MODEL and c.model_name == "smollm2-135m"
    a.invoke("hi")
    b.invoke("hi")
    assert loads == [_loading.DEFAULT_MODEL]  # one load, shared
    c.invoke("hi")
    SekaLLM(model="smollm2-135m", max_tokens=2).invoke("hi")
    assert loads == [_loading.DEFAULT_MODEL, "smollm2-135m"]


def test_fields_aliases_and_standard_arguments(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=7, temperature=0.5, timeout=30, max_retries=3,
                    api_key="unused", base_url="http://unused", streaming=False, stop=["x"])
    assert chat.max_new_tokens == 7 and chat.model_name == "tiny-llama"
    gen = chat.generation_kwargs()
    assert gen["do_sample"] is True and gen["temperature"] == 0.5 and gen["stop"] == ["x"]
    assert ChatSeka(temperature=0).generation_kwargs()["do_sample"] is False
    assert ChatSeka(temperature=0.7, do_sample=False).generation_kwargs()["do_sample"] is False
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        ChatSeka(max_tokenz=3)
    with pytest.raises(Exception, match="model must be"):
        ChatSeka(model=42)
    ls = chat._get_ls_params(stop=["y"], model="other")
    assert ls["ls_model_name"] == "other" and ls["ls_stop"] == ["y"] and ls["ls_max_tokens"] == 7


# ------------------------------------------------------------------------------------- engine calls
def test_markers_pass_through_to_the_engine(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=4, gain_pos=3.0, layers=[1])
    chat.invoke(DOCS)
    call = spy.last
    assert call["method"] == "generate"
    assert call["prompt"] == [{"role": "user", "content": DOCS}]
    assert call["highlights"] is None
    kw = call["kwargs"]
    assert kw["max_new_tokens"] == 4 and kw["gain_pos"] == 3.0 and kw["layers"] == [1]
    assert kw["steer"] is True and kw["do_sample"] is False and kw["stop"] is None and kw["chat"] is None
    assert "".join(tiny_seka.highlighted_tokens(call["prompt"])).strip() == "The tower is in Rome."


def test_highlights_from_kwargs_bind_and_documents(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=3)
    messages = [SystemMessage("Answer briefly."), HumanMessage(PLAIN)]
    chat.invoke(messages, highlights=[(1, 0, 5), "Rome"])
    assert spy.last["prompt"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PLAIN}]
    assert spy.last["highlights"] == [(1, 0, 5), "Rome"]

    chat.invoke(PLAIN, highlights=[(7, 29)])  # one message: (start, end) refers to it
    assert spy.last["highlights"] == [(0, 7, 29)]

    chat.bind(highlights=["Paris"]).invoke(PLAIN)
    assert spy.last["highlights"] == ["Paris"]

    chat.invoke(messages, documents=[Document(page_content="The tower is in Rome."), "Doc 1"])
    assert spy.last["highlights"] == ["The tower is in Rome.", "Doc 1"]
    with pytest.raises(HighlightError, match="does not occur in the prompt"):
        chat.invoke(messages, documents=[Document(page_content="The tower is in Oslo.")])


def test_per_call_settings_stop_and_steer(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=3, stop=["a"])
    chat.invoke(DOCS, stop=["b"], max_tokens=2, steer=False, gain_neg=0.0)
    kw = spy.last["kwargs"]
    assert kw["stop"] == ["b"] and kw["max_new_tokens"] == 2 and kw["steer"] is False and kw["gain_neg"] == 0.0
    chat.invoke(DOCS)
    assert spy.last["kwargs"]["stop"] == ["a"]
    with pytest.raises(Exception, match="unknown argument"):
        chat.invoke(DOCS, gain=2.0)


def test_stop_sequences_cut_the_output(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=8)
    full = chat.invoke(PLAIN).content
    assert len(full) > 3
    stop = full[2:4]
    cut = chat.invoke(PLAIN, stop=[stop]).content
    assert stop not in cut and full.startswith(cut)
    assert "".join(c.content for c in chat.stream(PLAIN, stop=[stop])) == cut


def test_query_embedding_and_router_go_to_the_engine(tiny_seka, spy):
    from seka_rag import SekaError, SteeringConfigError

    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    # passed through unchanged; the engine rejects them with its own errors (no expert set here;
    # routing with experts: tests/integrations/unit/test_routing.py)
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        chat.invoke("hi", query_embedding=[0.1, 0.2])
    assert spy.last["kwargs"]["query_embedding"] == [0.1, 0.2]
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        chat.bind(query="where?").invoke("hi")
    with pytest.raises(ValueError, match="router must be one of"):  # refused when the wrapper is built
        ChatSeka(model=tiny_seka, max_tokens=2, router=object())
    with pytest.raises(SekaError, match="router must be one of"):  # and per call
        chat.invoke("hi", router="bogus")
    with pytest.raises(SekaError, match="expert set"):
        ChatSeka(model=tiny_seka, max_tokens=2, router="attention").invoke("<<hi>>")
    chat.invoke("<<hi>>", router="projection")
    assert spy.last["kwargs"]["router"] == "projection"


def test_plain_tokenizer_gets_a_transcript_with_shifted_spans(tiny_plain_seka, spy_on):
    spy = spy_on(tiny_plain_seka)
    chat = ChatSeka(model=tiny_plain_seka, max_tokens=2)
    chat.invoke([SystemMessage("Be brief."), HumanMessage("Where is <<the tower>>? In Rome.")],
                highlights=[(1, 23, 28)])
    prompt = spy.last["prompt"]
    # each message's markers are read on their own and become spans of the marker-free transcript
    assert prompt == "System: Be brief.\n\nUser: Where is the tower? In Rome.\n\nAssistant:"
    clean_start = len("System: Be brief.\n\nUser: ")
    assert spy.last["highlights"] == [(clean_start + 9, clean_start + 18), (clean_start + 23, clean_start + 28)]
    assert spy.last["kwargs"]["chat"] is False and spy.last["kwargs"]["markers"] is None
    assert "".join(tiny_plain_seka.highlighted_tokens(prompt, spy.last["highlights"], chat=False,
                                                      markers=None)) == " the tower Rome."


# ------------------------------------------------------------------------------------- outputs
def test_invoke_reports_usage_and_metadata(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=5)
    msg = chat.invoke(DOCS)
    assert isinstance(msg, AIMessage) and msg.content
    enc = tiny_seka.encode([{"role": "user", "content": DOCS}])
    usage = msg.usage_metadata
    assert usage["input_tokens"] == len(enc.input_ids)
    assert 0 < usage["output_tokens"] <= 5 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert msg.response_metadata["model_name"] == "tiny-llama"
    assert msg.response_metadata["highlighted_tokens"] == sum(enc.highlight) > 0


def test_stream_yields_the_invoke_text_and_fires_callbacks(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=8)
    expected = chat.invoke("Hello").content  # this seed's answer has spaces: the streamer emits pieces
    handler = Tokens()
    chunks = list(chat.stream("Hello", config={"callbacks": [handler]}))
    assert len(chunks) > 2
    assert "".join(c.content for c in chunks) == expected
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["input_tokens"] > 0
    assert "".join(handler.tokens) == expected and len([t for t in handler.tokens if t]) >= 2
    assert handler.ends == 1


def test_streaming_flag_routes_invoke_through_the_streamer(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=6, streaming=True)
    handler = Tokens()
    msg = chat.invoke(DOCS, config={"callbacks": [handler]})
    assert spy.last["method"] == "stream"
    assert "".join(handler.tokens) == msg.content
    assert msg.content == ChatSeka(model=tiny_seka, max_tokens=6).invoke(DOCS).content


def test_batch_is_one_batched_call_equal_to_one_by_one(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=5)
    inputs = [DOCS, PLAIN, "Where is <<Paris>>?"]
    single = [chat.invoke(x).content for x in inputs]
    spy.calls.clear()
    handler = Tokens()
    batched = chat.batch(inputs, config={"callbacks": [handler]})
    assert [m.content for m in batched] == single
    assert len(spy.calls) == 1 and isinstance(spy.last["prompt"], list) and len(spy.last["prompt"]) == 3
    assert spy.last["kwargs"]["batch_size"] == 8
    assert handler.ends == 3  # one run per input
    assert all(m.usage_metadata["input_tokens"] > 0 for m in batched)
    # per-input configs that differ keep their own runs, and still share one batched engine call
    spy.calls.clear()
    tagged = Tags()
    mixed = chat.batch(inputs, config=[{"tags": ["a"], "callbacks": [tagged]}, {"tags": ["b"], "callbacks": [tagged]},
                                       {"callbacks": [tagged]}])
    assert [m.content for m in mixed] == single and len(spy.calls) == 1 and len(spy.last["prompt"]) == 3
    assert sorted(map(tuple, tagged.tags)) == [(), ("a",), ("b",)]


def test_chain_batch_is_one_batched_engine_call(tiny_seka, spy):
    """`(prompt | chat).batch(...)`: every input has its own child run, yet one batched forward pass."""
    from langchain_core.prompts import ChatPromptTemplate

    chat = ChatSeka(model=tiny_seka, max_tokens=4)
    chain = ChatPromptTemplate.from_messages([("human", "Where is the <<{thing}>>?")]) | chat
    things = ["tower", "bridge", "station"]
    single = [chain.invoke({"thing": t}).content for t in things]
    spy.calls.clear()
    handler = Tokens()
    out = chain.batch([{"thing": t} for t in things], config={"callbacks": [handler]})
    assert [m.content for m in out] == single
    assert len(spy.calls) == 1 and len(spy.last["prompt"]) == 3
    assert handler.ends == 3


@pytest.mark.parametrize("mixed_configs", [False, True])
def test_batch_return_exceptions_isolates_a_bad_input(tiny_seka, mixed_configs):
    chat = ChatSeka(model=tiny_seka, max_tokens=3)
    config = [{"tags": ["x"]}, {}] if mixed_configs else None
    out = chat.batch([PLAIN, "unbalanced << marker"], config=config, return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[1], HighlightError)
    assert out[0].content == chat.invoke(PLAIN).content
    with pytest.raises(HighlightError):
        chat.batch([PLAIN, "unbalanced << marker"], config=config)


async def test_async_forms_match_sync(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=5)
    expected = chat.invoke(DOCS).content
    assert (await chat.ainvoke(DOCS)).content == expected
    pieces = [c.content async for c in chat.astream(DOCS)]
    assert "".join(pieces) == expected
    batched = await chat.abatch([DOCS, PLAIN])
    assert [m.content for m in batched] == [expected, chat.invoke(PLAIN).content]
    llm = SekaLLM(model=tiny_seka, max_tokens=5)
    assert await llm.ainvoke(DOCS) == llm.invoke(DOCS)
    assert "".join([p async for p in llm.astream(DOCS)]) == llm.invoke(DOCS)


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
async def test_abatch_runs_async_callbacks_on_the_callers_loop_in_one_engine_call(tiny_seka, spy, cls):
    """LangChain's own abatch runs async handlers on the caller's event loop; a handler that awaits
    something of that loop (an asyncio.Lock the app holds) hung when the batch ran in a worker thread."""
    import asyncio

    from langchain_core.callbacks import AsyncCallbackHandler

    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    loops = []

    class OnTheLoop(AsyncCallbackHandler):
        async def on_llm_end(self, response, **kwargs):
            loops.append(asyncio.get_running_loop() is loop)
            if asyncio.get_running_loop() is loop:  # (elsewhere the lock is of no use: a bounded wait, no hang)
                async with lock:  # released by the app a moment after the batch starts
                    pass

    model = cls(model=tiny_seka, max_tokens=4)
    expected = [model.invoke(DOCS), model.invoke(PLAIN)]
    spy.calls.clear()
    await lock.acquire()
    batch = asyncio.ensure_future(model.abatch([DOCS, PLAIN], config={"callbacks": [OnTheLoop()]}))
    await asyncio.sleep(0.2)
    lock.release()
    out = await asyncio.wait_for(batch, timeout=30)
    assert [getattr(o, "content", o) for o in out] == [getattr(o, "content", o) for o in expected]
    assert loops == [True, True]
    assert len([c for c in spy.calls if isinstance(c["prompt"], list)]) == 1 and len(spy.calls) == 1


async def test_abatch_holds_one_worker_thread_and_cancels_the_rest_on_an_error(tiny_seka, spy, monkeypatch):
    """The inputs wait for the batched call on the event loop, not in executor threads (10 waiting
    threads held a 4-worker executor for the whole generation); without return_exceptions, the batched
    call's error is raised, with no solo runs generating for nobody afterwards."""
    import asyncio
    import concurrent.futures
    import time

    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    original = tiny_seka.generate

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_seka, "generate", slow)
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    spy.calls.clear()
    batch = asyncio.ensure_future(chat.abatch([f"{DOCS} {i}" for i in range(10)]))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    assert await asyncio.wait_for(asyncio.to_thread(lambda: 1), timeout=5) == 1
    assert time.perf_counter() - started < 0.4  # a free worker while the batch generates
    assert len(await batch) == 10 and len(spy.calls) == 1
    spy.calls.clear()
    with pytest.raises(HighlightError):
        await chat.abatch([DOCS, "an <<unbalanced marker", PLAIN, DOCS + "?"])
    await asyncio.sleep(1.0)  # solo runs left behind would call the engine meanwhile
    assert len(spy.calls) == 1  # the batched call (it fails on the bad input) and nothing after


async def test_abatch_rows_go_to_their_own_inputs_and_every_run_ends(tiny_seka, spy):
    """A call nested in an input's run (an async handler's own call, other settings) is not handed that
    input's batch answer; messages LangChain normalises (a text file block) still match their row;
    one input's own error leaves the other runs to end, as LangChain's own abatch does."""
    from langchain_core.callbacks import AsyncCallbackHandler

    chat = ChatSeka(model=tiny_seka, max_tokens=4)
    nested = []

    class AsksAgain(AsyncCallbackHandler):
        async def on_llm_end(self, response, **kwargs):
            if not nested:
                nested.append(await chat.ainvoke(DOCS, max_tokens=1))

    out = await chat.abatch([DOCS, PLAIN], config={"callbacks": [AsksAgain()]})
    assert nested[0].content == chat.invoke(DOCS, max_tokens=1).content != out[0].content
    assert nested[0] is not out[0] and nested[0].id != out[0].id
    as_file = HumanMessage(content=[{"type": "file", "source_type": "text", "url": "Where is the tower?",
                                     "mime_type": "text/plain"}])
    spy.calls.clear()
    assert [m.content for m in await chat.abatch([[as_file], DOCS])] == [chat.invoke([as_file]).content,
                                                                       chat.invoke(DOCS).content]
    assert len(spy.calls) == 3  # the batch, then the two single calls of this check

    class FailsOne(AsyncCallbackHandler):
        raise_error = True
        ends = 0

        async def on_chat_model_start(self, serialized, messages, **kwargs):
            if "unlucky" in str(messages):
                raise RuntimeError("this input's handler fails")

        async def on_llm_end(self, response, **kwargs):
            FailsOne.ends += 1

    with pytest.raises(RuntimeError, match="handler fails"):
        await chat.abatch([DOCS, "unlucky", PLAIN], config={"callbacks": [FailsOne()]})
    assert FailsOne.ends == 2  # the two good inputs' runs ended before abatch raised
    # an Exception comes back in the list with return_exceptions; a cancellation is raised all the same
    out = await chat.abatch([DOCS, "unlucky", PLAIN], config={"callbacks": [FailsOne()]}, return_exceptions=True)
    assert isinstance(out[1], RuntimeError) and isinstance(out[0], AIMessage)
    import asyncio

    class CancelsOne(FailsOne):
        async def on_chat_model_start(self, serialized, messages, **kwargs):
            if "unlucky" in str(messages):
                raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await chat.abatch([DOCS, "unlucky", PLAIN], config={"callbacks": [CancelsOne()]}, return_exceptions=True)


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
async def test_leaving_astream_early_closes_the_stream_off_the_event_loop(tiny_seka, monkeypatch, cls):
    """The stream's cleanup waits for the token being generated: on the event loop, every other
    coroutine would wait with it."""
    import asyncio
    import threading

    closed_in = []
    original = cls._stream

    def recording(self, *args, **kwargs):
        try:
            yield from original(self, *args, **kwargs)
        finally:
            closed_in.append(threading.get_ident())

    monkeypatch.setattr(cls, "_stream", recording)
    pieces = cls(model=tiny_seka, max_tokens=40).astream(DOCS)
    async for piece in pieces:
        if getattr(piece, "content", piece):
            break
    await pieces.aclose()
    for _ in range(500):
        if closed_in:
            break
        await asyncio.sleep(0.01)
    assert closed_in and closed_in[0] != threading.get_ident()


def test_model_override_per_call(tiny_seka, registered):
    msg = ChatSeka(model=tiny_seka, max_tokens=2).invoke("hi", model=registered)
    assert msg.response_metadata["model_name"] == registered


# ------------------------------------------------------------------------------------- SekaLLM
def test_seka_llm(tiny_seka, spy):
    llm = SekaLLM(model=tiny_seka, max_tokens=5)
    text = llm.invoke(DOCS)
    assert spy.last["prompt"] == DOCS and spy.last["highlights"] is None
    handler = Tokens()
    assert "".join(llm.stream(DOCS, config={"callbacks": [handler]})) == text
    assert "".join(handler.tokens) == text and handler.ends == 1
    spy.calls.clear()
    assert llm.batch([DOCS, PLAIN]) == [text, llm.invoke(PLAIN)]
    assert len([c for c in spy.calls if isinstance(c["prompt"], list)]) == 1
    llm.invoke(PLAIN, highlights=[(7, 29)], documents=["The tower is in Rome."])
    assert spy.last["highlights"] == [(7, 29), "The tower is in Rome."]
    result = llm.generate([PLAIN])
    assert result.llm_output["token_usage"]["input_tokens"] > 0


def test_seka_llm_streaming_flag_streams_invoke_and_generate(tiny_seka, spy):
    llm = SekaLLM(model=tiny_seka, max_tokens=6, streaming=True)
    handler = Tokens()
    text = llm.invoke(DOCS, config={"callbacks": [handler]})
    assert spy.last["method"] == "stream" and "".join(handler.tokens) == text and handler.tokens
    assert text == SekaLLM(model=tiny_seka, max_tokens=6).invoke(DOCS)
    assert llm.generate([DOCS]).llm_output["token_usage"]["output_tokens"] > 0
    with pytest.raises(SekaError, match="one prompt at a time"):  # one run manager for the batch
        llm.generate([DOCS, PLAIN])


async def test_seka_llm_async_calls_match_sync_and_stream_when_asked(tiny_seka):
    plain = SekaLLM(model=tiny_seka, max_tokens=6)
    texts = plain.batch([DOCS, PLAIN])
    assert await plain.ainvoke(DOCS) == texts[0]
    assert await plain.abatch([DOCS, PLAIN]) == texts
    result = await plain.agenerate([DOCS, PLAIN])
    assert result.llm_output["token_usage"]["output_tokens"] > 0  # the batched path's usage, async too
    handler = Tokens()
    assert await SekaLLM(model=tiny_seka, max_tokens=6, streaming=True).ainvoke(
        DOCS, config={"callbacks": [handler]}) == texts[0]
    assert "".join(handler.tokens) == texts[0] and handler.ends == 1


def test_token_counts_use_the_models_tokenizer(tiny_seka):
    from langchain_core.messages import HumanMessage

    ids = tiny_seka.tokenizer.encode("quick brown fox", add_special_tokens=False)
    for wrapper in (ChatSeka(model=tiny_seka), SekaLLM(model=tiny_seka)):
        assert wrapper.get_token_ids("quick brown fox") == ids
        assert wrapper.get_num_tokens("quick brown fox") == len(ids) > 0
    assert ChatSeka(model=tiny_seka).get_num_tokens_from_messages([HumanMessage("quick brown fox")]) > len(ids)


def test_sampling_settings_switch_sampling_on_or_warn(tiny_seka):
    assert ChatSeka(top_p=0.9).generation_kwargs()["do_sample"] is True
    assert ChatSeka(temperature=0, top_p=0.9).generation_kwargs()["do_sample"] is False
    with pytest.warns(UserWarning, match="top_p only applies when sampling"):
        ChatSeka(model=tiny_seka, max_tokens=2, temperature=0, top_p=0.9).invoke("hi")


def test_content_blocks_are_read_or_refused_never_dropped(tiny_seka, spy):
    from langchain_core.messages.content import create_plaintext_block

    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    chat.invoke([HumanMessage(content=[create_plaintext_block(text="The tower is in Rome."),
                                       {"type": "text", "text": " Where is the tower?"}])])
    assert spy.last["prompt"] == [{"role": "user", "content": "The tower is in Rome. Where is the tower?"}]
    chat.invoke([HumanMessage(content=[{"type": "input_text", "text": "Where is the tower?"}])])  # OpenAI Responses
    assert spy.last["prompt"] == [{"role": "user", "content": "Where is the tower?"}]
    calls = len(spy.calls)
    for block in ({"type": "input_image", "image_url": "https://example.com/a.png"},
                  {"type": "non_standard", "value": {"x": 1}}):
        with pytest.raises(SekaError, match="takes text only"):
            chat.invoke([HumanMessage(content=[block, {"type": "text", "text": "What is this?"}])])
    assert len(spy.calls) == calls  # refused before the engine runs
    # an answer's own reasoning is not sent back; its text is
    chat.invoke([HumanMessage(content="Hi"), AIMessage(content=[{"type": "reasoning", "reasoning": "hmm"},
                                                                 {"type": "text", "text": "Hello."}]),
                 HumanMessage(content="Where?")])
    assert spy.last["prompt"][1] == {"role": "assistant", "content": "Hello."}
    # a tool's JSON output is sent as JSON
    from langchain_core.messages import ToolMessage

    chat.invoke([HumanMessage(content="Price?"), AIMessage(content="", tool_calls=[{"name": "price", "args": {},
                                                                                  "id": "1"}]),
                 ToolMessage(content=[{"type": "json", "json": {"euros": 12}}], tool_call_id="1")])
    assert spy.last["prompt"][2] == {"role": "tool", "content": '{"euros": 12}'}
