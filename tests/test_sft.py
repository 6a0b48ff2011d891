"""SFT on the tiny random Llama: exact loss masks (prompt and <information> zero), one step trains, the data mix
counts what it leaves out, the R1 think prefill is respected, and the 8B LoRA recipe passes its dry run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from medr1 import models, tags  # noqa: E402
from medr1.data.schema import Document, Question  # noqa: E402
from medr1.retrieval.base import Hit  # noqa: E402
from medr1.config import build_config  # noqa: E402
from medr1.train import common, sft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class ScriptedRetriever:
    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        docs = [
            Document("OMIM:154700", "Marfan syndrome", "Tall stature, ectopia lentis, arachnodactyly"),
            Document("HP:0000098", "Tall stature", "A height above the 97th centile"),
        ]
        return [[Hit(d, 1.0) for d in docs[:k]] for _ in queries]


def question(i: int, explanation: str | None = "Marfan syndrome: tall stature (very frequent).", split="train"):
    return Question(
        id=f"q{i}",
        question=f"Case {i}: tall stature, ectopia lentis, arachnodactyly. Most likely diagnosis?",
        options={"A": "Homocystinuria", "B": "Marfan syndrome", "C": "Stickler syndrome", "D": "Ehlers-Danlos"},
        answer="B",
        explanation=explanation,
        split=split,
        gold_doc_ids=["OMIM:154700"],
        meta={"findings": ["tall stature", "ectopia lentis", "arachnodactyly"]},
    )


@pytest.fixture(scope="module")
def loaded():
    return models.load_model(models.TINY_MODEL, "cpu")


def test_masks_are_exact(loaded):
    from medr1.models import chat_prompt_ids

    cfg = sft.SFTConfig(model=models.TINY_MODEL)
    example = sft.build_traces([question(0)], TitledRetriever(["Tall stature", "Marfan syndrome"]), cfg)[0]
    assert example.searches == 1 and example.gold_in_results
    row = sft.tokenize_example(loaded, example, max_length=4096, max_info_tokens=384)
    ids, mask = row["input_ids"], row["assistant_masks"]
    tok = loaded.tokenizer
    n_prompt = len(chat_prompt_ids(loaded, example.messages))
    assert ids[:n_prompt] == chat_prompt_ids(loaded, example.messages)
    assert mask[:n_prompt] == [0] * n_prompt
    # Rebuild the expected mask segment by segment: information blocks 0, the model's own text 1, end of turn 1.
    from medr1.rollout import InfoBuilder

    info = InfoBuilder(tok, 384)
    expected, pos = [], n_prompt
    for seg in example.segments:
        seg_ids = sft.segment_ids(tok, seg, info)
        assert ids[pos : pos + len(seg_ids)] == seg_ids
        assert tok.decode(seg_ids) == seg.text  # short passages: nothing cut
        expected += [int(seg.trained)] * len(seg_ids)
        pos += len(seg_ids)
    assert mask[n_prompt:] == expected + [1]
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    trained_text = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
    assert tags.INFO_OPEN not in trained_text and "97th centile" not in trained_text
    assert trained_text.count(tags.SEARCH_OPEN) == 1 and trained_text.endswith("<answer>Marfan syndrome (B)</answer>")
    # The block the environment inserts is exactly the untrained part after the prompt.
    untrained = tok.decode([t for t, m in zip(ids[n_prompt:], mask[n_prompt:]) if not m])
    assert untrained.count(tags.INFO_OPEN) == 1 and untrained.count(tags.INFO_CLOSE) == 1


def test_trace_tokens_equal_what_the_rollout_produces(loaded):
    """Replaying a trace's own text through the real rollout loop (scripted backend, same retriever) gives exactly
    the SFT tokens and masks: the cold start teaches the token sequences GRPO and eval will see."""
    from medr1.generation import ScriptedBackend
    from medr1.models import chat_prompt_ids
    from medr1.rollout import RolloutConfig, run_rollouts

    cfg = sft.SFTConfig(topk=2, max_info_tokens=48)  # small budget: passages get cut
    retriever = TitledRetriever(["Tall stature", "Marfan syndrome"])
    example = sft.build_traces([question(0)], retriever, cfg)[0]
    row = sft.tokenize_example(loaded, example, 4096, cfg.max_info_tokens)
    own = [seg.text for seg in example.segments if seg.trained]
    backend = ScriptedBackend(loaded.tokenizer, lambda prompt, call: own[call])
    rcfg = RolloutConfig(max_turns=4, max_new_tokens_per_turn=1024, max_total_tokens=4096, topk=2,
                         max_info_tokens=cfg.max_info_tokens)
    prompt = chat_prompt_ids(loaded, example.messages)
    traj = run_rollouts(loaded, [prompt], retriever, rcfg, backend=backend)[0]
    assert traj.finish_reason == "answer" and traj.queries == [sft.trace_query(question(0))]
    n = len(prompt)
    assert row["input_ids"][n:-1] == traj.token_ids  # everything but SFT's trained end-of-turn token
    assert row["assistant_masks"][n:-1] == traj.loss_mask


def test_trl_labels_follow_our_masks_and_one_step_trains(tmp_path, loaded):
    examples = [sft.explanation_example(question(0)), *sft.build_traces([question(1)], ScriptedRetriever(), sft.SFTConfig())]
    rows, stats = sft.tokenize_examples(loaded, examples, 1024)
    assert stats["rows"] == 2 and stats["dropped_prompt_too_long"] == 0
    cfg = build_config(sft.SFTConfig, dict(
        model=models.TINY_MODEL, output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
        learning_rate=1e-2, device="cpu", save_steps=1,
    ))
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
    trainer = sft.build_trainer(cfg, loaded, rows)
    for prepared, row in zip(trainer.train_dataset, rows):
        want = [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]
        assert prepared["labels"] == want
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in loaded.model.named_parameters())
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["step"] == 1 and record["loss"] > 0 and record["seconds_per_step"] > 0
    assert (tmp_path / "checkpoint-1" / "medr1_model.json").is_file()


def test_run_sft_mix_counts_and_final_model(tmp_path):
    data = tmp_path / "q.jsonl"
    qs = [question(0), question(1, explanation=None), question(2, split="test"), question(3)]
    data.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in qs))
    cfg = build_config(sft.SFTConfig, dict(
        model=models.TINY_MODEL, output_dir=str(tmp_path / "run"), explanation_data=[f"jsonl:{data}"],
        trace_data=[f"jsonl:{data}"], trace_limit=1, max_steps=1, per_device_train_batch_size=2, device="cpu",
    ))
    plan = sft.run_sft(cfg, retriever=ScriptedRetriever())
    expl = plan["data"]["explanation"][f"jsonl:{data}"]
    assert expl == {"loaded": 4, "excluded_split": 1, "no_explanation": 1, "used": 2}
    assert plan["data"]["trace"][f"jsonl:{data}"]["used"] == 1
    assert plan["data"]["kinds"] == {"explanation": 2, "trace": 1}
    final = Path(plan["final_model"])
    assert (final / "config.json").is_file() and (final / "medr1_model.json").is_file()
    from medr1.models import load_model

    reloaded = load_model(str(final), device="cpu")
    assert reloaded.spec.name == "smollm2-135m"  # the tiny model follows SmolLM2's chat facts


def test_r1_think_prefill_is_not_repeated():
    from medr1.models import R1_DISTILL, LoadedModel, chat_prompt_text

    r1 = LoadedModel(None, models.tiny_tokenizer(), R1_DISTILL)
    example = sft.explanation_example(question(0))
    row = sft.tokenize_example(r1, example, 4096)
    assert chat_prompt_text(r1, example.messages).endswith("<think>\n")
    trained = r1.tokenizer.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if m])
    assert not trained.startswith(tags.THINK_OPEN) and trained.startswith("Marfan syndrome")


def test_config_validation():
    from medr1.errors import ConfigError

    with pytest.raises(ConfigError, match="explanation_prompt"):
        sft.SFTConfig(explanation_prompt="zero-shot").validate()
    with pytest.raises(ConfigError, match="nothing to train"):
        sft.SFTConfig(explanation_data=[], trace_data=[]).validate()


@pytest.mark.shared
def test_8b_sft_recipe_dry_run():
    from medr1.config import load_config
    from medr1.paths import shared_path

    if not shared_path("medmcqa", "dev.json").is_file():
        pytest.skip("needs ../shared/data (MedMCQA, PubMedQA)")
    recipe = ROOT / "recipes" / "r1-distill-llama-8b" / "recipe.yaml"
    cfg = load_config(sft.SFTConfig, recipe, ["trace_limit=4", "explanation_limit=8"], section="sft")
    plan = sft.run_sft(cfg, dry_run=True)
    assert cfg.lora and plan["peft"] and plan["trl_args"]["bf16"]
    assert plan["data"]["kinds"] == {"explanation": 24, "trace": 4}
    assert plan["data"]["explanation"]["pubmedqa"]["excluded_split"] == 500  # PubMedQA test PMIDs never trained on


class TitledRetriever:
    """Returns, for every query, documents titled by `titles` (ids OMIM:<n>)."""

    def __init__(self, titles: list[str]):
        self.titles = titles

    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        docs = [Document(f"OMIM:{i}", t, f"{t}: tall stature") for i, t in enumerate(self.titles)]
        return [[Hit(d, 1.0) for d in docs[:k]] for _ in queries]


def test_trace_searches_and_cites_the_evidence_it_was_given():
    cfg = sft.SFTConfig(topk=3)
    titles = ["Tall stature", "Marfan syndrome", "Homocystinuria"]
    example = sft.build_traces([question(0)], TitledRetriever(titles), cfg)[0]
    info = [seg for seg in example.segments if seg.passages is not None]
    assert len(info) == 1 and example.searches == 1 and example.gold_in_results
    first = example.segments[0].text
    # a candidate search: the findings compared among the options, in letter order
    assert first.endswith(f"{tags.SEARCH_OPEN}tall stature, ectopia lentis, arachnodactyly | among: Homocystinuria; "
                          f"Marfan syndrome; Stickler syndrome; Ehlers-Danlos{tags.SEARCH_CLOSE}")
    last = example.segments[-1].text
    # the documents cited are the ones inserted at those ranks, under those titles; the answer is the first option
    assert "Doc 1 (Tall stature) is not an option. Doc 2 (Marfan syndrome) is an option" in last
    assert info[0].passages[0].startswith("Doc 1 (Title: Tall stature)")
    assert info[0].passages[1].startswith("Doc 2 (Title: Marfan syndrome)")
    assert last.endswith(f"{tags.ANSWER_OPEN}Marfan syndrome (B){tags.ANSWER_CLOSE}")  # the text, then its letter
    text = sft.SFTConfig(answer_with="text")
    assert sft.build_traces([question(0)], TitledRetriever(titles), text)[0].segments[-1].text.endswith(
        f"{tags.ANSWER_OPEN}Marfan syndrome{tags.ANSWER_CLOSE}")
    letter = sft.SFTConfig(answer_with="letter")
    assert sft.build_traces([question(0)], TitledRetriever(titles), letter)[0].segments[-1].text.endswith(
        f"{tags.ANSWER_OPEN}B{tags.ANSWER_CLOSE}")


def test_a_trace_searches_with_the_absent_findings_too():
    """Findings the case records as absent go into the trace's query as "no X", after the findings, within the
    query's word cap (BM25 reads them as X: a recorded absent finding is mostly one of the disease's own)."""
    q = dataclasses.replace(question(0), meta={"findings": ["tall stature", "ectopia lentis"],
                                               "excluded": [{"hpo_id": "HP:0001166", "label": "Arachnodactyly"},
                                                            {"hpo_id": "HP:0000545", "label": "Myopia"}]})
    assert sft.findings_query(q) == "tall stature, ectopia lentis, no arachnodactyly, no myopia"
    example = sft.build_traces([q], TitledRetriever(["Marfan syndrome"]), sft.SFTConfig())[0]
    assert f"{tags.SEARCH_OPEN}tall stature, ectopia lentis, no arachnodactyly, no myopia | among: " in \
        example.segments[0].text
    many = dataclasses.replace(q, meta={"findings": [f"finding {i}" for i in range(8)],
                                        "excluded": [{"label": f"absent finding {i}"} for i in range(20)]})
    # the first six findings, then at most QUERY_ABSENT absent ones: a bounded list a small model learns to stop
    assert sft.findings_query(many).split(", ") == [f"finding {i}" for i in range(6)] + [
        f"no absent finding {i}" for i in range(sft.QUERY_ABSENT)]
    wordy = dataclasses.replace(q, meta={"findings": [f"a long finding of many words number {i}" for i in range(6)],
                                         "excluded": [{"label": "absent"}]})
    kept = sft.findings_query(wordy).split(", ")  # whole findings only, within the word cap
    assert len(kept) == sft.QUERY_WORDS // 8 and kept[-1] == f"a long finding of many words number {len(kept) - 1}"


def test_a_trace_whose_search_overruns_its_turn_is_left_out_and_counted(loaded):
    """A target the shared budget would cut off (here a search longer than its turn) is not trained on: the model
    would learn to write what the rollout never runs. It is counted in `over_budget`."""
    from medr1.rollout import Budget

    long_case = dataclasses.replace(question(1), meta={"findings": [f"finding number {i}" for i in range(6)],
                                                       "excluded": [{"label": f"absent {i}"} for i in range(4)]})
    examples = sft.build_traces([question(0), long_case], ScriptedRetriever(), sft.SFTConfig())
    turns = [sft.turn_lengths(sft.tokenize_example(loaded, ex, 4096, 384)["assistant_masks"])[0] for ex in examples]
    budget = Budget(max_turns=3, max_new_tokens_per_turn=(turns[0][0] + turns[1][0]) // 2, max_total_tokens=4096)
    assert turns[0][0] <= budget.max_new_tokens_per_turn < turns[1][0]  # the long case's search turn overruns
    rows, stats = sft.tokenize_examples(loaded, examples, 4096, budget)
    assert stats["rows"] == 1 and stats["over_budget"] == 1 and len(rows) == 1
    assert all(sft.fits(r["assistant_masks"], budget) for r in rows)
    assert rows[0]["input_ids"] == sft.tokenize_example(loaded, examples[0], 4096, 384)["input_ids"]
    rows, stats = sft.tokenize_examples(loaded, examples, 4096, budget, keep_over_budget=True)  # the smoke profile
    assert stats["rows"] == 2 and stats["over_budget"] == 1


def test_trace_answers_the_first_retrieved_option_even_when_it_is_not_the_gold():
    example = sft.build_traces([question(0)], TitledRetriever(["Homocystinuria", "Marfan syndrome"]),
                               sft.SFTConfig())[0]
    assert not example.gold_in_results  # counted in the data report
    assert example.segments[-1].text.endswith(f"{tags.ANSWER_OPEN}Homocystinuria (A){tags.ANSWER_CLOSE}")


def test_trace_with_a_real_candidate_search_cites_only_options_and_answers_the_best():
    """Through the candidate search (`open_retriever` wraps every index in it) on a real BM25 index, the trace's
    one search brings back only the options' documents, best first; the trace names the first and answers it."""
    from medr1.retrieval.bm25 import BM25Retriever
    from medr1.retrieval.candidates import CandidateSearch

    docs = [Document("OMIM:154700", "Marfan syndrome", "Tall stature; ectopia lentis; arachnodactyly"),
            Document("OMIM:236200", "Homocystinuria", "Ectopia lentis; intellectual disability; thrombosis"),
            Document("OMIM:108300", "Stickler syndrome", "Myopia; cleft palate; hearing loss"),
            Document("HP:0001083", "Ectopia lentis", "Ectopia lentis tall stature arachnodactyly")]
    retriever = CandidateSearch(BM25Retriever.build(docs, show_progress=False))
    example = sft.build_traces([question(0)], retriever, sft.SFTConfig(topk=3))[0]
    info = next(seg for seg in example.segments if seg.passages is not None)
    assert [p.split(")")[0] for p in info.passages] == ["Doc 1 (Title: Marfan syndrome",
                                                        "Doc 2 (Title: Homocystinuria", "Doc 3 (Title: Stickler syndrome"]
    assert example.searches == 1 and example.gold_in_results and example.first_option_at == "doc 1"
    assert example.segments[-1].text == (f"{tags.THINK_OPEN}Doc 1 (Marfan syndrome) is an option and matches the "
                                         f"findings.{tags.THINK_CLOSE}\n{tags.ANSWER_OPEN}Marfan syndrome (B)"
                                         f"{tags.ANSWER_CLOSE}")


