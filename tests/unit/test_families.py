"""Evaluation items of the task families: structure, counterbalancing, disjointness, metric, scoring."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest

from seka_rag.data.tasks import FAMILIES, built_triplets
from seka_rag.evaluation import conflict_cases, conflict_split
from seka_rag.evaluation.conflict import split_of
from seka_rag.evaluation.families import (
    DEFAULT_N,
    INSTRUCTION_TYPES,
    NUMBER_QUESTIONS,
    TRANSLATIONS,
    FamilyItem,
    FamilyReport,
    distinctive,
    distractor_items,
    evaluate_family,
    family_items,
    family_report,
    format_family_table,
    hits_of,
    near_name,
    number_words,
    score_items,
)


@pytest.fixture(scope="module")
def items() -> dict[str, list[FamilyItem]]:
    return {f: family_items(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def build_seed0() -> list:
    """Every seed-0 build triplet of 400 per family (the size a projection is typically built from)."""
    return [b.triplet for family in FAMILIES for b in built_triplets(family, 400, 0)]


@pytest.fixture(scope="module")
def build_text(build_seed0) -> str:
    return "\n".join(x for t in build_seed0 for x in (t.context, t.question, t.unrelated_question)).lower()


def _bare(name: str) -> str:
    return name.removeprefix("the ").removeprefix("The ")


# ------------------------------------------------------------------------------------ items
@pytest.mark.parametrize("family", FAMILIES)
def test_defaults_valid_and_deterministic(items, family):
    got = items[family]
    assert len(got) == DEFAULT_N >= 150
    assert got == family_items(family, seed=0)
    other = family_items(family, n=40, seed=1)
    assert other != got[:40]
    assert family_items(family, n=40) == got[:40]  # a smaller n is a prefix
    for it in got:
        assert it.family == family
        assert it.prompt.count(it.highlight) == 1, it
        assert it.target and it.others and all(o and o != it.target for o in it.others)
        assert "<<" not in it.prompt and ">>" not in it.prompt  # no accidental inline markers
        assert it.group and it.subject


@pytest.mark.parametrize("family, n, message", [
    ("qa", None, "unknown task family 'qa'"),
    ("conflict", -1, "n must be a non-negative integer"),
    ("instruction", 2.0, "n must be a non-negative integer"),
    ("conflict", 5000, "the conflict family has at most 1144 cases"),
    ("instruction", 50_000, "the instruction family has at most"),
])
def test_bad_arguments(family, n, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        family_items(family, n)


def test_bad_passage_count():
    with pytest.raises(ValueError, match="n_passages"):
        distractor_items(4, n_passages=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_items(family):
    assert family_items(family, 0) == []


def test_context_qa_items(items):
    groups = Counter(it.group for it in items["context_qa"])
    assert groups == {"similar_name": DEFAULT_N // 2, "other_attribute": DEFAULT_N // 2}
    true_first = Counter()
    for it in items["context_qa"]:
        (other,) = it.others
        assert it.prompt.lower().count(it.target.lower()) == 1 and it.prompt.lower().count(other.lower()) == 1
        assert it.target in it.highlight and other not in it.highlight
        question = it.prompt.split("Question: ")[1]
        assert _bare(it.subject) in question  # the question names the true entity
        context = it.prompt.split("\n\nQuestion:")[0]
        near = next(s for s in re.split(r"(?<=\.) ", context.removeprefix("Context: ")) if other in s)
        true_first[context.index(it.highlight) < context.index(near)] += 1
        if it.group == "similar_name":  # a look-alike entity, not the same one
            assert _bare(it.subject) not in near
        else:  # the same entity's other attribute
            assert _bare(it.subject) in near or _bare(it.subject).lower() in near.lower()
    assert true_first[True] == true_first[False]


def test_near_name():
    import random

    rng = random.Random(0)
    for name in ("the Brandholm Bridge", "Orla Vennick", "Mount Kravelo", "spotted brelo toad"):
        twin = near_name(name, rng)
        assert twin != name and len(twin) == len(name)
        assert sum(a != b for a, b in zip(twin, name)) == 1


def test_conflict_items_are_the_conflict_test_cases(items):
    got = items["conflict"]
    cases = [c for it in conflict_split("test", n=DEFAULT_N // 4) for c in conflict_cases(it)]
    assert [(it.prompt, it.highlight, it.target, it.others[0]) for it in got] == \
           [(c.prompt, c.highlight, c.target, c.other) for c in cases]
    assert all(split_of(it.subject) == "test" for it in got)
    assert Counter(it.group for it in got) == {"fictional": 120, "real_agree": 60, "real_contradict": 60}


def _pairs_by_prompt(items: list[FamilyItem]) -> dict[str, list[FamilyItem]]:
    out: dict[str, list[FamilyItem]] = defaultdict(list)
    for it in items:
        out[it.prompt].append(it)
    return out


def _assert_swapped(pair: list[FamilyItem]) -> None:
    a, b = pair
    assert a.highlight != b.highlight
    assert (a.target, a.others) == (b.others[0], (b.target,))


@pytest.mark.parametrize("family", ["instruction", "distractors", "conflict"])
def test_counterbalanced_highlights(items, family):
    for prompt, pair in _pairs_by_prompt(items[family]).items():
        assert len(pair) == 2, prompt
        _assert_swapped(pair)


def test_instruction_orders(items):
    by_base: dict[str, list[FamilyItem]] = defaultdict(list)
    for it in items["instruction"]:
        by_base[it.subject].append(it)
    assert len(by_base) == DEFAULT_N // 4
    for base in by_base.values():
        assert len(base) == 4
        p1, p2 = sorted({it.prompt for it in base})
        x, y = {it.highlight for it in base}
        swapped = p1.replace(x, "\0").replace(y, x).replace("\0", y)
        assert swapped == p2  # the same sentences with the two instructions exchanged
        assert len({it.target for it in base}) == 2
    assert Counter(it.group for it in items["instruction"]) == {k: DEFAULT_N // 5 for k in INSTRUCTION_TYPES}


def test_instruction_material():
    assert len(TRANSLATIONS) >= 60 and all(len(v) == 4 for v in TRANSLATIONS.values())
    assert len(NUMBER_QUESTIONS) >= 40 and len({q for q, _ in NUMBER_QUESTIONS}) == len(NUMBER_QUESTIONS)
    assert [number_words(n) for n in (0, 8, 13, 20, 24, 90, 100)] == \
           ["zero", "eight", "thirteen", "twenty", "twenty-four", "ninety", "one hundred"]
    with pytest.raises(ValueError):
        number_words(101)


def test_instruction_targets_obey_their_instruction(items):
    for it in items["instruction"]:
        (other,) = it.others
        if it.group == "number":
            assert (it.target.isdigit()) == ("digits" in it.highlight)
        elif it.group == "case":
            assert (it.target == it.target.lower()) == ("lowercase" in it.highlight)
            assert it.target.lower() == other.lower()
        elif it.group == "pronoun":
            assert f"'{it.target.lower()}'" in it.highlight
        elif it.group == "yes_no":
            assert (it.target in ("Yes", "No")) == ("yes or no" in it.highlight)
        elif it.group == "language":
            assert it.highlight.startswith("Answer in ")


def test_distractor_items(items):
    got = items["distractors"]
    assert Counter(it.group for it in got) == {"first": 80, "middle": 80, "last": 80}
    for it in got:
        passages = it.prompt.split("\n\n")[0].split("\n")
        assert len(passages) == 8
        at = [i for i, p in enumerate(passages) if it.highlight in p]
        assert len(at) == 1
        i = at[0]
        assert it.group == ("first" if i == 0 else "last" if i == 7 else "middle") and (i in (0, 3, 4, 7))
        # the entity appears in exactly the two disagreeing passages
        about = [p for p in passages if _bare(it.subject).lower() in p.lower()]
        assert len(about) == 2 and it.target in it.highlight and it.others[0] not in it.highlight
    assert {len(it.prompt.split("\n\n")[0].split("\n")) for it in distractor_items(6, n_passages=10)} == {10}


# ------------------------------------------------------------------------------ disjointness
@pytest.mark.parametrize("family", FAMILIES)
def test_disjoint_from_build_triplets(items, build_seed0, build_text, family):
    for it in items[family]:
        assert it.highlight.lower() not in build_text, it.highlight  # no evidence / instruction reused
        if family != "conflict":  # invented entities and requests appear nowhere in the build data
            assert _bare(it.subject).lower() not in build_text, it.subject
    if family != "instruction":
        assert all(split_of(it.subject) == "test" for it in items[family])
    contexts = {t.context for t in build_seed0}
    assert not any(c in it.prompt for it in items[family][:60] for c in contexts)


@pytest.mark.parametrize("seed", [0, 1])
def test_build_and_eval_entities_split(items, seed):
    evaluated = {it.subject.lower() for f in FAMILIES for it in items[f]}
    evaluated |= {it.subject.lower() for it in family_items("conflict", 1144)}
    for family in ("conflict", "instruction", "distractors"):
        build = {b.subject.lower() for b in built_triplets(family, 200, seed)}
        assert {split_of(s) for s in build} == {"dev"}
        assert not build & evaluated


def test_stock_names_are_not_evaluated():
    assert not any(distinctive(n) for n in ("Winter Owls", "the Silver Heron", "the folding loom"))
    assert distinctive("the Brandholm Bridge") and distinctive("Letters from Vaby") and distinctive("Orla Venner")


# ------------------------------------------------------------------------------------ metric
def test_hits_strict():
    assert hits_of([1.0, 0.0, -0.5, 1e-9, -0.0]) == [True, False, False, True, False]


def _item(target="a", others=("b",), group="g", family="context_qa", prompt="P", highlight="P"):
    return FamilyItem(family, prompt, highlight, target, tuple(others), group)


def test_family_report_known_values():
    its = [_item(group="x"), _item(group="x"), _item(group="y"), _item(group="y")]
    rep = family_report("context_qa", its, [2.0, 0.0, -1.0, 3.0], n_boot=200)
    assert rep.hits == [True, False, False, True]  # the tie (0.0) is a miss
    assert rep.share == 0.5 and rep.mean_margin == 1.0 and rep.n == 4
    assert rep.groups == {"x": 0.5, "y": 0.5} and rep.group_n == {"x": 2, "y": 2}
    assert 0.0 <= rep.ci_low <= 0.5 <= rep.ci_high <= 1.0
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["share"] == 0.5 and d["hits"] == rep.hits and "margins" not in rep.to_dict(include_items=False)
    with pytest.raises(ValueError):
        family_report("context_qa", its, [1.0])


class FakeTokenizer:
    chat_template = "fake"  # a chat model: continuations are scored as given, with no leading space

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@dataclass
class FakeEncoded:
    input_ids: list
    highlight: list
    text: str


class FakeModel:
    """score_encoded returns fixed log-probs per continuation; records every call's keywords."""

    context_window = 1000

    def __init__(self, logp: dict[str, float]):
        self.tokenizer = FakeTokenizer()
        self.logp = logp
        self.calls: list[dict] = []
        self.encoded: list[tuple] = []

    def encode(self, prompt, highlights, max_length=None):
        self.encoded.append((prompt, tuple(highlights), max_length))
        return FakeEncoded(list(range(len(prompt))), [False] * len(prompt), prompt)

    def score_encoded(self, rows, batch_size=8, **kw):
        self.calls.append({"n": len(rows), "batch_size": batch_size, "prompts": [r[0].text for r in rows], **kw})
        return [self.logp["".join(map(chr, ids))] for _, ids in rows]


