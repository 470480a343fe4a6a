"""Instruction following: a highlighted instruction inside a longer prompt, checked on the greedy answer.

Each item is a short story about one person (written for this project, never using a pronoun for
them), a few paragraphs long, sometimes with an unrelated paragraph or two; one instruction sits
between two paragraphs as a paragraph of its own and is highlighted; a question ends the prompt::

    <paragraph>\\n\\n<paragraph>\\n\\nAnswer in French.\\n\\n<paragraph>\\n\\nQuestion: Where did Alex open the bakery?

The metric is a programmatic checker per instruction type (:func:`check`) applied to the **greedy
generation** (``model.generate`` or a baseline method's ``generate``):

``language``   "Answer in French." (or Spanish / German): a function-word heuristic (:func:`detect_language`).
``pronoun``    "Refer to the person as 'she'." (or 'he' / 'they'), with a request to retell the story:
               a form of the pronoun occurs and no form of a competing one (he ↔ she; for 'they',
               neither he nor she forms). Other uses of "they" (the bees, the customers) are allowed
               in a 'he' / 'she' answer.
``uppercase``  "Answer in all capital letters.": at least one cased letter and no lower-case letter.
``json``       "Answer with a JSON object with key 'answer'.": the answer (or the first fenced code
               block in it, ```` ```json ```` or bare; an unclosed fence counts to the end) parses as
               one JSON object holding the key ``"answer"`` (exactly) with a non-empty value.
``max_words``  "Answer in at most 5 words." (3 or 5): 1 to N words; a word is a run of letters / digits
               (inner apostrophes, hyphens and en dashes kept; a.m., U.S., 3.5, 1,000 and 4:00 are
               one word each), so punctuation never counts.

Every checker strips surrounding whitespace first and fails an empty answer.

Limits of the language heuristic: it counts function words (articles, pronouns, prepositions,
auxiliaries) and a few letters with diacritics of French, Spanish, German and English, and passes
when the asked language leads all others by at least one count (answers of at most 4 words need 1
hit, longer ones 2). It cannot judge grammar or vocabulary: an answer made only of names or numbers
("Rue du Port" passes, "Lyon" does not), one in an unlisted language (Italian, Portuguese) or one
that mixes languages may be judged wrongly, and a French or Spanish answer whose only function words
are ones the two share ("Dar un curso de apicultura en la ciudad.": un, de, en, la) ties, which fails.
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .scoring import generate_texts, method_settings
from .stats import format_ci, group_share_cis, share_ci

#: Items when ``n`` is not given (20 per instruction type).
DEFAULT_N = 100

#: Instruction types, in the round-robin order of :func:`instruction_items`.
INSTRUCTION_TYPES: tuple[str, ...] = ("language", "pronoun", "uppercase", "json", "max_words")

LANGUAGES: tuple[str, ...] = ("French", "Spanish", "German")
PRONOUNS: tuple[str, ...] = ("she", "he", "they")
MAX_WORDS: tuple[int, ...] = (3, 5)
JSON_KEY = "answer"

# ---------------------------------------------------------------------------------------------
# Material (written for this project)

#: (name, paragraphs with {name}, questions with {name}); no pronoun ever refers to the person.
SCENARIOS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("bakery", (
        "{name} opened a small bakery on Harbour Street in the spring. The shop sells rye bread, cinnamon rolls "
        "and a lemon cake that has become popular with the neighbours.",
        "Every morning {name} starts work at four o'clock, long before the first customers arrive. The oven was "
        "bought second-hand from a hotel that closed last year.",
        "On Saturdays the queue reaches the corner of the street. Last month {name} hired an assistant to help "
        "with the weekend rush.",
    ), ("Where did {name} open the bakery?", "What does the bakery sell?", "Why did {name} hire an assistant?")),
    ("allotment", (
        "{name} has looked after an allotment at the edge of town for six years. Tomatoes, beans and pumpkins "
        "grow there in long, neat rows.",
        "This summer was unusually dry, so {name} collected rainwater in three large barrels. The pumpkins still "
        "grew to a record size.",
        "At the autumn fair the biggest pumpkin won first prize. {name} gave most of the harvest to the local "
        "food bank.",
    ), ("What grows on the allotment of {name}?", "How did {name} cope with the dry summer?",
        "What happened at the autumn fair?")),
    ("cycling", (
        "{name} cycled from the mountains to the coast over nine days last September. The route followed an old "
        "railway line that has been turned into a path.",
        "Most nights were spent in small guesthouses, but twice {name} camped beside a lake. A flat tyre on the "
        "fourth day cost a whole afternoon.",
        "The trip ended in a fishing village, where {name} ate grilled sardines at the harbour. Photos from the "
        "journey are now on display at the town library.",
    ), ("How long did the trip of {name} take?", "Which route did the trip follow?",
        "What went wrong on the fourth day?")),
    ("library", (
        "{name} volunteers at the town library every Tuesday and Thursday afternoon. The work includes shelving "
        "returned books and running a reading club for children.",
        "The reading club started with four children and now has more than twenty. Each session ends with a "
        "short quiz about the book of the week.",
        "Recently {name} organised a book sale that raised money for new computers. The library plans to install "
        "the computers before the winter holidays.",
    ), ("When does {name} volunteer at the library?", "How has the reading club changed?",
        "What was the book sale for?")),
    ("choir", (
        "{name} joined the city choir three years ago after moving from the countryside. The choir rehearses in "
        "an old church hall every Wednesday evening.",
        "For the spring concert {name} was given a short solo in the final song. The solo was practised in the "
        "kitchen every evening, to the amusement of the neighbours.",
        "The concert sold out, and a local radio station recorded it. The choir now hopes to tour nearby towns "
        "next year.",
    ), ("Where does the choir rehearse?", "What was {name} given for the spring concert?",
        "What does the choir hope to do next year?")),
    ("repair_cafe", (
        "{name} runs a repair café in the basement of the community centre. Once a month, people bring broken "
        "lamps, toasters and radios to be fixed for free.",
        "Most repairs take less than an hour, and visitors are encouraged to watch and learn. {name} keeps a "
        "notebook of every repair, with the fault and the fix.",
        "Last year the café saved more than three hundred items from being thrown away. The council has asked "
        "{name} to open a second café in the north of the city.",
    ), ("What do people bring to the repair café?", "What does {name} write in the notebook?",
        "What has the council asked {name} to do?")),
    ("marathon", (
        "{name} decided in January to run a first marathon in October. The training plan began with three short "
        "runs a week along the river.",
        "By the summer the longest run had reached thirty kilometres. A sprained ankle in August meant two weeks "
        "of swimming instead of running.",
        "On race day {name} finished in just under four hours. The medal now hangs above the desk in the study.",
    ), ("When did {name} decide to run a marathon?", "What happened in August?",
        "How long did {name} take to finish the race?")),
    ("beekeeping", (
        "{name} keeps four beehives on the roof of an office building in the city centre. The bees collect "
        "nectar from parks and balcony gardens nearby.",
        "The first harvest produced about twenty jars of honey. {name} sold the jars at the Saturday market, and "
        "every jar was gone within two hours.",
        "Next spring {name} plans to teach a short course on city beekeeping. Several office workers have "
        "already signed up.",
    ), ("Where does {name} keep the beehives?", "What happened at the Saturday market?",
        "What does {name} plan to do next spring?")),
)

#: Ordinary paragraphs unrelated to the story, added to lengthen some prompts.
FILLER_PARAGRAPHS: tuple[str, ...] = (
    "The weather this week is expected to stay mild, with light rain on Tuesday and sunshine at the weekend. "
    "Evenings will be cool, so a jacket is a good idea.",
    "The town council has announced that the main square will be repaved next month. Market stalls will move "
    "to the car park behind the station while the work goes on.",
    "A new bus line now connects the hospital with the university campus. Buses run every fifteen minutes "
    "during the day and every half hour in the evening.",
    "The museum on Castle Hill has extended its opening hours for the summer. Entry remains free on the first "
    "Sunday of every month.",
    "Residents are reminded that garden waste is collected every second Friday. Bags should be left at the kerb "
    "before seven in the morning.",
    "The swimming pool will close for two weeks in November for maintenance. Swimming lessons will continue at "
    "the sports centre across the river.",
)

#: Gender-neutral first names of the story's person.
NAMES: tuple[str, ...] = (
    "Alex", "Sam", "Robin", "Jordan", "Taylor", "Casey", "Morgan", "Jamie", "Riley", "Avery", "Quinn", "Drew",
    "Frankie", "Jesse", "Rowan", "Sasha", "Kai", "Remy", "Noel", "Eden", "Ari", "Charlie", "Emerson", "Finley",
)

_RETELL = "In two or three sentences, tell what {name} did."


def instruction_text(kind: str, *, language: str = "", pronoun: str = "", max_words: int = 0) -> str:
    """The instruction sentence of a type (and its parameter)."""
    if kind == "language":
        return f"Answer in {language}."
    if kind == "pronoun":
        return f"Refer to the person as '{pronoun}'."
    if kind == "uppercase":
        return "Answer in all capital letters."
    if kind == "json":
        return f"Answer with a JSON object with key '{JSON_KEY}'."
    if kind == "max_words":
        return f"Answer in at most {max_words} words."
    raise ValueError(f"instruction type must be one of {INSTRUCTION_TYPES}, got {kind!r}")


@dataclass(frozen=True)
class InstructionItem:
    """One instruction-following prompt.

    ``highlight`` is the instruction (occurring exactly once in ``prompt``), ``kind`` its type
    (:data:`INSTRUCTION_TYPES`); ``language`` / ``pronoun`` / ``max_words`` its parameter;
    ``position`` the index of the paragraph the instruction is inserted before (1 .. paragraphs - 1)
    and ``paragraphs`` the number of ordinary paragraphs.
    """

    kind: str
    prompt: str
    highlight: str
    question: str
    person: str
    scenario: str
    position: int
    paragraphs: int
    language: str = ""
    pronoun: str = ""
    max_words: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _item(kind: str, round_: int, rng: random.Random) -> InstructionItem:
    """One item of type ``kind``; ``round_`` (how many items of this type came before) picks its parameter."""
    name = rng.choice(NAMES)
    scenario, paragraphs, questions = SCENARIOS[rng.randrange(len(SCENARIOS))]
    body = [p.format(name=name) for p in paragraphs]
    for filler in rng.sample(FILLER_PARAGRAPHS, rng.randint(0, 2)):
        body.insert(rng.randint(0, len(body)), filler)
    params: dict[str, Any] = {}
    if kind == "language":
        params["language"] = LANGUAGES[round_ % len(LANGUAGES)]
    elif kind == "pronoun":
        params["pronoun"] = PRONOUNS[round_ % len(PRONOUNS)]
    elif kind == "max_words":
        params["max_words"] = MAX_WORDS[round_ % len(MAX_WORDS)]
    instruction = instruction_text(kind, **params)
    question = (_RETELL if kind == "pronoun" else rng.choice(questions)).format(name=name)
    position = rng.randint(1, len(body) - 1)
    parts = body[:position] + [instruction] + body[position:]
    prompt = "\n\n".join(parts) + f"\n\nQuestion: {question}"
    if prompt.count(instruction) != 1:  # pragma: no cover - the material never repeats an instruction
        raise RuntimeError(f"instruction {instruction!r} occurs more than once")
    return InstructionItem(kind, prompt, instruction, question, name, scenario, position, len(body), **params)


def instruction_items(n: int = DEFAULT_N, seed: int = 0,
                      types: Sequence[str] = INSTRUCTION_TYPES) -> list[InstructionItem]:
    """``n`` items, reproducible from ``seed``; types take turns (in ``types`` order), and within a type its
    parameter (language, pronoun, word limit) cycles too, so complete rounds are balanced."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    types = tuple(types)
    bad = [t for t in types if t not in INSTRUCTION_TYPES]
    if bad or not types:
        raise ValueError(f"types must be a non-empty subset of {INSTRUCTION_TYPES}, got {types!r}")
    rng = random.Random(f"eval-instructions-{seed}")
    out = []
    for i in range(n):
        kind = types[i % len(types)]
        out.append(_item(kind, i // len(types), rng))
    return out


# ---------------------------------------------------------------------------------------------
# Checkers

# dotted abbreviations (a.m., U.S.) are one word; so are numbers with inner separators (3.5, 1,000, 4:00)
_WORD = re.compile(r"(?:[^\W\d_]\.){2,}|[^\W_]+(?:(?:['’\-–]|(?<=\d)[.,:](?=\d))[^\W_]+)*")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})


