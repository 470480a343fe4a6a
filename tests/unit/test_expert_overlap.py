"""``seka_rag.expert_overlap``: subspace overlaps and edit distances between experts, and its command."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from seka_rag import Projection, ProjectionError, ProjectionMeta
from seka_rag.adaptive import Expert, ExpertSet
from seka_rag.cli import main
from seka_rag.expert_overlap import compare_projections, expert_overlaps, format_overlaps

D = 6
GEOM = SimpleNamespace(model_type="llama", num_layers=2, num_kv_heads=2, head_dim=D)


def _span(*axes: int) -> torch.Tensor:
    """Orthogonal projector onto the coordinate axes given."""
    p = torch.zeros(D, D)
    for a in axes:
        p[a, a] = 1.0
    return p


def _projection(pos_axes, neg_axes=(), *, gain_pos=2.0, gain_neg=0.0, head_mask=None, geom=GEOM) -> Projection:
    n, h, d = geom.num_layers, geom.num_kv_heads, geom.head_dim
    eye = torch.eye(d).expand(n, h, d, d).clone()
    meta = ProjectionMeta(model_type=geom.model_type, model_id="tiny", num_layers=n, num_kv_heads=h, head_dim=d,
                          layers=list(range(n)), gain_pos=gain_pos, gain_neg=gain_neg, construction="test")
    pos = _span(*pos_axes)[:d, :d].expand(n, h, d, d).clone()
    neg = _span(*neg_axes)[:d, :d].expand(n, h, d, d).clone()
    return Projection(meta=meta, pos=pos, neg=neg, u_pos=eye, s_pos=torch.ones(n, h, d), u_neg=eye,
                      s_neg=torch.ones(n, h, d), head_shift=torch.ones(n, h),
                      head_mask=torch.ones(n, h, dtype=torch.bool) if head_mask is None
                      else torch.as_tensor(head_mask, dtype=torch.bool))


def test_identical_projections_overlap_fully_and_edit_alike():
    a = _projection((0, 1), (3, 4, 5), gain_neg=0.5)
    r = compare_projections("a", a, "b", _projection((0, 1), (3, 4, 5), gain_neg=0.5))
    assert r.pos_overlap == pytest.approx(1.0) and r.neg_overlap == pytest.approx(1.0)
    assert r.edit_distance == pytest.approx(0.0)
    assert r.heads == GEOM.num_layers * GEOM.num_kv_heads
    assert r.first_pos_rank == pytest.approx(2.0) and r.second_pos_rank == pytest.approx(2.0)
    assert r.pos_chance == pytest.approx(2 / D) and r.neg_chance == pytest.approx(3 / D)


@pytest.mark.parametrize("first, second, overlap", [
    ((0, 1), (2, 3), 0.0),          # orthogonal
    ((0, 1), (1, 2), 0.5),          # share one of two directions
    ((0,), (0, 1, 2), 1.0),         # nested: the smaller is inside the larger
])
def test_pos_overlap_of_coordinate_subspaces(first, second, overlap):
    r = compare_projections("a", _projection(first), "b", _projection(second))
    assert r.pos_overlap == pytest.approx(overlap)
    assert r.pos_chance == pytest.approx(max(len(first), len(second)) / D)


def test_edit_distance_is_relative_frobenius_distance_of_the_edit_matrices():
    # M = (g+ P+) / 2 with g+ = 2: M_a = P_a, M_b = P_b; ‖P_a − P_b‖ = √2 = ‖P_a‖ = ‖P_b‖ for spans {0,1} vs {1,2}
    r = compare_projections("a", _projection((0, 1)), "b", _projection((1, 2)))
    assert r.edit_distance == pytest.approx(1.0)
    # the same subspace at twice the gain: ‖2P − P‖ / ((2‖P‖ + ‖P‖) / 2) = 2/3
    r = compare_projections("a", _projection((0, 1), gain_pos=4.0), "b", _projection((0, 1)))
    assert r.edit_distance == pytest.approx(2 / 3)
    assert r.pos_overlap == pytest.approx(1.0)


def test_heads_masked_in_either_projection_are_left_out():
    mask = [[True, False], [True, True]]
    r = compare_projections("a", _projection((0,), head_mask=mask), "b", _projection((1,)))
    assert r.heads == 3


def test_expert_set_pairs_then_reference_and_table():
    experts = ExpertSet([Expert("x", _projection((0, 1))), Expert("y", _projection((1, 2))),
                         Expert("z", _projection((0, 1)))])
    rows = expert_overlaps(experts, _projection((0, 1)), reference_name="seka")
    assert [(r.first, r.second) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z"),
                                                   ("x", "seka"), ("y", "seka"), ("z", "seka")]
    assert [round(r.pos_overlap, 6) for r in rows] == [0.5, 1.0, 0.5, 1.0, 0.5, 1.0]
    table = format_overlaps(rows)
    assert table.count("\n") == len(rows) + 1 and "| x | y | 0.500 (0.333) |" in table


def test_bad_input_gives_clear_errors():
    a = _projection((0,))
    with pytest.raises(ProjectionError, match="two experts"):
        expert_overlaps({"only": a})
    with pytest.raises(ProjectionError, match="non-empty"):
        expert_overlaps({})
    with pytest.raises(ProjectionError, match="reference must be a Projection"):
        expert_overlaps({"a": a, "b": a}, reference="seka.safetensors")
    other = _projection((0,), geom=SimpleNamespace(model_type="llama", num_layers=2, num_kv_heads=1, head_dim=D))
    with pytest.raises(ProjectionError, match="different models"):
        compare_projections("a", a, "o", other)
    with pytest.raises(ProjectionError, match=r"layers \[5\] are not in both"):
        compare_projections("a", a, "b", a, layers=[5])
    with pytest.raises(ProjectionError, match="no common head"):
        compare_projections("a", _projection((0,), head_mask=[[False, False]] * 2), "b", a)


def test_compare_experts_command(tmp_path, capsys):
    ExpertSet([Expert("x", _projection((0, 1))), Expert("y", _projection((1, 2)))]).save(tmp_path / "set")
    reference = _projection((0, 1)).save(tmp_path / "ref.safetensors")
    out = tmp_path / "pairs.json"
    assert main(["compare-experts", "--experts", str(tmp_path / "set"), "--projection", str(reference),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| x | y | 0.500" in printed and "| y | single projection | 0.500" in printed
    pairs = json.loads(out.read_text())["pairs"]
    assert [(p["first"], p["second"]) for p in pairs] == [("x", "y"), ("x", "single projection"),
                                                          ("y", "single projection")]
    assert main(["compare-experts", "--experts", str(tmp_path / "set"), "--projection", "none"]) == 0
    assert "single projection" not in capsys.readouterr().out
    assert main(["compare-experts", "--experts", str(tmp_path / "nothing")]) == 2
    assert "experts.json is missing" in capsys.readouterr().err
    assert main(["compare-experts", "--experts", str(tmp_path / "set"), "--projection", str(tmp_path / "no.st")]) == 2
    assert main(["compare-experts", "--model", "some/hub-model"]) == 2
    assert "pass --experts" in capsys.readouterr().err


def test_shipped_default_set_compares_without_loading_a_model(capsys):
    assert main(["compare-experts"]) == 0
    printed = capsys.readouterr().out
    assert "context_qa" in printed and "single projection" in printed
