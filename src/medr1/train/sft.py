"""Supervised fine-tuning (the research plan's step 1): medical explanations plus search-trace cold-start data.

Two kinds of examples are mixed:
- explanation examples: a question (cot prompt) -> `<think>EXPLANATION</think>\\n<answer>X</answer>` from any source
  with explanations (MedMCQA `exp`, PubMedQA long answers, HPO-Dx explanations);
- search traces, built from HPO-Dx train with REAL results of the retrieval index: the self-ask prompt ->
  `<think>plan</think>\\n<search>findings | among: option; option; ...</search>` (a candidate search,
  `medr1.retrieval.candidates`: the options' documents ranked by the findings) + the `<information>` block exactly
  as the rollout inserts it + `<think>Doc 1 (title) is an option and matches the findings.</think>\\n<answer>its
  option text</answer>` (`trace_example` states the policy); open traces search the findings alone.

Targets answer with the gold option's own text (`answer_with: text`; the harness maps it to its letter), and gold
letters are balanced over every built set (`medr1.train.common.balance_letters`). Test items are never used.

Examples are tokenized here, segment by segment as the rollout does (token-in/token-out), into `input_ids` and
`assistant_masks` (1 = a token the model should learn to write, 0 = prompt or inserted `<information>`), and handed
to `trl.SFTTrainer` pre-tokenized: TRL turns `assistant_masks` into labels (-100 elsewhere), so the loss is only on
the model's own tokens. Full fine-tuning or LoRA (`lora: true`, peft); checkpoints every `save_steps`; one
`metrics.jsonl` record per step.

    medr1 sft --config recipes/quickstart.yaml                 # section `sft:` of the recipe
    medr1 sft --config recipes/smoke.yaml --dry-run max_steps=2
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medr1 import models, tags
from medr1.config import config_dict
from medr1.data.schema import Question
from medr1.errors import ConfigError, DataError
from medr1.io import atomic_write_json
from medr1.metrics import normalize_name
from medr1.rollout import Budget
from medr1.train import common

ANSWER_WITH = ("text-letter", "text", "letter")


@dataclass(frozen=True)
class SFTConfig(common.TrainConfig):
    """The `sft:` section of a recipe (flat): the keys below, the shared ones of `TrainConfig`, and any field of
    `trl.SFTConfig` (`learning_rate`, `max_steps`, `per_device_train_batch_size`, `bf16`, `max_length`, ...). The
    budgets come from the recipe's `rollout:` section (`Budget`): traces insert `<information>` blocks of `topk`
    passages cut to `max_info_tokens` exactly as the rollout does, and the token report counts traces whose turns
    would not fit `max_new_tokens_per_turn` / `max_total_tokens`."""

    TRL_CLASS: ClassVar[str] = "SFTConfig"
    # medr1's defaults for TRL keys (where they differ from TRL's, or the code reads them); the rest are TRL's own
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 2e-5, "num_train_epochs": 1.0, "max_steps": -1, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1, "lr_scheduler_type": "linear", "logging_steps": 1, "save_steps": 50,
        "save_total_limit": 2, "bf16": False, "max_length": 1024, "packing": False, "dataset_num_proc": None,
    }

    output_dir: str = "runs/sft"
    # data mix: explanation sources (questions without an explanation are counted and left out)
    explanation_data: list[str] = field(default_factory=lambda: ["hpo-dx:train"])
    explanation_limit: int | None = None  # per source, after shuffling
    explanation_prompt: str = "cot"
    # search traces (HPO-Dx train with real retrieved results)
    trace_data: list[str] = field(default_factory=lambda: ["hpo-dx:train"])
    trace_limit: int | None = 200  # per source
    trace_explanation: bool = False  # append the explanation to a trace's reasoning (longer; explanations have
    # their own examples)
    answer_with: str = "text-letter"  # what <answer> holds in targets: "text-letter" (the option's own text, then
    # its letter: `Marfan syndrome (B)`), "text" (the text alone) or "letter"
    findings_in_query: int = 6
    # open traces: this many more trace questions (after the first trace_limit) without options, naming the
    # diagnosis in <answer> (the open task of `medr1 open-eval --method self-ask-open`); 0 = none
    open_traces: int = 0
    # train on targets longer than the rollout budget allows (counted in over_budget either way); only for plumbing
    # checks at a toy budget (recipes/smoke.yaml): a model taught them learns to write what the rollout cuts off
    keep_over_budget: bool = False

    def validate(self) -> None:
        from medr1.methods import get_method, llm_methods

        if not get_method(self.explanation_prompt, "sft.explanation_prompt").llm:
            raise ConfigError(f"sft.explanation_prompt must be one of {llm_methods()}, got {self.explanation_prompt!r}")
        if self.answer_with not in ANSWER_WITH:
            raise ConfigError(f"sft.answer_with must be one of {ANSWER_WITH}, got {self.answer_with!r}")
        if not self.explanation_data and not self.trace_data:
            raise ConfigError("sft: both explanation_data and trace_data are empty; nothing to train on")
        self.validate_budget("sft (rollout)")
        for key in ("max_length", "per_device_train_batch_size", "gradient_accumulation_steps", "save_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sft.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise ConfigError("sft: set max_steps > 0 or num_train_epochs > 0")


# ---------------------------------------------------------------------------------------------------------------------
# examples: a prompt (chat messages) and the assistant turn as segments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """Part of an assistant turn. The model's own text is trained; an information block (`passages` set) is not,
    and is tokenized by the rollout's own `InfoBuilder`, so SFT sees the exact tokens the rollout inserts."""

    text: str
    trained: bool = True
    passages: tuple[str, ...] | None = None


