"""The pipeline runner: stage skipping by config hash, re-runs on a changed config or upstream output, --force,
resume of an interrupted stage, missing outputs, disabled stages, recipe/override errors, and the configs the real
stages resolve. Stages are stubbed through `run_pipeline(stages=...)`; one fast test runs the real stages on a tiny
setup (tiny corpus, tiny HPO-Dx, tiny random Llama, no training), and a slow test runs `medr1 run --profile smoke`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medr1 import pipeline as pl
from medr1.errors import ConfigError
from medr1.pipeline import Stage

FIXTURE_DOCS = Path(__file__).parent / "fixtures" / "retrieval" / "docs.jsonl"


def write_recipe(tmp_path: Path, **sections) -> Path:
    doc = {"run": {"name": "t", "runs_dir": str(tmp_path / "runs")}, "data": {"corpus": "hpo"}, "index": {}}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


class FakeStages:
    """Three stages named like the real first three: corpus (reads data:), index (reads index:, needs corpus),
    benchmark (needs index). Each execution is counted and writes out.txt; `fail` makes one stage raise once."""

    def __init__(self, random_fingerprint: bool = True) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail: set[str] = set()
        self.random_fingerprint = random_fingerprint

    def execute(self, ctx) -> dict:
        self.calls.append((ctx.name, ctx.resuming))
        partial = ctx.dir / "partial.txt"
        partial.write_text(partial.read_text() + "x" if partial.exists() else "x")
        if ctx.name in self.fail:
            self.fail.discard(ctx.name)
            raise RuntimeError(f"{ctx.name} broke")
        out = ctx.dir / "out.txt"
        out.write_text(json.dumps(pl._plain(ctx.configs)))
        result = {"paths": [str(out)], "value": ctx.name}
        if not self.random_fingerprint:
            result["fingerprint"] = ctx.name
        return result

    def stages(self) -> list[Stage]:
        return [
            Stage("corpus", (), lambda plan, inputs: {"data": plan.data}, self.execute),
            Stage("index", ("corpus",), lambda plan, inputs: {"index": plan.index}, self.execute),
            Stage("benchmark", ("index",), lambda plan, inputs: {"n": len(inputs["index"]["value"])}, self.execute),
        ]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def run(recipe: Path, fake: FakeStages, **kw) -> dict:
    return pl.run_pipeline(recipe, stages=fake.stages(), progress=False, **kw)


def statuses(summary: dict) -> list[str]:
    return [s["status"] for s in summary["stages"]]


def test_stages_run_once_then_skip(tmp_path, capsys) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    first = run(recipe, fake)
    assert statuses(first) == ["ran", "ran", "ran"] and fake.names() == ["corpus", "index", "benchmark"]
    run_dir = tmp_path / "runs" / "t"
    done = json.loads((run_dir / "index" / "done.json").read_text())
    assert done["hash"] == first["stages"][1]["hash"] and done["outputs"]["value"] == "index"
    assert done["deps"] == {"corpus": json.loads((run_dir / "corpus" / "done.json").read_text())["fingerprint"]}
    assert yaml.safe_load((run_dir / "index" / "stage.yaml").read_text())["configs"]["index"]["retriever"] == "bm25"
    assert yaml.safe_load((run_dir / "index" / "config.yaml").read_text())["retriever"] == "bm25"
    second = run(recipe, fake)
    assert statuses(second) == ["skipped"] * 3 and len(fake.calls) == 3
    err = capsys.readouterr().err
    assert "[2/3] index: done in" in err and "[2/3] index: done already" in err  # a progress line per stage
    assert json.loads((run_dir / "run.json").read_text())["stages"][0]["status"] == "skipped"
    assert (run_dir / "provenance.json").is_file() and (run_dir / "recipe.yaml").is_file()


def test_changed_config_reruns_that_stage_and_the_stages_reading_it(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    run(recipe, fake)
    run(write_recipe(tmp_path, index={"retriever": "dense"}), fake)
    assert fake.names()[3:] == ["index", "benchmark"]  # corpus kept
    summary = run(recipe, fake, overrides=["index.rrf_k=10"])  # --set overrides count as config too
    assert statuses(summary) == ["skipped", "ran", "ran"]


def test_force_reruns_one_stage_and_its_dependents(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    run(recipe, fake)
    summary = run(recipe, fake, force=["index"])
    assert statuses(summary) == ["skipped", "ran", "ran"] and fake.names()[3:] == ["index", "benchmark"]
    assert fake.calls[3] == ("index", False)  # forced: from scratch, not resumed
    run_dir = tmp_path / "runs" / "t"
    assert (run_dir / "index" / "partial.txt").read_text() == "x"  # the old stage directory was cleared


def test_unchanged_output_fingerprint_keeps_dependents(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages(random_fingerprint=False)
    run(recipe, fake)
    summary = run(recipe, fake, force=["index"])
    assert statuses(summary) == ["skipped", "ran", "skipped"]


def test_a_stage_reading_one_part_of_a_dependency_skips_when_only_other_parts_change(tmp_path) -> None:
    """Training reads HPO-Dx train only: more evaluation questions re-run the evaluation, not the training."""
    fake = FakeStages()

    def benchmark(ctx) -> dict:
        return dict(fake.execute(ctx), part_fingerprints={"train": f"train-{ctx.configs['train']}"})

    stages = [
        Stage("benchmark", (), lambda plan, inputs: {"n": plan.run.max_questions, "train": plan.data.hpo_dx_train},
              benchmark),
        Stage("sft", ("benchmark",), lambda plan, inputs: {}, fake.execute, reads=pl.TRAIN_ONLY),
        Stage("baselines", ("benchmark",), lambda plan, inputs: {}, fake.execute),
    ]
    recipe = write_recipe(tmp_path)
    assert statuses(pl.run_pipeline(recipe, stages=stages, progress=False)) == ["ran"] * 3
    more = pl.run_pipeline(recipe, stages=stages, progress=False, overrides=["run.max_questions=7"])
    assert statuses(more) == ["ran", "skipped", "ran"]
    sft_done = json.loads((tmp_path / "runs" / "t" / "sft" / "done.json").read_text())
    assert sft_done["deps"] == {"benchmark": "train:train-3000"}
    retrain = pl.run_pipeline(recipe, stages=stages, progress=False,
                              overrides=["run.max_questions=7", "data.hpo_dx_train=50"])
    assert statuses(retrain) == ["ran", "ran", "ran"]


def test_failed_stage_is_not_done_and_resumes(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    fake.fail.add("index")
    with pytest.raises(RuntimeError, match="index broke"):
        run(recipe, fake)
    run_dir = tmp_path / "runs" / "t"
    assert not (run_dir / "index" / "done.json").exists() and (run_dir / "corpus" / "done.json").exists()
    record = json.loads((run_dir / "run.json").read_text())["stages"][-1]
    assert record["status"] == "failed" and "index broke" in record["error"]
    summary = run(recipe, fake)
    assert statuses(summary) == ["skipped", "ran", "ran"]
    assert fake.calls[-2] == ("index", True)  # same hash as the interrupted run: resumed, its files kept
    assert (run_dir / "index" / "partial.txt").read_text() == "xx"


def test_interrupted_stage_with_a_new_config_starts_clean(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    fake.fail.add("index")
    with pytest.raises(RuntimeError):
        run(recipe, fake)
    run(write_recipe(tmp_path, index={"retriever": "hybrid"}), fake)
    assert fake.calls[-2] == ("index", False)
    assert (tmp_path / "runs" / "t" / "index" / "partial.txt").read_text() == "x"


def test_missing_outputs_make_a_stage_run_again(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    run(recipe, fake)
    (tmp_path / "runs" / "t" / "benchmark" / "out.txt").unlink()
    assert statuses(run(recipe, fake)) == ["skipped", "skipped", "ran"]


def test_disabled_stage_and_its_dependents_are_reported(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    stages = fake.stages()
    stages[1] = Stage("index", ("corpus",), stages[1].configure, fake.execute, enabled=lambda plan: False)
    summary = pl.run_pipeline(recipe, stages=stages, progress=False)
    assert statuses(summary) == ["ran", "disabled", "disabled"]
    assert summary["stages"][2]["reason"] == "needs index"


def test_name_option_chooses_the_run_directory(tmp_path) -> None:
    recipe, fake = write_recipe(tmp_path), FakeStages()
    summary = run(recipe, fake, name="other")
    assert summary["run_dir"] == str(tmp_path / "runs" / "other")
    assert (tmp_path / "runs" / "other" / "corpus" / "done.json").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"force": ["bogus"]}, "unknown stage"),
    ({"overrides": ["max_steps=3"]}, "SECTION.KEY=VALUE"),
    ({"overrides": ["nosuch.key=3"]}, "SECTION.KEY=VALUE"),
    ({"overrides": ["run.nosuch=3"]}, "unknown key"),
    ({"name": "a b"}, "run.name"),
    ({"profile": "smoke"}, "not both"),
])
def test_plan_errors(tmp_path, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        pl.make_plan(write_recipe(tmp_path), **kwargs)


def test_unknown_section_and_bad_values(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("run: {name: x}\nsftt: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        pl.make_plan(path)
    with pytest.raises(ConfigError, match="run.baselines"):
        pl.make_plan(write_recipe(tmp_path, run={"baselines": ["cot", "magic"]}))
    with pytest.raises(ConfigError, match="profile"):
        pl.make_plan(profile="huge")


def test_profiles_resolve_to_recipes() -> None:
    assert [pl.profile_recipe(p).name for p in pl.PROFILES] == ["smoke.yaml", "quickstart.yaml", "study.yaml"]


def test_study_profile_sizes_each_dataset() -> None:
    """The study evaluates 500 HPO-Dx questions and 300 real patients; a per-dataset size must name a dataset."""
    plan = pl.make_plan(profile="study")
    assert plan.run.questions_for("hpo-dx:test") == 500 and plan.run.questions_for("phenopackets:") == 300


def test_max_questions_by_dataset_is_checked(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not one of run.datasets"):
        pl.make_plan(write_recipe(tmp_path, run={"max_questions_by_dataset": {"mirage:medqa": 5}}))
    with pytest.raises(ConfigError, match="integer >= 1"):
        pl.make_plan(write_recipe(tmp_path, run={"max_questions_by_dataset": {"hpo-dx:test": 0}}))


@pytest.mark.parametrize("spec, expected", [
    ("hpo-dx:test", "hpo-dx:/b/test.jsonl"),
    ("hpo-dx:train", "hpo-dx:/b/train.jsonl"),
    ("hpo-dx:", "hpo-dx:/b/test.jsonl"),
    ("hpo-dx:/else/dev.jsonl", "hpo-dx:/else/dev.jsonl"),
    ("mirage:medqa", "mirage:medqa"),
])
def test_resolve_spec(spec, expected) -> None:
    assert pl.resolve_spec(spec, "/b") == expected


@pytest.mark.parametrize("spec, key", [
    ("hpo-dx:test", "hpo-dx-test"), ("phenopackets:", "phenopackets"), ("mirage:medqa", "mirage-medqa"),
    ("jsonl:/data/my set.jsonl", "jsonl-my-set"), ("phenopackets:/x/cohorts", "phenopackets-cohorts"),
    ("mirage:medqa@/x/benchmark.json", "mirage-medqa"),
])
def test_dataset_key(spec, key) -> None:
    assert pl.dataset_key(spec) == key


def test_sample_questions_is_seeded_and_keeps_order() -> None:
    items = list(range(100))
    a = pl.sample_questions(items, 10, 0, "s")
    assert a == sorted(a) and len(a) == 10 and a == pl.sample_questions(items, 10, 0, "s")
    assert a != pl.sample_questions(items, 10, 1, "s")
    assert pl.sample_questions(items, None, 0, "s") == items and pl.sample_questions(items[:5], 10, 0, "s") == items[:5]


def test_real_stage_configs_agree_across_sections(tmp_path) -> None:
    recipe = write_recipe(tmp_path, run={"model": "m0", "seed": 3, "baselines": ["cot", "bm25-ranker"]},
                          rollout={"max_turns": 2, "topk": 5}, eval={"model": "ignored"},
                          sft={"trace_data": ["hpo-dx:train"], "explanation_data": ["hpo-dx:train", "mirage:medqa"]},
                          grpo={"train_data": ["hpo-dx:train"], "max_steps": 3})
    plan = pl.make_plan(recipe)
    inputs = {"index": {"index_dir": "/idx"}, "benchmark": {"hpo_dx_dir": "/b", "datasets": [
        {"key": "hpo-dx-test", "status": "ok", "path": "/b/hpo-dx-test.jsonl"},
        {"key": "phenopackets", "status": "unavailable"}]}, "sft": {"final_model": "/run/sft/final"}}
    evals = pl.configure_eval("baselines")(plan, inputs)
    assert sorted(evals) == ["bm25-ranker/hpo-dx-test", "cot/hpo-dx-test"]
    cot = evals["cot/hpo-dx-test"]
    assert (cot.model, cot.index, cot.seed, cot.max_turns, cot.topk) == ("m0", "/idx", 3, 2, 5)
    assert cot.data == "jsonl:/b/hpo-dx-test.jsonl" and cot.out.endswith("runs/t/baselines/cot/hpo-dx-test")
    assert pl.configure_eval("eval-sft")(plan, inputs)["self-ask/hpo-dx-test"].model == "/run/sft/final"
    sft = pl.configure_sft(plan, inputs)["sft"]
    assert sft.model == "m0" and sft.trace_data == ["hpo-dx:/b/train.jsonl"]
    assert sft.explanation_data == ["hpo-dx:/b/train.jsonl", "mirage:medqa"] and sft.output_dir.endswith("t/sft")
    rag, cot_arm = pl.configure_grpo("grpo")(plan, inputs)["grpo"], pl.configure_grpo("grpo-cot")(plan, inputs)["grpo"]
    assert (rag.model, rag.use_retrieval, cot_arm.use_retrieval) == ("/run/sft/final", True, False)
    assert rag.max_steps == cot_arm.max_steps == 3 and cot_arm.output_dir.endswith("t/grpo-cot")
    assert pl.configure_grpo("grpo")(plan, {k: v for k, v in inputs.items() if k != "sft"})["grpo"].model == "m0"


def test_the_rotation_stage_shifts_the_last_self_ask_model_s_options(tmp_path) -> None:
    """run.rotation: the GRPO model when GRPO ran, else the SFT one, else the untrained one; self-ask, `rotate=1`,
    only on the datasets named (which must be the run's)."""
    plan = pl.make_plan(write_recipe(tmp_path, run={"model": "m0", "optional_datasets": ["phenopackets:"],
                                                    "rotation": ["hpo-dx:test"]}))
    benchmark = {"datasets": [
        {"key": "hpo-dx-test", "spec": "hpo-dx:test", "status": "ok", "path": "/b/hpo-dx-test.jsonl"},
        {"key": "phenopackets", "spec": "phenopackets:", "status": "ok", "path": "/b/phenopackets.jsonl"}]}
    inputs = {"index": {"index_dir": "/idx"}, "benchmark": benchmark}
    for extra, model in (({}, "m0"), ({"sft": {"final_model": "/s"}}, "/s"),
                         ({"sft": {"final_model": "/s"}, "grpo": {"final_model": "/g"}}, "/g")):
        configs = pl.configure_rotation(plan, {**inputs, **extra})
        assert list(configs) == ["self-ask/hpo-dx-test"]
        cfg = configs["self-ask/hpo-dx-test"]
        assert (cfg.model, cfg.method, cfg.rotate, cfg.index) == (model, "self-ask", 1, "/idx")
        assert cfg.out.endswith("runs/t/rotation/self-ask/hpo-dx-test") and cfg.limit is None
    with pytest.raises(ConfigError, match="run.rotation: 'mirage:medqa' is not one of run.datasets"):
        pl.make_plan(write_recipe(tmp_path, run={"rotation": ["mirage:medqa"]}))
    # run.rotation_limit: the first N questions only; the shifted eval's config says so
    limited = pl.make_plan(write_recipe(tmp_path, run={"rotation": ["hpo-dx:test"], "rotation_limit": 200}))
    assert pl.configure_rotation(limited, inputs)["self-ask/hpo-dx-test"].limit == 200
    with pytest.raises(ConfigError, match="run.rotation_limit must be >= 1"):
        pl.make_plan(write_recipe(tmp_path, run={"rotation": ["hpo-dx:test"], "rotation_limit": 0}))


def _stage_configs(plan) -> dict[str, object]:
    inputs = {"index": {"index_dir": "/idx"}, "benchmark": {"hpo_dx_dir": "/b", "datasets": [
        {"key": "hpo-dx-test", "status": "ok", "path": "/b/hpo-dx-test.jsonl"},
        {"key": "phenopackets", "status": "ok", "path": "/b/phenopackets.jsonl"}]}, "sft": {"final_model": "/f"},
        "grpo": {"final_model": "/g"}, "grpo-cot": {"final_model": "/c"}}
    configs = {"sft": pl.configure_sft(plan, inputs)["sft"]}
    for stage in ("grpo", "grpo-cot"):
        configs[stage] = pl.configure_grpo(stage)(plan, inputs)["grpo"]
    for stage in ("baselines", "eval-sft", "eval-grpo", "eval-grpo-cot"):
        configs.update({f"{stage}/{k}": c for k, c in pl.configure_eval(stage)(plan, inputs).items()})
    return configs


@pytest.mark.parametrize("profile", ["smoke", "quickstart"])
def test_every_stage_receives_the_same_budget(profile) -> None:
    from medr1.evaluate import rollout_config
    from medr1.rollout import Budget, for_method
    from medr1.train.grpo import rollout_config as grpo_rollout

    # the cot baseline too (the quickstart leaves it out to fit 30 minutes)
    plan = pl.make_plan(profile=profile, overrides=["rollout.max_info_tokens=99",
                                                    "run.baselines=cot,self-ask,bm25-ranker"])
    recipe = yaml.safe_load(pl.profile_recipe(profile).read_text())
    shared = Budget(**{**recipe["rollout"], "max_info_tokens": 99})
    configs = _stage_configs(plan)
    # sft, 2 GRPO arms, and on each of 2 datasets: the baselines, SFT and SFT+RAG, GRPO+RAG, GRPO
    assert len(configs) == 3 + 2 * (len(plan.run.baselines) + 2 + 1 + 1)
    for name, cfg in configs.items():
        assert cfg.budget == shared, name
    # the comparability rule: searching methods get the turns, the others one turn with the whole budget
    one_turn = for_method(shared, False)
    assert (one_turn.max_turns, one_turn.max_new_tokens_per_turn) == (1, shared.single_turn_tokens())
    assert grpo_rollout(configs["grpo-cot"]).budget == one_turn.budget
    assert grpo_rollout(configs["grpo"]).budget == shared
    assert rollout_config(configs["baselines/cot/hpo-dx-test"], 0, single_turn=True).budget == one_turn.budget
    assert rollout_config(configs["eval-sft/self-ask/hpo-dx-test"], 0, single_turn=False).budget == shared


def test_budgets_are_refused_outside_the_rollout_section(tmp_path) -> None:
    recipe = write_recipe(tmp_path, eval={"max_turns": 2})
    plan = pl.make_plan(recipe)
    with pytest.raises(ConfigError, match=r"\[eval\]: \['max_turns'\] belong in the rollout: section"):
        _stage_configs(plan)
    with pytest.raises(ConfigError, match="set rollout.topk instead"):
        _stage_configs(pl.make_plan(write_recipe(tmp_path), overrides=["grpo.topk=4"]))
    with pytest.raises(ConfigError, match=r"\[rollout\]: unknown key\(s\) \['batch_size'\]"):
        _stage_configs(pl.make_plan(write_recipe(tmp_path, rollout={"batch_size": 4})))


def test_real_stages_on_a_tiny_setup(tmp_path, monkeypatch) -> None:
    """corpus -> index -> benchmark -> baselines (cot with a tiny random Llama, bm25-ranker) -> report; then a
    re-run skips everything but the report. Training stages are disabled here (the slow smoke test covers them)."""
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path / "home"))
    recipe = write_recipe(
        tmp_path,
        run={"model": "tiny-random-llama", "max_questions": 5, "max_questions_by_dataset": {"hpo-dx:test": 3},
             "baselines": ["cot", "self-ask", "bm25-ranker"], "sft": False, "rotation": ["hpo-dx:test"],
             "grpo": False, "grpo_cot": False, "optional_datasets": ["mirage:medqa@/nonexistent/benchmark.json"]},
        data={"corpus": f"jsonl:{tmp_path / 'chunks.jsonl'}", "hpo_dx_train": 5, "hpo_dx_dev": 2, "hpo_dx_test": 6},
        rollout={"max_new_tokens_per_turn": 8, "max_total_tokens": 16}, eval={"device": "cpu", "batch_size": 4},
    )
    chunks = [json.loads(line) for line in FIXTURE_DOCS.read_text().splitlines() if line.strip()]
    (tmp_path / "chunks.jsonl").write_text("".join(
        json.dumps({"id": c["id"], "title": c["title"], "content": c["text"]}) + "\n" for c in chunks))
    summary = pl.run_pipeline(recipe, progress=False)
    assert statuses(summary) == ["ran", "ran", "ran", "ran", "disabled", "disabled", "disabled", "disabled",
                                 "disabled", "disabled", "ran", "disabled", "ran"]
    run_dir = tmp_path / "runs" / "t"
    datasets = json.loads((run_dir / "benchmark" / "datasets.json").read_text())
    assert [(d["key"], d["status"]) for d in datasets] == [("hpo-dx-test", "ok"), ("mirage-medqa", "unavailable")]
    assert datasets[0]["n"] == 3 and datasets[0]["available"] == 6  # its own size, not max_questions
    for method in ("cot", "self-ask", "bm25-ranker"):
        metrics = json.loads((run_dir / "baselines" / method / "hpo-dx-test" / "metrics.json").read_text())
        assert metrics["n"] == 3 and metrics["method"] == method
        # the RAGAS columns (`medr1 ragas`, non-LLM without a judge) of every retrieving eval only
        assert ("ragas_id_recall" in metrics) == (method != "cot")
    # the rotation stage: the untrained self-ask again with the options shifted, paired with it in the report
    rotated = [json.loads(line) for line in (run_dir / "rotation" / "self-ask" / "hpo-dx-test" / "samples.jsonl")
               .read_text().splitlines()]
    plain = [json.loads(line) for line in (run_dir / "baselines" / "self-ask" / "hpo-dx-test" / "samples.jsonl")
             .read_text().splitlines()]
    assert [r["id"] for r in rotated] == [p["id"] for p in plain]
    for p, r in zip(plain, rotated):
        letters = sorted(p["options"])
        assert [r["options"][letters[(i + 1) % len(letters)]] for i in range(len(letters))] == \
            [p["options"][k] for k in letters]
    md = (run_dir / "report.md").read_text()
    assert "## Position bias" in md and "- HPO-Dx test (n=3), baseline self-ask: " in md
    assert "ragas ID precision" in md
    assert "| baseline cot | 0.0% [0.0–56.2]" in md and "| SFT | not run |" in md
    assert "MIRAGE medqa: not run (mirage:medqa@/nonexistent/benchmark.json: file not found" in md
    again = pl.run_pipeline(recipe, progress=False)
    assert statuses(again)[:4] == ["skipped"] * 4 and statuses(again)[-1] == "ran"


