"""Attention-router weights per family on 24 dev prompts each, at three non-default settings (a diagnostic).

Prints mean weight per expert and, in parentheses, on how many prompts it weighs most.
    HF_HUB_OFFLINE=1 python docs/adaptive/per-expert-gains/attention-router-settings.py
"""
from collections import Counter
from seka_rag import SekaModel
from seka_rag.data.tasks import FAMILIES
from seka_rag.evaluation.families import family_items
model = SekaModel.default(adaptive=True)
names = model.experts.names
for routing in ({"top_k": 3}, {"top_k": 3, "temperature": 0.05}, {"signed": True}):
    print("routing", routing)
    for family in FAMILIES:
        items = family_items(family, 24, seed=1)
        rows = [model.route(it.prompt, highlights=[it.highlight], router="attention", routing=routing).summary() for it in items]
        mean = {x: sum(r[x] for r in rows) / len(rows) for x in names}
        top = Counter(max(r, key=r.get) for r in rows)
        print(f"  {family:12s} " + " ".join(f"{x}={mean[x]:.3f}({top.get(x,0)})" for x in names))
