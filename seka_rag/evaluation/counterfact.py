"""Knowledge conflict in the CounterFact format: does the highlighted *new* fact beat the model's old one?

Every item is one prompt (the PASTA / SEKA CounterFact setting)::

    Previously, <old fact>. Currently, <new fact>. <question>

with the new fact highlighted, where ``<question>`` is a cloze prompt whose next token is the
answer (``"The mother tongue of Danielle Darrieux is"``). **Efficacy** is the share of items where
P(first token of the new target) > P(first token of the old target) right after the prompt; an
exact tie between two different tokens is a miss. An item whose two targets share their first token
(``"New York"`` / ``"New Delhi"``) carries no evidence either way: it is left out of every figure and
of n, and counted in ``n_tied``.

Sources (:func:`counterfact_items`):

* a ``counterfact.json`` file in the public CounterFact format (Meng et al., 2022, "ROME"), read by
  :func:`load_counterfact` — a JSON list of records::

      {"case_id": 0,
       "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                             "target_new": {"str": "English"}, "target_true": {"str": "French"},
                             "relation_id": "P103"},
       "paraphrase_prompts": [...], "neighborhood_prompts": [...], "generation_prompts": [...]}

  (JSON lines and ``.gz`` are read too). Nothing of CounterFact ships with this project.
* our own items (:func:`generated_counterfact_items`): the real-world facts of
  :mod:`seka_rag.evaluation.conflict` whose statement ends with the answer (the old target is the
  true answer, the new one the plausible wrong alternative: the new fact contradicts the model's
  prior, as in CounterFact), and fictional facts from the invented entities and relations of
  :mod:`seka_rag.data.triplets` (both targets invented). By default only entities of the ``test``
  split (:func:`~seka_rag.evaluation.conflict.split_of`) are used, like the other evaluations, and
  the two targets start with different letters, so their first tokens differ (each target is tokenised
  as it continues the prompt, :func:`~seka_rag.evaluation.scoring.continuation_ids`, so a tokenizer
  that marks the start of a text does not give both the same lone "▁" first token).

Scoring: :func:`score_counterfact` computes both first-token log-probabilities with SEKA (extra
keywords forwarded) or any baseline method (``method=``). :func:`counterfact_family_items` turns the
items into :class:`~seka_rag.evaluation.families.FamilyItem` s whose ``target`` / ``others`` are the
two *first-token strings*, so that :func:`~seka_rag.evaluation.families.evaluate_family` and every
method's ``score_items`` give the same efficacy (a one-token continuation's log-probability is the
first-token log-probability).
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.triplets import RELATIONS, Namer, Relation
from .conflict import real_conflict_items, split_of
from .records import read_records
from .scoring import continuation_ids, continuation_logprobs, method_settings
from .stats import format_ci, group_shares, mean_ci, share_ci

#: Items generated when ``n`` is not given (half real, half fictional).
DEFAULT_N = 200

#: The prompt of every item.
PROMPT_TEMPLATE = "Previously, {old}. Currently, {new}. {question}"

#: Which question a loaded record is asked with: its rewrite prompt, or its first paraphrase prompt.
QUESTIONS = ("prompt", "paraphrase")

_MARKER_STRINGS = ("<<", ">>")


@dataclass(frozen=True)
class CounterfactItem:
    """One CounterFact-style item.

    ``prompt`` is the full text (``Previously, <old_fact>. Currently, <new_fact>. <question>``),
    ``highlight`` the new fact as it occurs there (exactly once), ``question`` the cloze prompt the
    targets continue; ``target_new`` should win over ``target_true``. ``kind`` is ``"counterfact"``
    (loaded), ``"real"`` or ``"fictional"`` (generated).
    """

    case_id: str
    subject: str
    relation: str
    question: str
    target_new: str
    target_true: str
    old_fact: str
    new_fact: str
    prompt: str
    highlight: str
    kind: str
    paraphrases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["paraphrases"] = list(self.paraphrases)
        return out


def _inline(sentence: str, subject: str = "") -> str:
    """A sentence as it reads after ``Previously, ``: a plain capitalised first word is lower-cased.

    Kept as is when the sentence starts with the subject or its first word is not a plain
    title-case word (``NASA``, ``iPhone``, ``McLaren``). A proper noun other than the subject at the
    start of a sentence is lower-cased too: a cosmetic limit of this heuristic.
    """
    if subject and sentence.startswith(subject):
        return sentence
    first, _, rest = sentence.partition(" ")
    core = first.rstrip(",;:")
    if core.isalpha() and core[:1].isupper() and (len(core) == 1 or core[1:].islower()):
        return first[:1].lower() + first[1:] + (" " + rest if rest else "")
    return sentence


def _sentence(text: str, subject: str = "") -> str:
    """Upper-case the first character, unless the text starts with the subject's own spelling (``iPhone``)."""
    if subject and text.startswith(subject):
        return text
    return text[:1].upper() + text[1:]


