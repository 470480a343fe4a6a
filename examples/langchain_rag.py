"""LangChain RAG with SEKA: the retriever's evidence is highlighted, and the answer follows it.

Run: python examples/langchain_rag.py [--model smollm2-135m] [--projection FILE]

An in-memory vector store (offline sentence-transformers embeddings) holds a few documents, two of
which disagree. The chain is plain LCEL:

    SekaHighlight(...).with_retriever(retriever) | prompt | ChatSeka(...)

SekaHighlight formats the retrieved documents as context and wraps the chosen evidence in << >>;
ChatSeka steers the model's attention to it. The same chain with steer=False is the baseline.
"""

from __future__ import annotations

import time

from _common import parse_args, run, side_by_side
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_seka import ChatSeka, SekaHighlight, SentenceTransformerEmbeddings

DOCUMENTS = [
    "The Varnholt Lighthouse was built in 1887 by the harbour authority.",
    "Harbour records show that the Varnholt Lighthouse was built in 1902, not earlier.",
    "The Varnholt Bridge was designed by Ingrid Olsen. It is 420 metres long and opened in 1961.",
    "The bridge is painted every ten years. A plaque says that the Varnholt Bridge was designed by Per Lund.",
    "The Varnholt ferry runs twice a day in summer and once a day in winter.",
    "Kessel Bay is known for its seals and its cold water.",
]
#: (question, how to choose the evidence): whole top-ranked document, or the most similar sentence.
CASES = [
    ("In which year was the Varnholt Lighthouse built?", SekaHighlight(policy="top_k", k=1)),
    ("Who designed the Varnholt Bridge?", SekaHighlight(policy="sentences", k=1)),
]
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer briefly, using the documents."), ("human", "{context}\n\nQuestion: {question}")]
)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = time.perf_counter()
    store = InMemoryVectorStore(SentenceTransformerEmbeddings())
    store.add_documents([Document(page_content=text) for text in DOCUMENTS])
    retriever = store.as_retriever(search_kwargs={"k": 3})
    chat = ChatSeka(model=args.model, max_tokens=20)

    for question, highlight in CASES:
        head = highlight.with_retriever(retriever)  # {"question", "documents"} -> marked-up context
        steered = (head | PROMPT | chat).invoke(question).content
        unsteered = (head | PROMPT | chat.bind(steer=False)).invoke(question).content
        print(f"Q: {question}   [policy: {highlight.policy}]")
        print(f"  highlighted: {head.invoke(question)['highlights']}")
        print(side_by_side(steered, unsteered))
        print()
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    run(main)
