"""Mistakes a first-time user makes on the command line and in the examples: one clear line each,
said before any work is done (found by a fresh-user run of the README's command line and examples)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from seka_rag import SekaError, SekaModel
from seka_rag.cli import _GAIN_SCALE_ITEMS, _as_spelled, _plain_warnings, build_parser, main
from seka_rag.errors import ProjectionError
from seka_rag.models.embedded import gguf_progress_bars, make_cache_folder

ROOT = Path(__file__).resolve().parents[2]
UNWRITABLE = Path("/proc/seka-rag-test")  # Linux: nothing can be created under /proc, not even by root


@pytest.fixture(scope="module")
def model_dir(saved_model_dir):
    return saved_model_dir()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_that_cannot_be_written_is_refused_before_the_work(model_dir, tmp_path, capsys):
    out = UNWRITABLE / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(out), "--triplets", "2"]) == 2
    captured = capsys.readouterr()
    assert "built projection" not in captured.out  # refused before building, not after
    assert f"--out '{out}': cannot write in '/proc'" in captured.err and "Traceback" not in captured.err
    assert main(["compare-experts", "--json", str(UNWRITABLE / "a.json")]) == 2
    assert "--json" in capsys.readouterr().err
    # a writable place passes, and the check leaves nothing behind
    parent = tmp_path / "new" / "dir"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(parent / "p.safetensors"),
                 "--triplets", "2", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    assert sorted(p.name for p in parent.iterdir()) == ["p.safetensors"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_outputs_that_exist_are_written_whatever_their_folder(tmp_path, capsys):
    # an existing file reached through a folder nothing can be created in (/proc/self/fd), and a device:
    # the write itself decides, as it did before the folder check existed
    stored = ROOT / "docs" / "adaptive" / "test-instructions-150-bf16.json"
    target = tmp_path / "merged.json"
    with open(target, "w") as handle:
        assert main(["eval", "--merge", str(stored), "--out", f"/proc/self/fd/{handle.fileno()}"]) == 0
    assert json.loads(target.read_text())["methods"][0] == "unsteered"
    assert main(["eval", "--merge", str(stored), "--out", "/dev/null"]) == 0
    capsys.readouterr()


def test_an_unusable_model_cache_is_one_clear_error(tmp_path):
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    with pytest.raises(SekaError, match="model cache folder .* cannot be used .*SEKA_RAG_CACHE"):
        make_cache_folder(a_file)
    work = make_cache_folder(tmp_path / "ok")
    assert work.is_dir() and work.parent == tmp_path / "ok"
    # a GGUF conversion with such a cache fails the same way, before transformers reads anything
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(SekaError, match="model cache folder"):
        SekaModel.from_pretrained(str(tmp_path), gguf_file="m.gguf", cache_dir=str(a_file / "sub"))


def test_conversions_go_through_the_progress_switch(tmp_path, monkeypatch, capsys):
    from transformers.utils import logging as hf_logging

    from seka_rag.models import embedded

    class Entered(Exception):
        pass

    @contextlib.contextmanager
    def entered():
        raise Entered
        yield

    monkeypatch.setattr(embedded, "gguf_progress_bars", entered)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(Entered):  # a local GGUF's conversion runs inside the switch
        SekaModel.from_pretrained(str(tmp_path), gguf_file="m.gguf", cache_dir=str(tmp_path / "cache"))
    # an embedded model's conversion says so on stderr only while transformers' bars are on
    monkeypatch.setattr(embedded, "_is_converted", lambda *a: False)
    monkeypatch.setattr(embedded, "part_paths", lambda model: [])
    monkeypatch.setattr(embedded, "assemble_gguf", lambda *a: (_ for _ in ()).throw(Entered()))
    spec = embedded.embedded_model("smollm2-135m")
    for bars in (True, False):
        hf_logging.enable_progress_bar() if bars else hf_logging.disable_progress_bar()
        try:
            with pytest.raises(Entered):
                embedded.ensure_converted(spec, tmp_path / "cache")
        finally:
            hf_logging.enable_progress_bar()
        assert ("converting embedded model smollm2-135m" in capsys.readouterr().err) is bars


def test_the_gguf_conversion_bar_follows_transformers_switch():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    with gguf_progress_bars():
        assert gguf_utils.tqdm is original  # bars on: untouched
    hf_logging.disable_progress_bar()
    try:
        with gguf_progress_bars():
            assert isinstance(gguf_utils.tqdm, functools.partial) and gguf_utils.tqdm.keywords == {"disable": True}
            assert gguf_utils.tqdm([1, 2]).disable
        assert gguf_utils.tqdm is original
    finally:
        hf_logging.enable_progress_bar()


def test_a_missing_projection_file_is_said_before_the_model_loads(tmp_path):
    # the model does not exist either: the projection is read first, so that is what the error names
    with pytest.raises(ProjectionError, match="projection file .*missing.safetensors' does not exist"):
        SekaModel.from_pretrained(str(tmp_path / "no-model"), projection=tmp_path / "missing.safetensors")
    with pytest.raises(ProjectionError, match="does not exist"):
        SekaModel.default("smollm2-135m", projection=str(tmp_path / "missing.safetensors"),
                          cache_dir=str(tmp_path / "never-used"))
    assert not (tmp_path / "never-used").exists()  # nothing was converted


def test_an_empty_prompt_is_refused_and_no_highlight_is_noted(model_dir, monkeypatch, capsys):
    assert main(["generate", "--model", "no/such-model", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert main(["generate", "--model", "no/such-model", "-"]) == 2
    assert "the prompt is empty (nothing came on standard input)" in capsys.readouterr().err
    assert main(["preview", "--model", str(model_dir), "--dtype", "float32", "nothing marked here"]) == 0
    assert "note: nothing is highlighted" in capsys.readouterr().err
    assert main(["preview", "--model", str(model_dir), "--dtype", "float32", "one <<marked>> word"]) == 0
    assert "nothing is highlighted" not in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--dtype", "float32", "--no-steer", "--max-new-tokens", "1",
                 "plain"]) == 0
    assert "nothing is highlighted" not in capsys.readouterr().err  # not steering: nothing to say


def test_the_command_prints_warnings_as_one_seka_rag_line(tmp_path, monkeypatch, capsys):
    shipped = ROOT / "seka_rag" / "data" / "projections" / "smollm2-135m.safetensors"

    def show(message, category, filename, lineno, file=None, line=None):  # what Python does by default
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", show)
        assert main(["set-gains", str(shipped), "--gain-pos", "-50", "--out", str(tmp_path / "p.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "seka-rag: warning: gain_pos=-50" in err and "sys.exit" not in err and ".py:" not in err


def test_warnings_print_as_one_seka_rag_line():
    with _plain_warnings():
        assert warnings.formatwarning("gains turn keys", UserWarning, "/venv/bin/seka-rag", 6) == \
            "seka-rag: warning: gains turn keys\n"
        assert warnings.formatwarning("old", DeprecationWarning, "x.py", 1).startswith(
            "seka-rag: warning (DeprecationWarning): old")
    assert "seka-rag" not in warnings.formatwarning("x", UserWarning, "f.py", 1)  # restored


def test_expert_method_hints_use_each_commands_names(capsys):
    # no expert set ships for the small model: the hint names this command's methods and a valid example
    assert main(["bench", "--model", "smollm2-135m", "--methods", "ada-attention"]) == 2
    err = capsys.readouterr().err
    assert "ada-attention, ada-embedding, two-pass: e.g. --methods seka,pasta" in err
    assert main(["eval", "--model", "smollm2-135m", "--adaptive", "--methods", "unsteered,seka"]) == 2
    assert "adaseka-attention, adaseka-embedding: e.g. --methods unsteered,seka" in capsys.readouterr().err


def test_family_names_of_other_commands_and_typos(tmp_path, capsys):
    assert _as_spelled(["instruction"], _GAIN_SCALE_ITEMS) == ["instructions"]
    assert _as_spelled("conflict", _GAIN_SCALE_ITEMS) == ["conflicts"]
    assert build_parser().parse_args(["gain-scale", "--family", "instruction"]).family == "instructions"
    assert main(["build-experts", "--families", "conflict", "instrction", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'instruction'?" in capsys.readouterr().err


def test_every_option_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in commands.items()
               for action in sub._actions if not isinstance(action, argparse._HelpAction) and not action.help]
    assert missing == []


def test_conflict_count_hint_counts_items_in_words():
    from seka_rag.evaluation.suite import parse_items

    with pytest.raises(SekaError, match=r"conflict=4 \(1 item\);"):
        parse_items("2", ["conflict"])
    with pytest.raises(SekaError, match=r"conflict=8 \(2 items\);"):
        parse_items("conflict=5", ["conflict"])


def test_merges_do_not_overwrite_their_inputs(tmp_path, monkeypatch, capsys):
    part = tmp_path / "overhead.json"
    content = {"info": {"model": "m", "dtype": "float32", "device": "cpu"}, "latency": [], "memory": []}
    part.write_text(json.dumps(content))
    assert main(["bench", "--merge", str(part), "--out", str(tmp_path / "joined.json")]) == 0  # a valid input
    capsys.readouterr()
    assert main(["bench", "--merge", str(part), "--out", str(part)]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is one of the files being merged" in err
    linked = tmp_path / "linked.json"
    os.link(part, linked)  # the same file by another name
    assert main(["bench", "--merge", str(linked), "--out", str(part)]) == 2
    monkeypatch.chdir(tmp_path)  # bench's default --out is bench-results/overhead.json
    (tmp_path / "bench-results").mkdir()
    (tmp_path / "bench-results" / "overhead.json").write_text(json.dumps(content))
    assert main(["bench", "--merge", "bench-results/overhead.json"]) == 2
    assert "the default --out 'bench-results/overhead.json' is one of the files" in capsys.readouterr().err
    assert json.loads(part.read_text()) == content
    stored = ROOT / "docs" / "adaptive" / "test-instructions-150-bf16.json"
    copy = tmp_path / "eval.json"
    copy.write_text(stored.read_text())
    assert main(["eval", "--merge", str(copy), "--out", str(copy)]) == 2
    assert main(["eval-families", "--merge", str(copy), "--out", str(copy)]) == 2
    assert copy.read_text() == stored.read_text()


def test_paired_against_takes_either_spelling_and_is_checked_in_the_api(tmp_path, capsys):
    stored = ROOT / "docs" / "adaptive" / "test-instructions-150-bf16.json"
    assert main(["eval", "--merge", str(stored), "--paired-against", "ada-embedding"]) == 0
    assert "method - adaseka-embedding" in capsys.readouterr().out
    missing = str(tmp_path / "no-model")
    assert main(["eval", "--model", missing, "--methods", "seka,ada-embedding", "--paired-against",
                 "ada-embedding", "--families", "conflict", "--no-progress"]) == 2
    assert "no directory" in (err := capsys.readouterr().err) and "paired-against" not in err  # got past it
    assert main(["eval", "--model", missing, "--paired-against", "sek"]) == 2
    assert "did you mean 'seka'?" in capsys.readouterr().err
    from seka_rag.evaluation.suite import SuiteResult

    result = SuiteResult.from_dict(json.loads(stored.read_text()))
    for render in (result.text, result.markdown, result.to_dict):
        with pytest.raises(SekaError, match="cannot pair with 'sek'"):
            render("sek")


def test_examples_end_with_one_line_on_a_user_mistake():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from _common import run
    finally:
        sys.path.remove(str(ROOT / "examples"))

    def wrong_name():
        SekaModel.default("smollm2")

    with pytest.raises(SystemExit, match="^error: no embedded model named 'smollm2'; did you mean 'smollm2-135m'"):
        run(wrong_name)
    done = []
    run(lambda: done.append(1))
    assert done == [1]
    demo = [sys.executable, str(ROOT / "examples" / "demo.py")]
    shown = subprocess.run([*demo, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "embedded model" in shown.stdout
    wrong = subprocess.run([*demo, "smollm2"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().startswith("error: no embedded model named 'smollm2'")


def test_an_embedded_models_hugging_face_name_points_to_it():
    from seka_rag.models.embedded import closest_embedded

    for name in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen2.5-coder-0.5b-instruct"):
        assert closest_embedded(name) in ("smollm2-135m", "qwen2.5-coder-0.5b")
    assert closest_embedded("SmolLM2-135M-Instruct") == "smollm2-135m"
    assert closest_embedded("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "qwen2.5-coder-0.5b"
    assert closest_embedded("gpt-4o") is None


def test_compare_checks_steering_before_generating(model_dir, monkeypatch, capsys):
    generated = []
    original = SekaModel.generate

    def counting(self, prompt, *args, **kwargs):
        generated.append(kwargs.get("steer", True))
        return original(self, prompt, *args, **kwargs)

    monkeypatch.setattr(SekaModel, "generate", counting)
    # no projection: the steered call fails first, and no unsteered answer is generated for nothing
    assert main(["generate", "--model", str(model_dir), "--dtype", "float32", "--compare", "--max-new-tokens", "1",
                 "a <<b>> c"]) == 2
    assert "no projection" in capsys.readouterr().err and generated == [True]


def test_preview_offers_no_options_it_refuses(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["preview", "--help"])
    shown = capsys.readouterr().out
    assert "--projection" not in shown and "--experts" not in shown and "--highlight" in shown


def test_calibrate_says_when_nothing_steers(model_dir, tmp_path, capsys):
    import re

    projection = tmp_path / "p.safetensors"
    assert main(["build-projection", "--model", str(model_dir), "--out", str(projection), "--triplets", "4",
                 "--dtype", "float32", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", str(model_dir), "--dtype", "float32", "--projection", str(projection),
                 "--out", str(tmp_path / "c.safetensors"), "--scan-items", "1", "--select-items", "1",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    share = float(re.search(r"first-token dev share (\d\.\d+)", captured.out).group(1))
    assert ("no configuration decided more dev conflicts than an unsteered model" in captured.err) == (share <= 0.5)
    assert "| first-token dev share |" in captured.out


def test_template_and_missing_directory_errors_say_what_to_do(helpers):
    from seka_rag import HighlightError

    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    seka = helpers.build_tiny_model("llama", helpers.make_tokenizer(strict))
    with pytest.raises(HighlightError, match="put the system text at the start of the first user message"):
        seka.generate([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<<hi>>"}],
                      max_new_tokens=1)
    with pytest.raises(SekaError, match="there is no local directory 'models/nonexist' either"):
        SekaModel.from_pretrained("models/nonexist", local_files_only=True)
