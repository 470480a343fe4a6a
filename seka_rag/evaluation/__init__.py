"""Evaluations of attention steering: the two-document knowledge-conflict benchmark and statistics."""

from .conflict import (
    ConflictCase,
    ConflictItem,
    ConflictReport,
    GroupStats,
    conflict_cases,
    conflict_split,
    evaluate_conflicts,
    fictional_conflict_items,
    real_conflict_items,
)
from .stats import bootstrap_ci, paired_bootstrap_diff_ci

__all__ = [
    "ConflictCase",
    "ConflictItem",
    "ConflictReport",
    "GroupStats",
    "bootstrap_ci",
    "conflict_cases",
    "conflict_split",
    "evaluate_conflicts",
    "fictional_conflict_items",
    "paired_bootstrap_diff_ci",
    "real_conflict_items",
]
