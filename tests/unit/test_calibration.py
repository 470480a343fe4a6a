"""Calibration on a tiny model: runs end to end, stores what it measured as the projection's defaults."""

from __future__ import annotations

import torch

from seka_rag.calibration import CalibrationConfig, apply_calibration, calibrate, Trial


def test_calibration_stores_the_best_trial_as_defaults(tiny_model):
    seka = tiny_model("llama", projection=True, num_layers=3)
    config = CalibrationConfig(scan_items=2, select_items=3, candidates=2, max_layers=2, late_blocks=(2,),
                               multipliers=(1.0, 2.0), refine=(1.5,), batch_size=8)
    result = calibrate(seka, seka.projection, config, progress=False)
    best = result.best
    assert best is max((t for t in result.trials if t.stage != "scan"), key=lambda t: (t.share, t.mean_margin))
    proj = result.projection
    chosen = sorted(layer for _, ls, _ in best.units for layer in ls)
    assert proj.meta.default_layers == chosen
    assert proj.meta.notes["calibration"]["dev_share"] == best.share
    assert {t.stage for t in result.trials} >= {"scan", "single", "gains"}


def test_identity_units_become_plain_key_scaling(helpers):
    from types import SimpleNamespace

    geom = SimpleNamespace(num_layers=2, num_kv_heads=2, head_dim=4, model_type="llama")
    proj = helpers.random_projection(geom)
    trial = Trial("single", [("identity", [1], 2.0)], 0.9, 1.0, 4)
    config = CalibrationConfig(identity_gain=1.0, seka_gains=(2.0, 0.5))
    out = apply_calibration(proj, trial, config)
    from seka_rag.steering import edit_matrices

    mats = edit_matrices(out)
    assert list(mats) == [1]
    torch.testing.assert_close(mats[1], torch.eye(4).expand(2, 4, 4))  # (g·mult/2)·I = 1·I


def test_first_token_scorer_starts_answers_as_the_model_would(tiny_model):
    """Without a chat template an answer follows the prompt after a space: the scorer compares those tokens."""
    from dataclasses import replace

    from seka_rag.calibration import _FirstTokenScorer
    from seka_rag.evaluation.conflict import conflict_cases, conflict_split
    from seka_rag.evaluation.scoring import continuation_text, token_ids

    for chat in (True, False):
        seka = tiny_model("llama", projection=False, chat=chat)
        cases = [c for item in conflict_split("dev", n=2) for c in conflict_cases(item)]
        cases = [replace(c, target=t, other=o) for c, (t, o) in zip(cases, [("Paris", "Rome"), ("Berlin", "Oslo")] * 4)]
        scorer = _FirstTokenScorer(seka, cases, batch_size=4)
        expected = [(token_ids(seka, continuation_text(seka, c.target))[0],
                     token_ids(seka, continuation_text(seka, c.other))[0]) for c in cases]
        expected = [e for e in expected if e[0] != e[1]]
        got = [(int(t), int(o)) for _, ts, os_ in scorer.batches for t, o in zip(ts, os_)]
        assert scorer.n == len(expected) > 0 and sorted(got) == sorted(expected)


def test_calibration_search_rules_with_a_scorer_that_prefers_stronger_edits(monkeypatch, helpers):
    """A fake first-token scorer whose margin is the edit's total norm: every rule of the search is then
    predictable (dev split; greedy selection accepts a better trial; the gain sweep scales the winner
    before the sweep, not the sweep's own best; the stored per-layer scale is the winning multiplier)."""
    from types import SimpleNamespace

    import seka_rag.calibration as cal

    splits = []
    real_split = cal.conflict_split
    monkeypatch.setattr(cal, "conflict_split",
                        lambda split, *a, **k: splits.append(split) or real_split(split, *a, **k))

    class NormScorer:
        def __init__(self, model, cases, batch_size):
            self.n = len(cases)

        def margins(self, matrices):
            total = sum(float(m.double().norm()) for m in matrices.values()) if matrices else 0.0
            return torch.full((4,), total)

    monkeypatch.setattr(cal, "_FirstTokenScorer", NormScorer)
    geom = SimpleNamespace(num_layers=4, num_kv_heads=2, head_dim=4, model_type="llama")
    proj = helpers.random_projection(geom)
    config = CalibrationConfig(scan_items=1, select_items=2, constructions=("seka",), candidates=3, max_layers=2,
                               late_blocks=(), multipliers=(1.0,), refine=(2.0, 3.0))
    result = calibrate(None, proj, config, progress=False)
    assert splits and set(splits) == {"dev"}  # calibration never looks at the test split
    selected = [t for t in result.trials if t.stage == "select"]
    assert selected and len(selected[0].units) == 2  # a stronger edit than the best single: accepted
    before_sweep = selected[0]
    sweep = [t for t in result.trials if t.stage == "gains"]
    assert [t.units for t in sweep] == [before_sweep.scaled(2.0), before_sweep.scaled(3.0)]
    assert result.best is sweep[-1]
    layers = [layer for _, ls, _ in result.best.units for layer in ls]
    assert result.projection.meta.default_layers == sorted(layers)
    assert [float(result.projection.layer_scale[proj.row(layer)]) for layer in layers] == [3.0, 3.0]


import pytest

from seka_rag import SekaError


@pytest.mark.parametrize("settings, message", [
    (dict(candidates=0), "candidates must be a whole number >= 1"),
    (dict(multipliers=()), "multipliers must be a non-empty tuple"),
    (dict(constructions=()), "constructions must name some of"),
    (dict(select_items=0), "select_items must be a whole number >= 1"),
    (dict(seka_gains=(float("nan"), 0.5)), "seka_gains must hold positive finite numbers"),
    (dict(seka_gains=(0, 0.5)), "seka_gains must hold positive finite numbers"),
    (dict(group_size=0), "group_size must be a whole number >= 1"),
    (dict(max_layers=0), "max_layers must be a whole number >= 1"),
    (dict(select_items=100_000), r"select_items \(--select-items\) = 100000 is more than the dev split's 298 items: use at most 298"),
])
def test_bad_calibration_settings_are_refused_before_any_scoring(tiny_model, settings, message):
    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(SekaError, match=message):
        calibrate(seka, seka.projection, CalibrationConfig(**settings), progress=False)


def test_a_calibrated_projection_is_not_calibrated_again(tiny_model):
    seka = tiny_model("llama", num_layers=2)
    config = CalibrationConfig(scan_items=1, select_items=1, candidates=1, max_layers=1, late_blocks=(),
                               multipliers=(1.0,), refine=(), batch_size=8)
    once = calibrate(seka, seka.projection, config, progress=False).projection
    with pytest.raises(SekaError, match="calibrated already"):
        calibrate(seka, once, config, progress=False)
