"""Scouting, dev items only: does a family score better when the edit sits in other layers?

The single calibrated projection holds P+ / P- for all 24 layers of the default model, but edits
layers 16-23 at a per-layer scale of 4. This script copies it with that scale on every layer, so
any 8-layer window edits at the shipped strength, and scores one family's dev items (seed 1)
with the edit in each window. Usage:

    python docs/adaptive/expert-layers/scout.py --family instruction --items 152 \
        --windows 0-7,4-11,8-15,12-19,16-23 --out docs/adaptive/expert-layers/scout-instruction.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from seka_rag import SekaModel
from seka_rag.evaluation.families import evaluate_family, family_items
from seka_rag.projection import Projection


def window(text: str) -> list[int]:
    first, last = (int(x) for x in text.split("-"))
    return list(range(first, last + 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True)
    ap.add_argument("--items", type=int, default=152)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--windows", default="0-7,4-11,8-15,12-19,16-23")
    ap.add_argument("--unsteered", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    model = SekaModel.default()
    proj = model.projection
    scale = float(proj.layer_scale.max())
    flat = Projection(meta=proj.meta, pos=proj.pos, neg=proj.neg, u_pos=proj.u_pos, s_pos=proj.s_pos,
                      u_neg=proj.u_neg, s_neg=proj.s_neg, head_shift=proj.head_shift,
                      head_mask=proj.head_mask, layer_scale=torch.full_like(proj.layer_scale, scale))
    model.load_projection(flat)  # the same model, now with the scale on every layer
    items = family_items(args.family, args.items, seed=args.seed)
    rows = []
    runs = ([("unsteered", None)] if args.unsteered else []) + [(w, window(w)) for w in args.windows.split(",")]
    for name, layers in runs:
        t0 = time.perf_counter()
        kw = {"steer": False} if layers is None else {"layers": layers}
        rep = evaluate_family(model, items, progress=False, **kw)
        row = {"window": name, "share": rep.share, "ci": [rep.ci_low, rep.ci_high],
               "mean_margin": rep.mean_margin, "groups": rep.groups, "hits": rep.hits,
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{name:>9}  {100 * rep.share:5.1f} [{100 * rep.ci_low:5.1f}, {100 * rep.ci_high:5.1f}]  "
              f"margin {rep.mean_margin:+.2f}  " +
              "  ".join(f"{g} {100 * v:.0f}" for g, v in sorted(rep.groups.items())) + f"  ({row['seconds']} s)",
              flush=True)
    with open(args.out, "w") as f:
        json.dump({"family": args.family, "items": args.items, "seed": args.seed, "layer_scale": scale,
                   "gains": [proj.meta.gain_pos, proj.meta.gain_neg], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
