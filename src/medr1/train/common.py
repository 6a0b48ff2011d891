"""Pieces shared by the SFT and GRPO stages: their config base (`TrainConfig`: medr1's own keys, the rollout
budget, and every key of TRL's config passed through), training data (test splits refused, gold letters balanced), LoRA
configs, the per-step `metrics.jsonl` callback, checkpoint discovery and resume
bookkeeping. Models load through `medr1.models.load_model` (tiny-random-llama included).

    from medr1.train.common import training_questions
    questions = training_questions("hpo-dx:train", ["test"], False, 0, "sft", report={})
"""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from medr1 import models
from medr1.errors import ConfigError, Medr1Error
from medr1.io import append_jsonl, atomic_write_text, read_jsonl_tolerant
from medr1.rollout import Budget

# TRL keys that medr1 sets from its own keys; a recipe that writes them is told which key to use instead.
SET_BY_MEDR1 = {
    "output_dir": "output_dir (medr1's own)",
    "seed": "seed (medr1's own)",
    "data_seed": "seed",
    "use_cpu": "device: cpu",
    "report_to": "(TensorBoard when installed)",
    "dataloader_num_workers": "(0: the dataset is tokenized in memory)",
    "save_strategy": "save_steps",
}


@dataclass(frozen=True)
class TrainConfig(Budget):
    """What the `sft:` and `grpo:` sections share. Keys are flat, as in a recipe: medr1's own (declared here and in
    the stage's subclass), the rollout budget (`Budget`, from the `rollout:` section), and ANY field of the TRL
    config the stage wraps (`TRL_CLASS`: trl.SFTConfig / trl.GRPOConfig) under the name and type TRL documents —
    `learning_rate`, `max_steps`, `warmup_steps`, `bf16`, `beta`, `loss_type`, `use_vllm`, ... They are kept in
    `trl` over medr1's defaults for them (`TRL_DEFAULTS`), read as attributes (`cfg.max_steps`), handed to TRL as
    they are (`trl_kwargs`), and written back flat. TRL keys that medr1 derives are refused (`SET_BY_MEDR1`)."""

    PASSTHROUGH: ClassVar[str] = "trl"
    TRL_CLASS: ClassVar[str] = ""
    TRL_DEFAULTS: ClassVar[dict[str, Any]] = {}
    STAGE_SET_BY_MEDR1: ClassVar[dict[str, str]] = {}

    model: str = "smollm2-135m"
    output_dir: str = "runs/train"
    exclude_splits: list[str] = field(default_factory=lambda: ["test"])  # never train on test items
    skip_bad: bool = False
    index: str | None = None  # retriever spec; None = the default HPO BM25 index
    # LoRA via peft
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(models.LORA_TARGETS))
    merge_lora: bool = True  # save final/ as a plain model (merged) so eval and GRPO load it like any other
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    trl: dict[str, Any] = field(default_factory=dict)  # TRL's own keys (flat in the recipe)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trl", {**self.TRL_DEFAULTS, **self.trl})

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields: TRL's keys
        passed = self.__dict__.get("trl") or {}
        if name in passed:
            return passed[name]
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    @classmethod
    def trl_class(cls) -> type:
        import trl

        return getattr(trl, cls.TRL_CLASS)

    @classmethod
    def route_keys(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """Split a flat section: medr1's keys stay, TRL's move into `trl` (coerced to TRL's types); a key that is
        neither, or one medr1 sets itself, is a ConfigError naming it."""
        import dataclasses
        import typing

        from medr1.config import coerce_values

        ours = {f.name for f in dataclasses.fields(cls)}
        trl_cls = cls.trl_class()
        theirs = {f.name for f in dataclasses.fields(trl_cls)}
        derived = {**SET_BY_MEDR1, **cls.STAGE_SET_BY_MEDR1}
        kept = {k: v for k, v in values.items() if k in ours}
        passed = {k: v for k, v in values.items() if k not in ours}
        refused = sorted(k for k in passed if k in derived)
        if refused:
            raise ConfigError(f"{where}: {refused} are set by medr1 from its own keys; use "
                              + ", ".join(f"{k} -> {derived[k]}" for k in refused))
        unknown = sorted(set(passed) - theirs)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; medr1 keys: {sorted(ours - {'trl'})}, and any field "
                              f"of trl.{cls.TRL_CLASS} (see TRL's documentation)")
        hints = typing.get_type_hints(trl_cls)
        merged = {**(kept.pop("trl", None) or {}), **passed}
        return kept | {"trl": coerce_values(merged, hints)} if merged or "trl" in values else kept

    def trl_kwargs(self, **derived: Any) -> dict[str, Any]:
        """The keyword arguments of TRL's config: the settings every run shares, the recipe's TRL keys, then the
        values the stage derives from medr1's keys (`derived`)."""
        kwargs = {**trainer_args(self), **self.trl, **derived}
        if kwargs.get("bf16") and not models.usable_bf16(self.device):  # emulated bf16 autocast: far slower
            kwargs["bf16"] = False
        return kwargs

