"""Baselines on tiny models: PASTA (attention bias), SPA (logit interpolation), prompt-only emphasis, methods."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from seka_rag import HighlightError, SekaError
from seka_rag.evaluation.baselines import (
    PASTA_ATTENTION,
    BaselineConfigError,
    HeadProfile,
    Pasta,
    PastaConfig,
    PastaUnsupportedError,
    PromptEmphasis,
    Seka,
    Spa,
    SpaConfig,
    Unsteered,
    emphasize_item,
    emphasize_prompt,
    evaluate_family_with,
    generate_with,
    pasta,
    pasta_active,
    pasta_generate,
    pasta_score,
    pasta_scorer,
    profiling_items,
    score_items_with,
    select_pasta_heads,
    spa_generate,
    spa_score,
    spa_scorer,
)
from seka_rag.evaluation.baselines._common import output_cache
from seka_rag.evaluation.baselines.pasta import pasta_attention_forward
from seka_rag.evaluation.baselines.spa import interpolate, masked_ids
from seka_rag.evaluation.conflict import split_of
from seka_rag.evaluation.families import FamilyItem, score_items
from seka_rag.highlight import EncodedPrompt, pad_batch

PROMPT = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"
SECOND = "Alice met Bob in London on Monday; <<Carol met Dave in Berlin>> on Friday."
TEXT_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


def _impl(seka) -> str:
    config = seka.model.config
    return getattr(config, "text_config", config)._attn_implementation if config.model_type == "gemma3" \
        else config._attn_implementation


def _batch(seka, prompts=(PROMPT,)):
    return pad_batch([seka.encode(p, chat=False) for p in prompts], seka.tokenizer.pad_token_id).to(seka.device)


def _logits(seka, batch):
    with torch.inference_mode():
        pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        return seka.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits


@pytest.fixture(scope="module")
def qwen2(tiny_model):
    return tiny_model("qwen2", context_window=4096)


@pytest.fixture(scope="module")
def items() -> list[FamilyItem]:
    """Counterbalanced tiny items whose answers are single tokens of the test tokenizer and differ."""
    docs = ("The tower is in Paris.", "The tower is in Rome.")
    out = []
    for first, second in (docs, docs[::-1]):
        prompt = f"Doc 1: {first}\nDoc 2: {second}\nWhere is the tower?"
        for hl, target, other in ((docs[0], "Paris", "Rome"), (docs[1], "Rome", "Paris")):
            out.append(FamilyItem("conflict", prompt, hl, target, (other,), "tiny", "tower"))
    return out


# ------------------------------------------------------------------------------------------ PASTA
@pytest.mark.parametrize("family", TEXT_FAMILIES + ("gemma3",))
def test_pasta_alpha_one_equals_unsteered(tiny_model, family):
    sdpa = tiny_model(family, projection=False)
    eager = tiny_model(family, attn_implementation="eager", projection=False)
    batch = _batch(sdpa, (PROMPT, SECOND))
    ref_sdpa, ref_eager = _logits(sdpa, batch), _logits(eager, batch)
    with pasta(sdpa, batch.highlight_mask, PastaConfig(alpha=1.0, heads="all")):
        assert _impl(sdpa) == PASTA_ATTENTION and pasta_active()
        got = _logits(sdpa, batch)
    assert torch.equal(got, ref_eager)  # the registered function is the family's eager attention, bias 0
    real = batch.attention_mask.bool()  # padded positions' outputs are never used
    assert torch.allclose(got[real], ref_sdpa[real], atol=1e-5)
    assert _impl(sdpa) == "sdpa" and not pasta_active()  # restored
    with pasta(eager, batch.highlight_mask, PastaConfig(alpha=1.0)):
        assert torch.equal(_logits(eager, batch), ref_eager)
    assert _impl(eager) == "eager"
    with pasta(sdpa, batch.highlight_mask, PastaConfig(alpha=0.05, heads={0: [1]})):
        steered = _logits(sdpa, batch)
    assert (steered[real] - ref_sdpa[real]).abs().max() > 1e-2


def test_pasta_matches_manual_attention(tiny_model):
    """One layer, GQA (4 query heads, 2 KV heads): the attention output equals PASTA computed by hand
    as the paper defines it — probabilities of non-highlighted keys × α, rows renormalised."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    seka = tiny_model("llama", num_layers=1, projection=False)
    attn = seka.model.model.layers[0].self_attn
    batch = _batch(seka, (PROMPT, SECOND))  # left-padded: the padding must stay masked
    alpha, selected = 0.1, [1, 2]
    seen = {}
    pre = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(h=kw["hidden_states"],
                                                                      pe=kw["position_embeddings"]),
                                         with_kwargs=True)
    post = attn.o_proj.register_forward_pre_hook(lambda m, a: seen.update(out=a[0]))
    try:
        with pasta(seka, batch.highlight_mask, PastaConfig(alpha=1.0, heads={0: selected})):  # eager, bias 0
            _logits(seka, batch)
        plain = seen["out"]
        with pasta(seka, batch.highlight_mask, PastaConfig(alpha=alpha, heads={0: selected})):
            _logits(seka, batch)
        steered = seen["out"]
    finally:
        pre.remove()
        post.remove()
    b, t, _ = seen["h"].shape
    H, KV, d = 4, 2, 16
    with torch.no_grad():
        q = attn.q_proj(seen["h"]).view(b, t, H, d).transpose(1, 2)
        k = attn.k_proj(seen["h"]).view(b, t, KV, d).transpose(1, 2)
        v = attn.v_proj(seen["h"]).view(b, t, KV, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *seen["pe"])
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(d)
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & batch.attention_mask.bool()[:, None, None, :]
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        factor = torch.ones(b, H, 1, t)
        factor[:, selected] = torch.where(batch.highlight_mask[:, None, None, :], 1.0, alpha)
        scaled = probs * factor
        scaled = scaled / scaled.sum(-1, keepdim=True)
        expected = (scaled @ v).transpose(1, 2)
    got = steered.view(b, t, H, d)
    real = batch.attention_mask.bool()  # padded query rows attend to nothing: not compared
    assert torch.allclose(got[real], expected[real], atol=1e-5)
    unsel = [h for h in range(H) if h not in selected]
    assert torch.equal(got[:, :, unsel], plain.view(b, t, H, d)[:, :, unsel])  # other heads untouched
    assert (got[real][:, selected] - plain.view(b, t, H, d)[real][:, selected]).abs().max() > 1e-3


