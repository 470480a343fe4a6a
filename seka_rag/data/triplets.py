"""Seeded generator of synthetic contrastive triplets (fictional entities; no copied data sets).

Everything here is invented on the fly from small hand-written word lists: people, towns, countries,
companies, ships, rivers, species, inventions, festivals... and ~45 relation types between them
(birthplace, founding year, founder, colour, height, material, capital, profession, ingredient,
population, currency, sport, composer, dates, quantities with units, multi-word names, short
phrases). A :class:`Triplet` puts one fact among 0–4 filler sentences; its ``answer`` occurs exactly
once in the context and in neither question.

The module has no torch / model imports; :mod:`seka_rag.evaluation.conflict` reuses the
:data:`RELATIONS` and :class:`Namer` machinery for its fictional conflict items.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import SekaError


@dataclass(frozen=True)
class Triplet:
    """One contrastive example for the projection builder.

    ``answer`` occurs in ``context``; ``question`` is answered by it; ``unrelated_question`` is
    about something the context does not mention.
    """

    context: str
    question: str
    answer: str
    unrelated_question: str
    relation: str = ""  #: which relation template produced it (for diversity statistics)

    def __post_init__(self) -> None:
        for name in ("context", "question", "answer", "unrelated_question", "relation"):
            if not isinstance(getattr(self, name), str):
                raise SekaError(f"Triplet.{name} must be a string, got {getattr(self, name)!r}")
        if not self.answer.strip():
            raise SekaError("a Triplet's answer must be some text of its context, not empty")
        if self.answer not in self.context:
            context = self.context if len(self.context) <= 80 else self.context[:77] + "..."
            raise SekaError(f"a Triplet's answer must occur in its context (case-sensitively): {self.answer!r} is not "
                            f"in {context!r}")


# ---------------------------------------------------------------------------------------------
# Word lists (written for this project)

_ONSETS = (
    "b", "br", "c", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p",
    "pr", "r", "s", "sk", "st", "t", "tr", "th", "v", "vr", "w", "z", "", "",
)
_NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ae", "ia")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "sk", "x", "v", "ll", "rn")

_FIRST_NAMES = (
    "Orla", "Bren", "Idris", "Maren", "Tomas", "Elsa", "Kasimir", "Lio", "Nadia", "Rufus", "Senna",
    "Tobiah", "Vera", "Wendel", "Ysolde", "Anouk", "Bastian", "Cora", "Dario", "Edda", "Fenna",
    "Gideon", "Hesper", "Ines", "Jory", "Kaia", "Leopold", "Mira", "Nils", "Odile", "Perrin",
    "Quill", "Rosalind", "Sabine", "Teodor", "Ulla", "Viggo", "Wren", "Yara", "Zeno", "Alma",
    "Bjorn", "Calla", "Dagny", "Emrys", "Fabian", "Greta", "Hollis", "Ilse", "Jasper", "Katya",
    "Linus", "Magda", "Oskar", "Petra", "Rasmus", "Solveig", "Tilde", "Aurel", "Brisa", "Corvin",
    "Delphine", "Elio", "Femke", "Galen", "Halla", "Ivo", "Juno", "Kester", "Liesel", "Marius",
)
_SURNAME_ENDINGS = ("", "", "sen", "wick", "ard", "ov", "ell", "ford", "man", "ek", "ini", "berg", "holt", "ley", "ano")
_TOWN_ENDINGS = (
    "holm", "wick", "ford", "by", "stad", "mere", "dale", "port", "gard", "ton", "vik", "ona",
    "ara", "brook", "haven", "moor", "field", "vale", "bury", "thorpe",
)
_COUNTRY_ENDINGS = ("ia", "land", "mark", "ovia", "ara", "ene", "or", "eth", "avia", "onia")
_COMPANY_KINDS = (
    "Works", "Industries", "Trading Company", "Mills", "Instruments", "Foundry", "Shipping",
    "Brewery", "Textiles", "Optics", "Ceramics", "Ropeworks", "Printing House", "Clockworks",
)
_SHIP_ADJS = (
    "Silver", "Northern", "Restless", "Quiet", "Amber", "Faithful", "Swift", "Lonely", "Gilded",
    "Morning", "Distant", "Patient", "Wandering", "Stubborn", "Lucky", "Humble",
)
_SHIP_NOUNS = (
    "Heron", "Gull", "Lantern", "Promise", "Tide", "Compass", "Otter", "Comet", "Anchor", "Willow",
    "Falcon", "Harvest", "Voyager", "Dawn", "Pilgrim", "Kestrel", "Mariner", "Thistle",
)
_SPECIES_ADJS = (
    "spotted", "striped", "dusky", "crested", "lesser", "marsh", "cave", "horned", "long-tailed",
    "pale", "giant", "dwarf", "speckled", "tufted", "ringed", "hooded", "bristled", "web-footed",
)
_SPECIES_TYPES = ("", "", "", "beetle", "finch", "toad", "lizard", "moth", "vole", "eel", "heron", "snail", "lemur")
_DISH_KINDS = ("stew", "pie", "bread", "soup", "dumplings", "cake", "porridge", "pudding", "flatbread", "casserole")
_TITLE_ADJS = (
    "Winter", "Glass", "Hollow", "Last", "Burning", "Quiet", "Salt", "Paper", "Velvet", "Iron",
    "Lantern", "Sleeping", "Broken", "Summer", "Hidden", "Seventh",
)
_TITLE_NOUNS = (
    "Orchard", "Harbour", "Crown", "Lighthouse", "Garden", "Letters", "Tide", "Staircase", "Meadow",
    "Clockmaker", "Daughter", "Voyage", "Bells", "Tower", "Archive", "Winters",
)
_BAND_NOUNS = ("Comets", "Herons", "Lanterns", "Foxes", "Anchors", "Kites", "Ravens", "Moths", "Engines", "Owls")
_FESTIVAL_KINDS = ("Lantern", "Harvest", "Kite", "Salt", "Bell", "River", "Lamp", "Cheese", "Snow", "Apple", "Boat")
_SCHOOL_FIELDS = ("Music", "Navigation", "Medicine", "Fine Arts", "Engineering", "Forestry", "Languages")
_MUSEUM_THINGS = ("Clocks", "Maps", "Glass", "Ships", "Textiles", "Folk Art", "Toys", "Minerals", "Bicycles")
_INVENTION_ADJS = ("folding", "rotary", "hydraulic", "double", "pocket", "silent", "self-winding", "three-wheeled", "floating", "steam-driven")
_DEVICES = ("loom", "press", "pump", "lantern", "compass", "typewriter", "telescope", "bicycle", "stove", "clock", "kite", "plough", "sewing machine")

_COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "brown",
    "teal", "crimson", "olive green", "pale blue", "dark red", "navy blue", "golden yellow", "pink",
)
_MATERIALS = (
    "granite", "oak", "iron", "red brick", "marble", "sandstone", "bamboo", "steel", "limestone",
    "cedar wood", "cast iron", "white marble", "pine", "reinforced concrete", "basalt", "slate",
)
_PROFESSIONS = (
    "baker", "carpenter", "lighthouse keeper", "glassblower", "surgeon", "clockmaker", "ferry pilot",
    "botanist", "archivist", "beekeeper", "stonemason", "cartographer", "violin teacher",
    "tax inspector", "bridge engineer", "pharmacist", "weaver", "astronomer", "locksmith", "midwife",
)
_INGREDIENTS = (
    "barley", "smoked eel", "chestnuts", "goat cheese", "wild garlic", "lentils", "river trout",
    "black beans", "sweet potato", "rye flour", "dried apricots", "mutton", "pumpkin", "mussels",
    "buckwheat", "sour cherries", "walnuts", "leeks",
)
_SPORTS = (
    "fencing", "water polo", "curling", "rowing", "archery", "table tennis", "cricket", "handball",
    "badminton", "ice hockey", "rugby", "cycling", "judo", "volleyball", "squash", "lacrosse",
)
_INSTRUMENTS = (
    "cello", "oboe", "harp", "trumpet", "accordion", "double bass", "viola", "bassoon", "clarinet",
    "banjo", "piano", "flute", "trombone", "harpsichord", "mandolin",
)
_DIETS = (
    "beetles", "seaweed", "pine seeds", "small fish", "fallen fruit", "moss", "river snails",
    "grasshoppers", "acorns", "crabs", "tree bark", "wild berries",
)
_HABITATS = (
    "salt marshes", "mountain caves", "pine forests", "coral reefs", "desert canyons", "river banks",
    "high meadows", "bamboo thickets", "peat bogs", "sea cliffs", "mangrove swamps",
)
_PRODUCTS = (
    "folding bicycles", "brass telescopes", "paper lanterns", "wool blankets", "copper kettles",
    "pocket watches", "sailing rope", "glass marbles", "leather boots", "rain umbrellas",
    "typewriters", "wooden toys", "fishing nets", "church bells",
)
_CARGOES = (
    "salted cod", "copper ore", "tea", "timber", "wool", "coal", "olive oil", "grain",
    "marble blocks", "spices", "raw cotton", "tin", "sugar", "wine barrels",
)
_HILLS = ("Hills", "Mountains", "Highlands", "Uplands", "Fells")
_CURRENCY_UNITS = ("crown", "mark", "florin", "shilling", "thaler", "ducat", "pound", "guilder")
_LANGUAGE_ENDINGS = ("ic", "ish", "ese", "i", "an")
_NUMBER_WORDS = ("three", "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)
_CITY_OF = ("Bells", "Bridges", "Lanterns", "Windmills", "Fountains", "Towers", "Gardens", "Ravens", "Clocks", "Kites", "Canals")
_MOTTO_NOUNS = ("light", "harbour", "truth", "river", "lantern", "mountain", "tide", "morning", "road", "north", "hearth", "bell")
_MOTTO_VERBS = ("Learn", "Build", "Sail", "Listen", "Serve", "Endure", "Search", "Grow", "Remember", "Watch")
_EMBLEM_ANIMALS = ("fox", "heron", "stag", "bear", "owl", "otter", "lion", "crane", "wolf", "salmon", "hare")
_EMBLEM_ADJS = ("silver", "golden", "black", "red", "white", "blue", "green")
_EMBLEM_OBJECTS = ("key", "lantern", "anchor", "sword", "wheel", "bell", "book", "crown", "oar", "tower")
_FLAG_SHAPES = ("star", "circle", "cross", "stripe", "triangle", "crescent")
_GENERIC_FILLERS = (
    "{S} is often mentioned in local stories.",
    "Few travellers ever visit {s}.",
    "Little else is recorded about {s}.",
    "{S} was described in a guidebook last year.",
    "Many people have never heard of {s}.",
    "{S} is a frequent topic in the regional newspaper.",
    "Old maps show {s} in some detail.",
    "A short documentary was once made about {s}.",
)


# ---------------------------------------------------------------------------------------------
# Names


def _tidy(word: str) -> str:
    """Collapse runs of three or more equal letters (``"Voullland"`` → ``"Voulland"``)."""
    return re.sub(r"(.)\1\1+", r"\1\1", word)


class Namer:
    """Invents names of fictional entities and draws answer values, all from one ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def _choice(self, seq: Sequence[str]) -> str:
        return seq[self.rng.randrange(len(seq))]

    def root(self, min_syl: int = 2, max_syl: int = 2) -> str:
        """An invented, capitalised word of ``min_syl``..``max_syl`` syllables."""
        while True:
            word = self._word(self.rng.randint(min_syl, max_syl))
            if len(word) >= 3:
                return word[0].upper() + word[1:]

    def _word(self, n: int) -> str:
        parts = []
        for i in range(n):
            onset = self._choice(_ONSETS)
            if i > 0 and not onset:
                onset = self._choice(("l", "n", "r", "v", "d", "m"))
            coda = self._choice(_CODAS) if i == n - 1 else self._choice(("", "", "n", "r", "l", "s"))
            parts.append(onset + self._choice(_NUCLEI) + coda)
        return _tidy("".join(parts))

    # entity kinds --------------------------------------------------------------------------
    def surname(self) -> str:
        return _tidy(self.root(1, 2) + self._choice(_SURNAME_ENDINGS))

    def person(self) -> str:
        return f"{self._choice(_FIRST_NAMES)} {self.surname()}"

    def town(self) -> str:
        return _tidy(self.root(1, 2) + self._choice(_TOWN_ENDINGS))

    def country(self) -> str:
        name = _tidy(self.root(1, 2) + self._choice(_COUNTRY_ENDINGS))
        return name if self.rng.random() < 0.8 else f"the Republic of {name}"

    def company(self) -> str:
        return f"{self.root(2, 2)} {self._choice(_COMPANY_KINDS)}"

    def ship(self) -> str:
        if self.rng.random() < 0.5:
            return f"the {self._choice(_SHIP_ADJS)} {self._choice(_SHIP_NOUNS)}"
        return f"the {self.root(2, 3)}"

    def river(self) -> str:
        return f"the {self.root(1, 2)} River"

    def mountain(self) -> str:
        return f"Mount {self.root(2, 3)}"

    def bridge(self) -> str:
        return f"the {self.root(1, 2)} Bridge"

    def island(self) -> str:
        return f"the island of {self.root(2, 3)}"

    def species(self) -> str:
        kind = self._choice(_SPECIES_TYPES)
        name = f"{self._choice(_SPECIES_ADJS)} {self.root(2, 2).lower()}"
        return f"{name} {kind}" if kind else name

    def dish(self) -> str:
        return f"{self.root(2, 2).lower()} {self._choice(_DISH_KINDS)}"

    def title(self) -> str:
        r = self.rng.random()
        if r < 0.4:
            return f"{self._choice(_TITLE_ADJS)} {self._choice(_TITLE_NOUNS)}"
        if r < 0.6:
            return f"Letters from {self.town()}"
        if r < 0.8:
            return f"{self.root(2, 2)}'s {self._choice(_TITLE_NOUNS)}"
        return self.root(3, 3)

    def festival(self) -> str:
        return f"the {self.root(2, 2)} {self._choice(_FESTIVAL_KINDS)} Festival"

    def school(self) -> str:
        if self.rng.random() < 0.5:
            return f"{self.root(2, 2)} Academy"
        return f"the {self.root(2, 2)} School of {self._choice(_SCHOOL_FIELDS)}"

    def museum(self) -> str:
        return f"the {self.root(2, 2)} Museum of {self._choice(_MUSEUM_THINGS)}"

    def band(self) -> str:
        return f"{self._choice(_TITLE_ADJS)} {self._choice(_BAND_NOUNS)}"

    def treaty(self) -> str:
        return f"the Treaty of {self.town()}"

    def invention(self) -> str:
        if self.rng.random() < 0.5:
            return f"the {self._choice(_INVENTION_ADJS)} {self._choice(_DEVICES)}"
        return f"the {self.root(2, 2)} {self._choice(_DEVICES)}"

    def train(self) -> str:
        return f"the {self.root(2, 2)} Express"

    def subject(self, kind: str) -> str:
        """A fresh name of entity kind ``kind`` (``"person"``, ``"town"``, ``"ship"``, ...)."""
        return getattr(self, kind)()

    # answer values ---------------------------------------------------------------------------
    def year(self) -> str:
        return str(self.rng.randint(1620, 1995))

    def population(self) -> str:
        return f"{self.rng.randint(800, 950_000):,}"

    def day_month(self) -> str:
        return f"{self.rng.randint(1, 28)} {self._choice(_MONTHS)}"

    def full_date(self) -> str:
        return f"{self.day_month()} {self.year()}"

    def clock_time(self) -> str:
        return f"{self.rng.randint(7, 11)}:{self._choice(('00', '15', '30', '45'))}"

    def currency(self) -> str:
        return f"{self.root(1, 2)} {self._choice(_CURRENCY_UNITS)}"

    def language(self) -> str:
        return _tidy(self.root(1, 2) + self._choice(_LANGUAGE_ENDINGS))

    def motto(self) -> str:
        n1, n2 = self.rng.sample(_MOTTO_NOUNS, 2)
        forms = (
            f"{self._choice(_MOTTO_VERBS)} by the {n1}",
            f"Through the {n1} to the {n2}",
            f"{n1.capitalize()} and {n2} for all",
            "Always toward the " + n1,
            f"We keep the {n1} burning",
            f"First to the {n1}, last to the {n2}",
            f"{self._choice(_MOTTO_VERBS)} and {self._choice(_MOTTO_VERBS).lower()}",
        )
        return self._choice(forms)

    def emblem(self) -> str:
        a1, a2 = self.rng.sample(_EMBLEM_ADJS, 2)
        animal, obj = self._choice(_EMBLEM_ANIMALS), self._choice(_EMBLEM_OBJECTS)
        forms = (
            f"a {a1} {animal}",
            f"a {a1} {animal} holding a {a2} {obj}",
            f"two crossed {obj}s",
            f"a {animal} beneath a {a2} {obj}",
        )
        return self._choice(forms)

    def flag(self) -> str:
        c1, c2, c3 = self.rng.sample(("red", "blue", "green", "yellow", "black", "white", "orange"), 3)
        forms = (f"{c1} and {c2}", f"{c1} with a {c2} {self._choice(_FLAG_SHAPES)}", f"{c1}, {c2} and {c3}")
        return self._choice(forms)

    def pick(self, options: Sequence[str]) -> str:
        """One of ``options``."""
        return self._choice(options)


