"""How sensitive SEKA is to its settings: gains, the edited layers and the head threshold δ (``seka-rag sensitivity``).

Two slices of the settings space, each scored on **dev** conflict cases
(:func:`~seka_rag.evaluation.conflict.conflict_split` ``("dev")``, the four cases of each item:
disjoint by entity from every test item):

* **gains** — every (g+, g-) pair of a grid, on the projection's default layers and head mask;
* **layers × δ** — named layer sets (``default``, ``last-8``, ``last-12``, ``middle-8``, ``all``;
  ``first-N`` / ``last-N`` / ``middle-N`` for any N) × head thresholds δ taken as quantiles of the
  projection's per-head key shift (heads with shift ≥ δ are kept: :meth:`Projection.with_delta`),
  at the projection's default gains.

Each point is the share of cases whose highlighted answer wins and the mean margin, measured with
the first-token proxy of the calibration (one forward per case; the prompts are encoded once) or,
with ``scorer="shared-prefix"``, the full answers scored from one steered prefill per prompt.

Gains are nominal: a calibrated projection's per-layer ``layer_scale`` multiplies them (the
effective gain of a layer is ``layer_scale · g``) unless ``unit_scale=True``.

This **reports** sensitivity. It never changes a projection: the shipped defaults are chosen by the
steering-quality calibration (``seka-rag build-projection --calibrate``), on its own dev budget.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..calibration import _fmt_layers
from ..errors import SekaError
from .stats import format_table

DEFAULT_GAINS_POS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_GAINS_NEG: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
DEFAULT_LAYER_SETS: tuple[str, ...] = ("default", "last-8", "last-12", "middle-8", "all")
DEFAULT_QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
#: Dev conflict items (× 4 cases) per point.
DEFAULT_ITEMS = 16
SCORERS = ("first-token", "shared-prefix")

_SET = re.compile(r"^(first|last|middle)-(\d+)$")


def check_set_names(names: Sequence[str]) -> list[str]:
    """``names`` if each is a known layer-set name (see :func:`layer_sets`), else :class:`SekaError`."""
    names = list(names)
    bad = [n for n in names if n not in ("default", "all") and not (_SET.match(n) and int(_SET.match(n).group(2)) > 0)]
    if bad or not names:
        raise SekaError(f"unknown layer sets {bad or names}: use default, all, first-N, last-N or middle-N")
    return names


def layer_sets(projection, names: Sequence[str] = DEFAULT_LAYER_SETS) -> dict[str, list[int]]:
    """``{name: layers}`` of named layer sets among the projection's layers.

    ``default`` (its default layers), ``all`` (every layer it covers), ``first-N`` / ``last-N`` /
    ``middle-N`` (N of its layers, clipped to what it covers). A set equal to an earlier one is
    measured once, under both names (``"default=last-8"`` when the default layers are the last 8).
    :class:`SekaError` for an unknown name.
    """
    covered = sorted(projection.layers)
    out: dict[str, list[int]] = {}
    for name in check_set_names(names):
        if name == "default":
            layers = sorted(projection.meta.default_layers or covered)
        elif name == "all":
            layers = covered
        else:
            m = _SET.match(name)
            k = min(int(m.group(2)), len(covered))
            if k < int(m.group(2)):
                import warnings

                warnings.warn(f"layer set {name} asks for {m.group(2)} layers, but the projection covers "
                              f"{len(covered)}: using all {len(covered)}", stacklevel=2)
            start = {"first": 0, "last": len(covered) - k, "middle": (len(covered) - k) // 2}[m.group(1)]
            layers = covered[start:start + k]
        same = next((k for k, v in out.items() if v == layers), None)
        if same is None:
            out[name] = layers
        else:  # one point for both names, e.g. "default=last-8"
            out = {(f"{k}={name}" if k == same else k): v for k, v in out.items()}
    return out


def delta_values(projection, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> list[tuple[float, float]]:
    """``(quantile, δ)`` pairs: δ the quantile of the projection's per-head key shift (all its layers)."""
    import torch

    bad = [q for q in quantiles if not 0 <= q < 1]
    if bad or not quantiles:
        raise SekaError(f"δ quantiles must be in [0, 1), got {list(quantiles)}")
    shift = projection.head_shift.flatten().float()
    return [(float(q), float(torch.quantile(shift, float(q)))) for q in quantiles]


