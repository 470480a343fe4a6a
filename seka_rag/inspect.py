"""What the key edit does, head by head and token by token: the ``seka-rag inspect`` view.

SEKA edits a highlighted token's pre-RoPE key ``k`` in layer ``l`` and KV head ``h`` as
``k ← k + M k`` with ``M = head_mask · layer_scale · (g+·P+ + g-·P-) / 2``
(:func:`seka_rag.steering.edit_matrices`). This module characterises that edit in two steps.

1. :func:`head_effects` — the edit's strength per (layer, KV head) of the edited layers, from the
   projection alone (no model, no data):

   * ``rms_gain = ‖M‖_F / √d`` — the root-mean-square relative change ``‖M k‖ / ‖k‖`` over keys
     pointing in uniformly random directions (``E ‖M k‖² / ‖k‖² = ‖M‖_F² / d``). **This is the
     ranking criterion that defines "the most affected heads"** (descending; ties broken by
     ``spectral_norm``, then ``head_shift``, then layer and head index). It grows with the gain
     *and* with the number of key directions P+ / P- act on.
   * ``spectral_norm = ‖M‖₂`` — the largest relative change any key can get. Reported, but a poor
     ranking on its own: P± are orthogonal projectors, so ``‖M‖₂ ≈ layer_scale · g+ / 2`` for every
     head of a layer, however many directions P+ keeps.
   * ``frobenius_norm = ‖M‖_F``, the head's ``head_shift`` (how far its answer keys moved between
     the relevant and the unrelated question when the projection was built), ``pos_dims`` (rank of
     P+: how many key directions are amplified), ``layer_scale`` and ``masked``.

   Masked heads (head mask off, or left out of ``SteeringConfig.heads``) have ``M = 0``: they are
   listed, flagged ``masked``, after every unmasked head, and never count among the most affected.
   ``rank_by="spectral"`` or ``"shift"`` ranks by those fields instead.

2. :func:`token_amplification` — runs texts (by default our own synthetic contexts,
   :func:`default_texts`) through the model, captures the pre-RoPE keys of the needed layers
   (forward hooks on the architecture's key module; the forward stops after the last needed
   layer), and measures for every token occurrence and selected head

   * ``ratio = ‖k + M k‖ / ‖k‖`` — how much longer the edit makes the key (the tokens are ranked
     by its mean), and
   * ``pos_share = ‖P+ k‖² / ‖k‖²`` — the share of the key's energy inside P+ (the part g+
     amplifies; with ``g- = 0`` the ratio is a monotone function of it).

   Occurrences are aggregated by decoded token string (whitespace made visible: ``␣`` space,
   ``↵`` newline, ``⇥`` tab); tokens seen fewer than ``min_count`` times are dropped; each head
   keeps its ``top`` most amplified tokens and, for contrast, its ``top`` least amplified ones
   (never the same token twice). Keys are measured unedited: the call refuses to run inside a
   steering block.

:func:`format_inspection` renders the result as a text table; :func:`add_inspect_parser` and
:func:`inspect_main` are the ``seka-rag inspect`` command.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import InspectionError, SteeringConfigError
from .key_capture import capture_keys, forward_until_captured
from .projection import Projection
from .steering import SteeringConfig, _head_mask, active_edit_present, edit_matrices

#: How :func:`head_effects` can rank heads (the first is the default).
RANK_BY = ("rms", "spectral", "shift")
#: Seed of :func:`default_texts`: not the projection builder's seed 0, so the texts are not the build data.
DEFAULT_TEXT_SEED = 123
DEFAULT_TEXT_COUNT = 200

_RANK_TITLES = {"rms": "rms gain = ‖M‖_F/√d (RMS of ‖M k‖/‖k‖ over random key directions)",
                "spectral": "‖M‖₂ (the largest ‖M k‖/‖k‖ of any key)",
                "shift": "the head's key shift (measured when the projection was built)"}
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


# ---------------------------------------------------------------------------------------- heads
@dataclass(frozen=True)
class HeadEffect:
    """Strength of the key edit in one KV head of one edited layer (see the module docstring)."""

    layer: int  #: model layer index
    head: int  #: KV head index
    rms_gain: float  #: ‖M‖_F / √d: RMS of ‖M k‖/‖k‖ over random key directions (default ranking)
    spectral_norm: float  #: ‖M‖₂: the largest ‖M k‖/‖k‖ of any key
    frobenius_norm: float  #: ‖M‖_F
    head_shift: float  #: the projection's measured key shift of this head
    pos_dims: int  #: rank of P+ (number of amplified key directions)
    layer_scale: float  #: the layer's calibrated gain factor
    masked: bool  #: True when the edit leaves this head alone (M = 0)
    rank: int = 0  #: 1-based position in the ranking returned by :func:`head_effects`

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.head)


def head_effects(projection: Projection, config: SteeringConfig = SteeringConfig(), *,
                 rank_by: str = "rms", include_masked: bool = True) -> list[HeadEffect]:
    """Every (layer, KV head) of the layers ``config`` edits, ranked by edit strength, strongest first.

    ``rank_by="rms"`` (default) ranks by ``‖M‖_F/√d``, ``"spectral"`` by ``‖M‖₂``, ``"shift"`` by the
    head's key shift; masked heads always come last (``include_masked=False`` drops them).
    Invalid gains, layers or heads in ``config`` raise :class:`~seka_rag.errors.SteeringConfigError`.
    """
    if not isinstance(projection, Projection):
        raise InspectionError(f"head_effects needs a Projection, got {type(projection).__name__}")
    if rank_by not in RANK_BY:
        raise InspectionError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    matrices = edit_matrices(projection, config)  # validates gains, layers and heads
    layers = list(matrices)
    mask = _head_mask(projection, config.heads, layers)
    d = projection.meta.head_dim
    out = []
    for layer, m in matrices.items():
        row = projection.row(layer)
        m = m.double()
        spectral = torch.linalg.matrix_norm(m, ord=2)
        frob = torch.linalg.matrix_norm(m, ord="fro")
        dims = torch.linalg.matrix_rank(projection.pos[row].double(), hermitian=True, rtol=1e-4)  # float32 round-off
        for h in range(projection.meta.num_kv_heads):
            masked = not bool(mask[row, h])
            out.append(HeadEffect(
                layer=int(layer), head=h,
                rms_gain=0.0 if masked else float(frob[h]) / math.sqrt(d),
                spectral_norm=0.0 if masked else float(spectral[h]),
                frobenius_norm=0.0 if masked else float(frob[h]),
                head_shift=float(projection.head_shift[row, h]), pos_dims=int(dims[h]),
                layer_scale=float(projection.layer_scale[row]), masked=masked,
            ))
    fields = {"rms": ("rms_gain", "spectral_norm", "head_shift"),
              "spectral": ("spectral_norm", "rms_gain", "head_shift"),
              "shift": ("head_shift", "rms_gain", "spectral_norm")}[rank_by]
    out.sort(key=lambda e: (e.masked, *(-getattr(e, f) for f in fields), e.layer, e.head))
    if not include_masked:
        out = [e for e in out if not e.masked]
    return [HeadEffect(**{**asdict(e), "rank": i + 1}) for i, e in enumerate(out)]


def most_affected(effects: Sequence[HeadEffect], n: int) -> list[HeadEffect]:
    """The first ``n`` unmasked heads of a ranking from :func:`head_effects`."""
    _check_positive_int("n", n)
    return [e for e in effects if not e.masked][:n]


# ---------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenStat:
    """How the edit treats one token string's keys in one head, over all its occurrences."""

    token: str  #: decoded token, whitespace made visible
    count: int  #: occurrences measured
    mean_ratio: float  #: mean ‖k + M k‖ / ‖k‖
    std_ratio: float  #: standard deviation of the ratio over the occurrences
    mean_pos_share: float  #: mean ‖P+ k‖² / ‖k‖²


