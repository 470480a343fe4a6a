"""How a task family's score moves when SEKA's gains are scaled down (``seka-rag gain-scale``).

The calibration's layers and per-layer scales come from short two-document conflicts. This sweep
asks how well its gains carry over to other families — long retrieved contexts, highlighted
instructions, CounterFact-format conflicts — by running one family at
``scale × (g+, g-)`` of the projection's defaults for each scale (same layers and heads), on **dev**
items kept apart from the suite's test items (instructions of seed 0 and lost-in-middle questions
below 2000 are test items: the sweep's title then says so, and ``--trade-off`` warns):

``lost-in-middle``  NQ-open questions from ``first_question`` on (default 2000; the suite's test
                    questions are 0, 1, 2, ...), gold passage first / middle / last, under the given
                    highlight policies. Metric: the change of log p(gold answer) vs unsteered (its
                    mean with a 95 % interval, and the share of rises), pooled and per gold position;
                    with ``em=True`` also the best-subspan EM of the greedy answer.
``instructions``    instruction items of seed ``seed`` (default 1; the suite's test items are seed
                    0). Metric: the checkers' pass rate of the greedy answer, with the unsteered pass
                    rate as scale 0.
``conflicts``       the two-document conflict **dev** split (the calibration's own split; 4 cases per
                    item). Metric: share of cases where the highlighted document's answer wins, and
                    the mean answer margin; unsteered as scale 0.
``counterfact``     CounterFact-format items of our own generator on **dev** entities (seed ``seed``).
                    Metric: efficacy, P(new target's first token) > P(old one's); unsteered as scale 0.

Together the four show what a common gain factor trades: the conflict families reward strong edits,
generation and long contexts punish them. The sweeps only report. :func:`trade_off` joins them and
picks a factor by a fixed rule, and :func:`apply_scale` writes that factor into a projection's
default gains — the calibration's last step (``seka-rag gain-scale --trade-off FILES --apply P
--write P``, ``make gain-trade-off``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SekaError
from ..projection import _same_model
from .lost_in_middle import DEFAULT_MAX_NEW_TOKENS as LIM_MAX_NEW_TOKENS
from .lost_in_middle import DEV_FIRST_QUESTION
from .stats import format_table

GAIN_SCALE_FAMILIES: tuple[str, ...] = ("lost-in-middle", "instructions", "conflicts", "counterfact")
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
#: Seed of the dev instruction items (the suite's test items use seed 0).
DEV_SEED = 1


@dataclass
class GainScaleRow:
    """One measured cell: a scale (0: unsteered), the gains it means, and a metric with its interval."""

    scale: float
    gain_pos: float | None
    gain_neg: float | None
    cell: str  #: e.g. "middle / all" (policy / gold position) or "all" / an instruction type
    metric: str
    value: float
    ci: tuple[float, float] | None
    n: int


@dataclass
class GainScaleResult:
    """Every row of a sweep and how it was run."""

    family: str
    model: str
    settings: dict[str, Any]
    rows: list[GainScaleRow] = field(default_factory=list)
    seconds: float = 0.0

    def table(self, markdown: bool = False) -> str:
        """One line per (scale, cell, metric)."""
        lines = []
        for r in self.rows:
            ci = "" if r.ci is None else f"[{_fmt(r.metric, r.ci[0])}, {_fmt(r.metric, r.ci[1])}]"
            gains = "unsteered" if r.gain_pos is None else f"{r.gain_pos:g} / {r.gain_neg:g}"
            lines.append([f"{r.scale:g}", gains, r.cell, r.metric, _fmt(r.metric, r.value), ci, str(r.n)])
        head = ["scale", "g+ / g-", "cell", "metric", "value", "95% CI", "n"]
        return format_table(head, lines, markdown=markdown)

    @property
    def split(self) -> str:
        """``"test"`` when the sweep ran on the suite's test items (instructions of seed 0, NQ-open questions
        before the dev range), else ``"dev"``: a gain chosen on test items is not a dev choice."""
        if self.family == "instructions" and self.settings.get("seed") == 0:
            return "test"
        if self.family == "lost-in-middle" and self.settings.get("first_question", DEV_FIRST_QUESTION) < DEV_FIRST_QUESTION:
            return "test"
        return "dev"

    def text(self, markdown: bool = False) -> str:
        title = (f"Gain scale on {self.split} {self.family} items, {self.model} "
                 f"({', '.join(f'{k} {v}' for k, v in self.settings.items() if k != 'command')}; "
                 f"{self.seconds:.0f} s)")
        return (f"## {title}\n\n" if markdown else f"{title}\n") + self.table(markdown) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "model": self.model, "settings": self.settings, "seconds": self.seconds,
                "rows": [asdict(r) for r in self.rows]}


def _fmt(metric: str, value: float) -> str:
    return f"{value:+.2f}" if metric.startswith(("dlogp", "margin")) else f"{100 * value:.1f}"


def check_scales(scales: Sequence[float]) -> list[float]:
    """``scales`` if each is a positive finite number, else :class:`SekaError`."""
    scales = [float(s) for s in scales]
    if not scales or any(not (s > 0 and s < float("inf")) for s in scales):
        raise SekaError(f"gain scales must be positive numbers, got {scales}")
    if len(set(scales)) < len(scales):
        twice = sorted({s for s in scales if scales.count(s) > 1})
        raise SekaError(f"--scales {','.join(f'{s:g}' for s in scales)} repeats {', '.join(f'{s:g}' for s in twice)}: "
                        "give each scale once")
    return scales


def _default_gains(model) -> tuple[float, float]:
    if model.projection is None:
        raise SekaError("the gain-scale sweep needs a projection on the model (its default gains are scaled)")
    meta = model.projection.meta
    return float(meta.gain_pos), float(meta.gain_neg)


def gain_scale_lost_in_middle(
    model,
    nq: str | Path,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    n_questions: int = 8,
    n_passages: int = 5,
    policies: Sequence[str] = ("gold", "middle"),
    first_question: int = DEV_FIRST_QUESTION,
    em: bool = False,
    max_new_tokens: int = LIM_MAX_NEW_TOKENS,
    batch_size: int = 4,
    n_boot: int = 2000,
    progress: bool = True,
) -> GainScaleResult:
    """The lost-in-the-middle family at each gain scale (see the module docstring)."""
    from .lost_in_middle import POSITIONS, evaluate_lost_in_middle, lost_in_middle_items, lost_in_middle_reference

    scales, (g_pos, g_neg), started = check_scales(scales), _default_gains(model), time.perf_counter()
    try:
        items = lost_in_middle_items(nq, n_questions, n_passages=n_passages, first=first_question)
    except ValueError as exc:
        raise SekaError(f"lost-in-middle dev items: {exc}") from None
    reference = lost_in_middle_reference(model, items, em=em, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, progress=progress)
    result = GainScaleResult("lost-in-middle", model.model_id, dict(
        questions=n_questions, passages=n_passages, first_question=first_question, policies=list(policies),
        em=em, max_new_tokens=max_new_tokens if em else None, batch_size=batch_size, default_gains=[g_pos, g_neg]))
    for scale in scales:
        report = evaluate_lost_in_middle(model, items, policies=policies, em=em, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, progress=progress, n_boot=n_boot,
                                         reference=reference, gain_pos=scale * g_pos, gain_neg=scale * g_neg)
        for policy in policies:
            for position in (*POSITIONS, "all"):
                c = report.cell(position, policy)
                metrics = [("dlogp", c.mean_delta, c.delta_ci), ("rises", c.share_rises, c.rises_ci)]
                metrics += [("em", c.em, c.em_ci)] if em else []
                result.rows.extend(GainScaleRow(scale, scale * g_pos, scale * g_neg, f"{policy} / {position}",
                                                metric, value, tuple(ci), c.n) for metric, value, ci in metrics)
    if em:
        for position in (*POSITIONS, "all"):
            c = report.cell(position, policies[0])
            result.rows.append(GainScaleRow(0.0, None, None, f"unsteered / {position}", "em", c.em_unsteered,
                                            tuple(c.em_unsteered_ci), c.n))
    result.seconds = time.perf_counter() - started
    return result


def _scale_kwargs(scale: float, g_pos: float, g_neg: float) -> tuple[dict[str, Any], float | None, float | None]:
    """Model-call arguments of one scale (0: unsteered) and the gains they mean."""
    if scale == 0:
        return dict(steer=False), None, None
    return dict(gain_pos=scale * g_pos, gain_neg=scale * g_neg), scale * g_pos, scale * g_neg


def _sweep(model, family: str, scales: Sequence[float], settings: dict[str, Any],
           evaluate: Callable[..., Any], cells: Callable[[Any], list[tuple[str, str, float, Any, int]]]) -> GainScaleResult:
    """Unsteered (scale 0), then each scale: ``evaluate(**model-call kwargs)`` and its ``cells(report)``
    rows (cell, metric, value, ci, n)."""
    scales, (g_pos, g_neg), started = check_scales(scales), _default_gains(model), time.perf_counter()
    result = GainScaleResult(family, model.model_id, {**settings, "default_gains": [g_pos, g_neg]})
    for scale in [0.0, *scales]:
        kwargs, gp, gn = _scale_kwargs(scale, g_pos, g_neg)
        for cell, metric, value, ci, n in cells(evaluate(**kwargs)):
            result.rows.append(GainScaleRow(scale, gp, gn, cell, metric, value, None if ci is None else tuple(ci), n))
    result.seconds = time.perf_counter() - started
    return result


def gain_scale_instructions(
    model,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    n_items: int = 8,
    seed: int = DEV_SEED,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    n_boot: int = 2000,
    progress: bool = True,
) -> GainScaleResult:
    """The instruction family at each gain scale, and unsteered as scale 0 (see the module docstring)."""
    from .instructions import evaluate_instructions, instruction_items

    items = instruction_items(n_items, seed=seed)

    def cells(report):
        return [("all", "pass", report.share, (report.ci_low, report.ci_high), report.n)] + [
            (kind, "pass", share, report.group_ci[kind], report.group_n[kind]) for kind, share in report.groups.items()]

    return _sweep(model, "instructions", scales,
                  dict(items=n_items, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size),
                  lambda **kw: evaluate_instructions(model, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                     progress=progress, n_boot=n_boot, **kw), cells)


def gain_scale_conflicts(
    model,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    n_items: int = 40,
    batch_size: int = 8,
    n_boot: int = 2000,
    progress: bool = True,
) -> GainScaleResult:
    """The two-document conflict dev split at each gain scale, and unsteered as scale 0."""
    from .conflict import conflict_split, evaluate_conflicts

    try:
        items = conflict_split("dev", n=n_items)
    except ValueError as exc:
        raise SekaError(f"conflict dev items: {exc}") from None
    return _sweep(model, "conflicts", scales, dict(items=n_items, split="dev", batch_size=batch_size),
                  lambda **kw: evaluate_conflicts(model, items, batch_size=batch_size, progress=progress,
                                                  n_boot=n_boot, **kw),
                  lambda r: [("all", "share", r.share, r.share_ci, r.n), ("all", "margin", r.mean_margin, r.margin_ci, r.n)])


def gain_scale_counterfact(
    model,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    n_items: int = 64,
    seed: int = DEV_SEED,
    batch_size: int = 8,
    n_boot: int = 2000,
    progress: bool = True,
) -> GainScaleResult:
    """CounterFact-format items on dev entities at each gain scale, and unsteered as scale 0."""
    from .counterfact import counterfact_items, evaluate_counterfact

    try:
        items = counterfact_items(n=n_items, seed=seed, split="dev")
    except (ValueError, RuntimeError) as exc:
        raise SekaError(f"CounterFact-format dev items: {exc}") from None
    return _sweep(model, "counterfact", scales, dict(items=n_items, seed=seed, split="dev", batch_size=batch_size),
                  lambda **kw: evaluate_counterfact(model, items, batch_size=batch_size, progress=progress,
                                                    n_boot=n_boot, **kw),
                  lambda r: [("all", "efficacy", r.efficacy, (r.ci_low, r.ci_high), r.n),
                             ("all", "margin", r.mean_margin, r.margin_ci, r.n)])


#: Per family, the share (0..1) a trade-off compares across scales: (metric, cells averaged).
TRADE_OFF_METRICS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "conflicts": ("share", ("all",)),
    "counterfact": ("efficacy", ("all",)),
    "instructions": ("pass", ("all",)),
    "lost-in-middle": ("rises", None),  # None: every "<policy> / all" cell
}
#: Settings that may differ between runs of one family that are merged (how, not what, was measured).
_RUN_ONLY_SETTINGS = frozenset({"command", "batch_size", "default_gains"})


@dataclass
class TradeOff:
    """Each family's share at each scale, and the scale the rule of :func:`trade_off` picks."""

    scales: list[float]  #: candidate scales (measured in every family), descending
    shares: dict[str, dict[float, float]]  #: family -> scale -> share (scale 0: unsteered, if measured)
    objective: dict[float, float]  #: candidate scale -> mean share over the families
    eligible: dict[float, bool]  #: candidate scale -> conflict share >= the bar (True if no conflict family)
    conflict_bar: float
    pick: float | None  #: None when no candidate is eligible
    model: str = ""  #: the model every result was measured on
    default_gains: tuple[float, float] | None = None  #: the (g+, g-) every sweep multiplied
    dropped: list[float] = field(default_factory=list)  #: scales measured in some families only (not compared)

    def table(self, markdown: bool = False) -> str:
        families = list(self.shares)
        head = ["scale", *families, "mean", f"conflicts >= {100 * self.conflict_bar:g}"]
        lines = []
        if any(0.0 in v for v in self.shares.values()):
            lines.append(["0 (unsteered)", *(_pct(self.shares[f].get(0.0)) for f in families), "", ""])
        for scale in self.scales:
            mark = " <- pick" if scale == self.pick else ""
            lines.append([f"{scale:g}{mark}", *(_pct(self.shares[f].get(scale)) for f in families),
                          _pct(self.objective[scale]),
                          "-" if "conflicts" not in self.shares else "yes" if self.eligible[scale] else "no"])
        return format_table(head, lines, markdown=markdown)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def merge_results(results: Sequence[GainScaleResult]) -> dict[str, GainScaleResult]:
    """Runs of one family joined (a later run's scale replaces an earlier one's).

    Every result must come from the same model, and runs of one family must share their item
    settings (items, seed, questions, passages, policies, ...; the batch size may differ).
    """
    models = {r.model for r in results}
    if any(not _same_model(a, b) for a in models for b in models):
        raise SekaError(f"gain-scale results of different models: {sorted(models)}")
    merged: dict[str, GainScaleResult] = {}
    for r in results:
        if r.family not in GAIN_SCALE_FAMILIES:
            raise SekaError(f"unknown gain-scale family {r.family!r} (expected one of {GAIN_SCALE_FAMILIES})")
        if r.family not in merged:
            merged[r.family] = GainScaleResult(r.family, r.model, dict(r.settings), list(r.rows), r.seconds)
            continue
        into = merged[r.family]
        shared = (set(into.settings) & set(r.settings)) - _RUN_ONLY_SETTINGS  # older files lack newer keys
        ours, theirs = ({k: st[k] for k in sorted(shared)} for st in (into.settings, r.settings))
        if ours != theirs:
            raise SekaError(f"two {r.family} runs on different items or settings cannot be merged: {ours} vs {theirs}")
        new = {row.scale for row in r.rows}
        into.rows = [row for row in into.rows if row.scale not in new] + list(r.rows)
        into.seconds += r.seconds
    return merged