@dataclass
class SFTExample:
    id: str
    kind: str  # "explanation" | "trace" | "open-trace" (no options; the answer names the diagnosis)
    messages: list[dict]
    segments: list[Segment]
    gold_in_results: bool = False  # traces: the first retrieved document that is an option is the gold
    first_option_at: str = ""  # traces: where the findings search put the first option ("doc 1", "later doc", "none")
    image: str | None = None  # an image question's file: a VLM reads it in the first user turn

    @property
    def target_text(self) -> str:
        return "".join(seg.text for seg in self.segments)

    @property
    def searches(self) -> int:
        return sum(seg.passages is not None for seg in self.segments)


def answer_target(question: Question, answer_with: str = "text-letter") -> str:
    """What a target's `<answer>` holds: the gold option's own text, then its letter (`Marfan syndrome (B)`; the
    text decides, the harness binding it to its letter: a small model copies a name it has read far more reliably
    than it binds a name to a letter, and the letter keeps an answer readable when the name it copied is no
    option), the text alone (`text`) or the letter alone (`letter`)."""
    if not question.options:  # an open question: the diagnosis by name
        return f"{tags.ANSWER_OPEN}{question.answer.strip()}{tags.ANSWER_CLOSE}"
    text, letter = question.options[question.answer].strip(), question.answer
    body = {"text-letter": f"{text} ({letter})", "text": text, "letter": letter}[answer_with]
    return f"{tags.ANSWER_OPEN}{body}{tags.ANSWER_CLOSE}"


def explanation_example(question: Question, prompt_method: str = "cot", answer_with: str = "text-letter") -> SFTExample | None:
    """`<think>explanation</think>\n<answer>gold</answer>` under the `prompt_method` prompt; None without one."""
    from medr1.prompts import build_messages

    explanation = (question.explanation or "").strip()
    if not explanation:
        return None
    target = f"{tags.THINK_OPEN}{explanation}{tags.THINK_CLOSE}\n{answer_target(question, answer_with)}"
    return SFTExample(question.id, "explanation", build_messages(question, prompt_method), [Segment(target)],
                      image=question.image)


