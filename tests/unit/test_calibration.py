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
