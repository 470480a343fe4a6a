"""Projection files: safetensors round trip, geometry checks, corrupt files, and no pickle anywhere."""

from __future__ import annotations

import os

import json
import re
import struct
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import seka_rag
from seka_rag import Projection, ProjectionError, ProjectionMeta, SekaModel
from seka_rag.projection import _TENSORS as TENSORS
from seka_rag.projection import FORMAT_VERSION

#: the tensors every format-1 file has had from the start
V1_TENSORS = ("pos", "neg", "u_pos", "s_pos", "u_neg", "s_neg", "head_shift", "head_mask")


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama", num_layers=3)


@pytest.fixture
def projection(llama, helpers):
    return helpers.random_projection(
        llama.geometry, seed=3, layers=[2, 0], head_mask=[[True, False], [True, True]],
        gain_pos=1.75, gain_neg=0.25, default_layers=[2], model_id="tiny-llama",
    )


def assert_same(a: Projection, b: Projection):
    assert asdict(a.meta) == asdict(b.meta)
    for name in TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------------------------- round trip
def test_round_trip(projection, tmp_path):
    path = projection.save(tmp_path / "sub" / "p.safetensors")
    assert path == tmp_path / "sub" / "p.safetensors" and path.is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any new file is, not owner-only
    loaded = Projection.load(path)
    assert_same(projection, loaded)
    assert loaded.layers == [2, 0]  # model layer indices, in row order
    assert loaded.row(2) == 0 and loaded.row(0) == 1
    assert loaded.head_mask.dtype == torch.bool
    assert loaded.meta.notes == {"test": True}
    assert loaded.meta.format_version == FORMAT_VERSION
    # str paths work too
    assert_same(projection, Projection.load(str(path)))


def test_file_is_safetensors_with_json_metadata(projection, tmp_path):
    path = projection.save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == set(TENSORS)
    meta = json.loads(header["__metadata__"]["seka"])
    assert meta["layers"] == [2, 0] and meta["model_type"] == "llama"
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(TENSORS)
        assert f.get_tensor("head_mask").dtype == torch.uint8
    assert not raw.startswith(b"\x80")  # not a pickle
    assert b"PK" != raw[:2]  # not a torch zip archive


def test_loaded_projection_steers_like_the_original(llama, projection, tmp_path):
    llama.load_projection(projection)
    a = llama.score("Where is <<the tower>>?", ["Rome", "Paris"])
    llama.load_projection(projection.save(tmp_path / "p.safetensors"))  # by path
    assert llama.score("Where is <<the tower>>?", ["Rome", "Paris"]) == a
    second = SekaModel(llama.model, llama.tokenizer, tmp_path / "p.safetensors", model_id="tiny-llama")
    assert second.projection.layers == [2, 0]


def test_with_delta(projection):
    shifted = projection.with_delta(0.5)
    assert torch.equal(shifted.head_mask, projection.head_shift >= 0.5)
    assert shifted.meta.delta == 0.5 and projection.meta.delta == 0.0
    assert torch.equal(shifted.pos, projection.pos)


# ---------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("other_family", ["qwen2", "qwen3", "gemma3"])
def test_projection_from_another_family_is_refused(llama, tiny_model, other_family):
    other = tiny_model(other_family, num_layers=3)
    with pytest.raises(ProjectionError, match="does not fit"):
        llama.load_projection(other.projection)


def test_different_layer_count_is_refused(llama, tiny_model, tmp_path):
    two = tiny_model("llama", num_layers=2)
    path = two.projection.save(tmp_path / "two.safetensors")
    with pytest.raises(ProjectionError, match="2 layers vs 3"):
        llama.load_projection(path)
    with pytest.raises(ProjectionError, match="build-projection"):
        SekaModel(llama.model, llama.tokenizer, path)


