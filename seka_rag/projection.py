"""The :class:`Projection`: per-layer, per-KV-head key projections and their safetensors file format.

A projection holds, for each of its layers (by **model layer index**, never by position) and each
KV head, the positive projection P+ and the negative projection P-, the singular factors they were
cut from (U, S; AdaSEKA needs them) and each head's measured key shift. The file is safetensors
with the metadata as JSON under the ``"seka"`` key; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .architectures import ModelGeometry
from .errors import ProjectionError, SteeringConfigError

FORMAT_VERSION = 1
_TENSORS = ("pos", "neg", "u_pos", "s_pos", "u_neg", "s_neg", "head_shift", "head_mask", "layer_scale")
_OPTIONAL_TENSORS = ("layer_scale",)  # added within format 1; defaults to ones


@dataclass
class ProjectionMeta:
    """What a projection was built for and how; stored as JSON beside the tensors."""

    model_type: str
    model_id: str
    num_layers: int  #: of the model it was built on
    num_kv_heads: int
    head_dim: int
    layers: list[int]  #: model layer index of each tensor row
    gamma: float = 0.9
    delta: float = 0.0
    gain_pos: float = 2.0  #: default g+
    gain_neg: float = 0.5  #: default g-
    default_layers: list[int] | None = None  #: layers edited by default (None: all in ``layers``)
    construction: str = "seka"  #: how P+/P- were made (e.g. "seka", "identity")
    chat_format: bool = True  #: whether the triplet prompts went through the chat template
    data_hash: str = ""
    n_triplets: int = 0
    notes: dict = field(default_factory=dict)  #: free-form (e.g. calibration results)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        """Check each field's type, so a wrong one fails here with its name, not deep inside a later call."""
        for name in ("model_type", "model_id"):
            if not isinstance(getattr(self, name), str):
                raise ProjectionError(f"projection metadata {name} must be a string, got {getattr(self, name)!r}")
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ProjectionError(f"projection metadata {name} must be a positive integer, got {v!r}")
        for name in ("layers", "default_layers"):
            v = getattr(self, name)
            if v is None and name == "default_layers":
                continue
            if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # a NumPy array or a tensor of indices
                v = v.tolist()
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple, range)) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in v
            ):
                raise ProjectionError(f"projection metadata {name} must be a list of layer indices, got {v!r}")
            setattr(self, name, [int(i) for i in v])
        for name in ("gamma", "delta", "gain_pos", "gain_neg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ProjectionError(f"projection metadata {name} must be a finite number, got {v!r}")
        if not isinstance(self.notes, dict):
            raise ProjectionError(f"projection metadata notes must be a dict, got {type(self.notes).__name__}")
        for name, kind, what in (("construction", str, "a string"), ("data_hash", str, "a string"),
                                 ("chat_format", bool, "true or false")):
            if not isinstance(getattr(self, name), kind):
                raise ProjectionError(f"projection metadata {name} must be {what}, got {getattr(self, name)!r}")
        for name in ("n_triplets", "format_version"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ProjectionError(f"projection metadata {name} must be a whole number >= 0, got {v!r}")


def _str_keys(value):
    """``value`` with every dict key written as text, so that notes mixing int and str keys sort."""
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_str_keys(v) for v in value]
    return value


def _is_io_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to write a file: an OSError, or safetensors' own I/O error."""
    return isinstance(exc, OSError) or (type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc))


def _io_reason(exc: BaseException) -> str:
    """The reason a write failed, in a few words (safetensors' own message names a temporary file)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    import re

    reason = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?(?: at path .*)?$", str(exc))
    return reason.group(1) if reason and reason.group(1) else "an I/O error"


def layer_ranges(layers) -> str:
    """Layer indices written as ranges: ``[0, 1, 2, 5]`` → ``"0-2, 5"``."""
    out, start = [], None
    layers = sorted(layers)
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(out)


def _same_model(a: str, b: str) -> bool:
    """Whether two model ids name one model: equal, or one directory written two ways (``mymodel``,
    ``./mymodel/``, its absolute path)."""
    if a == b:
        return True
    paths = [Path(x).expanduser() for x in (a, b)]
    return all(p.is_dir() for p in paths) and paths[0].resolve() == paths[1].resolve()


def usual_permissions(path: Path) -> None:
    """safetensors creates files readable by their owner only; give them the umask's usual mode."""
    try:
        with open("/proc/self/status") as f:  # read without changing it (os.umask would, process-wide)
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:  # not ours to change (a shared mount): leave it
        pass