def make_item(
    subject: str,
    question: str,
    target_new: str,
    target_true: str,
    *,
    fact_prompt: str | None = None,
    case_id: str = "",
    relation: str = "",
    kind: str = "counterfact",
    paraphrases: Sequence[str] = (),
) -> CounterfactItem | None:
    """Build an item; ``fact_prompt`` (default ``question``) + target states each fact.

    Returns None when the item cannot be scored cleanly: an empty field, equal targets, marker
    strings (``<<`` / ``>>``) in the text, or a new fact that does not occur exactly once in the prompt.
    """
    target_new, target_true = target_new.strip(), target_true.strip()
    question = " ".join(question.split())
    fact_prompt = question if fact_prompt is None else " ".join(fact_prompt.split())
    if not (subject and question and fact_prompt and target_new and target_true):
        return None
    if target_new.lower() == target_true.lower():
        return None
    old = _inline(_sentence(f"{fact_prompt} {target_true}", subject), subject)
    new = _inline(_sentence(f"{fact_prompt} {target_new}", subject), subject)
    question = _sentence(question, subject)
    prompt = PROMPT_TEMPLATE.format(old=old.rstrip("."), new=new.rstrip("."), question=question)
    highlight = new.rstrip(".")
    if any(m in prompt for m in _MARKER_STRINGS) or prompt.count(highlight + ".") != 1:
        return None
    highlight = highlight + "."  # the full stop makes a new fact that prefixes the old one unique
    return CounterfactItem(case_id=str(case_id), subject=subject, relation=relation, question=question,
                           target_new=target_new, target_true=target_true, old_fact=old.rstrip("."),
                           new_fact=new.rstrip("."), prompt=prompt, highlight=highlight, kind=kind,
                           paraphrases=tuple(paraphrases))


# ---------------------------------------------------------------------------------------------
# Loading the public format


