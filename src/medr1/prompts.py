"""Chat prompts for the evaluation methods (and for training, so train and eval see the same text).

One builder per LLM method of the method table (`medr1.methods`), all on the tag protocol of `medr1.tags`:

- `cot`: think inside <think>…</think>, then <answer>LETTER</answer>; no retrieval.
- `rag`: MedRAG-style: the top-k passages retrieved with the question are shown first, then the question; think and
  answer as in `cot`.
- `self-ask`: the model may write <search>query</search> any number of times; the environment answers with
  <information>…</information>; it finishes with <answer>LETTER</answer>. With options it is told of the candidate
  search (`findings | among: option; option`, `medr1.retrieval.candidates`). One compact format example is included,
  because the embedded model (SmolLM2-135M) follows a shown pattern far better than a described one.

Everything goes into a single user message: R1-Distill models are documented to work best without a system prompt,
and SmolLM2's template adds its own default system line. Prompts stay short because SmolLM2-135M has a small
context. A question without options (free-text cases in `medr1 ask`) asks for a diagnosis name in <answer>.

    from medr1.prompts import build_messages
    messages = build_messages(question, "self-ask")
    ids = medr1.models.chat_prompt_ids(loaded, messages)
"""

from __future__ import annotations

from collections.abc import Sequence

from medr1.data.schema import Document, Question
from medr1.errors import ConfigError
from medr1.io import stable_hash
from medr1.retrieval.base import Hit
from medr1.tags import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    INFO_CLOSE,
    INFO_OPEN,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)

# Per-passage word budget in prompts and observations: 5 passages x 60 words stays well inside SmolLM2's context.
PASSAGE_MAX_WORDS = 60


def truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` whitespace-separated words of `text`, with '...' when something was cut."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + " ..."


def format_passage(doc: Document | Hit, index: int, max_words: int = PASSAGE_MAX_WORDS) -> str:
    """`Doc 1 (Title: Marfan syndrome) Tall stature, ...` (1-based index; text truncated to `max_words` words)."""
    if isinstance(doc, Hit):
        doc = doc.doc
    return f"Doc {index} (Title: {doc.title.strip()}) {truncate_words(doc.text, max_words)}"


def format_passages(docs: Sequence[Document | Hit], max_words: int = PASSAGE_MAX_WORDS) -> list[str]:
    """One formatted line per retrieved document, numbered from 1 (input of `medr1.tags.format_information`)."""
    return [format_passage(d, i, max_words) for i, d in enumerate(docs, start=1)]


def _answer_instruction(question: Question) -> str:
    if not question.options:
        return f"{ANSWER_OPEN}diagnosis name{ANSWER_CLOSE}"
    letters = ", ".join(sorted(question.options))
    return f"{ANSWER_OPEN}LETTER{ANSWER_CLOSE} with LETTER one of {letters}"


def _question_block(question: Question) -> str:
    text = f"Question: {question.question.strip()}"
    if question.options:
        text += "\nOptions:\n" + question.format_options()
    return text


def _example_answer(question: Question) -> str:
    """The letter shown in the format example, varied by question id: a small model copies the example's letter,
    so a fixed one would bias every answer towards it; a hash-chosen one spreads that bias evenly over letters."""
    if not question.options:
        return "Meningitis"
    letters = sorted(question.options)
    return letters[stable_hash(str(question.id)) % len(letters)]


def _cot_instructions(question: Question) -> str:
    ans = _example_answer(question)
    return (
        f"Think step by step inside {THINK_OPEN}{THINK_CLOSE}, then give the final answer as "
        f"{_answer_instruction(question)}.\n"
        f"Format: {THINK_OPEN}your reasoning{THINK_CLOSE}{ANSWER_OPEN}{ans}{ANSWER_CLOSE}"
    )


def _compare_instruction(question: Question) -> str:
    """The candidate search (`medr1.retrieval.candidates`), offered where there are options to compare."""
    if not question.options:
        return ""
    from medr1.retrieval.candidates import AMONG

    return (f"To compare the options on the findings, write {SEARCH_OPEN}findings{AMONG}option; option"
            f"{SEARCH_CLOSE}: only their documents come back, best first. ")


def _self_ask_instructions(question: Question) -> str:
    ans = _example_answer(question)
    return (
        "You are a medical diagnostician. Reason inside "
        f"{THINK_OPEN}{THINK_CLOSE}. To look something up, write {SEARCH_OPEN}query{SEARCH_CLOSE}; "
        f"results come back in {INFO_OPEN}{INFO_CLOSE}. You may search several times. "
        f"{_compare_instruction(question)}"
        f"Finish with {_answer_instruction(question)}.\n"
        "Example:\n"
        f"{THINK_OPEN}Fever and neck stiffness; I should check.{THINK_CLOSE}\n"
        f"{SEARCH_OPEN}fever neck stiffness{SEARCH_CLOSE}\n"
        f"{INFO_OPEN}Doc 1 (Title: Meningitis) Fever, headache, neck stiffness{INFO_CLOSE}\n"
        f"{THINK_OPEN}The findings match meningitis.{THINK_CLOSE}\n"
        f"{ANSWER_OPEN}{ans}{ANSWER_CLOSE}"
    )


def cot_messages(question: Question) -> list[dict]:
    return [{"role": "user", "content": f"{_question_block(question)}\n\n{_cot_instructions(question)}"}]


def rag_messages(question: Question, passages: list[str] | None) -> list[dict]:
    docs = "\n".join(passages) if passages else "No documents found."
    body = f"Relevant documents:\n{docs}\n\n{_question_block(question)}\n\n{_cot_instructions(question)}"
    return [{"role": "user", "content": body}]


def self_ask_messages(question: Question) -> list[dict]:
    return [{"role": "user", "content": f"{_self_ask_instructions(question)}\n\n{_question_block(question)}"}]


def build_messages(question: Question, method: str, passages: list[str] | None = None) -> list[dict]:
    """Chat messages for an LLM `method` of the method table (`medr1.methods`); `passages` (formatted, see
    `format_passages`) for a method that retrieves into the prompt."""
    from medr1.methods import get_method

    entry = get_method(method, "prompt method")
    if entry.prompt is None:
        raise ConfigError(f"prompt method {method!r} is not an LLM method (it has no prompt)")
    return entry.prompt(question, passages)
