"""Two-document knowledge-conflict evaluation: does highlighting a document make the model follow it?

Each :class:`ConflictItem` holds two short documents that disagree on the answer to one question.
Items are either **real** (a well-known fact and a plausible wrong alternative of the same type,
written for this project; ``prior="a"`` marks the true statement) or **fictional** (generated from
the invented entities of :mod:`seka_rag.data.triplets`, no prior). :func:`conflict_cases` expands an
item into four prompts (both document orders × highlight either document), and
:func:`evaluate_conflicts` scores how often the highlighted document's answer gets the higher
log-probability (and, optionally, shows up in greedy output).

>>> items = conflict_split("dev", n=40)                          # doctest: +SKIP
>>> evaluate_conflicts(model, items, steer=True)                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from ..data.triplets import RELATIONS, Namer, Relation
from .scoring import continuation_ids, progress_bar
from .stats import mean_ci, share_ci

#: Prompt of one case: both documents, then the question.
PROMPT_TEMPLATE = "Document 1: {first}\nDocument 2: {second}\n\nQuestion: {question}\nAnswer with a short phrase."

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class ConflictItem:
    """Two documents that disagree about the answer to ``question``.

    ``prior`` is ``"a"`` when ``statement_a`` agrees with real-world knowledge (real facts) and
    ``None`` for fictional items. ``subject`` names the entity the fact is about (it decides the
    dev/test split).
    """

    question: str
    statement_a: str
    statement_b: str
    answer_a: str
    answer_b: str
    relation: str
    kind: str  #: "fictional" or "real"
    prior: str | None = None
    subject: str = ""


@dataclass(frozen=True)
class ConflictCase:
    """One prompt of a conflict item: a document order and which document is highlighted."""

    prompt: str
    highlight: str  #: the highlighted document's text (a substring of ``prompt``)
    target: str  #: answer of the highlighted document
    other: str  #: answer of the other document
    kind: str
    relation: str
    agrees_with_prior: bool | None  #: whether the highlighted document is the true one (real items)
    highlighted: str  #: "a" or "b"
    order: str  #: "ab" (statement_a first) or "ba"
    question: str = ""


# ---------------------------------------------------------------------------------------------
# Real-world facts (written for this project): (subject, true answer, plausible wrong answer),
# or (subject, true, wrong, statement template, question template) where a fact needs its own.

_Fact = tuple[str, ...]

_REAL_FACTS: tuple[tuple[str, str, str, tuple[_Fact, ...]], ...] = (
    ("capital", "The capital of {s} is {a}.", "What is the capital of {s}?", (
        ("France", "Paris", "Lyon"),
        ("Germany", "Berlin", "Munich"),
        ("Italy", "Rome", "Milan"),
        ("Spain", "Madrid", "Barcelona"),
        ("Japan", "Tokyo", "Osaka"),
        ("China", "Beijing", "Shanghai"),
        ("Russia", "Moscow", "Saint Petersburg"),
        ("Canada", "Ottawa", "Toronto"),
        ("Australia", "Canberra", "Sydney"),
        ("Egypt", "Cairo", "Alexandria"),
        ("the United Kingdom", "London", "Manchester"),
        ("India", "New Delhi", "Mumbai"),
        ("Turkey", "Ankara", "Istanbul"),
        ("Brazil", "Brasilia", "Rio de Janeiro"),
        ("Argentina", "Buenos Aires", "Cordoba"),
        ("Mexico", "Mexico City", "Guadalajara"),
        ("Greece", "Athens", "Thessaloniki"),
        ("Portugal", "Lisbon", "Porto"),
        ("Norway", "Oslo", "Bergen"),
        ("Sweden", "Stockholm", "Gothenburg"),
        ("Poland", "Warsaw", "Krakow"),
        ("Kenya", "Nairobi", "Mombasa"),
        ("South Korea", "Seoul", "Busan"),
        ("Ireland", "Dublin", "Cork"),
        ("the Netherlands", "Amsterdam", "Rotterdam"),
        ("Switzerland", "Bern", "Zurich"),
        ("Austria", "Vienna", "Salzburg"),
        ("Thailand", "Bangkok", "Phuket"),
        ("Peru", "Lima", "Cusco"),
        ("Vietnam", "Hanoi", "Saigon"),
        ("Morocco", "Rabat", "Casablanca"),
        ("Nigeria", "Abuja", "Lagos"),
        ("Pakistan", "Islamabad", "Karachi"),
        ("Denmark", "Copenhagen", "Aarhus"),
        ("Finland", "Helsinki", "Tampere"),
        ("Hungary", "Budapest", "Debrecen"),
    )),
    ("continent", "{S} is a country in {a}.", "On which continent is {s}?", (
        ("Kenya", "Africa", "Asia"),
        ("Brazil", "South America", "Africa"),
        ("Japan", "Asia", "Europe"),
        ("Canada", "North America", "Europe"),
        ("Egypt", "Africa", "South America"),
        ("Argentina", "South America", "Europe"),
        ("Norway", "Europe", "Asia"),
        ("India", "Asia", "Africa"),
        ("Peru", "South America", "Asia"),
        ("Nigeria", "Africa", "South America"),
        ("Germany", "Europe", "Africa"),
        ("Vietnam", "Asia", "South America"),
        ("Mexico", "North America", "Europe"),
        ("Chile", "South America", "Africa"),
        ("Ghana", "Africa", "Europe"),
        ("Mongolia", "Asia", "Africa"),
        ("Portugal", "Europe", "North America"),
        ("Ethiopia", "Africa", "Asia"),
    )),
    ("language", "The main language spoken in {s} is {a}.", "What is the main language spoken in {s}?", (
        ("Brazil", "Portuguese", "Spanish"),
        ("Mexico", "Spanish", "Portuguese"),
        ("Austria", "German", "Italian"),
        ("France", "French", "German"),
        ("Japan", "Japanese", "Chinese"),
        ("Italy", "Italian", "Spanish"),
        ("Russia", "Russian", "Polish"),
        ("the Netherlands", "Dutch", "German"),
        ("Greece", "Greek", "Turkish"),
        ("Poland", "Polish", "Czech"),
        ("Sweden", "Swedish", "Norwegian"),
        ("Egypt", "Arabic", "French"),
        ("Argentina", "Spanish", "Portuguese"),
        ("Portugal", "Portuguese", "Spanish"),
        ("Iran", "Persian", "Arabic"),
        ("Turkey", "Turkish", "Greek"),
        ("Finland", "Finnish", "Russian"),
        ("Hungary", "Hungarian", "Romanian"),
        ("China", "Mandarin", "Japanese"),
    )),
    ("author", "{S} was written by {a}.", "Who wrote {s}?", (
        ("Pride and Prejudice", "Jane Austen", "Charlotte Bronte"),
        ("Romeo and Juliet", "William Shakespeare", "Christopher Marlowe"),
        ("Hamlet", "William Shakespeare", "Ben Jonson"),
        ("War and Peace", "Leo Tolstoy", "Fyodor Dostoevsky"),
        ("Crime and Punishment", "Fyodor Dostoevsky", "Leo Tolstoy"),
        ("Don Quixote", "Miguel de Cervantes", "Lope de Vega"),
        ("Moby-Dick", "Herman Melville", "Mark Twain"),
        ("The Adventures of Tom Sawyer", "Mark Twain", "Herman Melville"),
        ("Nineteen Eighty-Four", "George Orwell", "Aldous Huxley"),
        ("Brave New World", "Aldous Huxley", "George Orwell"),
        ("Harry Potter and the Philosopher's Stone", "J.K. Rowling", "Roald Dahl"),
        ("The Hobbit", "J.R.R. Tolkien", "C.S. Lewis"),
        ("Oliver Twist", "Charles Dickens", "Thomas Hardy"),
        ("Frankenstein", "Mary Shelley", "Emily Bronte"),
        ("Dracula", "Bram Stoker", "Edgar Allan Poe"),
        ("the Odyssey", "Homer", "Virgil"),
        ("the Divine Comedy", "Dante Alighieri", "Giovanni Boccaccio"),
        ("Les Miserables", "Victor Hugo", "Alexandre Dumas"),
        ("The Old Man and the Sea", "Ernest Hemingway", "John Steinbeck"),
        ("The Great Gatsby", "F. Scott Fitzgerald", "Ernest Hemingway"),
        ("One Hundred Years of Solitude", "Gabriel Garcia Marquez", "Jorge Luis Borges"),
        ("The Little Prince", "Antoine de Saint-Exupery", "Jules Verne"),
        ("Twenty Thousand Leagues Under the Sea", "Jules Verne", "H.G. Wells"),
        ("The Time Machine", "H.G. Wells", "Jules Verne"),
        ("Alice's Adventures in Wonderland", "Lewis Carroll", "Roald Dahl"),
        ("The Hound of the Baskervilles", "Arthur Conan Doyle", "Agatha Christie"),
        ("Murder on the Orient Express", "Agatha Christie", "Arthur Conan Doyle"),
    )),
    ("chemical_symbol", "The chemical symbol for {s} is {a}.", "What is the chemical symbol for {s}?", (
        ("gold", "Au", "Ag"),
        ("silver", "Ag", "Au"),
        ("iron", "Fe", "Pb"),
        ("copper", "Cu", "Zn"),
        ("lead", "Pb", "Sn"),
        ("sodium", "Na", "K"),
        ("potassium", "K", "Na"),
        ("mercury", "Hg", "Mg"),
        ("tin", "Sn", "Pb"),
    )),
    ("planet_order", "The {s} planet from the Sun is {a}.", "Which planet is {s} from the Sun?", (
        ("first", "Mercury", "Venus"),
        ("second", "Venus", "Mars"),
        ("third", "Earth", "Mars"),
        ("fourth", "Mars", "Jupiter"),
        ("fifth", "Jupiter", "Saturn"),
        ("sixth", "Saturn", "Uranus"),
        ("seventh", "Uranus", "Neptune"),
        ("eighth", "Neptune", "Uranus"),
    )),
    ("currency", "The currency of {s} is the {a}.", "What is the currency of {s}?", (
        ("Japan", "yen", "won"),
        ("the United Kingdom", "pound", "euro"),
        ("the United States", "dollar", "peso"),
        ("India", "rupee", "dinar"),
        ("Russia", "ruble", "zloty"),
        ("China", "yuan", "won"),
        ("Mexico", "peso", "real"),
        ("Brazil", "real", "peso"),
        ("South Korea", "won", "yen"),
        ("Poland", "zloty", "ruble"),
        ("Switzerland", "franc", "euro"),
        ("Sweden", "krona", "euro"),
        ("Thailand", "baht", "rupee"),
        ("Turkey", "lira", "dinar"),
        ("Israel", "shekel", "lira"),
        ("South Africa", "rand", "dollar"),
        ("Vietnam", "dong", "baht"),
        ("Italy", "euro", "franc"),
    )),
    ("landmark_city", "{S} is in {a}.", "In which city is {s}?", (
        ("the Eiffel Tower", "Paris", "Rome"),
        ("the Colosseum", "Rome", "Athens"),
        ("Big Ben", "London", "Dublin"),
        ("the Statue of Liberty", "New York", "Boston"),
        ("the Brandenburg Gate", "Berlin", "Vienna"),
        ("the Sagrada Familia", "Barcelona", "Madrid"),
        ("the Kremlin", "Moscow", "Warsaw"),
        ("the Acropolis", "Athens", "Rome"),
        ("the Golden Gate Bridge", "San Francisco", "Los Angeles"),
        ("the Forbidden City", "Beijing", "Shanghai"),
        ("the Taj Mahal", "Agra", "Delhi"),
        ("the Louvre", "Paris", "London"),
        ("the Space Needle", "Seattle", "Chicago"),
        ("the Burj Khalifa", "Dubai", "Doha"),
        ("the CN Tower", "Toronto", "Montreal"),
        ("Times Square", "New York", "Chicago"),
        ("the Hagia Sophia", "Istanbul", "Athens"),
        ("the Little Mermaid statue", "Copenhagen", "Oslo"),
        ("the Atomium", "Brussels", "Amsterdam"),
        ("the Alhambra", "Granada", "Seville"),
        ("Red Square", "Moscow", "Kyiv"),
        ("the Rijksmuseum", "Amsterdam", "Rotterdam"),
        ("Buckingham Palace", "London", "Edinburgh"),
        ("the White House", "Washington", "New York"),
        ("the Christ the Redeemer statue", "Rio de Janeiro", "Sao Paulo"),
    )),
    ("inventor", "{S} was invented by {a}.", "Who invented {s}?", (
        ("the telephone", "Alexander Graham Bell", "Thomas Edison"),
        ("the phonograph", "Thomas Edison", "Alexander Graham Bell"),
        ("the World Wide Web", "Tim Berners-Lee", "Bill Gates"),
        ("the printing press", "Johannes Gutenberg", "Leonardo da Vinci"),
        ("the airplane", "the Wright brothers", "Henry Ford"),
        ("the steam engine", "James Watt", "George Stephenson"),
        ("the radio", "Guglielmo Marconi", "Thomas Edison"),
        ("dynamite", "Alfred Nobel", "Louis Pasteur"),
        ("the light bulb", "Thomas Edison", "Nikola Tesla"),
    )),
    ("discoverer", "{S} was discovered by {a}.", "Who discovered {s}?", (
        ("penicillin", "Alexander Fleming", "Louis Pasteur"),
        ("radium", "Marie Curie", "Ernest Rutherford"),
        ("the theory of relativity", "Albert Einstein", "Isaac Newton",
         "The theory of relativity was developed by {a}.", "Who developed the theory of relativity?"),
        ("the theory of evolution by natural selection", "Charles Darwin", "Gregor Mendel",
         "The theory of evolution by natural selection was proposed by {a}.",
         "Who proposed the theory of evolution by natural selection?"),
        ("the laws of motion", "Isaac Newton", "Galileo Galilei",
         "The three laws of motion were formulated by {a}.", "Who formulated the three laws of motion?"),
        ("the periodic table", "Dmitri Mendeleev", "John Dalton",
         "The periodic table was created by {a}.", "Who created the periodic table?"),
    )),
    ("composer", "{S} was composed by {a}.", "Who composed {s}?", (
        ("The Magic Flute", "Mozart", "Beethoven"),
        ("the Moonlight Sonata", "Beethoven", "Chopin"),
        ("The Four Seasons", "Vivaldi", "Bach"),
        ("Swan Lake", "Tchaikovsky", "Stravinsky"),
        ("The Nutcracker", "Tchaikovsky", "Rachmaninoff"),
        ("Fur Elise", "Beethoven", "Schubert"),
        ("The Marriage of Figaro", "Mozart", "Haydn"),
        ("The Barber of Seville", "Rossini", "Verdi"),
        ("La Traviata", "Verdi", "Puccini"),
        ("Madama Butterfly", "Puccini", "Verdi"),
        ("The Rite of Spring", "Stravinsky", "Debussy"),
        ("Clair de Lune", "Debussy", "Ravel"),
        ("Bolero", "Ravel", "Debussy"),
        ("Carmen", "Bizet", "Verdi"),
        ("the Brandenburg Concertos", "Bach", "Handel"),
        ("Messiah", "Handel", "Bach"),
        ("the Ring cycle", "Wagner", "Brahms"),
    )),
    ("painter", "{S} was painted by {a}.", "Who painted {s}?", (
        ("the Mona Lisa", "Leonardo da Vinci", "Michelangelo"),
        ("The Starry Night", "Vincent van Gogh", "Claude Monet"),
        ("The Last Supper", "Leonardo da Vinci", "Raphael"),
        ("Guernica", "Pablo Picasso", "Salvador Dali"),
        ("The Persistence of Memory", "Salvador Dali", "Pablo Picasso"),
        ("The Scream", "Edvard Munch", "Gustav Klimt"),
        ("Girl with a Pearl Earring", "Johannes Vermeer", "Rembrandt"),
        ("The Night Watch", "Rembrandt", "Johannes Vermeer"),
        ("The Birth of Venus", "Sandro Botticelli", "Raphael"),
        ("Water Lilies", "Claude Monet", "Edgar Degas"),
        ("Sunflowers", "Vincent van Gogh", "Paul Gauguin"),
        ("the ceiling of the Sistine Chapel", "Michelangelo", "Leonardo da Vinci"),
        ("American Gothic", "Grant Wood", "Edward Hopper"),
        ("Nighthawks", "Edward Hopper", "Grant Wood"),
        ("The Garden of Earthly Delights", "Hieronymus Bosch", "Pieter Bruegel"),
    )),
    ("athlete_sport", "{S} is famous for playing {a}.", "Which sport is {s} famous for?", (
        ("Lionel Messi", "football", "basketball"),
        ("Cristiano Ronaldo", "football", "tennis"),
        ("Michael Jordan", "basketball", "golf"),
        ("LeBron James", "basketball", "American football"),
        ("Serena Williams", "tennis", "golf"),
        ("Roger Federer", "tennis", "badminton"),
        ("Tiger Woods", "golf", "tennis"),
        ("Babe Ruth", "baseball", "cricket"),
        ("Wayne Gretzky", "ice hockey", "basketball"),
        ("Sachin Tendulkar", "cricket", "baseball"),
        ("Rafael Nadal", "tennis", "football"),
        ("Kobe Bryant", "basketball", "volleyball"),
        ("Diego Maradona", "football", "rugby"),
        ("Novak Djokovic", "tennis", "squash"),
        ("Tom Brady", "American football", "baseball"),
        ("Magnus Carlsen", "chess", "poker"),
        ("Stephen Curry", "basketball", "golf"),
    )),
    ("animal_class", "The {s} is {an} {a}.", "What kind of animal is the {s}?", (
        ("whale", "mammal", "fish"),
        ("dolphin", "mammal", "fish"),
        ("bat", "mammal", "bird"),
        ("penguin", "bird", "mammal"),
        ("shark", "fish", "mammal"),
        ("frog", "amphibian", "reptile"),
        ("snake", "reptile", "amphibian"),
        ("crocodile", "reptile", "amphibian"),
        ("salamander", "amphibian", "reptile"),
        ("spider", "arachnid", "insect"),
        ("ant", "insect", "arachnid"),
        ("turtle", "reptile", "amphibian"),
        ("ostrich", "bird", "mammal"),
        ("seal", "mammal", "fish"),
    )),
    ("colour", "The colour of {s} is {a}.", "What colour is {s}?", (
        ("a ripe banana", "yellow", "purple"),
        ("fresh snow", "white", "green"),
        ("grass", "green", "blue"),
        ("coal", "black", "white"),
        ("a ripe tomato", "red", "blue"),
        ("milk", "white", "black"),
        ("a lemon", "yellow", "purple"),
        ("the clear daytime sky", "blue", "green"),
        ("blood", "red", "green"),
    )),
    ("count", "", "", (
        ("a week", "seven", "nine", "A week has {a} days.", "How many days are in a week?"),
        ("a year", "twelve", "ten", "A year has {a} months.", "How many months are in a year?"),
        ("a spider", "eight", "six", "A spider has {a} legs.", "How many legs does a spider have?"),
        ("an insect", "six", "eight", "An insect has {a} legs.", "How many legs does an insect have?"),
        ("a triangle", "three", "five", "A triangle has {a} sides.", "How many sides does a triangle have?"),
        ("a hexagon", "six", "eight", "A hexagon has {a} sides.", "How many sides does a hexagon have?"),
        ("a chessboard", "64", "81", "A chessboard has {a} squares.", "How many squares does a chessboard have?"),
        ("a minute", "60", "100", "A minute has {a} seconds.", "How many seconds are in a minute?"),
        ("a leap year", "366", "365", "A leap year has {a} days.", "How many days does a leap year have?"),
        ("an octopus", "eight", "ten", "An octopus has {a} arms.", "How many arms does an octopus have?"),
        ("the human heart", "four", "two", "The human heart has {a} chambers.", "How many chambers does the human heart have?"),
        ("a century", "100", "50", "A century lasts {a} years.", "How many years are in a century?"),
        ("the Solar System", "eight", "twelve", "The Solar System has {a} planets.", "How many planets are in the Solar System?"),
    )),
    ("world_record", "", "", (
        ("Jupiter", "Jupiter", "Saturn", "The largest planet in the Solar System is {a}.",
         "What is the largest planet in the Solar System?"),
        ("the Pacific Ocean", "the Pacific Ocean", "the Atlantic Ocean", "The largest ocean on Earth is {a}.",
         "What is the largest ocean on Earth?"),
        ("Mount Everest", "Mount Everest", "Mont Blanc", "The tallest mountain in the world is {a}.",
         "What is the tallest mountain in the world?"),
        ("the Sahara", "the Sahara", "the Gobi", "The largest hot desert in the world is {a}.",
         "What is the largest hot desert in the world?"),
        ("the Nile", "the Nile", "the Congo", "The longest river in Africa is {a}.",
         "What is the longest river in Africa?"),
        ("Antarctica", "Antarctica", "Greenland", "The coldest continent on Earth is {a}.",
         "What is the coldest continent on Earth?"),
        ("diamond", "diamond", "quartz", "The hardest natural material is {a}.",
         "What is the hardest natural material?"),
        ("the cheetah", "the cheetah", "the horse", "The fastest land animal is {a}.",
         "What is the fastest land animal?"),
        ("the blue whale", "the blue whale", "the elephant", "The largest animal that has ever lived is {a}.",
         "What is the largest animal that has ever lived?"),
        ("water", "100 degrees Celsius", "70 degrees Celsius", "At sea level, water boils at {a}.",
         "At what temperature does water boil at sea level?"),
        ("carbon dioxide", "carbon dioxide", "nitrogen", "Plants take in {a} from the air for photosynthesis.",
         "Which gas do plants take in from the air for photosynthesis?"),
        ("the Sun", "the Sun", "the Moon", "The Earth orbits {a}.", "What does the Earth orbit?"),
    )),
    ("river_city", "{S} flows through {a}.", "Which city does {s} flow through?", (
        ("the Thames", "London", "Paris"),
        ("the Seine", "Paris", "London"),
        ("the Tiber", "Rome", "Milan"),
        ("the Spree", "Berlin", "Hamburg"),
        ("the Vltava", "Prague", "Warsaw"),
        ("the Hudson", "New York", "Chicago"),
        ("the Neva", "Saint Petersburg", "Kyiv"),
        ("the Arno", "Florence", "Venice"),
    )),
    ("birth_country", "{S} was born in {a}.", "In which country was {s} born?", (
        ("Frida Kahlo", "Mexico", "Spain"),
        ("Pablo Picasso", "Spain", "Italy"),
        ("Vincent van Gogh", "the Netherlands", "Belgium"),
        ("Frederic Chopin", "Poland", "France"),
        ("Hans Christian Andersen", "Denmark", "Sweden"),
        ("Nelson Mandela", "South Africa", "Kenya"),
        ("Mahatma Gandhi", "India", "Pakistan"),
        ("Confucius", "China", "Japan"),
        ("Wolfgang Amadeus Mozart", "Austria", "Germany"),
        ("Albert Einstein", "Germany", "Switzerland"),
        ("Leonardo da Vinci", "Italy", "France"),
        ("Marie Curie", "Poland", "France"),
    )),
)


def _item_problem(item: ConflictItem) -> str | None:
    """Why ``item`` breaks the item rules, or None when it is fine."""
    a, b = item.answer_a, item.answer_b
    al, bl = a.lower(), b.lower()
    if not a or not b:
        return "empty answer"
    if al == bl:
        return "answers are equal"
    if al.startswith(bl) or bl.startswith(al):
        return "one answer is a prefix of the other"
    if not 1 <= len(a.split()) <= 3 or not 1 <= len(b.split()) <= 3:
        return "answers must have 1-3 words"
    if a not in item.statement_a or b not in item.statement_b:
        return "a statement lacks its own answer"
    if al in item.statement_b.lower() or bl in item.statement_a.lower():
        return "an answer appears in the other statement"
    q = item.question.lower()
    if al in q or bl in q:
        return "an answer appears in the question"
    sa, sb = item.statement_a.lower(), item.statement_b.lower()
    if sa in sb or sb in sa:
        return "one statement contains the other"
    if item.kind not in ("real", "fictional"):
        return f"unknown kind {item.kind!r}"
    return None


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def real_conflict_items() -> list[ConflictItem]:
    """All real-world conflict items (true statement = ``statement_a``, ``prior="a"``), in table order."""
    items = []
    for relation, stmt_tpl, q_tpl, facts in _REAL_FACTS:
        for fact in facts:
            subject, true, wrong = fact[:3]
            stmt = fact[3] if len(fact) > 3 else stmt_tpl
            q = fact[4] if len(fact) > 4 else q_tpl

            def render(tpl: str, answer: str = "") -> str:
                an = "an" if answer[:1].lower() in "aeiou" else "a"
                return _sentence(tpl.format(s=subject, S=_sentence(subject), a=answer, an=an))

            item = ConflictItem(
                question=render(q), statement_a=render(stmt, true), statement_b=render(stmt, wrong),
                answer_a=true, answer_b=wrong, relation=relation, kind="real", prior="a", subject=subject,
            )
            problem = _item_problem(item)
            if problem:  # pragma: no cover - guarded by the unit tests
                raise ValueError(f"bad real conflict item {item}: {problem}")
            items.append(item)
    return items


#: Relations usable for fictional conflicts: short answers (1-3 words).
FICTIONAL_RELATIONS: tuple[Relation, ...] = tuple(r for r in RELATIONS if r.short)


def iter_fictional_conflict_items(seed: int = 0) -> Iterator[ConflictItem]:
    """An endless, reproducible stream of fictional conflict items with distinct subjects.

    Relations are cycled in a seeded random order so that every short-answer relation of
    :data:`seka_rag.data.triplets.RELATIONS` appears about equally often.
    """
    rng = random.Random(f"conflict-fictional-{seed}")
    namer = Namer(rng)
    seen: set[str] = set()
    while True:
        order = list(FICTIONAL_RELATIONS)
        rng.shuffle(order)
        for rel in order:
            for _ in range(50):
                subject = namer.subject(rel.subject)
                if subject.lower() in seen:
                    continue
                a, b = rel.answer(namer), rel.answer(namer)
                # one statement template for both documents, so they differ only in the answer
                tpl = rng.randrange(len(rel.statements))
                stmt_a = rel.statement(subject, a, rng, template=tpl)
                stmt_b = rel.statement(subject, b, rng, template=tpl)
                item = ConflictItem(
                    question=rel.question(subject, rng), statement_a=stmt_a, statement_b=stmt_b,
                    answer_a=a, answer_b=b, relation=rel.name, kind="fictional", prior=None, subject=subject,
                )
                if _item_problem(item) is None:
                    seen.add(subject.lower())
                    yield item
                    break


def fictional_conflict_items(n: int, seed: int = 0) -> list[ConflictItem]:
    """The first ``n`` items of :func:`iter_fictional_conflict_items`."""
    stream = iter_fictional_conflict_items(seed)
    return [next(stream) for _ in range(n)]


def _hash_split(subject: str) -> int:
    return hashlib.sha256(subject.lower().encode("utf-8")).digest()[0] % 2


@lru_cache(maxsize=1)
def _real_assignment() -> dict[str, str]:
    """Split of every real subject, balanced per relation.

    Relations are visited in table order; within one, unassigned subjects (in stable-hash order)
    go to the split holding fewer of that relation's facts so far. A subject already placed by an
    earlier relation keeps its split, so all facts about one entity stay together.
    """
    by_relation: dict[str, list[ConflictItem]] = {}
    for it in real_conflict_items():
        by_relation.setdefault(it.relation, []).append(it)
    assign: dict[str, str] = {}
    for items in by_relation.values():
        counts = {sp: 0 for sp in SPLITS}
        for it in items:
            if it.subject.lower() in assign:
                counts[assign[it.subject.lower()]] += 1
        todo = sorted((it for it in items if it.subject.lower() not in assign),
                      key=lambda it: hashlib.sha256(it.subject.lower().encode("utf-8")).hexdigest())
        for it in todo:
            key = it.subject.lower()
            if key in assign:  # the same subject twice in one relation
                counts[assign[key]] += 1
                continue
            pick = min(SPLITS, key=lambda sp: (counts[sp], SPLITS.index(sp) != _hash_split(key)))
            assign[key] = pick
            counts[pick] += 1
    return assign


def split_of(subject: str) -> str:
    """The split ("dev" or "test") of an entity: fixed per-relation-balanced table for the real
    subjects, a stable hash of the lower-cased name for everything else."""
    real = _real_assignment().get(subject.lower())
    return real if real is not None else SPLITS[_hash_split(subject)]


def split_for_seed(seed: int) -> str:
    """The split an evaluation's item ``seed`` draws from: ``"test"`` for seed 0, ``"dev"`` for any other."""
    return "test" if seed == 0 else "dev"


