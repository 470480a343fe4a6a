"""The `seka-rag` command end to end on a tiny model saved to disk (seconds)."""

from __future__ import annotations

import pytest

from seka_rag import Projection
from seka_rag.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model):
    seka = tiny_model("llama", projection=False)
    path = tmp_path_factory.mktemp("tiny-llama")
    seka.model.save_pretrained(path)
    seka.tokenizer.save_pretrained(path)
    return path


def test_build_projection_then_generate_and_preview(model_dir, tmp_path, capsys):
    out = tmp_path / "proj.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(out), "--triplets", "6",
                 "--default-layers", "1", "--dtype", "float32"]) == 0
    proj = Projection.load(out)
    assert proj.meta.default_layers == [1] and proj.meta.n_triplets > 0
    assert "built projection" in capsys.readouterr().out

    prompt = "Doc 1: The tower is in Paris. Doc 2: <<The tower is in Rome.>> Where is the tower?"
    assert main(["generate", "--model", str(model_dir), "--projection", str(out), "--dtype", "float32",
                 "--max-new-tokens", "3", "--compare", prompt]) == 0
    printed = capsys.readouterr().out
    assert "unsteered:" in printed and "steered:" in printed

    assert main(["preview", "--model", str(model_dir), "--dtype", "float32", prompt]) == 0
    printed = capsys.readouterr().out
    assert "highlighted tokens" in printed and "Rome" in printed


def test_user_mistakes_exit_2_with_a_message(model_dir, tmp_path, capsys):
    code = main(["generate", "--model", str(model_dir), "--dtype", "float32", "--max-new-tokens", "2",
                 "unbalanced << marker"])
    assert code == 2
    assert "unbalanced" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a projection")
    assert main(["generate", "--model", str(model_dir), "--projection", str(bad), "--dtype", "float32", "x"]) == 2
    assert "not a readable projection file" in capsys.readouterr().err


def test_bench_runs_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    proj = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--dtype", "float32"]) == 0
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--lengths", "32,64", "--runs", "1",
                 "--decode-tokens", "2", "--no-memory", "--out", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())["latency"]
    assert [r["tokens"] for r in rows] == [32, 64]
    assert all(r["prefill_unsteered_s"] > 0 and r["control_prefill_ratio"] > 0 for r in rows)
    assert "A/A control" in capsys.readouterr().out


def test_eval_conflicts_prints_both_rows(model_dir, tmp_path, capsys):
    proj = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--dtype", "float32"]) == 0
    assert main(["eval-conflicts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--split", "dev", "--items", "2"]) == 0
    printed = capsys.readouterr().out
    assert "unsteered" in printed and "steered" in printed and "8" in printed
