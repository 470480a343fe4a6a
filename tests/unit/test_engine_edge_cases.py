"""Edge cases of the engine's public calls, each found by a review: stop strings, generation
configs, empty prompts, routing settings a call would ignore, projections that select nothing."""

from __future__ import annotations

import math

import pytest
import torch

from seka_rag import HighlightError, SekaError, SteeringConfigError
from seka_rag.adaptive import Expert, ExpertSet

PROMPT = "The capital of France is Paris. The capital of"


@pytest.fixture(scope="module")
def raw(tiny_model):
    return tiny_model("llama", chat=False)


def test_stop_string_is_searched_in_new_text_only(raw):
    full = raw.generate(PROMPT, max_new_tokens=8, steer=False)
    assert len(full) > 4
    # a stop string made of the prompt's tail and the answer's start never occurs in the new text
    across = PROMPT[-3:] + full[:2]
    assert raw.generate(PROMPT, max_new_tokens=8, stop=[across], steer=False) == full
    assert "".join(raw.stream(PROMPT, max_new_tokens=8, stop=[across], steer=False)) == full
    # one inside the new text still cuts there
    inside = full[3:5]
    assert raw.generate(PROMPT, max_new_tokens=8, stop=inside, steer=False) == full[: full.find(inside)]
    assert "".join(raw.stream(PROMPT, max_new_tokens=8, stop=[inside], steer=False)) == full[: full.find(inside)]


def test_checkpoint_generation_config_cannot_multiply_answers(tiny_model):
    seka = tiny_model("llama")
    seka.model.generation_config.num_return_sequences = 2
    seka.model.generation_config.num_beams = 2
    out = seka.generate(["Where is <<the tower>>?", "Alice met Bob."], max_new_tokens=3)
    assert isinstance(out, list) and len(out) == 2


def test_prompt_without_tokens_is_a_clear_error(tiny_model):
    from seka_rag.highlight import PreparedPrompt, encode_prompt

    seka = tiny_model("llama", chat=False)
    # what an empty raw prompt gives on a tokenizer that adds no beginning-of-sequence token (Qwen2.5)
    with pytest.raises(HighlightError, match="no tokens"):
        encode_prompt(PreparedPrompt("", add_special_tokens=False), seka.tokenizer)
    if not seka.tokenizer("", add_special_tokens=True)["input_ids"]:
        for call in (lambda: seka.generate("", max_new_tokens=2), lambda: seka.score("", ["Paris"]),
                     lambda: list(seka.stream("", max_new_tokens=2))):
            with pytest.raises(HighlightError, match="no tokens"):
                call()


@pytest.fixture
def adaptive(tiny_model, helpers):
    seka = tiny_model("llama")
    seka.load_experts(ExpertSet([Expert(f"e{i}", helpers.random_projection(seka.geometry, seed=10 + i,
                                                                            model_id=seka.model_id))
                                 for i in range(3)]))
    return seka


def test_routing_settings_a_call_would_ignore_are_refused(adaptive):
    prompt = "Doc 2: <<The tower is in Rome.>>\nWhere?"
    with pytest.raises(SteeringConfigError, match="fixed"):
        adaptive.score(prompt, ["Rome"], router={"e0": 1.0}, routing={"gain": 10.0})
    with pytest.raises(SteeringConfigError, match="embedding router"):
        adaptive.score(prompt, ["Rome"], router="attention", routing={"embedding_gain": 2.0})
    with pytest.raises(SteeringConfigError, match="attention router"):
        adaptive.score(prompt, ["Rome"], router="embedding", routing={"temperature": 0.5},
                       query_embedding=torch.ones(384))
    # settings for both routers may travel together (one config for whichever router a call uses)
    adaptive.score(prompt, ["Rome"], router="attention", routing={"gain": 0.5, "embedding_gain": 2.0})
    # a setting the router reads still changes the result
    a = adaptive.score(prompt, ["Rome"], router="attention")
    b = adaptive.score(prompt, ["Rome"], router="attention", routing={"gain": 10.0})
    assert a != b


