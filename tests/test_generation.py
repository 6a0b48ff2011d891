"""The Hugging Face generation backend on a tiny random Llama: prefix KV reuse (shared prompt prefixes, identical
prompts, continuations) changes nothing but the work done; the prefix store evicts by size."""

from __future__ import annotations

import pytest

from medr1.generation import DecodeBatch, HFBackend, PrefixStore, SamplingParams, _Entry, common_prefix_len


@pytest.mark.parametrize("a,b,n", [
    ([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2, 3], [0, 2, 3], 0),
    (list(range(200)), list(range(130)) + [-1] + list(range(131, 200)), 130),
    (list(range(128)), list(range(128)) + [5], 128),
])
def test_common_prefix_len(a, b, n) -> None:
    assert common_prefix_len(a, b) == n == common_prefix_len(b, a)


def _prompts(tok):
    shared = "You are a medical expert. Think step by step, search when unsure, then answer. "
    return [list(tok(shared + t)["input_ids"]) for t in ("Frequent: hypotonia.", "Onset: childhood.", "A boy")]


def test_shared_prefixes_and_duplicates_reuse_kv_without_changing_outputs(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    prompts = _prompts(tok)
    batch = prompts + [prompts[0], prompts[0]]  # a GRPO-like group of identical prompts
    ref = HFBackend.from_loaded(tiny_llama, prefix_cache=False)
    cached = HFBackend.from_loaded(tiny_llama)
    want = ref.generate(batch, 10, sampling=SamplingParams(temperature=1.0, seed=3))
    got = cached.generate(batch, 10, sampling=SamplingParams(temperature=1.0, seed=3))
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [o.logprobs for o in got] == [pytest.approx(o.logprobs, abs=1e-4) for o in want]
    shared = common_prefix_len(prompts[0], prompts[1])
    assert shared > 16
    # the longest prompt is prefilled alone, the others reuse the shared instruction prefix; duplicates are free
    assert cached.stats["reused_tokens"] >= 2 * shared
    assert cached.stats["prefill_tokens"] <= sum(len(p) for p in prompts) - 2 * shared + 2
    assert ref.stats["prefill_tokens"] == sum(len(p) for p in prompts)  # duplicates deduplicated there too


def test_continuation_prefills_only_new_tokens(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    prompts = _prompts(tok)
    be = HFBackend.from_loaded(tiny_llama)
    first = be.generate(prompts, 20, ["e", "o", "a"])
    stopped = [i for i, o in enumerate(first) if o.finish == "stop"]
    assert stopped
    info = list(tok("\n<information>\nDoc 1 (Title: X) y\n</information>\n")["input_ids"])
    cont = [prompts[i] + first[i].token_ids + info for i in stopped]
    before = dict(be.stats)
    got = be.generate(cont, 8)
    assert be.stats["prefill_tokens"] - before["prefill_tokens"] == len(stopped) * (len(info) + 1)
    want = HFBackend.from_loaded(tiny_llama, prefix_cache=False).generate(cont, 8)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    be.reset()
    assert be.store.entries == []


def test_prefix_store_evicts_least_recently_used() -> None:
    store = PrefixStore(max_bytes=100, bytes_per_token=1)
    a, b, c = _Entry(list(range(40)), []), _Entry(list(range(100, 140)), []), _Entry(list(range(200, 240)), [])
    store.add(a)
    store.add(b)
    assert store.match(list(range(30)) + [7])[0] is a  # a becomes most recently used
    store.add(c)  # 120 tokens > 100: the least recently used (b) goes
    assert store.entries == [a, c] and store.tokens == 80
    longer = _Entry(list(range(60)), [])
    store.add(longer)  # extends a: a is redundant
    assert a not in store.entries and longer in store.entries
    assert store.match(list(range(5)) + [9])[0] is None  # below MIN_SHARED
    assert store.match(list(range(60)))[1] == 59  # at least one token is left to prefill


def test_a_batch_that_empties_takes_a_prompt_longer_than_its_buffers(tiny_llama) -> None:
    """Continuous scheduling: every row finishes, then a prompt longer than the allocated columns joins (the GRPO
    crash of a study run: "expanded size 700 must match 608"). It generates what a fresh batch generates."""
    from medr1.generation import Request

    tok = tiny_llama.tokenizer
    short = list(tok("A boy with seizures.")["input_ids"])
    long = (list(tok("Frequent: hypotonia, seizures, ataxia. ")["input_ids"]) * 40)[:DecodeBatch.GROW + 100]
    be = HFBackend.from_loaded(tiny_llama, prefix_cache=False)
    batch = be.open()
    assert batch.add([Request("short", short, 2)]) == []
    finished = []
    while batch.size:
        finished += batch.step()
    assert [k for k, _ in finished] == ["short"] and batch.valid.shape[1] < len(long)
    batch.add([Request("long", long, 4)])
    got = []
    while batch.size:
        got += batch.step()
    want = HFBackend.from_loaded(tiny_llama, prefix_cache=False).generate([long], 4)
    assert [o.token_ids for _, o in got] == [want[0].token_ids]


class FakeVLLMClient:
    """TRL's `VLLMClient.generate` contract (token ids in, `completion_ids` and per-token `logprobs` out), answering
    each prompt with `reply` tokens; it records the requests."""

    def __init__(self, reply: list[int]) -> None:
        self.reply, self.requests = reply, []

    def generate(self, prompts, temperature, top_p, max_tokens, logprobs, generation_kwargs):
        self.requests.append({"prompts": prompts, "temperature": temperature, "max_tokens": max_tokens,
                              "logprobs": logprobs, **generation_kwargs})
        ids = [self.reply[:max_tokens] for _ in prompts]
        return {"completion_ids": ids, "logprobs": [[[-0.5] for _ in row] for row in ids]}


def test_the_vllm_server_backend_cuts_at_stops_and_keeps_each_sampled_row_s_seed(tiny_llama) -> None:
    from medr1.generation import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, VLLMServerBackend

    tok = tiny_llama.tokenizer
    search = tok.encode("I look it up.<search>marfan</search> and then more", add_special_tokens=False)
    client = FakeVLLMClient(search)
    backend = VLLMServerBackend(client, tok, stop_token_ids=[tok.eos_token_id])
    # greedy: the prompts of one budget are one request; the stop string cuts after the token completing it
    outs = backend.generate([[1, 2], [3]], 64, stop_strings=["</search>"])
    assert len(client.requests) == 1 and client.requests[0]["prompts"] == [[1, 2], [3]]
    assert client.requests[0]["stop"] == ["</search>"] and client.requests[0]["include_stop_str_in_output"]
    assert client.requests[0]["skip_special_tokens"] is False and "seed" not in client.requests[0]
    for out in outs:
        assert out.finish == FINISH_STOP and out.stop == "</search>"
        assert tok.decode(out.token_ids).endswith("</search>") and len(out.logprobs) == len(out.token_ids)
    # sampled: one request per row, each with its own seed (a GRPO group repeats its prompt)
    client.requests.clear()
    outs = backend.generate([[1, 2]] * 3, [4, 4, 2], sampling=SamplingParams(temperature=1.0, seeds=(7, 8, 9)))
    assert sorted(r["seed"] for r in client.requests) == [7, 8, 9]
    assert [len(o.token_ids) for o in outs] == [4, 4, 2] and all(o.finish == FINISH_LENGTH for o in outs)
    assert outs[0].logprobs == [-0.5] * 4
    # an end-of-turn id ends it as eos
    client.reply = tok.encode("done", add_special_tokens=False) + [tok.eos_token_id]
    assert backend.generate([[1]], 32)[0].finish == FINISH_EOS