def trade_off(results: Sequence[GainScaleResult], conflict_bar: float = 0.95) -> TradeOff:
    """Compare scales across families by one share each (:data:`TRADE_OFF_METRICS`) and pick one.

    The rule (least harm while keeping the steering bar): among the scales measured in every family
    whose dev conflict share is at least ``conflict_bar`` (the steering-quality target), pick the
    one with the highest mean share over the families; ties go to the larger scale (the smaller
    change). The shares are not all measured against the same zero — the conflict share, CounterFact
    efficacy and instruction pass rate are levels (their unsteered value is in the table as scale
    0), lost-in-middle's is the share of contexts whose gold answer's log-probability *rose* over
    unsteered (0.5: no net change) — and the rule does not require the pick to beat unsteered on
    every family: read the table, not only the pick.

    Raises :class:`SekaError` for results of different models, of different default gains, runs of
    one family on different items, or no scale measured in every family.
    """
    merged = merge_results(results)
    if not merged:
        raise SekaError("no gain-scale results to compare")
    gains = {tuple(float(g) for g in r.settings["default_gains"]) for r in results
             if r.settings.get("default_gains") is not None}
    if len(gains) > 1:
        raise SekaError(f"the gain-scale results scaled different default gains {sorted(gains)}: they were run on "
                        "different projections and cannot be compared")
    shares: dict[str, dict[float, float]] = {}
    for family, result in merged.items():
        metric, cells = TRADE_OFF_METRICS[family]
        by_scale: dict[float, list[float]] = {}
        for row in result.rows:
            wanted = row.cell.endswith("/ all") and not row.cell.startswith("unsteered") if cells is None \
                else row.cell in cells
            if row.metric == metric and wanted:
                by_scale.setdefault(row.scale, []).append(row.value)
        if not by_scale:
            raise SekaError(f"the {family} results hold no {metric!r} rows")
        shares[family] = {scale: sum(v) / len(v) for scale, v in by_scale.items()}
    measured = [{s for s in v if s > 0} for v in shares.values()]
    common = set.intersection(*measured)
    if not common:
        raise SekaError("the results share no gain scale; run every family at the same --scales")
    scales = sorted(common, reverse=True)
    objective = {s: sum(v[s] for v in shares.values()) / len(shares) for s in scales}
    eligible = {s: "conflicts" not in shares or shares["conflicts"][s] >= conflict_bar for s in scales}
    candidates = [s for s in scales if eligible[s]]
    pick = max(candidates, key=lambda s: (round(objective[s], 12), s)) if candidates else None
    return TradeOff(scales, shares, objective, eligible, conflict_bar, pick, model=next(iter(merged.values())).model,
                    default_gains=gains.pop() if gains else None,
                    dropped=sorted(set.union(*measured) - common, reverse=True))