def test_rows_without_a_highlight_have_no_routing_weights(adaptive):
    prompts = ["Where is <<the tower>>?", "Alice met Bob in London on Monday."]
    adaptive.generate(prompts, max_new_tokens=2)
    weights = adaptive.last_routing.expert_weights()
    assert not weights[0].isnan().any() and weights[1].isnan().all()  # as when it runs alone
    assert adaptive.last_routing.top_experts()[1] is None
    assert adaptive.last_routing.top_experts()[0] in {"e0", "e1", "e2"}
    adaptive.generate(prompts, max_new_tokens=2, batch_size=1)
    assert adaptive.last_routing.top_experts()[1] is None


def test_a_projection_that_selects_nothing_is_refused(tiny_model, helpers):
    seka = tiny_model("llama", projection=False)
    seka.load_projection(helpers.random_projection(seka.geometry, default_layers=[], model_id=seka.model_id))
    prompt = "Doc 2: <<The tower is in Rome.>>\nWhere?"
    with pytest.raises(SteeringConfigError, match="default_layers is empty"):
        seka.generate(prompt, max_new_tokens=2)
    assert seka.generate(prompt, max_new_tokens=2, layers=[0]) is not None  # explicit layers still steer
    assert not math.isnan(seka.score(prompt, ["Rome"], steer=False)[0])


def test_a_users_gguf_is_converted_once_in_a_private_folder(tmp_path, monkeypatch, tokenizer, helpers):
    import transformers

    from seka_rag.model import _converted_gguf

    (tmp_path / "models").mkdir()
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.write_bytes(b"not read: loading is stubbed")
    loads = []

    def fake_model(path, gguf_file=None, **kw):
        loads.append(gguf_file)
        return helpers.build_tiny_model("llama", tokenizer, projection=False).model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(fake_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **k: tokenizer))
    cache = tmp_path / "cache"
    first = _converted_gguf(tmp_path / "models", "tiny.gguf", cache)
    assert (first / "config.json").is_file() and loads == ["tiny.gguf"]
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no work folder left behind
    assert _converted_gguf(tmp_path / "models", "tiny.gguf", cache) == first and len(loads) == 1  # cached
    from seka_rag.models.embedded import MARKER

    assert (first / MARKER).is_file()  # every file with its size: a damaged copy is converted again
    (first / "model.safetensors").unlink()
    assert _converted_gguf(tmp_path / "models", "tiny.gguf", cache) == first and len(loads) == 2
    assert (first / "model.safetensors").is_file()


def test_per_prompt_queries_must_match_the_prompts_whatever_the_batch_size(adaptive):
    from seka_rag import SteeringConfigError as Refused

    prompts = ["Where is <<the tower>>?", "Who met <<Bob>>?", "Where is <<Rome>>?", "Alice met <<Bob>>."]
    adaptive.generate(prompts, router={"e0": 1.0}, max_new_tokens=1, batch_size=2)  # no query: fine
    with pytest.raises(Refused, match="2 entries for 4 prompts"):
        adaptive.generate(prompts, router="embedding", query=["a", "b"], batch_size=2, max_new_tokens=1)
    with pytest.raises(Refused, match="2 entries for 4 prompts"):
        adaptive.generate(prompts, router="embedding", query_embedding=torch.ones(2, 8), batch_size=2,
                          max_new_tokens=1)


def test_score_takes_one_query_for_its_one_prompt(adaptive):
    with pytest.raises(SteeringConfigError, match="one prompt"):
        adaptive.score("Doc: <<Rome.>> Where?", ["Rome", "Paris"], router="embedding", query=["a", "b"])
    with pytest.raises(SteeringConfigError, match="one prompt"):
        adaptive.score("Doc: <<Rome.>> Where?", ["Rome", "Paris"], router="embedding",
                       query_embedding=torch.ones(2, 8))


