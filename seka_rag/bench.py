"""Overhead benchmark: every method vs unsteered — prefill latency, decode speed and peak memory.

Methods (``--methods``, :data:`METHODS`): ``prompt-markers`` / ``prompt-important`` (prompt-only
emphasis: the highlighted span wrapped in ``**`` or preceded by ``IMPORTANT:``, run unsteered on
the slightly longer prompt), ``pasta`` (eager attention in the layers of the chosen heads, α
applied to those heads; SDPA elsewhere), ``spa`` (two prefills and two decode passes per token:
the prompt and the prompt with its highlight masked), ``seka`` (the single projection),
``ada-attention`` (AdaSEKA, router inside the forward pass), ``ada-embedding`` (AdaSEKA, the query
embedding computed inside the timed region), ``two-pass`` (AdaSEKA routed as published: an extra
full forward pass computes the routing queries before the steered pass).

Latency: every method, unsteered and an unsteered A/A control interleaved in one process, medians
of ``runs`` repetitions per batch size and prompt length (more for cheap shapes,
:meth:`BenchConfig.runs_for`), with an order-statistic interval for each paired median; the
control's ratio to unsteered shows the noise floor. Memory: each configuration (method × batch
size × length) in a process of its own — on CPU (Linux) forked from one loader process that holds
the model, elsewhere a fresh interpreter that loads it (:attr:`BenchConfig.probe_start`); on CPU
the peak resident set size (VmHWM, reset after the model is loaded, and the whole-process peak;
glibc's mmap threshold fixed, :data:`PROBE_MMAP_THRESHOLD`, so that the peak follows live tensors
rather than the allocator's caching), on CUDA ``torch.cuda.max_memory_allocated`` (there
``memory_in_process=True`` / ``--memory-in-process`` resets the peak per configuration in one
process instead, which is exact on CUDA and saves a model load per probe). Prompts are synthetic
text cut to an exact token count with a contiguous 10 % of it highlighted in the middle.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
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


#: Benchmark methods, in table order: prompt-only emphasis, the two older steering methods, SEKA, AdaSEKA.
METHODS = ("prompt-markers", "prompt-important", "pasta", "spa", "seka", "ada-attention", "ada-embedding", "two-pass")
#: Methods that need an AdaSEKA expert set.
ADAPTIVE_METHODS = ("ada-attention", "ada-embedding", "two-pass")
_QUERY_TEXT = "What did the committee decide about the northern pier?"


#: glibc's mmap threshold in the CPU probes, bytes (``MALLOC_MMAP_THRESHOLD_``; a value already in the
#: environment is kept). Fixed, every allocation above it is its own mapping, returned to the system
#: when freed, so peak RSS follows the tensors alive at once; glibc's default threshold *adapts* to
#: freed blocks, and then whether a freed buffer stays resident depends on the order of allocations,
#: which spread the same configuration's peak over about 2 % between fresh processes (2k tokens on the
#: default model, three probes each of four configurations: 1.78–1.84 GiB; 1.761–1.768 GiB fixed).
#: The default of :attr:`BenchConfig.mmap_threshold` (``None`` there: glibc's own adaptive threshold).
PROBE_MMAP_THRESHOLD = 65536

#: How the CPU memory probes get their processes (:attr:`BenchConfig.probe_start`).
PROBE_STARTS = ("fork", "spawn")


@dataclass
class BenchConfig:
    """What ``seka-rag bench`` measures.

    ``pasta_heads``: PASTA's ``{layer: [query heads]}`` (its cost is eager attention in each layer
    that has a chosen head; default: :func:`pasta_config_for`'s two heads in each of four layers).
    ``mmap_threshold``: glibc's mmap threshold (bytes) in the CPU memory probes, unless their
    environment already sets one; ``None`` leaves glibc's adaptive default (see
    :data:`PROBE_MMAP_THRESHOLD`).
    ``probe_start``: how each CPU memory probe gets a process of its own. ``"fork"`` (default): one
    loader process imports the libraries and loads the model once, on one thread (a process forked
    after OpenMP has started its threads hangs), then forks a child per configuration, which first
    touches the library pages the loader had resident (a forked child inherits those file mappings
    but not their page-table entries, so its RSS would otherwise start about 95 MiB lower than a
    fresh process's on the default model), restores the thread count, runs the probe and exits.
    This saves the 7–8 s of interpreter start and model load that each probe of the default model
    otherwise pays. ``"spawn"``: a fresh interpreter per configuration loads the model itself (how
    every probe ran before forking was added). Fork is used on Linux for CPU models only; elsewhere,
    or where ``/proc/self/pagemap`` or ``/proc/self/clear_refs`` cannot be used, the probes spawn
    (the CLI refuses ``--probe-start fork`` off Linux or off the CPU; a probe's details say which
    way it ran, ``process``).
    """

    lengths: list[int] = field(default_factory=lambda: [256, 1024, 2048])
    runs: int = 7
    decode_tokens: int = 16
    highlight_share: float = 0.10
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    methods: list[str] = field(default_factory=lambda: ["seka"])
    pasta_heads: dict[int, list[int]] | None = None
    short_run_factor: int = 4
    mmap_threshold: int | None = PROBE_MMAP_THRESHOLD
    probe_start: str = "fork"

    def __post_init__(self):
        if self.probe_start not in PROBE_STARTS:
            raise SekaError(f"probe_start must be one of {', '.join(PROBE_STARTS)}, got {self.probe_start!r}")

    def runs_for(self, batch_size: int, length: int) -> int:
        """Timed runs of one shape: ``runs``, times up to ``short_run_factor`` for cheap shapes.

        A shape whose tokens × batch is at most 1/16 of the largest shape's gets ``runs`` ×
        min(``short_run_factor``, ⌊largest / (8 × its size)⌋): its runs are short and noisy (a 0.3 s
        prefill moves by several percent between runs on a shared CPU), and the extra runs cost
        little beside the largest shape's. The cost model is the CPU's, where a run costs about its
        tokens × batch; on a GPU, where fixed costs dominate short runs, pass ``short_run_factor=1``
        (``--short-run-factor 1``): every shape then gets ``runs``.
        """
        largest = max(self.lengths) * max(self.batch_sizes)
        factor = largest // (8 * length * batch_size)
        return self.runs * max(1, min(self.short_run_factor, factor))


def synthetic_prompt(tokenizer, length: int, share: float, batch_size: int = 1) -> list[EncodedPrompt]:
    """``batch_size`` prompts of exactly ``length`` tokens; a contiguous ``share`` of them highlighted."""
    ids = tokenizer(_FILLER * (length // 40 + 2), add_special_tokens=False)["input_ids"][:length]
    n_hl = max(1, int(round(length * share)))
    start = (length - n_hl) // 2
    mask = [start <= i < start + n_hl for i in range(length)]
    return [EncodedPrompt(list(ids), list(mask), "") for _ in range(batch_size)]


def emphasized_prompt(tokenizer, prompt: EncodedPrompt, style: str) -> EncodedPrompt:
    """Prompt-only emphasis of a synthetic prompt: the highlighted span wrapped in ``**`` (``"markers"``) or
    preceded by ``IMPORTANT:`` (``"important"``), as :func:`~seka_rag.evaluation.baselines.emphasize_prompt`
    writes it; nothing highlighted (the method runs unsteered on the longer prompt)."""
    from .evaluation.baselines.prompting import EMPHASIS_MARKERS, IMPORTANT_PREFIX

    before, after = EMPHASIS_MARKERS if style == "markers" else (IMPORTANT_PREFIX, "")
    span = [i for i, m in enumerate(prompt.highlight) if m]
    lo, hi = span[0], span[-1] + 1

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    ids = prompt.input_ids[:lo] + enc(before) + prompt.input_ids[lo:hi] + enc(after) + prompt.input_ids[hi:]
    return EncodedPrompt(ids, [False] * len(ids), "")


def bench_batch(seka, config: BenchConfig, length: int, batch_size: int, method: str):
    """The padded batch a method runs at one prompt length (prompt-only methods: their emphasised prompt)."""
    prompts = synthetic_prompt(seka.tokenizer, length, config.highlight_share, batch_size)
    if method.startswith("prompt-"):
        prompts = [emphasized_prompt(seka.tokenizer, p, method.removeprefix("prompt-")) for p in prompts]
    return pad_batch(prompts, seka.tokenizer.pad_token_id).to(seka.device)


def _check_window(seka, config: BenchConfig) -> None:
    """Refuse prompt lengths whose longest run (prompt, emphasis markers and decoded tokens) does not fit the
    model's window: positions past it are outside what the model was trained on, and would be measured all
    the same."""
    from .architectures import text_config

    window = getattr(text_config(seka.model.config), "max_position_embeddings", None)
    if not window:  # the model does not say (SekaModel then assumes 2048, which must not cap a benchmark)
        return
    longest = max(config.lengths)
    tokens = max(len(bench_batch(seka, config, longest, 1, m).input_ids[0]) for m in ("unsteered", *config.methods))
    if tokens + config.decode_tokens > window:
        fits = longest - (tokens + config.decode_tokens - window)
        raise SekaError(f"--lengths {longest} does not fit {seka.model_id}'s window of {window} tokens "
                        f"({tokens} prompt tokens with the methods' emphasis, then {config.decode_tokens} decoded): "
                        f"use lengths up to {max(fits, 1)}")


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument (``cache`` in recent transformers, ``past_key_values`` before)."""
    from .evaluation.baselines._common import cache_argument

    return cache_argument(model)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


#: Where the benchmark's default PASTA heads sit, as shares of the model's depth: the layers that
#: head profiling picked on the default model (13, 16, 19 and 22 of its 24; two heads each).
#: PASTA's cost grows with the number of layers it steers, since only those run eager attention.
PASTA_DEPTHS = (0.55, 0.67, 0.79, 0.92)


def pasta_config_for(seka, heads: dict[int, list[int]] | None = None):
    """PASTA's settings for the benchmark: α = 0.01 on ``heads``, or by default the first two query
    heads of the layers at :data:`PASTA_DEPTHS` of the model's depth."""
    from .evaluation.baselines.pasta import PastaConfig

    if heads is None:
        geom = seka.geometry
        layers = sorted({min(geom.num_layers - 1, round(geom.num_layers * d)) for d in PASTA_DEPTHS})
        heads = {layer: list(range(min(2, geom.num_query_heads))) for layer in layers}
    return PastaConfig(heads={int(k): list(v) for k, v in heads.items()})


def _steering_for(seka, batch, method: str | bool, config: BenchConfig | None = None):
    """The context a method's forwards run in (``False`` / ``"unsteered"`` / prompt-only: none); two-pass
    runs its routing pass here, PASTA switches the model to its attention function (eager in steered layers)."""
    if method in (False, "unsteered", "control") or str(method).startswith("prompt-"):
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
    if method == "pasta":
        from .evaluation.baselines.pasta import pasta

        return pasta(seka, batch.highlight_mask, pasta_config_for(seka, config.pasta_heads if config else None))
    raise ValueError(f"unknown bench method {method!r}; known: unsteered, {', '.join(METHODS)}")


def time_prefill_and_decode(seka, batch, method: str | bool, decode_tokens: int,
                            config: BenchConfig | None = None) -> tuple[float, float, float]:
    """(prefill seconds, decode tokens per second, set-up seconds) for one run.

    Prefill includes any routing work. Set-up seconds is the part of it spent before the timed
    forward pass starts: building the method's context — the embedding router's query embedding,
    two-pass routing's extra forward pass, PASTA's switch of attention function and its bias tables;
    about 0.1–1 ms for SEKA. The attention router routes *inside* the forward pass, so its routing
    is in the prefill, not in the set-up.

    Every method runs the same greedy loop over one or more token streams sharing the attention
    mask: one stream, steered by the method's context (:func:`_steering_for`), or — for SPA — the
    prompt and the prompt with its highlight masked, each with its own KV cache, the next token
    taken from their interpolated logits.
    """
    if method == "spa":
        from .evaluation.baselines.spa import SpaConfig, interpolate, masked_ids

        spa = SpaConfig()
        streams = [batch.input_ids, masked_ids(batch.input_ids, batch.highlight_mask, spa.mask_id(seka))]

        def context():
            return contextlib.nullcontext()

        def next_token(logits):
            return interpolate(logits[0], logits[1], spa.strength).argmax(-1)[:, None]
    else:
        streams = [batch.input_ids]

        def context():
            return _steering_for(seka, batch, method, config)

        def next_token(logits):
            return logits[0].argmax(-1)[:, None]

    from .evaluation.baselines._common import output_cache

    device = seka.device
    cache_arg = _cache_kwarg(seka.model)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), context():  # two-pass routes inside this, so inside the timed region
        _sync(device)
        routed = time.perf_counter()
        outs = [seka.model(input_ids=ids, attention_mask=batch.attention_mask, use_cache=True, logits_to_keep=1)
                for ids in streams]
        token = next_token([o.logits[:, -1] for o in outs])
        _sync(device)
        t1 = time.perf_counter()
        caches = [output_cache(o) for o in outs]
        attention = batch.attention_mask
        for _ in range(decode_tokens):
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
            outs = [seka.model(input_ids=token, attention_mask=attention, use_cache=True, logits_to_keep=1,
                               **{cache_arg: cache}) for cache in caches]
            caches = [output_cache(o) for o in outs]
            token = next_token([o.logits[:, -1] for o in outs])
        _sync(device)
        t2 = time.perf_counter()
    return t1 - t0, decode_tokens * batch.input_ids.shape[0] / (t2 - t1), routed - t0


