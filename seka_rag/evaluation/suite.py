"""The evaluation suite: every task family × every method, side by side, in one run (``seka-rag eval``).

Families (items of the ``test`` split / our own generators unless a file is given):

``counterfact``     efficacy of the highlighted new fact (:mod:`.counterfact`: our items, or a
                    ``counterfact.json`` of the public format);
``conflict``        the two-document conflict family (:func:`.families.conflict_family_items`):
                    share of cases where the highlighted document's answer wins;
``instructions``    programmatic checkers on greedy answers (:mod:`.instructions`): pass rate;
``lost-in-middle``  NQ-open with the gold passage first / middle / last (:mod:`.lost_in_middle`; needs
                    the oracle file): best-subspan EM of the greedy answer, and the change of
                    log p(gold answer) against the unsteered model, per gold position and policy.

Methods (:mod:`.baselines`): ``unsteered``, ``prompt-markers`` / ``prompt-important`` (prompt-only
emphasis), ``pasta`` (profiled heads), ``spa``, ``seka`` (the model's projection) and
``adaseka-attention`` / ``adaseka-embedding`` (the model's expert set, when it has one).

Every cell is ``mean [low, high] (n)``: a percentage (or nats for a log-probability change) with
a seeded percentile-bootstrap 95 % interval over the family's items (the two-document conflict
family's headline share and margin resample whole items, each with its four counterbalanced cases;
its breakdown by kind is over cases).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SekaError
from .lost_in_middle import DEFAULT_MAX_NEW_TOKENS as LIM_MAX_NEW_TOKENS
from .stats import format_ci, format_table, group_share_cis, mean_ci

#: Task families of the suite, in table order.
SUITE_FAMILIES: tuple[str, ...] = ("counterfact", "conflict", "instructions", "lost-in-middle")

#: Methods of the suite, in table order.
SUITE_METHODS: tuple[str, ...] = (
    "unsteered", "prompt-markers", "prompt-important", "pasta", "spa", "seka", "adaseka-attention",
    "adaseka-embedding",
)
ADASEKA_METHODS: tuple[str, ...] = ("adaseka-attention", "adaseka-embedding")

#: Items per family in a default run (lost-in-middle: questions, each asked with the gold passage
#: first, middle and last). Sized so that every family × every method on Qwen2.5-Coder-0.5B
#: (bfloat16) fits in about 35 minutes on 2 CPU cores. Estimate from token counts (chat template
#: included) and rates measured on this project's 2-core machine (1 thread, other jobs running:
#: forward 2.3 ms per prompt token, greedy decoding 0.21 s per step for a batch of 8): on-the-fly
#: PASTA profiling 168 heads × 2.3 s ≈ 395 s; counterfact 64 items × 2 rows × 66 tokens ≈ 185 s
#: over the 8 methods; conflict 64 cases × 78 tokens ≈ 145 s; instructions 20 items (64 new
#: tokens, batches of 8) ≈ 370 s; lost-in-middle 4 questions × 3 contexts × 1,300 tokens (one
#: scoring and one generating prefill per method and context, the unsteered reference once) ≈ 990 s;
#: loading ≈ 20 s — about 2,100 s, 35 min (19 min without ``--nq``). SPA costs 2-5× a SEKA cell
#: (two passes, no shared prefix), PASTA 1.2-2.4× (eager attention).
DEFAULT_ITEMS: dict[str, int] = {"counterfact": 64, "conflict": 64, "instructions": 20, "lost-in-middle": 4}

#: What the main table reports per family.
HEADLINE: dict[str, str] = {
    "counterfact": "efficacy: P(new target's first token) > P(old one's), %",
    "conflict": "share of cases where the highlighted document's answer wins, %",
    "instructions": "share of greedy answers passing the instruction's checker, %",
    "lost-in-middle": "best-subspan EM of the greedy answer, all gold positions, %",
}

#: PASTA profiling budget when no head file is given: dev conflict cases, every ``PASTA_PROFILE_STRIDE``-th
#: layer (all its query heads), heads kept.
PASTA_PROFILE_ITEMS = 8
PASTA_PROFILE_STRIDE = 2
PASTA_TOP = 8


# ---------------------------------------------------------------------------------------------
# Command-line values


def parse_names(text: str | Sequence[str] | None, choices: Sequence[str], what: str) -> list[str]:
    """Comma-separated (or listed) names, each one of ``choices``; None: all. :class:`SekaError` otherwise."""
    if text is None:
        return list(choices)
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in str(t).split(",")]
    names = [p.strip() for p in parts if p.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise SekaError(f"unknown {what} {unknown or names!r}; choose from {', '.join(choices)}")
    return list(dict.fromkeys(names))


def parse_items(text: str | None, families: Sequence[str] = SUITE_FAMILIES) -> dict[str, int]:
    """Items per family: None → :data:`DEFAULT_ITEMS`; ``"N"`` → N for every family; ``"conflict=16,instructions=5"``
    → those families changed, the others at their default."""
    out = {f: DEFAULT_ITEMS[f] for f in families}
    if text is None:
        return out
    text = str(text).strip()
    if "=" not in text:
        return {f: _positive(text, "--items") for f in families}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in SUITE_FAMILIES:
            raise SekaError(f"--items names unknown family {name!r}; choose from {', '.join(SUITE_FAMILIES)}")
        if name in out:
            out[name] = _positive(value, f"--items {name}")
    return out


def _positive(text: str, what: str) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise SekaError(f"{what} must be a positive integer (or family=N pairs), got {text!r}")
    return n


# ---------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True)
class Stat:
    """One reported number: ``mean`` with its bootstrap interval ``[lo, hi]`` over ``n`` values.

    ``percent``: a share, printed × 100; otherwise a value in nats, printed signed.
    """

    mean: float
    lo: float
    hi: float
    n: int
    percent: bool = True

    @classmethod
    def shares(cls, flags: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> "Stat":
        return cls.values([1.0 if f else 0.0 for f in flags], n_boot, seed)

    @classmethod
    def values(cls, values: Sequence[float], n_boot: int = 2000, seed: int = 0, *, percent: bool = True,
               clusters: Sequence[Any] | None = None) -> "Stat":
        return cls(*mean_ci(values, n_boot, seed, clusters=clusters), len(values), percent)

    def text(self) -> str:
        return format_ci(self.mean, self.lo, self.hi, percent=self.percent, n=self.n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: mean, interval and n (NaN as None)."""
        def num(x: float) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        return {"mean": num(self.mean), "ci_low": num(self.lo), "ci_high": num(self.hi), "n": self.n,
                "unit": "share" if self.percent else "nats", "text": self.text()}