@dataclass
class HeadTokens:
    """One inspected head: its strength, overall averages and its most / least amplified tokens."""

    effect: HeadEffect
    occurrences: int  #: token occurrences measured in this head
    distinct: int  #: distinct token strings seen at least ``min_count`` times
    mean_ratio: float  #: over all occurrences
    mean_pos_share: float  #: over all occurrences
    top: list[TokenStat] = field(default_factory=list)  #: most amplified first
    bottom: list[TokenStat] = field(default_factory=list)  #: least amplified first (disjoint from top)


@dataclass
class TokenAmplification:
    """The result of :func:`token_amplification`."""

    model_id: str
    gain_pos: float  #: g+ the matrices were built with
    gain_neg: float  #: g- the matrices were built with
    texts: int  #: texts run through the model
    tokens: int  #: token occurrences measured (per head)
    source: str  #: where the texts came from
    min_count: int
    top: int
    skip_special: bool
    rank_by: str = "rms"  #: the head ranking the heads were chosen by
    heads: list[HeadTokens] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data."""
        return asdict(self)


def default_texts(n: int = DEFAULT_TEXT_COUNT, seed: int = DEFAULT_TEXT_SEED) -> list[str]:
    """Our own synthetic text: the contexts of ``generate_triplets(n, seed)`` (seed 123, not the build seed 0)."""
    from .data.triplets import generate_triplets

    return [t.context for t in generate_triplets(n, seed=seed)]


def visible_token(text: str) -> str:
    """A token string with whitespace and control characters made visible (``' a\\n'`` → ``'␣a↵'``)."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def token_amplification(seka_model, texts: Sequence[str] | None = None, heads=6, *, top: int = 15,
                        min_count: int = 3, batch_size: int = 8, progress: bool = True,
                        config: SteeringConfig = SteeringConfig(), projection: Projection | None = None,
                        chat: bool = False, skip_special: bool = True, rank_by: str = "rms",
                        source: str | None = None) -> TokenAmplification:
    """Which tokens' keys the edit amplifies most, in each of ``heads``.

    ``texts``: the texts to run (None: :func:`default_texts`); each is encoded raw (``chat=True``:
    through the chat template), special tokens skipped unless ``skip_special=False``, and each text's
    first token left out (at position 0 a key depends on that token alone, so it would rank by position).
    ``heads``: an int ``n`` (the ``n`` most affected heads by :func:`head_effects` with ``rank_by``),
    or a list of :class:`HeadEffect` / ``(layer, kv_head)`` pairs; each must be edited and unmasked
    under ``config``. ``M`` is built from ``projection`` (default: the model's) and ``config``.
    Heads come back in the order asked. Bad arguments raise :class:`~seka_rag.errors.InspectionError`
    (or :class:`~seka_rag.errors.SteeringConfigError` for an invalid ``config``).
    """
    _check_positive_int("top", top)
    _check_positive_int("min_count", min_count)
    _check_positive_int("batch_size", batch_size)
    if active_edit_present():
        raise InspectionError("token_amplification measures unedited keys: call it outside a steering block")
    projection = seka_model.projection if projection is None else projection
    if projection is None:
        raise InspectionError("the model has no projection to inspect: load one or pass projection=")
    geom = seka_model.geometry
    projection.check_fits(geom)
    if texts is None:
        texts = default_texts()
        source = source or f"synthetic contexts (generate_triplets({DEFAULT_TEXT_COUNT}, seed={DEFAULT_TEXT_SEED}))"
    texts = _check_texts(texts)
    effects = head_effects(projection, config, rank_by=rank_by)
    selected = _select_heads(effects, heads, projection, geom.num_kv_heads)
    matrices = edit_matrices(projection, config)
    meta = projection.meta
    gain_pos = float(meta.gain_pos if config.gain_pos is None else config.gain_pos)
    gain_neg = float(meta.gain_neg if config.gain_neg is None else config.gain_neg)

    by_layer: dict[int, list[int]] = {}
    for e in selected:
        by_layer.setdefault(e.layer, []).append(e.head)
    layer_heads = {layer: torch.tensor(hs) for layer, hs in by_layer.items()}
    layer_m = {layer: matrices[layer][hs].float() for layer, hs in layer_heads.items()}
    layer_p = {layer: projection.pos[projection.row(layer)][hs].float() for layer, hs in layer_heads.items()}
    ratios: dict[tuple[int, int], list[torch.Tensor]] = {e.key: [] for e in selected}
    shares: dict[tuple[int, int], list[torch.Tensor]] = {e.key: [] for e in selected}
    labels: list[str] = []
    label_index: dict[str, int] = {}
    id_label: dict[int, int] = {}
    token_labels: list[torch.Tensor] = []

    captured: dict[int, torch.Tensor] = {}

    def keep_selected_heads(index: int, keys: torch.Tensor) -> None:
        captured[index] = keys[:, :, layer_heads[index].to(keys.device)].float().cpu()

    special = set(getattr(seka_model.tokenizer, "all_special_ids", []) or []) if skip_special else set()
    from tqdm.auto import tqdm

    from .highlight import pad_batch

    # prepend: the keys are read before any other hook (the steering editor's) could change them
    with capture_keys(seka_model, list(layer_heads), keep_selected_heads, prepend=True):
        for start in tqdm(range(0, len(texts), batch_size), desc="inspect", disable=not progress, leave=False):
            rows = [seka_model.encode(t, chat=chat, markers=None) for t in texts[start:start + batch_size]]
            batch = pad_batch(rows, seka_model.tokenizer.pad_token_id, side="left")
            # a text's first token is left out: at position 0 its key depends on that token alone (and
            # sits where attention sinks), so it would rank by its position, not by what the edit does
            keep = batch.attention_mask.bool() & (batch.attention_mask.cumsum(-1) > 1)
            if special:
                keep &= ~torch.isin(batch.input_ids, torch.tensor(sorted(special)))
            ids = batch.input_ids[keep].tolist()
            if not ids:
                continue
            for tid in set(ids):
                if tid not in id_label:
                    label = _token_label(seka_model.tokenizer, tid)
                    id_label[tid] = label_index.setdefault(label, len(label_index))
                    if id_label[tid] == len(labels):
                        labels.append(label)
            token_labels.append(torch.tensor([id_label[t] for t in ids]))
            batch = batch.to(seka_model.device)
            position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            captured.clear()
            forward_until_captured(seka_model.model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=position_ids)
            for layer, hs in layer_heads.items():
                k = captured[layer][keep]  # (n, heads, d)
                norm2 = (k * k).sum(-1).clamp_min(1e-30)
                edited = k + torch.einsum("nhd,hed->nhe", k, layer_m[layer])
                pk = torch.einsum("nhd,hed->nhe", k, layer_p[layer])
                r = ((edited * edited).sum(-1) / norm2).sqrt()
                s = (pk * pk).sum(-1) / norm2
                for j, h in enumerate(hs.tolist()):
                    ratios[(layer, h)].append(r[:, j])
                    shares[(layer, h)].append(s[:, j])
    if not token_labels:
        raise InspectionError("the texts hold no (non-special) tokens to measure")
    label_of = torch.cat(token_labels)
    n_labels = len(labels)
    counts = torch.bincount(label_of, minlength=n_labels)
    frequent = (counts >= min_count).nonzero().flatten().tolist()
    result = TokenAmplification(
        model_id=getattr(seka_model, "model_id", ""), gain_pos=gain_pos, gain_neg=gain_neg, texts=len(texts),
        tokens=int(label_of.numel()), source=source or f"{len(texts)} given texts", min_count=min_count, top=top,
        skip_special=skip_special, rank_by=rank_by,
    )
    for e in selected:
        r = torch.cat(ratios[e.key]).double()
        s = torch.cat(shares[e.key]).double()
        total = torch.zeros(n_labels, dtype=torch.float64).index_add_(0, label_of, r)
        total2 = torch.zeros(n_labels, dtype=torch.float64).index_add_(0, label_of, r * r)
        share = torch.zeros(n_labels, dtype=torch.float64).index_add_(0, label_of, s)
        c = counts.double().clamp_min(1)
        mean = total / c
        std = (total2 / c - mean * mean).clamp_min(0).sqrt()
        stats = [TokenStat(labels[i], int(counts[i]), float(mean[i]), float(std[i]), float(share[i] / c[i]))
                 for i in frequent]
        ranked = sorted(stats, key=lambda t: (-t.mean_ratio, -t.count, t.token))
        best = ranked[:top]
        rest = ranked[top:]
        worst = sorted(rest, key=lambda t: (t.mean_ratio, -t.count, t.token))[:top]
        result.heads.append(HeadTokens(effect=e, occurrences=int(r.numel()), distinct=len(stats),
                                       mean_ratio=float(r.mean()), mean_pos_share=float(s.mean()),
                                       top=best, bottom=worst))
    return result


