"""integrations/benchmarks/wrapper_overhead.py: main() end to end on a tiny model (timings not checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "integrations" / "benchmarks" / "wrapper_overhead.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("wrapper_overhead_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    # a prompt that fits the tiny model's 256-token window
    monkeypatch.setattr(module, "DOCUMENTS", ["The tower is in Paris.", "The tower is in Rome."])
    monkeypatch.setattr(module, "QUESTION", "Where is the tower?")
    return module


@pytest.mark.filterwarnings("error:prompt of:UserWarning")
def test_main_end_to_end_on_a_tiny_model(bench, registered, tmp_path, capsys):
    out = tmp_path / "overhead.json"
    result = bench.main(["--model", registered, "--runs", "7", "--warmup", "1", "--max-new-tokens", "3",
                         "--note", "test", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "ChatSeka.invoke" in printed and "Seka.complete" in printed and f"wrote {out}" in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["outputs_identical"] is True and result["outputs_identical"] is True
    assert saved["conditions"]["note"] == "test" and saved["config"]["max_new_tokens"] == 3
    assert set(saved["arms"]) == set(bench.ARMS)
    for name, row in saved["arms"].items():
        assert len(saved["raw_wall_s"][name]) == 7
        assert row["inner_median_s"] <= row["median_s"]  # time inside generate is part of the call
        if name in bench.REFERENCE:
            assert row["reference"] == bench.REFERENCE[name] and row["ratio_of_medians"] > 0
    assert saved["outputs"]["ChatSeka.invoke"] == saved["outputs"]["engine messages"]
    assert saved["outputs"]["Seka.complete"] == saved["outputs"]["engine text"]


def test_runs_below_seven_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--runs", "6"])
