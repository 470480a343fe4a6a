"""The ``seka-rag`` command: generate, preview, build-projection, demo, bench, eval, sensitivity..."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from contextvars import ContextVar
from pathlib import Path

from .errors import SekaError
from .models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, library_progress_bars


def load_model(model: str = DEFAULT_MODEL, projection: str | None = None, gguf_file: str | None = None,
               device: str | None = None, dtype: str | None = None, cache_dir: str | None = None,
               attn_implementation: str = "sdpa", no_projection: bool = False, adaptive: bool = False,
               experts: str | None = None, router: str | None = None):
    """Load an embedded model by name, or any supported model by hub id / directory."""
    from .model import SekaModel, _UNSET

    proj = None if no_projection else (projection if projection is not None else _UNSET)
    if model in EMBEDDED_MODELS:
        if gguf_file is not None:
            raise SekaError(f"--gguf-file is for a directory holding a GGUF; {model!r} is an embedded model "
                            "whose file seka-rag already knows: leave --gguf-file out")
        return SekaModel.default(model, projection=proj, device=device, dtype=dtype, cache_dir=cache_dir,
                                 attn_implementation=attn_implementation, adaptive=adaptive, experts=experts,
                                 router=router)
    if adaptive and experts is None:
        raise SekaError("--adaptive needs --experts DIR for a model other than the embedded ones")
    return SekaModel.from_pretrained(model, gguf_file=gguf_file, projection=None if proj is _UNSET else proj,
                                     device=device, dtype=dtype, cache_dir=cache_dir,
                                     attn_implementation=attn_implementation, experts=experts, router=router)


def _number_type(kind: type, check, requirement: str):
    """An argparse type: parse ``kind`` and check it, with a message naming the requirement."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = requirement  # argparse names the type in some messages
    return parse


_positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
_finite_float = _number_type(float, math.isfinite, "a finite number")
_positive_float = _number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_nonneg_float = _number_type(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
_share = _number_type(float, lambda v: 0 < v <= 1, "a share in (0, 1]")
# lost-in-the-middle contexts put the gold passage first, in the middle and last
_passage_count = _number_type(int, lambda v: v >= 3, "at least 3 (gold passage first, middle and last)")


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        out: list[int] = []
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                if int(b) < int(a):
                    raise ValueError
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        out = None
    if out is None:
        raise argparse.ArgumentTypeError(f"expected integers like '3,5,7' or an ascending range like '14-23', got {text!r}")
    if not out:
        raise argparse.ArgumentTypeError("is empty: give at least one number")
    return out


def _layer_list(text: str | None) -> list[int] | None:
    """A layer list (``_int_list``); an empty one says how to turn steering off instead."""
    if text is not None and not text.replace(",", "").strip():
        raise argparse.ArgumentTypeError("names no layer (to turn steering off, use --no-steer where the command has it)")
    return _int_list(text)


_STARTING_PROJECTION = "the built, uncalibrated projection to start from (required; not the shipped one)"


def _add_model_args(p: argparse.ArgumentParser,
                    projection_help: str | None = "projection file (default: the one shipped for an embedded model)",
                    experts: bool = True) -> None:
    """The options that load a model; ``experts=False`` for commands that never load an expert set: their
    --adaptive / --experts / --router are left out of the help, and refused with the reason when given
    (``projection_help=None`` does the same for --projection)."""
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded model ({', '.join(EMBEDDED_MODELS)}), hub id or local directory")
    p.add_argument("--gguf-file", help="GGUF file name inside --model's directory")
    p.add_argument("--projection", help=projection_help if projection_help is not None else argparse.SUPPRESS)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 ... (default: bfloat16 on CUDA and on CPUs with native bf16, else float32)")
    p.add_argument("--cache-dir", help="where converted GGUF models are cached (embedded models, --gguf-file; "
                   "default: $SEKA_RAG_CACHE or ~/.cache/seka-rag); for a hub id, the Hugging Face hub cache")
    p.add_argument("--attn-implementation", default="sdpa", help="sdpa (default), eager, flash_attention_2")
    hidden = argparse.SUPPRESS
    p.add_argument("--adaptive", action="store_true",
                   help="load the AdaSEKA expert set shipped for the model" if experts else hidden)
    p.add_argument("--experts", help="AdaSEKA expert-set directory (implies --adaptive)" if experts else hidden)
    p.add_argument("--router", choices=["attention", "embedding"],
                   help="default AdaSEKA router (default: attention)" if experts else hidden)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or progress lines (transformers' own bars included)")


def _loaded_settings(args, model) -> dict:
    """How a command's model was loaded, for its --out file: weights, dtype, device, and the expert
    set's stored routing defaults when one is attached (what a router ran with unless overridden)."""
    from dataclasses import asdict

    from . import __version__

    spec = _model_spec(args)
    out = {"projection": spec["projection"], "gguf_file": spec["gguf_file"],
           "attn_implementation": spec["attn_implementation"], "dtype": str(model.model.dtype).removeprefix("torch."),
           "device": str(model.device), "experts": spec["experts"], "seka_rag_version": __version__}
    if model.projection is not None:  # what the single projection edits by default, and which one it is
        p = model.projection
        out["projection_defaults"] = {
            "gain_pos": p.meta.gain_pos, "gain_neg": p.meta.gain_neg, "layers": p.edited_layers,
            "layer_scale": {str(layer): round(float(p.layer_scale[p.row(layer)]), 6) for layer in p.edited_layers},
            "fingerprint": p.fingerprint()}
    if model.experts is not None:
        out["expert_routing_defaults"] = asdict(model.experts.routing)
        out["expert_gains"] = {e.name: {"gain_scale": e.gain_scale, "gain_pos": e.projection.meta.gain_pos,
                                        "gain_neg": e.projection.meta.gain_neg} for e in model.experts}
    return out


#: per command with --methods: (the methods that need an expert set, a --methods value without them)
_EXPERT_METHODS = {
    "bench": ("ada-attention, ada-embedding, two-pass", "seka,pasta"),
    "eval": ("adaseka-attention, adaseka-embedding", "unsteered,seka"),
    "eval-families": ("experts, ada-attention, ada-embedding", "unsteered,seka"),
}


def _check_expert_options(model: str, adaptive: bool, experts: str | None, router: str | None,
                          command: str | None = None) -> None:
    """Refuse expert-set options that cannot work, in the command line's own words."""
    if router is not None and not adaptive and experts is None:
        raise SekaError("--router needs an expert set: add --adaptive (the set shipped for an embedded model) "
                        "or --experts DIR")
    if adaptive and experts is None and model in EMBEDDED_MODELS:
        from .model import shipped_experts_path

        if not (shipped_experts_path(model) / "experts.json").is_file():
            methods, example = _EXPERT_METHODS.get(command, (None, None))
            needs = (f"--adaptive, and the methods {methods}: e.g. --methods {example}" if methods
                     else "--adaptive")
            raise SekaError(f"no AdaSEKA expert set is shipped for {model!r}: pass --experts DIR (build one with "
                            f"`seka-rag build-experts`), or leave out what needs experts ({needs})")


def _model_spec(args, no_projection: bool = False) -> dict:
    _check_expert_options(args.model, bool(args.adaptive or args.experts), args.experts, args.router,
                          command=getattr(args, "command", None))
    return dict(model=args.model, projection=args.projection, gguf_file=args.gguf_file, device=args.device,
                dtype=args.dtype, cache_dir=args.cache_dir, attn_implementation=args.attn_implementation,
                no_projection=no_projection, adaptive=bool(args.adaptive or args.experts), experts=args.experts,
                router=args.router)


def _add_steer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gain-pos", type=_finite_float, help="g+ (default: the projection's)")
    p.add_argument("--gain-neg", type=_finite_float, help="g- (default: the projection's)")
    p.add_argument("--layers", type=_layer_list, help="layers to edit, e.g. 14-23 (default: the projection's)")


def _model_flags(args) -> str:
    """The model-loading options of this command line, to repeat in a suggested next command (shell-quoted)."""
    import shlex

    parts = ["--model", args.model]
    for flag, attr in (("--gguf-file", "gguf_file"), ("--device", "device"), ("--dtype", "dtype"),
                       ("--cache-dir", "cache_dir")):
        if getattr(args, attr, None):
            parts += [flag, str(getattr(args, attr))]
    if getattr(args, "attn_implementation", "sdpa") != "sdpa":
        parts += ["--attn-implementation", args.attn_implementation]
    return " ".join(shlex.quote(p) for p in parts)


def _steer_kwargs(args) -> dict:
    return dict(gain_pos=args.gain_pos, gain_neg=args.gain_neg, layers=args.layers)


def _add_no_markers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-markers", action="store_true",
                   help="read << and >> in the prompt as plain text (code, shifts); highlight with --highlight")


def _prompt_and_highlights(args) -> tuple[str, dict]:
    """The prompt text and the highlight keywords of generate / preview, checked before a model loads."""
    from .highlight import DEFAULT_MARKERS, parse_markers

    prompt = args.prompt if args.prompt != "-" else sys.stdin.read()
    markers = None if args.no_markers else DEFAULT_MARKERS
    text, spans = parse_markers(prompt, markers)  # unbalanced markers: said now, not after loading
    if not text.strip():
        raise SekaError("the prompt is empty" + (" (nothing came on standard input)" if args.prompt == "-" else ""))
    highlights = args.highlight or None
    for piece in highlights or ():
        if not piece.strip():
            raise SekaError("--highlight needs some text")
        if piece not in text:
            raise SekaError(f'--highlight "{piece}" does not occur in the prompt')
    if not highlights and not spans and not getattr(args, "no_steer", False):
        how = "pass --highlight TEXT" if markers is None else "mark text as <<...>> or pass --highlight TEXT"
        print(f"note: nothing is highlighted ({how}), so steering changes nothing", file=sys.stderr)
    return prompt, dict(highlights=highlights, markers=markers)


def cmd_generate(args) -> int:
    if args.compare and args.no_steer:
        raise SekaError("--compare prints the unsteered and the steered output; it does not go with --no-steer")
    prompt, highlight_kw = _prompt_and_highlights(args)
    model = load_model(**_model_spec(args))
    kw = dict(**highlight_kw, max_new_tokens=args.max_new_tokens, chat=False if args.raw else None)
    if args.compare:  # steered first: a setting that cannot steer fails before any generation is spent
        steered = model.generate(prompt, **kw, **_steer_kwargs(args)).strip()
        routing = model.last_routing
        print("unsteered:", model.generate(prompt, steer=False, **kw).strip())
        print("steered:  ", steered)
    else:
        for piece in model.stream(prompt, steer=not args.no_steer, **kw, **_steer_kwargs(args)):
            print(piece, end="", flush=True)
        print()
        routing = model.last_routing
    if routing is not None:  # AdaSEKA: which experts fired
        weights = ", ".join(f"{k} {v:.2f}" for k, v in routing.summary().items())
        print(f"[{routing.router} router: {weights}]", file=sys.stderr)
    return 0


def cmd_preview(args) -> int:
    prompt, highlight_kw = _prompt_and_highlights(args)
    model = load_model(**_model_spec(args))
    tokens = model.highlighted_tokens(prompt, chat=False if args.raw else None, **highlight_kw)
    print(f"{len(tokens)} highlighted tokens:")
    print(" ".join(repr(t) for t in tokens))
    return 0


def cmd_build_projection(args) -> int:
    from .builder import BuildConfig, build_projection
    from .data.triplets import generate_triplets

    if args.projection:
        raise SekaError("build-projection builds a new projection from the model, so --projection would be ignored; "
                        "to calibrate an existing one, run `seka-rag calibrate --projection FILE`")
    if not args.calibrate:
        given = ["--" + k.replace("_", "-") for k, v in _CALIBRATION_DEFAULTS.items() if getattr(args, k) != v]
        if given:
            raise SekaError(f"{', '.join(given)} {'set' if len(given) > 1 else 'sets'} up the calibration, which runs "
                            "only with --calibrate: add it, or leave them out")
    if args.calibrate:  # the calibration chooses the edited layers and gains itself
        kept = tuple(k for k in vars(args) if k not in ("default_layers", "default_gain_pos", "default_gain_neg"))
        given = _options_given(args, "build-projection", kept)
        if given:
            raise SekaError(f"--calibrate chooses the edited layers and gains on dev data, so {', '.join(given)} "
                            f"would be ignored; leave {'it' if len(given) == 1 else 'them'} out, or build without "
                            "--calibrate")
    if args.build_layers is not None and args.default_layers is not None:
        outside = sorted(set(args.default_layers) - set(args.build_layers))
        if outside:  # found now, not after every key has been collected
            raise SekaError(f"--default-layers {outside} are not among --build-layers {args.build_layers}")
    if args.calibrate:
        _calibration_config(args)  # its settings checked before minutes of key collection
    model = load_model(**_model_spec(args, no_projection=True))
    triplets = generate_triplets(args.triplets, seed=args.seed)
    config = BuildConfig(gamma=args.gamma, delta=args.delta, layers=args.build_layers, batch_size=args.batch_size,
                         gain_pos=args.default_gain_pos, gain_neg=args.default_gain_neg,
                         default_layers=args.default_layers, chat=False if args.raw else None)
    started = time.perf_counter()
    projection = build_projection(model, triplets, config, progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    kept = int(projection.head_mask.sum())
    print(f"built projection from {projection.meta.n_triplets} triplets for {len(projection.layers)} layers "
          f"({kept}/{projection.head_mask.numel()} heads kept) in {elapsed:.1f} s")
    if args.calibrate:
        projection = _run_calibration(model, projection, args)
    out = projection.save(args.out)
    print(f"wrote {out}")
    if not args.calibrate and not projection.edits_by_default:
        print(f"It edits nothing as it stands: --delta {args.delta:g} keeps no head in {_layers_text(projection.edited_layers)}; "
              "build with a smaller --delta, or with --calibrate.")
    elif not args.calibrate:
        import shlex

        model, path = _model_flags(args), shlex.quote(str(out))
        paper = " (the paper's gains)" if (projection.meta.gain_pos, projection.meta.gain_neg) == (2.0, 0.5) else ""
        print(f"It edits {_layers_text(projection.edited_layers)} by default at g+ {projection.meta.gain_pos:g}, g- "
              f"{projection.meta.gain_neg:g}{paper}, which may not "
              f"steer this model well: check with `seka-rag eval-conflicts {model} --projection {path} --items 40`, "
              f"and choose layers and gains on dev data with `seka-rag calibrate {model} --projection {path} "
              "--out FILE` (or build with --calibrate).")
    return 0


def _effective_gains(projection) -> str:
    """``"16-23 at g+ 2, g- 0.5"``: the default gains times each group of edited layers' per-layer scale."""
    by_scale: dict[float, list[int]] = {}
    for layer in projection.edited_layers:
        by_scale.setdefault(round(float(projection.layer_scale[projection.row(layer)]), 6), []).append(layer)
    m = projection.meta
    return "; ".join(f"{_layers_text(ls)} at g+ {m.gain_pos * k:g}, g- {m.gain_neg * k:g}" for k, ls in by_scale.items())


def _layers_text(layers) -> str:
    """``"layer 5"`` / ``"layers 16-23"``."""
    from .projection import layer_ranges

    return f"layer{'s' if len(layers) > 1 else ''} {layer_ranges(layers)}"


def _calibration_config(args):
    """The calibration settings of the command line, checked (before any model loads)."""
    from .calibration import CalibrationConfig

    return CalibrationConfig(scan_items=args.scan_items, select_items=args.select_items,
                             group_size=args.group_size).validate()


def _run_calibration(model, projection, args):
    import json

    from .calibration import calibrate

    result = calibrate(model, projection, _calibration_config(args), progress=not args.no_progress)
    print(f"calibrated in {result.seconds:.0f} s on {result.best.n_cases} dev cases; "
          f"chosen: {result.best.label()} (first-token dev share {result.best.share:.3f}, "
          f"mean first-token margin {result.best.mean_margin:+.3f})")
    print(result.table())
    if result.best.share <= 0.5:  # counterbalanced cases: unsteered decides exactly half
        print(f"warning: no configuration decided more dev conflicts than an unsteered model does (0.500): the "
              f"chosen one ({result.best.share:.3f}) does not steer this model at these settings. Check with "
              "`seka-rag eval-conflicts`, build with more triplets or other layers, or leave the model unsteered.",
              file=sys.stderr)
    chosen = result.projection
    print("effective gains: " + _effective_gains(chosen)
        + f" (stored g+ {chosen.meta.gain_pos:g}, g- {chosen.meta.gain_neg:g} times each layer's scale; --gain-pos, "
          "gain_pos= and set-gains take the stored value)")
    import shlex

    model_flag, out = _model_flags(args), shlex.quote(str(args.out))
    print("These gains are the strongest that decide short dev conflicts; generated answers may need less (they "
          f"can repeat the prompt or invent text). Read a few with `seka-rag generate {model_flag} --projection {out} "
          "--compare PROMPT`, and choose a factor on dev items of several families: for F in conflicts counterfact "
          f"instructions, `seka-rag gain-scale {model_flag} --projection {out} --family F --out-dir DIR`; then "
          f"`seka-rag gain-scale --trade-off DIR/*.json --apply {out} --write {out}` (add --conflict-bar B below "
          "0.95 if gain-scale's conflicts share, over whole answers, stays under it; the seka-rag checkout's "
          "docs/steering-quality.md, \"Your own model\").")
    if args.calibration_log:
        Path(args.calibration_log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.calibration_log).write_text(json.dumps(
            dict(best=result.best.__dict__, trials=[t.__dict__ for t in result.trials], seconds=result.seconds),
            indent=1), encoding="utf-8")
    return result.projection


def cmd_calibrate(args) -> int:
    from .projection import Projection

    if not args.projection:  # unlike other commands, calibrate starts from a built, uncalibrated projection
        raise SekaError("calibrate needs --projection FILE (a projection from `seka-rag build-projection` covering "
                        "the layers to scan); it does not start from the shipped, already calibrated one")
    base = Projection.load(args.projection)
    from .calibration import check_uncalibrated

    check_uncalibrated(base, args.projection)  # said before the model loads
    _calibration_config(args)
    model = load_model(**_model_spec(args, no_projection=True))
    model.load_projection(base)
    projection = _run_calibration(model, base, args)
    print(f"wrote {projection.save(args.out)}")
    return 0


def _logged_trial(entry: dict):
    """A :class:`~seka_rag.calibration.Trial` from a calibration log's entry, its fields' types checked
    (``TypeError`` / ``ValueError`` naming the field otherwise)."""
    from .calibration import CONSTRUCTIONS, Trial

    def number(value, field: str, integer: bool = False):
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise TypeError(f"trial field {field!r} is {value!r}, not {'an integer' if integer else 'a number'}")
        return value

    if not isinstance(entry["stage"], str):
        raise TypeError(f"trial field 'stage' is {entry['stage']!r}, not a name")
    units = []
    for unit in entry["units"]:
        if not (isinstance(unit, list) and len(unit) == 3 and isinstance(unit[0], str) and isinstance(unit[1], list)):
            raise ValueError(f"trial unit {unit!r} is not [construction, [layers], gain multiplier]")
        if unit[0] not in CONSTRUCTIONS:
            raise ValueError(f"trial unit {unit!r}: unknown construction {unit[0]!r} (known: {', '.join(CONSTRUCTIONS)})")
        units.append((unit[0], [number(layer, "layer of a unit", integer=True) for layer in unit[1]],
                      number(unit[2], "gain multiplier of a unit")))
    return Trial(stage=entry["stage"], units=units, share=number(entry["share"], "share"),
                 mean_margin=number(entry["mean_margin"], "mean_margin"),
                 n_cases=number(entry["n_cases"], "n_cases", integer=True))


def cmd_eval_variants(args) -> int:
    """Dev vs test share of the calibration trials recorded in a calibration log."""
    import json

    from .calibration import Trial, evaluate_trials
    from .projection import Projection

    if not args.projection:  # the trials name layers and gains of the projection the calibration started from
        raise SekaError("eval-variants needs --projection FILE: the built, uncalibrated projection that "
                        "`seka-rag calibrate --projection FILE` read when it wrote the calibration log")
    try:
        log = json.loads(Path(args.calibration_log).read_text(encoding="utf-8"))
        trials = [_logged_trial(t) for t in log["trials"] if t["stage"] in args.stages]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SekaError(f"--calibration-log {args.calibration_log!r} is not readable as a log written by "
                        f"`seka-rag calibrate --calibration-log` ({type(exc).__name__}: {exc})") from None
    trials.insert(0, Trial("none", [], 0.0, 0.0, 0))  # unsteered reference
    _conflict_items(args.split, args.items)  # a count beyond the split is said before the model loads
    base = Projection.load(args.projection)  # a bad file is said before the model loads
    outside = sorted({layer for t in trials for _, layers, _ in t.units for layer in layers
                      if not 0 <= layer < base.meta.num_layers})
    if outside:
        raise SekaError(f"--calibration-log {args.calibration_log!r} names layers {outside}, outside the "
                        f"{base.meta.num_layers} layers of --projection {args.projection!r}: a log of another model?")
    model = load_model(**_model_spec(args, no_projection=True))
    model.load_projection(base)
    rows = evaluate_trials(model, base, trials, split=args.split, items=args.items,
                           progress=not args.no_progress)
    lines = [f"| stage | configuration | dev share | {args.split} share | {args.split} mean margin | {args.split} cases |",
             "|---|---|---:|---:|---:|---:|"]
    for trial, share, margin, n in rows:
        dev = "—" if trial.stage == "none" else f"{trial.share:.3f}"
        lines.append(f"| {trial.stage} | {trial.label() or 'unsteered'} | {dev} | {share:.3f} | {margin:+.3f} | {n} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _counted(flag: str, make, *args, **kwargs):
    """``make(*args, **kwargs)``: items a command will use, made before any model loads; a count beyond
    what there is (the ``ValueError`` of the item makers) is a usage error naming ``flag``."""
    try:
        return make(*args, **kwargs)
    except ValueError as exc:
        raise SekaError(f"{flag}: {exc}") from None


def _conflict_items(split: str, n: int | None) -> list:
    """The conflict split's first ``n`` items (a count beyond the split is a usage error)."""
    from .evaluation.conflict import conflict_split

    return _counted("--items", conflict_split, split, n=n)


def cmd_eval_conflicts(args) -> int:
    from .evaluation.conflict import ConflictReport, evaluate_conflicts

    if args.per_case and not args.out:
        raise SekaError("--per-case stores every case's answers in the --out file: give --out FILE as well")
    items = _conflict_items(args.split, args.items)
    model = load_model(**_model_spec(args))
    steer = _steer_kwargs(args)  # check the options now, not after the whole unsteered pass
    if model.router is None or model.router == "projection":  # steering with the single projection
        model._steering_matrices(steer["gain_pos"], steer["gain_neg"], steer["layers"], None)
    else:  # with the experts: against each expert's projection
        from .steering import SteeringConfig, edit_matrices

        for expert in model.experts.experts:
            edit_matrices(expert.projection, SteeringConfig(gain_pos=steer["gain_pos"], gain_neg=steer["gain_neg"],
                                                            layers=steer["layers"]))
    print(f"{model.model_id}: two-document conflicts, {args.split} split, {len(items)} items x 4 cases")
    print(ConflictReport.header())
    reports = {}
    for label, steer in (("unsteered", False), ("steered", True)):
        rep = evaluate_conflicts(model, items, steer=steer, greedy=args.greedy,
                                 progress=not args.no_progress, **_steer_kwargs(args))
        reports[label] = rep.to_dict(include_cases=args.per_case)
        print(rep.format_row(label), flush=True)
    if args.out:
        import json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        reports["run"] = dict(model=model.model_id, split=args.split, items=len(items),
                              command="seka-rag eval-conflicts " + " ".join(sys.argv[2:]),
                              model_settings=_loaded_settings(args, model))
        Path(args.out).write_text(json.dumps(reports, indent=1), encoding="utf-8")
        print(f"wrote {args.out}")
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


_MMAP_UNSET = object()


def _mmap_threshold(text: str) -> int | None:
    """``--mmap-threshold``: a byte count, or ``default`` for glibc's adaptive threshold (None)."""
    if text.strip().lower() == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a byte count (0 or more) or 'default', got {text!r}")
    return value


def cmd_bench(args) -> int:
    from .bench import (ADAPTIVE_METHODS, METHODS as BENCH_METHODS, PROBE_MMAP_THRESHOLD, BenchConfig,
                        format_latency, format_memory, merge_results, run_benchmark)

    if args.memory_in_process:
        if args.merge or args.no_memory:
            raise SekaError("--memory-in-process chooses how memory is probed; with "
                            f"{'--merge' if args.merge else '--no-memory'} nothing is probed")
        from .model import _default_device

        if _default_device(args.device).type != "cuda":  # the model's own device resolution, before loading
            raise SekaError("--memory-in-process needs a CUDA device: peak RSS cannot be reset per configuration, "
                            "so CPU probes run in a process of their own each")
    for flag, given, what in (("--mmap-threshold", args.mmap_threshold is not _MMAP_UNSET,
                               "sets glibc's mmap threshold in the CPU memory probes"),
                              ("--probe-start", args.probe_start is not None,
                               "chooses how the CPU memory probes get their processes")):
        if given and (args.merge or args.no_memory or args.memory_in_process):
            why = "--merge" if args.merge else "--no-memory" if args.no_memory else "--memory-in-process"
            raise SekaError(f"{flag} {what}; with {why} no such probe runs")
    timing = [flag for flag in ("--runs", "--short-run-factor") if flag in _GIVEN_OPTIONS.get()]
    if timing and args.no_latency and not args.merge:
        raise SekaError(f"{' and '.join(timing)} set{'s' if len(timing) == 1 else ''} how many latency runs are "
                        "timed; with --no-latency no latency run is timed (each memory probe runs once): leave "
                        f"{'it' if len(timing) == 1 else 'them'} out")
    if args.probe_start == "fork":
        from .model import _default_device

        if not sys.platform.startswith("linux") or _default_device(args.device).type != "cpu":
            raise SekaError("--probe-start fork is for CPU models on Linux (a CUDA context cannot be forked); "
                            "leave it out, and the probes spawn a fresh process each")
    if args.merge:
        from .bench import write_outputs

        _refuse_run_options_with_merge(args, "bench", ("merge", "out", "plots", "no_progress", "func", "command"))
        default_out = args.out == build_parser().parse_args(["bench"]).out
        _refuse_overwriting_a_merged_file(args.merge, args.out, "the default --out" if default_out else "--out")
        result = merge_results(args.merge)
        if result["latency"]:
            print(format_latency(result["latency"]))
        if result["memory"]:
            print(format_memory(result["memory"]))
        write_outputs(result, args.out, args.plots)
        return 0
    if args.no_memory and args.no_latency:
        raise SekaError("--no-memory and --no-latency together leave nothing to measure")
    for flag, values in (("--batch-size", args.batch_size), ("--lengths", args.lengths)):
        if not values or min(values) < 1:
            raise SekaError(f"{flag} must be positive, got {values}")
        if len(set(values)) < len(values):
            twice = sorted({v for v in values if values.count(v) > 1})
            raise SekaError(f"{flag} {','.join(map(str, values))} repeats {', '.join(map(str, twice))}: give each "
                            "value once")

    methods = _as_spelled(args.methods, BENCH_METHODS)  # run_benchmark rejects unknown ones
    if args.pasta_heads and "pasta" not in methods:
        raise SekaError("--pasta-heads sets the heads of the pasta method, which this run does not measure; "
                        "leave it out or add pasta to --methods")
    if any(m in ADAPTIVE_METHODS for m in methods) and not args.experts:
        args.adaptive = True
    heads = None
    if args.pasta_heads:
        from .evaluation.suite import load_head_profile

        _check_file(args.pasta_heads, "--pasta-heads")
        profile, _ = load_head_profile(args.pasta_heads)
        heads = profile.heads
    config = BenchConfig(lengths=args.lengths, runs=args.runs, decode_tokens=args.decode_tokens,
                         batch_sizes=args.batch_size, methods=methods, pasta_heads=heads,
                         short_run_factor=args.short_run_factor,
                         mmap_threshold=PROBE_MMAP_THRESHOLD if args.mmap_threshold is _MMAP_UNSET else args.mmap_threshold,
                         probe_start=args.probe_start or "fork")
    run_benchmark(_model_spec(args), config, args.out, memory=not args.no_memory, latency=not args.no_latency,
                  plots=args.plots, memory_in_process=args.memory_in_process, progress=not args.no_progress)
    return 0


_BUILD_ONLY_OPTIONS = ("families", "triplets", "seed", "gamma", "delta", "build_layers", "batch_size")


def cmd_build_experts(args) -> int:
    from .adaptive import RoutingConfig, with_gain_scales
    from .builder import BuildConfig, build_expert_set
    from .data.tasks import DEFAULT_SEED, DEFAULT_TRIPLETS_PER_FAMILY, FAMILIES, FAMILY_DESCRIPTIONS, family_triplets

    loading = [flag for flag, value in (("--experts", args.experts), ("--adaptive", args.adaptive),
                                        ("--router", args.router)) if value]
    if loading:
        raise SekaError(f"build-experts writes an expert set and never loads one, so {', '.join(loading)} would be "
                        "ignored; to refresh an existing set's settings use --reuse DIR")
    if args.reuse is not None:
        given = [f"--{o.replace('_', '-')}" for o in _BUILD_ONLY_OPTIONS if getattr(args, o) is not None]
        if given:
            raise SekaError(f"--reuse keeps the experts' projections, so {', '.join(given)} would be ignored; "
                            "drop them, or rebuild without --reuse")
    elif args.out is None:
        raise SekaError("--out DIR is required (it defaults to the --reuse directory only with --reuse)")
    families = _as_spelled(args.families, FAMILIES) if args.families is not None else list(FAMILIES)
    if not families:
        raise SekaError(f"--families names no family; choose from {', '.join(FAMILIES)}, or leave it out for all")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        from .evaluation.suite import did_you_mean

        raise SekaError(f"unknown task families {unknown}; choose from {', '.join(FAMILIES)}"
                        f"{did_you_mean(unknown, FAMILIES)}")
    routing_given = {name: value for name, value in (("gain", args.gain), ("embedding_gain", args.embedding_gain),
                                                      ("embedding_temperature", args.embedding_temperature))
                     if value is not None}
    reused = None
    if args.reuse is not None:
        from .adaptive import ExpertSet

        if Path(args.reuse).name == "experts.json" and Path(args.reuse).is_file():
            args.reuse = str(Path(args.reuse).parent)  # the set is its directory (written back there)
        reused = ExpertSet.load(args.reuse)  # before the model load: a wrong path fails fast
    if args.expert_scales:  # names checked before the model load
        names = reused.names if reused is not None else families
        wrong = [n for n in args.expert_scales if n not in names]
        if wrong:
            whose = "this set has" if reused is not None else "this build makes"
            raise SekaError(f"--expert-scales names {wrong}, which {whose} no expert for; "
                            f"the experts are {', '.join(names)}")
    if args.expert_gains is not None and (len(args.expert_gains) != 2 or any(
            not (g >= 0 and g < float("inf")) for g in args.expert_gains)):  # before the model loads
        raise SekaError(f"--expert-gains takes two non-negative numbers G_POS,G_NEG, got {args.expert_gains}")
    spec = _model_spec(args)
    spec.update(adaptive=False, experts=None, router=None)
    model = load_model(**spec)
    template = model.projection
    if template is None and (reused is not None or args.build_layers is None):
        raise SekaError("no calibrated projection to copy layers and gains from: pass --projection"
                        + ("" if reused is not None else " or --build-layers"))
    if args.expert_gains is not None:
        if template is None:
            raise SekaError("--expert-gains replaces the calibrated projection's gains: pass --projection too")
        from dataclasses import replace

        template = replace(template, meta=replace(template.meta, gain_pos=args.expert_gains[0],
                                                  gain_neg=args.expert_gains[1]))
    command = "seka-rag build-experts " + " ".join(sys.argv[2:])
    if reused is not None:
        from .builder import expert_set_like

        reused.check_fits(model.geometry, model.model_id)
        experts = expert_set_like(reused, template)
        if args.expert_scales:
            experts = with_gain_scales(experts, args.expert_scales)
        experts.routing = experts.routing.replace(**routing_given).validate()
        if args.name:
            experts.name = args.name
        refresh = dict(command=command, gain_pos=template.meta.gain_pos, gain_neg=template.meta.gain_neg,
                       projection=args.projection or f"shipped with seka-rag for {template.meta.model_id}",
                       expert_gains_given=args.expert_gains is not None, routing_given=routing_given,
                       expert_scales_given=args.expert_scales or {})
        earlier = experts.notes.get("settings_refreshed", [])
        experts.notes["settings_refreshed"] = [*(earlier if isinstance(earlier, list) else [earlier]), refresh]
        out = experts.save(args.out or args.reuse)
        meta = experts.meta
        print(f"re-copied the calibrated projection's settings onto {len(experts)} experts "
              f"({', '.join(experts.names)}): gains {template.meta.gain_pos:g} / {template.meta.gain_neg:g}, "
              f"layers {meta.default_layers} -> {out}")
        _print_expert_scales(experts)
        return 0
    layers = args.build_layers
    if layers is None:
        layers = template.edited_layers
    routing = RoutingConfig(**routing_given).validate()  # before the long build; unset fields: its defaults
    triplets_per_family = DEFAULT_TRIPLETS_PER_FAMILY if args.triplets is None else args.triplets
    seed = DEFAULT_SEED if args.seed is None else args.seed
    config = BuildConfig(layers=layers, **{name: getattr(args, name) for name in ("gamma", "delta", "batch_size")
                                            if getattr(args, name) is not None})
    started = time.perf_counter()
    triplets = {f: family_triplets(f, triplets_per_family, seed=seed) for f in families}
    experts = build_expert_set(model, triplets, config, template=template, descriptions=FAMILY_DESCRIPTIONS,
                               name=args.name or model.model_id, progress=not args.no_progress)
    experts.routing = routing
    if args.expert_scales:
        experts = with_gain_scales(experts, args.expert_scales)
    seconds = time.perf_counter() - started
    experts.notes.update(families=families, triplets_per_family=triplets_per_family, seed=seed, gamma=config.gamma,
                         build_seconds=round(seconds, 1), command=command)
    out = experts.save(args.out)
    print(f"built {len(experts)} experts ({', '.join(experts.names)}) for layers {layers} in {seconds:.0f} s -> {out}")
    _print_expert_scales(experts)
    return 0


def _print_expert_scales(experts) -> None:
    """One line per expert with its own strength, when any expert's differs from the shared gains."""
    if all(e.gain_scale == 1.0 for e in experts):
        return
    for e in experts:
        m = e.projection.meta
        print(f"  {e.name}: {e.gain_scale:g} x the shared gains = {m.gain_pos:g} / {m.gain_neg:g}")


#: Names that one subcommand spells differently from another (``bench`` / ``eval-families``: ada-*, ``eval``:
#: adaseka-*; ``gain-scale``: conflicts, the others: conflict). Every command takes either spelling.
_SPELLINGS = (("ada-attention", "adaseka-attention"), ("ada-embedding", "adaseka-embedding"),
              ("conflict", "conflicts"), ("instruction", "instructions"))
_OTHER_SPELLING = {**dict(_SPELLINGS), **{b: a for a, b in _SPELLINGS}}


def _as_spelled(names, known) -> list[str]:
    """``names`` (a comma-separated string, or a list of such strings) split, each spelt as ``known`` spells it."""
    parts = names.split(",") if isinstance(names, str) else [p for n in names for p in str(n).split(",")]
    names = [p.strip() for p in parts if p.strip()]
    return [_OTHER_SPELLING[n] if n not in known and _OTHER_SPELLING.get(n) in known else n for n in names]


def _spelled_reference(method: str) -> str:
    """``eval --paired-against``, spelt as ``eval`` spells its methods (``ada-embedding`` → ``adaseka-embedding``)."""
    from .evaluation.suite import SUITE_METHODS

    return (_as_spelled(method, SUITE_METHODS) or [method])[0]


def _gain_scale_family(value: str) -> str:
    """``gain-scale --family``, spelt as that command spells it (``conflict`` → ``conflicts``)."""
    return (_as_spelled(value, _GAIN_SCALE_ITEMS) or [value])[0]


FAMILY_METHODS = ("unsteered", "seka", "experts", "ada-attention", "ada-embedding")
FAMILY_DEFAULT_METHODS = "unsteered,seka,experts,ada-attention,ada-embedding"


def _family_method_kwargs(model, method: str) -> dict:
    if method == "unsteered":
        return dict(steer=False)
    if method == "seka":
        return dict(router="projection") if model.experts is not None else {}
    if method.startswith("expert:"):
        return dict(router={method.split(":", 1)[1]: 1.0})
    if method == "ada-attention":
        return dict(router="attention")
    if method == "ada-embedding":
        return dict(router="embedding")
    raise SekaError(f"unknown method {method!r}; choose from {', '.join(FAMILY_METHODS)}")


def _refuse_overwriting_a_merged_file(inputs: list[str], out: str | None, what: str = "--out") -> None:
    """A merge's output must not be one of its inputs (the same file by any name, hard links included)."""
    if not out or not Path(out).exists():
        return
    for path in inputs:
        try:
            same = os.path.samefile(path, out)
        except OSError:  # an input that does not exist: the merge itself says so
            same = False
        if same:
            raise SekaError(f"{what} {out!r} is one of the files being merged ({path!r}) and would be "
                            "overwritten; give --out another file")


def _options_given(args, command: str, skip=()) -> list[str]:
    """The options of ``command`` (but the dests in ``skip``) that this command line gave, as flags: a
    value other than the default, or the option spelled out even at its default."""
    parser = build_parser()
    sub = next(a.choices[command] for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # read off the parser (parsing the bare command would fail on a required option), set_defaults too
    defaults = {a.dest: a.default for a in sub._actions} | sub._defaults | {"command": command}
    spelled = _GIVEN_OPTIONS.get()
    return sorted({"--" + k.replace("_", "-") for k, v in vars(args).items()
                   if k not in skip and (v != defaults.get(k) or "--" + k.replace("_", "-") in spelled)})


def _refuse_run_options_with_merge(args, command: str, kept: tuple[str, ...]) -> None:
    """A ``--merge`` runs nothing: refuse every option of ``command`` but ``kept`` that was given (a value
    other than its default, or the option spelled out even at its default: ``--model X`` does not check
    that the files are X's)."""
    given = _options_given(args, command, kept)
    if given:
        raise SekaError(f"--merge only joins earlier results and runs nothing, so {', '.join(given)} would be "
                        f"ignored; leave {'it' if len(given) == 1 else 'them'} out (the files' own settings apply)")


#: ``seka-rag eval-families`` options that still act with ``--merge`` (every other one would be ignored).
_FAMILY_MERGE_OPTIONS = ("merge", "out", "families", "methods", "no_progress", "func", "command")


def cmd_eval_families(args) -> int:
    import json

    from .data.tasks import FAMILIES
    from .evaluation.families import evaluate_family, family_items, format_family_table

    if args.families is not None and not _as_spelled(args.families, FAMILIES):
        raise SekaError(f"--families names no family; choose from {', '.join(FAMILIES)} (or leave it out for all)")
    if not _as_spelled(args.methods, FAMILY_METHODS):
        raise SekaError(f"--methods names no method; choose from {', '.join(FAMILY_METHODS)} or expert:NAME")
    families = _as_spelled(args.families, FAMILIES) if args.families else list(FAMILIES)
    args.families = families if args.families else None
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        from .evaluation.suite import did_you_mean

        raise SekaError(f"unknown task families {unknown}; choose from {', '.join(FAMILIES)}"
                        f"{did_you_mean(unknown, FAMILIES)}; counterfact, instructions with generated answers "
                        "and lost-in-middle are `seka-rag eval` families")
    methods = _as_spelled(args.methods, FAMILY_METHODS)
    bad = [m for m in methods if m not in FAMILY_METHODS and not m.startswith("expert:")]
    if bad:
        from .evaluation.suite import did_you_mean

        raise SekaError(f"unknown methods {bad}; choose from {', '.join(FAMILY_METHODS)} or expert:NAME"
                        f"{did_you_mean(bad, FAMILY_METHODS)}")
    if args.merge:
        _refuse_run_options_with_merge(args, "eval-families", _FAMILY_MERGE_OPTIONS)
        _refuse_overwriting_a_merged_file(args.merge, args.out)
        return _merge_family_reports(args.merge, args.out, families=args.families,
                                     methods=None if args.methods == FAMILY_DEFAULT_METHODS else methods)
    if any(m in ("experts", "ada-attention", "ada-embedding") or m.startswith("expert:") for m in methods):
        args.adaptive = True
    # counterbalanced families: each item is scored as 4 cases (2 for distractors), either highlight
    sets = {"conflict": 4, "instruction": 4, "distractors": 2}  # either highlight (and order) of one prompt
    running = [f for f in families if f in sets]
    whole = max([sets[f] for f in running], default=1)
    if args.items is not None and args.items % whole:
        sizes = ", ".join(f"{f} in sets of {sets[f]}" for f in running)
        raise SekaError(f"--items {args.items} cuts a counterbalanced set short ({sizes}: either highlight, in "
                        "either order where there are two documents; a partial set leaves them unbalanced): use a "
                        f"multiple of {whole}")
    items = {f: _counted("--items", family_items, f, args.items, seed=args.seed) for f in families}
    routing = {k: v for k, v in (("gain", args.gain), ("temperature", args.temperature), ("top_k", args.top_k),
                                 ("embedding_temperature", args.embedding_temperature),
                                 ("embedding_gain", args.embedding_gain)) if v is not None}
    if args.embedding_top1:
        routing["embedding_top1"] = True
    from .adaptive import ROUTER_SETTINGS

    flags = {"gain": "--gain", "temperature": "--temperature", "top_k": "--top-k",
             "embedding_temperature": "--embedding-temperature", "embedding_gain": "--embedding-gain",
             "embedding_top1": "--embedding-top1"}
    unread = [flags[k] for k in routing
              if not any(m == f"ada-{r}" and k in keys for m in methods for r, keys in ROUTER_SETTINGS.items())]
    if unread:
        raise SekaError(f"{', '.join(unread)} would be ignored: no method of this run reads "
                        f"{'it' if len(unread) == 1 else 'them'} (--gain, --temperature, --top-k: ada-attention; "
                        "--embedding-*: ada-embedding)")
    model = load_model(**_model_spec(args))
    expanded = []
    for m in methods:
        expanded.extend([f"expert:{n}" for n in model.experts.names] if m == "experts" else [m])
    missing = [m for m in expanded if m.startswith("expert:") and m.split(":", 1)[1] not in model.experts.names]
    if missing:
        raise SekaError(f"no such experts {missing}; the set has {model.experts.names}")
    started = time.perf_counter()
    table: dict = {}
    for m in expanded:
        kw = _family_method_kwargs(model, m)
        if routing and m.startswith("ada-"):
            from .adaptive import ROUTER_SETTINGS

            read = ROUTER_SETTINGS[m.removeprefix("ada-")]  # each router gets the options it reads
            if any(k in read for k in routing):
                kw["routing"] = {k: v for k, v in routing.items() if k in read}
        table[m] = {}
        for f in families:
            table[m][f] = evaluate_family(model, items[f], batch_size=args.batch_size, progress=not args.no_progress, **kw)
            if not args.no_progress:
                print(f"  {m} / {f}: {table[m][f].cell()}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    print(f"Task families on {model.model_id} ({', '.join(f'{f}: n={len(items[f])}' for f in families)}; "
          f"share where the highlighted target wins, bootstrap 95 % intervals; {seconds:.0f} s)")
    print(format_family_table(table))
    _print_paired_differences(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = dict(model=model.model_id, items=args.items, seed=args.seed, routing=routing, seconds=seconds,
                       command="seka-rag eval-families " + " ".join(sys.argv[2:]),
                       model_settings=_loaded_settings(args, model),
                       reports={m: {f: r.to_dict() for f, r in rs.items()} for m, rs in table.items()})
        Path(args.out).write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def _print_paired_differences(table: dict) -> None:
    from .evaluation.families import paired_differences

    lines = paired_differences({m: r for m, r in table.items() if m != "unsteered"})
    if lines:
        print("Paired differences from plain SEKA (over all families, each weighing the same as in the mean column; "
              "bootstrap 95 % intervals):\n" + lines)


def _merge_family_reports(paths: list[str], out: str | None, families: list[str] | None = None,
                          methods: list[str] | None = None) -> int:
    """Print one table from several ``eval-families --out`` files (methods or families run in parallel).

    A method's families are joined across files; a later file's report for the same method and
    family replaces an earlier one. ``families`` / ``methods`` keep only those (the table and the
    written file alike).
    """
    import json
    from dataclasses import fields

    from .evaluation.families import FamilyReport, format_family_table

    known = {f.name for f in fields(FamilyReport)}
    table: dict = {}
    merged: dict = {}
    seen: set[str] = set()  # every method in the files, shown or not
    source: dict[tuple[str, str], str] = {}  # (method, family) -> the file its report comes from
    loaded: dict[str, set[str]] = {"model": set(), "dtype": set()}
    unrecorded: list[str] = []  # files from before runs recorded their dtype
    projections: set[str] = set()  # "None": the model's shipped projection
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SekaError(f"--merge {path}: not a readable JSON file ({exc})") from None
        reports_of = payload.get("reports") if isinstance(payload, dict) else None
        if isinstance(payload, dict) and {"table", "families", "methods"} & set(payload):
            raise SekaError(f"{path!r} is a `seka-rag eval --out` file, not an `eval-families --out` one; "
                            "merge it with `seka-rag eval --merge`")
        if not isinstance(reports_of, dict) or not all(
                isinstance(r, dict) and all(isinstance(x, dict) and {"family", "n", "share"} <= set(x) for x in r.values())
                for r in reports_of.values()):
            raise SekaError(f"{path!r} is not an `eval-families --out` file (it has no per-method family reports)")
        runs = payload.get("runs") or [{k: v for k, v in payload.items() if k != "reports"}]  # a merge keeps its runs
        contributes = False
        seen.update(reports_of)
        for method, reports in reports_of.items():
            if methods is not None and method not in methods and not (
                    "experts" in methods and method.startswith("expert:")):
                continue
            reports = {f: r for f, r in reports.items() if families is None or f in families}
            if not reports:
                continue
            contributes = True
            for f in reports:
                if (method, f) in source:
                    print(f"note: {method} / {f} from {path} replaces the one from {source[method, f]}")
                source[method, f] = path
            merged.setdefault("reports", {}).setdefault(method, {}).update(reports)
            table.setdefault(method, {}).update(
                {f: FamilyReport(**{k: v for k, v in r.items() if k in known}) for f, r in reports.items()})
        if contributes:  # a file whose reports are all filtered out says nothing about the items shown
            for run in runs:  # one model, loaded one way: scores of another model or dtype do not pool
                if run.get("model"):
                    loaded["model"].add(str(run["model"]))
                dtype = (run.get("model_settings") or {}).get("dtype")
                if dtype:
                    loaded["dtype"].add(str(dtype))
                else:
                    unrecorded.append(path)
                if run.get("model_settings"):
                    projections.add(str(run["model_settings"].get("projection")))
            for what, values in loaded.items():
                if len(values) > 1:
                    raise SekaError(f"cannot merge runs of different {what}s ({' vs '.join(sorted(values))}); "
                                    f"{path!r} differs from the files before it")
            merged.setdefault("runs", []).extend(runs)
    if methods is not None:
        missing = [m for m in methods if m not in seen and not (
            m == "experts" and any(k.startswith("expert:") for k in seen))]
        if missing:
            raise SekaError(f"--methods {missing}: no such method in the merged files (they hold {sorted(seen)})")
    if not table:
        raise SekaError("nothing to merge: no report matches the --methods / --families given")
    seeds = {run.get("seed") for run in merged.get("runs", [])}
    if len(seeds) > 1:  # seed 0 draws the test items, others dev items: one table must not mix them
        raise SekaError(f"cannot merge runs of different item seeds ({', '.join(sorted(map(str, seeds)))}): their "
                        "items differ (seed 0 draws test items, other seeds dev items)")
    print(format_family_table(table))
    if len(projections) > 1:
        print(f"note: the files steered with different projections ({', '.join(sorted(projections))}; None is "
              "the shipped one): rows of one method name come from one file only")
    if unrecorded and loaded["dtype"]:
        print(f"note: {', '.join(sorted(set(unrecorded)))} did not record its dtype; the others ran in "
              f"{', '.join(sorted(loaded['dtype']))}")
    sizes = sorted({(f, r.n) for reports in table.values() for f, r in reports.items()})
    if len({f for f, _ in sizes}) != len(sizes):
        print(f"(caution: a family has reports of different sizes across files, {sizes}; the mean column mixes them)")
    item_sets = {(run.get("seed"), run.get("items")) for run in merged.get("runs", [])}
    if len(item_sets) == 1:
        _print_paired_differences(table)
    else:  # pairing item by item needs the same items in every file
        print(f"(no paired differences: the files were run on different items, seed/items {sorted(item_sets, key=str)})")
    if out:
        merged["sources"] = {f"{m} / {f}": p for (m, f), p in source.items() if m in table and f in table[m]}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(merged, indent=1), encoding="utf-8")
        print(f"wrote {out}")
    return 0


def _model_slug(model: str) -> str:
    """A file-name stem for a model: the embedded name, or the last part of a hub id / directory."""
    if model in EMBEDDED_MODELS:
        return model
    return Path(model.rstrip("/")).name.lower() or "model"


def _check_file(path: str | None, flag: str) -> None:
    if path is not None and not Path(path).is_file():
        raise SekaError(f"{flag}: no such file {path!r}")


def cmd_profile_pasta(args) -> int:
    from .evaluation.baselines import select_pasta_heads
    from .evaluation.suite import save_head_profile

    spec = _model_spec(args)
    spec.update(adaptive=False, experts=None, router=None)
    items = _pasta_profiling_items(args.items, "--items", seed=args.seed)  # before the model loads
    model = load_model(**spec)
    started = time.perf_counter()
    profile = select_pasta_heads(model, items, alpha=args.alpha, top=args.top, layers=args.layers, proxy=args.proxy,
                                 batch_size=args.batch_size, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    save_head_profile(profile, args.out, model=model.model_id, items_seed=args.seed, seconds=round(seconds, 1),
                      command="seka-rag profile-pasta " + " ".join(sys.argv[2:]))
    print(f"profiled {len(profile.scores)} heads on {profile.n_items} dev conflict cases in {seconds:.0f} s "
          f"(alpha {profile.alpha:g}, {profile.proxy} proxy; unsteered mean margin {profile.baseline:+.3f})")
    print("selected (layer, head, mean margin gain): "
          + ", ".join(f"({layer}, {head}, {score:+.3f})" for layer, head, score in profile.selected))
    print(f"wrote {args.out}")
    return 0


def _pasta_profiling_items(n: int, flag: str, seed: int | None = None) -> list:
    """The dev conflict cases PASTA's heads are profiled on (a count beyond them is a usage error)."""
    from .evaluation.baselines import profiling_items

    return _counted(flag, profiling_items, n, **({} if seed is None else {"seed": seed}))


def _pasta_for_eval(model, args):
    """(PastaConfig or None, what was done) for ``seka-rag eval``: a saved profile, or a small one profiled now."""
    from .evaluation.baselines import PastaUnsupportedError, select_pasta_heads
    from .evaluation.suite import PASTA_PROFILE_STRIDE, load_head_profile

    if args.pasta_heads:
        profile, extra = load_head_profile(args.pasta_heads)
        if extra.get("model") and extra["model"] != model.model_id:
            print(f"warning: {args.pasta_heads} was profiled on {extra['model']!r}, not {model.model_id!r}")
        info = {"heads_file": args.pasta_heads, "profiled_on": extra.get("model"), "n_items": profile.n_items}
    else:
        from .calibration import _fmt_layers

        layers = args.pasta_profile_layers
        if layers is None:
            layers = list(range(0, model.geometry.num_layers, PASTA_PROFILE_STRIDE))
        candidates = len(layers) * model.geometry.num_query_heads
        if args.pasta_top > candidates:
            raise SekaError(f"--pasta-top {args.pasta_top} asks for more heads than the {candidates} profiled "
                            f"({len(layers)} layers x {model.geometry.num_query_heads} query heads): lower --pasta-top, "
                            "or profile more layers with --pasta-profile-layers")
        print(f"note: no --pasta-heads file: profiling PASTA heads now on {args.pasta_profile_items} dev conflict "
              f"cases, layers {_fmt_layers(layers)} (a small budget; `seka-rag profile-pasta --out FILE` "
              f"profiles once with more, then pass --pasta-heads FILE)", flush=True)
        started = time.perf_counter()
        try:
            profile = select_pasta_heads(model, _pasta_profiling_items(args.pasta_profile_items,
                                                                       "--pasta-profile-items"), top=args.pasta_top,
                                         layers=layers, progress=not args.no_progress,
                                         **({} if args.pasta_alpha is None else {"alpha": args.pasta_alpha}))
        except PastaUnsupportedError as exc:
            print(f"note: pasta skipped: {exc}")
            return None, {"error": str(exc)}
        info = {"profiled_now": True, "n_items": profile.n_items, "layers": layers,
                "seconds": time.perf_counter() - started}
    config = profile.config(alpha=args.pasta_alpha)
    if args.pasta_heads:  # heads of another model: refused now, not as a failed cell per family
        from .evaluation.baselines import BaselineConfigError

        try:
            config.head_table(model.geometry.num_layers, model.geometry.num_query_heads)
        except BaselineConfigError as exc:
            raise SekaError(f"--pasta-heads {args.pasta_heads}: {exc}") from None
    info.update(config.to_dict())
    return config, info


def cmd_eval(args) -> int:
    from .evaluation.lost_in_middle import POLICIES
    from .evaluation.suite import (
        ADASEKA_METHODS,
        SUITE_FAMILIES,
        SUITE_METHODS,
        SuiteConfig,
        build_suite_items,
        parse_items,
        parse_names,
        run_suite,
        suite_methods,
    )

    if args.merge:
        return _merge_suite_files(args)
    families = parse_names(None if args.families is None else _as_spelled(args.families, SUITE_FAMILIES),
                           SUITE_FAMILIES, "families")
    methods = parse_names(None if args.methods is None else _as_spelled(args.methods, SUITE_METHODS),
                          SUITE_METHODS, "methods")
    policies = parse_names(args.nq_policies, POLICIES, "lost-in-middle policies")
    items = parse_items(args.items, families)
    if args.paired_against is not None:
        args.paired_against = _spelled_reference(args.paired_against)
        if args.paired_against not in methods:
            from .evaluation.suite import did_you_mean

            raise SekaError(f"--paired-against {args.paired_against!r} is not among this run's methods "
                            f"({', '.join(methods)}){did_you_mean([args.paired_against], methods)}; pair with "
                            "one of them" + (", or add it to --methods" if args.methods is not None else ""))
    _refuse_unused_eval_options(args, families, methods)
    if args.families is not None and "lost-in-middle" in families and not args.nq:
        raise SekaError("the lost-in-middle family reads real passages: give --nq PATH (the NQ-open oracle file, "
                        "qa_data/nq-open-oracle.jsonl.gz of the Lost in the Middle study's repository), or leave "
                        "the family out")
    for path, flag in ((args.nq, "--nq"), (args.counterfact, "--counterfact"), (args.pasta_heads, "--pasta-heads")):
        _check_file(path, flag)
    config = SuiteConfig(families=tuple(families), items=items, seed=args.seed, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, counterfact=args.counterfact, nq=args.nq,
                         nq_policies=tuple(policies), nq_passages=args.nq_passages, nq_first=args.nq_first,
                         nq_max_new_tokens=args.nq_max_new_tokens, nq_batch_size=args.nq_batch_size,
                         per_item=args.per_item)
    if args.plot:
        from .evaluation.sensitivity import require_matplotlib

        require_matplotlib("the plot (--plot)", "leave out --plot")
    eval_items, skipped_families = build_suite_items(config)  # bad data files fail before the model loads
    if "pasta" in methods and not args.pasta_heads:
        _pasta_profiling_items(args.pasta_profile_items, "--pasta-profile-items")
    spec = _model_spec(args)
    if any(m in ADASEKA_METHODS for m in methods) and not spec["adaptive"] and args.model in EMBEDDED_MODELS:
        from .model import shipped_experts_path

        if (shipped_experts_path(args.model) / "experts.json").is_file():
            spec["adaptive"] = True  # AdaSEKA asked for: use the expert set shipped for this model
    if all(m in ADASEKA_METHODS for m in methods) and not spec["adaptive"]:
        raise SekaError(f"{', '.join(methods)} need an AdaSEKA expert set, and none is shipped for {args.model!r}: "
                        f"build one (`seka-rag build-experts --model {args.model} --out DIR`) and pass --experts DIR")
    model = load_model(**spec)
    if spec["adaptive"]:
        print(f"AdaSEKA expert set: {', '.join(model.experts.names)}")
    pasta, pasta_info = _pasta_for_eval(model, args) if "pasta" in methods else (None, {})
    chosen, skipped = suite_methods(model, methods, pasta=pasta, spa_strength=args.spa_strength)
    for name, why in skipped.items():
        print(f"note: {name} skipped: {why}")
    result = run_suite(model, chosen, config, items=eval_items, skipped_families=skipped_families,
                       skipped_methods=skipped, progress=not args.no_progress)
    result.settings.update(command="seka-rag eval " + " ".join(sys.argv[2:]), pasta=pasta_info,
                           spa_strength=chosen["spa"].config.strength if "spa" in chosen else None,
                           model_settings=_loaded_settings(args, model))
    if "seconds" in pasta_info:
        result.seconds["pasta profiling"] = pasta_info["seconds"]
    counts = ", ".join(f"{f}: {result.items[f]}" for f in result.families)
    profiling = f" + {pasta_info['seconds']:.0f} s PASTA profiling" if "seconds" in pasta_info else ""
    print(f"\nEvaluation suite on {model.model_id} ({counts}; seed {args.seed}; "
          f"{result.seconds['total']:.0f} s{profiling}); cells: mean [95 % CI] (n)")
    return _write_suite_result(result, args)


#: ``seka-rag eval`` options that only a family / a method reads: (option, family or method, what reads it).
_EVAL_SCOPED_OPTIONS = (
    ("counterfact", "counterfact", "the counterfact family"),
    *((o, "lost-in-middle", "the lost-in-middle family") for o in
      ("nq", "nq_policies", "nq_passages", "nq_first", "nq_max_new_tokens", "nq_batch_size")),
    ("max_new_tokens", "instructions", "the instructions family"),
    *((o, "pasta", "the pasta method") for o in
      ("pasta_heads", "pasta_profile_items", "pasta_profile_layers", "pasta_top", "pasta_alpha")),
    ("spa_strength", "spa", "the spa method"),
)


def _refuse_unused_eval_options(args, families: list[str], methods: list[str]) -> None:
    """Refuse ``seka-rag eval`` options that no family or method of this run reads (before the model loads)."""
    flags = set(_options_given(args, "eval"))
    given = {o for o, _, _ in _EVAL_SCOPED_OPTIONS if "--" + o.replace("_", "-") in flags}
    unread = [(o, who) for o, scope, who in _EVAL_SCOPED_OPTIONS if o in given and scope not in (*families, *methods)]
    if args.pasta_heads:  # a stored profile: the on-the-fly profiling settings would do nothing
        unread += [(o, "on-the-fly profiling (not with --pasta-heads)") for o in
                   ("pasta_profile_items", "pasta_profile_layers", "pasta_top") if o in given]
    if unread:
        flags = ", ".join(f"--{o.replace('_', '-')} (read by {who})" for o, who in unread)
        raise SekaError(f"{flags} would be ignored by this run (families: {', '.join(families)}; methods: "
                        f"{', '.join(methods)}); leave {'it' if len(unread) == 1 else 'them'} out")


def _write_suite_result(result, args) -> int:
    """Print a suite result and write its --out / --markdown / --plot files; 1 if a cell failed."""
    import json

    reference = args.paired_against or "unsteered"
    print(result.text(reference))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.to_dict(reference), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(result.markdown(reference), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if args.plot:
        from .evaluation.suite import plot_suite

        print(f"wrote {plot_suite(result, args.plot)}")
    return 1 if result.errors else 0


#: ``seka-rag eval`` options that still act with ``--merge`` (every other one would be ignored).
_EVAL_MERGE_OPTIONS = ("merge", "out", "markdown", "plot", "no_progress", "paired_against", "func", "command")


def _merge_suite_files(args) -> int:
    """``seka-rag eval --merge FILES``: one table (and the paired differences) from earlier --out files."""
    import json

    from .evaluation.suite import merge_suite_results

    _refuse_run_options_with_merge(args, "eval", _EVAL_MERGE_OPTIONS)
    _refuse_overwriting_a_merged_file(args.merge, args.out)
    if args.plot:
        from .evaluation.sensitivity import require_matplotlib

        require_matplotlib("the plot (--plot)", "leave out --plot")
    data = []
    for path in args.merge:
        _check_file(path, "--merge")
        try:
            data.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SekaError(f"--merge {path}: not a readable JSON file ({exc})") from None
        if not isinstance(data[-1], dict):
            raise SekaError(f"--merge {path}: not a `seka-rag eval --out` result")
    try:
        result = merge_suite_results(data)
    except SekaError as exc:
        raise SekaError(f"--merge: {exc}") from None
    try:
        if args.paired_against is not None:
            args.paired_against = _spelled_reference(args.paired_against)
            result.check_reference(args.paired_against)
    except SekaError as exc:
        raise SekaError(f"--paired-against: {exc}") from None
    counts = ", ".join(f"{f}: {result.items[f]}" for f in result.families)
    print(f"Evaluation suite on {result.model}, {len(data)} run(s) merged ({counts}; seed "
          f"{result.settings.get('seed', 0)}; {result.seconds['total']:.0f} s in all); cells: mean [95 % CI] (n)")
    return _write_suite_result(result, args)


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers like '1,2,4', got {text!r}")
    return values


def _expert_scales(text: str) -> dict[str, float]:
    """``NAME=FACTOR,NAME=FACTOR`` -> ``{name: factor}`` (positive finite factors, each name once)."""
    scales: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not part or not sep or not name.strip() or not (math.isfinite(factor) and factor > 0):
            raise argparse.ArgumentTypeError(f"expected NAME=FACTOR pairs with positive finite factors like "
                                             f"'conflict=2,instruction=0.5', got {text!r}")
        if name.strip() in scales:
            raise argparse.ArgumentTypeError(f"expert {name.strip()!r} is named twice in {text!r}")
        scales[name.strip()] = factor
    return scales


def _quantile_list(text: str) -> list[float]:
    values = _float_list(text)
    if not all(0 <= v < 1 for v in values):  # quantile 1 would keep no head at all
        raise argparse.ArgumentTypeError(f"expected quantiles in [0, 1) like '0,0.25,0.5', got {text!r}")
    return values


def cmd_sensitivity(args) -> int:
    from .evaluation.sensitivity import check_set_names, require_matplotlib, sensitivity_sweep, write_outputs

    if not args.no_plots:
        require_matplotlib()
    sets = check_set_names([s.strip() for s in args.layer_sets.split(",") if s.strip()])
    spec = _model_spec(args)
    spec.update(adaptive=False, experts=None, router=None)
    model = load_model(**spec)
    result = sensitivity_sweep(model, items=args.items, seed=args.seed, gains_pos=args.gains_pos,
                               gains_neg=args.gains_neg, sets=sets, quantiles=args.delta_quantiles,
                               scorer=args.scorer, batch_size=args.batch_size, unit_scale=args.unit_scale,
                               progress=not args.no_progress)
    print(result.text())
    for path in write_outputs(result, args.out_dir, _model_slug(args.model), plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


#: gain-scale options and the families they apply to (None: every family); given elsewhere is an error.
_GAIN_SCALE_OPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "seed": ("--seed", ("instructions", "counterfact")),
    "nq": ("--nq", ("lost-in-middle",)),
    "nq_passages": ("--nq-passages", ("lost-in-middle",)),
    "nq_policies": ("--nq-policies", ("lost-in-middle",)),
    "first_question": ("--first-question", ("lost-in-middle",)),
    "max_new_tokens": ("--max-new-tokens", ("instructions", "lost-in-middle")),
    "items": ("--items", None),
    "scales": ("--scales", None),
    "batch_size": ("--batch-size", None),
    "out_dir": ("--out-dir", None),
}
_GAIN_SCALE_ITEMS = {"lost-in-middle": 8, "instructions": 8, "conflicts": 40, "counterfact": 64}


def _gain_scale_trade_off(args, gs) -> int:
    given = [flag for attr, (flag, _) in _GAIN_SCALE_OPTIONS.items() if getattr(args, attr) is not None]
    given += ["--em"] if args.em else []
    kept = {"trade_off", "conflict_bar", "apply", "write", "no_progress", "func", "command", "family", "em",
            *_GAIN_SCALE_OPTIONS}
    given += _options_given(args, "gain-scale", kept)
    if args.family or given:
        raise SekaError(f"--trade-off compares earlier files and runs nothing (--apply names the projection to "
                        f"rescale); leave out {', '.join((['--family'] if args.family else []) + given)}")
    bar = 0.95 if args.conflict_bar is None else args.conflict_bar
    if not 0 <= bar <= 1:
        raise SekaError(f"--conflict-bar is a share between 0 and 1, got {bar}")
    for path in args.trade_off:
        _check_file(path, "--trade-off")
    sweeps = [gs.load_result(p) for p in args.trade_off]
    result = gs.trade_off(sweeps, conflict_bar=bar)
    on_test = sorted({s.family for s in sweeps if s.split == "test"})
    if on_test:
        import warnings

        sweeps_ran = "sweep ran" if len(on_test) == 1 else "sweeps ran"
        warnings.warn(f"the {' and '.join(on_test)} {sweeps_ran} on the suite's test items (instructions: --seed 0; "
                      "lost-in-middle: --first-question below 2000): a scale picked on them is not a dev choice")
    items = "dev items" if not on_test else f"dev items, test items for {', '.join(on_test)}"
    print(f"Share per family at each gain scale, {result.model} ({items}; conflicts: highlighted answer wins, "
          "counterfact: efficacy, instructions: pass rate, lost-in-middle: share of contexts whose log p(gold) "
          "rose over unsteered, mean over policies)")
    print(result.table())
    if result.dropped:
        print(f"note: scales {', '.join(f'{s:g}' for s in result.dropped)} are not measured in every family and "
              "were not compared")
    if "conflicts" not in result.shares:
        print("note: no conflicts file given, so no scale was held to the conflict bar")
    print("pick: " + ("none (no scale keeps the conflict bar)" if result.pick is None
                      else f"x{result.pick:g} of the projection's default gains"))
    if result.pick == 1:
        print("note: the pick keeps the full gains; if the answers you read still repeat the prompt or invent text, "
              "try lower gains per call (gain_pos= / gain_neg=, or `seka-rag generate --gain-pos G --gain-neg G "
              "--compare ...`) and store the ones you choose with `seka-rag set-gains FILE --gain-pos G --gain-neg G`")
    if args.apply:
        from .projection import Projection

        projection = Projection.load(args.apply)
        rescaled = gs.apply_scale(projection, result, files=args.trade_off)
        print(f"wrote {rescaled.save(args.write)}: default gains {projection.meta.gain_pos:g} / "
              f"{projection.meta.gain_neg:g} -> {rescaled.meta.gain_pos:g} / {rescaled.meta.gain_neg:g}")
    return 0


def cmd_gain_scale(args) -> int:
    from .evaluation import gain_scale as gs
    from .evaluation.lost_in_middle import POLICIES
    from .evaluation.suite import parse_names

    if (args.apply is None) != (args.write is None):
        raise SekaError("--apply PROJECTION and --write PATH go together, with --trade-off FILES")
    if args.trade_off:
        return _gain_scale_trade_off(args, gs)
    if args.apply or args.conflict_bar is not None:
        raise SekaError("--apply, --write and --conflict-bar go with --trade-off FILES")
    if not args.family:
        raise SekaError("choose a --family to sweep (or --trade-off FILES to compare earlier runs)")
    family = args.family
    misplaced = [flag for attr, (flag, families) in _GAIN_SCALE_OPTIONS.items()
                 if families is not None and family not in families and getattr(args, attr) is not None]
    misplaced += ["--em"] if args.em and family != "lost-in-middle" else []
    if family == "lost-in-middle" and args.max_new_tokens is not None and not args.em:
        raise SekaError("--max-new-tokens sets the greedy answers' length, which --family lost-in-middle generates "
                        "only with --em")
    if misplaced:
        raise SekaError(f"{', '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'} not apply to "
                        f"--family {family}")
    scales = gs.check_scales(args.scales if args.scales is not None else gs.DEFAULT_SCALES)
    n_items = args.items or _GAIN_SCALE_ITEMS[family]
    # answer length and batch size: the family function's defaults unless given
    kwargs = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("batch_size", args.batch_size))
              if v is not None}
    seed = gs.DEV_SEED if args.seed is None else args.seed
    if family == "lost-in-middle":
        if not args.nq:
            raise SekaError("--family lost-in-middle needs the NQ-open oracle file (--nq PATH)")
        _check_file(args.nq, "--nq")
        kwargs.update(policies=parse_names(args.nq_policies or "gold,middle", POLICIES, "lost-in-middle policies"),
                      n_questions=n_items, n_passages=args.nq_passages or 5,
                      first_question=gs.DEV_FIRST_QUESTION if args.first_question is None else args.first_question,
                      em=args.em)
    elif family == "conflicts":
        from .evaluation.conflict import conflict_split

        _counted("conflict dev items", conflict_split, "dev", n=n_items)  # before minutes of model loading
        kwargs.update(n_items=n_items)
    else:
        kwargs.update(n_items=n_items, seed=seed)
    spec = _model_spec(args)
    spec.update(adaptive=False, experts=None, router=None)
    model = load_model(**spec)
    if family == "lost-in-middle":
        result = gs.gain_scale_lost_in_middle(model, args.nq, scales=scales, progress=not args.no_progress, **kwargs)
    else:
        run = {"instructions": gs.gain_scale_instructions, "conflicts": gs.gain_scale_conflicts,
               "counterfact": gs.gain_scale_counterfact}[family]
        result = run(model, scales=scales, progress=not args.no_progress, **kwargs)
    result.settings["command"] = "seka-rag gain-scale " + " ".join(sys.argv[2:])
    print(result.text())
    for path in gs.write_outputs(result, args.out_dir or "sensitivity-results", _model_slug(args.model)):
        print(f"wrote {path}")
    return 0


def cmd_set_gains(args) -> int:
    """``seka-rag set-gains``: store default gains chosen by hand in a projection file."""
    from .projection import Projection

    from .steering import edit_matrices

    if args.gain_pos is None and args.gain_neg is None:
        raise SekaError("give --gain-pos and/or --gain-neg (the stored gains, before the per-layer scale)")
    if not args.projection or not Path(args.projection).is_file():
        raise SekaError(f"no projection file {args.projection!r} (give the .safetensors file to change)")
    projection = Projection.load(args.projection)
    changed = projection.with_gains(args.gain_pos, args.gain_neg)
    if changed.edited_layers:
        edit_matrices(changed)  # warns here, once, if these gains would turn keys around
    out = changed.save(args.out or args.projection)
    old, new = projection.meta, changed.meta
    scales = {round(float(changed.layer_scale[changed.row(layer)]), 6) for layer in changed.edited_layers}
    effective = f"; effective gains: {_effective_gains(changed)}" if scales and scales != {1.0} else ""
    print(f"wrote {out}: default gains {old.gain_pos:g} / {old.gain_neg:g} -> {new.gain_pos:g} / {new.gain_neg:g}"
          f"{effective}")
    return 0


def cmd_compare_experts(args) -> int:
    """``seka-rag compare-experts``: how differently an expert set's projections edit keys."""
    import json
    from dataclasses import asdict

    from .adaptive import ExpertSet
    from .projection import Projection
    from .expert_overlap import expert_overlaps, format_overlaps
    from .model import shipped_experts_path, shipped_projection_path

    if args.experts:
        directory = Path(args.experts)
        if directory.name == "experts.json" and directory.is_file():  # the set's index file: its directory
            directory = directory.parent
    elif args.model in EMBEDDED_MODELS:
        directory = shipped_experts_path(args.model)
        if not (directory / "experts.json").is_file():
            raise SekaError(f"no expert set is shipped for {args.model!r}: build one with `seka-rag build-experts "
                            f"--model {args.model} --out DIR` and pass --experts DIR")
    else:
        raise SekaError(f"no expert set is shipped for {args.model!r}: pass --experts DIR")
    if not (directory / "experts.json").is_file():
        raise SekaError(f"{str(directory)!r} holds no expert set (experts.json is missing)")
    experts = ExpertSet.load(directory)
    reference = None
    if args.projection != "none":
        path = args.projection or (shipped_projection_path(args.model) if args.model in EMBEDDED_MODELS else None)
        if path is not None:
            _check_file(str(path), "--projection")
            reference = Projection.load(path)
    if reference is not None:
        a, b = experts.meta, reference.meta
        if (a.model_type, a.num_layers, a.num_kv_heads, a.head_dim) != (b.model_type, b.num_layers, b.num_kv_heads,
                                                                        b.head_dim):
            embedded = next((n for n, spec in EMBEDDED_MODELS.items() if spec.model_id == a.model_id), None)
            model_hint = f"--model {embedded} (the set's model), " if embedded else ""
            raise SekaError(
                f"the expert set was built for {a.model_id!r} and the reference projection for {b.model_id!r}: "
                f"pass {model_hint}--projection FILE of the set's model, or --projection none to compare the experts only"
            )
    rows = expert_overlaps(experts, reference, layers=args.layers)

    def shown(p) -> str:  # relative to the working directory where it is inside it
        p = Path(p).resolve()
        return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)

    print(f"expert set {shown(directory)!r}: {', '.join(experts.names)}"
          + (f"; reference: the single projection {shown(path)!r}" if reference is not None else ""))
    print(format_overlaps(rows))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(experts=shown(directory), reference=shown(path) if reference is not None else None,
                                       pairs=[asdict(r) for r in rows]), indent=1), encoding="utf-8")
        print(f"wrote {out}")
    return 0


#: Defaults of the calibration options (build-projection applies them only with --calibrate).
_CALIBRATION_DEFAULTS = {"scan_items": 16, "select_items": 40, "group_size": 1, "calibration_log": None}


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    d = _CALIBRATION_DEFAULTS
    p.add_argument("--scan-items", type=_positive_int, default=d["scan_items"],
                   help=f"dev conflict items (x 4 cases) for the per-layer scan (default {d['scan_items']}; at most 298)")
    p.add_argument("--select-items", type=_positive_int, default=d["select_items"],
                   help=f"dev conflict items (x 4 cases) for choosing layers and gains (default {d['select_items']}; "
                        "at most 298)")
    p.add_argument("--group-size", type=_positive_int, default=d["group_size"],
                   help=f"adjacent layers scanned as one unit (default {d['group_size']}; 2 halves the scan on deep "
                        "models)")
    p.add_argument("--calibration-log", default=d["calibration_log"], help="write every measured trial as JSON")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="seka-rag", description="SEKA attention steering for RAG and agents.")
    parser.add_argument("--version", action="version", version=f"seka-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate with highlights (<<...>> markers or --highlight)")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("prompt", help="prompt text, or - to read stdin")
    p.add_argument("--highlight", action="append", help="substring to highlight (repeatable)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--no-steer", action="store_true", help="run without any key edit")
    p.add_argument("--compare", action="store_true", help="print unsteered and steered outputs")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    _add_no_markers_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("preview", help="show which tokens a highlight covers")
    _add_model_args(p, projection_help=None, experts=False)  # tokens only: no projection, no experts
    p.add_argument("prompt", help="prompt text, or - to read stdin")
    p.add_argument("--highlight", action="append",
                   help="text to highlight (every occurrence; repeat for several); or mark it <<inline>> in the prompt")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    _add_no_markers_arg(p)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("build-projection", help="build a projection from synthetic contrastive triplets")
    _add_model_args(p, experts=False)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--triplets", type=_positive_int, default=400, help="contrastive triplets (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic triplets (default 0)")
    p.add_argument("--gamma", type=_share, default=0.9,
                   help="share of the singular values P+ keeps (its tail is P-'s; default 0.9)")
    p.add_argument("--delta", type=_nonneg_float, default=0.0,
                   help="head threshold: heads whose keys move less than this between H+ and H- are not edited "
                        "(default 0)")
    p.add_argument("--build-layers", type=_int_list, help="layers to build (default: all)")
    p.add_argument("--default-layers", type=_int_list, help="layers edited by default (default: all built)")
    p.add_argument("--default-gain-pos", type=_finite_float, default=2.0,
                   help="g+ stored as the projection's default (default 2.0, the paper's; the shipped, calibrated "
                        "projections use less on fewer layers: see --calibrate)")
    p.add_argument("--default-gain-neg", type=_finite_float, default=0.5, help="g- stored as its default (default 0.5)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--raw", action="store_true", help="build from raw prompts, not chat-formatted ones")
    p.add_argument("--calibrate", action="store_true",
                   help="then calibrate layers/constructions/gains on dev data (it chooses the default layers and "
                        "gains itself, so not with --default-layers / --default-gain-pos / --default-gain-neg)")
    _add_calibration_args(p)
    p.set_defaults(func=cmd_build_projection)

    from .data.tasks import DEFAULT_SEED, DEFAULT_TRIPLETS_PER_FAMILY

    p = sub.add_parser("build-experts", help="build an AdaSEKA expert set: one projection per task family")
    _add_model_args(p, experts=False)
    p.add_argument("--out", help="output directory (experts.json + one .safetensors per expert); "
                                 "with --reuse it defaults to the --reuse directory, overwritten in place")
    p.add_argument("--reuse", metavar="DIR",
                   help="instead of building: re-copy the calibrated projection's layers, gains and per-layer scales "
                        "onto the experts in DIR (their projections, prototypes and routing defaults are kept; "
                        "routing options given here replace the stored ones). The projection may edit only "
                        "layers the experts were built for")
    p.add_argument("--families", nargs="+", help="task families: context_qa, conflict, instruction, distractors "
                   "(default: all four)")
    p.add_argument("--triplets", type=_positive_int, help=f"triplets per family (default {DEFAULT_TRIPLETS_PER_FAMILY})")
    p.add_argument("--seed", type=int, help=f"triplet seed (default {DEFAULT_SEED})")
    p.add_argument("--gamma", type=_share, help="cumulative singular-value share kept in P+ (default 0.9)")
    p.add_argument("--delta", type=_nonneg_float, help="head threshold (default 0.0)")
    p.add_argument("--gain", type=_finite_float, help="default attention-router gain stored with the set (default 1.0)")
    p.add_argument("--embedding-gain", type=_finite_float,
                   help="default embedding-router gain stored with the set (default 1.0)")
    p.add_argument("--embedding-temperature", type=_positive_float,
                   help="default embedding-router softmax temperature stored with the set (default 0.1)")
    p.add_argument("--expert-gains", type=_float_list, metavar="G_POS,G_NEG",
                   help="default g+, g- stored with every expert (default: the calibrated projection's)")
    p.add_argument("--expert-scales", type=_expert_scales, metavar="NAME=FACTOR,...",
                   help="give the named experts their own strength: FACTOR times the shared gains (e.g. "
                        "'conflict=2,distractors=2'); with --reuse, experts not named keep their stored scale "
                        "(default: 1 for a new set)")
    p.add_argument("--build-layers", type=_int_list,
                   help="layers to build (default: the calibrated projection's edited layers)")
    p.add_argument("--batch-size", type=_positive_int, help="triplets per forward pass while building (default 8)")
    p.add_argument("--name", help="name stored in experts.json (default: the model id)")
    p.set_defaults(func=cmd_build_experts)

    p = sub.add_parser("calibrate", help="choose layers, construction and gains of a projection on dev data")
    _add_model_args(p, projection_help=_STARTING_PROJECTION, experts=False)
    p.add_argument("--out", required=True, help="output .safetensors file")
    _add_calibration_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval-variants", help="dev vs test share (first-token proxy) of logged calibration trials")
    _add_model_args(p, projection_help=_STARTING_PROJECTION + ": the one `calibrate --projection` read", experts=False)
    p.add_argument("--calibration-log", required=True, help="the JSON log written by calibrate --calibration-log")
    p.add_argument("--split", default="test", choices=["dev", "test"], help="conflict split to score (default test)")
    p.add_argument("--items", type=_positive_int,
                   help="conflict items of the split to score, four cases each (default: the whole split)")
    p.add_argument("--stages", nargs="+", default=["single", "select", "blocks", "gains"],
                   choices=["scan", "single", "select", "blocks", "gains"],
                   help="calibration stages whose trials to score (default: single select blocks gains)")
    p.add_argument("--out", help="write the table (Markdown)")
    p.set_defaults(func=cmd_eval_variants)

    p = sub.add_parser("eval-conflicts", help="two-document conflict evaluation, unsteered vs steered")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("--split", default="test", choices=["dev", "test"],
                   help="conflict split: dev (calibration) or test (default)")
    p.add_argument("--items", type=_positive_int, help="first N items of the split (default: all)")
    p.add_argument("--greedy", action="store_true",
                   help="also generate greedy answers, unsteered and steered: 'greedy' counts those containing the "
                        "highlighted answer, 'only' those containing it and not the other document's")
    p.add_argument("--per-case", action="store_true",
                   help="with --out: store every case (prompt, answers, margin, and with --greedy the generated answer)")
    p.add_argument("--out", help="write the reports as JSON")
    p.set_defaults(func=cmd_eval_conflicts)

    p = sub.add_parser("eval-families", help="AdaSEKA task families: methods x families table with intervals")
    _add_model_args(p)
    p.add_argument("--families", nargs="+", help="task families: context_qa, conflict, instruction, distractors "
                   "(space- or comma-separated; default: all four; with --merge, the ones to show)")
    p.add_argument("--items", type=_positive_int, default=152,
                   help="items per family (default 152): a multiple of 4 when conflict or instruction runs, of 2 "
                        "for distractors (whole counterbalanced sets)")
    p.add_argument("--seed", type=int, default=0, help="item seed (0: the test items; others: dev items)")
    p.add_argument("--methods", default=FAMILY_DEFAULT_METHODS,
                   help=f"comma-separated: {', '.join(FAMILY_METHODS)} ('experts': each expert alone; "
                        "expert:NAME: one of them); with --merge, the methods to show")
    p.add_argument("--gain", type=_finite_float, help="AdaSEKA routing gain (default: the expert set's)")
    p.add_argument("--temperature", type=_positive_float, help="attention router softmax temperature (default: c/max|c|)")
    p.add_argument("--top-k", type=_positive_int, help="singular directions per head in the attention router")
    p.add_argument("--embedding-temperature", type=_positive_float, help="embedding router softmax temperature")
    p.add_argument("--embedding-gain", type=_finite_float, help="embedding router gain (default: the expert set's)")
    p.add_argument("--embedding-top1", action="store_true",
                   help="embedding router: all weight on the most similar expert (default: the expert set's "
                        "setting, softmax for the shipped set)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--out", help="write every report as JSON")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="print one table from earlier --out files of the same item seed (test and dev runs do not "
                        "mix), run nothing; takes no run option, not even at its default (e.g. --model)")
    p.set_defaults(func=cmd_eval_families)

    from .evaluation.lost_in_middle import DEFAULT_MAX_NEW_TOKENS as LIM_MAX_NEW_TOKENS
    from .evaluation.suite import DEFAULT_ITEMS as SUITE_DEFAULT_ITEMS

    p = sub.add_parser("eval", help="every task family x every method side by side (one table, JSON, Markdown)")
    _add_model_args(p)
    p.add_argument("--families", help="comma-separated: counterfact, conflict, instructions, lost-in-middle (default: all)")
    p.add_argument("--methods", help="comma-separated: unsteered, prompt-markers, prompt-important, pasta, spa, seka, "
                   "adaseka-attention, adaseka-embedding (default: all)")
    p.add_argument("--items", help="items per family: N, or family=N pairs (conflict counts cases, four per item: "
                   "a multiple of 4; default: "
                   + ", ".join(f"{f}={n}" for f, n in SUITE_DEFAULT_ITEMS.items())
                   + "; lost-in-middle counts questions, each asked with the gold passage first, middle and last)")
    p.add_argument("--seed", type=int, default=0,
                   help="item seed: 0 (default) gives the test items; any other seed dev items (counterfact: dev "
                   "entities; conflict: the dev split; lost-in-middle: NQ-open questions from 2000 on; instructions: "
                   "the same templates reshuffled, no prompt equal to a test prompt)")
    p.add_argument("--counterfact", metavar="PATH", help="a counterfact.json (public format; default: our generated items)")
    p.add_argument("--nq", metavar="PATH", help="NQ-open oracle file for lost-in-middle (without it the family is skipped): JSON lines, "
                        "gzipped or not, one {\"question\", \"answers\": [...], \"ctxs\": [{\"title\", \"text\", "
                        "\"isgold\"}]} per line (or a JSON list of them), as the Lost in the Middle study's "
                        "qa_data/nq-open-oracle.jsonl.gz")
    p.add_argument("--nq-policies", default="middle", help="highlight policies: middle (default), gold, retriever")
    p.add_argument("--nq-passages", type=_passage_count, default=10, help="passages per lost-in-middle context (default 10)")
    p.add_argument("--nq-first", type=_nonneg_int, default=0,
                   help="first NQ-open question of the lost-in-middle items (default 0), counted from 0 with "
                   "--seed 0 (the test questions, 0-1999) and from 2000 with any other seed (the dev questions): "
                   "run further questions in a second run")
    p.add_argument("--nq-max-new-tokens", type=_positive_int, default=LIM_MAX_NEW_TOKENS,
                   help=f"greedy answer length for lost-in-middle exact match (default {LIM_MAX_NEW_TOKENS}, the "
                   "Lost-in-the-Middle code's)")
    p.add_argument("--pasta-heads", metavar="FILE", help="PASTA head profile from `seka-rag profile-pasta` "
                   "(default: profile now with a small budget)")
    p.add_argument("--pasta-profile-items", type=_positive_int, default=8, help="dev cases for on-the-fly PASTA profiling")
    p.add_argument("--pasta-profile-layers", type=_int_list,
                   help="layers for on-the-fly PASTA profiling (default: every second layer)")
    p.add_argument("--pasta-top", type=_positive_int, default=8, help="heads kept by on-the-fly PASTA profiling")
    p.add_argument("--pasta-alpha", type=_finite_float, help="PASTA's alpha (default: the profile's)")
    p.add_argument("--spa-strength", type=_finite_float, help="SPA's strength omega (default 1.5)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64,
                   help="answer length for the instruction checkers (default 64; lost-in-middle: --nq-max-new-tokens)")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="prompts per forward pass (default 8; lost in the middle: --nq-batch-size)")
    p.add_argument("--nq-batch-size", type=_positive_int, default=4,
                   help="lost-in-middle prompts per forward pass (default 4: they are long; lower it to save memory)")
    p.add_argument("--per-item", action="store_true", help="keep every item's result (answers, margins) in the JSON")
    p.add_argument("--out", help="write every result as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--plot", metavar="PNG", help="bar chart of the main table (matplotlib)")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="run nothing: print one table (and the paired differences) from earlier "
                   "--out files of the same items, e.g. methods run in parallel processes")
    p.add_argument("--paired-against", metavar="METHOD",
                   help="the method the paired table subtracts, item by item (default unsteered; e.g. seka to "
                   "compare the routers with plain SEKA); with another method --out also stores these "
                   "differences under paired_against")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("profile-pasta", help="choose PASTA's heads on dev conflict cases and save the profile (JSON)")
    _add_model_args(p, experts=False)
    p.add_argument("--out", required=True, help="output JSON file (pass it to `seka-rag eval --pasta-heads`)")
    p.add_argument("--items", type=_positive_int, default=16, help="dev conflict cases to profile on (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev cases' sample (default 0)")
    p.add_argument("--alpha", type=_finite_float, default=0.01, help="PASTA's alpha (default 0.01, the paper's)")
    p.add_argument("--top", type=_positive_int, default=8, help="heads to select (default 8)")
    p.add_argument("--layers", type=_int_list, help="layers to profile (default: all)")
    p.add_argument("--proxy", default="divergence", choices=["divergence", "full"],
                   help="head score: the margin at the first token where the two answers differ (default, one "
                        "forward per case) or both whole answers scored (full)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.set_defaults(func=cmd_profile_pasta)

    p = sub.add_parser("sensitivity", help="sweep gains, layer sets and the head threshold on dev data; tables, heat-maps")
    _add_model_args(p, experts=False)
    p.add_argument("--items", type=_positive_int, default=16, help="dev conflict items (x 4 cases; default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev items' sample (default 0)")
    p.add_argument("--gains-pos", type=_float_list, default=[1.0, 2.0, 4.0, 8.0, 16.0], help="g+ values")
    p.add_argument("--gains-neg", type=_float_list, default=[0.0, 0.5, 1.0, 2.0, 4.0], help="g- values")
    p.add_argument("--layer-sets", default="default,last-8,last-12,middle-8,all",
                   help="comma-separated: default, all, first-N, last-N, middle-N")
    p.add_argument("--delta-quantiles", type=_quantile_list, default=[0.0, 0.25, 0.5, 0.75],
                   help="head thresholds as quantiles of the per-head key shift")
    p.add_argument("--scorer", default="first-token", choices=["first-token", "shared-prefix"],
                   help="answer score: first-token proxy (default, one forward per case) or the full answers "
                        "from one steered prefill per prompt (shared-prefix)")
    p.add_argument("--unit-scale", action="store_true", help="ignore the projection's per-layer gain factors")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--out-dir", default="sensitivity-results",
                   help="JSON, Markdown and PNGs go here (default sensitivity-results/; in a checkout, `make "
                        "sensitivity` writes docs/sensitivity/)")
    p.add_argument("--no-plots", action="store_true", help="skip the heat-maps (no matplotlib needed)")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("gain-scale", help="a task family's score at scaled-down SEKA gains, on dev items "
                       "(long contexts, instructions, conflicts, CounterFact format); --trade-off picks a factor")
    _add_model_args(p, experts=False)
    p.add_argument("--family", choices=list(_GAIN_SCALE_ITEMS), type=_gain_scale_family,
                   help="the family to sweep (required unless --trade-off)")
    p.add_argument("--scales", type=_float_list,
                   help="multiples of the projection's default gains (default 1,0.5,0.25,0.125)")
    p.add_argument("--items", type=_positive_int,
                   help="dev items: questions (x 3 gold positions) for lost-in-middle (default 8), items for "
                   "instructions (8), conflict items (x 4 cases; 40), CounterFact-format items (64)")
    p.add_argument("--nq", metavar="PATH", help="NQ-open oracle file (lost-in-middle)")
    p.add_argument("--nq-passages", type=_passage_count, help="passages per context (lost-in-middle; default 5)")
    p.add_argument("--nq-policies", help="highlight policies (lost-in-middle; default gold,middle)")
    p.add_argument("--first-question", type=_nonneg_int,
                   help="first NQ question of the dev items (lost-in-middle; default 2000; the suite's test items "
                   "start at 0)")
    p.add_argument("--em", action="store_true", help="also generate and score best-subspan EM (lost-in-middle; slower)")
    p.add_argument("--seed", type=int, help="item seed (instructions, counterfact; default 1; for instructions, 0 "
                   "gives the suite's test items, which the sweep's title then names)")
    p.add_argument("--max-new-tokens", type=_positive_int, help="answer length (default: 48 for instructions, 100 for "
                   "lost-in-middle answers with --em; the other families are scored, not generated)")
    p.add_argument("--batch-size", type=_positive_int, help="prompts per forward pass (default: 4 for the long lost-in-middle "
                   "prompts, 8 for the others)")
    p.add_argument("--out-dir", help="JSON and Markdown go here (default sensitivity-results/)")
    p.add_argument("--trade-off", nargs="+", metavar="JSON",
                   help="run nothing: compare earlier gain-scale JSON files across families and print the scale "
                   "the rule picks (best mean share among the scales whose dev conflict share >= --conflict-bar)")
    p.add_argument("--conflict-bar", type=float,
                   help="dev conflict share a scale must keep to be picked (with --trade-off; default 0.95)")
    p.add_argument("--apply", metavar="PROJECTION", help="with --trade-off: write this projection with its default "
                   "gains times the picked scale to --write")
    p.add_argument("--write", metavar="PATH", help="where --apply writes the rescaled projection")
    p.set_defaults(func=cmd_gain_scale)

    p = sub.add_parser("demo", help="steered vs unsteered answers on a few conflicts")
    _add_model_args(p)
    _add_steer_args(p)
    p.add_argument("--max-new-tokens", type=_positive_int, default=24,
                   help="new tokens per answer (default 24: room for a model that restates the sentence)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="overhead benchmark: latency, decode speed, peak memory")
    _add_model_args(p)
    p.add_argument("--lengths", type=_int_list, default=[256, 1024, 2048],
                   help="prompt lengths in tokens (default 256,1024,2048); each, with the emphasis markers and "
                        "--decode-tokens, must fit the model's window")
    p.add_argument("--runs", type=_positive_int, default=7,
                   help="interleaved timed latency runs per configuration, more for cheap shapes "
                        "(--short-run-factor); medians are reported (default 7; refused with --no-latency)")
    p.add_argument("--short-run-factor", type=_positive_int, default=4,
                   help="shapes (tokens x batch) at most 1/16 of the largest get up to this many times --runs, "
                        "since their short runs are the noisiest and cost little (default 4; 1: --runs everywhere)")
    p.add_argument("--decode-tokens", type=_positive_int, default=16,
                   help="greedy tokens decoded after each prefill, for tokens/s (default 16)")
    p.add_argument("--batch-size", type=_int_list, default=[1], help="batch sizes, e.g. 1,4 (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes (a process of their own per configuration)")
    p.add_argument("--mmap-threshold", type=_mmap_threshold, default=_MMAP_UNSET, metavar="BYTES|default",
                   help="glibc's mmap threshold in the CPU memory probes (default 65536: peak RSS follows the "
                        "tensors alive at once; 'default': glibc's adaptive threshold, whose caching moves peaks "
                        "by about 2 %% between processes); a MALLOC_MMAP_THRESHOLD_ already set is kept")
    p.add_argument("--probe-start", choices=("fork", "spawn"), default=None,
                   help="how each CPU memory probe gets a process of its own: 'fork' (the default for CPU models "
                        "on Linux, refused elsewhere): forked from one process that loaded the model once; 'spawn' "
                        "(the default elsewhere): a fresh interpreter that loads the model itself (about 7 s more "
                        "per probe on the default model)")
    p.add_argument("--memory-in-process", action="store_true",
                   help="CUDA only: probe peak memory (max_memory_allocated, reset per configuration) in this "
                        "process instead of a fresh process per configuration; saves a model load per probe")
    p.add_argument("--no-latency", action="store_true",
                   help="only the memory probes, each run once (they may run beside other work; latency needs a "
                        "quiet machine)")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="combine earlier --out files of one model, dtype and device, measured with one highlighted "
                        "share (and one --decode-tokens in their latency runs), e.g. a --no-memory and a "
                        "--no-latency run, into --out and --plots; measures nothing and takes no run option")
    p.add_argument("--methods", default="seka",
                   help="comma-separated: prompt-markers, prompt-important, pasta, spa, seka, ada-attention, "
                        "ada-embedding, two-pass (default: seka)")
    p.add_argument("--pasta-heads", metavar="FILE",
                   help="PASTA head profile from `seka-rag profile-pasta` (default: 2 heads in each of 4 layers, where "
                        "profiling put them on the default model; PASTA's cost is eager attention in each layer "
                        "with a chosen head)")
    p.add_argument("--plots", metavar="PREFIX", help="write PREFIX-latency.png and PREFIX-memory.png (matplotlib)")
    p.add_argument("--out", default="bench-results/overhead.json",
                   help="results JSON (default bench-results/overhead.json; missing folders are created)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("set-gains", help="store default gains chosen by hand in a projection file (no model is loaded)")
    p.add_argument("projection", help="projection file (.safetensors)")
    p.add_argument("--gain-pos", type=_finite_float, help="new default g+ (the stored gain, before the per-layer scale)")
    p.add_argument("--gain-neg", type=_finite_float, help="new default g- (the stored gain, before the per-layer scale)")
    p.add_argument("--out", help="where to write the changed projection (default: over the input file)")
    p.set_defaults(func=cmd_set_gains)

    p = sub.add_parser("compare-experts", help="how different an expert set's projections are: subspace overlaps "
                                               "and edit distances (no model is loaded)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded model whose shipped expert set and projection to compare (default {DEFAULT_MODEL})")
    p.add_argument("--experts", help="expert-set directory (default: the set shipped for --model)")
    p.add_argument("--projection", help="reference projection file compared with every expert (default: the one "
                                        "shipped for --model; 'none' to compare the experts only)")
    p.add_argument("--layers", type=_int_list, help="layers to compare, e.g. 16-23 (default: the experts' edited layers)")
    p.add_argument("--json", metavar="OUT", help="also write the pairs as JSON")
    p.set_defaults(func=cmd_compare_experts)

    from .inspect import add_inspect_parser

    add_inspect_parser(sub, lambda parser: _add_model_args(parser, experts=False))
    return parser


#: Subcommands whose ``--out`` is a directory (every other ``--out`` / ``--json`` is a file).
_DIRECTORY_OUTS = ("build-experts",)


#: Subcommands that never load an expert set, and those whose methods fix the router themselves.
_NO_EXPERT_OPTIONS = ("build-projection", "calibrate", "eval-variants", "profile-pasta", "sensitivity", "gain-scale",
                      "inspect")
_NO_ROUTER_OPTION = ("eval", "eval-families", "bench")


def check_empty_options(args) -> None:
    """Refuse an option given as an empty string (``--out ""``): it would act as if it were left out."""
    empty = sorted("--" + k.replace("_", "-") for k, v in vars(args).items() if v == "" and k != "prompt")
    if empty:
        raise SekaError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: give a value, or leave "
                        f"{'it' if len(empty) == 1 else 'them'} out for the default")


