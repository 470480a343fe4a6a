"""Projection builder: contrastive triplets → answer-token keys → cross-covariances → SVD → P+ / P-.

For each triplet the answer tokens' pre-RoPE keys are collected under three prompts: the context
alone (H), the context after the question it answers (H+), and after an unrelated question (H-).
Per layer and KV head, Ω± = Hᵀ H± / n is decomposed with an SVD; P+ keeps the top left singular
directions of Ω+ up to a cumulative share γ of its singular values, P- keeps the tail directions of
Ω- beyond that share. Heads whose keys barely move between H+ and H- (relative shift below δ) are
masked off. Forward passes are batched and stop at the last layer needed (no LM head).
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .data.triplets import Triplet, triplet_prompts, triplets_hash
from .errors import SekaError
from .highlight import EncodedPrompt, Markers, _outside_stacklevel, has_chat_template, leading_special_tokens, pad_batch
from .key_capture import capture_keys, forward_until_captured
from .projection import Projection, ProjectionMeta, layer_ranges

#: Markers that cannot occur in natural text, used to place the answer span inside built prompts.
_ANSWER_MARKERS = Markers("\x01", "\x02", escape="")


@dataclass(frozen=True)
class BuildConfig:
    """How to build a projection."""

    gamma: float = 0.9  #: cumulative share of singular values kept in P+ (and cut from P-)
    delta: float = 0.0  #: heads with relative key shift below this are left alone
    layers: Sequence[int] | None = None  #: model layers to build for (None: all)
    chat: bool | None = None  #: format prompts with the chat template (None: when the tokenizer has one)
    batch_size: int = 8
    gain_pos: float = 2.0  #: default g+ stored with the projection
    gain_neg: float = 0.5  #: default g- stored with the projection
    default_layers: Sequence[int] | None = None  #: layers edited by default (None: all built)

    def validate(self, num_layers: int) -> list[int]:
        """Check the settings against a model of ``num_layers`` layers; return the layers to build.

        Everything is checked here, before any key is collected (a build of the default model takes
        minutes), so a bad setting fails at once.
        """
        for name in ("gamma", "delta", "gain_pos", "gain_neg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise SekaError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise SekaError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.delta < 0:
            raise SekaError(f"delta must be >= 0, got {self.delta}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SekaError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise SekaError(f"chat must be True, False or None, got {self.chat!r}")
        layers = list(range(num_layers)) if self.layers is None else _layer_indices("layers", self.layers)
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad or not layers:
            raise SekaError(f"layers {bad or layers} are not valid layer indices (0..{num_layers - 1})")
        if self.default_layers is not None:
            default = _layer_indices("default_layers", self.default_layers)
            outside = [i for i in default if i not in layers]
            if outside or not default:
                raise SekaError(f"default_layers {outside or default} must be a non-empty subset of the layers "
                                f"built ({layers})")
        return layers


def _layer_indices(name: str, value) -> list[int]:
    """A list of layer indices, sorted and without repeats; a string or non-integers are refused."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # a NumPy array or a tensor of indices
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset, range)) or not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in value
    ):
        raise SekaError(f"{name} must be a list of layer indices, got {value!r}")
    return sorted({int(i) for i in value})


def _mark_answer(context: str, answer: str) -> str:
    at = context.find(answer)
    if at < 0:
        raise SekaError(f"triplet answer {answer!r} does not occur in its context")
    m = _ANSWER_MARKERS
    return context[:at] + m.start + answer + m.end + context[at + len(answer):]


