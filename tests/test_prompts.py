"""Prompts for cot / rag / self-ask: tag protocol, options, passages, free-text cases, passage formatting."""

from __future__ import annotations

import pytest

from medr1 import tags
from medr1.data.schema import Document, Question
from medr1.errors import ConfigError
from medr1.prompts import build_messages, format_passage, format_passages, truncate_words
from medr1.retrieval.base import Hit

Q = Question(
    id="q1",
    question="A boy has tall stature and ectopia lentis.",
    options={"A": "Homocystinuria", "B": "Marfan syndrome", "C": "Stickler syndrome"},
    answer="B",
)


def _content(method: str, **kw) -> str:
    messages = build_messages(Q, method, **kw)
    assert [m["role"] for m in messages] == ["user"]
    return messages[0]["content"]


@pytest.mark.parametrize("method", ["cot", "rag", "self-ask"])
def test_every_method_shows_question_options_and_answer_protocol(method: str) -> None:
    text = _content(method)
    assert Q.question in text
    assert "A. Homocystinuria\nB. Marfan syndrome\nC. Stickler syndrome" in text
    assert tags.ANSWER_OPEN in text and tags.ANSWER_CLOSE in text and tags.THINK_OPEN in text
    assert "A, B, C" in text  # the allowed letters follow the question's options, not a fixed ABCD


def test_self_ask_teaches_search_protocol_with_one_example() -> None:
    text = _content("self-ask")
    for tag in (tags.SEARCH_OPEN, tags.SEARCH_CLOSE, tags.INFO_OPEN, tags.INFO_CLOSE):
        assert tag in text
    assert text.count("Example:") == 1
    # the plain search, the candidate search over the options (`medr1.retrieval.candidates`), then the example's
    assert tags.search_queries(text) == ["query", "findings | among: option; option", "fever neck stiffness"]
    assert text.index("Example:") < text.index(Q.question)  # instructions first, the case last


def test_cot_and_rag_have_no_search_instructions() -> None:
    for method in ("cot", "rag"):
        assert tags.SEARCH_OPEN not in _content(method)


def test_rag_puts_passages_before_the_question() -> None:
    passages = format_passages([Document("OMIM:1", "Marfan syndrome", "Tall stature; ectopia lentis")])
    text = _content("rag", passages=passages)
    assert text.index("Doc 1 (Title: Marfan syndrome) Tall stature; ectopia lentis") < text.index(Q.question)
    assert "No documents found." in _content("rag", passages=[])


def test_free_text_case_asks_for_a_diagnosis_name() -> None:
    free = Question(id="ask", question="Recurrent fever and serositis.", options={}, answer="")
    text = build_messages(free, "self-ask")[0]["content"]
    assert "Options:" not in text and "among:" not in text  # no options to compare
    assert f"{tags.ANSWER_OPEN}diagnosis name{tags.ANSWER_CLOSE}" in text
    assert "LETTER" not in text


def test_unknown_method() -> None:
    with pytest.raises(ConfigError, match="self-ask"):
        build_messages(Q, "react")


def test_prompts_stay_short() -> None:
    # SmolLM2-135M has a small context: the self-ask instructions must leave room for the trace.
    assert len(_content("self-ask").split()) < 160
    assert len(_content("cot").split()) < 80


def test_passage_formatting_and_truncation() -> None:
    doc = Document("d", " Fever ", " ".join(f"w{i}" for i in range(100)))
    line = format_passage(Hit(doc, 1.0), 3, max_words=5)
    assert line == "Doc 3 (Title: Fever) w0 w1 w2 w3 w4 ..."
    assert truncate_words("a  b\nc", 3) == "a b c"
    assert [p.split(" (")[0] for p in format_passages([doc, doc])] == ["Doc 1", "Doc 2"]


def test_example_letter_varies_with_the_question_not_always_the_same() -> None:
    shown = set()
    for i in range(40):
        q = Question(id=f"q{i}", question="x", options={"A": "a", "B": "b", "C": "c", "D": "d"}, answer="A")
        text = build_messages(q, "self-ask")[0]["content"]
        example = text.split("Example:")[1]
        shown.add(tags.answer_spans(example)[0])
        assert build_messages(q, "self-ask") == build_messages(q, "self-ask")  # deterministic
    assert shown == {"A", "B", "C", "D"}
