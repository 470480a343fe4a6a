"""Mistakes and framework conventions at the integrations' surface, each found by a probe of the
wrappers as a LangChain / LlamaIndex user would call them: values that were dropped without a word,
errors from deep inside pydantic or LangChain, and standard interfaces that half-worked."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_seka import ChatSeka, SekaHighlight, SekaLLM, SentenceTransformerEmbeddings
from seka_rag import SekaError

P = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"


# ------------------------------------------------------------------ SekaHighlight
def test_numpy_and_other_real_scores_rank_documents():
    docs = [Document("best passage", metadata={"score": np.float32(0.92), "position": 3}),
            Document("worse passage", metadata={"score": np.float32(0.31), "position": 1})]
    out = SekaHighlight(k=1, order_by="position").invoke({"question": "q", "documents": docs})
    assert out["highlights"] == ["best passage"]  # was 'worse passage': the NumPy scores were not seen
    out = SekaHighlight(policy="threshold", threshold=0.5).invoke({"question": "q", "documents": docs})
    assert out["highlights"] == ["best passage"]


def test_a_lone_document_is_one_document():
    out = SekaHighlight(policy="all").invoke({"question": "q", "documents": "a single doc string"})
    assert out["highlights"] == ["a single doc string"] and len(out["documents"]) == 1
    out = SekaHighlight(policy="all").invoke({"question": "q", "documents": Document("one doc")})
    assert out["highlights"] == ["one doc"]
    out = SekaHighlight().invoke({"question": "q", "documents": (Document("paired"), 0.4)})
    assert out["highlights"] == ["paired"]
    out = SekaHighlight(policy="all").invoke({"question": "q", "documents": (Document("a"), Document("b"))})
    assert out["highlights"] == ["a", "b"]  # two documents, not a (document, score) pair


def test_scores_that_cannot_rank_are_refused_or_flagged():
    docs = [Document("a", metadata={"score": 0.9}), Document("b", metadata={"score": 0.2})]
    with pytest.raises(SekaError, match="score_key='relevance': no document has a number"):
        SekaHighlight(score_key="relevance").invoke({"question": "q", "documents": docs})
    with pytest.raises(SekaError, match="NaN"):
        SekaHighlight().invoke({"question": "q", "documents": [(Document("a"), float("nan")), (Document("b"), 0.5)]})
    with pytest.warns(UserWarning, match="no retriever score while the others do"):
        SekaHighlight().invoke({"question": "q", "documents": [(Document("a"), 0.1), Document("b")]})


def test_threshold_settings_that_did_nothing_are_refused_or_applied():
    with pytest.raises(ValueError, match="does nothing with the 'all' policy"):
        SekaHighlight(policy="all", threshold=0.5)
    with pytest.raises(ValueError, match=r"cosine similarity in \[-1, 1\]"):
        SekaHighlight(policy="sentences", threshold=5.0)
    docs = [(Document("low"), 0.2), (Document("high"), 0.8), (Document("mid"), 0.6)]
    out = SekaHighlight(policy="top_k", k=2, threshold=0.7).invoke({"question": "q", "documents": docs})
    assert out["highlights"] == ["high"]  # the k best among those passing the threshold


def test_highlight_settings_are_fields_not_call_arguments():
    with pytest.raises(SekaError, match="SekaHighlight takes no per-call arguments"):
        SekaHighlight().invoke({"question": "q", "documents": ["a"]}, k=2)
    with pytest.raises(SekaError, match="no per-call arguments"):
        SekaHighlight().bind(k=2).invoke({"question": "q", "documents": ["a"]})
    with pytest.raises(ValueError, match="exactly once"):
        SekaHighlight(document_template="{content} / {content}")


# ------------------------------------------------------------------ embeddings
def test_embeddings_name_bad_input(minilm):
    emb = SentenceTransformerEmbeddings()
    with pytest.raises(SekaError, match=r"got NoneType \(text 1\)"):
        emb.embed_documents(["a", None])
    with pytest.raises(SekaError, match="normalize=False cannot give raw vectors"):
        SentenceTransformerEmbeddings(normalize=False).embed_query("hello")
    hub_name = SentenceTransformerEmbeddings(model_name="sentence-transformers/all-MiniLM-L6-v2")
    assert hub_name.embed_query("hello") == emb.embed_query("hello")  # the offline copy of that model


# ------------------------------------------------------------------ ChatSeka / SekaLLM
def test_per_call_values_are_checked_like_fields(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    with pytest.raises(SekaError, match="temperature='x'"):
        chat.invoke(P, temperature="x")
    with pytest.raises(SekaError, match="stop must be a string or a list of non-empty strings"):
        chat.invoke(P, stop=5)
    with pytest.raises(SekaError, match="stop must be"):
        SekaLLM(model=tiny_seka, max_tokens=2).invoke(P, stop=5)
    chat.invoke(P, do_sample="no")  # read as False, as the field reads it (bool("no") was True)
    assert spy.last["kwargs"]["do_sample"] is False
    with pytest.raises(SekaError, match="not both"):
        chat.invoke(P, max_tokens=2, max_new_tokens=3)


def test_constructors_refuse_settings_that_cannot_work(tiny_seka):
    bad = [(dict(stop=[""]), "non-empty"), (dict(gain_pos=float("nan")), "finite"),
           (dict(temperature=float("inf")), "finite"), (dict(layers=[]), "non-empty list"),
           (dict(layers=[-1]), ">= 0"), (dict(heads="some"), "heads must be"), (dict(heads=[0, 1]), "heads must be"),
           (dict(heads={"x": [0]}), "layer numbers"), (dict(router="bogus"), "router must be one of"),
           (dict(max_tokens=3, max_new_tokens=5), "not both")]
    for cls in (ChatSeka, SekaLLM):
        for kwargs, message in bad:
            with pytest.raises(ValueError, match=message):
                cls(model=tiny_seka, **kwargs)


def test_heads_keys_from_configs_and_numpy_are_layer_numbers(tiny_seka):
    for heads in ({"0": [0], "1": [1]}, {np.int64(0): [0], np.int64(1): [1]}):
        chat = ChatSeka(model=tiny_seka, max_tokens=2, heads=heads)
        assert chat.heads == {0: [0], 1: [1]}
        assert chat.invoke(P).content == ChatSeka(model=tiny_seka, max_tokens=2, heads={0: [0], 1: [1]}).invoke(P).content
    from llama_index.llms.seka import Seka

    saved = Seka(model="smollm2-135m", heads={0: [0], 1: [1]}).to_json()  # JSON writes the keys as strings
    assert Seka.from_json(saved).heads == {0: [0], 1: [1]}


def test_per_call_true_and_false_are_not_numbers(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    for kwargs in (dict(gain_pos=True), dict(temperature=True), dict(layers=[True])):
        with pytest.raises(SekaError, match="not True / False"):
            chat.invoke(P, **kwargs)
    with pytest.raises(SekaError, match="max_new_tokens=0"):
        chat.invoke(P, max_new_tokens=0)  # named as given (max_tokens is the alias)


def test_token_counting_works_inside_trim_messages(tiny_seka, tiny_plain_seka):
    from langchain_core.messages import trim_messages

    for model in (tiny_seka, tiny_plain_seka):
        chat = ChatSeka(model=model, max_tokens=2)
        assert chat.get_num_tokens_from_messages([]) == 0
        kept = trim_messages([SystemMessage("Be brief."), HumanMessage(P)], max_tokens=30, token_counter=chat,
                             strategy="last", include_system=True, allow_partial=True)
        assert kept and kept[0].content == "Be brief."  # partial cuts inside << >> are counted, not refused
    with pytest.warns(UserWarning, match="tool schemas are not counted"):
        ChatSeka(model=tiny_seka).get_num_tokens_from_messages([HumanMessage("hi")], tools=[{"name": "t"}])


def test_token_counts_match_what_a_call_reports(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    messages = [SystemMessage("Be brief."), HumanMessage(P)]
    assert chat.get_num_tokens_from_messages(messages) == chat.invoke(messages).usage_metadata["input_tokens"]
    custom = ChatSeka(model=tiny_seka, custom_get_token_ids=lambda text: [0] * 99)
    assert custom.get_num_tokens("abc") == 99  # was ignored


def test_chat_llm_output_carries_token_usage(tiny_seka):
    from langchain_core.callbacks import BaseCallbackHandler

    ends = []

    class Handler(BaseCallbackHandler):
        def on_llm_end(self, response, **kwargs):
            ends.append(response.llm_output)

    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    result = chat.generate([[HumanMessage(P)], [HumanMessage("hello there")]], callbacks=[Handler()])
    assert [e["token_usage"]["output_tokens"] for e in ends] == [2, 2]
    assert result.llm_output["token_usage"]["total_tokens"] == sum(e["token_usage"]["total_tokens"] for e in ends)
    assert result.llm_output["model_name"] == "tiny-llama"
    streamed = ChatSeka(model=tiny_seka, max_tokens=2, streaming=True).generate([[HumanMessage(P)]])
    assert streamed.llm_output == {}  # usage is in the message's usage_metadata, not a row of zeros
    assert streamed.generations[0][0].message.usage_metadata["output_tokens"] == 2


def test_llm_batch_returns_each_prompts_own_error(tiny_seka):
    from seka_rag import HighlightError

    from langchain_core.callbacks import BaseCallbackHandler

    llm = SekaLLM(model=tiny_seka, max_tokens=2)
    out = llm.batch(["Doc: <<ok>>", "Doc: <<unclosed"], return_exceptions=True)
    assert isinstance(out[0], str) and isinstance(out[1], HighlightError)

    starts = []

    class Handler(BaseCallbackHandler):
        def on_llm_start(self, serialized, prompts, **kwargs):
            starts.extend(prompts)

    out = llm.batch(["hello", "a <<b", "world"], {"callbacks": [Handler()], "max_concurrency": 2},
                    return_exceptions=True)
    # LangChain's chunks come back through batch: the failing chunk's prompts have a failed batch run and
    # their own run (the batch fails while reading its prompts, before generating); nothing runs a third time
    assert isinstance(out[1], HighlightError) and starts.count("hello") == 2 and starts.count("world") == 1
    # a setting's error is the same for every prompt: no prompt-by-prompt retry
    assert all(isinstance(o, SekaError) for o in llm.batch(["a", "b"], return_exceptions=True, temperature="x"))
    streaming = SekaLLM(model=tiny_seka, max_tokens=2, streaming=True)
    assert all(isinstance(o, SekaError) for o in streaming.batch(["a", "b"], return_exceptions=True))
    with pytest.raises(NotImplementedError, match="JsonOutputParser"):
        llm.with_structured_output(dict)


# ------------------------------------------------------------------ LlamaIndex
def test_postprocessor_highlights_document_nodes():
    from llama_index.core.schema import Document as LlamaDocument, NodeWithScore, QueryBundle

    from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor

    nodes = [NodeWithScore(node=LlamaDocument(text="The tower is in Paris."), score=0.3),
             NodeWithScore(node=LlamaDocument(text="The tower is in Rome."), score=0.9)]
    out = SekaHighlightPostprocessor().postprocess_nodes(nodes, QueryBundle("Where is the tower?"))
    assert [n.node.metadata.get("seka_highlights") for n in out] == [None, ["The tower is in Rome."]]
    from llama_index.core.schema import ImageDocument

    with_image = [NodeWithScore(node=ImageDocument(), score=0.99), *nodes]
    out = SekaHighlightPostprocessor().postprocess_nodes(with_image, QueryBundle("Where is the tower?"))
    assert out[2].node.metadata.get("seka_highlights") == ["The tower is in Rome."]  # no text: not a candidate


def test_llamaindex_llm_refuses_what_it_would_ignore(tiny_seka):
    from llama_index.core.llms import ChatMessage

    from llama_index.llms.seka import Seka

    with pytest.raises(SekaError, match="messages_to_prompt= is used only for a model without a chat template"):
        Seka(model=tiny_seka, messages_to_prompt=lambda ms: "X").chat([ChatMessage(role="user", content="hi")])
    with pytest.raises(SekaError, match=r"message 0 is a dict, not a ChatMessage"):
        Seka(model=tiny_seka).chat([{"role": "user", "content": "hi"}])
    rewriting = Seka(model=tiny_seka, max_new_tokens=2, completion_to_prompt=lambda p: "Context follows. " + p)
    with pytest.raises(SekaError, match="completion_to_prompt rewrites the prompt"):
        rewriting.complete("Doc Rome.", highlights=[(4, 8)])
    assert rewriting.complete("Doc Rome.", highlights=["Rome"]).text  # substrings still work
    with pytest.raises(NotImplementedError, match="function calling"):
        Seka(model=tiny_seka).predict_and_call([], user_msg="x")
