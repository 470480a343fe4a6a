"""AdaSEKA: several expert projections, mixed per prompt by a router, inside the one forward pass.

An :class:`ExpertSet` is a named collection of projections (each built by the engine's builder from a
different kind of data) with their singular factors and a prototype sentence embedding. Per call, a
router gives every row of the batch a weight per expert, and the highlighted keys of that row get

    k ← k + gain · Σ_m w_m · M_m k,       M_m = head_mask · layer_scale · (g+·P+_m + g-·P-_m) / 2

where ``M_m`` is exactly the matrix plain SEKA would apply with expert ``m`` alone (so one expert
with weight 1 *is* SEKA with that projection; with g- = 0 this is the paper's Σ c_m U_mK U_mKᵀ).
An expert's g± are its projection's stored gains: the set's shared gains times the expert's own
``gain_scale`` (:func:`with_gain_scales`), which also multiplies a call's explicit gains.

Routers:

* ``"attention"`` (the paper's): per selected layer and KV head, the last prompt token's query
  before RoPE (the query module's output, i.e. after ``q_norm`` where the family has one), averaged
  over the query heads of the KV group and unit-normalised, gives
  ``c_m = Σ_{k≤K} |q̂·u_mk| σ_mk``, normalised by ``max_m |c_m|`` (or, with a ``temperature``,
  ``softmax(c / max|c| / temperature)``). The absolute value is our change: a singular vector's
  sign is arbitrary, and with signs fixed so that the mean key projects positively, the printed
  ``Σ (q̂·u_mk) σ_mk`` came out negative for every expert in most layers of Qwen2.5-Coder-0.5B
  (mean weights −0.5 to −0.8), which would turn amplification into suppression;
  ``RoutingConfig(signed=True)`` computes the printed form. The query is read by a hook on the query module *in the
  same forward pass*, before that layer's keys are edited; every row of a batch is routed with its
  own query, with no Python loop over heads or rows.
* ``"embedding"``: cosine similarity between a query embedding (all-MiniLM-L6-v2) and each
  expert's prototype, turned into weights by a softmax with a temperature (or top-1). The query is
  ``query_embedding=`` if given, else ``query=`` text, else the prompt text outside the highlights.
  One small embedding per request; nothing inside the LLM's forward pass.
* a mapping ``{expert name: weight}``: fixed weights, no gain (``{"x": 1.0}`` is SEKA with expert x).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .architectures import ModelGeometry
from .embeddings import DEFAULT_EMBEDDING_MODEL
from .errors import ProjectionError, SteeringConfigError
from .projection import Projection
from .steering import ActiveEdit, SteeringConfig, edit_matrices, expand_rows

#: Expert-set file format written by :meth:`ExpertSet.save`: 1, or 2 when an expert has its own
#: ``gain_scale`` (a reader without scales would scale a call's explicit gains wrongly and drop them on --reuse).
FORMAT_VERSION = 2
INDEX_FILE = "experts.json"
#: Router names accepted by ``router=`` (besides a ``{expert: weight}`` mapping).
ROUTERS = ("attention", "embedding", "projection")


#: The smallest routing temperature: weights are already one-hot long before it.
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class RoutingConfig:
    """Router parameters; an :class:`ExpertSet` stores its defaults, each call may override them.

    Values are checked by :meth:`validate` / :meth:`replace`, which every call and every expert set
    runs, not when the object is built."""

    gain: float = 1.0  #: attention router: multiplies the mixed edit (experts keep their own g+/g-)
    embedding_gain: float = 1.0  #: embedding router: multiplies the mixed edit (its weights sum to 1)
    top_k: int | None = None  #: singular directions per head in c_m (None: each head's P+ rank)
    temperature: float | None = None  #: attention router: None = c / max|c|; else softmax(c/max|c| / T)
    embedding_temperature: float = 0.1  #: embedding router: softmax(cos / T) (0.1 chosen on dev items)
    embedding_top1: bool = False  #: embedding router: all weight on the most similar expert
    signed: bool = False  #: attention router: Σ (q̂·u_k) σ_k as printed, instead of Σ |q̂·u_k| σ_k

    def validate(self) -> "RoutingConfig":
        """Check every setting's type and range; return ``self``, or raise :class:`SteeringConfigError`."""
        for name in ("gain", "embedding_gain"):
            g = getattr(self, name)
            if isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g):
                raise SteeringConfigError(f"{name} must be a finite number, got {g!r}")
            if g < 0:
                from .highlight import _outside_stacklevel

                warnings.warn(f"routing {name}={float(g):g} is below 0: it turns the mixed edit around, as a "
                              "negative gain_pos / gain_neg does (the highlight is attended to less; strong values "
                              "flip keys instead of weakening it)", stacklevel=_outside_stacklevel())
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 1
        ):
            raise SteeringConfigError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        for name in ("embedding_top1", "signed"):
            if not isinstance(getattr(self, name), bool):
                raise SteeringConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("temperature", "embedding_temperature"):
            t = getattr(self, name)
            if t is None and name == "temperature":
                continue
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not t > 0 or not math.isfinite(t):
                raise SteeringConfigError(f"{name} must be a positive number, got {t!r}")
            if t < MIN_TEMPERATURE:  # c / T would overflow float32 and the softmax return NaN
                raise SteeringConfigError(f"{name} must be at least {MIN_TEMPERATURE:g} (for top-1 routing use "
                                          f"embedding_top1=True), got {t!r}")
        return self

    def replace(self, **changes: Any) -> "RoutingConfig":
        """A validated copy with ``changes`` applied; unknown setting names are refused."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise SteeringConfigError(f"unknown routing settings {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return RoutingConfig(**{**asdict(self), **changes}).validate()


#: The :class:`RoutingConfig` fields each router reads.
ROUTER_SETTINGS: dict[str, frozenset[str]] = {
    "attention": frozenset({"gain", "temperature", "top_k", "signed"}),
    "embedding": frozenset({"embedding_gain", "embedding_temperature", "embedding_top1"}),
}


def check_expert_names(names: Sequence[Any]) -> None:
    """Expert names must be distinct non-empty strings that do not share a file name when saved."""
    names = list(names)
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ProjectionError(f"expert names must be distinct non-empty strings, got {names}")
    stems = [_file_stem(n).lower() for n in names]
    if len(set(stems)) != len(stems):
        raise ProjectionError(f"expert names {names} would share a file name; rename them")


@dataclass
class Expert:
    """One projection of an expert set, with what it was built from."""

    name: str
    projection: Projection
    description: str = ""
    prototype: torch.Tensor | None = None  #: unit-norm mean sentence embedding of its build prompts
    n_prompts: int = 0
    #: this expert's strength relative to the set's shared gains: its projection's stored g+ / g- are
    #: the shared ones times this, and a call's explicit ``gain_pos`` / ``gain_neg`` are multiplied by it
    gain_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.projection, Projection):
            hint = " (load a file with Projection.load(path))" if isinstance(self.projection, (str, os.PathLike)) else ""
            raise ProjectionError(f"expert {self.name!r} needs a Projection, got {type(self.projection).__name__}{hint}")
        if self.prototype is not None and not isinstance(self.prototype, torch.Tensor):
            try:  # a list or a NumPy vector, e.g. straight from a sentence encoder
                self.prototype = torch.as_tensor(self.prototype, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise ProjectionError(f"expert {self.name!r}: prototype must be a vector of numbers, "
                                      f"got {type(self.prototype).__name__}") from None


class ExpertSet:
    """A named collection of expert projections for one model, stored as safetensors + JSON.

    All experts must be built for the same model (type, layer count, KV heads, head size) and carry
    the same layer rows. ``routing`` holds the default router parameters.
    """

    def __init__(
        self,
        experts: Sequence[Expert],
        *,
        name: str = "",
        embedding_model: str = DEFAULT_EMBEDDING_MODEL,
        routing: RoutingConfig | Mapping[str, Any] | None = None,
        notes: dict | None = None,
    ):
        if isinstance(experts, (str, bytes, os.PathLike)) or not isinstance(experts, (Sequence, ExpertSet)):
            raise ProjectionError(f"ExpertSet takes a list of Expert objects, got {type(experts).__name__} "
                                  "(to read a saved set, use ExpertSet.load(directory))")
        self.experts = list(experts)
        self.name = name
        self.embedding_model = embedding_model
        self.routing = _as_routing_config(routing)
        self.notes = dict(notes or {})
        self._stack_cache: dict = {}
        self.validate()

    # ------------------------------------------------------------------ structure
    @property
    def names(self) -> list[str]:
        """The experts' names, in the set's order (the order of routing weights)."""
        return [e.name for e in self.experts]

    def __len__(self) -> int:
        return len(self.experts)

    def __iter__(self):
        return iter(self.experts)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, name: str | int) -> Expert:
        """The expert named ``name`` (or at position ``name``, in the order of routing weights)."""
        if isinstance(name, numbers.Integral) and not isinstance(name, bool):
            return self.experts[int(name)]
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(f"no expert named {name!r}; this set has {self.names}")

    def select(self, names: Sequence[str]) -> "ExpertSet":
        """A set of the named experts only, in the order given, keeping routing defaults, embedding model and notes.

        The attention router normalises its coefficients over the experts present, so fewer experts
        can change every row's weights; an expert keeps its projection, gains and prototype.
        """
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise ProjectionError(f"select takes a non-empty list of expert names, got {names!r}")
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ProjectionError(f"no experts named {unknown}; this set has {self.names}")
        return self.with_experts([self[n] for n in names])

    def with_experts(self, experts: Sequence[Expert]) -> "ExpertSet":
        """A set of ``experts`` that keeps this set's name, embedding model, routing defaults and notes."""
        return ExpertSet(experts, name=self.name, embedding_model=self.embedding_model, routing=self.routing,
                         notes=self.notes)

    @property
    def meta(self):
        """The first expert's projection metadata (all experts share model and layers).

        Its ``gain_pos`` / ``gain_neg`` are that expert's own gains (the shared gains times its
        ``gain_scale``); :attr:`shared_gains` gives the set's shared ones.
        """
        return self.experts[0].projection.meta

    @property
    def shared_gains(self) -> tuple[float, float]:
        """The set's shared default (g+, g-): an expert's stored gains divided by its ``gain_scale``."""
        e = self.experts[0]
        return e.projection.meta.gain_pos / e.gain_scale, e.projection.meta.gain_neg / e.gain_scale

    @property
    def has_prototypes(self) -> bool:
        """Whether every expert keeps a prototype embedding (needed by the embedding router)."""
        return all(e.prototype is not None for e in self.experts)

    def validate(self) -> None:
        """Check the set is usable: experts present, one model shape, U/S factors of matching shapes."""
        if not self.experts:
            raise ProjectionError("an expert set needs at least one expert")
        if not all(isinstance(e, Expert) for e in self.experts):
            raise ProjectionError("an expert set holds Expert objects (name, projection, ...)")
        names = self.names
        check_expert_names(names)
        first = self.experts[0].projection.meta
        for e in self.experts:
            if not isinstance(e.projection, Projection):
                raise ProjectionError(f"expert {e.name!r} has no Projection")
            m = e.projection.meta
            same = (m.model_type, m.num_layers, m.num_kv_heads, m.head_dim, list(m.layers))
            if same != (first.model_type, first.num_layers, first.num_kv_heads, first.head_dim, list(first.layers)):
                raise ProjectionError(
                    f"expert {e.name!r} was built for a different model or layers than {self.experts[0].name!r} "
                    f"({m.model_type}, {m.num_layers} layers, {m.num_kv_heads} KV heads, head dim {m.head_dim}, "
                    f"layers {m.layers} vs {first.model_type}, {first.num_layers}, {first.num_kv_heads}, "
                    f"{first.head_dim}, {first.layers})"
                )
        for e in self.experts:
            s = e.gain_scale
            if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or not s > 0:
                raise ProjectionError(f"expert {e.name!r} has gain_scale {s!r}; it must be a positive finite number")
        if any(e.gain_scale != 1.0 for e in self.experts):  # stored gains = shared gains x scale, for every expert
            shared = [(e.projection.meta.gain_pos / e.gain_scale, e.projection.meta.gain_neg / e.gain_scale)
                      for e in self.experts]
            if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) for pair in shared for a, b in zip(pair, shared[0])):
                stored = ", ".join(f"{e.name}: {e.projection.meta.gain_pos:g} / {e.projection.meta.gain_neg:g} at "
                                   f"scale {e.gain_scale:g}" for e in self.experts)
                raise ProjectionError(
                    f"the experts' stored gains are not one set of shared gains times each expert's gain_scale "
                    f"({stored}); set scales with `seka-rag build-experts --reuse DIR --expert-scales ...` or "
                    "seka_rag.adaptive.with_gain_scales, not by editing experts.json"
                )
        protos = [e.prototype for e in self.experts if e.prototype is not None]
        if protos:
            if len(protos) != len(self.experts):
                raise ProjectionError("either every expert has a prototype embedding or none has")
            dims = {tuple(p.shape) for p in protos}
            if len(dims) != 1 or len(next(iter(dims))) != 1 or next(iter(dims))[0] == 0:
                raise ProjectionError(f"expert prototypes must be 1-D vectors of one size, got shapes {sorted(dims)}")
            for e in self.experts:
                if not bool(torch.isfinite(e.prototype).all()) or not bool(e.prototype.abs().sum() > 0):
                    raise ProjectionError(f"expert {e.name!r} has a prototype embedding that is not finite and "
                                          "non-zero, so the embedding router could not compare queries with it")
        self.routing.validate()

    def check_fits(self, geom: ModelGeometry, model_id: str | None = None) -> None:
        """Raise :class:`ProjectionError` unless every expert fits a model of geometry ``geom``."""
        import warnings

        with warnings.catch_warnings(record=True) as caught:  # one warning for the set, not one per expert
            warnings.simplefilter("always")
            for e in self.experts:
                try:
                    e.projection.check_fits(geom, model_id)
                except ProjectionError as exc:
                    message = str(exc).replace("`seka-rag build-projection`", "`seka-rag build-experts`")
                    raise ProjectionError(f"expert {e.name!r}: {message}") from None
        for message in dict.fromkeys(str(w.message) for w in caught):
            warnings.warn(f"expert set {self.name!r}: {message}", UserWarning, stacklevel=2)

    # ------------------------------------------------------------------ tensors per call
    def stacked(self, config: SteeringConfig, routing: RoutingConfig, want_route: bool,
                device: torch.device | str = "cpu") -> "StackedExperts":
        """Per edited layer, every expert's edit matrix (and routing factors) stacked on a leading axis.

        Cached per (settings, device, each expert's edit stamp): a call with the same settings reuses the
        tensors already on the model's device, and an expert whose gains, layers or tensors changed
        (replaced, or modified in place) is stacked anew. Tensors made under ``torch.inference_mode()``
        keep no version counter, so an in-place change to one is not seen: assign a new tensor instead.
        An expert that edits nothing in a layer or head gets no routing weight there.
        """
        try:  # each expert's edit stamp: tensors or gains changed in place are picked up
            key = (_config_key(config), routing.top_k, bool(want_route), str(device),
                   tuple((_edit_stamp(e.projection), e.gain_scale) for e in self.experts))
        except (TypeError, ValueError):
            key = None  # malformed settings: edit_matrices below raises the proper error
        # the stamped objects themselves, kept with the entry: a new tensor at a freed one's address
        # (the same id in the key) is not the one the entry was stacked from
        stamped = tuple(x for e in self.experts for x in _stamped_objects(e.projection))
        cached = self._stack_cache.get(key) if key is not None else None
        if cached is not None and len(cached[0]) == len(stamped) and all(a is b for a, b in zip(cached[0], stamped)):
            return cached[1]
        per_expert = [edit_matrices(e.projection, _scaled_config(config, e.gain_scale)) for e in self.experts]
        unit = replace(config, gain_pos=1.0, gain_neg=1.0)  # which heads are selected, at gains that are not 0
        per_expert_unit = [edit_matrices(e.projection, unit) for e in self.experts]
        layers = sorted(set().union(*[set(m) for m in per_expert]))
        edits, routes, selected = {}, {}, {}
        for layer in layers:
            mats = [m.get(layer) for m in per_expert]
            like = next(x for x in mats if x is not None)
            edits[layer] = torch.stack([x if x is not None else torch.zeros_like(like) for x in mats]).float().to(device)
            selected[layer] = torch.stack([(m[layer] != 0).flatten(1).any(-1) for m in per_expert_unit
                                           if layer in m]).any(0).cpu()
            if want_route:
                factors = torch.stack([_route_factors(e.projection, layer, routing.top_k) for e in self.experts])
                active = edits[layer].flatten(2).abs().amax(-1) > 0  # (experts, kv_heads)
                routes[layer] = (factors * active[:, :, None, None].to(factors.device)).to(device)
        out = StackedExperts(layers, edits, routes, selected)
        if key is not None:
            if len(self._stack_cache) > 32:
                self._stack_cache.clear()
            self._stack_cache[key] = (stamped, out)
        return out

    def prototypes(self) -> torch.Tensor:
        """(experts, dim) unit-norm prototypes; raises when the set has none."""
        if not self.has_prototypes:
            raise SteeringConfigError(
                "this expert set has no prototype embeddings, so the embedding router cannot use it; "
                "rebuild it with `seka-rag build-experts` or use router='attention'"
            )
        return torch.nn.functional.normalize(torch.stack([e.prototype.float() for e in self.experts]), dim=-1)

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``experts.json`` and one ``<name>.safetensors`` per expert into ``directory``.

        Saving over an expert set replaces it: the earlier set's expert files that this set does not
        write are removed. Other files in the directory are left alone. Each file is written beside its
        place first, so an interruption while writing leaves the earlier set whole; ``experts.json``
        records each expert file's fingerprint and is moved in last, so an interruption during the final
        renames leaves a set that :meth:`load` refuses rather than one that mixes old and new experts.
        """
        if not isinstance(directory, (str, os.PathLike)):
            raise ProjectionError(f"an expert set is saved into a directory path, got {type(directory).__name__}")
        directory = Path(directory).expanduser()
        if directory.exists() and not directory.is_dir():
            raise ProjectionError(f"{str(directory)!r} is a file; an expert set is saved into a directory")
        scaled = any(e.gain_scale != 1.0 for e in self.experts)  # format 1 readers still read unscaled sets
        head = dict(format_version=FORMAT_VERSION if scaled else 1, name=self.name,
                    embedding_model=self.embedding_model, routing=asdict(self.routing), notes=self.notes)
        try:
            json.dumps(head)  # before any file is written
        except (TypeError, ValueError) as exc:
            raise ProjectionError(f"the expert set's notes cannot be written as JSON ({exc})") from None
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProjectionError(f"cannot create the expert set's directory {str(directory)!r}: "
                                  f"{exc.strerror or exc}") from None
        stale = set()
        if (directory / INDEX_FILE).is_file():  # the set being replaced: only its own expert files
            try:
                old = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
                stale = {e["file"] for e in old.get("experts", []) if isinstance(e, dict) and _is_expert_file(e.get("file"))}
            except (OSError, ValueError, AttributeError, TypeError):
                stale = set()
        try:  # every fingerprint before any file is written: a failure leaves the earlier set as it was
            fingerprints = [e.projection.fingerprint() for e in self.experts]
        except (TypeError, ValueError) as exc:
            raise ProjectionError(f"an expert's projection cannot be fingerprinted ({exc})") from None
        entries, written = [], []
        partial = directory / f".{INDEX_FILE}.{os.getpid()}.partial"
        try:
            # every file beside its place first (the slow part: an interruption leaves the earlier set whole),
            # then each moved into place and the index last, a few renames
            for e, fingerprint in zip(self.experts, fingerprints):
                file = f"{_file_stem(e.name)}.safetensors"
                written.append((e.projection.save(directory / f".{file}.{os.getpid()}.new"), directory / file))
                entries.append(dict(
                    name=e.name, file=file, description=e.description, n_prompts=e.n_prompts,
                    prototype=None if e.prototype is None else [round(float(x), 7) for x in e.prototype],
                    gain_scale=float(e.gain_scale), fingerprint=fingerprint,
                ))
            partial.write_text(json.dumps(dict(head, experts=entries), indent=1) + "\n", encoding="utf-8")
            for new, final in written:
                os.replace(new, final)
            os.replace(partial, directory / INDEX_FILE)
        except OSError as exc:
            raise ProjectionError(f"cannot write the expert set into {str(directory)!r}: {exc.strerror or exc}") from None
        finally:
            for path in [partial] + [new for new, _ in written]:
                path.unlink(missing_ok=True)
        for file in stale - {entry["file"] for entry in entries}:
            if (directory / file).is_file() and not (directory / file).is_symlink():
                (directory / file).unlink(missing_ok=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ExpertSet":
        """Read an expert set written by :meth:`save` (a directory holding ``experts.json``)."""
        if not isinstance(directory, (str, os.PathLike)):
            raise ProjectionError(f"an expert set is loaded from a directory path, got {type(directory).__name__}")
        directory = Path(directory).expanduser()
        index_path = directory / INDEX_FILE if directory.is_dir() else directory
        if index_path.suffix == ".safetensors":
            raise ProjectionError(f"{str(directory)!r} is a projection file, not an expert set: load it with "
                                  "Projection.load (projection=), or give the expert set's directory")
        if not index_path.is_file():
            raise ProjectionError(f"{str(directory)!r} is not an expert set: no {INDEX_FILE} there")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ProjectionError(f"{str(index_path)!r} is not valid JSON: {exc}") from None
        if not isinstance(index, dict) or not isinstance(index.get("experts"), list):
            raise ProjectionError(f"{str(index_path)!r} has no list of experts")
        version = index.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ProjectionError(f"{str(index_path)!r} has format_version {version!r}; it must be an integer")
        if version > FORMAT_VERSION:
            raise ProjectionError(f"{str(index_path)!r} uses expert-set format {version}; upgrade seka-rag")
        experts = []
        for entry in index["experts"]:
            if not isinstance(entry, dict) or "name" not in entry or "file" not in entry:
                raise ProjectionError(f"{str(index_path)!r}: each expert needs a name and a file, got {entry!r}")
            proto, file = entry.get("prototype"), entry["file"]
            if not _is_expert_file(file):
                raise ProjectionError(f"{str(index_path)!r}: expert {entry['name']!r} names file {file!r}; "
                                      "an expert's file is a plain .safetensors file name inside the set's directory")
            projection = Projection.load(index_path.parent / file)
            recorded = entry.get("fingerprint")
            if recorded is not None and recorded != projection.fingerprint():
                raise ProjectionError(
                    f"{str(index_path)!r}: expert {entry['name']!r}'s file {file!r} changed after this index was "
                    "written (a save interrupted in its last step, or a file rewritten on its own, e.g. by "
                    "set-gains): build the set again (seka-rag build-experts); deleting that expert's "
                    "\"fingerprint\" entry from experts.json loads it anyway, which is right only for a file "
                    "changed on purpose"
                )
            try:
                experts.append(Expert(
                    name=entry["name"], projection=projection,
                    description=str(entry.get("description", "")), n_prompts=int(entry.get("n_prompts", 0) or 0),
                    prototype=None if proto is None else torch.tensor(proto, dtype=torch.float32),
                    gain_scale=entry.get("gain_scale", 1.0),
                ))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ProjectionError(f"{str(index_path)!r}: expert {entry.get('name')!r} is malformed: {exc}") from None
        stored = index.get("routing", {})
        if not isinstance(stored, dict):
            raise ProjectionError(f"{str(index_path)!r}: routing must be a JSON object of settings, got "
                                  f"{type(stored).__name__}")
        try:
            routing = RoutingConfig().replace(**stored)
        except SteeringConfigError as exc:
            raise ProjectionError(f"{str(index_path)!r} has invalid routing settings: {exc}") from None
        if not isinstance(index.get("embedding_model", DEFAULT_EMBEDDING_MODEL), str):
            raise ProjectionError(f"{str(index_path)!r}: embedding_model must be a model name or path (text), got "
                                  f"{index['embedding_model']!r}")
        notes = index.get("notes", {})
        if not isinstance(notes, dict):
            raise ProjectionError(f"{str(index_path)!r}: notes must be a JSON object, got {type(notes).__name__}")
        try:
            return cls(experts, name=index.get("name", ""),
                       embedding_model=index.get("embedding_model", DEFAULT_EMBEDDING_MODEL), routing=routing,
                       notes=notes)
        except ProjectionError as exc:
            raise ProjectionError(f"{str(index_path)!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"ExpertSet({self.name!r}, experts={self.names}, model={self.meta.model_id!r})"


def _is_expert_file(file: Any) -> bool:
    """Whether ``file`` (read from an index) names an expert file: a plain ``.safetensors`` name in the set's folder."""
    return isinstance(file, str) and Path(file).name == file and file.endswith(".safetensors") and file != ".safetensors"