def test_score_items_margins_and_passthrough():
    model = FakeModel({"win": -1.0, "lose": -3.0, "tie": -1.0, "worse": -9.0})
    its = [
        _item("win", ("lose",), prompt="short"),
        _item("lose", ("win",), prompt="a longer prompt"),
        _item("win", ("tie", "worse"), prompt="mid prompt"),  # a tie with the best other
        _item("win", ("worse", "lose"), prompt="x"),
    ]
    margins = score_items(model, its, batch_size=3, progress=False, shared_prefix=False, steer=False, gain_pos=3.0, router="r")
    assert margins == [2.0, -2.0, 0.0, 2.0]
    assert hits_of(margins) == [True, False, False, True]
    assert sum(c["n"] for c in model.calls) == 10 and all(c["n"] <= 3 for c in model.calls)
    assert all(c["steer"] is False and c["gain_pos"] == 3.0 and c["router"] == "r" and c["batch_size"] == 3
               for c in model.calls)
    assert model.calls[0]["prompts"][0] == "a longer prompt"  # longest rows first
    assert model.encoded[0] == ("short", ("P",), 1000 - 4)  # room for the longest continuation


def test_score_items_expands_per_item_queries():
    model = FakeModel({"a": 0.0, "b": -1.0})
    its = [_item(prompt=p, highlight=p) for p in ("p1", "prompt2", "p3")]
    score_items(model, its, batch_size=2, progress=False, shared_prefix=False, query=["q1", "q2", "q3"])
    for call in model.calls:
        assert call["query"] == [{"p1": "q1", "prompt2": "q2", "p3": "q3"}[p] for p in call["prompts"]]
    model.calls.clear()
    score_items(model, its, batch_size=2, progress=False, shared_prefix=False, query="one query for all")
    assert all(c["query"] == "one query for all" for c in model.calls)


