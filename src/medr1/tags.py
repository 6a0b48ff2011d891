"""The tag protocol, defined once: prompts, the rollout parser, rewards and the report all use these.

`<think>…</think>` reasoning, `<search>query</search>` a retrieval request, `<information>…</information>` results
written by the environment (never by the model), `<answer>X</answer>` the chosen option letter.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# Generation stops when the model closes a search or an answer.
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)

_SEARCH_RE = re.compile(re.escape(SEARCH_OPEN) + r"(.*?)" + re.escape(SEARCH_CLOSE), re.S)
# A close the model broke and then wrote again (`<answer>D</answer</answer>`: the untrained model does it, and a
# GRPO run without retrieval learned it) still closes the span: its content is `D`.
ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)(?:" + re.escape(ANSWER_CLOSE[:-1]) + r"\s*)?"
                       + re.escape(ANSWER_CLOSE), re.S)
_TAG_NAMES = "think|search|information|answer"
TAG_RE = re.compile(rf"</?({_TAG_NAMES})>")  # any protocol tag; group 1 = its name
# Where an answer span ends: a protocol tag, or a close missing its ">" (`<answer>B</answer</think>`).
SPAN_END_RE = re.compile(rf"</?(?:{_TAG_NAMES})\b>?")
_INFO_RE = re.compile(re.escape(INFO_OPEN) + r".*?" + re.escape(INFO_CLOSE), re.S)


def last_search_query(text: str) -> str | None:
    """The query of the last complete `<search>…</search>` in `text`, stripped; None if there is none."""
    found = _SEARCH_RE.findall(text)
    return found[-1].strip() if found else None


def search_queries(text: str) -> list[str]:
    return [q.strip() for q in _SEARCH_RE.findall(text)]


def answer_spans(text: str) -> list[str]:
    return [a.strip() for a in ANSWER_RE.findall(text)]


def strip_information(text: str) -> str:
    """The model's own text: `<information>` blocks removed (for rewards and BLEU/ROUGE of the reasoning)."""
    return _INFO_RE.sub("", text)




def force_answer_text(text: str) -> str:
    """What the environment writes to make a reply that ran out of budget answer: the protocol tag left open is
    closed, then `<answer>` opens ("" when an answer is already open: the model was writing it)."""
    open_tag = None
    for match in TAG_RE.finditer(text):
        open_tag = None if match.group(0).startswith("</") else match.group(1)
    if open_tag == "answer":
        return ""
    closing = f"</{open_tag}>" if open_tag else ""
    return f"{closing}\n{ANSWER_OPEN}"


def format_information(passages: list[str]) -> str:
    """The observation block the environment inserts after a search."""
    body = "\n".join(passages) if passages else "No results."
    return f"\n{INFO_OPEN}\n{body}\n{INFO_CLOSE}\n"