def _scaled_config(config: SteeringConfig, gain_scale: float) -> SteeringConfig:
    """``config`` with its explicit gains times an expert's ``gain_scale`` (stored gains already include it)."""
    if gain_scale == 1.0 or (config.gain_pos is None and config.gain_neg is None):
        return config

    def times(g):  # a malformed gain is passed on unchanged, for edit_matrices to refuse
        ok = isinstance(g, numbers.Real) and not isinstance(g, bool)
        return g * gain_scale if ok else g

    return replace(config, gain_pos=None if config.gain_pos is None else times(config.gain_pos),
                   gain_neg=None if config.gain_neg is None else times(config.gain_neg))


def gains_times(projection: Projection, factor: float) -> Projection:
    """``projection`` with its stored default g+ / g- multiplied by ``factor`` (the tensors are shared)."""
    meta = projection.meta
    return replace(projection, meta=replace(meta, gain_pos=meta.gain_pos * factor, gain_neg=meta.gain_neg * factor))


def with_gain_scales(experts: "ExpertSet", scales: Mapping[str, float]) -> "ExpertSet":
    """A copy of ``experts`` where each named expert edits ``scales[name]`` times as strongly as the set's shared gains.

    The scale replaces the expert's earlier one (it is relative to the shared gains, not to the
    expert's current gains); experts not named keep theirs. An expert's stored g+ / g- become the
    shared gains times its scale, so one expert at weight 1 is still SEKA with that projection at
    its stored gains, and ``build-experts --reuse`` keeps the scales when it re-copies the shared
    gains. Unknown names and scales that are not positive finite numbers raise
    :class:`ProjectionError`.
    """
    if not isinstance(scales, Mapping):
        raise ProjectionError(f"gain scales are a mapping {{expert name: factor}}, got {scales!r}")
    unknown = [n for n in scales if n not in experts.names]
    if unknown:
        raise ProjectionError(f"no experts named {unknown}; this set has {experts.names}")
    for name, s in scales.items():
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or not s > 0:
            raise ProjectionError(f"the gain scale of expert {name!r} must be a positive finite number, got {s!r}")
    out = []
    for e in experts:
        if e.name not in scales:
            out.append(e)
            continue
        new, meta = float(scales[e.name]), e.projection.meta
        ratio = new / e.gain_scale
        if not (math.isfinite(meta.gain_pos * ratio) and math.isfinite(meta.gain_neg * ratio)):
            raise ProjectionError(f"a gain scale of {new:g} makes expert {e.name!r}'s gains infinite")
        out.append(replace(e, projection=gains_times(e.projection, ratio), gain_scale=new))
    return experts.with_experts(out)


