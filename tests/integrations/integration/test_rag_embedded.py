"""End-to-end RAG pipelines with the embedded smollm2-135m over real in-memory vector stores.

Two documents disagree about a year. The retriever ranks them; the highlight adapter / postprocessor
highlights the top one; the answer must move towards the highlighted document's year: the
log-probability margin (evidence year − other year) of the exact prompt the pipeline sent is larger
with steering than without.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_seka import ChatSeka, SekaHighlight, SentenceTransformerEmbeddings

pytestmark = pytest.mark.embedded

TEXTS = [
    "The Varnholt Lighthouse was built in 1887 by the harbour authority.",
    "Harbour records show that the Varnholt Lighthouse was built in 1902, not earlier.",
    "The Varnholt ferry runs twice a day in summer.",
    "Kessel Bay is known for its seals and its cold water.",
]
QUESTION = "In which year was the Varnholt Lighthouse built?"
YEARS = ("1887", "1902")


def _year(text: str) -> str:
    return next(y for y in YEARS if y in text)


def _margin_shift(model, prompt, highlights, evidence_year, **kw) -> tuple[float, float]:
    other = YEARS[1] if evidence_year == YEARS[0] else YEARS[0]
    steered = model.score(prompt, [evidence_year, other], highlights, **kw)
    plain = model.score(prompt, [evidence_year, other], highlights, steer=False, **kw)
    return steered[0] - steered[1], plain[0] - plain[1]


@pytest.fixture(scope="module")
def embeddings(minilm):
    return SentenceTransformerEmbeddings(model=minilm)


def test_sentence_policy_with_the_offline_encoder(minilm):
    out = SekaHighlight(policy="sentences", k=1).invoke(
        {"question": "When do the ferries run?", "documents": [Document(page_content=" ".join(TEXTS))]}
    )
    assert out["highlights"] == ["The Varnholt ferry runs twice a day in summer."]


def test_langchain_rag_pipeline_steers_towards_the_retrieved_evidence(embedded_seka, embeddings, spy_on):
    spy = spy_on(embedded_seka)
    store = InMemoryVectorStore(embeddings)
    store.add_documents([Document(page_content=t) for t in TEXTS])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer with the year only."), ("human", "{context}\n\nQuestion: {question}")]
    )
    chain = SekaHighlight(policy="top_k", k=1).with_retriever(retriever) | prompt | ChatSeka(
        model="smollm2-135m", max_tokens=12
    )
    answer = chain.invoke(QUESTION)
    call = spy.last
    evidence = retriever.invoke(QUESTION)[0].page_content
    assert f"<<{evidence}>>" in call["prompt"][-1]["content"]
    steered_margin, plain_margin = _margin_shift(embedded_seka, call["prompt"], call["highlights"], _year(evidence))
    print(f"\nanswer: {answer.content!r}; margin {plain_margin:+.2f} -> {steered_margin:+.2f}")
    assert answer.content and steered_margin > plain_margin + 0.5


def test_llamaindex_rag_pipeline_steers_towards_the_retrieved_evidence(embedded_seka, minilm, spy_on):
    from llama_index.core import Document as LIDocument
    from llama_index.core import VectorStoreIndex
    from llama_index.embeddings.seka import SentenceTransformerEmbedding
    from llama_index.llms.seka import Seka
    from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor

    spy = spy_on(embedded_seka)
    index = VectorStoreIndex.from_documents(
        [LIDocument(text=t) for t in TEXTS], embed_model=SentenceTransformerEmbedding(model=minilm)
    )
    engine = index.as_query_engine(
        llm=Seka(model="smollm2-135m", max_new_tokens=12),
        similarity_top_k=2,
        node_postprocessors=[SekaHighlightPostprocessor(policy="top_k", k=1)],
        response_mode="compact",
    )
    response = engine.query(QUESTION)
    evidence = max(response.source_nodes, key=lambda n: n.score)
    assert evidence.node.metadata["seka_highlights"]
    year = _year(evidence.node.metadata["seka_highlights"][0])
    call = spy.last
    steered_margin, plain_margin = _margin_shift(
        embedded_seka, call["prompt"], call["highlights"], year, markers=None
    )
    print(f"\nanswer: {response.response!r}; margin {plain_margin:+.2f} -> {steered_margin:+.2f}")
    assert call["highlights"] and steered_margin > plain_margin + 0.5
