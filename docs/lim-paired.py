"""Lost in the middle, SEKA vs unsteered per highlight policy, from one or more `seka-rag eval --per-item`
JSON files (their rows pooled; each question counted once): exact match of both, the paired EM
difference and the change of log p(gold answer), with bootstrap intervals that resample questions
(a question's gold-first / middle / last contexts share its passages), and mean answer words.

With ``--nq PATH`` (the NQ-open file the runs read), also a length check: best-subspan EM rewards
longer answers, so SEKA's answer is cut to the unsteered answer's word count and scored again.

Usage: python docs/lim-paired.py [--nq ../shared/data/nq-open-oracle.jsonl.gz] docs/results-lim-100-tokens.json
       [docs/results-lim-q12-23.json ...]
"""
import json
import sys

from seka_rag.evaluation.stats import mean_ci, paired_bootstrap_diff_ci

args = sys.argv[1:]
answers = None
if args[:1] == ["--nq"]:
    from seka_rag.evaluation.lost_in_middle import answer_line, best_subspan_em, load_nq

    answers = {i: r.answers for i, r in enumerate(load_nq(args[1]))}
    args = args[2:]
rows = {}
settings_of = {}
dtype_of = {}
for path in args:
    run = json.load(open(path))
    # only runs of one protocol pool: same model, passages per context and answer length
    settings_of[path] = (run["model"], run["settings"].get("nq_passages"), run["settings"].get("nq_max_new_tokens"))
    dtype_of[path] = run["settings"].get("model_settings", {}).get("dtype")  # None: older runs did not record it
    for r in run["reports"]["lost-in-middle"]["seka"]["rows"]:
        rows[(r["question_index"], r["position"], r["policy"])] = r  # a question run twice counts once
if len(set(settings_of.values())) > 1 or len({d for d in dtype_of.values() if d}) > 1:
    sys.exit("these runs differ in model, passages, answer length or dtype; pool only one protocol:\n"
             + "\n".join(f"  {p}: {v}, dtype {dtype_of[p]}" for p, v in settings_of.items()))
if None in dtype_of.values():
    print("note: dtype not recorded in " + ", ".join(p for p, d in dtype_of.items() if d is None))
for policy in ("gold", "retriever", "middle"):
    rs = [r for k, r in sorted(rows.items()) if k[2] == policy]
    if not rs:
        continue
    qs = [r["question_index"] for r in rs]
    em_u, ulo, uhi = mean_ci([float(r["em_unsteered"]) for r in rs], 4000, 0, clusters=qs)
    em_s, slo, shi = mean_ci([float(r["em"]) for r in rs], 4000, 0, clusters=qs)
    dlo, dhi = paired_bootstrap_diff_ci([float(r["em"]) for r in rs], [float(r["em_unsteered"]) for r in rs],
                                        4000, 0, clusters=qs)
    dl, llo, lhi = mean_ci([r["delta"] for r in rs], 4000, 0, clusters=qs)
    won = sum(r["em"] and not r["em_unsteered"] for r in rs)
    lost = sum(r["em_unsteered"] and not r["em"] for r in rs)
    rose = sum(r["delta"] > 0 for r in rs) / len(rs)
    wu = sum(len(r["generation_unsteered"].split()) for r in rs) / len(rs)
    ws = sum(len(r["generation"].split()) for r in rs) / len(rs)
    print(f"{policy:9} {len(set(qs))} questions, {len(rs)} contexts: EM unsteered {100*em_u:.1f} [{100*ulo:.1f}, "
          f"{100*uhi:.1f}], SEKA {100*em_s:.1f} [{100*slo:.1f}, {100*shi:.1f}], diff {100*(em_s-em_u):+.1f} "
          f"[{100*dlo:+.1f}, {100*dhi:+.1f}] (won {won}, lost {lost}); dlogp {dl:+.2f} [{llo:+.2f}, {lhi:+.2f}], "
          f"rose {100*rose:.1f} %; words unsteered {wu:.1f}, SEKA {ws:.1f}")
    if answers is not None:
        assert all(best_subspan_em(r["generation"], answers[r["question_index"]]) == r["em"] for r in rs), "not these runs' file"
        cut = [float(best_subspan_em(" ".join(answer_line(r["generation"]).split()[
                   : max(1, len(answer_line(r["generation_unsteered"]).split()))]),
                                     answers[r["question_index"]])) for r in rs]
        em_u_rows = [float(r["em_unsteered"]) for r in rs]
        clo, chi = paired_bootstrap_diff_ci(cut, em_u_rows, 4000, 0, clusters=qs)
        cwon = sum(bool(a and not b) for a, b in zip(cut, em_u_rows))
        clost = sum(bool(b and not a) for a, b in zip(cut, em_u_rows))
        print(f"    SEKA's answer cut to the unsteered answer's length: EM {100*sum(cut)/len(cut):.1f}, diff "
              f"{100*(sum(cut)/len(cut)-em_u):+.1f} [{100*clo:+.1f}, {100*chi:+.1f}] (won {cwon}, lost {clost})")
    for position in ("first", "middle", "last"):
        sel = [r for r in rs if r["position"] == position]
        if sel:
            print(f"    gold {position:6}: EM unsteered {100*sum(r['em_unsteered'] for r in sel)/len(sel):.1f} "
                  f"SEKA {100*sum(r['em'] for r in sel)/len(sel):.1f}; dlogp {sum(r['delta'] for r in sel)/len(sel):+.2f}")
