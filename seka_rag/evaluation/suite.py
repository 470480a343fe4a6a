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
its breakdown by kind too; ``n`` counts the cases, four per item, and a lost-in-the-middle cell's
``n`` its contexts, one per question and gold position). :meth:`SuiteResult.paired` gives each method's headline minus
the unsteered one's, paired item by item (:class:`ItemScores`), and :func:`merge_suite_results`
joins runs of the same items (``seka-rag eval --merge``).
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
from .stats import format_ci, format_table, group_share_cis, mean_ci, paired_bootstrap_diff_ci

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

#: Title of the table of differences from the unsteered model.
PAIRED_TITLE = ("difference from unsteered, paired item by item: points [95 % CI over the family's units] "
                "(n paired)")


def paired_title(reference: str = "unsteered") -> str:
    """The paired table's title for differences from ``reference`` (:data:`PAIRED_TITLE` for unsteered)."""
    return PAIRED_TITLE.replace("from unsteered", f"from {reference}", 1)


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
        raise SekaError(f"unknown {what} {unknown or names!r}; choose from {', '.join(choices)}"
                        f"{did_you_mean(unknown, choices)}")
    return list(dict.fromkeys(names))


def did_you_mean(unknown: Sequence[str], choices: Sequence[str]) -> str:
    """``" ('x': did you mean 'y'?)"`` for the first of ``unknown`` with a close match among ``choices``, else
    ``""`` (``instruction`` / ``instructions`` name the scored family of ``eval-families`` and the
    generated one of ``eval``: a one-letter slip between the two commands). Case, ``-`` and ``_`` do
    not count; a name is never matched to its negation (``steered`` / ``unsteered``)."""
    import difflib

    choices = [str(c) for c in choices]

    def key(name: str) -> str:
        return str(name).replace("-", "_").lower()

    keys = [key(c) for c in choices]
    for name in unknown:
        wanted = key(name)
        candidates = [k for k in keys if k not in (f"un{wanted}", f"no_{wanted}", f"non_{wanted}")
                      and wanted not in (f"un{k}", f"no_{k}", f"non_{k}")]
        close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.75)
        if close:
            return f" ({str(name)!r}: did you mean {choices[keys.index(close[0])]!r}?)"
    return ""


def parse_items(text: str | None, families: Sequence[str] = SUITE_FAMILIES) -> dict[str, int]:
    """Items per family: None → :data:`DEFAULT_ITEMS`; ``"N"`` → N for every family; ``"conflict=16,instructions=5"``
    → those families changed, the others at their default."""
    out = {f: DEFAULT_ITEMS[f] for f in families}
    if text is None:
        return out
    text = str(text).strip()
    if "=" not in text:
        return _whole_conflict_items({f: _positive(text, "--items") for f in families})
    named: set[str] = set()
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name in named:
            raise SekaError(f"--items names {name!r} twice: give each family one count")
        named.add(name)
        if name not in SUITE_FAMILIES:
            raise SekaError(f"--items names unknown family {name!r}; choose from {', '.join(SUITE_FAMILIES)}"
                            f"{did_you_mean([name], SUITE_FAMILIES)}")
        if name not in out:
            raise SekaError(f"--items names {name!r}, which this run does not evaluate (families: "
                            f"{', '.join(families)}); add it to --families or leave it out of --items")
        out[name] = _positive(value, f"--items {name}")
    return _whole_conflict_items(out)


