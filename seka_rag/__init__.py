"""seka-rag: tell a language model which part of its prompt matters.

SEKA (Spectral Editing Key Amplification) edits the key vectors of highlighted prompt tokens before
attention runs, so it works with SDPA / FlashAttention at near-zero cost. AdaSEKA keeps several
expert projections (:class:`ExpertSet`) and mixes them per prompt, routed by the model's own query
(``router="attention"``) or by a sentence embedding (``router="embedding"``); after a call,
``model.last_routing`` (a :class:`RoutingResult`) tells which experts fired.

>>> from seka_rag import SekaModel
>>> model = SekaModel.default()                       # doctest: +SKIP
>>> model.generate("Doc 1: The tower is in Paris.\\nDoc 2: <<The tower is in Rome.>>\\n"
...                "Where is the tower?")              # doctest: +SKIP
>>> ada = SekaModel.default(adaptive=True)            # doctest: +SKIP
"""

from .adaptive import Expert, ExpertSet, RoutingConfig, RoutingResult, with_gain_scales
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
    "Expert",
    "ExpertSet",
    "HighlightError",
    "Markers",
    "ModelFilesMissingError",
    "ModelIntegrityError",
    "Projection",
    "ProjectionError",
    "ProjectionMeta",
    "RoutingConfig",
    "RoutingResult",
    "SekaError",
    "SekaModel",
    "SteeringConfig",
    "SteeringConfigError",
    "UnsupportedModelError",
    "supported_model_types",
    "escape_markers",
    "mark_highlight",
    "with_gain_scales",
    "__version__",
]
