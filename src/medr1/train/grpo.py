"""GRPO with retrieval inside the rollout (the research plan's step 3), on `trl.GRPOTrainer`.

TRL owns the loop (advantages, clipping, KL, optimizer, checkpoints, resume); medr1 supplies:
- the prompts (`medr1.prompts.build_messages`: `self-ask` with retrieval, `cot` when `use_retrieval: false` — the
  no-retrieval arm of hypothesis H2) and the gold letters as dataset columns;
- `rollout_func`, which runs `medr1.rollout.run_rollouts` with the model under training (and the retriever in the
  loop) and returns `prompt_ids`, `completion_ids`, `logprobs` and `env_mask` (1 = sampled by the model, 0 =
  inserted `<information>`): TRL multiplies its loss mask by `env_mask`, so inserted text never receives gradient.
  It also returns `model_text`, `queries` and `retrieved_ids`, which TRL forwards to the reward functions. `model_text` is the
  model's own tokens only, so a forced answer (`rollout.answer_tokens`: the environment wrote its `<answer>`) is
  scored as no answer — training pays for answers that fit the budget, while evaluation reads the forced one;
- the rewards (`medr1.train.rewards`), weighted by `reward_weights`;
- `metrics.jsonl`: one record per step with reward mean/std, accuracy, completion length, searches per rollout, KL,
  seconds per step and peak memory (TensorBoard too, when installed).

A killed run continues from its last checkpoint with `--resume` (global step, optimizer, scheduler, RNG and data
position come back; metrics.jsonl is cut back to the checkpoint's step).

    medr1 grpo --config recipes/quickstart.yaml               # section `grpo:` of the recipe
    medr1 grpo --config recipes/quickstart.yaml --resume
    medr1 grpo --config recipes/smoke.yaml use_retrieval=false output_dir=runs/smoke/grpo-cot
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medr1 import models
from medr1.config import config_dict
from medr1.data.schema import Question
from medr1.errors import ConfigError, DataError
from medr1.train import common
from medr1.train.rewards import REWARD_NAMES, build_reward_funcs

# Our stable metric names for TRL's log keys (TRL names reward columns after the reward functions).
METRIC_ALIASES = {
    "reward_mean": "reward",
    "reward_std": "reward_std",
    "accuracy": "rewards/correctness_reward/mean",
    "named_accuracy": "rewards/named_correctness_reward/mean",
    "format": "rewards/format_reward/mean",
    "research_bonus": "rewards/research_bonus/mean",
    "open_accuracy": "rewards/open_correctness_reward/mean",
    "completion_length": "completions/mean_length",
    "kl": "kl",
}


@dataclass(frozen=True)
class GRPOConfig(common.TrainConfig):
    """The `grpo:` section of a recipe (flat): the keys below, the shared ones of `TrainConfig`, and any field of
    `trl.GRPOConfig` (`learning_rate`, `max_steps`, `num_generations`, `beta`, `epsilon`, `loss_type`,
    `temperature`, `use_vllm`, ...). The budgets come from the recipe's `rollout:` section (`Budget`); both arms get
    them through `medr1.rollout.for_method`."""

    TRL_CLASS: ClassVar[str] = "GRPOConfig"
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {
        "learning_rate": 1e-6, "max_steps": 50, "lr_scheduler_type": "constant", "logging_steps": 1,
        "save_steps": 10, "save_total_limit": 3, "bf16": False, "num_generations": 4, "gradient_accumulation_steps": 1,
        "temperature": 1.0, "top_p": 1.0, "beta": 0.0, "epsilon": 0.2, "loss_type": "dapo", "scale_rewards": "group",
        "num_iterations": 1, "mask_truncated_completions": False, "use_vllm": False, "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": 0.3, "vllm_tensor_parallel_size": 1, "log_completions": False,
    }
    STAGE_SET_BY_MEDR1: ClassVar[dict[str, str]] = {
        "per_device_train_batch_size": "micro_batch_size (completions per forward/backward)",
        "max_completion_length": "rollout.max_total_tokens",
        "vllm_importance_sampling_correction": "(on with use_vllm: the rollout returns vLLM's logprobs)",
    }

    output_dir: str = "runs/grpo"
    train_data: list[str] = field(default_factory=lambda: ["hpo-dx:train"])
    train_limit: int | None = None  # per source
    # open prompts: this many more questions per source (after train_limit) without options, rewarded by
    # `open_correctness` (the named diagnosis normalized to the gold disease id); 0 = none
    open_prompts: int = 0
    # Train only on the prompts the starting model misses: before step 1 it answers each prompt once, greedily, with
    # this arm's method and budget (`medr1.evaluate.run_eval` into output_dir/screen, resumable), and the prompts
    # whose answer the first reward does not pay in full are kept (letters re-balanced). A group that is all right
    # has zero advantage and teaches nothing; after SFT that is most groups.
    screen: bool = False
    # With screen: keep also this many prompts it answers right per prompt it misses (anchors, in train order). On
    # misses alone GRPO learns what pays where the SFT policy fails (at demo scale it dropped the candidate search,
    # 87 -> 65 of 100 HPO-Dx questions); a sampled group on a prompt the policy gets right pays what it does right.
    screen_right_per_miss: float = 0.0
    # With screen: keep a miss only when the knowledge base settles it (the bm25-ranker, BM25 of the whole question
    # against each option's document, picks the gold). A miss the evidence does not settle is paid only by a guess
    # or by a search that leaves options out: with every miss kept (and the colon of `| among:` enforced), GRPO came
    # to name 3.2 of the 4 options in its candidate search (SFT 3.9) and lost 10 pp on HPO-Dx (README).
    screen_settled: bool = False
    # environment
    use_retrieval: bool = True  # false: cot prompts, single-turn generation, no search (H2's comparison arm)
    rollout_batch_size: int = 16  # sequences generated together by the rollout engine
    prompts_per_step: int = 2  # distinct questions per optimizer step (x num_generations completions)
    micro_batch_size: int | None = None  # completions per forward/backward (memory); None = all of a step's at once
    rewards: list[str] = field(default_factory=lambda: ["correctness", "format"])
    reward_weights: list[float] = field(default_factory=lambda: [1.0, 0.2])
    bonus_per_search: float = 0.05
    bonus_max_searches: int = 3
    bonus_per_100_think_words: float = 0.05
    bonus_cap: float = 0.2

    def validate(self) -> None:
        if self.num_generations < 2:
            raise ConfigError(f"grpo.num_generations must be >= 2 (GRPO compares a group), got {self.num_generations}")
        unknown = [r for r in self.rewards if r not in REWARD_NAMES]
        if unknown:
            raise ConfigError(f"grpo.rewards: unknown {unknown}; known: {list(REWARD_NAMES)}")
        if self.open_prompts and "open_correctness" not in self.rewards:
            raise ConfigError("grpo.open_prompts needs the open_correctness reward in grpo.rewards (with its weight)")
        if len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards "
                f"{self.rewards}"
            )
        self.validate_budget("grpo (rollout)")
        for key in ("prompts_per_step", "gradient_accumulation_steps", "save_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"grpo.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps < 1:
            raise ConfigError(f"grpo.max_steps must be >= 1, got {self.max_steps}")
        if self.screen_right_per_miss < 0:
            raise ConfigError("grpo.screen_right_per_miss must be >= 0 (0 = misses only), "
                              f"got {self.screen_right_per_miss}")
        per_step = self.prompts_per_step * self.num_generations
        if self.micro_batch_size is not None and (self.micro_batch_size < 1 or per_step % self.micro_batch_size):
            raise ConfigError(
                f"grpo.micro_batch_size ({self.micro_batch_size}) must divide prompts_per_step x num_generations "
                f"({per_step})"
            )
        if self.temperature <= 0:
            raise ConfigError("grpo.temperature must be > 0 (GRPO needs sampled, different completions)")
        if self.use_vllm and self.vllm_mode == "colocate" and self.vllm_tensor_parallel_size != 1:
            # Our rollout drives the colocated engine of each process directly (one engine per GPU).
            raise ConfigError("grpo: with vllm_mode=colocate, only vllm_tensor_parallel_size=1 is supported (set the "
                              "tensor parallelism of a vLLM server with vllm_mode=server instead)")

    @property
    def prompt_method(self) -> str:
        return "self-ask" if self.use_retrieval else "cot"


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------


def prompt_row(question: Question, method: str) -> dict[str, Any]:
    """One GRPO dataset row: the chat prompt plus the columns the rewards read (gold letter, letters, option texts
    in letter order, so an answer that names its option is scored as the harness scores it)."""
    from medr1.prompts import build_messages

    letters = "".join(sorted(question.options))
    row = {
        "prompt": build_messages(question, method),
        "answer": question.answer if question.options else None,  # an open row is scored by open_correctness
        "letters": letters,
        "option_texts": [question.options[k] for k in letters],
        "question_id": question.id,
        "gold_id": None if question.options else (question.gold_doc_ids or [None])[0],
        "gold_doc_ids": list(question.gold_doc_ids),  # the context_recall reward's reference
    }
    if question.image is not None:  # TRL puts it into the prompt's first user turn and computes its pixels
        row["image"] = models.open_image(question.image)
    return row


Screen = Callable[[list[Question]], list[Question]]


def build_rows(cfg: GRPOConfig, screen: Screen | None = None,
               settled: Callable[[Question], bool] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt rows from `train_data` (test splits excluded and counted, letters balanced) and a per-source report;
    `open_prompts` more per source without options (`medr1.open_diagnosis.open_question`). `screen` keeps the
    multiple-choice questions worth training on (`screen_missed`), of its misses only those `settled` accepts (when
    given; `settled_by_evidence`); the kept ones are re-lettered to stay balanced."""
    from medr1.open_diagnosis import open_question

    chosen: dict[str, tuple[list[Question], list[Question]]] = {}
    report: dict[str, Any] = {}
    for spec in cfg.train_data:
        entry = report.setdefault(spec, {})
        kept = common.training_questions(spec, cfg.exclude_splits, cfg.skip_bad, cfg.seed, "grpo", entry)
        n = len(kept) if cfg.train_limit is None else cfg.train_limit
        opened = [open_question(q) for q in kept[n: n + cfg.open_prompts] if q.gold_doc_ids]
        chosen[spec] = (common.balance_letters(kept[:n]), opened)
    if screen is not None:  # one screening run over every source's questions
        missed = {q.id for q in screen([q for used, _ in chosen.values() for q in used])}
        for spec, (used, opened) in chosen.items():
            all_misses = [q for q in used if q.id in missed]
            misses = [q for q in all_misses if settled is None or settled(q)]
            anchors = [q for q in used if q.id not in missed][: round(len(misses) * cfg.screen_right_per_miss)]
            report[spec].update(screened=len(used), missed=len(all_misses), anchors=len(anchors))
            if settled is not None:
                report[spec]["unsettled_misses_dropped"] = len(all_misses) - len(misses)
            kept = {q.id for q in misses + anchors}
            chosen[spec] = (common.balance_letters([q for q in used if q.id in kept]), opened)
    rows: list[dict[str, Any]] = []
    for spec, (used, opened) in chosen.items():
        entry = report[spec]
        entry["used"] = len(used)
        entry["open_prompts"] = len(opened)
        entry["answer_letters"] = dict(sorted(Counter(q.answer for q in used).items()))
        rows.extend(prompt_row(q, cfg.prompt_method) for q in [*used, *opened])
    if not rows:
        raise DataError(f"grpo: no training prompts from {cfg.train_data} (see counts: {report})")
    return rows, report