def test_the_open_stage_ranks_and_names_the_run_s_real_patients(tmp_path, monkeypatch) -> None:
    """run.open_methods: a ranker once and an LLM open method with the untrained model (no SFT here) on the run's
    phenopacket sample; the report gets the open table (unseen publication first) and the paired top-1 line."""
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path / "home"))
    fixture = Path(__file__).parent / "fixtures" / "phenopackets"
    recipe = write_recipe(
        tmp_path,
        run={"model": "tiny-random-llama", "datasets": [f"phenopackets:{fixture}"], "baselines": ["bm25-ranker"],
             "sft": False, "grpo": False, "grpo_cot": False, "open_methods": ["bm25", "self-ask-open"]},
        data={"corpus": f"jsonl:{tmp_path / 'chunks.jsonl'}", "hpo_dx_train": 5, "hpo_dx_dev": 2, "hpo_dx_test": 6},
        rollout={"max_new_tokens_per_turn": 8, "max_total_tokens": 16, "answer_tokens": 4},
        eval={"device": "cpu", "batch_size": 4},
    )
    chunks = [json.loads(line) for line in FIXTURE_DOCS.read_text().splitlines() if line.strip()]
    (tmp_path / "chunks.jsonl").write_text("".join(
        json.dumps({"id": c["id"], "title": c["title"], "content": c["text"]}) + "\n" for c in chunks))
    summary = pl.run_pipeline(recipe, progress=False)
    by_stage = {s["stage"]: s["status"] for s in summary["stages"]}
    assert by_stage["open"] == "ran" and by_stage["sft"] == "disabled"
    run_dir = tmp_path / "runs" / "t"
    named = json.loads((run_dir / "open" / "baseline-self-ask-open" / "phenopackets-phenopackets" / "metrics.json").read_text())
    assert named["single_answer"] and sum(named["normalized"].values()) == 2  # both fixture cases, each counted
    cfg = yaml.safe_load((run_dir / "open" / "baseline-self-ask-open" / "phenopackets-phenopackets" / "answers" /
                          "config.yaml").read_text())
    assert (cfg["max_total_tokens"], cfg["answer_tokens"], cfg["method"]) == (16, 4, "self-ask")  # the one budget
    ranked = json.loads((run_dir / "open" / "bm25" / "phenopackets-phenopackets" / "metrics.json").read_text())
    assert ranked["subsets"]["disease in KB"]["n"] == 2 and ranked["method"] == "bm25"
    md = (run_dir / "report.md").read_text()
    assert "## Open-ended diagnosis of the real patients" in md
    assert "| method | dataset | unseen-publication (n) | seen-publication (n)" in md
    assert "| bm25 | phenopackets-phenopackets | not run (0) |" in md  # the fixture cases cite no publication
    assert "| baseline self-ask-open | phenopackets-phenopackets | " in md
    assert "phenopackets-phenopackets: baseline self-ask-open − bm25, top-1: all " in md
    assert "baseline self-ask-open named diagnoses normalized by route: exact name" in md
    again = pl.run_pipeline(recipe, progress=False)
    assert {s["stage"]: s["status"] for s in again["stages"]}["open"] == "skipped"


