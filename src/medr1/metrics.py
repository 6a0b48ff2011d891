"""Evaluation metrics as pure functions: answer extraction, accuracy with a Wilson interval, BLEU / ROUGE-L of the
reasoning, gold-document hit rate, and `aggregate(samples)` over the per-question records of `samples.jsonl`.

Answer extraction (`extract_answer`) follows MIRAGE's idea (locate the option letter in the answer field) with the
tag protocol as the answer field. Exactly, in order:

1. `<information>` blocks are removed first: retrieved text is not the model's answer.
2. If the text has an answer span, the LAST one decides (a complete `<answer>…</answer>`, or else an unclosed
   `<answer>…` running to the end, as a budget-truncated generation leaves it; a close broken and written again,
   `<answer>D</answer</answer>`, closes it at the first). A span is the model's last commitment: when it opened
   `<answer>` again before closing (`<answer>C</think>\n<answer>C</answer>`), the last opening starts it, and it ends
   at the first protocol tag or broken close inside (`<answer>Marfan syndrome</think>` is `Marfan syndrome`).
   Inside it, first match wins:
   a. the span is a lone letter, optionally wrapped: `B`, `(B)`, `B.`, `**B**`, `b`;
   b. the span equals one option's text (case, spacing and punctuation ignored), when `options` are given: the
      model may name its choice instead of giving its letter (small models bind a name to its letter poorly,
      so the harness does the binding, as it maps a disease name to an id in open diagnosis); also with its letter
      beside it, `Marfan syndrome (B)`, `B. Marfan syndrome` or `B (Marfan syndrome)`, the text deciding when the
      two disagree;
   c. it starts with a letter and a separator (MIRAGE's `^X.`, `^X:`, `^X,`, `^X/`, `^X or`, `^X)`, and a name in
      parentheses after it, `^X (`): `B. Marfan`, `C (lipodystrophy, familial partial)`;
   d. `option B` / `option (B)` (any case of "option");
   e. `answer is B` / `answer: B`;
   f. it ends with a letter in parentheses: `Loeys-Dietz syndrome (C)` (a name that is no option, with a letter);
   g. it holds exactly one letter in parentheses: `Immunodeficiency 57 (A) is an option and matches.` (A span
      that only contains an option's text is not read as naming it: `Homocystinuria type 2` is another disease.)
   A span that matches none of these is unparseable: the model committed to an answer we cannot read, and the
   fallbacks below are not consulted. An empty span (a forced `<answer>` the model left blank) is no commitment:
   the fallbacks read on. `tagged_answer` applies rule 2 alone; rewards pay only for it.
3. Without any answer span, fallbacks over the model's text (MIRAGE style):
   a. the last `answer is X` / `answer: X` / `"answer_choice": "X"`;
   b. the whole text, tags and `<think>` blocks removed, is a lone letter (as in 2a);
   c. that text starts with a letter and a separator (as in 2c): `D. Brain small vessel disease`, the way small
      chat models open their reply when they ignore the tags.
4. Otherwise None. Only letters in `letters` count (an `E` on a four-option question is unparseable).

Unlike MIRAGE, which falls back to "A" when nothing is found, an unparseable answer is None here: it counts as wrong
and is reported as `unparseable_rate`.

BLEU is sacrebleu's corpus BLEU (0-100); ROUGE-L is rouge-score's mean F-measure (0-1, with stemming). Both compare
the reasoning (`reasoning_text`: the model's own text, `<information>` and the answer span removed, tags dropped)
with the question's `explanation`, over the questions that have one.

    python -c "from medr1.metrics import extract_answer; print(extract_answer('<answer>C</answer>', 'ABCD'))"
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from medr1.tags import (
    ANSWER_CLOSE, ANSWER_OPEN, ANSWER_RE, SPAN_END_RE, TAG_RE, THINK_CLOSE, THINK_OPEN, strip_information,
)

_OPEN_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*)\Z", re.S)
_THINK_BLOCK_RE = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.S)
_WRAP_CHARS = " \t\r\n*_`\"'()[]{}.:;,!"


def _letters_class(letters: Iterable[str]) -> str:
    return "[" + "".join(sorted(set(letters))) + "]"


def _lone_letter(text: str, letters: str) -> str | None:
    core = text.strip(_WRAP_CHARS)
    if len(core) == 1 and core.upper() in letters:
        return core.upper()
    return None


def normalize_name(text: str) -> str:
    """A name compared loosely: accents dropped, lower case, punctuation as spaces, spaces collapsed (option texts,
    document titles): `Aicardi-Goutières syndrome` = `aicardi goutieres syndrome`."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+", " ", folded.lower()).split())


