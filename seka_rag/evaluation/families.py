"""Evaluation items and scoring for AdaSEKA's four task families.

Each family gets items where the highlight decides the answer, scored by log-probability:
an item is a *hit* when log p(target) > max log p(other) (strictly: a tie is a miss), and its
*margin* is log p(target) − max log p(other).

``"context_qa"``
    a context with the answer fact **and** a confusable near-miss (a look-alike entity name with
    the same relation, or the same entity's other attribute with a value of the same kind); the
    question asks for the true one; the true sentence is highlighted. Not counterbalanced: the
    question itself already points to the right sentence, so unsteered models score above 50 %.
``"conflict"``
    the existing two-document conflict evaluation (:mod:`seka_rag.evaluation.conflict`), ``test``
    split (``dev`` split for any seed but 0), its four cases per item (both document orders × either
    document highlighted).
``"instruction"``
    two conflicting instructions (answer language, number format, letter case, pronoun, yes/no vs
    true/false) among ordinary sentences, then a request; one instruction is highlighted and the
    target obeys it. Every base item appears with both instruction orders × both highlights.
``"distractors"``
    8 passages (default); the question's entity appears in two passages that disagree, at
    first / middle / last positions, among passages about other entities (about half with the
    same relation); either of the two is highlighted (``group`` = its position).

Wherever two instructions or documents compete, each prompt appears once with each of them
highlighted and the targets swapped, so without steering the share is exactly 50 % (the two
margins are negatives of each other).

Items are kept apart from the build triplets of :mod:`seka_rag.data.tasks`:

* every item's entity comes from the ``test`` split of :func:`~seka_rag.evaluation.conflict.split_of`,
  while the conflict / instruction / distractors build triplets are about ``dev`` entities (for
  any seed), and the generators use different seed streams;
* the invented entities of context_qa and distractors items also avoid every name occurring
  anywhere in the reference build pool (``family_triplets(f, 1000, 0)`` for each family, which
  holds every seed-0 build set of up to 1,000 triplets as a prefix) and names made only of stock
  words (bands, ships like "the Silver Heron"), which recur across seeds.

The conflict family reuses the conflict evaluation as is: its real-world subjects can occur as
*answers* of dev facts (Italy, Leonardo da Vinci), and its fictional entities may appear in filler
sentences of build contexts, but never as the entity a build triplet is about.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import count
from typing import Any

from ..data.tasks import (
    FAMILIES,
    bare_name,
    built_triplets,
    check_count,
    check_family,
    count_ci,
    distractor_passages,
    fresh_subject,
    other_fact,
    passage,
)
from ..data.triplets import Namer, Relation
from .conflict import FICTIONAL_RELATIONS, conflict_cases, conflict_split, split_for_seed
from .scoring import continuation_ids, progress_bar
from .stats import format_ci, format_table, group_shares, share_ci

#: Items per family when ``n`` is not given (a multiple of 4, 2 and 3: complete counterbalanced sets).
DEFAULT_N = 240

#: Passages per distractor prompt by default.
DEFAULT_PASSAGES = 8

#: Size of the seed-0 build pool whose entities the evaluation items avoid.
REFERENCE_BUILD_N = 1000

#: Split the evaluation's entities come from.
EVAL_SPLIT = "test"

_ANSWER_SHORT = "Answer with a short phrase."


@dataclass(frozen=True)
class FamilyItem:
    """One scored prompt of a task family.

    ``prompt`` is plain user text (it goes through the chat template via ``model.encode``);
    ``highlight`` a substring of it occurring exactly once; ``target`` the continuation that
    should win, ``others`` the competing ones; ``group`` a breakdown label (instruction type, gold
    position, conflict kind...); ``subject`` the entity / request the item is about (used to check
    disjointness from the build data); ``unit`` names the counterbalanced variants of one prompt
    (the four cases of a conflict item, the four of an instruction base, the two of a distractors
    prompt): they are not independent, so intervals resample whole units ("" = an independent item).
    """

    family: str
    prompt: str
    highlight: str
    target: str
    others: tuple[str, ...]
    group: str = ""
    subject: str = ""
    unit: str = ""


# ---------------------------------------------------------------------------------------------
# Disjointness from the build data


@lru_cache(maxsize=1)
def reference_build_text() -> str:
    """Lower-cased text of every seed-0 reference build triplet (contexts and both questions)."""
    parts = []
    for family in FAMILIES:
        for b in built_triplets(family, REFERENCE_BUILD_N, 0):
            t = b.triplet
            parts.extend((t.context, t.question, t.unrelated_question))
    return "\n".join(parts).lower()


def in_build_pool(name: str) -> bool:
    """Whether an entity name (without a leading article) occurs in the reference build pool."""
    return bare_name(name).lower() in reference_build_text()


@lru_cache(maxsize=1)
def _stock_words() -> frozenset[str]:
    """Words of the generator's fixed name lists (ship, title, band and invention names)."""
    from ..data import triplets as t

    lists = (t._SHIP_ADJS, t._SHIP_NOUNS, t._TITLE_ADJS, t._TITLE_NOUNS, t._BAND_NOUNS, t._INVENTION_ADJS, t._DEVICES)
    return frozenset(w.lower() for words in lists for phrase in words for w in phrase.split()) | {"the"}


def distinctive(name: str) -> bool:
    """Whether ``name`` holds an invented word (names built only from stock words, like the band
    "Winter Owls" or the ship "the Silver Heron", recur across seeds, so evaluation items avoid them)."""
    return any(w.lower() not in _stock_words() for w in name.split())


def _eval_subject(namer: Namer, kind: str) -> str:
    """A fresh, distinctive test-split entity absent from the reference build pool."""
    return fresh_subject(namer, kind, EVAL_SPLIT, lambda s: not distinctive(s) or in_build_pool(s))


def _values(namer: Namer, draw: Callable[[Namer], str]) -> tuple[str, str] | None:
    """Two different values of one kind, neither containing the other (None when the draws clash)."""
    a, b = draw(namer), draw(namer)
    if count_ci(a, b) or count_ci(b, a):
        return None
    return a, b


def _once(prompt: str, *texts: str) -> bool:
    """Each of ``texts`` occurs exactly once in ``prompt`` (case-insensitively)."""
    return all(t and count_ci(prompt, t) == 1 for t in texts)


# ---------------------------------------------------------------------------------------------
# context_qa: the true fact next to a near-miss


_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "grey", "brown", "orange", "purple")


def _near(name: str, first: tuple[str, str], second: tuple[str, str], kind: str,
          value: Callable[[Namer], str]) -> tuple[Relation, Relation]:
    """Two relations of one entity kind with values of the same kind (a near-miss attribute pair)."""
    return (Relation(f"{name}/0", kind, (first[0],), (first[1],), value),
            Relation(f"{name}/1", kind, (second[0],), (second[1],), value))