def check_ignored_options(args) -> None:
    """Refuse AdaSEKA options a subcommand would silently ignore."""
    command = getattr(args, "command", None)
    expert_flags = ("--adaptive", "--experts", "--router")
    given = [flag for flag in ("--projection", *expert_flags) if getattr(args, flag[2:], None)]
    why = None
    if command == "preview":  # it tokenizes the prompt and uses no projection or expert
        why = "only shows which tokens the highlights cover (no edit runs)"
    elif command in _NO_EXPERT_OPTIONS:
        given = [flag for flag in given if flag in expert_flags]
        why = "works on the single projection and never loads an expert set"
    if why and given:
        raise SekaError(f"`seka-rag {command}` {why}, so {', '.join(given)} would be ignored; "
                        f"leave {'them' if len(given) > 1 else 'it'} out")
    if command in _NO_ROUTER_OPTION and getattr(args, "router", None):
        raise SekaError(f"`seka-rag {command}` names the router in each method (ada-attention, ada-embedding), "
                        "so --router would be ignored; leave it out")


#: Options that name files or folders, read or written: ``~`` in them is the home folder, as the shell reads
#: it in ``--out ~/x`` but not in ``--out=~/x``, which would otherwise make a folder named ``~`` here.
_PATH_OPTIONS = ("out", "json", "out_dir", "markdown", "plot", "plots", "write", "calibration_log", "projection",
                 "experts", "counterfact", "nq", "merge", "pasta_heads", "reuse", "trade_off", "apply", "cache_dir",
                 "model", "texts")


