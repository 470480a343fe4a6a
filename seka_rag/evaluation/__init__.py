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
from .families import FamilyItem, FamilyReport, evaluate_family, family_items, format_family_table, score_items
from .stats import bootstrap_ci, paired_bootstrap_diff_ci

__all__ = [
    "ConflictCase",
    "ConflictItem",
    "ConflictReport",
    "FamilyItem",
    "FamilyReport",
    "GroupStats",
    "bootstrap_ci",
    "conflict_cases",
    "conflict_split",
    "evaluate_conflicts",
    "evaluate_family",
    "family_items",
    "fictional_conflict_items",
    "format_family_table",
    "paired_bootstrap_diff_ci",
    "real_conflict_items",
    "score_items",
]
