"""The `seka-rag` command end to end on a tiny model saved to disk (seconds)."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from seka_rag import Projection
from seka_rag.cli import main


@pytest.fixture(scope="module")
def model_dir(saved_model_dir):
    return saved_model_dir()


def test_build_projection_then_generate_and_preview(model_dir, tmp_path, capsys):
    out = tmp_path / "proj.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(out), "--triplets", "6",
                 "--default-layers", "1", "--dtype", "float32"]) == 0
    proj = Projection.load(out)
    assert proj.meta.default_layers == [1] and proj.meta.n_triplets > 0
    printed = capsys.readouterr().out
    assert "built projection" in printed
    assert "It edits layer 1 by default at g+ 2, g- 0.5 (the paper's gains)" in printed
    assert f"seka-rag calibrate --model {model_dir} --dtype float32 --projection {out}" in printed

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


def test_eval_variants_says_what_it_needs(model_dir, tmp_path, capsys):
    import json

    log = tmp_path / "log.json"
    log.write_text("{}")
    # without --projection it says which projection the trials belong to, before loading anything
    assert main(["eval-variants", "--model", str(model_dir), "--calibration-log", str(log)]) == 2
    assert "eval-variants needs --projection FILE" in capsys.readouterr().err
    proj = tmp_path / "p.safetensors"
    proj.write_bytes(b"")
    for bad in (tmp_path / "missing.json", log):  # a missing file, then one without trials
        assert main(["eval-variants", "--model", str(model_dir), "--projection", str(proj),
                     "--calibration-log", str(bad)]) == 2
        assert "is not readable as a log written by `seka-rag calibrate" in capsys.readouterr().err
    good = dict(stage="gains", units=[["seka", [0, 1], 1.0]], share=0.9, mean_margin=1.5, n_cases=60)
    for bad_trial, says in ((dict(good, share="high"), "trial field 'share' is 'high', not a number"),
                            (dict(good, units=[["seka", [0, "1"], 1.0]]), "trial field 'layer of a unit' is '1', not an integer"),
                            (dict(good, units=[["seka", 0, 1.0]]), "is not [construction, [layers], gain multiplier]"),
                            (dict(good, n_cases=60.5), "trial field 'n_cases' is 60.5, not an integer"),
                            (dict(good, units=[["sekaa", [0], 1.0]]), "unknown construction 'sekaa'")):
        log.write_text(json.dumps(dict(trials=[good, bad_trial])))  # said before the model loads
        assert main(["eval-variants", "--model", str(tmp_path / "no-model"), "--projection", str(proj),
                     "--calibration-log", str(log)]) == 2
        assert says in capsys.readouterr().err
    shipped = Path(__file__).parents[2] / "seka_rag" / "data" / "projections" / "smollm2-135m.safetensors"
    log.write_text(json.dumps(dict(trials=[dict(good, units=[["seka", [0, 99], 1.0]])])))  # 30 layers there
    assert main(["eval-variants", "--model", str(tmp_path / "no-model"), "--projection", str(shipped),
                 "--calibration-log", str(log)]) == 2
    assert "names layers [99], outside the 30 layers of --projection" in capsys.readouterr().err
    from seka_rag.cli import _logged_trial

    for real in (Path(__file__).parents[2] / "docs" / "calibration").glob("*.json"):  # the logs calibrate wrote
        for entry in json.loads(real.read_text()).get("trials", []):
            assert _logged_trial(entry).n_cases == entry["n_cases"]
    log.write_text('{"trials": []}')  # a readable log, an unreadable projection: said before the model loads
    assert main(["eval-variants", "--model", str(tmp_path / "no-model"), "--projection", str(proj),
                 "--calibration-log", str(log)]) == 2
    assert "not a readable projection file" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive integer, got 0"),
    (["generate", "x", "--gain-pos", "inf"], "argument --gain-pos: must be a finite number, got inf"),
    (["generate", "x", "--layers", "5-3"], "an ascending range like '14-23', got '5-3'"),
    (["demo", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be a positive integer"),
    (["build-projection", "--out", "p.safetensors", "--triplets", "0"], "--triplets: must be a positive integer"),
    (["build-projection", "--out", "p.safetensors", "--gamma", "5"], "--gamma: must be a share in (0, 1], got 5"),
    (["sensitivity", "--items", "0"], "--items: must be a positive integer"),
    (["profile-pasta", "--out", "h.json", "--top", "0"], "--top: must be a positive integer"),
    (["bench", "--decode-tokens", "0"], "--decode-tokens: must be a positive integer"),
    (["bench", "--mmap-threshold", "lots"], "--mmap-threshold: must be a byte count (0 or more) or 'default'"),
    (["bench", "--mmap-threshold", "default", "--no-memory"], "with --no-memory no such probe runs"),
    (["bench", "--probe-start", "spawn", "--merge", "a.json"], "--probe-start chooses how the CPU memory probes"),
    (["bench", "--probe-start", "thread"], "--probe-start: invalid choice: 'thread'"),
    (["eval-conflicts", "--items", "-1"], "--items: must be a positive integer, got -1"),
    (["eval-families", "--embedding-temperature", "0"], "--embedding-temperature: must be a positive number"),
    (["gain-scale", "--first-question", "-3"], "--first-question: must be an integer >= 0"),
    (["gain-scale", "--family", "lost-in-middle", "--nq-passages", "2"], "--nq-passages: must be at least 3"),
    (["eval-families", "--methods", "seka", "--families", "conflict", "--items", "2000"],
     "--items: the conflict family has at most"),
    (["eval-conflicts", "--split", "dev", "--items", "100000"], "--items: the dev split has"),
    (["gain-scale", "--family", "counterfact", "--experts", "x", "--router", "embedding"],
     "never loads an expert set, so --experts, --router would be ignored"),
    (["sensitivity", "--adaptive"], "so --adaptive would be ignored"),
    (["profile-pasta", "--out", "h.json", "--router", "attention"], "so --router would be ignored"),
    (["inspect", "--adaptive"], "so --adaptive would be ignored"),
    # options no family or method of an eval run reads, and runs that would evaluate nothing
    (["eval", "--families", "conflict", "--methods", "seka", "--spa-strength", "3", "--max-new-tokens", "5"],
     "--max-new-tokens (read by the instructions family), --spa-strength (read by the spa method) would be ignored"),
    (["eval", "--families", "conflict", "--items", "counterfact=2"], "--items names 'counterfact', which this run"),
    (["eval", "--families", "lost-in-middle", "--methods", "seka"], "give --nq PATH"),
    (["eval", "--methods", "pasta", "--families", "conflict", "--pasta-heads", "h.json", "--pasta-top", "4"],
     "--pasta-top (read by on-the-fly profiling (not with --pasta-heads))"),
    (["eval", "--methods", "pasta", "--families", "conflict", "--pasta-profile-items", "100000"],
     "--pasta-profile-items: the conflict family has at most"),
    (["eval-families", "--methods", ","], "--methods names no method"),
    (["eval", "--out", ""], "--out is empty"),
    (["eval-families", "--merge", "a.json", "--methods", "sekaa"], "unknown methods ['sekaa']"),
    (["profile-pasta", "--out", "h.json", "--items", "100000"], "--items: the conflict family has at most"),
    (["eval-conflicts", "--per-case"], "--per-case stores every case's answers in the --out file"),
    (["eval-variants", "--projection", "p", "--calibration-log", "l.json", "--items", "100000"], "--calibration-log"),
    (["bench", "--methods", "seka", "--pasta-heads", "h.json"], "--pasta-heads sets the heads of the pasta method"),
    (["bench", "--merge", "a.json", "--runs", "50"], "--merge only joins earlier results and runs nothing, so --runs"),
    (["inspect", "--gain-pos", "nan"], "argument --gain-pos: must be a finite number"),
    (["build-experts", "--out", "d", "--expert-gains", "1"], "--expert-gains takes two non-negative numbers"),
    (["build-experts", "--out", "d", "--families", ""], "--families names no family"),
    (["build-projection", "--out", "p.safetensors", "--calibrate", "--scan-items", "400"],
     "scan_items (--scan-items) = 400 is more than the dev split's 298 items"),
    (["compare-experts", "--experts", ""], "--experts is empty"),
    (["compare-experts", "--model", "smollm2-135m"], "no expert set is shipped for 'smollm2-135m'"),
    (["eval-families", "--router", "embedding"], "names the router in each method"),
    (["eval-families", "--methods", "seka,ada-embedding", "--gain", "0.5"], "--gain would be ignored"),
    (["build-projection", "--out", "p.safetensors", "--projection", "x.safetensors"], "--projection would be ignored"),
    (["build-projection", "--out", "p.safetensors", "--calibrate", "--default-gain-pos", "0.5"],
     "--calibrate chooses the edited layers and gains on dev data, so --default-gain-pos would be ignored"),
    (["eval", "--router", "attention"], "names the router in each method"),
    (["sensitivity", "--delta-quantiles", "1.5"], "expected quantiles in [0, 1)"),
    (["sensitivity", "--delta-quantiles", "0,1"], "expected quantiles in [0, 1)"),
    # a merge runs nothing: --model, even at its default, would not check that the files are that model's
    (["eval", "--merge", "a.json", "--model", "qwen2.5-coder-0.5b"], "so --model would be ignored"),
    (["eval-families", "--merge", "a.json", "--model=qwen2.5-coder-0.5b"], "so --model would be ignored"),
    (["bench", "--merge", "a.json", "--model", "qwen2.5-coder-0.5b"], "so --model would be ignored"),
    (["bench", "--no-latency", "--runs", "5"], "--runs sets how many latency runs are timed; with --no-latency"),
    (["bench", "--no-latency", "--run", "5"], "--runs sets how many latency runs are timed"),  # an abbreviation
    (["eval", "--merge", "a.json", "--mod", "qwen2.5-coder-0.5b"], "so --model would be ignored"),
    (["bench", "--lengths", "64,64"], "--lengths 64,64 repeats 64: give each value once"),
    (["gain-scale", "--family", "conflicts", "--scales", "1,1"], "--scales 1,1 repeats 1: give each scale once"),
    (["eval", "--items", "counterfact=2,counterfact=3"], "--items names 'counterfact' twice"),
    (["build-projection", "--out", "p.safetensors", "--build-layers", "20-21", "--default-layers", "25"],
     "--default-layers [25] are not among --build-layers [20, 21]"),
    (["sensitivity", "--gains-pos=nan"], "expected finite numbers"),
    (["preview", "--router", "embedding", "a <<b>> c"], "so --router would be ignored"),
    (["generate", "--router", "embedding", "a <<b>> c"], "--router needs an expert set: add --adaptive"),
    (["preview", "--projection", "p.safetensors", "--adaptive", "a <<b>> c"], "so --projection, --adaptive would be"),
    (["eval-families", "--model", "smollm2-135m"], "no AdaSEKA expert set is shipped for 'smollm2-135m'"),
    # each command takes the other commands' spellings, and eval-families also comma-separated families
    (["eval-families", "--methods", "seka,adaseka-attention", "--families", "conflicts,instruction", "--items", "2000"],
     "--items: the conflict family has at most"),
    (["generate", "a <<b>> c", "--layers", ""], "names no layer"),
    (["bench", "--lengths", ""], "argument --lengths: is empty"),
    (["build-projection", "--out", "p.safetensors", "--scan-items", "4", "--calibration-log", "l.json"],
     "--scan-items, --calibration-log set up the calibration, which runs only with --calibrate"),
])
def test_bad_numbers_are_refused_before_any_model_loads(args, message, monkeypatch, capsys):
    from seka_rag import cli

    def no_load(**kwargs):  # pragma: no cover - reached only if a check is missing
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "load_model", no_load)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_generate_flag_conflicts_are_refused(model_dir, monkeypatch, capsys):
    assert main(["generate", "x", "--compare", "--no-steer", "--model", str(model_dir)]) == 2
    assert "does not go with --no-steer" in capsys.readouterr().err
    assert main(["preview", "x", "--gguf-file", "model.gguf"]) == 2  # the default model is an embedded one
    assert "leave --gguf-file out" in capsys.readouterr().err


def test_bench_runs_end_to_end(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    proj = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--dtype", "float32"]) == 0
    experts = tmp_path / "experts"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--triplets", "2", "--families", "context_qa", "conflict", "instruction",
                 "--out", str(experts)]) == 0  # distractor prompts do not fit the tiny model's window
    assert "built 3 experts" in capsys.readouterr().out
    methods = ("prompt-markers", "prompt-important", "pasta", "spa", "seka", "ada-attention", "ada-embedding",
               "two-pass")
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--experts", str(experts), "--methods", ",".join(methods), "--batch-size", "1,2",
                 "--lengths", "32,64", "--runs", "1", "--decode-tokens", "2", "--no-memory", "--out", str(out),
                 "--plots", str(tmp_path / "plots" / "tiny")]) == 0
    import json

    result = json.loads(out.read_text())
    rows = result["latency"]
    assert [(r["batch"], r["tokens"], r["method"]) for r in rows] == [
        (b, n, m) for b in (1, 2) for n in (32, 64) for m in (*methods, "control")
    ]
    assert result["info"]["pasta"]["heads"] and all(  # the heads PASTA steered are recorded, as layer -> heads
        isinstance(h, list) and h for h in result["info"]["pasta"]["heads"].values())
    assert all(r["prefill_unsteered_s"] > 0 and r["prefill_ratio"] > 0 and r["decode_steered_tps"] > 0 for r in rows)
    for r in rows:  # the runs' own timings travel with each row, and the paired ratio's interval holds its median
        assert len(r["samples"]["prefill_s"]) == len(r["samples"]["prefill_unsteered_s"]) == r["runs"] == 1
        ratio = r["samples"]["prefill_s"][0] / r["samples"]["prefill_unsteered_s"][0]
        assert r["prefill_ratio_paired"] == pytest.approx(ratio) and r["prefill_ratio_paired_interval"] == [ratio] * 2
        assert 0 <= r["setup_s"] <= r["prefill_steered_s"]
    setup = {(r["batch"], r["tokens"], r["method"]): r["setup_s"] for r in rows}
    # two-pass routing runs a whole extra forward before its steered pass; plain SEKA has nothing to route.
    # One run per shape: compared by the median over the four shapes, so one scheduling stall of a loaded
    # machine in one shape cannot turn it around (the likely cause of a failure seen once, with a long
    # evaluation running beside the tests)
    shapes = [(b, n) for b in (1, 2) for n in (32, 64)]
    assert statistics.median(setup[(*s, "two-pass")] for s in shapes) > statistics.median(
        setup[(*s, "seka")] for s in shapes)
    lengths = {(r["tokens"], r["method"]): r["prompt_tokens"] for r in rows if r["batch"] == 1}
    assert lengths[(32, "seka")] == 32 and lengths[(32, "prompt-markers")] > 32  # emphasis adds its markers
    printed = capsys.readouterr().out
    assert "two-pass" in printed and "pasta" in printed and "tiny-latency.png" in printed
    assert (tmp_path / "plots" / "tiny-latency.png").stat().st_size > 1000
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--methods", "bogus",
                 "--no-memory"]) == 2
    # memory alone (it may run beside other work), then both parts merged into one result and plots
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    mem = tmp_path / "memory.json"
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--methods", "seka", "--lengths", "32", "--decode-tokens", "1", "--no-latency",
                 "--out", str(mem)]) == 0
    memory = json.loads(mem.read_text())
    assert memory["latency"] == [] and [(r["tokens"], r["method"]) for r in memory["memory"]] == [(32, "seka")]
    assert memory["info"]["malloc_mmap_threshold"] == "65536"  # what the CPU probes ran with
    merged = tmp_path / "merged.json"
    assert main(["bench", "--merge", str(out), str(mem), "--out", str(merged),
                 "--plots", str(tmp_path / "plots" / "merged")]) == 0
    both = json.loads(merged.read_text())
    assert len(both["latency"]) == len(rows) and both["memory"] == memory["memory"] and len(both["runs"]) == 2
    assert (tmp_path / "plots" / "merged-memory.png").is_file()
    again = tmp_path / "again.json"  # a merge of a merge keeps every measuring run, not the nested file
    assert main(["bench", "--merge", str(merged), str(mem), "--out", str(again)]) == 0
    assert [r["file"] for r in json.loads(again.read_text())["runs"]] == [str(out), str(mem), str(mem)]
    assert json.loads(again.read_text())["memory"] == memory["memory"]  # a repeated row is not doubled
    capsys.readouterr()
    assert main(["bench", "--merge", str(tmp_path / "missing.json")]) == 2
    assert "cannot read bench results" in capsys.readouterr().err
    other = json.loads(out.read_text())  # the same latency run, as if measured with other decode settings
    other["info"]["config"]["decode_tokens"] = 4
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["bench", "--merge", str(out), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "different --decode-tokens in their latency runs (2, 4)" in capsys.readouterr().err
    # an earlier merge (its latency part at 2 tokens, its memory part at 1) is checked by its latency part
    assert main(["bench", "--merge", str(merged), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "different --decode-tokens in their latency runs (2, 4)" in capsys.readouterr().err
    other["info"]["config"]["decode_tokens"], other["info"]["config"]["highlight_share"] = 2, 0.5
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["bench", "--merge", str(mem), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "different highlighted shares (0.1, 0.5)" in capsys.readouterr().err
    # prompt lengths past the model's window (256 tokens) are refused, not measured
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--lengths", "32,300", "--no-memory"]) == 2
    assert "--lengths 300 does not fit" in capsys.readouterr().err
    assert main(["bench", "--model", str(model_dir), "--no-memory", "--no-latency"]) == 2
    assert main(["bench", "--model", str(model_dir), "--batch-size", "0", "--no-memory"]) == 2
    assert "--batch-size must be positive" in capsys.readouterr().err
    # in-process memory probes are a CUDA option: refused on CPU with a reason, nothing measured
    assert main(["bench", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--device", "cpu", "--no-latency", "--memory-in-process", "--lengths", "32",
                 "--out", str(tmp_path / "never.json")]) == 2
    assert "--memory-in-process needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "never.json").exists()
    assert main(["bench", "--model", str(model_dir), "--no-memory", "--memory-in-process"]) == 2
    assert "with --no-memory nothing is probed" in capsys.readouterr().err


def test_bench_merge_reads_the_first_seka_only_files(tmp_path, capsys):
    # the first bench files measured SEKA alone at batch 1: their rows name no method and no batch
    import json

    old = dict(info=dict(model="m", device="cpu"), seconds=10.0,
               latency=[dict(tokens=256, prefill_unsteered_s=0.5, prefill_steered_s=0.51, prefill_ratio=1.02,
                             prefill_ratio_paired=1.01, decode_unsteered_tps=7.0, decode_steered_tps=6.9,
                             decode_ratio=0.99, decode_ratio_paired=0.98, runs=7,
                             control_prefill_ratio=0.996, control_decode_ratio=1.004),  # the A/A control inline
                        # the very first files kept ratios of medians only
                        dict(tokens=1024, batch=1, prefill_unsteered_s=2.0, prefill_steered_s=2.1, prefill_ratio=1.05,
                             decode_unsteered_tps=6.0, decode_steered_tps=6.0, decode_ratio=1.0, runs=5)],
               memory=[dict(tokens=256, metric="peak_rss_kib", unsteered=100, steered=101, ratio=1.01, details={})])
    (tmp_path / "old.json").write_text(json.dumps(old))
    merged = tmp_path / "merged.json"
    assert main(["bench", "--merge", str(tmp_path / "old.json"), "--out", str(merged),
                 "--plots", str(tmp_path / "old")]) == 0
    rows = json.loads(merged.read_text())
    assert [(r["tokens"], r["batch"], r["method"]) for r in rows["latency"] + rows["memory"]] == [
        (256, 1, "seka"), (256, 1, "control"), (1024, 1, "seka"), (256, 1, "seka")]
    printed = capsys.readouterr().out
    assert "| 256 | 1 | seka | 7 | 0.500 | 0.510 | - | 1.020 | 1.010 |" in printed
    assert "| 256 | 1 | control | 7 | 0.500 | - | - | - | 0.996 | 7.00 | - | - | 1.004 |" in printed
    assert "| 1024 | 1 | seka | 5 | 2.000 | 2.100 | - | 1.050 | - | 6.00 | 6.00 | 1.000 | - |" in printed
    assert (tmp_path / "old-latency.png").is_file() and (tmp_path / "old-memory.png").is_file()


def test_bench_gives_cheap_shapes_more_runs(model_dir, tmp_path, capsys):
    from seka_rag.bench import BenchConfig

    config = BenchConfig(lengths=[256, 1024, 2048], batch_sizes=[1, 4], runs=5)
    assert {(b, n): config.runs_for(b, n) for b in (1, 4) for n in (256, 1024, 2048)} == {
        (1, 256): 20, (1, 1024): 5, (1, 2048): 5, (4, 256): 5, (4, 1024): 5, (4, 2048): 5}
    assert BenchConfig(lengths=[256, 2048], batch_sizes=[1, 4], runs=5, short_run_factor=1).runs_for(1, 256) == 5
    assert BenchConfig(lengths=[256, 4096], batch_sizes=[4], runs=3).runs_for(4, 256) == 6  # 16x smaller: twice
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", str(model_dir), "--dtype", "float32", "--methods",
                 "prompt-markers", "--lengths", "8,128", "--runs", "2", "--decode-tokens", "1", "--no-memory",
                 "--short-run-factor", "3", "--out", str(out)]) == 0
    import json

    rows = {(r["tokens"], r["method"]): r for r in json.loads(out.read_text())["latency"]}
    assert rows[(8, "prompt-markers")]["runs"] == 4 and rows[(128, "control")]["runs"] == 2  # 128 / (8 x 8) = 2
    assert len(rows[(8, "control")]["samples"]["prefill_s"]) == 4
    printed = capsys.readouterr().out
    assert "2 interleaved runs (up to 4 for short prompts)" in printed
    assert "| 8 | 1 | prompt-markers | 4 |" in printed  # the table says how many runs each row rests on


def _forked_probes_work() -> bool:
    from seka_rag import bench

    return sys.platform.startswith("linux") and bool(bench._resident_file_ranges()) and bench._reset_rss_peak()


@pytest.mark.skipif(not _forked_probes_work(), reason="forked probes need Linux's /proc/self/pagemap and clear_refs")
def test_bench_memory_probe_runs_every_method_in_a_fresh_process(model_dir, tmp_path, monkeypatch):
    from seka_rag.bench import BenchConfig, memory_table

    # PASTA and SPA need no projection
    spec = dict(model=str(model_dir), no_projection=True, dtype="float32", device="cpu")
    config = BenchConfig(lengths=[16], runs=1, decode_tokens=1, batch_sizes=[2], methods=["pasta", "spa"])
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    rows = memory_table(spec, config, progress=False)
    assert [(r["batch"], r["tokens"], r["method"]) for r in rows] == [(2, 16, "pasta"), (2, 16, "spa")]
    assert all(r["unsteered"] > 0 and r["steered"] > 0 and r["ratio"] > 0 for r in rows)
    # forked from one loader (Linux): still a process of its own per configuration, each peak reset in it
    details = [rows[0]["details"]["unsteered"], rows[0]["details"]["pasta"], rows[1]["details"]["spa"]]
    assert {d["process"] for d in details} == {"forked"} and all(d["peak_reset"] for d in details)
    assert len({d["pid"] for d in details}) == 3 and os.getpid() not in {d["pid"] for d in details}
    import subprocess

    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)  # this test process runs on one thread
    assert {d["threads"] for d in details} == {int(fresh.stdout)}  # the loader's single thread is undone
    # the same configurations spawned, each in a fresh interpreter that loads the model itself: a forked
    # probe first touches the library pages its loader had resident, so it starts, and peaks, where a fresh
    # process does (without that, about a quarter of this small process's RSS would be missing)
    spawned = memory_table(spec, BenchConfig(lengths=[16], runs=1, decode_tokens=1, batch_sizes=[2],
                                             methods=["pasta", "spa"], probe_start="spawn"), progress=False)
    assert {d["process"] for r in spawned for d in r["details"].values()} == {"spawned"}
    assert rows[1]["details"]["spa"]["loader_file_pages_kib"] > 0
    for forked, fresh in ((rows[0]["details"]["unsteered"], spawned[0]["details"]["unsteered"]),
                          (rows[0]["details"]["pasta"], spawned[0]["details"]["pasta"]),
                          (rows[1]["details"]["spa"], spawned[1]["details"]["spa"])):
        for key in ("rss_at_reset_kib", "peak_rss_kib"):
            assert abs(forked[key] - fresh[key]) < 0.05 * fresh[key], (key, forked[key], fresh[key])
    # the probes fix glibc's mmap threshold (peaks follow live tensors), unless told otherwise
    assert {d["malloc_mmap_threshold"] for r in rows for d in r["details"].values()} == {"65536"}
    one = BenchConfig(lengths=[16], runs=1, decode_tokens=1, methods=["spa"], mmap_threshold=None)

    def thresholds(config):
        return {d["malloc_mmap_threshold"] for d in memory_table(spec, config, progress=False)[0]["details"].values()}

    assert thresholds(one) == {"glibc default"}
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # the user's own setting is kept
    assert thresholds(BenchConfig(lengths=[16], runs=1, decode_tokens=1, methods=["spa"])) == {"131072"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=262144")  # glibc's tunable wins over both
    assert thresholds(one) == {"262144"}
    from seka_rag.cli import load_model
    from seka_rag.errors import SekaError

    with pytest.raises(SekaError, match="exact only on CUDA"):
        memory_table(spec, config, progress=False, seka=load_model(**spec))


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_memory_probes_import_this_seka_rag_whatever_the_current_directory(model_dir, tmp_path, monkeypatch, start):
    from seka_rag.bench import BenchConfig, memory_table

    if start == "fork" and not _forked_probes_work():
        pytest.skip("forked probes need Linux's /proc/self/pagemap and clear_refs")
    decoy = tmp_path / "seka_rag"  # e.g. another checkout in the directory the benchmark runs from
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "bench.py").write_text("raise SystemExit('the decoy seka_rag ran')\n")
    monkeypatch.chdir(tmp_path)
    spec = dict(model=str(model_dir), no_projection=True, dtype="float32", device="cpu")
    rows = memory_table(spec, BenchConfig(lengths=[16], runs=1, decode_tokens=1, methods=["spa"], probe_start=start),
                        progress=False)
    assert rows[0]["unsteered"] > 0 and rows[0]["steered"] > 0


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_failing_memory_probe_says_why(model_dir, tmp_path, monkeypatch, start):
    from seka_rag import bench
    from seka_rag.bench import BenchConfig, memory_table
    from seka_rag.errors import SekaError

    if start == "fork" and not _forked_probes_work():
        pytest.skip("forked probes need Linux's /proc/self/pagemap and clear_refs")
    # no projection: SEKA cannot steer
    spec = dict(model=str(model_dir), no_projection=True, dtype="float32", device="cpu")
    config = BenchConfig(lengths=[16], runs=1, decode_tokens=1, methods=["seka"], probe_start=start)
    with pytest.raises(SekaError, match="this model has no projection"):  # a usage error, said as one
        memory_table(spec, config, progress=False)
    with pytest.raises(SekaError, match="no-model"):  # a model that cannot load: said by the loader, or the probe
        memory_table(dict(spec, model=str(tmp_path / "no-model")), config, progress=False)
    with pytest.raises(SekaError, match="probe_start must be one of fork, spawn"):
        BenchConfig(probe_start="thread")
    monkeypatch.setattr(bench, "PROBE_TIMEOUT_S", 0.001)  # a probe that takes too long is stopped, and said to be
    with pytest.raises(RuntimeError, match=r"probe of 16 tokens, batch 1, unsteered did not finish in 0\.001 s"):
        memory_table(spec, BenchConfig(lengths=[16], runs=1, decode_tokens=1, methods=["spa"], probe_start=start),
                     progress=False)


def test_forked_probes_touch_only_readable_files_and_say_how_a_probe_ended(monkeypatch, capsys):
    import signal

    from seka_rag import bench

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/pagemap")
    ranges = bench._resident_file_ranges()
    if not ranges:
        pytest.skip("/proc/self/pagemap cannot be read here")
    assert all(start < end for start, end in ranges)
    assert bench._readable_mapping("/dev/zero (deleted)", {}) and not bench._readable_mapping("[heap]", {})
    assert not bench._readable_mapping("/dev/null", {}) and not bench._readable_mapping("/gone.so (deleted)", {})
    assert bench._readable_mapping(sys.executable, {})
    assert bench._wait_status_text(0) == "exit status 0"
    assert bench._wait_status_text(int(signal.SIGKILL)) == "killed by SIGKILL (out of memory?)"
    assert bench._wait_status_text(-int(signal.SIGSEGV), returncode=True) == "killed by SIGSEGV"
    from seka_rag.cli import main

    monkeypatch.setattr(sys, "platform", "darwin")  # fork asked for where it is not used: refused, not ignored
    assert main(["bench", "--probe-start", "fork", "--no-latency"]) == 2
    assert "--probe-start fork is for CPU models on Linux" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_memory_probes_in_process_on_cuda(model_dir):
    from seka_rag.bench import BenchConfig, memory_table
    from seka_rag.cli import load_model

    spec = dict(model=str(model_dir), no_projection=True, dtype="bfloat16", device="cuda")
    config = BenchConfig(lengths=[64], runs=1, decode_tokens=2, batch_sizes=[1, 2], methods=["pasta", "spa"])
    rows = memory_table(spec, config, progress=False, seka=load_model(**spec))
    assert [(r["batch"], r["method"]) for r in rows] == [(1, "pasta"), (1, "spa"), (2, "pasta"), (2, "spa")]
    assert all(r["metric"] == "peak_bytes" and r["steered"] > r["details"][r["method"]]["baseline_bytes"]
               for r in rows)
    by_batch = {r["batch"]: r["unsteered"] for r in rows}
    assert by_batch[2] > by_batch[1]  # the peak is reset per configuration: batch 2's activations are larger


def test_eval_conflicts_prints_both_rows(model_dir, tmp_path, capsys):
    proj = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--dtype", "float32"]) == 0
    assert main(["eval-conflicts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--split", "dev", "--items", "2"]) == 0
    printed = capsys.readouterr().out
    assert "unsteered" in printed and "steered" in printed and "8" in printed


def test_build_experts_then_eval_families(model_dir, tmp_path, capsys):
    import json

    from dataclasses import asdict

    from seka_rag.adaptive import ExpertSet

    proj = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--default-layers", "1", "--dtype", "float32"]) == 0
    experts = tmp_path / "experts"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--triplets", "3", "--families", "instruction", "conflict", "--embedding-temperature", "0.2",
                 "--expert-gains", "3,0.25", "--out", str(experts)]) == 0
    loaded = ExpertSet.load(experts)
    assert all((e.projection.meta.gain_pos, e.projection.meta.gain_neg) == (3.0, 0.25) for e in loaded)
    assert loaded.routing.embedding_temperature == 0.2  # stored with the set: the default of its users
    assert loaded.names == ["instruction", "conflict"] and loaded.has_prototypes
    assert all(e.projection.meta.default_layers == [1] for e in loaded)  # copied from the calibrated projection
    assert loaded.notes["seed"] == 0 and loaded.notes["gamma"] == 0.9 and loaded.notes["triplets_per_family"] == 3
    assert loaded.routing.gain == 1.0 and loaded.routing.embedding_gain == 1.0  # the build's defaults
    # --reuse: another calibrated projection's gains and per-layer scales re-copied onto the built set
    from dataclasses import replace

    base = Projection.load(proj)
    scale = base.layer_scale.clone()
    scale[base.row(1)] = 3.0
    other = replace(base, meta=replace(base.meta, gain_pos=0.75, gain_neg=0.125), layer_scale=scale)
    other_path = tmp_path / "other.safetensors"
    other.save(other_path)
    refreshed_dir = tmp_path / "refreshed"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(other_path), "--dtype", "float32",
                 "--reuse", str(experts), "--gain", "0.3", "--out", str(refreshed_dir)]) == 0
    assert "re-copied the calibrated projection's settings onto 2 experts" in capsys.readouterr().out
    refreshed = ExpertSet.load(refreshed_dir)
    assert refreshed.names == loaded.names
    for old, new in zip(loaded, refreshed):
        assert (new.projection.meta.gain_pos, new.projection.meta.gain_neg) == (0.75, 0.125)
        assert new.projection.layer_scale.tolist() == [3.0] and new.projection.meta.default_layers == [1]
        for field in ("pos", "neg", "u_pos", "s_pos", "u_neg", "s_neg", "head_shift", "head_mask"):
            assert torch.equal(getattr(old.projection, field), getattr(new.projection, field)), field
        assert torch.equal(old.prototype, new.prototype)
    assert refreshed.routing.gain == 0.3 and refreshed.routing.embedding_temperature == 0.2  # given / kept
    assert refreshed.notes["settings_refreshed"][-1]["gain_pos"] == 0.75
    # ... which is what a rebuild from the same triplets with that projection gives
    rebuilt_dir = tmp_path / "rebuilt"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(other_path), "--dtype", "float32",
                 "--triplets", "3", "--families", "instruction", "conflict", "--out", str(rebuilt_dir)]) == 0
    capsys.readouterr()
    for new, again in zip(refreshed, ExpertSet.load(rebuilt_dir)):
        assert replace(new.projection.meta, notes={}) == replace(again.projection.meta, notes={})
        for field in ("pos", "neg", "u_pos", "s_pos", "head_shift", "head_mask", "layer_scale"):
            assert torch.allclose(getattr(new.projection, field), getattr(again.projection, field), atol=1e-5), field
    # without --out, --reuse overwrites its directory; a second refresh is recorded after the first
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--reuse", str(refreshed_dir)]) == 0
    capsys.readouterr()
    again = ExpertSet.load(refreshed_dir)
    assert [(e.projection.meta.gain_pos, e.projection.layer_scale.tolist()) for e in again] == [(base.meta.gain_pos, [float(base.layer_scale[base.row(1)])])] * 2
    assert len(again.notes["settings_refreshed"]) == 2
    # --expert-scales gives named experts their own strength; a later --reuse keeps it
    scaled_dir = tmp_path / "scaled"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--reuse", str(experts), "--expert-scales", "conflict=2", "--out", str(scaled_dir)]) == 0
    assert "conflict: 2 x the shared gains" in capsys.readouterr().out
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(other_path), "--dtype", "float32",
                 "--reuse", str(scaled_dir)]) == 0
    assert "conflict: 2 x the shared gains = 1.5 / 0.25" in capsys.readouterr().out  # kept, and shown
    scaled = ExpertSet.load(scaled_dir)
    assert [e.gain_scale for e in scaled] == [1.0, 2.0]
    assert [(e.projection.meta.gain_pos, e.projection.meta.gain_neg) for e in scaled] == [(0.75, 0.125), (1.5, 0.25)]
    assert scaled.notes["settings_refreshed"][0]["expert_scales_given"] == {"conflict": 2.0}
    for bad, message in (("nobody=2", "names ['nobody'], which this set has no expert for"),
                         ("conflict=0", "positive finite factors"), ("conflict=inf", "positive finite factors"), ("conflict", "NAME=FACTOR"),
                         ("conflict=2,conflict=3", "named twice")):
        assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--reuse", str(experts),
                     "--expert-scales", bad, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, bad
    # a fresh build takes scales too, on top of --expert-gains
    fresh = tmp_path / "fresh"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--triplets", "3", "--families", "instruction", "conflict", "--expert-gains", "3,0.25",
                 "--expert-scales", "instruction=0.5", "--out", str(fresh)]) == 0
    assert "instruction: 0.5 x the shared gains = 1.5 / 0.125" in capsys.readouterr().out
    built = ExpertSet.load(fresh)
    assert [(e.gain_scale, e.projection.meta.gain_pos, e.projection.meta.gain_neg) for e in built] == [
        (0.5, 1.5, 0.125), (1.0, 3.0, 0.25)]
    assert built.shared_gains == (3.0, 0.25)
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--families", "conflict",
                 "--expert-scales", "instruction=2", "--out", str(tmp_path / "x")]) == 2
    assert "which this build makes no expert for" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # a projection editing layers the experts were not built for needs a rebuild
    elsewhere = tmp_path / "elsewhere.safetensors"
    replace(base, meta=replace(base.meta, default_layers=[0, 1])).save(elsewhere)
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(elsewhere), "--reuse", str(experts),
                 "--out", str(tmp_path / "z")]) == 2
    assert "edits layers [0] that the experts were not built for" in capsys.readouterr().err
    for extra in (["--triplets", "5"], ["--families", "conflict"], ["--build-layers", "1"]):
        assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--reuse", str(experts),
                     *extra, "--out", str(tmp_path / "y")]) == 2
        assert "--reuse keeps the experts' projections" in capsys.readouterr().err
    assert main(["build-experts", "--model", str(model_dir), "--reuse", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "y")]) == 2
    assert "is not an expert set" in capsys.readouterr().err
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--experts", str(experts),
                 "--out", str(tmp_path / "y")]) == 2
    assert "use --reuse DIR" in capsys.readouterr().err
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj)]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    # a model that steers with experts only (no single projection) runs the conflict evaluation
    conflicts = tmp_path / "conflicts.json"
    assert main(["eval-conflicts", "--model", str(model_dir), "--experts", str(experts), "--dtype", "float32",
                 "--split", "dev", "--items", "1", "--router", "embedding", "--out", str(conflicts)]) == 0
    capsys.readouterr()
    run = json.loads(conflicts.read_text())["run"]  # the file says how the model was loaded and routed
    assert run["model_settings"]["dtype"] == "float32" and run["split"] == "dev" and run["items"] == 1
    assert run["model_settings"]["expert_routing_defaults"] == asdict(ExpertSet.load(experts).routing)
    assert {name: g["gain_scale"] for name, g in run["model_settings"]["expert_gains"].items()} == {
        e.name: e.gain_scale for e in ExpertSet.load(experts)}
    out = tmp_path / "families.json"
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--experts", str(experts), "--items", "4", "--families", "instruction", "conflict",
                 "--gain", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("unsteered", "seka", "expert:instruction", "expert:conflict", "ada-attention", "ada-embedding"):
        assert method in printed
    assert "Paired differences from plain SEKA" in printed and "unsteered - seka" not in printed
    reports = json.loads(out.read_text())["reports"]
    assert reports["unsteered"]["instruction"]["share"] == 0.5  # counterbalanced by construction
    for family in ("instruction", "conflict"):  # intervals resample whole counterbalanced units
        assert (reports["unsteered"][family]["ci_low"], reports["unsteered"][family]["ci_high"]) == (0.5, 0.5)
    other = tmp_path / "other.json"
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--experts", str(experts), "--items", "4", "--families", "instruction",
                 "--methods", "expert:instruction", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["eval-families", "--merge", str(out), str(other), "--out", str(tmp_path / "all.json")]) == 0
    merged = capsys.readouterr().out
    assert "expert:instruction" in merged and "ada-attention" in merged
    # the rerun replaces the first file's report, and the merge says so and records where each came from
    assert f"note: expert:instruction / instruction from {other} replaces the one from {out}" in merged
    sources = json.loads((tmp_path / "all.json").read_text())["sources"]
    assert sources["expert:instruction / instruction"] == str(other) and sources["seka / conflict"] == str(out)
    assert json.loads(other.read_text())["model_settings"]["dtype"] == "float32"
    assert json.loads(other.read_text())["model_settings"]["expert_routing_defaults"] == asdict(
        ExpertSet.load(experts).routing)  # the set's stored defaults, which a router runs with unless overridden
    elsewhere = tmp_path / "bf16.json"  # the same run, as if the model had been loaded in bfloat16
    run = json.loads(other.read_text())
    run["model_settings"]["dtype"] = "bfloat16"
    elsewhere.write_text(json.dumps(run))
    assert main(["eval-families", "--merge", str(out), str(elsewhere)]) == 2
    assert "cannot merge runs of different dtypes (bfloat16 vs float32)" in capsys.readouterr().err
    # a file that --methods filters out entirely takes no part in the check
    assert main(["eval-families", "--merge", str(out), str(elsewhere), "--methods", "seka"]) == 0
    older = tmp_path / "older.json"  # written before runs recorded how the model was loaded
    del run["model_settings"]
    older.write_text(json.dumps(run))
    capsys.readouterr()
    assert main(["eval-families", "--merge", str(out), str(older)]) == 0
    assert f"note: {older} did not record its dtype; the others ran in float32" in capsys.readouterr().out
    # a merge runs nothing: options of a run would be ignored, so they are refused
    assert main(["eval-families", "--merge", str(out), str(other), "--model", "smollm2-135m", "--items", "3"]) == 2
    assert "--items, --model would be ignored" in capsys.readouterr().err
    assert "ada-attention - seka:" in merged and "over 8 paired items" in merged  # same items in both files
    joined = json.loads((tmp_path / "all.json").read_text())["reports"]["expert:instruction"]
    assert sorted(joined) == ["conflict", "instruction"]  # a method's families join across files
    assert main(["eval-families", "--merge", str(tmp_path / "all.json"), str(out)]) == 0  # a merge merges again
    assert "over 8 paired items" in capsys.readouterr().out
    assert joined["instruction"] == json.loads(other.read_text())["reports"]["expert:instruction"]["instruction"]
    seed3 = tmp_path / "seed3.json"
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--experts", str(experts), "--items", "4", "--families", "instruction", "--seed", "3",
                 "--methods", "expert:conflict", "--out", str(seed3)]) == 0
    capsys.readouterr()
    assert main(["eval-families", "--merge", str(out), str(seed3)]) == 2  # test items and dev items
    assert "cannot merge runs of different item seeds (0, 3)" in capsys.readouterr().err
    fewer = tmp_path / "fewer.json"  # the same seed, fewer items: merged, with a caution and no pairing
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--items", "8", "--families", "instruction", "--methods", "unsteered", "--out", str(fewer)]) == 0
    capsys.readouterr()
    assert main(["eval-families", "--merge", str(out), str(fewer)]) == 0
    assert "no paired differences: the files were run on different items" in capsys.readouterr().out
    # a count that cuts a counterbalanced set short is refused before anything loads
    assert main(["eval-families", "--model", str(model_dir), "--items", "3", "--families", "conflict"]) == 2
    assert "--items 3 cuts a counterbalanced set short (conflict in sets of 4" in capsys.readouterr().err
    assert main(["eval-families", "--model", str(model_dir), "--items", "3", "--families", "distractors"]) == 2
    assert "use a multiple of 2" in capsys.readouterr().err
    # --families / --methods choose what a merge shows; files that are not eval-families outputs are refused
    picked = tmp_path / "new" / "dir" / "picked.json"
    assert main(["eval-families", "--merge", str(out), "--families", "conflict", "--methods", "seka,unsteered",
                 "--out", str(picked)]) == 0
    shown = json.loads(picked.read_text())["reports"]
    assert sorted(shown) == ["seka", "unsteered"] and all(sorted(r) == ["conflict"] for r in shown.values())
    capsys.readouterr()
    assert main(["eval-families", "--merge", str(out), "--methods", "nothing-like-this"]) == 2
    assert "unknown methods ['nothing-like-this']" in capsys.readouterr().err
    assert main(["eval-families", "--merge", str(out), "--methods", "seka,no-such-method"]) == 2
    assert "unknown methods ['no-such-method']" in capsys.readouterr().err
    assert main(["eval-families", "--merge", str(out), "--methods", "expert:nobody"]) == 2
    assert "--methods ['expert:nobody']: no such method" in capsys.readouterr().err
    assert main(["eval-families", "--merge", str(out), "--methods", "experts"]) == 0  # every expert:NAME row
    assert "expert:instruction" in capsys.readouterr().out
    # a file whose reports are all filtered out does not stop the paired differences
    assert main(["eval-families", "--merge", str(out), str(seed3), "--methods", "seka,ada-attention"]) == 0
    assert "ada-attention - seka:" in capsys.readouterr().out
    for bad in ({"unsteered": {"n": 4}}, {"reports": {"seka": {"conflict": {"efficacy": 1.0}}}}, [1, 2]):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        assert main(["eval-families", "--merge", str(path)]) == 2
        assert "is not an `eval-families --out` file" in capsys.readouterr().err
    # top-1 embedding routing: every item is steered by exactly one expert, so its margin is that expert's
    top1 = tmp_path / "top1.json"
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--experts", str(experts), "--items", "4", "--families", "instruction", "--embedding-top1",
                 "--methods", "ada-embedding,expert:instruction,expert:conflict", "--out", str(top1)]) == 0
    data = json.loads(top1.read_text())
    assert data["routing"] == {"embedding_top1": True}
    rep = {m: data["reports"][m]["instruction"]["margins"] for m in data["reports"]}
    for i, margin in enumerate(rep["ada-embedding"]):
        assert min(abs(margin - rep[e][i]) for e in ("expert:instruction", "expert:conflict")) < 1e-3
    capsys.readouterr()
    assert main(["eval-families", "--model", str(model_dir), "--methods", "bogus"]) == 2
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(proj), "--experts", str(experts),
                 "--methods", "expert:nope"]) == 2
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(proj), "--families", "poetry",
                 "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["eval-conflicts", "--out", "{dir}"], "is a directory; give a file name"),
    (["build-projection", "--out", "{dir}"], "is a directory; give a file name"),
    (["profile-pasta", "--out", "{file}/x.json"], "is a file, not a directory"),
    (["sensitivity", "--out-dir", "{file}"], "is a file; give a directory"),
    (["build-experts", "--out", "{file}"], "is a file; give a directory"),
    (["compare-experts", "--json", "{dir}"], "is a directory; give a file name"),
])
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    argv = [a.format(dir=tmp_path / "a-dir", file=tmp_path / "a-file") for a in argv]
    # the model named does not exist: the output check must come first
    assert main([*argv, "--model", str(tmp_path / "no-model")]) == 2
    assert message in capsys.readouterr().err



@pytest.mark.parametrize("flags, bars_during_run", [(["--no-progress"], False), ([], True)])
def test_no_progress_also_silences_transformers_bars_and_restores_them(flags, bars_during_run, monkeypatch):
    from transformers.utils import logging as hf_logging

    from seka_rag import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_eval", lambda args: seen.append(hf_logging.is_progress_bar_enabled()) or 0)
    hf_logging.enable_progress_bar()  # whatever HF_HUB_DISABLE_PROGRESS_BARS says, start from bars on
    assert main(["eval", "--model", "qwen2.5-coder-0.5b", *flags]) == 0
    assert seen == [bars_during_run]
    assert hf_logging.is_progress_bar_enabled()  # the process-wide setting is put back


def test_prompts_with_literal_markers_and_early_highlight_checks(model_dir, tmp_path, capsys):
    code = "In C, x << 4 shifts x left. Shifts are fast."
    assert main(["preview", "--model", str(model_dir), "--dtype", "float32", "--no-markers",
                 "--highlight", "Shifts are fast", code]) == 0
    assert "11 highlighted tokens" in capsys.readouterr().out  # the tiny tokenizer spells it out
    assert main(["generate", "--model", str(model_dir), "--dtype", "float32", "--no-markers", "--raw",
                 "--max-new-tokens", "2", "--highlight", "Shifts are fast", "--no-steer", code]) == 0
    # mistakes in the prompt are reported before a model loads: this model path does not exist
    missing = str(tmp_path / "no-model-here")
    assert main(["preview", "--model", missing, code]) == 2
    err = capsys.readouterr().err
    assert "--no-markers" in err and r"write \<<" in err
    assert main(["generate", "--model", missing, "--highlight", "Berlin", "Paris is big."]) == 2
    assert '--highlight "Berlin" does not occur in the prompt' in capsys.readouterr().err


def test_every_model_command_takes_no_progress_and_it_silences_long_work(model_dir, tmp_path, capsys):
    from seka_rag.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    loading = [name for name, p in sub.choices.items() if any(a.dest == "model" for a in p._actions)
               and name != "compare-experts"]  # its --model only locates a set's files: no model loads, no bars
    assert {"build-projection", "build-experts", "eval-families", "eval-conflicts", "bench", "inspect"} <= set(loading)
    for name in loading:
        assert any(a.dest == "no_progress" for a in sub.choices[name]._actions), name

    base = ["build-projection", "--model", str(model_dir), "--triplets", "4", "--default-layers", "1",
            "--dtype", "float32"]
    assert main([*base, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "keys H-" in capsys.readouterr().err  # the key-collection bar, when progress is on
    assert main([*base, "--out", str(tmp_path / "b.safetensors"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["eval-families", "--model", str(model_dir), "--projection", str(tmp_path / "b.safetensors"),
                 "--dtype", "float32", "--items", "4", "--families", "conflict", "--methods", "unsteered,seka",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "conflict" in captured.out
    assert main(["eval", "--model", str(model_dir), "--projection", str(tmp_path / "b.safetensors"), "--dtype",
                 "float32", "--families", "conflict", "--items", "conflict=4", "--methods", "unsteered,seka",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "conflict" in captured.out  # no per-cell progress lines, the table stays


def test_every_command_takes_the_other_commands_spellings():
    from seka_rag.bench import METHODS as BENCH_METHODS
    from seka_rag.cli import _as_spelled, _gain_scale_family
    from seka_rag.evaluation.suite import SUITE_FAMILIES, SUITE_METHODS

    assert _as_spelled("seka,ada-attention,adaseka-embedding", SUITE_METHODS) == [
        "seka", "adaseka-attention", "adaseka-embedding"]
    assert _as_spelled(["adaseka-attention", "pasta,seka"], BENCH_METHODS) == ["ada-attention", "pasta", "seka"]
    assert _as_spelled("conflicts", SUITE_FAMILIES) == ["conflict"]
    assert _gain_scale_family("conflict") == "conflicts"
    assert _as_spelled("nonsense", SUITE_METHODS) == ["nonsense"]  # left for the command to refuse


def test_calibrate_prints_the_effective_gains_and_the_next_step(model_dir, tmp_path, capsys):
    base, out = tmp_path / "base.safetensors", tmp_path / "cal.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(base), "--triplets", "6",
                 "--dtype", "float32", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", str(model_dir), "--projection", str(base), "--out", str(out),
                 "--scan-items", "2", "--select-items", "2", "--dtype", "float32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    chosen = Projection.load(out)
    layer = chosen.meta.default_layers[0]
    expected = chosen.meta.gain_pos * float(chosen.layer_scale[chosen.row(layer)])
    assert "effective gains: layer" in printed and f"g+ {expected:g}" in printed
    assert f"seka-rag gain-scale --model {model_dir} --dtype float32 --projection {out}" in printed


def test_eval_conflicts_greedy_answers_unsteered_and_steered(model_dir, tmp_path, capsys):
    import json

    proj, out = tmp_path / "p.safetensors", tmp_path / "conflicts.json"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(proj), "--triplets", "4",
                 "--dtype", "float32", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval-conflicts", "--model", str(model_dir), "--projection", str(proj), "--dtype", "float32",
                 "--items", "2", "--greedy", "--per-case", "--out", str(out), "--no-progress"]) == 0
    header, *rows = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] in
                     (["config"], ["unsteered"], ["steered"])]
    assert header.split()[-2:] == ["greedy", "only"] and len(rows) == 2
    assert all(row.split()[-1] != "-" for row in rows)  # both runs generated answers
    saved = json.loads(out.read_text())
    for label in ("unsteered", "steered"):
        assert saved[label]["greedy_only_share"] is not None
        assert len(saved[label]["cases"]) == 8 and all("generation" in c for c in saved[label]["cases"])


@pytest.mark.parametrize("command", ["build-projection", "calibrate", "profile-pasta", "sensitivity", "gain-scale",
                                     "inspect", "build-experts"])
def test_commands_without_experts_leave_the_expert_options_out_of_their_help(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--model" in text and not any(flag in text for flag in ("--adaptive", "--experts EXPERTS", "--router"))


def test_an_eval_file_given_to_eval_families_merge_is_named(capsys):
    results = Path(__file__).resolve().parents[2] / "docs" / "results.json"
    assert main(["eval-families", "--merge", str(results)]) == 2
    assert "is a `seka-rag eval --out` file" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["eval", "--merge", "a.json", "--markdown", "{dir}"],
                                  ["gain-scale", "--trade-off", "a.json", "--apply", "p", "--write", "{dir}"],
                                  ["calibrate", "--out", "p.safetensors", "--calibration-log", "{dir}"]])
def test_every_output_path_is_checked_before_work(args, tmp_path, capsys):
    assert main([a.format(dir=tmp_path) for a in args]) == 2
    assert "is a directory; give a file name inside it" in capsys.readouterr().err


def test_bench_merge_refuses_files_of_different_dtypes(tmp_path, capsys):
    for name, dtype in (("a", "torch.bfloat16"), ("b", "torch.float32")):
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(info=dict(model="m", dtype=dtype, device="cpu"),
                                                               latency=[], memory=[])))
    assert main(["bench", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "different dtypes" in capsys.readouterr().err


def test_plot_names_the_file_matplotlib_writes(tmp_path):
    pytest.importorskip("matplotlib")
    from seka_rag.evaluation.suite import plot_suite

    results = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results.json").read_text())
    written = plot_suite(results, tmp_path / "chart")
    assert written == tmp_path / "chart.png" and written.is_file()


@pytest.mark.parametrize("args, says", [
    (["eval", "--merge", "in.json", "--plot", "out.png"], "or leave out --plot"),
    (["sensitivity", "--model", "no-such-model"], "or pass --no-plots"),
    (["bench", "--model", "no-such-model", "--plots", "out"], "or leave out --plots"),
])
def test_missing_matplotlib_names_the_option_that_needs_it(monkeypatch, capsys, tmp_path, args, says):
    for name in ["matplotlib", *(m for m in list(sys.modules) if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)  # importing matplotlib (or a part of it) raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "matplotlib is needed" in err and says in err and err.count("\n") == 1


def test_set_gains_stores_hand_chosen_gains(tmp_path, tiny_model, helpers, capsys):
    from seka_rag import Projection, ProjectionError

    seka = tiny_model("llama", projection=False)
    original = helpers.random_projection(seka.geometry, model_id="tiny-llama")
    original.layer_scale = torch.full_like(original.layer_scale, 4.0)
    path = original.save(tmp_path / "p.safetensors")
    assert main(["set-gains", str(path), "--gain-pos", "0.5", "--out", str(tmp_path / "q.safetensors")]) == 0
    printed = capsys.readouterr().out
    changed = Projection.load(tmp_path / "q.safetensors")
    assert (changed.meta.gain_pos, changed.meta.gain_neg) == (0.5, original.meta.gain_neg)
    assert changed.meta.notes["gain_history"] == [[original.meta.gain_pos, original.meta.gain_neg]]
    assert torch.equal(changed.pos, original.pos) and torch.equal(changed.layer_scale, original.layer_scale)
    assert f"-> 0.5 / {original.meta.gain_neg:g}" in printed and "g+ 2," in printed  # 0.5 x scale 4
    assert main(["set-gains", str(path), "--gain-neg", "0.25"]) == 0  # in place by default
    assert Projection.load(path).meta.gain_neg == 0.25
    capsys.readouterr()
    assert main(["set-gains", str(path), "--gain-pos", "nan"]) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert main(["set-gains", str(path)]) == 2
    assert "give --gain-pos and/or --gain-neg" in capsys.readouterr().err
    with pytest.raises(ProjectionError, match="finite number"):
        original.with_gains(gain_pos=float("inf"))
    with pytest.raises(ProjectionError, match="needs gain_pos and/or gain_neg"):
        original.with_gains()
    with pytest.warns(UserWarning, match="turn part of the keys around"):  # said when the gains are stored
        assert main(["set-gains", str(path), "--gain-neg", "-1"]) == 0
    assert main(["set-gains", str(tmp_path)]) == 2  # a directory, not a projection file
    assert not list(tmp_path.glob(".*partial"))  # written beside the file and moved over it


def test_main_forgets_the_options_it_was_given_when_it_returns(capsys):
    from seka_rag import cli

    assert main(["eval", "--merge", "no-such.json", "--out", "x.json"]) == 2
    assert cli._GIVEN_OPTIONS.get() == frozenset()  # a later command in this thread starts clean
    assert cli._spelled_options(cli.build_parser(), cli.build_parser().parse_args(["bench"]),
                                ["--run", "5", "--no-lat", "--decode-tokens=2", "x"]) == {
        "--runs", "--no-latency", "--decode-tokens"}
