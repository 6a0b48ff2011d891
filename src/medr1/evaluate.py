"""Evaluation harness: run one method over a question set and write `samples.jsonl`, `metrics.json`, `config.yaml`.

    medr1 eval --model smollm2-135m --data hpo-dx:test --method self-ask --out runs/eval/self-ask --limit 50

or from Python: `run_eval(EvalConfig(model=..., data=..., method=..., out=...))` returns the metrics dict.

Methods:
- `cot`: the chat prompt of `medr1.prompts` (think, then answer), one generation turn, no retrieval.
- `rag`: MedRAG-style: the question text is searched first (top-`topk`), the passages go into the prompt, then one
  generation turn.
- `self-ask`: the retrieval loop of `medr1.rollout` (search while thinking, up to `max_turns`).
- `bm25-ranker` (no LLM): `medr1.retrieval.ranker.OptionRanker` scores each option's document against the
  findings.

Outputs (in `out`): one `samples.jsonl` record per question with the whole trace (id, question, options, gold,
prediction, parsed, correct, completion, queries, retrieved_ids/titles per search, finish_reason, tool_errors,
n_generated, turns, seconds = the chunk's wall time / its size, explanation, gold_doc_ids; the ranker adds
`ranker`), appended after each chunk of 4 x `batch_size` questions; `metrics.json` (`medr1.metrics.aggregate`
plus the run's identity), written atomically at the end; `config.yaml`, the resolved config. `rescore(out)`
re-extracts the answers of a finished run after the extraction rules change, without generating again.

On a CPU shared with other processes set `num_threads=1` (or OMP_NUM_THREADS=1): with two threads on two busy
cores, OpenMP barriers made SmolLM2 decoding about 10x slower in our measurements.

Resuming: a re-run with the same config (any `limit`) continues after the last complete sample; a different
config in the same `out` is refused (use a new `out` or `force=True` / `--force`, which starts over). Sampling is
seeded per question from `seed` and the question's position in the run (and per turn), so every run is
reproducible and a resumed run draws the same samples as an uninterrupted one (up to float rounding across batch
compositions), with greedy decoding (the default) or with sampling.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1.config import build_config, config_dict, read_yaml, save_config
from medr1.data.schema import Question
from medr1.errors import ConfigError, DataError
from medr1.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_jsonl_tolerant, stable_hash
from medr1.methods import get_method
from medr1.metrics import PERCENT_KEYS, RAG_KEYS, aggregate, extract_answer, extract_answer_text
from medr1.prompts import build_messages, format_passages
from medr1.retrieval.base import MAX_QUERY_CHARS, Hit, Retriever
from medr1.retrieval.ranker import OptionRanker, ranker_completion
from medr1.rollout import Budget, for_method

# Keys that may change between a run and its continuation: throughput knobs (greedy completions were identical at
# batch 8 and 20, and with 1 and 2 threads, on 20 HPO-Dx self-ask questions with SmolLM2) and the question count.
RESUME_EXEMPT = ("limit", "out", "num_threads", "batch_size")


@dataclass(frozen=True)
class EvalConfig(Budget):
    """One evaluation run. The budgets (`medr1.rollout.Budget`: the recipe's `rollout:` section) apply to LLM methods
    through `medr1.rollout.for_method`; `index` None means the default HPO BM25 index."""

    model: str = "smollm2-135m"
    data: str = "hpo-dx:test"
    method: str = "self-ask"
    out: str = ""
    limit: int | None = None
    index: str | None = None
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "hf"  # generation backend: hf (transformers, CPU/GPU) or vllm (GPU, optional extra)
    # CPU threads for torch in this run (0 = torch's default). On a shared CPU, 1 avoids OpenMP threads spinning at
    # barriers while another process holds the core: measured 13x faster SmolLM2 decoding at load ~7 on 2 cores.
    num_threads: int = 0
    # Position-bias check: shift every question's options cyclically by this many letters (the gold moves with its
    # text) before evaluating; `medr1 compare` of a rotated and an unrotated run reports how often the answer
    # follows the content rather than the letter.
    rotate: int = 0

    def validate(self) -> None:
        get_method(self.method, "config key 'method'")
        if not self.out:
            raise ConfigError("config key 'out' is required: the directory for samples.jsonl and metrics.json")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"config key 'limit': must be at least 1 (or none), got {self.limit}")
        self.validate_budget("config key rollout")
        if self.batch_size < 1:
            raise ConfigError(f"config key 'batch_size': must be at least 1, got {self.batch_size}")
        if self.num_threads < 0:
            raise ConfigError(f"config key 'num_threads': must be >= 0 (0 = torch default), got {self.num_threads}")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f"config key 'backend': {self.backend!r} is not hf or vllm")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("config keys 'temperature' >= 0 and 0 < 'top_p' <= 1 are required")


def load_eval_config(path: str | Path | None = None, values: dict[str, Any] | None = None,
                     overrides: list[str] | None = None) -> EvalConfig:
    """File (a recipe's `rollout:` and `eval:` sections, or a flat config) < `values` (command-line flags) <
    `key=value` overrides."""
    from medr1.config import file_values, parse_overrides

    merged, where = file_values(EvalConfig, path, "eval") if path is not None else ({}, "eval config")
    merged.update({k: v for k, v in (values or {}).items() if v is not None})
    merged.update(parse_overrides(overrides))
    return build_config(EvalConfig, merged, where)


# ---------------------------------------------------------------------------------------------------------------------
# resume bookkeeping
# ---------------------------------------------------------------------------------------------------------------------


def resume_key(cfg: EvalConfig) -> dict[str, Any]:
    return {k: v for k, v in config_dict(cfg).items() if k not in RESUME_EXEMPT}


def resume_hash(cfg: EvalConfig) -> str:
    return f"{stable_hash(repr(sorted(resume_key(cfg).items()))):016x}"


def _check_previous(out: Path, cfg: EvalConfig, force: bool) -> None:
    """Refuse to mix samples of a different config into `out`; with `force`, clear the old outputs."""
    previous = out / "config.yaml"
    if force:
        for name in ("samples.jsonl", "metrics.json", "config.yaml"):
            (out / name).unlink(missing_ok=True)
        return
    if not previous.is_file():
        if (out / "samples.jsonl").is_file():
            raise ConfigError(f"{out}/samples.jsonl exists without config.yaml; use --force to start over or a new --out")
        return
    try:
        old = build_config(EvalConfig, read_yaml(previous), str(previous))
    except ConfigError as exc:
        raise ConfigError(f"{previous} cannot be read ({exc}); use --force to start over or a new --out") from None
    old_key, new_key = resume_key(old), resume_key(cfg)
    if old_key != new_key:
        diff = ", ".join(f"{k}: {old_key.get(k)!r} -> {new_key.get(k)!r}" for k in new_key if old_key.get(k) != new_key.get(k))
        raise ConfigError(
            f"{out} holds an evaluation with a different config ({diff}); use --force to start over or a new --out"
        )


def _load_done(samples_path: Path, questions: Sequence[Question]) -> list[dict]:
    """Complete samples already written, checked against the question order; a torn last line is dropped."""
    done = read_jsonl_tolerant(samples_path)
    if samples_path.is_file():
        lines = [ln for ln in samples_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) != len(done):  # a killed writer left a partial line: rewrite without it before appending
            atomic_write_jsonl(samples_path, done)
    for i, rec in enumerate(done[: len(questions)]):
        if rec.get("id") != questions[i].id:
            raise DataError(
                f"{samples_path}:{i + 1}: sample id {rec.get('id')!r} does not match question {i + 1} "
                f"({questions[i].id!r}) of the data; the data changed since the run began: use --force or a new --out"
            )
    return done


# ---------------------------------------------------------------------------------------------------------------------
# per-method work
# ---------------------------------------------------------------------------------------------------------------------


def rotate_options(question: Question, shift: int) -> Question:
    """The question with its option texts moved `shift` letters on (cyclically); the gold follows its text."""
    letters = sorted(question.options)
    n = len(letters)
    moved = {letters[(i + shift) % n]: question.options[k] for i, k in enumerate(letters)}
    gold = letters[(letters.index(question.answer) + shift) % n]
    return dataclasses.replace(question, options=moved, answer=gold)


def _field(obj: Any, name: str, default: Any) -> Any:
    value = getattr(obj, name, default)
    return default if value is None else value


def _predict(question: Question, completion: str) -> str | None:
    if question.options:
        return extract_answer(completion, question.options.keys(), question.options)
    return extract_answer_text(completion)


def _record(question: Question, method: str, completion: str, prediction: str | None, **trace: Any) -> dict:
    rec = {
        "id": question.id,
        "method": method,
        "question": question.question,
        "options": question.options,
        "gold": question.answer,
        "prediction": prediction,
        "parsed": prediction is not None,
        "correct": prediction is not None and prediction == question.answer,
        "completion": completion,
        "queries": [],
        "retrieved_ids": [],
        "retrieved_titles": [],
        "finish_reason": None,
        "tool_errors": 0,
        "n_generated": 0,
        "turns": 0,
        "seconds": 0.0,
        "explanation": question.explanation,
        "gold_doc_ids": list(question.gold_doc_ids),
        "subset": question.subset,
    }
    if question.image is not None:  # an image question: the file the model saw
        rec["image"] = question.image
    rec.update(trace)
    return rec


def _rag_passages(questions: Sequence[Question], retriever: Retriever, topk: int) -> tuple[list[list[Hit]], str | None]:
    """Top-k hits per question text (one batched call); a failure becomes empty passages plus an error message."""
    queries = [q.question[:MAX_QUERY_CHARS] for q in questions]
    try:
        return retriever.search(queries, k=topk), None
    except Exception as exc:  # noqa: BLE001 -- any backend failure (HTTP, index) is an observation, not a crash
        return [[] for _ in questions], f"{type(exc).__name__}: {exc}"


def rollout_config(cfg: EvalConfig, seed: int, single_turn: bool) -> Any:
    """The method's rollout under the shared budget (`medr1.rollout.for_method` applies the comparability rule)."""
    return for_method(cfg, not single_turn, temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                      seed=seed)


class Generator:
    """How an LLM method turns chat messages into trajectories: the model's chat template, the generation backend
    and `medr1.rollout.run_rollouts`. `run_eval(generator=...)` takes another (tests pass a scripted one)."""

    def prompt_ids(self, loaded: Any, messages: list[dict]) -> list[int]:
        from medr1.models import chat_prompt_ids

        return chat_prompt_ids(loaded, messages)

    def prompt(self, loaded: Any, messages: list[dict], image: str | None = None) -> tuple[list[int], Any]:
        """(ids, ImageInput or None): a question's image goes to a VLM's processor (`medr1.models.chat_prompt`)."""
        if image is None:
            return self.prompt_ids(loaded, messages), None
        from medr1.models import chat_prompt

        return chat_prompt(loaded, messages, image)

    def backend(self, loaded: Any, kind: str) -> Any:
        from medr1.rollout import make_backend

        return make_backend(loaded, kind)

    def rollouts(self, loaded: Any, prompts: list[list[int]], retriever: Retriever | None, rcfg: Any,
                 backend: Any = None, seed_offset: int = 0, images: list[Any] | None = None,
                 bar: Any = None) -> list[Any]:
        from medr1.rollout import run_rollouts

        return run_rollouts(loaded, prompts, retriever, rcfg, backend=backend, seed_offset=seed_offset, images=images,
                            bar=bar)


def llm_batch(questions: Sequence[Question], cfg: EvalConfig, loaded: Any, retriever: Retriever | None,
              seed: int, backend: Any = None, first: int = 0, generator: Generator | None = None,
              bar: Any = None) -> list[dict]:
    """One batch of an LLM method: prompts, (rag: retrieval first), rollouts, per-question records.

    `first` is the position of the batch's first question in the whole run: sampling seeds follow positions, so a
    resumed run draws what an uninterrupted one would. `bar` (tqdm) advances as each question's rollout ends."""
    start = time.perf_counter()
    method = get_method(cfg.method)
    gen = generator or Generator()
    hits: list[list[Hit]] = [[] for _ in questions]
    rag_error = None
    if method.retrieval == "prompt":
        assert retriever is not None
        hits, rag_error = _rag_passages(questions, retriever, cfg.topk)
    into_prompt = method.retrieval == "prompt"
    built = [gen.prompt(loaded, build_messages(q, cfg.method, format_passages(h) if into_prompt else None), q.image)
             for q, h in zip(questions, hits)]
    prompts, images = [ids for ids, _ in built], [img for _, img in built]
    in_loop = retriever if method.in_loop else None
    with_images = {"images": images} if any(img is not None for img in images) else {}  # a VLM's image questions
    trajectories = gen.rollouts(loaded, prompts, in_loop, rollout_config(cfg, seed, single_turn=in_loop is None),
                                backend, seed_offset=first, bar=bar, **with_images)
    per_question = (time.perf_counter() - start) / max(1, len(questions))
    records = []
    for q, h, traj in zip(questions, hits, trajectories):
        text = _field(traj, "text", "")
        trace: dict[str, Any] = {
            "queries": list(_field(traj, "queries", [])),
            "retrieved_ids": [list(t) for t in _field(traj, "retrieved_doc_ids", [])],
            "retrieved_titles": [list(t) for t in _field(traj, "retrieved_titles", [])],
            "finish_reason": _field(traj, "finish_reason", None),
            "tool_errors": _field(traj, "tool_errors", 0),
            "n_generated": int(_field(traj, "n_generated", 0)),
            "turns": int(_field(traj, "turns", 0)),
            "seconds": per_question,
        }
        if method.retrieval == "prompt":
            trace["queries"] = [q.question[:MAX_QUERY_CHARS]]
            trace["retrieved_ids"] = [[hit.doc.id for hit in h]]
            trace["retrieved_titles"] = [[hit.doc.title for hit in h]]
            if rag_error:
                trace["tool_errors"] = [rag_error]
        records.append(_record(q, cfg.method, text, _predict(q, text), **trace))
    return records


# ---------------------------------------------------------------------------------------------------------------------
# bm25-ranker
# ---------------------------------------------------------------------------------------------------------------------


def ranker_batch(questions: Sequence[Question], ranker: OptionRanker) -> list[dict]:
    records = []
    for q in questions:
        start = time.perf_counter()
        try:
            ranking, errors = ranker.rank(q), 0
        except Exception as exc:  # noqa: BLE001 -- a retrieval failure is recorded, the run goes on
            ranking, errors = {"prediction": None, "options": {}}, [f"{type(exc).__name__}: {exc}"]
        ids = [v["doc_id"] for v in ranking["options"].values() if v["doc_id"]]
        titles = [v["title"] for v in ranking["options"].values() if v["doc_id"]]
        records.append(_record(
            q, "bm25-ranker", ranker_completion(ranking), ranking["prediction"],
            queries=[q.question[:MAX_QUERY_CHARS]], retrieved_ids=[ids], retrieved_titles=[titles],
            finish_reason="ranked" if not errors else "error", tool_errors=errors, ranker=ranking["options"],
            seconds=time.perf_counter() - start,
        ))
    return records


# ---------------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------------


def _load_questions(cfg: EvalConfig) -> list[Question]:
    from medr1.data.sources import load_questions

    return load_questions(cfg.data, skip_bad=False, limit=cfg.limit).questions


def _open_retriever(spec: str | None) -> Retriever:
    from medr1.retrieval import open_retriever

    return open_retriever(spec)


def _load_model(cfg: EvalConfig) -> Any:
    from medr1.models import load_model

    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)


def run_eval(cfg: EvalConfig, *, force: bool = False, questions: Sequence[Question] | None = None,
             loaded: Any = None, retriever: Retriever | None = None, progress: bool = True,
             generator: Generator | None = None) -> dict[str, Any]:
    """Evaluate `cfg.method` on `cfg.data`, resuming a previous run in `cfg.out`; returns the metrics.

    `questions`, `loaded` and `retriever` may be passed in (a pipeline that already holds them, tests); otherwise
    they are loaded from `cfg.data`, `cfg.model` and `cfg.index`; `generator` replaces the model's generation
    (`Generator`), e.g. by a scripted one.
    """
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_previous(out, cfg, force)
    save_config(cfg, out / "config.yaml")
    questions = list(questions) if questions is not None else _load_questions(cfg)
    questions = [rotate_options(q, cfg.rotate) for q in questions] if cfg.rotate else questions
    if cfg.limit is not None:
        questions = questions[: cfg.limit]
    if not questions:
        raise DataError(f"{cfg.data}: no questions to evaluate")
    samples_path = out / "samples.jsonl"
    done = _load_done(samples_path, questions)[: len(questions)]
    todo = questions[len(done):]
    wall = time.perf_counter()
    if todo:
        method = get_method(cfg.method)
        if retriever is None and method.retrieves:
            retriever = _open_retriever(cfg.index)
        if cfg.num_threads and method.llm:
            import torch

            torch.set_num_threads(cfg.num_threads)  # an explicit request of this run's config (see EvalConfig)
        if loaded is None and method.llm:
            loaded = _load_model(cfg)
        ranker = OptionRanker(retriever) if not method.llm else None
        gen = generator or Generator()
        backend = gen.backend(loaded, cfg.backend) if ranker is None else None
        # The rollout refills its batch as trajectories finish, so it gets several batches' worth of prompts at once;
        # a chunk is also the unit written to samples.jsonl (and so of resuming).
        chunk = cfg.batch_size if ranker is not None else 4 * cfg.batch_size
        bar = tqdm(total=len(questions), initial=len(done), desc=f"eval {cfg.method}", unit="q", file=sys.stderr,
                   disable=not progress)
        already = len(done)
        for offset in range(0, len(todo), chunk):
            batch = todo[offset: offset + chunk]
            first, shown = already + offset, bar.n
            if ranker is not None:
                records = ranker_batch(batch, ranker)
            else:
                records = llm_batch(batch, cfg, loaded, retriever, seed=cfg.seed, backend=backend, first=first,
                                    generator=gen, bar=bar)  # the bar moves per finished rollout, not per chunk
            for rec in records:
                append_jsonl(samples_path, rec)
            done.extend(records)
            bar.update(len(batch) - (bar.n - shown))  # what the rollouts did not count themselves
            bar.set_postfix(acc=f"{sum(r['correct'] for r in done) / len(done):.3f}")
        bar.close()
    return _write_metrics(cfg, done, resumed_from=len(questions) - len(todo), wall=time.perf_counter() - wall)


def _write_metrics(cfg: EvalConfig, samples: list[dict], resumed_from: int, wall: float) -> dict[str, Any]:
    method = get_method(cfg.method)
    metrics = aggregate(samples, uses_retrieval=method.retrieves, text_metrics=method.llm)
    metrics.update({
        "method": cfg.method,
        "model": cfg.model if method.llm else None,
        "data": cfg.data,
        "index": cfg.index,
        "resumed_from": resumed_from,
        "wall_seconds_this_run": wall,
        "config_hash": resume_hash(cfg),
    })
    atomic_write_json(Path(cfg.out) / "metrics.json", metrics)
    return metrics


def rescore(out: str | Path) -> dict[str, Any]:
    """Re-extract every LLM answer in `out`/samples.jsonl with the current rules and rewrite samples + metrics.

    For when answer extraction changed after a long run: no generation is repeated.
    """
    out = Path(out)
    cfg = build_config(EvalConfig, read_yaml(out / "config.yaml"), str(out / "config.yaml"))
    samples = read_jsonl_tolerant(out / "samples.jsonl")
    if not samples:
        raise DataError(f"{out}/samples.jsonl: no samples to rescore")
    if get_method(cfg.method).llm:
        for rec in samples:
            q = Question(id=rec["id"], question=rec["question"], options=rec.get("options") or {},
                         answer=rec.get("gold") or "")
            rec["prediction"] = _predict(q, rec.get("completion") or "")
            rec["parsed"] = rec["prediction"] is not None
            rec["correct"] = rec["parsed"] and rec["prediction"] == rec.get("gold")
        atomic_write_jsonl(out / "samples.jsonl", samples)
    return _write_metrics(cfg, samples, resumed_from=len(samples), wall=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# ask: one case, one readable trace
# ---------------------------------------------------------------------------------------------------------------------


def parse_options(text: str | None) -> dict[str, str]:
    """`"A=Marfan syndrome;B=Homocystinuria"` -> {"A": ..., "B": ...}; empty -> {} (free-text answer)."""
    if not text or not text.strip():
        return {}
    options: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        letter, sep, value = part.partition("=")
        letter = letter.strip().upper()
        if not sep or len(letter) != 1 or not letter.isalpha() or not value.strip():
            raise ConfigError(f"--options: {part!r} must look like LETTER=text (e.g. \"A=Marfan syndrome;B=...\")")
        if letter in options:
            raise ConfigError(f"--options: letter {letter} given twice")
        options[letter] = value.strip()
    if len(options) == 1:
        raise ConfigError("--options: give at least two options, or none for a free-text diagnosis")
    return options


def ask_case(case: str, options: dict[str, str] | None, cfg: EvalConfig, *, loaded: Any = None,
             retriever: Retriever | None = None, generator: Generator | None = None, image: str | None = None) -> dict:
    """One self-ask diagnosis of a free-text case (and an `image` file for a VLM); returns a samples.jsonl-style
    record (gold unknown)."""
    if not case.strip():
        raise ConfigError("the case text is empty")
    if image is not None and not Path(image).is_file():
        raise ConfigError(f"--image {image}: no such file")
    question = Question(id="ask", question=case.strip(), options=dict(options or {}), answer="", source="ask",
                        image=image)
    retriever = retriever if retriever is not None else _open_retriever(cfg.index)
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    loaded = loaded if loaded is not None else _load_model(cfg)
    rec = llm_batch([question], dataclasses.replace(cfg, method="self-ask"), loaded, retriever, seed=cfg.seed,
                    generator=generator)[0]
    rec.update(gold=None, correct=None)
    return rec


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """The metrics as an aligned two-column table (fractions as percentages)."""
    def fmt(key: str, value: Any) -> str:
        if value is None:
            return "n/a"
        if key in PERCENT_KEYS:
            return f"{100 * value:.1f}%"
        if key == "rouge_l":
            return f"{value:.3f}"
        if isinstance(value, float):
            return f"{value:.2f}" if key == "bleu" else f"{value:.4g}"
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        return str(value)

    rows: list[tuple[str, str]] = [("method", fmt("method", metrics.get("method"))), ("data", str(metrics.get("data")))]
    acc = metrics.get("accuracy")
    interval = (f"{fmt('accuracy', acc)}  [95% CI {100 * metrics['ci_low']:.1f}-{100 * metrics['ci_high']:.1f}%]"
                if acc is not None else "n/a")
    rows.append(("accuracy", interval))
    for key in ("n", "chance_accuracy", "predictions", "unparseable_rate", "gold_hit_rate", *RAG_KEYS,
                "searches_per_question", "generated_tokens_mean", "seconds_per_question", "bleu", "rouge_l",
                "n_with_explanation", "tool_errors", "finish_reasons"):
        rows.append((key, fmt(key, metrics.get(key))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
