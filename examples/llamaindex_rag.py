"""LlamaIndex RAG with SEKA: a VectorStoreIndex query engine whose retrieved evidence is highlighted.

Run: python examples/llamaindex_rag.py [--model smollm2-135m] [--projection FILE]

    index.as_query_engine(llm=Seka(...), node_postprocessors=[SekaHighlightPostprocessor(...)])

The postprocessor marks the top-ranked node; the Seka LLM steers attention to it, through the
response synthesizer (default "compact" mode). The same query engine with Seka(steer=False) is the
baseline.
"""

from __future__ import annotations

import time

from _common import parse_args, run, side_by_side
from llama_index.core import Document, VectorStoreIndex

from llama_index.embeddings.seka import SentenceTransformerEmbedding
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor

DOCUMENTS = [
    "The Varnholt Lighthouse was built in 1887 by the harbour authority.",
    "Harbour records show that the Varnholt Lighthouse was built in 1902, not earlier.",
    "The Varnholt ferry runs twice a day in summer and once a day in winter.",
    "Kessel Bay is known for its seals and its cold water.",
]
QUESTION = "In which year was the Varnholt Lighthouse built?"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    started = time.perf_counter()
    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in DOCUMENTS], embed_model=SentenceTransformerEmbedding()
    )
    highlight = SekaHighlightPostprocessor(policy="top_k", k=1)
    answers = {}
    for steer in (True, False):
        engine = index.as_query_engine(
            llm=Seka(model=args.model, max_new_tokens=20, steer=steer),
            similarity_top_k=2,
            node_postprocessors=[highlight],
        )
        response = engine.query(QUESTION)
        answers[steer] = response.response
    print(f"Q: {QUESTION}")
    for node in response.source_nodes:
        marked = "highlighted" if "seka_highlights" in node.node.metadata else "           "
        print(f"  [{marked}] score {node.score:.3f}: {node.node.metadata.get('seka_highlights', [node.node.text])[0]}")
    print(side_by_side(answers[True], answers[False]))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    run(main)
