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