def _leading_letter_pattern(letters: str) -> str:
    """MIRAGE's `^X.`, `^X:`, `^X,`, `^X/`, `^X or` family (and `^X (`): a letter at the start, then a separator."""
    return rf"^\s*[*(\[]*({_letters_class(letters)})(?:[).:,/\]*]|\s+or\b|\s+and\b|\s+-|\s+\()"


def _name_part(span: str, letters: str) -> str:
    """The span without a letter beside the name: `Marfan syndrome (B)`, `B. Marfan syndrome` and `B (Marfan
    syndrome)` -> `Marfan syndrome` (parentheses left are ignored by `normalize_name`)."""
    cls = _letters_class(letters)
    return re.sub(rf"^\s*\(?{cls}[.):]\s+|^\s*{cls}\s+(?=\()|\s*\({cls}\)\s*$", "", span)


def _option_named(span: str, letters: str, options: dict[str, str] | None) -> str | None:
    """The letter of the one option whose text the span equals (case, spacing and punctuation ignored), with or
    without its letter beside it."""
    if not options:
        return None
    for target in dict.fromkeys((normalize_name(span), normalize_name(_name_part(span, letters)))):
        named = [letter for letter, text in sorted(options.items())
                 if letter in letters and normalize_name(text) == target]
        if len(named) == 1:
            return named[0]
    return None


def _letter_in_span(span: str, letters: str, options: dict[str, str] | None) -> str | None:
    """Rules 2a-2g above, on the content of one answer span."""
    if (found := _lone_letter(span, letters)) is not None:
        return found
    if (found := _option_named(span, letters, options)) is not None:
        return found
    cls = _letters_class(letters)
    patterns = (
        _leading_letter_pattern(letters),
        rf"(?i:option)\s*\(?({cls})\b",
        rf"(?i:answer)(?:\s+is)?\s*:?\s*\(?({cls})\b",
        rf"\(({cls})\)\s*$",
    )
    for pat in patterns:
        if m := re.search(pat, span):
            return m.group(1)
    bracketed = set(re.findall(rf"\(({cls})\)", span))
    return bracketed.pop() if len(bracketed) == 1 else None


def answer_span(text: str) -> str | None:
    """The content of the last answer span (complete, or unclosed at the end), stripped; None if there is none."""
    spans = ANSWER_RE.findall(text)
    tail_start = text.rfind(ANSWER_OPEN)
    # An unclosed <answer> after the last complete one wins: it is the model's latest commitment.
    if tail_start != -1 and ANSWER_CLOSE not in text[tail_start:]:
        m = _OPEN_ANSWER_RE.search(text, tail_start)
        if m:
            return _own_span(m.group(1))
    return _own_span(spans[-1]) if spans else None


def _own_span(content: str) -> str:
    """A span's content from the last `<answer>` opened inside it to the first protocol tag (or broken close)."""
    return SPAN_END_RE.split(content.rsplit(ANSWER_OPEN, 1)[-1], maxsplit=1)[0].strip()


def tagged_answer(text: str, letters: Iterable[str], options: dict[str, str] | None = None) -> str | None:
    """The letter of the last `<answer>` span only (rule 2), no fallbacks: what the tag protocol and the rewards
    count as the model's answer. None without an answer span or when the span names no option."""
    letters, span = _tagged_span(text, letters)
    return None if span is None else _letter_in_span(span, letters, options)


def _tagged_span(text: str, letters: Iterable[str]) -> tuple[str, str | None]:
    """(the valid letters as one sorted string, the last answer span of the model's own text or None)."""
    letters = "".join(sorted(set(letters)))
    return letters, (answer_span(strip_information(text or "")) if letters else None)


def named_option(text: str, letters: Iterable[str], options: dict[str, str] | None) -> str | None:
    """The letter of the option that the last `<answer>` names by its own text (rule 2b, a letter beside the name
    allowed: `Marfan syndrome (B)`); None for a bare letter, or for a name that is no option whatever letter follows
    it (`Lipodystrophy, familial partial lipodystrophy (D)`). The stricter reading of GRPO's `named_correctness`."""
    letters, span = _tagged_span(text, letters)
    return None if span is None else _option_named(span, letters, options)


def extract_answer(text: str, letters: Iterable[str], options: dict[str, str] | None = None) -> str | None:
    """The chosen option letter in a completion, or None when unparseable (rules in the module docstring)."""
    letters = "".join(sorted(set(letters)))
    if not letters or not text:
        return None
    own = strip_information(text)
    span = answer_span(own)
    if span:  # an empty span (a forced `<answer>` the model left blank) commits to nothing: the fallbacks read on
        return _letter_in_span(span, letters, options)
    cls = _letters_class(letters)
    fallback = re.findall(
        rf"(?:(?i:answer)\s+is\s*:?\s*\(?|(?i:answer)\s*:\s*\(?|\"answer_choice\"\s*:\s*\")({cls})\b", own
    )
    if fallback:
        return fallback[-1]
    bare = TAG_RE.sub(" ", _THINK_BLOCK_RE.sub(" ", own))
    if (found := _lone_letter(bare, letters)) is not None:
        return found
    m = re.search(_leading_letter_pattern(letters), bare)
    return m.group(1) if m else None


