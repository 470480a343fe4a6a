"""How different are the experts of an AdaSEKA set? Subspace overlaps and edit distances.

Routing can only change what the model does if the experts it mixes edit keys differently. This
module measures that from the projections alone (no model, no data), for every pair among the
experts and, optionally, a reference projection (e.g. the calibrated single projection):

* ``pos_overlap`` — mean over the edited layers' KV heads of ``tr(P+_a P+_b) / min(rank_a, rank_b)``:
  1 when one expert's amplified key subspace contains the other's, 0 when they are orthogonal.
  ``pos_chance`` is the value two *random* subspaces of those ranks would give on average
  (``max(rank_a, rank_b) / d``), so an overlap is only informative as far as it exceeds it.
* ``neg_overlap`` / ``neg_chance`` — the same for P- (the tail subspace, usually of high rank, so
  its chance level is high too).
* ``edit_distance`` — ``‖M_a − M_b‖_F / ((‖M_a‖_F + ‖M_b‖_F) / 2)``, pooled over heads, with
  ``M = head_mask · layer_scale · (g+·P+ + g-·P-) / 2`` the matrix each edits keys with at its own
  default gains (:func:`seka_rag.steering.edit_matrices`): 0 for identical edits, 2 for opposite
  ones. Mixing experts whose edit distance is small gives about the same edit whatever the weights.

Heads count when both projections keep them (head mask). :func:`format_overlaps` prints the pairs;
``seka-rag compare-experts`` is the command.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ProjectionError
from .projection import Projection
from .steering import SteeringConfig, edit_matrices


@dataclass(frozen=True)
class ExpertOverlap:
    """How alike two projections' key edits are (see the module docstring)."""

    first: str
    second: str
    pos_overlap: float  #: mean tr(P+_a P+_b) / min(rank): 1 = one subspace contains the other
    pos_chance: float  #: the same for random subspaces of those ranks
    neg_overlap: float
    neg_chance: float
    edit_distance: float  #: ‖M_a − M_b‖_F / mean(‖M_a‖_F, ‖M_b‖_F), 0 = identical edits
    heads: int  #: (layer, KV head) pairs compared: kept by both head masks
    first_pos_rank: float  #: mean rank of P+ over those heads
    second_pos_rank: float


def _check_same_geometry(first: str, a: Projection, second: str, b: Projection) -> None:
    ma, mb = a.meta, b.meta
    if (ma.num_kv_heads, ma.head_dim) != (mb.num_kv_heads, mb.head_dim):
        raise ProjectionError(f"{first!r} and {second!r} were built for different models "
                              f"({ma.num_kv_heads} vs {mb.num_kv_heads} KV heads, head dim {ma.head_dim} vs {mb.head_dim})")


def _layers(a: Projection, b: Projection, layers: Sequence[int] | None) -> list[int]:
    if layers is not None:
        chosen = [int(i) for i in layers]
        missing = [i for i in chosen if i not in a.layers or i not in b.layers]
        if missing:
            raise ProjectionError(f"layers {missing} are not in both projections (they cover {a.layers} and {b.layers})")
        return chosen
    default = a.edited_layers
    shared = [i for i in default if i in b.layers]
    if not shared:
        raise ProjectionError(f"the projections share no edited layer ({default} vs {b.layers})")
    return shared


