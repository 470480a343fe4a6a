"""Text the user did not mean as a highlight stays literal; every output-changing setting is honoured.

Code in a question or a chat history (``1 << 4``, ``std::cout << x``) must reach the model as
written; ``markers=`` picks another marker pair or none; tool calls in the history are shown to the
model; stop strings, cache keys, distance scores and constructor typos behave as a user expects.
"""

from __future__ import annotations

import pytest
import torch
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

from langchain_seka import ChatSeka, SekaHighlight, SekaLLM
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor
from seka_rag import Markers, SekaError
from seka_rag.highlight import parse_markers

CODE_QUESTION = "In C, what is the value of 1 << 4 and of 256 >> 2?"
SHIFT_DOC = "Shifts: x << n multiplies by 2**n; x >> n divides by 2**n."
PROMPT = ChatPromptTemplate.from_messages([("human", "{context}\n\nQuestion: {question}")])


def _seen(model, call) -> tuple[str, list[str]]:
    """What the model reads of an engine call: the last message's clean text, and the highlighted texts."""
    markers = call["kwargs"].get("markers", model.markers)
    prompt = call["prompt"]
    text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    clean, spans = parse_markers(text, markers) if markers is not None else (text, [])
    return clean, [clean[s:e] for s, e in spans]


# ------------------------------------------------------------------------------- LangChain: markers
def test_code_in_the_question_reaches_the_model_literally_through_the_highlighter(tiny_seka, spy):
    chain = SekaHighlight(policy="top_k", k=1) | PROMPT | ChatSeka(model=tiny_seka, max_tokens=2)
    chain.invoke({"question": CODE_QUESTION, "documents": [Document(page_content=SHIFT_DOC)]})
    clean, highlighted = _seen(tiny_seka, spy.last)
    assert clean.endswith(f"Question: {CODE_QUESTION}")
    assert highlighted == [SHIFT_DOC]
    out = SekaHighlight().invoke({"question": CODE_QUESTION, "documents": [SHIFT_DOC]})
    assert out["question_text"] == CODE_QUESTION and out["question"] == "In C, what is the value of 1 \\<< 4 and of 256 \\>> 2?"


