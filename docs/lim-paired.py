"""Paired EM (SEKA - unsteered) per policy, bootstrap over questions, and mean answer words, from a `seka-rag eval --per-item` JSON.

Usage: python docs/lim-paired.py docs/results-lim-100-tokens.json
"""
import json, random, sys
d = json.load(open(sys.argv[1]))
rows = d["reports"]["lost-in-middle"]["seka"]["rows"]
def words(t): return len(t.split())
rng = random.Random(0)
for pol in ["gold", "retriever", "middle"]:
    rs = [r for r in rows if r["policy"] == pol]
    if not rs: continue
    qs = sorted({r["question_index"] for r in rs})
    by_q = {q: [r for r in rs if r["question_index"] == q] for q in qs}
    em_s = sum(r["em"] for r in rs) / len(rs); em_u = sum(r["em_unsteered"] for r in rs) / len(rs)
    dl = sum(r["delta"] for r in rs) / len(rs)
    diffs = []
    for _ in range(4000):  # resample questions (the 3 positions of a question share its passages)
        sample = [r for q in (rng.choice(qs) for _ in qs) for r in by_q[q]]
        diffs.append(sum(r["em"] - r["em_unsteered"] for r in sample) / len(sample))
    diffs.sort()
    lo, hi = diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]
    won = sum(r["em"] and not r["em_unsteered"] for r in rs); lost = sum(r["em_unsteered"] and not r["em"] for r in rs)
    wu = sum(words(r["generation_unsteered"]) for r in rs) / len(rs); ws = sum(words(r["generation"]) for r in rs) / len(rs)
    print(f"{pol:9} n={len(rs)} EM unsteered {100*em_u:.1f} SEKA {100*em_s:.1f} diff {100*(em_s-em_u):+.1f} "
          f"[{100*lo:+.1f}, {100*hi:+.1f}] (won {won}, lost {lost}); dlogp {dl:+.2f}; words unsteered {wu:.1f} SEKA {ws:.1f}")
    for half, sel in (("q0-5", [r for r in rs if r["question_index"] < 6]), ("q6-11", [r for r in rs if r["question_index"] >= 6])):
        if sel:
            print(f"    {half}: EM unsteered {100*sum(r['em_unsteered'] for r in sel)/len(sel):.1f} SEKA {100*sum(r['em'] for r in sel)/len(sel):.1f}")