def words(text: str) -> list[str]:
    """Words of ``text``: runs of letters / digits, inner apostrophes, hyphens and en dashes kept (``don't``,
    ``e-mail``), dotted abbreviations (``a.m.``) and numbers with inner separators (``3.5``, ``1,000``,
    ``4:00``) as one word each."""
    return _WORD.findall(text)


def _lower_words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.translate(_APOSTROPHES).lower())


_PRONOUN_FORMS: dict[str, frozenset[str]] = {
    "he": frozenset(("he", "him", "his", "himself")),
    "she": frozenset(("she", "her", "hers", "herself")),
    "they": frozenset(("they", "them", "their", "theirs", "themselves", "themself")),
}
_PRONOUN_CONFLICTS = {"he": ("she",), "she": ("he",), "they": ("he", "she")}


#: A single word in quotes ('he', "they", ‘she’ after apostrophe folding): a mention, not a use.
_QUOTED_WORD = re.compile(r"(?<!\w)(['\"“”])\s*[^\W\d_]+\s*['\"“”](?!\w)")


def check_pronoun(output: str, pronoun: str) -> bool:
    """A form of ``pronoun`` is *used* (as a word, any case) and no form of a competing one is.

    A pronoun in quotes is a mention, not a use: an answer that only repeats the instruction
    (``Refer to the person as 'he'.``) does not pass. The check cannot tell what a pronoun refers to,
    so ``they`` said of other things (the bees) counts as a use.
    """
    if pronoun not in _PRONOUN_FORMS:
        raise ValueError(f"pronoun must be one of {tuple(_PRONOUN_FORMS)}, got {pronoun!r}")
    seen = set(_lower_words(_QUOTED_WORD.sub(" ", output.translate(_APOSTROPHES))))
    if not seen & _PRONOUN_FORMS[pronoun]:
        return False
    return not any(seen & _PRONOUN_FORMS[other] for other in _PRONOUN_CONFLICTS[pronoun])


