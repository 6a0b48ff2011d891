"""RAGAS metrics over an evaluation's traces, computed by the `ragas` library (the `ragas` extra; `make install`
installs it).

    medr1 ragas runs/quickstart/eval-sft/self-ask/hpo-dx-test
    medr1 serve --model Qwen/Qwen2.5-7B-Instruct --port 8001 &          # or vLLM, or a hosted API
    medr1 ragas runs/quickstart/eval-sft/self-ask/hpo-dx-test --judge http://127.0.0.1:8001/v1 --judge-model medr1

Without a judge, ragas's non-LLM metrics: `ragas_id_precision` (IDBasedContextPrecision: the share of retrieved
documents that are gold) and `ragas_id_recall` (IDBasedContextRecall: the share of gold documents retrieved). With
`--judge` (any OpenAI-compatible endpoint, through the `openai` client), ragas's LLM metrics as well:
`ragas_faithfulness` (the share of the reasoning's statements the retrieved evidence supports) and
`ragas_answer_relevancy` (questions the judge writes back from the answer, compared with the question by the local
all-MiniLM-L6-v2 embeddings). The judge must return JSON (ragas asks for structured output); a 135M model mostly
cannot, and each failure is counted by reason, never scored.

Files in the eval directory: `ragas.jsonl` (per record: id, a key of what was scored, the scores; the cache, so a
killed or rerun command scores only what changed), `ragas.json` (means, counts, failures by reason); the means are
added to `metrics.json` as `ragas_*` keys, so `medr1 report` and `medr1 table` show them. Failed judge calls are not
cached: the same command retries them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medr1.errors import ConfigError, DataError
from medr1.io import append_jsonl, atomic_write_json, read_jsonl_tolerant
from medr1.metrics import RAGAS_KEYS, ranked_ids, reasoning_text

ID_METRICS, JUDGE_METRICS = RAGAS_KEYS[:2], RAGAS_KEYS[2:]
CONTEXT_CHARS = 1500  # each retrieved document as the judge reads it: its title and the start of its text


@dataclass(frozen=True)
class RagasConfig:
    eval_dir: str
    index: str | None = None  # the index the eval retrieved from (its documents are the contexts); None = default
    judge: str | None = None  # base URL of an OpenAI-compatible API for the LLM metrics
    judge_model: str = "medr1"
    api_key_env: str = "OPENAI_API_KEY"
    embedder: str | None = None  # sentence-transformers model for answer relevancy (default: bundled MiniLM)
    limit: int | None = None
    concurrency: int = 4
    timeout_s: float = 120.0

    def validate(self) -> None:
        if self.judge is not None and not self.judge.startswith(("http://", "https://")):
            raise ConfigError(f"--judge must be an http(s) URL of an OpenAI-compatible API, got {self.judge!r}")
        if self.concurrency < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("--concurrency and --limit must be at least 1")


def require_ragas() -> None:
    try:
        import ragas  # noqa: F401
    except ImportError:
        raise ConfigError("the ragas library is not installed: pip install -e '.[ragas]' (make install does)") from None


def question_text(rec: dict[str, Any]) -> str:
    """The question as the model saw it: the vignette, then its options."""
    options = rec.get("options") or {}
    return "\n".join([rec.get("question") or ""] + [f"{k}. {v}" for k, v in options.items()])


def record_key(rec: dict[str, Any], judged: bool) -> str:
    """What a cached score depends on: the trace, the gold documents and whether a judge scored it."""
    parts = [rec.get("completion") or "", rec.get("retrieved_ids") or [], rec.get("gold_doc_ids") or [], judged]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def contexts(rec: dict[str, Any], docs: dict[str, Any]) -> list[str]:
    """The retrieved documents' texts in the order the trace first retrieved them (unknown ids are an error)."""
    out = []
    for doc_id in ranked_ids(rec.get("retrieved_ids") or []):
        if doc_id not in docs:
            raise DataError(f"record {rec.get('id')!r} retrieved {doc_id!r}, which the index's corpus does not hold "
                            "(pass the --index the eval used)")
        doc = docs[doc_id]
        out.append(f"{doc.title}: {doc.text}"[:CONTEXT_CHARS])
    return out