QUERY_WORDS = 48  # a trace's findings part: with four long option names its search turn fits 160 tokens
QUERY_ABSENT = 4  # absent findings a trace's query carries at most


def findings_query(question: Question, max_findings: int = 6) -> str:
    """A search query made of the findings (what the model should learn to search for): the first `max_findings`,
    then at most QUERY_ABSENT of those recorded as absent, as "no X" (BM25 reads them as X: an absent finding a
    curator recorded is mostly one of the disease's own; on the shared real patients the candidate search's Doc 1 is
    right for 48.0% with the first six findings alone and 62.7% with four absent ones too), whole findings within
    QUERY_WORDS words. A query that ends where a finding ends, after a bounded list, is one a small model learns to
    stop."""
    findings = question.findings()[:max_findings] + [f"no {x}" for x in question.absent_findings()[:QUERY_ABSENT]]
    if not findings:
        return " ".join(question.question.split()[:QUERY_WORDS])
    kept, words = [], 0
    for finding in findings:
        words += len(finding.split())
        if kept and words > QUERY_WORDS:
            break
        kept.append(" ".join(finding.split()[:QUERY_WORDS]))
    return ", ".join(kept)


def information_segment(hits: list[Any]) -> Segment:
    """The untrained `<information>` segment for retrieved hits, with the passage format the rollout uses."""
    from medr1.prompts import format_passage  # the rollout formats its passages with this same function

    passages = tuple(format_passage(hit, i) for i, hit in enumerate(hits, start=1))
    return Segment(tags.format_information(list(passages)), trained=False, passages=passages)


def trace_query(question: Question, max_findings: int = 6) -> str:
    """The search a trace teaches: with options, a candidate search comparing them on the findings
    (`medr1.retrieval.candidates`: only the options' documents come back, best first); without, the findings."""
    findings = findings_query(question, max_findings)
    if not question.options:
        return findings
    from medr1.retrieval.candidates import candidate_query

    return candidate_query(findings, [question.options[k] for k in sorted(question.options)])


def first_option_doc(hits: list[Any], question: Question) -> tuple[int, str, str] | None:
    """(1-based rank, title, option letter) of the first hit that is one of the options (the gold's document by id,
    any option by its title, compared as the candidate search and the grader compare names: `normalize_name`); None
    when no hit is an option."""
    by_text = {normalize_name(text): letter for letter, text in question.options.items()}
    for rank, hit in enumerate(hits, start=1):
        if hit.doc.id in question.gold_doc_ids:
            return rank, hit.doc.title.strip(), question.answer
        letter = by_text.get(normalize_name(hit.doc.title))
        if letter is not None:
            return rank, hit.doc.title.strip(), letter
    return None


def reading(hits: list[Any], found: tuple[int, str, str] | None, with_options: bool = True) -> str:
    """The trace's reading of one result list: each document before the first option named and set aside, then
    the option found (or just that none is an option, to stay short). Naming the titles makes the model compare
    them with the options. Without options (an open trace) the document found is the gold's."""
    if found is None:
        return "No document is an option." if with_options else "No document matches the findings."
    aside = "is not an option" if with_options else "does not fit"
    parts = [f"Doc {i} ({hits[i - 1].doc.title.strip()}) {aside}." for i in range(1, found[0])]
    parts.append(f"Doc {found[0]} ({found[1]}) {'is an option and ' if with_options else ''}matches the findings.")
    return " ".join(parts)


