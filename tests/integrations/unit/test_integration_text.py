"""Framework-free helpers: marker-safe mark-up, lenient parsing, sentence splitting, policies, registry."""

from __future__ import annotations

import random

import pytest

from langchain_seka import _loading
from langchain_seka._select import select
from langchain_seka._text import mark_up, parse_lenient, sentence_spans
from seka_rag import SekaError
from seka_rag.highlight import parse_markers


def _random_cases(n: int, seed: int = 0):
    rng = random.Random(seed)
    alphabet = ["<", ">", "\\", "a", " ", "b", "\n", "<<", ">>", "\\<<"]
    for _ in range(n):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        spans = []
        for _ in range(rng.randint(0, 3)):
            s = rng.randint(0, len(text))
            spans.append((s, rng.randint(s, len(text))))
        yield text, spans


@pytest.mark.parametrize("per_word", [False, True])
def test_mark_up_round_trips_any_text(per_word):
    for text, spans in _random_cases(3000):
        marked, exact = mark_up(text, spans, per_word=per_word)
        assert parse_markers(marked) == (text, exact), (text, spans)


def test_mark_up_highlights_the_spans_of_ordinary_text():
    text = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome."
    start = text.index("The tower is in Rome.")
    marked, exact = mark_up(text, [(start, len(text))])
    assert marked == "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>"
    assert exact == [(start, len(text))]


def test_mark_up_escapes_literal_markers():
    text = "x << y >> z and cout << v"
    marked, exact = mark_up(text, [(0, 1)])
    assert parse_markers(marked) == (text, [(0, 1)])
    assert marked.startswith("<<x>>")


def test_per_word_marks_survive_any_whitespace_cut():
    text = "Doc 2: The Varnholt lighthouse was built in 1902 by the harbour board."
    marked, exact = mark_up(text, [(7, len(text))], per_word=True)
    assert "<<Varnholt>>" in marked
    # joined back, the per-word spans merge into the original region
    assert parse_lenient(marked) == (text, [(7, len(text))])
    for cut in [i for i, ch in enumerate(marked) if ch.isspace()]:
        for piece in (marked[:cut], marked[cut:]):
            clean, spans = parse_lenient(piece)
            for s, e in spans:
                assert clean[s:e].strip() and set(clean[s:e].split()) <= set(text[7:].split())


def test_parse_lenient_keeps_orphan_markers_as_text():
    assert parse_lenient("ower>> is <<in Rome") == ("ower>> is <<in Rome", [])
    assert parse_lenient("a <<b>> c <<d") == ("a b c <<d", [(2, 3)])
    assert parse_lenient("<<>> x") == ("<<>> x", [])
    assert parse_lenient("<<a>> <<b>>\n<<c>>", merge_gaps=False)[1] == [(0, 1), (2, 3), (4, 5)]
    assert parse_lenient("<<a>> <<b>>\n<<c>>")[1] == [(0, 5)]


def test_sentence_spans():
    text = "The tower is in Paris. It was built in 1889!\nVersion 3.5 is out"
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "The tower is in Paris.", "It was built in 1889!", "Version 3.5 is out",
    ]
    assert sentence_spans("   ") == []


DOCS = ["Paris is in France.", "Rome is in Italy. The tower is in Rome.", "Madrid is in Spain."]


def test_policy_top_k_uses_scores_then_rank():
    assert select("top_k", DOCS, [0.1, 0.9, 0.5], k=2).documents == [1, 2]
    assert select("top_k", DOCS, [0.1, 0.9, 0.5], k=1, higher_is_better=False).documents == [0]
    assert select("top_k", DOCS, None, k=2).documents == [0, 1]  # rank
    with pytest.warns(UserWarning, match=r"documents \[1\] have no retriever score"):
        assert select("top_k", DOCS, [0.3, None, 0.2], k=2).documents == [0, 1]  # incomplete scores: rank
    with pytest.raises(SekaError, match="NaN"):
        select("top_k", DOCS, [0.3, float("nan"), 0.2], k=1)
    # with a threshold, top_k keeps the k best of the documents passing it
    assert select("top_k", DOCS, [0.1, 0.9, 0.5], k=2, threshold=0.6).documents == [1]
    with pytest.raises(SekaError, match="needs a retriever score"):
        select("top_k", DOCS, [0.3, None, 0.2], k=1, threshold=0.1)
    with pytest.raises(SekaError, match="does nothing with the 'all' policy"):
        select("all", DOCS, None, threshold=0.5)
    with pytest.raises(SekaError, match=r"cosine similarity in \[-1, 1\]"):
        select("sentences", DOCS, None, question="q", threshold=5.0)
    assert select("top_k", DOCS, None, k=1).spans == {0: [(0, len(DOCS[0]))]}


def test_policy_threshold_all_none():
    assert select("threshold", DOCS, [0.1, 0.9, 0.5], threshold=0.5).documents == [1, 2]
    assert select("threshold", DOCS, [0.1, 0.9, 0.5], threshold=0.2, higher_is_better=False).documents == [0]
    with pytest.raises(SekaError, match="needs a retriever score"):
        select("threshold", DOCS, None, threshold=0.5)
    with pytest.raises(SekaError, match="needs threshold"):
        select("threshold", DOCS, [1, 2, 3])
    assert select("all", DOCS).documents == [0, 1, 2]
    assert select("none", DOCS).documents == []
    with pytest.raises(SekaError, match="unknown highlight policy"):
        select("best", DOCS)


def test_policy_sentences_picks_the_most_similar(fake_encoder):
    sel = select("sentences", DOCS, question="where is the tower", k=1, encoder=fake_encoder)
    assert sel.spans == {1: [(18, 39)]}
    assert DOCS[1][18:39] == "The tower is in Rome."
    two = select("sentences", DOCS, question="where is the tower in Rome", k=2, encoder=fake_encoder)
    assert two.spans == {1: [(0, 17), (18, 39)]}
    none = select("sentences", DOCS, question="where is the tower", k=3, threshold=0.99, encoder=fake_encoder)
    assert none.spans == {}
    with pytest.raises(SekaError, match="needs the question"):
        select("sentences", DOCS, k=1, encoder=fake_encoder)


def test_registry_is_lazy_and_shared(counting_loader, tiny_seka, monkeypatch):
    loads = counting_loader
    assert not _loading.is_loaded("smollm2-135m")
    a = _loading.shared_model("smollm2-135m")
    b = _loading.resolve_model("smollm2-135m")
    assert a is b is tiny_seka and loads == ["smollm2-135m"]
    assert _loading.shared_model() is tiny_seka and loads == ["smollm2-135m", _loading.DEFAULT_MODEL]
    with pytest.raises(SekaError, match="register_model"):
        _loading.shared_model("no-such-model")
