"""One SekaModel shared by many threads: each call sees only its own edit; failures leave none behind."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from seka_rag.architectures import decoder_layers, layer_module
from seka_rag.steering import active_edit_present

DOCS = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"
PLAIN = DOCS.replace("<<", "").replace(">>", "")


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3"])
def seka(request, tiny_model):
    return tiny_model(request.param)


def jobs(seka):
    """Named calls with deterministic results: steered and unsteered, different highlights and settings."""
    return {
        "gen-steered": lambda: seka.generate(DOCS, max_new_tokens=5),
        "gen-unsteered": lambda: seka.generate(DOCS, max_new_tokens=5, steer=False),
        "gen-plain": lambda: seka.generate(PLAIN, max_new_tokens=5),
        "gen-paris": lambda: seka.generate(PLAIN, ["Paris"], max_new_tokens=5),
        "gen-gains": lambda: seka.generate(DOCS, max_new_tokens=5, gain_pos=4.0, gain_neg=0.0),
        "gen-layer1": lambda: seka.generate(DOCS, max_new_tokens=5, layers=[1]),
        "gen-batch": lambda: seka.generate([DOCS, PLAIN, "Where is <<Paris>>?"], max_new_tokens=4),
        "stream": lambda: "".join(seka.stream(PLAIN, ["Rome"], max_new_tokens=5)),
        "score-steered": lambda: seka.score(DOCS, ["Rome", "Paris"]),
        "score-unsteered": lambda: seka.score(DOCS, ["Rome", "Paris"], steer=False),
        "score-paris": lambda: seka.score(PLAIN, ["Rome", "Paris"], ["Paris"]),
        "score-heads": lambda: seka.score(DOCS, ["Rome", "Paris"], heads={0: [1]}),
    }


def _same(a, b) -> bool:
    if isinstance(a, list) and a and isinstance(a[0], float):
        return a == pytest.approx(b, abs=1e-5)
    return a == b


@pytest.fixture
def slow_layers(seka):
    """Sleep briefly inside every key module so threads interleave in the middle of forward passes."""

    def nap(module, args, output):
        time.sleep(0.0005)

    handles = [layer.self_attn.register_forward_hook(nap) for layer in decoder_layers(seka.model)]
    yield
    for h in handles:
        h.remove()


def test_threads_get_what_each_gets_alone(seka, slow_layers):
    named = jobs(seka)
    alone = {name: fn() for name, fn in named.items()}
    # the jobs really differ from one another, so a leaked edit would show
    assert alone["gen-steered"] != alone["gen-unsteered"] or alone["score-steered"] != alone["score-unsteered"]
    assert alone["score-steered"] != pytest.approx(alone["score-unsteered"], abs=1e-4)
    assert alone["score-paris"] != pytest.approx(alone["score-unsteered"], abs=1e-4)
    assert alone["gen-unsteered"] == alone["gen-plain"]

    order = list(named) * 3
    barrier = threading.Barrier(len(order))

    def run(name):
        barrier.wait()
        result = named[name]()
        return name, result, active_edit_present()

    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        results = list(pool.map(run, order))
    for name, result, leaked in results:
        assert not leaked, name
        assert _same(result, alone[name]), (name, result, alone[name])
    assert not active_edit_present()


def test_many_threads_alternating_steered_and_unsteered(seka, slow_layers):
    steered = seka.score(DOCS, ["Rome"])
    plain = seka.score(DOCS, ["Rome"], steer=False)
    n = 16

    def run(i):
        return seka.score(DOCS, ["Rome"], steer=bool(i % 2))

    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(run, range(n)))
    for i, g in enumerate(got):
        assert g == pytest.approx(steered if i % 2 else plain, abs=1e-5)


class Boom(RuntimeError):
    pass


def _explode_on_last_layer(seka):
    def explode(module, args, output):
        raise Boom("injected failure")

    return decoder_layers(seka.model)[-1].mlp.register_forward_hook(explode)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.generate(DOCS, max_new_tokens=4),
        lambda s: s.generate([DOCS, PLAIN], [None, ["Paris"]], max_new_tokens=4),
        lambda s: s.score(DOCS, ["Rome"]),
        lambda s: list(s.stream(DOCS, max_new_tokens=4)),
    ],
    ids=["generate", "generate-batch", "score", "stream"],
)
def test_exception_mid_call_leaves_no_edit(seka, call):
    fresh_plain = seka.generate(DOCS, max_new_tokens=4, steer=False)
    fresh_steered = seka.generate(DOCS, max_new_tokens=4)
    fresh_score = seka.score(DOCS, ["Rome"], steer=False)
    handle = _explode_on_last_layer(seka)
    try:
        with pytest.raises(Boom):
            call(seka)
        assert not active_edit_present()
    finally:
        handle.remove()
    assert seka.generate(DOCS, max_new_tokens=4, steer=False) == fresh_plain
    assert seka.score(DOCS, ["Rome"], steer=False) == pytest.approx(fresh_score, abs=1e-6)
    assert seka.generate(DOCS, max_new_tokens=4) == fresh_steered


def test_exception_in_user_code_inside_steering_block(seka):
    enc = seka.encode(DOCS)
    ids = torch.tensor([enc.input_ids])
    hl = torch.tensor([enc.highlight])
    with torch.no_grad():
        plain = seka.model(input_ids=ids).logits
    with pytest.raises(Boom), seka.steering(hl):
        assert active_edit_present()
        raise Boom("user code failed")
    assert not active_edit_present()
    with torch.no_grad():
        assert torch.equal(seka.model(input_ids=ids).logits, plain)


def test_failure_in_one_thread_does_not_disturb_others(seka):
    expected_steered = seka.score(DOCS, ["Rome", "Paris"])
    expected_plain = seka.score(DOCS, ["Rome", "Paris"], steer=False)
    failing = threading.local()

    def explode(module, args, output):
        if getattr(failing, "on", False):
            raise Boom("only in this thread")

    handle = decoder_layers(seka.model)[-1].mlp.register_forward_hook(explode)

    def bad():
        failing.on = True
        try:
            seka.generate(DOCS, max_new_tokens=3)
        except Boom:
            return "failed", active_edit_present()
        finally:
            failing.on = False  # pool threads are reused
        return "did not fail", active_edit_present()

    def good(steer):
        return seka.score(DOCS, ["Rome", "Paris"], steer=steer), active_edit_present()

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(bad) for _ in range(3)]
            futures += [pool.submit(good, bool(i % 2)) for i in range(6)]
            results = [f.result() for f in futures]
    finally:
        handle.remove()
    for status, leaked in results[:3]:
        assert status == "failed" and not leaked
    for i, (score, leaked) in enumerate(results[3:]):
        assert not leaked
        assert score == pytest.approx(expected_steered if i % 2 else expected_plain, abs=1e-5)


# ---------------------------------------------------------------- tools that read keys from the shared model


def _meanwhile_in_another_thread(seka, work):
    """A hook on layer 0's key module: the first time the calling thread runs it, ``work()`` runs in
    another thread while the caller's forward pass (and its key-reading hooks) is under way."""
    caller, results = threading.get_ident(), []

    def hook(module, args, output):
        if threading.get_ident() == caller and not results:
            with ThreadPoolExecutor(1) as pool:
                results.append(pool.submit(work).result())

    module = layer_module(decoder_layers(seka.model)[0], seka.geometry.spec.key_module)
    return module.register_forward_hook(hook), results


