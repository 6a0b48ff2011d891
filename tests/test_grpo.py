"""GRPO on the tiny random Llama: env_mask reaches TRL's loss mask, one step trains, resume continues the step count,
and the 8B recipe passes its dry run. A scripted rollout (fixed search, real tokenizer, scripted retriever) makes
the inserted `<information>` positions known exactly."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from medr1 import models, tags  # noqa: E402
from medr1.data.schema import Document, Question  # noqa: E402
from medr1.retrieval.base import Hit  # noqa: E402
from medr1.config import build_config, replace_values  # noqa: E402
from medr1.train import common, grpo  # noqa: E402
from medr1.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class ScriptedRetriever:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        self.queries.extend(queries)
        doc = Document("OMIM:154700", "Marfan syndrome", "Tall stature, ectopia lentis, arachnodactyly")
        return [[Hit(doc, 2.0)] for _ in queries]


QUERY = "tall stature | among: Homocystinuria; Marfan syndrome; Stickler syndrome; Ehlers-Danlos"  # compares all four


def scripted_rollout(loaded, prompts, retriever, cfg):
    """Every trajectory searches once; even rows name the gold option, odd rows a wrong one, so rewards vary within a
    group (the gold's letter varies: training sets are letter-balanced; the reward maps a name to its letter)."""
    tok = loaded.tokenizer
    out = []
    for i, prompt_ids in enumerate(prompts):
        first = tok(f"<think>check</think>\n<search>{QUERY}</search>", add_special_tokens=False)["input_ids"]
        hits = retriever.search([QUERY], 1)[0]
        info = tok(tags.format_information([h.doc.contents for h in hits]), add_special_tokens=False)["input_ids"]
        name = "Marfan syndrome" if i % 2 == 0 else "Stickler syndrome"
        last = tok(f"<think>fits</think>\n<answer>{name}</answer>", add_special_tokens=False)["input_ids"]
        ids = first + info + last
        mask = [1] * len(first) + [0] * len(info) + [1] * len(last)
        out.append(
            SimpleNamespace(
                prompt_ids=list(prompt_ids), token_ids=ids, loss_mask=mask, text=tok.decode(ids),
                queries=[QUERY], retrieved_doc_ids=[["OMIM:154700"]], turns=2, finish_reason="answer",
                tool_errors=0, n_generated=len(first) + len(last),
            )
        )
    return out


def question(i: int) -> Question:
    return Question(
        id=f"q{i}",
        question=f"Patient {i}: tall stature, ectopia lentis. Most likely diagnosis?",
        options={"A": "Homocystinuria", "B": "Marfan syndrome", "C": "Stickler syndrome", "D": "Ehlers-Danlos"},
        answer="B",
        split="train",
    )


@pytest.fixture()
def data_spec(tmp_path: Path) -> str:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(question(i).to_dict()) + "\n" for i in range(4)))
    return f"jsonl:{path}"


def tiny_cfg(tmp_path: Path, data_spec: str, **kw) -> grpo.GRPOConfig:
    base = dict(
        model="tiny-random-llama", output_dir=str(tmp_path / "grpo"), train_data=[data_spec], num_generations=2,
        prompts_per_step=2, learning_rate=1e-2, max_steps=1, save_steps=1, device="cpu", temperature=1.0,
    )
    base.update(kw)
    return build_config(grpo.GRPOConfig, base)


