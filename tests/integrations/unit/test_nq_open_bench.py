"""integrations/benchmarks/nq_open_rag.py: context building (hand-written records) and main() end to end."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "integrations" / "benchmarks" / "nq_open_rag.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("nq_open_rag_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _record(question, answer, title, text, extra_ctx=False):
    ctxs = [{"title": title, "text": text, "hasanswer": True, "isgold": True}]
    if extra_ctx:  # a non-gold passage listed first: the gold one must still be picked
        ctxs.insert(0, {"title": "Noise", "text": "Not the gold passage.", "hasanswer": False, "isgold": False})
    return {"question": question, "answers": [answer, answer.lower()], "ctxs": ctxs}


RECORDS = [
    _record("where is the tower", "Paris", "Tower", "The tower is in  Paris.", extra_ctx=True),
    _record("who built the bridge", "Olsen", "Bridge", "The bridge was built by Olsen."),
    _record("when did the ferry start", "1961", "Ferry", "The ferry started in 1961."),
    _record("what colour is the door", "red", "Door", "The door is red."),
    _record("how long is the river", "40 km", "River", "The river is 40 km long."),
    _record("who painted the wall", "Lund", "Wall", "The wall was painted by Lund."),
    _record("what is in the bay", "seals", "Bay", "The bay is known for its seals."),
    _record("where was the mill", "Kessel", "Mill", "The mill stood in Kessel."),
    # mentions Paris: never a distractor for the first question
    _record("which city has the museum", "Louvre", "Museum", "The Louvre museum is in Paris."),
    _record("what is the lake called", "Varn", "Lake", "The lake is called Varn."),
]


def test_build_items_places_gold_and_draws_answer_free_distractors(bench):
    items = bench.build_items(RECORDS, 3, passages=5, gold_position=2, seed=7)
    assert [it.question for it in items] == [r["question"] for r in RECORDS[:3]]
    for item in items:
        assert len(item.passages) == 5 and item.gold_position == 2
        golds = [p for p in item.passages if p.is_gold]
        assert golds == [item.passages[2]] and item.passages[2].source == item.index
        others = item.passages[:2] + item.passages[3:]
        assert len({p.source for p in others}) == 4 and item.index not in {p.source for p in others}
        for p in others:
            assert not any(a.lower() in p.content.lower() for a in item.answers)
            assert p.title == RECORDS[p.source]["ctxs"][-1]["title"]  # a gold passage of another record
    first = items[0]
    assert first.passages[2].title == "Tower" and first.passages[2].text == "The tower is in Paris."  # isgold, spaces folded
    assert first.passages[2].content == "(Title: Tower) The tower is in Paris."
    assert all(p.source != 8 for p in first.passages)  # the passage naming Paris is skipped


def test_build_items_is_deterministic_and_per_question(bench):
    a = bench.build_items(RECORDS, 2, passages=4, gold_position=0, seed=1)
    b = bench.build_items(RECORDS, 4, passages=4, gold_position=0, seed=1)
    assert [it.passages for it in a] == [it.passages for it in b[:2]]  # independent of the count
    c = [bench.build_items(RECORDS, 4, passages=4, gold_position=0, seed=s) for s in range(2, 6)]
    assert any([it.passages for it in x] != [it.passages for it in b] for x in c)  # the seed matters
    last = bench.build_items(RECORDS, 1, passages=4, gold_position=3)[0]
    assert last.passages[3].is_gold and not any(p.is_gold for p in last.passages[:3])


def test_build_items_rejects_bad_settings(bench):
    with pytest.raises(ValueError, match="gold_position"):
        bench.build_items(RECORDS, 1, passages=4, gold_position=4)
    with pytest.raises(ValueError, match="asked for"):
        bench.build_items(RECORDS, len(RECORDS) + 1)
    with pytest.raises(ValueError, match="usable distractors"):
        bench.build_items(RECORDS, 1, passages=len(RECORDS) + 1)


def test_summarize(bench):
    s = bench.summarize([1.0, -0.5, 2.0, 0.0])
    assert s["n"] == 4 and s["rises"] == 2 and s["share_rises"] == 0.5  # zero is not a rise
    assert s["mean_delta"] == pytest.approx(0.625) and s["median_delta"] == pytest.approx(0.5)
    lo, hi = s["share_rises_ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert bench.summarize([])["share_rises"] is None


@pytest.mark.filterwarnings("error:prompt of:UserWarning")  # the prompt must fit the tiny model's window
def test_main_end_to_end_on_a_tiny_model(bench, registered, minilm, tmp_path, capsys):
    data = tmp_path / "records.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as f:
        for r in RECORDS:
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "out" / "result.json"
    result = bench.main(["--data", str(data), "--model", registered, "--questions", "3", "--passages", "3",
                         "--gold-position", "1", "--k", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "gold in top 2" in printed and f"wrote {out}" in printed
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    rows = saved["rows"]
    assert len(rows) == 3 and saved["config"]["questions"] == 3 and saved["config"]["k"] == 2
    for row in rows:
        assert row["delta"] == pytest.approx(row["logp_steered"] - row["logp_unsteered"])
        assert row["gold_in_top_k"] == (row["gold_rank"] < 2) and len(row["highlighted_positions"]) == 2
        assert row["highlighted_tokens"] > 0 and row["logp_unsteered"] < 0
    assert any(abs(r["delta"]) > 1e-6 for r in rows)  # the random projection does move the log-probability
    top = [r for r in rows if r["gold_in_top_k"]]
    assert saved["summary"]["gold_in_top_k"]["n"] == len(top)
    assert saved["summary"]["all"]["rises"] == sum(r["delta"] > 0 for r in rows)


def test_variants_parse_and_resolve(bench):
    nq = bench
    from types import SimpleNamespace

    variants = nq.parse_variants("shipped,scale:0.5,ada-attention")
    assert list(variants) == ["shipped", "scale:0.5", "ada-attention"]
    meta = SimpleNamespace(gain_pos=8.0, gain_neg=2.0)
    plain = SimpleNamespace(projection=SimpleNamespace(meta=meta), experts=None)
    resolved = nq.resolve_variants(nq.parse_variants("shipped,scale:0.5"), plain)
    assert resolved == {"shipped": {}, "scale:0.5": {"gain_pos": 4.0, "gain_neg": 1.0}}
    adaptive = SimpleNamespace(projection=SimpleNamespace(meta=meta), experts=object())
    resolved = nq.resolve_variants(variants, adaptive)
    assert resolved["shipped"] == {"router": "projection"} and resolved["ada-attention"] == {"router": "attention"}
    with pytest.raises(SystemExit):
        nq.parse_variants("bogus")