def expand_home(args) -> None:
    """Read a leading ``~`` in every path option as the home folder (in place)."""
    for attr in _PATH_OPTIONS:
        value = getattr(args, attr, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, attr, os.path.expanduser(value))
        elif isinstance(value, list) and any(isinstance(v, str) and v.startswith("~") for v in value):
            setattr(args, attr, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def check_output_paths(args) -> None:
    """Refuse output paths that cannot be written, before any model loads or work starts.

    A file output (``--out``, ``--json``, ``--markdown``, ``--plot``, ``--write``, ...) must not be an
    existing directory (for ``--plots``, a prefix, neither may its parent be a file); a directory output
    (``--out-dir``, ``build-experts --out``) must not be an existing file; no parent of either may be
    an existing file; and the place it goes must take a new file (:func:`_check_writable`). Parents
    that do not exist yet are created when the output is written.
    """
    outputs = (("out", "--out"), ("json", "--json"), ("out_dir", "--out-dir"), ("markdown", "--markdown"),
               ("plot", "--plot"), ("plots", "--plots"), ("write", "--write"))
    command = getattr(args, "command", None)
    if command != "eval-variants":  # where --calibration-log is read, not written
        outputs += (("calibration_log", "--calibration-log"),)
    for attr, flag in outputs:
        value = getattr(args, attr, None)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if attr == "out_dir" or (attr == "out" and command in _DIRECTORY_OUTS):
            if path.exists() and not path.is_dir():
                raise SekaError(f"{flag} {value!r} is a file; give a directory")
        elif path.is_dir() and attr != "plots":  # --plots is a prefix: DIR-latency.png is fine
            raise SekaError(f"{flag} {value!r} is a directory; give a file name inside it")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise SekaError(f"{flag} {value!r}: {str(parent)!r} is a file, not a directory")
                break
        _check_writable(path, flag, value, prefix=attr == "plots")


def _check_writable(path: Path, flag: str, value: str, *, prefix: bool = False) -> None:
    """:class:`SekaError` when an output plainly cannot be written, found before the work, not after it.

    An existing regular file needs write permission; an existing pipe or device (``>(cat)``,
    ``/dev/stdout``) is left to the write. Otherwise a file is made and removed again at once in the
    folder the output goes to (the output itself when it is an existing folder, else its nearest
    existing parent): permissions, a read-only disk or a pseudo file system such as ``/proc`` fail there.
    ``prefix``: ``path`` is a file-name prefix (``--plots``), never the folder itself.
    """
    import tempfile

    if path.exists() and not path.is_dir():
        if path.is_file() and not os.access(path, os.W_OK):
            raise SekaError(f"{flag} {value!r}: the file exists and cannot be written; choose another place")
        return  # a writable file, or a pipe / device: the write itself will tell
    folder = path if path.is_dir() and not prefix else next((p for p in path.parents if p.exists()), None)
    if folder is None:
        return
    try:
        handle, probe = tempfile.mkstemp(prefix=".seka-rag-check-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise SekaError(f"{flag} {value!r}: cannot write in {str(folder)!r} "
                        f"({exc.strerror or exc}); choose another place") from None


#: the options a command line spelled out (``--name`` or ``--name=value``), whatever their values
_GIVEN_OPTIONS: ContextVar[frozenset[str]] = ContextVar("seka_cli_given_options", default=frozenset())


def main(argv: list[str] | None = None) -> int:
    """Run ``seka-rag``; returns the exit status (2 for bad input, after printing why)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    token = _GIVEN_OPTIONS.set(_spelled_options(parser, args, sys.argv[1:] if argv is None else argv))
    try:
        check_empty_options(args)
        check_ignored_options(args)
        expand_home(args)
        check_output_paths(args)
        with library_progress_bars(enabled=not getattr(args, "no_progress", False)), _plain_warnings():
            return args.func(args)
    except SekaError as exc:
        print(f"seka-rag: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _GIVEN_OPTIONS.reset(token)


def _spelled_options(parser: argparse.ArgumentParser, args, words) -> frozenset[str]:
    """The options of the command that ``words`` spelled out, by their full names (argparse accepts an
    unambiguous prefix, ``--mod`` for ``--model``)."""
    sub = next((a.choices.get(getattr(args, "command", None)) for a in parser._actions
                if isinstance(a, argparse._SubParsersAction)), None)
    names = list((sub or parser)._option_string_actions)
    spelled = set()
    for word in (str(w).split("=", 1)[0] for w in words):
        if not word.startswith("--"):
            continue
        matches = [word] if word in names else [n for n in names if n.startswith(word)]
        if len(matches) == 1:
            spelled.add(matches[0])
    return frozenset(spelled)


@contextlib.contextmanager
def _plain_warnings():
    """Warnings print as ``seka-rag: warning: ...``: the file and line they would name is the launcher's
    or a library's, which tells a command-line user nothing."""
    import warnings

    original = warnings.formatwarning

    def plain(message, category, filename, lineno, line=None) -> str:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        return f"seka-rag: warning{kind}: {message}\n"

    warnings.formatwarning = plain
    try:
        yield
    finally:
        warnings.formatwarning = original


if __name__ == "__main__":
    sys.exit(main())