def _as_routing_config(routing: Any) -> RoutingConfig:
    """``routing=`` of an :class:`ExpertSet`: a :class:`RoutingConfig`, a dict of its fields, or None (defaults)."""
    if routing is None:
        return RoutingConfig()
    if isinstance(routing, RoutingConfig):
        return routing
    if isinstance(routing, Mapping):
        try:
            return RoutingConfig().replace(**{str(k): v for k, v in routing.items()})
        except (SteeringConfigError, TypeError) as exc:
            raise ProjectionError(f"invalid routing settings: {exc}") from None
    raise ProjectionError(f"routing must be a RoutingConfig or a dict of its fields, got {type(routing).__name__}")


def _stamped_objects(projection: Projection) -> tuple:
    """The projection and the tensors of it that decide an expert's stacked edit."""
    return (projection, projection.pos, projection.neg, projection.u_pos, projection.s_pos, projection.head_mask,
            projection.layer_scale)


def _edit_stamp(projection: Projection) -> tuple:
    """What decides an expert's stacked edit, cheaply: its stored gains and layers, and the identity and
    version counter of each tensor read (inference-mode tensors keep no counter: identity only)."""
    m = projection.meta
    tensors = _stamped_objects(projection)[1:]
    return (id(projection), m.gain_pos, m.gain_neg, tuple(m.layers),
            None if m.default_layers is None else tuple(m.default_layers),
            tuple((id(t), None if t.is_inference() else t._version) for t in tensors))


