"""The projection builder on tiny models: shapes, projector algebra, layer indices, δ, early stop."""

from __future__ import annotations

import pytest
import torch

from seka_rag import Projection, SekaError
from seka_rag.builder import BuildConfig, build_projection, collect_answer_keys, projections_from_keys
from seka_rag.data.triplets import generate_triplets


@pytest.fixture(scope="module")
def triplets():
    return generate_triplets(12, seed=3)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_build_gives_symmetric_idempotent_projectors(tiny_model, triplets, family):
    seka = tiny_model(family, projection=False)
    proj = build_projection(seka, triplets, BuildConfig(gamma=0.8, batch_size=5), progress=False)
    g = seka.geometry
    assert proj.pos.shape == (g.num_layers, g.num_kv_heads, g.head_dim, g.head_dim)
    assert proj.layers == list(range(g.num_layers))
    for p in (proj.pos, proj.neg):
        torch.testing.assert_close(p, p.transpose(-1, -2), atol=1e-5, rtol=0)
        torch.testing.assert_close(p @ p, p, atol=1e-4, rtol=0)
    # P+ keeps the top directions, P- the tail: together at most the full space per head
    rank_pos = torch.diagonal(proj.pos, dim1=-2, dim2=-1).sum(-1)
    rank_neg = torch.diagonal(proj.neg, dim1=-2, dim2=-1).sum(-1)
    assert (rank_pos >= 1 - 1e-4).all() and (rank_pos <= g.head_dim + 1e-4).all()
    assert (rank_neg <= g.head_dim - 1 + 1e-4).all()
    assert proj.meta.n_triplets > 0 and proj.meta.data_hash
    seka.load_projection(proj)  # fits the model it was built on


def test_layer_indices_are_kept_and_applied_by_index(tiny_model, triplets, tmp_path):
    seka = tiny_model("llama", projection=False, num_layers=3)
    proj = build_projection(seka, triplets, BuildConfig(layers=[2], batch_size=6), progress=False)
    assert proj.layers == [2] and proj.pos.shape[0] == 1
    loaded = Projection.load(proj.save(tmp_path / "p.safetensors"))
    assert loaded.layers == [2]
    torch.testing.assert_close(loaded.pos, proj.pos)


def test_key_collection_stops_after_the_last_needed_layer(tiny_model, triplets):
    seka = tiny_model("llama", projection=False, num_layers=3)
    calls = []
    handle = seka.model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        prompts = ["Context: the answer is \x01forty two\x02 today."]
        keys, counts = collect_answer_keys(seka, prompts, [0, 1], chat=False, progress=False)
    finally:
        handle.remove()
    assert not calls  # layer 2 never ran
    assert set(keys) == {0, 1} and keys[0].shape[0] == counts[0] > 0


def test_delta_masks_heads_with_small_key_shift():
    torch.manual_seed(0)
    h = torch.randn(2, 50, 2, 8)
    h_pos = h.clone()
    h_neg = h.clone()
    h_neg[:, :, 1] += 0.5 * torch.randn(2, 50, 8)  # only head 1 moves
    parts = projections_from_keys(h, h_pos, h_neg, gamma=0.9)
    shift = parts["head_shift"]
    assert (shift[:, 0] == 0).all() and (shift[:, 1] > 0.1).all()


def test_bad_build_settings(tiny_model, triplets):
    seka = tiny_model("llama", projection=False)
    with pytest.raises(SekaError, match="gamma"):
        build_projection(seka, triplets, BuildConfig(gamma=1.5), progress=False)
    with pytest.raises(SekaError, match="layer"):
        build_projection(seka, triplets, BuildConfig(layers=[7]), progress=False)
    with pytest.raises(SekaError, match="at least one triplet"):
        build_projection(seka, [], progress=False)


