"""Evaluations of attention steering: the two-document knowledge-conflict benchmark, the task families, the
side-by-side suite (:mod:`.suite`, ``seka-rag eval``), the sensitivity sweeps (:mod:`.sensitivity`:
gains, layers and δ on conflicts; :mod:`.gain_scale`: scaled-down gains on long contexts and
instructions) and statistics."""

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
from .stats import bootstrap_ci, format_ci, mean_ci, paired_bootstrap_diff_ci, share_ci
from .suite import ItemScores, SuiteConfig, SuiteResult, merge_suite_results, run_suite

__all__ = [
    "ConflictCase",
    "ConflictItem",
    "ConflictReport",
    "FamilyItem",
    "FamilyReport",
    "GroupStats",
    "ItemScores",
    "SuiteConfig",
    "SuiteResult",
    "bootstrap_ci",
    "conflict_cases",
    "conflict_split",
    "evaluate_conflicts",
    "evaluate_family",
    "family_items",
    "fictional_conflict_items",
    "format_ci",
    "format_family_table",
    "mean_ci",
    "merge_suite_results",
    "paired_bootstrap_diff_ci",
    "real_conflict_items",
    "run_suite",
    "score_items",
    "share_ci",
]