def conflict_split(split: str, n: int | None = None, seed: int = 0) -> list[ConflictItem]:
    """The ``"dev"`` or ``"test"`` conflict items: half real, half fictional, disjoint by entity.

    Real facts are assigned to a split by a stable hash of their subject, so every fact about one
    entity lands in the same split; fictional items (generated from ``seed``) are assigned the same
    way and drawn until they match the real count. The items alternate real / fictional. With
    ``n``, a seeded sample of ``n`` items keeps the balance (``ceil(n / 2)`` real, the rest fictional).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    real = [it for it in real_conflict_items() if split_of(it.subject) == split]
    fictional: list[ConflictItem] = []
    for it in iter_fictional_conflict_items(seed):
        if split_of(it.subject) == split:
            fictional.append(it)
            if len(fictional) == len(real):
                break
    rng = random.Random(f"conflict-split-{split}-{seed}")
    real = list(real)
    rng.shuffle(real)
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if n > len(real) + len(fictional):
            raise ValueError(f"the {split} split has {len(real) + len(fictional)} items; asked for {n}")
        n_real = min(len(real), n - n // 2)
        real, fictional = real[:n_real], fictional[: n - n_real]
    out: list[ConflictItem] = []
    for i in range(max(len(real), len(fictional))):
        if i < len(real):
            out.append(real[i])
        if i < len(fictional):
            out.append(fictional[i])
    return out


def conflict_cases(item: ConflictItem) -> list[ConflictCase]:
    """The four prompts of an item: documents in both orders × highlight either document."""
    cases = []
    docs = {"a": (item.statement_a, item.answer_a), "b": (item.statement_b, item.answer_b)}
    for order in ("ab", "ba"):
        first, second = docs[order[0]][0], docs[order[1]][0]
        prompt = PROMPT_TEMPLATE.format(first=first, second=second, question=item.question)
        for hl in ("a", "b"):
            other = "b" if hl == "a" else "a"
            agrees = None if item.prior is None else (hl == item.prior)
            cases.append(ConflictCase(
                prompt=prompt, highlight=docs[hl][0], target=docs[hl][1], other=docs[other][1],
                kind=item.kind, relation=item.relation, agrees_with_prior=agrees,
                highlighted=hl, order=order, question=item.question,
            ))
    return cases


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class GroupStats:
    """Win share and mean margin of one group of cases."""

    n: int
    share: float
    share_ci: tuple[float, float]
    mean_margin: float
    margin_ci: tuple[float, float]
    greedy_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready data."""
        return asdict(self)