def read_json_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON list file or a JSON-lines file (``.gz`` too); :class:`ValueError` naming the
    file (and line) for anything else."""
    return read_records(path)


def _target(value: Any, where: str) -> str:
    original = value
    if isinstance(value, Mapping):
        value = value.get("str")
    if not isinstance(value, str):
        raise ValueError(f"{where} must be {{'str': ...}} or a string, got {original!r}")
    return value


def record_item(record: Mapping[str, Any], index: int = 0, *, question: str = "prompt") -> CounterfactItem | None:
    """The item of one CounterFact record (None when it cannot be scored cleanly, see :func:`make_item`).

    Raises :class:`ValueError` for a record that does not follow the format.
    """
    if question not in QUESTIONS:
        raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
    rewrite = record.get("requested_rewrite")
    if isinstance(rewrite, list):  # some releases wrap the rewrite in a one-element list
        rewrite = rewrite[0] if rewrite else None
    if not isinstance(rewrite, Mapping):
        raise ValueError(f"record {index}: no 'requested_rewrite' object")
    template, subject = rewrite.get("prompt"), rewrite.get("subject")
    if not isinstance(template, str) or "{}" not in template or not isinstance(subject, str):
        raise ValueError(f"record {index}: requested_rewrite needs a 'prompt' with '{{}}' and a 'subject'")
    new = _target(rewrite.get("target_new"), f"record {index}: target_new")
    true = _target(rewrite.get("target_true"), f"record {index}: target_true")
    fact_prompt = template.replace("{}", subject)
    paraphrases = tuple(str(p) for p in record.get("paraphrase_prompts") or [])
    asked = paraphrases[0] if question == "paraphrase" and paraphrases else fact_prompt
    return make_item(subject, asked, new, true, fact_prompt=fact_prompt,
                     case_id=str(record.get("case_id", index)), relation=str(rewrite.get("relation_id", "")),
                     kind="counterfact", paraphrases=paraphrases)


def load_counterfact(
    source: str | os.PathLike | Iterable[Mapping[str, Any]], *, question: str = "prompt"
) -> list[CounterfactItem]:
    """Items of a ``counterfact.json`` file (or of already loaded records), in file order.

    Records that cannot be scored cleanly (see :func:`make_item`) are skipped with a warning
    saying how many; a record not in the format raises :class:`ValueError`.
    """
    records = read_json_records(source) if isinstance(source, (str, os.PathLike)) else list(source)
    items, skipped = [], 0
    for i, record in enumerate(records):
        item = record_item(record, i, question=question)
        if item is None:
            skipped += 1
        else:
            items.append(item)
    if skipped:
        warnings.warn(f"skipped {skipped} of {len(records)} CounterFact records that cannot be scored cleanly",
                      stacklevel=2)
    return items


# ---------------------------------------------------------------------------------------------
# Our own items


def _different_start(a: str, b: str) -> bool:
    """Both targets start with a letter, and with different letters (case-insensitively): their first tokens
    differ on any tokenizer, also after a leading space (digits may get a space token of their own)."""
    return a[:1].isalpha() and b[:1].isalpha() and a[:1].lower() != b[:1].lower()


def real_counterfact_items(split: str | None = "test") -> list[CounterfactItem]:
    """Items from the real-world facts of :mod:`seka_rag.evaluation.conflict` (old = true, new = wrong).

    Only facts whose statement ends with the answer give a cloze question (the statement with the
    answer cut off, the same for both answers), and only those whose answers start with different
    letters (not digits: some tokenizers give a leading space its own token before a digit). ``split`` (``"dev"``, ``"test"`` or None for all) filters by entity.
    """
    out = []
    for it in real_conflict_items():
        if split is not None and split_of(it.subject) != split:
            continue
        a, b = it.statement_a, it.statement_b
        if not (a.endswith(it.answer_a + ".") and b.endswith(it.answer_b + ".")):
            continue
        cloze_a, cloze_b = a[: -len(it.answer_a) - 1].rstrip(), b[: -len(it.answer_b) - 1].rstrip()
        if cloze_a != cloze_b or not _different_start(it.answer_a, it.answer_b):
            continue
        item = make_item(it.subject, cloze_a, it.answer_b, it.answer_a, case_id=f"real-{len(out)}",
                         relation=it.relation, kind="real")
        if item is not None:
            out.append(item)
    return out


def _cloze_templates(rel: Relation) -> list[str]:
    """Statement templates of ``rel`` ending with ``{a}.``, cut before the answer (no ``{an}``: it leaks)."""
    return [t[: -len("{a}.")].rstrip() for t in rel.statements if t.endswith(" {a}.") and "{an}" not in t
            and t.count("{a}") == 1]


#: Fictional relations usable for cloze items: short answers that start with a letter.
_CLOZE_RELATIONS: tuple[Relation, ...] = tuple(r for r in RELATIONS if r.short and _cloze_templates(r))


def _fictional_case_id(seed: int, index: int) -> str:
    """``fictional-3`` for the test seed 0 (as stored results name them); ``fictional-s1-3`` for other seeds,
    whose items differ, so that per-item results of different seeds never share an id."""
    return f"fictional-{index}" if seed == 0 else f"fictional-s{seed}-{index}"


def fictional_counterfact_items(n: int, seed: int = 0, split: str | None = "test") -> list[CounterfactItem]:
    """``n`` items about invented entities (relations cycled in a seeded order; distinct subjects).

    Both targets are drawn from the relation's answer generator, start with a letter, and start
    with different letters.
    """
    rng = random.Random(f"counterfact-fictional-{seed}")
    namer = Namer(rng)
    out: list[CounterfactItem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        order = list(_CLOZE_RELATIONS)
        rng.shuffle(order)
        for rel in order:
            if len(out) >= n:
                break
            for _ in range(50):
                attempts += 1
                if attempts > 500 * n + 1000:  # pragma: no cover - the generator never gets this stuck
                    raise RuntimeError("could not generate enough fictional CounterFact items")
                subject = namer.subject(rel.subject)
                if subject.lower() in seen or (split is not None and split_of(subject) != split):
                    continue
                new, true = rel.answer(namer), rel.answer(namer)
                if not _different_start(new, true):
                    continue
                if new.lower() in subject.lower() or true.lower() in subject.lower():
                    continue
                templates = _cloze_templates(rel)
                tpl = templates[rng.randrange(len(templates))]
                cloze = _sentence(tpl.format(s=subject, S=_sentence(subject)))
                item = make_item(subject, cloze, new, true, case_id=_fictional_case_id(seed, len(out)), relation=rel.name,
                                 kind="fictional")
                if item is not None:
                    seen.add(subject.lower())
                    out.append(item)
                    break
    return out


def generated_counterfact_items(n: int = DEFAULT_N, seed: int = 0, split: str | None = "test") -> list[CounterfactItem]:
    """``n`` items of our own: up to ``ceil(n / 2)`` real-world ones (a seeded sample), the rest fictional,
    alternating real / fictional while both last."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    real = real_counterfact_items(split)
    random.Random(f"counterfact-real-{seed}").shuffle(real)
    real = real[: min(len(real), math.ceil(n / 2))]
    fictional = fictional_counterfact_items(n - len(real), seed, split)
    out: list[CounterfactItem] = []
    for i in range(max(len(real), len(fictional))):
        out.extend(x[i] for x in (real, fictional) if i < len(x))
    return out