def _token_label(tokenizer, tid: int) -> str:
    text = tokenizer.decode([tid])
    if "\ufffd" in text:  # a byte fragment of a multi-byte character: show the vocabulary entry instead
        raw = tokenizer.convert_ids_to_tokens(tid)
        return f"⟨{raw}⟩"
    return visible_token(text)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InspectionError(f"{name} must be a positive integer, got {value!r}")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InspectionError(f"texts must be a list of strings, got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise InspectionError(f"texts must be strings; entry {bad[0]} is {type(texts[bad[0]]).__name__}")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InspectionError("no texts to run: give at least one non-empty text")
    return texts


def _select_heads(effects: list[HeadEffect], heads, projection: Projection, n_kv: int) -> list[HeadEffect]:
    if isinstance(heads, numbers.Integral) and not isinstance(heads, bool):
        _check_positive_int("heads", heads)
        chosen = most_affected(effects, int(heads))
        if not chosen:
            raise InspectionError("every head of the edited layers is masked off: nothing to inspect")
        if len(chosen) < int(heads):
            import warnings

            warnings.warn(f"{int(heads)} heads (--heads / heads=) is more than the edit changes: all {len(chosen)} "
                          "edited heads are inspected", stacklevel=3)
        return chosen
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not heads:
        raise InspectionError(
            f"heads must be a positive int or a non-empty list of (layer, kv_head) pairs, got {heads!r}")
    by_key = {e.key: e for e in effects}
    edited = sorted({e.layer for e in effects})
    out: list[HeadEffect] = []
    for item in heads:
        key = item.key if isinstance(item, HeadEffect) else item
        if (not isinstance(key, Sequence) or isinstance(key, (str, bytes)) or len(key) != 2
                or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in key)):
            raise InspectionError(f"each head must be a (layer, kv_head) pair of ints, got {item!r}")
        layer, head = int(key[0]), int(key[1])
        if not 0 <= head < n_kv:
            raise InspectionError(f"KV head {head} of layer {layer} is out of range (0..{n_kv - 1})")
        if (layer, head) not in by_key:
            raise SteeringConfigError(f"layer {layer} is not among the edited layers {edited}")
        effect = by_key[(layer, head)]
        if effect.masked:
            raise InspectionError(f"layer {layer}, KV head {head} is masked off: the edit leaves its keys alone")
        if all(e.key != effect.key for e in out):
            out.append(effect)
    return out