def _group_stats(margins: Sequence[float], hits: Sequence[bool] | None, n_boot: int, seed: int,
                 clusters: Sequence[int] | None = None) -> GroupStats:
    """Shares and margins with bootstrap intervals that resample whole items (``clusters``: each case's
    item), since an item's four counterbalanced cases are not independent."""
    if not margins:
        nan = math.nan
        return GroupStats(0, nan, (nan, nan), nan, (nan, nan), None if hits is None else nan)
    share, slo, shi = share_ci([m > 0 for m in margins], n_boot, seed, clusters=clusters)
    mean, mlo, mhi = mean_ci(margins, n_boot, seed, clusters=clusters)
    return GroupStats(n=len(margins), share=share, share_ci=(slo, shi), mean_margin=mean, margin_ci=(mlo, mhi),
                      greedy_share=None if hits is None else sum(hits) / len(hits))


#: Breakdown groups of a report: name -> which cases belong.
GROUPS = {
    "real": lambda c: c.kind == "real",
    "real_agree": lambda c: c.kind == "real" and c.agrees_with_prior is True,
    "real_contradict": lambda c: c.kind == "real" and c.agrees_with_prior is False,
    "fictional": lambda c: c.kind == "fictional",
}


@dataclass
class ConflictReport:
    """Result of :func:`evaluate_conflicts`.

    ``share``: fraction of cases where the highlighted document's answer scores higher than the
    other's (a "win"); ``mean_margin``: mean of log p(target) − log p(other); both with seeded
    bootstrap 95% intervals over items (an item's four cases resampled together). ``groups`` breaks them down by kind ("real", "fictional")
    and, for real facts, by whether the highlighted document agrees with the model's likely prior
    ("real_agree") or contradicts it ("real_contradict"). ``greedy_share`` (with ``greedy=True``)
    is the fraction of greedy generations containing the target answer, and ``greedy_only_share``
    the fraction containing it but not the other document's answer (an answer that repeats both
    documents counts in the first, not the second).
    """

    n: int
    share: float
    share_ci: tuple[float, float]
    mean_margin: float
    margin_ci: tuple[float, float]
    groups: dict[str, GroupStats]
    greedy_share: float | None = None
    steer: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    margins: list[float] = field(default_factory=list, repr=False)
    cases: list[ConflictCase] = field(default_factory=list, repr=False)
    generations: list[str] | None = field(default=None, repr=False)
    greedy_only_share: float | None = None

    def to_dict(self, include_cases: bool = False) -> dict[str, Any]:
        """JSON-ready summary; ``include_cases=True`` adds every case with its margin (and generation)."""
        out: dict[str, Any] = {
            "n": self.n,
            "share": self.share,
            "share_ci": list(self.share_ci),
            "mean_margin": self.mean_margin,
            "margin_ci": list(self.margin_ci),
            "greedy_share": self.greedy_share,
            "greedy_only_share": self.greedy_only_share,
            "steer": self.steer,
            "settings": dict(self.settings),
            "groups": {k: {**g.to_dict(), "share_ci": list(g.share_ci), "margin_ci": list(g.margin_ci)}
                       for k, g in self.groups.items()},
            "interval": "bootstrap over items (each item's four cases resampled together)",
            "margins": [float(m) for m in self.margins],  # per case, four consecutive cases per item
        }
        if include_cases:
            out["cases"] = [
                {**asdict(c), "margin": m, **({} if self.generations is None else {"generation": g})}
                for c, m, g in zip(self.cases, self.margins, self.generations or [None] * len(self.cases))
            ]
        return out

    @staticmethod
    def header(label_width: int = 16) -> str:
        """Column names matching :meth:`format_row`."""
        return (
            f"{'config':<{label_width}} {'n':>5} {'share':>6} {'share 95% CI':>15} {'margin':>7} "
            f"{'margin 95% CI':>17} {'fict':>6} {'real':>6} {'agree':>6} {'contra':>6} {'greedy':>6} {'only':>6}"
        )

    def format_row(self, label: str | None = None, label_width: int = 16) -> str:
        """One table line: share and margin with CIs, per-group shares, greedy shares (containing the
        highlighted answer; containing it and not the other)."""
        if label is None:
            label = "steer" if self.steer else "no-steer"
            extra = ",".join(f"{k}={v}" for k, v in self.settings.items() if v is not None and k != "steer")
            if extra:
                label = f"{label}({extra})"

        def f(x: float | None) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

        g = self.groups
        return (
            f"{label:<{label_width}} {self.n:>5} {f(self.share):>6} "
            f"{'[' + f(self.share_ci[0]) + ',' + f(self.share_ci[1]) + ']':>15} {self.mean_margin:>+7.3f} "
            f"{'[' + format(self.margin_ci[0], '+.2f') + ',' + format(self.margin_ci[1], '+.2f') + ']':>17} "
            f"{f(g['fictional'].share):>6} {f(g['real'].share):>6} {f(g['real_agree'].share):>6} "
            f"{f(g['real_contradict'].share):>6} {f(self.greedy_share):>6} {f(self.greedy_only_share):>6}"
        )

    def __str__(self) -> str:
        return self.format_row()


