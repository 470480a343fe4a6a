"""Item-level intervals of the families test table, recomputed from the stored per-item margins.

The test runs in this folder were written before reports knew their items' resampling units
(``FamilyItem.unit``: the counterbalanced variants of one prompt), so their printed intervals treat
every variant as independent. This script rebuilds each report from its stored margins and the
items ``family_items(family, 152, seed=0)`` (the same items, in the same order), so intervals and
paired differences resample whole items, and writes docs/adaptive/test-item-intervals.json:

    python docs/adaptive/item-intervals.py
"""

from __future__ import annotations

import json
from pathlib import Path

from seka_rag.evaluation.families import family_items, family_report, format_family_table, paired_differences

HERE = Path(__file__).resolve().parent
#: (file, method in it, name in the table)
SOURCES = [
    ("test-seka-gains-x0.25.json", "seka", "seka"),
    ("test-seka-gains-x0.5.json", "seka", "seka-x2"),
    ("test-routers-gains-x0.25.json", "ada-attention", "ada-attention"),
    ("test-embedding-gain2.0.json", "ada-embedding", "ada-embedding-gain2.0"),
    *[("test-experts-gains-x0.25.json", f"expert:{e}", f"expert:{e}")
      for e in ("context_qa", "conflict", "instruction", "distractors")],
]


def main() -> None:
    rows: dict = {}
    items: dict = {}
    for file, method, name in SOURCES:
        run = json.loads((HERE / file).read_text())
        if run.get("seed", 0) != 0:
            raise SystemExit(f"{file}: not the test items (seed {run.get('seed')})")
        for family, rep in run["reports"][method].items():
            if family not in items:
                items[family] = family_items(family, rep["n"], 0)
            rows.setdefault(name, {})[family] = family_report(family, items[family], rep["margins"])
            if rows[name][family].hits != rep["hits"]:
                raise SystemExit(f"{file} {method} {family}: stored hits do not follow from stored margins")
    table = format_family_table(rows)
    against_seka = paired_differences(rows, "seka")
    against_x2 = paired_differences({k: v for k, v in rows.items() if k != "seka"}, "seka-x2")
    print(table, "\n\nPaired, against SEKA at its defaults:\n" + against_seka,
          "\n\nPaired, against SEKA at twice its defaults (the routers' strength):\n" + against_x2, sep="")
    out = {
        "note": "intervals over items (counterbalanced variants together), recomputed from stored margins",
        "sources": [dict(file=f, method=m, name=n) for f, m, n in SOURCES],
        "cells": {name: {f: dict(share=r.share, ci=[r.ci_low, r.ci_high], n=r.n) for f, r in reps.items()}
                  for name, reps in rows.items()},
        "paired_vs_seka": against_seka.splitlines(),
        "paired_vs_seka_x2": against_x2.splitlines(),
    }
    (HERE / "test-item-intervals.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {HERE / 'test-item-intervals.json'}")


if __name__ == "__main__":
    main()