def test_env_mask_zeroes_inserted_information(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec)
    rows, _ = grpo.build_rows(cfg)
    loaded = models.load_model(cfg.model, "cpu")
    trainer = grpo.build_trainer(cfg, loaded, rows, ScriptedRetriever(), scripted_rollout)
    inputs = [dict(rows[0]), dict(rows[0]), dict(rows[1]), dict(rows[1])]
    batch = trainer._generate_and_score_completions(inputs)
    loss_mask = batch["completion_mask"] * batch["tool_mask"]
    expected = scripted_rollout(loaded, [[0]] * 4, ScriptedRetriever(), None)
    tok = loaded.tokenizer
    for row, traj in enumerate(expected):
        n = len(traj.token_ids)
        assert batch["completion_ids"][row, :n].tolist() == traj.token_ids
        assert loss_mask[row, :n].tolist() == traj.loss_mask
        assert loss_mask[row, n:].sum() == 0  # appended end-of-turn and padding carry no loss
        trained = tok.decode([t for t, m in zip(traj.token_ids, loss_mask[row, :n].tolist()) if m])
        assert tags.INFO_OPEN not in trained and "ectopia lentis" not in trained
    # the rewards saw the model's own text: all well-formed, even rows correct
    assert batch["advantages"].abs().sum() > 0


