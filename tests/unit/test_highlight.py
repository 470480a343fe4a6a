"""Highlights → token masks: markers, substrings, spans, chat messages, batches, and every bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from seka_rag import DEFAULT_MARKERS, HighlightError, Markers
from seka_rag.highlight import (
    EncodedPrompt,
    describe_highlight,
    encode_prompt,
    escape_markers,
    mark_highlight,
    merge_spans,
    pad_batch,
    parse_markers,
    prepare_prompt,
)

DOCS = "Doc 1: The tower is in Paris.\nDoc 2: The tower is in Rome.\nWhere is the tower?"


def runs(enc: EncodedPrompt, tok) -> list[str]:
    """Decoded text of each maximal run of highlighted tokens."""
    out, cur = [], []
    for tid, on in zip(enc.input_ids, enc.highlight):
        if on:
            cur.append(tid)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


def stripped_runs(enc, tok) -> list[str]:
    return [r.strip() for r in runs(enc, tok)]


@pytest.fixture(scope="module")
def seka(tiny_model):
    return tiny_model("llama", context_window=128)


@pytest.fixture(scope="module")
def seka_plain(tiny_model):
    return tiny_model("llama", chat=False)


# ---------------------------------------------------------------------------------------- markers
class TestMarkers:
    def test_default_markers(self):
        text, spans = parse_markers("a <<bc>> d <<e f>>")
        assert text == "a bc d e f"
        assert spans == [(2, 4), (7, 10)]
        assert [text[s:e] for s, e in spans] == ["bc", "e f"]

    def test_custom_markers(self):
        m = Markers("[[", "]]")
        text, spans = parse_markers("keep <<this>> but [[mark]] that", m)
        assert text == "keep <<this>> but mark that"
        assert [text[s:e] for s, e in spans] == ["mark"]

    def test_custom_escape(self):
        m = Markers("{", "}", escape="~")
        text, spans = parse_markers("~{literal~} and {marked}", m)
        assert text == "{literal} and marked"
        assert [text[s:e] for s, e in spans] == ["marked"]

    def test_escapes_are_literal(self):
        text, spans = parse_markers(r"write \<<x\>> or <<y>>")
        assert text == "write <<x>> or y"
        assert [text[s:e] for s, e in spans] == ["y"]

    def test_lone_escape_char_kept(self):
        text, spans = parse_markers(r"a\nb \x <<c>>")
        assert text == r"a\nb \x c"
        assert [text[s:e] for s, e in spans] == ["c"]

    def test_markdown_bold_untouched(self):
        text, spans = parse_markers("some **bold** and __under__ text")
        assert text == "some **bold** and __under__ text"
        assert spans == []

    def test_markdown_bold_inside_highlight(self):
        text, spans = parse_markers("x <<**bold** y>> z")
        assert text == "x **bold** y z"
        assert [text[s:e] for s, e in spans] == ["**bold** y"]

    def test_markers_none_disables_parsing(self):
        text, spans = parse_markers("a <<b>> c", None)
        assert text == "a <<b>> c" and spans == []

    def test_single_angle_brackets_untouched(self):
        text, spans = parse_markers("if a < b and c > d: x <<y>>")
        assert text == "if a < b and c > d: x y"
        assert [text[s:e] for s, e in spans] == ["y"]

    @pytest.mark.parametrize(
        "text, fragment",
        [
            ("a <<b", "never closed"),
            ("a >> b", "no opening"),
            ("a <<b>> c>>", "no opening"),
            ("<<a <<b>> c>>", "nested"),
            ("a <<>> b", "empty highlight"),
        ],
    )
    def test_bad_markers(self, text, fragment):
        with pytest.raises(HighlightError, match=fragment):
            parse_markers(text)

    def test_error_mentions_escape(self):
        with pytest.raises(HighlightError) as info:
            parse_markers("a <<b")
        assert r"\<<" in str(info.value) and "markers=None" in str(info.value)

    @pytest.mark.parametrize("args", [("", ">>"), ("<<", ""), ("##", "##")])
    def test_bad_marker_definitions(self, args):
        with pytest.raises(HighlightError):
            Markers(*args)

    def test_model_level_and_per_call_markers(self, tiny_model, tokenizer):
        seka = tiny_model("llama", projection=False)
        seka.markers = Markers("[[", "]]")
        assert stripped_runs(seka.encode("a [[tower]] <<b>>", chat=False), tokenizer) == ["tower"]
        enc = seka.encode("a [[tower]] <<Paris>>", chat=False, markers=DEFAULT_MARKERS)
        assert stripped_runs(enc, tokenizer) == ["Paris"]
        assert "[[tower]]" in enc.text
        enc = seka.encode("a <<tower>>", chat=False, markers=None)
        assert not any(enc.highlight) and "<<tower>>" in enc.text


# ---------------------------------------------------------------------------------------- substrings and spans
class TestSubstringsAndSpans:
    def test_substring_every_occurrence(self, seka_plain, plain_tokenizer):
        enc = seka_plain.encode(DOCS, ["The tower"])
        assert stripped_runs(enc, plain_tokenizer) == ["The tower", "The tower"]
        # "the tower" in the question differs in case: not highlighted
        assert "the tower" not in " ".join(runs(enc, plain_tokenizer))

    def test_substring_given_as_plain_string(self, seka_plain, plain_tokenizer):
        enc = seka_plain.encode(DOCS, "Rome")
        assert stripped_runs(enc, plain_tokenizer) == ["Rome"]

    def test_markers_and_substrings_combine(self, seka_plain, plain_tokenizer):
        enc = seka_plain.encode("Doc 1: <<The tower is in Paris.>>\nDoc 2: The tower is in Rome.", ["Rome"])
        assert stripped_runs(enc, plain_tokenizer) == ["The tower is in Paris.", "Rome"]

    def test_char_span(self, seka_plain, plain_tokenizer):
        start = DOCS.index("The tower is in Rome.")
        enc = seka_plain.encode(DOCS, [(start, start + len("The tower is in Rome."))])
        assert stripped_runs(enc, plain_tokenizer) == ["The tower is in Rome."]

    def test_char_span_as_list(self, seka_plain, plain_tokenizer):
        start = DOCS.index("Paris")
        enc = seka_plain.encode(DOCS, [[start, start + 5]])
        assert stripped_runs(enc, plain_tokenizer) == ["Paris"]

    def test_char_spans_are_after_marker_removal(self, seka_plain, plain_tokenizer):
        prompt = "<<Doc>> 1: The tower is in Paris."
        clean = "Doc 1: The tower is in Paris."
        s = clean.index("Paris")
        enc = seka_plain.encode(prompt, [(s, s + 5)])
        assert stripped_runs(enc, plain_tokenizer) == ["Doc", "Paris"]

    def test_overlapping_spans_merge(self, plain_tokenizer):
        p = prepare_prompt(DOCS, plain_tokenizer, [(7, 16), (12, 20), (20, 22), (40, 45)], chat=False)
        assert p.spans == [(7, 22), (40, 45)]
        assert merge_spans([(5, 9), (0, 2), (1, 3), (9, 10)]) == [(0, 3), (5, 10)]

    def test_substring_and_marker_overlap_merge(self, plain_tokenizer):
        p = prepare_prompt("a <<tower is>> in Paris", plain_tokenizer, ["is in"], chat=False)
        assert p.text == "a tower is in Paris"
        assert p.spans == [(2, 13)]

    def test_plain_prompt_adds_bos(self, seka_plain, plain_tokenizer):
        enc = seka_plain.encode("The <<tower>>")
        assert enc.input_ids[0] == plain_tokenizer.bos_token_id
        assert enc.highlight[0] is False
        assert enc.text == "The tower"

    def test_describe_highlight(self, seka_plain, plain_tokenizer):
        enc = seka_plain.encode("The <<tower>> is in Paris")
        pairs = describe_highlight(enc, plain_tokenizer)
        assert [p for p, _ in pairs] == [i for i, on in enumerate(enc.highlight) if on]
        assert "".join(t for _, t in pairs).strip() == "tower"
        assert seka_plain.highlighted_tokens("The <<tower>> is in Paris") == [t for _, t in pairs]

    def test_no_highlight_gives_all_false_mask(self, seka_plain):
        enc = seka_plain.encode("The tower is in Paris")
        assert len(enc.highlight) == len(enc.input_ids) and not any(enc.highlight)


# ---------------------------------------------------------------------------------------- chat template
class TestChat:
    MESSAGES = [
        {"role": "system", "content": "Answer from the documents. The tower is in Rome."},
        {"role": "user", "content": DOCS},
    ]

    def test_plain_prompt_goes_through_template(self, seka, tokenizer):
        enc = seka.encode("Where is <<the tower>>?")
        assert enc.text == "<|im_start|>user\nWhere is the tower?<|im_end|>\n<|im_start|>assistant\n"
        assert enc.input_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
        assert stripped_runs(enc, tokenizer) == ["the tower"]

    def test_chat_false_sends_raw(self, seka, tokenizer):
        enc = seka.encode("Where is <<the tower>>?", chat=False)
        assert enc.text == "Where is the tower?"
        assert enc.input_ids[0] == tokenizer.bos_token_id
        assert stripped_runs(enc, tokenizer) == ["the tower"]

    def test_plain_prompt_span_mapped_into_template(self, seka, tokenizer):
        s = DOCS.index("The tower is in Rome.")
        enc = seka.encode(DOCS, [(s, s + len("The tower is in Rome."))])
        assert enc.text.startswith("<|im_start|>user\n")
        assert stripped_runs(enc, tokenizer) == ["The tower is in Rome."]

    def test_message_spans_land_on_the_right_tokens(self, seka, tokenizer):
        target = "The tower is in Rome."
        s = DOCS.index(target)
        enc = seka.encode(self.MESSAGES, [(1, s, s + len(target))])
        # only the user message's copy: the system message has the same sentence
        assert stripped_runs(enc, tokenizer) == [target]
        first = enc.highlight.index(True)
        before = tokenizer.decode(enc.input_ids[:first])
        assert "<|im_start|>user\n" in before and before.count(target) == 1
        assert enc.text.count(target) == 2

    def test_span_in_first_message(self, seka, tokenizer):
        content = self.MESSAGES[0]["content"]
        s = content.index("documents")
        enc = seka.encode(self.MESSAGES, [(0, s, s + len("documents"))])
        assert stripped_runs(enc, tokenizer) == ["documents"]

    def test_substring_highlights_every_message(self, seka, tokenizer):
        enc = seka.encode(self.MESSAGES, ["Rome"])
        assert stripped_runs(enc, tokenizer) == ["Rome", "Rome"]

    def test_markers_in_several_messages(self, seka, tokenizer):
        msgs = [
            {"role": "system", "content": "Use the <<document>> only."},
            {"role": "user", "content": "Doc 1: Paris.\nDoc 2: <<Rome.>>\nWhere?"},
        ]
        enc = seka.encode(msgs)
        assert stripped_runs(enc, tokenizer) == ["document", "Rome."]
        assert "<<" not in enc.text and ">>" not in enc.text

    def test_generation_prompt_unless_assistant_last(self, seka):
        msgs = [{"role": "user", "content": "Where?"}]
        assert seka.encode(msgs).text.endswith("<|im_start|>assistant\n")
        msgs2 = msgs + [{"role": "assistant", "content": "In <<Rome>>"}]
        enc = seka.encode(msgs2)
        assert not enc.text.endswith("<|im_start|>assistant\n")
        assert enc.text.endswith("In Rome")  # a final assistant message is continued, not closed

    def test_message_spans_with_a_trimming_tokenizer(self, helpers):
        # GPT-2 style tokenizers trim spaces from offsets: spans must still land on the right tokens
        trim = helpers.make_tokenizer(trim_offsets=True)
        target = "The tower is in Rome."
        s = DOCS.index(target)
        p = prepare_prompt(self.MESSAGES, trim, [(1, s, s + len(target))])
        enc = encode_prompt(p, trim)
        assert stripped_runs(enc, trim) == [target]
        assert runs(enc, trim) == [" " + target]

    def test_whitespace_token_inside_highlight_is_highlighted(self, helpers):
        # BUG: with a ByteLevel post-processor that trims offsets (GPT-2 style tokenizers), "Doc 2"
        # tokenises as 'Doc', ' ', '2' and the lone-space token gets an empty offset (8, 8);
        # encode_prompt skips every zero-width token as if it were a special token. It lies strictly
        # inside the highlight, so it must be steered too: the highlighted tokens form one run.
        trim = helpers.make_tokenizer(None, trim_offsets=True)
        p = prepare_prompt("Use <<Doc 2>> only.", trim, chat=False)
        enc = encode_prompt(p, trim)
        assert [trim.decode([t]) for t in enc.input_ids[5:8]] == ["Doc", " ", "2"]
        assert enc.highlight[5:8] == [True, True, True]
        assert stripped_runs(enc, trim) == ["Doc 2"]

    def test_special_tokens_never_highlighted(self, seka, tokenizer):
        enc = seka.encode(self.MESSAGES, ["The tower is in Rome."])
        specials = set(tokenizer.all_special_ids)
        assert not any(on and t in specials for t, on in zip(enc.input_ids, enc.highlight))

    def test_template_that_trims_contents(self, helpers, tokenizer):
        # a template that transforms contents forces the search fallback; spans must still land right
        trimming = helpers.make_tokenizer(
            "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | trim) + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
        content = "   Doc 2: The tower is in Rome.  "
        s = content.index("Rome")
        p = prepare_prompt([{"role": "user", "content": content}], trimming, [(0, s, s + 4)])
        assert [p.text[a:b] for a, b in p.spans] == ["Rome"]
        enc = encode_prompt(p, trimming)
        assert stripped_runs(enc, trimming) == ["Rome"]

    def test_trimming_template_with_a_system_header(self, helpers):
        # the header repeats the message's words: the highlight must land in the message, not the header
        trimming = helpers.make_tokenizer(
            "{{ '<|im_start|>system\nToday Date: 26 Jul 2024. Answer briefly.<|im_end|>\n' }}"
            "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | trim) + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
        for content, word in (("Answer briefly.\n", "Answer briefly."), ("  Today it rains. ", "Today")):
            s = content.index(word)
            p = prepare_prompt([{"role": "user", "content": content}], trimming, [(0, s, s + len(word))])
            (a, b), = p.spans
            assert p.text[a:b] == word and a > p.text.index("<|im_start|>user")

    TRIMMING = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | trim) + '<|im_end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

    @pytest.mark.parametrize("content, highlight, expected", [
        ("Where is the tower?\n<<The tower is in Rome.\n>>", None, "The tower is in Rome."),  # trailing newline
        ("<< The tower is in Rome.>> Where?", None, "The tower is in Rome."),  # leading space
        (" Doc: Rome. Q?", (0, 0, 5), "Doc:"),  # a span over the trimmed leading space
    ])
    def test_a_trimming_template_keeps_highlights_off_its_own_tokens(self, helpers, content, highlight, expected):
        # the trimmed whitespace is not in the prompt: a highlight reaching into it stops at the content's
        # edge instead of covering the template's role header or its end-of-turn token
        trimming = helpers.make_tokenizer(self.TRIMMING)
        p = prepare_prompt([{"role": "user", "content": content}], trimming, [highlight] if highlight else None)
        assert [p.text[a:b] for a, b in p.spans] == [expected]
        enc = encode_prompt(p, trimming)
        assert stripped_runs(enc, trimming) == [expected]
        specials = set(trimming.all_special_ids)
        assert not any(on and t in specials for t, on in zip(enc.input_ids, enc.highlight))

    def test_a_trimmed_message_is_found_in_its_own_turn_not_a_later_one(self, helpers):
        # the untrimmed text "Paris\n" stands only in the third message: the first one's highlight stays there
        trimming = helpers.make_tokenizer(self.TRIMMING)
        messages = [{"role": "user", "content": "<<Paris>>\n"}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "Paris\nis <<it>>?"}]
        p = prepare_prompt(messages, trimming)
        assert [p.text[a:b] for a, b in p.spans] == ["Paris", "it"]
        assert p.spans[0][1] < p.text.index("<|im_start|>assistant")

    def test_empty_and_blank_messages_do_not_mislead_a_trimmed_placement(self, helpers):
        trimming = helpers.make_tokenizer(self.TRIMMING)
        user = "<|im_start|>user\n"
        # an empty message's wrapper still counts: "a" is not looked for in the template's "<|im_start|>"
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": "<<a>> "},
                    {"role": "assistant", "content": ""}, {"role": "user", "content": "<<a>> "}]
        p = prepare_prompt(messages, trimming)
        assert [p.text[a:b] for a, b in p.spans] == ["a", "a"]
        assert [p.text[a - len(user):a] for a, _ in p.spans] == [user, user]
        # whitespace alone matches any space: it does not pull the search into the next message
        messages = [{"role": "user", "content": " "}, {"role": "assistant", "content": "A <<b>>"},
                    {"role": "user", "content": "c"}]
        p = prepare_prompt(messages, trimming)
        assert [p.text[a:b] for a, b in p.spans] == ["b"]
        # ... and, trimmed away, it takes no room: the next message is expected right after its wrapper
        messages = [{"role": "user", "content": "   "}, {"role": "assistant", "content": "<<Rome>>"},
                    {"role": "user", "content": "Rome"}]
        p = prepare_prompt(messages, trimming)
        (a, b), = p.spans
        assert p.text[a:b] == "Rome" and b < p.text.rindex("<|im_start|>user")

    def test_added_special_tokens_in_the_text_are_not_highlighted(self, helpers):
        from tokenizers import AddedToken

        tok = helpers.make_tokenizer()
        tok.add_tokens([AddedToken("<|start_header_id|>", special=True)])
        enc = encode_prompt(prepare_prompt("Doc: <<a<|start_header_id|>b>> Q?", tok), tok)
        special = tok.convert_tokens_to_ids("<|start_header_id|>")
        assert special in enc.input_ids
        assert not any(on for t, on in zip(enc.input_ids, enc.highlight) if t == special)

    def test_a_highlight_of_trimmed_whitespace_alone_is_an_error(self, helpers):
        trimming = helpers.make_tokenizer(self.TRIMMING)
        with pytest.raises(HighlightError, match="only whitespace .* trims away"):
            prepare_prompt([{"role": "user", "content": "  head tail  "}], trimming, [(0, 11, 13)])

    def test_special_tokens_written_in_the_text_are_not_highlighted(self, seka, tokenizer):
        # chat prompts are tokenised without added special tokens: a control token inside a highlight
        # (text that spells one) is still never steered
        enc = seka.encode("Doc: <<a<|im_end|>b>> Q?")
        specials = set(tokenizer.all_special_ids)
        assert any(t in specials for t, on in zip(enc.input_ids, enc.highlight) if not on)
        assert not any(on and t in specials for t, on in zip(enc.input_ids, enc.highlight))
        assert "".join(runs(enc, tokenizer)).replace(" ", "") == "ab"
        with pytest.raises(HighlightError, match="but control tokens, which are never highlighted"):
            seka.encode("Doc: <<<|im_end|>>> Q?")


# ------------------------------------------------------------------------------- mark_highlight
@pytest.mark.parametrize("doc", [
    "C:\\temp\\", "end\\", "a>", "</div>", "Vec<Vec<u8>>", "a << 2", "\\<<", "a\\>", ">", "\\", "plain text",
])
def test_mark_highlight_highlights_exactly_the_text(doc):
    for pre, post in (("", ""), ("Context: ", " Question?")):
        clean, spans = parse_markers(pre + mark_highlight(doc) + post)
        assert clean == pre + doc + post and spans == [(len(pre), len(pre) + len(doc))]
    # escape_markers keeps any text literal outside a highlight, with escapes before markers doubled
    clean, spans = parse_markers("x " + escape_markers(doc) + " y")
    assert clean == "x " + doc + " y" and spans == []


def test_mark_highlight_other_markers_and_errors():
    m = Markers("[[", "]]")
    assert parse_markers(mark_highlight("a]", m), m) == ("a]", [(0, 2)])
    with pytest.raises(HighlightError, match="needs some text"):
        mark_highlight("  ")
    with pytest.raises(HighlightError, match="markers=None"):
        mark_highlight("x", None)


def test_escape_runs_before_markers():
    # pairs of escapes before a marker are literal escapes; an odd one makes the marker literal
    assert parse_markers("a \\\\<<b>>") == ("a \\b", [(3, 4)])
    assert parse_markers("a \\\\\\<< b") == ("a \\<< b", [])
    assert parse_markers("C:\\dir\\x \\ y") == ("C:\\dir\\x \\ y", [])  # escapes elsewhere are text
    # overlapping closing markers: the last one closes
    assert parse_markers("<<a>>>") == ("a>", [(0, 2)])


# ---------------------------------------------------------------------------------------- batches
class TestBatches:
    def test_left_padded_batch_has_one_mask_row_per_prompt(self, seka, tokenizer):
        prompts = ["Where is <<the tower>>?", DOCS, "Doc 2: <<Rome>>"]
        rows = seka._encode_many(prompts, [None, ["Paris"], None], None, DEFAULT_MARKERS, None)
        batch = pad_batch(rows, tokenizer.pad_token_id, side="left")
        width = max(len(r.input_ids) for r in rows)
        assert batch.highlight_mask.shape == (3, width) == batch.input_ids.shape == batch.attention_mask.shape
        assert batch.highlight_mask.dtype == torch.bool
        for i, r in enumerate(rows):
            pad = width - len(r.input_ids)
            assert batch.highlight_mask[i, :pad].sum() == 0
            assert batch.highlight_mask[i, pad:].tolist() == r.highlight
            assert batch.input_ids[i, pad:].tolist() == r.input_ids
            assert batch.input_ids[i, :pad].eq(tokenizer.pad_token_id).all()
            assert batch.attention_mask[i].tolist() == [0] * pad + [1] * len(r.input_ids)
        assert [stripped_runs(r, tokenizer) for r in rows] == [["the tower"], ["Paris"], ["Rome"]]

    def test_right_padding(self, seka, tokenizer):
        rows = [seka.encode("a <<tower>>"), seka.encode(DOCS, ["Rome"])]
        batch = pad_batch(rows, tokenizer.pad_token_id, side="right")
        n = len(rows[0].input_ids)
        assert batch.highlight_mask[0, :n].tolist() == rows[0].highlight
        assert not batch.highlight_mask[0, n:].any()

    def test_generate_list_with_wrong_highlights_length(self, seka):
        with pytest.raises(HighlightError, match="one entry per prompt"):
            seka.generate(["a", "b"], [["a"]], max_new_tokens=1)
        with pytest.raises(HighlightError, match="one entry per prompt"):
            seka.generate(["a", "b"], [["a"], None, None], max_new_tokens=1)

    def test_generate_list_with_string_highlights(self, seka):
        with pytest.raises(HighlightError, match="one entry per prompt"):
            seka.generate(["ab", "ab"], "ab", max_new_tokens=1)


# ---------------------------------------------------------------------------------------- truncation
class TestTruncation:
    def test_highlight_truncated_away(self, seka):
        prompt = "<<Doc 1>>: " + "The tower is in Paris. " * 10
        with pytest.raises(HighlightError, match="truncated away"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seka.encode(prompt, chat=False, max_length=8)

    def test_truncated_away_by_context_window(self, tiny_model):
        small = tiny_model("llama", context_window=24)
        prompt = "<<Doc 1>>: " + "The tower is in Paris. " * 10
        with pytest.raises(HighlightError, match="truncated away"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small.generate(prompt, max_new_tokens=4)

    def test_truncation_keeps_the_end_and_the_bos_token_and_warns(self, seka, tokenizer):
        prompt = "The tower is in Paris. " * 10 + "<<Rome>>"
        full = seka.encode(prompt, chat=False)
        assert full.input_ids[0] == tokenizer.bos_token_id
        with pytest.warns(UserWarning, match="the first .* tokens after the first 1 .special tokens, kept. were dropped"):
            enc = seka.encode(prompt, chat=False, max_length=10)
        assert enc.input_ids == full.input_ids[:1] + full.input_ids[-9:]
        assert enc.highlight == full.highlight[:1] + full.highlight[-9:]
        assert enc.truncated == len(full.input_ids) - 10
        assert stripped_runs(enc, tokenizer) == ["Rome"]

    def test_a_long_chat_keeps_its_opening_and_system_message(self, seka, tokenizer):
        messages = [{"role": "system", "content": "Always answer in French."},
                    {"role": "user", "content": "The tower is in Paris. " * 20 + "Where is <<the tower>>?"}]
        full = seka.encode(messages, max_length=10_000)
        system_end = tokenizer.decode(full.input_ids).index("Always answer in French.") + len("Always answer in French.")
        with pytest.warns(UserWarning, match="the prompt's opening up to its first non-system message, kept"):
            enc = seka.encode(messages, max_length=40)
        assert len(enc.input_ids) == 40
        text = tokenizer.decode(enc.input_ids)
        assert text.startswith(tokenizer.decode(full.input_ids)[:system_end])  # the head, intact
        assert text.endswith(tokenizer.decode(full.input_ids[-10:]))  # and the end of the user message
        assert stripped_runs(enc, tokenizer) == ["the tower"]

    def test_the_truncation_warning_names_the_callers_line(self, tiny_model):
        small = tiny_model("llama", context_window=24)
        with pytest.warns(UserWarning, match="dropped") as caught:
            small.generate("The tower is in Paris. " * 10 + "<<Rome>>", chat=False, max_new_tokens=1)
        assert caught[0].filename == __file__  # not a line inside seka-rag

    def test_no_truncation_no_warning(self, seka):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            enc = seka.encode("short <<one>>", chat=False, max_length=100)
        assert enc.truncated == 0


# ---------------------------------------------------------------------------------------- bad inputs
class TestBadInputs:
    @pytest.mark.parametrize(
        "highlights, fragment",
        [
            (["Berlin"], "does not occur"),
            (["tower", "Madrid"], "does not occur"),
            ([""], "empty highlight"),
            (["   "], "empty highlight"),
            ([(-1, 3)], "out of range"),
            ([(3, 3)], "empty or reversed"),
            ([(5, 2)], "empty or reversed"),
            ([(0, len(DOCS) + 1)], "out of range"),
            ([(0, 1, 2)], "cannot use"),  # a message span on a plain prompt
            ([(0, 1, 2, 3)], "cannot use"),
            ([5], "cannot use"),
            ([None], "cannot use"),
            ([{"start": 0}], "cannot use"),
            ({"Rome"}, "must be a list"),
            (5, "must be a list"),
        ],
    )
    def test_plain_prompt(self, seka_plain, highlights, fragment):
        with pytest.raises(HighlightError, match=fragment):
            seka_plain.encode(DOCS, highlights)

    def test_bare_string_to_prepare_prompt(self, plain_tokenizer):
        with pytest.raises(HighlightError, match="must be a list"):
            prepare_prompt(DOCS, plain_tokenizer, "Rome", chat=False)

    def test_single_span_not_wrapped_in_a_list(self, seka_plain):
        # highlights=(3, 10) is a list of two ints, not a span: refused, with the expected form named
        with pytest.raises(HighlightError, match=r"\(start, end\)"):
            seka_plain.encode(DOCS, (3, 10))

    @pytest.mark.parametrize("span", [("a", "b"), (None, 3), (0, "x")])
    def test_span_with_non_integer_bounds(self, seka_plain, span):
        # BUG: int() raises a plain ValueError / TypeError instead of HighlightError
        with pytest.raises(HighlightError):
            seka_plain.encode(DOCS, [span])

    @pytest.mark.parametrize(
        "highlights, fragment",
        [
            ([(2, 0, 3)], "names message 2"),
            ([(-1, 0, 3)], "names message -1"),
            ([(1, 0, len(DOCS) + 1)], "out of range for message 1"),
            ([(1, 4, 4)], "empty or reversed"),
            ([(0, 3)], "cannot use"),  # a plain span on a message list
            (["Berlin"], "does not occur"),
        ],
    )
    def test_messages(self, seka, highlights, fragment):
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": DOCS}]
        with pytest.raises(HighlightError, match=fragment):
            seka.encode(msgs, highlights)

    @pytest.mark.parametrize(
        "prompt",
        [[], [{"role": "user"}], [{"content": "x"}], [{"role": "user", "content": 3}], 42, None],
    )
    def test_malformed_prompts(self, seka, prompt):
        with pytest.raises(HighlightError):
            seka.encode(prompt)

    def test_whitespace_only_marked_highlight(self, seka_plain):
        # BUG: "<<>>" and the substring "   " are refused as empty, but "<<   >>" is accepted and
        # steers bare whitespace tokens (with offset-trimming tokenizers it fails later with
        # "covers no token" instead). parse_markers should refuse whitespace-only marked text too.
        with pytest.raises(HighlightError, match="empty highlight"):
            seka_plain.encode("a <<   >> b")

    def test_messages_need_a_chat_template(self, seka_plain):
        with pytest.raises(HighlightError, match="chat template"):
            seka_plain.encode([{"role": "user", "content": "hi"}])

    def test_chat_true_needs_a_chat_template(self, seka_plain):
        with pytest.raises(HighlightError, match="no chat template"):
            seka_plain.encode("hi", chat=True)

    def test_messages_with_chat_false(self, seka):
        with pytest.raises(HighlightError, match="chat=True"):
            seka.encode([{"role": "user", "content": "hi"}], chat=False)

    def test_bad_markers_in_a_message(self, seka):
        with pytest.raises(HighlightError, match="unbalanced"):
            seka.encode([{"role": "user", "content": "a <<b"}])

    def test_slow_tokenizer_refused(self, plain_tokenizer):
        class Slow:
            is_fast = False

        p = prepare_prompt("a <<b>>", plain_tokenizer, chat=False)
        with pytest.raises(HighlightError, match="fast tokenizer"):
            encode_prompt(p, Slow())

    def test_errors_are_value_errors(self, seka_plain):
        # callers catching ValueError keep working
        with pytest.raises(ValueError):
            seka_plain.encode(DOCS, ["Berlin"])


def test_a_template_that_moves_the_system_message_is_searched_not_a_crash(helpers):
    from seka_rag.highlight import prepare_prompt

    # Mistral-v0.3 style: the system message is folded into the last user turn
    folded = ("{% for m in messages %}{% if m['role'] == 'user' %}{% if loop.last and messages[0]['role'] == 'system' %}"
              "[INST] {{ messages[0]['content'] }}\n\n{{ m['content'] }} [/INST]{% else %}[INST] {{ m['content'] }} [/INST]"
              "{% endif %}{% elif m['role'] == 'assistant' %}{{ m['content'] }}</s>{% endif %}{% endfor %}")
    tokenizer = helpers.make_tokenizer(folded)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Where is <<Rome>>?"}]
    prepared = prepare_prompt(messages, tokenizer)
    assert [prepared.text[s:e] for s, e in prepared.spans] == ["Rome"]
    # highlights in the moved message, and in a message the template keeps in place, land in the right one
    messages[0]["content"] = "Use <<the doc>>."
    messages[1]["content"] = "Use the doc. Doc: <<X>>"
    prepared = prepare_prompt(messages, tokenizer)
    assert [prepared.text[s:e] for s, e in prepared.spans] == ["X", "the doc", "Rome"]
    last_turn = prepared.text.rindex("[INST]")
    assert prepared.spans[0][0] < last_turn < prepared.spans[1][0]  # the system text, in the last user turn
    # the real Mistral-v0.3 template also trims answers, so the placement falls back to a search: in the
    # template's order, not the messages'
    trimming = helpers.make_tokenizer(
        "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}{% set msgs = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}"
        "{% if m['role'] == 'user' %}{% if loop.last and sys %}[INST] {{ sys }}\n\n{{ m['content'] }}[/INST]"
        "{% else %}[INST] {{ m['content'] }}[/INST]{% endif %}{% else %}{{ ' ' + m['content'] | trim }}</s>"
        "{% endif %}{% endfor %}")
    messages[2]["content"] = "Hello.\n"
    prepared = prepare_prompt(messages, trimming)
    assert [prepared.text[s:e] for s, e in prepared.spans] == ["X", "the doc", "Rome"]
    assert prepared.spans[0][0] < prepared.text.rindex("[INST]") < prepared.spans[1][0]
    # continuing an answer, this template drops the system message: the others keep their places
    words = [{"role": "system", "content": "Rome"}, {"role": "user", "content": "Rome"},
             {"role": "assistant", "content": "Rome"}, {"role": "user", "content": "<<Rome>>"},
             {"role": "assistant", "content": " Rome"}]
    prepared = prepare_prompt(words, trimming)
    (a, b), = prepared.spans
    assert prepared.text[a:b] == "Rome" and prepared.text.rindex("[INST]") < a < prepared.text.rindex("[/INST]")
    words[0]["content"], words[3]["content"] = "<<Rome>>", "Rome"
    with pytest.raises(HighlightError, match="does not reproduce message 0's content"):
        prepare_prompt(words, trimming)


def test_a_tokenizer_without_offsets_still_keeps_the_bos_token(tokenizer):
    import warnings

    from seka_rag.highlight import encode_prompt, prepare_prompt

    class Slow:  # the same tokenizer, reporting no offset mapping
        is_fast = False

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    slow = Slow(tokenizer)
    prepared = prepare_prompt("The tower is in Paris. " * 10, slow, chat=False)
    full = encode_prompt(prepared, slow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = encode_prompt(prepared, slow, max_length=10)
    assert cut.input_ids == full.input_ids[:1] + full.input_ids[-9:] and cut.input_ids[0] == tokenizer.bos_token_id


# Truncation guards added after mutation testing (one-line bugs no test caught).
def test_a_head_leaving_one_token_is_dropped_too(seka):
    """head + 1 >= max_length: the kept head (BOS) would leave one token of text, so the cut starts at 0."""
    prompt = "The tower is in Paris. " * 3
    full = seka.encode(prompt, chat=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = seka.encode(prompt, chat=False, max_length=2)
    assert enc.input_ids == full.input_ids[-2:]
    assert enc.truncated == len(full.input_ids) - 2

def test_a_highlight_cut_in_half_keeps_its_tail(seka, tokenizer):
    """Only a highlight whose tokens are all dropped raises; one straddling the cut keeps its later tokens."""
    prompt = "<<The tower is in Paris. The tower is in Paris. The tower is in Paris.>> Where?"
    full = seka.encode(prompt, chat=False)
    n_hl = sum(full.highlight)
    assert n_hl > 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = seka.encode(prompt, chat=False, max_length=len(full.input_ids) - 3)  # drops 3 highlighted tokens
    assert enc.input_ids == full.input_ids[:1] + full.input_ids[4:]
    assert enc.highlight == full.highlight[:1] + full.highlight[4:]
    assert sum(enc.highlight) == n_hl - 3

def test_a_highlight_in_the_kept_system_message_stays_on_its_tokens(seka, tokenizer):
    """The kept head's highlight mask is the head's own, not that of the tokens after the cut."""
    messages = [{"role": "system", "content": "Always answer in <<French>>."},
                {"role": "user", "content": "The tower is in Paris. " * 20 + "Where is <<the tower>>?"}]
    full = seka.encode(messages, max_length=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = seka.encode(messages, max_length=40)
    head = next(i for i, (a, b) in enumerate(zip(enc.input_ids, full.input_ids)) if a != b)
    assert enc.highlight[:head] == full.highlight[:head]
    assert enc.highlight == full.highlight[:head] + full.highlight[head + enc.truncated:]
    assert stripped_runs(enc, tokenizer) == ["French", "the tower"]
