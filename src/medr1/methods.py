"""The method table, the variants table and the run directory layout: the vocabulary every stage shares.

A method is one entry of `METHODS`: its prompt builder (None for a non-LLM ranker), how retrieval takes part
(`none`; `prompt`: retrieved once with the question and shown in the prompt; `loop`: the model searches while it
reasons), whether it needs options, and its task: `choice` (pick one option letter; `medr1 eval`) or `open` (rank
every disease of the knowledge base; `medr1 open-eval`, `medr1.open_diagnosis`). The rollout budget maps onto turns
by `retrieval` alone (`medr1.rollout.for_method`: `loop` gets the turns, every other LLM method one turn with the
whole budget). Evaluation, training prompts and the report read this table; adding a method is
`register(Method(...))`.

A variant is one row of the report and one evaluation of the pipeline: (label, eval stage, model, method), the
model being "base" (the run's model) or the training stage whose final model it evaluates.

The run directory (`runs/<name>/`) is `STAGES` in order, each in `<run>/<stage>/` with `done.json`; an evaluation
writes `eval_dir(run_dir, stage, method, dataset_key)` = `<run>/<stage>/<method>/<dataset key>/` holding
`metrics.json`, `samples.jsonl`, `config.yaml`; training stages write `metrics.jsonl` and `final/`.

    from medr1.methods import METHODS, VARIANTS
    print([m.name for m in METHODS.values()], [v.label for v in VARIANTS])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medr1.errors import ConfigError

RETRIEVAL_KINDS = ("none", "prompt", "loop")
TASKS = ("choice", "open")


@dataclass(frozen=True)
class Method:
    name: str
    retrieval: str  # none | prompt | loop
    prompt: Callable[..., list[dict]] | None  # (question, passages) -> chat messages; None: not an LLM method
    needs_options: bool = True
    note: str = ""
    task: str = "choice"  # choice: answer with an option letter; open: rank every disease (medr1.open_diagnosis)

    @property
    def llm(self) -> bool:
        return self.prompt is not None

    @property
    def in_loop(self) -> bool:
        return self.retrieval == "loop"

    @property
    def retrieves(self) -> bool:
        return self.retrieval != "none"


def _prompts() -> Any:
    from medr1 import prompts

    return prompts


def _cot(question: Any, passages: list[str] | None = None) -> list[dict]:
    return _prompts().cot_messages(question)


def _rag(question: Any, passages: list[str] | None = None) -> list[dict]:
    return _prompts().rag_messages(question, passages)


def _self_ask(question: Any, passages: list[str] | None = None) -> list[dict]:
    return _prompts().self_ask_messages(question)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add (or replace) a method; evaluation, prompts and `run.baselines` accept its name from then on."""
    if method.retrieval not in RETRIEVAL_KINDS:
        raise ConfigError(f"method {method.name!r}: retrieval must be one of {RETRIEVAL_KINDS}, "
                          f"got {method.retrieval!r}")
    if method.task not in TASKS:
        raise ConfigError(f"method {method.name!r}: task must be one of {TASKS}, got {method.task!r}")
    METHODS[method.name] = method
    return method


for _m in (
    Method("cot", "none", _cot, note="chain of thought, no retrieval"),
    Method("rag", "prompt", _rag, note="top-k passages retrieved with the question, then one turn"),
    Method("self-ask", "loop", _self_ask, note="searches while reasoning"),
    Method("bm25-ranker", "prompt", None, note="no LLM: BM25 of each option's document against the findings"),
    Method("bm25", "prompt", None, needs_options=False, task="open",
           note="no LLM: the findings as one BM25 query; disease documents in score order"),
    Method("hpo-sim", "none", None, needs_options=False, task="open",
           note="no LLM: Phenomizer-style information-content similarity to every disease's HPO annotations"),
    Method("self-ask-open", "loop", _self_ask, needs_options=False, task="open",
           note="the model sees no options, searches while reasoning and names the diagnosis (normalized to an id)"),
    Method("rag-open", "prompt", _rag, needs_options=False, task="open",
           note="the model sees no options, top-k passages in its prompt, and names the diagnosis"),
    Method("rerank", "loop", _self_ask, needs_options=False, task="open",
           note="a ranker's top-k diseases become the options; the model picks one by self-ask, which goes first"),
):
    register(_m)


def get_method(name: str, where: str = "method", task: str = "choice") -> Method:
    """The method called `name` for `task` (choice or open), or a ConfigError listing that task's methods."""
    names = [n for n, m in METHODS.items() if m.task == task]
    if name not in names:
        other = f" ({name!r} is a{'n' if task == 'choice' else ''} {METHODS[name].task} method)" if name in METHODS else ""
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(names)}{other}")
    return METHODS[name]


def llm_methods() -> tuple[str, ...]:
    return tuple(name for name, m in METHODS.items() if m.llm and m.task == "choice")


# ---------------------------------------------------------------------------------------------------------------------
# variants and the run layout
# ---------------------------------------------------------------------------------------------------------------------

STAGES = (
    "corpus", "index", "benchmark", "baselines", "sft", "eval-sft", "grpo", "grpo-cot", "eval-grpo",
    "eval-grpo-cot", "rotation", "open", "report",
)


@dataclass(frozen=True)
class Variant:
    label: str
    stage: str  # the evaluation stage that produces it
    model: str  # "base" or the training stage whose final model is evaluated
    method: str
    note: str


# The report's rows and the pipeline's evaluations, in the order of the research plan. Baseline rows run only for
# the methods listed in `run.baselines`.
VARIANTS: tuple[Variant, ...] = (
    Variant("baseline cot", "baselines", "base", "cot", "base model, chain of thought, no retrieval"),
    Variant("baseline rag", "baselines", "base", "rag", "base model, top-k passages retrieved with the question"),
    Variant("baseline self-ask", "baselines", "base", "self-ask", "base model, searches while reasoning"),
    Variant("SFT", "eval-sft", "sft", "cot", "after SFT, no retrieval"),
    Variant("SFT+RAG", "eval-sft", "sft", "self-ask", "after SFT, self-ask retrieval"),
    Variant("GRPO", "eval-grpo-cot", "grpo-cot", "cot", "GRPO trained and evaluated without retrieval"),
    Variant("GRPO+RAG", "eval-grpo", "grpo", "self-ask", "GRPO trained and evaluated with self-ask retrieval"),
    Variant("bm25-ranker", "baselines", "base", "bm25-ranker",
            "no LLM: BM25 of each option's document against the findings"),
)
VARIANT_BY_LABEL = {v.label: v for v in VARIANTS}
# exemplar traces come from the first of these variants that ran
EXEMPLAR_ORDER = ("GRPO+RAG", "SFT+RAG", "baseline self-ask", "GRPO", "SFT", "baseline rag", "baseline cot")


def stage_variants(stage: str) -> list[Variant]:
    return [v for v in VARIANTS if v.stage == stage]


def eval_stages() -> list[str]:
    return list(dict.fromkeys(v.stage for v in VARIANTS))


def eval_dir(run_dir: str | Path, stage: str, method: str, dataset_key: str) -> Path:
    """Where an evaluation of the pipeline writes: `<run>/<stage>/<method>/<dataset key>/`."""
    return Path(run_dir) / stage / method / dataset_key


def variant_dir(run_dir: str | Path, label: str, dataset_key: str) -> Path:
    v = VARIANT_BY_LABEL[label]
    return eval_dir(run_dir, v.stage, v.method, dataset_key)