def test_a_failed_call_leaves_no_earlier_routing(adaptive):
    adaptive.generate("Where is <<the tower>>?", max_new_tokens=1)
    assert adaptive.last_routing is not None
    assert adaptive.generate([], max_new_tokens=1) == [] and adaptive.last_routing is None
    adaptive.generate("Where is <<the tower>>?", max_new_tokens=1)
    with pytest.raises(SteeringConfigError):
        adaptive.generate("Where is <<the tower>>?", max_new_tokens=1, routing={"embedding_gain": 2.0})
    assert adaptive.last_routing is None


def test_bad_prototypes_temperatures_and_files_are_refused(adaptive, helpers, tmp_path):
    import json

    from seka_rag import ProjectionError
    from seka_rag.adaptive import RoutingConfig

    experts = adaptive.experts.experts
    with pytest.raises(ProjectionError, match="not finite and non-zero"):
        ExpertSet([Expert(e.name, e.projection, prototype=torch.full((8,), float("nan"))) for e in experts])
    with pytest.raises(ProjectionError, match="not finite and non-zero"):
        ExpertSet([Expert(e.name, e.projection, prototype=torch.zeros(8)) for e in experts])
    with pytest.raises(SteeringConfigError, match="at least"):
        RoutingConfig(temperature=1e-40).validate()
    ExpertSet([Expert(e.name, e.projection) for e in experts]).save(tmp_path / "set")
    index = json.loads((tmp_path / "set" / "experts.json").read_text())
    index["experts"][0]["file"] = "../elsewhere.safetensors"
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="plain .safetensors file name"):
        ExpertSet.load(tmp_path / "set")
    index["experts"][0]["file"] = experts[0].name + ".safetensors"
    index["experts"][0]["n_prompts"] = "many"
    (tmp_path / "set" / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="malformed"):
        ExpertSet.load(tmp_path / "set")


def test_a_set_embedded_with_another_model_needs_its_encoder(adaptive):
    from seka_rag import SekaError

    protos = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    custom = ExpertSet([Expert(e.name, e.projection, prototype=p) for e, p in zip(adaptive.experts.experts, protos)],
                       embedding_model="my-encoder")
    adaptive.load_experts(custom)
    with pytest.raises(SteeringConfigError, match="my-encoder"):
        adaptive.generate("Where is <<the tower>>?", router="embedding", max_new_tokens=1)
    adaptive.generate("Where is <<the tower>>?", router="embedding", query_embedding=torch.ones(8), max_new_tokens=1)
    from seka_rag.builder import build_expert_set

    with pytest.raises(SekaError, match="embedding_model"):
        build_expert_set(adaptive, {"conflict": []}, encoder=lambda texts: torch.ones(len(texts), 8))


def test_stop_string_that_is_a_special_token(tiny_model):
    seka = tiny_model("llama", chat=False)
    special = seka.tokenizer.convert_ids_to_tokens(seka.tokenizer.all_special_ids[0])
    criteria = seka._stop_criteria([special], 1)
    ids = torch.tensor([[5, seka.tokenizer.all_special_ids[0]], [5, 6]])
    assert criteria[0](ids, None).tolist() == [True, False]  # seen in the new tokens, as a token


