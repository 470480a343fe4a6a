"""Build triplets for AdaSEKA's four task families (seeded, reproducible, pure Python).

AdaSEKA mixes several "expert" projections, each built from a different kind of data. This module
turns each kind into :class:`~seka_rag.data.triplets.Triplet` objects for the projection builder:

``"context_qa"``
    context-QA evidence: a short context holding a fact that answers a question
    (exactly :func:`~seka_rag.data.triplets.generate_triplets`).
``"conflict"``
    conflicting evidence: two documents (or an older and a newer record) disagree; the answer span
    is the value stated by one of them and the question asks for it. Built only from conflict items
    whose subject lies in the ``dev`` split of :func:`seka_rag.evaluation.conflict.split_of` (real
    facts, and fictional items from a seed stream the evaluation never uses), so the ``test`` split
    stays unseen.
``"instruction"``
    a few sentences of ordinary text with one instruction sentence inside (answer language, number
    format, letter case, point of view, length, layout); the answer span *is* the instruction, the
    question a request it governs.
``"distractors"``
    6-10 short passages of invented facts; the relevant one sits at a random position (first,
    middle, last, anywhere) and holds the answer.

Every triplet keeps the invariants of :func:`generate_triplets`: ``answer`` occurs exactly once in
``context`` (case-insensitively) and in neither question, and ``unrelated_question`` is about an
entity the context does not mention. For every family, ``family_triplets(f, k, seed)`` is the first
``k`` triplets of ``family_triplets(f, n, seed)`` for ``k <= n`` (a prefix of one stream).

Word lists and sentences are written for this project; nothing is copied from data sets.

>>> [t.answer for t in family_triplets("instruction", 2, seed=0)]        # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .triplets import RELATIONS, Namer, Relation, Triplet, generate_triplets, sentence_case

if TYPE_CHECKING:
    from ..evaluation.conflict import ConflictItem

#: The task families, in reporting order.
FAMILIES: tuple[str, ...] = ("context_qa", "conflict", "instruction", "distractors")
#: Build triplets per family and their seed when ``seka-rag build-experts`` is not told otherwise.
DEFAULT_TRIPLETS_PER_FAMILY = 160
DEFAULT_SEED = 0

#: What each family's expert is built from (stored in the expert set's JSON).
FAMILY_DESCRIPTIONS: dict[str, str] = {
    "context_qa": "context-QA evidence: a short context with the fact that answers a question",
    "conflict": "conflicting evidence: two documents (or an older and a newer statement) disagree",
    "instruction": "instructions (language, number format, case, pronoun, length, format) among other text",
    "distractors": "a relevant passage among 5-9 distractor passages at varied positions",
}

#: Split the build triplets' main entities come from; the evaluation items use the other one.
BUILD_SPLIT = "dev"

#: Offset of the fictional-conflict seed stream used for building (the evaluation uses ``seed``).
_CONFLICT_BUILD_SEED_OFFSET = 7_919


@dataclass(frozen=True)
class BuiltTriplet:
    """A triplet with the entities it is about (for disjointness checks).

    ``subject`` is the entity the answer belongs to (for instructions: the entity the request is
    about); ``absent`` the entity of the unrelated question. Both are ``""`` when unknown
    (``context_qa``, which is :func:`generate_triplets` verbatim).
    """

    triplet: Triplet
    subject: str = ""
    absent: str = ""


# ---------------------------------------------------------------------------------------------
# Arguments


def check_family(family: str) -> str:
    """``family`` if it is one of :data:`FAMILIES`, else :class:`ValueError`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def check_count(n: int, what: str = "n") -> int:
    """``n`` if it is a non-negative integer (not a bool), else :class:`ValueError`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {n!r}")
    return n


# ---------------------------------------------------------------------------------------------
# Shared helpers


def count_ci(haystack: str, needle: str) -> int:
    """Case-insensitive occurrence count of ``needle`` in ``haystack``."""
    return haystack.lower().count(needle.lower())


def valid_triplet(t: Triplet) -> bool:
    """Whether ``t`` keeps the generator invariants (answer once in the context, in no question)."""
    return (
        bool(t.answer)
        and t.answer in t.context  # the builder locates the span case-sensitively
        and count_ci(t.context, t.answer) == 1
        and count_ci(t.question, t.answer) == 0
        and count_ci(t.unrelated_question, t.answer) == 0
        and t.question != t.unrelated_question
    )


def bare_name(subject: str) -> str:
    """The entity name without a leading article (``"the Silver Heron"`` → ``"Silver Heron"``)."""
    return subject.removeprefix("the ").removeprefix("The ")


def unrelated_question(namer: Namer, rng: random.Random, context: str, answer: str,
                       avoid_relation: str = "") -> tuple[str, str] | None:
    """A question about a fresh entity absent from ``context``, and that entity (or None)."""
    for _ in range(20):
        rel = RELATIONS[rng.randrange(len(RELATIONS))]
        if rel.name == avoid_relation:
            continue
        subject = namer.subject(rel.subject)
        question = rel.question(subject, rng)
        if count_ci(context, bare_name(subject)) or count_ci(question, answer):
            continue
        return question, subject
    return None


def split_of(subject: str) -> str:
    """The conflict evaluation's split of an entity (imported lazily: the evaluation imports this module)."""
    from ..evaluation.conflict import split_of as conflict_split_of

    return conflict_split_of(subject)


