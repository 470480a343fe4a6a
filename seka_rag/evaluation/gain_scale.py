"""How a task family's score moves when SEKA's gains are scaled down (``seka-rag gain-scale``).

The shipped gains come from the steering-quality calibration on short two-document conflicts. This
sweep asks whether they carry over to the families where the evaluation suite finds SEKA no better
than unsteered — long retrieved contexts and highlighted instructions — by running one family at
``scale × (g+, g-)`` of the projection's defaults for each scale (same layers and heads), on **dev**
items kept apart from the suite's test items:

``lost-in-middle``  NQ-open questions from ``first_question`` on (default 2000; the suite's test
                    questions are 0, 1, 2, ...), gold passage first / middle / last, under the given
                    highlight policies. Metric: the change of log p(gold answer) vs unsteered (its
                    mean with a 95 % interval, and the share of rises), pooled and per gold position;
                    with ``em=True`` also the best-subspan EM of the greedy answer.
``instructions``    instruction items of seed ``seed`` (default 1; the suite's test items are seed
                    0). Metric: the checkers' pass rate of the greedy answer, with the unsteered pass
                    rate as scale 0.

It reports; it changes nothing. The shipped defaults stay owned by the calibration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SekaError
from .stats import format_table

GAIN_SCALE_FAMILIES: tuple[str, ...] = ("lost-in-middle", "instructions")
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
#: First NQ-open question of the dev items (the suite's test items start at question 0).
DEV_FIRST_QUESTION = 2000
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

    def text(self, markdown: bool = False) -> str:
        title = (f"Gain scale on dev {self.family} items, {self.model} "
                 f"({', '.join(f'{k} {v}' for k, v in self.settings.items() if k != 'command')}; "
                 f"{self.seconds:.0f} s)")
        return (f"## {title}\n\n" if markdown else f"{title}\n") + self.table(markdown) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "model": self.model, "settings": self.settings, "seconds": self.seconds,
                "rows": [asdict(r) for r in self.rows]}


def _fmt(metric: str, value: float) -> str:
    return f"{value:+.2f}" if metric.startswith("dlogp") else f"{100 * value:.1f}"


def check_scales(scales: Sequence[float]) -> list[float]:
    """``scales`` if each is a positive finite number, else :class:`SekaError`."""
    scales = [float(s) for s in scales]
    if not scales or any(not (s > 0 and s < float("inf")) for s in scales):
        raise SekaError(f"gain scales must be positive numbers, got {scales}")
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
    max_new_tokens: int = 24,
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
        em=em, max_new_tokens=max_new_tokens, batch_size=batch_size, default_gains=[g_pos, g_neg]))
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


def gain_scale_instructions(
    model,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    n_items: int = 30,
    seed: int = DEV_SEED,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    n_boot: int = 2000,
    progress: bool = True,
) -> GainScaleResult:
    """The instruction family at each gain scale, and unsteered as scale 0 (see the module docstring)."""
    from .instructions import evaluate_instructions, instruction_items

    scales, (g_pos, g_neg), started = check_scales(scales), _default_gains(model), time.perf_counter()
    items = instruction_items(n_items, seed=seed)
    result = GainScaleResult("instructions", model.model_id, dict(items=n_items, seed=seed,
                                                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                                  default_gains=[g_pos, g_neg]))
    for scale in [0.0, *scales]:
        kwargs = dict(steer=False) if scale == 0 else dict(gain_pos=scale * g_pos, gain_neg=scale * g_neg)
        report = evaluate_instructions(model, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       progress=progress, n_boot=n_boot, **kwargs)
        gp, gn = (None, None) if scale == 0 else (scale * g_pos, scale * g_neg)
        result.rows.append(GainScaleRow(scale, gp, gn, "all", "pass", report.share, (report.ci_low, report.ci_high),
                                        report.n))
        for kind, share in report.groups.items():
            result.rows.append(GainScaleRow(scale, gp, gn, kind, "pass", share, tuple(report.group_ci[kind]),
                                            report.group_n[kind]))
    result.seconds = time.perf_counter() - started
    return result


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
    "check_scales",
    "gain_scale_instructions",
    "gain_scale_lost_in_middle",
    "write_outputs",
]
