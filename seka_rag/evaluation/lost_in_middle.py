"""Lost in the middle, real passages: does highlighting help a model use the gold passage wherever it is?

Built from the NQ-open "oracle" file of the Lost-in-the-Middle study (Liu et al., 2023; one JSON
object per line: ``question``, ``answers``, ``ctxs`` with the gold passage marked ``isgold``). The
file is read from a path at run time; nothing of it ships with this project.

Items (:func:`lost_in_middle_items`): for each of ``n_questions`` questions (default 50), a context
of ``n_passages`` passages (default 10) — its gold passage and gold passages of *other* questions as
distractors (seeded per question; a distractor never contains one of the question's answers,
compared case-insensitively and after SQuAD normalisation, and never equals the gold passage) —
with the gold passage at the **first**, **middle** and **last** position (0-based 0,
``(n_passages - 1) // 2`` and ``n_passages - 1``: Documents 1, 5 and 10 of 10). The distractors and
their order are the same at every position; only the gold passage moves. The prompt::

    Write a high-quality answer ... Reply with the answer only, in a few words.

    Document [1] (Title: ...) text
    ...
    Document [10] (Title: ...) text

    Question: who got the first nobel prize in physics

Highlight policies (a highlight is a passage's ``(Title: ...) text``, every selected passage):

``"gold"``       the gold passage (an oracle upper bound).
``"middle"``     the middle passages, wherever the gold one is (the SEKA paper's lost-in-the-middle
                 setting): ``max(1, round(0.4 · n_passages))`` passages centred in the context —
                 0-based 3..6, i.e. Documents 4–7 of 10 (:func:`middle_window`; ``middle=`` overrides).
``"retriever"``  the top ``k`` (default 3) passages by cosine similarity between the question's and
                 each passage's all-MiniLM-L6-v2 embedding (:func:`seka_rag.embeddings.embed`; any
                 ``encoder=`` accepted there can be injected); ties go to the earlier passage.

Metrics (:func:`evaluate_lost_in_middle`), per gold position and policy:

(a) the change of log p(first gold answer), scored as the assistant's continuation (no leading
    space in chat mode), steered by the method minus unsteered (``steer=False``, same prompt):
    its mean with a bootstrap 95 % interval and the share of rises;
(b) best-subspan exact match of the greedy answer (up to ``max_new_tokens``, default 100 as in the
    Lost-in-the-Middle code): any SQuAD-normalised gold answer (lower case,
    punctuation and the articles a / an / the removed, whitespace collapsed) is a substring of the
    normalised first line of the answer (:func:`answer_line`), as in the Lost-in-the-Middle code —
    with its interval, and the unsteered EM for comparison. Three details differ from that code, so
    figures are close to, not exactly, comparable with the paper's: leading whitespace is dropped
    before the first line is cut (an answer that opens with a blank line is scored on its next line,
    not as empty), Unicode punctuation is removed too (SQuAD removes ASCII punctuation), and a gold
    answer that normalises to nothing never matches.
"""

from __future__ import annotations

import math
import os
import random
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .records import read_records
from .scoring import continuation_ids, continuation_logprobs, generate_texts, method_settings
from .stats import mean_ci, share_ci

#: Questions when ``n_questions`` is not given.
DEFAULT_QUESTIONS = 50
#: Passages per context by default.
DEFAULT_PASSAGES = 10
#: Gold positions, in report order.
POSITIONS: tuple[str, ...] = ("first", "middle", "last")
#: Highlight policies, in report order.
POLICIES: tuple[str, ...] = ("gold", "middle", "retriever")
#: First NQ-open question of the dev items; questions before it are the test items.
DEV_FIRST_QUESTION = 2000
#: Passages the retriever policy highlights by default.
DEFAULT_K = 3
#: Greedy answer length for exact match: 100 new tokens, as in the Lost-in-the-Middle code. A shorter
#: cap cuts off answers that restate a passage before naming the answer (with 24 tokens, 7 of 18
#: unsteered and 11 of 18 SEKA answers on dev questions 2000-2005, 10 passages, ran into the cap), so
#: it scores answer length as much as use of the context.
DEFAULT_MAX_NEW_TOKENS = 100

INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant). Reply with the answer only, in a few words."
)
DOCUMENT_TEMPLATE = "Document [{index}] {content}"
_MARKER_STRINGS = ("<<", ">>")


# ---------------------------------------------------------------------------------------------
# Answers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation removed (ASCII and Unicode), articles removed,
    whitespace collapsed."""
    text = text.lower()
    text = "".join(c for c in text if c not in string.punctuation and not unicodedata.category(c).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_line(prediction: str) -> str:
    """The part of a generated answer that is scored: its first line (leading whitespace dropped), as
    the Lost-in-the-Middle evaluation script cuts it, so later lines that copy the context never count."""
    return prediction.strip().split("\n", 1)[0]


def best_subspan_em(prediction: str, answers: Sequence[str]) -> bool:
    """Whether any normalised gold answer is a substring of the normalised prediction's first line.

    Only :func:`answer_line` counts. Answers that normalise to nothing (``"The"``) never match; an
    empty prediction never matches.
    """
    pred = normalize_answer(answer_line(prediction))
    if not pred:
        return False
    return any(gold and gold in pred for gold in (normalize_answer(a) for a in answers))


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether ``text`` contains an answer: as a case-insensitive substring, or as a run of whole
    normalised words (``"U.S."`` in ``"the US army"``)."""
    lowered = text.lower()
    norm = f" {normalize_answer(text)} "
    for a in answers:
        if a.strip() and a.lower() in lowered:
            return True
        na = normalize_answer(a)
        if na and f" {na} " in norm:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class NQRecord:
    """One NQ-open question with its answers and its gold passage."""

    index: int
    question: str
    answers: tuple[str, ...]
    title: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["answers"] = list(self.answers)
        return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a ``.jsonl`` or ``.jsonl.gz`` file (or of a JSON list); :class:`ValueError` naming
    the file and line for a line that is not a JSON object."""
    return read_records(path)


def nq_record(record: Mapping[str, Any], index: int) -> NQRecord:
    """A raw record as :class:`NQRecord`: the ``ctxs`` entry marked ``isgold`` (else the first) is the gold
    passage; whitespace in its text is collapsed. :class:`ValueError` for a malformed record."""
    question, answers, ctxs = record.get("question"), record.get("answers"), record.get("ctxs")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"record {index}: no question")
    if not isinstance(answers, list) or not [a for a in answers if isinstance(a, str) and a.strip()]:
        raise ValueError(f"record {index}: no answers")
    if not isinstance(ctxs, list) or not ctxs or not all(isinstance(c, Mapping) for c in ctxs):
        raise ValueError(f"record {index}: no passages ('ctxs')")
    gold = next((c for c in ctxs if c.get("isgold")), ctxs[0])
    text = " ".join(str(gold.get("text") or "").split())
    if not text:
        raise ValueError(f"record {index}: the gold passage has no text")
    return NQRecord(index, " ".join(question.split()), tuple(str(a) for a in answers if str(a).strip()),
                    " ".join(str(gold.get("title") or "").split()), text)


def load_nq(source: str | os.PathLike | Iterable[Mapping[str, Any]]) -> list[NQRecord]:
    """Records of an NQ-open oracle file (path) or of already loaded dicts, in order."""
    raw = read_jsonl(source) if isinstance(source, (str, os.PathLike)) else list(source)
    return [nq_record(r, i) for i, r in enumerate(raw)]


# ---------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class Passage:
    """A passage of a context: a record's gold passage (``source`` is that record's index)."""

    title: str
    text: str
    source: int
    is_gold: bool

    @property
    def content(self) -> str:
        """``(Title: ...) text``: what is shown after ``Document [i]`` and highlighted."""
        return f"(Title: {self.title}) {self.text}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class LostInMiddleItem:
    """One context: ``passages`` with the gold one at ``gold_position`` (0-based; ``position`` its label)."""

    index: int
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...]
    gold_position: int
    position: str
    prompt: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (passages included)."""
        out = asdict(self)
        out["answers"] = list(self.answers)
        out["passages"] = [asdict(p) for p in self.passages]
        return out


