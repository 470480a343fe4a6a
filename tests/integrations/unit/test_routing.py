"""AdaSEKA routing through the integrations: router / query / query_embedding pass-through, the
retriever's query embedding reaching the engine (LlamaIndex, automatically; LangChain, per call),
and the adaptive shared-model loader."""

from __future__ import annotations

import contextvars

import pytest
import torch
from llama_index.core import Document as LIDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from langchain_seka import ChatSeka, SekaLLM, _loading
from langchain_seka._routing import MAX_REMEMBERED, automatic_routing, clear_queries, recall_query, remember_query
from langchain_seka._settings import routing_kwargs
from llama_index.llms.seka import Seka
from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor
from seka_rag import SekaError, SteeringConfigError
from seka_rag.adaptive import Expert, ExpertSet

#: One axis per keyword: the expert prototypes are the axes (e0 ↔ tower, e1 ↔ bridge, e2 ↔ ferry).
KEYWORDS = ("tower", "bridge", "ferr")
DOCS = ["The tower is in Rome.", "The bridge opened in 1901.", "Ferries leave the pier every hour."]
QUESTION = "Where is the tower?"


@pytest.fixture(scope="module")
def adaptive(helpers, tokenizer):
    """A tiny model with a three-expert set whose prototypes are the 3-d keyword axes (router: attention)."""
    seka = helpers.build_tiny_model("llama", tokenizer, seed=3, context_window=8192)
    experts = [
        Expert(f"e{i}", helpers.random_projection(seka.geometry, seed=10 + i, model_id=seka.model_id),
               prototype=torch.eye(3)[i])
        for i in range(3)
    ]
    seka.load_experts(ExpertSet(experts, name="test"))
    return seka


@pytest.fixture(autouse=True)
def _fresh_queries():
    clear_queries()
    yield
    clear_queries()


@pytest.fixture
def no_engine_embedding(monkeypatch):
    """Make any embedding computed by the engine fail the test."""

    def fail(*args, **kwargs):
        raise AssertionError("the engine computed a query embedding")

    monkeypatch.setattr("seka_rag.embeddings.embed", fail)


@pytest.fixture
def counting_encoder(adaptive, monkeypatch):
    """The engine's sentence encoder replaced by a keyword encoder that records what it embeds."""
    seen: list[str] = []

    def encode(texts):
        seen.extend(texts)
        return torch.tensor([[t.lower().count(w) + 0.01 for w in KEYWORDS] for t in texts])

    monkeypatch.setattr(adaptive, "embedding_encoder", encode)
    return seen


class KeywordEmbedding(BaseEmbedding):
    """A deterministic LlamaIndex embedding: keyword counts (padded to ``dim``); records query vectors."""

    dim: int = 3
    _queries: list = PrivateAttr(default_factory=list)

    def _vector(self, text: str) -> list[float]:
        v = [text.lower().count(w) + 0.01 for w in KEYWORDS]
        return v + [0.01] * (self.dim - len(v))

    def _get_query_embedding(self, query: str) -> list[float]:
        v = self._vector(query)
        self._queries.append(v)
        return v

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


def _engine(llm, dim: int = 3):
    embed = KeywordEmbedding(dim=dim)
    index = VectorStoreIndex.from_documents([LIDocument(text=t) for t in DOCS], embed_model=embed)
    engine = index.as_query_engine(
        llm=llm, similarity_top_k=2, node_postprocessors=[SekaHighlightPostprocessor(policy="top_k", k=1)]
    )
    return engine, embed


def _seka(model, **kw):
    return Seka(model=model, max_new_tokens=2, context_window=4000, **kw)


# ------------------------------------------------------------------------------ LlamaIndex: automatic
def test_retriever_embedding_reaches_the_engine(adaptive, spy_on, no_engine_embedding):
    spy = spy_on(adaptive)
    engine, embed = _engine(_seka(adaptive, router="embedding", routing={"embedding_top1": True}))
    engine.query(QUESTION)
    assert len(embed._queries) == 1  # the retriever embedded the question once ...
    assert spy.calls and all(c["kwargs"]["query_embedding"] == embed._queries[0] for c in spy.calls)
    assert all("query" not in c["kwargs"] and c["kwargs"]["router"] == "embedding" for c in spy.calls)
    routed = adaptive.last_routing  # ... and the engine routed with that vector, embedding nothing
    assert routed.router == "embedding" and routed.top_experts() == ["e0"]

    engine.query("When did the bridge open?")
    assert len(embed._queries) == 2 and spy.last["kwargs"]["query_embedding"] == embed._queries[1]
    assert adaptive.last_routing.top_experts() == ["e1"]


