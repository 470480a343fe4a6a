"""How long the issue's whole overhead grid must take on a 2-core machine, from measured timings.

For every (batch, length) cell of a whole-grid latency file, one round of the benchmark runs the
unsteered prefill plus each method's prefill (the A/A control included) and a few decode tokens
each; a cell takes at least ``runs`` rounds. The sum over cells is a lower bound on the latency
half of the grid: it leaves out the warm-up, model loading and every memory probe. No model runs.

    python docs/bench/grid-lower-bound.py [LATENCY.json ...]

Defaults: the bfloat16 whole-grid files of both models (docs/bench/overhead-qwen2.5-coder-0.5b-bf16-run2.json,
docs/bench/overhead-smollm2-135m-bf16.json). Writes docs/bench/grid-lower-bound.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULTS = ["overhead-qwen2.5-coder-0.5b-bf16-run2.json", "overhead-smollm2-135m-bf16.json"]


def cells(path: Path) -> list[dict]:
    """Per (batch, tokens) cell: runs, seconds per round (prefills + decode), and the cell's minimum."""
    data = json.loads(path.read_text())
    grouped: dict[tuple[int, int], dict] = {}
    for row in data["latency"]:
        cell = grouped.setdefault((row["batch"], row["tokens"]), {
            "batch": row["batch"], "tokens": row["tokens"], "runs": row["runs"],
            "unsteered_s": row["prefill_unsteered_s"], "decode_tps": row["decode_unsteered_tps"],
            "decode_tokens": data["info"]["config"]["decode_tokens"], "methods": {}})
        cell["methods"][row["method"]] = row["prefill_steered_s"]
    out = []
    for cell in grouped.values():
        prefills = cell["unsteered_s"] + sum(cell["methods"].values())
        passes = 1 + len(cell["methods"])  # decode speed is timed for unsteered and for every method
        decode = passes * cell["decode_tokens"] * cell["batch"] / cell["decode_tps"]
        cell["round_s"] = round(prefills + decode, 1)
        cell["minimum_s"] = round(cell["round_s"] * cell["runs"], 1)
        out.append(cell)
    return sorted(out, key=lambda c: (c["batch"], c["tokens"]))


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or [BENCH / name for name in DEFAULTS]
    report, total = {}, 0.0
    for path in paths:
        rows = cells(path)
        model = json.loads(path.read_text())["info"]["model"]
        report[model] = {"file": path.name, "cells": rows, "minimum_s": round(sum(c["minimum_s"] for c in rows), 1)}
        total += report[model]["minimum_s"]
        print(f"{model} ({path.name})")
        print(f"  {'batch':>5} {'tokens':>6} {'runs':>4} {'methods':>7} {'s per round':>11} {'cell, at least':>14}")
        for c in rows:
            print(f"  {c['batch']:>5} {c['tokens']:>6} {c['runs']:>4} {len(c['methods']):>7} {c['round_s']:>11.1f} "
                  f"{c['minimum_s']:>12.0f} s")
        print(f"  latency of this model's grid, at least {report[model]['minimum_s']:.0f} s")
    print(f"both models: at least {total:.0f} s = {total / 60:.1f} min of latency rounds alone "
          "(no warm-up, loading or memory probes)")
    out = BENCH / "grid-lower-bound.json"
    out.write_text(json.dumps({"models": report, "minimum_s": round(total, 1)}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