def test_trace_without_an_option_among_the_results_answers_the_gold():
    example = sft.build_traces([question(0)], TitledRetriever(["Myopia"]), sft.SFTConfig())[0]
    assert example.searches == 1 and not example.gold_in_results and example.first_option_at == "none"
    assert "No document is an option. Of the options, Marfan syndrome fits the findings best." in example.target_text


def test_built_training_sets_have_balanced_gold_letters(tmp_path):
    from collections import Counter

    data = tmp_path / "q.jsonl"
    qs = [question(i) for i in range(12)]  # every source question has gold B
    data.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in qs))
    cfg = sft.SFTConfig(explanation_data=[f"jsonl:{data}"], trace_data=[f"jsonl:{data}"], trace_limit=8)
    examples, report = sft.build_examples(cfg, retriever=ScriptedRetriever())
    assert report["answer_letters"] == {"A": 5, "B": 5, "C": 5, "D": 5}
    for kind in ("explanation", "trace"):
        golds = Counter()
        for ex in examples:
            if ex.kind != kind:
                continue
            options = dict(line.split(". ", 1) for line in ex.messages[-1]["content"].split("Options:\n")[1].split("\n")
                           if line[:2] in ("A.", "B.", "C.", "D."))
            gold = next(k for k, v in options.items() if v == "Marfan syndrome")
            golds[gold] += 1
            assert f"{tags.ANSWER_OPEN}Marfan syndrome ({gold}){tags.ANSWER_CLOSE}" in ex.target_text
        assert max(golds.values()) - min(golds.values()) <= 1 and len(golds) == 4, (kind, golds)


