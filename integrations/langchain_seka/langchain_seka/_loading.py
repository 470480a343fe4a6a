"""A lazy, process-wide registry of loaded :class:`~seka_rag.SekaModel` objects, keyed by name.

Framework-free: both integrations (``langchain_seka`` and ``llama_index.llms.seka``) use it, so a
``ChatSeka(model="smollm2-135m")`` and a ``Seka(model="smollm2-135m")`` in the same process share
one loaded model. Nothing is loaded until :func:`shared_model` is first called for a name.

Names are the embedded models of :meth:`SekaModel.default` (``"qwen2.5-coder-0.5b"``, the default,
and ``"smollm2-135m"``) plus any model registered with :func:`register_model`.
"""

from __future__ import annotations

import threading

from seka_rag import SekaError, SekaModel
from seka_rag.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS

__all__ = [
    "DEFAULT_MODEL",
    "is_loaded",
    "model_label",
    "register_model",
    "resolve_model",
    "shared_model",
    "unregister_model",
]

_models: dict[str, SekaModel] = {}
_name_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _lock_for(name: str) -> threading.Lock:
    with _guard:
        return _name_locks.setdefault(name, threading.Lock())


def shared_model(name: str | None = None) -> SekaModel:
    """The process-wide model called ``name`` (default: the default embedded model), loading it once.

    Concurrent first calls for the same name load it once; different names load independently.
    """
    name = name or DEFAULT_MODEL
    model = _models.get(name)
    if model is not None:
        return model
    with _lock_for(name):
        model = _models.get(name)
        if model is None:
            if name not in EMBEDDED_MODELS:
                raise SekaError(
                    f"no model named {name!r}: use one of the embedded models "
                    f"({', '.join(EMBEDDED_MODELS)}), pass a SekaModel object, or register one "
                    "with langchain_seka.register_model(name, model)"
                )
            model = SekaModel.default(name)
            _models[name] = model
    return model


def register_model(name: str, model: SekaModel) -> SekaModel:
    """Make ``model`` the shared model for ``name`` (e.g. a model loaded with ``from_pretrained``)."""
    if not isinstance(model, SekaModel):
        raise SekaError(f"register_model needs a SekaModel, got {type(model).__name__}")
    if not isinstance(name, str) or not name:
        raise SekaError("register_model needs a non-empty model name")
    with _lock_for(name):
        _models[name] = model
    return model


def unregister_model(name: str) -> SekaModel | None:
    """Forget the shared model ``name`` (it is freed once no wrapper holds it); returns it."""
    with _lock_for(name):
        return _models.pop(name, None)


def is_loaded(name: str | None = None) -> bool:
    """Whether the shared model ``name`` is already loaded (or registered)."""
    return (name or DEFAULT_MODEL) in _models


def resolve_model(model: SekaModel | str | None) -> SekaModel:
    """A wrapper's ``model`` setting → the model to run: the object itself, or the shared one by name."""
    if isinstance(model, SekaModel):
        return model
    if model is None or isinstance(model, str):
        return shared_model(model)
    raise SekaError(f"model must be a SekaModel or a model name, got {type(model).__name__}")


def model_label(model: SekaModel | str | None) -> str:
    """The name reported in metadata and traces, without loading anything."""
    if isinstance(model, SekaModel):
        return model.model_id
    return model or DEFAULT_MODEL