# ---------------------------------------------------------------------------------------------
# Relations


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def sentence_case(text: str) -> str:
    """Upper-case the first character (names like "the Silver Heron" start sentences)."""
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Relation:
    """A relation type between a fictional subject and an answer value.

    ``statements`` and ``questions`` are templates with ``{s}`` (subject), ``{S}`` (subject,
    sentence-cased), ``{a}`` (answer) and ``{an}`` (the answer's indefinite article).
    ``short`` marks relations whose answers always have 1–3 words (usable for conflict items).
    """

    name: str
    subject: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    answer: Callable[[Namer], str]
    short: bool = True

    def statement(self, subject: str, answer: str, rng: random.Random, template: int | None = None) -> str:
        """One sentence stating that ``subject`` has ``answer`` (template ``template``, else a random one)."""
        if template is None:
            template = rng.randrange(len(self.statements))
        tpl = self.statements[template]
        return sentence_case(tpl.format(s=subject, S=sentence_case(subject), a=answer, an=_article(answer)))

    def question(self, subject: str, rng: random.Random) -> str:
        """One paraphrase of the question this relation answers about ``subject``."""
        tpl = self.questions[rng.randrange(len(self.questions))]
        return sentence_case(tpl.format(s=subject, S=sentence_case(subject)))


def _pool(options: Sequence[str]) -> Callable[[Namer], str]:
    return lambda namer: namer.pick(options)