def score_cases(
    model,
    cases: Sequence[ConflictCase],
    *,
    steer: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    shared_prefix: bool = True,
    **steer_kwargs: Any,
) -> list[float]:
    """Margin log p(target) − log p(other) of every case, each answer tokenised as it continues the
    prompt (:func:`~seka_rag.evaluation.scoring.continuation_ids`: after a space when the tokenizer has
    no chat template, with no lone start-of-text "▁" token).

    Cases are sorted by prompt length and scored ``batch_size`` at a time. With
    ``shared_prefix=True`` (default) each prompt runs once, steered, and both answers are scored
    from its key/value cache (half the compute of scoring two full rows; the answer tokens are
    never highlighted, so this equals ``model.score``). ``shared_prefix=False`` scores every
    (prompt, answer) row through ``model.score_encoded`` instead.
    """
    answer_ids: dict[str, list[int]] = {}

    def ids_of(text: str) -> list[int]:
        if text not in answer_ids:  # as the model starts it: after a space when there is no chat template
            try:
                answer_ids[text] = continuation_ids(model, text)
            except ValueError:
                raise ValueError(f"answer {text!r} has no tokens") from None
        return answer_ids[text]

    encoded = []  # (case index, encoded prompt, target ids, other ids)
    for i, case in enumerate(cases):
        t_ids, o_ids = ids_of(case.target), ids_of(case.other)
        longest = max(len(t_ids), len(o_ids))
        enc = model.encode(case.prompt, [case.highlight], max_length=model.context_window - longest)
        encoded.append((i, enc, t_ids, o_ids))
    encoded.sort(key=lambda r: (-len(r[1].input_ids), r[0]))
    bs = max(1, int(batch_size))
    if shared_prefix:
        return shared_prefix_margins(model, encoded, bs, steer, steer_kwargs, progress, "conflict scoring")
    rows = [(i, 0, enc, t) for i, enc, t, o in encoded] + [(i, 1, enc, o) for i, enc, t, o in encoded]
    rows.sort(key=lambda r: (-(len(r[2].input_ids) + len(r[3])), r[0], r[1]))
    scores = [[0.0, 0.0] for _ in cases]
    chunks = [rows[s : s + bs] for s in range(0, len(rows), bs)]
    for chunk in progress_bar(chunks, len(chunks), "conflict scoring", progress):
        got = model.score_encoded([(r[2], r[3]) for r in chunk], steer=steer, batch_size=bs, progress=False, **steer_kwargs)
        for r, s in zip(chunk, got):
            scores[r[0]][r[1]] = s
    return [t - o for t, o in scores]