@pytest.mark.slow
def test_smoke_profile_end_to_end(tmp_path, monkeypatch) -> None:
    """`medr1 run --profile smoke`: every stage with the tiny model (its speed is reported by the run, not asserted)."""
    from typer.testing import CliRunner

    from medr1.cli import app

    monkeypatch.setenv("MEDR1_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["run", "--profile", "smoke", "--quiet", "--set",
                                      f"run.runs_dir={tmp_path / 'runs'}"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "smoke"
    summary = json.loads((run_dir / "run.json").read_text())
    statuses = {s["stage"]: s["status"] for s in summary["stages"]}
    assert statuses.pop("open") == "disabled"  # the smoke recipe names no open methods
    assert set(statuses.values()) == {"ran"}, statuses
    md = (run_dir / "report.md").read_text()
    for row in ("baseline cot", "baseline rag", "baseline self-ask", "SFT", "SFT+RAG", "GRPO", "GRPO+RAG",
                "bm25-ranker"):
        assert f"| {row} | " in md and f"| {row} | not run |" not in md
    assert "grpo_curves.png" in md and (run_dir / "report_files" / "grpo_curves.png").is_file()


def test_every_index_build_option_can_be_set_in_a_recipe(tmp_path) -> None:
    recipe = write_recipe(tmp_path, index={"retriever": "hybrid", "rrf_k": 20, "dense_weight": 0.3, "k1": 1.2,
                                           "dense_index": "/idx/dense"})
    cfg = pl.configure_index(pl.make_plan(recipe), {})["index"]
    args = cfg.build_args()
    assert (args["hybrid"].rrf_k, args["hybrid"].dense_weight, args["hybrid"].bm25_weight) == (20, 0.3, 1.0)
    assert (args["bm25"].k1, args["bm25"].b, args["dense_index"], args["embedder"]) == (1.2, 0.4, "/idx/dense", None)
    with pytest.raises(ConfigError, match="index.retriever must be one of bm25, dense, hybrid"):
        pl.make_plan(write_recipe(tmp_path, index={"retriever": "splade"}))