def counterfact_items(
    source: str | os.PathLike | Iterable[Mapping[str, Any]] | None = None,
    n: int | None = None,
    seed: int = 0,
    *,
    question: str = "prompt",
    split: str | None = "test",
) -> list[CounterfactItem]:
    """CounterFact-format items: ``source=None`` generates our own (:func:`generated_counterfact_items`,
    ``n`` default :data:`DEFAULT_N`); a path (or a list of records) loads the public format.

    With a file, ``n`` draws a seeded random sample of ``n`` items (in file order); None keeps every
    item. ``question`` (loaded records only) picks the rewrite prompt or its first paraphrase.
    ``split`` applies to generated items only.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if source is None:
        return generated_counterfact_items(DEFAULT_N if n is None else n, seed, split)
    items = load_counterfact(source, question=question)
    if n is None:
        return items
    if n > len(items):
        usable = f"{len(items)} usable item{'' if len(items) == 1 else 's'}"
        raise ValueError(f"the CounterFact source has {usable}; asked for {n} (ask for at most {len(items)}: on "
                         f"the command line, --items counterfact={len(items)})")
    keep = sorted(random.Random(f"counterfact-sample-{seed}").sample(range(len(items)), n))
    return [items[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# Scoring


def first_token_ids(model, item: CounterfactItem, chat: bool | None = None) -> tuple[int, int]:
    """(first token of the new target, first token of the old target), as continuations of the prompt."""
    new = continuation_ids(model, item.target_new, chat)[0]
    old = continuation_ids(model, item.target_true, chat)[0]
    return new, old


def score_counterfact(
    model,
    items: Sequence[CounterfactItem],
    *,
    method: Any = None,
    batch_size: int = 8,
    chat: bool | None = None,
    progress: bool = False,
    **steer_kwargs: Any,
) -> list[tuple[float, float]]:
    """(log P(first token of new target), log P(first token of old target)) of every item, in item order.

    The prompt is encoded with the new fact highlighted; ``method`` (None: SEKA) and
    ``steer_kwargs`` as in :func:`~seka_rag.evaluation.scoring.continuation_logprobs`
    (``steer=False`` for the unsteered model).
    """
    rows = []
    for item in items:
        new, old = first_token_ids(model, item, chat)
        rows.append((item.prompt, [item.highlight], [new]))
        rows.append((item.prompt, [item.highlight], [old]))
    got = continuation_logprobs(model, rows, method=method, batch_size=batch_size, chat=chat, progress=progress,
                                **steer_kwargs)
    return [(got[2 * i], got[2 * i + 1]) for i in range(len(items))]


@dataclass
class CounterfactReport:
    """Result of :func:`evaluate_counterfact`.

    ``efficacy`` is the share of items with log P(new first token) strictly above log P(old first
    token) (an equal pair is a miss), with a seeded bootstrap 95 % interval; ``mean_margin`` the mean
    first-token log-probability difference (nats) with its interval; ``groups`` / ``group_n`` the
    efficacy and size per ``kind``. Items whose two targets share their first token ("New York" /
    "New Delhi") say nothing about which target the model prefers: they are left out of every figure,
    and of ``n``, and counted in ``n_tied``, as the calibration leaves such cases out.
    """

    n: int
    efficacy: float
    ci_low: float
    ci_high: float
    mean_margin: float
    margin_ci: tuple[float, float]
    n_tied: int
    groups: dict[str, float] = field(default_factory=dict)
    group_n: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list, repr=False)
    case_ids: list[str] = field(default_factory=list, repr=False)
    kinds: list[str] = field(default_factory=list, repr=False)  #: each scored item's ``kind``, as ``margins``

    def to_dict(self, include_items: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``include_items=False`` leaves out the per-item margins."""
        out = {
            "family": "counterfact", "n": self.n, "efficacy": self.efficacy, "ci_low": self.ci_low,
            "ci_high": self.ci_high, "mean_margin": self.mean_margin, "margin_ci": list(self.margin_ci),
            "n_tied": self.n_tied, "groups": dict(self.groups), "group_n": dict(self.group_n),
            "settings": dict(self.settings),
        }
        if include_items:
            out["items"] = [{"case_id": c, "margin": m} for c, m in zip(self.case_ids, self.margins)]
        return out

    def cell(self) -> str:
        """``"efficacy [lo, hi]"`` in percent."""
        return format_ci(self.efficacy, self.ci_low, self.ci_high)


