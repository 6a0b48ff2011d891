"""medr1 ragas: ragas's ID-based metrics agree with medr1's pure functions, its LLM metrics (faithfulness, answer
relevancy) run through an OpenAI-compatible judge (a scripted one on an in-process transport: the statement
splitter, the NLI verdicts and the questions are the judge's, the scores ragas's), failures are counted and retried,
scores are cached, and the ragas_* keys reach metrics.json and the report's detail table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("ragas", reason="the ragas extra is not installed (pip install -e '.[ragas]')")
httpx = pytest.importorskip("httpx")

from medr1.errors import ConfigError, DataError  # noqa: E402
from medr1.io import atomic_write_jsonl, read_jsonl_tolerant  # noqa: E402
from medr1.metrics import context_recall, ranked_ids  # noqa: E402
from medr1.ragas_eval import RagasConfig, question_text, run_ragas  # noqa: E402
from medr1.report import DETAIL_KEYS, detail_cells  # noqa: E402
from medr1.retrieval.index import build_index  # noqa: E402

CORPUS = Path(__file__).parent / "fixtures" / "eval" / "corpus"
QUESTION = "A 12-year-old boy has tall stature and ectopia lentis. What is the most likely diagnosis?"
OPTIONS = {"A": "Homocystinuria", "B": "Marfan syndrome"}


def record(rid: str, completion: str, retrieved: list[list[str]], gold: list[str], prediction: str = "B") -> dict:
    return {"id": rid, "question": QUESTION, "options": OPTIONS, "gold": "B", "prediction": prediction,
            "completion": completion, "retrieved_ids": retrieved, "gold_doc_ids": gold}


def write_eval(tmp_path: Path, records: list[dict], index: Path | None = None) -> Path:
    out = tmp_path / "eval"
    out.mkdir()
    atomic_write_jsonl(out / "samples.jsonl", records)
    (out / "metrics.json").write_text(json.dumps({"n": len(records), "accuracy": 1.0}))
    if index is not None:
        (out / "config.yaml").write_text(f"index: {index}\n")
    return out


def test_id_metrics_are_ragas_and_agree_with_the_pure_functions(tmp_path):
    rng = random.Random(0)
    ids = [f"D{i}" for i in range(8)]
    records = []
    for i in range(40):
        turns = [rng.sample(ids, rng.randint(1, 4)) for _ in range(rng.randint(0, 2))]
        records.append(record(f"q{i}", f"<think>step {i}</think>", turns, rng.sample(ids, rng.randint(0, 2))))
    out = write_eval(tmp_path, records)
    summary = run_ragas(RagasConfig(eval_dir=str(out)), progress=False)
    rows = {r["id"]: r["scores"] for r in read_jsonl_tolerant(out / "ragas.jsonl")}
    assert len(rows) == 40 and summary["failures"] == {}
    for rec in records:
        gold, ranked = set(rec["gold_doc_ids"]), ranked_ids(rec["retrieved_ids"])
        scores = rows[rec["id"]]
        assert scores["ragas_id_recall"] == context_recall(rec["gold_doc_ids"], rec["retrieved_ids"])
        expected = len(gold & set(ranked)) / len(ranked) if gold and ranked else None
        assert scores["ragas_id_precision"] == (None if expected is None else pytest.approx(expected))
        assert "ragas_faithfulness" not in scores and "ragas_answer_relevancy" not in scores  # no judge
    with_gold = [r for r in records if r["gold_doc_ids"]]
    assert summary["ragas_id_recall_n"] == len(with_gold)
    merged = json.loads((out / "metrics.json").read_text())
    assert merged["accuracy"] == 1.0 and merged["ragas_id_recall"] == pytest.approx(summary["ragas_id_recall"])
    # a rerun scores nothing again: the cache holds every record
    run_ragas(RagasConfig(eval_dir=str(out)), progress=False)
    assert len(read_jsonl_tolerant(out / "ragas.jsonl")) == 40


def prompt_input(prompt: str) -> dict:
    """The JSON input at the end of a ragas prompt (after its few-shot examples)."""
    tail = prompt.split("Now perform the same with the following input")[-1]
    return json.loads(tail.split("input:", 1)[-1].split("Output:")[0].strip())


def scripted_judge(calls: list[str], valid: bool = True, status: int = 200):
    """An OpenAI-compatible chat endpoint that answers ragas's prompts by the schema they ask for: statements are
    the answer's sentences; a statement is supported when it names Marfan; the question written back is the
    question as the model saw it (vignette and options), unless the answer says 'unsure' (noncommittal)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        calls.append(system)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "response_format is not supported"}})
        if not valid:
            content = "I think the answer is B."
        elif '"title": "StatementGeneratorOutput"' in system:
            answer = prompt_input(user)["answer"]
            content = json.dumps({"statements": [s.strip() for s in answer.split(".") if s.strip()]})
        elif '"title": "NLIStatementOutput"' in system:
            payload = prompt_input(user)
            content = json.dumps({"statements": [
                {"statement": s, "reason": "scripted", "verdict": int("Marfan" in s)} for s in payload["statements"]]})
        elif '"title": "AnswerRelevanceOutput"' in system:
            content = json.dumps({"question": question_text({"question": QUESTION, "options": OPTIONS}),
                                  "noncommittal": int("unsure" in user)})
        else:
            raise AssertionError(f"unexpected prompt: {system[:200]}")
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url="http://judge.test/v1", api_key="none", max_retries=0,
                       http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


