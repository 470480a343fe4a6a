"""Overhead benchmark: steered vs unsteered prefill latency, decode speed and peak memory.

Methods (``--methods``): ``seka`` (the single projection), ``ada-attention`` (AdaSEKA, router
inside the forward pass), ``ada-embedding`` (AdaSEKA, the query embedding computed inside the timed
region), ``two-pass`` (AdaSEKA routed as published: an extra full forward pass computes the routing
queries before the steered pass). Latency: every method, unsteered and an unsteered A/A control
interleaved in one process, medians of ``runs`` repetitions per prompt length (the control's ratio
to unsteered shows the noise floor). Memory: each configuration in a fresh subprocess; on CPU the peak resident set
size (VmHWM, reset after the model is loaded, and the whole-process peak), on CUDA
``torch.cuda.max_memory_allocated``. Prompts are synthetic text cut to an exact token count with
a contiguous 10 % of it highlighted in the middle.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import SekaError
from .highlight import EncodedPrompt, pad_batch

_FILLER = (
    "The committee met on a grey morning to review the harbour accounts. Several members noted that "
    "the northern pier needed repairs before winter, while others argued for a new ferry schedule. "
    "A clerk read out the figures for grain, timber and wool, and the chair asked for questions. "
)


#: Benchmark methods: name → how the prompt is steered.
METHODS = ("seka", "ada-attention", "ada-embedding", "two-pass")
_QUERY_TEXT = "What did the committee decide about the northern pier?"


@dataclass
class BenchConfig:
    lengths: list[int] = field(default_factory=lambda: [256, 1024, 2048])
    runs: int = 7
    decode_tokens: int = 16
    highlight_share: float = 0.10
    batch_size: int = 1
    methods: list[str] = field(default_factory=lambda: ["seka"])


def synthetic_prompt(tokenizer, length: int, share: float, batch_size: int = 1) -> list[EncodedPrompt]:
    """``batch_size`` prompts of exactly ``length`` tokens; a contiguous ``share`` of them highlighted."""
    ids = tokenizer(_FILLER * (length // 40 + 2), add_special_tokens=False)["input_ids"][:length]
    n_hl = max(1, int(round(length * share)))
    start = (length - n_hl) // 2
    mask = [start <= i < start + n_hl for i in range(length)]
    return [EncodedPrompt(list(ids), list(mask), "") for _ in range(batch_size)]


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument (``cache`` in recent transformers, ``past_key_values`` before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _steering_for(seka, batch, method: str | bool):
    """The steering block of one method (``False`` / ``"unsteered"``: none); two-pass runs its first pass here."""
    if method in (False, "unsteered", "control"):
        return seka.steering(batch.highlight_mask, steer=False)
    if method in (True, "seka"):
        return seka.steering(batch.highlight_mask, router="projection" if seka.experts is not None else None)
    if method == "ada-attention":
        return seka.steering(batch.highlight_mask, router="attention")
    if method == "ada-embedding":
        return seka.steering(batch.highlight_mask, router="embedding", query=[_QUERY_TEXT] * batch.input_ids.shape[0])
    if method == "two-pass":
        # as published: route from a separate, unsteered full forward pass, then run the steered one
        first = seka.steering(batch.highlight_mask, router="attention", routing={"gain": 0.0})
        with first:
            seka.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)
        second = seka.steering(batch.highlight_mask, router="attention")
        second.edit.record.update(first.edit.record)  # fixed weights: no routing inside this pass
        return second
    raise ValueError(f"unknown bench method {method!r}; known: unsteered, {', '.join(METHODS)}")


def time_prefill_and_decode(seka, batch, method: str | bool, decode_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens per second) for one run; prefill includes any routing work."""
    device = seka.device
    cache_arg = _cache_kwarg(seka.model)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), _steering_for(seka, batch, method):
        out = seka.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=True, logits_to_keep=1)
        _sync(device)
        t1 = time.perf_counter()
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        attention = batch.attention_mask
        for _ in range(decode_tokens):
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
            out = seka.model(input_ids=token, attention_mask=attention, use_cache=True, logits_to_keep=1,
                             **{cache_arg: cache})
            cache = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        t2 = time.perf_counter()
    return t1 - t0, decode_tokens * batch.input_ids.shape[0] / (t2 - t1)


