"""How the shipped expert set's routers weight the experts on each task family's test prompts.

For the first N test items of each family (default 24), both routers' mean weight per expert
(attention: c / max|c| averaged over edited layers and KV heads; embedding: softmax weights), and
how often each expert gets the largest weight. Prints a table and writes JSON beside this script.

    HF_HUB_OFFLINE=1 python docs/adaptive/per-expert-gains/routing-by-family.py [N]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from seka_rag import SekaModel
from seka_rag.data.tasks import FAMILIES
from seka_rag.evaluation.families import family_items


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    model = SekaModel.default(adaptive=True)
    names = model.experts.names
    out: dict = {"items_per_family": n, "experts": names, "families": {}}
    print(f"mean routing weight per expert on {n} test prompts per family (top: how often it weighs most)")
    print(f"{'family':12s} {'router':10s} " + " ".join(f"{x:>22s}" for x in names))
    for family in FAMILIES:
        items = family_items(family, n, seed=0)
        out["families"][family] = {}
        for router in ("attention", "embedding"):
            rows = [model.route(it.prompt, highlights=[it.highlight], router=router).summary() for it in items]
            mean = {x: sum(r[x] for r in rows) / len(rows) for x in names}
            top = Counter(max(r, key=r.get) for r in rows)
            out["families"][family][router] = {"mean": mean, "top": dict(top)}
            print(f"{family:12s} {router:10s} " + " ".join(f"{mean[x]:>14.3f} (top {top.get(x, 0):2d})" for x in names))
    path = Path(__file__).with_name("routing-by-family.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