def balance_letters(questions: list[Any]) -> list[Any]:
    """The questions with their options re-lettered so that gold letters cycle A, B, C, ... over the list (per option
    count): every built training set has an exactly balanced gold-letter distribution, whatever the source's own
    (MedMCQA's and a small sample's are not). The other options keep their order; nothing else changes."""
    import dataclasses
    from collections import Counter

    seen: Counter[int] = Counter()
    out = []
    for q in questions:
        letters = sorted(q.options)
        target = letters[seen[len(letters)] % len(letters)]
        seen[len(letters)] += 1
        others = [q.options[k] for k in letters if k != q.answer]
        texts = others[: letters.index(target)] + [q.options[q.answer]] + others[letters.index(target):]
        out.append(dataclasses.replace(q, options=dict(zip(letters, texts)), answer=target))
    return out


def training_questions(spec: str, exclude_splits: list[str], skip_bad: bool, seed: int, stage: str,
                       report: dict[str, Any]) -> list[Any]:
    """The questions of one training source minus excluded splits (counted in `report`), in a seeded order keyed
    by question id (a run's path must not matter).

    A source made only of excluded questions (e.g. `hpo-dx:test`) is an error naming its first question: test
    items are never trained on. A source that mixes splits (PubMedQA PQA-L) keeps its training part."""
    from medr1.data.sources import load_questions
    from medr1.errors import DataError
    from medr1.io import seeded_order

    result = load_questions(spec, skip_bad=skip_bad)
    kept = [q for q in result.questions if q.split not in exclude_splits]
    if result.questions and not kept:
        first = result.questions[0]
        raise DataError(f"{stage}: {spec}: question {first.id!r} is from the {first.split!r} split, which training "
                        f"excludes ({exclude_splits}); train on a training split such as hpo-dx:train")
    report.update(loaded=len(result.questions), excluded_split=len(result.questions) - len(kept))
    if result.skips.total:
        report["skipped_bad"] = result.skips.total
        print(f"medr1: {spec}: {result.skips.summary()}", file=sys.stderr)
    return seeded_order(kept, seed, key=lambda q: q.id)


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str]) -> Any:
    """A peft LoraConfig for causal-LM training."""
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete `checkpoint-N` directory in `output_dir`, or None. The trainer writes
    trainer_state.json after the weights, optimizer and RNG states, so a checkpoint without it was cut short by a
    kill while saving: it is passed over (and said so) for the one before."""
    import re

    path = Path(output_dir)
    found = sorted(((int(m.group(1)), p) for p in path.iterdir() if p.is_dir()
                    and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))), reverse=True) if path.is_dir() else []
    for _, ckpt in found:
        if _complete(ckpt):
            return str(ckpt)
        print(f"medr1: {ckpt.name} is incomplete (no readable trainer_state.json; killed while saving?); using an "
              "earlier one", file=sys.stderr, flush=True)
    return None


def _complete(checkpoint: Path) -> bool:
    try:
        checkpoint_step(checkpoint)
    except ConfigError:
        return False
    return True


def checkpoint_step(checkpoint: str | Path) -> int:
    """The global step saved in a checkpoint's trainer_state.json."""
    state = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{state}: cannot read global_step ({exc})") from None


