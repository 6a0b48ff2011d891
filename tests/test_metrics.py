"""Tables of cases for the pure evaluation metrics (answer extraction, Wilson interval, BLEU/ROUGE-L, aggregate)."""

from __future__ import annotations

import math

import pytest

from medr1.metrics import (
    aggregate,
    answer_span,
    bleu,
    extract_answer,
    extract_answer_text,
    gold_hit,
    reasoning_text,
    rouge_l,
    wilson_interval,
)

OPTIONS = {"A": "Marfan syndrome", "B": "Ehlers-Danlos syndrome", "C": "Homocystinuria", "D": "Stickler syndrome"}

EXTRACT_CASES = [
    # (completion, expected) -- rule numbers refer to the metrics module docstring
    ("<think>tall, lens</think><answer>A</answer>", "A"),  # 2a
    ("<answer> b </answer>", "B"),  # 2a, lower case lone letter
    ("<answer>(C)</answer>", "C"),  # 2a wrapped
    ("<answer>**D**</answer>", "D"),  # 2a markdown
    ("<answer>C. Homocystinuria</answer>", "C"),  # 2b
    ("<answer>B: Ehlers-Danlos</answer>", "B"),  # 2b
    ("<answer>A or B</answer>", "A"),  # 2b (MIRAGE takes the first)
    ("<answer>I pick option (D)</answer>", "D"),  # 2c
    ("<answer>The answer is C</answer>", "C"),  # 2d
    ("<answer>homocystinuria.</answer>", "C"),  # 2e option text
    ("<answer>A</answer> wait <answer>B</answer>", "B"),  # last span wins
    ("<answer>A</answer> then <answer>C", "C"),  # unclosed tail after a complete span wins
    ("<think>x</think><answer>D", "D"),  # unclosed (budget-truncated)
    ("<think>x</think>\n<answer>D</answer</answer>", "D"),  # a broken close written again (GRPO without retrieval)
    ("<answer>Homocystinuria</answer </answer>", "C"),  # the same, with a space
    ("<answer>A</think>\n<answer>C</answer>", "C"),  # an answer opened again: the last opening starts the span
    ("<answer>Homocystinuria</answer</think>\n<answer>Homocystinuria</answer>", "C"),  # the same, a broken close
    ("<answer>Homocystinuria</think>", "C"),  # the span ends at a protocol tag inside it
    ("<answer>B</answer</think>", "B"),  # or at a close missing its ">"
    ("<answer>LETTER</answer>", None),  # committed but unreadable: no fallback
    ("<answer>E</answer>", None),  # not an option letter
    ("<answer>Because of the lens</answer>", None),  # 'B' inside a word is not a letter
    ("<answer></answer> The answer is A", "A"),  # an empty span commits to nothing: the fallbacks read on
    ("So the answer is B.", "B"),  # 3a
    ("answer: C", "C"),  # 3a
    ('{"answer_choice": "D"}', "D"),  # 3a MIRAGE JSON
    ("The answer is A. Actually the answer is (C)", "C"),  # 3a last
    ("<think>long thought</think> B", "B"),  # 3b lone letter after think
    ("B.", "B"),  # 3b
    ("D. Brain small vessel disease 3", "D"),  # 3c leading letter (SmolLM2's untagged reply)
    ("C. Cimdag syndrome\nStep 1: The correct answer is Cimdag syndrome.", "C"),  # 3c; 'is Cimdag' is no letter
    ("A. Marfan\nThe correct answer is:\nB. EDS", "B"),  # 3a beats 3c
    ("A patient with fever", None),  # an article is not a leading letter
    ("<think>x</think>\n(C) Homocystinuria", "C"),  # 3c after a think block
    ("I think Marfan syndrome", None),  # nothing
    ("", None),
    ("<information>Doc 1 the answer is A</information><think>hmm</think>", None),  # retrieved text never counts
    ("<information><answer>A</answer></information><answer>B</answer>", "B"),
    ("<information><answer>A</answer></information>", None),
    ("the answer is a rare disease", None),  # lower-case 'a' in prose is not a letter
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer_table(text: str, expected: str | None) -> None:
    assert extract_answer(text, "ABCD", OPTIONS) == expected


def test_extract_answer_respects_letters_and_needs_options_for_text_match() -> None:
    assert extract_answer("<answer>C</answer>", "AB") is None
    assert extract_answer("<answer>Homocystinuria</answer>", "ABCD") is None
    assert extract_answer("<answer>A</answer>", "") is None
    assert extract_answer("<answer>E</answer>", "ABCDE") == "E"


def test_answer_span_and_free_text() -> None:
    assert answer_span("no tags") is None
    assert answer_span("<answer> x </answer><answer>y") == "y"
    assert extract_answer_text("<think>t</think><answer> Marfan syndrome </answer>") == "Marfan syndrome"
    assert extract_answer_text("<answer></answer>") is None
    assert extract_answer_text("nothing") is None


def test_reasoning_text_strips_information_and_answer() -> None:
    text = (
        "<think>Tall and lens dislocation.</think>\n<search>marfan</search>\n"
        "<information>Doc 1 (Title: Marfan) aortic root</information>\n<think>Fits.</think><answer>A</answer>"
    )
    assert reasoning_text(text) == "Tall and lens dislocation. marfan Fits."
    assert reasoning_text("<think>a</think><answer>B") == "a"


WILSON_CASES = [
    # (k, n, low, high) reference values from the closed-form Wilson score interval, z = 1.96
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
]


@pytest.mark.parametrize("k,n,low,high", WILSON_CASES)
def test_wilson_interval(k: int, n: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(k, n)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)
    assert got_low <= k / n <= got_high


def test_wilson_interval_empty() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bleu_and_rouge() -> None:
    assert bleu([], []) is None and rouge_l([], []) is None
    same = "the patient has marfan syndrome with lens dislocation"
    assert bleu([same], [same]) == pytest.approx(100.0)
    assert rouge_l([same], [same]) == pytest.approx(1.0)
    assert bleu(["completely unrelated words here"], [same]) < 5.0
    partial = rouge_l(["marfan syndrome with aortic dilation"], [same])
    assert 0.2 < partial < 0.8


def test_gold_hit() -> None:
    assert gold_hit(["OMIM:1"], [["x"], ["y", "OMIM:1"]])
    assert not gold_hit(["OMIM:1"], [["x"], []])
    assert not gold_hit([], [["x"]])


def _sample(**kw):
    base = {
        "correct": False,
        "parsed": True,
        "completion": "",
        "explanation": None,
        "gold_doc_ids": [],
        "retrieved_ids": [],
        "queries": [],
        "n_generated": 0,
        "seconds": 0.0,
        "tool_errors": 0,
        "finish_reason": "answer",
    }
    base.update(kw)
    return base


def test_aggregate_counts_everything() -> None:
    samples = [
        _sample(correct=True, completion="<think>marfan lens</think><answer>A</answer>", explanation="marfan lens",
                gold_doc_ids=["d1"], retrieved_ids=[["d1", "d2"]], queries=["q"], n_generated=10, seconds=1.0),
        _sample(parsed=False, completion="<think>no idea</think>", explanation="marfan lens",
                gold_doc_ids=["d3"], retrieved_ids=[["d2"], ["d4"]], queries=["q1", "q2"], n_generated=30,
                seconds=3.0, tool_errors=["timeout"], finish_reason="budget"),
        _sample(correct=True, n_generated=20, seconds=2.0, tool_errors=2),
        _sample(),
    ]
    m = aggregate(samples)
    assert m["n"] == 4
    assert m["accuracy"] == 0.5
    assert m["ci_low"] < 0.5 < m["ci_high"]
    assert m["unparseable_rate"] == 0.25
    assert m["gold_hit_rate"] == 0.5
    assert m["searches_per_question"] == 0.75
    assert m["generated_tokens_mean"] == 15.0
    assert m["seconds_per_question"] == 1.5
    assert m["tool_errors"] == 3
    assert m["finish_reasons"] == {"answer": 3, "budget": 1}
    assert m["n_with_explanation"] == 2
    assert 0.0 < m["rouge_l"] <= 1.0 and m["bleu"] is not None
    assert m["chance_accuracy"] is None and m["predictions"] == {"unparseable": 4}


def test_aggregate_prediction_counts_and_chance() -> None:
    four, five = {k: k for k in "ABCD"}, {k: k for k in "ABCDE"}
    samples = [_sample(prediction="D", options=four), _sample(prediction="D", options=four),
               _sample(prediction=None, parsed=False, options=five), _sample(prediction="A", options=five)]
    m = aggregate(samples)
    assert m["predictions"] == {"A": 1, "D": 2, "unparseable": 1}
    assert m["chance_accuracy"] == (0.25 + 0.25 + 0.2 + 0.2) / 4


def test_aggregate_without_retrieval_or_explanations() -> None:
    m = aggregate([_sample(gold_doc_ids=["d1"])], uses_retrieval=False)
    assert m["gold_hit_rate"] is None and m["bleu"] is None and m["rouge_l"] is None
    empty = aggregate([])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["searches_per_question"] is None
    assert not math.isnan(empty["ci_high"])


def test_aggregate_text_metrics_off() -> None:
    m = aggregate([_sample(explanation="x y", completion="A: doc BM25 1.0")], text_metrics=False)
    assert m["bleu"] is None and m["rouge_l"] is None and m["n_with_explanation"] == 0


NAMED = {"A": "Homocystinuria", "B": "C3 glomerulopathy", "C": "D-bifunctional protein deficiency",
         "D": "A, B and C syndrome"}


@pytest.mark.parametrize(("text", "expected"), [
    ("<answer>Homocystinuria</answer>", "A"),
    ("<answer>homocystinuria.</answer>", "A"),  # case and punctuation ignored
    ("<answer>C3   glomerulopathy</answer>", "B"),
    ("<answer>D-bifunctional protein deficiency</answer>", "C"),  # a name, not the letter D with a separator
    ("<answer>A, B and C syndrome</answer>", "D"),  # not the letter A
    ("<answer>C. D-bifunctional protein deficiency</answer>", "C"),  # letter and name
    ("<answer>Homocystinuria type 2</answer>", None),  # names no option exactly
    ("Doc 1 (Homocystinuria) matches. <answer>Homocystinuria</answer>", "A"),
])
def test_an_answer_may_name_its_option(text: str, expected: str | None) -> None:
    from medr1.metrics import extract_answer, tagged_answer

    assert extract_answer(text, "ABCD", NAMED) == expected
    assert tagged_answer(text, "ABCD", NAMED) == expected


def test_subset_accuracy_per_subset_with_wilson():
    from medr1.metrics import aggregate, subset_accuracy, wilson_interval

    samples = ([{"subset": "unseen-publication", "correct": c, "parsed": True} for c in (1, 0, 0, 0)]
               + [{"subset": "seen-publication", "correct": c, "parsed": c} for c in (1, 1, 0)] + [{"correct": True}])
    got = subset_accuracy(samples)
    assert list(got) == ["seen-publication", "unseen-publication"]
    assert got["unseen-publication"]["n"] == 4 and got["unseen-publication"]["accuracy"] == 0.25
    assert (got["unseen-publication"]["ci_low"], got["unseen-publication"]["ci_high"]) == wilson_interval(1, 4)
    assert got["seen-publication"]["unparseable_rate"] == 1 / 3
    assert aggregate(samples)["subsets"] == got and subset_accuracy([{"correct": True}]) == {}


@pytest.mark.parametrize("span,want", [
    ("Marfan syndrome (B)", "B"), ("Marfan syndrome (C)", "B"), ("C. Marfan syndrome", "B"),
    ("Loeys-Dietz syndrome (C)", "C"), ("Loeys-Dietz syndrome", None), ("(D)", "D"),
    ("C (Loeys-Dietz syndrome)", "C"), ("A (Marfan syndrome)", "B"), ("Alport (C)", "C"),  # 2c `^X (`: a letter first
    ("Aicardi-Goutières syndrome (C)", "A"), ("AICARDI GOUTIERES SYNDROME", "A"),  # accents and case ignored
    ("Marfan syndrome is the most likely diagnosis.", None),  # containing an option's text is not naming it
    ("Immunodeficiency 57 (D) is an option and matches.", "D"),  # 2g the one letter in parentheses
    ("Alport (A) or Loeys-Dietz (C) are options.", None),  # two letters in parentheses: no commitment
])
def test_option_text_with_its_letter_beside_it(span, want):
    """The text decides when text and letter disagree; a name that is no option falls back to the letter."""
    from medr1.metrics import tagged_answer

    options = {"A": "Aicardi-Goutieres syndrome", "B": "Marfan syndrome", "C": "Stickler syndrome",
               "D": "Ehlers-Danlos syndrome"}
    assert tagged_answer(f"<answer>{span}</answer>", "ABCD", options) == want


def test_an_empty_forced_answer_leaves_the_reply_to_the_fallbacks() -> None:
    """The environment's forced `<answer>` left blank is no commitment: the untagged statement before it is read;
    a non-empty span still decides alone."""
    from medr1.metrics import extract_answer

    cut = "<think>Step 9: the answer is C. Marfan syndrome.\nStep 10: check</think>\n<answer>"
    assert extract_answer(cut, "ABCD") == "C"
    assert extract_answer(cut + "</answer>", "ABCD") == "C"
    assert extract_answer(cut + "B</answer>", "ABCD") == "B"
    assert extract_answer(cut + "no idea</answer>", "ABCD") is None


@pytest.mark.parametrize("gold, retrieved, precision, recall", [
    (["G"], [["G", "x", "y"]], 1.0, 1.0),
    (["G"], [["x", "G", "y"]], 0.5, 1.0),
    (["G"], [["x", "y"], ["x", "G"]], 1 / 3, 1.0),  # the second search's G is the third distinct document
    (["G", "H"], [["G", "x", "H"]], (1 + 2 / 3) / 2, 1.0),
    (["G", "H"], [["x", "H"]], 0.5, 0.5),
    (["G"], [["x", "y"]], 0.0, 0.0),
    (["G"], [], None, 0.0),
    ([], [["x"]], None, None),
])
def test_ragas_context_precision_and_recall_by_ids(gold, retrieved, precision, recall) -> None:
    from medr1.metrics import context_precision, context_recall

    got = context_precision(gold, retrieved)
    assert (got is None and precision is None) or got == pytest.approx(precision)
    assert context_recall(gold, retrieved) == recall


@pytest.mark.parametrize("prediction, titles, expected", [
    ("B", [["Stickler syndrome", "Marfan  Syndrome"]], True),
    ("A", [["Marfan syndrome"]], False),
    (None, [["Marfan syndrome"]], None),
    ("B", [], None),
])
def test_answer_in_evidence(prediction, titles, expected) -> None:
    from medr1.metrics import answer_in_evidence

    options = {"A": "Stickler syndrome type 2", "B": "Marfan syndrome"}
    assert answer_in_evidence(prediction, options, titles) == expected


@pytest.mark.parametrize("gold, retrieved, titles, prediction, top_gold, follows", [
    (["G"], [["G", "x"]], [["Marfan syndrome", "x"]], "B", True, True),
    (["G"], [["x", "G"]], [["Stickler syndrome type 2", "Marfan syndrome"]], "B", False, False),  # gold at rank 2
    (["G"], [["x", "G"], ["G"]], [["Stickler syndrome type 2", "Marfan syndrome"], ["Marfan syndrome"]], "A",
     False, True),  # only the first search's top hit counts; the answer follows it
    (["G"], [["G"]], [["marfan  Syndrome"]], "A", True, False),  # right evidence, the answer leaves it
    (["G"], [], [], "B", None, None),  # no search
    (["G"], [[]], [[]], "B", None, None),  # a search that returned nothing
    ([], [["G"]], [["Marfan syndrome"]], None, None, None),  # no gold ids, unanswered
])
def test_top_hit_splits_retrieval_from_reading(gold, retrieved, titles, prediction, top_gold, follows) -> None:
    from medr1.metrics import follows_top_hit, top_hit_gold

    options = {"A": "Stickler syndrome type 2", "B": "Marfan syndrome"}
    assert top_hit_gold(gold, retrieved) is top_gold
    assert follows_top_hit(prediction, options, titles) is follows


def test_aggregate_reports_the_rag_columns_only_for_retrieving_methods() -> None:
    from medr1.metrics import aggregate

    samples = [
        {"correct": True, "parsed": True, "prediction": "B", "options": {"A": "x", "B": "Marfan syndrome"},
         "gold_doc_ids": ["G"], "retrieved_ids": [["x", "G"]], "retrieved_titles": [["x", "Marfan syndrome"]]},
        {"correct": False, "parsed": True, "prediction": "A", "options": {"A": "x", "B": "y"},
         "gold_doc_ids": ["G"], "retrieved_ids": [["G"]], "retrieved_titles": [["y"]]},
    ]
    m = aggregate(samples, text_metrics=False)
    assert m["context_precision"] == pytest.approx(0.75) and m["context_recall"] == 1.0
    assert m["answer_in_evidence"] == 0.5
    assert m["top_hit_gold"] == 0.5 and m["follows_top_hit"] == 0.0
    assert aggregate(samples, uses_retrieval=False, text_metrics=False)["context_precision"] is None

