"""Marker edge cases through the integrations, and streamed chat history (each found by a review).

A streamed reply stored in a chat history comes back as an ``AIMessageChunk``; a transcript for a
model without a chat template parses each message on its own; LlamaIndex queries and node metadata
reach the model literally; highlights keep their last characters; the lenient parser follows the
engine's escape rules.
"""

from __future__ import annotations

import pytest
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, HumanMessageChunk
from langchain_core.runnables.history import RunnableWithMessageHistory
from llama_index.core.llms import ChatMessage
from llama_index.core.response_synthesizers import get_response_synthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from langchain_seka import ChatSeka
from langchain_seka._text import mark_up, parse_lenient
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor
from seka_rag import HighlightError
from seka_rag.highlight import prepare_prompt


def _seen(model, call) -> tuple[str, list[str]]:
    """The text the model reads for an engine call, and the highlighted texts in it."""
    kwargs = call["kwargs"]
    prepared = prepare_prompt(call["prompt"], model.tokenizer, call["highlights"],
                              markers=kwargs.get("markers", model.markers), chat=kwargs.get("chat"))
    return prepared.text, [prepared.text[s:e] for s, e in prepared.spans]


def test_streamed_history_works_on_the_next_turn(tiny_seka, spy):
    store = InMemoryChatMessageHistory()
    chain = RunnableWithMessageHistory(ChatSeka(model=tiny_seka, max_tokens=3), lambda session: store)
    config = {"configurable": {"session_id": "s"}}
    "".join(chunk.content for chunk in chain.stream("hello", config=config))
    assert isinstance(store.messages[-1], AIMessageChunk)
    chain.invoke("again", config=config)  # the chunk is sent back as an assistant message
    assert [m["role"] for m in spy.last["prompt"]] == ["user", "assistant", "user"]
    ChatSeka(model=tiny_seka, max_tokens=2).invoke([HumanMessageChunk(content="Where is <<the tower>>?")])
    assert spy.last["prompt"][0]["role"] == "user"


def test_transcript_parses_each_message_on_its_own(tiny_plain_seka, spy_on):
    spy = spy_on(tiny_plain_seka)
    history = [HumanMessage("Doc: <<x = a \\<< 2>>"), AIMessage("That << shifts a."), HumanMessage("and <<y = b>> 1?")]
    ChatSeka(model=tiny_plain_seka, max_tokens=2).invoke(history)
    text, highlights = _seen(tiny_plain_seka, spy.last)
    assert "Doc: x = a << 2" in text and "Assistant: That << shifts a." in text
    assert highlights == ["x = a << 2", "y = b"]
    # markers never pair across messages: an unclosed one is an error, as with a chat template
    with pytest.raises(HighlightError, match="message 0"):
        ChatSeka(model=tiny_plain_seka, max_tokens=2).invoke(
            [HumanMessage("x = a << 2"), AIMessage("That shifts a."), HumanMessage("and y = b >> 1?")])
    # LlamaIndex reads stray markers literally, message by message
    Seka(model=tiny_plain_seka, max_tokens=2).chat(
        [ChatMessage(role="user", content="x = a << 2"), ChatMessage(role="assistant", content="That shifts a."),
         ChatMessage(role="user", content="and y = b >> 1?")])
    text, highlights = _seen(tiny_plain_seka, spy.last)
    assert "x = a << 2" in text and "y = b >> 1?" in text and highlights == []


def test_llamaindex_query_and_metadata_reach_the_model_literally(tiny_long_seka, spy_on):
    spy = spy_on(tiny_long_seka)
    query = "What do x << 2 and y >> 1 compute?"
    nodes = [NodeWithScore(node=TextNode(text="The answer is 42.", metadata={"title": "Shifts: a << b, c >> d"}),
                           score=0.9)]
    bundle = QueryBundle(query)
    post = SekaHighlightPostprocessor(policy="top_k", k=1)
    out = post.postprocess_nodes(nodes, bundle)
    post._escape_query(bundle)  # a second pass over the same bundle escapes it once only
    get_response_synthesizer(response_mode="compact", llm=Seka(model=tiny_long_seka, max_tokens=2,
                                                                context_window=1500)).synthesize(bundle, out)
    text, highlights = _seen(tiny_long_seka, spy.last)
    assert f"Query: {query}" in text and "title: Shifts: a << b, c >> d" in text
    assert highlights == ["The answer is 42."]
    assert nodes[0].node.metadata["title"] == "Shifts: a << b, c >> d"  # the caller's node is untouched


def test_highlights_keep_their_last_characters():
    for text in ("Install to C:\\Program Files\\", "line one \\\\ line two \\\\", "see </div>"):
        marked, spans = mark_up(text, [(0, len(text))])
        assert spans == [(0, len(text))] and parse_lenient(marked) == (text, [(0, len(text))])
    marked, spans = mark_up("y = x >> 2; done", [(0, 16)], per_word=True)
    assert parse_lenient(marked)[1] == [(0, 16)]  # the operator stays inside the highlight


@pytest.mark.parametrize("prompt, clean, highlighted", [
    ("What do the operators << >> do?", "What do the operators << >> do?", []),
    ("Run: echo \\\\<<EOF and <<key>>", "Run: echo \\<<EOF and key", ["key"]),
    ("a \\\\<<key>> x >> y", "a \\key x >> y", ["key"]),
    ("a << >> b", "a << >> b", []),
    ("<<a>>> b", "a> b", ["a>"]),
])
def test_lenient_parsing_follows_the_engines_rules(prompt, clean, highlighted):
    got, spans = parse_lenient(prompt)
    assert got == clean and [got[s:e] for s, e in spans] == highlighted


def test_a_document_holding_markers_gets_a_pointed_error(tiny_seka):
    doc = "Use x << 2 >> 1 to scale."
    with pytest.raises(HighlightError, match="escape_markers"):
        ChatSeka(model=tiny_seka, max_tokens=2).invoke(f"Context: {doc}\nQ?", documents=[Document(page_content=doc)])


def test_template_less_batch_mixes_single_and_multi_message_inputs(tiny_plain_seka, spy_on):
    spy = spy_on(tiny_plain_seka)
    chat = ChatSeka(model=tiny_plain_seka, max_tokens=2)
    history = [HumanMessage("hi"), AIMessage("yo"), HumanMessage("and <<y>>?")]
    for inputs in ([history, "Where is <<the tower>>?"],
                   ["Where is <<the tower>>?", [HumanMessage("a \\<< b"), AIMessage("ok"), HumanMessage("<<c>>")]]):
        outs = chat.batch(inputs)
        assert len(outs) == 2
    # each input alone sees exactly what it saw in the batch: the highlight, never a literal marker
    chat.invoke("Where is <<the tower>>?")
    text, highlights = _seen(tiny_plain_seka, spy.last)
    assert text == "Where is the tower?" and highlights == ["the tower"]
