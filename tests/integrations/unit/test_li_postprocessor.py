"""SekaHighlightPostprocessor: policies, node copies, and highlights surviving every response synthesizer."""

from __future__ import annotations

import re

import pytest
from llama_index.core import get_response_synthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor
from seka_rag.highlight import parse_markers

EVIDENCE = (
    "Harbour records say the Varnholt lighthouse was finished in 1902 after Quillon masons rebuilt "
    "its granite tower; Brevik engineers fitted the Zandor lamp, and Osterlund keepers logged its "
    "first beam over Kessel reef during the Yarrow storms."
)
EVIDENCE_WORDS = set(re.findall(r"\w+", EVIDENCE))
OTHERS = [
    "A travel guide claims a lighthouse stood on the coast long ago and that visitors liked the view "
    "from the cliffs near the old fishing village on summer evenings.",
    "The museum shop sells postcards, maps, small model boats and local honey; it opens at nine on "
    "weekdays and closes early on public holidays throughout the winter.",
    "Ferries leave the pier every hour in summer and twice a day in winter, weather permitting, and "
    "tickets can be bought on board or at the kiosk near the car park.",
]


def _nodes() -> list[NodeWithScore]:
    texts = [OTHERS[0], EVIDENCE, OTHERS[1], OTHERS[2]]
    scores = [0.5, 0.9, 0.3, 0.2]
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=s) for i, (t, s) in enumerate(zip(texts, scores))]


def _texts(nodes):
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


# ------------------------------------------------------------------------------------- policies
def test_top_k_marks_the_best_scored_node_and_copies_it():
    nodes = _nodes()
    out = SekaHighlightPostprocessor(policy="top_k", k=1).postprocess_nodes(nodes, query_str="when?")
    assert [n.node.node_id for n in out] == [n.node.node_id for n in nodes]
    assert [n.score for n in out] == [n.score for n in nodes]
    marked = out[1].node
    assert marked is not nodes[1].node and nodes[1].node.text == EVIDENCE  # the original is untouched
    assert marked.text.startswith("<<Harbour>> <<records>>")
    assert parse_markers(marked.text)[0] == EVIDENCE
    assert marked.metadata["seka_highlights"] == [EVIDENCE]
    assert "seka_highlights" not in marked.get_content(metadata_mode=MetadataMode.LLM)
    assert "seka_highlights" not in marked.get_content(metadata_mode=MetadataMode.EMBED)
    assert [n.node for n in out[:1] + out[2:]] == [n.node for n in nodes[:1] + nodes[2:]]


def test_policies_choose_the_right_nodes(fake_encoder):
    def highlighted(pp, query="when was the Varnholt lighthouse finished"):
        out = pp.postprocess_nodes(_nodes(), query_str=query)
        return [i for i, n in enumerate(out) if "seka_highlights" in n.node.metadata]

    assert highlighted(SekaHighlightPostprocessor(policy="top_k", k=2)) == [0, 1]
    assert highlighted(SekaHighlightPostprocessor(policy="threshold", threshold=0.4)) == [0, 1]
    assert highlighted(SekaHighlightPostprocessor(policy="threshold", threshold=0.25, higher_is_better=False)) == [3]
    assert highlighted(SekaHighlightPostprocessor(policy="all")) == [0, 1, 2, 3]
    assert highlighted(SekaHighlightPostprocessor(policy="none")) == []
    pp = SekaHighlightPostprocessor(policy="sentences", k=1, encoder=fake_encoder)
    assert highlighted(pp, "which hours do the ferries leave the pier in winter") == [3]
    out = pp.postprocess_nodes(_nodes(), query_str="when was the Varnholt lighthouse finished in 1902")
    assert [i for i, n in enumerate(out) if "seka_highlights" in n.node.metadata] == [1]
    assert out[1].node.metadata["seka_highlights"] == [EVIDENCE]  # one sentence
    two = SekaHighlightPostprocessor(policy="sentences", k=2, encoder=fake_encoder).postprocess_nodes(
        [NodeWithScore(node=TextNode(text="Ferries leave hourly. The lamp was lit in 1902. Honey is sold."))],
        query_str="when was the lamp lit and when do ferries leave",
    )
    assert two[0].node.metadata["seka_highlights"] == ["Ferries leave hourly. The lamp was lit in 1902."]
    assert parse_markers(two[0].node.text)[0].endswith("Honey is sold.")
    with pytest.raises(Exception, match="needs threshold"):
        SekaHighlightPostprocessor(policy="threshold")


