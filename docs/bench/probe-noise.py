"""Peak RSS of the same configurations in repeated fresh probe processes, glibc default vs a fixed mmap threshold.

Measured docs/bench/probe-noise.json (a later session): `python docs/bench/probe-noise.py default`, then
`python docs/bench/probe-noise.py fixed`, each probe `seka-rag bench`'s own fresh process (the default
model, 2,048 tokens, batch 1, one prefill + 4 decode steps); it writes /tmp/work/memnoise/<mode>.json as
[rep, method, peak kiB]. The probes now fix the threshold themselves (``BenchConfig.mmap_threshold``),
so "default" turns that off; when the stored figures were measured the probes did not set it yet, and
the script was otherwise this one.
"""
import os, sys, json, time
from seka_rag.bench import BenchConfig, _probe_subprocess
mode = sys.argv[1] if len(sys.argv) == 2 else ""
if mode not in ("default", "fixed"):
    sys.exit("usage: python docs/bench/probe-noise.py default|fixed")
if mode == "fixed":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
else:
    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
# mmap_threshold=None: the probes leave glibc's adaptive threshold (they fix it by default now)
cfg = BenchConfig(lengths=[2048], runs=1, decode_tokens=4, methods=["seka", "ada-attention"],
                  mmap_threshold=None if mode == "default" else 65536)
spec = dict(model="qwen2.5-coder-0.5b", adaptive=True)
out = []
t = time.time()
for rep in range(3):
    for steer in ["unsteered", "seka", "ada-attention", "prompt-markers"]:
        r = _probe_subprocess(spec, 2048, steer, cfg, 1)
        out.append((rep, steer, r["peak_rss_kib"]))
        print(mode, rep, steer, r["peak_rss_kib"], round(time.time() - t), flush=True)
os.makedirs("/tmp/work/memnoise", exist_ok=True)
json.dump(out, open(f"/tmp/work/memnoise/{mode}.json", "w"))