def latency_table(seka, config: BenchConfig, progress: bool = True) -> list[dict]:
    """Interleaved runs of every method, unsteered and the A/A control; medians per batch size and length."""
    from .evaluation.stats import median_interval

    rows = []
    # "control" repeats the unsteered configuration: its ratio to "unsteered" is the noise floor (A/A)
    configs = ["unsteered", *config.methods, "control"]
    shapes = [(b, n) for b in config.batch_sizes for n in config.lengths]
    batches = {(b, n, c): bench_batch(seka, config, n, b, c) for b, n in shapes for c in configs}
    for b in config.batch_sizes:  # warm-up: every code path once, at the shortest length
        for name in configs[:-1]:
            time_prefill_and_decode(seka, batches[(b, config.lengths[0], name)], name, 1, config)
    samples = {key: [] for key in batches}
    runs = {shape: config.runs_for(*shape) for shape in shapes}
    repeats = {shape: k // config.runs for shape, k in runs.items()}  # a cheap shape's passes per round
    started = time.perf_counter()
    for r in range(config.runs):
        for shape in shapes:
            # a cheap shape given more runs is timed several times in each round, so its extra runs
            # are spread over the whole session like every other shape's
            for rep in range(repeats[shape]):
                order = configs if (r * repeats[shape] + rep) % 2 == 0 else list(reversed(configs))
                for name in order:
                    samples[(*shape, name)].append(
                        time_prefill_and_decode(seka, batches[(*shape, name)], name, config.decode_tokens, config))
        if progress:
            done = time.perf_counter() - started
            print(f"  run {r + 1}/{config.runs} done ({done / 60:.1f} min; about "
                  f"{done / (r + 1) * (config.runs - r - 1) / 60:.1f} min of latency runs left)",
                  file=sys.stderr, flush=True)
    for b, n in shapes:
        base = samples[(b, n, "unsteered")]
        p0 = statistics.median(s[0] for s in base)
        d0 = statistics.median(s[1] for s in base)
        for name in [*config.methods, "control"]:
            steered = samples[(b, n, name)]
            p1 = statistics.median(s[0] for s in steered)
            d1 = statistics.median(s[1] for s in steered)
            # each run times all configurations back to back: the median of the paired ratios
            # cancels slow drifts of a shared machine better than a ratio of medians
            prefill_pairs = [s[0] / u[0] for s, u in zip(steered, base)]
            lo, hi, coverage = median_interval(prefill_pairs)
            rows.append(dict(tokens=n, batch=b, method=name, prompt_tokens=batches[(b, n, name)].input_ids.shape[1],
                             prefill_unsteered_s=p0, prefill_steered_s=p1, prefill_ratio=p1 / p0,
                             prefill_ratio_paired=statistics.median(prefill_pairs),
                             prefill_ratio_paired_interval=[lo, hi], interval_coverage=coverage,
                             decode_unsteered_tps=d0, decode_steered_tps=d1, decode_ratio=d1 / d0,
                             decode_ratio_paired=statistics.median(s[1] / u[1] for s, u in zip(steered, base)),
                             runs=runs[(b, n)], setup_s=statistics.median(s[2] for s in steered),
                             samples=dict(prefill_unsteered_s=[u[0] for u in base], prefill_s=[s[0] for s in steered],
                                          decode_unsteered_tps=[u[1] for u in base], decode_tps=[s[1] for s in steered])))
    return rows


# ---------------------------------------------------------------------- memory (a process per configuration)
def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in kiB (``VmHWM``, ``VmRSS``); ``None`` where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_peak_kib() -> int:
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _resident_file_ranges() -> list[tuple[int, int]] | None:
    """Address ranges of this process's readable file mappings (libraries' code and data) and shared
    anonymous memory whose pages are resident, from ``/proc/self/pagemap``; ``None`` where it cannot
    be read.

    A forked child inherits its parent's mappings, but Linux does not copy the page-table entries of
    file and shared mappings without written private pages: the child's RSS leaves out the library
    pages the parent had touched (about 95 MiB once the default model is loaded) until the child
    touches them itself. The forked probe touches these ranges first (:func:`_touch_ranges`), so its
    RSS starts where a fresh process's stands after loading the model. Only regular files' mappings
    and shared anonymous memory are read (never device or sysfs mappings).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    ranges: list[tuple[int, int]] = []
    regular: dict[str, bool] = {}
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or not fields[1].startswith("r") or not _readable_mapping(fields[5].strip(), regular):
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                entries = os.pread(pagemap.fileno(), (end - start) // page * 8, start // page * 8)
                run = None
                for i, entry in enumerate(memoryview(entries).cast("Q")):
                    if entry >> 63:  # bit 63: page present
                        run = run if run is not None else start + i * page
                    elif run is not None:
                        ranges.append((run, start + i * page))
                        run = None
                if run is not None:
                    ranges.append((run, end))
    except OSError:
        return None
    return ranges


def _readable_mapping(path: str, regular: dict[str, bool]) -> bool:
    """Whether a mapping (its ``/proc/self/maps`` name) may be read to fault its pages in: shared
    anonymous memory (``/dev/zero (deleted)``) or a regular file (``regular`` caches the answers)."""
    if path == "/dev/zero (deleted)":
        return True
    if not path.startswith("/"):  # [heap], [stack], [vdso], anonymous: copied by fork or not to be read
        return False
    if path not in regular:
        try:
            regular[path] = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:  # e.g. "... (deleted)": a file gone since it was mapped
            regular[path] = False
    return regular[path]


def _touch_ranges(ranges: list[tuple[int, int]]) -> int:
    """Read one byte of every page in ``ranges`` (readable mappings), faulting them into this process;
    returns the bytes covered."""
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    for start, end in ranges:
        for address in range(start, end, page):
            ctypes.string_at(address, 1)
    return sum(end - start for start, end in ranges)


def memory_probe(model_spec: dict, length: int, steer: str | bool, config: BenchConfig, batch_size: int = 1) -> dict:
    """Run in a fresh process: load the model, one prefill + decode, report the peak memory."""
    from .cli import load_model

    seka = load_model(**model_spec)
    _load_probe_extras(seka, steer)
    return measure_peak(seka, length, steer, config, batch_size)


def _load_probe_extras(seka, steer: str | bool) -> None:
    """What a method loads besides the model, before the peak is reset: the embedding router's sentence
    encoder, whose weights then count as loaded, like the model's."""
    if steer == "ada-embedding":
        from .embeddings import embed

        embed(["warm-up"], seka.embedding_encoder)


def measure_peak(seka, length: int, steer: str | bool, config: BenchConfig, batch_size: int = 1) -> dict:
    """Peak memory of one prefill + decode of an already loaded model (the body of a probe)."""
    batch = bench_batch(seka, config, length, batch_size, str(steer))
    import gc

    gc.collect()
    whole_peak_before = _rss_peak_kib()
    if seka.device.type == "cuda":
        torch.cuda.synchronize(seka.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(seka.device)
        base = torch.cuda.memory_allocated(seka.device)
    rss_at_reset = _status_kib("VmRSS")
    reset = _reset_rss_peak()
    time_prefill_and_decode(seka, batch, steer, config.decode_tokens, config)
    result = dict(tokens=length, batch=batch_size, steer=steer, device=seka.device.type)
    if seka.device.type == "cuda":
        result.update(peak_bytes=torch.cuda.max_memory_allocated(seka.device), baseline_bytes=base)
    else:
        result.update(peak_rss_kib=_rss_peak_kib(), load_peak_rss_kib=whole_peak_before, rss_at_reset_kib=rss_at_reset,
                      peak_reset=reset, malloc_mmap_threshold=malloc_mmap_threshold(), pid=os.getpid())
    return result


def memory_table(model_spec: dict, config: BenchConfig, progress: bool = True, seka=None) -> list[dict]:
    """Peak memory of every method and of unsteered, each configuration in a process of its own (forked
    from a loader process or a fresh interpreter, :attr:`BenchConfig.probe_start`).

    ``seka``: an already loaded model on a CUDA device to probe **in this process** instead —
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` is exact per
    configuration there (the caching allocator's reserved memory does not count), and it saves a
    model load per configuration, which keeps a GPU run of the whole grid within minutes. The
    sentence encoder of ``ada-embedding`` runs on the CPU, so no CUDA peak includes it (either way).
    Peak RSS cannot be reset that cleanly, so on CPU each probe always has a process of its own.
    """
    if seka is not None and seka.device.type != "cuda":
        raise SekaError("in-process memory probes are exact only on CUDA; on CPU each probe runs in a process of its own")
    probes = [(b, n, steer) for b in config.batch_sizes for n in config.lengths for steer in ["unsteered", *config.methods]]
    if seka is not None:
        results = ({**measure_peak(seka, n, steer, config, b), "process": "in-process"} for b, n, steer in probes)
    elif probes_fork(model_spec, config):
        results = _forked_probes(model_spec, config, probes)
    else:
        results = (_probe_subprocess(model_spec, n, steer, config, b) for b, n, steer in probes)
    res, started = {}, time.perf_counter()
    with contextlib.closing(results):  # leaving early (an error, Ctrl-C) stops the loader of forked probes
        for done, ((b, n, steer), result) in enumerate(zip(probes, results, strict=True), 1):
            res[(b, n, steer)] = result
            if progress:
                spent = time.perf_counter() - started
                print(f"  memory probe {done}/{len(probes)} (batch {b}, {n} tokens, {steer}) done; "
                      f"{spent / 60:.1f} min so far", file=sys.stderr, flush=True)
    rows = []
    for b in config.batch_sizes:
        for n in config.lengths:
            base = res[(b, n, "unsteered")]
            key = "peak_bytes" if "peak_bytes" in base else "peak_rss_kib"
            for method in config.methods:
                steered = res[(b, n, method)]
                rows.append(dict(tokens=n, batch=b, method=method, metric=key, unsteered=base[key],
                                 steered=steered[key], ratio=steered[key] / base[key],
                                 details={"unsteered": base, method: steered}))
    return rows


def probes_fork(model_spec: dict, config: BenchConfig) -> bool:
    """Whether the CPU memory probes of ``model_spec`` are forked from one loader process (see
    :attr:`BenchConfig.probe_start`): asked for, on Linux, and the model on the CPU."""
    from .model import _default_device

    return (config.probe_start == "fork" and sys.platform.startswith("linux") and hasattr(os, "fork")
            and _default_device(model_spec.get("device")).type == "cpu")


def _probe_env(config: BenchConfig) -> dict:
    # no progress bars; the tokenizer single-threaded, as it must be on both sides of a fork (spawned too,
    # so that both ways run alike)
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if config.mmap_threshold is not None and malloc_mmap_threshold() == "glibc default":  # the user's setting wins
        env["MALLOC_MMAP_THRESHOLD_"] = str(config.mmap_threshold)  # read by glibc when the process starts
    return env


def malloc_mmap_threshold() -> str:
    """glibc's mmap threshold in this process, as set in its environment: a tunable in ``GLIBC_TUNABLES``
    (which takes precedence), else ``MALLOC_MMAP_THRESHOLD_``, else ``"glibc default"`` (adaptive)."""
    for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        if item.startswith("glibc.malloc.mmap_threshold="):
            return item.split("=", 1)[1]
    return os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")


def _probe_name(length: int, batch_size: int, steer: str) -> str:
    return f"the memory probe of {length} tokens, batch {batch_size}, {steer}"


def _usage_error(exc: SekaError, details: str | None = None) -> dict:
    """A probe's result for a usage error: said as a :class:`SekaError` by the benchmark (:func:`_probe_failure`)."""
    return dict(error=details or str(exc), error_type="SekaError", message=str(exc))


#: A probe (a forked or spawned process) that has not finished after this many seconds is taken for
#: hung and stopped, and the benchmark fails saying so; the longest probe measured, PASTA at 4 × 4k
#: tokens on the small model, takes about 2 minutes on 2 cores.
PROBE_TIMEOUT_S = 3600.0


def _probe_failure(result: dict) -> Exception:
    """The exception a failed probe's result stands for: a :class:`SekaError` (a usage error, said as
    such) or a ``RuntimeError`` with the probe's traceback."""
    if result.get("error_type") == "SekaError":
        return SekaError(result["message"])
    return RuntimeError(f"memory probe failed:\n{result['error'][-2000:]}")


def _probe_command(*args: str) -> list[str]:
    """``python -m seka_rag.bench ARGS``, importing this very seka_rag: ``-m`` alone would put the current
    directory first on the child's path, and a checkout there would be measured instead of this copy."""
    home = str(Path(__file__).resolve().parents[1])
    # only the current directory's entry goes; the rest of the path keeps its order (PYTHONPATH first)
    code = ("import runpy, sys\n"
            "if sys.path and sys.path[0] == '': del sys.path[0]\n"
            f"if {home!r} not in sys.path: sys.path.insert(0, {home!r})\n"
            "runpy.run_module('seka_rag.bench', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


def _probe_subprocess(model_spec: dict, length: int, steer: str, config: BenchConfig, batch_size: int) -> dict:
    cmd = _probe_command("--probe", json.dumps(
        dict(model_spec=model_spec, length=length, steer=steer, batch_size=batch_size, config=asdict(config))))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_probe_env(config), timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{_probe_name(length, batch_size, steer)} did not finish in {PROBE_TIMEOUT_S:g} s "
                           "and was stopped (hung?)") from None
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        result = None
    if isinstance(result, dict) and "error" in result:
        raise _probe_failure(result)
    if proc.returncode != 0 or not isinstance(result, dict):
        raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
    return result


def _forked_probes(model_spec: dict, config: BenchConfig, probes: list[tuple[int, int, str]]):
    """Results of ``probes`` ((batch, tokens, method) each), in order, from one loader process that
    forks a child per probe (:func:`_probe_loader_main`); where the loader finds it cannot fork
    faithfully, from a fresh process per probe, after a note on stderr."""
    import tempfile

    cmd = _probe_command("--probe-loader")
    request = json.dumps(dict(model_spec=model_spec, config=asdict(config), timeout_s=PROBE_TIMEOUT_S,
                              probes=[[n, steer, b] for b, n, steer in probes]))
    fallback = None
    with tempfile.TemporaryFile("w+", errors="replace") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=_probe_env(config))

        def failed_loader() -> RuntimeError:
            try:
                proc.wait(timeout=60)
                how = _wait_status_text(proc.returncode, returncode=True)
            except subprocess.TimeoutExpired:
                how = "still running a minute after its last result"
            stderr.seek(0)
            return RuntimeError(f"memory probe loader failed ({how}):\n{stderr.read()[-2000:]}")

        try:
            try:
                proc.stdin.write(request)
                proc.stdin.close()
            except BrokenPipeError:  # it ended before reading its request
                raise failed_loader() from None
            received = 0
            for line in proc.stdout:
                try:
                    result = json.loads(line)
                except ValueError:
                    raise RuntimeError(f"memory probe loader sent {line[:200]!r} instead of a result") from None
                if "error" in result:
                    raise _probe_failure(result)
                if "unsupported" in result:
                    fallback = result["unsupported"]
                    break
                received += 1
                yield result
            if fallback is None and received != len(probes):
                raise failed_loader()
        finally:
            if proc.poll() is None:  # its probe, if one runs, dies with it (PR_SET_PDEATHSIG)
                proc.kill()
                proc.wait()
    if fallback is not None:
        print(f"  memory probes: cannot fork them faithfully here ({fallback}); each spawns a fresh process",
              file=sys.stderr, flush=True)
        for b, n, steer in probes:
            yield _probe_subprocess(model_spec, n, steer, config, b)


def run_benchmark(model_spec: dict, config: BenchConfig, out: str | os.PathLike | None = None, *,
                  memory: bool = True, progress: bool = True, plots: str | os.PathLike | None = None,
                  latency: bool = True, memory_in_process: bool = False) -> dict:
    """The whole overhead benchmark; prints tables and returns (and optionally writes) the results.

    ``latency=False`` / ``memory=False`` skip a part (the memory probes measure peak memory, which
    other work on the machine does not disturb, so they may run beside another job; the latency part
    needs a quiet machine). ``plots``: a file-name prefix; ``<prefix>-latency.png`` and
    ``<prefix>-memory.png`` are written (needs matplotlib). ``memory_in_process``: on CUDA, probe
    peak memory in this process (see :func:`memory_table`); refused on CPU.
    """
    from .cli import load_model

    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise SekaError(f"unknown bench methods {unknown}; choose from {', '.join(METHODS)}")
    if plots is not None:
        from .evaluation.sensitivity import require_matplotlib

        require_matplotlib("the plots (--plots)", "leave out --plots")
    started = time.perf_counter()
    seka = load_model(**model_spec)
    if memory and memory_in_process and seka.device.type != "cuda":
        raise SekaError(f"--memory-in-process needs a CUDA device (the model is on {seka.device}): peak RSS "
                        "cannot be reset per configuration, so CPU probes run in a process of their own each")
    if any(m in ADAPTIVE_METHODS for m in config.methods) and seka.experts is None:
        raise SekaError("the AdaSEKA bench methods need an expert set: pass --adaptive or --experts DIR")
    _check_window(seka, config)
    pasta_heads = None
    if "pasta" in config.methods:
        pasta_heads = pasta_config_for(seka, config.pasta_heads).head_table(seka.geometry.num_layers,
                                                                            seka.geometry.num_query_heads)
    if "ada-embedding" in config.methods:
        from .embeddings import embed

        embed(["warm-up"], seka.embedding_encoder)  # load the sentence encoder before timing
    info = dict(model=seka.model_id, device=str(seka.device), torch_threads=torch.get_num_threads(),
                dtype=str(next(seka.model.parameters()).dtype), config=asdict(config),
                loaded={k: str(v) for k, v in model_spec.items() if v is not None and v is not False})
    if Path(sys.argv[0]).name == "seka-rag":  # run from the command line: record it
        info["command"] = " ".join(["seka-rag", *sys.argv[1:]])
    if pasta_heads is not None:  # the heads PASTA steered (the default depends on the model), eager only there
        info["pasta"] = {"heads": {str(k): list(v) for k, v in pasta_heads.items()},
                         "eager_attention": "in the layers of these heads only"}
    where = ("memory in this process (CUDA peak allocated)" if memory_in_process else
             "memory in a process per configuration")
    most = max(config.runs_for(b, n) for b in config.batch_sizes for n in config.lengths)
    parts = ([f"{config.runs} interleaved runs" + (f" (up to {most} for short prompts)" if most > config.runs else "")]
             if latency else []) + ([where] if memory else [])
    print(f"seka-rag bench: {seka.model_id} on {seka.device} ({info['dtype'].removeprefix('torch.')}), "
          f"{torch.get_num_threads()} threads, batch {', '.join(map(str, config.batch_sizes))}, "
          f"{', '.join(parts)}, {int(config.highlight_share * 100)} % highlighted", flush=True)
    latency_rows = latency_table(seka, config, progress) if latency else []
    if latency_rows:
        print(format_latency(latency_rows), flush=True)
    if memory and memory_in_process:
        memory_rows = memory_table(model_spec, config, progress, seka=seka)
    else:
        del seka
        memory_rows = memory_table(model_spec, config, progress) if memory else []
    if memory_rows:
        print(format_memory(memory_rows), flush=True)
    if memory:
        kinds = {d.get("process") for row in memory_rows for d in row["details"].values()}
        info["memory_probes"] = ("in-process" if memory_in_process else
                                 "forked subprocess" if kinds == {"forked"} else "fresh subprocess")
        probes = [row["details"] for row in memory_rows]
        if probes and all(d.get("device") == "cpu" for det in probes for d in det.values()):  # RSS: the probes' own
            info["malloc_mmap_threshold"] = next(iter(probes[0].values())).get("malloc_mmap_threshold")
    result = dict(info=info, latency=latency_rows, memory=memory_rows, seconds=time.perf_counter() - started)
    print(f"total {result['seconds']:.0f} s", flush=True)
    write_outputs(result, out, plots)
    return result


def write_outputs(result: dict, out: str | os.PathLike | None = None, plots: str | os.PathLike | None = None) -> None:
    """Write a result as JSON to ``out`` and its plots under the prefix ``plots`` (each when given)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(f"wrote {out}")
    if plots is not None:
        for path in plot_benchmark(result, plots):
            print(f"wrote {path}")


def _measuring_runs(results: list[dict], *, timed_latency: bool = False) -> list[dict]:
    """The ``info`` holders of every measuring run in ``results`` (a merged file's parts, else the file);
    with ``timed_latency``, of those that timed latency (a part of an older merge that did not record
    whether it did counts as one when its file holds latency rows)."""
    out = []
    for r in results:
        for part in r.get("runs") or [r]:
            timed = part["latency"] if r.get("runs") and "latency" in part else r.get("latency")
            if timed or not timed_latency:
                out.append(part)
    return out


def merge_results(paths: list[str | os.PathLike]) -> dict:
    """One result from several :func:`run_benchmark` JSON files of the same model (e.g. a latency-only
    and a memory-only run, or an earlier merge): their rows joined, one per (tokens, batch, method) and
    kind (a later file's row replaces an earlier one's), each measuring run's ``info`` kept under ``runs``."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise SekaError(f"--merge: cannot read bench results {str(path)!r}: {exc}") from None
        if not isinstance(runs[-1], dict) or "info" not in runs[-1]:
            raise SekaError(f"--merge: {str(path)!r} is not a `seka-rag bench --out` file")
    for what in ("model", "dtype", "device"):  # ratios from different set-ups do not belong in one table
        seen = {r["info"].get(what) for r in runs}
        if len(seen) > 1:
            raise SekaError(f"--merge: the files measure different {what}s: {sorted(map(str, seen))}")
    # rows measured differently do not belong in one table: what is highlighted changes every figure, and
    # the decoded length changes decode speeds (in the runs that timed latency; a part of an older merge
    # that did not record whether it did counts as one when its file holds latency rows)
    checks = (("highlight_share", "highlighted shares", _measuring_runs(runs)),
              ("decode_tokens", "--decode-tokens in their latency runs", _measuring_runs(runs, timed_latency=True)))
    for setting, what, measured in checks:
        seen = {json.dumps((r["info"].get("config") or {}).get(setting)) for r in measured}
        if len(seen) > 1:
            raise SekaError(f"--merge: the files were measured with different {what} ({', '.join(sorted(seen))}): "
                            "merge runs of the same settings")

    def parts(path, result) -> list[dict]:  # a file that is itself a merge keeps its own parts
        return result.get("runs") or [dict(file=str(path), info=result["info"], seconds=result.get("seconds"),
                                           latency=bool(result.get("latency")))]

    def rows(kind: str) -> list[dict]:  # one row per configuration: a later file's replaces an earlier one's
        keyed: dict = {}
        for r in runs:
            for row in r.get(kind, []):
                # the first bench files measured SEKA alone at batch 1 and named neither in their rows
                row = {"method": "seka", "batch": 1, **row}
                keyed[(row.get("tokens"), row["batch"], row["method"])] = row
                if "control_prefill_ratio" in row:  # ... and kept the A/A control's paired ratios inline
                    keyed[(row.get("tokens"), row["batch"], "control")] = dict(
                        tokens=row.get("tokens"), batch=row["batch"], method="control", runs=row.get("runs"),
                        prefill_unsteered_s=row.get("prefill_unsteered_s"), prefill_steered_s=None,
                        prefill_ratio=None, prefill_ratio_paired=row["control_prefill_ratio"],
                        decode_unsteered_tps=row.get("decode_unsteered_tps"), decode_steered_tps=None,
                        decode_ratio=None, decode_ratio_paired=row.get("control_decode_ratio"))
        return list(keyed.values())

    return dict(info=runs[0]["info"], runs=[part for p, r in zip(paths, runs) for part in parts(p, r)],
                latency=rows("latency"), memory=rows("memory"),
                seconds=sum(r.get("seconds") or 0 for r in runs))


def format_latency(rows: list[dict]) -> str:
    """Markdown: one row per prompt length and method (``control`` = unsteered timed again, A/A).

    The interval beside the median paired prefill ratio is :func:`~seka_rag.evaluation.stats.median_interval`
    of the runs' paired ratios (order statistics; with 5 runs, their range, which covers the median
    93.75 % of the time; the row's ``interval_coverage``; left out below 90 % coverage, i.e. under 5
    runs). "set-up" is the median time the method spent before its forward pass (see
    :func:`time_prefill_and_decode`), part of its prefill; "runs" is how many runs the row's medians
    rest on (cheap shapes get more, :meth:`BenchConfig.runs_for`)."""
    lines = ["| tokens | batch | method | runs | prefill unsteered (s) | prefill method (s) | of it, set-up (ms) "
             "| ratio of medians | median paired ratio [interval] | decode unsteered (tok/s) | decode method (tok/s) "
             "| ratio of medians | median paired ratio |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def num(key: str, digits: int = 3, scale: float = 1.0) -> str:  # "-" where a file has no such figure
        return f"{scale * r[key]:.{digits}f}" if r.get(key) is not None else "-"

    for r in rows:  # files written before intervals and set-up times were kept show neither
        lo, hi = r.get("prefill_ratio_paired_interval") or (None, None)
        interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and r.get("interval_coverage", 0) >= 0.9 else ""
        # the first files kept ratios of medians only; their A/A control, paired ratios only
        lines.append(f"| {r['tokens']} | {r['batch']} | {r['method']} | {r.get('runs') or '-'} | "
                     f"{num('prefill_unsteered_s')} | {num('prefill_steered_s')} | {num('setup_s', 1, 1000)} | "
                     f"{num('prefill_ratio')} | {num('prefill_ratio_paired')}{interval} | "
                     f"{num('decode_unsteered_tps', 2)} | {num('decode_steered_tps', 2)} | {num('decode_ratio')} | "
                     f"{num('decode_ratio_paired')} |")
    notes = []
    if any(r["method"] == "control" for r in rows):
        notes.append("control: unsteered timed a second time in each round (A/A): its ratios show the timing noise")
    if any(r.get("prefill_ratio_paired_interval") and r.get("interval_coverage", 0) < 0.9 for r in rows):
        notes.append("no [interval] where a row has fewer than 5 runs: the range of its paired ratios would cover "
                     "the median less than 90 % of the time")
    return "\n".join(lines + ([""] + notes if notes else []))


def format_memory(rows: list[dict]) -> str:
    """Markdown: one row per batch size, prompt length and method."""
    lines = ["| tokens | batch | method | metric | unsteered | method | ratio |", "|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r.get('batch', 1)} | {r['method']} | {r['metric']} | {r['unsteered']} | "
                     f"{r['steered']} | {r['ratio']:.4f} |")
    return "\n".join(lines)


def plot_benchmark(result: dict, prefix: str | os.PathLike) -> list[Path]:
    """PNG plots of a :func:`run_benchmark` result: prefill latency ratio and decode speed ratio vs prompt
    length (``<prefix>-latency.png``), peak memory ratio vs prompt length (``<prefix>-memory.png``), one
    panel per batch size, one line per method."""
    from .evaluation.sensitivity import require_matplotlib

    Figure, Canvas = require_matplotlib("the plots (--plots)", "leave out --plots")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    model = result.get("info", {}).get("model", "")
    written = []

    def panels(rows, metrics, title, name):
        batches = sorted({r.get("batch", 1) for r in rows})
        if not batches:
            return
        fig = Figure(figsize=(5.2 * len(batches), 3.6 * len(metrics)))
        Canvas(fig)
        for i, (key, label) in enumerate(metrics):
            for j, b in enumerate(batches):
                ax = fig.add_subplot(len(metrics), len(batches), i * len(batches) + j + 1)
                methods = list(dict.fromkeys(r["method"] for r in rows))
                for m in methods:
                    pts = sorted((r["tokens"], r[key]) for r in rows  # rows of the first files lack the paired ratios
                                 if r["method"] == m and r.get("batch", 1) == b and r.get(key) is not None)
                    style = dict(linestyle=":", color="grey") if m == "control" else {}
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m, **style)
                ax.axhline(1.0, color="black", linewidth=0.6)
                ax.set_xscale("log", base=2)
                ax.set_xlabel("prompt tokens")
                ax.set_ylabel(label)
                ax.set_title(f"{title}, batch {b}", fontsize=9)
                ax.grid(alpha=0.3)
                if i == 0 and j == len(batches) - 1:
                    ax.legend(fontsize=7, loc="upper left")
        fig.suptitle(model, fontsize=9)
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}-{name}.png")
        fig.savefig(path, dpi=110)
        written.append(path)

    panels(result.get("latency", []), [("prefill_ratio_paired", "prefill latency / unsteered"),
                                       ("decode_ratio_paired", "decode tokens/s / unsteered")],
           "paired median ratio", "latency")
    how = result.get("info", {}).get("memory_probes", "fresh subprocess")
    how = "CUDA peak allocated, in one process" if how == "in-process" else "a process per configuration"
    panels(result.get("memory", []), [("ratio", "peak memory / unsteered")], how, "memory")
    return written


def _probe_main(arg: str) -> None:
    _die_with_parent()
    spec = json.loads(arg)
    try:
        res = memory_probe(spec["model_spec"], spec["length"], spec["steer"], BenchConfig(**spec["config"]),
                           spec.get("batch_size", 1))
    except SekaError as exc:  # a usage error: said as such by the benchmark, not as a traceback
        print(json.dumps(_usage_error(exc)))
        return
    print(json.dumps({**res, "process": "spawned"}))


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent ends (``PR_SET_PDEATHSIG``), so that
    no probe outlives the benchmark that asked for it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_until_closed(fd: int, timeout_s: float) -> str | None:
    """Everything written to ``fd`` until its writers close it; ``None`` if that takes over ``timeout_s``."""
    import selectors

    chunks, deadline = [], time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)


