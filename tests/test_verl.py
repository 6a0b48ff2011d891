"""`medr1 export verl` read back by verl's own code (verl 0.9.1): its Hydra config composed with the launch scripts'
overrides, its RL dataset class over the parquet, its loader of custom reward functions, and its function-tool
loader over the search tool, whose call reaches a retrieval service. Skipped where verl is not installed; `make
verl-test` builds the separate environment verl needs (it pins transformers < 5.11) and runs this file.

    make verl-test
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed (make verl-test builds an environment with verl 0.9.1)")

from test_export_verl import QUESTIONS  # noqa: E402

from medr1.export_verl import VerlExport, export_verl  # noqa: E402
from medr1.io import atomic_write_jsonl  # noqa: E402


class Retrieve(BaseHTTPRequestHandler):
    """Search-R1's /retrieve contract, as `medr1 serve-retriever` answers it: one list of scored documents per
    query. It records the requests it gets."""

    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Retrieve.seen.append(body)
        docs = [{"document": {"id": "OMIM:154700", "contents": "Marfan syndrome\nTall stature, arachnodactyly."},
                 "score": 9.5}] * body["topk"]
        data = json.dumps({"result": [docs for _ in body["queries"]]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Retrieve)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/retrieve"
    server.shutdown()


@pytest.fixture
def exported(tmp_path, served):
    atomic_write_jsonl(tmp_path / "train.jsonl", QUESTIONS)
    atomic_write_jsonl(tmp_path / "dev.jsonl", [{**q, "id": "d" + q["id"], "split": "dev"} for q in QUESTIONS[:2]])
    out = tmp_path / "verl"
    export_verl(VerlExport(data=f"jsonl:{tmp_path / 'train.jsonl'}", val=f"jsonl:{tmp_path / 'dev.jsonl'}",
                           out=str(out), retriever_url=served, topk=2))
    return out


def script_overrides(script: Path) -> list[str]:
    """The Hydra overrides a launch script passes to verl.trainer.main_ppo, with its shell variables filled in."""
    text = script.read_text().split("verl.trainer.main_ppo", 1)[1]
    values = {"HERE": str(script.parent), "MODEL": "some/model", "N_GPUS": "8"}
    out = []
    for line in text.splitlines():
        line = line.strip().removesuffix("\\").replace('"$@"', "").strip()
        if "=" in line:
            out.append(re.sub(r'"?\$(\w+)"?', lambda m: values[m.group(1)], line).replace('"', ""))
    return out


def composed(script: Path):
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=script_overrides(script))


@pytest.mark.parametrize("script", ["run_ppo.sh", "run_grpo.sh"])
def test_verl_composes_the_launch_scripts_and_finds_medr1_s_files(exported, script) -> None:
    cfg = composed(exported / script)
    assert cfg.algorithm.adv_estimator == ("gae" if script == "run_ppo.sh" else "grpo")
    assert cfg.reward.custom_reward_function.path == str(exported / "medr1_reward.py")
    assert cfg.reward.custom_reward_function.name == "compute_score"
    turn = cfg.actor_rollout_ref.rollout.multi_turn
    assert turn.enable and turn.function_tool_path == str(exported / "medr1_search_tool.py")
    assert cfg.data.function_tool_path == turn.function_tool_path  # the dataset's length filter sees the tool too
    assert cfg.data.train_files == str(exported / "train.parquet")
    assert cfg.data.val_files == str(exported / "val.parquet")


def test_verl_s_reward_loader_pays_as_medr1_does(exported) -> None:
    from verl.trainer.ppo.reward import get_custom_reward_fn

    score = get_custom_reward_fn(composed(exported / "run_grpo.sh"))
    info = {"letters": "ABCD", "option_texts": ["Stickler syndrome", "Marfan syndrome", "Homocystinuria", "EDS"]}
    right = "<think>fits</think>\n<answer>Marfan syndrome (B)</answer>"
    assert score(data_source="medr1/hpo-dx", solution_str=right, ground_truth="B", extra_info=info) == pytest.approx(1.2)
    assert score(data_source="medr1/hpo-dx", solution_str="<think>x</think>\n<answer>A</answer>", ground_truth="B",
                 extra_info=info) == pytest.approx(0.2)


def test_verl_s_tool_loader_registers_the_search_and_it_reaches_the_service(exported) -> None:
    import asyncio

    from verl.tools.tool_registry import load_all_tools

    (tool,) = load_all_tools(tool_config_path=None, function_tool_path=str(exported / "medr1_search_tool.py"))
    schema = tool.tool_schema.model_dump(exclude_none=True)
    assert tool.name == "search" and schema["function"]["name"] == "search"
    assert schema["function"]["parameters"]["required"] == ["query_list"]
    assert schema["function"]["parameters"]["properties"]["query_list"]["type"] == "array"
    Retrieve.seen.clear()
    text = asyncio.run(tool.call({"query_list": ["tall stature arachnodactyly", "aortic root dilatation"]}))
    assert Retrieve.seen == [{"queries": ["tall stature arachnodactyly", "aortic root dilatation"], "topk": 2,
                              "return_scores": True}]
    assert text.count("<information>") == 2 and "Doc 2 (Title: Marfan syndrome) Tall stature" in text


def test_verl_s_dataset_class_reads_the_parquet(exported) -> None:
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medr1.models import tiny_tokenizer

    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 4096, "filter_overlong_prompts": True,
                               "return_raw_chat": True, "cache_dir": str(exported / "cache"),
                               "function_tool_path": str(exported / "medr1_search_tool.py")})
    data = RLHFDataset(data_files=[str(exported / "train.parquet")], tokenizer=tiny_tokenizer(), config=config)
    assert len(data) == len(QUESTIONS)  # none filtered as overlong, none dropped
    row = data[1]
    assert row["index"] == 1 and row["data_source"] == "medr1/hpo-dx"
    assert row["reward_model"] == {"style": "rule", "ground_truth": "B"}
    assert row["raw_prompt"][-1]["role"] == "user" and "B. Marfan syndrome" in row["raw_prompt"][-1]["content"]
    assert "<search>" in "".join(m["content"] for m in row["raw_prompt"])
    assert list(row["extra_info"]["option_texts"])[1] == "Marfan syndrome"