def test_literal_markers_in_other_nodes_are_escaped():
    nodes = _nodes() + [NodeWithScore(node=TextNode(text="C++: cout << x >> y;"), score=0.0)]
    out = SekaHighlightPostprocessor(policy="top_k", k=1).postprocess_nodes(nodes, query_str="q")
    assert parse_markers(out[-1].node.text) == ("C++: cout << x >> y;", [])


# ------------------------------------------------------------------------------------- synthesizers
@pytest.fixture(scope="module")
def tiny_long(helpers, tokenizer):
    """A tiny model whose engine window is large (so the engine never truncates); the LLM's reported
    context window is kept small so that the synthesizers must split and re-pack the chunks."""
    return helpers.build_tiny_model("llama", tokenizer, seed=4, context_window=8192)


def _check_call(call) -> int:
    """Every evidence word in the prompt is highlighted, and only evidence is; returns evidence words seen."""
    prompt, highlights = call["prompt"], call["highlights"] or []
    if isinstance(prompt, str):
        texts, spans = [prompt], {0: [tuple(h) for h in highlights]}
    else:
        texts = [m["content"] for m in prompt]
        spans = {}
        for i, s, e in highlights:
            spans.setdefault(i, []).append((s, e))
    seen = 0
    for i, text in enumerate(texts):
        for s, e in spans.get(i, []):
            assert set(re.findall(r"\w+", text[s:e])) <= EVIDENCE_WORDS, text[s:e]
        for m in re.finditer(r"\w+", text):
            if m.group(0) in EVIDENCE_WORDS and m.group(0)[0].isupper() and m.group(0) not in {"The", "A"}:
                seen += 1
                assert any(s <= m.start() and m.end() <= e for s, e in spans.get(i, [])), (m.group(0), text)
    return seen


#: (mode, the context window the LLM reports): small enough that the synthesizer re-splits the packed
#: chunks and cuts the marked evidence itself into pieces sent in different LLM calls.
MODES = [("compact", 700), ("refine", 700), ("tree_summarize", 250), ("simple_summarize", 250), ("accumulate", 700)]


@pytest.mark.parametrize("mode,window", MODES, ids=[m for m, _ in MODES])
def test_highlights_survive_every_synthesizer(mode, window, tiny_long, spy_on):
    spy = spy_on(tiny_long)
    nodes = SekaHighlightPostprocessor(policy="top_k", k=1).postprocess_nodes(_nodes(), query_str="When was it finished?")
    llm = Seka(model=tiny_long, max_new_tokens=4, context_window=window)
    synth = get_response_synthesizer(llm=llm, response_mode=mode)
    response = synth.synthesize(QueryBundle("When was the lighthouse finished?"), nodes)
    assert isinstance(response.response, str)
    seen = [_check_call(c) for c in spy.calls]  # every evidence word in every prompt is highlighted
    assert sum(seen) >= 4, seen  # the evidence reached the model
    if mode in ("compact", "refine", "tree_summarize"):
        assert len([n for n in seen if n]) >= 2, seen  # ... cut into pieces, each still highlighted


async def test_async_synthesis_keeps_highlights(tiny_long, spy_on):
    spy = spy_on(tiny_long)
    nodes = SekaHighlightPostprocessor(policy="top_k", k=1).postprocess_nodes(_nodes(), query_str="q")
    synth = get_response_synthesizer(llm=Seka(model=tiny_long, max_new_tokens=3), response_mode="compact")
    await synth.asynthesize(QueryBundle("When was the lighthouse finished?"), nodes)
    assert sum(_check_call(c) for c in spy.calls) >= 6


def test_markers_survive_serialisation():
    from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor

    from seka_rag import Markers

    pp = SekaHighlightPostprocessor(markers=("[[", "]]"))
    assert pp.to_dict()["markers"] == ["[[", "]]", "\\"]
    assert SekaHighlightPostprocessor.from_dict(pp.to_dict()).markers == Markers("[[", "]]")
    assert SekaHighlightPostprocessor.from_json(pp.to_json()).markers == Markers("[[", "]]")
    assert SekaHighlightPostprocessor.from_dict(SekaHighlightPostprocessor().to_dict()).markers == Markers("<<", ">>")