def _value(result: Any) -> float | None:
    value = float(getattr(result, "value", result))
    return None if math.isnan(value) else value


async def id_scores(rec: dict[str, Any]) -> dict[str, float | None]:
    """ragas's ID-based context precision and recall of one record (None where there is no gold or no retrieval)."""
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    retrieved, gold = ranked_ids(rec.get("retrieved_ids") or []), [str(g) for g in rec.get("gold_doc_ids") or []]
    if not gold:
        return dict.fromkeys(ID_METRICS)
    sample = SingleTurnSample(retrieved_context_ids=retrieved, reference_context_ids=gold)
    precision = await IDBasedContextPrecision().single_turn_ascore(sample) if retrieved else None
    recall = await IDBasedContextRecall().single_turn_ascore(sample)
    return {"ragas_id_precision": None if precision is None else _value(precision), "ragas_id_recall": _value(recall)}


async def judge_scores(rec: dict[str, Any], ctx: list[str], metrics: dict[str, Any]) -> dict[str, float | None]:
    """Faithfulness (needs evidence and reasoning) and answer relevancy of one record, by the judge."""
    response = reasoning_text(rec.get("completion") or "") or (rec.get("completion") or "").strip()
    answer = (rec.get("options") or {}).get(rec.get("prediction") or "") or rec.get("prediction") or ""
    full = f"{response} Answer: {answer}".strip() if answer else response
    out: dict[str, float | None] = dict.fromkeys(JUDGE_METRICS)
    if not full:
        return out
    question = question_text(rec)
    if ctx:
        out["ragas_faithfulness"] = _value(await metrics["faithfulness"].ascore(
            user_input=question, response=full, retrieved_contexts=ctx))
    out["ragas_answer_relevancy"] = _value(await metrics["answer_relevancy"].ascore(user_input=question, response=full))
    return out


def judge_metrics(cfg: RagasConfig, client: Any = None) -> dict[str, Any]:
    """ragas's Faithfulness and AnswerRelevancy over the judge endpoint (an `AsyncOpenAI` client unless given)."""
    from openai import AsyncOpenAI
    from ragas.embeddings import HuggingFaceEmbeddings
    from ragas.llms import llm_factory
    from ragas.metrics.collections import AnswerRelevancy, Faithfulness

    from medr1.retrieval.dense import resolve_embedder

    client = client or AsyncOpenAI(base_url=cfg.judge, api_key=os.environ.get(cfg.api_key_env) or "none",
                                   timeout=cfg.timeout_s, max_retries=3)
    llm = llm_factory(cfg.judge_model, client=client, temperature=0.0)
    embeddings = HuggingFaceEmbeddings(model=resolve_embedder(cfg.embedder), device="cpu")
    return {"faithfulness": Faithfulness(llm=llm), "answer_relevancy": AnswerRelevancy(llm=llm, embeddings=embeddings)}


def failure_reason(exc: BaseException) -> str:
    """A judge failure's reason, short enough to count: an HTTP status the judge answered, a reply that is not JSON
    for ragas's schema (after instructor's retries), or the exception type (timeouts, refused connections)."""
    attempts = getattr(exc, "failed_attempts", None) or []
    last = attempts[-1].exception if attempts else (exc.__cause__ or exc)
    status = getattr(last, "status_code", None)
    if status is not None:
        return f"judge answered HTTP {status}"
    if type(exc).__name__ == "InstructorRetryException":
        return "judge reply not valid JSON for the schema"
    return type(exc).__name__