def fresh_subject(namer: Namer, kind: str, split: str, avoid: Callable[[str], bool] = lambda s: False,
                  tries: int = 200) -> str:
    """A new name of entity kind ``kind`` whose :func:`split_of` is ``split`` that ``avoid`` does not reject."""
    for _ in range(tries):
        subject = namer.subject(kind)
        if split_of(subject) == split and not avoid(subject):
            return subject
    raise RuntimeError(f"could not draw a {kind} name in the {split} split")  # pragma: no cover


def other_fact(namer: Namer, rng: random.Random, exclude: tuple[str, ...] = (), *,
               relation: Relation | None = None, subject: str | None = None) -> str:
    """One sentence stating a fact (``relation`` or a random one) about ``subject`` (or a fresh entity)."""
    rel = relation or RELATIONS[rng.randrange(len(RELATIONS))]
    who = subject if subject is not None else namer.subject(rel.subject)
    for _ in range(20):
        sentence = rel.statement(who, rel.answer(namer), rng)
        if not any(count_ci(sentence, x) for x in exclude if x):
            return sentence
    return ""


def _take(stream: Iterator[BuiltTriplet], n: int) -> list[BuiltTriplet]:
    """The first ``n`` distinct-context triplets of ``stream``."""
    out: list[BuiltTriplet] = []
    seen: set[str] = set()
    if n == 0:
        return out
    for built in stream:
        if built.triplet.context in seen:
            continue
        seen.add(built.triplet.context)
        out.append(built)
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------------------------
# conflict: two disagreeing documents, the answer is the value of one of them

#: Ways to present two disagreeing statements (``{first}`` and ``{second}``).
_CONFLICT_FORMATS = (
    "Document 1: {first}\nDocument 2: {second}",
    "Older record: {first}\nNewer record: {second}",
    "Previously: {first} Currently: {second}",
    "Source A says: {first} Source B says: {second}",
    "First report: {first}\nSecond report: {second}",
    "Archive entry: {first}\nLatest entry: {second}",
)


def _dev_conflict_items(seed: int) -> Iterator[ConflictItem]:
    """Dev-split conflict items: real facts (shuffled) mixed into a fictional stream never evaluated."""
    from ..evaluation.conflict import iter_fictional_conflict_items, real_conflict_items

    rng = random.Random(f"tasks-conflict-items-{seed}")
    real = [it for it in real_conflict_items() if split_of(it.subject) == BUILD_SPLIT]
    rng.shuffle(real)
    fictional = (it for it in iter_fictional_conflict_items(_CONFLICT_BUILD_SEED_OFFSET + seed)
                 if split_of(it.subject) == BUILD_SPLIT)
    while True:
        if real and rng.random() < 0.3:
            yield real.pop()
        else:
            yield next(fictional)


def _conflict_stream(seed: int) -> Iterator[BuiltTriplet]:
    rng = random.Random(f"tasks-conflict-{seed}")
    namer = Namer(rng)
    for item in _dev_conflict_items(seed):
        docs = [(item.statement_a, item.answer_a), (item.statement_b, item.answer_b)]
        rng.shuffle(docs)
        fmt = _CONFLICT_FORMATS[rng.randrange(len(_CONFLICT_FORMATS))]
        context = fmt.format(first=docs[0][0], second=docs[1][0])
        answer = docs[rng.randrange(2)][1]
        other = unrelated_question(namer, rng, context, answer)
        if other is None or count_ci(other[0], item.answer_a) or count_ci(other[0], item.answer_b):
            continue
        t = Triplet(context, item.question, answer, other[0], f"conflict/{item.relation}")
        if valid_triplet(t):
            yield BuiltTriplet(t, item.subject, other[1])