def compare_projections(first: str, a: Projection, second: str, b: Projection,
                        layers: Sequence[int] | None = None) -> ExpertOverlap:
    """Overlaps and edit distance of projections ``a`` and ``b`` over ``layers`` (default: ``a``'s edited layers)."""
    _check_same_geometry(first, a, second, b)
    chosen = _layers(a, b, layers)
    config = SteeringConfig(layers=chosen)
    edit_a, edit_b = edit_matrices(a, config), edit_matrices(b, config)
    d = a.meta.head_dim
    sums = dict(pos=0.0, pos_chance=0.0, neg=0.0, neg_chance=0.0, rank_a=0.0, rank_b=0.0)
    diff_sq = norm_a_sq = norm_b_sq = 0.0
    heads = 0
    for layer in chosen:
        ra, rb = a.row(layer), b.row(layer)
        keep = (a.head_mask[ra] & b.head_mask[rb]).tolist()
        for h, kept in enumerate(keep):
            if not kept:
                continue
            heads += 1
            for which in ("pos", "neg"):
                pa, pb = getattr(a, which)[ra, h].double(), getattr(b, which)[rb, h].double()
                rank_a, rank_b = pa.trace().item(), pb.trace().item()
                low, high = min(rank_a, rank_b), max(rank_a, rank_b)
                sums[which] += (pa @ pb).trace().item() / low if low > 0.5 else 0.0
                sums[which + "_chance"] += high / d if low > 0.5 else 0.0
                if which == "pos":
                    sums["rank_a"] += rank_a
                    sums["rank_b"] += rank_b
            ma, mb = edit_a[layer][h].double(), edit_b[layer][h].double()
            diff_sq += (ma - mb).pow(2).sum().item()
            norm_a_sq += ma.pow(2).sum().item()
            norm_b_sq += mb.pow(2).sum().item()
    if heads == 0:
        raise ProjectionError(f"{first!r} and {second!r} keep no common head in layers {chosen}")
    scale = (norm_a_sq ** 0.5 + norm_b_sq ** 0.5) / 2
    return ExpertOverlap(
        first=first, second=second,
        pos_overlap=sums["pos"] / heads, pos_chance=sums["pos_chance"] / heads,
        neg_overlap=sums["neg"] / heads, neg_chance=sums["neg_chance"] / heads,
        edit_distance=diff_sq ** 0.5 / scale if scale > 0 else 0.0,
        heads=heads, first_pos_rank=sums["rank_a"] / heads, second_pos_rank=sums["rank_b"] / heads,
    )


def expert_overlaps(experts, reference: Projection | None = None, reference_name: str = "single projection",
                    layers: Sequence[int] | None = None) -> list[ExpertOverlap]:
    """Every pair of ``experts`` (an :class:`~seka_rag.adaptive.ExpertSet`, or a ``{name: Projection}``
    mapping), then every expert against ``reference`` when one is given."""
    if isinstance(experts, Mapping):
        named = list(experts.items())
    else:
        named = [(e.name, e.projection) for e in getattr(experts, "experts", [])]
    if not named or not all(isinstance(p, Projection) for _, p in named):
        raise ProjectionError("expert_overlaps needs an ExpertSet or a non-empty {name: Projection} mapping")
    if reference is not None and not isinstance(reference, Projection):
        raise ProjectionError(f"reference must be a Projection, got {type(reference).__name__}")
    if len(named) < 2 and reference is None:
        raise ProjectionError("comparing needs two experts, or one expert and a reference projection")
    rows = [compare_projections(na, pa, nb, pb, layers) for (na, pa), (nb, pb) in itertools.combinations(named, 2)]
    if reference is not None:
        rows += [compare_projections(name, proj, reference_name, reference, layers) for name, proj in named]
    return rows


def format_overlaps(rows: Sequence[ExpertOverlap]) -> str:
    """A Markdown table, one row per pair."""
    lines = ["| first | second | P+ overlap (chance) | P- overlap (chance) | edit distance | heads | P+ ranks |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.first} | {r.second} | {r.pos_overlap:.3f} ({r.pos_chance:.3f}) | "
                     f"{r.neg_overlap:.3f} ({r.neg_chance:.3f}) | {r.edit_distance:.3f} | {r.heads} | "
                     f"{r.first_pos_rank:.1f} / {r.second_pos_rank:.1f} |")
    return "\n".join(lines)


__all__ = ["ExpertOverlap", "compare_projections", "expert_overlaps", "format_overlaps"]