@pytest.fixture(scope="module")
def fixture_index(tmp_path_factory):
    return build_index(CORPUS, "bm25", tmp_path_factory.mktemp("idx") / "bm25", show_progress=False)


def judged_records() -> list[dict]:
    faithful = record("q1", "<think>Marfan syndrome explains the tall stature. The patient likes jazz.</think>"
                            "<answer>B</answer>", [["OMIM:154700", "OMIM:236200"]], ["OMIM:154700"])
    vague = record("q2", "<think>I am unsure.</think><answer>B</answer>", [["OMIM:236200"]], ["OMIM:154700"])
    return [faithful, vague]


def test_judge_metrics_are_ragas_over_the_endpoint(tmp_path, fixture_index):
    out = write_eval(tmp_path, judged_records(), index=fixture_index)
    calls: list[str] = []
    summary = run_ragas(RagasConfig(eval_dir=str(out), judge="http://judge.test/v1"), client=scripted_judge(calls),
                        progress=False)
    rows = {r["id"]: r["scores"] for r in read_jsonl_tolerant(out / "ragas.jsonl")}
    # q1: statements "Marfan syndrome explains the tall stature", "The patient likes jazz", "Answer: Marfan
    # syndrome" -> 2 of 3 supported; q2: "I am unsure", "Answer: Marfan syndrome" -> 1 of 2
    assert rows["q1"]["ragas_faithfulness"] == pytest.approx(2 / 3)
    assert rows["q2"]["ragas_faithfulness"] == pytest.approx(1 / 2)
    assert rows["q1"]["ragas_answer_relevancy"] == pytest.approx(1.0, abs=1e-5)  # the same question, embedded
    assert rows["q2"]["ragas_answer_relevancy"] == 0.0  # noncommittal
    assert rows["q1"]["ragas_id_precision"] == 0.5 and rows["q2"]["ragas_id_recall"] == 0.0
    assert summary["ragas_faithfulness"] == pytest.approx((2 / 3 + 1 / 2) / 2) and summary["failures"] == {}
    # 2 records x (1 statement call + 1 NLI call + 3 relevancy questions, ragas's strictness)
    assert len(calls) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    cells = dict(zip([title for _, title in DETAIL_KEYS], detail_cells(metrics)))
    assert cells["ragas faithfulness"] == f"{100 * summary['ragas_faithfulness']:.1f}%"


def test_judge_failures_are_counted_not_cached_and_retried(tmp_path, fixture_index):
    out = write_eval(tmp_path, judged_records(), index=fixture_index)
    calls: list[str] = []
    cfg = RagasConfig(eval_dir=str(out), judge="http://judge.test/v1")
    summary = run_ragas(cfg, client=scripted_judge(calls, valid=False), progress=False)
    assert summary["failures"] == {"judge reply not valid JSON for the schema": 2}
    assert summary["ragas_faithfulness"] is None and not (out / "ragas.jsonl").exists()
    assert summary["ragas_id_recall_n"] == 2  # the non-LLM scores of the failed records still count
    summary = run_ragas(cfg, client=scripted_judge(calls, status=422), progress=False)
    assert summary["failures"] == {"judge answered HTTP 422": 2}
    summary = run_ragas(cfg, client=scripted_judge(calls), progress=False)
    assert summary["failures"] == {} and summary["ragas_faithfulness_n"] == 2


def test_bad_input_is_a_clear_error(tmp_path, fixture_index):
    with pytest.raises(DataError, match="no samples.jsonl"):
        run_ragas(RagasConfig(eval_dir=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="--judge must be an http"):
        run_ragas(RagasConfig(eval_dir=str(tmp_path), judge="localhost:8001"), progress=False)
    unknown = record("q9", "<think>Marfan.</think>", [["OMIM:000000"]], ["OMIM:154700"])
    out = write_eval(tmp_path, [unknown], index=fixture_index)
    with pytest.raises(DataError, match="OMIM:000000"):
        run_ragas(RagasConfig(eval_dir=str(out), judge="http://judge.test/v1"), client=scripted_judge([]),
                  progress=False)