def check_uppercase(output: str) -> bool:
    """At least one cased letter, and no lower-case letter."""
    cased = [c for c in output if c.isupper() or c.islower()]
    return bool(cased) and not any(c.islower() for c in cased)


def check_max_words(output: str, limit: int) -> bool:
    """Between 1 and ``limit`` words (see :func:`words`)."""
    return 1 <= len(words(output)) <= limit


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)


def json_payload(output: str) -> str:
    """The text a JSON answer is read from: the first fenced code block's content, else the whole answer
    (surrounding whitespace and single back-ticks stripped)."""
    text = output.strip()
    match = _FENCE.search(text)
    if match:
        text = match.group(2)
    text = text.strip()
    if len(text) >= 2 and text[0] == "`" and text[-1] == "`":
        text = text.strip("`").strip()
    return text


def check_json(output: str, key: str = JSON_KEY) -> bool:
    """The answer (see :func:`json_payload`) is one JSON object holding ``key`` with a non-empty value."""
    try:
        data = json.loads(json_payload(output))
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict) or key not in data:
        return False
    value = data[key]
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, dict)):
        return bool(value)
    return value is not None


#: Function words per language (lower-case); a word listed for several languages counts for each.
LEXICONS: dict[str, frozenset[str]] = {
    "English": frozenset(
        "the a an and is are was were in on at of to for with by from that this it he she they his her their has "
        "have had not but or be been as which who will would there what when where into after before".split()),
    "French": frozenset(
        "le la les un une des du de et est sont dans pour avec sur pas ne que qui il elle ils elles nous vous je "
        "au aux ce cette ces son sa ses leur leurs été était a à où très mais ou par plus chez après avant "
        "depuis lui y en oui non".split()),
    "Spanish": frozenset(
        "el la los las un una unos unas y a es son está están en de del al con por para que se su sus no muy pero "
        "como más lo le fue era ha han este esta ella él cuando donde sí".split()),
    "German": frozenset(
        "der die das den dem des ein eine einen einem einer und ist sind war waren in im mit auf für von zu zum "
        "zur nicht sie er es wir ich dass auch hat haben wurde am aus bei nach an nein ja wo wann".split()),
}
#: Letters that only (or mostly) occur in one language of :data:`LEXICONS`; one occurrence adds one count.
_DIACRITICS = {"French": "èêçœàùîôûëï", "Spanish": "ñ¿¡áíóú", "German": "äöüß"}
_ELISION = re.compile(r"\b(?:l|d|qu|c|j|n|s|m|t)'\w", re.IGNORECASE)


