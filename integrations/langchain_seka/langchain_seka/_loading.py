"""A lazy, process-wide registry of loaded :class:`~seka_rag.SekaModel` objects, keyed by name.

Framework-free: both integrations (``langchain_seka`` and ``llama_index.llms.seka``) use it, so a
``ChatSeka(model="smollm2-135m")`` and a ``Seka(model="smollm2-135m")`` in the same process share
one loaded model. Nothing is loaded until :func:`shared_model` is first called for a name.

Names are the embedded models of :meth:`SekaModel.default` (``"qwen2.5-coder-0.5b"``, the default,
and ``"smollm2-135m"``) plus any model registered with :func:`register_model`.

``adaptive=True`` asks for the AdaSEKA form of a model: an embedded model is then loaded with
``SekaModel.default(name, adaptive=True)`` (its shipped expert set) and kept apart from the plain
one, so ``ChatSeka(model="smollm2-135m")`` and ``ChatSeka(model="smollm2-135m", adaptive=True)``
never hand each other the wrong instance. A registered model serves ``adaptive=True`` only when it
already carries an expert set.
"""

from __future__ import annotations

import threading

from seka_rag import SekaError, SekaModel
from seka_rag.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, closest_embedded

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
#: Suffix of the registry key of an embedded model loaded with its AdaSEKA expert set.
ADAPTIVE_SUFFIX = " [adaptive]"
_name_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _lock_for(name: str) -> threading.Lock:
    with _guard:
        return _name_locks.setdefault(name, threading.Lock())


def _key(name: str, adaptive: bool) -> str:
    return name + ADAPTIVE_SUFFIX if adaptive else name


def _check_adaptive(adaptive: object) -> bool:
    if not isinstance(adaptive, bool):
        raise SekaError(f"adaptive must be True or False, got {adaptive!r}")
    return adaptive


def shared_model(name: str | None = None, *, adaptive: bool = False) -> SekaModel:
    """The process-wide model called ``name`` (default: the default embedded model), loading it once.

    Concurrent first calls for the same name load it once; different names load independently.
    ``adaptive=True``: the model with an AdaSEKA expert set — a registered model that has one, else
    the embedded model loaded with ``SekaModel.default(name, adaptive=True)``, shared under its own
    key (the plain and the adaptive instance are different objects).
    """
    name = name or DEFAULT_MODEL
    _check_adaptive(adaptive)
    if adaptive:
        registered = _models.get(name)
        if registered is not None and registered.experts is not None:
            return registered
    key = _key(name, adaptive)
    model = _models.get(key)
    if model is not None:
        return model
    with _lock_for(key):
        model = _models.get(key)
        if model is None:
            if name not in EMBEDDED_MODELS:
                if adaptive and name in _models:
                    raise SekaError(
                        f"adaptive=True, but the model registered as {name!r} has no AdaSEKA expert set: "
                        "register one loaded with experts= (or SekaModel.default(..., adaptive=True)), "
                        "or leave adaptive unset"
                    )
                close = closest_embedded(name)
                hint = f"did you mean {close!r}? " if close else ""
                raise SekaError(
                    f"no model named {name!r}: {hint}use one of the embedded models "
                    f"({', '.join(EMBEDDED_MODELS)}), pass a SekaModel object, or register one "
                    "with langchain_seka.register_model(name, model) (the LangChain and LlamaIndex wrappers "
                    "share that registry)"
                )
            model = SekaModel.default(name, adaptive=True) if adaptive else SekaModel.default(name)
            _models[key] = model
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
    """Forget the shared model ``name``, plain and adaptive (freed once no wrapper holds it); returns it."""
    with _lock_for(_key(name, True)):
        adaptive = _models.pop(_key(name, True), None)
    with _lock_for(name):
        plain = _models.pop(name, None)
    return plain if plain is not None else adaptive


def loaded_model(name: str | None = None, *, adaptive: bool = False) -> SekaModel | None:
    """The shared model ``name`` if it is loaded or registered already (never loads it), else None."""
    name = name or DEFAULT_MODEL
    if _check_adaptive(adaptive):
        registered = _models.get(name)
        if registered is not None and registered.experts is not None:
            return registered
    return _models.get(_key(name, adaptive))


def is_loaded(name: str | None = None, *, adaptive: bool = False) -> bool:
    """Whether the shared model ``name`` (its AdaSEKA form with ``adaptive=True``) is loaded or registered."""
    name = name or DEFAULT_MODEL
    if _check_adaptive(adaptive) and name in _models and _models[name].experts is not None:
        return True
    return _key(name, adaptive) in _models


def resolve_model(model: SekaModel | str | None, *, adaptive: bool = False) -> SekaModel:
    """A wrapper's ``model`` setting → the model to run: the object itself, or the shared one by name.

    ``adaptive=True`` needs a model with an AdaSEKA expert set: a name loads the embedded model with
    its shipped set (see :func:`shared_model`); a ``SekaModel`` object must already carry one.
    """
    _check_adaptive(adaptive)
    if isinstance(model, SekaModel):
        if adaptive and model.experts is None:
            raise SekaError(
                f"adaptive=True, but the SekaModel {model.model_id!r} has no AdaSEKA expert set: load it "
                "with SekaModel.default(name, adaptive=True) or experts=..., or leave adaptive unset"
            )
        return model
    if model is None or isinstance(model, str):
        return shared_model(model, adaptive=adaptive)
    raise SekaError(f"model must be a SekaModel or a model name, got {type(model).__name__}")


def model_label(model: SekaModel | str | None) -> str:
    """The name reported in metadata and traces, without loading anything."""
    if isinstance(model, SekaModel):
        return model.model_id
    return model or DEFAULT_MODEL
