"""Generation backends for the rollout: token ids in, new token ids out, stopping at strings, eos or a budget.

A backend implements `GenerationBackend.generate(prompts, max_new_tokens, stop_strings, sampling)` and returns one
`GenOutput(token_ids, finish, stop, logprobs)` per prompt; no token after the one that completes a stop string is
returned, so callers append the ids as they are (nothing is re-tokenized).

- `HFBackend`: a transformers model on CPU or GPU. `DecodeBatch` decodes rows over preallocated KV buffers (a step
  writes one column instead of concatenating the whole cache), rows leave as soon as they finish and new rows can
  join at any step (continuous batching). A prefix KV cache keeps the KV of sequences that stopped at a stop string:
  a later prompt extending one (the rollout appends an `<information>` block after a search) prefills only the new
  tokens. A VLM prompt carries its image (`ImageInput`): its tensors go into the prefill, and its placeholder ids
  are keyed by the image's content in the cache, so two images never share KV.
- `VLLMBackend`: vLLM (optional extra, GPU), imported only when constructed; vLLM's prefix caching does the reuse.
- `VLLMServerBackend`: a vLLM server elsewhere (`vllm serve`, TRL's server mode) through TRL's `VLLMClient`.
- `ScriptedBackend`: replies with scripted texts, for tests of the rollout logic.

    python -c "from medr1.models import load_model; from medr1.generation import HFBackend; \\
               lm = load_model('smollm2-135m'); print(HFBackend.from_loaded(lm).generate([[1, 9690]], 5)[0])"
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

FINISH_STOP, FINISH_EOS, FINISH_LENGTH = "stop", "eos", "length"


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy. `seeds` (one per prompt) make sampling independent of how prompts are batched."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    seeds: tuple[int, ...] | None = None

    def seed_for(self, i: int) -> int:
        return self.seeds[i] if self.seeds is not None else self.seed * 1_000_003 + i


@dataclass
class GenOutput:
    token_ids: list[int]
    finish: str  # "stop" (a stop string was completed), "eos", or "length" (token budget or context window)
    stop: str | None = None  # the stop string that ended it
    logprobs: list[float] = field(default_factory=list)  # of each sampled token under the (tempered) model


@runtime_checkable
class GenerationBackend(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_strings: Sequence[str] = (),
        sampling: SamplingParams = SamplingParams(),
    ) -> list[GenOutput]: ...

    def reset(self) -> None:
        """Forget cached state (the prefix KV cache); call when the weights change."""
        ...


def _per_prompt(value: int | Sequence[int], n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    if len(value) != n:
        raise ValueError(f"max_new_tokens has {len(value)} entries for {n} prompts")
    return [int(v) for v in value]


def find_stop(tokenizer: Any, ids: Sequence[int], stop_strings: Sequence[str]) -> str | None:
    """The stop string contained in the decoded tail of `ids` (a short window suffices: we check every step)."""
    if not stop_strings:
        return None
    window = max(len(s) for s in stop_strings) + 2
    tail = tokenizer.decode(list(ids[-window:]), skip_special_tokens=False)
    for s in stop_strings:
        if s in tail:
            return s
    return None


def trim_at_stop(tokenizer: Any, ids: Sequence[int], stop_strings: Sequence[str]) -> tuple[list[int], str | None]:
    """The shortest prefix of `ids` whose text contains a stop string (and which one); all of `ids` if none does.

    For backends that may overshoot a stop string (vLLM returns whole tokens; scripted replies): the kept ids end with
    the token that completes the stop string, so the token ids are exactly what the trajectory keeps.
    """
    ids = list(ids)
    full = tokenizer.decode(ids, skip_special_tokens=False)
    if not any(s in full for s in stop_strings):
        return ids, None
    lo, hi = 1, len(ids)  # binary search for the first prefix length whose text contains a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        text = tokenizer.decode(ids[:mid], skip_special_tokens=False)
        if any(s in text for s in stop_strings):
            hi = mid
        else:
            lo = mid + 1
    text = tokenizer.decode(ids[:lo], skip_special_tokens=False)
    return ids[:lo], next(s for s in stop_strings if s in text)


# ---------------------------------------------------------------------------------------------------------------------
# scripted backend (tests)
# ---------------------------------------------------------------------------------------------------------------------


class ScriptedBackend:
    """Replies with `script(prompt_ids, call_index) -> text`; the text is tokenized, cut after the token completing
    a stop string, at `eos_id` (a text ending in "<EOS>" gets it appended) and at the token budget."""

    def __init__(self, tokenizer: Any, script: Callable[[list[int], int], str], eos_id: int | None = None):
        self.tokenizer = tokenizer
        self.script = script
        self.eos_id = eos_id
        self.calls: list[list[list[int]]] = []  # the prompts of every call, for assertions

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_strings: Sequence[str] = (),
        sampling: SamplingParams = SamplingParams(),
    ) -> list[GenOutput]:
        budgets = _per_prompt(max_new_tokens, len(prompts))
        call = len(self.calls)
        self.calls.append([list(p) for p in prompts])
        outs = []
        for prompt, budget in zip(prompts, budgets):
            text = self.script(list(prompt), call)
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if text.endswith("<EOS>"):  # scripted end of sequence
                ids = list(self.tokenizer(text[: -len("<EOS>")], add_special_tokens=False)["input_ids"]) + [self.eos_id]
            kept, stop = trim_at_stop(self.tokenizer, ids, stop_strings)
            finish = FINISH_STOP if stop else FINISH_LENGTH
            if self.eos_id is not None and self.eos_id in kept:
                kept, stop, finish = kept[: kept.index(self.eos_id) + 1], None, FINISH_EOS
            if len(kept) > budget:
                kept, stop, finish = kept[:budget], None, FINISH_LENGTH
            outs.append(GenOutput(kept, finish, stop, [0.0] * len(kept)))
        return outs

    def reset(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face backend
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImageInput:
    """An image behind a prompt's placeholder tokens (a VLM's `<image>` ids, as its processor expanded them): the
    processor's tensors for that one image (`pixel_values`, and e.g. `image_sizes`) and a digest of their content.

    The prefix KV cache compares prompts as token lists, and every image of the same size has the same placeholder
    ids, so the backend keys a prompt on `keyed(ids)`: each placeholder id replaced by one negative number drawn
    from the digest. Two prompts share KV through an image only when its content is the same (`medr1.models.
    chat_prompt` builds these)."""

    token_id: int  # the model's image placeholder id (config.image_token_id)
    tensors: dict[str, Any]
    digest: str

    @property
    def key(self) -> int:
        return -1 - int(self.digest[:15], 16)  # negative: never a real token id

    def keyed(self, ids: Sequence[int]) -> list[int]:
        return [self.key if t == self.token_id else int(t) for t in ids]


@dataclass
class Request:
    """One sequence to continue: `key` identifies it to the caller (a trajectory index); `image` (a VLM prompt's,
    `ImageInput`) goes into the prefill wherever its KV is not cached."""

    key: Any
    token_ids: list[int]
    max_new_tokens: int
    seed: int = 0
    image: ImageInput | None = None


@dataclass
class _Row:
    key: Any
    tokens: list[int]  # the prompt of this request, image placeholders keyed (`ImageInput.keyed`)
    budget: int
    rng: Any
    out: GenOutput = field(default_factory=lambda: GenOutput([], FINISH_LENGTH))


@dataclass
class _Entry:
    """The KV of one finished sequence, kept for a continuation: `tokens` are the ids whose KV is stored."""

    tokens: list[int]
    kv: list[tuple[Any, Any]]  # per layer: keys, values of shape [heads, len(tokens), head_dim]


def _prompt_key(r: Request) -> list[int]:
    """The ids the prefix cache compares for a request: its prompt, any image's placeholders keyed by content."""
    return r.image.keyed(r.token_ids) if r.image is not None else list(map(int, r.token_ids))


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (compared in slices: C speed)."""
    n, i, step = min(len(a), len(b)), 0, 64
    while i < n and a[i : i + step] == b[i : i + step]:
        i += step
    i = min(i, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """KV of earlier sequences, reused for any prompt sharing a prefix with them (KV at position j depends only on
    tokens <= j). Holds prompts after their prefill (instruction blocks and GRPO groups share them) and sequences
    that stopped at a stop string (their continuation after a search). Least recently used entries are evicted
    beyond `max_bytes`."""

    MIN_SHARED = 16  # shorter matches are not worth the copy

    def __init__(self, max_bytes: int, bytes_per_token: int):
        self.max_tokens = max(1, max_bytes // max(1, bytes_per_token))
        self.entries: list[_Entry] = []  # least recently used first
        self.tokens = 0

    def clear(self) -> None:
        self.entries, self.tokens = [], 0

    def match(self, prompt: Sequence[int]) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `prompt` and that length (at most len(prompt) - 1, so at least
        one token is left to prefill and produce logits)."""
        best, best_n = None, 0
        for e in self.entries:
            n = min(common_prefix_len(e.tokens, prompt), len(prompt) - 1)
            if n > best_n:
                best, best_n = e, n
        if best is None or best_n < self.MIN_SHARED:
            return None, 0
        self.entries.remove(best)  # most recently used goes last
        self.entries.append(best)
        return best, best_n

    def add(self, entry: _Entry) -> None:
        if len(entry.tokens) > self.max_tokens:
            return
        for e in list(self.entries):  # an entry the new one extends is redundant
            if len(e.tokens) <= len(entry.tokens) and entry.tokens[: len(e.tokens)] == e.tokens:
                self.entries.remove(e)
                self.tokens -= len(e.tokens)
        self.entries.append(entry)
        self.tokens += len(entry.tokens)
        while self.tokens > self.max_tokens:
            self.tokens -= len(self.entries.pop(0).tokens)


