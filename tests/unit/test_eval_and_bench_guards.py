"""Guards added after mutation testing of the evaluation code and the benchmark's statistics (plausible
one-line bugs planted one at a time that no test caught): instruction checkers' edge cases, CounterFact
ties and the benchmark's paired ratios (SPA's and PASTA's are in test_baselines.py)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from seka_rag import bench
from seka_rag.bench import BenchConfig
from seka_rag.evaluation import counterfact as cf
from seka_rag.evaluation.instructions import InstructionItem, check, language_scores

def _item(kind, **params):
    return InstructionItem(kind, "prompt", "instruction", "question", "Alex", "bakery", 1, 3, **params)


# ------------------------------------------------------------------------------ instruction checkers
def test_four_word_answers_need_one_hit():  # "answers of at most 4 words need 1 hit"
    assert check("language", "Rue du Port Vieux", _item("language", language="French")) is True  # 4 words, 'du'
    assert check("language", "Rue du Port Vieux Nord", _item("language", language="French")) is False  # 5 words


def test_a_tie_between_languages_fails():  # the asked language must lead, a tie fails
    assert language_scores("En la casa")["French"] == language_scores("En la casa")["Spanish"] == 2
    assert check("language", "En la casa", _item("language", language="French")) is False
    assert check("language", "En la casa", _item("language", language="Spanish")) is False


def test_json_non_empty_scalars_pass():  # 0 and false are values (only null / "" / [] / {} are empty)
    assert check("json", '{"answer": 0}') is True
    assert check("json", '{"answer": false}') is True


def test_diacritics_add_one_count_per_language():
    assert language_scores("Größe über Bär")["German"] == 1  # no German function word; four diacritic letters


# ------------------------------------------------------------------------------ CounterFact
def test_evaluate_counterfact_leaves_out_shared_first_tokens(monkeypatch):
    items = [cf.make_item("X", f"X{i} is", "New York", "New Delhi") for i in range(2)]
    items.append(cf.make_item("Y", "Y is", "Paris", "Rome"))
    first = {"New York": (7, 7), "Paris": (8, 9)}  # " New" starts both of the first two items' targets
    monkeypatch.setattr(cf, "first_token_ids", lambda model, item, chat=None: first[item.target_new])
    # scored in different batches, the same token can differ by rounding: that must not count either way
    monkeypatch.setattr(cf, "score_counterfact", lambda model, items, **kw: [(-2.0 + 5e-7, -2.0)] * len(items))
    report = cf.evaluate_counterfact(object(), items, progress=False, n_boot=20)
    assert report.n == 1 and report.n_tied == 2 and report.efficacy == 1.0
    with pytest.raises(ValueError, match="share their first token"):
        cf.evaluate_counterfact(object(), items[:2], progress=False, n_boot=20)


# ------------------------------------------------------------------------------ benchmark
def test_latency_rows_pair_each_run_with_its_own_unsteered_run(monkeypatch):
    # (prefill seconds, decode tokens/s, set-up seconds) of the 4 timed runs, in run order
    plan = {
        "unsteered": [(1.0, 10.0, 0.0), (2.0, 20.0, 0.0), (4.0, 40.0, 0.0), (8.0, 80.0, 0.0)],
        "seka": [(2.0, 5.0, 0.0), (3.0, 20.0, 0.0), (5.0, 20.0, 0.0), (9.0, 40.0, 0.0)],
        "control": [(1.0, 10.0, 0.0), (2.0, 20.0, 0.0), (4.0, 40.0, 0.0), (8.0, 80.0, 0.0)],
    }
    calls = defaultdict(int)

    def fake_time(seka, batch, method, decode_tokens, config):
        if decode_tokens != config.decode_tokens:  # the warm-up pass
            return (1.0, 1.0, 0.0)
        i = calls[method]
        calls[method] += 1
        return plan[method][i]

    monkeypatch.setattr(bench, "time_prefill_and_decode", fake_time)
    monkeypatch.setattr(bench, "bench_batch", lambda seka, config, n, b, c: SimpleNamespace(input_ids=torch.zeros(b, n)))
    config = BenchConfig(lengths=[8], runs=4, decode_tokens=2, batch_sizes=[1], methods=["seka"])
    rows = {r["method"]: r for r in bench.latency_table(None, config, progress=False)}
    seka = rows["seka"]
    # paired prefill ratios 2, 1.5, 1.25, 1.125: median 1.375 (the mean would be 1.46875; the ratio of
    # medians 4 / 3; pairing run i with another run's unsteered time gives other numbers)
    assert seka["prefill_ratio_paired"] == pytest.approx(1.375)
    assert seka["prefill_ratio_paired_interval"] == [1.125, 2.0]  # 4 runs: their range
    assert seka["prefill_ratio"] == pytest.approx(4 / 3)
    # paired decode ratios (steered / unsteered tokens per second) 0.5, 1, 0.5, 0.5: median 0.5
    assert seka["decode_ratio_paired"] == pytest.approx(0.5)
    assert seka["decode_ratio"] == pytest.approx(statistics.median([5, 20, 20, 40]) / statistics.median([10, 20, 40, 80]))
    assert rows["control"]["prefill_ratio_paired"] == rows["control"]["decode_ratio_paired"] == 1.0
    assert seka["runs"] == 4 and seka["prompt_tokens"] == 8