def screen_missed(cfg: GRPOConfig, loaded: Any = None, retriever: Any = None, generator: Any = None) -> Screen:
    """The `screen` of `build_rows`: the starting model answers each question once, greedily, with this arm's
    method and the shared budget (an ordinary `medr1.evaluate.run_eval` into `output_dir/screen`, so a killed
    screening resumes), and the questions whose answer the first reward of `cfg.rewards` does not pay in full are
    kept. A forced answer (the environment wrote `<answer>`) counts as missed, as GRPO's rewards score it."""
    from medr1.evaluate import EvalConfig, run_eval
    from medr1.io import read_jsonl_tolerant
    from medr1.rollout import BUDGET_KEYS

    def screen(questions: list[Question]) -> list[Question]:
        out = Path(cfg.output_dir) / "screen"
        ecfg = EvalConfig(**{k: getattr(cfg, k) for k in BUDGET_KEYS}, model=cfg.model, data="grpo:screen",
                          method=cfg.prompt_method, out=str(out), index=cfg.index, batch_size=cfg.rollout_batch_size,
                          device=cfg.device, dtype="bfloat16" if cfg.bf16 else "float32", seed=cfg.seed)
        run_eval(ecfg, questions=questions, loaded=loaded, retriever=retriever, generator=generator)
        samples = {s["id"]: s for s in read_jsonl_tolerant(out / "samples.jsonl")}
        first = reward_funcs(cfg)[0]
        kept = []
        for q in questions:
            sample, row = samples[q.id], prompt_row(q, cfg.prompt_method)
            paid = first([sample["completion"]], answer=[row["answer"]], letters=[row["letters"]],
                         option_texts=[row["option_texts"]])[0]
            if sample.get("finish_reason") == "forced" or (paid is not None and paid < 1.0):
                kept.append(q)
        return kept

    return screen