def counterfact_report(items: Sequence[CounterfactItem], scores: Sequence[tuple[float, float]], *,
                       tied: Sequence[bool] | None = None, n_boot: int = 2000, seed: int = 0,
                       settings: dict[str, Any] | None = None) -> CounterfactReport:
    """Summarise per-item (new, old) first-token log-probabilities (see :class:`CounterfactReport`)."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    if not items:
        raise ValueError("no items to report on")
    if tied is not None and len(tied) != len(items):
        raise ValueError(f"{len(items)} items but {len(tied)} tie flags")
    # two targets with the same first token score the same token: no evidence either way, so the
    # item is left out (comparing the scores would only compare padding's rounding differences)
    kept = [i for i in range(len(items)) if tied is None or not tied[i]]
    if not kept:
        raise ValueError(f"every one of the {len(items)} items has two targets that share their first token: "
                         "first-token efficacy cannot tell them apart")
    margins = [float(scores[i][0] - scores[i][1]) for i in kept]
    hits = [m > 0 for m in margins]
    efficacy, lo, hi = share_ci(hits, n_boot, seed)
    mean, mlo, mhi = mean_ci(margins, n_boot, seed)
    kinds = [items[i].kind for i in kept]
    groups, group_n = group_shares(kinds, hits)
    return CounterfactReport(
        n=len(kept), efficacy=efficacy, ci_low=lo, ci_high=hi, mean_margin=mean, margin_ci=(mlo, mhi),
        n_tied=len(items) - len(kept), groups=groups, group_n=group_n, settings=dict(settings or {}),
        margins=margins, case_ids=[items[i].case_id for i in kept], kinds=kinds,
    )


def evaluate_counterfact(
    model,
    items: Sequence[CounterfactItem],
    *,
    method: Any = None,
    batch_size: int = 8,
    chat: bool | None = None,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    **steer_kwargs: Any,
) -> CounterfactReport:
    """Efficacy of ``method`` (None: SEKA with ``steer_kwargs``; ``steer=False``: unsteered) on ``items``."""
    if not items:
        raise ValueError("no items to evaluate")
    tied = [len(set(first_token_ids(model, it, chat))) == 1 for it in items]
    scores = score_counterfact(model, items, method=method, batch_size=batch_size, chat=chat, progress=progress,
                               **steer_kwargs)
    settings = method_settings(method, steer_kwargs)
    if chat is not None:
        settings["chat"] = chat
    return counterfact_report(items, scores, tied=tied, n_boot=n_boot, seed=seed, settings=settings)


def counterfact_family_items(model, items: Sequence[CounterfactItem], *, chat: bool | None = None,
                             strict: bool = False) -> list:
    """The items as :class:`~seka_rag.evaluation.families.FamilyItem` s (family ``"counterfact"``) whose
    ``target`` / ``others`` are the *first-token strings* of the new / old target.

    Scored by :func:`~seka_rag.evaluation.families.score_items` (or a method's ``score_items``),
    each continuation is that single token, so the margin is the first-token log-probability
    difference and the family share is the efficacy. ``chat`` must match how the model encodes
    prompts (``None``: the model's default), since it decides whether the token carries a leading
    space. A token whose decoded text does not tokenise back to itself (e.g. part of a multi-byte
    character) cannot be expressed this way: the item is dropped with a warning (``strict=True``:
    :class:`ValueError`). An item whose two targets share their first token is left out with a
    warning, whatever ``strict`` is. ``group`` is the item's ``kind``, ``subject`` its ``case_id``.
    """
    from .families import FamilyItem

    out, dropped, tied = [], 0, 0
    tok = model.tokenizer
    for item in items:
        new_id, old_id = first_token_ids(model, item, chat)
        if new_id == old_id:  # no first-token evidence either way (see CounterfactReport)
            tied += 1
            continue
        strings = [tok.decode([new_id]), tok.decode([old_id])]
        if any(not s or continuation_ids(model, s, chat) != [t] for s, t in zip(strings, (new_id, old_id))):
            if strict:
                raise ValueError(f"item {item.case_id}: a first token does not round-trip through the tokenizer")
            dropped += 1
            continue
        out.append(FamilyItem("counterfact", item.prompt, item.highlight, strings[0], (strings[1],), item.kind,
                              item.case_id))
    if dropped:
        warnings.warn(f"dropped {dropped} CounterFact items whose first token does not round-trip", stacklevel=2)
    if tied:
        warnings.warn(f"left out {tied} CounterFact items whose two targets share their first token", stacklevel=2)
    return out


__all__ = [
    "DEFAULT_N",
    "PROMPT_TEMPLATE",
    "CounterfactItem",
    "CounterfactReport",
    "counterfact_family_items",
    "counterfact_items",
    "counterfact_report",
    "evaluate_counterfact",
    "fictional_counterfact_items",
    "first_token_ids",
    "generated_counterfact_items",
    "load_counterfact",
    "make_item",
    "read_json_records",
    "real_counterfact_items",
    "record_item",
    "score_counterfact",
]