def latency_table(seka, config: BenchConfig, progress: bool = True) -> list[dict]:
    """Interleaved steered/unsteered runs; medians per prompt length."""
    rows = []
    batches = {
        n: pad_batch(synthetic_prompt(seka.tokenizer, n, config.highlight_share, config.batch_size),
                     seka.tokenizer.pad_token_id).to(seka.device)
        for n in config.lengths
    }
    # "control" repeats the unsteered configuration: its ratio to "unsteered" is the noise floor (A/A)
    configs = ["unsteered", *config.methods, "control"]
    for n, batch in batches.items():  # warm-up
        for name in configs[:-1]:
            time_prefill_and_decode(seka, batch, name, 2)
    samples = {(n, c): [] for n in config.lengths for c in configs}
    for r in range(config.runs):
        for n, batch in batches.items():
            order = configs if r % 2 == 0 else list(reversed(configs))
            for name in order:
                samples[(n, name)].append(time_prefill_and_decode(seka, batch, name, config.decode_tokens))
        if progress:
            print(f"  run {r + 1}/{config.runs} done", file=sys.stderr, flush=True)
    for n in config.lengths:
        base = samples[(n, "unsteered")]
        p0 = statistics.median(s[0] for s in base)
        d0 = statistics.median(s[1] for s in base)
        for name in [*config.methods, "control"]:
            steered = samples[(n, name)]
            p1 = statistics.median(s[0] for s in steered)
            d1 = statistics.median(s[1] for s in steered)
            # each run times all configurations back to back: the median of the paired ratios
            # cancels slow drifts of a shared machine better than a ratio of medians
            rows.append(dict(tokens=n, batch=config.batch_size, method=name, prefill_unsteered_s=p0,
                             prefill_steered_s=p1, prefill_ratio=p1 / p0,
                             prefill_ratio_paired=statistics.median(s[0] / b[0] for s, b in zip(steered, base)),
                             decode_unsteered_tps=d0, decode_steered_tps=d1, decode_ratio=d1 / d0,
                             decode_ratio_paired=statistics.median(s[1] / b[1] for s, b in zip(steered, base)),
                             runs=config.runs))
    return rows


# ---------------------------------------------------------------------- memory (fresh subprocesses)
def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(model_spec: dict, length: int, steer: str | bool, config: BenchConfig) -> dict:
    """Run in a fresh process: load the model, one prefill + decode, report the peak memory."""
    from .cli import load_model

    seka = load_model(**model_spec)
    if steer == "ada-embedding":
        from .embeddings import embed

        embed(["warm-up"], seka.embedding_encoder)  # the encoder's weights count as loaded, like the model's
    batch = pad_batch(synthetic_prompt(seka.tokenizer, length, config.highlight_share, config.batch_size),
                      seka.tokenizer.pad_token_id).to(seka.device)
    import gc

    gc.collect()
    whole_peak_before = _rss_peak_kib()
    if seka.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    reset = _reset_rss_peak()
    time_prefill_and_decode(seka, batch, steer, config.decode_tokens)
    result = dict(tokens=length, steer=steer, device=seka.device.type)
    if seka.device.type == "cuda":
        result.update(peak_bytes=torch.cuda.max_memory_allocated(), baseline_bytes=base)
    else:
        result.update(peak_rss_kib=_rss_peak_kib(), load_peak_rss_kib=whole_peak_before, peak_reset=reset)
    return result


