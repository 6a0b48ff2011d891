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


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_serve_retriever_warns_when_it_binds_beyond_loopback(monkeypatch, host, warned):
    """Loopback is quiet; any other interface is named in a warning before the server starts (no authentication)."""
    import medr1.retrieval
    import medr1.retrieval.service

    served = {}

    class Index:
        kind, num_docs = "bm25", 3

    monkeypatch.setattr(medr1.retrieval, "open_retriever", lambda index: Index())
    monkeypatch.setattr(medr1.retrieval.service, "serve", lambda retriever, **kw: served.update(kw))
    result = CliRunner().invoke(app, ["serve-retriever", "--host", host, "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served["host"] == host and served["port"] == 8123
    warning = f"warning: binding {host}: the retriever is reachable from other machines"
    assert (warning in result.output) is warned
    assert f"serving bm25 index over 3 documents at http://{host}:8123/retrieve" in result.output


def test_a_list_override_reads_commas_and_yaml_brackets():
    from medr1.config import coerce_values

    hints = {"data": list[str]}
    assert coerce_values({"data": "[jsonl:a.jsonl, hpo-dx:train]"}, hints) == {"data": ["jsonl:a.jsonl", "hpo-dx:train"]}
    assert coerce_values({"data": "jsonl:a.jsonl,hpo-dx:train"}, hints) == {"data": ["jsonl:a.jsonl", "hpo-dx:train"]}
    assert coerce_values({"data": "[]"}, hints) == {"data": []}
