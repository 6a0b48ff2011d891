"""Reward functions on tables of cases: correctness, format grading, the capped research bonus."""

from __future__ import annotations

import pytest

from medr1.train.rewards import (
    build_reward_funcs,
    correctness_reward,
    format_reward,
    format_score,
    make_research_bonus,
    research_bonus_score,
    think_words,
)

INFO = "\n<information>\nMarfan syndrome\nTall stature, lens dislocation\n</information>\n"
GOOD = "<think>tall, lens</think>\n<answer>B</answer>"
SEARCHED = "<think>unsure</think>\n<search>tall stature lens</search>" + INFO + "<think>fits B</think>\n<answer>B</answer>"


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (GOOD, "B", 1.0),
        (GOOD, "C", 0.0),
        ("<answer> b </answer>", "B", 1.0),  # case and spaces do not matter
        ("<answer>(C) Marfan</answer>", "C", 1.0),
        ("<answer>A</answer> then <answer>D</answer>", "D", 1.0),  # the last answer counts
        ("<answer>A</answer> then <answer>D</answer>", "A", 0.0),
        ("I think B fits best", "B", 0.0),  # no answer tag: unparseable counts as wrong
        ("<answer>Banana</answer>", "B", 0.0),  # a word, not a letter
        ("<answer></answer>", "B", 0.0),
        (SEARCHED, "B", 1.0),
        ([{"role": "assistant", "content": GOOD}], "B", 1.0),  # conversational completions
        (GOOD, None, None),  # no gold: left out, not scored 0
    ],
)
def test_correctness(completion, gold, expected):
    assert correctness_reward([completion], answer=[gold]) == [expected]


OPTIONS = {"letters": ["ABCD"], "option_texts": [["Homocystinuria", "Marfan syndrome", "Noonan syndrome", "Stickler"]]}


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("So the answer is B.", 0.0),  # untagged: the fallbacks of the eval harness are not paid
        ("The answer: B", 0.0),
        ("B", 0.0),
        ("B. Marfan syndrome", 0.0),
        ('{"answer_choice": "B"}', 0.0),
        ("<think>Marfan</think> answer is B", 0.0),
        ("<answer>Marfan syndrome</answer>", 1.0),  # the option's own text is an answer
        ("<answer>marfan  syndrome.</answer>", 1.0),
        ("<answer>Noonan syndrome</answer>", 0.0),
        ("<answer>Marfan</answer>", 0.0),  # part of a name names no option
        ("<think>x</think>\n<answer>B</answer>", 1.0),
    ],
)
def test_correctness_pays_only_for_the_last_answer_span(completion, expected):
    assert correctness_reward([completion], answer=["B"], **OPTIONS) == [expected]


def test_format_reads_a_named_option_as_an_answer():
    named = "<think>Doc 1 matches.</think>\n<answer>Marfan syndrome</answer>"
    assert format_reward([named], **OPTIONS) == [1.0]
    assert format_reward([named]) == [0.5]  # without the options the name is not an option


def test_format_asks_a_candidate_search_to_compare_every_option():
    """With options, a candidate search that leaves one out loses the protocol point (names compared loosely), and
    so do plain searches alone (no comparison); a plain search beside a full comparison, or no search, keeps it."""
    def traced(query):
        return SEARCHED.replace("tall stature lens", query).replace("fits B", "Doc 1 (Marfan syndrome)").replace(
            "<answer>B</answer>", "<answer>Marfan syndrome</answer>")

    every = "tall, lens | among: homocystinuria; Marfan Syndrome; Noonan syndrome; Stickler"
    assert format_reward([traced(every)], **OPTIONS) == [1.0]
    assert format_reward([traced("tall, lens | among: Homocystinuria; Marfan syndrome; Stickler")], **OPTIONS) == [0.75]
    assert format_reward([traced("tall stature lens")], **OPTIONS) == [0.75]
    then_plain = traced(every).replace("<think>Doc 1", "<search>Marfan syndrome lens</search>\n<think>Doc 1")
    assert then_plain.count("<search>") == 2 and format_reward([then_plain], **OPTIONS) == [1.0]
    assert format_reward(["<think>Tall, lens.</think>\n<answer>Marfan syndrome</answer>"], **OPTIONS) == [1.0]
    partial = SEARCHED.replace("tall stature lens", "tall, lens | among: Marfan syndrome; Stickler")
    assert format_reward([partial]) == [1.0]  # without the options there is nothing to leave out