def test_open_traces_name_the_retrieved_gold_without_options(tmp_path):
    """open_traces: questions after the first trace_limit become option-less traces; the document cited is the
    gold's (by id) at the rank it was inserted, the answer is its name, and no option is mentioned anywhere."""
    from medr1.open_diagnosis import open_question

    class GoldSecond:
        def search(self, queries, k=5):
            docs = [Document("OMIM:1", "Tall stature", "tall"), Document("OMIM:154700", "Marfan syndrome", "lens"),
                    Document("OMIM:2", "Homocystinuria", "lens")]
            return [[Hit(d, 1.0) for d in docs[:k]] for _ in queries]

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(question(i).to_dict()) + "\n" for i in range(6)))
    cfg = sft.SFTConfig(explanation_data=[], trace_data=[f"jsonl:{data}"], trace_limit=4, open_traces=2, topk=3)
    examples, report = sft.build_examples(cfg, retriever=GoldSecond())
    assert report["kinds"] == {"trace": 4, "open-trace": 2} and report["trace"][f"jsonl:{data}"]["open_traces"] == 2
    assert report["answer_letters"] == {"A": 1, "B": 1, "C": 1, "D": 1}  # open traces have no letter
    opened = [ex for ex in examples if ex.kind == "open-trace"]
    choice_ids = {ex.id for ex in examples if ex.kind == "trace"}
    assert len({ex.id for ex in opened}) == 2 and not choice_ids & {ex.id for ex in opened}  # other questions
    for ex in opened:
        prompt = ex.messages[-1]["content"]
        assert "Options:" not in prompt and "<answer>diagnosis name</answer>" in prompt
        assert ex.searches == 1 and ex.gold_in_results
        info = next(seg for seg in ex.segments if seg.passages is not None)
        assert info.passages[1].startswith("Doc 2 (Title: Marfan syndrome)")
        last = ex.segments[-1].text
        assert "Doc 1 (Tall stature) does not fit. Doc 2 (Marfan syndrome) matches the findings." in last
        assert last.endswith(f"{tags.ANSWER_OPEN}Marfan syndrome{tags.ANSWER_CLOSE}") and "option" not in ex.target_text
    bare = open_question(question(0))
    missed = sft.build_traces([bare], TitledRetriever(["Myopia"]), sft.SFTConfig())[0]
    assert bare.options == {} and bare.answer == "Marfan syndrome"
    assert not missed.gold_in_results and missed.searches == 1
    assert missed.segments[0].text.endswith(f"{tags.SEARCH_OPEN}tall stature, ectopia lentis, arachnodactyly"
                                            f"{tags.SEARCH_CLOSE}")  # no options: no candidate search
    assert "No document matches the findings. Marfan syndrome fits them best." in missed.segments[-1].text


