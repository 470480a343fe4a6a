"""seka-rag: tell a language model which part of its prompt matters.

SEKA (Spectral Editing Key Amplification) edits the key vectors of highlighted prompt tokens before
attention runs, so it works with SDPA / FlashAttention at near-zero cost.

>>> from seka_rag import SekaModel
>>> model = SekaModel.default()                       # doctest: +SKIP
>>> model.generate("Doc 1: The tower is in Paris.\\nDoc 2: <<The tower is in Rome.>>\\n"
...                "Where is the tower?")              # doctest: +SKIP
"""

from .architectures import ARCHITECTURES, supported_model_types
from .errors import (
    HighlightError,
    ModelFilesMissingError,
    ModelIntegrityError,
    ProjectionError,
    SekaError,
    SteeringConfigError,
    UnsupportedModelError,
)
from .highlight import DEFAULT_MARKERS, Markers, escape_markers, mark_highlight
from .model import SekaModel
from .projection import Projection, ProjectionMeta
from .steering import SteeringConfig

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MARKERS",
    "HighlightError",
    "Markers",
    "ModelFilesMissingError",
    "ModelIntegrityError",
    "Projection",
    "ProjectionError",
    "ProjectionMeta",
    "SekaError",
    "SekaModel",
    "SteeringConfig",
    "SteeringConfigError",
    "UnsupportedModelError",
    "supported_model_types",
    "escape_markers",
    "mark_highlight",
    "__version__",
]