def settled_by_evidence(retriever: Any) -> Callable[[Question], bool]:
    """`build_rows`'s `settled` for `screen_settled`: the bm25-ranker over `retriever` picks the question's gold."""
    from medr1.retrieval.ranker import OptionRanker

    ranker = OptionRanker(retriever)
    return lambda q: ranker.rank(q)["prediction"] == q.answer


# ---------------------------------------------------------------------------------------------------------------------
# the rollout function TRL calls
# ---------------------------------------------------------------------------------------------------------------------


def rollout_config(cfg: GRPOConfig) -> Any:
    """The rollout of this arm under the shared budget (`medr1.rollout.for_method`: without retrieval, one turn
    with the whole generation budget), sampled at the GRPO temperature."""
    from medr1.rollout import for_method

    return for_method(cfg, cfg.use_retrieval, temperature=cfg.temperature, top_p=cfg.top_p,
                      batch_size=cfg.rollout_batch_size, seed=cfg.seed)


class RolloutStats:
    """Per-rollout numbers gathered between two metric records (searches, turns, finish reasons, tool errors)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.searches: list[int] = []
        self.turns: list[int] = []
        self.generated: list[int] = []
        self.tool_errors = 0
        self.finish: Counter[str] = Counter()
        self.seconds = 0.0

    def add(self, trajectories: list[Any], seconds: float) -> None:
        for t in trajectories:
            self.searches.append(len(t.queries))
            self.turns.append(int(t.turns))
            self.generated.append(int(t.n_generated))
            self.tool_errors += _count(t.tool_errors)
            self.finish[str(t.finish_reason)] += 1
        self.seconds += seconds

    def pop(self) -> dict[str, Any]:
        n = len(self.searches)
        out = {
            "searches_per_rollout": sum(self.searches) / n if n else None,
            "turns_per_rollout": sum(self.turns) / n if n else None,
            "generated_tokens_per_rollout": sum(self.generated) / n if n else None,
            "tool_errors": self.tool_errors,
            "finish_reasons": dict(self.finish),
            "rollout_seconds": round(self.seconds, 3),
        }
        self.reset()
        return out


def _count(value: Any) -> int:
    if value is None:
        return 0
    return len(value) if isinstance(value, (list, tuple)) else int(value)


def model_own_text(tokenizer: Any, token_ids: list[int], mask: list[int]) -> str:
    """The model's own text: the decoded runs of sampled tokens (mask 1), inserted information left out."""
    pieces, run, current = [], [], None
    for tok, m in zip(token_ids, mask):
        if m != current and run:
            if current == 1:
                pieces.append(tokenizer.decode(run, skip_special_tokens=True))
            run = []
        current = m
        run.append(tok)
    if run and current == 1:
        pieces.append(tokenizer.decode(run, skip_special_tokens=True))
    return "".join(pieces)


