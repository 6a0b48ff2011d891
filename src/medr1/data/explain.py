"""Teacher-written explanations (the EHRXQA idea): any OpenAI-compatible endpoint writes a long-form explanation for
each question whose gold answer is a letter or a few keywords; an explanation that does not support the gold is
rejected and counted; the output is an SFT explanation source.

    medr1 serve --model smollm2-135m --port 8001 &                       # or vLLM, or a hosted API
    medr1 data explain --teacher http://127.0.0.1:8001/v1 --teacher-model medr1 \\
        --data medqa:../shared/data/medqa/dev.jsonl --limit 200 --out data/medqa-explained.jsonl
    medr1 sft --config recipes/quickstart.yaml explanation_data='["jsonl:data/medqa-explained.jsonl"]'

Files: OUT (accepted questions in medr1's normalized jsonl, `explanation` filled), OUT.rejected.jsonl (id, reason,
the teacher's text), OUT.stats.json. Both jsonl files are the cache: a killed or rerun command asks the teacher only
for questions in neither. Failed calls (timeouts, 5xx after the client's retries with backoff, malformed replies)
are counted by reason and not cached, so the same command retries them. A hosted API's key comes from the
environment (`--api-key-env`, default OPENAI_API_KEY).
"""

from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1.data.schema import Question
from medr1.errors import ConfigError
from medr1.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl_tolerant

SYSTEM = ("You are a medical teacher. Explain how to reach the correct answer: the key findings, the reasoning "
          "that links them to the answer, and why the other options fit less well.")
ANSWER_LINE_RE = re.compile(r"\n?\s*(?:final\s+)?answer\s*:\s*[^\n]*\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ExplainConfig:
    teacher: str  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8001/v1
    teacher_model: str
    data: str
    out: str
    limit: int | None = None
    concurrency: int = 4
    retries: int = 3  # the openai client's retries (exponential backoff) on timeouts, 429 and 5xx
    timeout_s: float = 120.0
    max_tokens: int = 384
    temperature: float = 0.0
    sentences: int = 6
    api_key_env: str = "OPENAI_API_KEY"
    skip_bad: bool = False

    def validate(self) -> None:
        if not self.teacher.startswith(("http://", "https://")):
            raise ConfigError(f"--teacher must be an http(s) URL of an OpenAI-compatible API, got {self.teacher!r}")
        for key in ("concurrency", "max_tokens", "sentences"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError("--retries must be >= 0 and --timeout > 0")


def gold_text(q: Question) -> str:
    return f"{q.answer}. {q.options[q.answer]}" if q.options else q.answer


def teacher_messages(q: Question, sentences: int = 6) -> list[dict[str, str]]:
    """The teacher's prompt: the question, its options and the gold; it ends with an answer line we check."""
    parts = [q.question.strip()]
    if q.options:
        parts.append("Options:\n" + q.format_options())
    parts.append(f"The correct answer is {gold_text(q)}. Explain why in at most {sentences} sentences, then end "
                 f"with the line 'Answer: {q.answer}'.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def rejection(q: Question, text: str) -> str | None:
    """Why the explanation does not support the gold answer, or None when it does (a pure function).

    With options: the answer it commits to (medr1's answer extraction) must be the gold letter. Without options
    (keyword answers): every comma-separated gold keyword must appear in it."""
    from medr1.metrics import extract_answer

    if not explanation_body(text):
        return "no explanation"
    if q.options:
        said = extract_answer(text, q.options.keys(), q.options)
        if said is None:
            return "commits to no answer"
        return None if said == q.answer else "contradicts the gold"
    missing = [k for k in (w.strip() for w in q.answer.split(",")) if k and k.lower() not in text.lower()]
    return "misses a gold keyword" if missing else None


def explanation_body(text: str) -> str:
    """The explanation without its closing answer line (SFT adds its own `<answer>`)."""
    return ANSWER_LINE_RE.sub("", text.strip()).strip()


def _client(cfg: ExplainConfig) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=cfg.teacher, api_key=os.environ.get(cfg.api_key_env) or "none", timeout=cfg.timeout_s,
                  max_retries=cfg.retries)


def ask_teacher(client: Any, cfg: ExplainConfig, q: Question) -> str:
    """One chat completion; raises TeacherFailure with a short reason on any failure."""
    import openai

    try:
        reply = client.chat.completions.create(model=cfg.teacher_model, messages=teacher_messages(q, cfg.sentences),
                                               max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    except openai.APITimeoutError:
        raise TeacherFailure("timeout") from None
    except openai.APIConnectionError:
        raise TeacherFailure("connection") from None
    except openai.APIStatusError as exc:
        raise TeacherFailure(f"HTTP {exc.status_code}") from None
    except (openai.APIError, ValueError):
        raise TeacherFailure("malformed reply") from None
    choices = getattr(reply, "choices", None)
    content = choices[0].message.content if isinstance(choices, list) and choices else None
    if not isinstance(content, str):
        raise TeacherFailure("malformed reply")
    return content


class TeacherFailure(Exception):
    pass


def _recover(path: Path) -> list[dict]:
    """The records of an append-only cache file, rewritten without the torn line a killed writer may have left."""
    records = read_jsonl_tolerant(path)
    if path.exists():
        atomic_write_jsonl(path, records)
    return records


def run_explain(cfg: ExplainConfig, *, questions: list[Question] | None = None, client: Any = None,
                progress: bool = True) -> dict[str, Any]:
    """Ask the teacher for every question not already cached; returns (and writes) the counts."""
    from tqdm import tqdm

    from medr1.data.sources import load_questions

    cfg.validate()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rejected_path = out.with_name(out.name + ".rejected.jsonl")
    if questions is None:
        questions = load_questions(cfg.data, skip_bad=cfg.skip_bad, limit=cfg.limit).questions
    done = {r.get("id") for r in _recover(out) + _recover(rejected_path)}
    todo = [q for q in questions if q.id not in done]
    stats: dict[str, Any] = {"questions": len(questions), "cached": len(questions) - len(todo), "asked": len(todo),
                             "accepted": 0, "rejected": {}, "failed": {}}
    client = client if client is not None else _client(cfg)
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        futures = {pool.submit(ask_teacher, client, cfg, q): q for q in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc="explain", disable=not progress):
            q = futures[future]
            try:
                text = future.result()
            except TeacherFailure as exc:
                stats["failed"][str(exc)] = stats["failed"].get(str(exc), 0) + 1
                continue
            reason = rejection(q, text)
            if reason:
                stats["rejected"][reason] = stats["rejected"].get(reason, 0) + 1
                append_jsonl(rejected_path, {"id": q.id, "reason": reason, "text": text})
            else:
                stats["accepted"] += 1
                append_jsonl(out, dataclasses.replace(q, explanation=explanation_body(text)).to_dict())
    atomic_write_json(out.with_name(out.name + ".stats.json"), stats)
    return stats