def language_scores(output: str) -> dict[str, int]:
    """Function-word (and diacritic) counts of ``output`` per language of :data:`LEXICONS`."""
    text = unicodedata.normalize("NFC", output.translate(_APOSTROPHES))
    tokens = _lower_words(text)
    scores = {lang: sum(1 for t in tokens if t in lex) for lang, lex in LEXICONS.items()}
    scores["French"] += len(_ELISION.findall(text))
    lowered = text.lower()
    for lang, chars in _DIACRITICS.items():
        scores[lang] += int(any(c in lowered for c in chars))
    return scores


def detect_language(output: str) -> str | None:
    """The language of :data:`LEXICONS` that leads the counts of :func:`language_scores` (None on a tie or no hit)."""
    scores = language_scores(output)
    best = max(scores.values())
    leaders = [lang for lang, s in scores.items() if s == best]
    return leaders[0] if best > 0 and len(leaders) == 1 else None


def check_language(output: str, language: str) -> bool:
    """``language`` leads every other language's count, with at least 1 hit (answers of at most 4 words)
    or 2 (longer answers). See the module docstring for the heuristic's limits."""
    if language not in LEXICONS:
        raise ValueError(f"language must be one of {tuple(LEXICONS)}, got {language!r}")
    scores = language_scores(output)
    need = 1 if len(words(output)) <= 4 else 2
    target = scores[language]
    return target >= need and all(target > s for lang, s in scores.items() if lang != language)