def memory_table(model_spec: dict, config: BenchConfig, progress: bool = True) -> list[dict]:
    rows = []
    for n in config.lengths:
        res = {}
        for steer in ["unsteered", *config.methods]:
            cmd = [sys.executable, "-m", "seka_rag.bench", "--probe", json.dumps(
                dict(model_spec=model_spec, length=n, steer=steer, config=asdict(config)))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
            res[steer] = json.loads(proc.stdout.strip().splitlines()[-1])
            if progress:
                print(f"  memory probe {n} tokens steer={steer} done", file=sys.stderr, flush=True)
        key = "peak_bytes" if "peak_bytes" in res["unsteered"] else "peak_rss_kib"
        for method in config.methods:
            rows.append(dict(tokens=n, method=method, metric=key, unsteered=res["unsteered"][key],
                             steered=res[method][key], ratio=res[method][key] / res["unsteered"][key],
                             details={"unsteered": res["unsteered"], method: res[method]}))
    return rows


def run_benchmark(model_spec: dict, config: BenchConfig, out: str | os.PathLike | None = None, *,
                  memory: bool = True, progress: bool = True) -> dict:
    """The whole overhead benchmark; prints tables and returns (and optionally writes) the results."""
    from .cli import load_model

    started = time.perf_counter()
    seka = load_model(**model_spec)
    if any(m != "seka" for m in config.methods) and seka.experts is None:
        raise SekaError("the AdaSEKA bench methods need an expert set: pass --adaptive or --experts DIR")
    if "ada-embedding" in config.methods:
        from .embeddings import embed

        embed(["warm-up"], seka.embedding_encoder)  # load the sentence encoder before timing
    info = dict(model=seka.model_id, device=str(seka.device), torch_threads=torch.get_num_threads(),
                dtype=str(next(seka.model.parameters()).dtype), config=asdict(config))
    print(f"seka-rag bench: {seka.model_id} on {seka.device}, {torch.get_num_threads()} threads, "
          f"{config.runs} interleaved runs, {int(config.highlight_share * 100)} % highlighted", flush=True)
    latency = latency_table(seka, config, progress)
    print(format_latency(latency), flush=True)
    del seka
    memory_rows = memory_table(model_spec, config, progress) if memory else []
    if memory_rows:
        print(format_memory(memory_rows), flush=True)
    result = dict(info=info, latency=latency, memory=memory_rows, seconds=time.perf_counter() - started)
    print(f"total {result['seconds']:.0f} s", flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return result


def format_latency(rows: list[dict]) -> str:
    """Markdown: one row per prompt length and method (``control`` = unsteered timed again, A/A)."""
    lines = ["| tokens | batch | method | prefill unsteered (s) | prefill method (s) | ratio of medians "
             "| median paired ratio | decode unsteered (tok/s) | decode method (tok/s) | ratio of medians "
             "| median paired ratio |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['batch']} | {r['method']} | {r['prefill_unsteered_s']:.3f} | "
                     f"{r['prefill_steered_s']:.3f} | {r['prefill_ratio']:.3f} | {r['prefill_ratio_paired']:.3f} | "
                     f"{r['decode_unsteered_tps']:.2f} | {r['decode_steered_tps']:.2f} | {r['decode_ratio']:.3f} | "
                     f"{r['decode_ratio_paired']:.3f} |")
    return "\n".join(lines)


def format_memory(rows: list[dict]) -> str:
    lines = ["| tokens | method | metric | unsteered | method | ratio |", "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['method']} | {r['metric']} | {r['unsteered']} | {r['steered']} | {r['ratio']:.4f} |")
    return "\n".join(lines)


def _probe_main(arg: str) -> None:
    spec = json.loads(arg)
    res = memory_probe(spec["model_spec"], spec["length"], spec["steer"], BenchConfig(**spec["config"]))
    print(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        _probe_main(sys.argv[2])
    else:
        print("use `seka-rag bench`", file=sys.stderr)
        sys.exit(2)