def apply_scale(projection, result: TradeOff, files: Sequence[str] = ()):
    """A copy of ``projection`` whose default gains are ``result.pick`` times its own.

    Only the defaults (``meta.gain_pos`` / ``meta.gain_neg``) change: layers, heads and per-layer
    scales stay, so gains a caller passes explicitly keep their meaning. The trade-off table that
    chose the factor goes into ``meta.notes["gain_trade_off"]``; an earlier application's record
    moves to ``notes["gain_trade_off_history"]``. Raises :class:`SekaError` when nothing was picked,
    or when the sweeps ran on another model or on other default gains than this projection's (the
    factor is relative to the gains it multiplied).
    """
    from dataclasses import replace

    if result.pick is None:
        raise SekaError("the trade-off picked no scale (none keeps the conflict bar); nothing to apply")
    meta = projection.meta
    if result.model and meta.model_id and not _same_model(result.model, meta.model_id):
        raise SekaError(f"the sweeps ran on {result.model!r}, the projection is for {meta.model_id!r}")
    if result.default_gains is None:
        raise SekaError("the gain-scale files do not say which default gains they scaled; rerun the sweeps")
    if any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(result.default_gains, (meta.gain_pos, meta.gain_neg))):
        raise SekaError(f"the sweeps scaled default gains {result.default_gains[0]:g} / {result.default_gains[1]:g}, "
                        f"but this projection's are {meta.gain_pos:g} / {meta.gain_neg:g}: apply the pick to the "
                        "projection the sweeps ran on")
    notes = dict(meta.notes)
    if "gain_trade_off" in notes:
        notes["gain_trade_off_history"] = [*notes.get("gain_trade_off_history", []), notes["gain_trade_off"]]
    notes["gain_trade_off"] = {
        "scale": result.pick, "previous_gains": [meta.gain_pos, meta.gain_neg], "conflict_bar": result.conflict_bar,
        "rule": "among scales with a dev conflict share >= the bar, the best mean dev share over the families "
                "(ties: the larger scale)",
        "shares": {f: {f"{k:g}": v for k, v in by.items()} for f, by in result.shares.items()},
        "objective": {f"{k:g}": v for k, v in result.objective.items()}, "files": list(files),
    }
    new_meta = replace(meta, gain_pos=meta.gain_pos * result.pick, gain_neg=meta.gain_neg * result.pick, notes=notes)
    return replace(projection, meta=new_meta)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is not a number: {value!r}")
    return float(value)