# ---------------------------------------------------------------------------------------- text
def format_effects(effects: Sequence[HeadEffect], limit: int | None = None) -> str:
    """The head ranking as a table (the first ``limit`` rows; masked heads are marked)."""
    rows = list(effects)[:limit] if limit else list(effects)
    lines = [" rank  layer  head  rms gain   ‖M‖₂    ‖M‖_F   shift  P+ dims  layer scale",
             " ----  -----  ----  --------  ------  ------  ------  -------  -----------"]
    for e in rows:
        lines.append(f" {e.rank:>4}  {e.layer:>5}  {e.head:>4}  {e.rms_gain:>8.4f}  {e.spectral_norm:>6.3f}  "
                     f"{e.frobenius_norm:>6.3f}  {e.head_shift:>6.3f}  {e.pos_dims:>7}  {e.layer_scale:>11.3f}"
                     + ("  masked" if e.masked else ""))
    if limit and len(effects) > limit:
        lines.append(f" ... {len(effects) - limit} more heads")
    return "\n".join(lines)


def format_inspection(result: TokenAmplification, effects: Sequence[HeadEffect] | None = None, *,
                      effects_limit: int | None = 20) -> str:
    """A readable report: optionally the head ranking, then one block per inspected head.

    Each block gives the layer, KV head and strength, the averages over all occurrences, the most
    amplified tokens (mean ratio, std, P+ share, count) and the least amplified ones for contrast.
    """
    out = [f"SEKA key amplification — {result.model_id or 'model'}   "
           f"g+ = {result.gain_pos:g}, g- = {result.gain_neg:g}",
           f"texts: {result.source}; {result.texts} texts, {result.tokens} token occurrences"
           f" ({'special tokens and ' if result.skip_special else ''}each text's first token skipped); tokens seen "
           f">= {result.min_count} times",
           "ratio = ‖k + M k‖ / ‖k‖ (pre-RoPE key, edited / unedited);  P+ share = ‖P+ k‖² / ‖k‖²;  "
           "␣ space, ↵ newline, ⇥ tab"]
    if effects:
        out += ["", f"heads ranked by {_RANK_TITLES.get(result.rank_by, result.rank_by)}:",
                format_effects(effects, effects_limit)]
    for h in result.heads:
        e = h.effect
        out += ["", f"layer {e.layer}, KV head {e.head}  (rank {e.rank}: rms gain {e.rms_gain:.4f}, "
                    f"‖M‖₂ {e.spectral_norm:.3f}, ‖M‖_F {e.frobenius_norm:.3f}, shift {e.head_shift:.3f}, "
                    f"P+ dims {e.pos_dims})",
                f"  all {h.occurrences} occurrences: mean ratio {h.mean_ratio:.4f}, "
                f"mean P+ share {h.mean_pos_share:.3f}; {h.distinct} distinct tokens seen >= {result.min_count} times"]
        width = min(max([len("least amplified")] + [len(t.token) for t in h.top + h.bottom]), 28)
        for title, stats in (("most amplified", h.top), ("least amplified", h.bottom)):
            if not stats:
                continue
            out.append(f"  {title:<{width}}   ratio     std  P+ share  count")
            for t in stats:
                token = t.token if len(t.token) <= width else t.token[:width - 1] + "…"
                out.append(f"  {token:<{width}}  {t.mean_ratio:>6.4f}  {t.std_ratio:>6.4f}  "
                           f"{t.mean_pos_share:>8.3f}  {t.count:>5}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- command
def _layer_list(text: str) -> list[int]:
    from .cli import _int_list  # one parser of layer lists for every command

    return _int_list(text)


def _finite_float(text: str) -> float:
    from .cli import _finite_float as parse  # the CLI's number checks, for one wording everywhere

    return parse(text)


def _positive_int(text: str) -> int:
    from .cli import _positive_int as parse

    return parse(text)


def add_inspect_parser(subparsers, add_model_args) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand to ``subparsers``; ``add_model_args(parser)`` adds the model options."""
    p = subparsers.add_parser("inspect", help="which tokens' keys the edit amplifies most, in the most affected heads")
    add_model_args(p)
    p.add_argument("--heads", type=_positive_int, default=6, help="inspect the N most affected heads (default 6)")
    p.add_argument("--top", type=_positive_int, default=15, help="most / least amplified tokens shown per head (default 15)")
    p.add_argument("--texts", help="text file, one text per line (default: our synthetic contexts, "
                                   f"generate_triplets({DEFAULT_TEXT_COUNT}, seed={DEFAULT_TEXT_SEED}))")
    p.add_argument("--min-count", type=_positive_int, default=3, help="ignore tokens seen fewer times (default 3)")
    p.add_argument("--rank-by", choices=RANK_BY, default="rms",
                   help="head ranking: rms = ‖M‖_F/√d (default), spectral = ‖M‖₂, "
                        "shift = the head's key shift")
    p.add_argument("--gain-pos", type=_finite_float, help="g+ (default: the projection's)")
    p.add_argument("--gain-neg", type=_finite_float, help="g- (default: the projection's)")
    p.add_argument("--layers", type=_layer_list, help="edited layers, e.g. 14-23 (default: the projection's)")
    p.add_argument("--all-heads", action="store_true", help="ignore the head mask (edit every head of the layers)")
    p.add_argument("--chat", action="store_true", help="run each text through the chat template")
    p.add_argument("--include-special", action="store_true", help="measure special tokens (BOS...) too")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="texts per forward pass (default 8)")
    p.add_argument("--json", metavar="OUT", help="also write the head ranking and the token tables as JSON")
    p.set_defaults(func=inspect_main)
    return p


def read_texts(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InspectionError(f"cannot read texts from {str(path)!r}: {exc}") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise InspectionError(f"{str(path)!r} holds no non-empty lines")
    return texts


def inspect_main(args, model=None) -> int:
    """``seka-rag inspect``: print the head ranking and the token tables (``model``: an already loaded one)."""
    for name in ("heads", "top", "min_count", "batch_size"):
        _check_positive_int("--" + name.replace("_", "-"), getattr(args, name))
    texts = read_texts(args.texts) if args.texts else None
    if model is None:
        from .cli import _model_spec, load_model

        spec = _model_spec(args)
        spec.update(adaptive=False, experts=None, router=None)
        model = load_model(**spec)
    if model.projection is None:
        raise InspectionError("the model has no projection to inspect: pass --projection")
    config = SteeringConfig(gain_pos=args.gain_pos, gain_neg=args.gain_neg, layers=args.layers,
                            heads="all" if args.all_heads else None)
    effects = head_effects(model.projection, config, rank_by=args.rank_by)
    result = token_amplification(model, texts, args.heads, top=args.top, min_count=args.min_count,
                                 batch_size=args.batch_size, progress=sys.stderr.isatty() and not args.no_progress, config=config,
                                 chat=args.chat, skip_special=not args.include_special, rank_by=args.rank_by,
                                 source=args.texts)
    print(format_inspection(result, effects))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(effects=[asdict(e) for e in effects], **result.to_dict())
        out.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {out}")
    return 0


__all__ = [
    "HeadEffect", "HeadTokens", "TokenAmplification", "TokenStat", "add_inspect_parser", "default_texts",
    "format_effects", "format_inspection", "head_effects", "inspect_main", "most_affected", "read_texts",
    "token_amplification", "visible_token",
]