def trace_example(question: Question, query: str, hits: list[Any], answer_with: str = "text-letter",
                  explanation: bool = False) -> SFTExample:
    """A self-ask trace with the real `hits` of `query` (`trace_query`).

    The policy it teaches: compare the options on the findings with one candidate search and answer the first
    document that is an option (the evidence decides, even where it is wrong); if none is, the gold (rare). An open
    question searches its findings and answers the first document. The reasoning is short so the trace fits the
    shared budget."""
    from medr1.prompts import build_messages

    choice = bool(question.options)
    plan = "I will compare the options on the key findings." if choice else "I will search for the key findings."
    segments = [
        Segment(f"{tags.THINK_OPEN}{plan}{tags.THINK_CLOSE}\n{tags.SEARCH_OPEN}{query}{tags.SEARCH_CLOSE}"),
        information_segment(hits),
    ]
    found = first_option_doc(hits, question)
    seen = reading(hits, found, choice)
    chosen = question if found is None else dataclasses.replace(question, answer=found[2])
    if found is None:
        gold = question.options[question.answer].strip() if choice else question.answer.strip()
        seen += f" Of the options, {gold} fits the findings best." if choice else f" {gold} fits them best."
    reasoning = f"{seen} {(question.explanation or '').strip()}".strip() if explanation else seen
    segments.append(Segment(f"{tags.THINK_OPEN}{reasoning}{tags.THINK_CLOSE}\n{answer_target(chosen, answer_with)}"))
    gold_found = found is not None and found[2] == question.answer
    return SFTExample(question.id, "trace" if choice else "open-trace", build_messages(question, "self-ask"),
                      segments, gold_found, _rank_bucket(found))


# ---------------------------------------------------------------------------------------------------------------------
# data mix
# ---------------------------------------------------------------------------------------------------------------------


def _load(spec: str, cfg: SFTConfig, report: dict[str, Any], limit: int | None) -> list[Question]:
    """Up to `limit` training questions of one source (`common.training_questions`), letters balanced."""
    questions = common.training_questions(spec, cfg.exclude_splits, cfg.skip_bad, cfg.seed, "sft",
                                          report.setdefault(spec, {}))
    return questions if limit is None else questions[:limit]


def build_examples(cfg: SFTConfig, retriever: Any = None) -> tuple[list[SFTExample], dict[str, Any]]:
    """The mixed, shuffled example list and a report of counts per source (nothing is left out uncounted).

    Gold letters are balanced within each source's used examples (`common.balance_letters`), so no letter is
    favoured by the training data; the report's `answer_letters` shows the distribution."""
    report: dict[str, Any] = {"explanation": {}, "trace": {}}
    examples: list[SFTExample] = []
    letters: Counter[str] = Counter()
    for spec in cfg.explanation_data:
        questions = [q for q in _load(spec, cfg, report["explanation"], None) if (q.explanation or "").strip()]
        entry = report["explanation"][spec]
        entry["no_explanation"] = entry["loaded"] - entry["excluded_split"] - len(questions)
        questions = common.balance_letters(questions[: cfg.explanation_limit] if cfg.explanation_limit is not None
                                           else questions)
        made = [explanation_example(q, cfg.explanation_prompt, cfg.answer_with) for q in questions]
        entry["used"] = len(made)
        if any(q.image for q in questions):
            entry["with_image"] = sum(1 for q in questions if q.image)  # a VLM reads these in the first user turn
        letters.update(q.answer for q in questions)
        examples.extend(ex for ex in made if ex is not None)
    if cfg.trace_data:
        if retriever is None:
            from medr1.retrieval import open_retriever

            retriever = open_retriever(cfg.index)
        from medr1.open_diagnosis import open_question

        for spec in cfg.trace_data:
            pool = _load(spec, cfg, report["trace"], None)
            n = len(pool) if cfg.trace_limit is None else cfg.trace_limit
            questions = common.balance_letters(pool[:n])
            opened = [open_question(q) for q in pool[n: n + cfg.open_traces]]  # other questions than the choice ones
            made = build_traces(questions + opened, retriever, cfg)
            entry = report["trace"][spec]
            entry["first_option_at"] = dict(sorted(Counter(ex.first_option_at for ex in made).items()))
            entry["used"] = len(made)
            entry["open_traces"] = len(opened)
            entry["gold_in_results"] = sum(ex.gold_in_results for ex in made)
            letters.update(q.answer for q in questions)
            examples.extend(made)
    random.Random(cfg.seed).shuffle(examples)
    report["total"] = len(examples)
    report["kinds"] = dict(Counter(ex.kind for ex in examples))
    report["answer_letters"] = dict(sorted(letters.items()))
    return examples, report


