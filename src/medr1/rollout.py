"""The self-ask rollout: the model thinks, searches, reads what the retriever returns, and answers.

One trajectory is a small state machine, GENERATE -> (SEARCH -> GENERATE)* -> DONE:
- GENERATE: the backend continues the trajectory's token ids until `</search>`, `</answer>`, an end-of-sequence
  token or the token budget. The sampled ids are appended with loss_mask 1.
- SEARCH: the query of the last `<search>…</search>` goes to the retriever (all trajectories that searched in this
  turn in one batched call). The `<information>` block is tokenized on its own and appended with loss_mask 0. The
  model's text is never re-encoded: token ids in, token ids out.
- DONE, with finish_reason:
    answer     the model closed `</answer>`
    eos        the model ended its turn without an answer
    budget     `max_new_tokens_per_turn` or `max_total_tokens` ran out (or the information would not fit)
    max_turns  the model asked for a search in its last allowed turn (`max_turns` counts generation turns).
  The search of turn `max_turns - 1` is the last one executed; its information block ends with a note telling the
  model to answer now, so a model that keeps searching still gets one turn to answer.
    forced     with `answer_tokens` > 0, a trajectory cut off ("budget" or "max_turns") is reopened once: the
               environment closes its open tag and writes `<answer>` (loss_mask 0), and the model writes the answer
               in at most `answer_tokens` tokens (loss_mask 1; not a turn). With `force_after_eos` (the default),
               so is a reply that ended its turn without answering ("eos"): its end-of-turn token is taken back
               first, so the answer continues the reasoning. Every method gets the same forced answer,
               so budgets stay equal; the `forced` count shows how often the budget did not fit the reasoning.

A retrieval exception, an empty query or an empty result becomes observation text ("Search failed: …" /
"No results.") counted in `tool_errors`; it never raises. With `retriever=None` (or `max_turns=1`) the rollout is a
single turn that stops only at `</answer>` (chain-of-thought and RAG prompts).

Scheduling: at most `batch_size` trajectories generate together. With the Hugging Face backend it is continuous: a
trajectory whose turn ended leaves the decode batch, and a continuing or pending one joins at the next step; the
backend keeps a searching trajectory's KV cache, so its next turn prefills only the new information tokens. Other
backends (vLLM, scripted test backends) run lockstep turns, one `generate()` call per turn. Greedy results do not
depend on the scheduling or batch size (up to float rounding), and sampling uses a seed per trajectory and turn.

    python -c "from medr1.models import load_model, chat_prompt_ids; from medr1.rollout import *; \\
      from medr1.retrieval import open_retriever; lm = load_model('smollm2-135m'); \\
      p = chat_prompt_ids(lm, [{'role': 'user', 'content': 'Seizures and ataxia: <search> something first.'}]); \\
      print(run_rollouts(lm, [p], open_retriever(None), RolloutConfig())[0].text)"
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medr1 import tags
from medr1.errors import ConfigError
from medr1.generation import FINISH_EOS, FINISH_STOP, GenerationBackend, GenOutput, HFBackend, SamplingParams
from medr1.prompts import format_passage
from medr1.retrieval.base import MAX_TOPK, Hit, Retriever

FINISH_REASONS = ("answer", "eos", "budget", "max_turns", "forced")
LAST_SEARCH_NOTE = "(That was your last search. Give your final answer now.)"
SEARCH_FAILED = "Search failed: "
QUERY_CONTEXT_TOKENS = 32  # tokens before a turn that may hold its <search> opening tag


@dataclass(frozen=True)
class Budget:
    """The environment's budgets, one `rollout:` section per recipe, handed unchanged to SFT trace building, every
    GRPO arm and every evaluation (each stage config inherits these fields; `medr1.config.load_config` fills them
    from the `rollout:` section and refuses them in a stage's own section).

    The comparability rule (`for_method`): every method gets the same generated-token budget. A method with
    retrieval in the loop (self-ask) gets `max_turns` turns of `max_new_tokens_per_turn`; a method without it (cot,
    rag) gets ONE turn of min(max_total_tokens, max_turns x max_new_tokens_per_turn) -- at least as many tokens as
    the searching method can generate, since inserted information also counts against `max_total_tokens`."""

    SHARED_SECTION = "rollout"

    max_turns: int = 4  # generation turns; at most max_turns - 1 searches are executed
    max_new_tokens_per_turn: int = 256
    max_total_tokens: int = 1024  # completion tokens (generated + inserted information); the prompt is not counted
    topk: int = 3  # passages per search
    max_info_tokens: int = 384  # tokens of one <information> block, tags included
    answer_tokens: int = 0  # forced answer: tokens a reply that ended without `<answer>` gets to write one (0 = off)
    force_after_eos: bool = True  # the forced answer also for a reply that ended its turn (eos) without answering

    def validate_budget(self, where: str = "rollout") -> None:
        for key in ("max_turns", "max_new_tokens_per_turn", "max_total_tokens", "topk"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.topk > MAX_TOPK:
            raise ConfigError(f"{where}.topk must be at most {MAX_TOPK}, got {self.topk}")
        if self.answer_tokens < 0:
            raise ConfigError(f"{where}.answer_tokens must be >= 0 (0 = no forced answer), got {self.answer_tokens}")
        if self.max_info_tokens < 16:
            raise ConfigError(f"{where}.max_info_tokens must be >= 16 (tags alone take ~8), got {self.max_info_tokens}")

    @property
    def budget(self) -> "Budget":
        """Just the budget fields of this (stage) config."""
        return Budget(**{key: getattr(self, key) for key in BUDGET_KEYS})

    def single_turn_tokens(self) -> int:
        """What a method without retrieval may generate in its one turn (the rule above)."""
        return min(self.max_total_tokens, self.max_turns * self.max_new_tokens_per_turn)


BUDGET_KEYS = tuple(f.name for f in dataclasses.fields(Budget))
Budget.SHARED_KEYS = BUDGET_KEYS


@dataclass(frozen=True)
class RolloutConfig(Budget):
    """One rollout run: the budgets (`Budget`) plus sampling and batching."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 16  # trajectories generated together
    seed: int = 0

    def validate(self) -> None:
        self.validate_budget()
        if self.batch_size < 1:
            raise ConfigError(f"rollout batch_size must be >= 1, got {self.batch_size}")
        if self.temperature < 0:
            raise ConfigError(f"rollout temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout top_p must be in (0, 1], got {self.top_p}")

    def __post_init__(self) -> None:
        self.validate()


def for_method(budget: Budget, in_loop: bool, *, temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16,
               seed: int = 0) -> RolloutConfig:
    """The rollout of one method under the shared `budget`: THE place where the comparability rule (see `Budget`)
    is applied, for evaluation and for both GRPO arms alike."""
    b = budget.budget
    if not in_loop:
        b = dataclasses.replace(b, max_turns=1, max_new_tokens_per_turn=b.single_turn_tokens())
    return RolloutConfig(**dataclasses.asdict(b), temperature=temperature, top_p=top_p, batch_size=batch_size,
                         seed=seed)


@dataclass
class Trajectory:
    """One rollout. `token_ids` is the completion only; `loss_mask` is 1 for sampled tokens, 0 for information."""

    prompt_ids: list[int]
    index: int = 0  # position in the prompts given to run_rollouts
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # sampling log-probabilities (0.0 on information tokens)
    text: str = ""  # the decoded completion (special tokens skipped)
    queries: list[str] = field(default_factory=list)  # one per executed search
    retrieved_doc_ids: list[list[str]] = field(default_factory=list)  # per executed search
    retrieved_titles: list[list[str]] = field(default_factory=list)
    turns: int = 0  # generation turns
    finish_reason: str = ""
    forced: bool = False  # the environment opened `<answer>` after the reply ended without one (`answer_tokens`)
    tool_errors: int = 0  # failed searches, empty queries and empty results
    n_generated: int = 0  # sampled tokens (sum of loss_mask)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# information blocks
# ---------------------------------------------------------------------------------------------------------------------


class InfoBuilder:
    """Tokenizes `<information>` blocks alone; each passage (formatted by medr1.prompts.format_passage, which also
    caps its words) is cut to an equal share of `max_info_tokens`."""

    def __init__(self, tokenizer: Any, max_info_tokens: int):
        self.tok = tokenizer
        self.max_info_tokens = max_info_tokens
        # Split the one definition of the block (tags.format_information) around its body.
        head, tail = tags.format_information(["\x00"]).split("\x00")
        self.head, self.tail = self._ids(head), self._ids(tail)
        empty = tags.format_information([])
        self.empty_body = empty[len(head) : len(empty) - len(tail)]  # the protocol's "No results." text
        self.newline = self._ids("\n")
        self.note = self._ids("\n" + LAST_SEARCH_NOTE)

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def build(self, passages: list[str], last: bool = False) -> list[int]:
        """Token ids of the block for `passages` (body "No results." when empty)."""
        passages = passages or [self.empty_body]
        note = self.note if last else []
        budget = self.max_info_tokens - len(self.head) - len(self.tail) - len(note)
        budget -= len(self.newline) * (len(passages) - 1)
        share = max(budget // len(passages), 0)
        body: list[int] = []
        for j, passage in enumerate(passages):
            if j:
                body += self.newline
            body += self._ids(passage)[:share]
        return self.head + body + note + self.tail


def search_all(retriever: Retriever, queries: list[str], k: int) -> list[list[Hit] | str]:
    """Hits per query, or an error message; one batched call, then one call per query if the batch fails."""
    results: list[list[Hit] | str] = [f"{SEARCH_FAILED}empty query"] * len(queries)
    todo = [i for i, q in enumerate(queries) if q]
    if not todo:
        return results
    try:
        batch = retriever.search([queries[i] for i in todo], k)
        if len(batch) != len(todo):
            raise RuntimeError(f"retriever returned {len(batch)} result lists for {len(todo)} queries")
        for i, hits in zip(todo, batch):
            results[i] = list(hits)[:k]
        return results
    except Exception:  # noqa: BLE001 -- isolate the failing queries below; their error becomes an observation
        pass
    for i in todo:
        try:
            results[i] = list(retriever.search([queries[i]], k)[0])[:k]
        except Exception as exc:  # noqa: BLE001 -- any retriever failure (HTTP, index, bad query) is an observation
            results[i] = f"{SEARCH_FAILED}{type(exc).__name__}: {exc}".strip()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------------


def turn_seed(seed: int, index: int, turn: int) -> int:
    """A per-trajectory, per-turn sampling seed: results do not depend on batch composition."""
    return ((seed * 1_000_003 + index) * 1_009 + turn) % (1 << 62)


def _apply_generation(t: Trajectory, out: GenOutput, cfg: RolloutConfig, tokenizer: Any) -> str | None:
    """Append one turn's tokens; set finish_reason or return the search query ("" if the search tag is empty)."""
    t.turns += 1
    t.token_ids += out.token_ids
    t.loss_mask += [1] * len(out.token_ids)
    t.logprobs += list(out.logprobs) if len(out.logprobs) == len(out.token_ids) else [0.0] * len(out.token_ids)
    t.n_generated += len(out.token_ids)
    if out.finish == FINISH_EOS:
        t.finish_reason = "eos"
    elif out.finish == FINISH_STOP and out.stop == tags.ANSWER_CLOSE:
        t.finish_reason = "answer"
    elif out.finish == FINISH_STOP and out.stop == tags.SEARCH_CLOSE:
        if t.turns >= cfg.max_turns:
            t.finish_reason = "max_turns"
            return None
        # The opening tag may precede this turn (an assistant prefix "<search>" in the prompt): read a short tail.
        n = len(out.token_ids) + QUERY_CONTEXT_TOKENS
        tail = t.token_ids[-n:]
        if len(tail) < n:
            tail = t.prompt_ids[len(tail) - n :] + tail
        return tags.last_search_query(tokenizer.decode(tail, skip_special_tokens=True)) or ""
    else:
        t.finish_reason = "budget"
    return None


def _force_answer(t: Trajectory, tokenizer: Any, after_eos: bool = True) -> None:
    """Reopen a trajectory the budget cut off ("budget", "max_turns") or, with `after_eos`, one that ended its turn
    without answering ("eos"; its end-of-turn token, the last one, is taken back): close its open tag and open
    `<answer>` (loss_mask 0, written by the environment); its next turn is the forced answer of `answer_tokens`."""
    if t.forced or t.finish_reason not in ("budget", "max_turns", *(("eos",) if after_eos else ())):
        return
    if t.finish_reason == "eos" and t.token_ids:
        t.token_ids.pop(), t.loss_mask.pop(), t.logprobs.pop()
        t.n_generated -= 1
    text = tokenizer.decode(t.token_ids, skip_special_tokens=True)
    ids = list(tokenizer(tags.force_answer_text(text), add_special_tokens=False)["input_ids"])
    t.token_ids += ids
    t.loss_mask += [0] * len(ids)
    t.logprobs += [0.0] * len(ids)
    t.forced, t.finish_reason = True, ""


def _apply_forced(t: Trajectory, out: GenOutput) -> None:
    """Append the forced answer's tokens (sampled: loss_mask 1); the trajectory ends "forced" however it stopped."""
    t.token_ids += out.token_ids
    t.loss_mask += [1] * len(out.token_ids)
    t.logprobs += list(out.logprobs) if len(out.logprobs) == len(out.token_ids) else [0.0] * len(out.token_ids)
    t.n_generated += len(out.token_ids)
    t.finish_reason = "forced"


def _apply_search(
    t: Trajectory, query: str, result: list[Hit] | str, info: InfoBuilder, cfg: RolloutConfig
) -> None:
    t.queries.append(query)
    if isinstance(result, str):
        t.tool_errors += 1
        passages, ids, titles = [result], [], []
    else:
        if not result:
            t.tool_errors += 1
        passages = [format_passage(h, i + 1) for i, h in enumerate(result)]  # same format as the RAG prompts
        ids, titles = [h.doc.id for h in result], [h.doc.title for h in result]
    t.retrieved_doc_ids.append(ids)
    t.retrieved_titles.append(titles)
    block = info.build(passages, last=t.turns == cfg.max_turns - 1)
    if len(t.token_ids) + len(block) >= cfg.max_total_tokens:  # no room left to read it and answer
        t.finish_reason = "budget"
        return
    t.token_ids += block
    t.loss_mask += [0] * len(block)
    t.logprobs += [0.0] * len(block)


def make_backend(loaded: Any, kind: str = "hf") -> GenerationBackend:
    """The generation backend for a LoadedModel: "hf" (transformers, CPU/GPU) or "vllm" (GPU, optional extra)."""
    if kind == "hf":
        return HFBackend.from_loaded(loaded)
    if kind == "vllm":
        from medr1.generation import VLLMBackend

        return VLLMBackend.from_model(loaded.source, loaded.tokenizer, loaded.stop_token_ids)
    raise ConfigError(f"unknown generation backend {kind!r}; use hf or vllm")


def run_rollouts(
    loaded: Any,
    prompts: Sequence[Sequence[int]],
    retriever: Retriever | None,
    cfg: RolloutConfig,
    backend: GenerationBackend | None = None,
    progress: bool = False,
    seed_offset: int = 0,
    images: Sequence[Any] | None = None,
    bar: Any = None,
) -> list[Trajectory]:
    """Roll out every prompt (token ids); returns trajectories in prompt order. See the module docstring.
    `bar` (a caller's tqdm bar) is advanced as each trajectory finishes, instead of a bar of this call's own.
    `images` (one `medr1.generation.ImageInput` or None per prompt, from `medr1.models.chat_prompt`) go with a VLM's
    prompts into every prefill that needs them (the HF backend's continuous scheduling).

    With a backend that can `open()` a decode batch (HFBackend), scheduling is continuous: a trajectory that
    finished its turn leaves the batch, and a continuing or new one joins at the next step, so the batch stays full.
    Other backends (vLLM, scripted) run in lockstep turns: one `generate()` call per turn for the active ones.
    Prompt i samples with the seed of position `seed_offset + i` (callers working in chunks pass the chunk's start).
    """
    from tqdm import tqdm

    tokenizer = loaded.tokenizer
    backend = backend if backend is not None else HFBackend.from_loaded(loaded)
    multi_turn = retriever is not None and cfg.max_turns > 1
    stops = tags.STOP_STRINGS if multi_turn else (tags.ANSWER_CLOSE,)
    loop = _Loop(cfg, retriever, InfoBuilder(tokenizer, cfg.max_info_tokens), tokenizer, seed_offset)
    trajs = [Trajectory(prompt_ids=list(map(int, p)), index=i) for i, p in enumerate(prompts)]
    if images is not None and any(img is not None for img in images):
        if len(images) != len(trajs):
            raise ValueError(f"run_rollouts: {len(images)} images for {len(trajs)} prompts")
        if not hasattr(backend, "open"):
            raise ConfigError(f"image prompts need the hf generation backend, not {type(backend).__name__}")
        loop.images = list(images)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(trajs), desc="rollouts", unit="traj", file=sys.stderr, disable=not progress)
    backend.reset()  # a prefix cache from an earlier call may hold KV of older weights
    try:
        if hasattr(backend, "open"):
            loop.continuous(backend, trajs, stops, bar)
        else:
            loop.lockstep(backend, trajs, stops, bar)
    finally:
        backend.reset()
        if own_bar:
            bar.close()
    for t in trajs:
        t.text = tokenizer.decode(t.token_ids, skip_special_tokens=True)
    return trajs


class _Loop:
    """The scheduling around the per-trajectory state machine (`_apply_generation`, `_apply_search`)."""

    def __init__(self, cfg: RolloutConfig, retriever: Retriever | None, info: InfoBuilder, tokenizer: Any,
                 seed_offset: int = 0):
        self.cfg, self.retriever, self.info, self.tokenizer = cfg, retriever, info, tokenizer
        self.seed_offset = seed_offset
        self.images: list[Any] | None = None  # per trajectory index (VLM prompts)

    def budget(self, t: Trajectory) -> int:
        if t.forced:
            return self.cfg.answer_tokens
        return min(self.cfg.max_new_tokens_per_turn, self.cfg.max_total_tokens - len(t.token_ids))

    def seed(self, t: Trajectory) -> int:
        return turn_seed(self.cfg.seed, self.seed_offset + t.index, t.turns)

    def sampling(self, seeds: tuple[int, ...] | None = None) -> SamplingParams:
        return SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p, seeds=seeds)

    def finish_turns(self, pairs: list[tuple[Trajectory, GenOutput]]) -> None:
        """Apply each generated turn; run the searches it asked for in one batched retriever call."""
        searching: list[tuple[Trajectory, str]] = []
        for t, out in pairs:
            if t.forced:
                _apply_forced(t, out)
                continue
            query = _apply_generation(t, out, self.cfg, self.tokenizer)
            if query is not None:
                searching.append((t, query))
        if searching and self.retriever is not None:
            results = search_all(self.retriever, [q for _, q in searching], self.cfg.topk)
            for (t, query), result in zip(searching, results):
                _apply_search(t, query, result, self.info, self.cfg)
        if self.cfg.answer_tokens:
            for t, _ in pairs:
                if t.done:
                    _force_answer(t, self.tokenizer, self.cfg.force_after_eos)

    def lockstep(self, backend: GenerationBackend, trajs: list[Trajectory], stops: tuple[str, ...], bar: Any) -> None:
        pending, active = deque(trajs), []
        while pending or active:
            while pending and len(active) < self.cfg.batch_size:
                active.append(pending.popleft())
            outs = backend.generate(
                [t.prompt_ids + t.token_ids for t in active],
                [self.budget(t) for t in active],
                stops,
                self.sampling(tuple(self.seed(t) for t in active)),
            )
            self.finish_turns(list(zip(active, outs)))
            bar.update(sum(t.done for t in active))
            active = [t for t in active if not t.done]

    def continuous(self, backend: Any, trajs: list[Trajectory], stops: tuple[str, ...], bar: Any) -> None:
        from medr1.generation import Request

        batch = backend.open(stops, self.sampling())
        pending: deque[Trajectory] = deque(trajs)
        ready: deque[Trajectory] = deque()  # searched and read; waiting to rejoin (their KV waits in the backend)
        while pending or ready or batch.size:
            joining = []
            while len(joining) < self.cfg.batch_size - batch.size and (ready or pending):
                joining.append((ready or pending).popleft())  # continuing trajectories first: they hold KV
            requests = [Request(t.index, t.prompt_ids + t.token_ids, self.budget(t), self.seed(t),
                                self.images[t.index] if self.images else None) for t in joining]
            finished = batch.add(requests) + batch.step()
            pairs = [(trajs[key], out) for key, out in finished]
            self.finish_turns(pairs)
            for t, _ in pairs:
                if t.done:
                    bar.update(1)
                else:
                    ready.append(t)