def test_correctness_respects_valid_letters():
    assert correctness_reward(["<answer>E</answer>"], answer=["E"], letters=["ABCD"]) == [0.0]
    assert correctness_reward(["<answer>E</answer>"], answer=["E"], letters=["ABCDE"]) == [1.0]


def test_correctness_ignores_answers_inside_information():
    text = "<search>q</search>\n<information>\n<answer>B</answer>\n</information>\n"
    assert correctness_reward([text], answer=["B"]) == [0.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, 1.0),
        (SEARCHED, 1.0),
        ("<answer>B</answer>", 0.75),  # no thinking
        ("<think> </think><answer>B</answer>", 0.75),  # empty thinking
        ("<think>x</think>", 0.5),  # no answer
        ("<think>x</think><answer>B</answer> and more words", 0.5),  # answer not last
        ("<think>x<answer>B</answer>", 0.5),  # unclosed think: unbalanced, and no complete think block
        ("<think>x</think><answer>B</answer><answer>C</answer>", 0.75),  # two answers
        ("<think>x</think><answer>maybe</answer>", 0.5),  # not a letter
        ("<think>x</think><information>made up</information><answer>B</answer>", 0.0),  # invented evidence
        ("", 0.0),  # nothing at all
        ("The answer is B.", 0.0),  # no protocol at all
        # a malformed candidate clause (colon dropped, or the clause twice) loses the protocol point
        (SEARCHED.replace("tall stature lens", "tall, lens | among: Marfan syndrome; Homocystinuria"), 1.0),
        (SEARCHED.replace("tall stature lens", "tall, lens | among Marfan syndrome; Homocystinuria"), 0.75),
        (SEARCHED.replace("tall stature lens", "tall, lens | among: Marfan syndrome | among Homocystinuria"), 0.75),
    ],
)
def test_format_score(text, expected):
    assert format_score(text) == expected


def test_format_uses_rollout_fields():
    # The full completion contains the inserted block; the model's own text does not: well-formed.
    own = SEARCHED.replace(INFO, "")
    assert format_reward([SEARCHED], model_text=[own], queries=[["tall stature lens"]]) == [1.0]
    # The model's own text containing <information> is invented evidence, whatever the full text says.
    assert format_reward([SEARCHED], model_text=[SEARCHED], queries=[["q"]]) == [0.0]
    # Without model_text: two information blocks after one executed search means one was written by the model.
    doubled = SEARCHED.replace("<think>fits B</think>", INFO + "<think>fits B</think>")
    assert format_reward([doubled], queries=[["q"]]) == [0.0]
    assert format_reward([SEARCHED], queries=[["q"]]) == [1.0]


@pytest.mark.parametrize(
    ("correct", "formed", "queries", "words", "expected"),
    [
        (False, True, ["a", "b"], 500, 0.0),  # wrong answers earn nothing, however long
        (True, False, ["a", "b"], 500, 0.0),  # malformed traces earn nothing
        (True, True, [], 0, 0.0),
        (True, True, ["a"], 0, 0.05),
        (True, True, ["a", "A ", "a"], 0, 0.05),  # repeated queries count once
        (True, True, ["a", "b", "c", "d", "e"], 0, 0.15),  # at most max_searches=3 count
        (True, True, [], 100, 0.05),
        (True, True, ["a", "b", "c"], 10_000, 0.2),  # capped
    ],
)
def test_research_bonus_score(correct, formed, queries, words, expected):
    assert research_bonus_score(correct, formed, queries, words) == pytest.approx(expected)