def _numeric(lo: int, hi: int, unit: str, comma: bool = True) -> Callable[[Namer], str]:
    def draw(namer: Namer) -> str:
        value = namer.rng.randint(lo, hi)
        return f"{value:,} {unit}" if comma else f"{value} {unit}"

    return draw


R = Relation
#: Every relation type the generators use.
RELATIONS: tuple[Relation, ...] = (
    R("birthplace", "person",
      ("{S} was born in {a}.", "{S} was born in the town of {a}.", "The birthplace of {s} is {a}."),
      ("Where was {s} born?", "In which town was {s} born?", "What is the birthplace of {s}?",
       "Which town does {s} come from originally?"),
      Namer.town),
    R("founding_year", "company",
      ("{S} was founded in {a}.", "{S} opened its doors in {a}.", "{S} was established in the year {a}."),
      ("In what year was {s} founded?", "When was {s} established?", "What year did {s} open its doors?"),
      Namer.year),
    R("founder", "company",
      ("{S} was founded by {a}.", "The founder of {s} was {a}.", "{a} started {s}."),
      ("Who founded {s}?", "Who was the founder of {s}?", "Which person started {s}?"),
      Namer.person),
    R("hull_colour", "ship",
      ("The hull of {s} is painted {a}.", "{S} has a {a} hull."),
      ("What colour is the hull of {s}?", "What colour is {s} painted?", "Which colour is the hull of {s}?"),
      _pool(_COLOURS)),
    R("mountain_height", "mountain",
      ("{S} rises to a height of {a}.", "The summit of {s} is {a} above sea level."),
      ("How high is {s}?", "What is the height of {s}?", "How tall is {s}?"),
      _numeric(900, 6800, "metres")),
    R("bridge_material", "bridge",
      ("{S} is built from {a}.", "{S} was made of {a}."),
      ("What is {s} built from?", "What material was used to build {s}?", "What is {s} made of?"),
      _pool(_MATERIALS)),
    R("capital", "country",
      ("The capital of {s} is {a}.", "{a} is the capital city of {s}."),
      ("What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital of {s}."),
      Namer.town),
    R("profession", "person",
      ("{S} works as {an} {a}.", "By trade, {s} is {an} {a}."),
      ("What is the profession of {s}?", "What does {s} do for a living?", "What job does {s} have?"),
      _pool(_PROFESSIONS)),
    R("main_ingredient", "dish",
      ("The main ingredient of {s} is {a}.", "{S} is made mostly from {a}."),
      ("What is the main ingredient of {s}?", "What is {s} mostly made from?", "Which ingredient is {s} based on?"),
      _pool(_INGREDIENTS)),
    R("population", "town",
      ("{S} has a population of {a}.", "About {a} people live in {s}."),
      ("What is the population of {s}?", "How many people live in {s}?", "How large is the population of {s}?"),
      Namer.population),
    R("currency", "country",
      ("The currency of {s} is the {a}.", "People in {s} pay with the {a}."),
      ("What is the currency of {s}?", "Which currency is used in {s}?", "What money do people use in {s}?"),
      Namer.currency),
    R("sport", "person",
      ("{S} plays {a} professionally.", "{S} is a national champion in {a}."),
      ("Which sport does {s} play?", "What sport is {s} known for?", "In which sport does {s} compete?"),
      _pool(_SPORTS)),
    R("composer", "title",
      ("The opera {s} was composed by {a}.", "{a} wrote the music for the opera {s}."),
      ("Who composed the opera {s}?", "Who wrote the music for the opera {s}?", "Which composer created the opera {s}?"),
      Namer.person),
    R("festival_date", "festival",
      ("{S} is held every year on {a}.", "Each year {s} takes place on {a}."),
      ("On what date is {s} held?", "When does {s} take place?", "What is the date of {s}?"),
      Namer.day_month),
    R("river_length", "river",
      ("{S} is {a} long.", "{S} flows for {a} before reaching the sea."),
      ("How long is {s}?", "What is the length of {s}?", "Over what distance does {s} flow?"),
      _numeric(40, 2900, "kilometres")),
    R("weight", "species",
      ("An adult {s} weighs about {a}.", "A fully grown {s} weighs roughly {a}."),
      ("How much does an adult {s} weigh?", "What is the weight of an adult {s}?", "How heavy is a fully grown {s}?"),
      _numeric(2, 480, "kilograms", comma=False)),
    R("inventor", "invention",
      ("{S} was invented by {a}.", "{a} invented {s}."),
      ("Who invented {s}?", "Who was the inventor of {s}?", "Which person created {s}?"),
      Namer.person),
    R("diet", "species",
      ("The {s} feeds mainly on {a}.", "The diet of the {s} consists mostly of {a}."),
      ("What does the {s} eat?", "What is the main food of the {s}?", "What does the {s} feed on?"),
      _pool(_DIETS)),
    R("habitat", "species",
      ("The {s} lives in {a}.", "The {s} is usually found in {a}."),
      ("Where does the {s} live?", "What is the habitat of the {s}?", "In what kind of place is the {s} found?"),
      _pool(_HABITATS)),
    R("motto", "school",
      ('The motto of {s} is "{a}".', '{S} has the motto "{a}".'),
      ("What is the motto of {s}?", "Which motto does {s} have?", "What words form the motto of {s}?"),
      Namer.motto, short=False),
    R("headquarters", "company",
      ("{S} has its headquarters in {a}.", "{S} is based in {a}."),
      ("Where is {s} headquartered?", "In which town is {s} based?", "Where are the headquarters of {s}?"),
      Namer.town),
    R("product", "company",
      ("{S} is best known for making {a}.", "{S} mainly produces {a}."),
      ("What is {s} known for making?", "What does {s} produce?", "Which product is {s} famous for?"),
      _pool(_PRODUCTS)),
    R("captain", "ship",
      ("{S} is commanded by {a}.", "The captain of {s} is {a}."),
      ("Who commands {s}?", "Who is the captain of {s}?", "Who is in command of {s}?"),
      lambda n: f"Captain {n.surname() if n.rng.random() < 0.5 else n.person()}"),
    R("language", "country",
      ("Most people in {s} speak {a}.", "The official language of {s} is {a}."),
      ("What language is spoken in {s}?", "What is the official language of {s}?", "Which language do people in {s} speak?"),
      Namer.language),
    R("instrument", "person",
      ("{S} plays the {a} in the city orchestra.", "In the city orchestra, {s} plays the {a}."),
      ("Which instrument does {s} play?", "What instrument does {s} play in the orchestra?", "What does {s} play in the city orchestra?"),
      _pool(_INSTRUMENTS)),
    R("author", "title",
      ("The novel {s} was written by {a}.", "{a} is the author of the novel {s}."),
      ("Who wrote the novel {s}?", "Who is the author of {s}?", "Which writer wrote the novel {s}?"),
      Namer.person),
    R("island_sea", "island",
      ("{S} lies in the {a}.", "{S} is surrounded by the {a}."),
      ("In which sea does {s} lie?", "Which sea surrounds {s}?", "What sea is {s} in?"),
      lambda n: f"{n.root(2, 2)} Sea"),
    R("river_source", "river",
      ("{S} rises in the {a}.", "The source of {s} is in the {a}."),
      ("Where does {s} rise?", "Where is the source of {s}?", "Where does {s} begin?"),
      lambda n: f"{n.root(2, 2)} {n.pick(_HILLS)}"),
    R("age", "person",
      ("{S} is {a} old.", "{S} turned {a} old this spring."),
      ("How old is {s}?", "What is the age of {s}?", "What age is {s}?"),
      _numeric(19, 96, "years", comma=False)),
    R("top_speed", "train",
      ("{S} can reach {a}.", "The top speed of {s} is {a}."),
      ("What is the top speed of {s}?", "How fast can {s} go?", "What speed can {s} reach?"),
      _numeric(60, 320, "kilometres per hour", comma=False), short=False),
    R("pet_name", "person",
      ("{S} has a dog named {a}.", "The dog of {s} is called {a}."),
      ("What is the name of the dog of {s}?", "What is the dog of {s} called?", "What did {s} name the dog?"),
      lambda n: n.root(2, 2)),
    R("employer", "person",
      ("{S} works for {a}.", "{S} is employed by {a}."),
      ("Who does {s} work for?", "Which company employs {s}?", "Where is {s} employed?"),
      Namer.company),
    R("business_partner", "person",
      ("The business partner of {s} is {a}.", "{S} runs a shop together with {a}."),
      ("Who is the business partner of {s}?", "With whom does {s} run a shop?", "Who runs a shop with {s}?"),
      Namer.person),
    R("nickname", "town",
      ("{S} is often called {a}.", "Locals call {s} {a}."),
      ("What is {s} often called?", "What nickname does {s} have?", "By what name is {s} known?"),
      lambda n: f"the City of {n.pick(_CITY_OF)}", short=False),
    R("cargo", "ship",
      ("{S} carries {a} across the sea.", "The usual cargo of {s} is {a}."),
      ("What does {s} carry?", "What cargo does {s} transport?", "What is the usual cargo of {s}?"),
      _pool(_CARGOES)),
    R("bridge_river", "bridge",
      ("{S} spans the {a}.", "{S} crosses the {a}."),
      ("Which river does {s} cross?", "What river does {s} span?", "Over which river is {s} built?"),
      lambda n: f"{n.root(1, 2)} River"),
    R("lifespan", "species",
      ("The {s} has a lifespan of about {a}.", "A {s} usually lives for {a}."),
      ("What is the lifespan of the {s}?", "How long does the {s} live?", "How many years does a {s} usually live?"),
      _numeric(2, 80, "years", comma=False)),
    R("opening_time", "museum",
      ("{S} opens at {a} every morning.", "Every morning {s} opens its doors at {a}."),
      ("What time does {s} open?", "When does {s} open in the morning?", "At what time does {s} open?"),
      Namer.clock_time),
    R("band_members", "band",
      ("The band {s} has {a} members.", "There are {a} musicians in the band {s}."),
      ("How many members does the band {s} have?", "How many musicians are in {s}?", "What is the number of members in the band {s}?"),
      _pool(_NUMBER_WORDS)),
    R("flag", "country",
      ("The flag of {s} is {a}.",),
      ("What does the flag of {s} look like?", "What colours is the flag of {s}?", "Describe the flag of {s}."),
      Namer.flag, short=False),
    R("emblem", "town",
      ("The emblem of {s} shows {a}.", "On the emblem of {s} there is {a}."),
      ("What does the emblem of {s} show?", "What is on the emblem of {s}?", "What is pictured on the emblem of {s}?"),
      Namer.emblem, short=False),
    R("treaty_date", "treaty",
      ("{S} was signed on {a}.", "The signing of {s} took place on {a}."),
      ("When was {s} signed?", "On what date was {s} signed?", "What is the signing date of {s}?"),
      Namer.full_date),
    R("mayor", "town",
      ("The mayor of {s} is {a}.", "{a} is the mayor of {s}."),
      ("Who is the mayor of {s}?", "Who leads {s} as mayor?", "What is the name of the mayor of {s}?"),
      Namer.person),
    R("builder", "bridge",
      ("{S} was designed by {a}.", "The engineer who designed {s} was {a}."),
      ("Who designed {s}?", "Which engineer designed {s}?", "Who was the designer of {s}?"),
      Namer.person),
    R("opening_year", "museum",
      ("{S} first opened in {a}.", "{S} welcomed its first visitors in {a}."),
      ("When did {s} first open?", "In what year did {s} open?", "In which year did {s} welcome its first visitors?"),
      Namer.year),
)
del R

