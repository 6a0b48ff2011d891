"""Kill and resume with real processes: `medr1 eval`, `medr1 sft` and `medr1 grpo` on the tiny random Llama are
SIGKILLed at a point the test chooses (a number of samples written, a checkpoint saved), run again with the same
command, and must end exactly where an uninterrupted run ends: the same samples, the same step count, the same
weights. `medr1 run --profile smoke` killed inside its SFT stage re-runs that stage (resumed) and what follows it,
nothing before it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def write_questions(path: Path, n: int) -> str:
    """n small training-split questions with explanations (ids q000...), as a jsonl: source spec."""
    rows = []
    for i in range(n):
        rows.append({"id": f"q{i:03d}", "question": f"Case {i}: tall stature, ectopia lentis, arachnodactyly.",
                     "options": {"A": "Homocystinuria", "B": "Marfan syndrome", "C": "Stickler syndrome",
                                 "D": "Ehlers-Danlos syndrome"},
                     "answer": "ABCD"[i % 4], "explanation": "Marfan syndrome: tall stature, ectopia lentis.",
                     "split": "train", "source": "kill-test"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f"jsonl:{path}"


def medr1(*args: str) -> list[str]:
    return [sys.executable, "-m", "medr1.cli", *args]


def kill_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 240, env: dict | None = None) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; fail if it ends (or times out) before that."""
    proc = subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"finished before the kill point (rc {proc.returncode}): {proc.stderr.read()[-2000:]!r}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the kill point was not reached in time")


def run_ok(cmd: list[str], env: dict | None = None) -> str:
    """Run `cmd` to the end; its stderr (where progress and stage lines go)."""
    done = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def samples(out: Path) -> list[dict]:
    keep = ("id", "completion", "prediction", "correct", "queries", "finish_reason", "n_generated", "turns")
    return [{k: json.loads(line)[k] for k in keep} for line in (out / "samples.jsonl").read_text().splitlines()]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_eval_killed_mid_run_resumes_to_the_same_samples(tmp_path):
    spec = write_questions(tmp_path / "q.jsonl", 48)
    args = ["eval", "--model", "tiny-random-llama", "--data", spec, "--method", "cot", "-q",
            "max_new_tokens_per_turn=24", "max_total_tokens=24", "batch_size=1", "device=cpu"]
    run_ok(medr1(*args, "--out", str(tmp_path / "whole")))
    split = tmp_path / "split"
    kill_when(medr1(*args, "--out", str(split)), lambda: lines(split / "samples.jsonl") >= 5)
    assert 5 <= lines(split / "samples.jsonl") < 48 and not (split / "metrics.json").exists()
    run_ok(medr1(*args, "--out", str(split)))
    assert samples(split) == samples(tmp_path / "whole")
    assert json.loads((split / "metrics.json").read_text())["n"] == 48


def _train_args(stage: str, spec: str, out: Path) -> list[str]:
    common = ["--config", str(RECIPE), f"output_dir={out}", "max_steps=4", "save_steps=1", "learning_rate=1e-2"]
    if stage == "sft":
        return ["sft", *common, f"explanation_data={spec}", "trace_data=", "per_device_train_batch_size=2"]
    return ["grpo", *common, "model=tiny-random-llama", f"train_data={spec}", "use_retrieval=false"]


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_training_killed_after_a_checkpoint_resumes_to_the_same_model(tmp_path, stage):
    """Killed once checkpoint-2 is saved; `--resume` continues at step 3 and ends with the weights of a run never
    killed (which also means the optimizer state and the data position came back)."""
    spec = write_questions(tmp_path / "q.jsonl", 16)
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_ok(medr1(*_train_args(stage, spec, whole)))
    kill_when(medr1(*_train_args(stage, spec, split)), lambda: (split / "checkpoint-2" / "trainer_state.json").is_file()
              and lines(split / "metrics.jsonl") >= 2)
    assert not (split / "final").exists()
    run_ok(medr1(*_train_args(stage, spec, split), "--resume"))
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert same_weights(split / "final", whole / "final")


def test_an_incomplete_checkpoint_is_passed_over(tmp_path, capsys):
    """A kill while the trainer saves leaves checkpoint-N without a readable trainer_state.json (written last):
    resuming from it would fail, so the newest complete one is used (checkpoint-10 is newer than checkpoint-2)."""
    from medr1.train.common import last_checkpoint

    for n, complete in ((1, True), (2, True), (10, False)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "trainer_state.json").write_text('{"global_step": %d}' % n if complete else '{"global_st')
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-10 is incomplete" in capsys.readouterr().err
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10}')
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(tmp_path / "missing") is None


def test_pipeline_killed_in_its_sft_stage_reruns_only_that_stage_and_what_follows(tmp_path):
    env = {**ENV, "MEDR1_HOME": str(tmp_path / "home")}
    run_dir = tmp_path / "runs" / "smoke"
    sets = [f"run.runs_dir={tmp_path / 'runs'}", "run.baselines=bm25-ranker", "run.grpo=false",
            "run.grpo_cot=false", "sft.max_steps=4", "sft.save_steps=1"]
    cmd = medr1("run", "--profile", "smoke", "--quiet", *[a for s in sets for a in ("--set", s)])
    sft_dir = run_dir / "sft"
    kill_when(cmd, lambda: (sft_dir / "checkpoint-2" / "trainer_state.json").is_file()
              and lines(sft_dir / "metrics.jsonl") >= 2, env=env)
    first = [json.loads((run_dir / s / "done.json").read_text())["hash"]
             for s in ("corpus", "index", "benchmark", "baselines")]
    assert not (sft_dir / "done.json").exists() and not (sft_dir / "final").exists()
    err = run_ok(cmd, env=env)
    stages = {s["stage"]: s for s in json.loads((run_dir / "run.json").read_text())["stages"]}
    assert [stages[s]["status"] for s in ("corpus", "index", "benchmark", "baselines")] == ["skipped"] * 4
    assert [stages[s]["hash"] for s in ("corpus", "index", "benchmark", "baselines")] == first
    assert [stages[s]["status"] for s in ("sft", "eval-sft", "report")] == ["ran"] * 3
    assert {stages[s]["status"] for s in ("grpo", "grpo-cot", "eval-grpo", "eval-grpo-cot")} == {"disabled"}
    said = [line for line in err.splitlines() if "sft" in line]
    assert any("sft: resuming" in line for line in said) and any("from" in line and "checkpoint-2" in line
                                                                 for line in said), said
    steps = [json.loads(line)["step"] for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # continued from the checkpoint, not restarted
    assert stages["sft"]["peak_rss_mb"] > 0
    assert json.loads((run_dir / "eval-sft" / "done.json").read_text())["outputs"]