def collect_answer_keys(seka_model, prompts: Sequence[str], layers: Sequence[int], *, chat: bool | None, batch_size: int = 8,
                        progress: bool = True, desc: str = "collecting keys") -> tuple[dict[int, torch.Tensor], list[int]]:
    """Pre-RoPE keys of the marked answer tokens of each prompt.

    ``prompts`` contain the answer between ``\\x01`` and ``\\x02``. Returns, per layer, a tensor
    (total answer tokens, kv_heads, head_dim) in float32 on the CPU, and the token count of each
    prompt (to align the three views of a triplet).
    """
    captured: dict[int, torch.Tensor] = {}
    current_mask: list[torch.Tensor] = []

    def keep_answer_keys(index: int, keys: torch.Tensor) -> None:
        captured[index] = keys[current_mask[0]].float().cpu()

    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    counts: list[int] = []
    too_long = 0
    with capture_keys(seka_model, layers, keep_answer_keys):
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
            # cut after the answer first (later tokens cannot change its keys), then fit the window
            rows = [_up_to_answer(seka_model.encode(p, chat=chat, markers=_ANSWER_MARKERS, max_length=sys.maxsize))
                    for p in prompts[start:start + batch_size]]
            too_long += sum(len(r.input_ids) > seka_model.context_window for r in rows)
            rows = [_fit_window(r, seka_model.context_window, seka_model.tokenizer) for r in rows]
            counts.extend(sum(r.highlight) for r in rows)
            batch = pad_batch(rows, seka_model.tokenizer.pad_token_id, side="left").to(seka_model.device)
            current_mask[:] = [batch.highlight_mask]
            position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            forward_until_captured(seka_model.model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=position_ids)
            for i in layers:
                out[i].append(captured.pop(i))
    if too_long:
        warnings.warn(f"{desc}: {too_long} of {len(prompts)} prompts are longer than the model's window of "
                      f"{seka_model.context_window} tokens up to their answer; their first tokens were dropped",
                      stacklevel=_outside_stacklevel())
    return {i: torch.cat(v) for i, v in out.items()}, counts


def _up_to_answer(row: EncodedPrompt) -> EncodedPrompt:
    """Drop the tokens after the answer: under causal attention they cannot change its keys."""
    end = max((i for i, on in enumerate(row.highlight) if on), default=len(row.highlight) - 1) + 1
    return EncodedPrompt(row.input_ids[:end], row.highlight[:end], row.text)


def _fit_window(row: EncodedPrompt, window: int, tokenizer) -> EncodedPrompt:
    """``row`` cut to ``window`` tokens: its leading special tokens (BOS, the template's first marker) stay, the
    tokens after them go, as a too-long prompt is cut at inference."""
    if len(row.input_ids) <= window:
        return row
    cut = len(row.input_ids) - window
    head = leading_special_tokens(row.input_ids, tokenizer)
    head = head if head + 1 < window else 0
    return EncodedPrompt(row.input_ids[:head] + row.input_ids[head + cut:],
                         row.highlight[:head] + row.highlight[head + cut:], row.text, cut)


def _split_rows(keys: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(keys, list(counts)))


def _orient(u: torch.Tensor, mean_key: torch.Tensor) -> torch.Tensor:
    """Fix the arbitrary sign of each singular vector: the mean key projects onto it non-negatively.

    P = U Uᵀ does not depend on the signs, but AdaSEKA's routing coefficient Σ (q·u_k) σ_k does;
    with this orientation a positive q·u_k means the query points the way the keys lie.
    """
    along = torch.einsum("lhdk,lhd->lhk", u, mean_key)
    return u * torch.where(along < 0, -1.0, 1.0).to(u.dtype)[:, :, None, :]


