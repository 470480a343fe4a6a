"""The key edit, checked against hand computations on tiny models of every supported family."""

from __future__ import annotations

import inspect
import math
from contextlib import nullcontext

import pytest
import torch

from seka_rag import SekaError, SekaModel, SteeringConfigError, UnsupportedModelError, supported_model_types
from seka_rag.architectures import decoder_layers
from seka_rag.highlight import pad_batch
from seka_rag.steering import KeyEditor, SteeringConfig, active_edit_present, edit_matrices

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3")
DOCS = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"
PROMPTS = [
    DOCS,
    "Where is <<the tower>>?",
    "Alice met Bob in London on Monday; Carol met Dave in Berlin.",  # no highlight
]
PROMPT_HIGHLIGHTS = [None, None, ["Berlin"]]

family_param = pytest.mark.parametrize("family", FAMILIES)


@pytest.fixture(scope="module")
def shared(tiny_model):
    """Models that tests only read from, built once per (family, attention implementation)."""
    cache: dict = {}

    def get(family: str, attn: str = "sdpa") -> SekaModel:
        if (family, attn) not in cache:
            cache[(family, attn)] = tiny_model(family, attn)
        return cache[(family, attn)]

    return get


def encode_batch(seka: SekaModel, prompts, highlights=None, side="left"):
    highlights = highlights or [None] * len(prompts)
    rows = [seka.encode(p, h) for p, h in zip(prompts, highlights)]
    return rows, pad_batch(rows, seka.tokenizer.pad_token_id, side=side)


