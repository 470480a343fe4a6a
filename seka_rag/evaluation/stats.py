"""Small statistics helpers for the evaluations (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (seeded, reproducible).

    ``clusters`` (one label per value) resamples whole clusters instead of single values: values
    that are not independent — the counterbalanced cases of one item (both document orders × either
    document highlighted) — stay together, so the interval is not too narrow (a counterbalanced
    unsteered share of exactly 50 % gets ``(0.5, 0.5)``). Returns ``(nan, nan)`` for no values and
    ``(v, v)`` when every value is ``v``.
    """
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return (math.nan, math.nan)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    if clusters is not None:  # resample clusters: the mean of the drawn clusters' values
        labels = list(clusters)
        if len(labels) != arr.size:
            raise ValueError(f"{arr.size} values but {len(labels)} cluster labels")
        index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        ids = np.array([index[label] for label in labels])
        sums = np.bincount(ids, weights=arr, minlength=len(index))
        counts = np.bincount(ids, minlength=len(index)).astype(float)
        idx = rng.integers(0, len(index), size=(n_boot, len(index)))
        return _percentile_interval(sums[idx].sum(axis=1) / counts[idx].sum(axis=1), level)
    means = np.empty(n_boot)
    # chunked so that n_boot x n index arrays stay small for long value lists
    chunk = max(1, 2_000_000 // arr.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, arr.size, size=(stop - start, arr.size))
        means[start:stop] = arr[idx].mean(axis=1)
    return _percentile_interval(means, level)


def _percentile_interval(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_bootstrap_diff_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Bootstrap CI of ``mean(a - b)`` for paired values (e.g. per-case margins with and without steering);
    ``clusters`` as in :func:`bootstrap_ci`."""
    a_arr, b_arr = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need equal lengths, got {a_arr.size} and {b_arr.size}")
    return bootstrap_ci(a_arr - b_arr, n_boot=n_boot, seed=seed, level=level, clusters=clusters)


def share_ci(flags: Sequence[bool], n_boot: int = 2000, seed: int = 0,
             clusters: Sequence[Any] | None = None) -> tuple[float, float, float]:
    """(share of True, bootstrap 95 % interval low, high); NaNs for no values. ``clusters``: see :func:`bootstrap_ci`."""
    return mean_ci([1.0 if f else 0.0 for f in flags], n_boot, seed, clusters=clusters)


def mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
            clusters: Sequence[Any] | None = None) -> tuple[float, float, float]:
    """(mean, bootstrap 95 % interval low, high); NaNs for no values. ``clusters``: see :func:`bootstrap_ci`."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan, math.nan
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed, clusters=clusters)
    return sum(values) / len(values), lo, hi


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free interval for the median of ``values``: ``(low, high, coverage)``.

    The order statistics ``x_(j) .. x_(n+1-j)`` with the largest ``j`` whose exact binomial coverage
    ``1 - 2 P(Binomial(n, 1/2) <= j - 1)`` is still at least ``level``; when even the whole range
    covers less (n < 6 for 95 %), the range and its true coverage (5 values: 93.75 %). NaNs for no values.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan

    def coverage(j: int) -> float:  # j is 1-based: the interval [x_(j), x_(n+1-j)]
        tail = sum(math.comb(n, i) for i in range(j)) / 2 ** n
        return 1.0 - 2.0 * tail

    j = 1
    while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= level:
        j += 1
    return xs[j - 1], xs[n - j], coverage(j)


def split_by(labels: Sequence[str], values: Sequence[Any], order: Sequence[str] | None = None) -> dict[str, list]:
    """``values`` grouped by their ``labels``: ``{label: [values]}``, labels in ``order`` (those present;
    default: sorted), so reports list groups stably."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    by: dict[str, list] = {}
    for label, value in zip(labels, values):
        by.setdefault(label, []).append(value)
    keys = [k for k in order if k in by] if order is not None else sorted(by)
    return {k: by[k] for k in keys}


def group_shares(labels: Sequence[str], flags: Sequence[bool], order: Sequence[str] | None = None,
                 ) -> tuple[dict[str, float], dict[str, int]]:
    """Share of True and size per label: ``({label: share}, {label: n})`` (see :func:`split_by`)."""
    by = split_by(labels, flags, order)
    return {k: sum(map(bool, v)) / len(v) for k, v in by.items()}, {k: len(v) for k, v in by.items()}


def group_share_cis(labels: Sequence[str], flags: Sequence[bool], order: Sequence[str] | None = None, *,
                    n_boot: int = 2000, seed: int = 0, clusters: Sequence[Any] | None = None,
                    ) -> dict[str, tuple[float, float, float, int]]:
    """``{label: (share, low, high, n)}``: :func:`share_ci` of each group (see :func:`split_by`);
    ``clusters`` (one per flag): each group's interval resamples whole clusters."""
    if clusters is None:
        return {k: (*share_ci(v, n_boot, seed), len(v)) for k, v in split_by(labels, flags, order).items()}
    if len(clusters) != len(flags):
        raise ValueError(f"{len(clusters)} clusters but {len(flags)} values")
    groups = split_by(labels, list(zip(flags, clusters)), order)
    return {k: (*share_ci([f for f, _ in v], n_boot, seed, clusters=[c for _, c in v]), len(v))
            for k, v in groups.items()}


def format_ci(value: float, lo: float, hi: float, *, percent: bool = True, n: int | None = None,
              digits: int | None = None, signed: bool = False) -> str:
    """``"value [lo, hi]"`` (``percent``: × 100, one decimal; else signed, ``digits`` default 2), then ``" (n)"``.

    ``signed`` prints a percentage with its sign too (a difference in points). NaNs print as ``-``.
    """
    scale, fmt = (100.0, f"{'+' if signed else ''}.{1 if digits is None else digits}f") if percent else \
        (1.0, f"+.{2 if digits is None else digits}f")

    def f(x: float) -> str:
        return "-" if x is None or math.isnan(x) else format(scale * x, fmt)

    text = f"{f(value)} [{f(lo)}, {f(hi)}]"
    return text if n is None else f"{text} ({n})"


def format_table(header: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """A table: the first column left-aligned, the others right-aligned.

    Plain text (columns two spaces apart, a dashed rule under the header) or, with ``markdown``,
    a GitHub Markdown table.
    """
    rows = [[str(v) for v in header], *([str(v) for v in row] for row in body)]
    if markdown:
        rule = ["---", *(["---:"] * (len(header) - 1))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [rows[0], rule, *rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(rows[0]), line(["-" * w for w in widths]), *(line(r) for r in rows[1:])])