def load_result(path: str | Path) -> GainScaleResult:
    """A :class:`GainScaleResult` from a JSON file :func:`write_outputs` wrote (checked; :class:`SekaError` if not)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("family") not in GAIN_SCALE_FAMILIES:
            raise ValueError(f"family must be one of {GAIN_SCALE_FAMILIES}")
        settings = data.get("settings")
        if not isinstance(settings, dict):
            raise ValueError("settings is not an object")
        gains = settings.get("default_gains")
        if not (isinstance(gains, list) and len(gains) == 2):
            raise ValueError("settings.default_gains is not a pair of numbers")
        settings["default_gains"] = [_number(g, "a default gain") for g in gains]
        rows = []
        for i, r in enumerate(data["rows"]):
            ci = r.get("ci")
            rows.append(GainScaleRow(
                scale=_number(r["scale"], f"rows[{i}].scale"),
                gain_pos=None if r.get("gain_pos") is None else _number(r["gain_pos"], f"rows[{i}].gain_pos"),
                gain_neg=None if r.get("gain_neg") is None else _number(r["gain_neg"], f"rows[{i}].gain_neg"),
                cell=str(r["cell"]), metric=str(r["metric"]), value=_number(r["value"], f"rows[{i}].value"),
                ci=None if ci is None else (_number(ci[0], "a CI bound"), _number(ci[1], "a CI bound")),
                n=int(r["n"])))
        if not rows:
            raise ValueError("no rows")
        return GainScaleResult(data["family"], str(data.get("model", "")), settings, rows,
                               float(data.get("seconds", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise SekaError(f"{path}: not a gain-scale result file ({exc})") from None


def write_outputs(result: GainScaleResult, out_dir: str | Path, stem: str) -> list[Path]:
    """``{stem}-{family}-gain-scale.json`` and ``.md`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{result.family}-gain-scale"  # not Path.with_suffix: stems hold dots ("coder-0.5b")
    paths = [out_dir / f"{base}.json", out_dir / f"{base}.md"]
    paths[0].write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(result.text(markdown=True), encoding="utf-8")
    return paths


__all__ = [
    "DEFAULT_SCALES",
    "DEV_FIRST_QUESTION",
    "DEV_SEED",
    "GAIN_SCALE_FAMILIES",
    "GainScaleResult",
    "GainScaleRow",
    "TRADE_OFF_METRICS",
    "TradeOff",
    "apply_scale",
    "check_scales",
    "gain_scale_conflicts",
    "gain_scale_counterfact",
    "gain_scale_instructions",
    "gain_scale_lost_in_middle",
    "load_result",
    "merge_results",
    "trade_off",
    "write_outputs",
]