def test_balance_letters_keeps_every_option_once():
    out = common.balance_letters([question(i) for i in range(4)])
    assert [q.answer for q in out] == ["A", "B", "C", "D"]
    for q in out:
        assert sorted(q.options.values()) == sorted(question(0).options.values())
        assert q.options[q.answer] == "Marfan syndrome"


def test_a_test_split_source_is_refused(tmp_path):
    from medr1.errors import DataError

    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(question(i, split="test").to_dict()) + "\n" for i in range(2)))
    cfg = sft.SFTConfig(explanation_data=[f"jsonl:{data}"], trace_data=[])
    with pytest.raises(DataError, match=r"question 'q0' is from the 'test' split"):
        sft.build_examples(cfg)


@pytest.mark.parametrize("mask, fits", [
    ([0, 0, 1, 1, 1], True),                          # one turn of 3 <= single-turn budget 8
    ([0] + [1] * 9, False),                           # one turn of 9 > 8
    ([0, 1, 1, 0, 0, 1, 1, 1], True),                 # two turns of 2 and 3, 7 completion tokens
    ([0, 1, 1, 1, 1, 1, 0, 1], False),                # a turn of 5 > 4 per turn
    ([0, 1, 0, 1, 0, 1], False),                      # three turns > max_turns 2
    ([0, 1, 1, 0, 0, 0, 0, 0, 1, 1], False),          # 9 completion tokens > 8
])
def test_fits_the_shared_budget(mask, fits):
    from medr1.rollout import Budget

    budget = Budget(max_turns=2, max_new_tokens_per_turn=4, max_total_tokens=8, topk=1, max_info_tokens=16)
    assert sft.fits(mask, budget) is fits


