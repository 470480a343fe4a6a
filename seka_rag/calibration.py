"""Per-model calibration: choose layers, per-layer construction and gains by their measured effect.

The published recipe (one construction, a fixed block of late layers) works on some models and not
on others; where in the network highlighting acts differs by model. Calibration measures it on a
synthetic dev set of two-document conflicts (never the test split):

1. **Scan**: for every layer (or group of layers) and every candidate construction — the SEKA
   projection (``seka``: head-masked g+·P+ + g-·P-) and plain key scaling (``identity``: P = I) —
   edit that unit alone and measure the highlighted answer's first-token margin (cases whose two
   answers open with the same token carry no signal and are left out).
2. **Select** few layers: the best-scanning units alone at a few gains, then greedy forward
   selection, keeping a unit only if it raises the dev share (mean margin breaks ties); contiguous
   late blocks of the SEKA construction (the published recipe's shape) compete as candidates too.
3. **Gains**: a final sweep of a common factor on the winner's gains.

The winner is written into a projection: chosen layers become its default layers, identity layers
store P+ = I, P- = 0, and each layer's relative gain is its ``layer_scale``.
"""

from __future__ import annotations

import math
import numbers
import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .evaluation.conflict import ConflictCase, conflict_cases, conflict_split
from .evaluation.scoring import continuation_ids
from .errors import SekaError
from .highlight import pad_batch
from .projection import Projection, ProjectionMeta

CONSTRUCTIONS = ("seka", "identity")