def shared_prefix_margins(model, encoded, batch_size: int, steer: bool, steer_kwargs: dict, progress: bool,
                          desc: str) -> list[float]:
    """Margins log p(target) − log p(other) of ``encoded`` rows ``(index 0..n-1, EncodedPrompt, target ids,
    other ids)`` (sorted longest first), by index: one steered prefill per prompt, both answers from its cache."""
    margins = [math.nan] * len(encoded)
    chunks = [encoded[s : s + batch_size] for s in range(0, len(encoded), batch_size)]
    for chunk in progress_bar(chunks, len(chunks), desc, progress):
        pairs = _score_pairs(model, [r[1] for r in chunk], [(r[2], r[3]) for r in chunk], steer, steer_kwargs)
        for r, (t, o) in zip(chunk, pairs):
            margins[r[0]] = t - o
    return margins


def _cache_argument(module) -> str:
    """Name of the forward argument taking a KV cache (``cache`` in recent transformers)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _score_pairs(model, encs, pairs, steer: bool, steer_kwargs: dict) -> list[tuple[float, float]]:
    """Summed log-probs of two continuations per prompt: one steered prefill, then the answers on its cache."""
    import torch

    from ..highlight import pad_batch

    batch = pad_batch(encs, model.tokenizer.pad_token_id, side="left").to(model.device)
    prompt_pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    conts = [c for pair in pairs for c in pair]  # row 2k: target of prompt k, row 2k+1: other
    with torch.inference_mode():
        with model.steering(batch.highlight_mask, steer=steer, rows=encs, **steer_kwargs):
            out = model.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=prompt_pos,
                use_cache=True, logits_to_keep=1,
            )
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(2, dim=0)
        totals = [float(first[r, c[0]]) for r, c in enumerate(conts)]
        width = max(len(c) for c in conts) - 1  # the last answer token is never an input
        if width > 0:
            cache = getattr(out, "cache", None)
            if cache is None:  # transformers before the ``cache`` rename
                cache = out.past_key_values
            cache.batch_repeat_interleave(2)
            ids = torch.full((len(conts), width), model.tokenizer.pad_token_id, dtype=torch.long)
            cont_mask = torch.zeros((len(conts), width), dtype=torch.long)
            for r, c in enumerate(conts):
                ids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                cont_mask[r, : len(c) - 1] = 1
            ids, cont_mask = ids.to(model.device), cont_mask.to(model.device)
            attention = torch.cat([batch.attention_mask.repeat_interleave(2, dim=0), cont_mask], dim=1)
            start = batch.attention_mask.sum(-1).repeat_interleave(2)
            positions = start[:, None] + torch.arange(width, device=model.device)[None, :]
            out = model.model(
                input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                **{_cache_argument(model.model): cache},
            )
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            for r, c in enumerate(conts):
                if len(c) > 1:
                    target = torch.tensor(c[1:], device=logprobs.device)
                    totals[r] += float(logprobs[r, : len(c) - 1].gather(-1, target[:, None]).sum())
    return [(totals[2 * k], totals[2 * k + 1]) for k in range(len(pairs))]


def generate_cases(
    model,
    cases: Sequence[ConflictCase],
    *,
    steer: bool = True,
    max_new_tokens: int = 12,
    batch_size: int = 8,
    progress: bool = True,
    **steer_kwargs: Any,
) -> list[str]:
    """Greedy answer of every case (prompts batched by length; results in case order)."""
    order = sorted(range(len(cases)), key=lambda i: (-len(cases[i].prompt), i))
    bs = max(1, int(batch_size))
    chunks = [order[s : s + bs] for s in range(0, len(order), bs)]
    out: list[str] = [""] * len(cases)
    for chunk in progress_bar(chunks, len(chunks), "conflict generation", progress):
        texts = model.generate(
            [cases[i].prompt for i in chunk], highlights=[[cases[i].highlight] for i in chunk],
            steer=steer, max_new_tokens=max_new_tokens, batch_size=bs, progress=False, **steer_kwargs,
        )
        for i, text in zip(chunk, texts):
            out[i] = text
    return out


def evaluate_conflicts(
    model,
    items: Sequence[ConflictItem],
    *,
    steer: bool = True,
    greedy: bool = False,
    max_new_tokens: int = 12,
    progress: bool = True,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    shared_prefix: bool = True,
    **steer_kwargs: Any,
) -> ConflictReport:
    """Score every case of ``items``: does the highlighted document's answer win?

    ``steer_kwargs`` (``gain_pos``, ``gain_neg``, ``layers``, ``heads``) go to every model call.
    ``greedy=True`` also generates an answer per case and counts those containing the target
    (case-insensitive), and those containing it but not the other answer. Bootstrap intervals use ``n_boot`` resamples seeded with ``seed``.
    ``shared_prefix`` selects the scoring path (see :func:`score_cases`).
    """
    cases, item_of = [], []
    for i, it in enumerate(items):
        for c in conflict_cases(it):
            cases.append(c)
            item_of.append(i)
    if not cases:
        raise ValueError("no conflict items to evaluate")
    margins = score_cases(
        model, cases, steer=steer, batch_size=batch_size, progress=progress, shared_prefix=shared_prefix,
        **steer_kwargs,
    )
    generations = None
    hits: list[bool] | None = None
    if greedy:
        generations = generate_cases(
            model, cases, steer=steer, max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress=progress, **steer_kwargs,
        )
        hits = [c.target.lower() in g.lower() for c, g in zip(cases, generations)]
        only = [c.target.lower() in g.lower() and c.other.lower() not in g.lower() for c, g in zip(cases, generations)]
    overall = _group_stats(margins, hits, n_boot, seed, item_of)
    groups = {}
    for name, member in GROUPS.items():
        idx = [i for i, c in enumerate(cases) if member(c)]
        groups[name] = _group_stats(
            [margins[i] for i in idx], None if hits is None else [hits[i] for i in idx], n_boot, seed,
            [item_of[i] for i in idx],
        )
    settings = {"steer": steer, **{k: v for k, v in steer_kwargs.items()}}
    return ConflictReport(
        n=overall.n, share=overall.share, share_ci=overall.share_ci, mean_margin=overall.mean_margin,
        margin_ci=overall.margin_ci, groups=groups, greedy_share=overall.greedy_share, steer=steer,
        settings=settings, margins=list(margins), cases=cases, generations=generations,
        greedy_only_share=None if hits is None else sum(only) / len(only),
    )