@dataclass
class Projection:
    """Key projections for a set of layers; tensors are (n_layers, kv_heads, head_dim, head_dim)."""

    meta: ProjectionMeta
    pos: torch.Tensor  #: P+
    neg: torch.Tensor  #: P-
    u_pos: torch.Tensor  #: left singular vectors of Ω+ (columns), descending
    s_pos: torch.Tensor  #: singular values of Ω+, (n_layers, kv_heads, head_dim)
    u_neg: torch.Tensor
    s_neg: torch.Tensor
    head_shift: torch.Tensor  #: (n_layers, kv_heads) relative key shift between H+ and H-
    head_mask: torch.Tensor  #: (n_layers, kv_heads) bool, heads kept (shift >= delta)
    layer_scale: torch.Tensor | None = None  #: (n_layers,) per-layer gain multiplier (calibration); ones if None

    def __post_init__(self) -> None:
        if not isinstance(self.meta, ProjectionMeta):  # before anything reads its fields
            raise ProjectionError(f"a projection's meta must be a ProjectionMeta, got {type(self.meta).__name__}")
        if self.layer_scale is None:
            self.layer_scale = torch.ones(len(self.meta.layers))
        self.validate()

    def __repr__(self) -> str:  # the tensors are megabytes: name what the projection is instead
        m = self.meta
        try:
            scales = sorted({round(float(self.layer_scale[m.layers.index(i)]), 4)
                             for i in self.edited_layers if i in m.layers})
            scale = scales[0] if len(scales) == 1 else scales
            default = "all" if m.default_layers is None else layer_ranges(m.default_layers)
            heads = f"{int(self.head_mask.sum())}/{self.head_mask.numel()}"
        except Exception:  # a repr never raises, whatever was changed by hand
            default, scale, heads = m.default_layers, "?", "?"
        return (f"Projection(model_id={m.model_id!r}, construction={m.construction!r}, layers={len(m.layers)} of "
                f"{m.num_layers}, default_layers={default}, gain_pos={m.gain_pos}, gain_neg={m.gain_neg}, "
                f"layer_scale={scale}, heads_kept={heads}, n_triplets={m.n_triplets})")

    def fingerprint(self) -> str:
        """A digest of everything that decides the edit (metadata and every tensor), e.g. for a cache key.

        The same in every process for the same projection. It is kept between calls while the same
        tensor objects are in place, unchanged by in-place operations (their version counters); a
        change made through ``.data`` or a NumPy view bypasses those counters, so after one, assign
        the tensor anew.
        """
        tensors = tuple(getattr(self, name) for name in _TENSORS)
        meta_json = json.dumps(_str_keys(asdict(self.meta)), sort_keys=True, default=str)
        versions = None if any(t.is_inference() for t in tensors) else tuple(t._version for t in tensors)
        cached = self.__dict__.get("_fingerprint")
        if (versions is not None and cached is not None and cached[2] == meta_json and cached[1] == versions
                and all(a is b for a, b in zip(cached[0], tensors))):
            return cached[3]
        digest = hashlib.sha256(meta_json.encode())
        for name, tensor in zip(_TENSORS, tensors):
            t = tensor.detach().cpu().contiguous()
            digest.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
        value = digest.hexdigest()
        if versions is not None:  # inference-mode tensors keep no version counter: never cached
            self.__dict__["_fingerprint"] = (tensors, versions, meta_json, value)
        return value

    # ------------------------------------------------------------------ structure
    @property
    def edited_layers(self) -> list[int]:
        """The layers edited by default: ``meta.default_layers``, or every layer the projection holds."""
        m = self.meta
        return list(m.default_layers) if m.default_layers is not None else list(m.layers)

    @property
    def layers(self) -> list[int]:
        """The layers this projection holds P+ / P- for (its default edit may use fewer)."""
        return list(self.meta.layers)

    @property
    def edits_by_default(self) -> bool:
        """Whether its head mask keeps some head in the layers edited by default (else it edits nothing)."""
        return bool(self.head_mask[[self.row(i) for i in self.edited_layers]].any())

    def row(self, layer: int) -> int:
        """Tensor row of model layer ``layer``."""
        try:
            return self.meta.layers.index(layer)
        except ValueError:
            raise SteeringConfigError(
                f"layer {layer} is not in this projection (it covers layers {self.meta.layers})"
            ) from None

    def validate(self) -> None:
        """Check tensor shapes against the metadata (layers, KV heads, head size), dtypes (floating point; a
        bool head mask) and finiteness; raise :class:`ProjectionError`. (The metadata's own types are checked
        when :class:`ProjectionMeta` is made.)"""
        m = self.meta
        if not isinstance(m, ProjectionMeta):
            raise ProjectionError(f"a projection's meta must be a ProjectionMeta, got {type(m).__name__}")
        n, h, d = len(m.layers), m.num_kv_heads, m.head_dim
        shapes = {
            "pos": (n, h, d, d), "neg": (n, h, d, d), "u_pos": (n, h, d, d), "u_neg": (n, h, d, d),
            "s_pos": (n, h, d), "s_neg": (n, h, d), "head_shift": (n, h), "head_mask": (n, h),
            "layer_scale": (n,),
        }
        for name, shape in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ProjectionError(f"projection tensor {name!r} has shape {got}, expected {shape}")
            if t.is_meta:
                raise ProjectionError(f"projection tensor {name!r} is on the meta device (it holds no values)")
            if name != "head_mask" and not t.is_floating_point():
                raise ProjectionError(f"projection tensor {name!r} must hold floating-point numbers, got {t.dtype}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ProjectionError(f"projection tensor {name!r} contains non-finite values")
        if self.head_mask.dtype != torch.bool:
            raise ProjectionError(f"projection tensor 'head_mask' must be boolean (a head is edited or not), "
                                  f"got {self.head_mask.dtype}")
        if len(set(m.layers)) != n or any(not 0 <= i < m.num_layers for i in m.layers):
            raise ProjectionError(f"projection layer indices {m.layers} are invalid for {m.num_layers} layers")
        if m.default_layers is not None and not set(m.default_layers) <= set(m.layers):
            raise ProjectionError("the projection's default layers are not all among its layers")
        for g in (m.gain_pos, m.gain_neg):
            if not math.isfinite(g):
                raise ProjectionError("the projection's default gains are not finite")

    def check_fits(self, geom: ModelGeometry, model_id: str | None = None) -> None:
        """Raise :class:`ProjectionError` unless this projection fits a model of geometry ``geom``."""
        m = self.meta
        problems = []
        if m.model_type != geom.model_type:
            problems.append(f"model type {m.model_type!r} vs {geom.model_type!r}")
        if m.num_layers != geom.num_layers:
            problems.append(f"{m.num_layers} layers vs {geom.num_layers}")
        if m.num_kv_heads != geom.num_kv_heads:
            problems.append(f"{m.num_kv_heads} KV heads vs {geom.num_kv_heads}")
        if m.head_dim != geom.head_dim:
            problems.append(f"head dim {m.head_dim} vs {geom.head_dim}")
        if problems:
            raise ProjectionError(
                f"this projection was built for {m.model_id!r} and does not fit the model "
                f"({'; '.join(problems)}); build one for this model with `seka-rag build-projection`"
            )
        if model_id and m.model_id and not _same_model(model_id, m.model_id):
            import warnings

            warnings.warn(
                f"projection built for {m.model_id!r} is applied to {model_id!r} (same shapes; if this is the "
                "same model at another path, nothing is wrong)",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the projection as safetensors with JSON metadata (``~`` in ``path`` is the home folder)."""
        if not isinstance(path, (str, os.PathLike)):
            raise ProjectionError(f"a projection is saved to a file path, got {type(path).__name__}")
        path = Path(path).expanduser()
        if path.is_dir():
            raise ProjectionError(f"{str(path)!r} is a directory: a projection is saved as one file "
                                  "(e.g. DIR/projection.safetensors)")
        try:
            metadata = {"seka": json.dumps(asdict(self.meta))}
        except (TypeError, ValueError) as exc:
            raise ProjectionError(f"the projection's metadata cannot be written as JSON ({exc}): keep its fields and "
                                  "notes to plain numbers, strings, lists and dicts") from None
        # cloned: safetensors refuses tensors that share memory (e.g. one U passed as both u_pos and u_neg)
        tensors = {name: getattr(self, name).detach().cpu().clone(memory_format=torch.contiguous_format)
                   for name in _TENSORS}
        tensors["head_mask"] = tensors["head_mask"].to(torch.uint8)
        # written beside the target and moved over it: a failed write never leaves a half-written file
        # where a good projection was (set-gains rewrites a file in place)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(partial), metadata=metadata)
            os.replace(partial, path)
        except Exception as exc:  # noqa: BLE001 - only write failures are turned into ProjectionError
            if isinstance(exc, ProjectionError) or not _is_io_error(exc):
                raise
            raise ProjectionError(f"cannot write the projection to {str(path)!r}: {_io_reason(exc)}") from None
        finally:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass
        usual_permissions(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Projection":
        """Read a projection file written by :meth:`save`. Corrupt files raise :class:`ProjectionError`."""
        if not isinstance(path, (str, os.PathLike)):
            raise ProjectionError(f"a projection is loaded from a file path, got {type(path).__name__}")
        path = Path(path).expanduser()
        if path.is_dir():
            raise ProjectionError(f"{str(path)!r} is a directory, not a projection file (the .safetensors file "
                                  "that seka-rag build-projection writes)")
        if not path.is_file():
            raise ProjectionError(f"projection file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get("seka")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ProjectionError(f"{str(path)!r} is not a readable projection file: {exc}") from None
        if raw_meta is None:
            raise ProjectionError(f"{str(path)!r} has no seka metadata: not a projection file")
        try:
            meta_dict = json.loads(raw_meta)
        except ValueError as exc:
            raise ProjectionError(f"{str(path)!r} has invalid projection metadata: {exc}") from None
        if not isinstance(meta_dict, dict):
            raise ProjectionError(f"{str(path)!r} has invalid projection metadata: not a JSON object")
        version = meta_dict.get("format_version", 0)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ProjectionError(
                f"{str(path)!r} uses projection format {version}; "
                f"this seka-rag reads up to {FORMAT_VERSION}: upgrade seka-rag"
            )
        missing = [k for k in _TENSORS if k not in tensors and k not in _OPTIONAL_TENSORS]
        if missing:
            raise ProjectionError(f"{str(path)!r} lacks tensors {missing}")
        mask = tensors["head_mask"]
        if mask.dtype not in (torch.bool, torch.uint8) or not bool(((mask == 0) | (mask == 1)).all()):
            raise ProjectionError(f"{str(path)!r}: tensor 'head_mask' must be a bool or uint8 tensor of 0 / 1 (a head "
                                  f"is edited or not), got {mask.dtype} values "
                                  f"{sorted({float(x) for x in mask.flatten().tolist()})[:4]}")
        tensors["head_mask"] = mask.bool()
        try:
            meta = ProjectionMeta(**meta_dict)
        except (ProjectionError, TypeError) as exc:
            raise ProjectionError(f"{str(path)!r} has invalid projection metadata: {exc}") from None
        try:
            return cls(meta=meta, **{k: tensors.get(k) for k in _TENSORS})
        except ProjectionError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProjectionError(f"{str(path)!r} has invalid projection metadata: {exc}") from None

    # ------------------------------------------------------------------ derived
    def with_gains(self, gain_pos: float | None = None, gain_neg: float | None = None) -> "Projection":
        """A copy whose default gains (``meta.gain_pos`` / ``meta.gain_neg``, before the per-layer scale) are
        the given ones; None keeps one as it is. The previous gains are recorded in ``meta.notes["gain_history"]``."""
        if gain_pos is None and gain_neg is None:
            raise ProjectionError("with_gains needs gain_pos and/or gain_neg")
        new = {}
        for name, value in (("gain_pos", gain_pos), ("gain_neg", gain_neg)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ProjectionError(f"{name} must be a finite number, got {value!r}")
            new[name] = float(value)
        notes = dict(self.meta.notes)
        notes["gain_history"] = [*notes.get("gain_history", []), [self.meta.gain_pos, self.meta.gain_neg]]
        meta = ProjectionMeta(**{**asdict(self.meta), **new, "notes": notes})
        return Projection(
            meta=meta, pos=self.pos, neg=self.neg, u_pos=self.u_pos, s_pos=self.s_pos,
            u_neg=self.u_neg, s_neg=self.s_neg, head_shift=self.head_shift,
            head_mask=self.head_mask, layer_scale=self.layer_scale,
        )

    def with_delta(self, delta: float) -> "Projection":
        """A copy whose head mask keeps the heads with key shift >= ``delta`` (a finite number)."""
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not math.isfinite(delta):
            raise ProjectionError(f"delta must be a finite number, got {delta!r}")
        meta = ProjectionMeta(**{**asdict(self.meta), "delta": float(delta)})
        return Projection(
            meta=meta, pos=self.pos, neg=self.neg, u_pos=self.u_pos, s_pos=self.s_pos,
            u_neg=self.u_neg, s_neg=self.s_neg, head_shift=self.head_shift,
            head_mask=self.head_shift >= delta, layer_scale=self.layer_scale,
        )
