"""Log-probabilities and greedy generations under any steering method, for the task-family evaluations.

:mod:`seka_rag.evaluation.families` compares a target with its competitors (a *margin*); the newer
families need two more primitives, and this module gives them for every method of
:mod:`seka_rag.evaluation.baselines` as well as for a bare :class:`~seka_rag.SekaModel`:

* :func:`continuation_logprobs` — the summed log-probability of a continuation after a highlighted
  prompt (the *absolute* value, e.g. the gold answer's log p in lost-in-the-middle);
* :func:`generate_texts` — greedy continuations of highlighted prompts (instruction checkers,
  exact match).

``method=None`` means SEKA with the model's defaults, and every extra keyword (``steer=False``,
``gain_pos=``, ``layers=``, ``router=``...) goes to the model's own calls unchanged. A method object
(:class:`~seka_rag.evaluation.baselines.Unsteered`, ``PromptEmphasis``, ``Pasta``, ``Spa``, ``Seka``)
chooses its own scoring path; steering keywords are then only accepted for ``Seka`` (merged over
its ``options``).

Highlights are passed as substrings of the prompt (every occurrence is highlighted); prompts are
encoded with ``markers=None`` on the scoring path, so the text is taken literally.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .stats import mean_ci, share_ci

#: (prompt, highlighted substrings or None, continuation token ids)
ScoreRow = tuple[str, Sequence[str] | None, Sequence[int]]


def uses_chat(model, chat: bool | None = None) -> bool:
    """Whether prompts go through the chat template (``chat=None``: when the tokenizer has one).

    Decides how a continuation starts: after the assistant-turn opening a chat model's answer
    carries no leading space (``"Paris"``); after a raw prompt it does (``" Paris"``).
    """
    if chat is not None:
        return bool(chat)
    return bool(getattr(model.tokenizer, "chat_template", None))


def continuation_text(model, text: str, chat: bool | None = None) -> str:
    """``text`` as the model would start it right after the prompt: as is in chat mode, else after a space."""
    return text if uses_chat(model, chat) else " " + text.lstrip()


def continuation_ids(model, text: str, chat: bool | None = None) -> list[int]:
    """Token ids of ``text`` as the model would continue the prompt with it (:func:`continuation_text`).

    A continuation that starts with a space is tokenised as it would be inside a longer text: some
    tokenizers mark the start of a text (the SentencePiece "▁" prefix of Llama-2 / Mistral-v0.1
    tokenizers turns ``" English"`` on its own into ``["▁", "▁English"]``), which would give every
    answer the same lone first token. :class:`ValueError` when ``text`` has no tokens.
    """
    text = continuation_text(model, text, chat)
    if text[:1].isspace():
        anchor = list(model.tokenizer("a", add_special_tokens=False)["input_ids"])
        joined = list(model.tokenizer("a" + text, add_special_tokens=False)["input_ids"])
        if anchor and len(joined) > len(anchor) and joined[:len(anchor)] == anchor:
            return joined[len(anchor):]
    return token_ids(model, text)


def token_ids(model, text: str) -> list[int]:
    """Token ids of ``text`` tokenised on its own (no special tokens); :class:`ValueError` when empty."""
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"continuation {text!r} has no tokens")
    return ids


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """``iterable`` wrapped in a transient tqdm bar when ``enabled`` (else unchanged)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def _resolve(method: Any, steer_kwargs: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    """(kind, method, model keyword arguments) of a method; kind is seka / unsteered / prompt / scorer."""
    if method is None:
        return "seka", None, dict(steer_kwargs)
    from .baselines import Pasta, PromptEmphasis, Seka, Spa, Unsteered

    if isinstance(method, Seka):
        return "seka", method, {**dict(method.options), **steer_kwargs}
    if steer_kwargs:
        raise ValueError(
            f"steering keywords {sorted(steer_kwargs)} apply to SEKA only; method {getattr(method, 'name', method)!r} "
            "takes its settings from its own config"
        )
    if isinstance(method, Unsteered):
        return "unsteered", method, {"steer": False}
    if isinstance(method, PromptEmphasis):
        return "prompt", method, {"steer": False}
    if isinstance(method, (Pasta, Spa)):
        return "scorer", method, {}
    if callable(getattr(method, "scorer", None)):
        return "scorer", method, {}
    raise TypeError(
        f"cannot score continuations with {type(method).__name__}: use None (SEKA), a method of "
        "seka_rag.evaluation.baselines, or an object with a scorer(model) method returning a "
        "score_encoded-compatible callable"
    )


def _row_scorer(model, kind: str, method: Any, kwargs: dict[str, Any]) -> Callable[..., list[float]]:
    if kind in ("seka", "unsteered", "prompt"):
        return lambda rows, batch_size: model.score_encoded(rows, batch_size=batch_size, progress=False, **kwargs)
    from .baselines import Pasta, Spa, pasta_scorer, spa_scorer

    if isinstance(method, Pasta):
        scorer = pasta_scorer(model, method.config)
    elif isinstance(method, Spa):
        scorer = spa_scorer(model, method.config)
    else:
        scorer = method.scorer(model)
    return lambda rows, batch_size: scorer(rows, batch_size=batch_size)


def continuation_logprobs(
    model,
    rows: Sequence[ScoreRow],
    *,
    method: Any = None,
    batch_size: int = 8,
    chat: bool | None = None,
    progress: bool = False,
    **steer_kwargs: Any,
) -> list[float]:
    """Summed log-probability of each row's continuation right after its (highlighted) prompt, in row order.

    Each row is ``(prompt, highlights, continuation_ids)``: ``highlights`` a list of substrings of
    ``prompt`` (None: nothing highlighted). Each distinct (prompt, highlights) is encoded once
    (leaving room for the longest continuation); rows are scored ``batch_size`` at a time, longest
    first. ``PromptEmphasis`` rewrites the prompt with its emphasis and scores it unsteered; PASTA
    and SPA score through their ``score_encoded``-compatible scorers.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    kind, method, kwargs = _resolve(method, steer_kwargs)
    if not rows:
        return []
    longest: dict[tuple[str, tuple[str, ...] | None], int] = {}
    for prompt, highlights, ids in rows:
        if not ids:
            raise ValueError("a continuation has no tokens")
        key = (prompt, None if highlights is None else tuple(highlights))
        longest[key] = max(longest.get(key, 0), len(ids))
    encoded = {}
    for (prompt, highlights), n in longest.items():
        text, hl = prompt, (list(highlights) if highlights else None)
        if kind == "prompt":
            from .baselines import emphasize_prompt

            if hl:
                text = emphasize_prompt(prompt, hl, method.style, markers=None)
            hl = None
        encoded[(prompt, highlights)] = model.encode(text, hl, chat=chat, markers=None,
                                                     max_length=model.context_window - n)
    joined = [(i, encoded[(p, None if h is None else tuple(h))], list(ids)) for i, (p, h, ids) in enumerate(rows)]
    joined.sort(key=lambda r: (-(len(r[1].input_ids) + len(r[2])), r[0]))
    score = _row_scorer(model, kind, method, kwargs)
    out = [0.0] * len(rows)
    chunks = [joined[s:s + batch_size] for s in range(0, len(joined), batch_size)]
    for chunk in progress_bar(chunks, len(chunks), "scoring", progress):
        got = score([(enc, ids) for _, enc, ids in chunk], batch_size)
        for (i, _, _), s in zip(chunk, got):
            out[i] = float(s)
    return out


def generate_texts(
    model,
    prompts: Sequence[str],
    highlights: Sequence[Sequence[str] | None] | None = None,
    *,
    method: Any = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    chat: bool | None = None,
    stop: Sequence[str] | None = None,
    progress: bool = False,
    **steer_kwargs: Any,
) -> list[str]:
    """Greedy continuation of every prompt (highlights: one list of substrings per prompt), in prompt order.

    ``method=None`` calls ``model.generate`` with ``steer_kwargs``; a method calls its own
    ``generate`` (``Seka`` with ``steer_kwargs`` merged over its options). Prompts are batched
    longest first.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if highlights is None:
        highlights = [None] * len(prompts)
    if len(highlights) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(highlights)} highlight lists")
    if method is not None:
        from .baselines import Seka

        if isinstance(method, Seka) and steer_kwargs:
            method = Seka(method.name, {**dict(method.options), **steer_kwargs})
        elif steer_kwargs:
            raise ValueError(f"steering keywords {sorted(steer_kwargs)} apply to SEKA only")
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    out = [""] * len(prompts)
    for chunk in progress_bar(chunks, len(chunks), "generating", progress):
        ps = [prompts[i] for i in chunk]
        hs = [list(highlights[i]) if highlights[i] else None for i in chunk]
        if method is None:
            texts = model.generate(ps, hs, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                                   stop=stop, progress=False, **steer_kwargs)
        else:
            texts = method.generate(model, ps, hs, max_new_tokens=max_new_tokens, chat=chat, stop=stop,
                                    batch_size=batch_size)
        for i, text in zip(chunk, texts):
            out[i] = text
    return out


def method_settings(method: Any = None, steer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON-ready description of a method and its steering keywords, for report ``settings``."""
    out: dict[str, Any] = {"method": "seka"} if method is None else dict(method.settings())
    for key, value in (steer_kwargs or {}).items():
        out[key] = value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
    return out


__all__ = [
    "ScoreRow",
    "continuation_logprobs",
    "continuation_text",
    "generate_texts",
    "mean_ci",
    "method_settings",
    "progress_bar",
    "share_ci",
    "token_ids",
    "uses_chat",
]