def test_research_bonus_function_gates_on_correctness():
    bonus = make_research_bonus(per_search=0.1, max_searches=2, per_100_think_words=0.0, cap=1.0)
    assert bonus.__name__ == "research_bonus"
    out = bonus([SEARCHED, SEARCHED, GOOD], answer=["B", "C", "B"])
    assert out == pytest.approx([0.1, 0.0, 0.0])
    # queries from the rollout override the parse of the text
    assert bonus([SEARCHED], answer=["B"], queries=[["x", "y", "z"]]) == pytest.approx([0.2])


def test_think_words_excludes_information():
    assert think_words(SEARCHED) == 3
    assert think_words("<think>a b c d</think>" + INFO) == 4


def test_build_reward_funcs_names():
    funcs = build_reward_funcs(["correctness", "format", "research_bonus"], cap=0.1)
    assert [f.__name__ for f in funcs] == ["correctness_reward", "format_reward", "research_bonus"]
    from medr1.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown reward"):
        build_reward_funcs(["length"])


def test_open_correctness_on_a_table_of_names():
    """A scripted normalizer: the reward is 1 only for a name that maps to the gold, None on rows without a gold."""
    from medr1.train.rewards import make_open_correctness

    class Names:
        table = {"marfan syndrome": "OMIM:154700", "stickler syndrome": "OMIM:108300"}

        def __call__(self, answer):
            did = self.table.get((answer or "").lower())
            return did, "exact name" if did else "no name shares a word"

        def same_disease(self, a, b):
            return a is not None and a == b

    reward = make_open_correctness(Names())
    texts = ["<answer>Marfan syndrome</answer>", "<answer>Stickler syndrome</answer>", "no answer at all",
             "<answer>Marfan syndrome</answer>"]
    assert reward(texts, gold_id=["OMIM:154700", "OMIM:154700", "OMIM:154700", None]) == [1.0, 0.0, 0.0, None]
    assert reward.__name__ == "open_correctness_reward"
    with pytest.raises(Exception, match="needs a name normalizer"):
        build_reward_funcs(["open_correctness"])
    assert format_score("<think>x</think>\n<answer>Marfan syndrome</answer>", letters="") == 1.0
    assert format_score("<think>x</think>\n<answer></answer>", letters="") == 0.5


def test_context_recall_reward_pays_for_retrieving_the_gold_documents() -> None:
    from medr1.train.rewards import build_reward_funcs

    (reward,) = build_reward_funcs(["context_recall"])
    got = reward(["a", "b", "c", "d"], gold_doc_ids=[["G"], ["G", "H"], ["G"], []],
                 retrieved_ids=[[["x", "G"]], [["H"], ["y"]], [], [["G"]]])
    assert got == [1.0, 0.5, 0.0, None]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer>Marfan syndrome</answer>", 1.0),
        ("<answer>Marfan syndrome (B)</answer>", 1.0),
        ("<answer>Marfan syndrome (C)</answer>", 1.0),  # the text decides, as the harness reads it
        ("<answer>B. Marfan syndrome</answer>", 1.0),
        ("<answer>B</answer>", 0.0),  # a bare letter names nothing
        ("<answer>Marfan-Noonan syndrome (B)</answer>", 0.0),  # a blended name is no option: the letter is a guess
        ("<answer>Noonan syndrome (B)</answer>", 0.0),  # another option, whatever letter follows
        ("<think>Marfan syndrome</think> So the answer is B.", 0.0),
        ("<answer>Marfan syndrome</answer>" + INFO, 1.0),  # inserted information is not the model's answer
    ],
)
def test_named_correctness_pays_only_an_option_named_by_its_text(completion, expected):
    from medr1.train.rewards import named_correctness_reward

    assert named_correctness_reward([completion], answer=["B"], **OPTIONS) == [expected]
    lenient = correctness_reward([completion], answer=["B"], **OPTIONS)[0]
    assert expected <= lenient  # never pays what correctness does not