# ---------------------------------------------------------------------------------------------
# instruction: one instruction sentence among ordinary text

_LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish", "Polish", "Greek", "Turkish")
_SMALL_NUMBERS = ("two", "three", "four", "five", "six")
_OPENERS = ("Certainly", "Briefly", "Well", "Notably", "Overall")

#: Instruction templates by kind ({lang}, {k}, {w}, {person} are filled in). Phrased differently
#: from the evaluation's instructions (seka_rag.evaluation.families) on purpose.
_BUILD_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "language": (
        "Write your reply in {lang}.", "Please respond only in {lang}.", "Your response must be written in {lang}.",
    ),
    "number": (
        "Spell out every number in your reply.", "Use numerals for every number you mention.",
        "Round each number you mention to the nearest ten.",
    ),
    "case": ("Use no capital letters anywhere in your reply.", "Type the whole reply in upper case."),
    "pronoun": (
        "Refer to {person} as 'they' throughout.", "Write from the first-person point of view.",
        "Address the reader directly as 'you'.",
    ),
    "length": (
        "Keep your reply under {k} words.", "Reply in exactly {k} sentences.", "Limit yourself to {k} bullet points.",
    ),
    "format": (
        "Begin your reply with the word '{w}'.", "Finish your reply with a question.",
        "Format your reply as a numbered list.", "Put the final answer in square brackets.",
        "Do not use any commas in your reply.",
    ),
}

#: Ordinary sentences around the instruction (build only; the evaluation has its own).
_BUILD_SMALL_TALK = (
    "The office kettle has been replaced.",
    "Several readers wrote in after the last issue.",
    "The garden committee meets on the first Tuesday of each month.",
    "Parking behind the library is free after six.",
    "A new bakery opened near the station last spring.",
    "The weather was mild for most of the week.",
    "Volunteers repainted the fence in one afternoon.",
    "The report below was prepared by the regional office.",
    "Some of the older photographs have faded.",
    "The lecture hall can seat about two hundred people.",
    "Tickets for the autumn concert sold out quickly.",
    "The ferry timetable changes in the winter months.",
    "Most of the notes were written by hand.",
    "The village hall was built with donations from local families.",
    "Nobody remembers exactly when the clock tower stopped.",
    "The summary that follows is based on several interviews.",
)

#: Requests about the text's entity ({s}); the instruction governs how they are answered.
_REQUESTS = (
    "Tell me about {s}.", "Describe {s} briefly.", "Summarise what the text says about {s}.",
    "What do we know about {s}?", "Write a short note about {s}.", "Explain what the passage says about {s}.",
)


def _instruction(rng: random.Random, namer: Namer) -> tuple[str, str]:
    """A random build instruction sentence and its kind."""
    kinds = sorted(_BUILD_INSTRUCTIONS)
    kind = kinds[rng.randrange(len(kinds))]
    options = _BUILD_INSTRUCTIONS[kind]
    tpl = options[rng.randrange(len(options))]
    text = tpl.format(
        lang=_LANGUAGES[rng.randrange(len(_LANGUAGES))], k=_SMALL_NUMBERS[rng.randrange(len(_SMALL_NUMBERS))],
        w=_OPENERS[rng.randrange(len(_OPENERS))], person=namer.person() if "{person}" in tpl else "",
    )
    return text, kind


def _instruction_stream(seed: int) -> Iterator[BuiltTriplet]:
    rng = random.Random(f"tasks-instruction-{seed}")
    namer = Namer(rng)
    while True:
        rel = RELATIONS[rng.randrange(len(RELATIONS))]
        subject = fresh_subject(namer, rel.subject, BUILD_SPLIT)
        instruction, kind = _instruction(rng, namer)
        sentences = [rel.statement(subject, rel.answer(namer), rng)]
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                sentences.append(_BUILD_SMALL_TALK[rng.randrange(len(_BUILD_SMALL_TALK))])
            else:
                sentences.append(other_fact(namer, rng, (instruction,)))
        sentences = [s for s in dict.fromkeys(sentences) if s]
        rng.shuffle(sentences)
        sentences.insert(rng.randint(0, len(sentences)), instruction)
        context = " ".join(sentences)
        about = f"the {subject}" if rel.subject == "species" else subject
        request = sentence_case(_REQUESTS[rng.randrange(len(_REQUESTS))].format(s=about))
        other = unrelated_question(namer, rng, context, instruction)
        if other is None:
            continue
        t = Triplet(context, request, instruction, other[0], f"instruction/{kind}")
        if valid_triplet(t):
            yield BuiltTriplet(t, subject, other[1])