async def test_async_query_routes_with_the_question(adaptive, spy_on, counting_encoder):
    """LlamaIndex's async retriever keeps its query vector to itself (it does not fill the caller's
    query bundle), so the postprocessor hands over the question text: the engine embeds the
    question — not the prompt — once per LLM call. A bundle that carries its embedding is passed on."""
    from llama_index.core.schema import QueryBundle

    spy = spy_on(adaptive)
    engine, embed = _engine(_seka(adaptive, router="embedding", routing={"embedding_top1": True}))
    question = "When did the bridge open?"
    await engine.aquery(question)
    assert len(embed._queries) == 1 and spy.last["kwargs"]["query"] == question
    assert counting_encoder == [question] * len(spy.calls)
    # last_routing is per thread / task: the LLM ran in LlamaIndex's worker, so ask the engine directly
    assert adaptive.route("Some <<text>>.", query=question, router="embedding",
                          routing={"embedding_top1": True}).top_experts() == ["e1"]
    del counting_encoder[:]
    vector = [0.01, 0.01, 1.0]
    await engine.aquery(QueryBundle(question, embedding=vector))
    assert len(embed._queries) == 1 and spy.last["kwargs"]["query_embedding"] == vector
    assert counting_encoder == []


def test_model_default_embedding_router_also_gets_it(adaptive, spy_on, no_engine_embedding, monkeypatch):
    monkeypatch.setattr(adaptive, "router", "embedding")
    spy = spy_on(adaptive)
    engine, embed = _engine(_seka(adaptive))
    engine.query(QUESTION)
    assert "router" not in spy.last["kwargs"] and spy.last["kwargs"]["query_embedding"] == embed._queries[0]
    assert adaptive.last_routing.router == "embedding"


def test_attention_router_gets_no_query(adaptive, spy_on, no_engine_embedding):
    spy = spy_on(adaptive)
    engine, _ = _engine(_seka(adaptive, router="attention"))
    engine.query(QUESTION)
    kw = spy.last["kwargs"]
    assert kw["router"] == "attention" and "query_embedding" not in kw and "query" not in kw
    assert adaptive.last_routing.router == "attention"
    engine, _ = _engine(_seka(adaptive))  # the model's default router (attention): nothing either
    engine.query(QUESTION)
    assert "query_embedding" not in spy.last["kwargs"] and adaptive.last_routing.router == "attention"


def test_other_sized_index_embedding_sends_the_question_text(adaptive, spy_on, counting_encoder):
    spy = spy_on(adaptive)
    engine, embed = _engine(_seka(adaptive, router="embedding", routing={"embedding_top1": True}), dim=5)
    engine.query(QUESTION)
    assert len(embed._queries) == 1 and len(embed._queries[0]) == 5
    assert spy.last["kwargs"]["query"] == QUESTION and "query_embedding" not in spy.last["kwargs"]
    assert counting_encoder == [QUESTION] * len(spy.calls)  # the question, once per LLM call
    assert adaptive.last_routing.top_experts() == ["e0"]


def test_explicit_query_embedding_wins_and_stale_queries_stay_out(adaptive, spy_on, counting_encoder):
    spy = spy_on(adaptive)
    llm = _seka(adaptive, router="embedding", routing={"embedding_top1": True})
    SekaHighlightPostprocessor(policy="all").postprocess_nodes([], query_str=QUESTION)  # no embedding
    remember_query(QUESTION, [1.0, 0.0, 0.0])
    llm.complete(f"Context: <<The tower is in Rome.>>\nQuestion: {QUESTION}")
    assert spy.last["kwargs"]["query_embedding"] == [1.0, 0.0, 0.0]
    llm.complete(f"Context: <<The tower is in Rome.>>\nQuestion: {QUESTION}", query_embedding=[0.0, 0.0, 1.0])
    assert spy.last["kwargs"]["query_embedding"] == [0.0, 0.0, 1.0]
    assert adaptive.last_routing.top_experts() == ["e2"]
    llm.complete(f"<<Tower>> facts. {QUESTION}", query="bridge")
    assert spy.last["kwargs"]["query"] == "bridge" and "query_embedding" not in spy.last["kwargs"]
    assert counting_encoder == ["bridge"]
    # a prompt without the remembered question: nothing is passed, the engine embeds the prompt
    llm.complete("Which <<ferry>> leaves first?")
    assert "query_embedding" not in spy.last["kwargs"] and "query" not in spy.last["kwargs"]
    assert counting_encoder == ["bridge", "Which leaves first?"]
    # chat messages: the question in any message counts
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    llm.chat([ChatMessage(role=MessageRole.SYSTEM, content="Answer."),
              ChatMessage(role=MessageRole.USER, content=f"<<Rome>>. {QUESTION}")])
    assert spy.last["kwargs"]["query_embedding"] == [1.0, 0.0, 0.0]
    # another context (a thread not started from this one) sees nothing
    assert contextvars.Context().run(recall_query, QUESTION) is None


