"""Our own synthetic data: contrastive triplets for building projections, shipped projection files."""

from .triplets import Triplet, generate_triplets

__all__ = ["Triplet", "generate_triplets"]