def _group_stats(labels: Sequence[str], flags: Sequence[bool], order: Sequence[str] | None, n_boot: int,
                 ) -> dict[str, Stat]:
    return {k: Stat(s, lo, hi, n) for k, (s, lo, hi, n) in group_share_cis(labels, flags, order, n_boot=n_boot).items()}


# ---------------------------------------------------------------------------------------------
# Methods


def suite_methods(model, names: Sequence[str], *, pasta: Any = None, spa_strength: float | None = None,
                  ) -> tuple[dict[str, Any], dict[str, str]]:
    """The method objects of ``names`` for ``model`` and, for those that cannot run, why: ``(methods, skipped)``.

    ``pasta`` is the :class:`~.baselines.PastaConfig` of the ``pasta`` method (None: skipped);
    AdaSEKA needs an expert set on the model (its embedding router one with prototypes).
    """
    from .baselines import DEFAULT_STRENGTH, Pasta, PromptEmphasis, Seka, Spa, SpaConfig, Unsteered

    methods: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    experts = getattr(model, "experts", None)
    for name in names:
        if name == "unsteered":
            methods[name] = Unsteered()
        elif name in ("prompt-markers", "prompt-important"):
            methods[name] = PromptEmphasis(name.split("-", 1)[1])
        elif name == "pasta":
            if pasta is None:
                skipped[name] = "no PASTA heads (profiling failed or was not run)"
            else:
                methods[name] = Pasta(pasta)
        elif name == "spa":
            methods[name] = Spa(SpaConfig(strength=DEFAULT_STRENGTH if spa_strength is None else spa_strength))
        elif name == "seka":
            if model.projection is None:
                skipped[name] = "the model has no projection"
            else:  # with an expert set loaded, plain calls would route: ask for the single projection
                methods[name] = Seka("seka", {"router": "projection"} if experts is not None else {})
        elif name in ADASEKA_METHODS:
            router = name.split("-", 1)[1]
            if experts is None:
                skipped[name] = ("the model has no AdaSEKA expert set (pass --adaptive for an embedded model's "
                                 "shipped set, or --experts DIR)")
            elif router == "embedding" and not experts.has_prototypes:
                skipped[name] = "the expert set has no prototypes for the embedding router"
            else:
                methods[name] = Seka(name, {"router": router})
        else:
            raise SekaError(f"unknown method {name!r}; choose from {', '.join(SUITE_METHODS)}")
    return methods, skipped