def extract_answer_text(text: str) -> str | None:
    """The free-text answer (a diagnosis name) for questions without options: the last answer span, or None."""
    span = answer_span(strip_information(text))
    return span or None


def reasoning_text(completion: str) -> str:
    """The model's own reasoning: `<information>` blocks and the answer span(s) removed, tags dropped, spaces joined."""
    own = strip_information(completion)
    own = ANSWER_RE.sub(" ", own)
    tail = own.rfind(ANSWER_OPEN)
    if tail != -1:
        own = own[:tail]
    return " ".join(TAG_RE.sub(" ", own).split())


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% for z=1.96); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """sacrebleu corpus BLEU (0-100) of hypotheses against one reference each; None for no pairs."""
    if not hypotheses:
        return None
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu sentence BLEU (0-100, exponential smoothing) of one hypothesis."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Mean ROUGE-L F-measure (0-1, Porter stemming) of hypotheses against their references; None for no pairs."""
    if not hypotheses:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return float(sum(scores) / len(scores))


def gold_hit(gold_doc_ids: Iterable[str], retrieved_ids: Iterable[Iterable[str]]) -> bool:
    """Whether any gold document id is among the ids retrieved by any search of one question."""
    gold = set(gold_doc_ids)
    return any(doc_id in gold for turn in retrieved_ids for doc_id in turn)


def ranked_ids(retrieved_ids: Iterable[Iterable[str]]) -> list[str]:
    """Every search's ids in the order the trace retrieved them, each id once (its first rank)."""
    return list(dict.fromkeys(doc_id for turn in retrieved_ids for doc_id in turn))


def context_precision(gold_doc_ids: Iterable[str], retrieved_ids: Iterable[Iterable[str]]) -> float | None:
    """RAGAS's context precision with ID relevance: the mean of precision@k over the ranks k that hold a gold
    document (0 when none does); None when nothing was retrieved or there is no gold."""
    gold, ranked = set(gold_doc_ids), ranked_ids(retrieved_ids)
    if not ranked or not gold:
        return None
    hits, total = 0, 0.0
    for k, doc_id in enumerate(ranked, start=1):
        if doc_id in gold:
            hits += 1
            total += hits / k
    return total / hits if hits else 0.0


def context_recall(gold_doc_ids: Iterable[str], retrieved_ids: Iterable[Iterable[str]]) -> float | None:
    """RAGAS's ID-based context recall: the share of gold documents retrieved by any search; None without gold."""
    gold = set(gold_doc_ids)
    return len(gold & set(ranked_ids(retrieved_ids))) / len(gold) if gold else None


def answer_in_evidence(prediction: str | None, options: dict[str, str] | None,
                       retrieved_titles: Iterable[Iterable[str]]) -> bool | None:
    """Whether the chosen option is the title of a document the trace retrieved (the answer rests on evidence it
    read; a non-LLM check of grounding); None when unanswered, open, or nothing was retrieved."""
    titles = {normalize_name(t) for turn in retrieved_titles for t in turn}
    if not prediction or not options or prediction not in options or not titles:
        return None
    return normalize_name(options[prediction]) in titles


def top_hit_gold(gold_doc_ids: Iterable[str], retrieved_ids: Sequence[Sequence[str]]) -> bool | None:
    """Whether the first search's first document is a gold one (retrieval at rank 1, the evidence a reader leans on
    most); None without gold ids or without a search that returned something."""
    gold = set(gold_doc_ids)
    if not gold or not retrieved_ids or not retrieved_ids[0]:
        return None
    return retrieved_ids[0][0] in gold


def follows_top_hit(prediction: str | None, options: dict[str, str] | None,
                    retrieved_titles: Sequence[Sequence[str]]) -> bool | None:
    """Whether the chosen option is the title of the first search's first document (the answer reads the evidence's
    top rank); None when unanswered, open, or the first search returned nothing. With `top_hit_gold` it splits the
    errors of a retrieving method into retrieval (the top hit is wrong) and reading (the answer leaves a right one)."""
    if not prediction or not options or prediction not in options or not retrieved_titles or not retrieved_titles[0]:
        return None
    return normalize_name(options[prediction]) == normalize_name(retrieved_titles[0][0])