def test_score_items_bad_input():
    model = FakeModel({"a": 0.0})
    with pytest.raises(ValueError, match="batch_size"):
        score_items(model, [_item()], batch_size=0)
    with pytest.raises(ValueError, match="no competing"):
        score_items(model, [_item(others=())], progress=False)


def test_evaluate_family_rejects_mixed_or_empty():
    model = FakeModel({"a": 0.0, "b": -1.0})
    with pytest.raises(ValueError, match="no items"):
        evaluate_family(model, [], shared_prefix=False)
    with pytest.raises(ValueError, match="one family"):
        evaluate_family(model, [_item(), _item(family="conflict")], progress=False, shared_prefix=False)
    rep = evaluate_family(model, [_item(), _item()], progress=False, shared_prefix=False, n_boot=50, steer=False)
    assert rep.share == 1.0 and rep.settings == {"steer": False}


def test_format_family_table():
    def rep(family, share):
        return FamilyReport(family, 10, share, share - 0.1, share + 0.1, 1.0)

    table = format_family_table({
        "unsteered": {f: rep(f, 0.5) for f in FAMILIES},
        "seka": {"conflict": rep("conflict", 0.9), "context_qa": rep("context_qa", 0.7)},
    })
    lines = table.splitlines()
    assert lines[0].split() == ["method", *FAMILIES, "mean"]
    assert lines[2].split()[0] == "unsteered" and "50.0 [40.0, 60.0]" in lines[2] and lines[2].endswith("50.0")
    assert "90.0 [80.0, 100.0]" in lines[3] and lines[3].endswith("80.0") and " - " in lines[3]
    assert lines[3].index("70.0") < lines[3].index("90.0")  # families in FAMILIES order


