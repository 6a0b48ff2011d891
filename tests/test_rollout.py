"""The self-ask rollout: exact token/mask bookkeeping with a scripted generator, budgets, retrieval failures as
observations, and the Hugging Face backend on a tiny random Llama (batching and KV reuse do not change results)."""

from __future__ import annotations

import pytest

from medr1 import tags
from medr1.data.schema import Document
from medr1.errors import ConfigError
from medr1.generation import HFBackend, SamplingParams, ScriptedBackend, find_stop, trim_at_stop
from medr1.retrieval.base import Hit
from medr1.rollout import LAST_SEARCH_NOTE, InfoBuilder, RolloutConfig, run_rollouts


class FakeRetriever:
    """Returns `k` documents per query whose title names the query; raises for queries in `fail`."""

    def __init__(self, n_docs: int = 2, fail: tuple[str, ...] = (), text: str = "short text"):
        self.n_docs, self.fail, self.text = n_docs, fail, text
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        self.calls.append(list(queries))
        if any(q in self.fail for q in queries):
            raise RuntimeError("boom")
        return [
            [Hit(Document(f"{q}-{i}", f"T{i} {q}", self.text, "fake"), 1.0 / (i + 1)) for i in range(min(k, self.n_docs))]
            for q in queries
        ]


def ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def scripted(tok, turns_by_case: dict[str, list[str]], eos_id=None) -> ScriptedBackend:
    """Each prompt's case text (the user message) picks its list of turn texts; the n-th continuation of a
    trajectory gets the n-th text (the last one repeats)."""
    seen: dict[str, int] = {}

    def script(prompt_ids: list[int], call: int) -> str:
        case = tok.decode(prompt_ids).split("user\n", 1)[1].split("<|im_end|>", 1)[0]
        n = seen.get(case, 0)
        seen[case] = n + 1
        replies = turns_by_case[case]
        return replies[min(n, len(replies) - 1)]

    return ScriptedBackend(tok, script, eos_id=eos_id)


@pytest.fixture()
def tok(tiny_llama):
    return tiny_llama.tokenizer