def gold_index(position: str, n_passages: int) -> int:
    """0-based slot of the gold passage for a position label (``"first"``, ``"middle"``, ``"last"``)."""
    if position == "first":
        return 0
    if position == "middle":
        return (n_passages - 1) // 2
    if position == "last":
        return n_passages - 1
    raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")


def middle_window(n_passages: int) -> range:
    """0-based slots the ``"middle"`` policy highlights: ``max(1, round(0.4 · n))`` centred slots (3..6 of 10)."""
    width = max(1, round(0.4 * n_passages))
    start = (n_passages - width) // 2
    return range(start, start + width)


def render_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The prompt of a context (see the module docstring)."""
    docs = "\n".join(DOCUMENT_TEMPLATE.format(index=i + 1, content=p.content) for i, p in enumerate(passages))
    return f"{INSTRUCTION}\n\n{docs}\n\nQuestion: {question}"


def _clean(text: str) -> bool:
    return not any(m in text for m in _MARKER_STRINGS)


def _distractors(records: Sequence[NQRecord], index: int, count: int, seed: int) -> list[Passage]:
    record = records[index]
    rng = random.Random(f"lost-in-middle-{seed}-{index}")
    order = [j for j in range(len(records)) if j != index]
    rng.shuffle(order)
    seen = {(record.title, record.text)}
    out: list[Passage] = []
    for j in order:
        if len(out) == count:
            break
        other = records[j]
        key = (other.title, other.text)
        content = f"{other.title} {other.text}"
        if key in seen or not _clean(content) or contains_answer(content, record.answers):
            continue
        seen.add(key)
        out.append(Passage(other.title, other.text, j, False))
    if len(out) < count:
        raise ValueError(f"question {index}: only {len(out)} usable distractors in the data (need {count})")
    return out


def build_items(
    records: Sequence[NQRecord],
    n_questions: int = DEFAULT_QUESTIONS,
    *,
    n_passages: int = DEFAULT_PASSAGES,
    positions: Sequence[str] = POSITIONS,
    seed: int = 0,
    first: int = 0,
) -> list[LostInMiddleItem]:
    """Items of questions ``first .. first + n_questions - 1``, one per gold position, question by question.

    Distractors are drawn for each question by ``random.Random(f"lost-in-middle-{seed}-{index}")``
    from the gold passages of every other record (so an item does not depend on how many questions
    are built) and kept in the same order at every position.
    """
    for name, value in (("n_questions", n_questions), ("first", first)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages < 3:
        raise ValueError(f"n_passages must be an integer >= 3, got {n_passages!r}")
    positions = tuple(positions)
    if not positions or any(p not in POSITIONS for p in positions):
        raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {positions!r}")
    if first + n_questions > len(records):
        raise ValueError(f"asked for records {first}..{first + n_questions - 1}; the data has {len(records)}")
    items = []
    for index in range(first, first + n_questions):
        record = records[index]
        gold = Passage(record.title, record.text, index, True)
        if not _clean(f"{record.question} {gold.content}"):
            raise ValueError(f"question {index} holds a highlight marker ('<<' or '>>')")
        distractors = _distractors(records, index, n_passages - 1, seed)
        for label in positions:
            at = gold_index(label, n_passages)
            passages = tuple(distractors[:at] + [gold] + distractors[at:])
            items.append(LostInMiddleItem(index, record.question, record.answers, passages, at, label,
                                          render_prompt(record.question, passages)))
    return items


def lost_in_middle_items(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
    n_questions: int = DEFAULT_QUESTIONS,
    *,
    n_passages: int = DEFAULT_PASSAGES,
    positions: Sequence[str] = POSITIONS,
    seed: int = 0,
    first: int = 0,
) -> list[LostInMiddleItem]:
    """:func:`build_items` of an NQ-open oracle file (path, e.g. ``../shared/data/nq-open-oracle.jsonl.gz``)
    or of already loaded records."""
    return build_items(load_nq(source), n_questions, n_passages=n_passages, positions=positions, seed=seed,
                       first=first)


# ---------------------------------------------------------------------------------------------
# Highlight policies


@dataclass(frozen=True)
class LostInMiddleCase:
    """One item under one highlight policy: the highlighted passage slots and their texts."""

    item: int  #: index into the item list
    policy: str
    highlighted: tuple[int, ...]
    highlights: tuple[str, ...]
    gold_highlighted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"item": self.item, "policy": self.policy, "highlighted": list(self.highlighted),
                "highlights": list(self.highlights), "gold_highlighted": self.gold_highlighted}


def retriever_scores(items: Sequence[LostInMiddleItem], encoder: Any = None) -> list[list[float]]:
    """Cosine similarity between each item's question and each of its passages (in slot order).

    One embedding call per distinct question (its passages are the same set at every position).
    ``encoder``: as :func:`seka_rag.embeddings.embed` takes it (None: the offline all-MiniLM-L6-v2).
    """
    from ..embeddings import embed

    cache: dict[tuple[int, str], dict[str, float]] = {}
    out = []
    for item in items:
        key = (item.index, item.question)
        contents = [p.content for p in item.passages]
        if key not in cache or any(c not in cache[key] for c in contents):
            unique = sorted(set(contents))
            vectors = embed([item.question, *unique], encoder)
            sims = (vectors[1:] @ vectors[0]).tolist()
            cache[key] = dict(zip(unique, sims))
        out.append([float(cache[key][c]) for c in contents])
    return out


def top_k(scores: Sequence[float], k: int) -> tuple[int, ...]:
    """Slots of the ``k`` highest scores (ties: the earlier slot), in slot order."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return tuple(sorted(ranked[:k]))