# ------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def tiny_items() -> list[FamilyItem]:
    return family_items("instruction", 4) + family_items("distractors", 2) + family_items("context_qa", 1)


def test_score_items_on_a_tiny_model(tiny_model, tiny_items):
    steered = tiny_model("qwen2", context_window=4096)
    bare = tiny_model("qwen2", context_window=4096, projection=False)
    off = score_items(steered, tiny_items, batch_size=4, progress=False, steer=False)
    assert off == pytest.approx(score_items(bare, tiny_items, batch_size=4, progress=False, steer=False), abs=1e-4)
    on = score_items(steered, tiny_items, batch_size=4, progress=False)
    assert max(abs(a - b) for a, b in zip(on, off)) > 1e-3  # the highlight steers
    assert on != pytest.approx(score_items(steered, tiny_items, batch_size=4, progress=False, gain_pos=8.0), abs=1e-3)
    # agrees with model.score on one item
    it = tiny_items[-1]
    t, o = steered.score(it.prompt, [it.target, *it.others], highlights=[it.highlight])
    assert on[-1] == pytest.approx(t - o, abs=1e-3)
    # counterbalanced pairs: unsteered margins are exact opposites
    for k in range(0, 6, 2):
        assert off[k] == pytest.approx(-off[k + 1], abs=1e-4)


def test_evaluate_family_on_a_tiny_model(tiny_model, tiny_items):
    model = tiny_model("llama", context_window=4096)
    instr = tiny_items[:4]
    rep = evaluate_family(model, instr, batch_size=8, progress=False, n_boot=100, steer=False)
    assert rep.family == "instruction" and rep.n == 4
    assert rep.share == 0.5  # by construction, without steering
    assert rep.settings == {"steer": False}
    assert set(rep.groups) <= set(INSTRUCTION_TYPES)
    assert math.isclose(rep.mean_margin, sum(rep.margins) / 4)
    json.dumps(rep.to_dict())
def test_shared_prefix_equals_row_scoring(tiny_model):
    seka = tiny_model("qwen2", num_layers=2)
    items = family_items("instruction", 8) + family_items("context_qa", 4)
    a = score_items(seka, items, progress=False)
    b = score_items(seka, items, progress=False, shared_prefix=False)
    assert a == pytest.approx(b, abs=1e-3)
    c = score_items(seka, items, progress=False, steer=False)
    d = score_items(seka, items, progress=False, shared_prefix=False, steer=False)
    assert c == pytest.approx(d, abs=1e-3)


