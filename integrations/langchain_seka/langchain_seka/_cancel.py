"""Async calls that stop generating when their caller gives up (a cancelled task, a timeout).

The model runs in a worker thread; cancelling the awaiting task does not stop that thread, so
:func:`run_cancellable` hands it a :class:`threading.Event` through a context variable and sets it
when the task is cancelled. Every engine call goes through :func:`generate` / :func:`stream`, which
pass the event on (``SekaModel.generate(cancel=...)``), so generation ends after the current token
instead of running to ``max_new_tokens`` for nobody, and then raise :class:`GenerationCancelled`, so
the cut-short text never reaches LangChain's cache or the callbacks as an answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("seka_cancel", default=None)


def cancel_kwargs() -> dict[str, Any]:
    """``{"cancel": event}`` inside :func:`run_cancellable`, else ``{}`` (for ``SekaModel.generate``)."""
    event = _CANCEL.get()
    return {} if event is None else {"cancel": event}


async def run_cancellable(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread, in a copy of the caller's context; if the awaiting task
    is cancelled, the generation inside is told to stop before the cancellation goes on."""
    event = threading.Event()
    ctx = contextvars.copy_context()
    ctx.run(_CANCEL.set, event)
    future = asyncio.get_running_loop().run_in_executor(None, lambda: ctx.run(fn, *args, **kwargs))
    try:
        return await future
    except asyncio.CancelledError:
        event.set()
        raise


class GenerationCancelled(Exception):
    """Raised in the worker thread when its async caller gave up: a cut-short answer must not reach the
    LLM cache or the callbacks as if it were the answer (the caller already has its CancelledError)."""


def check_cancelled() -> None:
    """Raise :class:`GenerationCancelled` if this call's async caller has given up."""
    event = _CANCEL.get()
    if event is not None and event.is_set():
        raise GenerationCancelled("the async call was cancelled; its generation was stopped")


def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
    """``model.generate(*args, **kwargs)`` that stops when the async caller gives up, and then raises
    :class:`GenerationCancelled` instead of returning the cut-short text."""
    check_cancelled()
    out = model.generate(*args, **kwargs, **cancel_kwargs())
    check_cancelled()
    return out


def stream(model: Any, *args: Any, **kwargs: Any) -> Iterator[str]:
    """``model.stream(*args, **kwargs)``, stopped (and ended with :class:`GenerationCancelled`) like :func:`generate`."""
    yield from model.stream(*args, **kwargs, **cancel_kwargs())
    check_cancelled()