def test_templates_that_drop_empty_messages_keep_highlights(helpers):
    from seka_rag.highlight import prepare_prompt

    for body in ("m['content']", "(m['content'] | trim)"):
        tok = helpers.make_tokenizer(
            "{% for m in messages %}{% if m['content'] %}{{ '<|im_start|>' + m['role'] + '\\n' + " + body
            + " + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
        for messages in ([{"role": "system", "content": ""}, {"role": "user", "content": "Where is <<the tower>>?"}],
                         [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""},
                          {"role": "user", "content": "Where is <<the tower>>?"}]):
            p = prepare_prompt(messages, tok)
            assert [p.text[a:b] for a, b in p.spans] == ["the tower"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(do_sample="no"), "do_sample must be True or False"),
    (dict(chat="no"), "chat must be True, False or None"),
    (dict(max_new_tokens=True), "max_new_tokens must be a positive integer"),
    (dict(stop=5), "stop must be a string or a list"),
    (dict(stop=""), "stop must be a string or a list"),
    (dict(stop=[""]), "stop must be a string or a list"),
    (dict(stop={"a": 1}), "stop must be a string or a list"),
])
def test_wrongly_typed_generation_arguments_are_refused(raw, kwargs, message):
    from seka_rag import SekaError

    with pytest.raises(SekaError, match=message):
        raw.generate(PROMPT, **kwargs)
    with pytest.raises(SekaError, match=message):
        raw.stream(PROMPT, **kwargs)  # at the call, before any iteration


def test_stream_checks_its_arguments_when_called(raw):
    with pytest.raises(HighlightError, match="does not occur"):
        raw.stream(PROMPT, highlights=["Berlin"])  # no next() needed
    pieces = raw.stream(PROMPT, max_new_tokens=3, steer=False)
    assert "".join(pieces) == raw.generate(PROMPT, max_new_tokens=3, steer=False)
    assert raw.generate(PROMPT, max_new_tokens=3, stop=[], steer=False) == raw.generate(PROMPT, max_new_tokens=3, steer=False)


def test_marker_helpers_refuse_non_strings():
    from seka_rag import Markers, escape_markers

    for bad in (5, None):
        with pytest.raises(HighlightError, match="takes a string"):
            escape_markers(bad)
    with pytest.raises(HighlightError, match="markers are strings"):
        Markers(1, 2)


def test_unbalanced_marker_message_shows_what_to_type():
    from seka_rag.highlight import parse_markers

    with pytest.raises(HighlightError) as caught:
        parse_markers("In C, x << 4 shifts.")
    message = str(caught.value)
    assert r"write \<< (in Python source r" in message and "--no-markers" in message
    assert r"\\<<" not in message  # a repr would double the backslash


def test_model_loading_mistakes_are_said_before_any_download(tmp_path):
    from seka_rag import SekaError, SekaModel

    with pytest.raises(SekaError, match="did you mean 'smollm2-135m'"):
        SekaModel.from_pretrained("smollm2")  # a prefix of an embedded name: no hub retries
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(SekaError, match="without a config.json.*gguf_file=.*model.gguf"):
        SekaModel.from_pretrained(tmp_path)
    with pytest.raises(SekaError, match="unknown attn_implementation 'bogus'.*sdpa"):
        SekaModel.from_pretrained("org/some-model", attn_implementation="bogus")
    with pytest.raises(SekaError, match="unknown attn_implementation"):  # before an embedded model converts
        SekaModel.default("smollm2-135m", attn_implementation="bogus", cache_dir=tmp_path / "empty-cache")
    assert not (tmp_path / "empty-cache").exists()
    (tmp_path / "sub").mkdir()
    with pytest.raises(SekaError, match="subfolder 'sub'"):
        SekaModel.from_pretrained(tmp_path, subfolder="sub")


def test_numpy_booleans_are_booleans(raw):
    np = pytest.importorskip("numpy")
    assert raw.generate(PROMPT, max_new_tokens=2, do_sample=np.False_, chat=np.False_, steer=False) == raw.generate(
        PROMPT, max_new_tokens=2, chat=False, steer=False)


# ------------------------------------------------------------------------------ user mistakes (a fresh-user run)
def test_a_flat_highlight_list_for_a_batch_is_refused(raw):
    with pytest.raises(HighlightError, match="one list per prompt"):
        raw.generate([PROMPT, PROMPT], highlights=["France", "Paris"], max_new_tokens=1)
    out = raw.generate([PROMPT, PROMPT], highlights=[["France"], ["Paris"]], max_new_tokens=1)
    assert len(out) == 2