@torch.no_grad()
def forward_logits(seka: SekaModel, batch, *, hooked: bool = True, **steer) -> torch.Tensor:
    """Full logits of a (left-padded) batch; ``hooked=False`` bypasses SekaModel.steering entirely."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with seka.steering(batch.highlight_mask, **steer) if hooked else nullcontext():
        return seka.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask,
            position_ids=position_ids, use_cache=False,
        ).logits


def capture_generate(seka: SekaModel, monkeypatch) -> list:
    """Record the token ids ``seka.model.generate`` returns."""
    calls = []
    original = seka.model.generate

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((kwargs["input_ids"].shape[1], out))
        return out

    monkeypatch.setattr(seka.model, "generate", wrapper)
    return calls


def new_tokens(calls) -> list[list[int]]:
    out = []
    for prompt_len, ids in calls:
        out.extend(ids[:, prompt_len:].tolist())
    return out


# ---------------------------------------------------------------------------------------- the edit itself
@family_param
def test_edit_touches_exactly_the_highlighted_keys(family, shared, helpers):
    seka = shared(family)
    rows, batch = encode_batch(seka, PROMPTS[:2])
    hl = batch.highlight_mask
    assert hl.any() and not hl.all()
    with helpers.record_keys(seka) as calls, torch.no_grad(), seka.steering(hl):
        seka.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    assert sorted(calls) == list(range(seka.geometry.num_layers))
    for layer, recorded in calls.items():
        assert len(recorded) == 1, "each layer's key module runs once per forward"
        raw, edited = recorded[0]
        assert raw.shape == (2, batch.input_ids.shape[1], seka.geometry.num_kv_heads, seka.geometry.head_dim)
        # untouched positions: bit-identical
        assert torch.equal(edited[~hl], raw[~hl])
        # highlighted positions: k + M k, with M computed independently
        m = helpers.edit_matrix(seka.projection, layer)
        expected = raw + torch.einsum("bthd,hed->bthe", raw, m)
        torch.testing.assert_close(edited[hl], expected[hl], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(edited[hl], raw[hl])


@family_param
def test_no_edit_outside_the_steering_block(family, shared, helpers):
    seka = shared(family)
    _, batch = encode_batch(seka, PROMPTS[:1])
    with seka.steering(batch.highlight_mask):
        assert active_edit_present()
    assert not active_edit_present()
    with helpers.record_keys(seka) as calls, torch.no_grad():
        seka.model(input_ids=batch.input_ids, use_cache=False)
    for recorded in calls.values():
        raw, edited = recorded[0]
        assert torch.equal(raw, edited)


@family_param
def test_zero_gains_equal_unsteered(family, shared):
    seka = shared(family)
    _, batch = encode_batch(seka, PROMPTS, PROMPT_HIGHLIGHTS)
    plain = forward_logits(seka, batch, hooked=False)
    zero = forward_logits(seka, batch, gain_pos=0.0, gain_neg=0.0)
    steered = forward_logits(seka, batch)
    valid = batch.attention_mask.bool()
    assert torch.equal(zero[valid], plain[valid])
    assert not torch.allclose(steered[valid], plain[valid], atol=1e-4)


@family_param
def test_steer_false_equals_unsteered(family, shared):
    seka = shared(family)
    _, batch = encode_batch(seka, PROMPTS, PROMPT_HIGHLIGHTS)
    plain = forward_logits(seka, batch, hooked=False)
    off = forward_logits(seka, batch, steer=False)
    valid = batch.attention_mask.bool()
    assert torch.equal(off[valid], plain[valid])
    assert seka.score(DOCS, ["Rome", "Paris"], steer=False) == seka.score(DOCS, ["Rome", "Paris"], gain_pos=0, gain_neg=0)
    assert seka.generate(DOCS, max_new_tokens=5, steer=False) == seka.generate(DOCS.replace("<<", "").replace(">>", ""), max_new_tokens=5)


@family_param
def test_only_the_key_tensor_is_edited_no_highlight_no_change(family, shared):
    # a prompt without highlights is a no-op, even with steer=True
    seka = shared(family)
    _, batch = encode_batch(seka, PROMPTS[2:])
    assert not batch.highlight_mask.any()
    assert torch.equal(forward_logits(seka, batch), forward_logits(seka, batch, hooked=False))


# ---------------------------------------------------------------------------------------- reference attention
def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(seka: SekaModel):
    found = [m for m in seka.model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    assert len(found) == 1, found
    return found[0]


@torch.no_grad()
def reference_attention(seka, layer_index, hidden, highlight, matrix):
    """One attention layer computed by hand: q, k, v from the weights; keys edited before RoPE."""
    attn = decoder_layers(seka.model)[layer_index].self_attn
    g = seka.geometry
    b, t, _ = hidden.shape
    q = attn.q_proj(hidden).view(b, t, g.num_query_heads, g.head_dim)
    k = attn.k_proj(hidden).view(b, t, g.num_kv_heads, g.head_dim)
    v = attn.v_proj(hidden).view(b, t, g.num_kv_heads, g.head_dim)
    if hasattr(attn, "k_norm"):  # qwen3 / gemma3: per-head RMSNorm before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    w = highlight.to(k.dtype)[:, :, None, None]
    k = k + w * torch.einsum("bthd,hed->bthe", k, matrix)  # the SEKA edit, by hand
    position_ids = torch.arange(t)[None].expand(b, t)
    rotary = _rotary(seka)
    if "layer_type" in inspect.signature(rotary.forward).parameters:  # gemma3: one table per layer type
        cos, sin = rotary(hidden, position_ids, attn.layer_type)
    else:
        cos, sin = rotary(hidden, position_ids)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (b, heads, t, d)
    cos, sin = cos[:, None], sin[:, None]
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    rep = g.num_query_heads // g.num_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))


@family_param
@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_attention_matches_hand_computation(family, attn_impl, shared, helpers):
    seka = shared(family, attn_impl)
    enc = seka.encode(DOCS)
    ids = torch.tensor([enc.input_ids])
    hl = torch.tensor([enc.highlight])
    inputs, outputs = {}, {}
    handles = []
    for i, layer in enumerate(decoder_layers(seka.model)):
        def pre(mod, args, kwargs, i=i):
            inputs[i] = (kwargs.get("hidden_states", args[0] if args else None)).detach().clone()

        def post(mod, args, out, i=i):
            outputs[i] = out[0].detach().clone()

        handles.append(layer.self_attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(post))
    try:
        with torch.no_grad(), seka.steering(hl):
            seka.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    for i in range(seka.geometry.num_layers):
        ref = reference_attention(seka, i, inputs[i], hl, helpers.edit_matrix(seka.projection, i))
        torch.testing.assert_close(outputs[i], ref, rtol=1e-4, atol=1e-5)
        # and the edit matters: without it the reference differs
        zero = torch.zeros_like(helpers.edit_matrix(seka.projection, i))
        assert not torch.allclose(reference_attention(seka, i, inputs[i], hl, zero), ref, atol=1e-4)


# ---------------------------------------------------------------------------------------- generation
@family_param
def test_cached_generation_equals_uncached_loop(family, shared, monkeypatch):
    seka = shared(family)
    n_new = 6
    calls = capture_generate(seka, monkeypatch)
    text = seka.generate(DOCS, max_new_tokens=n_new)
    generated = new_tokens(calls)[0]
    assert len(generated) == n_new

    enc = seka.encode(DOCS, max_length=seka.context_window - n_new)
    ids = torch.tensor([enc.input_ids])
    hl = torch.tensor([enc.highlight])
    manual = []
    for _ in range(n_new):
        with torch.no_grad(), seka.steering(hl):
            logits = seka.model(input_ids=ids, use_cache=False).logits[:, -1]
        nxt = logits.argmax(-1)
        manual.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        hl = torch.cat([hl, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
    assert generated == manual
    assert text == seka.tokenizer.decode(manual, skip_special_tokens=True)


@family_param
def test_left_padded_batch_equals_one_by_one(family, shared, monkeypatch):
    seka = shared(family)
    rows, batch = encode_batch(seka, PROMPTS, PROMPT_HIGHLIGHTS)
    assert len({len(r.input_ids) for r in rows}) == 3, "prompts must differ in length to test padding"
    together = forward_logits(seka, batch)
    for i, row in enumerate(rows):
        single = pad_batch([row], seka.tokenizer.pad_token_id)
        alone = forward_logits(seka, single)
        n = len(row.input_ids)
        torch.testing.assert_close(together[i, -n:], alone[0], rtol=1e-4, atol=1e-4)

    calls = capture_generate(seka, monkeypatch)
    batched = seka.generate(PROMPTS, PROMPT_HIGHLIGHTS, max_new_tokens=5)
    batched_ids = new_tokens(calls)
    calls.clear()
    alone = [seka.generate(p, h, max_new_tokens=5) for p, h in zip(PROMPTS, PROMPT_HIGHLIGHTS)]
    assert batched == alone
    assert batched_ids == new_tokens(calls)
    # batch_size=1 and batch_size=2 (a partial last batch) agree as well
    assert seka.generate(PROMPTS, PROMPT_HIGHLIGHTS, max_new_tokens=5, batch_size=2) == alone


@family_param
def test_sdpa_matches_eager(family, shared):
    sdpa, eager = shared(family, "sdpa"), shared(family, "eager")
    for seka, impl in ((sdpa, "sdpa"), (eager, "eager")):
        attn = decoder_layers(seka.model)[0].self_attn
        assert attn.config._attn_implementation == impl
    _, b1 = encode_batch(sdpa, PROMPTS, PROMPT_HIGHLIGHTS)
    _, b2 = encode_batch(eager, PROMPTS, PROMPT_HIGHLIGHTS)
    assert torch.equal(b1.input_ids, b2.input_ids)
    valid = b1.attention_mask.bool()
    torch.testing.assert_close(forward_logits(sdpa, b1)[valid], forward_logits(eager, b2)[valid], rtol=1e-4, atol=1e-4)
    assert sdpa.generate(DOCS, max_new_tokens=5) == eager.generate(DOCS, max_new_tokens=5)
    s1, s2 = sdpa.score(DOCS, ["Rome", "Paris"]), eager.score(DOCS, ["Rome", "Paris"])
    assert s1 == pytest.approx(s2, abs=1e-3)


@family_param
def test_stream_equals_generate(family, shared):
    seka = shared(family)
    pieces = list(seka.stream(DOCS, max_new_tokens=6))
    assert "".join(pieces) == seka.generate(DOCS, max_new_tokens=6)
    assert not active_edit_present()


# ---------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def manual_score(seka, prompt, continuation, highlights=None, steer=True):
    enc = seka.encode(prompt, highlights)
    cont = seka.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([enc.input_ids + cont])
    hl = torch.tensor([enc.highlight + [False] * len(cont)])
    with seka.steering(hl, steer=steer):
        logits = seka.model(input_ids=ids, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(enc.input_ids)
    return sum(float(logp[start - 1 + j, tok]) for j, tok in enumerate(cont))


@family_param
def test_score_equals_manual_log_probs(family, shared):
    seka = shared(family)
    conts = ["Rome", " Paris is", "The tower is in Rome."]
    for steer in (True, False):
        got = seka.score(DOCS, conts, steer=steer)
        want = [manual_score(seka, DOCS, c, steer=steer) for c in conts]
        assert got == pytest.approx(want, abs=1e-4)
        assert seka.score(DOCS, conts, steer=steer, batch_size=1) == pytest.approx(got, abs=1e-4)
    assert seka.score(DOCS, conts) != pytest.approx(seka.score(DOCS, conts, steer=False), abs=1e-4)
    assert all(s < 0 for s in seka.score(DOCS, conts))


def test_score_with_highlights_argument(shared):
    seka = shared("qwen2")
    plain = DOCS.replace("<<", "").replace(">>", "")
    assert seka.score(plain, ["Rome"], ["The tower is in Rome."]) == pytest.approx(seka.score(DOCS, ["Rome"]), abs=1e-6)


@pytest.mark.parametrize("bad", ["Rome", [], [""], [3], None])
def test_score_rejects_bad_continuations(shared, bad):
    with pytest.raises(SekaError):
        shared("llama").score(DOCS, bad)


# ---------------------------------------------------------------------------------------- per-call settings
def _edited_layers_and_heads(seka, helpers, **steer):
    """{layer: [heads whose highlighted keys changed]} for one steered forward pass."""
    _, batch = encode_batch(seka, [DOCS])
    hl = batch.highlight_mask
    with helpers.record_keys(seka) as calls, torch.no_grad(), seka.steering(hl, **steer):
        seka.model(input_ids=batch.input_ids, use_cache=False)
    out = {}
    for layer, recorded in calls.items():
        raw, edited = recorded[0]
        assert torch.equal(raw[~hl], edited[~hl])
        heads = [h for h in range(raw.shape[2]) if not torch.equal(raw[hl][:, h], edited[hl][:, h])]
        if heads:
            out[layer] = heads
    return out, calls, hl


def test_default_layers_and_heads(tiny_model, helpers):
    seka = tiny_model("llama", num_layers=3, projection=dict(head_mask=[[True, False], [False, True], [True, True]]))
    edited, _, _ = _edited_layers_and_heads(seka, helpers)
    assert edited == {0: [0], 1: [1], 2: [0, 1]}


def test_layers_override(tiny_model, helpers):
    seka = tiny_model("qwen3", num_layers=3)
    assert _edited_layers_and_heads(seka, helpers, layers=[1])[0] == {1: [0, 1]}
    assert _edited_layers_and_heads(seka, helpers, layers=[0, 2])[0] == {0: [0, 1], 2: [0, 1]}
    with pytest.raises(SteeringConfigError, match="layers is empty"):
        _edited_layers_and_heads(seka, helpers, layers=[])
    with pytest.raises(SteeringConfigError, match="selects no head"):
        _edited_layers_and_heads(seka, helpers, layers=[1], heads={1: []})
    with pytest.raises(SteeringConfigError, match="selects no head"):
        _edited_layers_and_heads(seka, helpers, heads={})
    # overrides do not stick
    assert _edited_layers_and_heads(seka, helpers)[0] == {0: [0, 1], 1: [0, 1], 2: [0, 1]}


def test_projection_default_layers(tiny_model, helpers):
    seka = tiny_model("gemma3_text", num_layers=3, projection=dict(default_layers=[2]))
    assert _edited_layers_and_heads(seka, helpers)[0] == {2: [0, 1]}
    assert _edited_layers_and_heads(seka, helpers, layers=[0, 1, 2])[0] == {0: [0, 1], 1: [0, 1], 2: [0, 1]}


def test_projection_covering_some_layers(tiny_model, helpers):
    seka = tiny_model("mistral", num_layers=3, projection=dict(layers=[2, 0]))
    assert seka.projection.row(2) == 0 and seka.projection.row(0) == 1
    edited, calls, hl = _edited_layers_and_heads(seka, helpers)
    assert edited == {0: [0, 1], 2: [0, 1]}
    raw, out = calls[2][0]
    m = helpers.edit_matrix(seka.projection, 2)  # the row of layer 2, not row 2
    torch.testing.assert_close(out[hl], (raw + torch.einsum("bthd,hed->bthe", raw, m))[hl], rtol=1e-5, atol=1e-5)
    with pytest.raises(SteeringConfigError, match="not in this projection"):
        _edited_layers_and_heads(seka, helpers, layers=[1])


def test_heads_override(tiny_model, helpers):
    seka = tiny_model("qwen2", projection=dict(head_mask=[[True, False], [False, False]]))
    assert _edited_layers_and_heads(seka, helpers)[0] == {0: [0]}
    assert _edited_layers_and_heads(seka, helpers, heads="all")[0] == {0: [0, 1], 1: [0, 1]}
    assert _edited_layers_and_heads(seka, helpers, heads={0: [1]})[0] == {0: [1]}
    assert _edited_layers_and_heads(seka, helpers, heads={1: [0, 1]})[0] == {1: [0, 1]}
    # a heads= entry for a layer that is not edited is a mistake, not a silent no-op
    with pytest.raises(SteeringConfigError, match="not among the edited layers"):
        _edited_layers_and_heads(seka, helpers, heads={0: [1]}, layers=[1])


def test_gain_override(shared, helpers):
    seka = shared("gemma3")
    edited, calls, hl = _edited_layers_and_heads(seka, helpers, gain_pos=1.5, gain_neg=-0.25)
    for layer, recorded in calls.items():
        raw, out = recorded[0]
        m = helpers.edit_matrix(seka.projection, layer, gain_pos=1.5, gain_neg=-0.25)
        torch.testing.assert_close(out[hl], (raw + torch.einsum("bthd,hed->bthe", raw, m))[hl], rtol=1e-5, atol=1e-5)
    # only one gain overridden: the other keeps the projection's default
    _, calls, hl = _edited_layers_and_heads(seka, helpers, gain_neg=0)
    raw, out = calls[0][0]
    m = helpers.edit_matrix(seka.projection, 0, gain_neg=0.0)
    torch.testing.assert_close(out[hl], (raw + torch.einsum("bthd,hed->bthe", raw, m))[hl], rtol=1e-5, atol=1e-5)


def test_explicit_default_gains_equal_defaults(shared):
    seka = shared("llama")
    meta = seka.projection.meta
    a = seka.score(DOCS, ["Rome", "Paris"])
    b = seka.score(DOCS, ["Rome", "Paris"], gain_pos=meta.gain_pos, gain_neg=meta.gain_neg)
    c = seka.score(DOCS, ["Rome", "Paris"], gain_pos=meta.gain_pos + 1)
    assert a == b and a != c
    assert seka.score(DOCS, ["Rome", "Paris"]) == a  # the override did not persist


def test_edit_matrices_formula(shared, helpers):
    seka = shared("llama")
    p = seka.projection
    out = edit_matrices(p, SteeringConfig(gain_pos=3.0, gain_neg=1.0))
    assert sorted(out) == p.layers
    for layer in p.layers:
        r = p.row(layer)
        torch.testing.assert_close(out[layer], (3.0 * p.pos[r] + 1.0 * p.neg[r]) / 2)
        torch.testing.assert_close(out[layer], helpers.edit_matrix(p, layer, gain_pos=3.0, gain_neg=1.0))


def test_layer_scale_multiplies_the_edit(tiny_model, helpers):
    import dataclasses

    from seka_rag import Projection

    if "layer_scale" not in {f.name for f in dataclasses.fields(Projection)}:
        pytest.skip("this version of Projection has no per-layer scale")
    seka = tiny_model("qwen3", projection=dict(layer_scale=torch.tensor([0.5, 3.0])))
    _, calls, hl = _edited_layers_and_heads(seka, helpers)
    for layer, recorded in calls.items():
        raw, out = recorded[0]
        scale = [0.5, 3.0][layer]
        m = scale * (2.0 * seka.projection.pos[layer] + 0.5 * seka.projection.neg[layer]) / 2
        torch.testing.assert_close(out[hl], (raw + torch.einsum("bthd,hed->bthe", raw, m))[hl], rtol=1e-5, atol=1e-5)


def test_stop_strings_cut_the_output(shared):
    seka = shared("llama")
    full = seka.generate(DOCS, max_new_tokens=8)
    assert len(full) >= 3
    for stop in (full[2], full[2:4]):
        cut = seka.generate(DOCS, max_new_tokens=8, stop=[stop])
        assert cut == full[: full.index(stop)]
    assert "".join(seka.stream(DOCS, max_new_tokens=8, stop=[full[2]])) == full[:2]


def test_stream_holds_back_a_partial_stop_string(shared):
    # BUG: stream() yields each piece as soon as it arrives, so when a stop string spans two pieces
    # (here ' a', 'w', 'n' with stop='wn'), the first half ('w') has already been yielded by the time
    # the stop string is complete: the streamed text differs from generate() with the same stop.
    seka = shared("llama")
    pieces = list(seka.stream(DOCS, max_new_tokens=8))
    assert len(pieces) >= 3 and len(pieces[1]) == 1 and len(pieces[2]) == 1, pieces
    stop = pieces[1] + pieces[2]  # spans two streamed pieces
    expected = seka.generate(DOCS, max_new_tokens=8, stop=[stop])
    assert "".join(seka.stream(DOCS, max_new_tokens=8, stop=[stop])) == expected


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gain_pos=float("nan")),
        dict(gain_pos=float("inf")),
        dict(gain_neg=-float("inf")),
        dict(gain_pos="2"),
        dict(gain_neg=True),
        dict(layers=[5]),
        dict(layers=[-1]),
        dict(layers=[0, 7]),
        dict(heads={0: [2]}),
        dict(heads={0: [-1]}),
        dict(heads={9: [0]}),
        dict(heads="some"),
        dict(heads=[0, 1]),
        dict(steer="yes"),
        dict(steer=1),
    ],
)
def test_bad_steering_settings(shared, kwargs):
    seka = shared("llama")
    with pytest.raises(SteeringConfigError):
        seka.generate(DOCS, max_new_tokens=1, **kwargs)
    with pytest.raises(SteeringConfigError):
        seka.score(DOCS, ["Rome"], **kwargs)
    # refused even when the prompt highlights nothing, so mistakes do not hide
    with pytest.raises(SteeringConfigError):
        seka.generate("no highlight here", max_new_tokens=1, **kwargs)
    assert not active_edit_present()


def test_error_messages_are_clear(shared):
    seka = shared("llama")
    with pytest.raises(SteeringConfigError, match="gain_pos must be a finite number"):
        seka.generate(DOCS, max_new_tokens=1, gain_pos=math.nan)
    with pytest.raises(SteeringConfigError, match=r"layer 5 is not in this projection .*\[0, 1\]"):
        seka.generate(DOCS, max_new_tokens=1, layers=[5])
    with pytest.raises(SteeringConfigError, match=r"head 2 of layer 0 is out of range \(0..1\)"):
        seka.generate(DOCS, max_new_tokens=1, heads={0: [2]})


def test_highlight_without_projection(tiny_model):
    seka = tiny_model("llama", projection=False)
    with pytest.raises(SekaError, match="no projection"):
        seka.generate(DOCS, max_new_tokens=1)
    # nothing highlighted, or steering off: works without a projection
    plain = DOCS.replace("<<", "").replace(">>", "")
    assert seka.generate(plain, max_new_tokens=2) == seka.generate(DOCS, max_new_tokens=2, steer=False)


def test_max_new_tokens_must_be_positive(shared):
    with pytest.raises(SekaError):
        shared("llama").generate(DOCS, max_new_tokens=0)


def test_sampling_settings_are_checked_and_never_silently_dropped(shared):
    seka = shared("llama")
    for bad in (dict(top_p=5.0), dict(top_p=0), dict(temperature=-1.0), dict(temperature="hot")):
        with pytest.raises(SekaError, match="top_p|temperature"):
            seka.generate(DOCS, max_new_tokens=1, **bad)
    with pytest.raises(SekaError, match="positive number when sampling"):
        seka.generate(DOCS, max_new_tokens=1, do_sample=True, temperature=0)
    greedy = seka.generate(DOCS, max_new_tokens=3)
    with pytest.warns(UserWarning, match="temperature only applies when sampling"):
        assert seka.generate(DOCS, max_new_tokens=3, temperature=0.7) == greedy
    with pytest.warns(UserWarning, match="top_p only applies when sampling"):
        assert "".join(seka.stream(DOCS, max_new_tokens=3, top_p=0.9)) == greedy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seka.generate(DOCS, max_new_tokens=3, temperature=0) == greedy  # 0 means greedy: no warning


def test_prompt_and_marker_types_are_checked(shared):
    from seka_rag import HighlightError, Markers

    seka = shared("llama")
    for bad in (None, 123, b"bytes", {"role": "user", "content": "hi"}):
        with pytest.raises(HighlightError, match="prompt must be a string"):
            seka.generate(bad, max_new_tokens=1)
    with pytest.raises(HighlightError, match="markers must be a Markers"):
        seka.generate(DOCS, max_new_tokens=1, markers="[[")
    assert seka.generate([], max_new_tokens=1) == []  # an empty batch
    marked = DOCS.replace("<<", "[[").replace(">>", "]]")
    assert seka.generate(marked, max_new_tokens=2, markers=Markers("[[", "]]")) == seka.generate(DOCS, max_new_tokens=2)


def test_from_pretrained_sends_hub_arguments_to_config_tokenizer_and_weights(shared, tmp_path, monkeypatch):
    import transformers

    seka = shared("llama")
    seka.model.save_pretrained(tmp_path / "m")
    seka.tokenizer.save_pretrained(tmp_path / "m")
    seen: dict[str, dict] = {}
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def record(source, *args, _name=cls.__name__, _original=original, **kwargs):
            seen.setdefault(_name, kwargs)  # the first call: AutoModel reads the config again itself
            return _original(source, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    loaded = SekaModel.from_pretrained(tmp_path / "m", revision="main", local_files_only=True,
                                       cache_dir=tmp_path / "hub", low_cpu_mem_usage=True)
    assert loaded.model.config.num_hidden_layers == seka.model.config.num_hidden_layers
    hub = dict(revision="main", local_files_only=True, cache_dir=str(tmp_path / "hub"))
    assert seen["AutoConfig"] == hub and seen["AutoTokenizer"] == hub
    assert seen["AutoModelForCausalLM"].items() >= {**hub, "low_cpu_mem_usage": True}.items()
    with pytest.raises(SekaError, match="GGUF files are not downloaded"):
        SekaModel.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct-GGUF", gguf_file="qwen2.5-0.5b-instruct-q4_k_m.gguf")


@pytest.mark.parametrize("max_new_tokens", [32, 40])
def test_max_new_tokens_beyond_context_window(tiny_model, max_new_tokens):
    # BUG: with max_new_tokens >= context_window the prompt budget is 0 or negative; 0 is treated as
    # "no limit" and a negative budget empties the prompt (a RuntimeError deep inside the model, or a
    # misleading "every highlighted token was truncated away ... window (-8 tokens)").
    seka = tiny_model("llama", context_window=32)
    with pytest.raises(SekaError, match="max_new_tokens"):
        seka.generate("Where is the tower?", max_new_tokens=max_new_tokens)


# ---------------------------------------------------------------------------------------- architectures
def _tiny_unsupported(name: str, vocab: int):
    import transformers as tf

    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    return tf.PhiForCausalLM(
        tf.PhiConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, max_position_embeddings=64)
    )


@pytest.mark.parametrize("name", ["gpt2", "phi"])
def test_unsupported_architecture(name, tokenizer):
    model = _tiny_unsupported(name, len(tokenizer))
    with pytest.raises(UnsupportedModelError) as info:
        SekaModel(model, tokenizer)
    msg = str(info.value)
    assert repr(name) in msg
    for supported in supported_model_types():
        assert supported in msg
    assert set(supported_model_types()) == set(FAMILIES)


def test_key_editor_on_a_bare_base_model(tiny_model, helpers):
    # a base model without LM head (Qwen2Model) holds its layers directly; the editor still finds them
    seka = tiny_model("qwen2")
    base = seka.model.model
    editor = KeyEditor(base)
    try:
        assert editor.geometry.num_layers == seka.geometry.num_layers
        ids = torch.tensor([seka.encode(DOCS).input_ids])
        hl = torch.tensor([seka.encode(DOCS).highlight])
        mats = {i: helpers.edit_matrix(seka.projection, i) for i in seka.projection.layers}
        with torch.no_grad():
            plain = base(input_ids=ids, use_cache=False).last_hidden_state
            with editor.apply(mats, hl):
                steered = base(input_ids=ids, use_cache=False).last_hidden_state
            with seka.steering(hl):  # seka's own editor sits on the same modules: same result
                via_seka = base(input_ids=ids, use_cache=False).last_hidden_state
        assert not torch.allclose(plain, steered)
        torch.testing.assert_close(steered, via_seka, rtol=0, atol=0)
    finally:
        editor.remove()
    with pytest.raises(ValueError):
        with editor.apply({}, torch.zeros(3, dtype=torch.bool)):
            pass


def test_a_negative_gain_that_flips_the_keys_warns(tiny_model):
    import warnings

    seka = tiny_model("llama", num_layers=2)
    prompt = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"
    scale = float(seka.projection.layer_scale.max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # down to -2 / scale: a weaker highlight, no warning
        seka.score(prompt, ["Rome"], gain_pos=-1.9 / scale, gain_neg=0.0)
    with pytest.warns(UserWarning, match="turn part of the keys around.*not a weaker highlight") as caught:
        seka.score(prompt, ["Rome"], gain_pos=-4 / scale, gain_neg=0.0)
    assert caught[0].filename == __file__


def test_two_negative_gains_that_flip_together_warn(tiny_model):
    import warnings
    from dataclasses import replace

    from seka_rag.steering import SteeringConfig, edit_matrices

    seka = tiny_model("llama", num_layers=2)
    proj = replace(seka.projection, neg=seka.projection.pos.clone())  # P- = P+: the two edits overlap fully
    g = -1.9 / float(proj.layer_scale.max())  # each alone weakens only (factor 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edit_matrices(proj, SteeringConfig(gain_pos=g, gain_neg=0.0))
        edit_matrices(proj, SteeringConfig(gain_pos=0.0, gain_neg=g))
    with pytest.warns(UserWarning, match="turn part of the keys around"):  # together: factor 1 - 1.9 < 0
        edit_matrices(proj, SteeringConfig(gain_pos=g, gain_neg=g))


def test_edited_layers_use_their_own_row_of_head_mask_and_scale(tiny_model, helpers):
    # a projection whose default layers are not its first rows (a mutation-testing review found that
    # reading the mask or the per-layer scale from the wrong row went unnoticed)
    seka = tiny_model("llama", num_layers=3)
    p = helpers.random_projection(seka.geometry, default_layers=[2],
                                  head_mask=[[True, True], [True, True], [False, True]],
                                  layer_scale=torch.tensor([1.0, 1.0, 3.0]))
    out = edit_matrices(p)
    assert list(out) == [2]
    torch.testing.assert_close(out[2], helpers.edit_matrix(p, 2))
    assert out[2][0].abs().max() == 0  # head 0 of layer 2 is masked
    out = edit_matrices(p, SteeringConfig(layers=[2, 0]))
    torch.testing.assert_close(out[2], helpers.edit_matrix(p, 2))
    torch.testing.assert_close(out[0], helpers.edit_matrix(p, 0))


def test_wrapping_one_model_again_and_again_does_not_pile_up_hooks(tiny_model, helpers):
    import gc

    from seka_rag import SekaModel

    seka = tiny_model("llama")
    key_module = helpers.key_modules(seka)[0]
    hooks = len(key_module._forward_hooks)
    expected = seka.score(DOCS, ["Rome"])
    for _ in range(20):
        SekaModel(seka.model, seka.tokenizer, seka.projection, model_id=seka.model_id)
    gc.collect()
    again = SekaModel(seka.model, seka.tokenizer, seka.projection, model_id=seka.model_id)
    assert len(key_module._forward_hooks) == hooks
    assert again.score(DOCS, ["Rome"]) == pytest.approx(expected, abs=1e-6)  # edited once, not twice


def test_the_shared_hooks_come_back_after_a_removal_a_module_swap_or_a_deep_copy(tiny_model, helpers):
    import copy

    from seka_rag import SekaModel

    seka = tiny_model("llama")
    steered, plain = seka.score(DOCS, ["Rome"]), seka.score(DOCS, ["Rome"], steer=False)
    assert steered != pytest.approx(plain, abs=1e-6)
    # another wrapper of the model takes the (shared) hooks away: the next edit puts them back
    SekaModel(seka.model, seka.tokenizer, seka.projection, model_id=seka.model_id)._editor.remove()
    assert seka.score(DOCS, ["Rome"]) == pytest.approx(steered, abs=1e-6)
    # key modules swapped for equal new ones: the hooks move to the new modules
    for layer in seka.model.model.layers:
        old = layer.self_attn.k_proj
        layer.self_attn.k_proj = torch.nn.Linear(old.in_features, old.out_features, bias=old.bias is not None)
        layer.self_attn.k_proj.load_state_dict(old.state_dict())
    assert seka.score(DOCS, ["Rome"]) == pytest.approx(steered, abs=1e-6)
    # a deep copy steers with hooks of its own, and the original keeps its own
    twin = copy.deepcopy(seka)
    assert twin.score(DOCS, ["Rome"]) == pytest.approx(steered, abs=1e-6)
    assert seka.score(DOCS, ["Rome"]) == pytest.approx(steered, abs=1e-6)
    for model in (seka, twin):
        assert all(len(m._forward_hooks) == 1 for m in helpers.key_modules(model))


def test_a_wrapped_model_pickles_and_steers_again_when_wrapped(tiny_model, helpers):
    import pickle

    from seka_rag import SekaModel

    seka = tiny_model("llama")
    steered = seka.score(DOCS, ["Rome"])
    copy_of_model = pickle.loads(pickle.dumps(seka.model))  # torch.save of a whole module pickles it too
    again = SekaModel(copy_of_model, seka.tokenizer, seka.projection, model_id=seka.model_id)
    assert again.score(DOCS, ["Rome"]) == pytest.approx(steered, abs=1e-6)
    assert all(len(m._forward_hooks) == 1 for m in helpers.key_modules(again))  # the inert copies are gone


def test_two_threads_putting_the_hooks_back_at_once_install_them_once(tiny_model, monkeypatch):
    import threading

    from torch.utils.hooks import RemovableHandle

    seka = tiny_model("llama")
    editor = seka._editor
    editor.remove()
    both_checked, real_lock = threading.Barrier(2), threading.Lock()

    class GatedLock:  # both threads have found no hooks before either takes the lock
        def __enter__(self):
            both_checked.wait(timeout=10)
            real_lock.acquire()

        def __exit__(self, *exc):
            real_lock.release()

    removed = []
    real_remove = RemovableHandle.remove
    monkeypatch.setattr(editor, "_lock", GatedLock())
    monkeypatch.setattr(RemovableHandle, "remove", lambda h: (removed.append(h), real_remove(h)))
    threads = [threading.Thread(target=editor.install) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert removed == []  # the second thread left the first one's fresh hooks (a forward may run on them)
    assert len(editor._handles) == 2 * seka.geometry.num_layers


def test_a_model_that_is_gone_leaves_no_routing_behind(tiny_model, helpers):
    import contextvars
    import gc

    from seka_rag import SekaModel
    from seka_rag.adaptive import Expert, ExpertSet

    seka = tiny_model("llama")
    experts = ExpertSet([Expert(f"e{i}", helpers.random_projection(seka.geometry, seed=i, model_id=seka.model_id))
                         for i in range(2)])
    before = len(contextvars.copy_context())
    for _ in range(5):
        wrapper = SekaModel(seka.model, seka.tokenizer, model_id=seka.model_id, experts=experts)
        wrapper.score("Where is <<the tower>>?", ["Rome"])
        assert wrapper.last_routing is not None and seka.last_routing is None
    del wrapper
    gc.collect()
    seka.load_experts(experts)
    seka.score("Where is <<the tower>>?", ["Rome"])
    from seka_rag.model import _LAST_ROUTING

    assert [owner() for owner, _ in _LAST_ROUTING.get()] == [seka]  # the dropped wrappers' results are gone
    assert len(contextvars.copy_context()) <= before + 1
