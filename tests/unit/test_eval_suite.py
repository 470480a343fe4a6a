"""`seka-rag eval`, `profile-pasta` and `sensitivity` end to end on a tiny model saved to disk (seconds)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from seka_rag import Projection
from seka_rag.cli import main
from seka_rag.errors import SekaError
from seka_rag.evaluation.sensitivity import check_set_names, delta_values, layer_sets
from seka_rag.evaluation.stats import format_ci, format_table, group_share_cis, mean_ci, median_interval, share_ci
from seka_rag.evaluation.suite import (
    DEFAULT_ITEMS,
    PAIRED_TITLE,
    paired_title,
    SUITE_FAMILIES,
    ItemScores,
    Stat,
    SuiteResult,
    item_scores,
    merge_suite_results,
    parse_items,
    parse_names,
)

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(saved_model_dir):
    return saved_model_dir(context_window=4096)  # room for the instruction and lost-in-middle prompts


@pytest.fixture(scope="module")
def projection(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("proj") / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(out), "--triplets", "4",
                 "--default-layers", "1", "--dtype", "float32"]) == 0
    return out


@pytest.fixture(scope="module")
def experts(model_dir, projection, tmp_path_factory):
    out = tmp_path_factory.mktemp("experts") / "set"
    assert main(["build-experts", "--model", str(model_dir), "--projection", str(projection), "--dtype", "float32",
                 "--triplets", "2", "--families", "conflict", "instruction", "--out", str(out)]) == 0
    return out


#: A tiny NQ-open oracle file: short gold passages, answers that no other passage contains.
NQ_RECORDS = [
    ("who built the tower", ["Alice"], "Tower", "The tower was built by Alice in Paris."),
    ("where is the bridge", ["Rome"], "Bridge", "The bridge stands in Rome near the river."),
    ("who met carol", ["Dave"], "Carol", "Carol met Dave in Berlin on Friday."),
    ("what is the capital of spain", ["Madrid"], "Spain", "The capital of Spain is Madrid."),
    ("who jumps over the dog", ["the fox"], "Fox", "The quick brown fox jumps over the lazy dog."),
]


@pytest.fixture()
def nq_file(tmp_path):
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for q, answers, title, text in NQ_RECORDS:
            ctxs = [{"title": title, "text": text, "isgold": True}]
            f.write(json.dumps({"question": q, "answers": answers, "ctxs": ctxs}) + "\n")
    return path


def _base(model_dir, projection) -> list[str]:
    return ["--model", str(model_dir), "--projection", str(projection), "--dtype", "float32"]


def _check_stat(d: dict) -> None:
    assert set(d) == {"mean", "ci_low", "ci_high", "n", "unit", "text"}
    assert d["n"] > 0 and d["unit"] in ("share", "nats")
    assert d["ci_low"] <= d["mean"] + 1e-9 and d["mean"] <= d["ci_high"] + 1e-9
    assert d["text"].endswith(f"({d['n']})")


# ---------------------------------------------------------------------------------------------- eval


def test_eval_every_method_without_experts_or_nq(model_dir, projection, tmp_path, capsys):
    out, md = tmp_path / "results.json", tmp_path / "tables.md"
    code = main(["eval", *_base(model_dir, projection), "--items", "counterfact=4,conflict=4,instructions=5",
                 "--max-new-tokens", "3", "--pasta-profile-items", "4", "--pasta-top", "2", "--no-progress",
                 "--out", str(out), "--markdown", str(md), "--plot", str(tmp_path / "results.png")])
    printed = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "results.png").stat().st_size > 1000 and "results.png" in printed
    assert "lost-in-middle skipped" in printed and "adaseka-attention skipped" in printed
    assert "profiling PASTA heads now" in printed
    data = json.loads(out.read_text())
    ran = ["unsteered", "prompt-markers", "prompt-important", "pasta", "spa", "seka"]
    assert data["methods"] == ran and data["families"] == ["counterfact", "conflict", "instructions"]
    assert set(data["skipped"]["methods"]) == {"adaseka-attention", "adaseka-embedding"}
    assert set(data["skipped"]["families"]) == {"lost-in-middle"} and not data["errors"]
    assert data["items"] == {"counterfact": 4, "conflict": 4, "instructions": 5}
    for method in ran:
        assert set(data["table"][method]) == {"counterfact", "conflict", "instructions"}
        for stat in data["table"][method].values():
            _check_stat(stat)
        assert set(data["seconds"]["conflict"]) >= {method}
    assert data["table"]["unsteered"]["conflict"]["mean"] == 0.5  # counterbalanced by construction
    assert "(n) counts conflict: cases, 4 per item; intervals resample whole items" in printed
    assert data["table"]["seka"]["instructions"]["n"] == 5
    setup = data["settings"]["model_settings"]  # what the steering ran with, to tie the table to its settings
    assert setup["projection_defaults"]["fingerprint"] and setup["seka_rag_version"]
    assert "Setup: float32 on cpu; SEKA g+ " in printed and "Setup: float32 on cpu; SEKA g+ " in md.read_text()
    assert "conflict 4 cases (1 item × 4)" in md.read_text()
    assert data["reports"]["instructions"]["spa"]["settings"]["method"] == "spa"
    assert "outputs" not in data["reports"]["instructions"]["spa"]  # --per-item not given
    assert data["settings"]["pasta"]["profiled_now"] and data["settings"]["pasta"]["heads"]
    details = data["details"]["instructions: pass rate by instruction type"]["seka"]
    assert set(details) == {"all", "language", "pronoun", "uppercase", "json", "max_words"}
    echo = data["details"]["instructions: answers that repeat the highlighted instruction"]
    assert set(echo) == set(ran) and all(set(cols) == {"passes without repeating the instruction",
                                                       "answers repeating the instruction"} for cols in echo.values())
    for method in ran:
        report = data["reports"]["instructions"][method]
        assert echo[method]["passes without repeating the instruction"]["mean"] == pytest.approx(report["clean_share"])
        assert report["clean_share"] <= report["share"] + 1e-12
    # the printed table: one row per method, cells "mean [lo, hi] (n)"
    assert "50.0 [" in printed and "(4)" in printed
    text = md.read_text()
    assert text.startswith("# Evaluation suite") and "| method | counterfact | conflict | instructions |" in text
    assert "## Notes" in text and "lost-in-middle: skipped" in text
    # every cell's headline item by item (stored without --per-item too), and the paired differences from it
    for family, n in data["items"].items():
        for method in ran:
            scores = data["item_scores"][family][method]
            assert len(scores["values"]) == len(scores["units"]) == n and set(scores["values"]) <= {0.0, 1.0}
            assert sum(scores["values"]) / n == pytest.approx(data["table"][method][family]["mean"])
    assert set(data["paired"]) == set(ran) - {"unsteered"}
    for method, row in data["paired"].items():
        for family, diff in row.items():
            assert diff["unit"] == "share difference" and diff["n"] == data["items"][family]
            assert diff["mean"] == pytest.approx(data["table"][method][family]["mean"]
                                                 - data["table"]["unsteered"][family]["mean"])
            assert diff["ci_low"] <= diff["mean"] + 1e-9 <= diff["ci_high"] + 2e-9
    assert PAIRED_TITLE in printed and f"## {PAIRED_TITLE}" in text and "| method - unsteered |" in text


def test_eval_with_experts_and_a_tiny_nq_file(model_dir, projection, experts, nq_file, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", *_base(model_dir, projection), "--experts", str(experts),
                 "--families", "lost-in-middle,conflict", "--methods", "unsteered,seka,adaseka-attention,adaseka-embedding",
                 "--items", "conflict=4,lost-in-middle=2", "--nq", str(nq_file), "--nq-passages", "3",
                 "--nq-policies", "middle,gold", "--nq-max-new-tokens", "3", "--batch-size", "4", "--per-item",
                 "--nq-batch-size", "2", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads(out.read_text())
    assert data["settings"]["nq_max_new_tokens"] == 3
    assert data["reports"]["lost-in-middle"]["seka"]["settings"]["max_new_tokens"] == 3
    assert data["families"] == ["lost-in-middle", "conflict"] and not data["skipped"]["methods"]
    assert data["methods"] == ["unsteered", "seka", "adaseka-attention", "adaseka-embedding"]
    assert data["reports"]["conflict"]["seka"]["settings"]["router"] == "projection"
    assert data["reports"]["conflict"]["adaseka-embedding"]["settings"]["router"] == "embedding"
    for method in data["methods"]:
        _check_stat(data["table"][method]["lost-in-middle"])
        assert data["table"][method]["lost-in-middle"]["n"] == 6  # 2 questions x 3 gold positions
    em = data["details"]["lost-in-middle, 'middle' highlighted: best-subspan EM by gold position"]
    assert set(em["seka"]) == {"first", "middle", "last", "all"} and em["seka"]["first"]["n"] == 2
    delta = data["details"]["lost-in-middle, 'gold' highlighted: change of log p(gold answer) vs unsteered, nats"]
    assert delta["unsteered"]["all"]["mean"] == 0.0 and delta["unsteered"]["all"]["unit"] == "nats"
    rows = data["reports"]["lost-in-middle"]["seka"]["rows"]  # --per-item keeps them
    assert len(rows) == 2 * 3 * 2 and {r["policy"] for r in rows} == {"middle", "gold"}
    assert "reference" in data["seconds"]["lost-in-middle"]
    assert "lost-in-middle, 'gold' highlighted" in printed
    assert data["settings"]["nq_batch_size"] == 2
    unsteered = data["table"]["unsteered"]["conflict"]  # one item's four counterbalanced cases
    assert (unsteered["mean"], unsteered["ci_low"], unsteered["ci_high"]) == (0.5, 0.5, 0.5)
    # the main table's lost-in-middle cell is the first policy's, and the legend says which
    assert "all gold positions, 'middle' passages highlighted (the first of the policies)" in printed
    # its item scores too: the 'middle' rows, one resampling unit per question (its three gold positions)
    scores = data["item_scores"]["lost-in-middle"]["seka"]
    middle = [r for r in rows if r["policy"] == "middle"]
    assert scores["values"] == [float(r["em"]) for r in middle]
    assert scores["units"] == [f"q{r['question_index']}" for r in middle] and len(set(scores["units"])) == 2
    assert data["item_scores"]["conflict"]["seka"]["units"] == data["reports"]["conflict"]["seka"]["units"]
    # a file from before item scores were stored gets them back from its per-item reports
    data.pop("item_scores")
    restored = SuiteResult.from_dict(data)
    assert restored.item_scores["lost-in-middle"]["seka"].values == tuple(scores["values"])
    assert {m: {f: s.to_dict() for f, s in row.items()} for m, row in restored.paired().items()} == data["paired"]


def test_profile_pasta_then_eval_with_the_heads(model_dir, projection, tmp_path, capsys):
    heads = tmp_path / "heads.json"
    assert main(["profile-pasta", *_base(model_dir, projection), "--items", "4", "--top", "3", "--alpha", "0.1",
                 "--out", str(heads)]) == 0
    assert "selected (layer, head" in capsys.readouterr().out
    saved = json.loads(heads.read_text())
    assert len(saved["selected"]) == 3 and len(saved["scores"]) == 2 * 4 and saved["n_items"] == 4
    assert saved["alpha"] == 0.1 and saved["model"] == str(model_dir)
    out = tmp_path / "r.json"
    assert main(["eval", *_base(model_dir, projection), "--families", "conflict", "--methods", "pasta",
                 "--items", "4", "--pasta-heads", str(heads), "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "profiling PASTA heads now" not in printed
    data = json.loads(out.read_text())
    assert data["settings"]["pasta"]["heads_file"] == str(heads) and data["settings"]["pasta"]["alpha"] == 0.1
    assert sum(map(len, data["settings"]["pasta"]["heads"].values())) == 3
    _check_stat(data["table"]["pasta"]["conflict"])
    # the bench takes the same profile
    bench = tmp_path / "bench.json"
    assert main(["bench", *_base(model_dir, projection), "--methods", "pasta", "--pasta-heads", str(heads),
                 "--lengths", "16", "--runs", "1", "--decode-tokens", "1", "--no-memory", "--out", str(bench)]) == 0
    config = json.loads(bench.read_text())["info"]["config"]
    assert sum(map(len, config["pasta_heads"].values())) == 3
    # a profile of another model whose heads this model lacks is refused before any cell runs
    elsewhere = json.loads(heads.read_text())
    elsewhere["model"] = "another/model"
    elsewhere["selected"] = [[20, 0, *elsewhere["selected"][0][2:]]] + elsewhere["selected"][1:]
    (tmp_path / "elsewhere.json").write_text(json.dumps(elsewhere))
    capsys.readouterr()
    assert main(["eval", *_base(model_dir, projection), "--families", "conflict", "--methods", "pasta",
                 "--items", "4", "--pasta-heads", str(tmp_path / "elsewhere.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--pasta-heads {tmp_path / 'elsewhere.json'}: " in err and "layer 20" in err
    # profiling on the fly for more heads than the profiled layers hold names the options to change
    assert main(["eval", *_base(model_dir, projection), "--families", "conflict", "--methods", "pasta",
                 "--items", "4", "--pasta-top", "50", "--no-progress"]) == 2
    assert "--pasta-top 50 asks for more heads than the" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--methods", "seka,bogus"], "unknown methods ['bogus']"),
    (["--families", "poetry"], "unknown families ['poetry']"),
    (["--nq-policies", "random"], "unknown lost-in-middle policies"),
    (["--items", "poetry=3"], "unknown family 'poetry'"),
    (["--items", "-2"], "--items must be a positive integer"),
    (["--nq", "/no/such/nq.jsonl"], "--nq: no such file"),
    (["--pasta-heads", "/no/such/heads.json"], "--pasta-heads: no such file"),
    (["--nq-max-new-tokens", "0"], "--nq-max-new-tokens: must be a positive integer, got 0"),
    (["--max-new-tokens", "-1"], "--max-new-tokens: must be a positive integer, got -1"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
    (["--nq-passages", "2"], "--nq-passages: must be at least 3 (gold passage first, middle and last), got 2"),
])
def test_eval_bad_input_exits_2(model_dir, projection, args, message, capsys):
    assert main(["eval", *_base(model_dir, projection), *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_leaves_out_counterfact_items_whose_targets_share_a_first_token(model_dir, projection, tmp_path, capsys):
    def record(case_id, subject, prompt, new, old):
        return {"case_id": case_id, "requested_rewrite": {"prompt": prompt, "subject": subject,
                                                          "target_new": {"str": new}, "target_true": {"str": old}}}

    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps([record(0, "Ada", "{} was born in", "New York", "New Delhi"),
                                record(1, "Bo", "{} speaks", "English", "French")]))
    out = tmp_path / "r.json"
    assert main(["eval", *_base(model_dir, projection), "--families", "counterfact", "--counterfact", str(path),
                 "--items", "counterfact=2", "--methods", "unsteered,seka", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "counterfact: 1 item(s) left out of every cell: their two targets share their first token" in printed
    data = json.loads(out.read_text())
    assert all(r["n"] == 1 and r["n_tied"] == 1 for r in data["reports"]["counterfact"].values())
    assert data["table"]["seka"]["counterfact"]["n"] == 1


def test_eval_bad_data_files_fail_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "counterfact.json"
    bad.write_text(json.dumps([{"case_id": 0, "requested_rewrite": {"subject": "x"}}]))
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--families", "counterfact", "--counterfact",
                 str(bad)]) == 2
    assert "cannot build the counterfact items" in capsys.readouterr().err
    nq = tmp_path / "nq.jsonl"
    nq.write_text(json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "x"}]}) + "\n")
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--families", "lost-in-middle", "--nq", str(nq),
                 "--items", "2"]) == 2  # one record: not enough questions
    assert "cannot build the lost-in-middle items" in capsys.readouterr().err


def test_eval_unreadable_head_file_exits_2(model_dir, projection, tmp_path, capsys):
    bad = tmp_path / "heads.json"
    bad.write_text("{}")
    assert main(["eval", *_base(model_dir, projection), "--methods", "pasta", "--families", "conflict",
                 "--items", "4", "--pasta-heads", str(bad)]) == 2
    assert "cannot read PASTA head profile" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- sensitivity


def test_sensitivity_writes_json_markdown_and_heat_maps(model_dir, projection, tmp_path, capsys):
    out_dir = tmp_path / "sens"
    assert main(["sensitivity", *_base(model_dir, projection), "--items", "2", "--gains-pos", "1,2",
                 "--gains-neg", "0,0.5", "--layer-sets", "default,all,last-1", "--delta-quantiles", "0,0.5",
                 "--no-progress", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "Gains (g+ rows, g- columns)" in printed and "Layer sets x head threshold" in printed
    stem = model_dir.name.lower()
    data = json.loads((out_dir / f"{stem}.json").read_text())
    assert data["split"] == "dev" and data["cases"] == 8 and data["scorer"] == "first-token"
    assert [(p["gain_pos"], p["gain_neg"]) for p in data["gains"]] == [(1, 0), (1, 0.5), (2, 0), (2, 0.5)]
    assert all(p["layers"] == [1] and p["quantile"] is None for p in data["gains"])
    # "last-1" is the same layer as "default" ([1]): one row for both
    assert [(p["layer_set"], p["quantile"]) for p in data["layers_delta"]] == [
        ("default=last-1", 0.0), ("default=last-1", 0.5), ("all", 0.0), ("all", 0.5)]
    full = [p for p in data["layers_delta"] if p["layer_set"] == "all"]
    assert full[0]["heads_kept"] == full[0]["heads_total"] == 4 and full[1]["heads_kept"] < 4
    assert 0 <= data["unsteered"]["share"] <= 1 and data["defaults"]["layers"] == [1]
    assert data["defaults"]["quantile"] == 0.0  # δ = 0 keeps every head, as the built projection does
    for name in (f"{stem}-gains.png", f"{stem}-layers-delta.png"):
        png = (out_dir / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "| g+ 1 |" in (out_dir / f"{stem}.md").read_text()


def test_sensitivity_shared_prefix_matches_the_family_scorer(model_dir, projection, tmp_path, capsys):
    out_dir = tmp_path / "s"
    assert main(["sensitivity", *_base(model_dir, projection), "--items", "2", "--gains-pos", "2",
                 "--gains-neg", "0.5", "--layer-sets", "default", "--delta-quantiles", "0", "--scorer",
                 "shared-prefix", "--no-plots", "--no-progress", "--out-dir", str(out_dir)]) == 0
    data = json.loads((out_dir / f"{model_dir.name.lower()}.json").read_text())
    assert data["scorer"] == "shared-prefix" and data["cases"] == 8
    assert data["unsteered"]["share"] == 0.5  # counterbalanced cases, full answers
    assert not list(out_dir.glob("*.png"))


def test_shared_prefix_sweep_leaves_the_shared_models_projection_alone(tiny_model, helpers, monkeypatch):
    """Other threads may use the model during a sweep: each setting scores through a view of it."""
    from seka_rag.evaluation import families, sensitivity

    seka = tiny_model("llama")
    own = seka.projection
    other = helpers.random_projection(seka.geometry, seed=5, model_id=seka.model_id)
    seen = []

    def fake_score_items(model, items, **kwargs):
        seen.append((model.projection, seka.projection))
        return [1.0, -1.0]

    monkeypatch.setattr(families, "score_items", fake_score_items)
    scorer = sensitivity._Scorer(seka, items=2, seed=0, scorer="shared-prefix", batch_size=2)
    assert scorer(other, 1.0, 0.5, None) == (0.5, 0.0)
    assert len(seen) == 1 and seen[0][0] is other and seen[0][1] is own
    assert seka.projection is own


def test_sensitivity_bad_input_exits_2(model_dir, projection, tmp_path, capsys):
    assert main(["sensitivity", *_base(model_dir, projection), "--layer-sets", "default,top-3",
                 "--out-dir", str(tmp_path)]) == 2
    assert "unknown layer sets ['top-3']" in capsys.readouterr().err
    assert main(["sensitivity", *_base(model_dir, projection), "--delta-quantiles", "1.5", "--no-plots",
                 "--out-dir", str(tmp_path)]) == 2
    assert "quantiles" in capsys.readouterr().err


def test_gain_scale_lost_in_middle_rows_and_scaling(model_dir, projection, nq_file, tmp_path, capsys):
    out_dir = tmp_path / "gs"
    assert main(["gain-scale", *_base(model_dir, projection), "--family", "lost-in-middle", "--nq", str(nq_file),
                 "--items", "2", "--first-question", "1", "--nq-passages", "3", "--scales", "1,0.000001",
                 "--em", "--no-progress", "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "Gain scale on test lost-in-middle items" in printed  # question 1 is a test question (dev: 2000 on)
    data = json.loads((out_dir / f"{model_dir.name.lower()}-lost-in-middle-gain-scale.json").read_text())
    rows = data["rows"]
    assert data["settings"]["first_question"] == 1 and data["settings"]["policies"] == ["gold", "middle"]
    # 2 scales x 2 policies x 4 cells (3 positions + all) x 3 metrics, then unsteered EM per cell
    assert len(rows) == 2 * 2 * 4 * 3 + 4
    full = {(r["cell"], r["metric"]): r for r in rows if r["scale"] == 1}
    tiny = {(r["cell"], r["metric"]): r for r in rows if r["scale"] == 1e-6}
    assert full[("gold / all", "dlogp")]["n"] == 6 and full[("gold / first", "dlogp")]["n"] == 2
    default_gain = full[("gold / all", "dlogp")]["gain_pos"]
    assert tiny[("gold / all", "dlogp")]["gain_pos"] == pytest.approx(default_gain * 1e-6)
    # the gains really are scaled: a vanishing edit leaves log p where unsteered has it
    assert abs(tiny[("gold / all", "dlogp")]["value"]) < 1e-3 < abs(full[("gold / all", "dlogp")]["value"])
    assert "| scale |" in (out_dir / f"{model_dir.name.lower()}-lost-in-middle-gain-scale.md").read_text()


def test_gain_scale_instructions_has_an_unsteered_row(model_dir, projection, tmp_path, capsys):
    out_dir = tmp_path / "gs"
    assert main(["gain-scale", *_base(model_dir, projection), "--family", "instructions", "--items", "5",
                 "--scales", "0.5", "--max-new-tokens", "4", "--no-progress", "--out-dir", str(out_dir)]) == 0
    data = json.loads((out_dir / f"{model_dir.name.lower()}-instructions-gain-scale.json").read_text())
    heads = [(r["scale"], r["gain_pos"]) for r in data["rows"] if r["cell"] == "all"]
    assert heads[0] == (0.0, None) and heads[1][0] == 0.5 and heads[1][1] is not None
    assert data["settings"]["seed"] == 1 and all(r["n"] >= 1 for r in data["rows"])
    kinds = {r["cell"] for r in data["rows"]} - {"all"}
    assert kinds == {"language", "pronoun", "uppercase", "json", "max_words"}


@pytest.mark.parametrize("family, metric, per_item", [("conflicts", "share", 4), ("counterfact", "efficacy", 1)])
def test_gain_scale_scored_families_have_unsteered_and_scaled_rows(model_dir, projection, tmp_path, family, metric,
                                                                   per_item):
    out_dir = tmp_path / "gs"
    assert main(["gain-scale", *_base(model_dir, projection), "--family", family, "--items", "3",
                 "--scales", "1,0.000001", "--no-progress", "--out-dir", str(out_dir)]) == 0
    data = json.loads((out_dir / f"{model_dir.name.lower()}-{family}-gain-scale.json").read_text())
    assert data["settings"]["split"] == "dev"
    rows = {(r["scale"], r["metric"]): r for r in data["rows"]}
    assert set(rows) == {(s, m) for s in (0.0, 1.0, 1e-6) for m in (metric, "margin")}
    assert rows[(0.0, metric)]["gain_pos"] is None and rows[(0.0, metric)]["n"] == 3 * per_item
    default_gain = rows[(1.0, metric)]["gain_pos"]
    assert rows[(1e-6, metric)]["gain_pos"] == pytest.approx(default_gain * 1e-6)
    # a vanishing edit scores like unsteered; the full one moves the margin
    unsteered, tiny, full = (rows[(s, "margin")]["value"] for s in (0.0, 1e-6, 1.0))
    assert abs(tiny - unsteered) < 1e-3 < abs(full - unsteered)
    assert 0.0 <= rows[(1.0, metric)]["value"] <= 1.0


def _gs(family, rows, model="m", gains=(2.0, 0.5), **settings):
    from seka_rag.evaluation.gain_scale import GainScaleResult, GainScaleRow

    return GainScaleResult(family, model, {"default_gains": list(gains), **settings},
                           [GainScaleRow(s, None if s == 0 else s, None if s == 0 else s / 4, cell, metric, v, None, 10)
                            for s, cell, metric, v in rows])


def test_a_sweep_on_test_items_says_so(tmp_path, capsys):
    from seka_rag.evaluation.gain_scale import DEV_FIRST_QUESTION

    rows = [(0.0, "all", "pass", 0.3), (1.0, "all", "pass", 0.5)]
    assert _gs("instructions", rows, seed=0).split == "test" and _gs("instructions", rows, seed=1).split == "dev"
    lim = [(1.0, "gold / all", "rises", 0.5)]
    assert _gs("lost-in-middle", lim, first_question=0).split == "test"
    assert _gs("lost-in-middle", lim, first_question=DEV_FIRST_QUESTION).split == "dev"
    assert _gs("conflicts", [(1.0, "all", "share", 1.0)], split="dev").split == "dev"
    assert "Gain scale on test instructions items" in _gs("instructions", rows, seed=0).text()
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(_gs("instructions", rows, seed=0).to_dict()))
    with pytest.warns(UserWarning, match="instructions sweep ran on the suite's test items"):
        assert main(["gain-scale", "--trade-off", str(path)]) == 0
    assert "(dev items, test items for instructions;" in capsys.readouterr().out


def test_trade_off_picks_the_best_mean_among_scales_that_keep_the_conflict_bar():
    from seka_rag.evaluation.gain_scale import trade_off

    conflicts = _gs("conflicts", [(0.0, "all", "share", 0.5), (1.0, "all", "share", 1.0), (0.5, "all", "share", 0.97),
                                  (0.25, "all", "share", 0.90), (1.0, "all", "margin", 9.0)])
    instructions = _gs("instructions", [(0.0, "all", "pass", 0.3), (1.0, "all", "pass", 0.3), (0.5, "all", "pass", 0.5),
                                        (0.25, "all", "pass", 0.7), (0.5, "json", "pass", 0.0)])
    lim = _gs("lost-in-middle", [(s, f"{p} / {pos}", "rises", v) for s, p, pos, v in [
        (1.0, "gold", "all", 0.4), (1.0, "middle", "all", 0.0), (1.0, "gold", "first", 1.0),
        (0.5, "gold", "all", 0.5), (0.5, "middle", "all", 0.3), (0.25, "gold", "all", 0.6),
        (0.25, "middle", "all", 0.4), (0.125, "gold", "all", 0.9), (0.125, "middle", "all", 0.9)]])
    result = trade_off([conflicts, instructions, lim])
    assert result.scales == [1.0, 0.5, 0.25] and result.dropped == [0.125]  # 0.125: lost-in-middle only
    assert result.shares["lost-in-middle"][1.0] == pytest.approx(0.2)  # mean over policies, "all" cells only
    assert result.objective[0.5] == pytest.approx((0.97 + 0.5 + 0.4) / 3)
    assert result.eligible == {1.0: True, 0.5: True, 0.25: False}
    assert result.pick == 0.5  # 0.25 has the best mean but drops conflicts below the bar
    assert result.model == "m" and result.default_gains == (2.0, 0.5)
    table = result.table()
    assert "0.5 <- pick" in table and "0 (unsteered)" in table and "50.0" in table
    assert trade_off([conflicts, instructions, lim], conflict_bar=1.01).pick is None
    # a tie goes to the larger scale; a later run of a family replaces that scale's rows
    tie = trade_off([_gs("instructions", [(1.0, "all", "pass", 0.5), (0.5, "all", "pass", 0.5)])])
    assert tie.pick == 1.0 and "conflicts" not in tie.shares and tie.eligible == {1.0: True, 0.5: True}
    rerun = trade_off([_gs("instructions", [(1.0, "all", "pass", 0.5), (0.5, "all", "pass", 0.5)], batch_size=8),
                       _gs("instructions", [(0.5, "all", "pass", 0.6)], batch_size=4)])
    assert rerun.pick == 0.5 and rerun.shares["instructions"] == {1.0: 0.5, 0.5: 0.6}


def test_trade_off_refuses_results_it_cannot_compare():
    from seka_rag.evaluation.gain_scale import trade_off

    one = _gs("conflicts", [(1.0, "all", "share", 1.0)])
    with pytest.raises(SekaError, match="different models"):  # also across families
        trade_off([one, _gs("instructions", [(1.0, "all", "pass", 1.0)], model="x")])
    with pytest.raises(SekaError, match="share no gain scale"):
        trade_off([one, _gs("instructions", [(0.5, "all", "pass", 1.0)])])
    with pytest.raises(SekaError, match="different default gains"):
        trade_off([one, _gs("instructions", [(1.0, "all", "pass", 1.0)], gains=(1.0, 1.0))])
    with pytest.raises(SekaError, match="different items or settings"):
        trade_off([_gs("instructions", [(1.0, "all", "pass", 1.0)], items=20),
                   _gs("instructions", [(0.5, "all", "pass", 1.0)], items=8)])
    with pytest.raises(SekaError, match="no 'share' rows"):
        trade_off([_gs("conflicts", [(1.0, "all", "margin", 3.0)])])


def test_trade_off_cli_prints_the_pick_and_applies_it(tmp_path, capsys, projection):
    from seka_rag.evaluation.gain_scale import write_outputs

    tiny = Projection.load(projection)
    gains = (tiny.meta.gain_pos, tiny.meta.gain_neg)
    model = tiny.meta.model_id
    paths = [write_outputs(_gs(f, rows, model=model, gains=gains), tmp_path, f)[0] for f, rows in [
        ("conflicts", [(0.0, "all", "share", 0.5), (1.0, "all", "share", 0.99), (0.5, "all", "share", 0.96)]),
        ("counterfact", [(1.0, "all", "efficacy", 0.9), (0.5, "all", "efficacy", 0.95), (0.25, "all", "efficacy", 1)])]]
    assert main(["gain-scale", "--trade-off", *map(str, paths)]) == 0  # runs nothing: no model arguments needed
    out = capsys.readouterr().out
    assert "pick: x0.5 of the projection's default gains" in out and "counterfact" in out
    assert "scales 0.25 are not measured in every family" in out
    # --apply writes the projection with its default gains times the pick, and says why in its notes
    proj_path = tmp_path / "p.safetensors"
    tiny.save(proj_path)
    assert main(["gain-scale", "--trade-off", *map(str, paths), "--apply", str(proj_path),
                 "--write", str(tmp_path / "scaled.safetensors")]) == 0
    assert f"default gains {gains[0]:g} / {gains[1]:g} -> {gains[0] / 2:g} / {gains[1] / 2:g}" in capsys.readouterr().out
    scaled = Projection.load(tmp_path / "scaled.safetensors")
    assert (scaled.meta.gain_pos, scaled.meta.gain_neg) == pytest.approx((gains[0] / 2, gains[1] / 2))
    assert torch.equal(scaled.layer_scale, tiny.layer_scale) and torch.equal(scaled.pos, tiny.pos)
    note = scaled.meta.notes["gain_trade_off"]
    assert note["scale"] == 0.5 and note["previous_gains"] == list(gains) and len(note["files"]) == 2
    # files swept on other default gains, or on another model, are not applied
    for kw, message in (({"gains": (gains[0] * 3, gains[1])}, "apply the pick to the projection the sweeps ran on"),
                        ({"model": "other/model"}, "the sweeps ran on 'other/model'")):
        other = [write_outputs(_gs(f, rows, **{"model": model, "gains": gains, **kw}), tmp_path / "o", f)[0]
                 for f, rows in [("conflicts", [(1.0, "all", "share", 1.0)])]]
        assert main(["gain-scale", "--trade-off", *map(str, other), "--apply", str(proj_path),
                     "--write", str(tmp_path / "no.safetensors")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no.safetensors").exists()
    # nothing keeps the bar: nothing is written
    assert main(["gain-scale", "--trade-off", *map(str, paths), "--conflict-bar", "1", "--apply", str(proj_path),
                 "--write", str(tmp_path / "no.safetensors")]) == 2
    assert "picked no scale" in capsys.readouterr().err and not (tmp_path / "no.safetensors").exists()


@pytest.mark.parametrize("args, message", [
    (["--trade-off", "F", "--family", "conflicts"], "leave out --family"),
    (["--trade-off", "F", "--items", "3", "--scales", "1"], "leave out --items, --scales"),
    (["--trade-off", "F", "--conflict-bar", "1.5"], "between 0 and 1"),
    (["--trade-off", "F", "--write", "x"], "go together"),
    (["--family", "conflicts", "--conflict-bar", "0.9"], "go with --trade-off"),
    (["--family", "conflicts", "--seed", "3"], "--seed does not apply to --family conflicts"),
    (["--family", "instructions", "--nq-passages", "3", "--first-question", "1"],
     "--nq-passages, --first-question do not apply to --family instructions"),
    (["--family", "counterfact", "--max-new-tokens", "4"], "--max-new-tokens does not apply"),
    (["--family", "conflicts", "--items", "100000"], "conflict dev items"),
    ([], "choose a --family"),
])
def test_gain_scale_options_out_of_place_are_errors(tmp_path, capsys, args, message):
    good = tmp_path / "F"
    from seka_rag.evaluation.gain_scale import write_outputs

    write_outputs(_gs("conflicts", [(1.0, "all", "share", 1.0)]), tmp_path, "x")[0].rename(good)
    args = [str(good) if a == "F" else a for a in args]
    assert main(["gain-scale", *args]) == 2  # before any model is loaded: no model arguments given
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    ({"family": "conflicts", "model": "m", "settings": [], "rows": []}, "settings is not an object"),
    ({"family": "nope", "settings": {}, "rows": []}, "family must be one of"),
    ({"family": "conflicts", "settings": {"default_gains": [1.0]}, "rows": []}, "default_gains"),
    ({"family": "conflicts", "settings": {"default_gains": [1.0, 0.5]},
      "rows": [{"scale": 1, "cell": "all", "metric": "share", "value": None, "ci": None, "n": 1}]}, "not a number"),
    ({"family": "conflicts", "settings": {"default_gains": [1.0, 0.5]}, "rows": []}, "no rows"),
])
def test_trade_off_files_are_checked(tmp_path, capsys, bad, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["gain-scale", "--trade-off", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not a gain-scale result file" in err and message in err


@pytest.mark.parametrize("family, n_items", [("conflicts", 40), ("counterfact", 64), ("instructions", 8)])
def test_gain_scale_item_defaults_per_family(model_dir, projection, tmp_path, monkeypatch, family, n_items):
    from seka_rag.evaluation import gain_scale as gs

    seen = {}

    def fake(model, **kwargs):
        seen.update(kwargs)
        return gs.GainScaleResult(family, model.model_id, {})

    monkeypatch.setattr(gs, {"conflicts": "gain_scale_conflicts", "counterfact": "gain_scale_counterfact",
                             "instructions": "gain_scale_instructions"}[family], fake)
    assert main(["gain-scale", *_base(model_dir, projection), "--family", family, "--no-progress",
                 "--out-dir", str(tmp_path)]) == 0
    assert seen["n_items"] == n_items and list(seen["scales"]) == list(gs.DEFAULT_SCALES)
    assert ("seed" in seen) == (family != "conflicts") and seen.get("seed", 1) == 1


def test_gain_scale_file_names_keep_dotted_model_names(tmp_path):
    from seka_rag.evaluation.gain_scale import GainScaleResult, write_outputs

    result = GainScaleResult("instructions", "m", {"items": 1})
    paths = write_outputs(result, tmp_path, "qwen2.5-coder-0.5b")
    assert [p.name for p in paths] == ["qwen2.5-coder-0.5b-instructions-gain-scale.json",
                                       "qwen2.5-coder-0.5b-instructions-gain-scale.md"]
    assert json.loads(paths[0].read_text())["family"] == "instructions"


@pytest.mark.parametrize("args, message", [
    (["--family", "lost-in-middle"], "needs the NQ-open oracle file"),
    (["--family", "instructions", "--scales", "0"], "gain scales must be positive"),
    (["--family", "instructions", "--items", "0"], "--items: must be a positive integer, got 0"),
    (["--family", "conflicts", "--max-new-tokens", "4"], "does not apply to --family conflicts"),
    (["--family", "counterfact", "--em"], "--em does not apply to --family counterfact"),
])
def test_gain_scale_bad_input_exits_2(model_dir, projection, args, message, tmp_path, capsys):
    assert main(["gain-scale", *_base(model_dir, projection), *args, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_gain_scale_past_the_end_of_the_data_is_a_clear_error(model_dir, projection, nq_file, tmp_path, capsys):
    assert main(["gain-scale", *_base(model_dir, projection), "--family", "lost-in-middle", "--nq", str(nq_file),
                 "--out-dir", str(tmp_path)]) == 2  # the default first dev question (2000) is past 5 records
    assert "lost-in-middle dev items" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- helpers


def test_parse_names_and_items():
    assert parse_names(None, ("a", "b"), "things") == ["a", "b"]
    assert parse_names("b, a,b", ("a", "b"), "things") == ["b", "a"]
    with pytest.raises(SekaError, match="unknown things"):
        parse_names(" , ", ("a",), "things")
    assert parse_items(None) == DEFAULT_ITEMS
    assert parse_items("8", ["conflict"]) == {"conflict": 8}
    with pytest.raises(SekaError, match="counts cases, four per item .* multiple of 4, e.g. conflict=8"):
        parse_items("7", ["conflict"])  # an item without its counterbalancing cases
    assert parse_items("7", ["counterfact"]) == {"counterfact": 7}
    assert parse_items("conflict=8,instructions=5") == {**DEFAULT_ITEMS, "conflict": 8, "instructions": 5}
    with pytest.raises(SekaError, match="'lost-in-middle', which this run does not evaluate"):
        parse_items("lost-in-middle=2", ["conflict"])  # a count for a family left out would be ignored
    assert set(DEFAULT_ITEMS) == set(SUITE_FAMILIES)
    with pytest.raises(SekaError, match="positive"):
        parse_items("conflict=x")
    # the other command's spelling of a family gets a pointer, an unrelated name none
    with pytest.raises(SekaError, match="'instruction': did you mean 'instructions'"):
        parse_names("conflict,instruction", SUITE_FAMILIES, "families")
    with pytest.raises(SekaError, match="'Lost_In_Middle': did you mean 'lost-in-middle'"):
        parse_names("Lost_In_Middle", SUITE_FAMILIES, "families")
    with pytest.raises(SekaError) as negated:  # never the opposite of what was asked
        parse_names("steered", ("unsteered", "seka"), "methods")
    assert "did you mean" not in str(negated.value)
    with pytest.raises(SekaError, match="'lost_in_middle': did you mean 'lost-in-middle'"):
        parse_items("lost_in_middle=3")
    with pytest.raises(SekaError) as err:
        parse_names("poetry", SUITE_FAMILIES, "families")
    assert "did you mean" not in str(err.value)


def test_median_interval_order_statistics():
    # 5 values: the whole range, which covers the median with probability 1 - 2/32
    assert median_interval([5, 1, 3, 2, 4]) == (1.0, 5.0, pytest.approx(0.9375))
    # 9 values: the 2nd and 8th, coverage 1 - 2 (1 + 9) / 512
    assert median_interval(range(9, 0, -1)) == (2.0, 8.0, pytest.approx(1 - 20 / 512))
    lo, hi, coverage = median_interval(range(20))
    assert (lo, hi) == (5.0, 14.0) and 0.95 <= coverage < 0.96
    assert median_interval([2.0]) == (2.0, 2.0, 0.0)
    assert median_interval([]) == pytest.approx((float("nan"),) * 3, nan_ok=True)
    with pytest.raises(ValueError, match="level"):
        median_interval([1, 2], level=1.5)
    with pytest.raises(ValueError, match="level"):
        median_interval([], level=0)


def test_shared_report_helpers():
    assert share_ci([]) == pytest.approx((float("nan"),) * 3, nan_ok=True)
    assert share_ci([True, True]) == (1.0, 1.0, 1.0)
    assert mean_ci([2.0, 2.0]) == (2.0, 2.0, 2.0)
    groups = group_share_cis(["b", "a", "b"], [True, False, False], order=["b", "a"])
    assert list(groups) == ["b", "a"] and groups["b"][0] == 0.5 and groups["b"][3] == 2 and groups["a"][0] == 0.0
    assert format_ci(0.5, 0.25, 0.75) == "50.0 [25.0, 75.0]"
    assert format_ci(-1.5, -2.0, 0.25, percent=False, n=3) == "-1.50 [-2.00, +0.25] (3)"
    assert format_ci(float("nan"), float("nan"), float("nan")) == "- [-, -]"
    assert Stat.shares([True, False, True, True]).text().startswith("75.0 [")
    assert format_table(["m", "x"], [["a", "1"], ["long", "22"]]) == "m      x\n----  --\na      1\nlong  22"
    assert format_table(["m", "x"], [["a", "1"]], markdown=True) == "| m | x |\n| --- | ---: |\n| a | 1 |"


def test_group_intervals_resample_whole_clusters():
    # 16 counterbalanced items of 4 cases each, every item half right: exactly 50 % by construction
    labels = ["fictional"] * 64
    hits = [True, False, False, True] * 16
    units = [f"u{k // 4}" for k in range(64)]
    assert group_share_cis(labels, hits, clusters=units)["fictional"] == (0.5, 0.5, 0.5, 64)
    over_cases = group_share_cis(labels, hits)["fictional"]
    assert over_cases[1] < 0.5 < over_cases[2]  # cases treated as independent: a spread that is not there
    # items whose four cases agree: the interval over items is wider than the one over cases
    agree = [k // 4 % 2 == 0 for k in range(64)]
    by_item, by_case = group_share_cis(labels, agree, clusters=units)["fictional"], group_share_cis(labels, agree)["fictional"]
    assert by_item[2] - by_item[1] > 1.5 * (by_case[2] - by_case[1])
    with pytest.raises(ValueError, match="clusters"):
        group_share_cis(labels, hits, clusters=units[:3])


def test_suite_conflict_breakdown_by_kind_resamples_whole_items(monkeypatch):
    from types import SimpleNamespace

    from seka_rag.evaluation import baselines, suite

    hits = [True, False, False, True] * 16  # every item half right: exactly 50 % by construction
    report = SimpleNamespace(share=0.5, ci_low=0.5, ci_high=0.5, n=64, hits=hits,
                             margins=[1.0 if h else -1.0 for h in hits], to_dict=lambda include_items=False: {})
    monkeypatch.setattr(baselines, "evaluate_family_with", lambda *args, **kwargs: report)
    items = [SimpleNamespace(group="fictional", unit=f"u{k // 4}") for k in range(64)]
    _, _, details, _ = suite._conflict(None, items, None, suite.SuiteConfig(), False, None)
    fictional = details["conflict: share by kind, answer margin"]["fictional"]
    assert (fictional.mean, fictional.lo, fictional.hi, fictional.n) == (0.5, 0.5, 0.5, 64)


def test_layer_sets_and_deltas(tiny_model):
    proj = tiny_model("llama", num_layers=4, projection={"default_layers": [2, 3]}).projection
    with pytest.warns(UserWarning, match="layer set last-12 asks for 12 layers, but the projection covers 4: using all 4"):
        sets = layer_sets(proj, ["default", "last-2", "first-1", "middle-2", "all", "last-12"])
    assert sets == {"default=last-2": [2, 3], "first-1": [0], "middle-2": [1, 2], "all=last-12": [0, 1, 2, 3]}
    with pytest.raises(SekaError, match="layer sets"):
        check_set_names(["last-0"])
    deltas = delta_values(proj, [0.0, 0.5])
    assert deltas[0][1] == pytest.approx(float(proj.head_shift.min()))
    kept = proj.with_delta(deltas[1][1]).head_mask
    assert 0 < int(kept.sum()) < kept.numel() and isinstance(proj, Projection)
    assert torch.equal(proj.with_delta(deltas[0][1]).head_mask, torch.ones_like(kept))


def test_conflict_shared_prefix_equals_row_scoring(tiny_model):
    from seka_rag.evaluation.conflict import conflict_cases, conflict_split, score_cases

    model = tiny_model("qwen2", context_window=4096)
    cases = [c for it in conflict_split("dev", n=2) for c in conflict_cases(it)]
    shared = score_cases(model, cases, batch_size=3, progress=False)
    rows = score_cases(model, cases, batch_size=3, progress=False, shared_prefix=False)
    assert shared == pytest.approx(rows, abs=1e-3)


def test_gain_scale_cli_item_defaults_are_the_family_functions():
    import inspect

    from seka_rag.cli import _GAIN_SCALE_ITEMS
    from seka_rag.evaluation import gain_scale as gs

    functions = {"lost-in-middle": (gs.gain_scale_lost_in_middle, "n_questions"),
                 "instructions": (gs.gain_scale_instructions, "n_items"),
                 "conflicts": (gs.gain_scale_conflicts, "n_items"),
                 "counterfact": (gs.gain_scale_counterfact, "n_items")}
    assert set(functions) == set(_GAIN_SCALE_ITEMS)
    for family, (function, name) in functions.items():
        assert inspect.signature(function).parameters[name].default == _GAIN_SCALE_ITEMS[family], family


def test_lost_in_middle_answer_length_defaults_agree():
    """One answer length for exact match everywhere (the Lost-in-the-Middle code's 100 new tokens)."""
    import inspect

    from seka_rag.cli import build_parser
    from seka_rag.evaluation import gain_scale as gs
    from seka_rag.evaluation import lost_in_middle as lim
    from seka_rag.evaluation.suite import SuiteConfig

    assert lim.DEFAULT_MAX_NEW_TOKENS == 100
    for function in (lim.evaluate_lost_in_middle, lim.lost_in_middle_reference, gs.gain_scale_lost_in_middle):
        assert inspect.signature(function).parameters["max_new_tokens"].default == 100, function.__name__
    assert SuiteConfig().nq_max_new_tokens == 100
    assert build_parser().parse_args(["eval"]).nq_max_new_tokens == 100


def test_suite_config_refuses_non_positive_lengths():
    from seka_rag.errors import SekaError
    from seka_rag.evaluation.suite import SuiteConfig

    for bad in (0, -3, 2.5, True):
        with pytest.raises(SekaError, match="nq_max_new_tokens must be a positive integer"):
            SuiteConfig(nq_max_new_tokens=bad)
    with pytest.raises(SekaError, match="unknown families \\['nope'\\]"):
        SuiteConfig(families=("nope",))
    with pytest.raises(SekaError, match="SuiteConfig.items"):
        SuiteConfig(items={"conflict": -1})


def test_gain_scale_answer_length_needs_em_for_lost_in_middle(tmp_path, capsys):
    nq = tmp_path / "nq.jsonl"
    nq.write_text("")
    assert main(["gain-scale", "--model", str(tmp_path / "no-model"), "--family", "lost-in-middle", "--nq", str(nq),
                 "--max-new-tokens", "12"]) == 2
    assert "only with --em" in capsys.readouterr().err


def test_suite_lost_in_middle_items_can_start_later(nq_file):
    from seka_rag.evaluation.suite import SuiteConfig, build_suite_items

    def questions(first):
        config = SuiteConfig(families=("lost-in-middle",), items={"lost-in-middle": 2}, nq=str(nq_file),
                             nq_passages=3, nq_first=first)
        items, skipped = build_suite_items(config)
        return sorted({it.index for it in items["lost-in-middle"]}), skipped

    assert questions(0) == ([0, 1], {})
    assert questions(2) == ([2, 3], {})
    with pytest.raises(SekaError, match="nq_first"):
        SuiteConfig(nq_first=-1)


def test_eval_refuses_nq_first_without_lost_in_middle(capsys):
    assert main(["eval", "--model", "qwen2.5-coder-0.5b", "--families", "conflict", "--nq-first", "2"]) == 2
    assert "--nq-first" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- paired, merge


def _result(methods: dict, family="instructions", **settings) -> SuiteResult:
    """A hand-made suite result: ``methods`` maps a method to its per-item 0/1 values."""
    result = SuiteResult(model="m", families=[family], methods=list(methods), items={family: 4},
                         settings={"seed": 0, "max_new_tokens": 8, **settings})
    for method, values in methods.items():
        result.table[method] = {family: Stat.shares(values)}
        result.reports.setdefault(family, {})[method] = {"passed": values}
        result.item_scores.setdefault(family, {})[method] = ItemScores(tuple(map(float, values)),
                                                                        ("a", "a", "b", "c"))
    return result


def test_paired_differences_known_answers():
    result = _result({"unsteered": [0, 1, 0, 0], "seka": [1, 1, 0, 0], "same": [0, 1, 0, 0],
                      "worse": [0, 0, 0, 0]})
    diffs = result.paired()
    assert set(diffs) == {"seka", "same", "worse"}  # not the reference itself
    assert diffs["seka"]["instructions"].mean == pytest.approx(0.25) and diffs["seka"]["instructions"].n == 4
    assert diffs["seka"]["instructions"].text() == "+25.0 [+0.0, +50.0] (4)"  # unit 'a' holds the one change
    assert (diffs["same"]["instructions"].mean, diffs["same"]["instructions"].lo,
            diffs["same"]["instructions"].hi) == (0.0, 0.0, 0.0)  # ties: no difference, no spread
    assert diffs["worse"]["instructions"].hi <= 0 and diffs["worse"]["instructions"].mean == pytest.approx(-0.25)
    table = result.paired_table()
    assert table.splitlines()[0].split()[:3] == ["method", "-", "unsteered"] and "+25.0" in table
    assert PAIRED_TITLE in result.text()
    # items that differ between methods are not paired; no reference, no table
    result.item_scores["instructions"]["seka"] = ItemScores((1.0,) * 4, ("x", "y", "z", "w"))
    assert "seka" not in result.paired()
    assert _result({"seka": [1, 0, 1, 0]}).paired_table() is None and PAIRED_TITLE not in _result({"seka": [1, 0, 1, 0]}).text()
    with pytest.raises(SekaError, match="3 values but 2 units"):
        ItemScores((1.0, 0.0, 1.0), ("a", "b"))


def test_paired_differences_from_another_method():
    result = _result({"unsteered": [0, 1, 0, 0], "seka": [1, 1, 0, 0], "router": [1, 1, 1, 0]})
    against_seka = result.paired("seka")
    assert set(against_seka) == {"unsteered", "router"}
    assert against_seka["router"]["instructions"].mean == pytest.approx(0.25)
    assert against_seka["unsteered"]["instructions"].mean == pytest.approx(-0.25)
    text, md = result.text("seka"), result.markdown("seka")
    assert paired_title("seka") in text and f"## {paired_title('seka')}" in md
    assert "method - seka" in text and "method - seka" in md and PAIRED_TITLE not in text
    assert paired_title() == PAIRED_TITLE
    data = result.to_dict("seka")  # "paired" stays against unsteered; the chosen reference beside it
    assert set(data["paired"]) == {"seka", "router"}
    assert data["paired_against"]["reference"] == "seka"
    assert data["paired_against"]["differences"]["router"]["instructions"]["mean"] == pytest.approx(0.25)
    assert "paired_against" not in result.to_dict()
    result.check_reference("seka")
    with pytest.raises(SekaError, match="did you mean 'seka'"):
        result.check_reference("sek")


def test_stat_round_trip_and_signed_text():
    for stat in (Stat(0.25, 0.0, 0.5, 4), Stat(-1.5, -2.0, 0.25, 3, percent=False),
                 Stat(-0.125, -0.25, 0.0, 8, signed=True), Stat(float("nan"), float("nan"), float("nan"), 0)):
        back = Stat.from_dict(stat.to_dict())
        assert back.text() == stat.text() and (back.percent, back.signed) == (stat.percent, stat.signed)
    assert Stat(-0.125, -0.25, 0.0, 8, signed=True).text() == "-12.5 [-25.0, +0.0] (8)"
    assert format_ci(0.05, -0.1, 0.2, signed=True) == "+5.0 [-10.0, +20.0]"


def test_item_scores_from_reports():
    assert item_scores("counterfact", {"items": [{"case_id": 3, "margin": 0.0}, {"case_id": 4, "margin": 0.2}]}) \
        == ItemScores((0.0, 1.0), ("3", "4"))  # a tie is not a success, as in the efficacy
    assert item_scores("conflict", {"hits": [True, False], "units": ["i1", None]}) == ItemScores((1.0, 0.0), ("i1", "#1"))
    rows = [{"policy": p, "question_index": q, "em": e} for p, q, e in
            (("middle", 0, True), ("gold", 0, False), ("middle", 1, False))]
    assert item_scores("lost-in-middle", {"rows": rows, "settings": {"policies": ["middle", "gold"]}}) \
        == ItemScores((1.0, 0.0), ("q0", "q1"))
    assert item_scores("lost-in-middle", {"rows": rows}, "gold") == ItemScores((0.0,), ("q0",))
    for family in SUITE_FAMILIES:  # a run without per-item results has none
        assert item_scores(family, {"n": 3}) is None
    with pytest.raises(SekaError, match="unknown family"):
        item_scores("poetry", {})


def test_merge_joins_methods_and_refuses_what_does_not_pair():
    a = _result({"unsteered": [0, 1, 0, 0], "seka": [1, 1, 0, 0]}, command="seka-rag eval A")
    b = _result({"spa": [1, 1, 1, 0]}, command="seka-rag eval B", spa_strength=1.5)
    a.seconds["total"], b.seconds["total"] = 10.0, 5.0
    merged = merge_suite_results([b.to_dict(), a])
    assert merged.methods == ["unsteered", "spa", "seka"]  # the suite's order
    assert merged.paired()["spa"]["instructions"].mean == pytest.approx(0.5)
    assert merged.seconds["total"] == 15.0 and merged.settings["spa_strength"] == 1.5
    assert [r["command"] for r in merged.settings["merged_runs"]] == ["seka-rag eval B", "seka-rag eval A"]
    assert merged.settings["merged_runs"][0]["spa_strength"] == 1.5
    assert "Merged run (5 s): `seka-rag eval B`" in merged.markdown() and "Command:" not in merged.markdown()
    again = merge_suite_results([merged.to_dict()])  # a merge merges again, keeping its runs
    assert again.settings["merged_runs"] == merged.settings["merged_runs"] and again.text() == merged.text()
    with pytest.raises(SekaError, match="instructions / seka was measured in more than one run"):
        merge_suite_results([a, _result({"seka": [0, 0, 0, 0]})])
    other = _result({"spa": [1, 1, 1, 0]})
    other.items["instructions"] = 5
    with pytest.raises(SekaError, match="4 items in one run and 5 in another"):
        merge_suite_results([a, other])
    with pytest.raises(SekaError, match="max_new_tokens 8 in one run, 16 in another"):
        merge_suite_results([a, _result({"spa": [1, 1, 1, 0]}, max_new_tokens=16)])
    with pytest.raises(SekaError, match="different item seeds"):
        merge_suite_results([a, _result({"spa": [1, 1, 1, 0]}, seed=1)])
    c = _result({"spa": [1, 1, 1, 0]})
    c.model = "other"
    with pytest.raises(SekaError, match="different models"):
        merge_suite_results([a, c])
    with pytest.raises(SekaError, match="not a `seka-rag eval --out` result"):
        merge_suite_results([{"model": "m"}])
    with pytest.raises(SekaError, match="at least one"):
        merge_suite_results([])
    with pytest.raises(SekaError, match="runs that measured spa used different spa_strength"):
        merge_suite_results([b, _result({"spa": [1, 0, 1, 0]}, family="conflict", spa_strength=3.0)])
    with pytest.raises(SekaError, match="differently loaded models: dtype bfloat16 vs float32"):
        merge_suite_results([_result({"seka": [1, 0, 0, 0]}, model_settings={"dtype": "float32"}),
                             _result({"spa": [1, 0, 0, 0]}, model_settings={"dtype": "bfloat16"})])
    with pytest.raises(SekaError, match="different item contents"):
        merge_suite_results([_result({"seka": [1, 0, 0, 0]}, item_digests={"instructions": "aaa"}),
                             _result({"spa": [1, 0, 0, 0]}, item_digests={"instructions": "bbb"})])
    moved = _result({"spa": [1, 0, 0, 0]})
    moved.item_scores["instructions"]["spa"] = ItemScores((1.0, 0.0, 0.0, 0.0), ("a", "b", "c", "d"))
    with pytest.raises(SekaError, match="per-item units do not match"):
        merge_suite_results([a, moved])
    with pytest.raises(SekaError, match="not the run's families"):
        merge_suite_results([{**a.to_dict(), "families": ["poetry"]}])


def test_merge_accepts_older_files_and_re_measured_cells():
    # a file from before --nq-first existed has no nq_first: it was 0 then
    old = _result({"unsteered": [0, 1, 0, 0]}, family="lost-in-middle", nq="x/nq.jsonl.gz", nq_policies=["middle"],
                  nq_passages=10, nq_max_new_tokens=100)
    new = _result({"seka": [1, 1, 0, 0]}, family="lost-in-middle", nq="y/nq.jsonl.gz", nq_policies=["middle"],
                  nq_passages=10, nq_max_new_tokens=100, nq_first=0)
    assert merge_suite_results([old, new]).paired()["seka"]["lost-in-middle"].mean == pytest.approx(0.25)
    new.settings["nq_first"] = 12
    with pytest.raises(SekaError, match="nq_first 0 in one run, 12 in another"):
        merge_suite_results([old, new])
    # a cell that failed in one run and was measured in another is measured; the other failure stays
    failed = _result({"unsteered": [0, 1, 0, 0]})
    failed.errors = {"instructions / seka": "RuntimeError: OOM", "instructions / spa": "RuntimeError: OOM"}
    failed.methods += ["seka", "spa"]
    merged = merge_suite_results([failed, _result({"seka": [1, 1, 0, 0]})])
    assert merged.errors == {"instructions / spa": "RuntimeError: OOM"}
    assert "instructions / seka: failed" not in merged.text() and "instructions / spa: failed" in merged.text()
    # no per-item results, no paired table: say why
    bare = _result({"unsteered": [0, 1, 0, 0], "seka": [1, 1, 0, 0]})
    bare.item_scores.clear()
    assert "no paired differences from unsteered" in bare.text() and "no paired differences" in bare.markdown()


def test_eval_merge_cli(model_dir, projection, tmp_path, capsys):
    common = [*_base(model_dir, projection), "--families", "conflict,instructions", "--items", "4",
              "--max-new-tokens", "2", "--no-progress"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", *common, "--methods", "unsteered,seka", "--out", str(first)]) == 0
    assert main(["eval", *common, "--methods", "prompt-markers", "--out", str(second)]) == 0
    capsys.readouterr()
    out, md = tmp_path / "m.json", tmp_path / "m.md"
    assert main(["eval", "--merge", str(first), str(second), "--out", str(out), "--markdown", str(md)]) == 0
    printed = capsys.readouterr().out
    assert "2 run(s) merged" in printed and PAIRED_TITLE in printed
    data = json.loads(out.read_text())
    assert data["methods"] == ["unsteered", "prompt-markers", "seka"]
    assert set(data["paired"]) == {"prompt-markers", "seka"} and set(data["paired"]["seka"]) == {"conflict", "instructions"}
    assert md.read_text().count("Merged run (") == 2
    assert main(["eval", "--merge", str(first), str(second), "--paired-against", "seka", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert paired_title("seka") in printed and "method - seka" in printed
    assert json.loads(out.read_text())["paired_against"]["reference"] == "seka"
    assert main(["eval", "--merge", str(first), "--paired-against", "spa"]) == 2
    assert "--paired-against: cannot pair with 'spa'" in capsys.readouterr().err
    # a run checks it before any model loads
    assert main(["eval", "--model", "no/such/model", "--methods", "seka", "--paired-against", "spa"]) == 2
    assert "'spa' is not among this run's methods" in capsys.readouterr().err
    for name, path in (("a", first), ("b", second)):  # every cell as its run measured it
        part = json.loads(path.read_text())
        for method, row in part["table"].items():
            assert data["table"][method] == row, (name, method)
        assert part["settings"]["model_settings"]["dtype"] == "float32"
        assert set(part["settings"]["item_digests"]) == {"conflict", "instructions"}
    # splitting one run by method and merging the parts back gives the run's own tables
    whole = tmp_path / "whole.json"
    assert main(["eval", *common, "--methods", "unsteered,prompt-markers,seka", "--out", str(whole)]) == 0
    full = json.loads(whole.read_text())
    parts = []
    for methods in (["seka"], ["unsteered", "prompt-markers"]):
        part = {**full, "methods": methods, "table": {m: full["table"][m] for m in methods},
                "details": {t: {m: c for m, c in rows.items() if m in methods} for t, rows in full["details"].items()},
                "reports": {f: {m: r for m, r in rows.items() if m in methods} for f, rows in full["reports"].items()},
                "item_scores": {f: {m: r for m, r in rows.items() if m in methods}
                                for f, rows in full["item_scores"].items()}}
        parts.append(part)
    rejoined = merge_suite_results(parts)
    original = SuiteResult.from_dict(full)
    assert rejoined.main_table() == original.main_table() and rejoined.paired_table() == original.paired_table()
    assert rejoined.detail_tables() == original.detail_tables()
    assert {m: {f: s.to_dict() for f, s in row.items()} for m, row in rejoined.paired().items()} == full["paired"]
    # run options would be ignored; files are checked
    assert main(["eval", "--merge", str(first), "--model", str(model_dir)]) == 2
    assert "--model would be ignored" in capsys.readouterr().err
    assert main(["eval", "--merge", str(first), "--items", "3", "--per-item"]) == 2
    assert "--items, --per-item would be ignored" in capsys.readouterr().err
    assert main(["eval", "--merge", str(tmp_path / "none.json")]) == 2
    assert "--merge: no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["eval", "--merge", str(tmp_path / "bad.json")]) == 2
    assert "not a `seka-rag eval --out` result" in capsys.readouterr().err
    assert main(["eval", "--merge", str(first), str(first)]) == 2
    assert "conflict / unsteered was measured in more than one run" in capsys.readouterr().err


def test_dev_seeds_take_dev_items_in_every_suite_family():
    from seka_rag.evaluation.conflict import split_of
    from seka_rag.evaluation.lost_in_middle import DEV_FIRST_QUESTION
    from seka_rag.evaluation.suite import SuiteConfig, lim_first_question, suite_items

    test = suite_items("counterfact", 32, SuiteConfig(seed=0))
    dev = suite_items("counterfact", 32, SuiteConfig(seed=1))
    assert {split_of(it.subject) for it in test} == {"test"} and {split_of(it.subject) for it in dev} == {"dev"}
    assert lim_first_question(0, 12, 6) == 12
    assert lim_first_question(1, 0, 6) == DEV_FIRST_QUESTION and lim_first_question(3, 5, 6) == DEV_FIRST_QUESTION + 5
    with pytest.raises(ValueError, match="reach the dev questions"):
        lim_first_question(0, DEV_FIRST_QUESTION - 2, 6)


def test_merge_refuses_runs_steered_with_different_projections():
    from seka_rag.evaluation.suite import merge_suite_results

    base = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results-lim-q24-35.json").read_text())
    runs = []
    for method, print_ in (("unsteered", "aaaa"), ("seka", "bbbb")):
        run = json.loads(json.dumps(base))
        run["methods"] = [method]
        run["table"] = {method: run["table"][method]}
        run["settings"].setdefault("model_settings", {})["projection_defaults"] = {"fingerprint": print_}
        runs.append(run)
    with pytest.raises(SekaError, match="different projection"):
        merge_suite_results(runs)


def test_trade_off_a_conflict_share_exactly_at_the_bar_is_eligible():
    from seka_rag.evaluation.gain_scale import trade_off

    conflicts = _gs("conflicts", [(1.0, "all", "share", 1.0), (0.5, "all", "share", 0.75)])
    instructions = _gs("instructions", [(1.0, "all", "pass", 0.2), (0.5, "all", "pass", 0.9)])
    result = trade_off([conflicts, instructions], conflict_bar=0.75)
    assert result.eligible == {1.0: True, 0.5: True}
    assert result.pick == 0.5
