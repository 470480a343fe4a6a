"""Task families of issue #6: CounterFact-format conflicts, instruction following, lost in the middle.

Metrics on hand-made fixtures with known answers, loaders on tiny hand-written files, item builders,
and one end-to-end run of each family on a tiny random model (fast).
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zlib
from collections import Counter

import pytest
import torch

from seka_rag.evaluation.baselines import Pasta, PastaConfig, PromptEmphasis, Seka, Spa, SpaConfig, Unsteered
from seka_rag.evaluation.conflict import split_of
from seka_rag.evaluation.counterfact import (
    counterfact_family_items,
    counterfact_items,
    counterfact_report,
    evaluate_counterfact,
    generated_counterfact_items,
    load_counterfact,
    make_item,
    real_counterfact_items,
    score_counterfact,
)
from seka_rag.evaluation.families import score_items
from seka_rag.evaluation.instructions import (
    INSTRUCTION_TYPES,
    SCENARIOS,
    InstructionItem,
    check,
    detect_language,
    echoes_instruction,
    evaluate_instructions,
    instruction_items,
    instruction_report,
    instruction_text,
    json_payload,
    words,
)
from seka_rag.evaluation.lost_in_middle import (
    POLICIES,
    POSITIONS,
    best_subspan_em,
    build_items,
    contains_answer,
    evaluate_lost_in_middle,
    gold_index,
    highlighted_slots,
    load_nq,
    lost_in_middle_cases,
    lost_in_middle_cells,
    lost_in_middle_items,
    middle_window,
    normalize_answer,
    nq_record,
    top_k,
)
from seka_rag.evaluation.scoring import continuation_logprobs, generate_texts


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("qwen2", context_window=4096)


# ============================================================================ CounterFact

COUNTERFACT_RECORDS = [
    {
        "case_id": 0, "pararel_idx": 2796,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                              "target_new": {"str": "English", "id": "Q1860"},
                              "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
        "paraphrase_prompts": ["Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
        "attribute_prompts": ["J.\u00a0R.\u00a0R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    },
    {
        "case_id": 1,
        "requested_rewrite": [{"prompt": "{} is a native speaker of", "relation_id": "P1412",
                               "target_new": {"str": "Dutch"}, "target_true": {"str": "Swedish"},
                               "subject": "iPhone Girl"}],
        "paraphrase_prompts": [],
    },
    {   # equal targets: cannot be scored, skipped with a warning
        "case_id": 2,
        "requested_rewrite": {"prompt": "{} plays", "target_new": {"str": "guitar"},
                              "target_true": {"str": "Guitar"}, "subject": "Ana Ruiz"},
    },
    {   # the new target prefixes the old one: the highlight (with its full stop) is still unique
        "case_id": 3,
        "requested_rewrite": {"prompt": "The home ground of {} is in", "target_new": {"str": "Paris"},
                              "target_true": {"str": "Paris Saint-Germain"}, "subject": "FC Nowhere"},
    },
]


def test_make_item_layout():
    item = make_item("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "English", "French")
    assert item.prompt == ("Previously, the mother tongue of Danielle Darrieux is French. Currently, the mother "
                           "tongue of Danielle Darrieux is English. The mother tongue of Danielle Darrieux is")
    assert item.highlight == "the mother tongue of Danielle Darrieux is English."
    assert item.prompt.count(item.highlight) == 1
    assert item.prompt.endswith(item.question)
    # a sentence starting with the subject keeps its spelling (no capitalising, no lower-casing)
    item = make_item("iPhone Girl", "iPhone Girl is a native speaker of", "Dutch", "Swedish")
    assert item.prompt.startswith("Previously, iPhone Girl is a native speaker of Swedish. Currently, iPhone Girl")
    assert item.question == "iPhone Girl is a native speaker of"
    # acronyms are not lower-cased
    item = make_item("NASA", "NASA was founded in", "Ohio", "Washington")
    assert "Previously, NASA was" in item.prompt


@pytest.mark.parametrize("args", [
    ("X", "X is", "Paris", "paris"),           # equal targets (case-insensitively)
    ("X", "X is", "", "Rome"),                 # empty target
    ("", "X is", "Paris", "Rome"),             # no subject
    ("X", "X << is", "Paris", "Rome"),         # marker strings
])
def test_make_item_rejects(args):
    assert make_item(*args) is None


def _write_json(path, records, *, lines=False, gz=False):
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "json.gz"])
def test_load_counterfact_schema(tmp_path, fmt):
    path = _write_json(tmp_path / f"counterfact.{fmt}", COUNTERFACT_RECORDS, lines=fmt == "jsonl",
                       gz=fmt.endswith("gz"))
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        items = load_counterfact(path)
    assert [it.case_id for it in items] == ["0", "1", "3"]
    first = items[0]
    assert (first.subject, first.target_new, first.target_true, first.relation) == \
        ("Danielle Darrieux", "English", "French", "P103")
    assert first.question == "The mother tongue of Danielle Darrieux is"
    assert first.kind == "counterfact" and len(first.paraphrases) == 1
    assert items[1].question == "iPhone Girl is a native speaker of"  # list-wrapped rewrite
    psg = items[2]
    assert psg.prompt.count(psg.highlight) == 1 and psg.highlight.endswith("is in Paris.")
    assert json.loads(json.dumps(first.to_dict()))["target_new"] == "English"


def test_load_counterfact_paraphrase_and_errors(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = load_counterfact(COUNTERFACT_RECORDS, question="paraphrase")
    assert items[0].question.endswith("Danielle Darrieux, a native")
    assert items[0].new_fact == "the mother tongue of Danielle Darrieux is English"  # facts keep the rewrite prompt
    assert items[1].question == "iPhone Girl is a native speaker of"  # no paraphrase: falls back to the prompt
    with pytest.raises(ValueError, match="requested_rewrite"):
        load_counterfact([{"case_id": 9}])
    with pytest.raises(ValueError, match="target_new"):
        load_counterfact([{"requested_rewrite": {"prompt": "{} is", "subject": "X", "target_new": 3,
                                                 "target_true": {"str": "a"}}}])
    with pytest.raises(ValueError, match="question"):
        load_counterfact(COUNTERFACT_RECORDS, question="neighbourhood")
    bad = tmp_path / "bad.json"
    bad.write_text('[1, 2]', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        load_counterfact(bad)


def test_counterfact_items_from_file_sample(tmp_path):
    records = [dict(COUNTERFACT_RECORDS[0], case_id=i) for i in range(10)]
    path = _write_json(tmp_path / "cf.json", records)
    a = counterfact_items(path, n=4, seed=1)
    assert a == counterfact_items(path, n=4, seed=1)
    ids = [int(it.case_id) for it in a]
    assert len(ids) == 4 and ids == sorted(ids)  # a sample, kept in file order
    assert len(counterfact_items(path)) == 10
    with pytest.raises(ValueError, match="usable items"):
        counterfact_items(path, n=11)


def test_generated_counterfact_items():
    items = counterfact_items(n=40, seed=0)
    assert items == generated_counterfact_items(40, 0)
    assert len(items) == 40 and Counter(it.kind for it in items) == {"real": 20, "fictional": 20}
    assert [it.kind for it in items[:4]] == ["real", "fictional", "real", "fictional"]
    for it in items:
        assert it.target_new[0].lower() != it.target_true[0].lower()  # first tokens differ on any tokenizer
        assert it.prompt.count(it.highlight) == 1
        assert it.prompt.endswith(it.question)
        assert it.highlight.rstrip(".").endswith(it.target_new) and it.old_fact.endswith(it.target_true)
        assert split_of(it.subject) == "test"
        assert it.target_new not in it.question and it.target_true not in it.question
    assert len({it.subject.lower() for it in items if it.kind == "fictional"}) == 20
    real = {(it.subject, it.relation): it for it in real_counterfact_items(None)}
    italy = real["Italy", "capital"]
    assert (italy.target_true, italy.target_new) == ("Rome", "Milan")  # the new fact is the false one
    assert counterfact_items(n=40, seed=1) != items


def test_counterfact_report_equal_scores_are_misses_and_shared_first_tokens_are_left_out():
    items = [make_item("X", f"X{i} is", "Paris", "Rome") for i in range(3)]
    report = counterfact_report(items, [(-1.0, -2.0), (-2.0, -2.0), (-3.0, -1.0)])
    assert report.efficacy == pytest.approx(1 / 3)  # an equal pair of different tokens is a miss
    assert report.n_tied == 0 and report.n == 3
    assert report.mean_margin == pytest.approx((1 + 0 - 2) / 3)
    assert report.ci_low <= report.efficacy <= report.ci_high
    assert report.to_dict()["items"][0]["margin"] == 1.0
    with pytest.raises(ValueError):
        counterfact_report(items, [(0.0, 0.0)])
    # targets sharing a first token ("New York" / "New Delhi") carry no evidence: left out of every
    # figure and of n, whatever rounding their scores carry
    tied = counterfact_report(items, [(-1.0, -2.0), (-2.0 + 4.8e-7, -2.0), (-3.0, -1.0)], tied=[False, True, False])
    assert tied.n == 2 and tied.n_tied == 1 and tied.efficacy == pytest.approx(1 / 2)
    assert tied.mean_margin == pytest.approx((1 - 2) / 2)
    assert [r["case_id"] for r in tied.to_dict()["items"]] == [items[0].case_id, items[2].case_id]
    assert tied.kinds == [items[0].kind, items[2].kind] and sum(tied.group_n.values()) == 2
    with pytest.raises(ValueError, match="share their first token"):
        counterfact_report(items, [(0.0, 0.0)] * 3, tied=[True] * 3)
    with pytest.raises(ValueError, match="tie flags"):
        counterfact_report(items, [(0.0, 0.0)] * 3, tied=[True])


def test_counterfact_end_to_end(model):
    items = generated_counterfact_items(6, seed=0) + load_counterfact(COUNTERFACT_RECORDS[:2])
    steered = evaluate_counterfact(model, items, batch_size=4, progress=False)
    plain = evaluate_counterfact(model, items, batch_size=4, progress=False, steer=False)
    assert steered.n == plain.n == 8 and steered.settings["method"] == "seka" and plain.settings["steer"] is False
    assert steered.margins != plain.margins  # the highlight changes the scores
    assert set(steered.group_n) == {"real", "fictional", "counterfact"}
    # the FamilyItem route (first-token strings as continuations) gives the same margins
    fam = counterfact_family_items(model, items)
    assert len(fam) == len(items) and all(f.family == "counterfact" for f in fam)
    assert score_items(model, fam, progress=False) == pytest.approx(steered.margins, abs=1e-4)
    assert score_items(model, fam, progress=False, steer=False) == pytest.approx(plain.margins, abs=1e-4)
    # ... and through a baseline method
    assert Unsteered().score_items(model, fam, progress=False) == pytest.approx(plain.margins, abs=1e-4)
    pairs = score_counterfact(model, items[:2], method=Unsteered())
    assert [n - o for n, o in pairs] == pytest.approx(plain.margins[:2], abs=1e-4)


# ============================================================================ Instruction following

def _item(kind: str, **params) -> InstructionItem:
    return InstructionItem(kind, "prompt", "instruction", "question", "Alex", "bakery", 1, 3, **params)


@pytest.mark.parametrize("output, language, expected", [
    ("Alex a ouvert une boulangerie dans la rue du Port.", "French", True),
    ("  ELLE A OUVERT LA BOULANGERIE DANS LA RUE DU PORT.", "French", True),   # casing, leading whitespace
    ("Alex opened a bakery on Harbour Street.", "French", False),
    ("Rue du Port.", "French", True),               # short answer: one function word is enough
    ("Lyon", "French", False),                      # a bare name: no evidence (documented limit)
    ("Abrió una panadería en la calle del Puerto.", "Spanish", True),
    ("Abrió una panadería en la calle del Puerto.", "French", False),
    ("La respuesta a la pregunta es de 4 horas.", "Spanish", True),   # Spanish "a": no tie with French
    ("Para ayudar a atender a los clientes.", "Spanish", True),
    ("Il a ouvert la boulangerie près du port.", "Spanish", False),    # French "a" still reads as French
    ("Dar un curso de apicultura en la ciudad.", "Spanish", False),   # only shared words: a tie (documented)
    ("Alex hat eine Bäckerei in der Hafenstraße eröffnet.", "German", True),
    ("L'assistant aide le samedi.", "French", True),  # elision counts
    ("", "French", False),
    ("   \n", "German", False),
])
def test_language_checker(output, language, expected):
    assert check("language", output, _item("language", language=language)) is expected


def test_detect_language():
    assert detect_language("Die Bienen sammeln Nektar in den Parks und auf den Balkonen.") == "German"
    assert detect_language("The bees collect nectar in the parks.") == "English"
    assert detect_language("42") is None


@pytest.mark.parametrize("output, pronoun, expected", [
    ("She opened a bakery. Her bread is popular.", "she", True),
    ("SHE OPENED A BAKERY.", "she", True),
    ("She’s a baker who loves her work.", "she", True),               # curly apostrophe
    ("She keeps bees; they make honey for the market.", "she", True),  # other uses of 'they' are fine
    ("She opened a bakery and he helped.", "she", False),             # a competing pronoun
    ("Sheila opened a bakery.", "she", False),                        # 'she' only inside a word
    ("This is his bakery.", "he", True),                              # 'this' holds no 'his'
    ("They opened a bakery; their bread sells out.", "they", True),
    ("They opened a bakery, and she bakes.", "they", False),
    ("Alex opened a bakery.", "they", False),                         # no pronoun at all
    ("", "he", False),
    # a quoted pronoun is a mention: repeating the instruction does not pass it
    ("Robin kept four beehives. Refer to the person as 'he'.", "he", False),
    ("Refer to the person as ‘they’. Refer to the person as 'they'.", "they", False),
    ("Refer to the person as 'he'. He keeps four beehives.", "he", True),
    ('He said "yes" and sold the honey.', "he", True),
    ("Robin's bees make honey, and he sells it.", "he", True),
])
def test_pronoun_checker(output, pronoun, expected):
    assert check("pronoun", output, _item("pronoun", pronoun=pronoun)) is expected


@pytest.mark.parametrize("output, expected", [
    ("PARIS, FRANCE!", True), ("  ÉCOLE DU PORT  ", True), ("HARBOUR STREET 12.", True),
    ("Paris", False), ("HELLO world", False), ("123", False), ("", False), ("...", False),
])
def test_uppercase_checker(output, expected):
    assert check("uppercase", output) is expected


@pytest.mark.parametrize("output, expected", [
    ('{"answer": "Harbour Street"}', True),
    ('  {"answer": 4}\n', True),
    ('```json\n{"answer": "Harbour Street"}\n```', True),
    ('```JSON\n{"answer": "x"}\n```', True),
    ('Here it is:\n```\n{"answer": "x"}\n```\nHope this helps.', True),   # text outside the fence is allowed
    ('```json\n{"answer": "x"}', True),                                   # unclosed fence (cut off)
    ('`{"answer": "x"}`', True),
    ('```json {"answer": "x"}```', True),
    ('{"Answer": "x"}', False),                                           # the key is exact
    ('{"answer": ""}', False), ('{"answer": null}', False), ('{"answer": []}', False),
    ('["answer"]', False), ("answer: Harbour Street", False),
    ('{"answer": "x"} and more', False), ('```json\n{"answer": \n```', False), ("", False),
])
def test_json_checker(output, expected):
    assert check("json", output) is expected


def test_json_payload():
    assert json_payload('Sure!\n```json\n{"a": 1}\n```') == '{"a": 1}'
    assert json_payload('  {"a": 1}  ') == '{"a": 1}'


@pytest.mark.parametrize("output, limit, expected", [
    ("Harbour Street.", 3, True), ("Paris .", 3, True), ("rock-and-roll don't stop", 3, True),
    ("On Harbour Street, near the sea", 3, False), ("On Harbour Street, near the sea", 5, False),
    ("On Harbour Street near", 5, True), ("...", 5, False), ("", 5, False),
    ("At 4 a.m.", 3, True), ("About 1,000 jars", 3, True), ("Just 3.5 hours", 3, True), ("By 4:00 today", 3, True),
    ("A nine–day trip", 3, True), ("It opened in 2019. Then it closed", 5, False),
])
def test_max_words_checker(output, limit, expected):
    assert check("max_words", output, _item("max_words", max_words=limit)) is expected


def test_words():
    assert words("  Don't stop — rock-and-roll, 2 times!") == ["Don't", "stop", "rock-and-roll", "2", "times"]


def test_check_errors():
    with pytest.raises(ValueError, match="instruction type"):
        check("rhyme", "x")
    with pytest.raises(ValueError, match="language"):
        check("language", "Bonjour", None)
    with pytest.raises(ValueError, match="pronoun"):
        check("pronoun", "She", _item("pronoun"))
    with pytest.raises(TypeError):
        check("json", None)


def test_instruction_items():
    items = instruction_items(30, seed=3)
    assert items == instruction_items(30, seed=3) and items != instruction_items(30, seed=4)
    assert Counter(it.kind for it in items) == {t: 6 for t in INSTRUCTION_TYPES}
    assert [it.kind for it in items[:5]] == list(INSTRUCTION_TYPES)
    assert Counter(it.language for it in items if it.kind == "language") == {"French": 2, "Spanish": 2, "German": 2}
    assert Counter(it.pronoun for it in items if it.kind == "pronoun") == {"she": 2, "he": 2, "they": 2}
    assert Counter(it.max_words for it in items if it.kind == "max_words") == {3: 3, 5: 3}
    for it in items:
        assert it.prompt.count(it.highlight) == 1
        paragraphs = it.prompt.split("\n\n")
        assert paragraphs[-1] == f"Question: {it.question}"
        assert paragraphs.index(it.highlight) == it.position and 1 <= it.position < it.paragraphs
        assert len(paragraphs) == it.paragraphs + 2 and it.paragraphs >= 3
        assert it.person in it.prompt
    assert instruction_items(3, types=("json",))[2].kind == "json"
    with pytest.raises(ValueError):
        instruction_items(3, types=("rhyme",))


def test_scenarios_never_use_a_pronoun_for_the_person():
    forms = {"he", "him", "his", "himself", "she", "her", "hers", "herself", "they", "them", "their", "theirs"}
    for _, paragraphs, questions in SCENARIOS:
        for text in paragraphs + questions:
            assert not set(re.findall(r"[a-z]+", text.lower())) & forms, text


def test_instruction_report_on_given_outputs():
    items = [_item("uppercase"), _item("json"), _item("max_words", max_words=3), _item("language", language="French")]
    outputs = ["PARIS", '```json\n{"answer": "x"}\n```', "one two three four", "la maison est grande"]
    report = evaluate_instructions(None, items, outputs=outputs, n_boot=200)
    assert report.passed == [True, True, False, True] and report.share == 0.75 and report.n == 4
    assert report.groups == {"language": 1.0, "uppercase": 1.0, "json": 1.0, "max_words": 0.0}
    assert report.group_n["json"] == 1 and report.ci_low <= 0.75 <= report.ci_high
    assert json.loads(json.dumps(report.to_dict()))["outputs"][0] == "PARIS"
    # any system as a callable generator
    shout = evaluate_instructions(lambda prompts, highlights: ["OK"] * len(prompts), items[:1])
    assert shout.passed == [True]
    with pytest.raises(ValueError):
        instruction_report(items, outputs[:2])
    assert report.echoed == [False] * 4 and report.echo_share == 0.0 and report.clean_share == 0.75


@pytest.mark.parametrize("output, instruction, expected", [
    ("Refer to the person as 'they'. They refer to the person as 'they'.", "Refer to the person as 'they'.", True),
    ("She joined the choir. REFER TO THE PERSON AS ‘SHE’", "Refer to the person as 'she'.", True),
    ("Answer in at most 3 words. Paris.", "Answer in at most 3 words.", True),   # digits aside
    ("She joined the choir three years ago.", "Refer to the person as 'she'.", False),
    ("Refer to the person as 'he'.", "Refer to the person as 'she'.", False),    # another instruction
    ("Answer in Frenchy words.", "Answer in French.", False),                    # whole words only
    ("", "Answer in French.", False),
])
def test_echoes_instruction(output, instruction, expected):
    assert echoes_instruction(output, instruction) is expected


def test_instruction_report_counts_answers_that_echo_the_instruction():
    def real(kind: str, **params) -> InstructionItem:
        text = instruction_text(kind, **params)
        return InstructionItem(kind, f"Alex sings. {text}", text, "question", "Alex", "choir", 1, 3, **params)

    items = [real("pronoun", pronoun="she"), real("pronoun", pronoun="he"), real("json")]
    outputs = ["She sings. Refer to the person as 'she'.", "He sings in the choir.",
               "Answer with a JSON object with key 'answer'."]
    report = instruction_report(items, outputs, n_boot=200)
    assert report.passed == [True, True, False] and report.echoed == [True, False, True]
    assert report.echo_share == pytest.approx(2 / 3) and report.clean_share == pytest.approx(1 / 3)
    assert report.clean_ci[0] <= report.clean_share <= report.clean_ci[1]
    data = report.to_dict()
    assert data["echoed"] == [True, False, True] and data["clean_share"] == pytest.approx(1 / 3)
    assert "echoed" not in report.to_dict(include_items=False) and "clean_share" in report.to_dict(include_items=False)


def test_instructions_end_to_end(model):
    items = instruction_items(5, seed=0)
    steered = evaluate_instructions(model, items, max_new_tokens=4, batch_size=3, progress=False)
    plain = evaluate_instructions(model, items, max_new_tokens=4, batch_size=3, progress=False, steer=False)
    assert steered.n == plain.n == 5 and set(steered.groups) == set(INSTRUCTION_TYPES)
    assert all(isinstance(o, str) for o in steered.outputs)
    assert steered.passed == [check(it.kind, o, it) for it, o in zip(items, steered.outputs)]
    via_method = evaluate_instructions(model, items, method=Unsteered(), max_new_tokens=4, batch_size=3,
                                       progress=False)
    assert via_method.outputs == plain.outputs and via_method.settings["method"] == "unsteered"
    direct = model.generate([it.prompt for it in items], [[it.highlight] for it in items], max_new_tokens=4)
    assert steered.outputs == direct


# ============================================================================ Lost in the middle

NQ_RECORDS = [
    {"question": "who wrote the novel moby dick", "answers": ["Herman Melville"],
     "ctxs": [{"title": "Moby-Dick", "text": "Moby-Dick is an 1851 novel by American writer Herman Melville.",
               "hasanswer": True, "isgold": True}]},
    {"question": "what is the capital of australia", "answers": ["Canberra"],
     "ctxs": [{"title": "Noise", "text": "Unrelated passage.", "isgold": False},
              {"title": "Canberra", "text": "Canberra is  the capital city of\nAustralia.", "isgold": True}]},
    {"question": "when did the titanic sink", "answers": ["April 15, 1912", "1912"],
     "ctxs": [{"title": "Titanic", "text": "The Titanic sank in the North Atlantic Ocean on 15 April 1912.",
               "isgold": True}]},
    {"question": "who painted the mona lisa", "answers": ["Leonardo da Vinci"],
     "ctxs": [{"title": "Mona Lisa", "text": "The Mona Lisa is a portrait by the Italian artist Leonardo da Vinci.",
               "isgold": True}]},
    {"question": "what is the largest planet in the solar system", "answers": ["Jupiter"],
     "ctxs": [{"title": "Jupiter", "text": "Jupiter is the fifth planet from the Sun and the largest of all.",
               "isgold": True}]},
    {"question": "who discovered penicillin", "answers": ["Alexander Fleming"],
     "ctxs": [{"title": "Penicillin", "text": "Penicillin was discovered in 1928 by Alexander Fleming.",
               "isgold": True}]},
    {"question": "where is the eiffel tower", "answers": ["Paris"],
     "ctxs": [{"title": "Eiffel Tower", "text": "The Eiffel Tower is a lattice tower on the Champ de Mars.",
               "isgold": True}]},
    {"question": "what river flows through paris", "answers": ["the Seine"],
     "ctxs": [{"title": "Seine", "text": "The Seine flows through Paris on its way to the sea.", "isgold": True}]},
    {"question": "who was the first man on the moon", "answers": ["Neil Armstrong"],
     "ctxs": [{"title": "Apollo 11", "text": "Neil Armstrong was the first person to walk on the Moon, in 1969.",
               "isgold": True}]},
    {"question": "what does the u.s. stand for", "answers": ["United States"],
     "ctxs": [{"title": "United States", "text": "The United States of America is a country in North America.",
               "isgold": True}]},
]


@pytest.fixture(scope="module")
def nq_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("nq") / "nq-mini.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in NQ_RECORDS:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.mark.parametrize("text, expected", [
    ("The  U.S.A.!", "usa"), ("an Apple a day", "apple day"), ("“Hello”, world…", "hello world"),
    ("Theatre of the absurd", "theatre of absurd"), ("  ", ""), ("$100 + tax", "100 tax"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, answers, expected", [
    ("It was Wilhelm Conrad Röntgen.", ["Wilhelm Conrad Röntgen"], True),
    ("röntgen", ["Wilhelm Conrad Röntgen", "Röntgen"], True),       # any gold answer
    ("The Beatles!", ["Beatles"], True),                             # articles and punctuation
    ("Beatles", ["The Beatles"], True),
    ("April 15 1912", ["April 15, 1912"], True),
    ("1921", ["1912"], False),
    ("", ["Paris"], False),                                          # empty generation
    ("The", ["The"], False),                                         # a gold answer normalising to nothing
    ("Parisian cafés", ["Paris"], True),                             # plain substring, as in the paper's code
])
def test_best_subspan_em(prediction, answers, expected):
    assert best_subspan_em(prediction, answers) is expected


def test_contains_answer():
    assert contains_answer("The U.S. army", ["US"])           # normalised word run
    assert contains_answer("The bus stops here", ["US"])      # conservative: any substring excludes a distractor
    assert not contains_answer("The U.K. army", ["US"])
    assert contains_answer("in Paris, France", ["paris"])
    assert not contains_answer("Rome", ["Paris", ""])


def test_load_nq(nq_path):
    records = load_nq(nq_path)
    assert len(records) == len(NQ_RECORDS) and records[0].answers == ("Herman Melville",)
    assert records[1].title == "Canberra" and records[1].text == "Canberra is the capital city of Australia."
    assert load_nq(NQ_RECORDS) == records
    with pytest.raises(ValueError, match="answers"):
        nq_record({"question": "q", "answers": [], "ctxs": [{"text": "t"}]}, 0)
    with pytest.raises(ValueError, match="passages"):
        nq_record({"question": "q", "answers": ["a"], "ctxs": []}, 0)


def test_build_items_positions_and_distractors(nq_path):
    items = lost_in_middle_items(nq_path, 8, n_passages=5, seed=0)
    assert items == lost_in_middle_items(nq_path, 8, n_passages=5, seed=0)
    assert len(items) == 24 and [it.position for it in items[:3]] == list(POSITIONS)
    assert [it.gold_position for it in items[:3]] == [0, 2, 4]
    for it in items:
        gold = [p for p in it.passages if p.is_gold]
        assert len(gold) == 1 and it.passages[it.gold_position] is gold[0] and gold[0].source == it.index
        for p in it.passages:
            assert it.prompt.count(p.content) == 1
            if not p.is_gold:
                assert not contains_answer(f"{p.title} {p.text}", it.answers)
                assert p.source != it.index
    # the Seine passage mentions Paris: never a distractor of the Eiffel Tower question
    assert all(p.source != 7 for it in items if it.index == 6 for p in it.passages)
    # the distractors keep their order at every position; only the gold passage moves
    by_q = {}
    for it in items:
        by_q.setdefault(it.index, []).append([p.source for p in it.passages if not p.is_gold])
    assert all(all(d == ds[0] for d in ds) for ds in by_q.values())
    # an item does not depend on how many questions are built
    assert lost_in_middle_items(nq_path, 2, n_passages=5)[:6] == items[:6]
    assert items[0].prompt.splitlines()[2].startswith("Document [1] (Title: Moby-Dick) Moby-Dick is")
    assert items[0].prompt.endswith("\n\nQuestion: who wrote the novel moby dick")
    with pytest.raises(ValueError, match="distractors"):
        lost_in_middle_items(nq_path, 1, n_passages=12)
    with pytest.raises(ValueError, match="records"):
        build_items(load_nq(nq_path), 11)


def test_windows_and_slots():
    assert middle_window(10) == range(3, 7) and gold_index("middle", 10) in middle_window(10)
    assert [gold_index(p, 10) for p in POSITIONS] == [0, 4, 9]
    assert middle_window(5) == range(1, 3) and middle_window(3) == range(1, 2)
    assert top_k([0.1, 0.9, 0.5, 0.9], 2) == (1, 3) and top_k([0.2, 0.2, 0.2], 2) == (0, 1)


def _bag_encoder(texts):
    """Deterministic bag-of-words vectors (a stand-in for the sentence encoder)."""
    out = torch.zeros(len(texts), 64)
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", t.lower()):
            out[i, zlib.crc32(w.encode()) % 64] += 1.0
    return out


def test_cases_highlight_policies(nq_path, model):
    items = lost_in_middle_items(nq_path, 3, n_passages=6)
    cases = lost_in_middle_cases(items, k=2, encoder=_bag_encoder)
    assert len(cases) == 3 * len(items) and [c.policy for c in cases[:3]] == list(POLICIES)
    for c in cases:
        item = items[c.item]
        assert c.highlights == tuple(item.passages[s].content for s in c.highlighted)
        assert c.gold_highlighted == (item.gold_position in c.highlighted)
        if c.policy == "gold":
            assert c.highlighted == (item.gold_position,) and c.gold_highlighted
        elif c.policy == "middle":
            assert c.highlighted == (2, 3)
        else:
            assert len(c.highlighted) == 2
    # the retriever's choice follows the passages, not their slots
    picked = {(items[c.item].index, frozenset(items[c.item].passages[s].source for s in c.highlighted))
              for c in cases if c.policy == "retriever"}
    assert len({q for q, _ in picked}) == len(picked) == 3
    # the highlighted tokens are exactly the passages' text
    case = next(c for c in cases if c.policy == "middle")
    enc = model.encode(items[case.item].prompt, list(case.highlights), markers=None)
    runs, current = [], []
    for t, on in zip(enc.input_ids, enc.highlight):
        if on:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [model.tokenizer.decode(r).strip() for r in runs] == list(case.highlights)
    assert highlighted_slots(items[0], "middle", middle=(0, 2)) == (0, 1)
    with pytest.raises(ValueError, match="policies"):
        lost_in_middle_cases(items, ("random",))
    with pytest.raises(ValueError, match="scores"):
        highlighted_slots(items[0], "retriever")


def test_lost_in_middle_end_to_end(nq_path, model):
    items = lost_in_middle_items(nq_path, 2, n_passages=4)
    report = evaluate_lost_in_middle(model, items, encoder=_bag_encoder, k=2, max_new_tokens=3, batch_size=4,
                                     progress=False, n_boot=200)
    assert [(c.position, c.policy) for c in report.cells] == \
        [(p, pol) for p in (*POSITIONS, "all") for pol in POLICIES]
    assert report.cell("middle", "gold").n == 2 and report.cell("all", "retriever").n == 6
    assert report.cell("first", "gold").gold_highlighted == 1.0
    assert report.cell("middle", "middle").gold_highlighted == 1.0  # 0-based slot 1 of 4 is in the window
    assert report.cell("first", "middle").gold_highlighted == 0.0
    for c in report.cells:
        assert c.delta_ci[0] <= c.mean_delta <= c.delta_ci[1] and 0 <= c.em <= 1 and 0 <= c.em_unsteered <= 1
    row = report.rows[0]
    item = items[0]
    assert row["logp_unsteered"] == pytest.approx(model.score(item.prompt, [item.answers[0]], steer=False)[0],
                                                  abs=1e-4)
    assert row["logp"] == pytest.approx(
        model.score(item.prompt, [item.answers[0]], highlights=[item.passages[item.gold_position].content])[0],
        abs=1e-4)
    assert any(r["delta"] != 0 for r in report.rows)
    assert row["em"] == best_subspan_em(row["generation"], item.answers)
    assert row["answer_words"] == len(row["generation"].split())
    assert row["answer_words_unsteered"] == len(row["generation_unsteered"].split())
    gold_all = report.cell("all", "gold")
    gold_rows = [r for r in report.rows if r["policy"] == "gold"]
    assert gold_all.answer_words == pytest.approx(sum(r["answer_words"] for r in gold_rows) / len(gold_rows))
    assert gold_all.answer_words_unsteered == pytest.approx(
        sum(len(r["generation_unsteered"].split()) for r in gold_rows) / len(gold_rows))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["settings"]["middle"] == [1, 3] and len(data["rows"]) == 18
    assert "mean dlogp" in report.table() and "words" in report.table()
    # a method without steering: every change is exactly zero
    flat = evaluate_lost_in_middle(model, items[:1], policies=("gold",), method=Unsteered(), em=False,
                                   progress=False, n_boot=50)
    assert flat.cell("first", "gold").mean_delta == 0.0 and flat.cell("first", "gold").share_rises == 0.0
    assert flat.cell("first", "gold").em is None and flat.cell("first", "gold").answer_words is None
    assert [(c.position, c.policy) for c in flat.cells] == [("first", "gold"), ("all", "gold")]


def test_lost_in_middle_intervals_resample_questions():
    # two questions, each with three contexts that move together: pooled over positions the interval
    # must be that of 2 questions, not of 6 independent contexts
    rows = [dict(question_index=q, position=pos, policy="gold", gold_highlighted=True, delta=d, em=e,
                 em_unsteered=False, answer_words=3, answer_words_unsteered=3)
            for q, d, e in ((0, 1.0, True), (1, -1.0, False)) for pos in POSITIONS]
    cells = {(c.position, c.policy): c for c in lost_in_middle_cells(rows, ("gold",), n_boot=400)}
    pooled = cells[("all", "gold")]
    assert pooled.n == 6 and pooled.mean_delta == 0.0 and pooled.em == 0.5
    # resampling 2 questions reaches both extremes; 6 independent contexts would almost never
    assert pooled.delta_ci == (-1.0, 1.0) and pooled.em_ci == (0.0, 1.0)
    assert cells[("middle", "gold")].n == 2


# ============================================================================ scoring under methods

def test_methods_without_effect_match_unsteered(model):
    prompt = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?"
    hl = ["The tower is in Rome."]
    rows = [(prompt, hl, model.tokenizer("Rome", add_special_tokens=False)["input_ids"]),
            (prompt, hl, model.tokenizer("Paris", add_special_tokens=False)["input_ids"])]
    plain = continuation_logprobs(model, rows, steer=False)
    assert plain == pytest.approx([model.score(prompt, ["Rome", "Paris"], steer=False)[i] for i in (0, 1)], abs=1e-4)
    for method in (Unsteered(), Seka("off", {"steer": False}), Pasta(PastaConfig(alpha=1.0)),
                   Spa(SpaConfig(strength=1.0))):
        assert continuation_logprobs(model, rows, method=method) == pytest.approx(plain, abs=1e-3), method
    assert continuation_logprobs(model, rows) == pytest.approx(model.score(prompt, ["Rome", "Paris"], highlights=hl),
                                                               abs=1e-4)
    emphasised = continuation_logprobs(model, rows, method=PromptEmphasis())
    assert emphasised != pytest.approx(plain, abs=1e-3)
    with pytest.raises(ValueError, match="SEKA only"):
        continuation_logprobs(model, rows, method=Unsteered(), gain_pos=2.0)
    texts = generate_texts(model, [prompt, prompt + " Answer."], [hl, None], method=Unsteered(), max_new_tokens=3)
    assert texts == model.generate([prompt, prompt + " Answer."], steer=False, max_new_tokens=3)


def test_fictional_counterfact_ids_are_unique_across_seeds():
    from seka_rag.evaluation.counterfact import fictional_counterfact_items

    test = fictional_counterfact_items(6, seed=0)
    assert [it.case_id for it in test] == [f"fictional-{i}" for i in range(6)]  # stored results keep their ids
    dev = {it.case_id for seed in (1, 2) for it in fictional_counterfact_items(6, seed=seed, split="dev")}
    assert len(dev) == 12 and not dev & {it.case_id for it in test}


@pytest.mark.parametrize("prediction, answers", [
    ("Paris", ["The"]),  # a gold answer that normalises to nothing matches nothing
    ("Rome", ["The", "Paris"]),
    ("Rome.\nDocument [2] says Paris", ["Paris"]),  # only the answer's first line is scored
    ("\n  Rome\nParis", ["Paris"]),
])
def test_best_subspan_em_misses(prediction, answers):
    assert best_subspan_em(prediction, answers) is False


def _start_marking_tokenizer():
    """A tokenizer that marks the start of a text, as Llama-2 / Mistral-v0.1 SentencePiece ones do:
    ``" English"`` on its own starts with a lone "▁" token (every answer would share it)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tk.decoder = decoders.Metaspace()
    corpus = ["The mother tongue of Danielle Darrieux is English", "The mother tongue of Danielle Darrieux is French",
              "Previously, Paris Hilton was born in London. Currently, Paris Hilton was born in Berlin."] * 30
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_answers_are_tokenised_as_they_continue_the_prompt(helpers):
    from seka_rag.evaluation.counterfact import first_token_ids, make_item
    from seka_rag.evaluation.scoring import continuation_ids

    tok = _start_marking_tokenizer()
    alone = [tok(t, add_special_tokens=False)["input_ids"] for t in (" English", " French")]
    assert alone[0][0] == alone[1][0] and tok.convert_ids_to_tokens(alone[0][0]) == "▁"  # the trap
    seka = helpers.build_tiny_model("llama", tok)
    for text in ("English", "French", "London"):
        ids = continuation_ids(seka, text)
        assert tok.convert_ids_to_tokens(ids[0]) != "▁" and tok.decode(ids).strip() == text
    items = [make_item("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "English", "French"),
             make_item("Paris Hilton", "Paris Hilton was born in", "London", "Berlin")]
    assert all(len(set(first_token_ids(seka, it, chat=False))) == 2 for it in items)
    report = evaluate_counterfact(seka, items, steer=False, chat=False, progress=False)
    assert report.n_tied == 0 and report.n == 2


@pytest.mark.parametrize("content, message", [
    ('{"question": "q"}\n42\n', "line 2 is a number (42), not a JSON object"),
    ('{"a": 1}\n{"b": 2}\n{bad\n', "line 3 is not valid JSON"),
    ('{\n  "data": [{"a": 1}]\n}\n', "one JSON object; expected a JSON list of records or one JSON object per line "
                                   "(its 'data' key holds a list: save that list as the file)"),
    ('[{"a": 1}, 3]', "record 1 is a number (3), not a JSON object"),
    ('{"a": 1}\nnull\n', "line 2 is null, not a JSON object"),
    ('[{"a": 1}', "not valid JSON"),
])
def test_data_files_name_the_file_and_line_of_a_bad_record(tmp_path, content, message):
    from seka_rag.evaluation.records import read_records

    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    with pytest.raises(ValueError, match=r"data\.jsonl: "):  # the NQ-open loader reads through it too
        load_nq(path)


def test_data_files_accept_a_byte_order_mark_and_gzip(tmp_path):
    from seka_rag.evaluation.records import read_records

    # JSON strings may hold U+2028 / U+0085 raw (json.dumps(ensure_ascii=False) writes them so): one line each
    records = [{"text": "a\u2028b"}, {"text": "c\u0085d"}, {"text": "e\r"}]
    (tmp_path / "unicode.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records),
                                            encoding="utf-8", newline="")
    assert read_records(tmp_path / "unicode.jsonl") == records
    (tmp_path / "one.jsonl").write_text(json.dumps(records[0], ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_records(tmp_path / "one.jsonl") == records[:1]

    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_records(tmp_path / "bom.jsonl") == [{"a": 1}]
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write('{"a": 1}\n\n{"b": 2}\n')
    assert read_records(tmp_path / "d.jsonl.gz") == [{"a": 1}, {"b": 2}]
    (tmp_path / "fake.gz").write_text("not gzip")
    with pytest.raises(ValueError, match="cannot be read as gzip-compressed UTF-8 text"):
        read_records(tmp_path / "fake.gz")
