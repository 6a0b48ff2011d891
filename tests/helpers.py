"""Test helpers: a tiny random Llama and a byte-level BPE tokenizer built in memory (no network, ~1 s).

    from helpers import make_tiny_llama, make_tiny_tokenizer, tiny_loaded
    model, tokenizer = make_tiny_llama(seed=0)      # a fresh model (train it freely)
    loaded = tiny_loaded()                          # a medr1.models.LoadedModel around a fresh tiny model

The tokenizer has ChatML special tokens (<|im_start|>, <|im_end|>, <|endoftext|>) and a ChatML chat template like
SmolLM2's, and the tag strings (<search>, </answer>, ...) split into a few ordinary tokens as they do in SmolLM2
("<", "search", ">"). The pytest fixtures `tiny_llama` / `tiny_llama_dir` in conftest.py wrap these.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def make_tiny_tokenizer():
    """`medr1.models.tiny_tokenizer()` with left padding (ChatML tokens and template; any text round-trips)."""
    from medr1.models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.padding_side = "left"
    return tok


def make_tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 2):
    """(model, tokenizer): a random LlamaForCausalLM (~0.1M parameters, float32, eval mode) and its tokenizer."""
    from medr1.models import tiny_random_llama

    model, tok = tiny_random_llama(seed, hidden, layers, initializer_range=0.2)
    tok.padding_side = "left"
    return model.eval(), tok


def tiny_loaded(seed: int = 0):
    """A medr1.models.LoadedModel around a fresh tiny Llama (generic spec)."""
    from medr1.models import wrap_loaded

    model, tok = make_tiny_llama(seed)
    return wrap_loaded(model, tok)


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Save a tiny Llama + tokenizer as a normal checkpoint directory (for code paths that take a path)."""
    model, tok = make_tiny_llama(seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving_app(app):
    """A real uvicorn server for the ASGI `app` on a free loopback port, for the block: yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


CASES = ["Tall stature, arachnodactyly, ectopia lentis and aortic root dilatation.",
         "Recurrent fevers, abdominal pain and serositis in a child.",
         "Seizures, microcephaly and global developmental delay."]


def case_prompts(loaded, method: str = "cot") -> list[list[int]]:
    """Chat prompt ids of three short open cases under `method`, for comparing generation engines."""
    from medr1.data.schema import Question
    from medr1.models import chat_prompt_ids
    from medr1.prompts import build_messages

    return [chat_prompt_ids(loaded, build_messages(Question(id=f"c{i}", question=c, options={}, answer=""), method))
            for i, c in enumerate(CASES)]


def assert_same_self_ask_rollouts(loaded, reference, other) -> None:
    """The self-ask rollouts of CASES through `other` equal those through `reference` (token ids, loss masks,
    turns, finish reasons, queries), with a fixture retriever and a small budget."""
    from test_evaluate import FakeRetriever, load_fixture_docs

    from medr1.rollout import RolloutConfig, run_rollouts

    cfg = RolloutConfig(max_turns=3, max_new_tokens_per_turn=64, max_total_tokens=512, topk=2, max_info_tokens=128,
                        answer_tokens=16, batch_size=3)
    prompts = case_prompts(loaded, "self-ask")
    retriever = FakeRetriever(load_fixture_docs())
    expected = run_rollouts(loaded, prompts, retriever, cfg, backend=reference)
    got = run_rollouts(loaded, prompts, retriever, cfg, backend=other)
    assert len(expected) == len(got) == len(prompts)
    for x, y in zip(expected, got):
        assert x.token_ids == y.token_ids and x.loss_mask == y.loss_mask
        assert (x.turns, x.finish_reason, x.queries) == (y.turns, y.finish_reason, y.queries)