def prompt(tok, text: str) -> list[int]:
    return ids(tok, f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def test_two_turns_exact_tokens_and_mask(tiny_llama, tok) -> None:
    p = prompt(tok, "case one")
    turn1, turn2 = "<think>hmm</think>\n<search>x</search>", "<answer>B</answer>"
    backend = scripted(tok, {"case one": [turn1, turn2]})
    cfg = RolloutConfig(max_turns=4, topk=2, max_info_tokens=64)
    retriever = FakeRetriever()
    (t,) = run_rollouts(tiny_llama, [p], retriever, cfg, backend=backend)

    gen1, gen2 = ids(tok, turn1), ids(tok, turn2)
    info = InfoBuilder(tok, 64).build(["Doc 1 (Title: T0 x) short text", "Doc 2 (Title: T1 x) short text"])
    assert t.token_ids == gen1 + info + gen2
    assert t.loss_mask == [1] * len(gen1) + [0] * len(info) + [1] * len(gen2)
    assert len(t.logprobs) == len(t.token_ids)
    assert (t.turns, t.finish_reason, t.queries, t.tool_errors) == (2, "answer", ["x"], 0)
    assert t.retrieved_doc_ids == [["x-0", "x-1"]] and t.retrieved_titles == [["T0 x", "T1 x"]]
    assert t.n_generated == len(gen1) + len(gen2) == sum(t.loss_mask)
    assert t.prompt_ids == p
    # token-in/token-out: the second call continues exactly the ids kept so far, nothing re-tokenized
    assert backend.calls[1][0] == p + gen1 + info
    assert t.text == tok.decode(t.token_ids, skip_special_tokens=True)
    assert "<information>\nDoc 1 (Title: T0 x) short text\nDoc 2 (Title: T1 x) short text\n</information>" in t.text
    assert retriever.calls == [["x"]]


def test_batch_of_mixed_trajectories_refills_pool(tiny_llama, tok) -> None:
    prompts = [prompt(tok, f"case {c}") for c in "abcde"]
    backend = scripted(tok, {
        "case a": ["<answer>A</answer>"],
        "case b": ["<search>q1</search>", "<search>q2</search>", "<answer>C</answer>"],
        "case c": ["no answer at all<EOS>"],
        "case d": ["<search>q3</search>", "<answer>D</answer>"],
        "case e": ["<answer>B</answer>"],
    }, eos_id=tok.eos_token_id)
    cfg = RolloutConfig(batch_size=2, max_turns=4)
    trajs = run_rollouts(tiny_llama, prompts, FakeRetriever(), cfg, backend=backend)
    assert [t.finish_reason for t in trajs] == ["answer", "answer", "eos", "answer", "answer"]
    assert [t.turns for t in trajs] == [1, 3, 1, 2, 1]
    assert [t.queries for t in trajs] == [[], ["q1", "q2"], [], ["q3"], []]
    assert [t.index for t in trajs] == [0, 1, 2, 3, 4]
    assert all(len(c) <= 2 for c in backend.calls)  # never more than batch_size per generate call
    assert trajs[2].token_ids[-1] == tok.eos_token_id


class RecordingBar:
    """A caller's progress bar: records each update and whether it was closed."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True


def test_a_caller_s_bar_moves_as_each_trajectory_finishes_and_stays_open(tiny_llama, tok) -> None:
    """An eval passes its own bar: it advances before the whole batch is done (the one-turn answers finish while
    the searching case still runs), by one per trajectory in all, and the rollout does not close it."""
    prompts = [prompt(tok, f"case {c}") for c in "abc"]
    backend = scripted(tok, {"case a": ["<answer>A</answer>"],
                             "case b": ["<search>q1</search>", "<search>q2</search>", "<answer>C</answer>"],
                             "case c": ["<answer>B</answer>"]})
    bar = RecordingBar()
    run_rollouts(tiny_llama, prompts, FakeRetriever(), RolloutConfig(batch_size=3, max_turns=4), backend=backend,
                 bar=bar)
    assert sum(bar.updates) == 3 and len([n for n in bar.updates if n]) >= 2 and not bar.closed


def test_search_opened_in_the_prompt(tiny_llama, tok) -> None:
    """An assistant prefix "<search>" in the prompt: the model writes only "query</search>"."""
    p = prompt(tok, "prefixed") + ids(tok, "<search>")
    backend = scripted(tok, {"prefixed": ["rash fever</search>", "<answer>A</answer>"]})
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(), RolloutConfig(), backend=backend)
    assert t.queries == ["rash fever"] and t.tool_errors == 0 and t.finish_reason == "answer"


def test_max_turns_stops_search_and_warns_on_last(tiny_llama, tok) -> None:
    p = prompt(tok, "loop")
    backend = scripted(tok, {"loop": ["<search>again</search>"]})
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(), RolloutConfig(max_turns=3), backend=backend)
    assert (t.turns, t.finish_reason, len(t.queries)) == (3, "max_turns", 2)
    assert t.text.count(LAST_SEARCH_NOTE) == 1
    last_info = t.text.rsplit(tags.INFO_OPEN, 1)[1]
    assert LAST_SEARCH_NOTE in last_info
    assert t.text.endswith("<search>again</search>")


def test_max_new_tokens_per_turn(tiny_llama, tok) -> None:
    p = prompt(tok, "ramble")
    backend = scripted(tok, {"ramble": ["word " * 50]})
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(), RolloutConfig(max_new_tokens_per_turn=7), backend=backend)
    assert (t.n_generated, len(t.token_ids), t.finish_reason, t.turns) == (7, 7, "budget", 1)


def test_max_total_tokens_bounds_completion(tiny_llama, tok) -> None:
    p = prompt(tok, "budget")
    backend = scripted(tok, {"budget": ["<search>a</search>", "<search>b</search>", "words " * 40]})
    cfg = RolloutConfig(max_turns=8, max_total_tokens=60, max_info_tokens=24, max_new_tokens_per_turn=50)
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(), cfg, backend=backend)
    assert len(t.token_ids) <= 60 and t.finish_reason == "budget"
    # information that would leave no room is not inserted
    cfg = RolloutConfig(max_turns=8, max_total_tokens=30, max_info_tokens=64)
    backend = scripted(tok, {"budget": ["<search>a</search>", "<answer>A</answer>"]})
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(text="long " * 50), cfg, backend=backend)
    assert t.finish_reason == "budget" and tags.INFO_OPEN not in t.text and t.queries == ["a"]
    assert len(t.token_ids) < 30


def test_a_reply_cut_off_by_its_budget_gets_a_forced_answer(tiny_llama, tok) -> None:
    """answer_tokens: the environment closes the open <think> and opens <answer> (mask 0); the model's answer
    tokens are sampled (mask 1), bounded by answer_tokens, not counted as a turn. A reply that ended its turn
    without answering is reopened the same way, its end-of-turn token taken back (`force_after_eos`, on by
    default); with it off, that reply stays as it ended."""
    p, q = prompt(tok, "ramble"), prompt(tok, "quits")
    ramble, answer = "<think>" + "word " * 50, "B</answer>"
    turns = {"ramble": [ramble, answer], "quits": ["no answer<EOS>", "C</answer>"]}
    backend = scripted(tok, turns, eos_id=tok.eos_token_id)
    cfg = RolloutConfig(max_turns=1, max_new_tokens_per_turn=9, answer_tokens=6)
    t, u = run_rollouts(tiny_llama, [p, q], None, cfg, backend=backend)
    gen, forced, ans = ids(tok, ramble)[:9], ids(tok, "</think>\n<answer>"), ids(tok, answer)
    assert t.token_ids == gen + forced + ans[:6]
    assert t.loss_mask == [1] * 9 + [0] * len(forced) + [1] * len(ans[:6])
    assert (t.finish_reason, t.forced, t.turns, t.n_generated) == ("forced", True, 1, 9 + len(ans[:6]))
    said, reopened, answered = ids(tok, "no answer"), ids(tok, "\n<answer>"), ids(tok, "C</answer>")
    assert len(said) < 9  # it ended by itself, inside the budget
    assert backend.calls[-1] == [p + gen + forced, q + said + reopened]  # the end-of-turn token taken back
    assert u.token_ids == said + reopened + answered and tok.eos_token_id not in u.token_ids
    assert u.loss_mask == [1] * len(said) + [0] * len(reopened) + [1] * len(answered)
    assert (u.finish_reason, u.forced, u.turns, u.n_generated) == ("forced", True, 1, len(said) + len(answered))
    assert u.text == "no answer\n<answer>C</answer>"
    off = RolloutConfig(max_turns=1, max_new_tokens_per_turn=9, answer_tokens=6, force_after_eos=False)
    (u,) = run_rollouts(tiny_llama, [q], None, off, backend=scripted(tok, turns, eos_id=tok.eos_token_id))
    assert (u.finish_reason, u.forced, u.token_ids[-1]) == ("eos", False, tok.eos_token_id)
    # off by default: the same reply stays cut off
    backend = scripted(tok, {"ramble": [ramble, answer]})
    (t,) = run_rollouts(tiny_llama, [p], None, RolloutConfig(max_turns=1, max_new_tokens_per_turn=9), backend=backend)
    assert (t.finish_reason, t.forced, len(t.token_ids)) == ("budget", False, 9)


def test_a_search_in_the_last_turn_is_answered_by_force(tiny_llama, tok) -> None:
    p = prompt(tok, "loop")
    backend = scripted(tok, {"loop": ["<search>again</search>", "<search>again</search>", "Marfan</answer>"]})
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(), RolloutConfig(max_turns=2, answer_tokens=8), backend=backend)
    assert (t.turns, t.finish_reason, len(t.queries)) == (2, "forced", 1)
    assert t.text.endswith("<search>again</search>\n<answer>Marfan</answer>")


def test_forced_answer_on_the_hf_backend(tiny_llama, tok) -> None:
    """A random tiny model never answers: with answer_tokens it writes exactly answer_tokens more after `<answer>`."""
    p = prompt(tok, "random")
    cfg = RolloutConfig(max_turns=1, max_new_tokens_per_turn=5, answer_tokens=4)
    (t,) = run_rollouts(tiny_llama, [p], None, cfg)
    forced = ids(tok, "\n<answer>")
    assert t.finish_reason == "forced" and t.token_ids[5:5 + len(forced)] == forced
    assert t.loss_mask == [1] * 5 + [0] * len(forced) + [1] * 4 and t.n_generated == 9


def test_max_info_tokens_truncates_each_passage(tiny_llama, tok) -> None:
    p = prompt(tok, "info")
    backend = scripted(tok, {"info": ["<search>a</search>", "<answer>A</answer>"]})
    cfg = RolloutConfig(topk=3, max_info_tokens=40)
    (t,) = run_rollouts(tiny_llama, [p], FakeRetriever(n_docs=3, text="hypotonia " * 100), cfg, backend=backend)
    info_len = t.loss_mask.count(0)
    assert 0 < info_len <= 40
    info_text = tok.decode([i for i, m in zip(t.token_ids, t.loss_mask) if m == 0])
    assert info_text.startswith(f"\n{tags.INFO_OPEN}\n") and info_text.endswith(f"\n{tags.INFO_CLOSE}\n")
    assert "Doc 1" in info_text and "Doc 2" in info_text and "Doc 3" in info_text  # every passage keeps a share
    assert t.finish_reason == "answer"


def test_retrieval_failure_becomes_observation(tiny_llama, tok) -> None:
    prompts = [prompt(tok, "bad"), prompt(tok, "good"), prompt(tok, "empty"), prompt(tok, "blank")]
    backend = scripted(tok, {c: [q, "<answer>A</answer>"] for c, q in [
        ("bad", "<search>bad</search>"), ("good", "<search>good</search>"), ("empty", "<search>nothing</search>"),
        ("blank", "<search>  </search>")]})

    class Retriever(FakeRetriever):
        def search(self, qs, k=5):
            return [[] if q == "nothing" else hits for q, hits in zip(qs, super().search(qs, k))]

    retriever = Retriever(fail=("bad",))
    trajs = run_rollouts(tiny_llama, prompts, retriever, RolloutConfig(), backend=backend)
    bad, good, empty, blank = trajs
    assert "Search failed: RuntimeError: boom" in bad.text and bad.tool_errors == 1
    assert bad.finish_reason == "answer" and bad.retrieved_doc_ids == [[]]
    assert good.tool_errors == 0 and good.retrieved_doc_ids == [["good-0", "good-1"]]  # isolated from the failure
    assert "No results." in empty.text and empty.tool_errors == 1
    assert "Search failed: empty query" in blank.text and blank.tool_errors == 1 and blank.queries == [""]
    assert ["blank"] not in retriever.calls  # empty queries never reach the retriever


def test_no_retriever_is_single_turn_until_answer(tiny_llama, tok) -> None:
    p = prompt(tok, "cot")
    backend = scripted(tok, {"cot": ["<search>q</search> I think <answer>C</answer> trailing"]})
    (t,) = run_rollouts(tiny_llama, [p], None, RolloutConfig(), backend=backend)
    assert (t.turns, t.finish_reason, t.queries) == (1, "answer", [])
    assert t.text.endswith("<answer>C</answer>")


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_turns"):
        RolloutConfig(max_turns=0)
    with pytest.raises(ConfigError, match="top_p"):
        RolloutConfig(top_p=0)
    with pytest.raises(ConfigError, match="max_info_tokens"):
        RolloutConfig(max_info_tokens=4)


def test_trim_and_find_stop(tok) -> None:
    seq = ids(tok, "abc </search> more text")
    kept, stop = trim_at_stop(tok, seq, ["</search>", "</answer>"])
    assert stop == "</search>" and tok.decode(kept).endswith("</search>") and len(kept) < len(seq)
    assert trim_at_stop(tok, seq, ["</answer>"]) == (seq, None)
    assert find_stop(tok, kept, ["</search>"]) == "</search>"
    assert find_stop(tok, kept[:-1], ["</search>"]) is None


# --- the Hugging Face backend on a tiny random Llama ------------------------------------------------------------------


def _relabel(outs):
    for o in outs:
        if o.finish == "stop":
            o.stop = tags.SEARCH_CLOSE
    return outs


class ForcedStops:
    """Wraps HFBackend so a random model 'searches': generation stops at common letters, reported as </search>.
    This drives the real multi-turn path (information appended, KV reused) with a model that never writes tags.
    Without `open` the rollout schedules it in lockstep turns; ForcedStopsContinuous adds `open`."""

    def __init__(self, inner: HFBackend, letters=("e", "o")):
        self.inner, self.letters = inner, list(letters)

    def generate(self, prompts, max_new_tokens, stop_strings=(), sampling=SamplingParams()):
        return _relabel(self.inner.generate(prompts, max_new_tokens, self.letters, sampling))

    def reset(self):
        self.inner.reset()


class ForcedStopsContinuous(ForcedStops):
    def open(self, stop_strings=(), sampling=SamplingParams()):
        batch = self.inner.open(self.letters, sampling)

        class Batch:
            size = property(lambda _: batch.size)

            def add(self, requests):
                done = batch.add(requests)
                _relabel([o for _, o in done])
                return done

            def step(self):
                done = batch.step()
                _relabel([o for _, o in done])
                return done

        return Batch()


def _rollout_tiny(loaded, prompts, batch_size, prefix_cache=True, temperature=0.0, continuous=True):
    wrapper = ForcedStopsContinuous if continuous else ForcedStops
    backend = wrapper(HFBackend.from_loaded(loaded, prefix_cache=prefix_cache))
    cfg = RolloutConfig(batch_size=batch_size, max_turns=3, max_new_tokens_per_turn=12, max_total_tokens=200,
                        max_info_tokens=32, temperature=temperature, seed=5)
    return run_rollouts(loaded, prompts, FakeRetriever(), cfg, backend=backend), backend


def _tiny_prompts(tok):
    texts = ["A 4-year-old boy", "Which of the following is the most likely", "Frequent: hypotonia",
             "short stature, microcephaly and intellectual disability", "Onset", "Inheritance: autosomal recessive.",
             "You are a medical expert."]
    return [prompt(tok, t) for t in texts]


def _same(ref, other):
    for a, b in zip(ref, other):
        assert a.token_ids == b.token_ids and a.loss_mask == b.loss_mask and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_hf_backend_batching_and_kv_reuse_match_batch_one(tiny_llama, tok) -> None:
    prompts = _tiny_prompts(tok)
    ref, _ = _rollout_tiny(tiny_llama, prompts, batch_size=1, prefix_cache=False, continuous=False)
    assert any(t.turns > 1 for t in ref)  # the forced stops exercised information insertion
    lockstep, backend = _rollout_tiny(tiny_llama, prompts, batch_size=4, continuous=False)
    assert backend.inner.stats["reused_tokens"] > 0  # continuation turns reused KV
    _same(ref, lockstep)
    continuous, backend = _rollout_tiny(tiny_llama, prompts, batch_size=3)
    assert backend.inner.stats["reused_tokens"] > 0
    _same(ref, continuous)


def test_decode_batch_buffer_moves_keep_results(tiny_llama, tok, monkeypatch) -> None:
    """Tiny growth steps and an eager left trim force every buffer path (grow, shift right, trim left, slot swap)."""
    from medr1.generation import DecodeBatch

    prompts = _tiny_prompts(tok)
    ref, _ = _rollout_tiny(tiny_llama, prompts, batch_size=1, prefix_cache=False, continuous=False)
    calls = {"trim": 0, "shift": 0}
    real_trim, real_shift = DecodeBatch._trim_left, DecodeBatch._shift_right

    def trim(self):
        before = self.length
        real_trim(self)
        calls["trim"] += self.length < before

    def shift(self, d):
        calls["shift"] += self.size > 0
        real_shift(self, d)

    monkeypatch.setattr(DecodeBatch, "GROW", 1)
    monkeypatch.setattr(DecodeBatch, "TRIM", 2)
    monkeypatch.setattr(DecodeBatch, "_trim_left", trim)
    monkeypatch.setattr(DecodeBatch, "_shift_right", shift)
    moved, _ = _rollout_tiny(tiny_llama, prompts, batch_size=3)
    _same(ref, moved)
    assert calls["trim"] > 0 and calls["shift"] > 0


def test_hf_backend_matches_transformers_generate(tiny_llama, tok) -> None:
    import torch

    prompts = _tiny_prompts(tok)[:3]
    outs = HFBackend.from_loaded(tiny_llama).generate(prompts, 15)
    for p, o in zip(prompts, outs):
        ref = tiny_llama.model.generate(
            torch.tensor([p]), max_new_tokens=15, do_sample=False, pad_token_id=tok.pad_token_id,
            eos_token_id=list(tiny_llama.stop_token_ids),
        )[0, len(p):].tolist()
        assert o.token_ids == ref


def test_sampling_is_seeded_per_trajectory(tiny_llama, tok) -> None:
    prompts = _tiny_prompts(tok)
    one, _ = _rollout_tiny(tiny_llama, prompts, batch_size=1, temperature=1.0)
    many, _ = _rollout_tiny(tiny_llama, prompts, batch_size=5, temperature=1.0)
    assert [t.token_ids for t in one] == [t.token_ids for t in many]
    greedy, _ = _rollout_tiny(tiny_llama, prompts, batch_size=5)
    assert [t.token_ids for t in one] != [t.token_ids for t in greedy]