@functools.lru_cache(maxsize=1)
def _slab_layer_class() -> type:
    """A transformers cache layer over a slice of a preallocated buffer (defined lazily: transformers is heavy).

    transformers' DynamicLayer concatenates the whole cache on every step (about a third of a decode step on CPU at
    batch 32); this layer writes only the new columns into the buffer.
    """
    from transformers.cache_utils import CacheLayerMixin

    class SlabLayer(CacheLayerMixin):
        is_sliding = False

        def __init__(self, keys, values, length: int):
            super().__init__()
            self.keys, self.values, self.length = keys, values, length
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def lazy_initialization(self, key_states, value_states) -> None:  # buffers are given up front
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            self.keys[:, :, self.length : end] = key_states
            self.values[:, :, self.length : end] = value_states
            self.length = end
            return self.keys[:, :, :end], self.values[:, :, :end]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

        def get_max_length(self) -> int:
            return -1

    return SlabLayer


def _view_cache(keys: list[Any], values: list[Any], rows: int, length: int):
    """A transformers Cache over the first `rows` rows of per-layer buffers that hold `length` columns so far."""
    from transformers.cache_utils import Cache

    layer = _slab_layer_class()
    return Cache(layers=[layer(k[:rows], v[:rows], length) for k, v in zip(keys, values)])