def test_one_prompt_takes_one_highlight_string(raw):
    assert isinstance(raw.generate(PROMPT, "Paris", max_new_tokens=1), str)
    assert isinstance(raw.generate(PROMPT, highlights="Paris", max_new_tokens=1), str)


def test_stream_says_it_takes_one_prompt(raw):
    with pytest.raises(SekaError, match="stream takes one prompt"):
        raw.stream([PROMPT, PROMPT])


def test_a_misspelt_message_role_is_refused_and_other_roles_pass(tiny_model):
    seka = tiny_model("llama")
    for typo, meant in (("usr", "user"), ("asistant", "assistant"), ("User", "user")):
        with pytest.raises(HighlightError, match=f"role '{typo}'; did you mean '{meant}'"):
            seka.generate([{"role": typo, "content": "hi <<x>>"}], max_new_tokens=1)
    for role in ("observation", "model", "critic"):  # roles of some templates, or the user's own: the template's call
        seka.encode([{"role": "user", "content": "hi <<x>>"}, {"role": role, "content": "42"}])


def test_steer_false_still_checks_the_other_settings(tiny_model):
    seka = tiny_model("llama")
    with pytest.raises(SteeringConfigError):
        seka.generate("Where is <<the tower>>?", steer=False, layers=[99], max_new_tokens=1)
    assert isinstance(seka.generate("Where is <<the tower>>?", steer=False, gain_pos=3.0, max_new_tokens=1), str)


def test_steer_false_checks_settings_against_the_experts_the_call_would_use(tiny_model, helpers):
    seka = tiny_model("llama")
    seka.load_projection(helpers.random_projection(seka.geometry, layers=[0], model_id=seka.model_id))
    seka.load_experts(ExpertSet([Expert(f"e{i}", helpers.random_projection(seka.geometry, seed=20 + i,
                                                                         model_id=seka.model_id))
                                 for i in range(2)]))
    prompt = "Where is <<the tower>>?"
    assert isinstance(seka.generate(prompt, layers=[1], max_new_tokens=1), str)  # the experts cover layer 1
    assert isinstance(seka.generate(prompt, steer=False, layers=[1], max_new_tokens=1), str)
    with pytest.raises(SteeringConfigError):
        seka.generate(prompt, steer=False, layers=[1], router="projection", max_new_tokens=1)


def test_a_missing_local_path_and_a_misspelt_embedded_name_say_so(tmp_path):
    from seka_rag import SekaModel
    from seka_rag.models.embedded import embedded_model

    with pytest.raises(SekaError, match="no directory"):
        SekaModel.from_pretrained(str(tmp_path / "no-such-model"))
    with pytest.raises(SekaError, match="did you mean 'smollm2-135m'"):
        embedded_model("smollm2")
    with pytest.raises(SekaError, match="did you mean 'smollm2-135m'"):
        SekaModel.default("smollm2")


def test_span_and_layer_numbers_of_any_integer_type(tiny_model):
    import numpy as np

    seka = tiny_model("llama", num_layers=2)
    text = "The tower is in Rome."
    plain = seka.encode(text, [(16, 20)], chat=False)
    assert seka.encode(text, [(np.int64(16), np.int64(20))], chat=False).highlight == plain.highlight
    messages = [{"role": "user", "content": text}]
    with pytest.raises(HighlightError, match="message index must be an integer"):
        seka.encode(messages, [(0.9, 16, 20)])
    with pytest.raises(HighlightError, match="message index must be an integer"):
        seka.encode(messages, [("0", 16, 20)])
    assert seka.score(text + " <<x>>", ["a"], layers=np.array([0, 1])) == seka.score(text + " <<x>>", ["a"],
                                                                                       layers=[0, 1])


def test_highlight_mistakes_name_the_likely_cause(tiny_model):
    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(HighlightError, match="with its markers removed"):
        seka.encode("The tower is in <<Rome>>.", ["<<Rome>>"])
    with pytest.raises(HighlightError, match="one prompt takes a flat list"):
        seka.encode("The tower is in Rome.", [["Rome"]])