def test_assistant_history_with_markers_is_literal_and_does_not_break_later_turns(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    history = [HumanMessage("How do I print in C++?"), AIMessage('Use std::cout << "hi";'), HumanMessage("And <<in C>>?")]
    chat.invoke(history)
    prompt = spy.last["prompt"]
    assert parse_markers(prompt[1]["content"])[0] == 'Use std::cout << "hi";'
    assert "".join(tiny_seka.highlighted_tokens(prompt)).strip() == "in C"


def test_markers_setting_none_or_another_pair(tiny_seka, spy):
    ChatSeka(model=tiny_seka, max_tokens=2, markers=None).invoke(CODE_QUESTION)
    assert spy.last["kwargs"]["markers"] is None and spy.last["prompt"][0]["content"] == CODE_QUESTION
    ChatSeka(model=tiny_seka, max_tokens=2).invoke(CODE_QUESTION, markers=None)  # per call, too
    assert spy.last["kwargs"]["markers"] is None
    pair = Markers("[[", "]]")
    chain = SekaHighlight(markers=pair) | PROMPT | ChatSeka(model=tiny_seka, max_tokens=2, markers=("[[", "]]"))
    chain.invoke({"question": CODE_QUESTION, "documents": [SHIFT_DOC]})
    clean, highlighted = _seen(tiny_seka, spy.last)
    assert highlighted == [SHIFT_DOC] and clean.endswith(CODE_QUESTION)
    with pytest.raises(ValueError, match="markers must be"):
        ChatSeka(model=tiny_seka, markers="<<")
    with pytest.raises(SekaError, match="markers must be"):
        ChatSeka(model=tiny_seka, max_tokens=2).invoke("x", markers=5)
    SekaLLM(model=tiny_seka, max_tokens=2, markers=None).invoke(CODE_QUESTION)
    assert spy.last["kwargs"]["markers"] is None and spy.last["prompt"] == CODE_QUESTION


def test_tool_calls_in_the_history_are_shown_to_the_model(tiny_seka, spy):
    call = {"name": "price", "args": {"item": "apple"}, "id": "c1"}
    ChatSeka(model=tiny_seka, max_tokens=2).invoke([
        HumanMessage("What does an apple cost?"), AIMessage("Let me check.", tool_calls=[call]),
        ToolMessage("0.5 EUR", tool_call_id="c1", name="price")])
    assistant = spy.last["prompt"][1]
    assert assistant["role"] == "assistant"
    assert parse_markers(assistant["content"])[0] == (
        'Let me check.\n<tool_call>\n{"name": "price", "arguments": {"item": "apple"}}\n</tool_call>')
    assert spy.last["prompt"][2] == {"role": "tool", "content": "0.5 EUR"}


def test_unsupported_tool_calling_says_so(tiny_seka):
    with pytest.raises(NotImplementedError, match="does not support tool calling"):
        ChatSeka(model=tiny_seka).bind_tools([])
    with pytest.raises(NotImplementedError, match="with_structured_output"):
        ChatSeka(model=tiny_seka).with_structured_output({"type": "object"})


# ------------------------------------------------------------------------------- LangChain: settings
@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
def test_stop_given_as_one_string_is_one_sequence(tiny_seka, spy, cls):
    cls(model=tiny_seka, max_tokens=2).invoke("hello", stop="Ana")
    assert spy.last["kwargs"]["stop"] == ["Ana"]
    with pytest.raises(SekaError, match="stop must be"):
        cls(model=tiny_seka, max_tokens=2).invoke("hello", stop=[""])


@pytest.mark.parametrize("cls", [ChatSeka, SekaLLM])
@pytest.mark.parametrize("change", [dict(gain_pos=3.0), dict(gain_neg=1.0), dict(temperature=0.5), dict(top_p=0.5),
                                    dict(do_sample=True), dict(stop=["x"]), dict(layers=[0]), dict(heads="all"),
                                    dict(chat_template=False), dict(markers=None), dict(steer=False)])
def test_every_output_changing_setting_is_in_the_cache_key(tiny_seka, cls, change):
    assert cls(model=tiny_seka)._identifying_params != cls(model=tiny_seka, **change)._identifying_params


def test_two_loaded_models_with_one_id_have_different_cache_keys(helpers, tokenizer):
    a = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b = helpers.build_tiny_model("llama", tokenizer, seed=3, projection={"gain_pos": 5.0})
    assert a.model_id == b.model_id
    assert ChatSeka(model=a)._identifying_params != ChatSeka(model=b)._identifying_params


def test_projections_differing_only_in_layer_scale_have_different_cache_keys(helpers, tokenizer):
    # what a calibrated projection and its uncalibrated source can differ in (a fresh user's find)
    a = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b = helpers.build_tiny_model("llama", tokenizer, seed=3, projection={"layer_scale": torch.full((2,), 6.0)})
    assert a.projection.meta == b.projection.meta
    assert ChatSeka(model=a)._identifying_params != ChatSeka(model=b)._identifying_params
    b.projection.layer_scale.fill_(1.0)  # changed in place: the key follows
    assert ChatSeka(model=a)._identifying_params == ChatSeka(model=b)._identifying_params


def test_a_registered_name_keys_on_the_model_it_names(helpers, tokenizer):
    from langchain_seka import register_model
    from langchain_seka._loading import unregister_model

    a = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b = helpers.build_tiny_model("llama", tokenizer, seed=3, projection={"layer_scale": torch.full((2,), 6.0)})
    try:
        register_model("mine-test", a)
        before = ChatSeka(model="mine-test")._identifying_params
        register_model("mine-test", b)  # the gains were lowered (or raised) and the model registered again
        assert ChatSeka(model="mine-test")._identifying_params != before
    finally:
        unregister_model("mine-test")


def test_dtype_and_routing_defaults_are_part_of_the_cache_key(helpers, tokenizer):
    from seka_rag.adaptive import Expert, ExpertSet, RoutingConfig

    a = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b.model.to(torch.float64)
    assert ChatSeka(model=a)._identifying_params != ChatSeka(model=b)._identifying_params
    c = helpers.build_tiny_model("llama", tokenizer, seed=3)
    experts = [Expert("x", a.projection), Expert("y", a.projection)]
    a.load_experts(ExpertSet(experts))
    c.load_experts(ExpertSet(experts, routing=RoutingConfig(gain=3.0)))
    assert ChatSeka(model=a)._identifying_params != ChatSeka(model=c)._identifying_params


def test_a_model_loaded_in_inference_mode_works_through_the_wrappers(helpers, tokenizer):
    with torch.inference_mode():
        seka = helpers.build_tiny_model("llama", tokenizer, seed=3)
    assert isinstance(ChatSeka(model=seka, max_new_tokens=2).invoke("hello <<x>>").content, str)
    key = ChatSeka(model=seka)._identifying_params
    assert ChatSeka(model=seka)._identifying_params == key


def test_a_replaced_projection_tensor_changes_the_key(helpers, tokenizer):
    seka = helpers.build_tiny_model("llama", tokenizer, seed=3)
    chat = ChatSeka(model=seka)
    n = len(seka.projection.layers)
    seka.projection.layer_scale = torch.full((n,), 1.0)
    first = chat._identifying_params
    for value in (2.0, 8.0):  # the freed tensor's id may be reused by the next one
        seka.projection.layer_scale = torch.full((n,), value)
    assert chat._identifying_params != first


def test_expert_sets_differing_only_in_strength_have_different_cache_keys(helpers, tokenizer):
    from seka_rag.adaptive import Expert, ExpertSet, with_gain_scales

    a = helpers.build_tiny_model("llama", tokenizer, seed=3)
    b = helpers.build_tiny_model("llama", tokenizer, seed=3)
    experts = ExpertSet([Expert("x", a.projection), Expert("y", a.projection)])
    a.load_experts(experts)
    b.load_experts(with_gain_scales(experts, {"y": 2.0}))
    assert ChatSeka(model=a)._identifying_params != ChatSeka(model=b)._identifying_params


def test_distance_metadata_means_lower_is_better():
    docs = [Document(page_content="Near doc.", metadata={"distance": 0.05}),
            Document(page_content="Far doc.", metadata={"distance": 0.95})]
    assert SekaHighlight(policy="top_k", k=1).invoke({"question": "q", "documents": docs})["highlights"] == ["Near doc."]
    flipped = SekaHighlight(policy="top_k", k=1, higher_is_better=True)
    assert flipped.invoke({"question": "q", "documents": docs})["highlights"] == ["Far doc."]
    similar = [Document(page_content="A.", metadata={"score": 0.9}), Document(page_content="B.", metadata={"score": 0.1})]
    assert SekaHighlight(policy="top_k", k=1).invoke({"documents": similar})["highlights"] == ["A."]
    with pytest.raises(SekaError, match="distances and similarities mixed"):
        SekaHighlight().invoke({"documents": [docs[0], similar[0]]})


# ------------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_assistant_history_is_literal_and_markers_setting(tiny_seka, spy):
    llm = Seka(model=tiny_seka, max_new_tokens=2)
    llm.chat([ChatMessage(role=MessageRole.USER, content="How do I print?"),
              ChatMessage(role=MessageRole.ASSISTANT, content='std::cout << "hi";'),
              ChatMessage(role=MessageRole.USER, content="And <<in C>>?")])
    prompt, highlights = spy.last["prompt"], spy.last["highlights"]
    assert prompt[1]["content"] == 'std::cout << "hi";' and spy.last["kwargs"]["markers"] is None
    assert highlights == [(2, 4, 8)]
    Seka(model=tiny_seka, max_new_tokens=2, markers=None).complete(CODE_QUESTION)
    assert spy.last["prompt"] == CODE_QUESTION and spy.last["highlights"] is None
    Seka(model=tiny_seka, max_new_tokens=2, markers=("[[", "]]")).complete("x << 1 [[keep]]")
    assert spy.last["prompt"] == "x << 1 keep" and spy.last["highlights"] == [(7, 11)]


def test_llamaindex_postprocessor_with_another_marker_pair(tiny_seka, spy):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    post = SekaHighlightPostprocessor(markers=Markers("[[", "]]"))
    nodes = post.postprocess_nodes([NodeWithScore(node=TextNode(text=SHIFT_DOC), score=0.9)],
                                   query_bundle=QueryBundle(CODE_QUESTION))
    prompt = f"{nodes[0].node.get_content()}\n{CODE_QUESTION}"
    Seka(model=tiny_seka, max_new_tokens=2, markers=("[[", "]]")).complete(prompt)
    clean = spy.last["prompt"]
    assert clean == f"{SHIFT_DOC}\n{CODE_QUESTION}"
    assert [clean[s:e] for s, e in spy.last["highlights"]] == [SHIFT_DOC]


def test_llamaindex_token_counting_handler_reads_the_counts(tiny_seka):
    counter = TokenCountingHandler(tokenizer=lambda s: tiny_seka.tokenizer.encode(s, add_special_tokens=False))
    llm = Seka(model=tiny_seka, max_new_tokens=3, callback_manager=CallbackManager([counter]))
    response = llm.complete("Doc: <<The tower is in Rome.>> Where is the tower?")
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"] > 0
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]
    chat = llm.chat([ChatMessage(role=MessageRole.USER, content="hi")])
    assert chat.raw["usage"]["prompt_tokens"] == chat.additional_kwargs["prompt_tokens"]