@dataclass
class SweepPoint:
    """One measured setting: its gains, layers and head mask, and the share / mean margin on the dev cases."""

    gain_pos: float
    gain_neg: float
    layer_set: str
    layers: list[int]
    quantile: float | None  #: None: the projection's own head mask
    delta: float | None
    heads_kept: int
    heads_total: int
    share: float
    mean_margin: float
    n: int

    def cell(self) -> str:
        return f"{100 * self.share:.1f} ({self.mean_margin:+.2f})"


@dataclass
class SensitivityResult:
    """The two slices of a sweep (see the module docstring) and the unsteered reference."""

    model: str
    scorer: str
    n_items: int
    n_cases: int
    seed: int
    unit_scale: bool
    defaults: dict[str, Any]
    unsteered: SweepPoint
    gains: list[SweepPoint] = field(default_factory=list)
    layers: list[SweepPoint] = field(default_factory=list)
    seconds: float = 0.0

    def gains_table(self, markdown: bool = False) -> str:
        """Rows g+, columns g-: ``share % (mean margin)``."""
        pos = sorted({p.gain_pos for p in self.gains})
        neg = sorted({p.gain_neg for p in self.gains})
        at = {(p.gain_pos, p.gain_neg): p for p in self.gains}
        body = [[f"g+ {gp:g}", *(at[(gp, gn)].cell() if (gp, gn) in at else "-" for gn in neg)] for gp in pos]
        return format_table(["", *(f"g- {gn:g}" for gn in neg)], body, markdown=markdown)

    def _quantiles(self) -> list[tuple[float, float]]:
        return sorted({(p.quantile, p.delta) for p in self.layers})

    def layers_table(self, markdown: bool = False) -> str:
        """Rows layer sets, columns δ quantiles: ``share % (mean margin)``."""
        sets = list(dict.fromkeys(p.layer_set for p in self.layers))
        qs = self._quantiles()
        at = {(p.layer_set, p.quantile): p for p in self.layers}
        body = [[f"{s} ({_fmt_layers(next(p.layers for p in self.layers if p.layer_set == s))})",
                 *(at[(s, q)].cell() if (s, q) in at else "-" for q, _ in qs)] for s in sets]
        return format_table(["layers", *(f"q{q:g} (δ {d:.3f})" for q, d in qs)], body, markdown=markdown)

    def text(self, markdown: bool = False) -> str:
        u = self.unsteered
        head = (f"SEKA sensitivity on {self.model}: {self.n_cases} dev conflict cases ({self.n_items} items x 4), "
                f"{self.scorer} scorer; cells: share % where the highlighted answer wins (mean margin, nats); "
                f"unsteered {100 * u.share:.1f} % ({u.mean_margin:+.2f}). Defaults: g+ {self.defaults['gain_pos']:g}, "
                f"g- {self.defaults['gain_neg']:g}, layers {_fmt_layers(self.defaults['layers'])}"
                + ("" if self.unit_scale else " (gains x the projection's layer_scale)") + ".")
        title = "## " if markdown else ""
        parts = [head, "", f"{title}Gains (g+ rows, g- columns), default layers and heads", self.gains_table(markdown),
                 "", f"{title}Layer sets x head threshold δ (quantile of the per-head key shift), default gains",
                 self.layers_table(markdown),
                 "", "This reports sensitivity on dev data; the shipped defaults come from the steering-quality "
                 "calibration."]
        return "\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "scorer": self.scorer, "items": self.n_items, "cases": self.n_cases,
            "seed": self.seed, "split": "dev", "unit_scale": self.unit_scale, "defaults": self.defaults,
            "unsteered": dataclasses.asdict(self.unsteered), "gains": [dataclasses.asdict(p) for p in self.gains],
            "layers_delta": [dataclasses.asdict(p) for p in self.layers], "seconds": self.seconds,
        }

    def heatmaps(self, out_dir: str | Path, stem: str) -> list[Path]:
        """Write the share heat-maps ``{stem}-gains.png`` (g+ × g-) and ``{stem}-layers-delta.png`` (layers × δ)."""
        figure_cls, canvas_cls = _matplotlib()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pos = sorted({p.gain_pos for p in self.gains})
        neg = sorted({p.gain_neg for p in self.gains})
        at = {(p.gain_pos, p.gain_neg): p for p in self.gains}
        grid = [[at[(gp, gn)] if (gp, gn) in at else None for gn in neg] for gp in pos]
        default = (self.defaults["gain_pos"], self.defaults["gain_neg"])
        mark = (pos.index(default[0]), neg.index(default[1])) if default[0] in pos and default[1] in neg else None
        paths = [out_dir / f"{stem}-gains.png", out_dir / f"{stem}-layers-delta.png"]
        _heatmap(figure_cls, canvas_cls, grid, [f"{g:g}" for g in pos], [f"{g:g}" for g in neg], "g+", "g-",
                 f"{self.model}: share where the highlight wins\n(default layers; unsteered "
                 f"{100 * self.unsteered.share:.0f} %; {self.n_cases} dev cases; red: default)", mark, paths[0],
                 heads=False)
        sets = list(dict.fromkeys(p.layer_set for p in self.layers))
        qs = self._quantiles()
        at2 = {(p.layer_set, p.quantile): p for p in self.layers}
        grid2 = [[at2.get((s, q)) for q, _ in qs] for s in sets]
        row = next((i for i, name in enumerate(sets) if "default" in name.split("=")), None)
        col = next((j for j, (q, _) in enumerate(qs) if q == self.defaults.get("quantile")), None)
        mark2 = None if row is None or col is None else (row, col)
        labels = [f"{name}\n({_fmt_layers(next(p.layers for p in self.layers if p.layer_set == name))})"
                  for name in sets]
        _heatmap(figure_cls, canvas_cls, grid2, labels, [f"q{q:g}\nδ {d:.3f}" for q, d in qs], "layer set",
                 "head threshold δ (quantile of key shift)",
                 f"{self.model}: share where the highlight wins\n(g+ {self.defaults['gain_pos']:g}, "
                 f"g- {self.defaults['gain_neg']:g}; cells: share, heads kept; red: default)", mark2, paths[1],
                 heads=True)
        return paths