def _config_key(config: SteeringConfig) -> tuple:
    heads = config.heads
    if isinstance(heads, Mapping):
        heads = tuple(sorted((int(k), tuple(int(h) for h in v)) for k, v in heads.items()))
    layers = config.layers.tolist() if hasattr(config.layers, "tolist") else config.layers
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                                       for i in layers):
            raise TypeError("not a list of layer indices")  # no key: edit_matrices says what is wrong
        layers = tuple(int(i) for i in layers)
    return (config.gain_pos, config.gain_neg, layers, heads)


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _route_factors(projection: Projection, layer: int, top_k: int | None) -> torch.Tensor:
    """(kv_heads, d, K) columns σ_k·u_k of Ω+ (zero beyond each head's K), or zeros if ``layer`` is absent."""
    m = projection.meta
    if layer not in m.layers:
        return torch.zeros(m.num_kv_heads, m.head_dim, m.head_dim)
    row = projection.row(layer)
    u, s = projection.u_pos[row].float(), projection.s_pos[row].float()
    if top_k is None:
        k = projection.pos[row].float().diagonal(dim1=-2, dim2=-1).sum(-1).round().clamp(min=1)  # rank of P+
    else:
        if top_k > m.head_dim:
            raise SteeringConfigError(f"top_k={top_k} is more singular directions than a head has ({m.head_dim}); "
                                      f"give at most {m.head_dim}, or None for each head's P+ rank")
        k = torch.full((m.num_kv_heads,), float(top_k))
    keep = (torch.arange(m.head_dim)[None, :] < k[:, None]).float()
    return u * (s * keep)[:, None, :]