# ---------------------------------------------------------------------------------------------
# distractors: the relevant passage among 5-9 others (6-10 passages in all)


def passage(namer: Namer, rng: random.Random, rel: Relation, subject: str, answer: str,
            exclude: tuple[str, ...], extra: float = 0.5) -> str:
    """A short passage: the fact, sometimes followed by another fact about the same subject."""
    text = rel.statement(subject, answer, rng)
    if rng.random() < extra:
        same_kind = [r for r in RELATIONS if r.subject == rel.subject and r.name != rel.name]
        if same_kind:
            more = other_fact(namer, rng, exclude, relation=same_kind[rng.randrange(len(same_kind))], subject=subject)
            if more:
                text = f"{text} {more}"
    return text


def distractor_passages(namer: Namer, rng: random.Random, rel: Relation, count: int,
                        exclude: tuple[str, ...], avoid: Callable[[str], bool]) -> list[str]:
    """``count`` passages about other entities: about half share ``rel``, the rest are random facts."""
    out: list[str] = []
    while len(out) < count:
        r = rel if rng.random() < 0.5 else RELATIONS[rng.randrange(len(RELATIONS))]
        subject = namer.subject(r.subject)
        if avoid(subject):
            continue
        value = r.answer(namer)
        if any(count_ci(value, x) or count_ci(x, value) for x in exclude if x):
            continue
        text = passage(namer, rng, r, subject, value, exclude)
        if not any(count_ci(text, x) for x in exclude if x) and text not in out:
            out.append(text)
    return out


def _distractor_stream(seed: int) -> Iterator[BuiltTriplet]:
    rng = random.Random(f"tasks-distractors-{seed}")
    namer = Namer(rng)
    while True:
        rel = RELATIONS[rng.randrange(len(RELATIONS))]
        subject = fresh_subject(namer, rel.subject, BUILD_SPLIT)
        answer = rel.answer(namer)
        relevant = passage(namer, rng, rel, subject, answer, (answer,))
        k = rng.randint(6, 10)
        bare = bare_name(subject).lower()
        others = distractor_passages(namer, rng, rel, k - 1, (answer,), lambda s: bare in s.lower())
        others.insert(rng.randrange(k), relevant)
        context = "\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(others))
        other = unrelated_question(namer, rng, context, answer, rel.name)
        if other is None:
            continue
        t = Triplet(context, rel.question(subject, rng), answer, other[0], f"distractors/{rel.name}")
        if valid_triplet(t):
            yield BuiltTriplet(t, subject, other[1])


# ---------------------------------------------------------------------------------------------
# Public entry points

_STREAMS: dict[str, Callable[[int], Iterator[BuiltTriplet]]] = {
    "conflict": _conflict_stream,
    "instruction": _instruction_stream,
    "distractors": _distractor_stream,
}


def built_triplets(family: str, n: int, seed: int = 0) -> list[BuiltTriplet]:
    """Like :func:`family_triplets`, with the entities each triplet is about (see :class:`BuiltTriplet`)."""
    check_family(family)
    check_count(n)
    if family == "context_qa":
        return [BuiltTriplet(t) for t in generate_triplets(n, seed)]
    return _take(_STREAMS[family](seed), n)


def family_triplets(family: str, n: int, seed: int = DEFAULT_SEED) -> list[Triplet]:
    """``n`` distinct build triplets of one task family, reproducible from ``seed``.

    ``family`` is one of :data:`FAMILIES`; see the module docstring for what each holds. Raises
    :class:`ValueError` for an unknown family or a negative / non-integer ``n``.
    """
    return [b.triplet for b in built_triplets(family, n, seed)]


__all__ = ["BUILD_SPLIT", "DEFAULT_SEED", "DEFAULT_TRIPLETS_PER_FAMILY", "FAMILIES", "BuiltTriplet", "built_triplets", "family_triplets"]