@pytest.mark.parametrize("family, base", [("llama", "sdpa"), ("gemma3_text", "sdpa"), ("llama", "eager")])
def test_only_steered_layers_run_eager_attention(tiny_model, family, base, monkeypatch):
    """Layers without selected heads keep the model's own kernel (bit for bit); only steered ones pay for eager."""
    import importlib

    pasta_module = importlib.import_module("seka_rag.evaluation.baselines.pasta")  # the module, not the function
    seka = tiny_model(family, attn_implementation=base, projection=False)
    layers = seka.model.model.layers
    assert len(layers) >= 2
    batch = _batch(seka, (PROMPT, SECOND))
    first = {}
    hook = layers[0].register_forward_hook(lambda m, a, out: first.update(h=(out[0] if isinstance(out, tuple) else out)))
    calls = []
    eager_for = pasta_module._eager_function
    sdpa = pasta_module._sdpa_function()

    def spy_eager(module):
        fn = eager_for(module)
        return lambda *a, **kw: (calls.append(("eager", module)), fn(*a, **kw))[1]

    monkeypatch.setattr(pasta_module, "_eager_function", spy_eager)
    monkeypatch.setattr(pasta_module, "_sdpa_function",
                        lambda: lambda module, *a, **kw: (calls.append(("sdpa", module)), sdpa(module, *a, **kw))[1])
    try:
        _logits(seka, batch)
        unsteered_first = first["h"].clone()
        last = len(layers) - 1
        with pasta(seka, batch.highlight_mask, PastaConfig(alpha=0.05, heads={last: [0]})):
            assert _impl(seka) == (pasta_module.PASTA_ATTENTION_EAGER if base == "eager" else PASTA_ATTENTION)
            _logits(seka, batch)
    finally:
        hook.remove()
    assert _impl(seka) == base  # restored
    steered_module = layers[last].self_attn
    assert [kind for kind, m in calls if m is steered_module] == ["eager"]
    assert {kind for kind, m in calls if m is not steered_module} == {base}
    assert len(calls) == len(layers)
    assert torch.equal(first["h"], unsteered_first)  # a layer PASTA does not steer is computed as without it