@pytest.mark.parametrize("field, value, fragment", [("num_kv_heads", 4, "KV heads"), ("head_dim", 8, "head dim")])
def test_different_heads_are_refused(llama, helpers, field, value, fragment):
    geom = llama.geometry
    fake = type(geom)(**{**{k: getattr(geom, k) for k in geom.__dataclass_fields__}, field: value})
    other = helpers.random_projection(fake)
    with pytest.raises(ProjectionError, match=fragment):
        llama.load_projection(other)


def test_refused_projection_leaves_the_current_one(llama, projection, tiny_model):
    llama.load_projection(projection)
    with pytest.raises(ProjectionError):
        llama.load_projection(tiny_model("qwen2", num_layers=3).projection)
    assert llama.projection is projection


def test_same_shapes_other_model_id_warns(llama, helpers):
    other = helpers.random_projection(llama.geometry, model_id="someone/else")
    with pytest.warns(UserWarning, match="someone/else"):
        llama.load_projection(other)


# ---------------------------------------------------------------------------------------- invalid projections
def test_invalid_in_memory_projections(projection):
    kw = {name: getattr(projection, name) for name in TENSORS}
    meta = asdict(projection.meta)
    with pytest.raises(ProjectionError, match="shape"):
        Projection(meta=projection.meta, **{**kw, "pos": projection.pos[:, :, :4]})
    with pytest.raises(ProjectionError, match="non-finite"):
        Projection(meta=projection.meta, **{**kw, "neg": projection.neg * float("nan")})
    with pytest.raises(ProjectionError, match="layer indices"):
        Projection(meta=ProjectionMeta(**{**meta, "layers": [2, 3]}), **kw)
    with pytest.raises(ProjectionError, match="layer indices"):
        Projection(meta=ProjectionMeta(**{**meta, "layers": [2, 2]}), **kw)
    with pytest.raises(ProjectionError, match="default layers"):
        Projection(meta=ProjectionMeta(**{**meta, "default_layers": [1]}), **kw)
    with pytest.raises(ProjectionError, match="gain_pos must be a finite number"):
        Projection(meta=ProjectionMeta(**{**meta, "gain_pos": float("inf")}), **kw)


@pytest.mark.parametrize("field, value, message", [
    ("gain_pos", "2", "gain_pos must be a finite number"),
    ("layers", "01", "layers must be a list of layer indices"),
    ("default_layers", [0.5], "default_layers must be a list of layer indices"),
    ("num_layers", "2", "num_layers must be a positive integer"),
    ("model_id", None, "model_id must be a string"),
    ("notes", [], "notes must be a dict"),
])
def test_projection_meta_refuses_wrong_types_by_name(projection, field, value, message):
    with pytest.raises(ProjectionError, match=message):
        ProjectionMeta(**{**asdict(projection.meta), field: value})


def test_projection_save_and_load_refuse_wrong_paths(projection, tmp_path):
    with pytest.raises(ProjectionError, match="is a directory"):
        projection.save(tmp_path)
    for wrong in (None, {}, ["a.safetensors"]):
        with pytest.raises(ProjectionError, match="loaded from a file path"):
            Projection.load(wrong)


def _write(path: Path, tensors: dict, meta: dict | str | None):
    metadata = None
    if meta is not None:
        metadata = {"seka": meta if isinstance(meta, str) else json.dumps(meta)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _good_tensors(projection):
    t = {name: getattr(projection, name).contiguous() for name in TENSORS}
    t["head_mask"] = t["head_mask"].to(torch.uint8)
    return t


def test_missing_file(tmp_path):
    with pytest.raises(ProjectionError, match="does not exist"):
        Projection.load(tmp_path / "nope.safetensors")
    with pytest.raises(ProjectionError, match="is a directory, not a projection file"):
        Projection.load(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 10, b"\x80\x04\x95" + b"\x00" * 40, struct.pack("<Q", 10**9) + b"{}"],
    ids=["empty", "garbage", "pickle-ish", "bad-header-length"],
)
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ProjectionError, match="not a readable projection file"):
        Projection.load(path)


