"""Recompute stored evaluation results with today's metric code, without running a model.

Two fixes changed how stored per-item results are scored (see docs/results.md, "Corrections"):

* lost in the middle: intervals now resample whole questions (a question's gold-first / middle /
  last contexts share its passages), instead of treating every context as independent;
* instructions: a pronoun in quotes is a mention, not a use, so an answer that only repeats
  "Refer to the person as 'he'." no longer passes the pronoun checker.

For every suite file given (default: the ones docs/results.md reports), this prints the stored and
the recomputed figure of each affected cell, and each method's recomputed instruction pass rate minus
unsteered's, paired item by item (what `seka-rag eval --merge FILE` prints for the other families),
and writes them to docs/stored-rechecks.json:

    python docs/recheck-stored.py [FILE.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seka_rag.evaluation.instructions import check, instruction_items
from seka_rag.evaluation.lost_in_middle import lost_in_middle_cells
from seka_rag.evaluation.stats import paired_bootstrap_diff_ci, share_ci

DOCS = Path(__file__).resolve().parent
DEFAULT_FILES = ["results.json", "results-lim-10-passages.json", "results-lim-100-tokens.json",
                 "results-earlier-defaults.json", "results-seka-gains-x0.25.json"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def recheck_instructions(run: dict, method: str, report: dict) -> dict | None:
    outputs = report.get("outputs")
    if not outputs:
        return None
    items = instruction_items(run["items"]["instructions"], run["settings"]["seed"])
    if len(items) != len(outputs):
        raise SystemExit(f"{method}: {len(outputs)} stored outputs for {len(items)} items")
    passed = [check(it.kind, out, it) for it, out in zip(items, outputs)]
    share, lo, hi = share_ci(passed, run["settings"]["n_boot"], 0)
    changed = [dict(kind=it.kind, pronoun=it.pronoun, output=out, stored=old, now=new)
               for it, out, old, new in zip(items, outputs, report["passed"], passed) if old != new]
    by_kind = {}
    for it, p in zip(items, passed):
        by_kind.setdefault(it.kind, []).append(p)
    return dict(stored=[report["share"], report["ci_low"], report["ci_high"]], now=[share, lo, hi],
                groups_now={k: f"{sum(v)}/{len(v)}" for k, v in by_kind.items()}, changed=changed, passed_now=passed)


def paired_instructions(run: dict, rechecked: dict) -> dict:
    """Each method's recomputed pass rate minus unsteered's, paired by item: [difference, low, high]."""
    ref = rechecked.get("unsteered", {}).get("passed_now")
    if ref is None:
        return {}
    out = {}
    for method, got in rechecked.items():
        if method == "unsteered":
            continue
        a, b = [float(x) for x in got["passed_now"]], [float(x) for x in ref]
        lo, hi = paired_bootstrap_diff_ci(a, b, run["settings"]["n_boot"], 0, clusters=[f"#{i}" for i in range(len(a))])
        out[method] = [sum(a) / len(a) - sum(b) / len(b), lo, hi]
    return out


def recheck_lost_in_middle(run: dict, report: dict) -> list[dict]:
    rows = report.get("rows")
    if not rows:
        return []
    policies = report["settings"]["policies"]
    em = bool(report["settings"].get("em", True))
    cells = lost_in_middle_cells(rows, policies, em=em, n_boot=run["settings"]["n_boot"], seed=0)
    stored = {(c["position"], c["policy"]): c for c in report["cells"]}
    out = []
    for c in cells:
        old = stored[(c.position, c.policy)]
        out.append(dict(position=c.position, policy=c.policy, n=c.n, mean_delta=c.mean_delta,
                        delta_ci_stored=old["delta_ci"], delta_ci_now=list(c.delta_ci),
                        rises=c.share_rises, rises_ci_stored=old["rises_ci"], rises_ci_now=list(c.rises_ci),
                        em=c.em, em_ci_stored=old["em_ci"], em_ci_now=None if c.em_ci is None else list(c.em_ci),
                        em_unsteered=c.em_unsteered,
                        em_unsteered_ci_now=None if c.em_unsteered_ci is None else list(c.em_unsteered_ci)))
    return out


def main(argv: list[str]) -> None:
    files = [Path(a) for a in argv] or [DOCS / f for f in DEFAULT_FILES]
    result: dict = {}
    for path in files:
        run = json.loads(path.read_text())
        entry: dict = {}
        print(f"== {path.name}")
        for method, report in run.get("reports", {}).get("instructions", {}).items():
            got = recheck_instructions(run, method, report)
            if got is None:
                continue
            entry.setdefault("instructions", {})[method] = got
            s, n = got["stored"], got["now"]
            print(f"instructions  {method:<18} stored {_pct(s[0])} [{_pct(s[1])}, {_pct(s[2])}]  "
                  f"now {_pct(n[0])} [{_pct(n[1])}, {_pct(n[2])}]  {got['groups_now']}")
            for c in got["changed"]:
                print(f"    {c['kind']} ({c['pronoun']}): {c['stored']} -> {c['now']}: {c['output'][:90]!r}")
        for method, (d, lo, hi) in paired_instructions(run, entry.get("instructions", {})).items():
            entry.setdefault("instructions_paired_vs_unsteered", {})[method] = [d, lo, hi]
            print(f"instructions  {method:<18} - unsteered, paired: {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        for method, report in run.get("reports", {}).get("lost-in-middle", {}).items():
            cells = recheck_lost_in_middle(run, report)
            if not cells:
                continue
            entry.setdefault("lost-in-middle", {})[method] = cells
            for c in cells:
                if c["position"] != "all":
                    continue
                em = "" if c["em"] is None else (
                    f"  EM {_pct(c['em'])} [{_pct(c['em_ci_stored'][0])}, {_pct(c['em_ci_stored'][1])}] -> "
                    f"[{_pct(c['em_ci_now'][0])}, {_pct(c['em_ci_now'][1])}]")
                print(f"lost-in-middle {method:<10} {c['policy']:<9} n={c['n']:<3} dlogp {c['mean_delta']:+.2f} "
                      f"[{c['delta_ci_stored'][0]:+.2f}, {c['delta_ci_stored'][1]:+.2f}] -> "
                      f"[{c['delta_ci_now'][0]:+.2f}, {c['delta_ci_now'][1]:+.2f}]  rises {_pct(c['rises'])} "
                      f"[{_pct(c['rises_ci_now'][0])}, {_pct(c['rises_ci_now'][1])}]{em}")
        result[path.name] = entry
    out = DOCS / "stored-rechecks.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