def test_one_step_changes_weights_and_logs(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec, micro_batch_size=2)  # two micro-batches, one rollout call, one step
    rows, _ = grpo.build_rows(cfg)
    loaded = models.load_model(cfg.model, "cpu")
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
    trainer = grpo.build_trainer(cfg, loaded, rows, ScriptedRetriever(), scripted_rollout)
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = sum(not torch.equal(before[k], v) for k, v in loaded.model.named_parameters())
    assert changed > 0
    record = json.loads((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1
    assert record["accuracy"] == pytest.approx(0.5)
    assert record["searches_per_rollout"] == pytest.approx(1.0)
    assert record["format"] == pytest.approx(1.0)
    assert record["finish_reasons"] == {"answer": 4}  # all four completions of the step in one record
    assert record["seconds_per_step"] > 0 and record["peak_rss_mb"] > 0
    for key in ("reward_mean", "reward_std", "completion_length", "loss"):
        assert record[key] is not None


def test_kl_reference_for_in_process_model(tmp_path, data_spec):
    """beta > 0 keeps a frozen reference: KL is 0 while the policy equals it (step 1) and > 0 once it moved."""
    cfg = tiny_cfg(tmp_path, data_spec, beta=0.1, max_steps=2)
    rows, _ = grpo.build_rows(cfg)
    loaded = models.load_model(cfg.model, "cpu")
    trainer = grpo.build_trainer(cfg, loaded, rows, ScriptedRetriever(), scripted_rollout)
    assert trainer.ref_model is not None
    trainer.train()
    first, second = (json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines())
    assert abs(first["kl"]) < 1e-6 and second["kl"] > 1e-6


def test_resume_continues_step_count(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec, max_steps=2, save_steps=1)
    out = tmp_path / "grpo"
    grpo.run_grpo(cfg, retriever=ScriptedRetriever(), rollout_fn=scripted_rollout)
    assert (out / "checkpoint-2").is_dir()
    # Simulate a kill after step 2 was logged but before its checkpoint was written.
    import shutil

    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(Exception, match="--resume"):
        grpo.run_grpo(cfg, retriever=ScriptedRetriever(), rollout_fn=scripted_rollout)
    resumed = replace_values(cfg, max_steps=3)
    plan = grpo.run_grpo(resumed, resume=True, retriever=ScriptedRetriever(), rollout_fn=scripted_rollout)
    assert plan["global_step"] == 3
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (out / "final" / "config.json").is_file()


def test_real_rollout_engine_one_step(tmp_path, data_spec):
    """The real self-ask loop (HF backend) on the tiny model inside GRPOTrainer: finite loss, consistent masks."""
    cfg = tiny_cfg(tmp_path, data_spec, max_turns=2, max_new_tokens_per_turn=16, max_total_tokens=64, max_info_tokens=32)
    rows, _ = grpo.build_rows(cfg)
    loaded = models.load_model(cfg.model, "cpu")

    def odd_length(completions, **kw):  # a reward with variance, so the random model gets a gradient
        return [float(len(c[0]["content"]) % 2) for c in completions]

    from medr1.rollout import run_rollouts

    seen: list = []

    def spy(*args, **kw):  # the real engine; its trajectories kept for the checks below
        out = run_rollouts(*args, **kw)
        seen.extend(out)
        return out

    trainer = grpo.build_trainer(cfg, loaded, rows, ScriptedRetriever(), rollout_fn=spy,
                                 extra_reward_funcs=[odd_length])
    result = trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    record = json.loads((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["completion_length"] <= 64 and sum(record["finish_reasons"].values()) == 4
    assert len(seen) == 4
    tok = loaded.tokenizer
    for t in seen:
        assert len(t.token_ids) == len(t.loss_mask) and 1 <= t.turns <= 2
        inserted = tok.decode([i for i, m in zip(t.token_ids, t.loss_mask) if not m])
        own = [i for i, m in zip(t.token_ids, t.loss_mask) if m]
        # exactly the information blocks are masked: one per search, nothing else; the model's own tokens fit
        assert inserted.count(tags.INFO_OPEN) == inserted.count(tags.INFO_CLOSE) == len(t.queries)
        assert inserted.replace(" ", "").replace("\n", "") == "" or inserted.strip().startswith(tags.INFO_OPEN)
        assert len(own) <= cfg.max_total_tokens and tags.INFO_OPEN not in tok.decode(own)


def test_no_retrieval_arm_uses_cot_and_no_retriever(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec, use_retrieval=False)
    assert cfg.prompt_method == "cot"
    assert grpo.open_environment(cfg) is None
    rows, _ = grpo.build_rows(cfg)
    assert tags.SEARCH_OPEN not in rows[0]["prompt"][-1]["content"]
    rcfg = grpo.rollout_config(cfg)
    assert rcfg.max_turns == 1  # the same generation budget as the searching arm, in one turn
    assert rcfg.max_new_tokens_per_turn == min(cfg.max_total_tokens, cfg.max_turns * cfg.max_new_tokens_per_turn)


def test_training_rows_do_not_depend_on_where_the_data_lives(tmp_path):
    """The same questions under two run directories give the same rows in the same order (seed and ids only)."""
    specs = []
    for run in ("run-a", "run-b/deeper"):
        path = tmp_path / run / "train.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(question(i).to_dict()) + "\n" for i in range(12)))
        specs.append(f"jsonl:{path}")
    rows = [grpo.build_rows(tiny_cfg(tmp_path, spec, train_limit=5))[0] for spec in specs]
    assert [r["prompt"] for r in rows[0]] == [r["prompt"] for r in rows[1]] and len(rows[0]) == 5
    other_seed = grpo.build_rows(tiny_cfg(tmp_path, specs[0], train_limit=5, seed=1))[0]
    assert [r["prompt"] for r in other_seed] != [r["prompt"] for r in rows[0]]


def test_config_validation():
    with pytest.raises(ConfigError, match="num_generations"):
        build_config(grpo.GRPOConfig, {"num_generations": 1})
    with pytest.raises(ConfigError, match="reward_weights"):
        grpo.GRPOConfig(rewards=["correctness"], reward_weights=[1.0, 0.5]).validate()


@pytest.mark.shared
def test_8b_grpo_recipe_dry_run():
    from medr1.config import load_config
    from medr1.paths import shared_path

    if not shared_path("medqa").is_dir():
        pytest.skip("needs ../shared/data (MedQA)")
    recipe = ROOT / "recipes" / "r1-distill-llama-8b" / "recipe.yaml"
    cfg = load_config(grpo.GRPOConfig, recipe, ["train_limit=4"], section="grpo")
    plan = grpo.run_grpo(cfg, dry_run=True)
    assert plan["trl_args"]["use_vllm"] and plan["trl_args"]["vllm_mode"] == "colocate"
    assert plan["trl_args"]["per_device_train_batch_size"] == 4 and plan["trl_args"]["generation_batch_size"] == 64
    assert plan["prompt_method"] == "self-ask" and plan["retrieval_check"]
    assert plan["rollout"]["max_turns"] == 4 and plan["rewards"][-1] == "research_bonus"


@pytest.mark.parametrize("name", ["smoke.yaml", "quickstart.yaml", "study.yaml", "r1-distill-llama-8b/recipe.yaml"])
def test_recipes_parse_with_one_budget(name):
    import yaml

    from medr1.config import load_config
    from medr1.evaluate import load_eval_config
    from medr1.pipeline import make_plan
    from medr1.rollout import Budget
    from medr1.train.sft import SFTConfig

    path = ROOT / "recipes" / name
    shared = Budget(**yaml.safe_load(path.read_text())["rollout"])
    sft_cfg = load_config(SFTConfig, path, section="sft")
    grpo_cfg = load_config(grpo.GRPOConfig, path, section="grpo")
    eval_cfg = load_eval_config(path, {"out": "x"})
    assert sft_cfg.budget == grpo_cfg.budget == eval_cfg.budget == shared
    args, _ = common.build_trl_args(grpo.trl_args, grpo_cfg, "grpo", dry_run=True)
    assert args.num_generations == grpo_cfg.num_generations and args.max_steps == grpo_cfg.max_steps
    assert make_plan(path).run.name  # the pipeline sections parse too


@pytest.mark.parametrize("name", ["zero3.yaml", "fsdp.yaml"])
def test_accelerate_configs_are_what_accelerate_reads(name):
    """The accelerate launch configs the README names: valid YAML that accelerate's own config class loads, with the
    distributed mode the file name promises and one process per GPU of an 8-GPU node."""
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(ROOT / "recipes" / "accelerate" / name))
    assert cfg.distributed_type.value == ("DEEPSPEED" if name == "zero3.yaml" else "FSDP")
    assert cfg.num_processes == 8 and cfg.mixed_precision == "bf16"
    if name == "zero3.yaml":
        assert cfg.deepspeed_config["zero_stage"] == 3 and cfg.deepspeed_config["zero3_save_16bit_model"] is True
    else:
        import transformers

        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        wrap = cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert hasattr(transformers.models.llama.modeling_llama, wrap)  # the 8B target is a Llama


def test_trl_keys_pass_through_flat():
    """Any trl.GRPOConfig field can be written flat in the grpo: section: kept in `trl`, coerced to TRL's type, read
    as an attribute, written back flat, and handed to TRL; keys medr1 derives are refused with the key to use."""
    from medr1.config import config_dict

    cfg = build_config(grpo.GRPOConfig, {"max_steps": "7", "epsilon_high": "0.28", "warmup_steps": "0.1",
                                         "num_generations": "2"})
    assert (cfg.max_steps, cfg.trl["epsilon_high"], cfg.warmup_steps) == (7, 0.28, 0.1)
    assert cfg.trl["beta"] == 0.0  # medr1's default for a TRL key
    flat = config_dict(cfg)
    assert "trl" not in flat and flat["epsilon_high"] == 0.28 and flat["use_retrieval"] is True
    assert build_config(grpo.GRPOConfig, flat) == cfg  # the saved config loads back unchanged
    args = grpo.trl_args(replace_values(cfg, output_dir="/tmp/medr1-trl-keys", device="cpu"))
    assert (args.max_steps, args.epsilon_high, args.num_generations, args.max_completion_length) == (7, 0.28, 2, 1024)
    with pytest.raises(ConfigError, match="epsilon_hi'.*any field of trl.GRPOConfig"):
        build_config(grpo.GRPOConfig, {"epsilon_hi": 0.3})
    with pytest.raises(ConfigError, match="max_completion_length.*rollout.max_total_tokens"):
        build_config(grpo.GRPOConfig, {"max_completion_length": 64})
    with pytest.raises(ConfigError, match="max_steps"):
        build_config(grpo.GRPOConfig, {"max_steps": "many"})


def test_a_forced_answer_is_trained_on_but_earns_no_correctness(tiny_llama):
    """The environment's `<answer>` (mask 0) is not the model's: the reward reads no answer, TRL sees an end."""
    from medr1.train.rewards import correctness_reward

    tok = tiny_llama.tokenizer
    own, forced, answer = (tok(x, add_special_tokens=False)["input_ids"]
                           for x in ("<think>long reasoning", "</think>\n<answer>", "Marfan syndrome</answer>"))
    traj = SimpleNamespace(prompt_ids=[1, 2], token_ids=own + forced + answer, queries=[], finish_reason="forced",
                           loss_mask=[1] * len(own) + [0] * len(forced) + [1] * len(answer))
    out = grpo.trajectories_to_trl([traj], tok, end_id=tok.eos_token_id)
    assert out["completion_ids"][0] == own + forced + answer + [tok.eos_token_id]  # ended, not clipped
    assert out["env_mask"][0] == traj.loss_mask + [0]
    assert tags.ANSWER_OPEN not in out["model_text"][0]
    options = ["Homocystinuria", "Marfan syndrome", "Stickler syndrome", "Ehlers-Danlos"]
    assert correctness_reward([traj.token_ids], answer=["B"], model_text=out["model_text"], letters=["ABCD"],
                              option_texts=[options]) == [0.0]
    written = tok.decode(own + forced + answer)
    assert correctness_reward([written], answer=["B"], letters=["ABCD"], option_texts=[options]) == [1.0]


def test_open_prompts_are_option_less_rows_rewarded_by_the_normalized_name(tmp_path):
    """open_prompts: questions after train_limit become rows without options (gold_id set, no gold letter); the
    open_correctness reward normalizes the named diagnosis (an Orphanet twin of the same name counts), correctness
    leaves the open rows out (None) and format accepts a named answer on them."""
    import dataclasses

    from medr1.data.hpo import load_hpo

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(dataclasses.replace(question(i), gold_doc_ids=["OMIM:154700"]).to_dict())
                            + "\n" for i in range(6)))
    rewards = dict(rewards=["correctness", "format", "open_correctness"], reward_weights=[1.0, 0.2, 1.0])
    cfg = tiny_cfg(tmp_path, f"jsonl:{path}", train_limit=4, open_prompts=2, **rewards)
    rows, report = grpo.build_rows(cfg)
    assert len(rows) == 6 and report[f"jsonl:{path}"]["open_prompts"] == 2
    choice, opened = rows[:4], rows[4:]
    assert all(r["gold_id"] is None and r["answer"] in "ABCD" for r in choice)
    assert all(r["gold_id"] == "OMIM:154700" and r["answer"] is None and r["letters"] == "" for r in opened)
    assert all("Options:" not in r["prompt"][-1]["content"] for r in opened)
    correctness, fmt, open_correct = grpo.reward_funcs(cfg)
    named = ["<think>fits</think>\n<answer>Marfan syndrome</answer>", "<think>fits</think>\n<answer>Stickler</answer>",
             "<think>fits</think>\n<answer>B</answer>"]
    cols = dict(letters=["", "", "ABCD"], option_texts=[[], [], opened[0]["option_texts"] or choice[0]["option_texts"]])
    assert open_correct(named, gold_id=["OMIM:154700", "OMIM:154700", None], **cols) == [1.0, 0.0, None]
    assert correctness(named, answer=[None, None, "B"], **cols) == [None, None, 1.0]
    assert fmt(named, **cols) == [1.0, 1.0, 1.0]
    assert load_hpo().diseases["ORPHA:558"].name == "Marfan syndrome"
    assert open_correct(named[:1], gold_id=["ORPHA:558"], letters=[""], option_texts=[[]]) == [1.0]  # the twin
    with pytest.raises(ConfigError, match="open_prompts needs the open_correctness reward"):
        tiny_cfg(tmp_path, f"jsonl:{path}", open_prompts=2)


def test_ranks_and_steps_sample_different_rollouts_of_the_same_prompts(tmp_path, data_spec, monkeypatch):
    """The rollout seed follows the step and the process (`rcfg.seed + 1_000_003 x step + 7_919 x rank`) and each
    row draws from its own: two ranks given the same prompts at the same step sample different completions, and
    the same rank and step sample the same ones again (a resumed run does not replay other steps)."""
    import contextlib

    import trl.models

    cfg = tiny_cfg(tmp_path, data_spec, max_new_tokens_per_turn=12, max_total_tokens=12, use_retrieval=False)
    loaded = models.load_model(cfg.model, "cpu")
    monkeypatch.setattr(trl.models, "unwrap_model_for_generation",
                        lambda model, accelerator, **kw: contextlib.nullcontext(model))
    rollout = grpo.make_rollout_func(loaded, None, grpo.rollout_config(cfg), grpo.RolloutStats())
    prompts = [grpo.prompt_row(question(0), "cot")["prompt"]] * 2  # one prompt, a group of two

    def trainer(rank: int, step: int = 0) -> SimpleNamespace:
        return SimpleNamespace(state=SimpleNamespace(global_step=step), accelerator=SimpleNamespace(process_index=rank),
                               model_wrapped=loaded.model, args=SimpleNamespace(ds3_gather_for_generation=True),
                               use_vllm=False)

    rank0, rank1 = rollout(prompts, trainer(0))["completion_ids"], rollout(prompts, trainer(1))["completion_ids"]
    assert rank0[0] != rank0[1]  # the rows of a group differ
    assert rank0 != rank1 and rank0[0] != rank1[0] and rank0[1] != rank1[1]  # so do the ranks, row by row
    assert rollout(prompts, trainer(0))["completion_ids"] == rank0  # seeded: the same rank and step again
    assert rollout(prompts, trainer(0, step=1))["completion_ids"] != rank0  # the next step draws anew


def test_server_mode_rollouts_go_to_the_vllm_server_one_client_per_rank(tmp_path, data_spec, monkeypatch):
    """TRL's server mode (`use_vllm=true vllm_mode=server`): the rollout asks the vLLM server through
    `VLLMServerBackend`, made once per rank from TRL's own server arguments, each row with its own seed, and the
    server's logprobs go back to TRL."""
    from test_generation import FakeVLLMClient

    from medr1.generation import VLLMServerBackend

    cfg = tiny_cfg(tmp_path, data_spec, max_new_tokens_per_turn=12, max_total_tokens=12, use_retrieval=False)
    loaded = models.load_model(cfg.model, "cpu")
    client = FakeVLLMClient(loaded.tokenizer.encode("<answer>B</answer>", add_special_tokens=False))
    made = []
    monkeypatch.setattr(VLLMServerBackend, "from_url", classmethod(
        lambda cls, url, tok, stops, timeout_s: made.append((url, timeout_s)) or cls(client, tok, stops)))
    rollout = grpo.make_rollout_func(loaded, None, grpo.rollout_config(cfg), grpo.RolloutStats())
    prompts = [grpo.prompt_row(question(0), "cot")["prompt"]] * 2
    args = SimpleNamespace(vllm_mode="server", vllm_server_base_url=None, vllm_server_host="10.0.0.7",
                           vllm_server_port=8000, vllm_server_timeout=240.0)
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0), accelerator=SimpleNamespace(process_index=1),
                              args=args, use_vllm=True)
    out = rollout(prompts, trainer)
    rollout(prompts, trainer)
    assert made == [("http://10.0.0.7:8000", 240.0)]  # one client, from TRL's arguments, reused
    assert out["completion_ids"][0][:len(client.reply)] == client.reply
    assert out["logprobs"][0][:len(client.reply)] == [-0.5] * len(client.reply)
    seeds = [r["seed"] for r in client.requests[:2]]
    assert len(set(seeds)) == 2  # the two rows of the group are sampled apart