def require_matplotlib(needed_for: str = "the heat-maps", otherwise: str = "pass --no-plots"):
    """matplotlib's Figure and Agg canvas classes; :class:`SekaError` when matplotlib is missing, naming
    what needs it (``needed_for``) and how to do without (``otherwise``)."""
    return _matplotlib(needed_for, otherwise)


def _matplotlib(needed_for: str = "the heat-maps", otherwise: str = "pass --no-plots"):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SekaError(f"matplotlib is needed for {needed_for}: pip install matplotlib (seka-rag's [bench] extra "
                        f"has it), or {otherwise}") from None
    return Figure, FigureCanvasAgg


def _heatmap(figure_cls, canvas_cls, grid, rows, cols, ylabel, xlabel, title, mark, path: Path, heads: bool) -> None:
    import numpy as np

    values = np.array([[math.nan if p is None else p.share for p in row] for row in grid], dtype=float)
    fig = figure_cls(figsize=(1.3 * len(cols) + 2.6, 0.75 * len(rows) + 1.9), dpi=120)
    canvas_cls(fig)  # the Agg canvas: no display, no global backend state
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(grid):
        for j, p in enumerate(row):
            if p is None:
                continue
            extra = f"{p.heads_kept}/{p.heads_total}" if heads else f"{p.mean_margin:+.1f}"
            label = f"{100 * p.share:.0f}%\n{extra}"
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color="white" if p.share < 0.6 else "black")
    if mark is not None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share")
    fig.tight_layout()
    fig.savefig(path)


def _unit_scaled(projection):
    import torch

    return dataclasses.replace(projection, layer_scale=torch.ones(len(projection.layers)))


class _Scorer:
    """Margins of the dev cases under one setting (projection variant, gains, layers)."""

    def __init__(self, model, items: int, seed: int, scorer: str, batch_size: int):
        from .conflict import conflict_cases, conflict_split

        if scorer not in SCORERS:
            raise SekaError(f"unknown scorer {scorer!r}; choose from {', '.join(SCORERS)}")
        self.model, self.kind, self.batch_size = model, scorer, batch_size
        try:
            split = conflict_split("dev", n=items, seed=seed)
        except ValueError as exc:
            raise SekaError(str(exc)) from None
        if scorer == "first-token":
            from ..calibration import _FirstTokenScorer

            self.first = _FirstTokenScorer(model, [c for it in split for c in conflict_cases(it)], batch_size)
            self.n = self.first.n
        else:
            from .families import conflict_family_items

            self.items = conflict_family_items(4 * len(split), seed, split="dev")
            self.n = len(self.items)

    def __call__(self, projection, gain_pos: float | None, gain_neg: float | None, layers) -> tuple[float, float]:
        """(share of wins, mean margin); ``projection`` None: unsteered."""
        from ..steering import SteeringConfig, edit_matrices

        if self.kind == "first-token":
            matrices = None if projection is None else edit_matrices(
                projection, SteeringConfig(gain_pos=gain_pos, gain_neg=gain_neg, layers=layers))
            margins = [float(m) for m in self.first.margins(matrices)]
        else:
            from .families import score_items

            model = self.model
            if projection is not None and projection is not model.projection:
                # a view of the model with this projection: the shared model, which other threads may be
                # using meanwhile, keeps its own
                model = copy.copy(model)
                model.projection = projection
            kw = dict(steer=False) if projection is None else dict(gain_pos=gain_pos, gain_neg=gain_neg, layers=layers)
            margins = score_items(model, self.items, batch_size=self.batch_size, progress=False, **kw)
        if not margins:
            raise SekaError("no dev case has answers whose first tokens differ")
        return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)