def test_lora_step_trains_only_the_adapter_and_the_merge_answers_alike(tmp_path):
    """`lora: true`: one step moves the LoRA matrices and nothing of the base model; final/ (merged) is a plain
    model that loads without peft and gives the adapter model's logits."""
    loaded = models.load_model(models.TINY_MODEL, "cpu")  # its own copy: peft wraps (and merging alters) the model
    before = {k: v.detach().clone() for k, v in loaded.model.named_parameters()}
    rows, _ = sft.tokenize_examples(loaded, [sft.explanation_example(question(i)) for i in range(2)], 1024)
    cfg = build_config(sft.SFTConfig, dict(
        model=models.TINY_MODEL, output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
        learning_rate=1e-2, device="cpu", save_steps=1, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
    ))
    trainer = sft.build_trainer(cfg, loaded, rows)
    assert torch.isfinite(torch.tensor(trainer.train().training_loss))
    params = dict(trainer.model.named_parameters())
    adapters = {k: v for k, v in params.items() if "lora_" in k}
    assert adapters and all(v.requires_grad for v in adapters.values())
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at zero: it moved
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in params.items()
            if "lora_" not in k}
    assert base.keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in base.items())
    ids = torch.tensor([rows[0]["input_ids"][:32]])
    trainer.model.eval()
    with torch.no_grad():
        adapter_logits = trainer.model(input_ids=ids).logits
    final = common.save_final(trainer, loaded, tmp_path / "final", merge=True)
    assert not (final / "adapter_config.json").exists() and (final / "model.safetensors").is_file()
    merged = models.load_model(str(final), "cpu").model
    assert not any("lora_" in k for k, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-4)
    assert not torch.allclose(adapter_logits, models.load_model(models.TINY_MODEL, "cpu").model(input_ids=ids).logits,
                              atol=1e-4)  # and the merge carried the training: it is not the untrained model


