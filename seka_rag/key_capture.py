"""Reading the pre-RoPE keys of chosen layers, for the forward passes of the calling thread only.

The projection builder and ``seka-rag inspect`` read keys through forward hooks on the shared
model. Those hooks see every forward pass, whichever thread or async task runs it, so they act only
inside :func:`capture_keys`'s block, in the context (thread / task) that opened it, as the key
editor's hooks do: a model that serves other calls meanwhile is neither read nor stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .architectures import decoder_layers, layer_module

_CAPTURING: ContextVar[object | None] = ContextVar("seka_key_capture", default=None)


class StopForward(Exception):
    """Raised by a capture hook after the last needed layer, so the forward pass goes no further."""


@contextmanager
def capture_keys(seka_model, layers: Sequence[int], on_keys: Callable[[int, torch.Tensor], None], *,
                 prepend: bool = False) -> Iterator[None]:
    """Within the block, call ``on_keys(layer, keys)`` for each of ``layers`` during a forward pass.

    ``keys`` is the key module's output as (batch, tokens, kv_heads, head_dim), before RoPE. After
    the last of ``layers`` the hook raises :class:`StopForward` (run the pass with
    :func:`forward_until_captured`). ``prepend``: read the keys before any other hook of the module
    (the steering editor's) could change them. Forward passes of other threads or tasks are left alone.
    """
    geom = seka_model.geometry
    spec = geom.spec
    blocks = decoder_layers(seka_model.model)
    last = max(layers)
    owner = object()

    def hook(index: int, output: torch.Tensor) -> None:
        if _CAPTURING.get() is not owner:
            return None  # another thread's (or task's) forward pass
        keys = output.transpose(1, 2) if spec.key_layout == "bhtd" else output
        on_keys(index, keys.reshape(keys.shape[0], keys.shape[1], geom.num_kv_heads, geom.head_dim))
        if index == last:
            raise StopForward
        return None

    handles = [layer_module(blocks[i], spec.key_module).register_forward_hook(
        lambda module, args, output, i=i: hook(i, output), prepend=prepend) for i in layers]
    token = _CAPTURING.set(owner)
    try:
        yield
    finally:
        _CAPTURING.reset(token)
        for handle in handles:
            handle.remove()


def forward_until_captured(model: torch.nn.Module, **inputs) -> None:
    """Run ``model(**inputs)`` without gradients until the capture hook of the last needed layer stops it."""
    with torch.inference_mode():
        try:
            model(**inputs, use_cache=False)
        except StopForward:
            pass