def prepare_output_dir(output_dir: str | Path, resume: bool) -> str | None:
    """Check the run directory against `--resume`; return the checkpoint to resume from (or None).

    Without `--resume`, a directory that already holds checkpoints is an error rather than silently overwritten. With
    it, metrics.jsonl is cut back to the checkpoint's step so the resumed steps are not logged twice.
    """
    out = Path(output_dir)
    ckpt = last_checkpoint(out)
    if not resume:
        if ckpt is not None:
            raise ConfigError(
                f"{out} already has checkpoints ({Path(ckpt).name}); pass --resume to continue, or choose another "
                "output_dir"
            )
        out.mkdir(parents=True, exist_ok=True)
        return None
    if ckpt is None:
        print(f"medr1: --resume: no checkpoint in {out}; starting from step 0", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        return None
    truncate_metrics(out / "metrics.jsonl", checkpoint_step(ckpt))
    return ckpt


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics records logged after `step` (a killed run may have logged steps its checkpoint lacks)."""
    if not path.is_file():
        return
    records = read_jsonl_tolerant(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_callback(
    path: str | Path, aliases: dict[str, str] | None = None, extra: Callable[[], dict[str, Any]] | None = None
) -> Any:
    """A TrainerCallback appending one JSON record per logged step to `path`.

    Each record has `step`, `epoch`, `seconds_per_step` (wall time of the steps since the previous record),
    `peak_rss_mb`, everything the trainer logged, plus `aliases` (our stable names for TRL's keys, e.g. accuracy <-
    rewards/correctness_reward/mean) and whatever `extra()` returns (then reset by the caller).
    """
    from transformers import TrainerCallback

    aliases = aliases or {}

    class MetricsJsonl(TrainerCallback):
        def __init__(self) -> None:
            self.path = Path(path)
            self.step_times: list[float] = []
            self._start: float | None = None

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self._start is not None:
                self.step_times.append(time.perf_counter() - self._start)
                self._start = None

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            if not any(k in logs for k in ("loss", "reward")) or "train_runtime" in logs:
                return  # the end-of-training summary and eval logs are not per-step records
            record: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
            if self.step_times:
                record["seconds_per_step"] = sum(self.step_times) / len(self.step_times)
                self.step_times = []
            record["peak_rss_mb"] = round(peak_rss_mb(), 1)
            record.update(logs)
            for ours, theirs in aliases.items():
                if theirs in logs:
                    record[ours] = logs[theirs]
            if extra is not None:
                record.update(extra())
            if state.is_world_process_zero:
                append_jsonl(self.path, {k: _finite(v) for k, v in record.items()})

    return MetricsJsonl()


def spec_marker_callback(spec_name: str) -> Any:
    """A TrainerCallback writing medr1's model-spec marker into every checkpoint, so R1 facts survive a save."""
    from transformers import TrainerCallback

    class SpecMarker(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            from medr1.models import mark_model_dir

            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                mark_model_dir(ckpt, spec_name)

    return SpecMarker()


def args_summary(args: Any) -> dict[str, Any]:
    """The TrainingArguments fields a dry-run plan shows."""
    keys = (
        "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "gradient_accumulation_steps", "max_length", "max_completion_length", "save_steps", "save_total_limit",
        "bf16", "gradient_checkpointing", "report_to", "seed",
    )
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def finish_dry_run(plan: dict[str, Any], factory: Callable[[Any], Any], cfg: Any, stage: str, started: float,
                   extra: Callable[[Any], dict[str, Any]] = lambda args: {}) -> dict[str, Any]:
    """The end of an SFT or GRPO dry-run plan: the checked TRL args (summary, the configured bf16, `extra(args)`),
    the note when bf16 could not be checked here, the LoRA config and the elapsed seconds."""
    args, note = build_trl_args(factory, cfg, stage, dry_run=True)
    plan["trl_args"] = args_summary(args) | {"bf16": cfg.bf16} | extra(args)
    if note:
        plan["note"] = note
    plan["peft"] = repr(peft_config(cfg)) if cfg.lora else None
    plan["seconds"] = round(time.perf_counter() - started, 2)
    return plan


def build_trl_args(factory: Callable[[Any], Any], cfg: Any, stage: str, dry_run: bool = False) -> tuple[Any, str | None]:
    """(TRL args, note). TRL/transformers errors become ConfigErrors; in a dry run on a machine without a GPU, a
    GPU-only setting (bf16) is checked with it off and reported in the note instead of failing the plan."""
    from medr1.config import replace_values

    try:
        return factory(cfg), None
    except ValueError as exc:
        if dry_run and getattr(cfg, "bf16", False) and "bf16" in str(exc):
            return factory(replace_values(cfg, bf16=False)), f"bf16 not checkable on this machine ({exc})"
        raise ConfigError(f"{stage}: the trainer rejected the configuration: {exc}") from None


def set_quiet_env() -> None:
    """Silence TRL's experimental-feature warning for rollout_func (we use it on purpose)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def save_final(trainer: Any, loaded: Any, path: Path, merge: bool) -> Path:
    """Save the trained model + tokenizer or processor (+ medr1 spec marker); LoRA adapters are merged first when `merge`."""
    from medr1.models import mark_model_dir

    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.is_world_process_zero():
        model.save_pretrained(path, safe_serialization=True)
        (loaded.processor or loaded.tokenizer).save_pretrained(path)  # a VLM's processor holds its tokenizer
        mark_model_dir(path, loaded.spec)
    return path


def rows_digest(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("input_ids", "assistant_masks")) -> str:
    """A short sha256 of the training rows' token columns, in order: what two ranks, or two runs, must agree on."""
    import hashlib

    payload = json.dumps([[r.get(k) for k in keys] for r in rows], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_ranks_agree(digest: str, what: str) -> None:
    """Under a multi-process launch every rank builds its own copy of the data; one that built other rows would
    train on other examples than a single process would, without a word. A DataError names the ranks instead."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        from medr1.errors import DataError

        raise DataError(f"the ranks built different {what} (digest by rank: {digests}); every rank must build the "
                        "same data from the same config and cache. Build the caches once in one process first.")


def distributed_setup(trainer: Any) -> dict[str, Any]:
    """How accelerate set the run up, for summary.json: {"type": "MULTI_CPU", "processes": 2}, "FSDP", "NO", ..."""
    state = trainer.accelerator.state
    return {"type": str(getattr(state.distributed_type, "value", state.distributed_type)),
            "processes": state.num_processes}


def refuse_fsdp_on_cpu(args: Any) -> None:
    """FSDP asked for (`fsdp=...` or accelerate's FSDP config) on a CPU run is a ConfigError: accelerate shards only
    on accelerators, and on CPU it trains as plain DDP without a word (or transformers fails in one process)."""
    import torch

    asked = bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if asked and (getattr(args, "use_cpu", False) or not torch.cuda.is_available()):
        raise ConfigError("FSDP was asked for on a CPU run: accelerate runs FSDP on GPUs (and other accelerators) "
                          "only, so the model would not be sharded. On CPU, drop `fsdp`: torchrun --nproc_per_node N "
                          "trains with DDP over gloo.")


def train_and_save(trainer: Any, loaded: Any, cfg: Any, checkpoint: str | None, plan: dict, started: float) -> dict:
    """Train (resuming from `checkpoint`), save `final/`, and write `summary.json` = the plan plus the outcome."""
    from medr1.io import atomic_write_json

    plan["distributed"] = distributed_setup(trainer)
    if checkpoint:
        print(f"medr1: resuming from {checkpoint}", file=sys.stderr, flush=True)
    try:  # checkpoints and final/ are the writes a full disk breaks
        result = trainer.train(resume_from_checkpoint=checkpoint)
        final = save_final(trainer, loaded, Path(cfg.output_dir) / "final", merge=cfg.lora and cfg.merge_lora)
    except (OSError, RuntimeError) as exc:  # torch.save on a full disk: "unexpected pos ..."
        full = disk_full_error(cfg.output_dir, exc)
        if full is None:
            raise
        raise full from exc
    plan.update(
        final_model=str(final),
        global_step=trainer.state.global_step,
        train_loss=result.training_loss,
        seconds=round(time.perf_counter() - started, 1),
        peak_rss_mb=round(peak_rss_mb(), 1),
    )
    atomic_write_json(Path(cfg.output_dir) / "summary.json", plan)
    return plan


LOW_DISK_BYTES = 1 << 30  # below this, a failed save is taken for a full disk


def disk_full_error(output_dir: str | Path, exc: BaseException) -> Medr1Error | None:
    """A clear error when training failed because the disk under `output_dir` is full (ENOSPC, or under
    LOW_DISK_BYTES free); None for any other failure."""
    free = shutil.disk_usage(output_dir).free
    if getattr(exc, "errno", None) != errno.ENOSPC and free >= LOW_DISK_BYTES:
        return None
    return Medr1Error(
        f"training stopped: the disk under {output_dir} is full ({free / 2**20:.0f} MiB free; "
        f"{type(exc).__name__}: {exc}). Free space and continue with --resume (`medr1 run` resumes by itself): "
        "a checkpoint cut short is passed over for the one before"
    )


def start_run(cfg: Any, trl_args: Callable[[Any], Any], stage: str, resume: bool) -> tuple[str | None, Any]:
    """Check the trainer settings, prepare the output dir (resume checkpoint or refusal), save the resolved config,
    then load the model: (checkpoint to resume from or None, LoadedModel)."""
    from medr1.config import save_config

    args, _ = build_trl_args(trl_args, cfg, stage)  # fail on bad trainer settings before loading the model
    refuse_fsdp_on_cpu(args)
    checkpoint = prepare_output_dir(cfg.output_dir, resume)
    save_config(cfg, Path(cfg.output_dir) / "config.yaml")
    from medr1.models import load_model

    return checkpoint, load_model(cfg.model, cfg.device, cfg.dtype, cfg.seed)


def trainer_args(cfg: Any) -> dict[str, Any]:
    """The TRL/transformers training arguments that medr1 sets for every SFT and GRPO run (`SET_BY_MEDR1`)."""
    return dict(
        output_dir=cfg.output_dir,
        save_strategy="steps",
        use_cpu=cfg.device == "cpu",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=["tensorboard"] if tensorboard_available() else [],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def peft_config(cfg: Any) -> Any:
    """The LoRA config of an SFT or GRPO config, or None for full fine-tuning."""
    return lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) if cfg.lora else None
