"""Dev-split diagnosis: lost in the middle, 10 passages, gold policy, per-item generations at several gain scales."""
import json, sys, time
from seka_rag import SekaModel
from seka_rag.evaluation.lost_in_middle import lost_in_middle_items, lost_in_middle_reference, evaluate_lost_in_middle

first, n, scales, out = int(sys.argv[1]), int(sys.argv[2]), [float(s) for s in sys.argv[3].split(",")], sys.argv[4]
policies = sys.argv[5].split(",") if len(sys.argv) > 5 else ["gold"]
m = SekaModel.default()
gp, gn = m.projection.meta.gain_pos, m.projection.meta.gain_neg
items = lost_in_middle_items("../shared/data/nq-open-oracle.jsonl.gz", n, n_passages=10, first=first)
t = time.time()
ref = lost_in_middle_reference(m, items, em=True, max_new_tokens=24, batch_size=4, progress=False)
res = {"first": first, "n": n, "ref_seconds": time.time() - t, "items": [it.to_dict() for it in items],
       "ref": {"logps": ref.logps, "generations": ref.generations}, "scales": {}}
print("reference", time.time() - t, flush=True)
for s in scales:
    t = time.time()
    rep = evaluate_lost_in_middle(m, items, policies=policies, em=True, max_new_tokens=24, batch_size=4, progress=False,
                                  reference=ref, gain_pos=s * gp, gain_neg=s * gn)
    res["scales"][str(s)] = rep.rows
    em = sum(r["em"] for r in rep.rows) / len(rep.rows); emu = sum(r["em_unsteered"] for r in rep.rows) / len(rep.rows)
    d = sum(r["delta"] for r in rep.rows) / len(rep.rows)
    print(f"scale {s}: EM {em:.3f} unsteered {emu:.3f} dlogp {d:+.2f} ({time.time()-t:.0f}s)", flush=True)
    json.dump(res, open(out, "w"), indent=1)
