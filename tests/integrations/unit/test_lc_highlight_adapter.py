"""SekaHighlight: retriever output → marked context; policies; LCEL composition with ChatSeka."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_seka import ChatSeka, SekaHighlight
from seka_rag import SekaError
from seka_rag.highlight import parse_markers

DOCS = [
    Document(page_content="The tower is in Paris.", metadata={"score": 0.4, "source": "a"}),
    Document(page_content="The tower is in Rome. It was moved in 1990.", metadata={"score": 0.9, "source": "b"}),
    Document(page_content="Madrid is in Spain.", metadata={"score": 0.7, "source": "c"}),
]
QUESTION = "Where is the tower?"


def _doc_of(out, i):
    return out["context_text"].index(out["documents"][i].page_content)


def test_output_structure_and_top_k_by_score():
    out = SekaHighlight(policy="top_k", k=1).invoke({"question": QUESTION, "documents": DOCS, "extra": 1})
    assert out["question"] == QUESTION and out["extra"] == 1 and out["documents"] == DOCS
    assert out["context_text"] == (
        "Document 1: The tower is in Paris.\n"
        "Document 2: The tower is in Rome. It was moved in 1990.\n"
        "Document 3: Madrid is in Spain."
    )
    assert out["highlighted_documents"] == [1]
    assert out["highlights"] == ["The tower is in Rome. It was moved in 1990."]
    start = _doc_of(out, 1)
    assert out["highlight_spans"] == [(start, start + len(DOCS[1].page_content))]
    assert "Document 2: <<The tower is in Rome. It was moved in 1990.>>" in out["context"]
    assert parse_markers(out["context"]) == (out["context_text"], out["highlight_spans"])


def test_policies_select_the_right_documents(fake_encoder):
    def chosen(**kw):
        return SekaHighlight(**kw).invoke({"question": QUESTION, "documents": DOCS})["highlighted_documents"]

    assert chosen(policy="top_k", k=2) == [1, 2]
    assert chosen(policy="threshold", threshold=0.5) == [1, 2]
    assert chosen(policy="threshold", threshold=0.5, higher_is_better=False) == [0]
    assert chosen(policy="all") == [0, 1, 2] and chosen(policy="none") == []
    plain = [Document(page_content=d.page_content) for d in DOCS]
    assert SekaHighlight(k=2).invoke({"question": QUESTION, "documents": plain})["highlighted_documents"] == [0, 1]
    with pytest.raises(SekaError, match="needs a retriever score"):
        SekaHighlight(policy="threshold", threshold=0.5).invoke({"question": QUESTION, "documents": plain})
    # (document, score) pairs from similarity_search_with_score
    pairs = [(d, s) for d, s in zip(plain, [0.1, 0.2, 0.95])]
    assert SekaHighlight(policy="threshold", threshold=0.9).invoke({"documents": pairs})["highlighted_documents"] == [2]
    # a custom score key
    keyed = [Document(page_content=d.page_content, metadata={"rel": r}) for d, r in zip(DOCS, [3, 1, 2])]
    assert SekaHighlight(k=1, score_key="rel").invoke({"documents": keyed})["highlighted_documents"] == [0]


def test_sentence_policy_highlights_sentences_inside_documents(fake_encoder):
    out = SekaHighlight(policy="sentences", k=1, encoder=fake_encoder).invoke(
        {"question": "in which year was it moved", "documents": DOCS}
    )
    assert out["highlights"] == ["It was moved in 1990."]
    assert "Rome. <<It was moved in 1990.>>" in out["context"]
    with pytest.raises(SekaError, match="needs the question"):
        SekaHighlight(policy="sentences", encoder=fake_encoder).invoke(DOCS)


def test_templates_escaping_and_bare_lists():
    docs = [Document(page_content="cout << x >> y", metadata={"source": "s.cpp"}), "plain string doc"]
    out = SekaHighlight(policy="all", document_template="[{source}] {content}", separator="\n\n").invoke(docs)
    assert out["context_text"] == "[s.cpp] cout << x >> y\n\n[] plain string doc"
    assert "question" not in out
    assert parse_markers(out["context"]) == (out["context_text"], out["highlight_spans"])
    assert out["highlights"] == ["cout << x >> y", "plain string doc"]
    with pytest.raises(ValueError, match="must contain"):
        SekaHighlight(document_template="no content here")
    with pytest.raises(SekaError, match="expects"):
        SekaHighlight().invoke({"question": "q"})


def test_order_by_keeps_a_fixed_context_order_and_the_score_selection():
    # retriever order (best first) differs from the original positions
    docs = [
        (Document(page_content="The tower is in Rome.", metadata={"pos": 2}), 0.9),
        (Document(page_content="Madrid is in Spain.", metadata={"pos": 0}), 0.7),
        (Document(page_content="The tower is in Paris.", metadata={"pos": 1}), 0.4),
    ]
    plain = SekaHighlight(k=1).invoke({"question": QUESTION, "documents": docs})
    ordered = SekaHighlight(k=1, order_by="pos").invoke({"question": QUESTION, "documents": docs})
    assert plain["context_text"].startswith("Document 1: The tower is in Rome.")
    assert ordered["context_text"] == (
        "Document 1: Madrid is in Spain.\nDocument 2: The tower is in Paris.\nDocument 3: The tower is in Rome."
    )
    assert [d.metadata["pos"] for d in ordered["documents"]] == [0, 1, 2]
    # the same document is highlighted (scores travel with their documents); indices follow the new order
    assert plain["highlights"] == ordered["highlights"] == ["The tower is in Rome."]
    assert ordered["highlighted_documents"] == [2] and plain["highlighted_documents"] == [0]
    assert "Document 3: <<The tower is in Rome.>>" in ordered["context"]
    # ties keep arrival order; a missing or incomparable key is an error that names the key
    tied = [Document(page_content=t, metadata={"pos": 0}) for t in ("b", "a")]
    assert SekaHighlight(policy="none", order_by="pos").invoke(tied)["context_text"] == "Document 1: b\nDocument 2: a"
    with pytest.raises(SekaError, match="order_by='pos': document 1 has no"):
        SekaHighlight(order_by="pos").invoke([tied[0], Document(page_content="c")])
    mixed = [Document(page_content="x", metadata={"pos": 1}), Document(page_content="y", metadata={"pos": "a"})]
    with pytest.raises(SekaError, match="cannot be compared"):
        SekaHighlight(order_by="pos").invoke(mixed)


PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer from the documents."), ("human", "{context}\n\nQuestion: {question}")]
)


def test_lcel_retriever_highlight_prompt_chat(tiny_seka, spy):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([Document(page_content=d.page_content) for d in DOCS])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    highlight = SekaHighlight(policy="top_k", k=1)
    chain = {"question": RunnablePassthrough(), "documents": retriever} | highlight | PROMPT | ChatSeka(model=tiny_seka, max_tokens=3)
    answer = chain.invoke(QUESTION)
    assert answer.content
    retrieved = retriever.invoke(QUESTION)
    call = spy.last
    user = call["prompt"][-1]["content"]
    assert f"Document 1: <<{retrieved[0].page_content}>>" in user and user.endswith(f"Question: {QUESTION}")
    assert "".join(tiny_seka.highlighted_tokens(call["prompt"])).strip() == retrieved[0].page_content
    # the helper builds the same chain head
    chain2 = highlight.with_retriever(retriever) | PROMPT | ChatSeka(model=tiny_seka, max_tokens=3)
    assert chain2.invoke(QUESTION).content == answer.content
    # retriever | highlight (bare list) also composes
    head = retriever | highlight | RunnableLambda(lambda d: d["context"])
    assert head.invoke(QUESTION).startswith("Document 1: <<")


def test_a_question_under_another_key_is_named_not_written_as_none():
    with pytest.raises(SekaError, match="question_key='input'"):
        SekaHighlight().invoke({"input": QUESTION, "documents": DOCS})
    out = SekaHighlight(question_key="input").invoke({"input": "What is 1 << 4?", "documents": DOCS})
    assert out["input"] == "What is 1 \\<< 4?" and "question" not in out
    assert "question" not in SekaHighlight().invoke({"documents": DOCS})  # documents alone: no question written


def test_a_template_field_no_document_has_is_an_error():
    docs = [Document(page_content="A.", metadata={"source": "x"}), Document(page_content="B.")]
    with pytest.raises(SekaError, match=r"names \{sorce\}, which no document's metadata has \(their fields: \['source'\]\)"):
        SekaHighlight(policy="all", document_template="[{sorce}] {content}").invoke(docs)
    assert SekaHighlight(policy="all", document_template="[{source}] {content}").invoke(docs)["context_text"] == (
        "[x] A.\n[] B.")
    with pytest.raises(SekaError, match="not a valid template"):
        SekaHighlight(policy="all", document_template="{content} {").invoke(docs)


def test_with_retriever_takes_the_question_string():
    store = InMemoryVectorStore.from_documents(DOCS, DeterministicFakeEmbedding(size=8))
    step = SekaHighlight(policy="all").with_retriever(store.as_retriever())
    assert step.invoke(QUESTION)["question"] == QUESTION
    with pytest.raises(SekaError, match="with_retriever takes the question string"):
        step.invoke({"question": QUESTION})