def _rank_bucket(found: tuple[int, str, str] | None) -> str:
    return "none" if found is None else "doc 1" if found[0] == 1 else "later doc"


def search_batched(retriever: Any, queries: list[str], k: int) -> list[list[Any]]:
    """`retriever.search` in chunks no larger than the retrieval contract's batch limit."""
    from medr1.retrieval.base import MAX_BATCH

    out: list[list[Any]] = []
    for start in range(0, len(queries), MAX_BATCH):
        out.extend(retriever.search(queries[start : start + MAX_BATCH], k))
    return out


def build_traces(questions: list[Question], retriever: Any, cfg: SFTConfig) -> list[SFTExample]:
    """Search traces for `questions` with one batched retrieval call (`retriever` must answer candidate queries:
    `open_retriever` gives one that does)."""
    if not questions:
        return []
    queries = [trace_query(q, cfg.findings_in_query) for q in questions]
    print(f"medr1: retrieving for {len(queries)} search traces...", file=sys.stderr, flush=True)
    results = search_batched(retriever, queries, cfg.topk)
    return [trace_example(q, query, hits, cfg.answer_with, cfg.trace_explanation)
            for q, query, hits in zip(questions, queries, results)]


# ---------------------------------------------------------------------------------------------------------------------
# tokenization with masks
# ---------------------------------------------------------------------------------------------------------------------


def segment_ids(tokenizer: Any, segment: Segment, info: Any) -> list[int]:
    """Token ids of one segment: information blocks through the rollout's InfoBuilder, text tokenized alone."""
    if segment.passages is not None:
        return info.build(list(segment.passages))
    return list(tokenizer(segment.text, add_special_tokens=False)["input_ids"])


def tokenize_example(
    loaded: Any, example: SFTExample, max_length: int, max_info_tokens: int = 384
) -> dict[str, list[int]] | None:
    """`input_ids` + `assistant_masks` (prompt and <information> 0, the model's own text and end of turn 1), and for
    an image example its processor tensors as lists (`pixel_values`, ...; `ImageCollator` batches them).

    Each segment is tokenized on its own, as the rollout appends tokens (information blocks cut to
    `max_info_tokens` exactly as the rollout cuts them); a think prefill already in the prompt (R1-Distill) is
    removed from the target. Truncated to `max_length`; None when nothing trainable survives.
    """
    from medr1.models import chat_prompt
    from medr1.rollout import InfoBuilder

    prompt_ids, image = chat_prompt(loaded, example.messages, example.image)
    segments = list(example.segments)
    if loaded.spec.think_prefill and segments and segments[0].text.startswith(tags.THINK_OPEN):
        first = segments[0]
        segments[0] = Segment(first.text[len(tags.THINK_OPEN) :].lstrip("\n"), first.trained, first.passages)
    info = InfoBuilder(loaded.tokenizer, max_info_tokens)
    input_ids = list(prompt_ids)
    mask = [0] * len(prompt_ids)
    for segment in segments:
        ids = segment_ids(loaded.tokenizer, segment, info)
        input_ids.extend(ids)
        mask.extend([int(segment.trained)] * len(ids))
    input_ids.append(models.end_of_turn_id(loaded))
    mask.append(1)
    if image is not None and len(prompt_ids) >= max_length:
        return None  # a cut through the image placeholders would leave features without their tokens
    input_ids, mask = input_ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    row: dict[str, Any] = {"input_ids": input_ids, "assistant_masks": mask}
    if image is not None:
        row.update({name: t.tolist() for name, t in image.tensors.items()})
    return row