def highlighted_slots(item: LostInMiddleItem, policy: str, *, k: int = DEFAULT_K,
                      scores: Sequence[float] | None = None, middle: tuple[int, int] | None = None) -> tuple[int, ...]:
    """0-based slots a policy highlights in ``item`` (``scores``: the retriever's, for ``"retriever"``;
    ``middle``: a half-open ``(start, stop)`` overriding :func:`middle_window`)."""
    n = len(item.passages)
    if policy == "gold":
        return (item.gold_position,)
    if policy == "middle":
        window = middle_window(n) if middle is None else range(*middle)
        slots = tuple(i for i in window if 0 <= i < n)
        if not slots:
            raise ValueError(f"middle window {middle!r} selects no passage of {n}")
        return slots
    if policy == "retriever":
        if scores is None:
            raise ValueError("the retriever policy needs the retriever's scores")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return top_k(scores, k)
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def lost_in_middle_cases(
    items: Sequence[LostInMiddleItem],
    policies: Sequence[str] = POLICIES,
    *,
    k: int = DEFAULT_K,
    encoder: Any = None,
    middle: tuple[int, int] | None = None,
) -> list[LostInMiddleCase]:
    """Every item under every policy (item-major). The retriever runs only when ``"retriever"`` is asked for."""
    policies = tuple(policies)
    if not policies or any(p not in POLICIES for p in policies):
        raise ValueError(f"policies must be a non-empty subset of {POLICIES}, got {policies!r}")
    scores = retriever_scores(items, encoder) if "retriever" in policies else [None] * len(items)
    cases = []
    for i, (item, sc) in enumerate(zip(items, scores)):
        for policy in policies:
            slots = highlighted_slots(item, policy, k=k, scores=sc, middle=middle)
            texts = tuple(item.passages[s].content for s in slots)
            for t in texts:
                if item.prompt.count(t) != 1:  # pragma: no cover - passages are distinct by construction
                    raise ValueError(f"item {i}: a highlighted passage does not occur exactly once")
            cases.append(LostInMiddleCase(i, policy, slots, texts, item.gold_position in slots))
    return cases


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class LostInMiddleCell:
    """Summary of one (gold position, policy) cell (``position="all"`` pools the positions).

    ``mean_delta`` / ``delta_ci``: mean log p(gold answer) change vs unsteered (nats) and its
    interval; ``share_rises`` / ``rises_ci``: share of contexts where it rose (one per question at a
    single position); ``em`` / ``em_ci``: best-subspan EM of the method's greedy answer, ``em_unsteered`` / ``em_unsteered_ci`` that of
    the unsteered answer (None without generation); ``answer_words`` / ``answer_words_unsteered``:
    mean length of those answers in words (highlighting can make a model restate the passage rather
    than answer briefly); ``gold_highlighted``: share of cases whose highlight covers the gold passage.
    """

    position: str
    policy: str
    n: int
    mean_delta: float
    delta_ci: tuple[float, float]
    share_rises: float
    rises_ci: tuple[float, float]
    gold_highlighted: float
    em: float | None = None
    em_ci: tuple[float, float] | None = None
    em_unsteered: float | None = None
    em_unsteered_ci: tuple[float, float] | None = None
    answer_words: float | None = None
    answer_words_unsteered: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        for key in ("delta_ci", "rises_ci", "em_ci", "em_unsteered_ci"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


@dataclass
class LostInMiddleReport:
    """Result of :func:`evaluate_lost_in_middle`: one :class:`LostInMiddleCell` per (position, policy),
    positions in :data:`POSITIONS` order then ``"all"``; ``rows`` one dict per case."""

    cells: list[LostInMiddleCell]
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def cell(self, position: str, policy: str) -> LostInMiddleCell:
        """The cell of one gold position (or ``"all"``) and policy."""
        for c in self.cells:
            if c.position == position and c.policy == policy:
                return c
        raise KeyError((position, policy))

    def to_dict(self, include_rows: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``include_rows=False`` leaves out the per-case rows."""
        out: dict[str, Any] = {"family": "lost_in_middle", "settings": dict(self.settings),
                               "cells": [c.to_dict() for c in self.cells]}
        if include_rows:
            out["rows"] = [dict(r) for r in self.rows]
        return out

    def table(self) -> str:
        """A text table: position, policy, n, mean Δ log p [CI], rises, EM [CI], unsteered EM, answer words."""

        def pct(x: float | None) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"

        def words(x: float | None) -> str:
            return "-" if x is None or math.isnan(x) else f"{x:.1f}"

        head = f"{'gold':<7} {'policy':<10} {'n':>4} {'mean dlogp':>10} {'95% CI':>17} {'rises':>6} " \
               f"{'EM':>6} {'95% CI':>13} {'EM unst.':>8} {'words':>6} {'unst.':>6}"
        lines = [head, "-" * len(head)]
        for c in self.cells:
            em_ci = "-" if c.em_ci is None else f"[{pct(c.em_ci[0])}, {pct(c.em_ci[1])}]"
            lines.append(
                f"{c.position:<7} {c.policy:<10} {c.n:>4} {c.mean_delta:>+10.3f} "
                f"{f'[{c.delta_ci[0]:+.2f}, {c.delta_ci[1]:+.2f}]':>17} {pct(c.share_rises):>6} "
                f"{pct(c.em):>6} {em_ci:>13} {pct(c.em_unsteered):>8} {words(c.answer_words):>6} "
                f"{words(c.answer_words_unsteered):>6}"
            )
        return "\n".join(lines)


def _cell(position: str, policy: str, rows: list[dict[str, Any]], em: bool, n_boot: int, seed: int) -> LostInMiddleCell:
    # a question's contexts (gold first / middle / last) share its passages and answer: the intervals
    # resample whole questions, so pooled cells are not treated as independent draws
    clusters = [r["question_index"] for r in rows]
    deltas = [r["delta"] for r in rows]
    mean, lo, hi = mean_ci(deltas, n_boot, seed, clusters=clusters)
    rises, rlo, rhi = share_ci([d > 0 for d in deltas], n_boot, seed, clusters=clusters)
    gold = sum(r["gold_highlighted"] for r in rows) / len(rows) if rows else math.nan
    cell = LostInMiddleCell(position, policy, len(rows), mean, (lo, hi), rises, (rlo, rhi), gold)
    if em:
        cell.em, elo, ehi = share_ci([r["em"] for r in rows], n_boot, seed, clusters=clusters)
        cell.em_ci = (elo, ehi)
        cell.em_unsteered, ulo, uhi = share_ci([r["em_unsteered"] for r in rows], n_boot, seed, clusters=clusters)
        cell.em_unsteered_ci = (ulo, uhi)
        if rows:  # rows stored before answer lengths were recorded: counted from the generations
            cell.answer_words = sum(
                r["answer_words"] if "answer_words" in r else len(r["generation"].split()) for r in rows) / len(rows)
            cell.answer_words_unsteered = sum(
                r["answer_words_unsteered"] if "answer_words_unsteered" in r else len(r["generation_unsteered"].split())
                for r in rows) / len(rows)
    return cell


def lost_in_middle_cells(rows: Sequence[dict[str, Any]], policies: Sequence[str], *, em: bool = True,
                         n_boot: int = 2000, seed: int = 0) -> list[LostInMiddleCell]:
    """The report's cells from its per-case ``rows`` (as :attr:`LostInMiddleReport.rows` holds them, or as a
    stored report's ``"rows"``): one per gold position present, then ``"all"``, for each policy.

    Intervals resample whole questions (``question_index``). Used by :func:`evaluate_lost_in_middle`, and
    to recompute a stored report's cells without running the model again.
    """
    positions = [p for p in POSITIONS if any(r["position"] == p for r in rows)]
    cells = []
    for position in [*positions, "all"]:
        for policy in [p for p in POLICIES if p in policies]:
            chosen = [r for r in rows if r["policy"] == policy and (position == "all" or r["position"] == position)]
            cells.append(_cell(position, policy, chosen, em, n_boot, seed))
    return cells


@dataclass
class LostInMiddleReference:
    """The unsteered model on a list of items (:func:`lost_in_middle_reference`): log p of each item's first
    gold answer and, when asked for, its greedy answer — computed once, shared by every method."""

    logps: list[float]
    generations: list[str] | None
    max_new_tokens: int | None
    chat: bool | None


def lost_in_middle_reference(
    model,
    items: Sequence[LostInMiddleItem],
    *,
    em: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    chat: bool | None = None,
    progress: bool = True,
) -> LostInMiddleReference:
    """Unsteered (``steer=False``) log p(first gold answer) and, with ``em=True``, greedy answers of ``items``."""
    answer_ids = [continuation_ids(model, it.answers[0], chat) for it in items]
    logps = continuation_logprobs(model, [(it.prompt, None, ids) for it, ids in zip(items, answer_ids)],
                                  batch_size=batch_size, chat=chat, progress=progress, steer=False)
    gens = None
    if em:
        gens = generate_texts(model, [it.prompt for it in items], None, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, chat=chat, progress=progress, steer=False)
    return LostInMiddleReference(logps, gens, max_new_tokens if em else None, chat)


def _is_unsteered(method: Any, steer_kwargs: dict[str, Any]) -> bool:
    from .baselines import Unsteered

    return (isinstance(method, Unsteered) and not steer_kwargs) or (method is None and steer_kwargs == {"steer": False})


def evaluate_lost_in_middle(
    model,
    items: Sequence[LostInMiddleItem],
    *,
    policies: Sequence[str] = POLICIES,
    method: Any = None,
    k: int = DEFAULT_K,
    encoder: Any = None,
    middle: tuple[int, int] | None = None,
    em: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 4,
    chat: bool | None = None,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    reference: LostInMiddleReference | None = None,
    **steer_kwargs: Any,
) -> LostInMiddleReport:
    """Score (and, with ``em=True``, answer) every item under every policy; see the module docstring.

    ``method`` None is SEKA with ``steer_kwargs``; otherwise a method of
    :mod:`seka_rag.evaluation.baselines`. The unsteered reference (log p and greedy answer) is
    computed once per item with ``steer=False`` on the same prompt, so it is shared by the policies;
    pass ``reference`` (:func:`lost_in_middle_reference` of the same items, ``em``,
    ``max_new_tokens`` and ``chat``) to share it between methods too. The unsteered method itself
    (``Unsteered()`` or ``steer=False``) reuses the reference: its change is exactly zero.
    """
    if not items:
        raise ValueError("no items to evaluate")
    cases = lost_in_middle_cases(items, policies, k=k, encoder=encoder, middle=middle)
    if reference is None:
        reference = lost_in_middle_reference(model, items, em=em, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, chat=chat, progress=progress)
    elif (len(reference.logps) != len(items) or reference.chat != chat
          or (em and (reference.generations is None or reference.max_new_tokens != max_new_tokens))):
        raise ValueError("reference was computed for other items or settings (items, em, max_new_tokens, chat)")
    base, base_gen = reference.logps, reference.generations
    gens = None
    if _is_unsteered(method, steer_kwargs):
        steered = [base[c.item] for c in cases]
        if em:
            gens = [base_gen[c.item] for c in cases]
    else:
        answer_ids = [continuation_ids(model, it.answers[0], chat) for it in items]
        steered = continuation_logprobs(
            model, [(items[c.item].prompt, list(c.highlights), answer_ids[c.item]) for c in cases], method=method,
            batch_size=batch_size, chat=chat, progress=progress, **steer_kwargs,
        )
        if em:
            gens = generate_texts(model, [items[c.item].prompt for c in cases], [list(c.highlights) for c in cases],
                                  method=method, max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                                  progress=progress, **steer_kwargs)
    rows = []
    for j, c in enumerate(cases):
        item = items[c.item]
        row: dict[str, Any] = {
            "question_index": item.index, "position": item.position, "gold_position": item.gold_position,
            "policy": c.policy, "highlighted": list(c.highlighted), "gold_highlighted": c.gold_highlighted,
            "answer": item.answers[0], "logp_unsteered": base[c.item], "logp": steered[j],
            "delta": steered[j] - base[c.item],
        }
        if em:
            row.update(generation=gens[j], generation_unsteered=base_gen[c.item],
                       em=best_subspan_em(gens[j], item.answers),
                       em_unsteered=best_subspan_em(base_gen[c.item], item.answers),
                       answer_words=len(gens[j].split()), answer_words_unsteered=len(base_gen[c.item].split()))
        rows.append(row)
    cells = lost_in_middle_cells(rows, policies, em=em, n_boot=n_boot, seed=seed)
    n_passages = sorted({len(it.passages) for it in items})
    settings = method_settings(method, steer_kwargs)
    window = middle_window(n_passages[0])
    settings.update(policies=list(policies), k=k,
                    middle=list(middle) if middle is not None else [window.start, window.stop],
                    n_passages=n_passages, questions=len({it.index for it in items}), em=em,
                    max_new_tokens=max_new_tokens if em else None,
                    encoder="all-MiniLM-L6-v2" if encoder is None else repr(encoder))
    return LostInMiddleReport(cells=cells, settings=settings, rows=rows)


__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_PASSAGES",
    "DEFAULT_QUESTIONS",
    "DOCUMENT_TEMPLATE",
    "INSTRUCTION",
    "POLICIES",
    "POSITIONS",
    "LostInMiddleCase",
    "LostInMiddleCell",
    "LostInMiddleItem",
    "LostInMiddleReference",
    "LostInMiddleReport",
    "NQRecord",
    "Passage",
    "answer_line",
    "best_subspan_em",
    "build_items",
    "contains_answer",
    "evaluate_lost_in_middle",
    "gold_index",
    "highlighted_slots",
    "load_nq",
    "lost_in_middle_cases",
    "lost_in_middle_cells",
    "lost_in_middle_items",
    "lost_in_middle_reference",
    "middle_window",
    "normalize_answer",
    "nq_record",
    "read_jsonl",
    "render_prompt",
    "retriever_scores",
    "top_k",
]
