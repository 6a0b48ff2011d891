"""`medr1 export verl`: the parquet rows read back in verl's documented RL dataset schema, the reward module pays
as medr1's rewards do, the tool config points at the retriever, test splits are refused.

    pytest tests/test_export_verl.py -q
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from medr1.errors import DataError
from medr1.export_verl import VerlExport, export_verl
from medr1.io import atomic_write_jsonl

QUESTIONS = [
    {"id": f"t{i}", "question": f"Case {i}: tall stature, arachnodactyly.", "options": {"A": "Stickler syndrome",
     "B": "Marfan syndrome", "C": "Homocystinuria", "D": "Ehlers-Danlos syndrome"}, "answer": "ABCD"[i % 4],
     "source": "hpo-dx", "split": "train", "gold_doc_ids": [f"OMIM:{i}"]}
    for i in range(6)
]


@pytest.fixture
def exported(tmp_path):
    atomic_write_jsonl(tmp_path / "train.jsonl", QUESTIONS)
    atomic_write_jsonl(tmp_path / "dev.jsonl", [{**q, "id": "d" + q["id"], "split": "dev"} for q in QUESTIONS[:2]])
    out = tmp_path / "verl"
    record = export_verl(VerlExport(data=f"jsonl:{tmp_path / 'train.jsonl'}", val=f"jsonl:{tmp_path / 'dev.jsonl'}",
                                    out=str(out), retriever_url="http://10.0.0.5:8000/retrieve"))
    return out, record


def test_the_parquet_has_verl_s_schema(exported) -> None:
    import pyarrow.parquet as pq

    out, record = exported
    table = pq.read_table(out / "train.parquet")
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    rows = table.to_pylist()
    assert len(rows) == 6 and record["files"]["train.parquet"]["rows"] == 6
    assert record["files"]["val.parquet"]["rows"] == 2
    first = rows[1]
    assert first["data_source"] == "medr1/hpo-dx" and first["ability"] == "medical-diagnosis"
    assert first["reward_model"] == {"style": "rule", "ground_truth": "B"}
    assert first["prompt"][-1]["role"] == "user" and "<search>" in "".join(m["content"] for m in first["prompt"])
    assert "B. Marfan syndrome" in first["prompt"][-1]["content"]
    info = first["extra_info"]
    assert info["index"] == 1 and info["split"] == "train" and info["question_id"] == "t1"
    assert info["letters"] == "ABCD" and info["option_texts"][1] == "Marfan syndrome"
    assert info["gold_doc_ids"] == ["OMIM:1"]


def test_the_reward_module_pays_as_medr1_does(exported) -> None:
    out, _ = exported
    spec = importlib.util.spec_from_file_location("medr1_reward", out / "medr1_reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    info = {"letters": "ABCD", "option_texts": ["Stickler syndrome", "Marfan syndrome", "Homocystinuria", "EDS"]}
    right = "<think>fits</think>\n<answer>Marfan syndrome (B)</answer>"
    wrong = "<think>fits</think>\n<answer>A</answer>"
    assert module.compute_score("medr1/hpo-dx", right, "B", info) == pytest.approx(1.2)
    assert module.compute_score("medr1/hpo-dx", wrong, "B", info) == pytest.approx(0.2)
    assert module.compute_score("medr1/hpo-dx", "The answer is B.", "B", info) < 0.2


def test_tool_module_and_scripts_point_at_the_export(exported) -> None:
    out, _ = exported
    tool = (out / "medr1_search_tool.py").read_text()
    assert "RETRIEVER_URL = 'http://10.0.0.5:8000/retrieve'" in tool and "TOPK = 3" in tool
    assert '@function_tool("search")' in tool and "def search(query_list: list[str]) -> str:" in tool
    compile(tool, "medr1_search_tool.py", "exec")
    ppo, grpo = (out / "run_ppo.sh").read_text(), (out / "run_grpo.sh").read_text()
    assert "algorithm.adv_estimator=gae" in ppo and "critic.model.path" in ppo
    assert "algorithm.adv_estimator=grpo" in grpo and "critic.model.path" not in grpo
    for name, script in (("run_ppo.sh", ppo), ("run_grpo.sh", grpo)):
        assert 'reward.custom_reward_function.path="$HERE/medr1_reward.py"' in script and "val.parquet" in script
        assert 'multi_turn.function_tool_path="$HERE/medr1_search_tool.py"' in script
        assert subprocess.run(["bash", "-n", str(out / name)], capture_output=True).returncode == 0
    assert json.loads((out / "export.json").read_text())["retriever_url"] == "http://10.0.0.5:8000/retrieve"


def test_the_search_tool_asks_medr1_s_service_and_shows_results_as_the_rollout_does(tmp_path) -> None:
    """`verl_search` (what the tool module calls) against a real `medr1 serve-retriever` app over the fixture
    corpus: one `<information>` block per query, numbered `Doc N (Title: ...)` lines; a dead service is text."""
    import shutil
    from pathlib import Path

    from helpers import free_port, serving_app

    from medr1.export_verl import verl_search
    from medr1.retrieval.index import build_index, load_index
    from medr1.retrieval.service import create_app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "retrieval" / "docs.jsonl", corpus / "docs.jsonl")
    index = load_index(build_index(corpus, "bm25", tmp_path / "bm25", show_progress=False))
    with serving_app(create_app(index)) as base:
        text = verl_search(["Kayser-Fleischer rings tremor", "seizures"], f"{base}/retrieve", 2)
    blocks = text.split("</information>")
    assert text.count("<information>") == 2 and "Doc 1 (Title: Wilson disease)" in blocks[0]
    assert "Doc 2 (Title:" in blocks[0] and "Doc 3" not in text
    assert verl_search(["  "], f"{base}/retrieve", 2).startswith("No query given")
    dead = verl_search(["seizures"], f"http://127.0.0.1:{free_port()}/retrieve", 2)
    assert dead.startswith("Search failed:") and "attempts" in dead


def test_a_test_split_is_refused(tmp_path) -> None:
    atomic_write_jsonl(tmp_path / "q.jsonl", [{**QUESTIONS[0], "split": "test"}])
    with pytest.raises(DataError, match="'t0' is from a test split"):
        export_verl(VerlExport(data=f"jsonl:{tmp_path / 'q.jsonl'}", out=str(tmp_path / "o")))
