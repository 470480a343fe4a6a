"""The synthetic triplet generator: determinism, distinctness, answer placement, diversity."""

from __future__ import annotations

import ast
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from seka_rag.data import triplets as triplets_module
from seka_rag.data.triplets import (
    RELATIONS,
    Triplet,
    generate_triplets,
    triplet_prompts,
    triplets_hash,
)


@pytest.fixture(scope="module")
def thousand() -> list[Triplet]:
    return generate_triplets(1000, seed=0)


def test_deterministic_per_seed(thousand):
    again = generate_triplets(1000, seed=0)
    assert again == thousand
    assert triplets_hash(again) == triplets_hash(thousand)
    other = generate_triplets(1000, seed=1)
    assert other != thousand
    assert triplets_hash(other) != triplets_hash(thousand)


def test_prefix_property():
    # the first k triplets do not depend on how many are asked for
    assert generate_triplets(50, seed=3) == generate_triplets(200, seed=3)[:50]


def test_thousand_distinct_and_fast():
    start = time.process_time()  # CPU time of this process: other jobs on the machine do not count
    ts = generate_triplets(1000, seed=7)
    elapsed = time.process_time() - start
    assert len(ts) == 1000
    assert len({t.context for t in ts}) == 1000
    assert elapsed < 1.0


def test_answer_exactly_once_and_not_in_questions(thousand):
    for t in thousand:
        assert t.answer and t.context and t.question and t.unrelated_question
        assert t.context.lower().count(t.answer.lower()) == 1, t
        assert t.context.count(t.answer) == 1, t
        assert t.answer.lower() not in t.question.lower(), t
        assert t.answer.lower() not in t.unrelated_question.lower(), t
        assert t.question != t.unrelated_question


def test_relation_diversity(thousand):
    assert len(RELATIONS) >= 25
    assert len({r.name for r in RELATIONS}) == len(RELATIONS)
    for r in RELATIONS:
        assert len(r.questions) >= 3, r.name
        assert len(r.statements) >= 1, r.name
    counts = Counter(t.relation for t in thousand)
    assert len(counts) >= 25
    assert max(counts.values()) < 0.1 * len(thousand)  # no relation dominates
    assert len({t.question for t in thousand}) > 950


def test_answer_length_and_position_vary(thousand):
    words = Counter(len(t.answer.split()) for t in thousand)
    assert words[1] > 0 and words[2] > 0 and words[3] > 0
    assert max(words) >= 6 and max(words) <= 8
    n_sentences = Counter(len([s for s in t.context.split(". ") if s]) for t in thousand)
    assert min(n_sentences) == 1 and max(n_sentences) <= 6
    assert sum(n_sentences[k] for k in (4, 5)) > 100
    where = Counter()
    for t in thousand:
        at = t.context.lower().index(t.answer.lower()) / len(t.context)
        where["start" if at < 0.3 else "end" if at > 0.7 else "middle"] += 1
    assert min(where.values()) > 50


def test_unrelated_question_is_about_something_else(thousand):
    # the unrelated question names an entity the context does not mention: at least one of its
    # capitalised words (names) is absent from the context
    for t in thousand[:300]:
        names = [w.strip("?.,'\"") for w in t.unrelated_question.split()[1:] if w[:1].isupper()]
        names = [n for n in names if n and n not in {"Captain", "River", "Bridge", "Mount", "Festival"}]
        if names:
            assert any(n not in t.context for n in names), t


def test_triplet_prompts():
    t = Triplet("Velmholm has a population of 4,200.", "How many people live in Velmholm?", "4,200",
                "Who founded Orsk Mills?", "population")
    neutral, pos, neg = triplet_prompts(t)
    assert neutral == "Context: Velmholm has a population of 4,200."
    assert pos == "Question: How many people live in Velmholm?\nContext: Velmholm has a population of 4,200."
    assert neg == "Question: Who founded Orsk Mills?\nContext: Velmholm has a population of 4,200."
    for p in (neutral, pos, neg):
        assert p.endswith(t.context)


def test_triplets_hash_is_canonical():
    ts = generate_triplets(5, seed=11)
    h = triplets_hash(ts)
    assert len(h) == 64 and int(h, 16) >= 0
    assert triplets_hash(list(ts)) == h
    assert triplets_hash(ts[::-1]) != h
    assert triplets_hash([replace(ts[0], relation="x")] + ts[1:]) != h
    assert triplets_hash([]) == triplets_hash([])


def test_bad_n():
    assert generate_triplets(0) == []
    with pytest.raises(ValueError):
        generate_triplets(-1)


def test_module_has_no_torch_or_model_imports():
    tree = ast.parse(Path(triplets_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "") if node.level else (node.module or "").split(".")[0])
    # the package's exception classes (a module with no imports) are the one relative import
    assert imported <= {"__future__", "hashlib", "json", "random", "re", "collections", "dataclasses", "..errors"}, imported