def test_preview_cuts_a_long_prompt_as_generate_would(tiny_model):
    import warnings

    small = tiny_model("llama", context_window=24)
    prompt = "<<Doc 1>>: " + "The tower is in Paris. " * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert small.highlighted_tokens(prompt, chat=False)  # fits the whole window
        with pytest.raises(HighlightError, match="truncated away"):
            small.highlighted_tokens(prompt, chat=False, max_new_tokens=16)


def test_builder_and_embedded_names_say_what_they_take(tiny_model):
    from seka_rag import SekaModel
    from seka_rag.builder import build_projection

    with pytest.raises(SekaError, match=r"Triplet\(context, question, answer, unrelated_question\)"):
        build_projection(tiny_model("llama", projection=False), [("ctx", "q", "a", "u")], progress=False)
    with pytest.raises(SekaError, match="is embedded as 'smollm2-135m'"):
        SekaModel.default("HuggingFaceTB/SmolLM2-135M-Instruct")


@pytest.mark.parametrize("value", [-5, 1.5, True])
def test_preview_and_route_check_max_new_tokens(tiny_model, value):
    seka = tiny_model("llama", num_layers=2)
    with pytest.raises(SekaError, match="max_new_tokens must be a positive integer"):
        seka.highlighted_tokens("The tower is in <<Rome>>.", max_new_tokens=value)
    with pytest.raises(SekaError, match="max_new_tokens must be a positive integer"):
        seka.route("The tower is in <<Rome>>.", max_new_tokens=value)


def test_generate_stops_when_its_cancel_event_is_set(tiny_model):
    import threading

    seka = tiny_model("llama", num_layers=2)
    prompt = "The tower is in <<Rome>>. Where is the tower?"
    passes = []
    event = threading.Event()
    handles = [seka.model.register_forward_hook(lambda *args: passes.append(1)),
               seka.model.register_forward_hook(lambda *args: event.set() if cancelling and len(passes) >= 3 else None)]
    try:
        cancelling = False
        seka.generate(prompt, max_new_tokens=12, chat=False)
        uncancelled = len(passes)
        passes.clear()
        cancelling = True
        seka.generate(prompt, max_new_tokens=12, chat=False, cancel=event)
    finally:
        for handle in handles:
            handle.remove()
    if uncancelled <= 4:
        pytest.skip("the tiny model ends its answer within four tokens")
    assert len(passes) <= 4 < uncancelled
    with pytest.raises(SekaError, match="cancel must be a threading.Event"):
        seka.generate(prompt, max_new_tokens=2, cancel=True)


def test_stream_stops_when_its_cancel_event_is_set(tiny_model):
    import threading

    seka = tiny_model("llama", num_layers=2)
    prompt = "The tower is in <<Rome>>. Where is the tower?"
    full = list(seka.stream(prompt, max_new_tokens=12, chat=False))
    event = threading.Event()
    pieces = []
    for piece in seka.stream(prompt, max_new_tokens=12, chat=False, cancel=event):
        pieces.append(piece)
        event.set()  # after the first piece: generation ends within a token
    if len("".join(full)) <= len("".join(full[:2])):
        pytest.skip("the tiny model's answer is too short to tell")
    assert len("".join(pieces)) < len("".join(full))


def test_cut_at_stop_cuts_at_the_earliest_stop_string_whatever_the_list_order():
    from seka_rag.model import _cut_at_stop

    assert _cut_at_stop("a STOP b END c", ["END", "STOP"]) == "a "
    assert _cut_at_stop("a STOP b END c", ["STOP", "END"]) == "a "
    assert _cut_at_stop("a b c", ["END"]) == "a b c"


