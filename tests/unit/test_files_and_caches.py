"""Files seka-rag reads and writes, each case found by a review: the converted-model cache (a damaged
copy, two processes finishing at once, file modes), projections and expert sets edited by hand or
saved where they cannot be, an interrupted save of an expert set, and ``~`` in paths."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from seka_rag import Projection, ProjectionError, SekaError, SekaModel
from seka_rag.adaptive import Expert, ExpertSet
from seka_rag.models.embedded import MARKER, is_complete, publish, write_marker


# ------------------------------------------------------------------ the converted-model cache
@pytest.fixture
def converted(tmp_path, tiny_model):
    """A folder as a finished conversion leaves it: the model, its tokenizer and the marker."""
    seka = tiny_model("llama", projection=False)
    folder = tmp_path / "converted" / "tiny"
    seka.model.save_pretrained(folder)
    seka.tokenizer.save_pretrained(folder)
    write_marker(folder, {"sha256": "abc"})
    return folder


def test_the_marker_lists_every_file_and_a_damaged_copy_is_not_complete(converted):
    files = json.loads((converted / MARKER).read_text())["files"]
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert is_complete(converted, sha256="abc") and not is_complete(converted, sha256="other")
    weights = converted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a partial copy
    assert not is_complete(converted, sha256="abc")


def test_an_older_marker_without_a_file_list_is_trusted(converted):
    (converted / MARKER).write_text(json.dumps({"sha256": "abc"}))
    assert is_complete(converted, sha256="abc")


def test_converted_files_are_readable_by_others_as_the_umask_allows(converted):
    # safetensors writes its files for their owner only, which a shared cache cannot use
    umask = os.umask(0o022)
    os.umask(umask)
    for path in converted.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_a_damaged_cached_model_says_so_and_how_to_fix_it(converted):
    (converted / "tokenizer.json").unlink()
    (converted / "tokenizer_config.json").unlink()
    weights = converted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SekaError, match="damaged: delete that folder"):
        SekaModel.from_pretrained(converted)


def test_a_complete_cached_model_is_not_blamed_for_another_failure(converted):
    # an option the loader refuses is not damage: its own error comes through, and the cache stays
    with pytest.raises(Exception) as failure:
        SekaModel.from_pretrained(converted, device_map="nonsense")
    assert "damaged" not in str(failure.value)


def test_a_conversion_finished_first_by_another_process_is_kept(tmp_path, converted):
    finished = lambda path: is_complete(path, sha256="abc")  # noqa: E731
    ours = tmp_path / "work" / "converted"
    ours.mkdir(parents=True)
    (ours / "mine").write_text("x")
    publish(ours, converted, finished)  # theirs is complete: ours is dropped, theirs untouched
    assert is_complete(converted, sha256="abc") and not (converted / "mine").exists()
    # an incomplete copy in the way is replaced
    broken = tmp_path / "converted" / "broken"
    broken.mkdir()
    (broken / "partial").write_text("x")
    publish(ours, broken, lambda path: (path / "mine").is_file())
    assert (broken / "mine").is_file() and not (broken / "partial").exists()


def test_two_finishers_at_once_do_not_fail(tmp_path, converted, monkeypatch):
    # the other process's os.replace lands between our check and ours: ours fails, theirs is complete
    finished = lambda path: is_complete(path, sha256="abc")  # noqa: E731
    target = tmp_path / "converted" / "racy"
    ours = tmp_path / "work" / "converted"
    ours.mkdir(parents=True)
    (ours / "mine").write_text("x")
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(target):  # the other process wins the race
            import shutil

            shutil.copytree(converted, target)
            raise OSError(39, "Directory not empty")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    publish(ours, target, finished)
    assert is_complete(target, sha256="abc")


# ------------------------------------------------------------------ projections
@pytest.fixture
def projection(tiny_model):
    return tiny_model("llama").projection


def _rewrite(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["seka"])
    for key, value in changes.items():
        if key in tensors:
            tensors[key] = value(tensors[key])
        else:
            meta[key] = value
    save_file(tensors, str(path), metadata={"seka": json.dumps(meta)})


@pytest.mark.parametrize("changes, message", [
    ({"pos": lambda t: t.to(torch.int32)}, "'pos' must hold floating-point numbers"),
    ({"head_mask": lambda t: torch.full(t.shape, 0.3)}, "'head_mask' must be a bool or uint8 tensor of 0 / 1"),
    ({"format_version": "2"}, "format_version must be a whole number"),
    ({"chat_format": "false"}, "chat_format must be true or false"),
])
def test_a_projection_edited_by_hand_is_refused(tmp_path, projection, changes, message):
    path = projection.save(tmp_path / "p.safetensors")
    _rewrite(path, **changes)
    with pytest.raises(ProjectionError, match=message):
        Projection.load(path)


def test_a_negative_layer_scale_says_it_works_against_the_highlight(tmp_path, tiny_model):
    seka = tiny_model("llama")
    path = seka.projection.save(tmp_path / "p.safetensors")
    _rewrite(path, layer_scale=lambda t: -t)
    seka.load_projection(path)
    with pytest.warns(UserWarning, match=r"layer_scale\) is negative in layers \[0, 1\]"):
        seka.score("Where is <<the tower>>?", ["Rome"])


def test_saving_where_it_cannot_be_written_is_a_projection_error(projection):
    for target in ("/proc/p.safetensors", "/proc/no-such/p.safetensors"):
        with pytest.raises(ProjectionError, match=f"cannot write the projection to '{target}'"):
            projection.save(target)


def test_notes_that_are_not_json_are_refused_before_writing(tmp_path, projection):
    import copy

    odd = copy.deepcopy(projection)
    odd.meta.notes["when"] = object()
    with pytest.raises(ProjectionError, match="cannot be written as JSON"):
        odd.save(tmp_path / "p.safetensors")
    assert not list(tmp_path.iterdir())


def test_a_tilde_is_the_home_folder(tmp_path, monkeypatch, projection):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    saved = projection.save("~/p.safetensors")
    assert saved == tmp_path / "p.safetensors" and not (tmp_path / "~").exists()
    assert Projection.load("~/p.safetensors").fingerprint() == projection.fingerprint()
    experts = ExpertSet([Expert("a", projection)])
    assert experts.save("~/set") == tmp_path / "set"
    assert ExpertSet.load("~/set").names == ["a"]


def test_the_command_line_reads_a_tilde_in_paths_as_home(tmp_path, monkeypatch, projection):
    from seka_rag.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    projection.save(tmp_path / "p.safetensors")
    # the shell leaves "~" alone after "=": seka-rag reads it as home all the same
    assert main(["set-gains", "~/p.safetensors", "--gain-pos", "0.5", "--out=~/q.safetensors"]) == 0
    assert (tmp_path / "q.safetensors").is_file() and not (tmp_path / "~").exists()


# ------------------------------------------------------------------ expert sets
def test_an_interrupted_save_of_an_expert_set_is_refused_on_load(tmp_path, helpers, tiny_model):
    geom = tiny_model("llama").geometry
    a, b = (helpers.random_projection(geom, seed=s, model_id="tiny-llama") for s in (1, 2))
    folder = ExpertSet([Expert("x", a), Expert("y", b)]).save(tmp_path / "set")
    assert ExpertSet.load(folder).names == ["x", "y"]  # the fingerprints it records match
    # a new save rewrote x's file and stopped before its index: the old index does not describe it
    helpers.random_projection(geom, seed=3, model_id="tiny-llama").save(folder / "x.safetensors")
    with pytest.raises(ProjectionError, match="changed after this index was written"):
        ExpertSet.load(folder)


def test_an_interruption_while_writing_the_experts_leaves_the_earlier_set_whole(tmp_path, helpers, tiny_model,
                                                                                 monkeypatch):
    geom = tiny_model("llama").geometry
    a, b, c = (helpers.random_projection(geom, seed=s, model_id="tiny-llama") for s in (1, 2, 3))
    folder = ExpertSet([Expert("x", a), Expert("y", b)]).save(tmp_path / "set")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save, calls = Projection.save, []

    def interrupted(self, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second expert is written
        return real_save(self, path)

    monkeypatch.setattr(Projection, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ExpertSet([Expert("x", c), Expert("y", a)]).save(folder)
    monkeypatch.setattr(Projection, "save", real_save)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing changed, nothing left over
    assert ExpertSet.load(folder)["x"].projection.fingerprint() == a.fingerprint()


def test_saving_an_expert_set_removes_only_its_own_earlier_files(tmp_path, projection):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "README.md").write_text("mine")
    (folder / "experts.json").write_text(json.dumps({"experts": [{"name": "x", "file": "README.md"},
                                                                  {"name": "y", "file": ".."}]}))
    ExpertSet([Expert("a", projection)]).save(folder)
    assert (folder / "README.md").read_text() == "mine"
    index = json.loads((folder / "experts.json").read_text())
    index["experts"][0]["file"] = ".."
    (folder / "experts.json").write_text(json.dumps(index))
    with pytest.raises(ProjectionError, match="plain .safetensors file name"):
        ExpertSet.load(folder)


def test_saving_an_expert_set_where_it_cannot_be_written_is_a_projection_error(projection):
    with pytest.raises(ProjectionError, match="cannot create the expert set's directory"):
        ExpertSet([Expert("a", projection)]).save("/proc/seka-set")
