"""The non-LLM reference of multiple-choice diagnosis: the bm25-ranker (method `bm25-ranker` of `medr1.methods`).

Each option is matched to a corpus document by title (case- and space-insensitive; when several share a title the
best-scoring one counts, and a phenotype-term document (`HP:`) only when no disease has the title). An option
without a title match is searched by its own text and the top hit stands in for it (recorded as `"exact": false`
in the trace). Each option document is then scored with BM25 against the whole
question text (the findings): with the in-process BM25 index the exact BM25 score over the whole corpus; with any
other retriever (dense, HTTP) the score of that document among the top 100 hits for the findings, 0 when it is not
among them. The best score wins; ties go to the earliest letter; an option with no document cannot win; when no
option has a document the question is unparseable. Negated findings ("no X") still count as matches: BM25 has no
notion of negation.

    from medr1.retrieval import open_retriever
    from medr1.retrieval.ranker import OptionRanker
    OptionRanker(open_retriever(None)).rank(question)["prediction"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medr1.data.schema import Document, Question
from medr1.metrics import normalize_name
from medr1.retrieval.base import MAX_QUERY_CHARS, MAX_TOPK, Retriever


TERM_PREFIX = "HP:"  # phenotype-term documents of the HPO corpus: findings, not diagnoses


def diagnoses(docs: list[Document]) -> list[Document]:
    """The documents of one title without the phenotype terms among them when a disease shares the title (the
    option `Homocystinuria` is the disease, not the finding HP:0002156); all of them otherwise."""
    kept = [d for d in docs if not d.id.startswith(TERM_PREFIX)]
    return kept or docs


class OptionRanker:
    """The non-LLM reference: score each option's document against the findings (rules in the module docstring)."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        # A hybrid index carries its BM25 half (its public `bm25`); the ranker scores with that.
        self.scorer = getattr(retriever, "bm25", None) or retriever
        docs: list[Document] | None = getattr(self.scorer, "docs", None)
        self.by_title: dict[str, list[int]] = {}
        self.index_of: dict[str, int] = {}
        self.docs = docs
        if docs:
            for i, doc in enumerate(docs):
                self.by_title.setdefault(normalize_name(doc.title), []).append(i)
                self.index_of.setdefault(doc.id, i)
        # The in-process BM25 index scores every document (`score_all`); other retrievers only rank their top hits.
        self.exact_scores = bool(docs) and callable(getattr(self.scorer, "score_all", None))

    def _findings_scores(self, findings: str) -> Callable[[Document], float]:
        if self.exact_scores:
            scores = self.scorer.score_all(findings)  # type: ignore[attr-defined]
            return lambda doc: float(scores[self.index_of[doc.id]])
        ranked = self.retriever.search([findings[:MAX_QUERY_CHARS]], k=MAX_TOPK)[0]
        by_id = {hit.doc.id: hit.score for hit in ranked}
        return lambda doc: float(by_id.get(doc.id, 0.0))

    def _candidates(self, option: str) -> tuple[list[Document], bool]:
        """Documents standing for one option, and whether they match its title exactly."""
        key = normalize_name(option)
        if self.docs and key in self.by_title:
            return diagnoses([self.docs[i] for i in self.by_title[key]]), True
        hits = self.retriever.search([option[:MAX_QUERY_CHARS]], k=5)[0] if option.strip() else []
        exact = [h.doc for h in hits if normalize_name(h.doc.title) == key]
        if exact:
            return diagnoses(exact), True
        return ([hits[0].doc] if hits else []), False

    def score_names(self, findings: str, names: list[str]) -> list[tuple[Document, float, bool] | None]:
        """For each name, its best document by BM25 of `findings`, that score and whether the title matched exactly
        (None for a name with no document). The bm25-ranker and the candidate search (`retrieval.candidates`)."""
        score_of = self._findings_scores(findings)
        out: list[tuple[Document, float, bool] | None] = []
        for name in names:
            docs, exact = self._candidates(name)
            best = max(docs, key=score_of) if docs else None  # max() keeps the first of equal scores
            out.append(None if best is None else (best, score_of(best), exact))
        return out

    def rank(self, question: Question) -> dict[str, Any]:
        """prediction (or None), per-option score, document id/title and exactness."""
        letters = sorted(question.options)
        per_option: dict[str, dict[str, Any]] = {}
        for letter, found in zip(letters, self.score_names(question.question, [question.options[x] for x in letters])):
            per_option[letter] = ({"doc_id": None, "title": None, "exact": False, "score": None} if found is None else
                                  {"doc_id": found[0].id, "title": found[0].title, "exact": found[2], "score": found[1]})
        scored = [(v["score"], letter) for letter, v in per_option.items() if v["score"] is not None]
        prediction = None
        if scored:
            top = max(s for s, _ in scored)
            prediction = min(letter for s, letter in scored if s == top)
        return {"prediction": prediction, "options": per_option}


def ranker_completion(ranking: dict[str, Any]) -> str:
    lines = []
    for letter, v in ranking["options"].items():
        if v["doc_id"] is None:
            lines.append(f"{letter}: no document")
        else:
            how = "title" if v["exact"] else "nearest"
            lines.append(f"{letter}: {v['title']} [{v['doc_id']}, {how}] BM25 {v['score']:.3f}")
    return "\n".join(lines)
