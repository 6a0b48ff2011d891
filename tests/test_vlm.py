"""The VLM path on a tiny random LLaVA built in-process (no files, no network) and PNGs the tests make: image prompts
through the processor, KV reuse keyed on the image's content, an eval and `ask --image`, one SFT step whose
gradients reach the image projector, the saved model reloading as a VLM, and the LLaVA recipe's dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from medr1 import models  # noqa: E402
from medr1.config import build_config, load_config  # noqa: E402
from medr1.errors import Medr1Error  # noqa: E402
from medr1.generation import HFBackend, cat_image_tensors  # noqa: E402
from medr1.train import sft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASE = [{"role": "user", "content": "A chest film of a 40-year-old man with cough and fever. What does it show?"}]


@pytest.fixture(scope="module")
def vlm():
    model, processor = models.tiny_random_vlm(initializer_range=0.2)  # sharp logits: the image changes the text
    model.eval()
    return models.wrap_loaded(model, processor, models.SMOLLM2)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    red, noise = d / "red.png", d / "noise.png"
    Image.new("RGB", (32, 32), (250, 0, 0)).save(red)
    Image.effect_noise((40, 30), 90).convert("RGB").save(noise)
    return str(red), str(noise)


def test_an_image_prompt_expands_the_placeholder_and_keys_on_content(vlm, pngs):
    ids, image = models.chat_prompt(vlm, CASE, pngs[0])
    ids_b, image_b = models.chat_prompt(vlm, CASE, pngs[1])
    placeholder = vlm.processor.image_token_id
    assert ids.count(placeholder) == (models.TINY_IMAGE_SIZE // models.TINY_PATCH) ** 2  # 2 x 2 patches
    assert ids == ids_b  # same text, same placeholder ids: only the content tells them apart
    assert image.digest != image_b.digest and image.key < 0 and image.key != image_b.key
    assert image.keyed(ids) != image_b.keyed(ids) and image.keyed(ids)[:3] == ids[:3]
    assert list(image.tensors["pixel_values"].shape) == [1, 3, 28, 28]


def test_kv_reuse_never_crosses_images_and_matches_a_fresh_prefill(vlm, pngs):
    ids, red = models.chat_prompt(vlm, CASE, pngs[0])
    _, noise = models.chat_prompt(vlm, CASE, pngs[1])
    fresh = HFBackend.from_loaded(vlm, prefix_cache=False)
    want_red = fresh.generate([ids], 10, images=[red])[0].token_ids
    want_noise = fresh.generate([ids], 10, images=[noise])[0].token_ids
    assert want_red != want_noise  # the image reaches the text

    cached = HFBackend.from_loaded(vlm)
    assert cached.generate([ids], 10, images=[red])[0].token_ids == want_red
    reused = cached.stats["reused_tokens"]
    assert cached.generate([ids], 10, images=[noise])[0].token_ids == want_noise  # red's KV was not reused
    assert cached.stats["reused_tokens"] == reused  # nothing shared: the prompts differ from the image on
    assert cached.generate([ids], 10, images=[red])[0].token_ids == want_red
    assert cached.stats["reused_tokens"] == reused + len(ids) - 1  # the same image: its whole prompt reused
    both = cached.generate([ids, ids], 10, images=[noise, red])  # one prefill, two images in row order
    assert [o.token_ids for o in both] == [want_noise, want_red]
    # a continuation (the rollout appends information after a search) on the image's cached KV
    longer = ids + want_red[:4]
    assert cached.generate([longer], 6, images=[red])[0].token_ids == fresh.generate([longer], 6, images=[red])[0].token_ids


def test_the_engine_never_samples_the_image_placeholder(vlm, pngs):
    ids, red = models.chat_prompt(vlm, CASE, pngs[0])
    be = HFBackend.from_loaded(vlm, prefix_cache=False)
    assert be.banned_token_ids == [vlm.processor.image_token_id]
    from medr1.generation import SamplingParams

    outs = be.generate([ids] * 4, 24, images=[red] * 4, sampling=SamplingParams(temperature=5.0, seed=1))
    assert all(vlm.processor.image_token_id not in o.token_ids for o in outs)


def test_image_tensors_of_different_tile_counts_are_zero_padded():
    a, b = torch.ones(1, 2, 3), torch.ones(1, 4, 3)
    out = cat_image_tensors([a, b])
    assert out.shape == (2, 4, 3) and out[0, 2:].abs().sum() == 0 and out[0, :2].sum() == 6


def test_a_text_model_refuses_an_image_by_name(pngs):
    loaded = models.load_model(models.TINY_MODEL)
    with pytest.raises(Medr1Error, match="is a text model: it cannot read an image"):
        models.chat_prompt(loaded, CASE, pngs[0])


def test_an_unreadable_image_is_an_error_naming_it(vlm, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(Medr1Error, match="cannot read image .*bad.png"):
        models.chat_prompt(vlm, CASE, bad)


def image_questions(tmp_path: Path, pngs) -> Path:
    rows = [
        {"id": "v1", "question": "What imaging modality is shown?", "answer": "C", "image": pngs[0],
         "options": {"A": "CT", "B": "MRI", "C": "X-ray", "D": "Ultrasound"}, "split": "train",
         "explanation": "A plain radiograph: the film shows bone and air densities only."},
        {"id": "v2", "question": "Which organ is shown?", "answer": "A", "image": pngs[1], "split": "train",
         "options": {"A": "Lung", "B": "Liver", "C": "Brain", "D": "Heart"},
         "explanation": "Aerated lung fields fill the film."},
    ]
    path = tmp_path / "images.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_and_ask_read_the_image(tmp_path, pngs):
    from medr1.evaluate import EvalConfig, ask_case, run_eval

    data = image_questions(tmp_path, pngs)
    cfg = EvalConfig(model=models.TINY_VLM, data=f"jsonl:{data}", method="cot", out=str(tmp_path / "eval"),
                     max_new_tokens_per_turn=8, max_total_tokens=16, answer_tokens=0, device="cpu")
    metrics = run_eval(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert metrics["n"] == 2 and [r["image"] for r in records] == list(pngs)
    assert all(r["n_generated"] == cfg.single_turn_tokens() and r["finish_reason"] == "budget" for r in records)
    rec = ask_case("What is shown?", None, EvalConfig(model=models.TINY_VLM, out="-", max_turns=1, device="cpu",
                                                      max_new_tokens_per_turn=8, max_total_tokens=8),
                   retriever=None, image=pngs[0])
    assert rec["image"] == pngs[0] and rec["n_generated"] == 8
    with pytest.raises(Medr1Error, match="--image .*missing.png: no such file"):
        ask_case("What is shown?", None, EvalConfig(model=models.TINY_VLM, out="-"), image=str(tmp_path / "missing.png"))


def test_one_sft_step_on_image_questions_trains_the_projector_and_saves_a_vlm(tmp_path, pngs):
    data = image_questions(tmp_path, pngs)
    cfg = build_config(sft.SFTConfig, dict(
        model=models.TINY_VLM, output_dir=str(tmp_path / "run"), explanation_data=[f"jsonl:{data}"], trace_data=[],
        max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, device="cpu", save_steps=1))
    examples, report = sft.build_examples(cfg)
    assert report["explanation"][f"jsonl:{data}"]["with_image"] == 2
    loaded = models.load_model(models.TINY_VLM, "cpu")
    rows, stats = sft.tokenize_examples(loaded, examples, 1024)
    assert stats["rows"] == 2 and all(len(r["pixel_values"]) == 1 for r in rows)
    placeholder = loaded.processor.image_token_id
    assert all(not any(m for t, m in zip(r["input_ids"], r["assistant_masks"]) if t == placeholder) for r in rows)
    projector = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if "multi_modal_projector" in k}
    seen: list[tuple[int, ...]] = []
    tower = loaded.model.model.vision_tower
    tower.register_forward_hook(lambda module, args, kwargs, out: seen.append(tuple(kwargs.get("pixel_values",
                                args[0] if args else None).shape)), with_kwargs=True)
    trainer = sft.build_trainer(cfg, loaded, rows)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert seen and seen[0][0] == 2  # both images went through the vision tower in the one batch
    assert all(not torch.equal(projector[k], v) for k, v in loaded.model.named_parameters() if k in projector)
    final = sft.common.save_final(trainer, loaded, tmp_path / "final", merge=False)
    again = models.load_model(str(final), "cpu")
    assert again.processor is not None and again.processor.image_token_id == placeholder
    ids, image = models.chat_prompt(again, CASE, pngs[0])
    assert HFBackend.from_loaded(again).generate([ids], 4, images=[image])[0].token_ids


def test_the_llava_recipe_passes_its_dry_run(tmp_path, pngs):
    data = image_questions(tmp_path, pngs)
    recipe = ROOT / "recipes" / "llava-1.5-7b" / "recipe.yaml"
    cfg = load_config(sft.SFTConfig, recipe, [f"explanation_data=[jsonl:{data}]", f"output_dir={tmp_path}/r"],
                      section="sft")
    plan = sft.run_sft(cfg, dry_run=True)
    assert cfg.model == "llava-hf/llava-1.5-7b-hf" and cfg.lora and plan["peft"]
    assert plan["data"]["explanation"][f"jsonl:{data}"]["with_image"] == 2
    from medr1.train import grpo

    gcfg = load_config(grpo.GRPOConfig, recipe, [f"train_data=[jsonl:{data}]", f"output_dir={tmp_path}/g"],
                       section="grpo")
    gplan = grpo.run_grpo(gcfg, dry_run=True)
    assert gplan["prompt_method"] == "cot" and gcfg.budget == cfg.budget


def test_one_grpo_step_on_image_prompts_rolls_out_with_the_image_and_trains(tmp_path, pngs):
    """TRL hands the image prompts over in the parts form; the rollout renders them with the image (its tensors in
    the prefill), TRL computes the same pixels for the loss: the step is finite and the projector moves."""
    from medr1.rollout import run_rollouts
    from medr1.train import grpo

    data = image_questions(tmp_path, pngs)
    cfg = build_config(grpo.GRPOConfig, dict(
        model=models.TINY_VLM, output_dir=str(tmp_path / "grpo"), train_data=[f"jsonl:{data}"], num_generations=2,
        prompts_per_step=2, learning_rate=1e-2, max_steps=1, save_steps=1, device="cpu", temperature=1.0,
        use_retrieval=False, max_new_tokens_per_turn=12, max_total_tokens=12, answer_tokens=0))
    rows, _ = grpo.build_rows(cfg)
    assert sorted(r["image"].size for r in rows) == sorted(Image.open(p).size for p in pngs)
    loaded = models.load_model(cfg.model, "cpu")
    projector = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if "multi_modal_projector" in k}
    seen: list = []

    def spy(*args, **kw):  # the real engine, with the images the rollout function passes
        seen.append(kw.get("images"))
        return run_rollouts(*args, **kw)

    def odd_length(completions, **kw):  # a reward with variance, so the random model gets a gradient
        return [float(len(c[0]["content"]) % 2) for c in completions]

    trainer = grpo.build_trainer(cfg, loaded, rows, None, rollout_fn=spy, extra_reward_funcs=[odd_length])
    result = trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert len(seen) == 1 and len(seen[0]) == 4 and all(img is not None for img in seen[0])
    assert len({img.digest for img in seen[0]}) == 2  # two prompts, two images, each rolled out twice
    assert any(not torch.equal(projector[k], v) for k, v in loaded.model.named_parameters() if k in projector)