async def score_records(records: Sequence[dict[str, Any]], docs: dict[str, Any], metrics: dict[str, Any] | None,
                        concurrency: int, on_done: Any) -> None:
    """Score each record (bounded concurrency); `on_done(rec, scores, failure)` is called as each finishes."""
    gate = asyncio.Semaphore(concurrency)

    async def one(rec: dict[str, Any]) -> None:
        async with gate:
            scores, failure = await id_scores(rec), None
            if metrics is not None:
                try:
                    scores.update(await judge_scores(rec, contexts(rec, docs), metrics))
                except DataError:
                    raise
                except Exception as exc:  # noqa: BLE001 -- a judge failure is counted and retried next run
                    failure = failure_reason(exc)
            on_done(rec, scores, failure)

    await asyncio.gather(*(one(rec) for rec in records))


def index_documents(spec: str | None) -> dict[str, Any]:
    """id -> Document of the corpus behind an index spec (None = the default HPO index)."""
    from medr1.retrieval import ensure_default_index
    from medr1.retrieval.index import corpus_documents

    if spec and str(spec).startswith(("http://", "https://")):
        raise ConfigError("--index must be a local index directory (a retrieval service does not serve documents "
                          "by id)")
    return {d.id: d for d in corpus_documents(Path(spec) if spec else ensure_default_index())}


def summarize(rows: Sequence[dict[str, Any]], failures: Counter, n_records: int) -> dict[str, Any]:
    """Mean of each metric over the records it applies to, with the count, plus failures by reason."""
    summary: dict[str, Any] = {"n_records": n_records, "failures": dict(sorted(failures.items()))}
    for key in RAGAS_KEYS:
        values = [r["scores"][key] for r in rows if r["scores"].get(key) is not None]
        summary[key] = sum(values) / len(values) if values else None
        summary[f"{key}_n"] = len(values)
    return summary


def run_ragas(cfg: RagasConfig, client: Any = None, progress: bool = True) -> dict[str, Any]:
    """Score an eval directory's samples.jsonl; writes ragas.jsonl, ragas.json and the ragas_* keys of metrics.json."""
    from tqdm import tqdm

    from medr1.report import eval_config

    cfg.validate()
    require_ragas()
    eval_dir = Path(cfg.eval_dir)
    samples_file = eval_dir / "samples.jsonl"
    if not samples_file.is_file():
        raise DataError(f"{eval_dir}: no samples.jsonl (has `medr1 eval --out {eval_dir}` finished?)")
    records = read_jsonl_tolerant(samples_file)[: cfg.limit]
    judged = cfg.judge is not None or client is not None
    cache_file = eval_dir / "ragas.jsonl"
    cached = {(r["id"], r["key"]): r for r in read_jsonl_tolerant(cache_file) if "key" in r}
    rows = [cached[(rec["id"], record_key(rec, judged))] for rec in records
            if (rec["id"], record_key(rec, judged)) in cached]
    todo = [rec for rec in records if (rec["id"], record_key(rec, judged)) not in cached]
    failures: Counter = Counter()
    docs = index_documents(cfg.index or eval_config(eval_dir).get("index")) if judged and todo else {}
    bar = tqdm(total=len(todo), desc="ragas", unit="record", disable=not (todo and progress))

    def on_done(rec: dict[str, Any], scores: dict[str, float | None], failure: str | None) -> None:
        bar.update(1)
        row = {"id": rec["id"], "key": record_key(rec, judged), "scores": scores}
        rows.append(row)  # a failed judge leaves the ID scores, which count; only a full row is cached
        if failure:
            failures[failure] += 1
        else:
            append_jsonl(cache_file, row)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ragas's ID metrics live on as its legacy classes
        metrics = judge_metrics(cfg, client) if judged and todo else None
        asyncio.run(score_records(todo, docs, metrics, cfg.concurrency, on_done))
    bar.close()
    summary = {**summarize(rows, failures, len(records)), "judge": cfg.judge, "judge_model": cfg.judge_model}
    atomic_write_json(eval_dir / "ragas.json", summary)
    metrics_file = eval_dir / "metrics.json"
    if metrics_file.is_file():
        merged = json.loads(metrics_file.read_text(encoding="utf-8"))
        merged.update({key: summary[key] for key in RAGAS_KEYS})
        atomic_write_json(metrics_file, merged)
    return summary