@pytest.mark.parametrize("family, window", [("qwen3", None), ("gemma3_text", 6)])
def test_pasta_decoding_equals_full_forward(tiny_model, family, window):
    """With a KV cache, each decode step scales the prompt's keys only: equal to one full forward
    in which the generated tokens are outside the prompt mask. With a sliding window of 6, gemma3's
    local layers keep only the last keys in their cache: the bias must follow the dropped keys."""
    seka = tiny_model(family, projection=False)
    if window is not None:
        seka.model.config.sliding_window = window
        for layer in seka.model.model.layers:
            if layer.self_attn.sliding_window is not None:
                layer.self_attn.sliding_window = window
    batch = _batch(seka, (PROMPT, SECOND))
    cfg = PastaConfig(alpha=0.05, heads={0: [0, 3], 1: [2]})
    steps_n = 6
    with torch.inference_mode(), pasta(seka, batch.highlight_mask, cfg):
        out = seka.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  max_new_tokens=steps_n, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)  # (batch, steps, vocab)
    full = out.sequences[:, :-1]
    n, width = full.shape[0], batch.input_ids.shape[1]
    att = torch.cat([batch.attention_mask, torch.ones(n, steps_n - 1, dtype=torch.long)], 1)
    hl = torch.cat([batch.highlight_mask, torch.zeros(n, steps_n - 1, dtype=torch.bool)], 1)
    prompt = torch.zeros_like(hl)
    prompt[:, :width] = True
    with torch.inference_mode(), pasta(seka, hl, cfg, prompt_mask=prompt):
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = seka.model(input_ids=full, attention_mask=att, position_ids=pos).logits[:, width - 1 :]
    assert torch.allclose(steps, logits, atol=1e-4)
    if window is not None:  # the local layers' cache did drop keys
        assert output_cache(out).layers[0].keys.shape[2] < width
    # pasta_generate gives the same tokens
    texts = pasta_generate(seka, [PROMPT, SECOND], config=cfg, max_new_tokens=steps_n, chat=False)
    assert texts == seka.tokenizer.batch_decode(out.sequences[:, width:], skip_special_tokens=True)


def test_pasta_score_and_generate_alpha_one(qwen2, items):
    rows = [(qwen2.encode(it.prompt, [it.highlight]), qwen2.tokenizer(a, add_special_tokens=False)["input_ids"])
            for it in items for a in (it.target, it.others[0])]
    ref = qwen2.score_encoded(rows, steer=False)
    assert pasta_score(qwen2, rows, PastaConfig(alpha=1.0), batch_size=3) == pytest.approx(ref, abs=1e-4)
    assert pasta_score(qwen2, rows, PastaConfig(alpha=0.01, heads={1: [0, 1]})) != pytest.approx(ref, abs=1e-3)
    assert pasta_generate(qwen2, PROMPT, config=PastaConfig(alpha=1.0), max_new_tokens=6) == \
        qwen2.generate(PROMPT, steer=False, max_new_tokens=6)


def test_pasta_generate_ignores_a_checkpoints_dict_outputs_and_honours_its_stop_strings(tiny_model):
    seka = tiny_model("qwen2")
    expected = pasta_generate(seka, PROMPT, config=PastaConfig(alpha=1.0), max_new_tokens=6)
    seka.model.generation_config.return_dict_in_generate = True
    assert pasta_generate(seka, PROMPT, config=PastaConfig(alpha=1.0), max_new_tokens=6) == expected
    seka.model.generation_config.return_dict_in_generate = False
    seka.model.generation_config.stop_strings = [expected[2:4]]
    cut = pasta_generate(seka, PROMPT, config=PastaConfig(alpha=1.0), max_new_tokens=6)
    assert expected.startswith(cut) and len(cut) < len(expected)


