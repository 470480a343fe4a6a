"""The two-document conflict evaluation: items, splits, case expansion, scoring and statistics."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from seka_rag.evaluation import (
    ConflictItem,
    ConflictReport,
    bootstrap_ci,
    conflict_cases,
    conflict_split,
    evaluate_conflicts,
    fictional_conflict_items,
    paired_bootstrap_diff_ci,
    real_conflict_items,
)
from seka_rag.evaluation.conflict import _item_problem, split_of

TOKENIZER_DIR = Path("/root/.cache/seka-rag/converted/smollm2-135m")


# ------------------------------------------------------------------------------- items
def test_real_items():
    items = real_conflict_items()
    assert len(items) >= 120
    assert len({it.relation for it in items}) >= 12
    assert len({(it.relation, it.subject) for it in items}) == len(items)
    for it in items:
        assert it.kind == "real" and it.prior == "a"
        assert _item_problem(it) is None, it
        assert it.answer_a in it.statement_a and it.answer_b in it.statement_b


def test_fictional_items_valid_and_deterministic():
    items = fictional_conflict_items(300, seed=0)
    assert items == fictional_conflict_items(300, seed=0)
    assert items != fictional_conflict_items(300, seed=1)
    assert len({it.subject.lower() for it in items}) == 300
    assert len({it.relation for it in items}) >= 25
    for it in items:
        assert it.kind == "fictional" and it.prior is None
        assert _item_problem(it) is None, it
        assert 1 <= len(it.answer_a.split()) <= 3 and 1 <= len(it.answer_b.split()) <= 3
        # both documents use the same wording apart from the answer (and its article)
        def frame(statement: str, answer: str) -> str:
            return statement.replace(answer, "@").replace(" an @", " a @")

        assert frame(it.statement_a, it.answer_a) == frame(it.statement_b, it.answer_b)


@pytest.mark.parametrize(
    "a, b, sa, sb, q",
    [
        ("Paris", "Paris", "X is in Paris.", "X is in Paris.", "Where is X?"),  # equal
        ("Rome", "Rome Nord", "X is in Rome.", "X is in Rome Nord.", "Where is X?"),  # prefix
        ("Au", "Ag", "It is Au.", "It is Ag or Au.", "Which?"),  # answer in other statement
        ("iron", "Fe", "It is iron.", "It is Fe.", "What is iron?"),  # answer in question
        ("one two three four", "five", "It is one two three four.", "It is five.", "Which?"),  # too long
    ],
)
def test_item_rules_reject(a, b, sa, sb, q):
    item = ConflictItem(q, sa, sb, a, b, "r", "real", "a", "X")
    assert _item_problem(item) is not None


# ------------------------------------------------------------------------------- splits
@pytest.fixture(scope="module")
def splits() -> dict[str, list[ConflictItem]]:
    return {s: conflict_split(s) for s in ("dev", "test")}


def test_split_sizes_and_balance(splits):
    for items in splits.values():
        kinds = Counter(it.kind for it in items)
        assert len(items) >= 150
        assert abs(kinds["real"] - kinds["fictional"]) <= 1
        assert len({it.relation for it in items if it.kind == "real"}) >= 12
        assert len({it.relation for it in items if it.kind == "fictional"}) >= 20
        assert len(set(items)) == len(items)


def test_splits_disjoint(splits):
    dev, test = splits["dev"], splits["test"]
    assert not {it.subject.lower() for it in dev} & {it.subject.lower() for it in test}
    assert not {it.question for it in dev} & {it.question for it in test}
    docs = lambda items: {s for it in items for s in (it.statement_a, it.statement_b)}  # noqa: E731
    assert not docs(dev) & docs(test)
    for name, items in splits.items():
        assert all(split_of(it.subject) == name for it in items)
    # every real fact is in exactly one split
    assert len([it for it in dev + test if it.kind == "real"]) == len(real_conflict_items())


def test_split_deterministic_and_subsample(splits):
    assert conflict_split("dev") == splits["dev"]
    small = conflict_split("dev", n=40)
    assert small == conflict_split("dev", n=40)
    assert len(small) == 40
    assert Counter(it.kind for it in small) == {"real": 20, "fictional": 20}
    assert set(small) <= set(splits["dev"])
    odd = conflict_split("test", n=7)
    assert Counter(it.kind for it in odd) == {"real": 4, "fictional": 3}
    with pytest.raises(ValueError):
        conflict_split("train")
    with pytest.raises(ValueError):
        conflict_split("dev", n=10_000)
    with pytest.raises(ValueError):
        conflict_split("dev", n=0)


# ------------------------------------------------------------------------------- cases
def test_conflict_cases_expand_item():
    item = real_conflict_items()[0]
    cases = conflict_cases(item)
    assert len(cases) == 4
    assert {(c.order, c.highlighted) for c in cases} == {("ab", "a"), ("ab", "b"), ("ba", "a"), ("ba", "b")}
    for c in cases:
        assert c.prompt.count(c.highlight) == 1
        assert item.statement_a in c.prompt and item.statement_b in c.prompt
        assert c.prompt.endswith(f"Question: {item.question}\nAnswer with a short phrase.")
        first = item.statement_a if c.order == "ab" else item.statement_b
        assert c.prompt.startswith(f"Document 1: {first}\nDocument 2: ")
        if c.highlighted == "a":
            assert (c.highlight, c.target, c.other) == (item.statement_a, item.answer_a, item.answer_b)
            assert c.agrees_with_prior is True
        else:
            assert (c.highlight, c.target, c.other) == (item.statement_b, item.answer_b, item.answer_a)
            assert c.agrees_with_prior is False
        assert (c.kind, c.relation) == ("real", item.relation)
    fict = conflict_cases(fictional_conflict_items(1)[0])
    assert all(c.agrees_with_prior is None and c.kind == "fictional" for c in fict)


# ------------------------------------------------------------------------------- statistics
def test_bootstrap_ci_known_inputs():
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([2.5] * 10) == (2.5, 2.5)
    values = [0.0, 1.0] * 200
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    assert lo < 0.5 < hi
    # binomial standard error at n=400 is 0.025, so the 95% interval is about +/- 0.049
    assert 0.43 < lo < 0.47 and 0.53 < hi < 0.57
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)
    assert bootstrap_ci(values, seed=0) != bootstrap_ci(values, seed=1)
    wide = bootstrap_ci([0.0, 1.0] * 10)
    assert wide[1] - wide[0] > hi - lo
    lo90, hi90 = bootstrap_ci(values, n_boot=2000, seed=0, level=0.9)
    assert lo <= lo90 and hi90 <= hi


def test_cluster_bootstrap_keeps_counterbalanced_cases_together():
    # four cases per item, two wins and two losses each (both orders x either highlight, unsteered)
    values = [1.0, 0.0, 1.0, 0.0] * 50
    items = [i // 4 for i in range(len(values))]
    assert bootstrap_ci(values, n_boot=500, clusters=items) == (0.5, 0.5)
    assert bootstrap_ci(values, n_boot=500)[0] < 0.46  # as independent cases it would look uncertain
    # items that all win or all lose: the interval is over 50 items, not 200 cases, so it is wider
    whole = [float(i % 2) for i in range(50) for _ in range(4)]
    by_item = bootstrap_ci(whole, n_boot=2000, clusters=[i // 4 for i in range(200)])
    by_case = bootstrap_ci(whole, n_boot=2000)
    assert by_item[1] - by_item[0] > 1.7 * (by_case[1] - by_case[0])
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_ci([1.0, 0.0], clusters=[0])
    assert paired_bootstrap_diff_ci([1.0, 0.0] * 4, [0.0, 1.0] * 4, clusters=[i // 2 for i in range(8)]) == (0.0, 0.0)


def test_paired_bootstrap_diff():
    a = [1.0, 2.0, 3.0, 4.0]
    assert paired_bootstrap_diff_ci(a, [x - 1 for x in a]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_diff_ci([1.0], [1.0, 2.0])


# ------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def tiny_model():
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"tokenizer not available at {TOKENIZER_DIR}")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from seka_rag import SekaModel

    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return SekaModel(transformers.LlamaForCausalLM(cfg).eval(), tok)


@pytest.fixture(scope="module")
def tiny_projection(tiny_model):
    import torch

    from seka_rag import Projection, ProjectionMeta

    g = tiny_model.geometry
    n, h, d = g.num_layers, g.num_kv_heads, g.head_dim
    eye = torch.eye(d).expand(n, h, d, d).clone()
    meta = ProjectionMeta(
        model_type=g.model_type, model_id=tiny_model.model_id, num_layers=n, num_kv_heads=h,
        head_dim=d, layers=list(range(n)), construction="identity",
    )
    return Projection(
        meta=meta, pos=eye, neg=torch.zeros_like(eye), u_pos=eye, s_pos=torch.ones(n, h, d),
        u_neg=eye, s_neg=torch.ones(n, h, d), head_shift=torch.ones(n, h),
        head_mask=torch.ones(n, h, dtype=torch.bool),
    )


@pytest.fixture(scope="module")
def items():
    return conflict_split("dev", n=6)


def test_evaluate_without_steering_is_antisymmetric(tiny_model, items):
    report = evaluate_conflicts(tiny_model, items, steer=False, progress=False, batch_size=5)
    assert report.n == 4 * len(items) == len(report.margins) == len(report.cases)
    by_prompt: dict[str, dict[str, float]] = {}
    for case, margin in zip(report.cases, report.margins):
        by_prompt.setdefault(case.prompt, {})[case.highlighted] = margin
    # without steering the highlight changes nothing: swapping target and other flips the margin
    for margins in by_prompt.values():
        assert margins["a"] == pytest.approx(-margins["b"], abs=1e-4)
    assert all(abs(m) > 1e-6 for m in report.margins)
    assert report.share == pytest.approx(0.5)
    assert report.mean_margin == pytest.approx(0.0, abs=1e-4)
    assert report.share_ci[0] <= report.share <= report.share_ci[1]
    assert report.margin_ci[0] <= report.mean_margin <= report.margin_ci[1]
    g = report.groups
    assert g["real"].n + g["fictional"].n == report.n
    assert g["real_agree"].n + g["real_contradict"].n == g["real"].n
    assert g["real_agree"].share + g["real_contradict"].share == pytest.approx(1.0)
    assert report.greedy_share is None and report.steer is False


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_batched_scores_match_model_score(tiny_model, items, shared_prefix):
    report = evaluate_conflicts(
        tiny_model, items[:3], steer=False, progress=False, batch_size=3, shared_prefix=shared_prefix
    )
    for case, margin in zip(report.cases, report.margins):
        s = tiny_model.score(case.prompt, [case.target, case.other], highlights=[case.highlight], steer=False)
        assert margin == pytest.approx(s[0] - s[1], abs=1e-3)


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_steering_uses_each_rows_highlight(tiny_model, tiny_projection, items, shared_prefix):
    tiny_model.load_projection(tiny_projection)
    try:
        kw = dict(gain_pos=3.0, gain_neg=0.0)
        steered = evaluate_conflicts(
            tiny_model, items[:3], steer=True, progress=False, batch_size=4, shared_prefix=shared_prefix, **kw
        )
        plain = evaluate_conflicts(tiny_model, items[:3], steer=False, progress=False, batch_size=4)
        assert steered.settings == {"steer": True, **kw}
        assert any(abs(a - b) > 1e-3 for a, b in zip(steered.margins, plain.margins))
        for case, margin in zip(steered.cases, steered.margins):
            s = tiny_model.score(case.prompt, [case.target, case.other], highlights=[case.highlight], steer=True, **kw)
            assert margin == pytest.approx(s[0] - s[1], abs=1e-3)
    finally:
        tiny_model.projection = None


def test_greedy_and_serialisation(tiny_model, items):
    report = evaluate_conflicts(
        tiny_model, items[:2], steer=False, greedy=True, max_new_tokens=3, progress=False, batch_size=3
    )
    assert report.generations is not None and len(report.generations) == report.n
    hits = [c.target.lower() in g.lower() for c, g in zip(report.cases, report.generations)]
    assert report.greedy_share == pytest.approx(sum(hits) / len(hits))
    for grp in report.groups.values():
        assert grp.greedy_share is None or 0.0 <= grp.greedy_share <= 1.0
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["n"] == report.n and "cases" not in summary
    assert set(summary["groups"]) == {"real", "real_agree", "real_contradict", "fictional"}
    full = json.loads(json.dumps(report.to_dict(include_cases=True)))
    assert len(full["cases"]) == report.n and "generation" in full["cases"][0]
    row = report.format_row()
    assert str(report) == row and "\n" not in row and row.startswith("no-steer")
    assert len(ConflictReport.header().split()) >= 10
    assert report.format_row("baseline").startswith("baseline")


def test_evaluate_needs_items(tiny_model):
    with pytest.raises(ValueError):
        evaluate_conflicts(tiny_model, [], progress=False)


def test_greedy_only_share_leaves_out_answers_that_repeat_both_documents(tiny_model, items, monkeypatch):
    from seka_rag.evaluation import conflict

    def answers(model, cases, **kwargs):  # crafted answers: the target alone, both answers, neither
        out = []
        for i, c in enumerate(cases):
            out.append([f"It is {c.target}.", f"{c.other}, then {c.target.upper()}", "I do not know."][i % 3])
        return out

    monkeypatch.setattr(conflict, "generate_cases", answers)
    report = evaluate_conflicts(tiny_model, items[:3], steer=False, greedy=True, progress=False)
    n = report.n
    kinds = [i % 3 for i in range(n)]
    assert report.greedy_share == pytest.approx(sum(k in (0, 1) for k in kinds) / n)
    assert report.greedy_only_share == pytest.approx(sum(k == 0 for k in kinds) / n)
    assert report.to_dict()["greedy_only_share"] == report.greedy_only_share
    assert report.format_row("x").split()[-2:] == [f"{report.greedy_share:.3f}", f"{report.greedy_only_share:.3f}"]


def test_cluster_bootstrap_pools_clusters_by_size():
    # clusters of unequal size: resampling clusters averages the pooled values, not the cluster means
    lo, hi = bootstrap_ci([1.0] * 9 + [0.0], n_boot=2000, clusters=[0] * 9 + [1], level=0.4)
    assert lo == pytest.approx(0.9) and hi == pytest.approx(0.9)


def test_unsteered_conflict_share_interval_resamples_items(tiny_model, items):
    report = evaluate_conflicts(tiny_model, items, steer=False, progress=False, batch_size=5)
    assert report.share == pytest.approx(0.5)
    assert report.share_ci == pytest.approx((0.5, 0.5))  # every item wins exactly 2 of its 4 cases
