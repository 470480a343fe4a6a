"""Seeded generator of synthetic contrastive triplets (fictional entities; no copied data sets)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Triplet:
    """One contrastive example for the projection builder.

    ``answer`` occurs in ``context``; ``question`` is answered by it; ``unrelated_question`` is
    about something the context does not mention.
    """

    context: str
    question: str
    answer: str
    unrelated_question: str
    relation: str = ""  #: which relation template produced it (for diversity statistics)


def generate_triplets(n: int, seed: int = 0) -> list[Triplet]:
    raise NotImplementedError  # filled in by the generator task