def test_truncated_file(projection, tmp_path):
    path = projection.save(tmp_path / "p.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ProjectionError):
        Projection.load(path)


def test_tensors_sharing_memory_save_and_load(projection, tmp_path):
    """One U passed as both u_pos and u_neg (or views of one tensor) is saved, not refused by safetensors."""
    shared = Projection(meta=projection.meta, pos=projection.pos, neg=projection.neg, u_pos=projection.u_pos,
                        s_pos=projection.s_pos, u_neg=projection.u_pos, s_neg=projection.s_pos,
                        head_shift=projection.head_shift, head_mask=projection.head_mask)
    loaded = Projection.load(shared.save(tmp_path / "shared.safetensors"))
    assert_same(shared, loaded)
    assert loaded.u_neg.data_ptr() != loaded.u_pos.data_ptr()

def test_torch_save_file_is_refused(projection, tmp_path):
    path = tmp_path / "p.pt"
    torch.save({"pos": projection.pos}, path)
    with pytest.raises(ProjectionError):
        Projection.load(path)


def test_non_projection_safetensors(tmp_path):
    path = _write(tmp_path / "w.safetensors", {"weight": torch.zeros(2, 2)}, None)
    with pytest.raises(ProjectionError, match="no seka metadata"):
        Projection.load(path)


def test_format_1_file_without_newer_optional_tensors_loads(projection, tmp_path):
    # a file written before optional tensors were added (same FORMAT_VERSION) must still load
    t = {k: v for k, v in _good_tensors(projection).items() if k in V1_TENSORS}
    path = _write(tmp_path / "old.safetensors", t, asdict(projection.meta))
    loaded = Projection.load(path)
    for name in V1_TENSORS:
        assert torch.equal(getattr(loaded, name), getattr(projection, name)), name
    if hasattr(loaded, "layer_scale"):
        assert torch.equal(loaded.layer_scale, torch.ones(len(projection.layers)))


def test_missing_tensors(projection, tmp_path):
    t = _good_tensors(projection)
    del t["u_neg"]
    path = _write(tmp_path / "p.safetensors", t, asdict(projection.meta))
    with pytest.raises(ProjectionError, match="u_neg"):
        Projection.load(path)


def test_wrong_tensor_shape_in_file(projection, tmp_path):
    t = _good_tensors(projection)
    t["s_pos"] = t["s_pos"][:, :, :3].contiguous()
    path = _write(tmp_path / "p.safetensors", t, asdict(projection.meta))
    with pytest.raises(ProjectionError, match="s_pos"):
        Projection.load(path)


@pytest.mark.parametrize(
    "meta, fragment",
    [
        ("{not json", "invalid projection metadata"),
        (json.dumps({"model_type": "llama"}), "invalid projection metadata"),  # required fields missing
        ("UNKNOWN_FIELD", "surprise"),
        ("FUTURE_VERSION", "upgrade seka-rag"),
    ],
    ids=["not-json", "missing-fields", "unknown-field", "future-version"],
)
def test_bad_metadata(projection, tmp_path, meta, fragment):
    good = asdict(projection.meta)
    if meta == "UNKNOWN_FIELD":
        meta = json.dumps({**good, "surprise": 1})
    elif meta == "FUTURE_VERSION":
        meta = json.dumps({**good, "format_version": FORMAT_VERSION + 1})
    path = _write(tmp_path / "p.safetensors", _good_tensors(projection), meta)
    with pytest.raises(ProjectionError, match=fragment):
        Projection.load(path)


@pytest.mark.parametrize(
    "meta",
    [
        "[1, 2, 3]",  # JSON, but not an object
        "null",
        "FIELD:layers=ab",  # wrong types inside an otherwise complete object
        "FIELD:gain_pos=high",
    ],
    ids=["json-list", "json-null", "layers-string", "gain-string"],
)
def test_metadata_of_the_wrong_json_type(projection, tmp_path, meta):
    # BUG: Projection.load only catches TypeError/ValueError around ProjectionMeta(**meta_dict); a
    # JSON list/null raises AttributeError (meta_dict.get) and wrongly typed fields fail later in
    # validate() with TypeError — none of them surface as ProjectionError.
    if meta.startswith("FIELD:"):
        key, value = meta[len("FIELD:") :].split("=")
        meta = json.dumps({**asdict(projection.meta), key: value})
    path = _write(tmp_path / "p.safetensors", _good_tensors(projection), meta)
    with pytest.raises(ProjectionError):
        Projection.load(path)


# ---------------------------------------------------------------------------------------- no pickle
def test_package_source_never_unpickles():
    root = Path(seka_rag.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert len(sources) >= 8
    forbidden = re.compile(
        r"torch\.load\b|\bimport\s+(c?pickle|dill|joblib|marshal)\b|\bfrom\s+(c?pickle|dill|joblib)\s+import"
        r"|\bpickle\.|\bload\s*\(\s*weights_only\s*=\s*False|weights_only\s*=\s*False|\btorch\.serialization\b"
    )
    hits = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


def test_repr_names_the_projection_not_its_tensors(helpers, tiny_model):
    seka = tiny_model("llama")
    text = repr(seka.projection)
    assert text.startswith("Projection(model_id=") and "tensor(" not in text and len(text) < 400


def test_one_directory_written_two_ways_is_one_model(tmp_path, tiny_model, monkeypatch):
    import warnings

    seka = tiny_model("llama")
    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    seka.projection.meta.model_id = str(tmp_path / "mymodel")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spelling in ("mymodel", "./mymodel/", str(tmp_path / "mymodel") + "/"):
            seka.projection.check_fits(seka.geometry, spelling)
    with pytest.warns(UserWarning, match="same shapes"):
        seka.projection.check_fits(seka.geometry, "other-model")


def test_round_trip_keeps_a_calibrated_layer_scale(tiny_model, helpers, tmp_path):
    seka = tiny_model("llama", num_layers=3)
    p = helpers.random_projection(seka.geometry, layers=[2, 0], layer_scale=torch.tensor([0.5, 3.0]))
    loaded = Projection.load(p.save(tmp_path / "p.safetensors"))
    assert torch.equal(loaded.layer_scale, torch.tensor([0.5, 3.0]))


# Guards added after mutation testing (one-line bugs no test caught): with_gains, check_fits, fingerprint.
def _small_geom(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{**dict(num_layers=3, num_kv_heads=2, head_dim=4, model_type="llama"), **kw})


def test_with_gains_keeps_the_gain_not_given(helpers):
    p = helpers.random_projection(_small_geom(), gain_pos=2.0, gain_neg=0.5)
    only_pos = p.with_gains(gain_pos=3.0)
    assert (only_pos.meta.gain_pos, only_pos.meta.gain_neg) == (3.0, 0.5)
    only_neg = p.with_gains(gain_neg=0.25)
    assert (only_neg.meta.gain_pos, only_neg.meta.gain_neg) == (2.0, 0.25)
    assert only_neg.meta.notes["gain_history"] == [[2.0, 0.5]]


@pytest.mark.parametrize("change", [dict(num_layers=2), dict(num_layers=4)])
def test_check_fits_refuses_a_model_with_another_layer_count(helpers, change):
    p = helpers.random_projection(_small_geom())
    p.check_fits(_small_geom())
    with pytest.raises(ProjectionError, match="layers vs"):
        p.check_fits(_small_geom(**change))


def test_fingerprint_covers_every_tensor(helpers):
    from dataclasses import replace

    p = helpers.random_projection(_small_geom())
    base = p.fingerprint()
    for name in TENSORS:
        t = getattr(p, name)
        changed = ~t if t.dtype == torch.bool else t + 0.5
        assert replace(p, **{name: changed}).fingerprint() != base, name


def test_with_delta_refuses_what_is_not_a_number(projection):
    from seka_rag import ProjectionError

    for bad in ("x", None, float("nan"), True):
        with pytest.raises(ProjectionError, match="delta must be a finite number"):
            projection.with_delta(bad)
    assert projection.with_delta(0.0).head_mask.all()
