"""``seka_rag.inspect`` on tiny models: head ranking, token amplification, formatting, the command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from seka_rag import Projection, ProjectionMeta, SekaError
from seka_rag.data.triplets import generate_triplets
from seka_rag.errors import InspectionError, SteeringConfigError
from seka_rag.inspect import (
    HeadEffect, add_inspect_parser, default_texts, format_inspection, head_effects, inspect_main, most_affected,
    token_amplification, visible_token,
)
from seka_rag.steering import SteeringConfig

LAYOUTS = ["llama", "qwen3", "gemma3_text"]  # flat, bthd, bhtd key layouts

TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Alice met Bob in London on Monday; Carol met Dave in Berlin on Friday.",
    "The quick brown fox jumps over the lazy dog 0123456789 times, said the system.",
    "Answer the question using only the highlighted document.",
]


def _projection(geom, pos, *, neg=None, layers=None, head_mask=None, head_shift=None, gain_pos=2.0, gain_neg=0.0,
                layer_scale=None) -> Projection:
    """A projection with the given P+ (and P-, default zero) tensors."""
    layers = list(range(geom.num_layers)) if layers is None else layers
    n, h, d = len(layers), geom.num_kv_heads, geom.head_dim
    eye = torch.eye(d).expand(n, h, d, d).clone()
    meta = ProjectionMeta(model_type=geom.model_type, model_id="", num_layers=geom.num_layers,
                          num_kv_heads=h, head_dim=d, layers=layers, gain_pos=gain_pos, gain_neg=gain_neg,
                          construction="test")
    return Projection(
        meta=meta, pos=pos, neg=torch.zeros(n, h, d, d) if neg is None else neg, u_pos=eye, s_pos=torch.ones(n, h, d),
        u_neg=eye, s_neg=torch.ones(n, h, d),
        head_shift=torch.linspace(0.1, 0.9, n * h).reshape(n, h) if head_shift is None else head_shift,
        head_mask=torch.ones(n, h, dtype=torch.bool) if head_mask is None else torch.as_tensor(head_mask).bool(),
        layer_scale=layer_scale,
    )


def _raw_keys(seka, helpers, text: str):
    """(ids, {layer: (tokens, kv_heads, d)}) of one text, captured independently of seka_rag.inspect."""
    enc = seka.encode(text, chat=False, markers=None)
    with helpers.record_keys(seka) as calls, torch.no_grad():
        seka.model(input_ids=torch.tensor([enc.input_ids]), use_cache=False)
    return enc.input_ids, {layer: c[0][0][0] for layer, c in calls.items()}


def _label(tokenizer, tid: int) -> str:
    return visible_token(tokenizer.decode([tid]))


# ---------------------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("family", LAYOUTS)
def test_token_with_largest_component_along_the_amplified_direction_ranks_first(tiny_model, helpers, family):
    seka = tiny_model(family, projection=False)
    geom = seka.geometry
    special = set(seka.tokenizer.all_special_ids)
    # layer 0's pre-RoPE key depends on the token alone (nothing has attended yet): one key per token
    keys: dict[str, torch.Tensor] = {}
    for text in TEXTS:
        ids, per_layer = _raw_keys(seka, helpers, text)
        for pos, tid in enumerate(ids):
            if tid not in special:
                keys.setdefault(_label(seka.tokenizer, tid), per_layer[0][pos, 1])
    target = sorted(keys)[len(keys) // 2]
    e = keys[target] / keys[target].norm()
    d = geom.head_dim
    pos = torch.zeros(1, geom.num_kv_heads, d, d)
    pos[0, 1] = torch.outer(e, e)  # P+ = e eᵀ in KV head 1 of layer 0
    proj = _projection(geom, pos, layers=[0], gain_pos=2.0, gain_neg=0.0)
    seka.load_projection(proj)

    result = token_amplification(seka, TEXTS, [(0, 1)], top=5, min_count=1, progress=False)
    (head,) = result.heads
    assert (head.effect.layer, head.effect.head) == (0, 1)
    best = head.top[0]
    assert best.token == target
    assert best.mean_pos_share == pytest.approx(1.0, abs=1e-4)
    assert best.mean_ratio == pytest.approx(2.0, abs=1e-4)  # ‖k + (g+/2) P+ k‖/‖k‖ = 1 + g+/2 for k ∥ e
    assert best.std_ratio == pytest.approx(0.0, abs=1e-4)
    # the whole ranking follows the squared cosine with e, computed directly
    cos2 = {t: float((k @ e) ** 2 / (k @ k)) for t, k in keys.items()}
    expected = sorted(cos2, key=lambda t: -cos2[t])
    assert [t.token for t in head.top] == expected[:5]
    for t in head.top + head.bottom:
        assert t.mean_pos_share == pytest.approx(cos2[t.token], abs=1e-4)
        assert t.mean_ratio == pytest.approx(math.sqrt(1 + 3 * cos2[t.token]), abs=1e-4)  # (1+g/2)² - 1 = 3
    assert [t.token for t in head.bottom] == expected[::-1][:5]


@pytest.mark.parametrize("family", LAYOUTS)
def test_ratio_and_share_equal_a_direct_computation(tiny_model, helpers, family):
    seka = tiny_model(family)  # random projection: P+ of rank d/2, P- of rank d/4, g+ = 2, g- = 0.5
    proj = seka.projection
    text = TEXTS[1]
    ids, per_layer = _raw_keys(seka, helpers, text)
    special = set(seka.tokenizer.all_special_ids)
    labels = [_label(seka.tokenizer, t) for t in ids]
    once = [i for i, t in enumerate(ids) if t not in special and labels.count(labels[i]) == 1]
    assert once
    heads = [(1, 0), (0, 1)]
    result = token_amplification(seka, [text], heads, top=100, min_count=1, progress=False)
    assert [(h.effect.layer, h.effect.head) for h in result.heads] == heads  # the order asked
    for h in result.heads:
        layer, kv = h.effect.layer, h.effect.head
        m = helpers.edit_matrix(proj, layer)[kv]
        p = proj.pos[proj.row(layer), kv]
        stats = {t.token: t for t in h.top + h.bottom}
        assert len(stats) == h.distinct == len(set(labels[i] for i, t in enumerate(ids) if t not in special))
        assert h.occurrences == sum(t not in special for t in ids) == result.tokens
        for i in once:
            k = per_layer[layer][i, kv]
            ratio = float((k + m @ k).norm() / k.norm())
            share = float((p @ k).norm() ** 2 / k.norm() ** 2)
            assert stats[labels[i]].count == 1
            assert stats[labels[i]].mean_ratio == pytest.approx(ratio, rel=1e-4)
            assert stats[labels[i]].mean_pos_share == pytest.approx(share, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("family", LAYOUTS)
def test_padding_and_batching_do_not_change_the_statistics(tiny_model, family):
    seka = tiny_model(family)
    one = token_amplification(seka, TEXTS, 2, min_count=2, batch_size=1, progress=False)
    many = token_amplification(seka, TEXTS, 2, min_count=2, batch_size=3, progress=False)  # left-padded rows
    assert one.tokens == many.tokens
    for a, b in zip(one.heads, many.heads):
        assert [t.token for t in a.top] == [t.token for t in b.top]
        for x, y in zip(a.top + a.bottom, b.top + b.bottom):
            assert x.count == y.count and x.mean_ratio == pytest.approx(y.mean_ratio, rel=1e-4)


def test_top_and_bottom_are_sorted_disjoint_and_respect_min_count(tiny_model):
    seka = tiny_model("llama")
    result = token_amplification(seka, TEXTS * 2, 1, top=4, min_count=3, progress=False)
    (h,) = result.heads
    top = [t.mean_ratio for t in h.top]
    bottom = [t.mean_ratio for t in h.bottom]
    assert top == sorted(top, reverse=True) and bottom == sorted(bottom)
    assert len(h.top) == 4 and len(h.bottom) == 4
    assert not {t.token for t in h.top} & {t.token for t in h.bottom}
    assert min(top) >= max(bottom)
    assert all(t.count >= 3 for t in h.top + h.bottom)
    assert all(t.mean_ratio > 0 and 0 <= t.mean_pos_share <= 1 + 1e-5 for t in h.top + h.bottom)


def test_forward_stops_after_the_last_needed_layer(tiny_model):
    seka = tiny_model("llama", num_layers=3)
    calls = []
    handle = seka.model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        token_amplification(seka, TEXTS[:2], [(1, 0), (0, 0)], min_count=1, progress=False)
    finally:
        handle.remove()
    assert not calls


def test_default_texts_are_our_synthetic_contexts_not_the_build_seed():
    texts = default_texts()
    assert len(texts) == 200 and texts == [t.context for t in generate_triplets(200, seed=123)]
    assert not set(texts) & {t.context for t in generate_triplets(200, seed=0)}
    assert visible_token(" a\n\tb") == "␣a↵⇥b" and visible_token("") == "∅"


# ---------------------------------------------------------------------------------------- heads
def test_heads_ranked_by_rms_gain_masked_last(tiny_model, helpers):
    seka = tiny_model("llama", num_layers=3)
    geom = seka.geometry
    d, n_kv = geom.head_dim, geom.num_kv_heads
    ranks = [[2, 8], [14, 4], [6, 12]]  # rank of each head's P+ (disjoint from P-: the last 2 dims)
    pos = torch.zeros(3, n_kv, d, d)
    for layer in range(3):
        for h in range(n_kv):
            pos[layer, h] = torch.diag((torch.arange(d) < ranks[layer][h]).float())
    neg = torch.zeros(3, n_kv, d, d)
    neg[:, :] = torch.diag((torch.arange(d) >= d - 2).float())
    mask = [[True, True], [True, False], [True, True]]
    scale = torch.tensor([1.0, 1.0, 0.5])
    proj = _projection(geom, pos, neg=neg, head_mask=mask, gain_pos=2.0, gain_neg=0.5, layer_scale=scale)
    effects = head_effects(proj)
    assert [e.rank for e in effects] == list(range(1, 7))
    # independent: ‖M‖_F / √d per head, descending; the masked head last with zero strength
    m = {(layer, h): helpers.edit_matrix(proj, layer)[h] for layer in range(3) for h in range(n_kv)}
    unmasked = sorted((k for k in m if mask[k[0]][k[1]]), key=lambda k: -float(m[k].norm()))
    assert [e.key for e in effects] == unmasked + [(1, 1)]
    last = effects[-1]
    assert last.masked and last.rms_gain == last.spectral_norm == last.frobenius_norm == 0.0
    for e in effects[:-1]:
        assert not e.masked
        assert e.rms_gain == pytest.approx(float(m[e.key].norm()) / math.sqrt(d), rel=1e-5)
        assert e.spectral_norm == pytest.approx(float(torch.linalg.matrix_norm(m[e.key], ord=2)), rel=1e-5)
        assert e.pos_dims == ranks[e.layer][e.head]
        assert e.layer_scale == float(scale[e.layer])
    assert effects[0].key == (1, 0)  # 14 amplified directions at full scale
    # the spectral norm cannot tell heads of one layer apart: every P+ has norm 1
    assert effects[0].spectral_norm == pytest.approx(next(e for e in effects if e.key == (0, 0)).spectral_norm)
    assert [e.key for e in most_affected(effects, 10)] == unmasked
    assert [e.key for e in head_effects(proj, include_masked=False)] == unmasked
    by_shift = head_effects(proj, rank_by="shift")
    shifts = [e.head_shift for e in by_shift[:-1]]
    assert shifts == sorted(shifts, reverse=True) and by_shift[-1].masked
    # config: chosen layers only; heads="all" unmasks; gains scale M
    assert {e.layer for e in head_effects(proj, SteeringConfig(layers=[2]))} == {2}
    assert not any(e.masked for e in head_effects(proj, SteeringConfig(heads="all")))
    double = head_effects(proj, SteeringConfig(gain_pos=4.0, gain_neg=1.0))
    assert double[0].frobenius_norm == pytest.approx(2 * effects[0].frobenius_norm)
    # token_amplification's heads=n picks the same heads, in the same order
    seka.load_projection(proj)
    result = token_amplification(seka, TEXTS[:2], 3, min_count=1, progress=False)
    assert [h.effect.key for h in result.heads] == unmasked[:3]
    chosen = token_amplification(seka, TEXTS[:2], [effects[1], effects[0], (effects[1].layer, effects[1].head)],
                                 min_count=1, progress=False)  # HeadEffects or pairs; duplicates dropped
    assert [h.effect for h in chosen.heads] == [effects[1], effects[0]]


def test_masked_heads_are_never_inspected(tiny_model):
    seka = tiny_model("qwen3", projection={"head_mask": [[True, False], [False, False]]})
    with pytest.warns(UserWarning, match=r"50 heads \(--heads / heads=\) is more than the edit changes: all 1 edited"):
        result = token_amplification(seka, TEXTS[:2], 50, min_count=1, progress=False)
    assert [h.effect.key for h in result.heads] == [(0, 0)]
    with pytest.raises(InspectionError, match="masked off"):
        token_amplification(seka, TEXTS[:2], [(1, 1)], progress=False)
    result = token_amplification(seka, TEXTS[:2], [(1, 1)], min_count=1, progress=False,
                                 config=SteeringConfig(heads="all"))
    assert result.heads[0].effect.key == (1, 1) and result.heads[0].mean_ratio > 1
    none = tiny_model("qwen3", projection={"head_mask": [[False, False], [False, False]]})
    with pytest.raises(SteeringConfigError, match="selects no head"):  # refused where the edit is built
        token_amplification(none, TEXTS[:1], 3, progress=False)


def test_bad_arguments_give_clear_errors(tiny_model):
    seka = tiny_model("gemma3_text")
    bad = [
        (dict(top=0), InspectionError, "top must be a positive integer"),
        (dict(min_count=-1), InspectionError, "min_count"),
        (dict(batch_size=True), InspectionError, "batch_size"),
        (dict(texts="one text"), InspectionError, "list of strings"),
        (dict(texts=["ok", 3]), InspectionError, "entry 1"),
        (dict(texts=["", "  "]), InspectionError, "no texts"),
        (dict(heads=0), InspectionError, "heads must be a positive integer"),
        (dict(heads="all"), InspectionError, "heads must be"),
        (dict(heads=[(0, 0, 1)]), InspectionError, "pair"),
        (dict(heads=[(0, 7)]), InspectionError, "out of range"),
        (dict(heads=[(5, 0)]), SteeringConfigError, "not among the edited layers"),
        (dict(rank_by="best"), InspectionError, "rank_by"),
        (dict(config=SteeringConfig(gain_pos=float("nan"))), SteeringConfigError, "gain_pos"),
        (dict(config=SteeringConfig(layers=[9])), SteeringConfigError, "layer 9"),
    ]
    for kwargs, error, message in bad:
        kwargs = {"texts": TEXTS[:1], "progress": False, **kwargs}
        with pytest.raises(error, match=message) as info:
            token_amplification(seka, **kwargs)
        assert isinstance(info.value, SekaError)
    with pytest.raises(InspectionError, match="needs a Projection"):
        head_effects("projection.safetensors")
    with pytest.raises(InspectionError, match="no projection"):
        token_amplification(tiny_model("gemma3_text", projection=False), TEXTS[:1], progress=False)
    enc = seka.encode(TEXTS[0], chat=False, markers=None)
    with seka.steering(torch.ones(1, len(enc.input_ids), dtype=torch.bool)):
        with pytest.raises(InspectionError, match="outside a steering block"):
            token_amplification(seka, TEXTS[:1], progress=False)


# ---------------------------------------------------------------------------------------- output
def test_format_inspection_lists_heads_and_tokens(tiny_model):
    seka = tiny_model("llama", projection={"head_mask": [[True, False], [True, True]]})
    effects = head_effects(seka.projection)
    result = token_amplification(seka, TEXTS, 2, top=3, min_count=2, progress=False)
    text = format_inspection(result, effects)
    lines = text.splitlines()
    assert lines[0].startswith("SEKA key amplification — tiny-llama") and "g+ = 2, g- = 0.5" in lines[0]
    assert "heads ranked by rms gain" in text
    assert sum(line.endswith("masked") for line in lines) == 1
    for h in result.heads:
        e = h.effect
        assert any(line.startswith(f"layer {e.layer}, KV head {e.head}  (rank {e.rank}: rms gain {e.rms_gain:.4f}")
                   for line in lines)
        best = h.top[0]
        assert any(line.split() == [best.token, f"{best.mean_ratio:.4f}", f"{best.std_ratio:.4f}",
                                    f"{best.mean_pos_share:.3f}", str(best.count)] for line in lines)
    assert text.count("most amplified") == 2 and text.count("least amplified") == 2
    assert "heads ranked" not in format_inspection(result)  # without effects: token blocks only


def test_inspect_command(tiny_model, tmp_path, capsys):
    seka = tiny_model("qwen3")
    parser = argparse.ArgumentParser(prog="seka-rag")
    sub = parser.add_subparsers(dest="command", required=True)
    add_inspect_parser(sub, lambda p: p.add_argument("--model", default="tiny"))
    defaults = parser.parse_args(["inspect"])
    assert (defaults.heads, defaults.top, defaults.min_count, defaults.texts, defaults.json) == (6, 15, 3, None, None)
    assert defaults.func is inspect_main
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    out = tmp_path / "out" / "inspect.json"
    args = parser.parse_args(["inspect", "--heads", "2", "--top", "3", "--min-count", "2", "--texts", str(texts),
                              "--json", str(out), "--layers", "0-1", "--gain-pos", "3"])
    assert args.func(args, model=seka) == 0
    printed = capsys.readouterr().out
    assert "g+ = 3" in printed and f"texts: {texts}; 4 texts" in printed and f"wrote {out}" in printed
    payload = json.loads(out.read_text())
    assert payload["gain_pos"] == 3.0 and payload["texts"] == 4 and len(payload["heads"]) == 2
    assert len(payload["effects"]) == 4 and payload["heads"][0]["effect"]["rank"] == 1
    assert len(payload["heads"][0]["top"]) == 3
    with pytest.raises(SystemExit):  # the command line refuses it while parsing
        parser.parse_args(["inspect", "--top", "0"])
    bad = parser.parse_args(["inspect"])
    bad.top = 0  # a namespace built in code is checked by inspect_main itself
    with pytest.raises(InspectionError, match="--top"):
        inspect_main(bad, model=seka)
    missing = parser.parse_args(["inspect", "--texts", str(tmp_path / "none.txt")])
    with pytest.raises(InspectionError, match="cannot read texts"):
        inspect_main(missing, model=seka)
    assert isinstance(HeadEffect(0, 0, 0.0, 0.0, 0.0, 0.0, 0, 1.0, False).key, tuple)


def test_each_texts_first_token_is_left_out(tiny_model):
    seka = tiny_model("llama")
    ids = seka.encode(TEXTS[1], chat=False, markers=None).input_ids
    result = token_amplification(seka, [TEXTS[1]], [(0, 1)], top=5, min_count=1, skip_special=False, progress=False)
    assert result.heads[0].occurrences == len(ids) - 1  # position 0 (here the BOS token) is not measured


def test_top_and_bottom_stay_disjoint_when_few_tokens_qualify(tiny_model):
    """With fewer than 2·top distinct tokens, bottom holds only those not already in top."""
    seka = tiny_model("llama", projection=True)
    result = token_amplification(seka, ["The tower is in Paris."], 1, top=5, min_count=1, progress=False)
    h = result.heads[0]
    assert h.distinct < 10
    assert not {t.token for t in h.top} & {t.token for t in h.bottom}
    assert len(h.top) + len(h.bottom) == h.distinct