def check(instruction_type: str, output: str, item: InstructionItem | None = None) -> bool:
    """Whether ``output`` obeys an instruction of ``instruction_type``; ``item`` supplies the parameter
    (language, pronoun, word limit; ``max_words`` defaults to 5 without one). An empty answer fails."""
    if not isinstance(output, str):
        raise TypeError(f"output must be a string, got {type(output).__name__}")
    output = output.strip()
    if instruction_type not in INSTRUCTION_TYPES:
        raise ValueError(f"instruction type must be one of {INSTRUCTION_TYPES}, got {instruction_type!r}")
    if not output:
        return False
    if instruction_type == "language":
        if item is None or not item.language:
            raise ValueError("a language check needs an item with its language")
        return check_language(output, item.language)
    if instruction_type == "pronoun":
        if item is None or not item.pronoun:
            raise ValueError("a pronoun check needs an item with its pronoun")
        return check_pronoun(output, item.pronoun)
    if instruction_type == "uppercase":
        return check_uppercase(output)
    if instruction_type == "json":
        return check_json(output)
    return check_max_words(output, item.max_words if item is not None and item.max_words else 5)


def echoes_instruction(output: str, instruction: str) -> bool:
    """Whether ``output`` repeats the whole instruction sentence: all its words as one unbroken run
    (case, digits, quotes and punctuation aside). A side effect of steering hard toward the
    highlighted text, which the checkers alone can miss (``Refer to the person as 'they'. They refer
    to ...`` uses "they"). Fragments of the sentence do not count, so passes without an echo are an
    upper bound on clean passes.
    """
    core = " ".join(_lower_words(instruction))
    return bool(core) and f" {core} " in f" {' '.join(_lower_words(output))} "


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class InstructionReport:
    """Result of :func:`evaluate_instructions`.

    ``share`` is the fraction of items whose greedy answer passes its checker, with a seeded
    bootstrap 95 % interval ``[ci_low, ci_high]``; ``groups`` / ``group_n`` / ``group_ci`` the share,
    size and interval per instruction type; ``passed`` / ``outputs`` per item, in item order.
    ``echo_share`` is the fraction of answers that repeat the instruction (:func:`echoes_instruction`),
    ``clean_share`` (interval ``clean_ci``) the fraction that pass *without* repeating it;
    ``echoed`` per item.
    """

    n: int
    share: float
    ci_low: float
    ci_high: float
    groups: dict[str, float] = field(default_factory=dict)
    group_n: dict[str, int] = field(default_factory=dict)
    group_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    passed: list[bool] = field(default_factory=list, repr=False)
    outputs: list[str] = field(default_factory=list, repr=False)
    echo_share: float = math.nan
    clean_share: float = math.nan
    clean_ci: tuple[float, float] = (math.nan, math.nan)
    echoed: list[bool] = field(default_factory=list, repr=False)

    def to_dict(self, include_items: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``include_items=False`` leaves out the per-item answers and verdicts."""
        out = {
            "family": "instructions", "n": self.n, "share": self.share, "ci_low": self.ci_low,
            "ci_high": self.ci_high, "groups": dict(self.groups), "group_n": dict(self.group_n),
            "group_ci": {k: list(v) for k, v in self.group_ci.items()}, "settings": dict(self.settings),
            "echo_share": self.echo_share, "clean_share": self.clean_share, "clean_ci": list(self.clean_ci),
        }
        if include_items:
            out["passed"] = list(self.passed)
            out["outputs"] = list(self.outputs)
            out["echoed"] = list(self.echoed)
        return out

    def cell(self) -> str:
        """``"share [lo, hi]"`` in percent."""
        return format_ci(self.share, self.ci_low, self.ci_high)


def instruction_report(items: Sequence[InstructionItem], outputs: Sequence[str], *, n_boot: int = 2000,
                       seed: int = 0, settings: dict[str, Any] | None = None) -> InstructionReport:
    """Check every answer against its item and summarise (see :class:`InstructionReport`)."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    if not items:
        raise ValueError("no items to report on")
    passed = [check(it.kind, out, it) for it, out in zip(items, outputs)]
    echoed = [echoes_instruction(out, it.highlight) for it, out in zip(items, outputs)]
    share, lo, hi = share_ci(passed, n_boot, seed)
    clean, clean_lo, clean_hi = share_ci([p and not e for p, e in zip(passed, echoed)], n_boot, seed)
    by_type = group_share_cis([it.kind for it in items], passed, INSTRUCTION_TYPES, n_boot=n_boot, seed=seed)
    groups = {k: g[0] for k, g in by_type.items()}
    group_n = {k: g[3] for k, g in by_type.items()}
    group_ci = {k: (g[1], g[2]) for k, g in by_type.items()}
    return InstructionReport(n=len(items), share=share, ci_low=lo, ci_high=hi, groups=groups, group_n=group_n,
                             group_ci=group_ci, settings=dict(settings or {}), passed=passed,
                             outputs=list(outputs), echo_share=sum(echoed) / len(echoed), clean_share=clean,
                             clean_ci=(clean_lo, clean_hi), echoed=echoed)


def evaluate_instructions(
    model,
    items: Sequence[InstructionItem],
    *,
    method: Any = None,
    outputs: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: bool | None = None,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    **steer_kwargs: Any,
) -> InstructionReport:
    """Greedy answers of ``items`` (instruction highlighted) checked by :func:`check`.

    ``model`` is a :class:`~seka_rag.SekaModel` (``method=None``: SEKA with ``steer_kwargs``;
    ``steer=False``: unsteered) used with a baseline ``method`` of
    :mod:`seka_rag.evaluation.baselines`, or a callable ``(prompts, highlights) -> answers``
    (any other system). ``outputs`` given: those answers are checked and nothing is generated.
    """
    if not items:
        raise ValueError("no items to evaluate")
    if outputs is None:
        prompts = [it.prompt for it in items]
        highlights = [[it.highlight] for it in items]
        if callable(model) and not hasattr(model, "generate"):
            if method is not None or steer_kwargs:
                raise ValueError("a generator callable takes no method or steering keywords")
            outputs = list(model(prompts, highlights))
            settings: dict[str, Any] = {"method": getattr(model, "__name__", type(model).__name__)}
        else:
            outputs = generate_texts(model, prompts, highlights, method=method, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, chat=chat, progress=progress, **steer_kwargs)
            settings = method_settings(method, steer_kwargs)
    else:
        settings = {"method": "given outputs"}
    settings["max_new_tokens"] = max_new_tokens
    return instruction_report(items, outputs, n_boot=n_boot, seed=seed, settings=settings)


__all__ = [
    "DEFAULT_N",
    "FILLER_PARAGRAPHS",
    "INSTRUCTION_TYPES",
    "InstructionItem",
    "InstructionReport",
    "LANGUAGES",
    "LEXICONS",
    "MAX_WORDS",
    "PRONOUNS",
    "SCENARIOS",
    "check",
    "check_json",
    "check_language",
    "check_max_words",
    "check_pronoun",
    "check_uppercase",
    "detect_language",
    "echoes_instruction",
    "evaluate_instructions",
    "instruction_items",
    "instruction_report",
    "instruction_text",
    "json_payload",
    "language_scores",
    "words",
]