def test_a_retrieved_title_is_an_option_by_the_name_rules_of_the_candidate_search():
    """first_option_doc compares titles with options as the candidate search and the grader do (normalize_name):
    accents, case and punctuation aside."""
    q = question(0)
    hits = [Hit(Document("OMIM:1", "Myopia", "x"), 1.0), Hit(Document("ORPHA:9", "HOMOCYSTINÙRIA", "x"), 1.0)]
    assert sft.first_option_doc(hits, q) == (2, "HOMOCYSTINÙRIA", "A")
    assert sft.first_option_doc(hits[:1], q) is None


def test_a_full_disk_stops_training_with_a_clear_error(tmp_path, monkeypatch):
    """torch.save on a full disk fails with "unexpected pos"; medr1 says the disk is full and how to go on, and
    leaves every other failure as it was."""
    import shutil
    from types import SimpleNamespace

    from medr1.errors import Medr1Error

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def train(self, resume_from_checkpoint=None):
            raise self.exc

    cfg = SimpleNamespace(output_dir=str(tmp_path))
    monkeypatch.setattr(common, "distributed_setup", lambda trainer: {})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4 << 20))
    with pytest.raises(Medr1Error, match=r"disk under .* is full \(4 MiB free; RuntimeError: unexpected pos.*--resume"):
        common.train_and_save(Failing(RuntimeError("unexpected pos 10 vs 8")), None, cfg, None, {}, 0.0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100 << 30))
    with pytest.raises(RuntimeError, match="^shape mismatch$"):  # plenty of space: not a disk problem
        common.train_and_save(Failing(RuntimeError("shape mismatch")), None, cfg, None, {}, 0.0)
    with pytest.raises(Medr1Error, match="is full"):  # ENOSPC says so whatever the free space reads
        common.train_and_save(Failing(OSError(28, "No space left on device")), None, cfg, None, {}, 0.0)