def test_pending_stop_prefix_is_the_longest_over_all_stop_strings():
    from seka_rag.model import _pending_stop_prefix

    # "XY" may still become "XYZ"; a later, shorter candidate ("Y" of "YQ") must not shrink what is held back
    assert _pending_stop_prefix("abcXY", ["XYZ", "YQ"]) == 2
    assert _pending_stop_prefix("abcXY", ["YQ", "XYZ"]) == 2
    assert _pending_stop_prefix("abc", ["XYZ"]) == 0


# ------------------------------------------------------------------ checkpoint generation configs
STEERED = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"


def test_a_checkpoint_without_a_cache_still_steers_every_token(tiny_model):
    # checkpoints fine-tuned with gradient checkpointing often ship use_cache: false; generation then
    # re-ran the prompt unedited at every step, so only the first token was steered
    seka = tiny_model("llama")
    cached = seka.generate(STEERED, max_new_tokens=8)
    assert cached != seka.generate(STEERED, max_new_tokens=8, steer=False)
    seka.model.generation_config.use_cache = False
    try:
        assert seka.generate(STEERED, max_new_tokens=8) == cached
        assert "".join(seka.stream(STEERED, max_new_tokens=8)) == cached
    finally:
        seka.model.generation_config.use_cache = True


def test_generation_without_a_cache_inside_a_steering_block_is_refused(tiny_model):
    seka = tiny_model("llama")
    enc = seka.encode(STEERED)
    ids = torch.tensor([enc.input_ids])
    with seka.steering(torch.tensor([enc.highlight])), torch.inference_mode():
        with pytest.raises(SteeringConfigError, match="use_cache=True"):
            seka.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                do_sample=False, use_cache=False)


def test_checkpoint_generation_config_asking_for_dict_outputs_or_stop_strings(tiny_model):
    seka = tiny_model("llama")
    expected = seka.generate(STEERED, max_new_tokens=6)
    seka.model.generation_config.return_dict_in_generate = True
    try:
        assert seka.generate(STEERED, max_new_tokens=6) == expected
    finally:
        seka.model.generation_config.return_dict_in_generate = False
    # the checkpoint's own stop strings apply (transformers needs the tokenizer for them)
    seka.model.generation_config.stop_strings = [expected[2:4]]
    try:
        out = seka.generate(STEERED, max_new_tokens=6)
        assert expected.startswith(out) and len(out) < len(expected)
    finally:
        seka.model.generation_config.stop_strings = None


def test_a_tokenizer_without_pad_or_eos_tokens_gets_one_from_the_model(helpers):
    import copy

    seka = helpers.build_tiny_model("llama", helpers.make_tokenizer())
    tokenizer = copy.deepcopy(seka.tokenizer)
    expected = seka.generate(STEERED, max_new_tokens=4)
    pad_id = tokenizer.pad_token_id
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    from seka_rag import SekaModel

    seka.model.generation_config.pad_token_id = pad_id
    again = SekaModel(seka.model, tokenizer, model_id="tiny-llama", projection=seka.projection)
    assert tokenizer.pad_token_id == pad_id
    assert again.generate(STEERED, max_new_tokens=4) == expected
    tokenizer.pad_token = None
    seka.model.generation_config.pad_token_id = None
    with pytest.raises(SekaError, match="neither a pad token nor an end-of-sequence token"):
        SekaModel(seka.model, tokenizer)


def test_a_stop_string_across_a_special_token_stops_generation(raw):
    # the returned text skips special tokens, so "b<|im_end|>c" holds the stop string "bc" there: the
    # stopping criterion reads the text that way too, instead of running to max_new_tokens
    tok = raw.tokenizer
    ids = tok("ab", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")] \
        + tok("cd", add_special_tokens=False)["input_ids"]
    criteria = raw._stop_criteria(["bc"], 0)
    assert bool(criteria[0](torch.tensor([ids]), None)[0])
    assert not bool(raw._stop_criteria(["xy"], 0)[0](torch.tensor([ids]), None)[0])