def test_llamaindex_misspelt_arguments_are_errors_and_hosted_ones_accepted(tiny_seka):
    with pytest.raises(ValueError, match="temprature"):
        Seka(model=tiny_seka, temprature=0.1)
    with pytest.raises(ValueError, match="polcy"):
        SekaHighlightPostprocessor(polcy="sentences")
    assert Seka(model=tiny_seka, timeout=30, max_retries=1).timeout == 30


def test_llamaindex_bad_prompts_and_list_spans(tiny_seka, spy):
    llm = Seka(model=tiny_seka, max_new_tokens=2)
    with pytest.raises(SekaError, match="prompt must be a string"):
        llm.complete(None)
    with pytest.raises(SekaError, match="prompt must be a string"):
        llm.complete(["a", "b"])
    with pytest.raises(SekaError, match="LlamaIndex nodes"):
        llm.complete("hello", documents=[3])
    llm.chat([ChatMessage(role=MessageRole.USER, content="hello there")], highlights=[[0, 5]])
    assert spy.last["highlights"] == [(0, 0, 5)]
    llm.complete("hello there", stop="Ana")
    assert spy.last["kwargs"]["stop"] == ["Ana"]


def test_markers_escape_is_part_of_the_cache_key_and_survives_serialisation(tiny_seka):
    plain = ChatSeka(model=tiny_seka, markers=("[[", "]]"))
    tilde = ChatSeka(model=tiny_seka, markers=Markers("[[", "]]", escape="~"))
    assert plain._identifying_params != tilde._identifying_params
    assert ChatSeka(model=tiny_seka, markers=("[[", "]]", "~")).markers == Markers("[[", "]]", "~")
    restored = Seka.from_dict(Seka(model=tiny_seka, markers=Markers("[[", "]]", escape="~")).to_dict())
    assert restored.markers == Markers("[[", "]]", "~")


def test_stop_string_in_constructor_and_tracing_params(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=2, stop="###")
    assert chat.stop == ["###"]
    assert chat._get_ls_params(stop="###")["ls_stop"] == ["###"]
    chat.invoke("hello")
    assert spy.last["kwargs"]["stop"] == ["###"]


def test_batch_with_differing_configs_reports_an_unconvertible_input_alone(tiny_seka):
    chat = ChatSeka(model=tiny_seka, max_tokens=2)
    out = chat.batch(["hello", 123], config=[{"tags": ["a"]}, {"tags": ["b"]}], return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[1], ValueError)