def _metres(n: Namer) -> str:
    return f"{n.rng.randint(400, 6800):,} metres"


def _kilometres(n: Namer) -> str:
    return f"{n.rng.randint(20, 2900):,} kilometres"


def _years(n: Namer) -> str:
    return f"{n.rng.randint(2, 60)} years"


#: Same entity, two attributes whose values look alike (either may be asked).
_ATTRIBUTE_PAIRS: tuple[tuple[Relation, Relation], ...] = (
    _near("home", ("{S} was born in {a}.", "Where was {s} born?"),
          ("{S} now lives in {a}.", "Where does {s} live now?"), "person", Namer.town),
    _near("company_years", ("{S} was founded in {a}.", "In what year was {s} founded?"),
          ("{S} moved to a new factory in {a}.", "In what year did {s} move to a new factory?"), "company", Namer.year),
    _near("bridge_years", ("{S} was completed in {a}.", "In what year was {s} completed?"),
          ("{S} was last repaired in {a}.", "In what year was {s} last repaired?"), "bridge", Namer.year),
    _near("ship_colours", ("The hull of {s} is painted {a}.", "What colour is the hull of {s}?"),
          ("The sails of {s} are {a}.", "What colour are the sails of {s}?"), "ship",
          lambda n: n.pick(_COLOURS)),
    _near("mentors", ("The teacher of {s} was {a}.", "Who was the teacher of {s}?"),
          ("The best friend of {s} is {a}.", "Who is the best friend of {s}?"), "person", Namer.person),
    _near("town_people", ("The mayor of {s} is {a}.", "Who is the mayor of {s}?"),
          ("The town doctor of {s} is {a}.", "Who is the town doctor of {s}?"), "town", Namer.person),
    _near("heights", ("{S} rises to a height of {a}.", "How high is {s}?"),
          ("The main pass over {s} lies at {a}.", "At what height does the main pass over {s} lie?"),
          "mountain", _metres),
    _near("ages", ("The {s} usually lives for {a}.", "How long does the {s} usually live?"),
          ("The {s} is fully grown after {a}.", "After how long is the {s} fully grown?"), "species", _years),
    _near("sites", ("{S} has its headquarters in {a}.", "Where is {s} headquartered?"),
          ("The main factory of {s} is in {a}.", "Where is the main factory of {s}?"), "company", Namer.town),
    _near("hours", ("{S} opens at {a} every morning.", "What time does {s} open in the morning?"),
          ("The guided tour of {s} starts at {a}.", "What time does the guided tour of {s} start?"),
          "museum", Namer.clock_time),
    _near("cities", ("The capital of {s} is {a}.", "What is the capital of {s}?"),
          ("The largest port of {s} is {a}.", "What is the largest port of {s}?"), "country", Namer.town),
    _near("dates", ("{S} is held every year on {a}.", "On what date is {s} held?"),
          ("Tickets for {s} go on sale on {a}.", "On what date do tickets for {s} go on sale?"),
          "festival", Namer.day_month),
    _near("lengths", ("{S} is {a} long.", "How long is {s}?"),
          ("Boats can travel {a} up {s}.", "How far up {s} can boats travel?"), "river", _kilometres),
)

_NAME_STOPWORDS = frozenset(
    ("the of island mount river bridge museum festival treaty express academy school republic letters from "
     "captain").split()
)
_VOWELS = "aeiou"


def near_name(name: str, rng: random.Random) -> str:
    """A look-alike of ``name``: one vowel of its longest distinctive word replaced by another."""
    words = name.split(" ")
    idx = max(range(len(words)), key=lambda i: 0 if words[i].lower() in _NAME_STOPWORDS else len(words[i]))
    word = words[idx]
    spots = [i for i, c in enumerate(word) if c.lower() in _VOWELS]
    if not spots:
        return name
    at = spots[rng.randrange(len(spots))]
    old = word[at]
    new = rng.choice([v for v in _VOWELS if v != old.lower()])
    new = new.upper() if old.isupper() else new
    words[idx] = word[:at] + new + word[at + 1:]
    return " ".join(words)


#: Relations of the look-alike and distractor items (short answers; bands' names are all stock words).
_EVAL_RELATIONS: tuple[Relation, ...] = tuple(r for r in FICTIONAL_RELATIONS if r.subject != "band")


def _similar_name_fact(namer: Namer, rng: random.Random) -> tuple[str, str, str, str, str, str] | None:
    """(true sentence, near-miss sentence, question, target, other, subject) with look-alike names."""
    rel = _EVAL_RELATIONS[rng.randrange(len(_EVAL_RELATIONS))]
    subject = _eval_subject(namer, rel.subject)
    twin = near_name(subject, rng)
    if count_ci(twin, subject) or count_ci(subject, twin) or in_build_pool(twin):
        return None
    values = _values(namer, rel.answer)
    if values is None:
        return None
    tpl = rng.randrange(len(rel.statements))
    true = rel.statement(subject, values[0], rng, template=tpl)
    near = rel.statement(twin, values[1], rng, template=tpl)
    return true, near, rel.question(subject, rng), values[0], values[1], subject


def _attribute_fact(namer: Namer, rng: random.Random) -> tuple[str, str, str, str, str, str] | None:
    """(true sentence, near-miss sentence, question, target, other, subject): one entity, two attributes."""
    pair = _ATTRIBUTE_PAIRS[rng.randrange(len(_ATTRIBUTE_PAIRS))]
    asked, other = (pair[0], pair[1]) if rng.random() < 0.5 else (pair[1], pair[0])
    subject = _eval_subject(namer, asked.subject)
    values = _values(namer, asked.answer)
    if values is None:
        return None
    true = asked.statement(subject, values[0], rng)
    near = other.statement(subject, values[1], rng)
    return true, near, asked.question(subject, rng), values[0], values[1], subject