def turn_lengths(mask: list[int]) -> tuple[list[int], int]:
    """(trained tokens per assistant turn, completion tokens) of one row: turns are the runs of mask 1 after the
    prompt, separated by inserted information (mask 0); the completion is everything after the prompt."""
    start = mask.index(1) if 1 in mask else len(mask)
    runs: list[int] = []
    previous = 0
    for m in mask[start:]:
        if m and not previous:
            runs.append(0)
        if m:
            runs[-1] += 1
        previous = m
    return runs, len(mask) - start


def fits(mask: list[int], budget: Budget) -> bool:
    """Whether a row's target could be generated under `budget` (turn count, tokens per turn, total tokens)."""
    runs, total = turn_lengths(mask)
    if len(runs) == 1:  # a method without retrieval: one turn with the whole generation budget
        return runs[0] <= budget.single_turn_tokens()
    return (len(runs) <= budget.max_turns and max(runs) <= budget.max_new_tokens_per_turn
            and total <= budget.max_total_tokens)


def tokenize_examples(
    loaded: Any, examples: list[SFTExample], max_length: int, budget: Budget = Budget(), keep_over_budget: bool = False
) -> tuple[list[dict], dict[str, Any]]:
    """Tokenized rows and length statistics. Left out, and counted: examples with no trainable token left
    (`dropped_prompt_too_long`) and targets that would not fit the shared rollout `budget` (`over_budget`: the model
    would be taught to write what the rollout cuts off, e.g. a search longer than its turn), unless
    `keep_over_budget` (then only counted)."""
    rows, lengths, dropped, over = [], [], 0, 0
    for ex in examples:
        row = tokenize_example(loaded, ex, max_length, budget.max_info_tokens)
        if row is None:
            dropped += 1
            continue
        if not fits(row["assistant_masks"], budget):
            over += 1
            if not keep_over_budget:
                continue
        rows.append(row)
        lengths.append(len(row["input_ids"]))
    truncated = sum(1 for n in lengths if n >= max_length)
    stats = {
        "rows": len(rows),
        "dropped_prompt_too_long": dropped,
        "truncated": truncated,
        "over_budget": over,
        "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
        "tokens_max": max(lengths, default=0),
        "trained_tokens": sum(sum(r["assistant_masks"]) for r in rows),
    }
    return rows, stats


# ---------------------------------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------------------------------


def trl_args(cfg: SFTConfig) -> Any:
    """The trl.SFTConfig for our flat config (the dataset arrives pre-tokenized with assistant masks)."""
    return cfg.trl_class()(**cfg.trl_kwargs())


def load_tokenizer_only(name: str) -> tuple[Any | None, str]:
    """(a LoadedModel with model=None for tokenizing, note) without loading weights; (None, why) when unavailable."""
    if name == models.TINY_MODEL:
        return models.LoadedModel(None, models.tiny_tokenizer(), models.SMOLLM2), "in-process tiny tokenizer"
    if name == models.TINY_VLM:
        return models.wrap_loaded(None, models.tiny_random_vlm()[1], models.SMOLLM2), "in-process tiny processor"
    try:
        source, spec, _ = models.resolve_source(name)
        from transformers import AutoProcessor, AutoTokenizer

        tokenizer = (AutoProcessor if models.is_vision_model(source) else AutoTokenizer).from_pretrained(source)
    except Exception as exc:  # offline hub ids raise OSError/ValueError/HF errors; the dry run reports, not fails
        return None, f"tokenizer not available here ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    loaded = models.wrap_loaded(None, tokenizer, spec)
    loaded.source = source
    return loaded, f"{'processor' if loaded.processor is not None else 'tokenizer'} from {source}"


