"""The generated-answer figures of SEKA at twice its gains, rechecked after a language-checker fix.

The Spanish function-word list lacked the preposition "a", so a correct Spanish answer made only of
words Spanish shares with French ("La respuesta a la pregunta es de 4 horas.") tied and failed. This
rescores the stored answers of step3-test-generated*.json with the checker's word list as stored
and as fixed (no model runs), and prints SEKA x 2's pass rate and the routers' paired differences
from it, in points:

    python docs/adaptive/per-expert-gains/recheck-spanish.py
"""

from __future__ import annotations

import json
from pathlib import Path

from seka_rag.evaluation import instructions
from seka_rag.evaluation.instructions import check, instruction_items
from seka_rag.evaluation.stats import paired_bootstrap_diff_ci, share_ci

HERE = Path(__file__).resolve().parent


def main() -> None:
    seka_x2 = json.loads((HERE / "step3-test-generated-seka-x2.json").read_text())["reports"]["instructions"]["seka"]
    routers = json.loads((HERE / "step3-test-generated.json").read_text())["reports"]["instructions"]
    items = instruction_items(150, 0)
    fixed = instructions.LEXICONS["Spanish"]
    for label, words in (("as stored (no Spanish 'a')", fixed - {"a"}), ("fixed", fixed | {"a"})):
        instructions.LEXICONS["Spanish"] = words
        x2 = [check(it.kind, out, it) for it, out in zip(items, seka_x2["outputs"])]
        share = [round(100 * v, 1) for v in share_ci(x2, 2000, 0)]
        print(f"{label}: SEKA x 2 passes {share[0]} [{share[1]}, {share[2]}] %")
        for name in ("adaseka-attention", "adaseka-embedding"):
            passed = [check(it.kind, out, it) for it, out in zip(items, routers[name]["outputs"])]
            diff = paired_bootstrap_diff_ci([float(p) for p in passed], [float(p) for p in x2], 2000, 0)
            mean = 100 * (sum(passed) - sum(x2)) / len(items)
            print(f"  {name} - SEKA x 2: {mean:+.1f} [{100 * diff[0]:+.1f}, {100 * diff[1]:+.1f}]")
    instructions.LEXICONS["Spanish"] = fixed


if __name__ == "__main__":
    main()