@pytest.mark.parametrize("settings, message", [
    (dict(gain_pos=float("nan")), "gain_pos must be a finite number"),
    (dict(gamma="0.9"), "gamma must be a finite number"),
    (dict(layers="12"), "layers must be a list of layer indices"),
    (dict(layers=[0], default_layers=[1]), "default_layers"),
    (dict(default_layers=[]), "default_layers"),
    (dict(chat="yes"), "chat must be"),
])
def test_build_settings_fail_before_any_key_is_collected(tiny_model, triplets, monkeypatch, settings, message):
    import seka_rag.builder as builder

    seka = tiny_model("llama", projection=False)
    monkeypatch.setattr(builder, "collect_answer_keys", lambda *a, **k: pytest.fail("keys were collected"))
    with pytest.raises(SekaError, match=message):
        build_projection(seka, triplets, BuildConfig(**settings), progress=False)


def test_builder_refuses_wrong_argument_types_and_another_models_template(tiny_model, triplets, helpers):
    from seka_rag.adaptive import Expert, ExpertSet
    from seka_rag.builder import build_expert_set, expert_set_like, settings_like

    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(SekaError, match="config must be a BuildConfig"):
        build_projection(seka, triplets, {"gamma": 0.8}, progress=False)
    with pytest.raises(SekaError, match="families must be a dict"):
        build_expert_set(seka, [triplets, triplets], progress=False)
    other = tiny_model("qwen2", num_layers=3)
    with pytest.raises(SekaError, match="not for this model"):
        settings_like(seka.projection, other.projection)
    with pytest.raises(SekaError, match="not for this model"):
        expert_set_like(ExpertSet([Expert("a", seka.projection)]), other.projection)
    from seka_rag import ProjectionError

    with pytest.raises(ProjectionError, match="does not fit"):
        build_expert_set(seka, {"a": triplets}, template=other.projection, prototypes=False, progress=False)


# Guards added after a mutation-testing review: each fails on a plausible bug the suite let through.
def _diag_keys(weights, n_layers=1):
    """Keys whose cross-covariance with themselves is diag(weights): n = d samples along the axes."""
    d = len(weights)
    x = torch.diag(torch.tensor(weights, dtype=torch.float32).sqrt() * d ** 0.5)  # X^T X / n = diag(w)
    return x[None, :, None, :].expand(n_layers, d, 1, d).clone()  # (layers, n, heads, d)


def test_gamma_cut_keeps_the_fewest_directions_reaching_the_share():
    h = _diag_keys([4.0, 3.0, 2.0, 1.0])  # cumulative shares 0.4, 0.7, 0.9, 1.0
    parts = projections_from_keys(h, h.clone(), h.clone(), gamma=0.65)
    # P+: the top directions up to the share (two), P-: the tail directions after it
    torch.testing.assert_close(parts["pos"][0, 0], torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0])), atol=1e-5, rtol=0)
    torch.testing.assert_close(parts["neg"][0, 0], torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0])), atol=1e-5, rtol=0)


def test_singular_values_are_of_the_mean_cross_covariance():
    torch.manual_seed(0)
    h, hp, hn = (torch.randn(1, 30, 2, 8) for _ in range(3))
    parts = projections_from_keys(h, hp, hn, gamma=0.9)
    torch.testing.assert_close(parts["s_pos"], torch.linalg.svdvals(torch.einsum("lnhd,lnhe->lhde", h, hp) / 30))
    torch.testing.assert_close(parts["s_neg"], torch.linalg.svdvals(torch.einsum("lnhd,lnhe->lhde", h, hn) / 30))
    # the router weighs experts by these: a set built from twice the samples must not weigh twice as much
    twice = projections_from_keys(*(torch.cat([t, t], 1) for t in (h, hp, hn)), gamma=0.9)
    torch.testing.assert_close(twice["s_pos"], parts["s_pos"])


