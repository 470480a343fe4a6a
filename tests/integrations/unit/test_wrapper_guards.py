"""Guards added after mutation testing of the wrappers (plausible one-line bugs planted one at a time
that no test caught): ranking ties and inclusive thresholds, one batch row per input, spans given as
lists, token usage totals, message roles, literal assistant text, and metadata the LLM never sees."""

from __future__ import annotations

import numpy as np

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks.token_counting import get_tokens_from_response
from llama_index.core.schema import NodeWithScore, TextNode

from langchain_seka import ChatSeka, SekaLLM
from langchain_seka._select import select
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor

THREE_DOCS = ["Paris is in France.", "Rome is in Italy. The tower is in Rome.", "Madrid is in Spain."]


def test_top_k_with_threshold_keeps_at_most_k():  # the [: k] cap after the threshold filter
    # all three pass 0.6; k=1 keeps only the best, k=2 the two best
    assert select("top_k", THREE_DOCS, [0.7, 0.9, 0.8], k=1, threshold=0.6).documents == [1]
    assert select("top_k", THREE_DOCS, [0.7, 0.9, 0.8], k=2, threshold=0.6).documents == [1, 2]


def test_distance_threshold_is_inclusive():  # `s <= threshold` when lower is better
    assert select("threshold", THREE_DOCS, [0.1, 0.9, 0.5], threshold=0.5, higher_is_better=False).documents == [0, 2]
    assert select("top_k", THREE_DOCS, [0.1, 0.9, 0.5], k=3, threshold=0.5, higher_is_better=False).documents == [0, 2]


def test_equal_scores_keep_the_retriever_order():  # ties broken by position, earlier first
    assert select("top_k", THREE_DOCS, [0.5, 0.5, 0.5], k=1).documents == [0]
    assert select("top_k", THREE_DOCS, [0.2, 0.5, 0.5], k=1).documents == [1]
    assert select("top_k", THREE_DOCS, [0.5, 0.5, 0.9], k=2, higher_is_better=False).documents == [0, 1]


def test_sentence_threshold_is_inclusive():  # a sentence whose similarity equals threshold is kept
    vectors = {"q": [1.0, 0.0], "Alpha.": [0.0, 1.0], "Beta.": [-1.0, 0.0]}  # cosines with q: 0.0 and -1.0

    def encoder(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    sel = select("sentences", ["Alpha. Beta."], question="q", k=2, threshold=0.0, encoder=encoder)
    assert sel.spans == {0: [(0, 6)]}  # Alpha (cosine exactly 0.0) kept, Beta (-1.0) not


def test_batch_gives_each_identical_input_its_own_row(tiny_seka, monkeypatch):
    # two identical inputs of one batch may still get different answers (one query_embedding per
    # input, or sampling): each must take its own row of the batched call, not the first one twice
    monkeypatch.setattr(ChatSeka, "_run_many", lambda self, calls: [f"answer {i}" for i in range(len(calls))])
    out = ChatSeka(model=tiny_seka, max_tokens=2).batch(["Where is the tower?", "Where is the tower?"])
    assert [m.content for m in out] == ["answer 0", "answer 1"]


def test_a_list_span_of_a_single_message_is_a_span_of_it(tiny_seka, spy):
    chat = ChatSeka(model=tiny_seka, max_tokens=1)
    chat.invoke("The tower is in Rome.", highlights=[[16, 20]])  # a JSON-style list, as a tuple would be
    assert spy.last["highlights"] == [(0, 16, 20)]
    assert "".join(tiny_seka.highlighted_tokens(spy.last["prompt"], spy.last["highlights"])).strip() == "Rome"


def test_llm_output_sums_the_usage_of_every_prompt(tiny_seka):
    llm = SekaLLM(model=tiny_seka, max_tokens=3)
    result = llm.generate(["Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?", "Hi"])
    usages = [g[0].generation_info["usage"] for g in result.generations]
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert result.llm_output["token_usage"][key] == sum(u[key] for u in usages), key


LI_PROMPT = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?"


def test_tool_messages_keep_the_tool_role(tiny_seka, spy):
    Seka(model=tiny_seka, max_new_tokens=1).chat([
        ChatMessage(role=MessageRole.USER, content="What is the weather?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="Let me check."),
        ChatMessage(role=MessageRole.TOOL, content="Sunny", additional_kwargs={"tool_call_id": "1"}),
    ])
    assert [m["role"] for m in spy.last["prompt"]] == ["user", "assistant", "tool"]


def test_assistant_messages_are_read_literally(tiny_seka, spy):
    Seka(model=tiny_seka, max_new_tokens=1).chat([
        ChatMessage(role=MessageRole.USER, content="How do I shift x?"),
        ChatMessage(role=MessageRole.ASSISTANT, content="Write x <<2>> y."),
        ChatMessage(role=MessageRole.USER, content="Thanks."),
    ])
    assert spy.last["prompt"][1] == {"role": "assistant", "content": "Write x <<2>> y."}
    assert spy.last["highlights"] is None


def test_raw_usage_is_the_calls_token_counts(tiny_seka):
    response = Seka(model=tiny_seka, max_new_tokens=3).complete(LI_PROMPT)
    usage = response.raw["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["prompt_tokens"] == len(tiny_seka.encode(LI_PROMPT).input_ids)
    out = len(tiny_seka.tokenizer(response.text, add_special_tokens=False)["input_ids"])
    assert usage["completion_tokens"] == min(out, 3) > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # what LlamaIndex's TokenCountingHandler reads
    assert get_tokens_from_response(response) == (usage["prompt_tokens"], usage["completion_tokens"])


def test_metadata_hidden_from_the_llm_is_not_escaped():
    node = TextNode(text="The tower is in Rome.", metadata={"source": "a << b.py", "title": "x << y"},
                    excluded_llm_metadata_keys=["source"])
    out = SekaHighlightPostprocessor(policy="all").postprocess_nodes([NodeWithScore(node=node, score=1.0)])
    metadata = out[0].node.metadata
    assert metadata["source"] == "a << b.py"   # the LLM never sees it: kept as it was
    assert metadata["title"] == "x \\<< y"     # the LLM sees it: escaped
