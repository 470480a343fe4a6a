"""How long the issue's whole overhead grid must take on a 2-core machine, from measured timings.

For every (batch, length) cell of a whole-grid latency file, one round of the benchmark runs the
unsteered prefill plus each method's prefill (the A/A control included) and a few decode tokens
each; a cell takes at least ``runs`` rounds. The sum over cells is a lower bound on the latency
half of the grid: it leaves out the warm-up, model loading and every memory probe. No model runs.

    python docs/bench/grid-lower-bound.py

It reads the bfloat16 whole-grid files of both models (docs/bench/overhead-qwen2.5-coder-0.5b-bf16-run2.json,
docs/bench/overhead-smollm2-135m-bf16.json), measured when PASTA ran eager attention in every layer,
and prints their bound. It then prints a bound for today's PASTA, which runs eager attention only in
its steered layers: cells measured by the later `make bench` run in
docs/bench/make-bench-pasta-steered-bf16/ replace the old ones, and in the two cells it does not
measure (batch-4 latency at the longest lengths) PASTA's prefill is counted as the unsteered one, a
floor. Writes docs/bench/grid-lower-bound.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULTS = ["overhead-qwen2.5-coder-0.5b-bf16-run2.json", "overhead-smollm2-135m-bf16.json"]
NEWER = "make-bench-pasta-steered-bf16"


def cells(path: Path, newer: Path | None = None) -> list[dict]:
    """Per (batch, tokens) cell: runs, seconds per round (prefills + decode), and the cell's minimum.

    With ``newer``, its cells replace those of ``path``, and in the cells left from ``path`` PASTA's
    prefill is counted as the unsteered one (``pasta_floor``).
    """
    data = json.loads(path.read_text())
    rows = list(data["latency"])
    replaced: set[tuple[int, int]] = set()
    if newer is not None:
        fresh = json.loads(newer.read_text())["latency"]
        replaced = {(r["batch"], r["tokens"]) for r in fresh}
        rows = [r for r in rows if (r["batch"], r["tokens"]) not in replaced] + fresh
    grouped: dict[tuple[int, int], dict] = {}
    for row in rows:
        cell = grouped.setdefault((row["batch"], row["tokens"]), {
            "batch": row["batch"], "tokens": row["tokens"], "runs": row["runs"],
            "unsteered_s": row["prefill_unsteered_s"], "decode_tps": row["decode_unsteered_tps"],
            "decode_tokens": data["info"]["config"]["decode_tokens"], "methods": {}})
        cell["methods"][row["method"]] = row["prefill_steered_s"]
        cell["measured"] = "newer run" if (row["batch"], row["tokens"]) in replaced else path.name
    for (batch, tokens), cell in grouped.items():
        if newer is not None and (batch, tokens) not in replaced and "pasta" in cell["methods"]:
            cell["methods"]["pasta"] = cell["unsteered_s"]
            cell["pasta_floor"] = True
    out = []
    for cell in grouped.values():
        prefills = cell["unsteered_s"] + sum(cell["methods"].values())
        passes = 1 + len(cell["methods"])  # decode speed is timed for unsteered and for every method
        decode = passes * cell["decode_tokens"] * cell["batch"] / cell["decode_tps"]
        cell["round_s"] = round(prefills + decode, 1)
        cell["minimum_s"] = round(cell["round_s"] * cell["runs"], 1)
        control = cell["methods"].get("control")  # the A/A control is this harness's own check
        if control is not None:
            decode_one = cell["decode_tokens"] * cell["batch"] / cell["decode_tps"]
            cell["minimum_without_control_s"] = round((prefills + decode - control - decode_one) * cell["runs"], 1)
        out.append(cell)
    return sorted(out, key=lambda c: (c["batch"], c["tokens"]))


def bound(pairs: list[tuple[Path, Path | None]], title: str) -> dict:
    """Print and return the bound over ``(whole-grid file, newer file or None)`` pairs."""
    print(title)
    report, total, bare = {}, 0.0, 0.0
    for path, newer in pairs:
        rows = cells(path, newer)
        model = json.loads(path.read_text())["info"]["model"]
        report[model] = {"file": path.name, "newer": None if newer is None else str(newer.relative_to(BENCH)),
                         "cells": rows, "minimum_s": round(sum(c["minimum_s"] for c in rows), 1),
                         "minimum_without_control_s": round(sum(c.get("minimum_without_control_s", c["minimum_s"])
                                                                for c in rows), 1)}
        total += report[model]["minimum_s"]
        bare += report[model]["minimum_without_control_s"]
        print(f"{model}")
        print(f"  {'batch':>5} {'tokens':>6} {'runs':>4} {'methods':>7} {'s per round':>11} {'cell, at least':>14}")
        for c in rows:
            note = "  (PASTA counted as unsteered)" if c.get("pasta_floor") else ""
            print(f"  {c['batch']:>5} {c['tokens']:>6} {c['runs']:>4} {len(c['methods']):>7} {c['round_s']:>11.1f} "
                  f"{c['minimum_s']:>12.0f} s{note}")
        print(f"  latency of this model's grid, at least {report[model]['minimum_s']:.0f} s")
    print(f"both models: at least {total:.0f} s = {total / 60:.1f} min of latency rounds alone "
          "(no warm-up, loading or memory probes)")
    print(f"  without the A/A control in each round: {bare:.0f} s = {bare / 60:.1f} min\n")
    return {"models": report, "minimum_s": round(total, 1), "minimum_without_control_s": round(bare, 1)}


def main(argv: list[str]) -> None:
    paths = [BENCH / name for name in DEFAULTS]
    newer = [BENCH / NEWER / ("overhead-" + name.split("overhead-")[1].split("-bf16")[0] + ".json") for name in DEFAULTS]
    result = {
        "every_layer_eager_pasta": bound([(p, None) for p in paths],
                                         "Whole-grid files as measured (PASTA on eager attention in every layer):"),
        "steered_layers_pasta": bound(list(zip(paths, newer)),
                                      "Today's PASTA (eager attention in its steered layers only):"),
    }
    out = BENCH / "grid-lower-bound.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