def _count(value: Any) -> int:
    """Tool errors may be recorded as a count or as a list of messages."""
    if value is None:
        return 0
    if isinstance(value, (list, tuple)):
        return len(value)
    return int(value)


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def aggregate(samples: Sequence[dict[str, Any]], uses_retrieval: bool = True, text_metrics: bool = True) -> dict[str, Any]:
    """Metrics over per-question records (the fields `medr1.evaluate` writes to samples.jsonl).

    Rates are fractions (0-1); `chance_accuracy` is the mean of 1/(number of options), what guessing scores.
    `gold_hit_rate` is over questions with gold document ids, and None when there are none or the method does not
    retrieve; `bleu`/`rouge_l` are None when no question has an explanation or the method writes no reasoning
    (`text_metrics=False`, the bm25-ranker).
    """
    n = len(samples)
    correct = sum(bool(s.get("correct")) for s in samples)
    low, high = wilson_interval(correct, n)
    explained = [s for s in samples if text_metrics and (s.get("explanation") or "").strip()]
    hyps = [reasoning_text(s.get("completion") or "") for s in explained]
    refs = [s["explanation"].strip() for s in explained]
    with_gold = [s for s in samples if s.get("gold_doc_ids")]
    hit_rate = None
    if uses_retrieval and with_gold:
        hit_rate = sum(gold_hit(s["gold_doc_ids"], s.get("retrieved_ids") or []) for s in with_gold) / len(with_gold)
    return {
        **rag_metrics(samples if uses_retrieval else []),
        "n": n,
        "accuracy": correct / n if n else None,
        "ci_low": low,
        "ci_high": high,
        "unparseable_rate": sum(not s.get("parsed") for s in samples) / n if n else None,
        "bleu": bleu(hyps, refs),
        "rouge_l": rouge_l(hyps, refs),
        "n_with_explanation": len(explained),
        "gold_hit_rate": hit_rate,
        "searches_per_question": _mean([len(s.get("queries") or []) for s in samples]),
        "generated_tokens_mean": _mean([float(s.get("n_generated") or 0) for s in samples]),
        "seconds_per_question": _mean([float(s.get("seconds") or 0.0) for s in samples]),
        "tool_errors": sum(_count(s.get("tool_errors")) for s in samples),
        "finish_reasons": dict(sorted(Counter(str(s.get("finish_reason")) for s in samples).items())),
        # position bias shows here: a small model that always answers "D" scores the share of D golds
        "predictions": dict(sorted(Counter(str(s.get("prediction") or "unparseable") for s in samples).items())),
        "chance_accuracy": _mean([1.0 / len(s["options"]) for s in samples if s.get("options")]),
        "subsets": subset_accuracy(samples),
    }


RAG_KEYS = ("context_precision", "context_recall", "answer_in_evidence", "top_hit_gold", "follows_top_hit")
RAGAS_KEYS = ("ragas_id_precision", "ragas_id_recall", "ragas_faithfulness", "ragas_answer_relevancy")  # medr1 ragas
PERCENT_KEYS = ("accuracy", "unparseable_rate", "gold_hit_rate", "chance_accuracy") + RAG_KEYS + RAGAS_KEYS


def rag_metrics(samples: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The RAGAS-style retrieval columns (non-LLM), each the mean over the records it applies to (None if none)."""
    per = {
        "context_precision": [context_precision(s.get("gold_doc_ids") or [], s.get("retrieved_ids") or [])
                              for s in samples],
        "context_recall": [context_recall(s.get("gold_doc_ids") or [], s.get("retrieved_ids") or []) for s in samples],
        "answer_in_evidence": [answer_in_evidence(s.get("prediction"), s.get("options"), s.get("retrieved_titles") or [])
                               for s in samples],
        "top_hit_gold": [top_hit_gold(s.get("gold_doc_ids") or [], s.get("retrieved_ids") or []) for s in samples],
        "follows_top_hit": [follows_top_hit(s.get("prediction"), s.get("options"), s.get("retrieved_titles") or [])
                            for s in samples],
    }
    return {key: _mean([float(v) for v in values if v is not None]) for key, values in per.items()}


def subset_accuracy(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy with its Wilson interval per `subset` of the records that name one (real patients: whether the
    knowledge base was curated from the patient's own publication); {} when none does."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        if s.get("subset"):
            groups.setdefault(str(s["subset"]), []).append(s)
    out = {}
    for name, group in sorted(groups.items()):
        correct = sum(bool(s.get("correct")) for s in group)
        low, high = wilson_interval(correct, len(group))
        out[name] = {"n": len(group), "accuracy": correct / len(group), "ci_low": low, "ci_high": high,
                     "unparseable_rate": sum(not s.get("parsed") for s in group) / len(group)}
    return out
