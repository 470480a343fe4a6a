"""Instruction following from stored answers: pass rate, answers that repeat the highlighted
instruction, and passes without repeating it, each method paired with unsteered item by item.

Reads `seka-rag eval --per-item` JSON files (their instruction answers), rechecks every answer with
today's checkers and :func:`seka_rag.evaluation.instructions.echoes_instruction`, prints a table and
writes it beside the first file as ``<name>-echo.json`` (docs/results-instructions-150-echo.json for
the default file). No language model runs.

With ``--routing`` it also estimates how the shipped expert set's embedding router weights the
experts on these prompts (the runs did not store routing weights): MiniLM embeddings of each prompt
with its instruction cut out, which approximates the router's query (the prompt's text outside its
highlights), against the experts' prototypes at the set's embedding temperature.

    HF_HUB_OFFLINE=1 python docs/instructions-echo.py [--routing] [docs/results-instructions-150.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seka_rag.evaluation.instructions import INSTRUCTION_TYPES, instruction_items, instruction_report
from seka_rag.evaluation.stats import paired_bootstrap_diff_ci, share_ci

DOCS = Path(__file__).resolve().parent


def routing_estimate(items) -> dict:
    """The embedding router's weights on ``items``, estimated as the module docstring says."""
    from collections import Counter

    from seka_rag.adaptive import ExpertSet, embedding_weights
    from seka_rag.embeddings import embed
    from seka_rag.model import shipped_experts_path

    experts = ExpertSet.load(shipped_experts_path("qwen2.5-coder-0.5b"))
    queries = embed([it.prompt.replace(it.highlight, " ") for it in items])
    weights = embedding_weights(queries, experts.prototypes(), experts.routing)
    top = Counter(experts.names[i] for i in weights.argmax(1).tolist())
    mean = weights.mean(0).tolist()
    estimate = {"mean_weight": dict(zip(experts.names, mean)), "top_expert": dict(top),
                "embedding_temperature": experts.routing.embedding_temperature}
    print(f"embedding router, estimated: top expert {dict(top)}; mean weights "
          + ", ".join(f"{n} {w:.2f}" for n, w in zip(experts.names, mean)))
    return estimate


def main(paths: list[str], routing: bool = False) -> None:
    out: dict = {}
    for path in paths:
        run = json.loads(Path(path).read_text())
        settings = run["settings"]
        items = instruction_items(run["items"]["instructions"], settings["seed"])
        n_boot = settings.get("n_boot", 2000)
        reports = {m: instruction_report(items, r["outputs"], n_boot=n_boot)
                   for m, r in run["reports"]["instructions"].items()}
        units = [f"#{i}" for i in range(len(items))]
        ref = reports.get("unsteered")
        rows = {}
        print(f"== {Path(path).name}: {len(items)} items; shares %, paired differences in points")
        print(f"{'method':18} {'pass':>20} {'echo':>6} {'pass, no echo':>20} {'pass - unsteered':>22} "
              f"{'no echo - unsteered':>22}  pronoun: pass / no echo")
        for method, rep in reports.items():
            if rep.passed != run["reports"]["instructions"][method]["passed"]:
                print(f"  note: {method}: today's checkers differ from the stored verdicts")
            clean = [p and not e for p, e in zip(rep.passed, rep.echoed)]
            row = {"pass": [rep.share, rep.ci_low, rep.ci_high], "echo": rep.echo_share,
                   "clean": [rep.clean_share, *rep.clean_ci],
                   "by_type": {k: {"pass": sum(p for p, it in zip(rep.passed, items) if it.kind == k),
                                   "clean": sum(c for c, it in zip(clean, items) if it.kind == k),
                                   "echo": sum(e for e, it in zip(rep.echoed, items) if it.kind == k),
                                   "n": sum(it.kind == k for it in items)} for k in INSTRUCTION_TYPES}}
            diffs = ["", ""]
            if ref is not None and method != "unsteered":
                ref_clean = [p and not e for p, e in zip(ref.passed, ref.echoed)]
                for j, (a, b) in enumerate(((rep.passed, ref.passed), (clean, ref_clean))):
                    a, b = [float(x) for x in a], [float(x) for x in b]
                    lo, hi = paired_bootstrap_diff_ci(a, b, n_boot, 0, clusters=units)
                    d = sum(a) / len(a) - sum(b) / len(b)
                    row["pass_minus_unsteered" if j == 0 else "clean_minus_unsteered"] = [d, lo, hi]
                    diffs[j] = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            c_share, c_lo, c_hi = share_ci(clean, n_boot, 0)
            assert abs(c_share - rep.clean_share) < 1e-12
            pron = row["by_type"]["pronoun"]
            print(f"{method:18} {100 * rep.share:5.1f} [{100 * rep.ci_low:4.1f}, {100 * rep.ci_high:4.1f}] "
                  f"{100 * rep.echo_share:6.1f} {100 * c_share:5.1f} [{100 * c_lo:4.1f}, {100 * c_hi:4.1f}] "
                  f"{diffs[0]:>22} {diffs[1]:>22}  {pron['pass']}/{pron['n']} / {pron['clean']}/{pron['n']}")
            rows[method] = row
        out[Path(path).name] = rows
        if routing:
            out[Path(path).name]["embedding_routing_estimate"] = routing_estimate(items)
    first = Path(paths[0])
    target = first.with_name(f"{first.stem}-echo.json")  # docs/results-instructions-150.json -> ...-150-echo.json
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--routing"]
    main(args or [str(DOCS / "results-instructions-150.json")], routing="--routing" in sys.argv[1:])