def save_head_profile(profile, path: str | Path, **extra: Any) -> Path:
    """Write a PASTA :class:`~.baselines.HeadProfile` as JSON, with ``extra`` keys (model, seconds...) beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**profile.to_dict(), **extra}, indent=1) + "\n", encoding="utf-8")
    return path


def load_head_profile(path: str | Path):
    """``(HeadProfile, the file's extra keys)`` of a file written by ``seka-rag profile-pasta``."""
    from .baselines import HeadProfile

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        profile = HeadProfile.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SekaError(f"cannot read PASTA head profile {str(path)!r} (write one with `seka-rag "
                        f"profile-pasta --out FILE`): {exc}") from None
    keys = set(profile.to_dict())
    return profile, {k: v for k, v in data.items() if k not in keys}


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class SuiteConfig:
    """Settings of a suite run (see ``seka-rag eval --help``)."""

    families: tuple[str, ...] = SUITE_FAMILIES
    items: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_ITEMS))
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 64  #: instruction answers
    counterfact: str | None = None  #: a counterfact.json; None: our generated items
    nq: str | None = None  #: the NQ-open oracle file; None: lost-in-middle is skipped
    nq_policies: tuple[str, ...] = ("middle",)
    nq_passages: int = 10
    nq_first: int = 0  #: first NQ-open question of the lost-in-middle items (test questions start at 0)
    nq_max_new_tokens: int = LIM_MAX_NEW_TOKENS  #: lost-in-middle greedy answers (the Lost-in-the-Middle code's 100)
    nq_batch_size: int = 4
    n_boot: int = 2000
    per_item: bool = False  #: keep per-item results (answers, margins) in the JSON

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "nq_max_new_tokens", "nq_batch_size", "n_boot"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SekaError(f"SuiteConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.nq_first, bool) or not isinstance(self.nq_first, int) or self.nq_first < 0:
            raise SekaError(f"SuiteConfig.nq_first must be a non-negative integer, got {self.nq_first!r}")
        unknown = [f for f in self.families if f not in _RUNNERS]
        if unknown:
            raise SekaError(f"SuiteConfig.families: unknown families {unknown}; choose from {', '.join(_RUNNERS)}")
        bad = {f: n for f, n in dict(self.items).items()
               if f not in _RUNNERS or isinstance(n, bool) or not isinstance(n, int) or n < 1}
        if bad:
            raise SekaError(f"SuiteConfig.items: {bad} (each a known family with a positive item count)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the settings."""
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                for k, v in self.__dict__.items()}


@dataclass
class SuiteResult:
    """Everything a suite run measured.

    ``table[method][family]`` holds the headline :class:`Stat` of each cell; ``details[title][method]``
    breakdowns (groups, gold positions, margins) as ``{column: Stat}``; ``reports[family][method]``
    each evaluation's own report (``to_dict``); ``skipped`` why a family or method did not run;
    ``errors`` cells that failed (``"family / method"`` → message); ``seconds`` per family and method.
    """

    model: str
    families: list[str]
    methods: list[str]
    items: dict[str, int]
    table: dict[str, dict[str, Stat]] = field(default_factory=dict)
    details: dict[str, dict[str, dict[str, Stat]]] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = field(default_factory=lambda: {"families": {}, "methods": {}})
    errors: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def main_table(self, markdown: bool = False) -> str:
        """Methods × families, headline cells ``mean [lo, hi] (n)``."""
        body = []
        for m in self.methods:
            cells = self.table.get(m, {})
            body.append([m, *("error" if f"{f} / {m}" in self.errors else cells[f].text() if f in cells else "-"
                              for f in self.families)])
        return format_table(["method", *self.families], body, markdown=markdown)

    def detail_tables(self, markdown: bool = False) -> list[tuple[str, str]]:
        """``(title, table)`` of every breakdown: rows methods, columns the breakdown's parts."""
        out = []
        for title, rows in self.details.items():
            columns: list[str] = []
            for cols in rows.values():
                columns.extend(c for c in cols if c not in columns)
            body = [[m, *(rows[m][c].text() if c in rows[m] else "-" for c in columns)]
                    for m in self.methods if m in rows]
            out.append((title, format_table(["method", *columns], body, markdown=markdown)))
        return out

    def notes(self) -> list[str]:
        """One line per skipped family or method and per failed cell, with the reason."""
        lines = [f"{name}: skipped ({why})" for kind in ("families", "methods")
                 for name, why in self.skipped[kind].items()]
        lines.extend(f"{cell}: failed ({why})" for cell, why in self.errors.items())
        return lines

    def legend(self) -> list[str]:
        """One line per family saying what its headline number measures."""
        lines = []
        for f in self.families:
            text = HEADLINE[f]
            policies = self.settings.get("nq_policies") or ()
            if f == "lost-in-middle" and policies:  # the cell is the first policy's; name it
                text = text.removesuffix(", %") + f", '{policies[0]}' passages highlighted (the first of the policies), %"
            lines.append(f"{f}: {text}")
        return lines

    def text(self) -> str:
        """The whole result as plain text (what ``seka-rag eval`` prints)."""
        parts = [self.main_table(), "", *self.legend()]
        for title, table in self.detail_tables():
            parts += ["", title, table]
        notes = self.notes()
        if notes:
            parts += ["", *notes]
        return "\n".join(parts)

    def markdown(self) -> str:
        """The whole result as a Markdown document."""
        counts = ", ".join(f"{f} {self.items[f]}" + (" questions × 3 gold positions" if f == "lost-in-middle" else "")
                           for f in self.families)
        parts = [f"# Evaluation suite: {self.model}", "",
                 f"Items: {counts}; seed {self.settings.get('seed', 0)}; cells are `mean [95 % CI] (n)`, "
                 f"percentile-bootstrap intervals over items; {self.seconds.get('total', 0):.0f} s in all.", "",
                 self.main_table(markdown=True), "", *(f"* {line}" for line in self.legend())]
        for title, table in self.detail_tables(markdown=True):
            parts += ["", f"## {title}", "", table]
        notes = self.notes()
        if notes:
            parts += ["", "## Notes", "", *(f"* {line}" for line in notes)]
        if self.settings.get("command"):
            parts += ["", f"Command: `{self.settings['command']}`"]
        return "\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the whole run: settings, cells, skips and errors."""
        return {
            "model": self.model, "families": list(self.families), "methods": list(self.methods),
            "items": dict(self.items), "settings": dict(self.settings),
            "table": {m: {f: s.to_dict() for f, s in row.items()} for m, row in self.table.items()},
            "details": {t: {m: {c: s.to_dict() for c, s in cols.items()} for m, cols in rows.items()}
                        for t, rows in self.details.items()},
            "reports": self.reports, "skipped": self.skipped, "errors": dict(self.errors), "seconds": self.seconds,
        }


def plot_suite(result: "SuiteResult | Mapping[str, Any]", path: str | Path) -> Path:
    """A PNG of the main table: one panel per family, one bar per method with its 95 % interval.

    ``result``: a :class:`SuiteResult` or its ``to_dict()`` (e.g. a ``seka-rag eval --out`` file).
    Needs matplotlib (``pip install 'seka-rag[bench]'``).
    """
    from .sensitivity import require_matplotlib

    Figure, Canvas = require_matplotlib()
    data = result.to_dict() if isinstance(result, SuiteResult) else result
    families = [f for f in data["families"] if any(f in row for row in data["table"].values())]
    methods = [m for m in data["methods"] if m in data["table"]]
    if not families or not methods:
        raise SekaError("nothing to plot: the result has no measured cell")
    fig = Figure(figsize=(3.3 * len(families), 3.8))
    Canvas(fig)
    colours = [f"C{i}" for i in range(len(methods))]
    for i, fam in enumerate(families):
        ax = fig.add_subplot(1, len(families), i + 1)
        for j, m in enumerate(methods):
            cell = data["table"][m].get(fam)
            if not cell or cell.get("mean") is None:
                continue
            scale = 100.0 if cell.get("unit", "share") == "share" else 1.0
            mean, lo, hi = (cell[k] * scale for k in ("mean", "ci_low", "ci_high"))
            ax.bar(j, mean, color=colours[j], yerr=[[mean - lo], [hi - mean]], capsize=2)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(fam, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_ylabel("% (bars: 95 % CI)")
    fig.suptitle(f"{data.get('model', '')}: headline metric per family", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def suite_items(family: str, n: int, config: SuiteConfig) -> list:
    """The ``n`` items of one suite family (lost-in-middle: ``n`` questions × 3 gold positions)."""
    try:
        if family == "counterfact":
            from .counterfact import counterfact_items

            return counterfact_items(config.counterfact, n, config.seed)
        if family == "conflict":
            from .families import conflict_family_items

            return conflict_family_items(n, config.seed)
        if family == "instructions":
            from .instructions import instruction_items

            return instruction_items(n, config.seed)
        if family == "lost-in-middle":
            from .lost_in_middle import lost_in_middle_items

            if config.nq is None:
                raise SekaError("lost-in-middle needs the NQ-open oracle file (--nq PATH)")
            return lost_in_middle_items(config.nq, n, n_passages=config.nq_passages, seed=config.seed,
                                        first=config.nq_first)
    except (OSError, ValueError) as exc:
        raise SekaError(f"cannot build the {family} items: {exc}") from None
    raise SekaError(f"unknown family {family!r}; choose from {', '.join(SUITE_FAMILIES)}")


#: One family's evaluation of one method: (report dict, headline, {detail title: {column: Stat}}).
FamilyOutcome = tuple[dict[str, Any], Stat, dict[str, dict[str, Stat]]]


def _counterfact(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .counterfact import evaluate_counterfact

    rep = evaluate_counterfact(model, items, method=method, batch_size=config.batch_size, progress=progress,
                               n_boot=config.n_boot)
    head = Stat(rep.efficacy, rep.ci_low, rep.ci_high, rep.n)
    hits = [m > 0 for m in rep.margins]
    cols = {"efficacy": head, **_group_stats([it.kind for it in items], hits, None, config.n_boot),
            "margin (nats)": Stat(rep.mean_margin, *rep.margin_ci, rep.n, percent=False)}
    return rep.to_dict(include_items=config.per_item), head, {"counterfact: efficacy by kind, first-token margin": cols}


def _conflict(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .baselines import evaluate_family_with

    rep = evaluate_family_with(method, model, items, batch_size=config.batch_size, progress=progress,
                               n_boot=config.n_boot)
    head = Stat(rep.share, rep.ci_low, rep.ci_high, rep.n)
    order = ("fictional", "real_agree", "real_contradict")
    cols = {"share": head, **_group_stats([it.group for it in items], rep.hits, order, config.n_boot),
            "margin (nats)": Stat.values(rep.margins, config.n_boot, percent=False,
                                         clusters=[it.unit or f"#{i}" for i, it in enumerate(items)])}
    return rep.to_dict(include_items=config.per_item), head, {"conflict: share by kind, answer margin": cols}


def _instructions(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .instructions import evaluate_instructions

    rep = evaluate_instructions(model, items, method=method, max_new_tokens=config.max_new_tokens,
                                batch_size=config.batch_size, progress=progress, n_boot=config.n_boot)
    head = Stat(rep.share, rep.ci_low, rep.ci_high, rep.n)
    cols = {"all": head, **{k: Stat(rep.groups[k], *rep.group_ci[k], rep.group_n[k]) for k in rep.groups}}
    return rep.to_dict(include_items=config.per_item), head, {"instructions: pass rate by instruction type": cols}


def _lost_in_middle(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .lost_in_middle import POSITIONS, evaluate_lost_in_middle

    rep = evaluate_lost_in_middle(model, items, policies=config.nq_policies, method=method,
                                  max_new_tokens=config.nq_max_new_tokens, batch_size=config.nq_batch_size,
                                  progress=progress, n_boot=config.n_boot, reference=shared)
    positions = [p for p in POSITIONS if any(it.position == p for it in items)] + ["all"]
    details: dict[str, dict[str, Stat]] = {}
    for policy in config.nq_policies:
        cells = {p: rep.cell(p, policy) for p in positions}
        details[f"lost-in-middle, '{policy}' highlighted: best-subspan EM by gold position"] = {
            p: Stat(c.em, *c.em_ci, c.n) for p, c in cells.items()}
        details[f"lost-in-middle, '{policy}' highlighted: change of log p(gold answer) vs unsteered, nats"] = {
            p: Stat(c.mean_delta, *c.delta_ci, c.n, percent=False) for p, c in cells.items()}
        details[f"lost-in-middle, '{policy}' highlighted: share of questions where log p(gold answer) rose"] = {
            p: Stat(c.share_rises, *c.rises_ci, c.n) for p, c in cells.items()}
    top = rep.cell("all", config.nq_policies[0])
    return rep.to_dict(include_rows=config.per_item), Stat(top.em, *top.em_ci, top.n), details


_RUNNERS: dict[str, Callable[..., FamilyOutcome]] = {
    "counterfact": _counterfact, "conflict": _conflict, "instructions": _instructions,
    "lost-in-middle": _lost_in_middle,
}


def build_suite_items(config: SuiteConfig, log: Callable[[str], None] = print,
                      ) -> tuple[dict[str, list], dict[str, str]]:
    """``(items by family, skipped families and why)``: lost-in-middle is skipped (with a note to ``log``)
    without an NQ file. Needs no model, so bad data files fail before anything is loaded."""
    items: dict[str, list] = {}
    skipped: dict[str, str] = {}
    for family in config.families:
        if family == "lost-in-middle" and config.nq is None:
            skipped[family] = "no NQ-open oracle file: pass --nq PATH (e.g. ../shared/data/nq-open-oracle.jsonl.gz)"
            log(f"note: lost-in-middle skipped: {skipped[family]}")
            continue
        items[family] = suite_items(family, config.items[family], config)
    return items, skipped


def run_suite(model, methods: Mapping[str, Any], config: SuiteConfig = SuiteConfig(), *,
              items: Mapping[str, list] | None = None, skipped_families: Mapping[str, str] | None = None,
              skipped_methods: Mapping[str, str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> SuiteResult:
    """Evaluate every method of ``methods`` (name → method object) on every family of ``config``.

    ``items`` (default: :func:`build_suite_items`) holds each family's items, shared by the
    methods; families run one after the other, and a lost-in-middle run computes the unsteered
    reference once. A cell that raises is recorded in ``errors`` and the run goes on. ``log``
    receives notes (skipped families); per-cell results go to the progress bar's stream.
    """
    import sys

    from tqdm.auto import tqdm

    started = time.perf_counter()
    if items is None:
        items, skipped_families = build_suite_items(config, log)
    families = [f for f in config.families if f in items]
    result = SuiteResult(model=getattr(model, "model_id", type(model).__name__), families=families,
                         methods=list(methods), items={f: config.items[f] for f in families},
                         settings=config.to_dict())
    result.skipped["families"].update(skipped_families or {})
    result.skipped["methods"].update(skipped_methods or {})
    bar = tqdm(total=len(families) * len(methods), desc="eval", unit="cell", disable=not progress, file=sys.stderr)
    try:
        for family in families:
            result.seconds[family] = {}
            shared = None
            if family == "lost-in-middle":
                from .lost_in_middle import lost_in_middle_reference

                bar.set_description("lost-in-middle / unsteered reference")
                t0 = time.perf_counter()
                shared = lost_in_middle_reference(model, items[family], max_new_tokens=config.nq_max_new_tokens,
                                                  batch_size=config.nq_batch_size, progress=progress)
                result.seconds[family]["reference"] = time.perf_counter() - t0
            for name, method in methods.items():
                bar.set_description(f"{family} / {name}")
                t0 = time.perf_counter()
                try:
                    report, head, details = _RUNNERS[family](model, items[family], method, config, progress, shared)
                except Exception as exc:  # noqa: BLE001 - one failed cell must not lose a long run
                    result.errors[f"{family} / {name}"] = f"{type(exc).__name__}: {exc}"
                    bar.write(f"  {family} / {name}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
                else:
                    result.table.setdefault(name, {})[family] = head
                    result.reports.setdefault(family, {})[name] = report
                    for title, cols in details.items():
                        result.details.setdefault(title, {})[name] = cols
                    bar.write(f"  {family} / {name}: {head.text()}", file=sys.stderr)
                result.seconds[family][name] = time.perf_counter() - t0
                bar.update(1)
    finally:
        bar.close()
    result.seconds["total"] = time.perf_counter() - started
    return result


__all__ = [
    "ADASEKA_METHODS",
    "DEFAULT_ITEMS",
    "HEADLINE",
    "PASTA_PROFILE_ITEMS",
    "PASTA_PROFILE_STRIDE",
    "PASTA_TOP",
    "SUITE_FAMILIES",
    "SUITE_METHODS",
    "Stat",
    "SuiteConfig",
    "SuiteResult",
    "build_suite_items",
    "load_head_profile",
    "parse_items",
    "parse_names",
    "run_suite",
    "save_head_profile",
    "suite_items",
    "suite_methods",
]