class DecodeBatch:
    """Sequences decoding together; a sequence can join (after its prefill) or leave at any step.

    KV lives in preallocated per-layer buffers [row slots, kv heads, columns, head_dim]. Rows are right-aligned:
    every row's latest token sits in column `length - 1`, and `valid` marks the columns holding real tokens (left
    padding, and padding between a reused prefix and newly prefilled tokens, are masked out). A leaving row's slot is
    filled by the last row (one row copied, not the whole batch); a joining row longer than `length` shifts the batch
    right once. Used by `HFBackend.generate` (all rows join at once) and by the rollout's continuous scheduling (new
    and continuing trajectories join as others finish, so the batch stays full).
    """

    GROW = 256  # columns added when the buffers are full
    TRIM = 128  # leading padding columns shared by all rows that trigger a shift left

    def __init__(self, backend: HFBackend, stop_strings: Sequence[str], sampling: SamplingParams):
        self.be, self.stops, self.sampling = backend, tuple(stop_strings), sampling
        self.rows: list[_Row] = []
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.valid = self.pos = self.logits = None
        self.length = 0

    @property
    def size(self) -> int:
        return len(self.rows)

    # -- joining ---------------------------------------------------------------------------------------------------

    def add(self, requests: Sequence[Request]) -> list[tuple[Any, GenOutput]]:
        """Prefill and admit; requests with no room to generate come back at once as finished ("length")."""
        import torch

        with torch.inference_mode():
            return self._add(requests)

    def _add(self, requests: Sequence[Request]) -> list[tuple[Any, GenOutput]]:
        done, todo = [], []
        for r in requests:
            if not r.token_ids:
                raise ValueError(f"request {r.key!r} has an empty prompt")
            budget = min(r.max_new_tokens, self.be.max_positions - len(r.token_ids))
            if budget <= 0:
                done.append((r.key, GenOutput([], FINISH_LENGTH)))
            else:
                todo.append((r, budget, _prompt_key(r)))
        # Prefill in chunks of a bounded number of token positions (memory), longest first (less padding).
        todo.sort(key=lambda item: -len(item[2]))
        if self.be.prefix_cache and len(todo) > 1 and self.be.store.match(todo[0][2])[0] is None:
            lead = todo[0][2]
            if any(common_prefix_len(lead, key) >= PrefixStore.MIN_SHARED for _, _, key in todo[1:]):
                self._admit(todo[:1])  # the others then reuse its prompt KV (a shared instruction block)
                todo = todo[1:]
        chunk: list[tuple[Request, int, list[int]]] = []
        for item in todo:
            if chunk and (len(chunk) + 1) * len(chunk[0][2]) > self.be.prefill_chunk_tokens:
                self._admit(chunk)
                chunk = []
            chunk.append(item)
        if chunk:
            self._admit(chunk)
        return done

    def _admit(self, chunk: list[tuple[Request, int, list[int]]]) -> None:
        import torch

        unique: dict[tuple[int, ...], int] = {}
        index = [unique.setdefault(tuple(key), len(unique)) for _, _, key in chunk]
        images = {unique[tuple(key)]: r.image for r, _, key in chunk}
        kv, valid, pos, logits = self.be._prefill([list(k) for k in unique], [images[i] for i in range(len(unique))])
        if len(unique) < len(chunk):  # identical prompts (a GRPO group) are prefilled once
            idx = torch.tensor(index, dtype=torch.long, device=valid.device)
            kv = [(k[idx], v[idx]) for k, v in kv]
            valid, pos, logits = valid[idx], pos[idx], logits[idx]
        b, width = valid.shape
        n = self.size
        if n == 0:
            self.length = 0
        if width > self.length:
            self._shift_right(width - self.length)
        self._ensure(n + b, self.length + 1)
        lo = self.length - width
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][n : n + b, :, lo : self.length] = k
            self.values[layer][n : n + b, :, lo : self.length] = v
        self.valid[n : n + b] = False
        self.valid[n : n + b, lo : self.length] = valid
        self.pos[n : n + b] = pos
        self.logits[n : n + b] = logits
        for r, budget, key in chunk:
            rng = None
            if self.sampling.temperature > 0:  # on the logits' device: multinomial needs a generator there
                rng = torch.Generator(device=self.logits.device).manual_seed(r.seed)
            self.rows.append(_Row(r.key, key, budget, rng))

    def _ensure(self, rows: int, cols: int) -> None:
        """Buffers with at least `rows` slots and `cols` columns (reallocated with headroom, live part copied)."""
        import torch

        allocated = self.valid is not None
        have_rows, have_cols = tuple(self.valid.shape) if allocated else (0, 0)
        if rows <= have_rows and cols <= have_cols:
            return
        new_rows, new_cols = max(rows, have_rows), max(cols + self.GROW, have_cols)
        n, length = self.size, self.length
        heads, head_dim, layers = self.be.kv_shape
        dtype, device = self.be.dtype, self.be.model.device
        for name in ("keys", "values"):
            bufs = getattr(self, name)
            for i in range(layers):
                buf = torch.zeros(new_rows, heads, new_cols, head_dim, dtype=dtype, device=device)
                if allocated:
                    if n:  # an empty batch has no live part (its `length` may already exceed the old buffers)
                        buf[:n, :, :length] = bufs[i][:n, :, :length]
                    bufs[i] = buf
                else:
                    bufs.append(buf)
        valid = torch.zeros(new_rows, new_cols, dtype=torch.bool, device=device)
        pos = torch.zeros(new_rows, dtype=torch.long, device=device)
        logits = torch.zeros(new_rows, self.be.vocab, dtype=torch.float32, device=device)
        if allocated and n:
            valid[:n, :length] = self.valid[:n, :length]
            pos[:n], logits[:n] = self.pos[:n], self.logits[:n]
        self.valid, self.pos, self.logits = valid, pos, logits

    def _shift_right(self, d: int) -> None:
        """Make room for a longer joining row: move the live rows `d` columns right (one copy of the batch)."""
        n, length = self.size, self.length
        if n:
            self._ensure(n, length + d + 1)
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    buf[:n, :, d : d + length] = buf[:n, :, :length].clone()
            self.valid[:n, d : d + length] = self.valid[:n, :length].clone()
            self.valid[:n, :d] = False
        self.length = length + d

    def _trim_left(self) -> None:
        """Drop leading columns that are padding in every live row (after long rows left)."""
        n, length = self.size, self.length
        if n == 0:
            return
        lead = int(self.valid[:n, :length].int().argmax(dim=1).min())
        if lead < self.TRIM:
            return
        for bufs in (self.keys, self.values):
            for buf in bufs:
                buf[:n, :, : length - lead] = buf[:n, :, lead:length].clone()
        self.valid[:n, : length - lead] = self.valid[:n, lead:length].clone()
        self.length = length - lead

    # -- stepping --------------------------------------------------------------------------------------------------

    def step(self) -> list[tuple[Any, GenOutput]]:
        """Sample one token for every row; finished rows leave (returned); the others advance one position."""
        import torch

        with torch.inference_mode():
            return self._step()

    def _step(self) -> list[tuple[Any, GenOutput]]:
        n = self.size
        if n == 0:
            return []
        logits = self.logits[:n]
        if self.be.banned_token_ids:  # a VLM never writes its image placeholder
            logits[:, self.be.banned_token_ids] = float("-inf")
        tokens, logps = self.be._sample(logits, self.sampling, [r.rng for r in self.rows])
        finished: list[int] = []
        for slot, row in enumerate(self.rows):
            tok, out = tokens[slot], row.out
            out.token_ids.append(tok)
            out.logprobs.append(logps[slot])
            if tok in self.be.stop_token_ids:
                out.finish = FINISH_EOS
            elif (s := find_stop(self.be.tokenizer, out.token_ids, self.stops)) is not None:
                out.finish, out.stop = FINISH_STOP, s
            elif len(out.token_ids) >= row.budget:
                out.finish = FINISH_LENGTH
            else:
                continue
            finished.append(slot)
        self.be.stats["generated_tokens"] += n
        done = []
        for slot in reversed(finished):  # descending: a moved-in last row is never one still to be removed
            row = self.rows[slot]
            if row.out.finish == FINISH_STOP:
                self.be._keep(self._row_kv(slot, row.tokens + row.out.token_ids[:-1]))  # a search: it continues
            self._remove(slot)
            done.append((row.key, row.out))
        if finished:
            self._trim_left()
        if self.rows:
            self._decode([r.out.token_ids[-1] for r in self.rows])
        return done[::-1]

    def _row_kv(self, slot: int, tokens: list[int]) -> _Entry:
        cols = self.valid[slot, : self.length].nonzero().squeeze(-1)
        if cols.numel() != len(tokens):  # the last sampled token has no KV yet; anything else is a bookkeeping bug
            raise RuntimeError(f"KV bookkeeping: {cols.numel()} cached columns for {len(tokens)} tokens")
        return _Entry(tokens, [(k[slot][:, cols], v[slot][:, cols]) for k, v in zip(self.keys, self.values)])

    def _remove(self, slot: int) -> None:
        last, length = self.size - 1, self.length
        if slot != last:
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    buf[slot, :, :length] = buf[last, :, :length]
            self.valid[slot, :length] = self.valid[last, :length]
            self.pos[slot] = self.pos[last]
            self.rows[slot] = self.rows[last]
        self.rows.pop()

    def _decode(self, next_tokens: list[int]) -> None:
        import torch

        n, length = self.size, self.length
        self._ensure(n, length + 1)
        device = self.be.model.device
        self.valid[:n, length] = True
        out = self.be.model(
            input_ids=torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None],
            attention_mask=self.valid[:n, None, None, : length + 1],
            position_ids=self.pos[:n, None],
            past_key_values=_view_cache(self.keys, self.values, n, length),
            use_cache=True,
        )
        self.logits[:n] = out.logits[:, -1, :].float()
        self.pos[:n] += 1
        self.length = length + 1
        self.be.stats["decode_steps"] += 1