def trajectories_to_trl(
    trajectories: list[Any],
    tokenizer: Any,
    end_id: int | None,
    think_prefix: str = "",
    with_logprobs: bool = False,
    terminal_ids: tuple[int, ...] = (),
) -> dict[str, list | None]:
    """TRL's rollout_func output for our trajectories.

    An empty completion gets one `end_id` token with env_mask 0 (TRL indexes the last token); a trajectory that
    ended by answering gets `end_id` appended with env_mask 0 too, so TRL counts it as terminated rather than
    clipped, while the loss still sees only sampled tokens. `model_text` (for the rewards) starts with the
    `think_prefix` the prompt prefilled (R1-Distill's "<think>\n"), so the trace reads as the model wrote it.
    """
    out: dict[str, list | None] = {
        "prompt_ids": [], "completion_ids": [], "env_mask": [], "model_text": [], "queries": [], "retrieved_ids": [],
        "logprobs": []
    }
    for t in trajectories:
        ids, mask = list(t.token_ids), [int(m) for m in t.loss_mask]
        if len(ids) != len(mask):
            raise ValueError(f"trajectory has {len(ids)} tokens but {len(mask)} mask values")
        logps = [float(x) for x in (getattr(t, "logprobs", None) or [0.0] * len(ids))]
        ended = bool(ids) and (ids[-1] == end_id or ids[-1] in terminal_ids)
        if end_id is not None and (not ids or (_answered(t) and not ended)):
            ids.append(end_id)
            mask.append(0)
            logps.append(0.0)
        out["prompt_ids"].append(list(t.prompt_ids))
        out["completion_ids"].append(ids)
        out["env_mask"].append(mask)
        out["model_text"].append(think_prefix + model_own_text(tokenizer, ids, mask))
        out["queries"].append(list(t.queries))
        out["retrieved_ids"].append([list(turn) for turn in getattr(t, "retrieved_doc_ids", None) or []])
        out["logprobs"].append(logps)
    if not with_logprobs:
        out["logprobs"] = None  # TRL uses sampling logprobs only for its vLLM importance-sampling correction
    return out