def test_server_mode_is_accepted_and_colocate_tensor_parallelism_refused(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec, use_vllm=True, vllm_mode="server", vllm_tensor_parallel_size=8)
    assert cfg.vllm_mode == "server"
    with pytest.raises(ConfigError, match="vllm_mode=colocate, only vllm_tensor_parallel_size=1"):
        tiny_cfg(tmp_path, data_spec, use_vllm=True, vllm_mode="colocate", vllm_tensor_parallel_size=2)


class ScreenLLM:
    """A scripted `medr1.evaluate.Generator` for the screening run: patient 0 and 2 name the gold option, patient 1
    blends a name with a letter (the harness may read the letter; `named_correctness` pays nothing), patient 3 names
    the gold only in a forced answer. Counts its rollouts."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.rolled = 0

    def prompt(self, loaded, messages, image=None):
        self.prompts.append(messages[-1]["content"])
        return [len(self.prompts) - 1], None

    def backend(self, loaded, kind):
        return None

    def rollouts(self, loaded, prompts, retriever, rcfg, backend=None, seed_offset=0, bar=None):
        import re

        out = []
        for (pid,) in prompts:
            i = int(re.search(r"Patient (\d+)", self.prompts[pid]).group(1))
            letter = re.search(r"([A-D])\. Marfan syndrome", self.prompts[pid]).group(1)
            name = "Marfan-Stickler syndrome" if i == 1 else "Marfan syndrome"
            out.append(SimpleNamespace(text=f"<think>x</think><answer>{name} ({letter})</answer>", queries=[],
                                       retrieved_doc_ids=[], retrieved_titles=[], tool_errors=0, n_generated=3,
                                       turns=1, finish_reason="forced" if i == 3 else "answer"))
        self.rolled += len(prompts)
        return out


def test_screening_keeps_the_prompts_the_starting_model_misses(tmp_path, data_spec):
    cfg = tiny_cfg(tmp_path, data_spec, screen=True, rewards=["named_correctness", "format"])
    gen = ScreenLLM()
    screen = grpo.screen_missed(cfg, loaded=SimpleNamespace(), retriever=ScriptedRetriever(), generator=gen)
    rows, report = grpo.build_rows(cfg, screen)
    assert sorted(r["question_id"] for r in rows) == ["q1", "q3"]  # the blend and the forced answer
    entry = report[data_spec]
    assert (entry["screened"], entry["used"]) == (4, 2)
    assert entry["answer_letters"] == {"A": 1, "B": 1}  # re-lettered after screening: still balanced
    samples = (tmp_path / "grpo" / "screen" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 and gen.rolled == 4
    grpo.build_rows(cfg, grpo.screen_missed(cfg, loaded=SimpleNamespace(), generator=gen))
    assert gen.rolled == 4  # a finished screening is read back, not run again (resume)
    lenient = tiny_cfg(tmp_path / "lenient", data_spec, rewards=["correctness", "format"])
    rows, _ = grpo.build_rows(lenient, grpo.screen_missed(lenient, loaded=SimpleNamespace(),
                                                           retriever=ScriptedRetriever(), generator=ScreenLLM()))
    assert sorted(r["question_id"] for r in rows) == ["q3"]  # the first reward decides: the blend's letter is right


def test_screening_can_keep_right_prompts_as_anchors(tmp_path, data_spec):
    """`screen_right_per_miss`: for each prompt the starting model misses, keep that many it answers right, the
    first ones in train order, so GRPO also sees groups where what the SFT policy does pays."""
    gen = ScreenLLM()
    rewards = ["named_correctness", "format"]
    half = tiny_cfg(tmp_path, data_spec, screen=True, screen_right_per_miss=0.5, rewards=rewards)
    rows, report = grpo.build_rows(half, grpo.screen_missed(half, loaded=SimpleNamespace(),
                                                             retriever=ScriptedRetriever(), generator=gen))
    entry = report[data_spec]
    assert (entry["screened"], entry["missed"], entry["anchors"], entry["used"]) == (4, 2, 1, 3)
    kept = sorted(r["question_id"] for r in rows)
    assert kept[-2:] == ["q1", "q3"] and kept[0] in ("q0", "q2")  # both misses and one right answer
    whole = tiny_cfg(tmp_path, data_spec, screen=True, screen_right_per_miss=1.0, rewards=rewards)
    rows, report = grpo.build_rows(whole, grpo.screen_missed(whole, loaded=SimpleNamespace(), generator=gen))
    assert sorted(r["question_id"] for r in rows) == ["q0", "q1", "q2", "q3"] and report[data_spec]["anchors"] == 2
    assert gen.rolled == 4  # the same screening, read back
    with pytest.raises(ConfigError, match="screen_right_per_miss must be >= 0"):
        tiny_cfg(tmp_path, data_spec, screen=True, screen_right_per_miss=-1.0)


def test_screening_drops_misses_the_evidence_does_not_settle(tmp_path, data_spec):
    """`screen_settled`: a miss whose gold the bm25-ranker does not pick is dropped (and counted), never made an
    anchor; `settled_by_evidence` asks the ranker over the environment's retriever."""
    from test_evaluate import load_fixture_docs

    from medr1.retrieval.bm25 import BM25Retriever

    gen = ScreenLLM()
    cfg = tiny_cfg(tmp_path, data_spec, screen=True, screen_right_per_miss=1.0, screen_settled=True,
                   rewards=["named_correctness", "format"])
    rows, report = grpo.build_rows(cfg, grpo.screen_missed(cfg, loaded=SimpleNamespace(), generator=gen),
                                   settled=lambda q: q.id != "q1")
    entry = report[data_spec]
    assert (entry["missed"], entry["unsettled_misses_dropped"], entry["anchors"]) == (2, 1, 1)
    kept = sorted(r["question_id"] for r in rows)
    assert kept[-1] == "q3" and "q1" not in kept and len(kept) == 2  # q3 and one anchor (q0 or q2)
    settled = grpo.settled_by_evidence(BM25Retriever.build(load_fixture_docs(), show_progress=False))
    marfan = question(0)  # tall stature, ectopia lentis: the fixture's Homocystinuria document scores higher
    assert not settled(marfan)
    assert settled(Question(**{**marfan.to_dict(), "answer": "A"}))


@pytest.mark.parametrize("section", ["grpo", "sft"])
def test_a_stage_config_yaml_loads_back_as_written(tmp_path, section):
    """`medr1 grpo --config runs/X/grpo/config.yaml` (the flat file a stage writes) reproduces that stage's config;
    it used to be read as a recipe without a grpo: section, i.e. silently all defaults."""
    from medr1.config import config_dict, load_config, save_config
    from medr1.evaluate import load_eval_config
    from medr1.train.sft import SFTConfig

    cls = grpo.GRPOConfig if section == "grpo" else SFTConfig
    recipe = ROOT / "recipes" / "quickstart.yaml"
    cfg = load_config(cls, recipe, ["max_steps=7", "learning_rate=3e-5"], section=section)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(cls, tmp_path / "config.yaml", section=section)
    assert config_dict(again) == config_dict(cfg)
    assert again.max_steps == 7 and again.budget.max_new_tokens_per_turn == 160  # not the defaults
    assert load_config(cls, tmp_path / "config.yaml", ["max_steps=9"], section=section).max_steps == 9
    assert load_eval_config(recipe, {"out": "x"}).max_new_tokens_per_turn == 160  # a recipe is still read by section