def _whole_conflict_items(counts: dict[str, int]) -> dict[str, int]:
    """Refuse a conflict count that would split an item: the family counts cases, four per item (both
    document orders x either document highlighted), and only whole items are counterbalanced."""
    n = counts.get("conflict")
    if n is not None and n % 4:
        raise SekaError(f"--items: the conflict family counts cases, four per item (both document orders x either "
                        f"document highlighted), so give a multiple of 4, e.g. conflict={4 * (n // 4 + 1)} "
                        f"({n // 4 + 1} item{'s' if n // 4 + 1 != 1 else ''}); {n} would leave an item without its counterbalancing cases")
    return counts


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

    ``percent``: a share, printed × 100; otherwise a value in nats, printed signed. ``signed``: a
    difference of shares, printed × 100 with its sign (points).
    """

    mean: float
    lo: float
    hi: float
    n: int
    percent: bool = True
    signed: bool = False

    @classmethod
    def shares(cls, flags: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> "Stat":
        return cls.values([1.0 if f else 0.0 for f in flags], n_boot, seed)

    @classmethod
    def values(cls, values: Sequence[float], n_boot: int = 2000, seed: int = 0, *, percent: bool = True,
               clusters: Sequence[Any] | None = None) -> "Stat":
        return cls(*mean_ci(values, n_boot, seed, clusters=clusters), len(values), percent)

    def text(self) -> str:
        return format_ci(self.mean, self.lo, self.hi, percent=self.percent, n=self.n, signed=self.signed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: mean, interval and n (NaN as None)."""
        def num(x: float) -> float | None:
            return None if x is None or math.isnan(x) else float(x)

        unit = ("share difference" if self.signed else "share") if self.percent else "nats"
        return {"mean": num(self.mean), "ci_low": num(self.lo), "ci_high": num(self.hi), "n": self.n,
                "unit": unit, "text": self.text()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Stat":
        """The inverse of :meth:`to_dict` (None back to NaN)."""
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        unit = data.get("unit", "share")
        return cls(num(data.get("mean")), num(data.get("ci_low")), num(data.get("ci_high")), int(data.get("n", 0)),
                   percent=unit != "nats", signed=unit == "share difference")


@dataclass(frozen=True)
class ItemScores:
    """A cell's headline metric item by item, for paired comparisons between methods.

    ``values``: one number per scored case (1.0 / 0.0 for a share); ``units``: its resampling unit
    (the counterbalanced cases of one conflict item, or the gold positions of one NQ question, share
    a unit), in the family's item order, the same for every method of a run.
    """

    values: tuple[float, ...]
    units: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.units):
            raise SekaError(f"ItemScores: {len(self.values)} values but {len(self.units)} units")

    def to_dict(self) -> dict[str, Any]:
        """The scores as plain JSON-ready data (what :meth:`from_dict` reads)."""
        return {"values": list(self.values), "units": list(self.units)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ItemScores":
        """Scores written by :meth:`to_dict` (a stored run's per-item results)."""
        return cls(tuple(float(v) for v in data["values"]), tuple(str(u) for u in data["units"]))


def item_scores(family: str, report: Mapping[str, Any], policy: str | None = None) -> ItemScores | None:
    """The headline metric per item from a family report's JSON form (``reports[family][method]`` of a
    run), or None when the report kept no per-item results (a run without ``--per-item`` before item
    scores were stored). ``policy``: the lost-in-middle highlight policy of the headline (default: the
    report's first)."""
    if family == "counterfact":
        rows = report.get("items")
        if not rows:
            return None
        return ItemScores(tuple(1.0 if r["margin"] > 0 else 0.0 for r in rows), tuple(str(r["case_id"]) for r in rows))
    if family == "conflict":
        if not report.get("hits"):
            return None
        units = report.get("units") or [None] * len(report["hits"])
        return ItemScores(tuple(1.0 if h else 0.0 for h in report["hits"]),
                          tuple(str(u) if u is not None else f"#{i}" for i, u in enumerate(units)))
    if family == "instructions":
        if not report.get("passed"):
            return None
        return ItemScores(tuple(1.0 if p else 0.0 for p in report["passed"]),
                          tuple(f"#{i}" for i in range(len(report["passed"]))))
    if family == "lost-in-middle":
        rows = report.get("rows")
        if not rows:
            return None
        if policy is None:
            policies = (report.get("settings") or {}).get("policies") or [rows[0]["policy"]]
            policy = policies[0]
        rows = [r for r in rows if r["policy"] == policy]
        return ItemScores(tuple(1.0 if r["em"] else 0.0 for r in rows),
                          tuple(f"q{r['question_index']}" for r in rows)) if rows else None
    raise SekaError(f"unknown family {family!r}; choose from {', '.join(SUITE_FAMILIES)}")


def _group_stats(labels: Sequence[str], flags: Sequence[bool], order: Sequence[str] | None, n_boot: int,
                 clusters: Sequence[Any] | None = None) -> dict[str, Stat]:
    """One :class:`Stat` per group; ``clusters``: each interval resamples whole units (an item's cases)."""
    return {k: Stat(s, lo, hi, n) for k, (s, lo, hi, n)
            in group_share_cis(labels, flags, order, n_boot=n_boot, clusters=clusters).items()}


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
                skipped[name] = ("the model has no AdaSEKA expert set (the command line loads the one shipped for the "
                                 "default model by itself; for another model build one with `seka-rag build-experts` "
                                 "and pass --experts DIR)")
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
    nq_first: int = 0  #: first NQ-open question of the lost-in-middle items, counted from 0 (seed 0, test) or 2000 (dev seeds)
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
    each evaluation's own report (``to_dict``); ``item_scores[family][method]`` the headline per item
    (:class:`ItemScores`, behind :meth:`paired`); ``skipped`` why a family or method did not run;
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
    item_scores: dict[str, dict[str, ItemScores]] = field(default_factory=dict)

    def paired(self, reference: str = "unsteered") -> dict[str, dict[str, Stat]]:
        """Each method's headline minus ``reference``'s, item by item: ``{method: {family: Stat}}``.

        The difference is in share points (:class:`Stat` with ``signed``), its 95 % interval a paired
        bootstrap that resamples the family's units (whole counterbalanced items, whole NQ questions).
        A family is left out where either method has no item scores or their items differ.
        """
        n_boot = int(self.settings.get("n_boot", 2000))
        out: dict[str, dict[str, Stat]] = {}
        for family, cells in self.item_scores.items():
            ref = cells.get(reference)
            if ref is None:
                continue
            for method, scores in cells.items():
                if method == reference or scores.units != ref.units:
                    continue
                a, b = scores.values, ref.values
                diff = sum(a) / len(a) - sum(b) / len(b)
                lo, hi = paired_bootstrap_diff_ci(a, b, n_boot=n_boot, seed=0, clusters=scores.units)
                out.setdefault(method, {})[family] = Stat(diff, lo, hi, len(a), signed=True)
        return out

    def paired_table(self, reference: str = "unsteered", markdown: bool = False) -> str | None:
        """Methods × families of :meth:`paired` (None when nothing pairs with ``reference``)."""
        diffs = self.paired(reference)
        if not diffs:
            return None
        body = [[m, *(diffs[m][f].text() if f in diffs[m] else "-" for f in self.families)]
                for m in self.methods if m in diffs]
        return format_table([f"method - {reference}", *self.families], body, markdown=markdown)

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
        tied = {r.get("n_tied") for r in (self.reports.get("counterfact") or {}).values() if isinstance(r, dict)}
        tied.discard(None)
        tied.discard(0)
        if tied:
            lines.append(f"counterfact: {max(tied)} item(s) left out of every cell: their two targets share their "
                         "first token, so first-token efficacy cannot tell them apart")
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

    def _units_note(self) -> list[str]:
        """What ``(n)`` counts where it is not the resampled unit (plain text; the Markdown header says it)."""
        kinds = [text for f, text in (("conflict", "conflict: cases, 4 per item"),
                                      ("lost-in-middle", "lost-in-middle: contexts, 3 per question"))
                 if f in self.families]
        if not kinds:
            return []
        units = " and ".join(u for f, u in (("conflict", "items"), ("lost-in-middle", "questions")) if f in self.families)
        return [f"(n) counts {'; '.join(kinds)}; intervals resample whole {units}"]

    def _paired_section(self, markdown: bool, reference: str = "unsteered") -> list[str]:
        """The paired table with its title, or why there is none although ``reference`` and another method ran."""
        paired = self.paired_table(reference, markdown=markdown)
        title = paired_title(reference)
        if paired:
            return ["", f"## {title}" if markdown else title, *([""] if markdown else []), paired]
        if reference in self.table and len(self.table) > 1:
            note = (f"no paired differences from {reference}: the result keeps no per-item results "
                    "(a file from before item scores were stored, written without --per-item)")
            return ["", f"* {note}" if markdown else note]
        return []

    def _check_named_reference(self, reference: str) -> None:
        """A reference other than the default unsteered must be one of the result's methods."""
        if reference != "unsteered":
            self.check_reference(reference)

    def check_reference(self, reference: str) -> None:
        """:class:`SekaError` unless ``reference`` is a method of this result (the paired tables' baseline)."""
        if reference not in self.methods:
            raise SekaError(f"cannot pair with {reference!r}: the result holds the methods "
                            f"{', '.join(self.methods)}{did_you_mean([reference], self.methods)}")

    def setup_line(self) -> str:
        """How the model ran: dtype, device, the single projection's default edit, seka-rag's version ("" if
        the run recorded none of it)."""
        ms = self.settings.get("model_settings") or {}
        parts = []
        if ms.get("dtype"):
            parts.append(f"{ms['dtype']} on {ms.get('device', '?')}")
        p = ms.get("projection_defaults")
        if p:
            from ..projection import layer_ranges

            scales = sorted(set((p.get("layer_scale") or {}).values()))
            scale = f" x per-layer scale {scales[0]:g}" if len(scales) == 1 and scales[0] != 1 else (
                " x per-layer scales" if len(scales) > 1 else "")
            parts.append(f"SEKA g+ {p['gain_pos']:g}, g- {p['gain_neg']:g}{scale} on layers {layer_ranges(p['layers'])}")
        if ms.get("seka_rag_version"):
            parts.append(f"seka-rag {ms['seka_rag_version']}")
        return "; ".join(parts)

    def text(self, reference: str = "unsteered") -> str:
        """The whole result as plain text (what ``seka-rag eval`` prints); the paired table's differences
        are from ``reference`` (a method of the result)."""
        self._check_named_reference(reference)
        setup = self.setup_line()
        parts = [*([f"Setup: {setup}", ""] if setup else []), self.main_table(), "", *self.legend(),
                 *self._units_note(), *self._paired_section(markdown=False, reference=reference)]
        for title, table in self.detail_tables():
            parts += ["", title, table]
        notes = self.notes()
        if notes:
            parts += ["", *notes]
        return "\n".join(parts)

    def markdown(self, reference: str = "unsteered") -> str:
        """The whole result as a Markdown document; the paired table's differences are from ``reference``."""
        self._check_named_reference(reference)
        def count(f: str) -> str:
            n = self.items[f]
            if f == "lost-in-middle":
                return f"{f} {n} question{'s' if n != 1 else ''} × 3 gold positions"
            items = f"{n // 4} item{'s' if n // 4 != 1 else ''} × 4"
            return f"{f} {n} case{'s' if n != 1 else ''} ({items})" if f == "conflict" else f"{f} {n}"

        counts = ", ".join(count(f) for f in self.families)
        setup = self.setup_line()
        profiling = self.seconds.get("pasta profiling")
        took = f"{self.seconds.get('total', 0):.0f} s in all" + (f" + {profiling:.0f} s PASTA profiling" if profiling else "")
        parts = [f"# Evaluation suite: {self.model}", "",
                 f"Items: {counts}; seed {self.settings.get('seed', 0)}; cells are `mean [95 % CI] (n)`, "
                 "percentile-bootstrap intervals over the family's units (items; a conflict item's four cases "
                 f"together; a lost-in-middle question's three contexts together); {took}."
                 + (f" Setup: {setup}." if setup else ""), "",
                 self.main_table(markdown=True), "", *(f"* {line}" for line in self.legend())]
        parts += self._paired_section(markdown=True, reference=reference)
        for title, table in self.detail_tables(markdown=True):
            parts += ["", f"## {title}", "", table]
        notes = self.notes()
        if notes:
            parts += ["", "## Notes", "", *(f"* {line}" for line in notes)]
        if self.settings.get("command"):
            parts += ["", f"Command: `{self.settings['command']}`"]
        for run in self.settings.get("merged_runs") or ():
            parts += ["", f"Merged run ({run.get('seconds', 0):.0f} s): `{run.get('command') or 'command not recorded'}`"]
        return "\n".join(parts) + "\n"

    def to_dict(self, reference: str = "unsteered") -> dict[str, Any]:
        """JSON-ready form of the whole run: settings, cells, skips and errors. ``paired`` holds the
        differences from unsteered; another ``reference`` adds ``paired_against`` (its name and the
        differences from it)."""
        self._check_named_reference(reference)
        extra = {} if reference == "unsteered" else {"paired_against": {
            "reference": reference,
            "differences": {m: {f: s.to_dict() for f, s in row.items()} for m, row in self.paired(reference).items()}}}
        return {
            "model": self.model, "families": list(self.families), "methods": list(self.methods),
            "items": dict(self.items), "settings": dict(self.settings),
            "table": {m: {f: s.to_dict() for f, s in row.items()} for m, row in self.table.items()},
            "details": {t: {m: {c: s.to_dict() for c, s in cols.items()} for m, cols in rows.items()}
                        for t, rows in self.details.items()},
            "reports": self.reports, "skipped": self.skipped, "errors": dict(self.errors), "seconds": self.seconds,
            "item_scores": {f: {m: sc.to_dict() for m, sc in cells.items()} for f, cells in self.item_scores.items()},
            "paired": {m: {f: s.to_dict() for f, s in row.items()} for m, row in self.paired().items()},
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SuiteResult":
        """A result back from its :meth:`to_dict` form (a ``seka-rag eval --out`` file).

        Files written before item scores were stored get them from their per-item reports
        (``--per-item`` runs); ``paired`` is recomputed, never read.
        """
        try:
            result = cls(
                model=str(data["model"]), families=list(data["families"]), methods=list(data["methods"]),
                items={f: int(n) for f, n in data["items"].items()},
                table={m: {f: Stat.from_dict(c) for f, c in row.items()} for m, row in data["table"].items()},
                details={t: {m: {c: Stat.from_dict(v) for c, v in cols.items()} for m, cols in rows.items()}
                         for t, rows in data.get("details", {}).items()},
                reports={f: dict(r) for f, r in data.get("reports", {}).items()},
                skipped={"families": dict(data.get("skipped", {}).get("families", {})),
                         "methods": dict(data.get("skipped", {}).get("methods", {}))},
                errors=dict(data.get("errors", {})), seconds=dict(data.get("seconds", {})),
                settings=dict(data.get("settings", {})),
            )
            unknown = [f for f in result.families if f not in SUITE_FAMILIES or f not in result.items]
            unknown += [f for row in result.table.values() for f in row if f not in result.families]
            if unknown:
                raise ValueError(f"families {sorted(set(unknown))} are not the run's families with item counts")
            stored = data.get("item_scores") or {}
            for family, cells in stored.items():
                result.item_scores[family] = {m: ItemScores.from_dict(sc) for m, sc in cells.items()}
            policies = result.settings.get("nq_policies") or [None]
            for family, reports in result.reports.items():
                for method, report in reports.items():
                    if method not in result.item_scores.get(family, {}):
                        scores = item_scores(family, report, policies[0] if family == "lost-in-middle" else None)
                        if scores is not None:
                            result.item_scores.setdefault(family, {})[method] = scores
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SekaError(f"not a `seka-rag eval --out` result ({type(exc).__name__}: {exc})") from None
        return result


def plot_suite(result: "SuiteResult | Mapping[str, Any]", path: str | Path) -> Path:
    """A PNG of the main table: one panel per family, one bar per method with its 95 % interval.

    ``result``: a :class:`SuiteResult` or its ``to_dict()`` (e.g. a ``seka-rag eval --out`` file).
    Needs matplotlib (``pip install matplotlib``, or the checkout's ``[bench]`` extra).
    """
    from .sensitivity import require_matplotlib

    Figure, Canvas = require_matplotlib("the plot (--plot)", "leave out --plot")
    data = result.to_dict() if isinstance(result, SuiteResult) else result
    families = [f for f in data["families"] if any(f in row for row in data["table"].values())]
    methods = [m for m in data["methods"] if m in data["table"]]
    if not families or not methods:
        raise SekaError("nothing to plot: the result has no measured cell")
    fig = Figure(figsize=(max(5.5, 3.3 * len(families)), 3.8))  # room for the title with one family
    Canvas(fig)
    # one colour per method name, whatever else a run holds, so that figures of several runs agree
    known = list(SUITE_METHODS) + [m for m in methods if m not in SUITE_METHODS]
    colours = [f"C{known.index(m) % 10}" for m in methods]
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
        sizes = sorted({data["table"][m][fam]["n"] for m in methods if data["table"][m].get(fam)})
        ax.set_title(f"{fam} (n = {', '.join(map(str, sizes))})", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_ylabel("% (whiskers: 95 % CI)")
    fig.suptitle(f"{data.get('model', '')}: headline metric per family", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    if not path.suffix:  # matplotlib would add ".png" itself; say the name it really writes
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def lim_first_question(seed: int, nq_first: int, n: int) -> int:
    """The first NQ-open question of a lost-in-middle run: test questions (seed 0) count from question 0
    and stop before the dev questions at :data:`~seka_rag.evaluation.lost_in_middle.DEV_FIRST_QUESTION`;
    any other seed counts ``nq_first`` from there, so a dev run never asks a test question."""
    from .lost_in_middle import DEV_FIRST_QUESTION

    if seed != 0:
        return DEV_FIRST_QUESTION + nq_first
    if nq_first + n > DEV_FIRST_QUESTION:
        raise ValueError(f"test questions are 0-{DEV_FIRST_QUESTION - 1}; questions {nq_first}-{nq_first + n - 1} "
                         f"reach the dev questions (a seed other than 0 runs those, counting --nq-first from "
                         f"{DEV_FIRST_QUESTION})")
    return nq_first


def suite_items(family: str, n: int, config: SuiteConfig) -> list:
    """The ``n`` items of one suite family (lost-in-middle: ``n`` questions × 3 gold positions)."""
    try:
        if family == "counterfact":
            from .counterfact import counterfact_items

            from .conflict import split_for_seed

            # generated items: the test entities for seed 0, the dev entities for any other seed
            return counterfact_items(config.counterfact, n, config.seed, split=split_for_seed(config.seed))
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
                                        first=lim_first_question(config.seed, config.nq_first, n))
    except (OSError, ValueError) as exc:
        raise SekaError(f"cannot build the {family} items: {exc}") from None
    raise SekaError(f"unknown family {family!r}; choose from {', '.join(SUITE_FAMILIES)}")


#: One family's evaluation of one method: (report dict, headline, {detail title: {column: Stat}}, the
#: headline per item).
FamilyOutcome = tuple[dict[str, Any], Stat, dict[str, dict[str, Stat]], "ItemScores | None"]


def _counterfact(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .counterfact import evaluate_counterfact

    rep = evaluate_counterfact(model, items, method=method, batch_size=config.batch_size, progress=progress,
                               n_boot=config.n_boot)
    head = Stat(rep.efficacy, rep.ci_low, rep.ci_high, rep.n)
    hits = [m > 0 for m in rep.margins]
    cols = {"efficacy": head, **_group_stats(rep.kinds, hits, None, config.n_boot),
            "margin (nats)": Stat(rep.mean_margin, *rep.margin_ci, rep.n, percent=False)}
    return (rep.to_dict(include_items=config.per_item), head, {"counterfact: efficacy by kind, first-token margin": cols},
            item_scores("counterfact", rep.to_dict(include_items=True)))


def _conflict(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .baselines import evaluate_family_with

    rep = evaluate_family_with(method, model, items, batch_size=config.batch_size, progress=progress,
                               n_boot=config.n_boot)
    head = Stat(rep.share, rep.ci_low, rep.ci_high, rep.n)
    order = ("fictional", "real_agree", "real_contradict")
    units = [it.unit or f"#{i}" for i, it in enumerate(items)]
    cols = {"share": head, **_group_stats([it.group for it in items], rep.hits, order, config.n_boot, units),
            "margin (nats)": Stat.values(rep.margins, config.n_boot, percent=False, clusters=units)}
    return (rep.to_dict(include_items=config.per_item), head, {"conflict: share by kind, answer margin": cols},
            item_scores("conflict", rep.to_dict(include_items=True)))


def _instructions(model, items, method, config: SuiteConfig, progress: bool, shared: Any) -> FamilyOutcome:
    from .instructions import evaluate_instructions

    rep = evaluate_instructions(model, items, method=method, max_new_tokens=config.max_new_tokens,
                                batch_size=config.batch_size, progress=progress, n_boot=config.n_boot)
    head = Stat(rep.share, rep.ci_low, rep.ci_high, rep.n)
    cols = {"all": head, **{k: Stat(rep.groups[k], *rep.group_ci[k], rep.group_n[k]) for k in rep.groups}}
    echo = {"passes without repeating the instruction": Stat(rep.clean_share, *rep.clean_ci, rep.n),
            "answers repeating the instruction": Stat.shares(rep.echoed, config.n_boot)}
    return (rep.to_dict(include_items=config.per_item), head,
            {"instructions: pass rate by instruction type": cols,
             "instructions: answers that repeat the highlighted instruction": echo},
            item_scores("instructions", rep.to_dict(include_items=True)))


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
        details[f"lost-in-middle, '{policy}' highlighted: share of contexts where log p(gold answer) rose"] = {
            p: Stat(c.share_rises, *c.rises_ci, c.n) for p, c in cells.items()}
    top = rep.cell("all", config.nq_policies[0])
    return (rep.to_dict(include_rows=config.per_item), Stat(top.em, *top.em_ci, top.n), details,
            item_scores("lost-in-middle", rep.to_dict(include_rows=True), config.nq_policies[0]))


#: Settings that decide a family's items (and so must agree between the runs :func:`merge_suite_results` joins).
ITEM_SETTINGS: dict[str, tuple[str, ...]] = {
    "counterfact": ("seed", "counterfact"),
    "conflict": ("seed",),
    "instructions": ("seed", "max_new_tokens"),
    "lost-in-middle": ("seed", "nq", "nq_policies", "nq_passages", "nq_first", "nq_max_new_tokens"),
}


#: Settings of the loaded model that must agree between merged runs (recorded by ``seka-rag eval`` as
#: ``settings["model_settings"]``; a run's AdaSEKA expert set matters only to the AdaSEKA methods).
MODEL_SETTINGS: tuple[str, ...] = ("projection", "gguf_file", "dtype", "device", "attn_implementation")


def _projection_fingerprint(run: "SuiteResult") -> str | None:
    return ((run.settings.get("model_settings") or {}).get("projection_defaults") or {}).get("fingerprint")


def _seka_rag_version(run: "SuiteResult") -> str | None:
    return (run.settings.get("model_settings") or {}).get("seka_rag_version")

#: Run settings that belong to one method: runs that both measured the method must agree on them.
METHOD_SETTINGS: dict[str, str] = {"spa_strength": "spa", "pasta": "pasta"}

_RUN_ONLY = ("command", "merged_runs")


def items_digest(items: Sequence[Any]) -> str:
    """A short fingerprint of a family's items (their full text and parameters), so that runs can be
    checked to hold the same items before they are merged."""
    import hashlib

    return hashlib.sha256("\n".join(repr(it) for it in items).encode("utf-8")).hexdigest()[:16]


def _setting(run: SuiteResult, key: str) -> Any:
    """A run's item setting, with the default of the time for files written before the setting existed."""
    return run.settings.get(key, SuiteConfig().to_dict().get(key))


def _check_same_items(family: str, first: SuiteResult, run: SuiteResult) -> None:
    if first.items[family] != run.items[family]:
        raise SekaError(f"cannot merge: {family} has {first.items[family]} items in one run and "
                        f"{run.items[family]} in another")
    digests = [r.settings.get("item_digests", {}).get(family) for r in (first, run)]
    for key in ITEM_SETTINGS[family]:
        a, b = _setting(first, key), _setting(run, key)
        if key in ("nq", "counterfact"):
            if all(digests):
                continue  # the digests below compare the items themselves
            a, b = (Path(x).name if x else x for x in (a, b))
        if a != b:
            raise SekaError(f"cannot merge: the {family} items differ ({key} {a!r} in one run, {b!r} in another)")
    if all(digests) and digests[0] != digests[1]:
        raise SekaError(f"cannot merge: the {family} items differ (same settings, different item contents: "
                        "a data file changed between the runs?)")
    units = {tuple(sc.units) for r in (first, run) for sc in r.item_scores.get(family, {}).values()}
    if len(units) > 1:
        raise SekaError(f"cannot merge: the {family} items differ (their per-item units do not match)")


def merge_suite_results(results: Sequence["SuiteResult | Mapping[str, Any]"]) -> SuiteResult:
    """One result from several runs of the same items, e.g. methods run in parallel processes.

    Each input is a :class:`SuiteResult` or its ``to_dict()`` (a ``seka-rag eval --out`` file). The
    runs must be of one model with the same :data:`MODEL_SETTINGS` and item seed, and where two share
    a family, of the same items (item count, the :data:`ITEM_SETTINGS` that build them, the items'
    digest and per-item units where the files have them). A method may appear in several runs for
    different families, never twice for one family, and runs that both measured a method must agree
    on its :data:`METHOD_SETTINGS`. A cell that failed in one run and was measured in another is
    measured. Methods and families keep the suite's order; each run's command, time and method
    settings are kept in ``settings["merged_runs"]``.
    """
    runs = [r if isinstance(r, SuiteResult) else SuiteResult.from_dict(r) for r in results]
    if not runs:
        raise SekaError("nothing to merge: give at least one result")
    models = sorted({r.model for r in runs})
    if len(models) > 1:
        raise SekaError(f"cannot merge runs of different models: {', '.join(models)}")
    seeds = sorted({int(r.settings.get("seed", 0)) for r in runs})
    if len(seeds) > 1:
        raise SekaError(f"cannot merge runs of different item seeds ({', '.join(map(str, seeds))}): "
                        "seed 0 gives the test items, another seed dev items")
    for key in MODEL_SETTINGS:
        values = {str(r.settings["model_settings"].get(key)) for r in runs if "model_settings" in r.settings}
        if len(values) > 1:
            raise SekaError(f"cannot merge runs of differently loaded models: {key} {' vs '.join(sorted(values))}")
    for what, recorded in (("projection", _projection_fingerprint), ("seka-rag version", _seka_rag_version)):
        values = {str(recorded(r)) for r in runs if recorded(r) is not None}  # runs that recorded it
        if len(values) > 1:
            raise SekaError(f"cannot merge runs that steered with a different {what} ({' vs '.join(sorted(values))}): "
                            "the table would describe every row with the first run's settings")
    for key, method in METHOD_SETTINGS.items():
        values = {json.dumps(r.settings.get(key), sort_keys=True) for r in runs if method in r.table}
        if len(values) > 1:
            raise SekaError(f"cannot merge: the runs that measured {method} used different {key} ({' vs '.join(sorted(values))})")
    merged = SuiteResult(model=models[0], families=[], methods=[], items={})
    merged.settings = {k: v for k, v in runs[0].settings.items() if k not in _RUN_ONLY}
    merged.settings["merged_runs"] = []
    owner: dict[str, SuiteResult] = {}  # family -> the first run that has it
    for run in runs:
        for family in run.families:
            first = owner.setdefault(family, run)
            if first is not run:
                _check_same_items(family, first, run)
        for family, rows in run.reports.items():
            for method in rows:
                if method in merged.reports.get(family, {}):
                    raise SekaError(f"cannot merge: {family} / {method} was measured in more than one run")
        for method, row in run.table.items():
            merged.table.setdefault(method, {}).update(row)
        for title, rows in run.details.items():
            merged.details.setdefault(title, {}).update(rows)
        for family, rows in run.reports.items():
            merged.reports.setdefault(family, {}).update(rows)
        for family, cells in run.item_scores.items():
            merged.item_scores.setdefault(family, {}).update(cells)
        for kind in ("families", "methods"):
            merged.skipped[kind].update(run.skipped.get(kind, {}))
        merged.errors.update(run.errors)
        for key, method in METHOD_SETTINGS.items():
            if method in run.table:
                merged.settings[key] = run.settings.get(key)
        merged.settings["merged_runs"].extend(run.settings.get("merged_runs") or [
            {"command": run.settings.get("command"), "seconds": run.seconds.get("total", 0.0),
             "families": list(run.families), "methods": list(run.methods),
             **{k: run.settings.get(k) for k, m in METHOD_SETTINGS.items() if m in run.table}}])
        merged.seconds.setdefault("runs", []).append(run.seconds)
    for family in SUITE_FAMILIES:
        if family in owner:
            merged.families.append(family)
            merged.items[family] = owner[family].items[family]
            for key in ITEM_SETTINGS[family]:
                merged.settings[key] = _setting(owner[family], key)
            digest = owner[family].settings.get("item_digests", {}).get(family)
            if digest:
                merged.settings.setdefault("item_digests", {})[family] = digest
    merged.settings["families"] = list(merged.families)
    merged.settings["items"] = dict(merged.items)
    merged.errors = {cell: why for cell, why in merged.errors.items()  # re-measured in another run
                     if cell.split(" / ", 1)[1] not in merged.reports.get(cell.split(" / ", 1)[0], {})}
    measured = set(merged.table) | {m for r in runs for m in r.methods}
    merged.methods = [m for m in SUITE_METHODS if m in measured] + sorted(measured - set(SUITE_METHODS))
    merged.skipped["families"] = {k: v for k, v in merged.skipped["families"].items() if k not in merged.families}
    merged.skipped["methods"] = {k: v for k, v in merged.skipped["methods"].items()  # unless measured everywhere
                                 if not all(f in merged.table.get(k, {}) for f in merged.families)}
    merged.seconds["total"] = sum(float(r.seconds.get("total", 0.0)) for r in runs)
    return merged


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
            skipped[family] = ("no NQ-open oracle file: pass --nq PATH (qa_data/nq-open-oracle.jsonl.gz of the "
                              "Lost in the Middle study's repository)")
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
    result.settings["item_digests"] = {f: items_digest(items[f]) for f in families}
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
                    report, head, details, scores = _RUNNERS[family](model, items[family], method, config, progress,
                                                                     shared)
                except Exception as exc:  # noqa: BLE001 - one failed cell must not lose a long run
                    result.errors[f"{family} / {name}"] = f"{type(exc).__name__}: {exc}"
                    bar.write(f"  {family} / {name}: FAILED ({type(exc).__name__}: {exc})", file=sys.stderr)
                else:
                    result.table.setdefault(name, {})[family] = head
                    result.reports.setdefault(family, {})[name] = report
                    if scores is not None:
                        result.item_scores.setdefault(family, {})[name] = scores
                    for title, cols in details.items():
                        result.details.setdefault(title, {})[name] = cols
                    if progress:  # a progress line: the table at the end holds every cell
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
    "ITEM_SETTINGS",
    "ItemScores",
    "METHOD_SETTINGS",
    "MODEL_SETTINGS",
    "PAIRED_TITLE",
    "PASTA_PROFILE_ITEMS",
    "PASTA_PROFILE_STRIDE",
    "PASTA_TOP",
    "SUITE_FAMILIES",
    "SUITE_METHODS",
    "Stat",
    "SuiteConfig",
    "SuiteResult",
    "build_suite_items",
    "item_scores",
    "items_digest",
    "load_head_profile",
    "merge_suite_results",
    "paired_title",
    "parse_items",
    "parse_names",
    "run_suite",
    "save_head_profile",
    "suite_items",
    "suite_methods",
]