def _answered(trajectory: Any) -> bool:
    return str(trajectory.finish_reason) in ("answer", "eos", "forced")


RolloutFn = Callable[..., list[Any]]


def make_rollout_func(
    base: Any, retriever: Any, rcfg: Any, stats: RolloutStats, rollout_fn: RolloutFn | None = None
) -> Callable[[list, Any], dict[str, list | None]]:
    """The `rollout_func(prompts, trainer)` TRL calls once per generation batch.

    `prompts` arrive already repeated `num_generations` times (TRL's sampler); one trajectory per prompt comes back.
    The policy is the trainer's current model: with `use_vllm`, TRL has just synced its weights into the colocated
    vLLM engine (or the vLLM server), which our rollout drives through `vllm_backend`; otherwise the unwrapped model (ZeRO-3 parameters
    gathered by TRL's `unwrap_model_for_generation`) generates through the Hugging Face backend, in eval mode.
    """
    from medr1.models import chat_prompt, split_image_parts

    end_id = models.end_of_turn_id(base)

    def rollout_func(prompts: list, trainer: Any) -> dict[str, list | None]:
        fn = rollout_fn
        if fn is None:
            from medr1.rollout import run_rollouts as fn
        built = [chat_prompt(base, *split_image_parts(p)) for p in prompts]  # a VLM row's image comes inside
        prompt_ids, images = [ids for ids, _ in built], [img for _, img in built]
        with_images = {"images": images} if any(img is not None for img in images) else {}
        # A fresh seed per step and process: rows of one group already differ (the rollout seeds by row index), and
        # a resumed run does not replay the samples of earlier steps.
        seed = rcfg.seed + 1_000_003 * trainer.state.global_step + 7_919 * trainer.accelerator.process_index
        cfg = dataclasses.replace(rcfg, seed=seed)
        started = time.perf_counter()
        use_vllm = bool(getattr(trainer, "use_vllm", False))
        if use_vllm:
            trajectories = fn(base, prompt_ids, retriever, cfg, backend=vllm_backend(base, trainer), **with_images)
        else:
            trajectories = _hf_rollouts(fn, base, trainer, prompt_ids, retriever, cfg, **with_images)
        if len(trajectories) != len(prompts):
            raise RuntimeError(f"rollout returned {len(trajectories)} trajectories for {len(prompts)} prompts")
        stats.add(trajectories, time.perf_counter() - started)
        return trajectories_to_trl(
            trajectories, base.tokenizer, end_id, base.spec.think_prefill, use_vllm, tuple(base.stop_token_ids)
        )

    return rollout_func


