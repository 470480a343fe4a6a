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