RELATIONS_BY_NAME: dict[str, Relation] = {r.name: r for r in RELATIONS}


def _contains(haystack: str, needle: str) -> bool:
    return needle.lower() in haystack.lower()


def _count(haystack: str, needle: str) -> int:
    return haystack.lower().count(needle.lower())


# ---------------------------------------------------------------------------------------------
# Triplets


def _filler(namer: Namer, rng: random.Random, subject: str, kind: str, main: Relation) -> str:
    """A sentence near the fact: another fact about the same subject, a fact elsewhere, or small talk."""
    r = rng.random()
    same_kind = [rel for rel in RELATIONS if rel.subject == kind and rel.name != main.name]
    if r < 0.35 and same_kind:
        rel = same_kind[rng.randrange(len(same_kind))]
        return rel.statement(subject, rel.answer(namer), rng)
    if r < 0.85:
        rel = RELATIONS[rng.randrange(len(RELATIONS))]
        other = namer.subject(rel.subject)
        return rel.statement(other, rel.answer(namer), rng)
    tpl = _GENERIC_FILLERS[rng.randrange(len(_GENERIC_FILLERS))]
    other_kind = RELATIONS[rng.randrange(len(RELATIONS))].subject
    other = namer.subject(other_kind)
    if other_kind == "species":
        other = f"the {other}"
    return sentence_case(tpl.format(s=other, S=sentence_case(other)))