def _context_qa_item(namer: Namer, rng: random.Random, index: int) -> FamilyItem | None:
    mode = "similar_name" if index % 2 == 0 else "other_attribute"
    fact = (_similar_name_fact if mode == "similar_name" else _attribute_fact)(namer, rng)
    if fact is None:
        return None
    true, near, question, target, other, subject = fact
    pair = [true, near] if (index // 2) % 2 == 0 else [near, true]  # true sentence first or second
    fillers = [other_fact(namer, rng, (target, other)) for _ in range(rng.randint(1, 2))]
    sentences = [s for s in fillers if s]
    at = rng.randint(0, len(sentences))
    context = " ".join(sentences[:at] + pair + sentences[at:])
    prompt = f"Context: {context}\n\nQuestion: {question}\n{_ANSWER_SHORT}"
    if not _once(prompt, target, other) or prompt.count(true) != 1:
        return None
    return FamilyItem("context_qa", prompt, true, target, (other,), mode, subject)


def context_qa_items(n: int = DEFAULT_N, seed: int = 0) -> list[FamilyItem]:
    """``n`` context-QA items: the true fact next to a near-miss; groups ``similar_name`` / ``other_attribute``.

    Items alternate the two groups, and within each the true sentence comes first and second
    equally often.
    """
    check_count(n)
    rng = random.Random(f"family-eval-context_qa-{seed}")
    namer = Namer(rng)
    out: list[FamilyItem] = []
    seen: set[str] = set()
    for _ in range(200 * n + 100):
        if len(out) >= n:
            break
        item = _context_qa_item(namer, rng, len(out))
        if item is not None and item.prompt not in seen:
            seen.add(item.prompt)
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# conflict: the existing two-document evaluation


def conflict_family_items(n: int = DEFAULT_N, seed: int = 0, split: str | None = None) -> list[FamilyItem]:
    """The first ``n`` cases of ``conflict_split(split, n=ceil(n / 4), seed=seed)`` as family items.

    Each conflict item gives four cases (both document orders × either document highlighted), so a
    multiple of 4 keeps every item complete. ``group`` is ``"fictional"``, ``"real_agree"``
    (the highlighted document is the true one) or ``"real_contradict"``. ``split`` is ``"test"``
    (the evaluation items) or ``"dev"`` (tuning and sensitivity sweeps); ``None`` (default) follows
    the seed: ``"test"`` for seed 0, ``"dev"`` for any other seed, so a dev run (``eval-families
    --seed 1``) never scores a test case. (Context QA and distractors generate new items from the
    seed instead; their invented entities come from the test split's names for every seed, so a dev
    run's items differ from the test items but may share an entity name with one. The instruction
    family's dev seeds draw from base items outside its test split: :func:`instruction_bases`.)
    """
    if split is None:
        split = split_for_seed(seed)
    check_count(n)
    if n == 0:
        return []
    n_items = math.ceil(n / 4)
    try:
        items = conflict_split(split, n=n_items, seed=seed)
    except ValueError as err:
        raise ValueError(f"the conflict family has at most {4 * len(conflict_split(split, seed=seed))} "
                         f"cases; asked for {n}") from err
    out = []
    for k, item in enumerate(items):
        for case in conflict_cases(item):
            if case.kind == "fictional":
                group = "fictional"
            else:
                group = "real_agree" if case.agrees_with_prior else "real_contradict"
            out.append(FamilyItem("conflict", case.prompt, case.highlight, case.target, (case.other,), group,
                                  item.subject, unit=f"conflict-{split}-{seed}-{k}"))
    return out[:n]


# ---------------------------------------------------------------------------------------------
# instruction: two conflicting instructions among ordinary sentences

#: English word → (French, Spanish, German, Italian), written for this project.
TRANSLATIONS: dict[str, tuple[str, str, str, str]] = {
    "cat": ("chat", "gato", "Katze", "gatto"),
    "dog": ("chien", "perro", "Hund", "cane"),
    "house": ("maison", "casa", "Haus", "casa"),
    "water": ("eau", "agua", "Wasser", "acqua"),
    "bread": ("pain", "pan", "Brot", "pane"),
    "book": ("livre", "libro", "Buch", "libro"),
    "apple": ("pomme", "manzana", "Apfel", "mela"),
    "tree": ("arbre", "árbol", "Baum", "albero"),
    "sun": ("soleil", "sol", "Sonne", "sole"),
    "moon": ("lune", "luna", "Mond", "luna"),
    "car": ("voiture", "coche", "Auto", "macchina"),
    "flower": ("fleur", "flor", "Blume", "fiore"),
    "milk": ("lait", "leche", "Milch", "latte"),
    "cheese": ("fromage", "queso", "Käse", "formaggio"),
    "window": ("fenêtre", "ventana", "Fenster", "finestra"),
    "door": ("porte", "puerta", "Tür", "porta"),
    "chair": ("chaise", "silla", "Stuhl", "sedia"),
    "bird": ("oiseau", "pájaro", "Vogel", "uccello"),
    "fish": ("poisson", "pez", "Fisch", "pesce"),
    "horse": ("cheval", "caballo", "Pferd", "cavallo"),
    "cow": ("vache", "vaca", "Kuh", "mucca"),
    "egg": ("œuf", "huevo", "Ei", "uovo"),
    "school": ("école", "escuela", "Schule", "scuola"),
    "friend": ("ami", "amigo", "Freund", "amico"),
    "city": ("ville", "ciudad", "Stadt", "città"),
    "night": ("nuit", "noche", "Nacht", "notte"),
    "day": ("jour", "día", "Tag", "giorno"),
    "year": ("année", "año", "Jahr", "anno"),
    "woman": ("femme", "mujer", "Frau", "donna"),
    "man": ("homme", "hombre", "Mann", "uomo"),
    "child": ("enfant", "niño", "Kind", "bambino"),
    "hand": ("main", "mano", "Hand", "mano"),
    "head": ("tête", "cabeza", "Kopf", "testa"),
    "eye": ("œil", "ojo", "Auge", "occhio"),
    "heart": ("cœur", "corazón", "Herz", "cuore"),
    "red": ("rouge", "rojo", "rot", "rosso"),
    "green": ("vert", "verde", "grün", "verde"),
    "blue": ("bleu", "azul", "blau", "blu"),
    "black": ("noir", "negro", "schwarz", "nero"),
    "white": ("blanc", "blanco", "weiß", "bianco"),
    "small": ("petit", "pequeño", "klein", "piccolo"),
    "big": ("grand", "grande", "groß", "grande"),
    "cold": ("froid", "frío", "kalt", "freddo"),
    "hot": ("chaud", "caliente", "heiß", "caldo"),
    "sea": ("mer", "mar", "Meer", "mare"),
    "mountain": ("montagne", "montaña", "Berg", "montagna"),
    "river": ("rivière", "río", "Fluss", "fiume"),
    "rain": ("pluie", "lluvia", "Regen", "pioggia"),
    "snow": ("neige", "nieve", "Schnee", "neve"),
    "fire": ("feu", "fuego", "Feuer", "fuoco"),
    "star": ("étoile", "estrella", "Stern", "stella"),
    "key": ("clé", "llave", "Schlüssel", "chiave"),
    "knife": ("couteau", "cuchillo", "Messer", "coltello"),
    "spoon": ("cuillère", "cuchara", "Löffel", "cucchiaio"),
    "shoe": ("chaussure", "zapato", "Schuh", "scarpa"),
    "shirt": ("chemise", "camisa", "Hemd", "camicia"),
    "money": ("argent", "dinero", "Geld", "soldi"),
    "work": ("travail", "trabajo", "Arbeit", "lavoro"),
    "word": ("mot", "palabra", "Wort", "parola"),
    "morning": ("matin", "mañana", "Morgen", "mattina"),
    "kitchen": ("cuisine", "cocina", "Küche", "cucina"),
    "garden": ("jardin", "jardín", "Garten", "giardino"),
    "bridge": ("pont", "puente", "Brücke", "ponte"),
    "island": ("île", "isla", "Insel", "isola"),
    "forest": ("forêt", "bosque", "Wald", "foresta"),
    "boat": ("bateau", "barco", "Boot", "barca"),
    "king": ("roi", "rey", "König", "re"),
    "queen": ("reine", "reina", "Königin", "regina"),
    "church": ("église", "iglesia", "Kirche", "chiesa"),
    "street": ("rue", "calle", "Straße", "strada"),
    "butterfly": ("papillon", "mariposa", "Schmetterling", "farfalla"),
    "pig": ("cochon", "cerdo", "Schwein", "maiale"),
    "sheep": ("mouton", "oveja", "Schaf", "pecora"),
    "bear": ("ours", "oso", "Bär", "orso"),
    "lemon": ("citron", "limón", "Zitrone", "limone"),
    "sugar": ("sucre", "azúcar", "Zucker", "zucchero"),
    "beer": ("bière", "cerveza", "Bier", "birra"),
    "clock": ("horloge", "reloj", "Uhr", "orologio"),
    "dream": ("rêve", "sueño", "Traum", "sogno"),
    "song": ("chanson", "canción", "Lied", "canzone"),
    "bed": ("lit", "cama", "Bett", "letto"),
    "tooth": ("dent", "diente", "Zahn", "dente"),
    "lake": ("lac", "lago", "See", "lago"),
}
_TRANSLATION_LANGUAGES = ("French", "Spanish", "German", "Italian")

#: Questions with unambiguous whole-number answers (0-100), written for this project.
NUMBER_QUESTIONS: tuple[tuple[str, int], ...] = (
    ("How many legs does a spider have?", 8),
    ("How many legs does an insect have?", 6),
    ("How many days are there in a week?", 7),
    ("How many months are there in a year?", 12),
    ("How many hours are there in a day?", 24),
    ("How many minutes are there in an hour?", 60),
    ("How many seconds are there in a minute?", 60),
    ("How many sides does a triangle have?", 3),
    ("How many sides does a square have?", 4),
    ("How many sides does a pentagon have?", 5),
    ("How many sides does a hexagon have?", 6),
    ("How many sides does an octagon have?", 8),
    ("How many wheels does a bicycle have?", 2),
    ("How many wheels does a tricycle have?", 3),
    ("How many players does a football team have on the field?", 11),
    ("How many strings does a violin have?", 4),
    ("How many strings does a standard guitar have?", 6),
    ("How many continents are there?", 7),
    ("How many planets are there in the Solar System?", 8),
    ("How many legs does a dog have?", 4),
    ("How many days are there in September?", 30),
    ("How many cents are there in a dollar?", 100),
    ("How many years are there in a century?", 100),
    ("How many years are there in a decade?", 10),
    ("How many eggs are there in a dozen?", 12),
    ("How many colours are there in a rainbow?", 7),
    ("How many arms does an octopus have?", 8),
    ("How many fingers are there on one hand?", 5),
    ("How many toes does a person have on both feet together?", 10),
    ("How many keys does a standard piano have?", 88),
    ("How many players from one team are on a basketball court at a time?", 5),
    ("How many squares are there on a chessboard?", 64),
    ("How many cards are there in a standard deck without jokers?", 52),
    ("How many weeks are there in a year?", 52),
    ("How many faces does a cube have?", 6),
    ("How many edges does a cube have?", 12),
    ("How many corners does a cube have?", 8),
    ("How many wings does a bird have?", 2),
    ("How many humps does a dromedary camel have?", 1),
    ("How many legs does a tripod have?", 3),
    ("How many musicians play in a string quartet?", 4),
    ("How many rings are there in the Olympic symbol?", 5),
    ("How many degrees are there in a right angle?", 90),
    ("How many letters are there in the English alphabet?", 26),
    ("How many lines does a sonnet have?", 14),
    ("How many days are there in a fortnight?", 14),
    ("How many faces does a standard die have?", 6),
    ("How many inches are there in a foot?", 12),
    ("How many feet are there in a yard?", 3),
    ("How many centimetres are there in a metre?", 100),
    ("How many millimetres are there in a centimetre?", 10),
    ("How many states does the United States have?", 50),
    ("How many stripes are there on the flag of the United States?", 13),
    ("How many players does a rugby union team have on the field?", 15),
    ("How many pieces does each player start with in chess?", 16),
    ("How many days does February have in a leap year?", 29),
    ("How many wheels does a car usually have?", 4),
    ("How many hearts does an octopus have?", 3),
    ("How many teeth does an adult human usually have?", 32),
    ("How many zeros are there in one thousand?", 3),
    ("How many strings does a cello have?", 4),
    ("At what temperature in degrees Celsius does water boil at sea level?", 100),
    ("At what temperature in degrees Celsius does water freeze?", 0),
)

#: Questions with a one-word answer, for the letter-case instructions.
WORD_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What colour is the sky on a clear day?", "blue"),
    ("What colour is fresh grass?", "green"),
    ("What colour is snow?", "white"),
    ("What colour are ripe bananas?", "yellow"),
    ("Which animal says 'moo'?", "cow"),
    ("Which animal barks?", "dog"),
    ("Which animal says 'meow'?", "cat"),
    ("What is frozen water called?", "ice"),
    ("What do bees make?", "honey"),
    ("Which season comes after winter?", "spring"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of day?", "night"),
    ("What is the opposite of up?", "down"),
    ("What is the opposite of young?", "old"),
    ("What is the opposite of left?", "right"),
    ("What do you call a baby dog?", "puppy"),
    ("What do you call a baby cat?", "kitten"),
    ("What do you call a baby sheep?", "lamb"),
    ("What do you call a baby cow?", "calf"),
    ("What do you call a young frog?", "tadpole"),
    ("Which fruit keeps the doctor away, according to the saying?", "apple"),
    ("What do you use to unlock a door?", "key"),
    ("Which organ pumps blood through the body?", "heart"),
    ("Which bird is a symbol of peace?", "dove"),
    ("Which insect makes honey?", "bee"),
    ("What colour is coal?", "black"),
    ("What is the meal eaten in the morning called?", "breakfast"),
    ("Which day comes after Monday?", "Tuesday"),
    ("Which month comes after March?", "April"),
    ("Which animal is called the king of the jungle?", "lion"),
    ("Which gas do humans need to breathe?", "oxygen"),
    ("What is the main ingredient of bread?", "flour"),
    ("What do you call a house made of snow blocks?", "igloo"),
    ("Which tool is used to hit nails?", "hammer"),
    ("What do teachers write with on a blackboard?", "chalk"),
    ("Which planet do we live on?", "Earth"),
    ("Which instrument has black and white keys?", "piano"),
    ("What do spiders spin?", "webs"),
    ("Which shape has three sides?", "triangle"),
    ("What falls from the sky in winter and is white?", "snow"),
    ("Which animal has a very long neck?", "giraffe"),
    ("What do you call the colour of an orange?", "orange"),
)

#: Yes/no questions with their truth value, for the yes/no vs true/false instructions.
TRUTH_QUESTIONS: tuple[tuple[str, bool], ...] = (
    ("Is the Sun a star?", True), ("Do fish live in water?", True), ("Is ice frozen water?", True),
    ("Do birds have feathers?", True), ("Is the Pacific an ocean?", True), ("Does a week have seven days?", True),
    ("Does a triangle have three sides?", True), ("Do bees make honey?", True), ("Is snow cold?", True),
    ("Is the Moon smaller than the Earth?", True), ("Can most birds fly?", True), ("Is a whale a mammal?", True),
    ("Is grass usually green?", True), ("Do cows eat grass?", True), ("Is a carrot a vegetable?", True),
    ("Do humans need oxygen to live?", True), ("Is two plus two equal to four?", True),
    ("Is winter usually colder than summer?", True), ("Do plants need light to grow?", True),
    ("Is a lemon sour?", True),
    ("Is the Sun a planet?", False), ("Do fish live in trees?", False), ("Is ice hotter than fire?", False),
    ("Do cats have feathers?", False), ("Is the Moon made of cheese?", False), ("Does a week have ten days?", False),
    ("Does a square have five sides?", False), ("Do spiders have six legs?", False), ("Is snow usually black?", False),
    ("Is the Earth flat?", False), ("Can elephants fly?", False), ("Is a shark a bird?", False),
    ("Is a tomato a kind of metal?", False), ("Do penguins live in the desert?", False),
    ("Is a ripe banana blue?", False), ("Do trees grow upside down?", False),
    ("Is three plus three equal to seven?", False), ("Is summer usually colder than winter?", False),
    ("Do horses have wings?", False), ("Is gold a kind of gas?", False),
)

#: Gender-neutral first names for the pronoun instructions.
_PRONOUN_NAMES = (
    "Alex", "Sam", "Robin", "Jordan", "Taylor", "Casey", "Morgan", "Jamie", "Riley", "Charlie", "Avery",
    "Quinn", "Drew", "Kim", "Pat", "Frankie", "Jesse", "Rowan", "Sasha", "Kai", "Remy", "Noel", "Eden", "Ari",
)
_PRONOUN_PAIRS = (("he", "she"), ("she", "they"), ("he", "they"))

#: Ordinary sentences the instructions are placed among (evaluation only).
_EVAL_FILLERS = (
    "The meeting room on the third floor is booked all morning.",
    "Coffee and tea are available in the kitchen.",
    "The printer near the entrance is working again.",
    "Please remember to lock the back door when you leave.",
    "The new chairs should arrive next week.",
    "Several people asked about the parking rules.",
    "Lunch will be served a little later than usual today.",
    "The heating in the east wing is being repaired.",
    "A package arrived for the design team yesterday.",
    "The windows will be cleaned on Friday.",
    "Our newsletter now comes out more often.",
    "The plants in the lobby need watering.",
    "The lift is out of service until further notice.",
    "Visitors should sign in at the front desk.",
    "The summer party will take place in the garden.",
    "Someone left an umbrella in the hallway.",
    "The library has extended its opening hours.",
    "Fresh fruit is delivered every Monday.",
    "The fire drill went smoothly this time.",
    "The corridor lights are being replaced.",
    "Bicycles can be stored in the courtyard.",
    "The staff photo will be taken next month.",
    "Most of the team is working from home today.",
    "The old filing cabinets have been removed.",
    "A new water cooler was installed near the stairs.",
    "The quiet room is available for anyone who needs it.",
    "The noticeboard has been moved next to the lift.",
    "Feedback on the new schedule has been positive.",
    "The canteen menu changes every week.",
    "The courier usually comes in the afternoon.",
)

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = {2: "twenty", 3: "thirty", 4: "forty", 5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}


def number_words(n: int) -> str:
    """English words for 0 <= n <= 100 (``24`` → ``"twenty-four"``)."""
    if not 0 <= n <= 100:
        raise ValueError(f"number_words covers 0..100, got {n}")
    if n < 20:
        return _ONES[n]
    if n == 100:
        return "one hundred"
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class InstructionBase:
    """Two conflicting instructions, the request they govern, and the answer obeying each."""

    kind: str
    first: str
    second: str
    request: str
    answer_first: str
    answer_second: str


def _language_bases(rng: random.Random) -> list[InstructionBase]:
    out = []
    words = sorted(TRANSLATIONS)
    rng.shuffle(words)
    for word in words:
        forms = dict(zip(_TRANSLATION_LANGUAGES, TRANSLATIONS[word]))
        pairs = [(x, y) for i, x in enumerate(_TRANSLATION_LANGUAGES) for y in _TRANSLATION_LANGUAGES[i + 1:]
                 if _distinct(forms[x], forms[y], word)]
        if not pairs:
            continue
        x, y = pairs[rng.randrange(len(pairs))]
        out.append(InstructionBase(
            "language", f"Answer in {x}.", f"Answer in {y}.",
            f"Translate the word '{word}'. Reply with the translation only.", _cap(forms[x]), _cap(forms[y]),
        ))
    return out



def _distinct(a: str, b: str, english: str) -> bool:
    """Two answers usable as competitors: different, neither a prefix of the other, not the English word."""
    a, b = a.lower(), b.lower()
    return a != b and not a.startswith(b) and not b.startswith(a) and english not in (a, b)


def _number_bases(rng: random.Random) -> list[InstructionBase]:
    out = [InstructionBase("number", "Give all numbers as digits.", "Write all numbers out in words.",
                           f"{q} Reply with the number only.", str(v), _cap(number_words(v)))
           for q, v in NUMBER_QUESTIONS]
    rng.shuffle(out)
    return out


def _case_bases(rng: random.Random) -> list[InstructionBase]:
    out = [InstructionBase("case", "Write the answer in lowercase letters.", "Write the answer in capital letters.",
                           f"{q} Reply with one word.", w.lower(), w.upper())
           for q, w in WORD_QUESTIONS]
    rng.shuffle(out)
    return out


def _pronoun_bases(rng: random.Random) -> list[InstructionBase]:
    names = list(_PRONOUN_NAMES)
    rng.shuffle(names)
    out = []
    for round_ in range(2):
        for i, name in enumerate(names):
            x, y = _PRONOUN_PAIRS[(i + round_) % len(_PRONOUN_PAIRS)]
            out.append(InstructionBase(
                "pronoun", f"Use '{x}' when referring to {name}.", f"Use '{y}' when referring to {name}.",
                f"Which pronoun should be used for {name}? Reply with one word.", _cap(x), _cap(y),
            ))
    return out


def _truth_bases(rng: random.Random) -> list[InstructionBase]:
    out = [InstructionBase("yes_no", "Reply with yes or no.", "Reply with true or false.", q,
                           "Yes" if truth else "No", "True" if truth else "False")
           for q, truth in TRUTH_QUESTIONS]
    rng.shuffle(out)
    return out


#: Instruction types, in the round-robin order of :func:`instruction_items`.
INSTRUCTION_TYPES: tuple[str, ...] = ("language", "number", "case", "pronoun", "yes_no")
_BASES: dict[str, Callable[[random.Random], list[InstructionBase]]] = {
    "language": _language_bases, "number": _number_bases, "case": _case_bases,
    "pronoun": _pronoun_bases, "yes_no": _truth_bases,
}


#: The instruction family's test split: the first this-many base items of seed 0 (4 items each, so at
#: most 552 test items). Any other seed draws its base items from the rest, so a dev run never
#: scores a test item's request with the same pair of instructions.
INSTRUCTION_TEST_BASES = 138


def _base_key(base: InstructionBase) -> tuple[str, str, frozenset[str]]:
    return base.kind, base.request, frozenset((base.first, base.second))


def instruction_bases(seed: int = 0) -> Iterator[InstructionBase]:
    """The base items of ``seed``'s split, types in round-robin order.

    Seed 0 (the test items) yields the first :data:`INSTRUCTION_TEST_BASES` bases of its order; any
    other seed (dev items) yields its own order of every base item outside that test split.
    """
    if seed == 0:
        yield from itertools.islice(_all_instruction_bases(0), INSTRUCTION_TEST_BASES)
        return
    test = {_base_key(b) for b in itertools.islice(_all_instruction_bases(0), INSTRUCTION_TEST_BASES)}
    yield from _all_instruction_bases(seed, exclude=test)


def _all_instruction_bases(seed: int, exclude: frozenset | set = frozenset()) -> Iterator[InstructionBase]:
    """Every base item once (but those in ``exclude``), types in round-robin order (a type drops out
    when its material runs out)."""
    rng = random.Random(f"family-eval-instruction-bases-{seed}")
    pools = [iter([b for b in _BASES[kind](rng) if _base_key(b) not in exclude]) for kind in INSTRUCTION_TYPES]
    while pools:
        for pool in list(pools):
            base = next(pool, None)
            if base is None:
                pools.remove(pool)
            else:
                yield base


def _instruction_prompts(base: InstructionBase, rng: random.Random) -> tuple[str, str]:
    """The two prompts of a base item: the same sentences with the instructions in either order."""
    k = rng.randint(3, 5)
    fillers = rng.sample(_EVAL_FILLERS, k)
    p1 = rng.randint(0, k - 1)
    p2 = rng.randint(p1 + 1, k)  # at least one ordinary sentence between the two instructions

    def render(x: str, y: str) -> str:
        sentences = fillers[:p1] + [x] + fillers[p1:p2] + [y] + fillers[p2:]
        return " ".join(sentences) + "\n\n" + base.request

    return render(base.first, base.second), render(base.second, base.first)


def instruction_items(n: int = DEFAULT_N, seed: int = 0) -> list[FamilyItem]:
    """``n`` instruction items: 4 per base item (both orders × highlight either instruction).

    ``group`` is the instruction type (:data:`INSTRUCTION_TYPES`); types take turns, so the first
    ``4 * len(INSTRUCTION_TYPES) * m`` items are balanced. A multiple of 4 keeps every base complete.
    """
    check_count(n)
    rng = random.Random(f"family-eval-instruction-{seed}")
    out: list[FamilyItem] = []
    for k, base in enumerate(instruction_bases(seed)):
        if len(out) >= n:
            break
        for prompt in _instruction_prompts(base, rng):
            for hl, target, other in ((base.first, base.answer_first, base.answer_second),
                                      (base.second, base.answer_second, base.answer_first)):
                out.append(FamilyItem("instruction", prompt, hl, target, (other,), base.kind, base.request,
                                      unit=f"instruction-{seed}-{k}"))
    if len(out) < n:
        raise ValueError(f"the instruction family has at most {len(out)} items; asked for {n}")
    return out[:n]


# ---------------------------------------------------------------------------------------------
# distractors: two disagreeing passages about one entity among many others

POSITIONS = ("first", "middle", "last")
_POSITION_PAIRS = (("first", "middle"), ("middle", "last"), ("first", "last"))


def _slot(position: str, k: int, rng: random.Random) -> int:
    if position == "first":
        return 0
    if position == "last":
        return k - 1
    return k // 2 if k % 2 else rng.choice((k // 2 - 1, k // 2))


def _distractor_pair(namer: Namer, rng: random.Random, index: int, k: int) -> list[FamilyItem] | None:
    rel = _EVAL_RELATIONS[rng.randrange(len(_EVAL_RELATIONS))]
    subject = _eval_subject(namer, rel.subject)
    values = _values(namer, rel.answer)
    if values is None:
        return None
    docs = [passage(namer, rng, rel, subject, v, values) for v in values]
    bare = bare_name(subject).lower()
    slots = [None] * k
    positions = list(_POSITION_PAIRS[index % len(_POSITION_PAIRS)])
    rng.shuffle(positions)
    for doc, pos in zip(docs, positions):
        slots[_slot(pos, k, rng)] = doc
    fill = iter(distractor_passages(namer, rng, rel, k - 2, values, lambda s: bare in s.lower()))
    slots = [s if s is not None else next(fill) for s in slots]
    question = rel.question(subject, rng)
    passages = "\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(slots))
    prompt = f"{passages}\n\nQuestion: {question}\n{_ANSWER_SHORT}"
    if not _once(prompt, *values) or any(prompt.count(d) != 1 for d in docs):
        return None
    return [FamilyItem("distractors", prompt, docs[j], values[j], (values[1 - j],), positions[j], subject,
                       unit=prompt) for j in (0, 1)]


def distractor_items(n: int = DEFAULT_N, seed: int = 0, n_passages: int = DEFAULT_PASSAGES) -> list[FamilyItem]:
    """``n`` distractor items, 2 per prompt (either disagreeing passage highlighted).

    Each prompt has ``n_passages`` passages; the two about the question's entity sit at
    first/middle, middle/last or first/last (in turn, order shuffled), so every position is
    highlighted equally often over each 6 items. ``group`` is the highlighted passage's position.
    """
    check_count(n)
    if isinstance(n_passages, bool) or not isinstance(n_passages, int) or n_passages < 3:
        raise ValueError(f"n_passages must be an integer >= 3, got {n_passages!r}")
    rng = random.Random(f"family-eval-distractors-{seed}")
    namer = Namer(rng)
    out: list[FamilyItem] = []
    for attempt in count():
        if len(out) >= n:
            break
        if attempt > 200 * n + 100:  # pragma: no cover - the generator never gets this stuck
            raise RuntimeError("could not generate enough distractor items")
        pair = _distractor_pair(namer, rng, len(out) // 2, n_passages)
        if pair is not None:
            out.extend(pair)
    return out[:n]


# ---------------------------------------------------------------------------------------------
# Entry point

_MAKERS: dict[str, Callable[[int, int], list[FamilyItem]]] = {
    "context_qa": context_qa_items,
    "conflict": conflict_family_items,
    "instruction": instruction_items,
    "distractors": distractor_items,
}


def family_items(family: str, n: int | None = None, seed: int = 0) -> list[FamilyItem]:
    """``n`` evaluation items of one task family (default :data:`DEFAULT_N` = 240), reproducible from ``seed``.

    Defaults: context_qa 240 items (half similar-name, half other-attribute near misses);
    conflict the 4 cases of each of the first 60 items of the ``test`` split (30 real, 30 fictional;
    at most 1,144 cases); instruction 60 base items × 4 (12 per instruction type; at most about
    1,000); distractors 120 prompts × 2 with 8 passages each. Raises :class:`ValueError` for an
    unknown family or a negative ``n``.
    """
    check_family(family)
    return _MAKERS[family](DEFAULT_N if n is None else check_count(n), seed)


# ---------------------------------------------------------------------------------------------
# Scoring

#: Keyword arguments that may hold one entry per item (expanded to one per scored row).
_PER_ITEM_KWARGS = ("query", "query_embedding")


def _per_item(value: Any, n_items: int) -> bool:
    """Whether ``value`` holds one entry per item (a list of texts / vectors, or a 2-D tensor)."""
    if value is None or isinstance(value, (str, bytes, dict)):
        return False
    dim = getattr(value, "dim", None)
    if callable(dim):
        return dim() == 2 and value.shape[0] == n_items
    return (isinstance(value, Sequence) and len(value) == n_items and n_items > 0
            and not isinstance(value[0], (int, float)))


def _rows_kwargs(kwargs: dict[str, Any], per_item: dict[str, Any], item_index: list[int]) -> dict[str, Any]:
    """``kwargs`` with every per-item value narrowed to the rows of one chunk."""
    out = dict(kwargs)
    for key, value in per_item.items():
        out[key] = value[item_index] if callable(getattr(value, "dim", None)) else [value[i] for i in item_index]
    return out


def score_items(model, items: Sequence[FamilyItem], *, batch_size: int = 8, progress: bool = True,
                shared_prefix: bool = True, scorer: Callable[..., list[float]] | None = None,
                **steer_kwargs: Any) -> list[float]:
    """Margin log p(target) − max log p(other) of every item, in item order.

    Each prompt is encoded once with ``model.encode(item.prompt, [item.highlight], max_length=...)``
    (room left for the longest continuation); every (prompt, continuation) row is scored by
    ``model.score_encoded(rows, batch_size=batch_size, **steer_kwargs)`` in chunks of
    ``batch_size`` rows, longest first. Every extra keyword (``steer``, ``gain_pos``, ``router``,
    ``query``...) is forwarded unchanged, except that ``query`` / ``query_embedding`` given as one
    entry per item are expanded to one entry per row.

    With ``shared_prefix=True`` (default) and one competing continuation per item, each prompt runs
    once (steered) and both continuations are scored from its key/value cache, as
    :func:`seka_rag.evaluation.conflict.score_cases` does — the same numbers for half the compute.

    ``scorer`` replaces ``model.score_encoded`` (same call: ``scorer(rows, batch_size=..., **steer_kwargs)``)
    — how a baseline method (``seka_rag.evaluation.baselines``: PASTA, SPA) scores the same rows;
    it always takes the row path (``shared_prefix`` is ignored).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    per_item_given = any(k in _PER_ITEM_KWARGS and _per_item(v, len(items)) for k, v in steer_kwargs.items())
    if scorer is None and shared_prefix and items and all(len(it.others) == 1 for it in items) and not per_item_given:
        return _score_shared_prefix(model, items, batch_size, progress, steer_kwargs)
    cache: dict[str, list[int]] = {}

    def ids_of(text: str) -> list[int]:
        if text not in cache:  # as the model starts it: after a space when there is no chat template
            cache[text] = continuation_ids(model, text)
        return cache[text]

    rows = []  # (item index, continuation index, encoded prompt, continuation ids)
    for i, item in enumerate(items):
        if not item.others:
            raise ValueError(f"item {i} has no competing continuation")
        conts = [ids_of(item.target)] + [ids_of(o) for o in item.others]
        enc = model.encode(item.prompt, [item.highlight], max_length=model.context_window - max(map(len, conts)))
        rows.extend((i, j, enc, c) for j, c in enumerate(conts))
    rows.sort(key=lambda r: (-(len(r[2].input_ids) + len(r[3])), r[0], r[1]))
    per_item = {k: v for k, v in steer_kwargs.items() if k in _PER_ITEM_KWARGS and _per_item(v, len(items))}
    scores: list[list[float]] = [[math.nan] * (1 + len(it.others)) for it in items]
    chunks = [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
    for chunk in progress_bar(chunks, len(chunks), "family scoring", progress):
        kwargs = _rows_kwargs(steer_kwargs, per_item, [r[0] for r in chunk]) if per_item else steer_kwargs
        got = (scorer or model.score_encoded)([(r[2], r[3]) for r in chunk], batch_size=batch_size, **kwargs)
        for r, s in zip(chunk, got):
            scores[r[0]][r[1]] = float(s)
    return [s[0] - max(s[1:]) for s in scores]


def _score_shared_prefix(model, items, batch_size: int, progress: bool, steer_kwargs: dict) -> list[float]:
    from .conflict import shared_prefix_margins

    steer = steer_kwargs.pop("steer", True) if "steer" in steer_kwargs else True
    steer_kwargs = {k: v for k, v in steer_kwargs.items() if k != "steer"}
    encoded = []
    for i, item in enumerate(items):
        try:
            t, o = continuation_ids(model, item.target), continuation_ids(model, item.others[0])
        except ValueError:
            raise ValueError(f"item {i} has a continuation with no tokens") from None
        enc = model.encode(item.prompt, [item.highlight], max_length=model.context_window - max(len(t), len(o)))
        encoded.append((i, enc, t, o))
    encoded.sort(key=lambda r: (-len(r[1].input_ids), r[0]))
    return shared_prefix_margins(model, encoded, batch_size, steer, steer_kwargs, progress, "family scoring")


def hits_of(margins: Sequence[float]) -> list[bool]:
    """Whether each margin is a hit: strictly positive (a tie is a miss)."""
    return [m > 0 for m in margins]


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class FamilyReport:
    """Result of :func:`evaluate_family`.

    ``share`` is the fraction of hits (log p(target) strictly above every other continuation) with
    a seeded bootstrap 95 % interval ``[ci_low, ci_high]``; ``mean_margin`` the mean of
    log p(target) − max log p(other) in nats; ``groups`` the share per item group and
    ``group_n`` its size; ``hits`` / ``margins`` per item, in item order; ``units`` each item's
    resampling unit (:attr:`FamilyItem.unit`; empty in files written before units existed, whose
    items then count as independent).
    """

    family: str
    n: int
    share: float
    ci_low: float
    ci_high: float
    mean_margin: float
    groups: dict[str, float] = field(default_factory=dict)
    group_n: dict[str, int] = field(default_factory=dict)
    hits: list[bool] = field(default_factory=list, repr=False)
    margins: list[float] = field(default_factory=list, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    units: list[str] = field(default_factory=list, repr=False)

    def to_dict(self, include_items: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``include_items=False`` leaves out the per-item hits and margins."""
        out = {
            "family": self.family, "n": self.n, "share": self.share, "ci_low": self.ci_low,
            "ci_high": self.ci_high, "mean_margin": self.mean_margin, "groups": dict(self.groups),
            "group_n": dict(self.group_n), "settings": {k: _jsonable(v) for k, v in self.settings.items()},
        }
        if include_items:
            out["hits"] = list(self.hits)
            out["margins"] = list(self.margins)
            out["units"] = list(self.units)
        return out

    def cell(self) -> str:
        """``"share [lo, hi]"`` in percent, as in :func:`format_family_table`."""
        return format_ci(self.share, self.ci_low, self.ci_high)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def family_report(family: str, items: Sequence[FamilyItem], margins: Sequence[float], *, n_boot: int = 2000,
                  seed: int = 0, settings: dict[str, Any] | None = None) -> FamilyReport:
    """Summarise per-item ``margins`` of ``items`` (see :class:`FamilyReport`)."""
    if len(items) != len(margins):
        raise ValueError(f"{len(items)} items but {len(margins)} margins")
    if not items:
        raise ValueError("no items to report on")
    hits = hits_of(margins)
    # counterbalanced variants of one prompt are resampled together (see FamilyItem.unit)
    units = [item.unit or f"#{i}" for i, item in enumerate(items)]
    share, lo, hi = share_ci(hits, n_boot, seed, clusters=units)
    groups, group_n = group_shares([item.group for item in items], hits)
    return FamilyReport(
        family=family, n=len(items), share=share, ci_low=lo, ci_high=hi, mean_margin=sum(margins) / len(margins),
        groups=groups, group_n=group_n, hits=hits, margins=[float(m) for m in margins], settings=dict(settings or {}),
        units=units,
    )


def evaluate_family(model, items: Sequence[FamilyItem], *, n_boot: int = 2000, seed: int = 0,
                    **kw: Any) -> FamilyReport:
    """Score ``items`` (all of one family) with :func:`score_items` and summarise them.

    ``kw`` goes to :func:`score_items` (``batch_size``, ``progress`` and every steering keyword:
    ``steer=False``, ``gain_pos=``, ``router=``, ``query=``...); the steering keywords are also
    recorded in ``settings``. The share's interval is a percentile bootstrap over items
    (``n_boot`` resamples seeded with ``seed``).
    """
    if not items:
        raise ValueError("no items to evaluate")
    families = {it.family for it in items}
    if len(families) != 1:
        raise ValueError(f"items of one family expected, got {sorted(families)}")
    margins = score_items(model, items, **kw)
    settings = {k: v for k, v in kw.items() if k not in ("batch_size", "progress", "shared_prefix", "scorer")}
    return family_report(families.pop(), items, margins, n_boot=n_boot, seed=seed, settings=settings)


def format_family_table(rows: dict[str, dict[str, FamilyReport]]) -> str:
    """A methods × families table of ``"share [lo, hi]"`` cells (percent) with a mean-over-families column.

    ``rows`` maps a method name to its reports by family; families follow :data:`FAMILIES` order
    (others after, in first-seen order); a missing report shows ``-``; the mean is over the
    families a method has.
    """
    families = [f for f in FAMILIES if any(f in r for r in rows.values())]
    for reports in rows.values():
        families.extend(f for f in reports if f not in families)
    cells = {m: [r[f].cell() if f in r else "-" for f in families] for m, r in rows.items()}
    means = {m: (f"{100 * sum(x.share for x in r.values()) / len(r):.1f}" if r else "-") for m, r in rows.items()}
    return format_table(["method", *families, "mean"], [[m, *cells[m], means[m]] for m in rows])


def _units_of(first: FamilyReport, second: FamilyReport) -> list[str]:
    """Resampling units of paired reports: their common units, else one per item."""
    if first.units and first.units == second.units:
        return [u or f"#{i}" for i, u in enumerate(first.units)]
    return [f"#{i}" for i in range(len(first.hits))]


def paired_differences(rows: dict[str, dict[str, FamilyReport]], reference: str = "seka", *,
                       n_boot: int = 4000, seed: int = 0) -> str:
    """Each method's mean share minus ``reference``'s, paired item by item over the families both have.

    One line per other method: the difference in points with a paired bootstrap 95 % interval and
    how many items the two methods decide differently — whether a gap in the mean column is more
    than noise. Like the mean column, every family weighs the same: an item of a family with ``n_f``
    of the ``N`` paired items over ``F`` families counts ``N / (F · n_f)`` times (once each when the
    families are the same size). Empty when ``reference`` is not among ``rows`` or a report lacks
    per-item hits.
    """
    from .stats import paired_bootstrap_diff_ci

    base = rows.get(reference)
    if not base or any(not r.hits for r in base.values()):
        return ""
    lines = []
    for method, reports in rows.items():
        common = [f for f in base if f in reports and reports[f].hits and len(reports[f].hits) == len(base[f].hits)]
        if method == reference or not common:
            continue
        total = sum(len(base[f].hits) for f in common)
        weight = {f: total / (len(common) * len(base[f].hits)) for f in common}  # each family weighs the same
        a = [weight[f] * float(h) for f in common for h in reports[f].hits]
        b = [weight[f] * float(h) for f in common for h in base[f].hits]
        # counterbalanced variants resampled together, when both reports know the items' units
        units = [f"{f}/{u}" for f in common for u in _units_of(base[f], reports[f])]
        lo, hi = paired_bootstrap_diff_ci(a, b, n_boot=n_boot, seed=seed, clusters=units)
        diff = (sum(a) - sum(b)) / len(a)
        differ = sum(bool(x) != bool(y) for f in common for x, y in zip(reports[f].hits, base[f].hits))
        lines.append(f"{method} - {reference}: {100 * diff:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                     f"over {len(a)} paired items ({differ} decided differently)")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_N",
    "FamilyItem",
    "FamilyReport",
    "INSTRUCTION_TYPES",
    "context_qa_items",
    "conflict_family_items",
    "distractor_items",
    "evaluate_family",
    "family_items",
    "family_report",
    "format_family_table",
    "hits_of",
    "instruction_items",
    "paired_differences",
    "score_items",
]
