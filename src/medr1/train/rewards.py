"""GRPO reward functions: pure functions `(completions, **kw) -> list[float | None]`, one value per completion.

They follow TRL's reward-function contract, so `trl.GRPOTrainer(reward_funcs=[...])` calls them directly: a
completion is either a string or a chat turn list (`[{"role": "assistant", "content": ...}]`), and every dataset
column or rollout field arrives as a keyword list aligned with `completions` (`answer` = gold letters; `letters` =
the valid option letters, e.g. "ABCD"; `option_texts` = the options' texts in that order; `model_text` =
the model's own text without inserted `<information>`; `queries` = the searches the rollout executed).

- `correctness_reward`: 1.0 when the last `<answer>` holds the gold letter or the gold option's text, else 0.0
  (None when a row has no gold letter, so TRL leaves it out instead of scoring it 0). Only the `<answer>` span
  counts: untagged text ("So the answer is B.") earns nothing.
- `named_correctness_reward`: the stricter correctness for models trained to answer with the option's own text
  (medr1's SFT traces): 1.0 only when the last `<answer>` names the gold option by its text
  (`medr1.metrics.named_option`; a letter beside it allowed). A name that is no option earns nothing whatever
  letter follows it, nor does a bare letter: a letter added to a blended or misspelt title is a guess, and paying
  the guesses that land taught the study's GRPO a default letter ("(A)" after 181 of 181 such answers).
- `format_reward`: 1.0 for a well-formed trace, graded below (see `format_score`); 0.0 whenever the model wrote an
  `<information>` block itself, because that is invented evidence. A malformed tool call loses the protocol point:
  a search that writes the candidate clause wrongly (`medr1.retrieval.candidates.malformed_candidate_query`), or,
  on a question with options, a candidate search that leaves one of them out (the prompt asks it to compare the
  options). Paid only for answers, the study's GRPO dropped the colon of `| among:` in 318 of 500 searches; with
  the colon enforced, it named 3.2 of the 4 options (SFT 3.9): leaving out the option the search ranks first pays
  on a prompt the policy misses.
- `make_open_correctness(normalize)`: the open task (no options): 1.0 when the named diagnosis normalizes to the
  row's `gold_id` (exact name, reordered words, then BM25 over the disease names), else 0.0; None on choice rows.
- `make_research_bonus(...)`: a capped bonus for distinct searches and for thinking longer, paid ONLY when the answer
  is correct and the format is valid. That gating is the anti-gaming rule: a longer or search-heavier trace can never
  raise the reward of a wrong answer, and the cap (default 0.2, well under the 1.0 correctness gap) keeps length from
  ever outweighing being right. Repeated queries count once.

    from medr1.train.rewards import correctness_reward, format_reward
    correctness_reward(["<think>x</think><answer>B</answer>"], answer=["B"])   # -> [1.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from medr1 import tags
from medr1.metrics import normalize_name
from medr1.retrieval.candidates import malformed_candidate_query, split_candidate_query

Reward = list[float | None]

ALL_LETTERS = "ABCDEFGHIJ"


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a plain string, or the concatenated contents of a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return "".join(completion_text(m) for m in completion)
    return str(completion)


def extract_letter(text: str, letters: str | None = None, options: dict[str, str] | None = None) -> str | None:
    """The option letter of the last `<answer>…</answer>` only (`medr1.metrics.tagged_answer`, the harness's own
    rule 2: a letter, or an option's own text when `options` are given); None without one. Untagged text such as
    "So the answer is B." is not an answer under the tag protocol and earns nothing."""
    from medr1.metrics import tagged_answer

    return tagged_answer(text, letters or ALL_LETTERS, options)


def row_options(letters: str | None, option_texts: Sequence[str] | None) -> dict[str, str] | None:
    """The options of one dataset row (`letters` "ABCD" + `option_texts` in that order), None when absent."""
    if not letters or not option_texts or len(letters) != len(option_texts):
        return None
    return dict(zip(letters, option_texts))


def _model_texts(completions: Sequence[Any], model_text: Sequence[str | None] | None) -> list[str]:
    """The model's own text per completion: the rollout's `model_text` when given, else the completion itself."""
    texts = [completion_text(c) for c in completions]
    if model_text is None:
        return texts
    return [m if m is not None else t for m, t in zip(model_text, texts, strict=True)]


def _answer_matches(completions: Sequence[Any], answer: Sequence[str | None] | None, kw: dict[str, Any],
                    read: Callable[[str, str | None, dict[str, str] | None], str | None]) -> Reward:
    """1.0 where `read(text, letters, options)` gives the gold letter, 0.0 otherwise, None where no gold is known."""
    if answer is None:
        return [None] * len(completions)
    texts = _model_texts(completions, kw.get("model_text"))
    letters = kw.get("letters") or [None] * len(texts)
    option_texts = kw.get("option_texts") or [None] * len(texts)
    out: Reward = []
    for text, gold, valid, opts in zip(texts, answer, letters, option_texts, strict=True):
        if not gold:
            out.append(None)
            continue
        letter = read(text, valid, row_options(valid, opts))
        out.append(1.0 if letter is not None and letter == str(gold).strip().upper() else 0.0)
    return out


def correctness_reward(completions: Sequence[Any], answer: Sequence[str | None] | None = None, **kw: Any) -> Reward:
    """1.0 if the last `<answer>` letter equals the gold letter, 0.0 otherwise, None where no gold is known."""
    return _answer_matches(completions, answer, kw, extract_letter)


def named_correctness_reward(completions: Sequence[Any], answer: Sequence[str | None] | None = None,
                             **kw: Any) -> Reward:
    """1.0 if the last `<answer>` names the gold option by its own text, 0.0 otherwise (a bare letter, a name that
    is no option, another option), None where no gold is known."""
    from medr1.metrics import named_option

    return _answer_matches(completions, answer, kw,
                           lambda text, valid, opts: named_option(text, valid or ALL_LETTERS, opts))


def _wrote_information(full_text: str, model_text: str | None, n_searches: int | None) -> bool:
    """True when the model itself wrote an `<information>` block (only the environment may)."""
    if model_text is not None:
        return tags.INFO_OPEN in model_text  # model_text excludes inserted blocks, so any left is the model's own
    # Without the model's own text, more information blocks than executed searches means some are the model's.
    inserted = n_searches if n_searches is not None else full_text.count(tags.SEARCH_CLOSE)
    return full_text.count(tags.INFO_OPEN) > inserted


def format_score(text: str, model_text: str | None = None, n_searches: int | None = None,
                 letters: str | None = None, options: dict[str, str] | None = None) -> float:
    """Grade one trace's tag protocol in [0, 1].

    0.0 if the model wrote `<information>` itself. Otherwise the sum of: 0.5 when an option (its letter, or its
    text when `options` are given; any name on an open row, `letters` "") sits in an `<answer>` that closes the trace (only whitespace after `</answer>`),
    0.25 when a non-empty `<think>…</think>` comes before that answer, 0.25 when protocol tags are used, all
    balanced, with at most one `<answer>` and no malformed search (`_searches_well_formed`).
    """
    if _wrote_information(text, model_text, n_searches):
        return 0.0
    body = tags.strip_information(model_text if model_text is not None else text)
    stripped = body.rstrip()
    if letters == "":  # an open row (no options): any named diagnosis is an answer
        spans = tags.answer_spans(stripped)
        answered = bool(spans and spans[-1])
    else:
        answered = extract_letter(stripped, letters, options) is not None
    answer_last = stripped.endswith(tags.ANSWER_CLOSE) and answered
    score = 0.5 if answer_last else 0.0
    answer_at = stripped.rfind(tags.ANSWER_OPEN)
    before = stripped[:answer_at] if answer_at >= 0 else stripped
    thinks = re.findall(re.escape(tags.THINK_OPEN) + r"(.*?)" + re.escape(tags.THINK_CLOSE), before, re.S)
    if any(t.strip() for t in thinks):
        score += 0.25
    if (tags.TAG_RE.search(body) and _balanced(body) and body.count(tags.ANSWER_OPEN) <= 1
            and _searches_well_formed(body, options)):
        score += 0.25
    return score


def _searches_well_formed(text: str, options: dict[str, str] | None = None) -> bool:
    """Every search the model wrote is one the environment reads as written (no malformed candidate clause), and
    with `options` every candidate search names all of them (compared loosely, `metrics.normalize_name`) and a
    trace that searches makes at least one: plain searches alone on a multiple-choice question, which the prompt
    asks to compare the options, are where GRPO at 4 prompts x 4 rollouts drifted (420 of 500 first searches
    plain, -14.8 pp). A plain search beside the comparison (an option's name, say) is fine."""
    wanted = {normalize_name(o) for o in (options or {}).values()}
    queries = tags.search_queries(text)
    if any(malformed_candidate_query(q) for q in queries):
        return False
    if not wanted or not queries:
        return True
    named = [wanted <= {normalize_name(n) for n in split[1]} for split in map(split_candidate_query, queries) if split]
    return bool(named) and all(named)


def _balanced(text: str) -> bool:
    """Tags open and close in order without nesting (the protocol is flat)."""
    open_tag: str | None = None
    for match in tags.TAG_RE.finditer(text):
        name, closing = match.group(1), match.group(0).startswith("</")
        if not closing:
            if open_tag is not None:
                return False
            open_tag = name
        elif open_tag != name:
            return False
        else:
            open_tag = None
    return open_tag is None


def format_reward(completions: Sequence[Any], **kw: Any) -> Reward:
    """`format_score` per completion; uses the rollout's `model_text` and `queries` when present."""
    texts = [completion_text(c) for c in completions]
    model_text = kw.get("model_text")
    queries = kw.get("queries")
    letters = kw.get("letters") or [None] * len(texts)
    option_texts = kw.get("option_texts") or [None] * len(texts)
    out: Reward = []
    for i, text in enumerate(texts):
        own = model_text[i] if model_text is not None else None
        n = len(queries[i]) if queries is not None and queries[i] is not None else None
        out.append(format_score(text, own, n, letters[i], row_options(letters[i], option_texts[i])))
    return out


def think_words(text: str) -> int:
    """Words inside the model's `<think>` blocks (a tokenizer-free length measure)."""
    body = tags.strip_information(text)
    blocks = re.findall(re.escape(tags.THINK_OPEN) + r"(.*?)" + re.escape(tags.THINK_CLOSE), body, re.S)
    return sum(len(b.split()) for b in blocks)


def research_bonus_score(
    correct: bool,
    well_formed: bool,
    queries: Sequence[str],
    n_think_words: int,
    per_search: float = 0.05,
    max_searches: int = 3,
    per_100_think_words: float = 0.05,
    cap: float = 0.2,
) -> float:
    """The capped bonus for one trace: 0 unless correct and well-formed; distinct queries count once."""
    if not (correct and well_formed):
        return 0.0
    distinct = len({" ".join(q.lower().split()) for q in queries if q and q.strip()})
    bonus = per_search * min(distinct, max_searches) + per_100_think_words * n_think_words / 100.0
    return min(bonus, cap)


def make_research_bonus(
    per_search: float = 0.05, max_searches: int = 3, per_100_think_words: float = 0.05, cap: float = 0.2
) -> Callable[..., Reward]:
    """A TRL reward function paying `research_bonus_score` per completion (named `research_bonus` in the logs)."""

    def research_bonus(completions: Sequence[Any], answer: Sequence[str | None] | None = None, **kw: Any) -> Reward:
        texts = _model_texts(completions, kw.get("model_text"))
        correct = correctness_reward(completions, answer=answer, **kw)
        fmt = format_reward(completions, **kw)
        queries = kw.get("queries")
        out: Reward = []
        for i, text in enumerate(texts):
            qs = list(queries[i] or []) if queries is not None else tags.search_queries(tags.strip_information(text))
            out.append(
                research_bonus_score(
                    correct[i] == 1.0, fmt[i] == 1.0, qs, think_words(text),
                    per_search, max_searches, per_100_think_words, cap,
                )
            )
        return out

    return research_bonus


def make_open_correctness(normalize: Any) -> Callable[..., Reward]:
    """The open task's correctness (named `open_correctness_reward` in the logs): 1.0 when the diagnosis named in
    the last `<answer>` normalizes (`normalize`: a `medr1.open_diagnosis.NameNormalizer`) to the row's `gold_id`
    (or to its twin of the other namespace under the same name), else 0.0; None for a row without one (a
    multiple-choice row, scored by `correctness`)."""
    from medr1.metrics import extract_answer_text

    def open_correctness_reward(completions: Sequence[Any], gold_id: Sequence[str | None] | None = None,
                                **kw: Any) -> Reward:
        texts = _model_texts(completions, kw.get("model_text"))
        golds = gold_id if gold_id is not None else [None] * len(texts)
        return [None if not gold else float(normalize.same_disease(normalize(extract_answer_text(text))[0], gold))
                for text, gold in zip(texts, golds, strict=True)]

    return open_correctness_reward


def context_recall_reward(completions: Sequence[Any], gold_doc_ids: Sequence[Sequence[str]] | None = None,
                          retrieved_ids: Sequence[Sequence[Sequence[str]]] | None = None, **kw: Any) -> Reward:
    """RAGAS's ID-based context recall of each trace (`medr1.metrics.context_recall`: the share of the row's gold
    documents its searches retrieved); None for a row without gold documents. Optional: it pays for finding the
    evidence, whatever the answer."""
    from medr1.metrics import context_recall

    golds = gold_doc_ids if gold_doc_ids is not None else [[] for _ in completions]
    found = retrieved_ids if retrieved_ids is not None else [[] for _ in completions]
    return [context_recall(list(g or []), list(r or [])) for g, r in zip(golds, found, strict=True)]


REWARD_NAMES = ("correctness", "named_correctness", "format", "research_bonus", "open_correctness", "context_recall")


def build_reward_funcs(names: Sequence[str], normalize: Any = None, **bonus_kw: Any) -> list[Callable[..., Reward]]:
    """Reward functions by name (`correctness`, `named_correctness`, `format`, `research_bonus`, `context_recall`,
    `open_correctness` — the last needs `normalize`), for configs."""
    table: dict[str, Callable[..., Reward]] = {
        "correctness": correctness_reward,
        "named_correctness": named_correctness_reward,
        "format": format_reward,
        "research_bonus": make_research_bonus(**bonus_kw),
        "context_recall": context_recall_reward,
    }
    if normalize is not None:
        table["open_correctness"] = make_open_correctness(normalize)
    elif "open_correctness" in names:
        from medr1.errors import ConfigError

        raise ConfigError("the open_correctness reward needs a name normalizer (open prompts in the GRPO config)")
    unknown = [n for n in names if n not in table]
    if unknown:
        from medr1.errors import ConfigError

        raise ConfigError(f"unknown reward(s) {unknown}; known: {list(REWARD_NAMES)}")
    return [table[n] for n in names]
