"""The same memory probes forked from one loader process and spawned as fresh interpreters, side by side.

Measured docs/bench/probe-fork-vs-spawn.json (a later session) with
`python docs/bench/probe-fork-vs-spawn.py docs/bench/probe-fork-vs-spawn.json`: the default model with its
expert set, batch 1, 256 and 2,048 tokens, unsteered and five methods, each configuration probed once
each way (`seka-rag bench`'s own probes, ``BenchConfig.probe_start``), forked first. It prints, per
configuration, both ways' peak RSS, ratio to unsteered and RSS when the peak was reset, and the seconds
each way took.
"""
import json
import sys
import time

from seka_rag.bench import BenchConfig, memory_table

if len(sys.argv) != 2:
    sys.exit("usage: python docs/bench/probe-fork-vs-spawn.py OUT.json")
spec = dict(model="qwen2.5-coder-0.5b", adaptive=True)
methods = ["prompt-markers", "seka", "ada-attention", "ada-embedding", "pasta"]
out = {}
for start in ("fork", "spawn"):
    config = BenchConfig(lengths=[256, 2048], decode_tokens=4, methods=methods, probe_start=start)
    began = time.perf_counter()
    rows = memory_table(spec, config, progress=False)
    out[start] = dict(seconds=time.perf_counter() - began, rows=rows)
    print(f"{start}: {len(rows) + len(config.lengths)} probes in {out[start]['seconds']:.0f} s", flush=True)
print("| tokens | method | peak forked (GiB) | peak spawned (GiB) | ratio forked | ratio spawned "
      "| at reset forked (GiB) | at reset spawned (GiB) |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for forked, spawned in zip(out["fork"]["rows"], out["spawn"]["rows"]):
    f, s = forked["details"][forked["method"]], spawned["details"][spawned["method"]]
    print(f"| {forked['tokens']} | {forked['method']} | {f['peak_rss_kib'] / 2**20:.3f} | {s['peak_rss_kib'] / 2**20:.3f} "
          f"| {forked['ratio']:.4f} | {spawned['ratio']:.4f} | {f['rss_at_reset_kib'] / 2**20:.3f} "
          f"| {s['rss_at_reset_kib'] / 2**20:.3f} |")
for n in (256, 2048):
    f = next(r for r in out["fork"]["rows"] if r["tokens"] == n)["details"]["unsteered"]
    s = next(r for r in out["spawn"]["rows"] if r["tokens"] == n)["details"]["unsteered"]
    print(f"| {n} | unsteered | {f['peak_rss_kib'] / 2**20:.3f} | {s['peak_rss_kib'] / 2**20:.3f} | | "
          f"| {f['rss_at_reset_kib'] / 2**20:.3f} | {s['rss_at_reset_kib'] / 2**20:.3f} |")
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