def vllm_server_url(args: Any) -> str:
    """The vLLM server of TRL's server mode, as TRL's own arguments name it."""
    return args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"


def vllm_backend(base: Any, trainer: Any) -> Any:
    """The vLLM engine TRL keeps the policy's weights in: the colocated `vllm.LLM` of this process, or (server
    mode) a client of the server, one per rank (TRL's own client lives on the main process only), made once."""
    from medr1.generation import VLLMBackend, VLLMServerBackend

    if trainer.args.vllm_mode != "server":
        return VLLMBackend(trainer.vllm_generation.llm, base.tokenizer, base.stop_token_ids)
    backend = getattr(trainer, "_medr1_server_backend", None)
    if backend is None:
        backend = VLLMServerBackend.from_url(vllm_server_url(trainer.args), base.tokenizer, base.stop_token_ids,
                                             timeout_s=trainer.args.vllm_server_timeout)
        trainer._medr1_server_backend = backend
    return backend


def _hf_rollouts(fn: RolloutFn, base: Any, trainer: Any, prompt_ids: list, retriever: Any, cfg: Any,
                 **images: Any) -> list[Any]:
    import torch
    from trl.models import unwrap_model_for_generation

    with (
        unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=trainer.args.ds3_gather_for_generation
        ) as model,
        torch.no_grad(),
    ):
        was_training = model.training
        model.eval()
        try:
            return fn(dataclasses.replace(base, model=model), prompt_ids, retriever, cfg, **images)
        finally:
            if was_training:
                model.train()


# ---------------------------------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------------------------------


