"""User mistakes at the public API, each found by a probe of the engine as a new user would call it:
arguments that used to be dropped silently, errors that did not say which prompt or argument was
wrong, and tracebacks from deep inside torch / transformers / jinja2 for a wrong call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seka_rag import HighlightError, Markers, SekaError, SekaModel, SteeringConfigError
from seka_rag.steering import SteeringConfig, edit_matrices

PROMPT = "Doc 1: The tower is in Paris.\nDoc 2: <<The tower is in Rome.>>\nWhere is the tower?"


@pytest.fixture(scope="module")
def seka(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def model_dir(saved_model_dir):
    return saved_model_dir()


# ------------------------------------------------------------------ loading
def test_torch_dtype_is_read_as_dtype_and_auto_is_refused(model_dir):
    loaded = SekaModel.from_pretrained(model_dir, torch_dtype=torch.float16)
    assert loaded.model.dtype == torch.float16  # used to load in the default dtype, the argument dropped
    with pytest.raises(SekaError, match="dtype= only"):
        SekaModel.from_pretrained(model_dir, torch_dtype=torch.float16, dtype="float32")
    with pytest.raises(SekaError, match="'auto' is not supported"):
        SekaModel.from_pretrained(model_dir, torch_dtype="auto")


def test_misspelt_or_misplaced_arguments_are_named_before_loading(model_dir, monkeypatch):
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("nothing should load for a misspelt argument")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", staticmethod(never))
    with pytest.raises(SekaError, match="did you mean 'projection'"):
        SekaModel.from_pretrained(model_dir, projetion="p.safetensors")
    with pytest.raises(SekaError, match="adaptive=True belongs to SekaModel.default"):
        SekaModel.from_pretrained(model_dir, adaptive=True)
    for bad in (None, 123):
        with pytest.raises(SekaError, match="name_or_dir must be"):
            SekaModel.from_pretrained(bad)


def test_an_unknown_model_argument_is_a_seka_error(model_dir):
    with pytest.raises(SekaError, match="unexpected keyword argument 'colour'"):
        SekaModel.from_pretrained(model_dir, colour="blue")


def test_constructor_checks_what_it_wraps(seka, tokenizer):
    hf = seka.model
    with pytest.raises(SekaError, match="use SekaModel.from_pretrained"):
        SekaModel("Qwen/Qwen2.5-0.5B", tokenizer)
    with pytest.raises(SekaError, match="swapped"):
        SekaModel(tokenizer, hf)
    with pytest.raises(SekaError, match="tokenizer must be"):
        SekaModel(hf, None)
    with pytest.raises(SekaError, match="no language-model head"):
        SekaModel(hf.model, tokenizer)  # the bare decoder (AutoModel), not the causal LM
    with pytest.raises(HighlightError, match="markers must be a Markers"):
        SekaModel(hf, tokenizer, markers="<<")
    for window in (0, -5, 1.5, "x"):
        with pytest.raises(SekaError, match="context_window must be a positive integer"):
            SekaModel(hf, tokenizer, context_window=window)


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(seka, tokenizer):
    import transformers

    small = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size - 10, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(SekaError, match=f"vocabulary has {tokenizer.vocab_size} tokens but the model embeds only"):
        SekaModel(transformers.LlamaForCausalLM(small), tokenizer)


def test_added_tokens_beyond_the_embeddings_and_compiled_models_are_accepted(seka, helpers):
    # a checkpoint may add tokens it never embeds (Gemma 3's image token): not another model's tokenizer
    extra = helpers.make_tokenizer()
    extra.add_special_tokens({"additional_special_tokens": ["<|image|>"]})
    assert len(extra) > seka.model.get_input_embeddings().num_embeddings
    wrapped = SekaModel(seka.model, extra, seka.projection, model_id="tiny-llama")
    assert wrapped.generate(PROMPT, max_new_tokens=2) == seka.generate(PROMPT, max_new_tokens=2)
    compiled = SekaModel(torch.compile(seka.model, backend="eager"), seka.tokenizer, seka.projection,
                         model_id="tiny-llama")
    assert compiled.generate(PROMPT, max_new_tokens=2) == seka.generate(PROMPT, max_new_tokens=2)


# ------------------------------------------------------------------ steering settings
def test_heads_dict_leaving_out_an_explicit_layer_is_an_error(seka):
    projection = seka.projection
    with pytest.raises(SteeringConfigError, match=r"layers= lists \[1\], where heads= selects no head"):
        edit_matrices(projection, SteeringConfig(layers=[0, 1], heads={0: [0]}))
    with pytest.raises(SteeringConfigError, match=r"layers= lists \[1\], where heads= selects no head"):
        edit_matrices(projection, SteeringConfig(layers=[0, 1], heads={0: [0], 1: []}))
    with pytest.raises(SteeringConfigError, match="where heads= selects no head"):
        seka.generate(PROMPT, layers=[0, 1], heads={0: [0]}, max_new_tokens=1)
    # a heads dict edits exactly the heads it names
    matrices = edit_matrices(projection, SteeringConfig(layers=[0, 1], heads={0: [0], 1: [1]}))
    assert float(matrices[1][0].abs().sum()) == 0 and float(matrices[1][1].abs().sum()) > 0
    # without layers=, the layers it leaves out are not edited (documented)
    matrices = edit_matrices(projection, SteeringConfig(heads={0: [0]}))
    assert float(matrices[1].abs().sum()) == 0 and float(matrices[0][0].abs().sum()) > 0
    # head lists may be NumPy arrays or tensors, as layers may
    a = edit_matrices(projection, SteeringConfig(layers=[0], heads={0: np.array([0, 1])}))
    b = edit_matrices(projection, SteeringConfig(layers=[0], heads={0: [0, 1]}))
    assert torch.equal(a[0], b[0])


def test_settings_without_a_projection_are_refused(tiny_model):
    bare = tiny_model("llama", projection=False)
    for kwargs in ({"gain_pos": 3.0}, {"layers": [1]}, {"heads": "all"}):
        with pytest.raises(SteeringConfigError, match="has no projection"):
            bare.generate("plain text", max_new_tokens=1, **kwargs)
        with pytest.raises(SteeringConfigError, match="has no projection"):
            bare.generate("plain text", max_new_tokens=1, steer=False, **kwargs)
    assert isinstance(bare.generate("plain text", max_new_tokens=1), str)  # nothing asked, nothing refused


def test_numpy_counts_and_flags_are_accepted(seka):
    out = seka.generate([PROMPT, PROMPT], max_new_tokens=np.int64(2), batch_size=np.int32(1), steer=np.True_)
    assert out == seka.generate([PROMPT, PROMPT], max_new_tokens=2, batch_size=1)
    assert seka.highlighted_tokens(PROMPT, max_new_tokens=np.int64(2)) == seka.highlighted_tokens(PROMPT, max_new_tokens=2)
    assert seka.score(PROMPT, ["Rome"], steer=np.False_) == seka.score(PROMPT, ["Rome"], steer=False)
    for bad in (True, 2.0, 0, np.int64(0)):
        with pytest.raises(SekaError, match="max_new_tokens must be a positive integer"):
            seka.generate(PROMPT, max_new_tokens=bad)


def test_a_fixed_router_with_every_weight_zero_is_refused(tiny_model):
    from seka_rag.adaptive import Expert, ExpertSet

    seka = tiny_model("llama")
    seka.load_experts(ExpertSet([Expert("e0", seka.projection), Expert("e1", seka.projection)]))
    with pytest.raises(SteeringConfigError, match="every expert weight 0"):
        seka.generate(PROMPT, router={"e0": 0.0, "e1": 0}, max_new_tokens=1)
    with pytest.raises(SteeringConfigError, match="every expert weight 0"):
        seka.generate(PROMPT, router={"e0": 0.0}, steer=False, max_new_tokens=1)


def test_an_empty_batch_still_checks_every_setting(seka):
    assert seka.generate([], max_new_tokens=2) == []
    bad_calls = [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"gain_pos": "x"}, "gain_pos must be a finite number"),
        ({"stop": 5}, "stop must be"),
        ({"do_sample": True, "temperature": -1}, "temperature"),
        ({"chat": "x"}, "chat must be"),
        ({"layers": [99]}, "99"),
        ({"batch_size": 0}, "batch_size"),
        ({"steer": "x"}, "steer must be"),
        ({"highlights": [["x"]]}, "one entry per prompt"),
        ({"progress": "yes"}, "progress must be"),
        ({"markers": "<<"}, "markers must be"),
    ]
    for kwargs, message in bad_calls:
        with pytest.raises(SekaError, match=message):
            seka.generate([], **kwargs)


def test_a_generator_of_stop_strings_is_read_once(seka):
    full = seka.generate(PROMPT, max_new_tokens=8, steer=False)
    stop = full[2:4]
    expected = full[: full.find(stop)]
    assert seka.generate(PROMPT, max_new_tokens=8, steer=False, stop=(s for s in [stop])) == expected
    assert "".join(seka.stream(PROMPT, max_new_tokens=8, steer=False, stop=(s for s in [stop]))) == expected


# ------------------------------------------------------------------ prompts
def test_errors_in_a_batch_name_the_prompt(seka):
    with pytest.raises(HighlightError, match=r"^prompt 2: highlight 'zzz' does not occur"):
        seka.generate(["a b c", "d e f", "g h i"], [["a"], ["e"], ["zzz"]], max_new_tokens=1)
    with pytest.raises(HighlightError, match=r"^prompt 2: unbalanced highlight marker: '<<' at character 2 opened"):
        seka.generate(["a <<b>> c", "d e f", "g <<h i"], max_new_tokens=1)
    with pytest.raises(HighlightError, match=r"^prompt 1: a prompt must be"):
        seka.generate(["a", None], max_new_tokens=1)
    with pytest.raises(SekaError, match=r"^chat must be"):  # a call option is no one prompt's mistake
        seka.generate(["a", "b"], chat="yes", max_new_tokens=1)


def test_common_wrong_prompt_shapes_get_a_fix(seka):
    with pytest.raises(HighlightError, match="this call takes one prompt"):
        seka.score([PROMPT, PROMPT], ["Rome"])
    with pytest.raises(HighlightError, match="this call takes one prompt"):
        seka.highlighted_tokens([PROMPT, PROMPT])
    with pytest.raises(HighlightError, match=r"\(role, text\) pairs are not messages"):
        seka.score([("human", "hi")], ["a"])
    with pytest.raises(HighlightError, match="wrap it in a list"):
        seka.generate({"role": "user", "content": "hi"}, max_new_tokens=1)
    with pytest.raises(HighlightError, match="entry 1 of the messages is a tuple"):
        seka.score([{"role": "user", "content": "hi"}, ("assistant", "x")], ["a"])


def test_langchain_role_names_are_refused_with_the_template_name(seka):
    for role, meant in (("human", "user"), ("ai", "assistant"), ("AI", "assistant")):
        with pytest.raises(HighlightError, match=f"chat templates call it '{meant}'"):
            seka.generate([{"role": role, "content": "hi"}], max_new_tokens=1)


def test_a_chat_template_that_refuses_the_messages_gives_a_highlight_error(tiny_model, helpers):
    strict = (
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ message['content'] }}{% endfor %}"
    )
    seka = helpers.build_tiny_model("llama", helpers.make_tokenizer(strict))
    messages = [{"role": "user", "content": "Doc <<A>>"}, {"role": "user", "content": "Question?"}]
    with pytest.raises(HighlightError, match="chat template failed on these messages: Conversation roles must alternate"):
        seka.generate(messages, max_new_tokens=1)


def test_markers_whose_escape_is_a_marker_are_refused():
    with pytest.raises(HighlightError, match="escape"):
        Markers("\\", "/")
    with pytest.raises(HighlightError, match="escape"):
        Markers("[[", "!!", escape="!!")
    assert Markers("[[", "]]", escape="").escape == ""  # no escape at all is fine


def test_markers_that_could_never_close_are_refused():
    # the end marker would be read as another start: "x |y|| z" raised "nested highlight" before
    with pytest.raises(HighlightError, match="must not begin with the start marker"):
        Markers("|", "||")
    with pytest.raises(HighlightError, match="must not begin with the start marker"):
        Markers("a", "aa")
    assert Markers(">>>", ">>").start == ">>>"  # the other way round closes fine


def test_an_escape_of_several_characters_is_refused():
    # escape_markers and the scanner group a run of a multi-character escape differently, so such text
    # did not read back as written
    with pytest.raises(HighlightError, match="escape must be one character"):
        Markers("<<", ">>", escape="\\\\")


# ------------------------------------------------------------------ progress
def test_progress_bar_over_batches(seka, capsys):
    prompts = [PROMPT] * 3
    quiet = seka.generate(prompts, max_new_tokens=1, batch_size=1, progress=False)
    assert "generate" not in capsys.readouterr().err
    shown = seka.generate(prompts, max_new_tokens=1, batch_size=1, progress=True)
    err = capsys.readouterr().err
    assert shown == quiet and "generate" in err and "/3 [" in err  # a bar of 3 batches (cleared when done)
    seka.score(PROMPT, ["Rome", "Paris", "Oslo"], batch_size=1, progress=True)
    err = capsys.readouterr().err
    assert "score" in err and "/3 [" in err
    seka.generate(prompts, max_new_tokens=1, batch_size=1)  # default: only on a terminal (pytest's is not)
    assert "generate" not in capsys.readouterr().err


# ------------------------------------------------------------------ builder
def test_builder_reads_a_generator_and_checks_names_before_building(seka, monkeypatch):
    import seka_rag.builder as builder
    from seka_rag.builder import BuildConfig, build_expert_set, build_projection
    from seka_rag.data.triplets import Triplet, generate_triplets

    triplets = generate_triplets(4, seed=0)
    config = BuildConfig(layers=[1], batch_size=4)
    from_list = build_projection(seka, triplets, config, progress=False)
    from_generator = build_projection(seka, (t for t in triplets), config, progress=False)
    assert torch.equal(from_list.pos, from_generator.pos)

    def never(*args, **kwargs):
        raise AssertionError("no keys should be collected for a set whose names clash")

    monkeypatch.setattr(builder, "collect_answer_keys", never)
    with pytest.raises(SekaError, match="would share a file name"):
        build_expert_set(seka, {"a/b": triplets, "a_b": triplets}, config, prototypes=False)
    with pytest.raises(SekaError, match="distinct non-empty strings"):
        build_expert_set(seka, {"ctx": triplets, " ": triplets}, config, prototypes=False)
    with pytest.raises(SekaError, match="Triplet.context must be a string"):
        Triplet(1, 2, 3, 4)
    with pytest.raises(SekaError, match="answer must occur in its context"):
        Triplet("The tower is in Rome.", "Where is the tower?", "Paris", "Who met Bob?")


# ------------------------------------------------------------------ integrations
def test_a_missing_framework_names_the_extra():
    from seka_rag.errors import missing_extra

    err = missing_extra(ModuleNotFoundError("No module named 'langchain_core'", name="langchain_core"),
                        "langchain_core", "langchain")
    assert 'pip install ".[langchain]"' in str(err) and "langchain-core" in str(err)
    err = missing_extra(ModuleNotFoundError("x", name="llama_index.core.llms"), "llama_index.core", "llamaindex")
    assert "llama-index-core" in str(err) and "[llamaindex]" in str(err)
    other = ModuleNotFoundError("No module named 'numpyy'", name="numpyy")
    assert missing_extra(other, "langchain_core", "langchain") is other  # anything else is passed on


@pytest.mark.parametrize("statement, extra", [
    ("from langchain_seka import ChatSeka", "[langchain]"),
    ("from llama_index.llms.seka import Seka", "[llamaindex]"),
    ("from llama_index.postprocessor.seka_highlight import SekaHighlightPostprocessor", "[llamaindex]"),
    ("from llama_index.embeddings.seka import SentenceTransformerEmbedding", "[llamaindex]"),
])
def test_each_integration_names_its_extra_when_its_framework_is_missing(statement, extra):
    import subprocess
    import sys

    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'langchain_core' or name.startswith('llama_index.core'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    run = subprocess.run([sys.executable, "-c", blocker + statement], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f'pip install ".{extra}"' in run.stderr, run.stderr[-2000:]


def test_infinite_temperature_and_malformed_projections_are_refused(seka):
    import dataclasses

    from seka_rag import Projection, ProjectionError

    with pytest.raises(SekaError, match="temperature must be a finite number"):
        seka.generate(PROMPT, do_sample=True, temperature=float("inf"), max_new_tokens=1)
    p = seka.projection
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    with pytest.raises(ProjectionError, match="meta must be a ProjectionMeta"):
        Projection(**{**fields, "meta": dataclasses.asdict(p.meta)})
    with pytest.raises(ProjectionError, match="'head_mask' must be boolean"):
        Projection(**{**fields, "head_mask": p.head_mask.float() * 0.5})


def test_a_template_that_names_a_role_may_use_it(helpers):
    sharegpt = ("{% for m in messages %}{% if m['role'] == 'human' %}Human: {{ m['content'] }}\n"
                "{% elif m['role'] == 'gpt' %}GPT: {{ m['content'] }}\n{% endif %}{% endfor %}GPT:")
    seka = helpers.build_tiny_model("llama", helpers.make_tokenizer(sharegpt))
    messages = [{"role": "human", "content": "Doc <<A>>"}]
    assert seka.highlighted_tokens(messages)  # the template's own role, not a slip for 'user'
    with pytest.raises(HighlightError, match="chat templates call it 'assistant'"):
        seka.highlighted_tokens([{"role": "ai", "content": "Doc <<A>>"}])


def test_langchain_style_pairs_given_to_generate(seka):
    with pytest.raises(HighlightError, match=r"\(role, text\) pairs are not messages"):
        seka.generate([("system", "be brief"), ("user", "hi")], max_new_tokens=1)
    with pytest.raises(HighlightError, match=r"a \(role, text\) pair is not a message"):
        seka.score(("user", "hi"), ["a"])


def test_batch_errors_keep_their_class_and_traceback(seka):
    with pytest.raises(HighlightError) as info:
        seka.generate(["a b c", "d e f"], [["a"], ["zzz"]], max_new_tokens=1)
    assert str(info.value).startswith("prompt 1: ")
    # the traceback still reaches the line in highlight.py that found the mistake
    assert any(str(entry.path).endswith("highlight.py") for entry in info.traceback)


def test_template_errors_other_than_the_messages(helpers):
    broken = "{% for m in messages %}{{ m['content'] }"  # unclosed tag
    seka = helpers.build_tiny_model("llama", helpers.make_tokenizer(broken))
    with pytest.raises(HighlightError, match="not valid Jinja"):
        seka.generate([{"role": "user", "content": "hi"}], max_new_tokens=1)


def test_progress_default_shows_a_bar_on_a_terminal_only_for_several_batches(seka, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for prompts, expect in (([PROMPT] * 3, True), ([PROMPT], False), ([], False)):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        seka.generate(prompts, max_new_tokens=1, batch_size=1)
        monkeypatch.undo()
        assert ("generate" in term.getvalue()) is expect, (prompts, term.getvalue())
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    seka.generate([], max_new_tokens=1, progress=True)  # nothing to do: no bar left behind
    monkeypatch.undo()
    assert term.getvalue() == ""
