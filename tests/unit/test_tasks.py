"""Build triplets of AdaSEKA's task families: invariants, determinism, family-specific structure."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from seka_rag.data import tasks
from seka_rag.data.tasks import FAMILIES, built_triplets, family_triplets
from seka_rag.data.triplets import generate_triplets, triplet_prompts
from seka_rag.evaluation.conflict import real_conflict_items, split_of

N = 200  # more than the 150 a family must be able to give


@pytest.fixture(scope="module")
def built() -> dict[str, list[tasks.BuiltTriplet]]:
    return {f: built_triplets(f, N, seed=0) for f in FAMILIES}


def _ci_count(haystack: str, needle: str) -> int:
    return haystack.lower().count(needle.lower())


def test_family_names():
    assert FAMILIES == ("context_qa", "conflict", "instruction", "distractors")


@pytest.mark.parametrize("family, n, message", [
    ("qa", 3, "unknown task family 'qa'"),
    ("", 3, "unknown task family"),
    ("conflict", -1, "n must be a non-negative integer"),
    ("instruction", 2.5, "n must be a non-negative integer"),
    ("distractors", True, "n must be a non-negative integer"),
])
def test_bad_arguments(family, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        family_triplets(family, n)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero(family):
    assert family_triplets(family, 0) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_invariants(built, family):
    items = built[family]
    assert len(items) == N
    assert len({b.triplet.context for b in items}) == N  # distinct contexts
    for b in items:
        t = b.triplet
        assert t.answer and t.answer in t.context, t  # the builder finds the span case-sensitively
        assert _ci_count(t.context, t.answer) == 1, t
        assert _ci_count(t.question, t.answer) == 0, t
        assert _ci_count(t.unrelated_question, t.answer) == 0, t
        assert t.question != t.unrelated_question
        # the three builder views share the context verbatim
        assert all(t.context in view for view in triplet_prompts(t))


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_seeded_prefix(family):
    a = family_triplets(family, 60, seed=0)
    assert a == family_triplets(family, 60, seed=0)
    assert a[:25] == family_triplets(family, 25, seed=0)  # a prefix of one stream
    other = family_triplets(family, 60, seed=1)
    assert not {t.context for t in a} & {t.context for t in other}


def test_context_qa_is_the_generic_generator():
    assert family_triplets("context_qa", 30, seed=4) == generate_triplets(30, seed=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_unrelated_question_is_about_something_absent(built, family):
    stop = {"what", "which", "where", "when", "does", "with", "whom", "name", "how", "many", "much", "from",
            "made", "long", "high", "tall", "year", "the", "who", "called", "known", "live", "usually", "are", "for",
            "was", "did", "its", "and", "can", "age", "old", "any", "sea", "time"}
    for b in built[family]:
        t = b.triplet
        if b.absent:  # the generator tells us the entity: it is absent from the context
            assert _ci_count(t.context, tasks.bare_name(b.absent)) == 0, t
        # in any case the unrelated question names something new (a word the context lacks)
        words = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", t.unrelated_question)} - stop
        assert any(_ci_count(t.context, w) == 0 for w in words), t


@pytest.mark.parametrize("family", ["conflict", "instruction", "distractors"])
def test_main_entities_come_from_the_dev_split(built, family):
    for b in built[family]:
        assert b.subject and split_of(b.subject) == "dev", b


def _parse_conflict(context: str) -> tuple[str, str] | None:
    for fmt in tasks._CONFLICT_FORMATS:
        pattern = re.escape(fmt).replace(r"\{first\}", "(.+)").replace(r"\{second\}", "(.+)")
        m = re.fullmatch(pattern, context, flags=re.S)
        if m:
            return m.group(1), m.group(2)
    return None


def test_conflict_triplets_hold_two_disagreeing_documents(built):
    where = Counter()
    formats = Counter()
    for b in built["conflict"]:
        t = b.triplet
        docs = _parse_conflict(t.context)
        assert docs is not None, t.context
        first, second = docs
        assert (t.answer in first) != (t.answer in second), t  # the value of exactly one document
        where["first" if t.answer in first else "second"] += 1
        formats[t.context.split(":")[0]] += 1
        assert first != second
        assert t.relation.startswith("conflict/")
    assert min(where.values()) > N // 4  # the answer document varies
    assert len(formats) == len(tasks._CONFLICT_FORMATS)
    real = {it.subject for it in real_conflict_items()}
    kinds = Counter(b.subject in real for b in built["conflict"])
    assert kinds[True] > 10 and kinds[False] > 10  # real and fictional facts both used


def test_instruction_triplets(built):
    kinds = Counter()
    for b in built["instruction"]:
        t = b.triplet
        assert t.answer.endswith(".") and t.answer[0].isupper()
        assert f"{t.answer} " in f"{t.context} " and (t.context.startswith(t.answer) or f". {t.answer}" in t.context)
        assert len(re.findall(r"[.?!]( |$)", t.context)) >= 2  # ordinary text around the instruction
        assert tasks.bare_name(b.subject).lower() in t.question.lower()  # the request is about the text
        kinds[t.relation.split("/")[1]] += 1
    assert set(kinds) == set(tasks._BUILD_INSTRUCTIONS)
    positions = Counter(b.triplet.context.startswith(b.triplet.answer) for b in built["instruction"])
    assert positions[True] > 10 and positions[False] > 10


def test_distractor_triplets(built):
    positions = Counter()
    sizes = Counter()
    for b in built["distractors"]:
        t = b.triplet
        passages = t.context.split("\n")
        assert 6 <= len(passages) <= 10
        assert all(p.startswith(f"Passage {i + 1}: ") for i, p in enumerate(passages))
        holding = [i for i, p in enumerate(passages) if _ci_count(p, t.answer)]
        assert len(holding) == 1
        i = holding[0]
        positions["first" if i == 0 else "last" if i == len(passages) - 1 else "middle"] += 1
        sizes[len(passages)] += 1
        assert tasks.bare_name(b.subject).lower() in passages[i].lower()
    assert min(positions.values()) >= 20
    assert set(sizes) == set(range(6, 11))


@pytest.mark.parametrize("family", FAMILIES)
def test_relation_diversity(built, family):
    relations = Counter(b.triplet.relation for b in built[family])
    assert len(relations) >= 6