def show_example(example: SFTExample) -> str:
    """The target with masked spans marked, for the dry-run plan."""
    return "".join(s.text if s.trained else f"[masked:{s.text.strip()[:120]}...]" for s in example.segments)


def run_sft(cfg: SFTConfig, dry_run: bool = False, resume: bool = False, retriever: Any = None) -> dict[str, Any]:
    """Build the data mix and train (or, with `dry_run`, build everything but the model and return the plan)."""
    started = time.perf_counter()
    examples, data_report = build_examples(cfg, retriever)
    if not examples:
        raise DataError("sft: the data mix is empty (see the per-source counts: no explanations? all excluded?)")
    plan: dict[str, Any] = {"stage": "sft", "config": config_dict(cfg), "data": data_report}
    if dry_run:
        loaded, note = load_tokenizer_only(cfg.model)
        plan["tokenizer"] = note
        if loaded is not None:
            rows, plan["tokens"] = tokenize_examples(loaded, examples, cfg.max_length, cfg.budget,
                                                     cfg.keep_over_budget)
            plan["tokens"]["rows_sha256"] = common.rows_digest(rows)
        plan["example"] = {"prompt": examples[0].messages[-1]["content"][:400], "target": show_example(examples[0])}
        return common.finish_dry_run(plan, trl_args, cfg, "sft", started)

    checkpoint, loaded = common.start_run(cfg, trl_args, "sft", resume)
    out = Path(cfg.output_dir)
    rows, plan["tokens"] = tokenize_examples(loaded, examples, cfg.max_length, cfg.budget, cfg.keep_over_budget)
    plan["tokens"]["rows_sha256"] = common.rows_digest(rows)
    atomic_write_json(out / "data_report.json", {"data": data_report, "tokens": plan["tokens"]})
    if not rows:
        raise DataError(f"sft: no example fits max_length {cfg.max_length} and the rollout budget "
                        f"({plan['tokens']}); see {out / 'data_report.json'}")
    trainer = build_trainer(cfg, loaded, rows)
    common.check_ranks_agree(plan["tokens"]["rows_sha256"], "SFT training rows")
    return common.train_and_save(trainer, loaded, cfg, checkpoint, plan, started)


@dataclass
class ImageCollator:
    """TRL's padding collator for the token columns, plus the image tensors of rows that have them, concatenated in
    row order (the order the model fills image placeholders), tiles padded by `medr1.generation.cat_image_tensors`."""

    base: Any
    image_keys: tuple[str, ...]

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        import torch

        from medr1.generation import cat_image_tensors

        batch = self.base([{k: v for k, v in r.items() if k not in self.image_keys} for r in rows])
        for key in self.image_keys:
            parts = [torch.tensor(r[key]) for r in rows if r.get(key) is not None]
            if parts:
                batch[key] = cat_image_tensors(parts)
        return batch


def build_trainer(cfg: SFTConfig, loaded: Any, rows: list[dict]) -> Any:
    from datasets import Dataset
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    args = trl_args(cfg)
    image_keys = tuple(sorted({k for r in rows for k in r} - {"input_ids", "assistant_masks"}))
    collator = None
    if image_keys:  # a VLM's image rows: TRL's text collator would drop the pixels, and so would unused columns
        args.remove_unused_columns = False
        base = DataCollatorForLanguageModeling(pad_token_id=loaded.tokenizer.pad_token_id)
        collator = ImageCollator(base, image_keys)
        rows = [{**r, **{k: r.get(k) for k in image_keys}} for r in rows]  # text rows too: one dataset schema
    dataset = Dataset.from_list(rows)
    return SFTTrainer(
        model=loaded.model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=loaded.processor or loaded.tokenizer,
        peft_config=common.peft_config(cfg),
        callbacks=[
            common.metrics_callback(Path(cfg.output_dir) / "metrics.jsonl", {"token_accuracy": "mean_token_accuracy"}),
            common.spec_marker_callback(loaded.spec.name),
        ],
    )


