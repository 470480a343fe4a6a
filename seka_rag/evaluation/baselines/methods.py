"""Every method of the side-by-side evaluation behind one interface.

Each method is a small frozen dataclass with a ``name``, the ``passes`` (forward passes per scored
chunk / generated token: SPA needs 2), ``settings()`` (JSON-ready, for reports) and two calls:

* ``score_items(model, items, batch_size=, progress=)`` → margins log p(target) − max log p(other)
  of :class:`~seka_rag.evaluation.families.FamilyItem` s, in item order (what
  :func:`~seka_rag.evaluation.families.score_items` returns for SEKA);
* ``generate(model, prompts, highlights, max_new_tokens=, chat=, stop=, batch_size=)`` → greedy
  continuations of a list of prompts (``highlights``: one list of substrings per prompt).

:class:`Unsteered`, :class:`PromptEmphasis`, :class:`Pasta`, :class:`Spa`, :class:`Seka` (also
AdaSEKA: ``Seka("adaseka", {"router": "attention"})``). :func:`evaluate_family_with` turns a method's
margins into a :class:`~seka_rag.evaluation.families.FamilyReport`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .pasta import PastaConfig, pasta_generate, pasta_scorer
from .prompting import STYLES, emphasize_items, emphasize_prompt
from .spa import SpaConfig, spa_generate, spa_scorer
from ._common import BaselineConfigError


@runtime_checkable
class Method(Protocol):
    """What every method of :mod:`seka_rag.evaluation.baselines.methods` provides."""

    name: str

    @property
    def passes(self) -> int: ...

    def settings(self) -> dict[str, Any]: ...

    def score_items(self, model, items: Sequence[Any], *, batch_size: int = 8, progress: bool = True) -> list[float]: ...

    def generate(self, model, prompts: Sequence[Any], highlights: Sequence[Any] | None = None, *,
                 max_new_tokens: int = 64, chat: bool | None = None, stop: Any = None,
                 batch_size: int = 8) -> list[str]: ...


def _score(model, items, batch_size, progress, **kw) -> list[float]:
    from ..families import score_items

    return score_items(model, items, batch_size=batch_size, progress=progress, **kw)


@dataclass(frozen=True)
class Unsteered:
    """The model as it is: no highlight, no steering."""

    name: str = "unsteered"
    passes: int = 1

    def settings(self) -> dict[str, Any]:
        return {"method": "unsteered"}

    def score_items(self, model, items, *, batch_size=8, progress=True) -> list[float]:
        return _score(model, items, batch_size, progress, steer=False)

    def generate(self, model, prompts, highlights=None, *, max_new_tokens=64, chat=None, stop=None, batch_size=8):
        return list(model.generate(list(prompts), highlights, steer=False, max_new_tokens=max_new_tokens, chat=chat,
                                   stop=stop, batch_size=batch_size, progress=False))


@dataclass(frozen=True)
class PromptEmphasis:
    """Prompt-only emphasis (:func:`~seka_rag.evaluation.baselines.prompting.emphasize_prompt`), no steering."""

    style: str = "markers"
    name: str = ""
    passes: int = 1

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise BaselineConfigError(f"style must be one of {', '.join(map(repr, STYLES))}, got {self.style!r}")
        if not self.name:
            object.__setattr__(self, "name", f"prompt-{self.style}")

    def settings(self) -> dict[str, Any]:
        return {"method": "prompt", "style": self.style}

    def score_items(self, model, items, *, batch_size=8, progress=True) -> list[float]:
        return _score(model, emphasize_items(items, self.style), batch_size, progress, steer=False)

    def generate(self, model, prompts, highlights=None, *, max_new_tokens=64, chat=None, stop=None, batch_size=8):
        highlights = [None] * len(prompts) if highlights is None else highlights
        texts = [emphasize_prompt(p, h, self.style) for p, h in zip(prompts, highlights)]
        return list(model.generate(texts, None, steer=False, max_new_tokens=max_new_tokens, chat=chat, stop=stop,
                                   batch_size=batch_size, progress=False))


@dataclass(frozen=True)
class Pasta:
    """PASTA with ``config`` (α and heads; profile heads with :func:`~seka_rag.evaluation.baselines.select_pasta_heads`)."""

    config: PastaConfig = field(default_factory=PastaConfig)
    name: str = "pasta"
    passes: int = 1

    def settings(self) -> dict[str, Any]:
        return {"method": "pasta", **self.config.to_dict()}

    def score_items(self, model, items, *, batch_size=8, progress=True) -> list[float]:
        return _score(model, items, batch_size, progress, scorer=pasta_scorer(model, self.config))

    def generate(self, model, prompts, highlights=None, *, max_new_tokens=64, chat=None, stop=None, batch_size=8):
        return list(pasta_generate(model, list(prompts), highlights, config=self.config, max_new_tokens=max_new_tokens,
                                   chat=chat, stop=stop, batch_size=batch_size))


@dataclass(frozen=True)
class Spa:
    """SPA with ``config`` (strength ω and mask token); two forward passes per step."""

    config: SpaConfig = field(default_factory=SpaConfig)
    name: str = "spa"

    @property
    def passes(self) -> int:
        return SpaConfig.passes

    def settings(self) -> dict[str, Any]:
        return {"method": "spa", "strength": self.config.strength, "mask_token_id": self.config.mask_token_id}

    def score_items(self, model, items, *, batch_size=8, progress=True) -> list[float]:
        return _score(model, items, batch_size, progress, scorer=spa_scorer(model, self.config))

    def generate(self, model, prompts, highlights=None, *, max_new_tokens=64, chat=None, stop=None, batch_size=8):
        return list(spa_generate(model, list(prompts), highlights, config=self.config, max_new_tokens=max_new_tokens,
                                 chat=chat, stop=stop, batch_size=batch_size))


@dataclass(frozen=True)
class Seka:
    """SEKA (the model's projection) or AdaSEKA (``options={"router": "attention"}``), with per-call ``options``
    (``gain_pos``, ``layers``, ``router``...) passed to the model's own calls."""

    name: str = "seka"
    options: Mapping[str, Any] = field(default_factory=dict)
    passes: int = 1

    def settings(self) -> dict[str, Any]:
        return {"method": self.name, **dict(self.options)}

    def score_items(self, model, items, *, batch_size=8, progress=True) -> list[float]:
        return _score(model, items, batch_size, progress, **dict(self.options))

    def generate(self, model, prompts, highlights=None, *, max_new_tokens=64, chat=None, stop=None, batch_size=8):
        return list(model.generate(list(prompts), highlights, max_new_tokens=max_new_tokens, chat=chat, stop=stop,
                                   batch_size=batch_size, progress=False, **dict(self.options)))


def score_items_with(method: Method, model, items: Sequence[Any], *, batch_size: int = 8,
                     progress: bool = True) -> list[float]:
    """Margins of ``items`` under ``method`` (see :class:`Method`)."""
    return method.score_items(model, items, batch_size=batch_size, progress=progress)


def generate_with(method: Method, model, prompts: Sequence[Any], highlights: Sequence[Any] | None = None,
                  **kw: Any) -> list[str]:
    """Greedy continuations of ``prompts`` under ``method`` (``kw``: max_new_tokens, chat, stop, batch_size)."""
    return method.generate(model, prompts, highlights, **kw)


def evaluate_family_with(method: Method, model, items: Sequence[Any], *, batch_size: int = 8, progress: bool = True,
                         n_boot: int = 2000, seed: int = 0):
    """:func:`~seka_rag.evaluation.families.evaluate_family` for any method: a FamilyReport with ``settings()``."""
    from ..families import family_report

    if not items:
        raise ValueError("no items to evaluate")
    families = {it.family for it in items}
    if len(families) != 1:
        raise ValueError(f"items of one family expected, got {sorted(families)}")
    margins = method.score_items(model, items, batch_size=batch_size, progress=progress)
    return family_report(families.pop(), items, margins, n_boot=n_boot, seed=seed, settings=method.settings())


__all__ = [
    "Method",
    "Pasta",
    "PromptEmphasis",
    "Seka",
    "Spa",
    "Unsteered",
    "evaluate_family_with",
    "generate_with",
    "score_items_with",
]