def projections_from_keys(h: torch.Tensor, h_pos: torch.Tensor, h_neg: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """P+, P-, their SVD factors and the head shift from aligned key sets (layers, n, heads, dim)."""
    n = h.shape[1]
    omega_pos = torch.einsum("lnhd,lnhe->lhde", h, h_pos) / n
    omega_neg = torch.einsum("lnhd,lnhe->lhde", h, h_neg) / n
    u_pos, s_pos, _ = torch.linalg.svd(omega_pos)
    u_neg, s_neg, _ = torch.linalg.svd(omega_neg)
    u_pos = _orient(u_pos, h_pos.mean(1))
    u_neg = _orient(u_neg, h_neg.mean(1))
    d = h.shape[-1]
    idx = torch.arange(d)

    def cut(s: torch.Tensor) -> torch.Tensor:
        if gamma >= 1:  # every direction: a float cumulative share may fall short of 1 by rounding
            return torch.full((*s.shape[:-1], 1), s.shape[-1], dtype=torch.long)
        s = s.double()
        share = s.cumsum(-1) / s.sum(-1, keepdim=True).clamp_min(1e-12)
        return (share < gamma).sum(-1, keepdim=True) + 1  # smallest k reaching share γ

    keep_pos = (idx < cut(s_pos)).to(h.dtype)  # top directions of Ω+
    keep_neg = (idx >= cut(s_neg)).to(h.dtype)  # tail directions of Ω-
    pos = torch.einsum("lhdk,lhk,lhek->lhde", u_pos, keep_pos, u_pos)
    neg = torch.einsum("lhdk,lhk,lhek->lhde", u_neg, keep_neg, u_neg)
    shift = (h_pos - h_neg).norm(dim=-1).mean(1) / h.norm(dim=-1).mean(1).clamp_min(1e-12)
    return dict(pos=pos, neg=neg, u_pos=u_pos, s_pos=s_pos, u_neg=u_neg, s_neg=s_neg, head_shift=shift)


def _triplet_list(triplets: Any) -> list[Triplet]:
    """``triplets`` as a list (a generator is read once), every entry a :class:`Triplet`."""
    if isinstance(triplets, (str, bytes, Mapping)) or not isinstance(triplets, Iterable):
        raise SekaError(f"triplets must be a list of Triplet objects, got {type(triplets).__name__}")
    triplets = list(triplets)
    if not triplets:
        raise SekaError("building a projection needs at least one triplet")
    odd = next((t for t in triplets if not isinstance(t, Triplet)), None)
    if odd is not None:
        raise SekaError(f"triplets are seka_rag.data.triplets.Triplet(context, question, answer, unrelated_question) "
                        f"objects, got {type(odd).__name__} (e.g. Triplet(*row) for a tuple in that order)")
    return triplets


def build_projection(seka_model, triplets: Sequence[Triplet], config: BuildConfig = BuildConfig(), *,
                     progress: bool = True) -> Projection:
    """Build a :class:`Projection` for ``seka_model`` from contrastive triplets."""
    if not isinstance(config, BuildConfig):
        raise SekaError(f"config must be a BuildConfig, got {type(config).__name__} (e.g. BuildConfig(gamma=0.8))")
    triplets = _triplet_list(triplets)
    geom = seka_model.geometry
    layers = config.validate(geom.num_layers)
    chat = config.chat
    if chat is None:
        chat = has_chat_template(seka_model.tokenizer)
    views = [[], [], []]
    for t in triplets:
        for view, text in zip(views, triplet_prompts(t)):
            at = text.rindex(t.context)  # the context ends each prompt; its question may hold the same words
            view.append(text[:at] + _mark_answer(t.context, t.answer) + text[at + len(t.context):])
    collected = []
    for name, view in zip(("H", "H+", "H-"), views):
        keys, counts = collect_answer_keys(seka_model, view, layers, chat=chat, batch_size=config.batch_size,
                                           progress=progress, desc=f"keys {name}")
        collected.append((keys, counts))
    # keep triplets whose answer has the same token count in all three prompts
    counts = [c for _, c in collected]
    keep = [i for i in range(len(triplets)) if counts[0][i] == counts[1][i] == counts[2][i] > 0]
    if not keep:
        raise SekaError("no triplet's answer tokenised identically in its three prompts")
    stacked = []
    for keys, cnt in collected:
        per_layer = []
        for layer in layers:
            rows = _split_rows(keys[layer], cnt)
            per_layer.append(torch.cat([rows[i] for i in keep]))
        stacked.append(torch.stack(per_layer))  # (layers, n, heads, dim)
    parts = projections_from_keys(*stacked, gamma=config.gamma)
    default_layers = None if config.default_layers is None else [int(i) for i in config.default_layers]
    meta = ProjectionMeta(
        model_type=geom.model_type, model_id=seka_model.model_id, num_layers=geom.num_layers,
        num_kv_heads=geom.num_kv_heads, head_dim=geom.head_dim, layers=layers, gamma=config.gamma,
        delta=config.delta, gain_pos=config.gain_pos, gain_neg=config.gain_neg, default_layers=default_layers,
        construction="seka", chat_format=chat, data_hash=triplets_hash(triplets), n_triplets=len(keep),
    )
    projection = Projection(meta=meta, head_mask=parts["head_shift"] >= config.delta, **parts)
    if not projection.edits_by_default:
        largest = float(projection.head_shift[[projection.row(i) for i in projection.edited_layers]].max())
        warnings.warn(
            f"delta={config.delta:g} keeps no head in the default layers {layer_ranges(projection.edited_layers)} "
            f"(the largest head shift there is {largest:.3g}), so this projection edits nothing as it stands: "
            "build with a smaller delta, or calibrate it (which puts key scaling where no head is kept)",
            stacklevel=_outside_stacklevel(),
        )
    return projection


def settings_like(projection: Projection, template: Projection) -> Projection:
    """``projection`` with the edited layers, gains and per-layer scales of a calibrated ``template``.

    Layers of ``template`` missing from ``projection`` are dropped from its defaults; layers of
    ``projection`` the template does not cover keep scale 1.
    """
    from dataclasses import asdict

    _check_same_model(projection, template)
    t = template.meta
    edited = template.edited_layers
    default_layers = [layer for layer in edited if layer in projection.meta.layers]
    if not default_layers:
        raise SekaError(
            f"none of the calibrated projection's edited layers {list(edited)} was built "
            f"(built: {projection.meta.layers}); build those layers or pass a template that edits built ones"
        )
    scale = torch.ones(len(projection.meta.layers))
    for i, layer in enumerate(projection.meta.layers):
        if layer in t.layers:
            scale[i] = template.layer_scale[template.row(layer)]
    meta = ProjectionMeta(**{**asdict(projection.meta), "gain_pos": t.gain_pos, "gain_neg": t.gain_neg,
                             "default_layers": default_layers,
                             "notes": {**projection.meta.notes, "settings_from": t.model_id + " calibrated projection"}})
    return Projection(meta=meta, pos=projection.pos, neg=projection.neg, u_pos=projection.u_pos, s_pos=projection.s_pos,
                      u_neg=projection.u_neg, s_neg=projection.s_neg, head_shift=projection.head_shift,
                      head_mask=projection.head_mask, layer_scale=scale)


def _check_same_model(projection: Projection, template: Projection) -> None:
    """Refuse a template built for another model: its layers, gains and scales mean nothing here."""
    if not isinstance(template, Projection):
        raise SekaError(f"the template must be a Projection (the model's calibrated one), got {type(template).__name__}")
    a, b = projection.meta, template.meta
    if (a.model_type, a.num_layers, a.num_kv_heads, a.head_dim) != (b.model_type, b.num_layers, b.num_kv_heads, b.head_dim):
        raise SekaError(
            f"the template projection was built for {b.model_id!r} ({b.model_type}, {b.num_layers} layers, "
            f"{b.num_kv_heads} KV heads, head dim {b.head_dim}), not for this model ({a.model_type}, "
            f"{a.num_layers} layers, {a.num_kv_heads} KV heads, head dim {a.head_dim}): use this model's own projection"
        )


def expert_set_like(experts, template: Projection):
    """``experts`` with every expert's edited layers, gains and per-layer scales re-copied from ``template``.

    An expert with a ``gain_scale`` other than 1 gets the template's gains times that scale (what a
    rebuild with the same ``--expert-scales`` would give).

    Each expert keeps its projections (P±, U, S, head shifts and masks), description and prototype;
    the set keeps its routing defaults and notes. This is what rebuilding the set from the same
    triplets would give after the calibrated projection's settings changed (the builder computes
    the projections without reading those settings), without the rebuild — provided ``template``
    edits only layers the experts were built for (else :class:`SekaError`: a rebuild is needed).
    """
    from dataclasses import replace as replace_field

    _check_same_model(experts.experts[0].projection, template)
    t = template.meta
    edited = t.default_layers if t.default_layers is not None else t.layers
    missing = sorted(set(edited) - set(experts.meta.layers))
    if missing:
        raise SekaError(
            f"the calibrated projection edits layers {missing} that the experts were not built for "
            f"(built: {experts.meta.layers}); rebuild the expert set (build-experts without --reuse)"
        )
    from .adaptive import gains_times

    # an expert's own strength (with_gain_scales) survives the re-copy
    refreshed = [replace_field(e, projection=gains_times(settings_like(e.projection, template), e.gain_scale))
                 for e in experts]
    return experts.with_experts(refreshed)


def build_expert_set(seka_model, families: dict[str, Sequence[Triplet]], config: BuildConfig = BuildConfig(), *,
                     template: Projection | None = None, descriptions: dict[str, str] | None = None,
                     encoder=None, embedding_model: str | None = None, prototypes: bool = True, name: str = "",
                     progress: bool = True):
    """An AdaSEKA :class:`~seka_rag.adaptive.ExpertSet`: one projection per family of triplets.

    ``template`` (e.g. the model's calibrated projection) lends every expert its edited layers, gains
    and per-layer scales. Each expert's prototype is the mean sentence embedding of its triplets'
    question-then-context prompts (all-MiniLM-L6-v2 unless ``encoder`` is given; then name its model
    with ``embedding_model``, which the set stores: routing must embed queries with the same model).
    """
    from .adaptive import Expert, ExpertSet
    from .embeddings import DEFAULT_EMBEDDING_MODEL

    if encoder is not None and prototypes and not embedding_model:
        raise SekaError("with encoder=, name its model with embedding_model= (stored with the set: queries "
                        "must be embedded with the model that made the prototypes)")

    if not isinstance(families, Mapping):
        raise SekaError(f"families must be a dict {{expert name: triplets}}, got {type(families).__name__}")
    if not families:
        raise SekaError("an expert set needs at least one family of triplets")
    from .adaptive import check_expert_names

    check_expert_names(list(families))  # before minutes of key collection, not after
    families = {family: _triplet_list(triplets) for family, triplets in families.items()}
    if template is not None:  # before minutes of key collection, not after
        if not isinstance(template, Projection):
            raise SekaError(f"template must be a Projection (the model's calibrated one), got {type(template).__name__}")
        template.check_fits(seka_model.geometry)
    if prototypes and encoder is None:  # a missing encoder is found now, not after the first expert's build
        from .embeddings import default_encoder
        from .models.embedded import library_progress_bars

        with library_progress_bars(enabled=bool(progress)):
            encoder = default_encoder()
    experts = []
    for family, triplets in families.items():
        if progress:
            print(f"building expert {family!r} from {len(triplets)} triplets", file=sys.stderr, flush=True)
        projection = build_projection(seka_model, triplets, config, progress=progress)
        if template is not None:
            projection = settings_like(projection, template)
        proto = None
        if prototypes:
            from .embeddings import embed

            proto = torch.nn.functional.normalize(embed([triplet_prompts(t)[1] for t in triplets], encoder).mean(0), dim=0)
        experts.append(Expert(family, projection, description=(descriptions or {}).get(family, ""),
                              prototype=proto, n_prompts=len(triplets)))
    return ExpertSet(experts, name=name or seka_model.model_id,
                     embedding_model=embedding_model or DEFAULT_EMBEDDING_MODEL)
