"""LangChain integration of seka-rag: SEKA attention steering as a LangChain chat model.

>>> from langchain_seka import ChatSeka
>>> chat = ChatSeka(model="smollm2-135m", max_tokens=16)          # cheap: loads on first use
>>> chat.invoke("Doc 1: The tower is in Paris.\\nDoc 2: <<The tower is in Rome.>>\\n"
...             "Where is the tower?")                             # doctest: +SKIP

* :class:`ChatSeka` — ``BaseChatModel``; :class:`SekaLLM` — text-completion ``LLM``;
* :class:`SekaHighlight` — retriever output → marked-up context (``retriever | highlight | prompt | ChatSeka``);
* :class:`SentenceTransformerEmbeddings` — offline embeddings for vector stores;
* :func:`register_model` / :func:`shared_model` — the process-wide registry of loaded models.

Names are imported lazily, so the framework-free helpers (``langchain_seka._loading``, ``_text``,
``_select``) can be used without importing LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._loading import register_model, shared_model, unregister_model
    from .chat_models import ChatSeka
    from .embeddings import SentenceTransformerEmbeddings
    from .highlight import SekaHighlight
    from .llms import SekaLLM

__version__ = "0.1.0"

_EXPORTS = {
    "ChatSeka": ".chat_models",
    "SekaLLM": ".llms",
    "SekaHighlight": ".highlight",
    "SentenceTransformerEmbeddings": ".embeddings",
    "register_model": "._loading",
    "shared_model": "._loading",
    "unregister_model": "._loading",
}

__all__ = [
    "ChatSeka",
    "SekaHighlight",
    "SekaLLM",
    "SentenceTransformerEmbeddings",
    "__version__",
    "register_model",
    "shared_model",
    "unregister_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_seka' has no attribute {name!r}")
    try:
        imported = importlib.import_module(module, __name__)
    except ModuleNotFoundError as exc:
        from seka_rag.errors import missing_extra

        raise missing_extra(exc, "langchain_core", "langchain") from exc
    value = getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