def _wait_status_text(status: int, returncode: bool = False) -> str:
    """How a process ended, from its wait status (or, ``returncode=True``, a ``Popen.returncode``)."""
    import signal

    code = status if returncode else os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


def _probe_loader_main() -> None:
    """The loader of forked probes: read the request from stdin, load the model once, fork a child per
    probe, send each child's result as a JSON line on stdout, in order; stop at the first error. A first
    line ``{"unsupported": why}`` says the probes cannot be forked faithfully here."""
    import signal
    import traceback

    results = os.fdopen(os.dup(1), "w")  # the result stream; anything else written to stdout goes to stderr
    os.dup2(2, 1)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the benchmark, which stops this process

    def send(result: dict) -> None:
        results.write(json.dumps(result) + "\n")
        results.flush()

    spec = json.load(sys.stdin)
    timeout_s = spec.get("timeout_s", PROBE_TIMEOUT_S)
    if not _resident_file_ranges() or not _reset_rss_peak():  # checked before the model is loaded for nothing
        send(dict(unsupported="/proc/self/pagemap or /proc/self/clear_refs cannot be used"))
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP thread pool here before forking: a child forked after one hangs
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no tqdm monitor thread, which could hold tqdm's lock at a fork
    from .cli import load_model

    try:
        seka = load_model(**spec["model_spec"])
    except SekaError as exc:
        send(_usage_error(exc))
        return
    load_peak = _rss_peak_kib()
    if seka.device.type != "cpu":
        send(dict(unsupported=f"the model is on {seka.device}; a CUDA context cannot be forked"))
        return
    config = BenchConfig(**spec["config"])
    loader = os.getpid()
    for length, steer, batch_size in spec["probes"]:
        resident = _resident_file_ranges()  # read just before forking: the mappings are the child's too
        if not resident:
            send(dict(error=f"{_probe_name(length, batch_size, steer)}: /proc/self/pagemap could not be read"))
            return
        # recorded: the loader's native threads when it forked (idle library pools, e.g. numpy's OpenBLAS;
        # none of them is copied into the child, which runs on its own thread and OpenMP's new pool)
        loader_threads = len(os.listdir("/proc/self/task"))
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the probe's own process: whatever happens, it leaves by os._exit, never back here
            code = 1
            try:
                os.close(read_end)
                os.close(results.fileno())  # only the loader writes results: it sees the end of this pipe
                _die_with_parent()
                if os.getppid() != loader:  # the loader ended before the line above took effect
                    os._exit(1)
                try:
                    touched = _touch_ranges(resident)
                    torch.set_num_threads(threads)
                    _load_probe_extras(seka, steer)
                    result = measure_peak(seka, length, steer, config, batch_size)
                    result.pop("load_peak_rss_kib")  # this process loaded nothing; the loader's peak instead:
                    result.update(loader_load_peak_rss_kib=load_peak, loader_file_pages_kib=touched // 1024,
                                  loader_threads_at_fork=loader_threads, threads=torch.get_num_threads(),
                                  process="forked")
                    text = json.dumps(result)
                except SekaError as exc:
                    text = json.dumps(_usage_error(exc, traceback.format_exc()))
                except BaseException:
                    text = json.dumps(dict(error=traceback.format_exc()))
                with os.fdopen(write_end, "w") as out:
                    out.write(text)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        text = _read_until_closed(read_end, timeout_s)
        os.close(read_end)
        if text is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            send(dict(error=f"{_probe_name(length, batch_size, steer)} did not finish in {timeout_s:g} s and was "
                            "stopped (hung?)"))
            return
        _, status = os.waitpid(pid, 0)
        try:
            result = json.loads(text)
        except ValueError:  # nothing, or cut short
            result = dict(error=f"{_probe_name(length, batch_size, steer)} ended without a result "
                                f"({_wait_status_text(status)})")
        send(result)
        if "error" in result:
            return
    results.close()
    sys.stderr.flush()
    os._exit(0)  # nothing left to do: no interpreter shutdown that could fail after every result was sent


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        _probe_main(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "--probe-loader":
        _probe_loader_main()
    else:
        print("use `seka-rag bench`", file=sys.stderr)
        sys.exit(2)