def _one_triplet(namer: Namer, rng: random.Random) -> Triplet | None:
    rel = RELATIONS[rng.randrange(len(RELATIONS))]
    subject = namer.subject(rel.subject)
    answer = rel.answer(namer)
    main = rel.statement(subject, answer, rng)
    question = rel.question(subject, rng)
    if _count(main, answer) != 1 or _contains(question, answer):
        return None

    n_fill = rng.randint(0, 4)
    fillers: list[str] = []
    for _ in range(4 * n_fill + 2):
        if len(fillers) >= n_fill:
            break
        f = _filler(namer, rng, subject, rel.subject, rel)
        if not _contains(f, answer) and f not in fillers:
            fillers.append(f)
    at = rng.randint(0, len(fillers))
    context = " ".join(fillers[:at] + [main] + fillers[at:])
    if _count(context, answer) != 1:
        return None

    for _ in range(10):
        other_rel = RELATIONS[rng.randrange(len(RELATIONS))]
        if other_rel.name == rel.name:
            continue
        other_subject = namer.subject(other_rel.subject)
        unrelated = other_rel.question(other_subject, rng)
        bare = other_subject.removeprefix("the ")
        if _contains(context, bare) or _contains(unrelated, answer):
            continue
        return Triplet(context, question, answer, unrelated, rel.name)
    return None