@dataclass(frozen=True)
class CalibrationConfig:
    """Budget and search space of a calibration run."""

    scan_items: int = 16  #: dev conflict items for the per-layer scan (×4 cases each)
    select_items: int = 40  #: dev items for selection and the gain sweep
    group_size: int = 1  #: layers per scanned unit (2+ to fit a slower model in the time budget)
    constructions: tuple[str, ...] = CONSTRUCTIONS
    seka_gains: tuple[float, float] = (2.0, 0.5)  #: g+, g- of the seka construction in the scan
    identity_gain: float = 1.0  #: g of the identity construction in the scan (k ← k·(1 + g/2))
    candidates: int = 6  #: best units considered by the greedy selection
    max_layers: int = 4  #: most units kept
    late_blocks: tuple[int, ...] = (4, 8, 10)  #: contiguous last-k-layer seka blocks also tried
    multipliers: tuple[float, ...] = (1.0, 2.0, 4.0)  #: gains tried for each candidate
    refine: tuple[float, ...] = (0.75, 1.5)  #: final sweep around the winner's gains
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> "CalibrationConfig":
        """Check every setting before any item is scored; a bad one raises :class:`SekaError` naming it."""
        def whole(name: str, minimum: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                raise SekaError(f"CalibrationConfig.{name} must be a whole number >= {minimum}, got {v!r}")

        def positive_numbers(name: str, values, *, allow_empty: bool = False) -> None:
            if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)) or (not values and not allow_empty):
                raise SekaError(f"CalibrationConfig.{name} must be a non-empty tuple of numbers, got {values!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not v > 0:
                    raise SekaError(f"CalibrationConfig.{name} must hold positive finite numbers, got {values!r}")

        for name in ("scan_items", "select_items", "group_size", "candidates", "max_layers", "batch_size"):
            whole(name, 1)
        whole("seed", 0)
        if isinstance(self.constructions, (str, bytes)) or not self.constructions or not set(self.constructions) <= set(CONSTRUCTIONS):
            raise SekaError(f"CalibrationConfig.constructions must name some of {CONSTRUCTIONS}, got {self.constructions!r}")
        if isinstance(self.seka_gains, (str, bytes)) or len(self.seka_gains) != 2:
            raise SekaError(f"CalibrationConfig.seka_gains must be (g+, g-), got {self.seka_gains!r}")
        positive_numbers("seka_gains", self.seka_gains)
        positive_numbers("identity_gain", (self.identity_gain,))
        positive_numbers("multipliers", self.multipliers)
        positive_numbers("refine", self.refine, allow_empty=True)
        if isinstance(self.late_blocks, (str, bytes)) or not all(
                isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in self.late_blocks):
            raise SekaError(f"CalibrationConfig.late_blocks must hold whole numbers >= 1, got {self.late_blocks!r}")
        available = len(conflict_split("dev", seed=self.seed))
        for name in ("scan_items", "select_items"):
            if getattr(self, name) > available:
                raise SekaError(f"{name} (--{name.replace('_', '-')}) = {getattr(self, name)} is more than the dev "
                                f"split's {available} items: use at most {available}")
        return self


def check_uncalibrated(projection: Projection, name: str = "this projection") -> None:
    """Refuse a projection that is calibrated already (calibration starts from a built one)."""
    if "calibration" in projection.meta.notes:
        raise SekaError(f"{name} is calibrated already: calibrate the projection it was built as "
                        "(seka-rag build-projection without --calibrate), not its calibrated copy")


@dataclass
class Trial:
    """One measured configuration."""

    stage: str
    units: list[tuple[str, list[int], float]]  #: (construction, layers, gain multiplier) edited
    share: float
    mean_margin: float
    n_cases: int

    def label(self) -> str:
        return " + ".join(f"{c}:{_fmt_layers(ls)}" + (f"×{m:g}" if m != 1 else "") for c, ls, m in self.units)

    def scaled(self, factor: float) -> list[tuple[str, list[int], float]]:
        return [(c, ls, m * factor) for c, ls, m in self.units]


@dataclass
class CalibrationResult:
    projection: Projection
    best: Trial
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    def table(self, stages: Sequence[str] = ("single", "select", "blocks", "gains")) -> str:
        # shares and margins of the answers' first tokens (unsteered: 0.500 on these counterbalanced cases)
        lines = ["| stage | configuration | first-token dev share | dev mean margin | n |", "|---|---|---:|---:|---:|"]
        for t in self.trials:
            if t.stage in stages:
                lines.append(f"| {t.stage} | {t.label()} | {t.share:.3f} | {t.mean_margin:+.3f} | {t.n_cases} |")
        return "\n".join(lines)


def _fmt_layers(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


class _FirstTokenScorer:
    """First-answer-token margins of pre-encoded cases under arbitrary per-layer edit matrices."""

    def __init__(self, model, cases: Sequence[ConflictCase], batch_size: int):
        self.model = model
        tok = model.tokenizer
        rows = []
        for c in cases:
            # the answers as the model would start them after the prompt (a leading space without a chat template)
            t, o = continuation_ids(model, c.target)[0], continuation_ids(model, c.other)[0]
            if t == o:
                continue  # both answers open with the same token: no first-token signal
            rows.append((model.encode(c.prompt, [c.highlight]), t, o))
        rows.sort(key=lambda r: -len(r[0].input_ids))
        self.batches = []
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            batch = pad_batch([r[0] for r in chunk], tok.pad_token_id, side="left").to(model.device)
            self.batches.append((batch, torch.tensor([r[1] for r in chunk]), torch.tensor([r[2] for r in chunk])))
        self.n = len(rows)

    def margins(self, matrices: dict[int, torch.Tensor] | None) -> torch.Tensor:
        out = []
        for batch, t, o in self.batches:
            ctx = self.model._editor.apply(matrices, batch.highlight_mask) if matrices else nullcontext()
            with torch.inference_mode(), ctx:
                logits = self.model._forward_logits(batch, 1)[:, -1].float()
            lp = torch.log_softmax(logits, -1)
            out.append((lp.gather(-1, t[:, None].to(lp.device)) - lp.gather(-1, o[:, None].to(lp.device)))[:, 0].cpu())
        return torch.cat(out)


def unit_matrices(projection: Projection, construction: str, layers: Sequence[int], gains: tuple[float, float],
                  identity_gain: float, multiplier: float = 1.0) -> dict[int, torch.Tensor]:
    """Edit matrices of one unit: SEKA's head-masked (g+P+ + g-P-)/2, or (g/2)·I for plain scaling."""
    h, d = projection.meta.num_kv_heads, projection.meta.head_dim
    out = {}
    for layer in layers:
        row = projection.row(layer)
        if construction == "seka":
            m = (gains[0] * projection.pos[row] + gains[1] * projection.neg[row]) / 2
            m = m * projection.head_mask[row][:, None, None].to(m.dtype)
        elif construction == "identity":
            m = identity_gain / 2 * torch.eye(d).expand(h, d, d)
        else:
            raise ValueError(f"unknown construction {construction!r}; choose from {CONSTRUCTIONS}")
        out[int(layer)] = multiplier * m
    return out


def trial_matrices(projection: Projection, units, config: CalibrationConfig) -> dict[int, torch.Tensor]:
    """Edit matrices of a whole configuration: the sum of its units' matrices per layer."""
    mats: dict[int, torch.Tensor] = {}
    for construction, ls, mult in units:
        for layer, m in unit_matrices(projection, construction, ls, config.seka_gains, config.identity_gain,
                                      mult).items():
            mats[layer] = mats.get(layer, 0) + m
    return mats


def calibrate(model, projection: Projection, config: CalibrationConfig = CalibrationConfig(), *,
              progress: bool = True) -> CalibrationResult:
    """Measure, select and store steering defaults for ``model`` (see the module docstring).

    ``projection`` is one built by :func:`~seka_rag.builder.build_projection`, not yet calibrated: a
    calibrated one has identity units and scales in place of its built layers, which a second
    calibration would take for the build's own.
    """
    if not isinstance(config, CalibrationConfig):
        raise SekaError(f"config must be a CalibrationConfig, got {type(config).__name__}")
    if not isinstance(projection, Projection):
        raise SekaError(f"projection must be a Projection (from build_projection), got {type(projection).__name__}")
    config.validate()
    check_uncalibrated(projection)
    started = time.perf_counter()
    items = conflict_split("dev", seed=config.seed)
    scan_cases = [c for it in items[: config.scan_items] for c in conflict_cases(it)]
    select_cases = [c for it in items[: config.select_items] for c in conflict_cases(it)]
    scan = _FirstTokenScorer(model, scan_cases, config.batch_size)
    select = _FirstTokenScorer(model, select_cases, config.batch_size) if config.select_items != config.scan_items else scan
    layers = projection.layers
    units = [layers[i : i + config.group_size] for i in range(0, len(layers), config.group_size)]
    trials: list[Trial] = []
    # every trial ticks the bar; the stages after the scan are adaptive, so their count is an upper bound
    n_candidates = min(config.candidates, len(config.constructions) * len(units))
    n_blocks = sum(1 for k in config.late_blocks if k <= len(layers)) * len(config.multipliers)
    bar = tqdm(total=len(config.constructions) * len(units) + n_candidates * (len(config.multipliers) + 1)
               + (n_blocks if "seka" in config.constructions else 0) + len(config.refine),
               desc="calibration: scan", disable=not progress, leave=False)

    def measure(stage, units, scorer) -> Trial:
        bar.set_description(f"calibration: {stage}", refresh=False)
        bar.update()
        margins = scorer.margins(trial_matrices(projection, units, config))
        t = Trial(stage, [(c, list(ls), float(m)) for c, ls, m in units], float((margins > 0).float().mean()),
                  float(margins.mean()), scorer.n)
        trials.append(t)
        return t

    key = lambda t: (t.share, t.mean_margin)  # noqa: E731

    # 1. scan every unit alone
    scanned = []
    for c in config.constructions:
        for u in units:
            scanned.append(measure("scan", [(c, u, 1.0)], scan))
    ranked = sorted(scanned, key=lambda t: (t.mean_margin, t.share), reverse=True)[: config.candidates]

    # 2a. the best single units, each at a few gains, on the larger dev subset
    singles = [measure("single", cand.scaled(m), select) for cand in ranked for m in config.multipliers]
    best = max(singles, key=key)
    # 2b. greedy forward selection: add units (at the chosen gain) while the dev share rises
    for cand in ranked:
        if len(best.units) >= config.max_layers:
            break
        used = {layer for _, ls, _ in best.units for layer in ls}
        if used & set(cand.units[0][1]):
            continue
        trial = measure("select", best.units + cand.scaled(best.units[0][2]), select)
        if key(trial) > key(best):
            best = trial
    # 2c. contiguous late blocks of the SEKA construction (the published recipe's shape)
    if "seka" in config.constructions:
        for k in config.late_blocks:
            if k <= len(layers):
                for m in config.multipliers:
                    block = measure("blocks", [("seka", layers[-k:], m)], select)
                    if key(block) > key(best):
                        best = block

    # 3. fine gain sweep around the winner
    chosen = best
    for factor in config.refine:
        trial = measure("gains", chosen.scaled(factor), select)
        if key(trial) > key(best):
            best = trial
    bar.close()
    return CalibrationResult(apply_calibration(projection, best, config), best, trials, time.perf_counter() - started)


def apply_calibration(projection: Projection, best: Trial, config: CalibrationConfig) -> Projection:
    """A copy of ``projection`` whose defaults are the calibrated layers, constructions and gains."""
    pos, neg = projection.pos.clone(), projection.neg.clone()
    head_mask = projection.head_mask.clone()
    scale = torch.ones(len(projection.layers))
    g_pos, g_neg = config.seka_gains
    chosen: list[int] = []
    for construction, ls, mult in best.units:
        for layer in ls:
            row = projection.row(layer)
            chosen.append(layer)
            scale[row] = mult
            if construction == "identity":
                d = projection.meta.head_dim
                pos[row] = torch.eye(d).expand_as(pos[row])
                neg[row] = torch.zeros_like(neg[row])
                head_mask[row] = True
                scale[row] = mult * config.identity_gain / g_pos  # (g+ · scale)/2 · I = (g·mult/2) · I
    notes = dict(projection.meta.notes)
    notes["calibration"] = dict(
        units=[[c, ls, m] for c, ls, m in best.units], dev_share=best.share,
        dev_mean_margin=best.mean_margin, dev_cases=best.n_cases, config=asdict(config),
    )
    constructions = sorted({c for c, _, _ in best.units})
    meta = replace(projection.meta, gain_pos=g_pos, gain_neg=g_neg, default_layers=sorted(chosen),
                   construction="+".join(constructions) if len(constructions) > 1 else constructions[0],
                   notes=notes)
    return Projection(meta=ProjectionMeta(**asdict(meta)), pos=pos, neg=neg, u_pos=projection.u_pos,
                      s_pos=projection.s_pos, u_neg=projection.u_neg, s_neg=projection.s_neg,
                      head_shift=projection.head_shift, head_mask=head_mask, layer_scale=scale)


def evaluate_trials(model, projection: Projection, trials: Sequence[Trial], config: CalibrationConfig = CalibrationConfig(),
                    *, split: str = "test", items: int | None = None, progress: bool = True) -> list[tuple[Trial, float, float, int]]:
    """Re-measure calibration trials on another split with the same first-token proxy.

    Returns (trial, share, mean margin, cases) per trial, so dev and test shares can be put side by side.
    """
    cases = [c for it in conflict_split(split, n=items, seed=config.seed) for c in conflict_cases(it)]
    scorer = _FirstTokenScorer(model, cases, config.batch_size)
    out = []
    for trial in tqdm(trials, desc=f"{split} split", disable=not progress, leave=False):
        margins = scorer.margins(trial_matrices(projection, trial.units, config) or None)
        out.append((trial, float((margins > 0).float().mean()), float(margins.mean()), scorer.n))
    return out