@pytest.mark.parametrize("tool", ["collect_answer_keys", "token_amplification"])
def test_reading_keys_leaves_other_threads_calls_alone(seka, tool):
    from seka_rag.builder import collect_answer_keys
    from seka_rag.inspect import token_amplification

    texts = ["Where is the tower? It is in \x01Rome\x02, they say.", "Alice met \x01Bob\x02 in London on Monday."]

    def read():
        if tool == "collect_answer_keys":
            return collect_answer_keys(seka, texts, [0, 1], chat=False, progress=False)[0]
        return token_amplification(seka, [t.replace("\x01", "").replace("\x02", "") for t in texts], heads=2,
                                   min_count=1, batch_size=1, progress=False).to_dict()

    def other_calls():
        return seka.generate(DOCS, max_new_tokens=4), seka.score(DOCS, ["Rome", "Paris"])

    alone = other_calls()
    undisturbed = read()
    handle, during = _meanwhile_in_another_thread(seka, other_calls)
    try:
        disturbed = read()  # before: the other thread's calls failed (or were read as this tool's keys)
    finally:
        handle.remove()
    assert len(during) == 1
    assert during[0][0] == alone[0]
    assert during[0][1] == pytest.approx(alone[1], abs=1e-5)
    if tool == "collect_answer_keys":
        assert all(torch.equal(disturbed[layer], undisturbed[layer]) for layer in undisturbed)
    else:
        assert disturbed == undisturbed