def sensitivity_sweep(
    model,
    *,
    items: int = DEFAULT_ITEMS,
    seed: int = 0,
    gains_pos: Sequence[float] = DEFAULT_GAINS_POS,
    gains_neg: Sequence[float] = DEFAULT_GAINS_NEG,
    sets: Sequence[str] = DEFAULT_LAYER_SETS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    scorer: str = "first-token",
    batch_size: int = 8,
    unit_scale: bool = False,
    progress: bool = True,
) -> SensitivityResult:
    """Measure both slices (see the module docstring) on ``items`` dev conflict items (× 4 cases)."""
    from tqdm.auto import tqdm

    if model.projection is None:
        raise SekaError("the sensitivity sweep needs a projection: load the model with one")
    if getattr(model, "experts", None) is not None:
        raise SekaError("the sensitivity sweep measures the single projection: load the model without experts")
    if not gains_pos or not gains_neg:
        raise SekaError("give at least one g+ and one g- value")
    started = time.perf_counter()
    base = _unit_scaled(model.projection) if unit_scale else model.projection
    meta = base.meta
    named = layer_sets(base, sets)
    deltas = delta_values(base, quantiles)
    default_layers = sorted(meta.default_layers or base.layers)
    score = _Scorer(model, items, seed, scorer, batch_size)
    total_heads = int(base.head_mask.numel())

    def kept(projection, layers) -> tuple[int, int]:
        rows = [projection.row(layer) for layer in layers]
        return int(projection.head_mask[rows].sum()), int(projection.head_mask[rows].numel())

    # the quantile whose threshold keeps exactly the projection's own heads (the default mask), if any
    default_q = next((q for q, d in deltas if bool((base.with_delta(d).head_mask == base.head_mask).all())), None)
    share, margin = score(None, None, None, None)
    unsteered = SweepPoint(0.0, 0.0, "none", [], None, None, 0, total_heads, share, margin, score.n)
    result = SensitivityResult(
        model=getattr(model, "model_id", ""), scorer=scorer, n_items=items, n_cases=score.n, seed=seed,
        unit_scale=unit_scale, unsteered=unsteered,
        defaults={"gain_pos": meta.gain_pos, "gain_neg": meta.gain_neg, "layers": default_layers,
                  "delta": meta.delta, "quantile": default_q, "heads_kept": int(base.head_mask.sum()),
                  "heads_total": total_heads,
                  "layer_scale": [float(x) for x in base.layer_scale]},
    )
    points = [("gains", gp, gn, "default", default_layers, None) for gp in gains_pos for gn in gains_neg]
    points += [("layers", meta.gain_pos, meta.gain_neg, name, layers, q) for name, layers in named.items()
               for q in deltas]
    for slice_, gp, gn, name, layers, q in tqdm(points, desc="sensitivity", disable=not progress, leave=False):
        projection = base if q is None else base.with_delta(q[1])
        share, margin = score(projection, float(gp), float(gn), layers)
        k, t = kept(projection, layers)
        point = SweepPoint(float(gp), float(gn), name, list(layers), None if q is None else q[0],
                           None if q is None else q[1], k, t, share, margin, score.n)
        (result.gains if slice_ == "gains" else result.layers).append(point)
    result.seconds = time.perf_counter() - started
    return result


def write_outputs(result: SensitivityResult, out_dir: str | Path, stem: str, *, plots: bool = True) -> list[Path]:
    """``{stem}.json``, ``{stem}.md`` and (``plots``) the two heat-map PNGs under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(result.text(markdown=True), encoding="utf-8")
    if plots:
        paths += result.heatmaps(out_dir, stem)
    return paths


__all__ = [
    "DEFAULT_GAINS_NEG",
    "DEFAULT_GAINS_POS",
    "DEFAULT_ITEMS",
    "DEFAULT_LAYER_SETS",
    "DEFAULT_QUANTILES",
    "SCORERS",
    "SensitivityResult",
    "SweepPoint",
    "check_set_names",
    "delta_values",
    "layer_sets",
    "require_matplotlib",
    "sensitivity_sweep",
    "write_outputs",
]
