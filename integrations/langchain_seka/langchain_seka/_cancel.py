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
from collections.abc import AsyncIterator, Callable, Iterator
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


async def athread_iter(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in a worker thread; yield its items without blocking the event loop.

    When the consumer stops early (``break``, ``aclose()``, cancellation), the worker closes the
    iterator at its next item, which stops generation, instead of generating to the end.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    ctx = contextvars.copy_context()
    stopped = threading.Event()

    def send(message: tuple[Any, BaseException | None]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, message)
        except RuntimeError:  # the event loop has closed: nobody is listening
            stopped.set()

    def pump() -> None:
        iterator = make()
        try:
            for item in iterator:
                if stopped.is_set():
                    break
                send((item, None))
        except BaseException as exc:  # surfaced in the consumer
            send((done, exc))
        else:
            send((done, None))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=ctx.run, args=(pump,), daemon=True, name="seka-astream").start()
    try:
        while True:
            item, error = await queue.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stopped.set()
