"""The command line as a user meets it: every command's --help shows at least one example, and --dry-run builds a
training plan without loading any weights."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from medr1.cli import app


def command_paths(group=None, prefix=()):
    """Every leaf command of the CLI as its argv path, e.g. ("index", "build")."""
    group = group or get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from command_paths(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


PATHS = list(command_paths())


def test_the_cli_has_the_commands_the_readme_lists():
    assert {("eval",), ("compare",), ("open-eval",), ("run",), ("sft",), ("grpo",), ("index", "build")} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_command_help_shows_an_example(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example: medr1 " in result.output, f"`medr1 {' '.join(path)} --help` shows no example"


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_dry_run_loads_no_weights(tmp_path, monkeypatch, stage):
    """The plan resolves data, configs and TRL arguments; loading a model would raise here."""
    from pathlib import Path

    from medr1 import models

    def no_weights(*args, **kw):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(models, "load_model", no_weights)
    monkeypatch.setattr(models, "tiny_random_llama", no_weights)
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": "q1", "question": "Case: tall stature.", "options": {"A": "Marfan syndrome", "B": "Homo'
                    'cystinuria"}, "answer": "A", "explanation": "Marfan syndrome: tall stature.", "split": "train"}\n')
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
    keys = ([f"explanation_data=jsonl:{data}", "trace_data="] if stage == "sft"
            else [f"train_data=jsonl:{data}", "use_retrieval=false", "model=tiny-random-llama"])
    result = CliRunner().invoke(app, [stage, "--config", str(recipe), "--dry-run", f"output_dir={tmp_path / 'o'}",
                                      *keys])
    assert result.exit_code == 0, result.output
    assert "trl_args" in result.output and not (tmp_path / "o" / "final").exists()