def _outside_image(key: Sequence[int], n: int) -> int:
    """A reuse length moved back to the start of an image it would end inside (its features come in one piece)."""
    while 0 < n < len(key) and key[n] < 0 and key[n - 1] < 0:
        n -= 1
    return n


def _real_ids(key: Sequence[int], image: ImageInput | None) -> list[int]:
    """The model's ids for cache-key ids: keyed image placeholders back to the placeholder id."""
    return list(key) if image is None else [image.token_id if t < 0 else t for t in key]


def cat_image_tensors(parts: list[Any]) -> Any:
    """Image tensors [n_i, ...] concatenated along the first dimension; parts of different shapes (a different
    number of image tiles) zero-padded at the end of every later dimension to the largest, as processors pad a
    batch. The rollout's prefill and the SFT collator batch images this way."""
    import torch

    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    padded = []
    for t in parts:
        if list(t.shape[1:]) != shape:
            out = t.new_zeros(t.shape[0], *shape)
            out[(slice(None), *(slice(0, n) for n in t.shape[1:]))] = t
            t = out
        padded.append(t)
    return torch.cat(padded)


def _image_tensors(images: list[ImageInput | None], device: Any, dtype: Any) -> dict[str, Any]:
    """The processor tensors of the images a prefill encodes, concatenated in row order (the order the model
    scatters image features into placeholder positions). Tensors of different shapes (a different number of image
    tiles) are zero-padded to the largest (`cat_image_tensors`); floating tensors in the model's dtype."""
    import torch

    if not images:
        return {}
    if any(img is None for img in images):
        raise ValueError("a prompt with image placeholders came without its image")
    out = {}
    for name in images[0].tensors:
        parts = [img.tensors[name] for img in images]
        if isinstance(parts[0], torch.Tensor):
            t = cat_image_tensors(parts)
            out[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        else:
            out[name] = parts
    return out


class HFBackend:
    """Batched decoding of a transformers causal LM with in-place KV buffers and a prefix KV cache.

    When a sequence stops at a stop string, its KV is kept; a later prompt that extends it (the rollout appends an
    `<information>` block after a search) prefills only the new tokens. `prefix_cache=False` disables the reuse.
    `generate()` runs a batch to completion; `open()` gives a DecodeBatch that sequences can join at any step.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_token_ids: Sequence[int] = (),
        prefix_cache: bool = True,
        prefill_chunk_tokens: int = 8192,
        prefix_cache_bytes: int = 1 << 30,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = set(int(i) for i in stop_token_ids) or {int(tokenizer.eos_token_id)}
        self.prefix_cache = prefix_cache
        self.prefill_chunk_tokens = prefill_chunk_tokens
        cfg = model.config.get_text_config()  # a VLM's language model holds the KV
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.kv_shape = (heads, head_dim, cfg.num_hidden_layers)
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        self.dtype = next(model.parameters()).dtype
        bytes_per_token = 2 * heads * head_dim * cfg.num_hidden_layers * self.dtype.itemsize
        self.store = PrefixStore(prefix_cache_bytes, bytes_per_token)
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 30))
        image_token = getattr(model.config, "image_token_id", None)
        self.banned_token_ids = [int(image_token)] if image_token is not None else []
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        self.mrope = "mrope_section" in rope  # Qwen-VL: 3-D rotary positions over image grids
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0, "generated_tokens": 0}

    @classmethod
    def from_loaded(cls, loaded: Any, **kwargs: Any) -> HFBackend:
        return cls(loaded.model, loaded.tokenizer, loaded.stop_token_ids, **kwargs)

    def reset(self) -> None:
        """Forget all cached KV; required after the weights change (run_rollouts calls it)."""
        self.store.clear()

    def open(self, stop_strings: Sequence[str] = (), sampling: SamplingParams = SamplingParams()) -> DecodeBatch:
        return DecodeBatch(self, stop_strings, sampling)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_strings: Sequence[str] = (),
        sampling: SamplingParams = SamplingParams(),
        images: Sequence[ImageInput | None] | None = None,
    ) -> list[GenOutput]:
        budgets = _per_prompt(max_new_tokens, len(prompts))
        images = list(images) if images is not None else [None] * len(prompts)
        outs: list[GenOutput] = [GenOutput([], FINISH_LENGTH) for _ in prompts]
        batch = self.open(stop_strings, sampling)
        requests = [Request(i, list(p), b, sampling.seed_for(i), img)
                    for i, (p, b, img) in enumerate(zip(prompts, budgets, images))]
        finished = batch.add(requests)
        while batch.size:
            finished += batch.step()
        for key, out in finished:
            outs[key] = out
        return outs

    # -- the prefix cache ------------------------------------------------------------------------------------------

    def _keep(self, entry: _Entry) -> None:
        if self.prefix_cache:
            self.store.add(entry)

    def _match(self, prompt: list[int]) -> tuple[_Entry | None, int]:
        return self.store.match(prompt) if self.prefix_cache else (None, 0)

    # -- forward passes ----------------------------------------------------------------------------------------------

    def _prefill(self, prompts: list[list[int]], images: Sequence[ImageInput | None] | None = None):
        """One forward over the new tokens of every prompt on top of its reused KV (if any).

        `prompts` are cache keys (`_prompt_key`); a row whose new tokens hold image placeholders passes its image's
        tensors to the model (a reuse never ends inside an image). Returns per-layer (keys, values) [b, heads,
        width, head_dim], valid [b, width], next positions [b] and the next-token logits [b, vocab]. Reused KV is
        right-aligned at column p_max and new tokens at p_max + w, so padding may sit between them; the attention
        mask hides it.
        """
        import torch

        images = list(images) if images is not None else [None] * len(prompts)
        if self.mrope and any(img is not None for img in images):
            from medr1.errors import ConfigError

            raise ConfigError(f"{type(self.model).__name__} places image tokens by 3-D rotary positions (mrope), which "
                              "medr1's HF engine does not compute; use a VLM with 1-D positions (LLaVA, SmolVLM)")
        matches = [self._match(p) for p in prompts]
        entries = [e for e, _ in matches]
        past = [_outside_image(p, n) for p, (_, n) in zip(prompts, matches)]
        new = [p[n:] for p, n in zip(prompts, past)]
        b, p_max, w = len(prompts), max(past), max(len(x) for x in new)
        heads, head_dim, n_layers = self.kv_shape
        device = self.model.device
        keys = [torch.zeros(b, heads, p_max + w, head_dim, dtype=self.dtype, device=device) for _ in range(n_layers)]
        values = [torch.zeros_like(k) for k in keys]
        valid = torch.zeros(b, p_max + w, dtype=torch.bool, device=device)
        ids = torch.full((b, w), int(self.tokenizer.pad_token_id or 0), dtype=torch.long, device=device)
        pos = torch.zeros(b, w, dtype=torch.long, device=device)
        for row, (e, n, x) in enumerate(zip(entries, past, new)):
            if e is not None:
                for layer, (ek, ev) in enumerate(e.kv):
                    keys[layer][row, :, p_max - n : p_max] = ek[:, :n]
                    values[layer][row, :, p_max - n : p_max] = ev[:, :n]
            valid[row, p_max - n : p_max] = True
            valid[row, p_max + w - len(x) :] = True
            ids[row, w - len(x) :] = torch.tensor(_real_ids(x, images[row]), dtype=torch.long)
            pos[row, w - len(x) :] = torch.arange(n, n + len(x))
        q_cols = torch.arange(p_max, p_max + w, device=device)
        k_cols = torch.arange(p_max + w, device=device)
        mask = valid[:, None, :] & (k_cols[None, :] <= q_cols[:, None])[None]
        mask |= (k_cols[None, :] == q_cols[:, None])[None]  # padding queries see themselves: no all-masked row (NaN)
        out = self.model(
            input_ids=ids,
            attention_mask=mask[:, None],
            position_ids=pos,
            past_key_values=_view_cache(keys, values, b, p_max),
            use_cache=True,
            logits_to_keep=1,
            **_image_tensors([img for img, x in zip(images, new) if any(t < 0 for t in x)], device, self.dtype),
        )
        self.stats["prefill_tokens"] += sum(len(x) for x in new)
        self.stats["reused_tokens"] += sum(past)
        next_pos = torch.tensor([n + len(x) for n, x in zip(past, new)], dtype=torch.long, device=device)
        if self.prefix_cache:  # later prompts sharing a prefix with these (instructions, GRPO groups) reuse it
            for row, p in enumerate(prompts):
                cols = valid[row].nonzero().squeeze(-1)
                self.store.add(_Entry(p, [(k[row][:, cols], v[row][:, cols]) for k, v in zip(keys, values)]))
        return list(zip(keys, values)), valid, next_pos, out.logits[:, -1, :].float()

    @staticmethod
    def _sample(logits, sampling: SamplingParams, rngs: list[Any]) -> tuple[list[int], list[float]]:
        """Greedy or temperature/top-p sampling; each row draws from its own generator (batch-independent)."""
        import torch

        if sampling.temperature <= 0:
            tokens = logits.argmax(dim=-1)
            logp = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
            return tokens.tolist(), logp.tolist()
        logp_all = torch.log_softmax(logits / sampling.temperature, dim=-1)
        probs = logp_all.exp()
        if sampling.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p[sorted_p.cumsum(-1) - sorted_p > sampling.top_p] = 0.0  # smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
        tokens = [int(torch.multinomial(probs[r], 1, generator=g).item()) for r, g in enumerate(rngs)]
        idx = torch.tensor(tokens, dtype=torch.long, device=logits.device)
        return tokens, logp_all.gather(1, idx[:, None]).squeeze(1).tolist()


# ---------------------------------------------------------------------------------------------------------------------
# vLLM backend (optional)
# ---------------------------------------------------------------------------------------------------------------------


class VLLMBackend:
    """vLLM generation (GPU). `llm` is a `vllm.LLM` (built with enable_prefix_caching so continuations reuse KV)."""

    def __init__(self, llm: Any, tokenizer: Any, stop_token_ids: Sequence[int] = ()):
        try:
            import vllm  # noqa: F401
        except ImportError:
            from medr1.errors import ConfigError

            raise ConfigError("the vLLM backend needs vllm: pip install 'medr1[vllm]' (GPU only)") from None
        self.llm = llm
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)

    @classmethod
    def from_model(cls, name_or_path: str, tokenizer: Any, stop_token_ids: Sequence[int] = (), **llm_kwargs: Any):
        from vllm import LLM

        llm_kwargs.setdefault("enable_prefix_caching", True)
        return cls(LLM(model=name_or_path, **llm_kwargs), tokenizer, stop_token_ids)

    def reset(self) -> None:
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_strings: Sequence[str] = (),
        sampling: SamplingParams = SamplingParams(),
    ) -> list[GenOutput]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        budgets = _per_prompt(max_new_tokens, len(prompts))
        params = [
            VSampling(
                max_tokens=budget,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed_for(i) if sampling.temperature > 0 else None,
                stop=list(stop_strings),
                include_stop_str_in_output=True,
                stop_token_ids=self.stop_token_ids or None,
                logprobs=0,
                skip_special_tokens=False,
            )
            for i, budget in enumerate(budgets)
        ]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        outs = []
        for res in results:
            comp = res.outputs[0]
            ids = list(comp.token_ids)
            logps = [next(iter(lp.values())).logprob for lp in comp.logprobs] if comp.logprobs else [0.0] * len(ids)
            outs.append(vllm_output(self.tokenizer, ids, logps, stop_strings, self.stop_token_ids))
        return outs


def vllm_output(tokenizer: Any, ids: list[int], logps: list[float], stop_strings: Sequence[str],
                stop_token_ids: Sequence[int]) -> GenOutput:
    """A vLLM completion as a GenOutput: cut after the token that completes a stop string (vLLM returns whole
    tokens), else finished by an end-of-turn id, else by the budget."""
    kept, stop = trim_at_stop(tokenizer, ids, stop_strings)
    if stop is not None:
        return GenOutput(kept, FINISH_STOP, stop, logps[: len(kept)])
    if ids and ids[-1] in set(stop_token_ids) | {tokenizer.eos_token_id}:
        return GenOutput(ids, FINISH_EOS, None, logps)
    return GenOutput(ids, FINISH_LENGTH, None, logps)


class VLLMServerBackend:
    """Generation by a vLLM server on another process or node (`vllm serve MODEL`; TRL's server mode), through
    TRL's `VLLMClient` (`/v1/completions` with token ids in and out). Same stops, finish reasons and logprobs as
    `VLLMBackend`. Sampled prompts go as one request each, at once, so every row keeps its own seed (one request's
    seed would give a GRPO group's repeated prompt the same completion); the server batches them. Greedy prompts
    of one budget go as one request. The server keeps its own prefix cache (TRL resets it after a weight sync)."""

    def __init__(self, client: Any, tokenizer: Any, stop_token_ids: Sequence[int] = (), concurrency: int = 64):
        self.client = client
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self.concurrency = concurrency

    @classmethod
    def from_url(cls, base_url: str, tokenizer: Any, stop_token_ids: Sequence[int] = (), timeout_s: float = 0.0):
        from trl.generation.vllm_client import VLLMClient

        return cls(VLLMClient(base_url=base_url, connection_timeout=timeout_s), tokenizer, stop_token_ids)

    def reset(self) -> None:
        pass  # the server's prefix cache follows its weights: TRL resets it after each sync

    def _request(self, prompts: list[list[int]], budget: int, stop_strings: Sequence[str], sampling: SamplingParams,
                 seed: int | None) -> list[GenOutput]:
        extra: dict[str, Any] = {"stop": list(stop_strings), "include_stop_str_in_output": True,
                                 "skip_special_tokens": False, "stop_token_ids": self.stop_token_ids or None}
        if seed is not None:
            extra["seed"] = seed
        got = self.client.generate(prompts, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=budget,
                                   logprobs=0, generation_kwargs=extra)
        return [vllm_output(self.tokenizer, list(ids), [float(lp[0]) for lp in logps], stop_strings,
                            self.stop_token_ids)
                for ids, logps in zip(got["completion_ids"], got["logprobs"], strict=True)]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_strings: Sequence[str] = (),
        sampling: SamplingParams = SamplingParams(),
    ) -> list[GenOutput]:
        from concurrent.futures import ThreadPoolExecutor

        budgets = _per_prompt(max_new_tokens, len(prompts))
        groups: dict[tuple[int, int | None], list[int]] = {}
        for i, budget in enumerate(budgets):
            seed = sampling.seed_for(i) if sampling.temperature > 0 else None
            groups.setdefault((budget, seed), []).append(i)
        outs: list[Any] = [None] * len(prompts)  # every row is in exactly one group
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(groups)))) as pool:
            futures = {key: pool.submit(self._request, [list(prompts[i]) for i in rows], key[0], stop_strings,
                                        sampling, key[1]) for key, rows in groups.items()}
            for key, rows in groups.items():
                for i, out in zip(rows, futures[key].result(), strict=True):
                    outs[i] = out
        return outs
