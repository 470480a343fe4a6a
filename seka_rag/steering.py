"""The key edit: forward hooks installed once per model, reading a per-call edit from a context variable.

For highlighted prompt tokens, in each selected layer and KV head::

    k ← k + M k,    M = head_mask · layer_scale · (g+ · P+ + g- · P-) / 2

applied to the output of the architecture's key module (``k_proj``, or ``k_norm`` where the
family has one), i.e. before RoPE. Each layer does one batched ``einsum`` over all heads, tokens and
rows; the highlight mask zeroes the edit elsewhere. The edit is active only inside
:meth:`KeyEditor.apply`, whose state lives in a :class:`contextvars.ContextVar`: concurrent threads
each see their own edit, and leaving the block (normally or by an exception) removes it.

Decode steps with a KV cache are never edited: the prompt's cached keys already carry the edit, and
each layer is edited once per call (the prefill), only when the key tensor spans the prompt.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from .architectures import ModelGeometry, decoder_layers, geometry, layer_module
from .errors import SteeringConfigError
from .projection import Projection

#: ``heads=`` per call: None (the projection's head mask), "all", or {layer: [kv heads]} (exactly those
#: heads: a layer the dict leaves out is not edited, and a layer listed in an explicit ``layers=`` must have some).
HeadSelection = None | str | Mapping[int, Sequence[int]]


@dataclass(frozen=True)
class SteeringConfig:
    """Per-call steering parameters; ``None`` means "the projection's stored default"."""

    gain_pos: float | None = None
    gain_neg: float | None = None
    layers: Sequence[int] | None = None
    heads: HeadSelection = None


def edit_matrices(projection: Projection, config: SteeringConfig = SteeringConfig()) -> dict[int, torch.Tensor]:
    """Combine P+ and P- into one (kv_heads, d, d) matrix per selected layer.

    M = head_mask · layer_scale · (g+·P+ + g-·P-) / 2. ``layer_scale`` is the per-layer gain factor a
    calibration stored (1 when none did), so the effective gain of a layer is ``layer_scale · g``.
    """
    meta = projection.meta
    g_pos = meta.gain_pos if config.gain_pos is None else config.gain_pos
    g_neg = meta.gain_neg if config.gain_neg is None else config.gain_neg
    for name, g in (("gain_pos", g_pos), ("gain_neg", g_neg)):
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
            raise SteeringConfigError(f"{name} must be a finite number, got {g!r}")
    if config.layers is not None:
        given = config.layers.tolist() if hasattr(config.layers, "tolist") else config.layers  # NumPy / torch
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence | set | range):
            raise SteeringConfigError(f"layers must be a list of layer indices, got {config.layers!r}")
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in given):
            raise SteeringConfigError(f"layers must be integers, got {list(given)!r}")
        layers = list(given)
        if not layers:
            raise SteeringConfigError("layers is empty, so nothing would be steered: pass steer=False to turn steering off")
    elif meta.default_layers is not None:
        layers = list(meta.default_layers)
    else:
        layers = list(meta.layers)
    if not layers:
        raise SteeringConfigError(
            "the projection's default_layers is empty, so nothing would be steered: pass layers=[...] "
            f"(built: {list(meta.layers)}) or steer=False"
        )
    rows = [projection.row(int(layer)) for layer in layers]  # raises for layers not in it
    heads = _head_mask(projection, config.heads, layers, explicit_layers=config.layers is not None)
    if config.layers is None and config.heads is None and not bool(heads[rows].any()):
        raise SteeringConfigError(
            f"the projection's head mask selects no head in layers {layers}, so nothing would be steered: "
            "pass heads='all', layers=[...], or steer=False"
        )
    g_pos, g_neg = float(g_pos), float(g_neg)
    out = {}
    for layer, row in zip(layers, rows):
        m = projection.layer_scale[row] * (g_pos * projection.pos[row] + g_neg * projection.neg[row]) / 2
        out[int(layer)] = m * heads[row][:, None, None].to(m.dtype)
    scales = [float(projection.layer_scale[r]) for r in rows]
    if min(scales) < 0:
        from .highlight import _outside_stacklevel

        negative = [int(layer) for layer, x in zip(layers, scales) if x < 0]
        warnings.warn(
            f"the projection's per-layer scale (layer_scale) is negative in layers {negative}: there the edit "
            "works against the highlight instead of for it",
            stacklevel=_outside_stacklevel(),
        )
    if g_pos < 0 or g_neg < 0:
        _warn_if_keys_flip(out, g_pos, g_neg, max(scales))
    return out


def _warn_if_keys_flip(matrices: dict[int, torch.Tensor], g_pos: float, g_neg: float, scale: float) -> None:
    """Warn when negative gains turn part of the keys around instead of weakening the highlight.

    The edit multiplies a key by ``I + M``; along each eigenvector of the symmetric ``M`` that is
    ``1 + λ``: below 1 weakens, below 0 flips the key's part there (and can make it larger than before).
    With one gain negative and P+ / P- apart, ``λ`` reaches ``layer_scale · g / 2``, so flipping starts
    below ``g = −2 / layer_scale``; where P+ and P- overlap, two negative gains add up.
    """
    m = torch.stack(list(matrices.values())).float()
    smallest = 1 + float(torch.linalg.eigvalsh((m + m.transpose(-1, -2)) / 2).min())
    if smallest < 0:
        from .highlight import _outside_stacklevel

        warnings.warn(
            f"gain_pos={g_pos:g}, gain_neg={g_neg:g} turn part of the keys around: the edit multiplies it by "
            f"{smallest:.2f} < 0 (per-layer scale up to {scale:g}), which is not a weaker highlight; a negative gain "
            f"weakens it down to {-2 / scale:.3g} here while the other gain is not negative",
            stacklevel=_outside_stacklevel(),
        )


def _head_mask(projection: Projection, heads: HeadSelection, layers: Sequence[int], *,
               explicit_layers: bool = False) -> torch.Tensor:
    """The (layers, kv_heads) mask of one call: a ``{layer: [heads]}`` dict edits exactly the heads it names,
    so a layer it leaves out is not edited (an error when the call also lists that layer in ``layers=``)."""
    if heads is None:
        return projection.head_mask
    n_kv = projection.meta.num_kv_heads
    if isinstance(heads, str):
        if heads != "all":
            raise SteeringConfigError(f"heads must be None, 'all' or {{layer: [heads]}}, got {heads!r}")
        return torch.ones_like(projection.head_mask)
    if not isinstance(heads, Mapping):
        raise SteeringConfigError(f"heads must be None, 'all' or {{layer: [heads]}}, got {type(heads).__name__}")
    mask = torch.zeros_like(projection.head_mask)
    for layer, hs in heads.items():
        if layer not in layers:
            raise SteeringConfigError(
                f"heads names layer {layer!r}, which is not among the edited layers {list(layers)}; "
                "layers left out of heads= are not edited"
            )
        hs = hs.tolist() if hasattr(hs, "tolist") and not isinstance(hs, (str, bytes)) else hs  # NumPy / torch
        if isinstance(hs, (str, bytes)) or not isinstance(hs, Sequence | set | range):
            raise SteeringConfigError(f"heads[{layer}] must be a list of KV head indices, got {hs!r}")
        for h in hs:
            if not isinstance(h, numbers.Integral) or isinstance(h, bool) or not 0 <= h < n_kv:
                raise SteeringConfigError(f"head {h!r} of layer {layer} is out of range (0..{n_kv - 1})")
            mask[projection.row(int(layer)), int(h)] = True
    if not mask.any():
        raise SteeringConfigError(
            f"heads={heads!r} selects no head, so nothing would be steered: pass steer=False to turn steering off"
        )
    unnamed = [int(layer) for layer in layers if not mask[projection.row(int(layer))].any()]
    if explicit_layers and unnamed:
        raise SteeringConfigError(
            f"layers= lists {unnamed}, where heads= selects no head, so they would not be edited: a heads dict edits "
            f"exactly the heads it names; add them to heads= (e.g. {{{unnamed[0]}: [0]}}) or leave them out of layers="
        )
    return mask


@dataclass
class ActiveEdit:
    """One call's edit: fixed per-layer matrices (SEKA) applied to the highlighted keys.

    Subclasses (AdaSEKA) compute the matrices per row during the forward pass: they see each
    layer's query output first (:meth:`observe_query`), then return the matrices for its keys.
    """

    editor: "KeyEditor"
    matrices: dict[int, torch.Tensor]
    highlight: torch.Tensor  # (batch, tokens) bool
    done: set[int] = field(default_factory=set)
    _weights: dict[tuple, torch.Tensor] = field(default_factory=dict)
    #: whether a forward pass spanning the whole mask (the prefill) has reached a hook yet
    started: bool = False

    @property
    def layers(self) -> set[int]:
        """The model layers this edit changes."""
        return set(self.matrices)

    def wants_query(self, layer: int) -> bool:
        """Whether :meth:`observe_query` must see this layer's query output."""
        return False

    def observe_query(self, layer: int, query: torch.Tensor, layout: str) -> None:
        """Called with the layer's query-module output (prefill only) before its keys are edited."""

    def matrices_for(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """(kv_heads, d, d), or (batch, kv_heads, d, d) for per-row edits, in the keys' dtype."""
        return self.matrices[layer].to(device=keys.device, dtype=keys.dtype)

    def weights(self, like: torch.Tensor, layout: str) -> torch.Tensor:
        """The highlight mask as a float tensor broadcastable to the per-head key tensor."""
        key = (layout, like.device, like.dtype, like.shape[0])
        w = self._weights.get(key)
        if w is None:
            mask = expand_rows(self.highlight, like.shape[0])
            w = mask.to(device=like.device, dtype=like.dtype)
            w = w[:, None, :, None] if layout == "bhtd" else w[:, :, None, None]
            self._weights[key] = w
        return w


def expand_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with each row repeated when generate() expanded the batch (beams / num_return_sequences)."""
    if t.shape[0] == rows:
        return t
    return t.repeat_interleave(rows // t.shape[0], dim=0)


_ACTIVE_EDIT: ContextVar[ActiveEdit | None] = ContextVar("seka_active_edit", default=None)
#: each model's shared editor (:meth:`KeyEditor.for_model`); an entry goes with its model
_EDITORS: "weakref.WeakKeyDictionary[nn.Module, KeyEditor]" = weakref.WeakKeyDictionary()
_EDITORS_LOCK = threading.Lock()


#: what a KeyEditor holds of its model's hooks, left out when it is pickled or deep-copied
_PER_MODEL_STATE = ("_model", "_handles", "_hooked", "_lock")


def _no_model() -> None:
    """The model reference of an editor whose model was not copied with it."""
    return None


def edit_keys(keys: torch.Tensor, matrices: torch.Tensor, weights: torch.Tensor, layout: str, head_dim: int) -> torch.Tensor:
    """``keys + weights * (M k)`` for every head at once, in the module's own layout.

    ``matrices`` is (heads, d, d), shared by every row, or (batch, heads, d, d), one per row.
    """
    per_row = matrices.dim() == 4  # (batch, heads, d, d): AdaSEKA's per-row mixtures
    if layout == "flat":
        b, t, _ = keys.shape
        kh = keys.reshape(b, t, -1, head_dim)
        edited = kh + weights * torch.einsum("bthd,bhed->bthe" if per_row else "bthd,hed->bthe", kh, matrices)
        return edited.reshape(b, t, -1)
    if layout == "bthd":
        return keys + weights * torch.einsum("bthd,bhed->bthe" if per_row else "bthd,hed->bthe", keys, matrices)
    return keys + weights * torch.einsum("bhtd,bhed->bhte" if per_row else "bhtd,hed->bhte", keys, matrices)


class KeyEditor:
    """Forward hooks on every decoder layer's key and query modules; inert unless an edit is active."""

    def __init__(self, model: nn.Module):
        self.geometry: ModelGeometry = geometry(model)
        spec = self.geometry.spec
        self._layout = spec.key_layout
        self._query_layout = spec.query_layout
        self._token_dim = 2 if self._layout == "bhtd" else 1
        self._query_token_dim = 2 if self._query_layout == "bhtd" else 1
        self._model = weakref.ref(model)  # weak: the editor lives as long as the model, not the other way
        self._handles: list = []
        self._hooked: tuple = ()  # the (query, key) module pairs the hooks sit on, layer by layer
        self._lock = threading.Lock()
        self.install()

    @classmethod
    def for_model(cls, model: nn.Module) -> "KeyEditor":
        """The editor of ``model``: made (and its hooks installed) the first time, shared after that, so
        wrapping one model again and again does not pile up hooks on it. It lives as long as the model."""
        with _EDITORS_LOCK:
            editor = _EDITORS.get(model)
            if editor is None:
                editor = _EDITORS[model] = cls(model)
            editor.install()
            return editor

    def __deepcopy__(self, memo: dict) -> "KeyEditor":
        """The editor of a deep copy of the model (``copy.deepcopy`` of a :class:`SekaModel`): it belongs to
        the copied model, and puts its own hooks there on its first edit, leaving the original's alone."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(self.__getstate__())
        model = self._model()
        copied = memo.get(id(model)) if model is not None else None
        if isinstance(copied, nn.Module):
            new._model = weakref.ref(copied)
            with _EDITORS_LOCK:
                _EDITORS.setdefault(copied, new)
        return new

    def __getstate__(self) -> dict:
        """What a pickled model keeps of its editor (its hooks reference it): not the model reference, the
        lock or the handles; unpickled, it is inert until a :class:`SekaModel` wraps the model again."""
        return {k: v for k, v in self.__dict__.items() if k not in _PER_MODEL_STATE}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._model, self._handles, self._hooked, self._lock = _no_model, [], (), threading.Lock()

    def _hooks_on(self, modules: tuple) -> bool:
        """Whether the hooks sit on exactly ``modules``."""
        return bool(self._handles) and len(modules) == len(self._hooked) and all(
            a is b for pair, hooked in zip(modules, self._hooked) for a, b in zip(pair, hooked))

    def _modules(self, model: nn.Module) -> tuple:
        spec = self.geometry.spec
        return tuple((layer_module(layer, spec.query_module), layer_module(layer, spec.key_module))
                     for layer in decoder_layers(model))

    def install(self) -> None:
        """Hook the model's current key and query modules, unless the hooks already sit on exactly those:
        after :meth:`remove`, or after modules were swapped for new ones, they are put (back) in place.
        Every edit checks this first, so a wrapper whose hooks were taken away steers again."""
        model = self._model()
        if model is None:
            return
        modules = self._modules(model)
        if self._hooks_on(modules):
            return
        with self._lock:
            if self._hooks_on(modules):
                return  # another thread put them in place meanwhile: its forward may be running on them
            for h in self._handles:
                h.remove()
            self._handles = []
            for module in (m for pair in modules for m in pair):
                # hooks of mine copied with a deep-copied model, and those of editors whose model is gone
                # (an unpickled one): inert, they would only pile up
                for hook_id, hook in list(module._forward_hooks.items()):
                    owner = getattr(getattr(hook, "func", None), "__self__", None) if isinstance(hook, partial) else None
                    if owner is self or (isinstance(owner, KeyEditor) and owner._model() is None):
                        del module._forward_hooks[hook_id]
            for index, (query, key) in enumerate(modules):
                self._handles.append(query.register_forward_hook(partial(self._query_hook, index)))
                self._handles.append(key.register_forward_hook(partial(self._hook, index)))
            self._hooked = modules

    def _current(self, layer_index: int) -> ActiveEdit | None:
        edit = _ACTIVE_EDIT.get()
        if edit is None or edit.editor is not self or layer_index in edit.done:
            return None
        return edit

    def _query_hook(self, layer_index: int, module: nn.Module, args, output):
        edit = self._current(layer_index)
        if edit is None or not edit.wants_query(layer_index):
            return None
        if not self._is_prefill(edit, output, self._query_token_dim):
            return None  # a decode step
        edit.observe_query(layer_index, output, self._query_layout)
        return None

    def _hook(self, layer_index: int, module: nn.Module, args, output):
        edit = _ACTIVE_EDIT.get()
        if edit is None or edit.editor is not self or layer_index not in edit.layers:
            return None
        if layer_index in edit.done:
            if output.shape[self._token_dim] > edit.highlight.shape[1]:
                # the prompt again with more tokens after it: generation without a KV cache, whose
                # re-runs of the prompt would see its keys unedited
                raise SteeringConfigError(
                    "the prompt went through the model again inside the steering block (generation without "
                    "a KV cache re-runs it at every step): steering edits the prompt's keys once, in the "
                    "prefill, so generate with use_cache=True"
                )
            return None
        if not self._is_prefill(edit, output, self._token_dim):
            return None  # a decode step: cached prompt keys already carry the edit
        edit.done.add(layer_index)
        matrices = edit.matrices_for(layer_index, output)
        return edit_keys(output, matrices, edit.weights(output, self._layout), self._layout, self.geometry.head_dim)

    @staticmethod
    def _is_prefill(edit: ActiveEdit, output: torch.Tensor, token_dim: int) -> bool:
        """Whether ``output`` spans the edit's prompt (the prefill); False for a later decode step.

        The first forward pass inside a block must be the prompt's: a mask of another length or
        batch size is a caller's mistake, and editing nothing in silence would hide it.
        """
        rows, tokens = edit.highlight.shape
        if output.shape[token_dim] == tokens and output.shape[0] % rows == 0:
            edit.started = True
            return True
        if edit.started:
            return False
        raise SteeringConfigError(
            f"the highlight mask is {rows} x {tokens} (rows x tokens) but the first forward pass in the steering "
            f"block has {output.shape[0]} x {output.shape[token_dim]}: build the mask from the same padded batch "
            "you pass to the model (SekaModel.encode + pad_batch) and open one block per prompt batch; the prompt "
            "must go through in one forward pass (assisted / prompt-lookup decoding, prefill_chunk_size and a "
            "pre-filled cache are not supported inside a steering block)"
        )

    @contextmanager
    def apply(self, matrices: dict[int, torch.Tensor], highlight: torch.Tensor) -> Iterator[None]:
        """Edit the highlighted keys (``highlight``: (batch, tokens) bool) during this block only."""
        if highlight.dim() != 2:
            raise ValueError("highlight mask must be (batch, tokens)")
        with self.activate(ActiveEdit(self, matrices, highlight.bool())):
            yield

    @contextmanager
    def activate(self, edit: ActiveEdit) -> Iterator[ActiveEdit]:
        """Make ``edit`` (built for this editor) the current context's edit during the block."""
        self.install()  # hooks removed or modules swapped since the last call: in place again
        token = _ACTIVE_EDIT.set(edit)
        try:
            yield edit
        finally:
            _ACTIVE_EDIT.reset(token)

    def remove(self) -> None:
        """Detach the hooks from the model (shared by every wrapper of it; the next edit puts them back)."""
        with self._lock:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._hooked = ()


def active_edit_present() -> bool:
    """Whether an edit is active in the current context (for tests and diagnostics)."""
    return _ACTIVE_EDIT.get() is not None