def trl_args(cfg: GRPOConfig) -> Any:
    # TRL generates per_device x gradient_accumulation_steps completions at once and slices them into micro-batches,
    # so splitting one step's completions into micro-batches only costs accumulation steps, not extra rollouts.
    per_step = cfg.prompts_per_step * cfg.num_generations
    micro = cfg.micro_batch_size or per_step
    return cfg.trl_class()(**cfg.trl_kwargs(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps * (per_step // micro),
        max_completion_length=cfg.max_total_tokens,
        reward_weights=list(cfg.reward_weights),
        # with vLLM our rollout returns vLLM's token logprobs, so TRL can correct the sampler/trainer mismatch
        vllm_importance_sampling_correction=cfg.use_vllm,
    ))


def reward_funcs(cfg: GRPOConfig) -> list[Callable[..., list[float | None]]]:
    normalize = None
    if "open_correctness" in cfg.rewards:  # diagnosis names -> disease ids of the training questions' namespace
        from medr1.data.hpo import load_hpo
        from medr1.open_diagnosis import NameNormalizer

        normalize = NameNormalizer(load_hpo(), {"OMIM", "ORPHA"})
    return build_reward_funcs(
        cfg.rewards,
        normalize=normalize,
        per_search=cfg.bonus_per_search,
        max_searches=cfg.bonus_max_searches,
        per_100_think_words=cfg.bonus_per_100_think_words,
        cap=cfg.bonus_cap,
    )


def _ensure_reference_source(cfg: GRPOConfig, loaded: Any) -> None:
    """TRL builds the KL reference model from `config._name_or_path`; give an in-process model a saved copy."""
    if cfg.beta == 0.0 or cfg.lora:
        return
    name = str(getattr(loaded.model.config, "_name_or_path", "") or "")
    if name and (Path(name).is_dir() or "/" in name):
        return
    init_dir = Path(cfg.output_dir) / "reference-init"
    loaded.model.save_pretrained(init_dir, safe_serialization=True)
    loaded.model.config._name_or_path = str(init_dir)


def build_trainer(
    cfg: GRPOConfig,
    loaded: Any,
    rows: list[dict[str, Any]],
    retriever: Any,
    rollout_fn: RolloutFn | None = None,
    extra_reward_funcs: list[Callable[..., Any]] | None = None,
) -> Any:
    """A trl.GRPOTrainer wired to our rollout, rewards and metrics callback."""
    from datasets import Dataset
    from trl import GRPOTrainer

    common.set_quiet_env()
    _ensure_reference_source(cfg, loaded)
    stats = RolloutStats()
    args = trl_args(cfg)
    funcs = reward_funcs(cfg) + list(extra_reward_funcs or [])
    if extra_reward_funcs:
        args.reward_weights = list(cfg.reward_weights) + [1.0] * len(extra_reward_funcs)
    return GRPOTrainer(
        model=loaded.model,
        reward_funcs=funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=loaded.processor or loaded.tokenizer,  # a VLM's processor: TRL computes its pixels
        peft_config=common.peft_config(cfg),
        rollout_func=make_rollout_func(loaded, retriever, rollout_config(cfg), stats, rollout_fn),
        callbacks=[
            common.metrics_callback(Path(cfg.output_dir) / "metrics.jsonl", METRIC_ALIASES, stats.pop),
            common.spec_marker_callback(loaded.spec.name),
        ],
    )


def open_environment(cfg: GRPOConfig) -> Any:
    """The retriever in the loop (None without retrieval)."""
    if not cfg.use_retrieval:
        return None
    from medr1.retrieval import open_retriever

    return open_retriever(cfg.index)


def run_grpo(
    cfg: GRPOConfig,
    dry_run: bool = False,
    resume: bool = False,
    retriever: Any = None,
    rollout_fn: RolloutFn | None = None,
) -> dict[str, Any]:
    """Train with GRPO (or, with `dry_run`, build data, retriever, rewards and TRL args and return the plan)."""
    started = time.perf_counter()
    rows, data_report = build_rows(cfg)
    plan: dict[str, Any] = {"stage": "grpo", "config": config_dict(cfg), "data": data_report}
    if retriever is None:
        retriever = open_environment(cfg)
    plan["retriever"] = type(retriever).__name__ if retriever is not None else None
    plan["prompt_method"] = cfg.prompt_method
    plan["rollout"] = dataclasses.asdict(rollout_config(cfg))
    plan["rewards"] = [f.__name__ for f in reward_funcs(cfg)]
    if dry_run:
        plan["example_prompt"] = rows[0]["prompt"][-1]["content"][:400]
        if retriever is not None:
            hits = retriever.search([rows[0]["prompt"][-1]["content"][-200:]], cfg.topk)[0]
            plan["retrieval_check"] = [h.doc.title for h in hits]
        return common.finish_dry_run(plan, trl_args, cfg, "grpo", started, lambda args: {
            "num_generations": cfg.num_generations,
            "generation_batch_size": args.generation_batch_size,
            "beta": cfg.beta,
            "use_vllm": cfg.use_vllm,
            "vllm_mode": cfg.vllm_mode if cfg.use_vllm else None,
        })

    checkpoint, loaded = common.start_run(cfg, trl_args, "grpo", resume)  # refuses a used output_dir first
    if cfg.screen:
        from accelerate import PartialState

        with PartialState().main_process_first():  # rank 0 screens; the others then read its finished samples
            settled = None
            if cfg.screen_settled:
                from medr1.retrieval import open_retriever

                settled = settled_by_evidence(retriever if retriever is not None else open_retriever(cfg.index))
            rows, data_report = build_rows(cfg, screen_missed(cfg, retriever=retriever), settled)
        plan["data"] = data_report
        print(f"medr1: grpo: screening kept {len(rows)} prompts, the starting model's misses and any anchors "
              f"({data_report})", file=sys.stderr)
    trainer = build_trainer(cfg, loaded, rows, retriever, rollout_fn)
    return common.train_and_save(trainer, loaded, cfg, checkpoint, plan, started)