def test_remembered_queries():
    remember_query("   ", [1.0])  # blank queries are ignored
    remember_query(None, [1.0])
    assert recall_query("anything") is None
    remember_query("tower", [1.0, 2.0])
    remember_query("Where is the tower?", None)
    assert recall_query("Q: Where is the tower?") == ("Where is the tower?", None)  # the newest match
    assert recall_query(["a tower", "other"]) == ("tower", [1.0, 2.0])
    remember_query("How do I reset my password?", [0.0, 1.0])  # a later request whose document quotes the first
    assert recall_query("FAQ: 'Where is the tower?' ... How do I reset my password?") == (
        "How do I reset my password?", [0.0, 1.0])
    for i in range(MAX_REMEMBERED + 2):
        remember_query(f"q{i}?", [float(i + 1)])
    assert recall_query("tower") is None  # bounded: old entries fall out
    assert recall_query(f"q{MAX_REMEMBERED + 1}?") == (f"q{MAX_REMEMBERED + 1}?", [float(MAX_REMEMBERED + 2)])


def test_automatic_routing_rules(adaptive, tiny_seka):
    remember_query(QUESTION, [0.0, 1.0, 0.0])
    text = f"Q: {QUESTION}"
    assert automatic_routing(adaptive, {"router": "embedding"}, text) == {"query_embedding": [0.0, 1.0, 0.0]}
    assert automatic_routing(adaptive, {}, text) == {}  # the model's default router is attention
    assert automatic_routing(adaptive, {"router": "attention"}, text) == {}
    assert automatic_routing(adaptive, {"router": {"e0": 1.0}}, text) == {}
    assert automatic_routing(adaptive, {"router": "embedding", "query": "x"}, text) == {}
    assert automatic_routing(adaptive, {"router": "embedding"}, "unrelated") == {}
    assert automatic_routing(tiny_seka, {"router": "embedding"}, text) == {}  # no experts: the engine says so
    remember_query(QUESTION, [0.5] * 384)
    assert automatic_routing(adaptive, {"router": "embedding"}, text) == {"query": QUESTION}


def test_engine_errors_surface_unchanged(adaptive, tiny_long_seka):
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        _seka(adaptive, router="attention").complete("<<hi>>", query_embedding=[1.0, 0.0, 0.0])
    with pytest.raises(SteeringConfigError, match="3"):
        _seka(adaptive, router="embedding").complete("<<hi>>", query_embedding=[1.0, 0.0])
    with pytest.raises(SekaError, match="expert set"):
        _seka(tiny_long_seka, router="embedding").complete("<<hi>>")
    with pytest.raises(ValueError, match="router must be one of"):  # refused when the wrapper is built
        _seka(adaptive, router="cosine")
    with pytest.raises(SekaError, match="router must be one of"):  # and per call
        _seka(adaptive).complete("<<hi>>", router="cosine")


# ------------------------------------------------------------------------------ LangChain: per call
def test_chat_bound_query_embedding_reaches_the_engine(adaptive, spy_on, no_engine_embedding):
    spy = spy_on(adaptive)
    chat = ChatSeka(model=adaptive, router="embedding", max_tokens=2, routing={"embedding_top1": True})
    vec = [0.1, 0.2, 0.9]
    chat.bind(query_embedding=vec).invoke("Which <<ferry>> leaves first?")
    kw = spy.last["kwargs"]
    assert kw["query_embedding"] == vec and kw["router"] == "embedding" and kw["routing"] == {"embedding_top1": True}
    assert adaptive.last_routing.router == "embedding" and adaptive.last_routing.top_experts() == ["e2"]
    "".join(c.content for c in chat.stream("Which <<ferry>>?", query_embedding=[0.9, 0.1, 0.1]))
    assert spy.last["method"] == "stream" and spy.last["kwargs"]["query_embedding"] == [0.9, 0.1, 0.1]
    assert adaptive.last_routing.top_experts() == ["e0"]