@dataclass
class StackedExperts:
    layers: list[int]
    edits: dict[int, torch.Tensor]  #: layer → (experts, kv_heads, d, d)
    routes: dict[int, torch.Tensor]  #: layer → (experts, kv_heads, d, K) σ-weighted singular vectors
    #: layer → (kv_heads,) the heads the call's layers / heads and the experts' head masks select, whatever
    #: the gains (a call at zero gains still selects them)
    selected: dict[int, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------- routing results
@dataclass
class RoutingResult:
    """Which experts a call used: weights per row, layer, KV head and expert.

    ``layers`` are the layers the call edited; ``weights`` is NaN where it edited nothing: a row with
    no highlighted token, or a KV head outside the call's ``heads=`` (or the experts' head masks).
    """

    router: str
    experts: list[str]
    layers: list[int]
    weights: torch.Tensor  #: (batch, layers, kv_heads, experts)

    def expert_weights(self) -> torch.Tensor:
        """(batch, experts): each row's weights averaged over the layers and heads it edited (NaN: row not
        steered)."""
        return torch.nanmean(self.weights.float(), dim=(1, 2))

    def top_experts(self) -> list[str | None]:
        """The expert with the largest mean weight, per row (None for a row that was not steered)."""
        mean = self.expert_weights()
        steered = ~mean.isnan().any(-1)
        best = torch.nan_to_num(mean, nan=float("-inf")).argmax(-1)
        return [self.experts[int(i)] if ok else None for i, ok in zip(best.tolist(), steered.tolist())]

    def summary(self, row: int = 0) -> dict[str, float]:
        """``{expert: mean weight}`` of one row, rounded to 4 decimals (NaN weights: the row was not steered)."""
        rows = self.weights.shape[0]
        if isinstance(row, bool) or not isinstance(row, numbers.Integral) or not -rows <= row < rows:
            raise IndexError(f"row {row!r} is out of range: this result has {rows} row{'s' if rows != 1 else ''}")
        return {n: round(float(w), 4) for n, w in zip(self.experts, self.expert_weights()[row])}

    @staticmethod
    def concat(results: Sequence["RoutingResult | int"]) -> "RoutingResult | None":
        """Join per-batch results in prompt order; an ``int`` stands for that many rows with no edit (NaN)."""
        real = [r for r in results if isinstance(r, RoutingResult)]
        if not real:
            return None
        first = real[0]
        shape = first.weights.shape[1:]
        parts = [r.weights if isinstance(r, RoutingResult) else torch.full((int(r), *shape), float("nan"))
                 for r in results]
        return RoutingResult(first.router, first.experts, first.layers, torch.cat(parts))

    def __repr__(self) -> str:
        rows = "; ".join(
            ", ".join(f"{n}={w:.2f}" for n, w in self.summary(i).items()) for i in range(self.weights.shape[0])
        )
        return f"RoutingResult(router={self.router!r}, rows=[{rows}])"


# ---------------------------------------------------------------------- the per-call edit
@dataclass
class AdaptiveEdit(ActiveEdit):
    """A per-row mixture of expert edits; the attention router fills the weights layer by layer."""

    stacked: StackedExperts | None = None
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    router: str = "attention"
    fixed_weights: torch.Tensor | None = None  #: (batch, experts) for the embedding / fixed routers
    query_index: torch.Tensor | None = None  #: (batch,) position of each row's last prompt token
    num_query_heads: int = 0
    head_dim: int = 0
    record: dict[int, torch.Tensor] = field(default_factory=dict)  #: layer → (batch, kv_heads, experts)
    expert_names: tuple[str, ...] = ()  #: the names of the set ``stacked`` was built from, in its order

    @property
    def layers(self) -> set[int]:
        """The model layers this edit changes (the experts' stacked layers)."""
        return set(self.stacked.layers)

    def wants_query(self, layer: int) -> bool:
        """Whether the attention router still needs this layer's last-token query (prefill only)."""
        return self.router == "attention" and layer in self.stacked.edits and layer not in self.record

    def observe_query(self, layer: int, query: torch.Tensor, layout: str) -> None:
        """Record the layer's per-row, per-KV-head expert coefficients from the last prompt token's query."""
        q = _last_token_query(query, layout, expand_rows(self.query_index, query.shape[0]), self.num_query_heads, self.head_dim)
        routes = self.stacked.routes[layer]  # (experts, kv, d, K)
        n_kv = routes.shape[1]
        q = q.float().reshape(q.shape[0], n_kv, -1, q.shape[-1]).mean(2)  # average over the KV group
        q = torch.nn.functional.normalize(q, dim=-1)
        along = torch.einsum("bhd,mhdk->bhmk", q, routes.to(q.device))  # (q̂·u_k) σ_k
        c = along.sum(-1) if self.routing.signed else along.abs().sum(-1)
        self.record[layer] = normalise_coefficients(c, self.routing.temperature)

    def matrices_for(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """The per-row mixed edit ``(batch, kv_heads, d, d)`` for this layer, times the router's gain."""
        if self.router == "attention":
            w = self.record.get(layer)
            if w is None:
                raise SteeringConfigError(
                    f"layer {layer}'s keys were computed before its query: the attention router cannot run "
                    "on this architecture; use router='embedding'"
                )
        else:
            w = expand_rows(self.fixed_weights.to(keys.device), keys.shape[0])  # (batch, experts)
            w = w[:, None, :].expand(-1, self.stacked.edits[layer].shape[1], -1)
            self.record[layer] = w
        edits = self.stacked.edits[layer].to(device=keys.device)
        gain = {"embedding": self.routing.embedding_gain, "attention": self.routing.gain}.get(self.router, 1.0)
        mixed = torch.einsum("bhm,mhde->bhde", w.to(edits.device), edits) * float(gain)
        return mixed.to(keys.dtype)

    def result(self, names: list[str], rows: int) -> RoutingResult | None:
        """The weights recorded during the call, per prompt row (None if no steered layer ran)."""
        # the KV heads the call selects (heads=, layers=, the experts' head masks); layers without one are
        # left out
        edited = {layer: self.stacked.selected[layer] for layer in self.stacked.layers if layer in self.record}
        layers = [layer for layer, heads in edited.items() if heads.any()]
        if not layers:
            return None
        recorded = [self.record[layer] for layer in layers]
        step = max(1, recorded[0].shape[0] // rows)  # generate() may have repeated each row (beams)
        weights = torch.stack([w[::step][:rows].float().cpu() for w in recorded], dim=1)
        weights[:, ~torch.stack([edited[layer] for layer in layers])] = float("nan")  # heads left alone
        # a row with no highlighted token is not edited: NaN, as when it runs alone
        unedited = ~self.highlight[:rows].bool().any(-1).cpu()
        weights[unedited] = float("nan")
        return RoutingResult(self.router, names, layers, weights)


def normalise_coefficients(c: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """c / max_m |c_m| over the last (expert) axis, or its softmax at ``temperature``."""
    scaled = c / c.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    if temperature is None:
        return scaled
    return torch.softmax(scaled / temperature, dim=-1)


def _last_token_query(query: torch.Tensor, layout: str, index: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """(batch, query_heads, head_dim): each row's query at its last prompt token."""
    rows = torch.arange(query.shape[0], device=query.device)
    index = index.to(query.device)
    if layout == "flat":
        return query[rows, index].reshape(query.shape[0], n_heads, head_dim)
    if layout == "bthd":
        return query[rows, index]
    return query[rows, :, index]  # bhtd → (batch, heads, d)


def embedding_weights(queries: torch.Tensor, prototypes: torch.Tensor, routing: RoutingConfig) -> torch.Tensor:
    """(batch, experts) weights from cosine similarities of unit-norm queries with the prototypes."""
    if queries.dim() != 2 or queries.shape[1] != prototypes.shape[1]:
        raise SteeringConfigError(
            f"query embeddings have {queries.shape[-1]} dimensions but the expert prototypes have "
            f"{prototypes.shape[1]} (they were made with a different embedding model)"
        )
    sims = torch.nn.functional.normalize(queries.float(), dim=-1) @ prototypes.T
    if routing.embedding_top1:
        return torch.nn.functional.one_hot(sims.argmax(-1), prototypes.shape[0]).float()
    return torch.softmax(sims / routing.embedding_temperature, dim=-1)


def fixed_weights(mapping: Mapping[str, float], names: Sequence[str], rows: int) -> torch.Tensor:
    """(rows, experts) weights from ``{expert name: weight}``; unnamed experts get 0."""
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise SteeringConfigError(f"router names experts {unknown} that are not in the set {list(names)}")
    values = []
    for n in names:
        v = mapping.get(n, 0.0)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise SteeringConfigError(f"the weight of expert {n!r} must be a finite number, got {v!r}")
        values.append(float(v))
    if not any(values):
        raise SteeringConfigError(f"router={dict(mapping)!r} gives every expert weight 0, so nothing would be "
                                  "steered: pass steer=False for no edit at all")
    negative = [n for n, v in zip(names, values) if v < 0]
    if negative:
        from .highlight import _outside_stacklevel

        warnings.warn(f"router weights below 0 ({', '.join(negative)}) turn those experts' edits around, as a "
                      "negative gain does: the highlighted text is attended to less, and strong negative weights "
                      "flip keys instead of weakening the highlight", stacklevel=_outside_stacklevel())
    return torch.tensor(values, dtype=torch.float32)[None, :].expand(rows, -1).clone()


def _not_real_numbers(value: Any) -> str | None:
    """What in ``value`` (a tensor, array, number or nested list) is boolean or complex, or None."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        name = str(dtype)
        if name == "torch.bool" or name.startswith("torch.complex") or getattr(dtype, "kind", "") in ("b", "c"):
            return f"{type(value).__name__} of {name}"
        return None
    if isinstance(value, (list, tuple)):
        return next((b for b in map(_not_real_numbers, value) if b is not None), None)
    return type(value).__name__ if isinstance(value, (bool, complex)) else None


def as_query_embeddings(value: Any, rows: int) -> torch.Tensor:
    """``query_embedding=`` as a (rows, dim) tensor: one vector for a single prompt, or one per prompt."""
    bad = _not_real_numbers(value)
    if bad is not None:
        raise SteeringConfigError(f"query_embedding must hold real numbers (an embedding vector), got {bad}")
    try:
        if isinstance(value, (list, tuple)) and value and all(getattr(v, "ndim", 0) >= 1 for v in value):
            # one tensor / array per prompt, e.g. from a retriever's embeddings
            t = torch.stack([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in value])
        else:
            t = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise SteeringConfigError("query_embedding must be a vector of floats (or one vector per prompt)") from None
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2 or t.shape[0] not in (1, rows) or t.shape[1] == 0:
        raise SteeringConfigError(
            f"query_embedding has shape {tuple(t.shape)}; give one vector, or one per prompt ({rows})"
        )
    if not torch.isfinite(t).all() or (t.norm(dim=-1) == 0).any():
        raise SteeringConfigError("query_embedding must be finite and non-zero")
    return t.expand(rows, -1)