def generate_triplets(n: int, seed: int = 0) -> list[Triplet]:
    """``n`` distinct synthetic contrastive triplets about fictional entities, reproducible from ``seed``.

    Each triplet's ``answer`` occurs exactly once in its ``context`` (case-insensitively) and in
    neither question; the context holds 1–5 sentences with the answer sentence at a random place;
    ``unrelated_question`` asks about an entity the context does not mention.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = random.Random(seed)
    namer = Namer(rng)
    out: list[Triplet] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:  # pragma: no cover - the generator never gets this stuck
            raise RuntimeError("could not generate enough distinct triplets")
        t = _one_triplet(namer, rng)
        if t is None or t.context in seen:
            continue
        seen.add(t.context)
        out.append(t)
    return out


def triplet_prompts(t: Triplet) -> tuple[str, str, str]:
    """The neutral (H), positive (H+) and negative (H-) prompt texts of a triplet.

    H is the context alone; H+ puts the question it answers first; H- puts the unrelated question
    first. The context text is identical in all three, so its tokens can be aligned.
    """
    return (
        f"Context: {t.context}",
        f"Question: {t.question}\nContext: {t.context}",
        f"Question: {t.unrelated_question}\nContext: {t.context}",
    )


def triplets_hash(triplets: Sequence[Triplet]) -> str:
    """sha256 hex digest of a canonical JSON dump of ``triplets`` (order matters)."""
    payload = json.dumps(
        [asdict(t) for t in triplets], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