def test_chat_routers_and_routing_settings(adaptive, spy_on):
    spy = spy_on(adaptive)
    chat = ChatSeka(model=adaptive, router="attention", max_tokens=2)
    chat.invoke("Where is <<the tower>>?")
    assert spy.last["kwargs"]["router"] == "attention" and adaptive.last_routing.router == "attention"
    assert adaptive.last_routing.weights.shape[0] == 1
    chat.invoke("Where is <<the tower>>?", router={"e1": 1.0})
    assert spy.last["kwargs"]["router"] == {"e1": 1.0}
    assert adaptive.last_routing.router == "fixed" and adaptive.last_routing.top_experts() == ["e1"]
    with pytest.raises(SteeringConfigError, match="fixed"):  # the fixed router reads no routing settings
        chat.invoke("Where is <<the tower>>?", router={"e1": 1.0}, routing={"gain": 0.5})
    chat.invoke("Where is <<the tower>>?", router="projection")
    assert adaptive.last_routing is None  # the single projection: no experts used
    # routing dicts: per call over the field's
    merged = ChatSeka(model=adaptive, routing={"gain": 2.0, "top_k": 2}, max_tokens=2)
    merged.invoke("<<x>>", routing={"gain": 0.5})
    assert spy.last["kwargs"]["routing"] == {"gain": 0.5, "top_k": 2} and "router" not in spy.last["kwargs"]
    assert ChatSeka(model=adaptive, router="embedding")._identifying_params["router"] == "embedding"


def test_chat_batch_routes_each_input_in_one_pass(adaptive, spy_on, no_engine_embedding):
    spy = spy_on(adaptive)
    chat = ChatSeka(model=adaptive, router="embedding", max_tokens=2, routing={"embedding_top1": True})
    vectors = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    out = chat.batch(["<<a>> one", "<<b>> two", "<<c>> three"], query_embedding=vectors)
    assert len(out) == 3 and len(spy.calls) == 1  # one batched engine call
    assert spy.last["kwargs"]["query_embedding"] == vectors and len(spy.last["prompt"]) == 3
    assert adaptive.last_routing.top_experts() == ["e0", "e2", "e1"]
    chat.batch(["<<a>> one", "<<b>> two"], query_embedding=vectors[2])  # one vector for every input
    assert len(spy.calls) == 2 and adaptive.last_routing.top_experts() == ["e1", "e1"]