def test_paired_differences_known_answer():
    from seka_rag.evaluation.families import FamilyReport, paired_differences

    def rep(family, hits):
        return FamilyReport(family=family, n=len(hits), share=sum(hits) / len(hits), ci_low=0.0, ci_high=1.0,
                            mean_margin=0.0, hits=list(hits))

    rows = {
        "seka": {"a": rep("a", [True, True, False, False]), "b": rep("b", [True, False])},
        "router": {"a": rep("a", [True, True, True, False]), "b": rep("b", [True, True])},
        "same": {"a": rep("a", [True, True, False, False]), "b": rep("b", [True, False])},
        "partial": {"b": rep("b", [False, False])},
    }
    lines = paired_differences(rows, n_boot=500).splitlines()
    # every family weighs the same, as in the mean column: (+25 on "a" + 50 on "b") / 2, not 2 of 6 items
    assert lines[0].startswith("router - seka: +37.50 points [") and "over 6 paired items (2 decided" in lines[0]
    means = {m: sum(r.share for r in reps.values()) / len(reps) for m, reps in rows.items() if m != "partial"}
    assert 100 * (means["router"] - means["seka"]) == pytest.approx(37.5)
    assert lines[1] == "same - seka: +0.00 points [+0.00, +0.00] over 6 paired items (0 decided differently)"
    assert lines[2].startswith("partial - seka: -50.00 points") and "over 2 paired items" in lines[2]
    assert paired_differences({"router": rows["router"]}) == ""  # no reference: nothing to pair with
    rows["seka"]["a"].hits = []  # a file written without per-item results
    assert paired_differences(rows) == ""


def test_dev_seeds_never_score_test_split_conflict_facts():
    key = lambda x: (x.prompt, x.highlight, x.target)  # noqa: E731
    test = {key(x) for x in family_items("conflict", 152, seed=0)}
    for seed in (1, 2):
        dev = family_items("conflict", 152, seed=seed)
        assert not test & {key(x) for x in dev}
        dev_subjects = {it.subject for it in conflict_split("dev", seed=seed)}
        assert {x.subject for x in dev} <= dev_subjects


@pytest.mark.parametrize("family, per_unit", [("conflict", 4), ("instruction", 4), ("distractors", 2)])
def test_counterbalanced_variants_share_a_unit_and_intervals_resample_units(family, per_unit):
    items = family_items(family, 48, seed=0)
    sizes = Counter(x.unit for x in items)
    assert "" not in sizes and set(sizes.values()) == {per_unit}
    # unsteered: each unit's variants split evenly between hits and misses -> exactly 50 %, interval [50, 50]
    seen: Counter = Counter()
    margins = []
    for x in items:
        margins.append(1.0 if seen[x.unit] % 2 == 0 else -1.0)
        seen[x.unit] += 1
    order = [x.unit for x in items]
    report = family_report(family, items, margins)
    assert report.share == 0.5 and (report.ci_low, report.ci_high) == (0.5, 0.5)
    assert report.units == order
    assert all(x.unit == "" for x in family_items("context_qa", 8))



@pytest.mark.parametrize("shared_prefix", [True, False])
def test_raw_prompt_answers_start_after_a_space(tiny_model, shared_prefix):
    # without a chat template the answer follows "...phrase." as a new word: " Rome", not "Rome" glued on
    from seka_rag.evaluation.conflict import ConflictCase, score_cases

    model = tiny_model("qwen2", chat=False)
    prompt = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nThe tower is in"
    item = FamilyItem("conflict", prompt, "The tower is in Rome.", "Rome", ("Paris",))
    spaced = model.score(prompt, [" Rome", " Paris"], highlights=[item.highlight], steer=False)
    want = spaced[0] - spaced[1]
    got = score_items(model, [item], progress=False, shared_prefix=shared_prefix, steer=False)[0]
    assert got == pytest.approx(want, abs=1e-4)
    case = ConflictCase(prompt, item.highlight, "Rome", "Paris", "fictional", "", None, "b", "ab")
    assert score_cases(model, [case], steer=False, progress=False, shared_prefix=shared_prefix)[0] == \
        pytest.approx(want, abs=1e-4)


def test_dev_seeds_never_reuse_a_test_instruction_base():
    """A dev item must not ask a test item's request with the same two instructions (only fillers differing)."""
    from seka_rag.evaluation.families import INSTRUCTION_TEST_BASES, _base_key, instruction_bases

    test = [_base_key(b) for b in instruction_bases(0)]
    assert len(test) == len(set(test)) == INSTRUCTION_TEST_BASES
    for seed in (1, 2, 7):
        dev = [_base_key(b) for b in instruction_bases(seed)]
        assert dev and not set(dev) & set(test)
        items = family_items("instruction", 48, seed=seed)
        assert {it.group for it in items} == {"language", "number", "case", "pronoun", "yes_no"}
    with pytest.raises(ValueError, match="at most 552 items"):
        family_items("instruction", 556, seed=0)
