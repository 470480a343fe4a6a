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