def test_llm_query_text_and_vectors(adaptive, spy_on, counting_encoder):
    spy = spy_on(adaptive)
    llm = SekaLLM(model=adaptive, router="embedding", max_tokens=2, routing={"embedding_top1": True})
    llm.invoke("Some <<text>>.", query="the bridge")
    assert spy.last["kwargs"]["query"] == "the bridge" and counting_encoder == ["the bridge"]
    assert adaptive.last_routing.top_experts() == ["e1"]
    llm.batch(["<<a>> one", "<<b>> two"], query_embedding=[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert len(spy.calls) == 2 and adaptive.last_routing.top_experts() == ["e2", "e0"]
    "".join(llm.stream("<<a>>", query_embedding=[0.0, 1.0, 0.0]))
    assert spy.last["method"] == "stream" and adaptive.last_routing.top_experts() == ["e1"]
    assert counting_encoder == ["the bridge"]


def test_chat_engine_errors_surface_unchanged(adaptive, tiny_seka):
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        ChatSeka(model=adaptive, router="attention", max_tokens=2).invoke("hi", query_embedding=[1.0, 0.0, 0.0])
    with pytest.raises(SteeringConfigError, match="router='embedding'"):
        SekaLLM(model=adaptive, max_tokens=2).invoke("hi", query="where?")
    with pytest.raises(SekaError, match="expert set"):
        ChatSeka(model=tiny_seka, router="attention", max_tokens=2).invoke("<<hi>>")
    with pytest.raises(ValueError, match="router must be one of"):
        ChatSeka(model=adaptive, router=object(), max_tokens=2)
    with pytest.raises(SteeringConfigError, match="unknown routing settings"):
        ChatSeka(model=adaptive, max_tokens=2).invoke("<<hi>>", routing={"gian": 1.0})


def test_routing_kwargs_passes_what_is_set():
    assert routing_kwargs() == {}
    assert routing_kwargs("embedding", [0.1], None, {"gain": 2.0}) == {
        "router": "embedding", "query_embedding": [0.1], "routing": {"gain": 2.0},
    }
    assert routing_kwargs(query="q") == {"query": "q"}


# ------------------------------------------------------------------------------ adaptive shared models
@pytest.fixture
def adaptive_loader(adaptive, tiny_seka, monkeypatch):
    """An empty registry whose loads return ``adaptive`` (adaptive=True) or ``tiny_seka``; records loads."""
    monkeypatch.setattr(_loading, "_models", {})
    loads: list[tuple[str, dict]] = []

    def fake_default(name, **kwargs):
        loads.append((name, kwargs))
        return adaptive if kwargs.get("adaptive") else tiny_seka

    monkeypatch.setattr(_loading.SekaModel, "default", staticmethod(fake_default))
    return loads


def test_adaptive_names_load_the_expert_set_apart(adaptive_loader, adaptive, tiny_seka, spy_on):
    spy = spy_on(adaptive)
    plain = ChatSeka(model="smollm2-135m", max_tokens=2)
    ada = ChatSeka(model="smollm2-135m", adaptive=True, router="attention", max_tokens=2)
    li = Seka(model="smollm2-135m", adaptive=True, max_new_tokens=2)
    assert adaptive_loader == []  # lazy
    ada.invoke("<<hi>>")
    assert adaptive_loader == [("smollm2-135m", {"adaptive": True})] and adaptive.last_routing.router == "attention"
    li.complete("<<hi>>")
    assert len(adaptive_loader) == 1 and len(spy.calls) == 2  # shared
    plain.invoke("<<hi>>")
    assert adaptive_loader[1] == ("smollm2-135m", {})  # the plain model is another instance
    assert plain.seka_model() is tiny_seka and ada.seka_model() is adaptive
    assert _loading.is_loaded("smollm2-135m") and _loading.is_loaded("smollm2-135m", adaptive=True)
    assert _loading.unregister_model("smollm2-135m") is tiny_seka
    assert not _loading.is_loaded("smollm2-135m") and not _loading.is_loaded("smollm2-135m", adaptive=True)


def test_adaptive_with_registered_models_and_objects(adaptive_loader, adaptive, tiny_seka):
    _loading.register_model("mine", adaptive)
    assert ChatSeka(model="mine", adaptive=True).seka_model() is adaptive  # it has an expert set
    assert _loading.is_loaded("mine", adaptive=True)
    _loading.register_model("plain", tiny_seka)
    with pytest.raises(SekaError, match="no AdaSEKA expert set"):
        ChatSeka(model="plain", adaptive=True).seka_model()
    with pytest.raises(SekaError, match="no AdaSEKA expert set"):
        Seka(model=tiny_seka, adaptive=True).complete("hi")
    assert Seka(model=adaptive, adaptive=True).seka_model() is adaptive
    with pytest.raises(SekaError, match="adaptive must be"):
        _loading.shared_model("mine", adaptive="yes")
    assert adaptive_loader == []


def test_responses_carry_the_routing_in_sync_and_async_calls(adaptive):
    import asyncio

    from llama_index.core.llms import ChatMessage as LIMessage

    chat = ChatSeka(model=adaptive, router={"e1": 1.0}, max_tokens=2)
    sync = chat.invoke("Where is <<the tower>>?").response_metadata["routing"]
    assert sync == {"router": "fixed", "weights": {"e0": 0.0, "e1": 1.0, "e2": 0.0}}

    async def run():
        message = await chat.ainvoke("Where is <<the tower>>?")
        batch = await chat.abatch(["Where is <<the tower>>?", "no highlight here"])
        text = await SekaLLM(model=adaptive, router={"e2": 1.0}, max_tokens=2).agenerate(["Where is <<x>>?"])
        li = await Seka(model=adaptive, router={"e0": 1.0}, max_tokens=2).achat([LIMessage(role="user",
                                                                                            content="<<x>> y")])
        return message, batch, text, li

    message, batch, text, li = asyncio.run(run())
    assert message.response_metadata["routing"] == sync  # visible to the async caller
    assert batch[0].response_metadata["routing"] == sync and "routing" not in batch[1].response_metadata
    assert text.generations[0][0].generation_info["routing"]["weights"]["e2"] == 1.0
    assert li.raw["routing"]["weights"]["e0"] == 1.0


async def test_abatch_runs_a_failed_batchs_inputs_with_their_own_query_rows(adaptive):
    from langchain_core.messages import AIMessage

    from seka_rag import HighlightError

    chat = ChatSeka(model=adaptive, router="embedding", max_tokens=2)
    rows = torch.nn.functional.normalize(torch.randn(3, 3), dim=-1)
    out = await chat.abatch(["<<a>> one", "an <<unbalanced marker", "<<b>> two"], query_embedding=rows,
                            return_exceptions=True)
    assert isinstance(out[1], HighlightError)
    assert all(isinstance(o, AIMessage) for o in (out[0], out[2]))  # not "3 entries for 1 prompt"
