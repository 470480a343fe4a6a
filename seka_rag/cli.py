"""The ``seka-rag`` command: generate, preview, build-projection, demo, bench."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import SekaError
from .models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS


def load_model(model: str = DEFAULT_MODEL, projection: str | None = None, gguf_file: str | None = None,
               device: str | None = None, dtype: str | None = None, cache_dir: str | None = None,
               attn_implementation: str = "sdpa", no_projection: bool = False):
    """Load an embedded model by name, or any supported model by hub id / directory."""
    from .model import SekaModel, _UNSET

    proj = None if no_projection else (projection if projection is not None else _UNSET)
    if model in EMBEDDED_MODELS:
        return SekaModel.default(model, projection=proj, device=device, dtype=dtype, cache_dir=cache_dir,
                                 attn_implementation=attn_implementation)
    return SekaModel.from_pretrained(model, gguf_file=gguf_file, projection=None if proj is _UNSET else proj,
                                     device=device, dtype=dtype, cache_dir=cache_dir,
                                     attn_implementation=attn_implementation)


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out: list[int] = []
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like '14-23' or '3,5,7', got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded model ({', '.join(EMBEDDED_MODELS)}), hub id or local directory")
    p.add_argument("--gguf-file", help="GGUF file name inside --model's directory")
    p.add_argument("--projection", help="projection file (default: the one shipped for an embedded model)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 ... (default: bfloat16 on CUDA and on CPUs with native bf16, else float32)")
    p.add_argument("--cache-dir", help="converted-model cache (default: $SEKA_RAG_CACHE or ~/.cache/seka-rag)")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa (default), eager, flash_attention_2")


def _model_spec(args, no_projection: bool = False) -> dict:
    return dict(model=args.model, projection=args.projection, gguf_file=args.gguf_file, device=args.device,
                dtype=args.dtype, cache_dir=args.cache_dir, attn_implementation=args.attn_implementation,
                no_projection=no_projection)


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gain-pos", type=float, help="g+ (default: the projection's)")
    p.add_argument("--gain-neg", type=float, help="g- (default: the projection's)")
    p.add_argument("--layers", type=_int_list, help="layers to edit, e.g. 14-23 (default: the projection's)")


def _steer_kwargs(args) -> dict:
    return dict(gain_pos=args.gain_pos, gain_neg=args.gain_neg, layers=args.layers)


def cmd_generate(args) -> int:
    model = load_model(**_model_spec(args))
    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    kw = dict(highlights=args.highlight or None, max_new_tokens=args.max_new_tokens, chat=False if args.raw else None)
    if args.compare:
        print("unsteered:", model.generate(prompt, steer=False, **kw).strip())
        print("steered:  ", model.generate(prompt, **kw, **_steer_kwargs(args)).strip())
    else:
        for piece in model.stream(prompt, steer=not args.no_steer, **kw, **_steer_kwargs(args)):
            print(piece, end="", flush=True)
        print()
    return 0


def cmd_preview(args) -> int:
    model = load_model(**_model_spec(args))
    tokens = model.highlighted_tokens(args.prompt, args.highlight or None, chat=False if args.raw else None)
    print(f"{len(tokens)} highlighted tokens:")
    print(" ".join(repr(t) for t in tokens))
    return 0


def cmd_build_projection(args) -> int:
    from .builder import BuildConfig, build_projection
    from .data.triplets import generate_triplets

    model = load_model(**_model_spec(args, no_projection=True))
    triplets = generate_triplets(args.triplets, seed=args.seed)
    config = BuildConfig(gamma=args.gamma, delta=args.delta, layers=args.build_layers, batch_size=args.batch_size,
                         gain_pos=args.default_gain_pos, gain_neg=args.default_gain_neg,
                         default_layers=args.default_layers, chat=False if args.raw else None)
    started = time.perf_counter()
    projection = build_projection(model, triplets, config)
    elapsed = time.perf_counter() - started
    kept = int(projection.head_mask.sum())
    print(f"built projection from {projection.meta.n_triplets} triplets for {len(projection.layers)} layers "
          f"({kept}/{projection.head_mask.numel()} heads kept) in {elapsed:.1f} s")
    if args.calibrate:
        projection = _run_calibration(model, projection, args)
    out = projection.save(args.out)
    print(f"wrote {out}")
    return 0


def _run_calibration(model, projection, args):
    import json

    from .calibration import CalibrationConfig, calibrate

    config = CalibrationConfig(scan_items=args.scan_items, select_items=args.select_items, group_size=args.group_size)
    result = calibrate(model, projection, config)
    print(f"calibrated in {result.seconds:.0f} s on {result.best.n_cases} dev cases; "
          f"chosen: {result.best.label()} (dev share {result.best.share:.3f}, "
          f"mean first-token margin {result.best.mean_margin:+.3f})")
    print(result.table())
    if args.calibration_log:
        Path(args.calibration_log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.calibration_log).write_text(json.dumps(
            dict(best=result.best.__dict__, trials=[t.__dict__ for t in result.trials], seconds=result.seconds),
            indent=1))
    return result.projection


def cmd_calibrate(args) -> int:
    model = load_model(**_model_spec(args, no_projection=True))
    from .projection import Projection

    base = Projection.load(args.projection) if args.projection else None
    if base is None:
        raise SekaError("calibrate needs --projection (a built projection covering the layers to scan)")
    model.load_projection(base)
    projection = _run_calibration(model, base, args)
    print(f"wrote {projection.save(args.out)}")
    return 0


def cmd_eval_variants(args) -> int:
    """Dev vs test share of the calibration trials recorded in a calibration log."""
    import json

    from .calibration import Trial, evaluate_trials
    from .projection import Projection

    log = json.loads(Path(args.calibration_log).read_text())
    trials = [Trial(**{**t, "units": [tuple(u) for u in t["units"]]}) for t in log["trials"] if t["stage"] in args.stages]
    trials.insert(0, Trial("none", [], 0.0, 0.0, 0))  # unsteered reference
    model = load_model(**_model_spec(args, no_projection=True))
    base = Projection.load(args.projection)
    model.load_projection(base)
    rows = evaluate_trials(model, base, trials, split=args.split, items=args.items)
    lines = [f"| stage | configuration | dev share | {args.split} share | {args.split} mean margin | {args.split} cases |",
             "|---|---|---:|---:|---:|---:|"]
    for trial, share, margin, n in rows:
        dev = "—" if trial.stage == "none" else f"{trial.share:.3f}"
        lines.append(f"| {trial.stage} | {trial.label() or 'unsteered'} | {dev} | {share:.3f} | {margin:+.3f} | {n} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


def cmd_eval_conflicts(args) -> int:
    from .evaluation.conflict import ConflictReport, conflict_split, evaluate_conflicts

    model = load_model(**_model_spec(args))
    items = conflict_split(args.split, n=args.items)
    print(f"{model.model_id}: two-document conflicts, {args.split} split, {len(items)} items x 4 cases")
    print(ConflictReport.header())
    reports = {}
    for label, steer in (("unsteered", False), ("steered", True)):
        rep = evaluate_conflicts(model, items, steer=steer, greedy=args.greedy and steer, **_steer_kwargs(args))
        reports[label] = rep.to_dict()
        print(rep.format_row(label), flush=True)
    if args.out:
        import json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(reports, indent=1))
    return 0


DEMO_CASES = [
    ("Document 1: The Halvorsen Bridge was completed in 1931.\n"
     "Document 2: <<The Halvorsen Bridge was completed in 1958.>>\n\n"
     "Question: In which year was the Halvorsen Bridge completed? Answer with the year only."),
    ("Document 1: <<The capital of Australia is Sydney.>>\n"
     "Document 2: The capital of Australia is Canberra.\n\n"
     "Question: What is the capital of Australia? Answer with one word."),
    ("Document 1: The capital of Australia is Sydney.\n"
     "Document 2: <<The capital of Australia is Canberra.>>\n\n"
     "Question: What is the capital of Australia? Answer with one word."),
]


def cmd_demo(args) -> int:
    model = load_model(**_model_spec(args))
    print(f"model: {model.model_id}   projection layers: "
          f"{model.projection.meta.default_layers or model.projection.layers if model.projection else 'none'}\n")
    for prompt in DEMO_CASES:
        tokens = "".join(model.highlighted_tokens(prompt))
        unsteered = model.generate(prompt, steer=False, max_new_tokens=args.max_new_tokens).strip()
        steered = model.generate(prompt, max_new_tokens=args.max_new_tokens, **_steer_kwargs(args)).strip()
        print(prompt.replace("\n", "\n  | ").join(["  | ", ""]))
        print(f"  highlighted: {tokens.strip()!r}")
        print(f"  unsteered -> {unsteered!r}")
        print(f"  steered   -> {steered!r}\n")
    return 0


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_benchmark

    config = BenchConfig(lengths=args.lengths, runs=args.runs, decode_tokens=args.decode_tokens,
                         batch_size=args.batch_size)
    run_benchmark(_model_spec(args), config, args.out, memory=not args.no_memory)
    return 0


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scan-items", type=int, default=16, help="dev items for the per-layer scan")
    p.add_argument("--select-items", type=int, default=40, help="dev items for selection and gains")
    p.add_argument("--group-size", type=int, default=1, help="layers per scanned unit")
    p.add_argument("--calibration-log", help="write every measured trial as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seka-rag", description="SEKA attention steering for RAG and agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate with highlights (<<...>> markers or --highlight)")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("prompt", help="prompt text, or - to read stdin")
    p.add_argument("--highlight", action="append", help="substring to highlight (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-steer", action="store_true", help="run without any key edit")
    p.add_argument("--compare", action="store_true", help="print unsteered and steered outputs")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("preview", help="show which tokens a highlight covers")
    _add_model_args(p)
    p.add_argument("prompt")
    p.add_argument("--highlight", action="append")
    p.add_argument("--raw", action="store_true")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("build-projection", help="build a projection from synthetic contrastive triplets")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--triplets", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--delta", type=float, default=0.0)
    p.add_argument("--build-layers", type=_int_list, help="layers to build (default: all)")
    p.add_argument("--default-layers", type=_int_list, help="layers edited by default (default: all built)")
    p.add_argument("--default-gain-pos", type=float, default=2.0)
    p.add_argument("--default-gain-neg", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--raw", action="store_true", help="build from raw prompts, not chat-formatted ones")
    p.add_argument("--calibrate", action="store_true", help="then calibrate layers/constructions/gains on dev data")
    _add_calibration_args(p)
    p.set_defaults(func=cmd_build_projection)

    p = sub.add_parser("calibrate", help="choose layers, construction and gains of a projection on dev data")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    _add_calibration_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval-variants", help="dev vs test share (first-token proxy) of logged calibration trials")
    _add_model_args(p)
    p.add_argument("--calibration-log", required=True)
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--items", type=int)
    p.add_argument("--stages", nargs="+", default=["single", "select", "blocks", "gains"])
    p.add_argument("--out", help="write the table (Markdown)")
    p.set_defaults(func=cmd_eval_variants)

    p = sub.add_parser("eval-conflicts", help="two-document conflict evaluation, unsteered vs steered")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("--split", default="test", choices=["dev", "test"])
    p.add_argument("--items", type=int, help="first N items of the split (default: all)")
    p.add_argument("--greedy", action="store_true", help="also check the steered greedy answers")
    p.add_argument("--out", help="write the reports as JSON")
    p.set_defaults(func=cmd_eval_conflicts)

    p = sub.add_parser("demo", help="steered vs unsteered answers on a few conflicts")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="overhead benchmark: latency, decode speed, peak memory")
    _add_model_args(p)
    p.add_argument("--lengths", type=_int_list, default=[256, 1024, 2048])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-subprocess memory probes")
    p.add_argument("--out", default="bench-results/overhead.json")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SekaError as exc:
        print(f"seka-rag: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