def test_singular_vectors_point_the_way_the_mean_key_lies():
    torch.manual_seed(0)
    h = torch.randn(2, 40, 2, 8) + 3.0  # keys with a clear non-zero mean
    hp, hn = h + 0.1 * torch.randn_like(h), h + 0.1 * torch.randn_like(h)
    parts = projections_from_keys(h, hp, hn, gamma=0.9)
    assert (torch.einsum("lhdk,lhd->lhk", parts["u_pos"], hp.mean(1)) >= 0).all()
    assert (torch.einsum("lhdk,lhd->lhk", parts["u_neg"], hn.mean(1)) >= 0).all()
    assert torch.einsum("lhdk,lhd->lhk", parts["u_pos"], hp.mean(1))[..., 0].gt(0).all()


def test_delta_keeps_exactly_the_heads_that_move_enough(tiny_model, triplets):
    seka = tiny_model("llama", projection=False)
    built = build_projection(seka, triplets, BuildConfig(delta=0.0), progress=False)
    shifts = built.head_shift.flatten().sort().values
    delta = float((shifts[len(shifts) // 2 - 1] + shifts[len(shifts) // 2]) / 2)  # between two heads' shifts
    masked = build_projection(seka, triplets, BuildConfig(delta=delta), progress=False)
    assert torch.equal(masked.head_mask, masked.head_shift >= delta)
    assert 0 < int(masked.head_mask.sum()) < masked.head_mask.numel()  # some heads kept, some left alone
    assert torch.equal(masked.with_delta(0.0).head_mask, torch.ones_like(masked.head_mask))


def test_gamma_one_keeps_every_direction_whatever_the_rounding():
    # a float cumulative share may stop just short of 1: P+ must still take every direction
    torch.manual_seed(1)
    h, hp, hn = (torch.randn(2, 1, 3, 16) for _ in range(3))  # one answer token: rank-one covariances
    parts = projections_from_keys(h, hp, hn, gamma=1.0)
    eye = torch.eye(16).expand(2, 3, 16, 16)
    torch.testing.assert_close(parts["pos"], eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(parts["neg"], torch.zeros_like(eye), atol=1e-5, rtol=0)


def test_a_delta_that_keeps_no_head_is_said_at_build_time(tiny_model, triplets):
    seka = tiny_model("llama", projection=False)
    with pytest.warns(UserWarning, match=r"delta=100 keeps no head .* edits nothing as it stands"):
        build_projection(seka, triplets[:3], BuildConfig(delta=100.0), progress=False)


def test_the_answer_is_marked_in_the_context_even_when_the_question_holds_it(tiny_model, monkeypatch):
    import seka_rag.builder as builder
    from seka_rag.data.triplets import Triplet

    seen = []

    def spy(model, prompts, *args, **kwargs):  # the three views H, H+, H-: read all, then stop
        seen.extend(prompts)
        if len(seen) == 3:
            raise SekaError("stop here")
        return {}, [1]

    monkeypatch.setattr(builder, "collect_answer_keys", spy)
    triplet = Triplet("Paris", "Is the capital Paris?", "Paris", "Who wrote Hamlet?")
    with pytest.raises(SekaError, match="stop here"):
        build_projection(tiny_model("llama", projection=False), [triplet], BuildConfig(), progress=False)
    assert len(seen) == 3 and all(p.endswith("\x01Paris\x02") for p in seen)
    assert "capital Paris?" in seen[1]  # the question's own "Paris" is left alone


def test_an_expert_set_without_its_sentence_encoder_fails_before_any_build(tiny_model, triplets, monkeypatch):
    import seka_rag.builder as builder
    import seka_rag.embeddings as embeddings
    from seka_rag.builder import build_expert_set

    built = []
    monkeypatch.setattr(builder, "build_projection", lambda *a, **k: built.append(1))

    def missing():
        raise SekaError("the offline sentence-embedding model is not installed")

    monkeypatch.setattr(embeddings, "default_encoder", missing)
    with pytest.raises(SekaError, match="not installed"):
        build_expert_set(tiny_model("llama", projection=False), {"a": triplets[:2], "b": triplets[2:4]})
    assert built == []
