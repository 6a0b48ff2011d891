"""Teacher-written explanations against a real OpenAI-compatible server on loopback (`medr1 serve`'s app with a
scripted engine): accepted, rejected and failed answers counted, the cache makes a rerun ask only for the rest,
timeouts, 5xx and non-JSON replies are counted failures, and the output is an SFT explanation source.

    pytest tests/test_explain.py -q
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from helpers import serving_app

from medr1 import serve
from medr1.data import explain
from medr1.data.schema import Question
from medr1.errors import ConfigError
from medr1.io import iter_jsonl

OPTIONS = {"A": "Marfan syndrome", "B": "Homocystinuria", "C": "Stickler syndrome", "D": "Ehlers-Danlos syndrome"}
REPLIES = {
    "q1": "Tall stature, arachnodactyly and ectopia lentis point to fibrillin-1.\nAnswer: A",
    "q2": "Lens dislocation downward and thrombosis suggest a metabolic cause.\nAnswer: B",
    "q3": "Hearing loss and myopia fit a collagen II disorder.\nAnswer: C",  # the gold is A: contradicts
    "q4": "These findings are typical.",  # commits to nothing
}


def _questions(n: int = 5) -> list[Question]:
    gold = {"q1": "A", "q2": "B", "q3": "A", "q4": "A", "q5": "D"}
    return [Question(id=f"q{i}", question=f"[q{i}] A tall 14-year-old with long fingers.", options=OPTIONS,
                     answer=gold[f"q{i}"], source="test") for i in range(1, n + 1)]


class Teacher:
    """A scripted engine: answers by the question's tag; q5 fails (5xx) the first `fail_q5` times."""

    def __init__(self, fail_q5: int = 10**6) -> None:
        self.asked: list[str] = []
        self.fail_q5 = fail_q5

    def __call__(self, requests):
        out = []
        for r in requests:
            qid = r.case.split("]")[0].lstrip("[")
            self.asked.append(qid)
            if qid == "q5":
                if self.fail_q5 > 0:
                    self.fail_q5 -= 1
                    raise RuntimeError("teacher overloaded")
                out.append(serve.Completion("Hyperextensible skin and joints.\nAnswer: D", "stop", 1, 1))
            else:
                out.append(serve.Completion(REPLIES[qid], "stop", 1, 1))
        return out


def _cfg(url: str, out, **kw) -> explain.ExplainConfig:
    base = {"concurrency": 1, "retries": 0, "timeout_s": 5.0, **kw}
    return explain.ExplainConfig(teacher=f"{url}/v1", teacher_model="medr1", data="jsonl:unused", out=str(out), **base)


def test_explanations_are_checked_cached_and_resumed(tmp_path) -> None:
    teacher = Teacher()
    out = tmp_path / "explained.jsonl"
    with serving_app(serve.create_app(teacher, serve.ServeConfig(max_batch=1))) as url:
        stats = explain.run_explain(_cfg(url, out), questions=_questions(), progress=False)
        assert stats == {"questions": 5, "cached": 0, "asked": 5, "accepted": 2,
                         "rejected": {"contradicts the gold": 1, "commits to no answer": 1}, "failed": {"HTTP 500": 1}}
        with open(out, "a", encoding="utf-8") as fh:
            fh.write('{"id": "torn')  # a writer killed mid-line
        teacher.fail_q5 = 0
        again = explain.run_explain(_cfg(url, out), questions=_questions(), progress=False)
    assert again["cached"] == 4 and again["asked"] == 1 and again["accepted"] == 1 and not again["failed"]
    assert sorted(teacher.asked) == ["q1", "q2", "q3", "q4", "q5", "q5"]  # nothing cached was asked again
    accepted = {obj["id"]: obj for _, obj in iter_jsonl(out)}
    assert sorted(accepted) == ["q1", "q2", "q5"]
    assert accepted["q1"]["explanation"] == "Tall stature, arachnodactyly and ectopia lentis point to fibrillin-1."
    rejected = {obj["id"]: obj["reason"] for _, obj in iter_jsonl(tmp_path / "explained.jsonl.rejected.jsonl")}
    assert rejected == {"q3": "contradicts the gold", "q4": "commits to no answer"}
    assert json.loads((tmp_path / "explained.jsonl.stats.json").read_text())["accepted"] == 1


def test_the_output_is_an_sft_explanation_source(tmp_path) -> None:
    from medr1.data.sources import load_questions
    from medr1.train.sft import explanation_example

    out = tmp_path / "explained.jsonl"
    with serving_app(serve.create_app(Teacher(fail_q5=0))) as url:
        explain.run_explain(_cfg(url, out), questions=_questions(), progress=False)
    loaded = load_questions(f"jsonl:{out}").questions
    example = explanation_example(next(q for q in loaded if q.id == "q2"))
    target = "".join(seg.text for seg in example.segments)
    assert "Lens dislocation downward" in target and "Answer: B" not in target


def test_a_teacher_that_retries_through_a_5xx_succeeds(tmp_path) -> None:
    teacher = Teacher(fail_q5=1)
    with serving_app(serve.create_app(teacher)) as url:
        stats = explain.run_explain(_cfg(url, tmp_path / "o.jsonl", retries=1), questions=_questions()[4:],
                                    progress=False)
    assert stats["accepted"] == 1 and not stats["failed"] and teacher.asked == ["q5", "q5"]


def test_timeouts_and_non_json_replies_are_counted_failures(tmp_path) -> None:
    slow_then = FastAPI()

    @slow_then.post("/v1/chat/completions")
    def reply(request_id: int = 0):
        time.sleep(1.5)
        return {"choices": []}

    with serving_app(slow_then) as url:
        stats = explain.run_explain(_cfg(url, tmp_path / "a.jsonl", timeout_s=0.3), questions=_questions(1),
                                    progress=False)
    assert stats["failed"] == {"timeout": 1}

    garbage = FastAPI()

    @garbage.post("/v1/chat/completions")
    def text():
        return PlainTextResponse("<html>gateway</html>")

    with serving_app(garbage) as url:
        stats = explain.run_explain(_cfg(url, tmp_path / "b.jsonl"), questions=_questions(2), progress=False)
    assert stats["failed"] == {"malformed reply": 2} and stats["accepted"] == 0


@pytest.mark.parametrize("text, gold, options, reason", [
    ("Fibrillin.\nAnswer: A", "A", OPTIONS, None),
    ("Fibrillin.\nAnswer: B", "A", OPTIONS, "contradicts the gold"),
    ("Fibrillin defects.", "A", OPTIONS, "commits to no answer"),
    ("Answer: A", "A", OPTIONS, "no explanation"),
    ("Consolidation and pleural effusion in the left lung.", "pleural effusion, left lung", {}, None),
    ("Consolidation in the left lung.", "pleural effusion, left lung", {}, "misses a gold keyword"),
])
def test_rejection_rules(text, gold, options, reason) -> None:
    q = Question(id="x", question="q", options=options, answer=gold)
    assert explain.rejection(q, text) == reason


def test_a_bad_teacher_url_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--teacher must be an http"):
        explain.run_explain(explain.ExplainConfig(teacher="localhost:8001", teacher_model="m", data="jsonl:x",
                                                  out=str(tmp_path / "o.jsonl")), questions=[], progress=False)
