"""Candidate search: a query that names the diseases to compare, answered with those diseases' documents only.

A search query written `FINDINGS | among: NAME; NAME; ...` asks the knowledge base which of the named diseases the
findings fit: each name is matched to its document (title, else its nearest document, as the bm25-ranker does), the
documents are ranked by BM25 of FINDINGS (`OptionRanker.score_names`: the exact score over the whole corpus with the
in-process index), and the best `k` come back, best first. It is how a diagnostician settles a differential, and how
a multiple-choice question's options are compared against the evidence inside the rollout (the SFT traces teach
it, `medr1.train.sft.trace_example`). Names are separated by `;`; a query without `| among:`, or whose names match no
document, is an ordinary search of its findings. A query that writes the clause any other way (`| among` without
the colon, or the clause twice) is a malformed call (`malformed_candidate_query`): it runs as an ordinary search of
the whole text, and the GRPO format reward withholds its protocol point (`medr1.train.rewards`).

Every local index that `open_retriever` opens understands it (so do `medr1 serve-retriever` and everything that
searches through it); the HTTP client passes the query on to the service, which answers it.

    from medr1.retrieval import open_retriever
    r = open_retriever(None)
    r.search(["seizures, ataxia | among: Dravet syndrome; Angelman syndrome"], k=2)
"""

from __future__ import annotations

import re
from typing import Any

from medr1.retrieval.base import Hit, Retriever

AMONG = " | among: "
MAX_CANDIDATES = 10
_AMONG_RE = re.compile(r"\s*\|\s*among\s*:\s*", re.I)
_CLAUSE_RE = re.compile(r"\|\s*among\b", re.I)


def candidate_query(findings: str, names: list[str]) -> str:
    """The query that compares `names` on `findings`."""
    return f"{findings.strip()}{AMONG}{'; '.join(n.strip() for n in names)}"


def split_candidate_query(query: str) -> tuple[str, list[str]] | None:
    """(findings, names) of a candidate query (names deduplicated, at most MAX_CANDIDATES); None for a plain one."""
    parts = _AMONG_RE.split(query, maxsplit=1)
    if len(parts) < 2:
        return None
    names = list(dict.fromkeys(n.strip() for n in parts[1].split(";") if n.strip()))[:MAX_CANDIDATES]
    return (parts[0].strip(), names) if names else None


def malformed_candidate_query(query: str) -> bool:
    """True when `query` attempts the among clause but not as `FINDINGS | among: NAME; ...` written once."""
    clauses = len(_CLAUSE_RE.findall(query))
    return clauses > 0 and (clauses > 1 or split_candidate_query(query) is None)


class CandidateSearch:
    """A Retriever that answers candidate queries itself and passes every other query to `inner` (in one batch);
    any other attribute is `inner`'s."""

    def __init__(self, inner: Retriever) -> None:
        from medr1.retrieval.ranker import OptionRanker

        self.inner = inner
        self.ranker = OptionRanker(inner)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def compare(self, findings: str, names: list[str], k: int) -> list[Hit] | None:
        """The named diseases' documents ranked by BM25 of `findings` (None when no name has a document)."""
        scored = [s for s in self.ranker.score_names(findings, names) if s is not None]
        if not scored:
            return None
        seen: set[str] = set()
        hits = []
        for doc, score, _ in sorted(scored, key=lambda s: -s[1]):  # stable: equal scores keep the names' order
            if doc.id not in seen:
                seen.add(doc.id)
                hits.append(Hit(doc, score))
        return hits[:k]

    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        results: list[list[Hit] | None] = [None] * len(queries)
        plain: list[tuple[int, str]] = []
        for i, query in enumerate(queries):
            split = split_candidate_query(query)
            results[i] = None if split is None else self.compare(split[0], split[1], k)
            if results[i] is None:
                plain.append((i, query if split is None else split[0]))
        if plain:
            for (i, _), hits in zip(plain, self.inner.search([q for _, q in plain], k)):
                results[i] = hits
        return [r if r is not None else [] for r in results]