def test_pasta_state_cleared_after_block_and_exception(qwen2):
    batch = _batch(qwen2)
    ref = _logits(qwen2, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with pasta(qwen2, batch.highlight_mask, PastaConfig(alpha=0.01)):
            assert pasta_active()
            raise RuntimeError("boom")
    assert not pasta_active() and _impl(qwen2) == "sdpa"
    assert torch.equal(_logits(qwen2, batch), ref)


def test_pasta_threads_do_not_leak(qwen2):
    batch = _batch(qwen2, (PROMPT, SECOND))
    configs = [PastaConfig(alpha=0.01, heads={0: [0]}), PastaConfig(alpha=0.2, heads={1: [1, 3]}), None]

    def run(cfg):
        if cfg is None:
            return _logits(qwen2, batch)
        with pasta(qwen2, batch.highlight_mask, cfg):
            return _logits(qwen2, batch)

    expected = [run(c) for c in configs]
    results: dict[int, list] = {i: [] for i in range(len(configs))}
    start = threading.Barrier(len(configs))

    def worker(i):
        start.wait()
        for _ in range(4):
            results[i].append(run(configs[i]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    real = batch.attention_mask.bool()
    for i, got in results.items():
        assert len(got) == 4
        for g in got:  # the unsteered thread runs SDPA in every layer while another thread holds PASTA
            assert torch.allclose(g[real], expected[i][real], atol=1e-5)
    assert _impl(qwen2) == "sdpa" and not pasta_active()


def test_pasta_unsupported_model(tiny_model, monkeypatch):
    seka = tiny_model("llama", projection=False)
    monkeypatch.setattr(seka.model, "set_attn_implementation", lambda name: None)  # does not switch
    with pytest.raises(PastaUnsupportedError, match="AttentionInterface"):
        with pasta(seka, _batch(seka).highlight_mask):
            pass
    assert not pasta_active()


def test_steered_layers_turn_sdpa_masks_into_eager_ones(tiny_model):
    """A steered layer gets SDPA's boolean (or no) mask and runs eager attention on the additive equivalent."""
    import importlib

    pasta_module = importlib.import_module("seka_rag.evaluation.baselines.pasta")
    seka = tiny_model("llama", projection=False)
    module = seka.model.model.layers[0].self_attn
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 5, 16, generator=gen) for n in (4, 2, 2))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    as_float = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    for mask in (allowed, None, as_float):
        converted = pasta_module._additive_mask(mask, module, q, k)
        assert converted.dtype == q.dtype and torch.equal(converted.expand_as(as_float), as_float)
    eager = pasta_module._eager_function(module)
    ref, _ = eager(module, q, k, v, as_float, scaling=0.25)
    state = pasta_module.PastaState(model=seka.model, modules={id(module): 0},
                                    head_bias={0: torch.zeros(4)}, penalised=torch.zeros(1, 5, dtype=torch.bool))
    token = pasta_module._ACTIVE_PASTA.set(state)  # a PASTA call steering layer 0 with a zero bias
    try:
        for mask in (allowed, None):
            state.seen.clear()
            got, _ = pasta_attention_forward(module, q, k, v, mask, scaling=0.25)
            assert torch.equal(got, ref)
    finally:
        pasta_module._ACTIVE_PASTA.reset(token)


# ------------------------------------------------------------------------------------------ SPA
def test_spa_strength_one_equals_unsteered(qwen2, items):
    rows = [(qwen2.encode(it.prompt, [it.highlight]), qwen2.tokenizer(a, add_special_tokens=False)["input_ids"])
            for it in items for a in (it.target, it.others[0])]
    ref = qwen2.score_encoded(rows, steer=False, batch_size=3)
    assert spa_score(qwen2, rows, strength=1.0, batch_size=3) == pytest.approx(ref, abs=1e-5)
    prompts = [PROMPT, SECOND, "Where is the <<tower>>?"]
    assert spa_generate(qwen2, prompts, strength=1.0, max_new_tokens=6, batch_size=2) == \
        qwen2.generate(prompts, steer=False, max_new_tokens=6, batch_size=2)
    assert spa_generate(qwen2, PROMPT, config=SpaConfig(strength=1.0), max_new_tokens=4) == \
        qwen2.generate(PROMPT, steer=False, max_new_tokens=4)


def test_spa_amplifies_the_anchor(qwen2):
    """Margins of one-token answers are linear in ω: ω·margin(prompt) + (1 − ω)·margin(anchor masked).
    Taking as target the answer the anchor favours, ω > 1 pushes further toward it."""
    enc = qwen2.encode(PROMPT)
    ids = [qwen2.tokenizer(a, add_special_tokens=False)["input_ids"] for a in (" Rome", " Paris")]
    assert all(len(i) == 1 for i in ids)
    mask_id = qwen2.tokenizer.pad_token_id
    masked = EncodedPrompt([mask_id if h else t for t, h in zip(enc.input_ids, enc.highlight)], enc.highlight, enc.text)
    orig = qwen2.score_encoded([(enc, i) for i in ids], steer=False)
    bare = qwen2.score_encoded([(masked, i) for i in ids], steer=False)
    m_orig, m_bare = orig[0] - orig[1], bare[0] - bare[1]
    sign = 1.0 if m_orig > m_bare else -1.0  # the anchor's direction
    margins = {}
    for w in (0.0, 1.0, 2.0, 3.0):
        a, b = spa_score(qwen2, [(enc, i) for i in ids], strength=w)
        margins[w] = sign * (a - b)
        assert a - b == pytest.approx(w * m_orig + (1 - w) * m_bare, abs=1e-4)
    assert margins[0.0] < margins[1.0] < margins[2.0] < margins[3.0]


def test_masked_ids():
    ids = torch.tensor([[5, 6, 7, 8]])
    hl = torch.tensor([[False, True, True, False]])
    assert masked_ids(ids, hl, 0).tolist() == [[5, 0, 0, 8]]


# ------------------------------------------------------------------------------------ prompt emphasis
def test_emphasize_prompt_styles():
    assert emphasize_prompt(PROMPT) == "Doc 1: The tower is in Paris.\nDoc 2: **The tower is in Rome.**\nWhere is the tower?"
    assert emphasize_prompt(PROMPT, style="important") == \
        "Doc 1: The tower is in Paris.\nDoc 2: IMPORTANT: The tower is in Rome.\nWhere is the tower?"
    plain = PROMPT.replace("<<", "").replace(">>", "")
    assert emphasize_prompt(PROMPT, style="note") == \
        plain + '\n\nIMPORTANT: pay close attention to this text: "The tower is in Rome."'
    assert emphasize_prompt(plain, "tower", "markers") == plain.replace("tower", "**tower**")  # every occurrence
    assert emphasize_prompt(r"a \<< b <<c>>", style="markers") == r"a \<< b **c**"  # literal markers stay escaped
    assert emphasize_prompt("a << b", "b", markers=None) == "a << **b**"


def test_emphasize_prompt_errors():
    with pytest.raises(BaselineConfigError, match="style must be one of"):
        emphasize_prompt(PROMPT, style="bold")
    with pytest.raises(HighlightError, match="no highlight"):
        emphasize_prompt("nothing marked")
    with pytest.raises(HighlightError, match="does not occur"):
        emphasize_prompt("some text", ["absent"])
    with pytest.raises(HighlightError, match="plain-text"):
        emphasize_prompt([{"role": "user", "content": "hi"}], ["hi"])


def test_emphasize_item(items):
    it = emphasize_item(items[0], "important")
    assert it.prompt.count("IMPORTANT: " + it.highlight) == 1 and it.target == items[0].target


# ------------------------------------------------------------------------------------ head selection
def test_select_pasta_heads(qwen2, items, tmp_path):
    prof = select_pasta_heads(qwen2, items, alpha=0.05, top=3, progress=False)
    assert len(prof.scores) == 2 * 4 and len(prof.selected) == 3
    ranked = prof.ranking()
    assert prof.selected == ranked[:3]
    assert [s for *_, s in ranked] == sorted((s for *_, s in ranked), reverse=True)
    assert prof.baseline == pytest.approx(0.0, abs=1e-4)  # counterbalanced items
    cfg = prof.config()
    assert cfg.alpha == 0.05 and sum(map(len, cfg.heads.values())) == 3
    assert prof.config(alpha=0.5, top=1).heads == {ranked[0][0]: (ranked[0][1],)}
    prof.save(tmp_path / "heads.json")
    assert HeadProfile.load(tmp_path / "heads.json") == prof
    # one layer, full-answer proxy; a head's score is its margin gain over the unsteered model
    full = select_pasta_heads(qwen2, items, top=2, layers=[1], proxy="full", progress=False)
    assert {l for l, _ in full.scores} == {1}
    layer, head, score = full.selected[0]
    steered = score_items(qwen2, items, progress=False, scorer=pasta_scorer(qwen2, PastaConfig(0.01, {layer: [head]})))
    assert score == pytest.approx(sum(steered) / len(steered) - full.baseline, abs=1e-4)


def test_select_pasta_heads_errors(qwen2, items):
    with pytest.raises(BaselineConfigError, match="top"):
        select_pasta_heads(qwen2, items, top=0, progress=False)
    with pytest.raises(BaselineConfigError, match="only 4 heads"):
        select_pasta_heads(qwen2, items, top=5, layers=[0], progress=False)
    with pytest.raises(BaselineConfigError, match="layers"):
        select_pasta_heads(qwen2, items, layers=[7], progress=False)
    with pytest.raises(BaselineConfigError, match="proxy"):
        select_pasta_heads(qwen2, items, proxy="cheap", progress=False)
    same = [FamilyItem("conflict", PROMPT.replace("<<", "").replace(">>", ""), "Rome", "Rome", ("Rome is",))]
    with pytest.raises(BaselineConfigError, match="prefix"):
        select_pasta_heads(qwen2, same, progress=False)


def test_profiling_items_come_from_dev():
    got = profiling_items(8)
    assert len(got) == 8 and all(split_of(it.subject) == "dev" for it in got)
    assert all(it.prompt.count(it.highlight) == 1 and it.others for it in got)


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("alpha", [0, -0.5, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_bad_alpha(alpha):
    with pytest.raises(BaselineConfigError, match="alpha"):
        PastaConfig(alpha=alpha)


@pytest.mark.parametrize("heads, message", [
    ("some", "heads must be 'all'"),
    ([0, 1], "heads must be 'all'"),
    ({}, "selects no head"),
    ({0: []}, "selects no head"),
    ({0: "1"}, "list of query head"),
    ({0: [1.5]}, "integer head"),
    ({"x": [1]}, "layer indices"),
])
def test_bad_heads(heads, message):
    with pytest.raises(BaselineConfigError, match=message):
        PastaConfig(heads=heads)


@pytest.mark.parametrize("heads, message", [({5: [0]}, "layer 5"), ({0: [4]}, "head 4 of layer 0")])
def test_heads_out_of_range(qwen2, heads, message):
    with pytest.raises(BaselineConfigError, match=message):
        with pasta(qwen2, _batch(qwen2).highlight_mask, PastaConfig(heads=heads)):
            pass
    assert not pasta_active() and _impl(qwen2) == "sdpa"


@pytest.mark.parametrize("strength", [-0.1, float("nan"), "2", None.__class__])
def test_bad_strength(strength):
    with pytest.raises(BaselineConfigError, match="strength"):
        SpaConfig(strength=strength)


def test_config_roundtrip_and_errors(qwen2):
    cfg = PastaConfig(alpha=0.1, heads={1: [3, 0, 3]})
    assert cfg.heads == {1: (0, 3)} and PastaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BaselineConfigError, match="mask_token_id"):
        SpaConfig(mask_token_id=-1)
    with pytest.raises(BaselineConfigError, match="outside the vocabulary"):
        SpaConfig(mask_token_id=10**6).mask_id(qwen2)
    with pytest.raises(BaselineConfigError, match="not both"):
        spa_scorer(qwen2, SpaConfig(), strength=2.0)
    with pytest.raises(BaselineConfigError, match="PastaConfig"):
        pasta_scorer(qwen2, 0.1)


def test_no_highlight_is_an_error(qwen2):
    plain = PROMPT.replace("<<", "").replace(">>", "")
    enc = qwen2.encode(plain)
    ids = qwen2.tokenizer(" Rome", add_special_tokens=False)["input_ids"]
    with pytest.raises(HighlightError, match="PASTA needs a highlight"):
        pasta_score(qwen2, [(enc, ids)])
    with pytest.raises(HighlightError, match="SPA needs a highlight"):
        spa_score(qwen2, [(enc, ids)], strength=2.0)
    with pytest.raises(HighlightError, match="needs a highlight"):
        pasta_generate(qwen2, plain, max_new_tokens=2)
    with pytest.raises(HighlightError, match="needs a highlight"):
        spa_generate(qwen2, plain, strength=2.0, max_new_tokens=2)
    with pytest.raises(HighlightError, match="no token of the batch"):
        with pasta(qwen2, torch.zeros(1, 5, dtype=torch.bool)):
            pass
    with pytest.raises(SekaError, match="SEKA steering keywords"):
        pasta_score(qwen2, [(qwen2.encode(PROMPT), ids)], gain_pos=2.0)
    with pytest.raises(BaselineConfigError, match="max_new_tokens"):
        spa_generate(qwen2, PROMPT, max_new_tokens=0)
    assert not pasta_active() and _impl(qwen2) == "sdpa"


# ------------------------------------------------------------------------------------ methods
def test_score_items_scorer_hook(qwen2, items):
    calls = []

    def scorer(rows, *, batch_size, **kw):
        calls.append((len(rows), batch_size, kw))
        return [float(len(ids)) for _, ids in rows]

    margins = score_items(qwen2, items, batch_size=3, progress=False, scorer=scorer, shared_prefix=True, tag="x")
    assert len(margins) == len(items) and sum(n for n, _, _ in calls) == 2 * len(items)  # the row path
    assert all(bs == 3 and kw == {"tag": "x"} for _, bs, kw in calls)



def test_methods_side_by_side(qwen2, items):
    unsteered = score_items(qwen2, items, progress=False, steer=False)
    methods = [Unsteered(), PromptEmphasis("markers"), Pasta(PastaConfig(alpha=1.0)), Spa(SpaConfig(strength=1.0)),
               Seka(), Seka("adaseka-off", {"steer": False})]
    for method in methods:
        margins = score_items_with(method, qwen2, items, progress=False)
        assert len(margins) == len(items)
        if method.name not in ("prompt-markers", "seka"):
            assert margins == pytest.approx(unsteered, abs=1e-3), method.name  # neutral settings
        out = generate_with(method, qwen2, [PROMPT, SECOND], None, max_new_tokens=3)
        assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert [m.passes for m in methods] == [1, 1, 1, 2, 1, 1]
    assert Seka().score_items(qwen2, items, progress=False) != pytest.approx(unsteered, abs=1e-3)
    report = evaluate_family_with(Spa(SpaConfig(strength=2.0)), qwen2, items, progress=False, n_boot=50)
    assert report.n == len(items) and report.settings == {"method": "spa", "strength": 2.0, "mask_token_id": None}
    assert Pasta(PastaConfig(0.1, {0: [1]})).settings() == {"method": "pasta", "alpha": 0.1, "heads": {"0": [1]}}
    with pytest.raises(BaselineConfigError, match="style"):
        PromptEmphasis("loud")


# Guards added after mutation testing: SPA generation honours its strength; PASTA's divergence proxy sign.
def test_spa_generate_takes_the_argmax_of_the_interpolated_logits(qwen2):
    enc = qwen2.encode(PROMPT)
    ids = torch.tensor([enc.input_ids])
    mask = torch.tensor([enc.highlight])
    with torch.inference_mode():
        orig = qwen2.model(input_ids=ids).logits[0, -1]
        bare = qwen2.model(input_ids=masked_ids(ids, mask, qwen2.tokenizer.pad_token_id)).logits[0, -1]
    expected = {w: int(interpolate(orig, bare, w).argmax()) for w in (0.0, 1.0, 3.0, 10.0)}
    assert len(set(expected.values())) > 1  # the strengths disagree on the first token
    for w, token in expected.items():
        got = spa_generate(qwen2, PROMPT, config=SpaConfig(strength=w), max_new_tokens=1)
        assert got == qwen2.tokenizer.decode([token], skip_special_tokens=True), w


def test_divergence_proxy_is_the_margin_of_the_first_differing_token(qwen2, items):
    # Paris / Rome are two tokens each here and differ in the first: the divergence proxy scores that
    # token, so it must equal the full proxy on items whose answers are those first tokens alone
    from seka_rag.evaluation.scoring import continuation_text

    tok = qwen2.tokenizer

    def first(text):
        return tok.decode(tok(continuation_text(qwen2, text), add_special_tokens=False)["input_ids"][:1])

    short = [FamilyItem(it.family, it.prompt, it.highlight, first(it.target), (first(it.others[0]),), it.group,
                        it.unit) for it in items]
    assert all(len(tok(continuation_text(qwen2, a), add_special_tokens=False)["input_ids"]) == 1
               for it in short for a in (it.target, *it.others))
    div = select_pasta_heads(qwen2, items, alpha=0.05, top=2, progress=False)
    full = select_pasta_heads(qwen2, short, alpha=0.05, top=2, proxy="full", progress=False)
    assert max(abs(s) for s in full.scores.values()) > 1e-2
    assert div.scores == pytest.approx(full.scores, abs=1e-4)
    assert div.selected[0][:2] == full.selected[0][:2]
