"""HPO-Dx: multiple-choice diagnosis vignettes generated from the HPO disease annotations (train/dev/test jsonl).

How a vignette is made (all randomness from `random.Random(stable_hash(seed, split, index))`, so the same seed gives
byte-identical files and adding vignettes does not change earlier ones):
  * Diseases (OMIM/ORPHA) are split 70/10/20 into train/dev/test by a stable hash of their *name key* (the name's
    words without numbers, roman numerals, inheritance and generic words), so the OMIM and ORPHA entries of one
    disease and the numbered members of one family ("Spastic paraplegia 7", "... 8") fall in the same split.
    Only diseases with >= 5 positive phenotype annotations (aspect P, not NOT / 0%) are used as answers.
  * 3-8 findings (train: 3-`max_findings_train`, 8 by default) are sampled without replacement, weighted by
    annotated frequency (unannotated = 0.5), skipping terms that are ancestors/descendants of a finding already
    chosen. Each may be replaced by an `is_a` parent (at depth >= 3, never an organ-system heading) with probability
    0.25 (at most half of them): clinicians are imprecise.
  * With probability 0.3 one unrelated common finding (among the 200 most annotated terms; not an annotation of the
    disease, nor an ancestor or descendant of one) is added as noise.
  * Train vignettes only (`p_excluded_train`, 0.8): 1-10 findings recorded as absent ("There is no X, no Y."), as
    phenopacket-store records excluded features for 80% of its patients; each is a feature of the disease that
    this patient lacks (an annotation not shown) or, one time in three, a distractor's feature ruled out. The trace
    queries of SFT carry them (`medr1.train.sft.findings_query`); dev and test are unchanged by it.
  * When the disease (or a chosen annotation) has an onset, the patient's age is drawn from that onset's range and
    the sex at random; otherwise the vignette says "A patient".
  * Options: the disease + 3 hard distractors from the SAME split (so no disease name of the test split ever appears
    in train, as answer or as distractor), ranked by IDF-weighted Jaccard overlap of the exact phenotype sets via an
    inverted index, preferring candidates annotated with at least one of the vignette's findings, drawn at random
    from the top 6 with pairwise-different name keys (never two members of one family). Near-identical sets
    (overlap > 0.8) are left out as indistinguishable. The answer letter is shuffled.

    medr1 data build hpo-dx --out data/hpo-dx --seed 0
    python -c "from medr1.data.hpo_dx import ensure_default_build; print(ensure_default_build())"
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medr1.data.hpo import HPO, Disease, display_name, load_hpo, lower_label
from medr1.data.schema import Question
from medr1.errors import DataError
from medr1.io import atomic_write_json, atomic_write_jsonl, iter_jsonl, stable_hash
from medr1.paths import medr1_home

SPLITS = ("train", "dev", "test")
SPLIT_BOUNDS = (("train", 70), ("dev", 80), ("test", 100))  # stable_hash % 100 below the bound
MIN_PHENOTYPES = 5  # answer diseases
MIN_DISTRACTOR_PHENOTYPES = 3  # distractor candidates
MAX_DISTRACTOR_SCORE = 0.8  # above this the annotation sets are near-identical: no finding could tell them apart
UNKNOWN_FREQUENCY = 0.5
MIN_GENERAL_DEPTH = 3  # parents at depth <= 2 are "Phenotypic abnormality" and organ-system headings
N_COMMON_NOISE_TERMS = 200
LETTERS = "ABCDEFGHIJ"

_NAME_STOP = {"type", "form", "autosomal", "dominant", "recessive", "linked", "the", "of", "and", "with", "due",
              "to", "an", "in", "or", "group", "subtype", "syndrome", "disease", "disorder", "susceptibility",
              "familial"}
_ROMAN = {"i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii", "xiii", "xiv", "xv", "xvi"}


@dataclass(frozen=True)
class HpoDxConfig:
    seed: int = 0
    n_train: int = 3000
    n_dev: int = 300
    n_test: int = 500
    min_findings: int = 3
    max_findings: int = 8
    # train only (dev/test unchanged); 16 draws lists as long as real patients'. Tried for the SFT model's
    # overlong patient queries: +1.2 / +2.0 pp, not significant (README), so 8 stays.
    max_findings_train: int = 8
    p_generalize: float = 0.25
    p_noise: float = 0.3
    p_excluded_train: float = 0.8  # train vignettes that record findings as absent (phenopacket-store: 80%)
    max_excluded: int = 10  # patients: median 6, mean 10.7 (trace queries take the first 4)
    n_distractors: int = 3
    distractor_top: int = 6

    def n_for(self, split: str) -> int:
        return {"train": self.n_train, "dev": self.n_dev, "test": self.n_test}[split]


# ----------------------------------------------------------------------------------------------------------------------
# splits, names, the phenotype index and distractors (shared with phenopackets.py)
# ----------------------------------------------------------------------------------------------------------------------


def name_key(name: str) -> str:
    """Words of a disease name without numbers, roman numerals, single letters, inheritance and generic words
    (syndrome, disease, type, ...), sorted: "Ehlers-Danlos syndrome, classic type, 1" and "Classic Ehlers-Danlos
    syndrome" share one key, as do "Spastic paraplegia 7" and "Spastic paraplegia 8"."""
    words = {w for w in re.findall(r"[a-z]+", name.casefold())
             if len(w) > 1 and w not in _NAME_STOP and w not in _ROMAN}
    return " ".join(sorted(words)) or name.casefold()


def split_of(disease_name: str) -> str:
    bucket = stable_hash(f"hpo-dx-split:{name_key(disease_name)}") % 100
    return next(split for split, bound in SPLIT_BOUNDS if bucket < bound)


@dataclass(frozen=True)
class Candidate:
    id: str
    score: float  # IDF-weighted Jaccard of the exact phenotype sets
    shared_terms: int


class PhenotypeIndex:
    """Exact positive phenotype sets per disease, IDF weights and an inverted index term -> disease rows (numpy),
    so one overlap query against all 12.6k diseases costs a few dozen vector additions."""

    def __init__(self, hpo: HPO) -> None:
        self.hpo = hpo
        self.ids: list[str] = sorted(hpo.diseases)
        self.row = {did: i for i, did in enumerate(self.ids)}
        self.sets: dict[str, frozenset[str]] = {
            did: frozenset(a.hpo_id for a in hpo.diseases[did].phenotypes) for did in self.ids}
        postings: dict[str, list[int]] = {}
        for i, did in enumerate(self.ids):
            for term in self.sets[did]:
                postings.setdefault(term, []).append(i)
        n = len(self.ids)
        self.postings = {t: np.asarray(rows, dtype=np.int64) for t, rows in postings.items()}
        self.idf = {t: math.log(n / len(rows)) for t, rows in postings.items()}
        self.weight = np.array([sum(self.idf[t] for t in sorted(self.sets[d])) for d in self.ids])
        self.keys = {did: name_key(hpo.diseases[did].name) for did in self.ids}
        codes: dict[str, int] = {}
        self.key_codes = np.array([codes.setdefault(self.keys[d], len(codes)) for d in self.ids], dtype=np.int64)
        self._closure: dict[str, frozenset[str]] = {}

    def mask(self, disease_ids) -> np.ndarray:
        """A boolean row mask selecting `disease_ids` (a distractor pool)."""
        out = np.zeros(len(self.ids), dtype=bool)
        out[[self.row[d] for d in disease_ids if d in self.row]] = True
        return out

    def overlap(self, disease_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(IDF-weighted Jaccard score, number of shared terms) of `disease_id` against every disease row."""
        shared_w = np.zeros(len(self.ids))
        shared_n = np.zeros(len(self.ids), dtype=np.int64)
        for term in sorted(self.sets.get(disease_id, ())):
            rows = self.postings[term]
            shared_w[rows] += self.idf[term]
            shared_n[rows] += 1
        mine = self.weight[self.row[disease_id]] if disease_id in self.row else 0.0
        union = mine + self.weight - shared_w
        score = np.divide(shared_w, union, out=np.zeros_like(shared_w), where=union > 0)
        return score, shared_n

    def closure(self, disease_id: str) -> frozenset[str]:
        """The disease's phenotype terms and all their ancestors."""
        cached = self._closure.get(disease_id)
        if cached is None:
            out: set[str] = set()
            for term in self.sets.get(disease_id, ()):
                out.add(term)
                out |= self.hpo.ancestors(term)
            cached = self._closure[disease_id] = frozenset(out)
        return cached

    def explains(self, disease_id: str, hpo_id: str) -> bool:
        """A finding fits a disease when it is an annotation, an ancestor of one, or a descendant of one."""
        return hpo_id in self.closure(disease_id) or bool(self.hpo.ancestors(hpo_id) & self.sets.get(disease_id, set()))


def choose_distractors(index: PhenotypeIndex, answer_id: str, finding_ids: list[str], pool: np.ndarray | None,
                       rng: random.Random, k: int = 3, top: int = 6) -> list[Candidate]:
    """`k` hard distractors for `answer_id`: diseases in the `pool` mask (None = all; see PhenotypeIndex.mask)
    sharing phenotype terms with it (but not near-identical sets: score <= 0.8), ranked by IDF-weighted Jaccard with
    those annotated with one of `finding_ids` first; name keys pairwise different and different from the answer's;
    drawn at random from the best `top`. Returns [] when fewer than k candidates exist."""
    if answer_id not in index.row:
        return []
    score, shared_n = index.overlap(answer_id)
    answer_key = index.key_codes[index.row[answer_id]]
    ok = (shared_n > 0) & (index.key_codes != answer_key) & (score <= MAX_DISTRACTOR_SCORE)
    if pool is not None:
        ok &= pool
    preferred = np.zeros(len(index.ids), dtype=bool)
    for f in finding_ids:
        if f in index.postings:
            preferred[index.postings[f]] = True
    rows = np.flatnonzero(ok)
    order = rows[np.lexsort((rows, -score[rows], ~preferred[rows]))]  # preferred first, then score desc, then id
    picked: list[Candidate] = []
    taken: set[int] = set()
    for r in order:
        code = int(index.key_codes[r])
        if code in taken:
            continue
        taken.add(code)
        picked.append(Candidate(index.ids[r], round(float(score[r]), 6), int(shared_n[r])))
        if len(picked) == top:
            break
    if len(picked) < k:
        return []
    chosen = rng.sample(picked, k)
    chosen.sort(key=lambda c: (-c.score, c.id))
    return chosen


# ----------------------------------------------------------------------------------------------------------------------
# text helpers (shared with phenopackets.py)
# ----------------------------------------------------------------------------------------------------------------------

# onset term -> (min age in days, max age in days, forced sex or None)
_Y = 365
ONSET_AGE_DAYS: dict[str, tuple[int, int, str | None]] = {
    "HP:0030674": (0, 0, None), "HP:0011460": (0, 0, None), "HP:0011461": (0, 0, None),  # antenatal, embryonal, fetal
    "HP:0034197": (0, 0, None), "HP:0034198": (0, 0, None), "HP:0034199": (0, 0, None),  # trimesters
    "HP:0003577": (0, 0, None),  # congenital
    "HP:0003623": (1, 27, None),  # neonatal
    "HP:0003593": (30, 364, None),  # infantile
    "HP:0011463": (_Y, 5 * _Y, None),  # childhood
    "HP:0410280": (30, 15 * _Y, None),  # pediatric
    "HP:0003621": (5 * _Y, 15 * _Y, None),  # juvenile
    "HP:0003581": (16 * _Y, 65 * _Y, None),  # adult
    "HP:0011462": (16 * _Y, 40 * _Y, None),  # young adult
    "HP:0025708": (16 * _Y, 19 * _Y, None), "HP:0025709": (19 * _Y, 25 * _Y, None),
    "HP:0025710": (25 * _Y, 40 * _Y, None),
    "HP:0003596": (40 * _Y, 60 * _Y, None),  # middle age
    "HP:0003584": (60 * _Y, 85 * _Y, None),  # late onset
    "HP:4000040": (20 * _Y, 40 * _Y, "female"),  # puerperal
    "HP:6000314": (45 * _Y, 55 * _Y, "female"),  # perimenopausal
    "HP:6000315": (55 * _Y, 75 * _Y, "female"),  # postmenopausal
}


def onset_age_range(hpo: HPO, onset_id: str) -> tuple[int, int, str | None] | None:
    """The age range of an onset term (or of its nearest listed ancestor); None if it has none."""
    if onset_id in ONSET_AGE_DAYS:
        return ONSET_AGE_DAYS[onset_id]
    for parent in sorted(hpo.ancestors(onset_id), key=lambda p: (-hpo.depth(p), p)):  # ties by id: no set order
        if parent in ONSET_AGE_DAYS:
            return ONSET_AGE_DAYS[parent]
    return None


def patient_phrase(age_days: int | None, sex: str | None) -> str:
    """"A 7-month-old girl", "A 34-year-old man", "A newborn boy", "A female patient", "A patient"."""
    sex = sex if sex in ("male", "female") else None
    if age_days is None:
        return f"A {sex} patient" if sex else "A patient"
    years = age_days // _Y
    if age_days <= 0:
        return f"A newborn {'boy' if sex == 'male' else 'girl'}" if sex else "A newborn"
    noun = {"male": "man" if years >= 18 else "boy", "female": "woman" if years >= 18 else "girl"}.get(
        sex or "", "adult" if years >= 18 else "child")
    if age_days < 28:
        age = f"{age_days}-day-old"
        noun = noun if sex else "infant"
    elif age_days < 2 * _Y:
        age = f"{max(1, age_days // 30)}-month-old"
        noun = noun if sex else "infant"
    else:
        age = f"{years}-year-old"
    article = "An" if age[0] in "8" or age.startswith(("11-", "18-")) else "A"
    return f"{article} {age} {noun}"


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def options_for(answer_name: str, distractor_names: list[str], rng: random.Random) -> tuple[dict[str, str], str]:
    """Shuffle the answer among the distractors; returns (options by letter, answer letter)."""
    names = [answer_name, *distractor_names]
    order = list(range(len(names)))
    rng.shuffle(order)
    options = {LETTERS[i]: names[j] for i, j in enumerate(order)}
    return options, LETTERS[order.index(0)]


def alternatives_sentence(index: PhenotypeIndex, distractors: list[Candidate], finding_ids: list[str]) -> str:
    """"Of these 5 findings, X fits 2, Y fits 3, and Z fits 1." (a finding fits as in PhenotypeIndex.explains)"""
    parts = []
    for cand in distractors:
        fit = sum(index.explains(cand.id, f) for f in finding_ids)
        parts.append(f"{display_name(index.hpo.diseases[cand.id].name)} fits {fit}")
    if not parts:
        return ""
    return f"Of these {len(finding_ids)} findings, {join_words(parts)}."


def disease_facts(hpo: HPO, disease: Disease) -> str:
    """"Onset: infantile onset. Inheritance: autosomal recessive inheritance." from the annotations ('' if none)."""
    out = []
    onset = list(dict.fromkeys(lower_label(hpo.label(i)) for i in hpo.onset_of(disease)))
    inheritance = list(dict.fromkeys(lower_label(hpo.label(i)) for i in hpo.inheritance_of(disease)))
    if onset:
        out.append(f"Onset: {join_words(onset)}.")
    if inheritance:
        out.append(f"Inheritance: {join_words(inheritance)}.")
    return " ".join(out)


# ----------------------------------------------------------------------------------------------------------------------
# one vignette
# ----------------------------------------------------------------------------------------------------------------------

_TEMPLATES = (  # (what is seen, the question): absent findings go between them
    ("{who} presents with {findings}.", "Which of the following is the most likely diagnosis?"),
    ("{who} is evaluated for {findings}.", "What is the most likely diagnosis?"),
    ("{who} is seen in clinic. The history and examination reveal {findings}.",
     "Which diagnosis best explains these findings?"),
)
P_EXCLUDED_OWN = 2 / 3  # an absent finding is the disease's own (else a distractor's); patients: 64% explained by it


def absent_sentence(labels: list[str]) -> str:
    """Findings recorded as absent, as the case text says them (HPO-Dx train vignettes and phenopackets)."""
    return "There is " + join_words([f"no {lower_label(label)}" for label in labels]) + "."


@dataclass
class Builder:
    """Shared state for generating vignettes: the ontology, the phenotype index and the noise-term pool."""

    hpo: HPO
    index: PhenotypeIndex
    cfg: HpoDxConfig
    common_terms: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, hpo: HPO, cfg: HpoDxConfig) -> "Builder":
        index = PhenotypeIndex(hpo)
        by_df = sorted(index.postings, key=lambda t: (-len(index.postings[t]), t))
        common = [t for t in by_df if hpo.depth(t) >= MIN_GENERAL_DEPTH][:N_COMMON_NOISE_TERMS]
        return cls(hpo, index, cfg, common)

    def _sample_findings(self, disease: Disease, split: str, rng: random.Random) -> list:
        """3-8 positive annotations (3-`max_findings_train` for train), frequency-weighted without replacement
        (Efraimidis-Spirakis keys)."""
        positives = disease.phenotypes
        most = self.cfg.max_findings_train if split == "train" else self.cfg.max_findings
        k = rng.randint(self.cfg.min_findings, min(most, len(positives)))
        keyed = []
        for ann in positives:
            w = ann.frequency if ann.frequency is not None else UNKNOWN_FREQUENCY
            keyed.append((rng.random() ** (1.0 / max(w, 1e-6)), ann))
        keyed.sort(key=lambda x: -x[0])
        chosen, related = [], []
        for _, ann in keyed:
            # a term and its own ancestor/descendant say the same thing twice; keep them for the fill-up only
            if any(self._related(ann.hpo_id, c.hpo_id) for c in chosen):
                related.append(ann)
                continue
            chosen.append(ann)
            if len(chosen) == k:
                return chosen
        return chosen + related[: k - len(chosen)]

    def _related(self, a: str, b: str) -> bool:
        return a == b or a in self.hpo.ancestors(b) or b in self.hpo.ancestors(a)

    def _generalize(self, ids: list[str], rng: random.Random) -> dict[int, str]:
        """Positions to replace by an is_a parent -> that parent."""
        out: dict[int, str] = {}
        for pos, hpo_id in enumerate(ids):
            if len(out) >= len(ids) // 2 or rng.random() >= self.cfg.p_generalize:
                continue
            others = [o for j, o in enumerate(ids) if j != pos] + list(out.values())
            parents = [p for p in self.hpo.parents(hpo_id)
                       if self.hpo.depth(p) >= MIN_GENERAL_DEPTH and not any(self._related(p, o) for o in others)]
            if parents:
                out[pos] = rng.choice(sorted(parents))
        return out

    def _noise(self, disease: Disease, findings: list[str], rng: random.Random) -> str | None:
        if rng.random() >= self.cfg.p_noise:
            return None
        # unrelated: not an annotation (positive or excluded) of the disease, nor an ancestor/descendant of one
        excluded = [a.hpo_id for a in disease.excluded_phenotypes]
        pool = [t for t in self.common_terms if not self.index.explains(disease.id, t)
                and not any(self._related(t, b) for b in excluded)]
        return rng.choice(pool) if pool else None

    def _excluded(self, disease: Disease, presented: list[str], distractors: list[Candidate],
                  rng: random.Random) -> list[str]:
        """1-`max_excluded` findings recorded as absent: the disease's annotations not shown (a feature this patient
        lacks) or, with probability 1 - P_EXCLUDED_OWN, a distractor's annotation the disease does not explain (a
        differential's feature ruled out); never related to a presented finding or to another absent one."""
        own = sorted({a.hpo_id for a in disease.phenotypes})
        other = sorted({h for c in distractors for h in self.index.sets[c.id] if not self.index.explains(disease.id, h)})
        chosen: list[str] = []
        for _ in range(rng.randint(1, self.cfg.max_excluded)):
            pool = own if (rng.random() < P_EXCLUDED_OWN or not other) else other
            fresh = [h for h in pool if not any(self._related(h, t) for t in presented + chosen)]
            if fresh:
                chosen.append(rng.choice(fresh))
        return chosen

    def _age_sex(self, disease: Disease, anns: list, rng: random.Random) -> tuple[str | None, int | None, str | None]:
        onsets = list(dict.fromkeys(self.hpo.onset_of(disease) + [a.onset for a in anns if a.onset]))
        onsets = [o for o in onsets if onset_age_range(self.hpo, o)]
        if not onsets:
            return None, None, None
        onset = rng.choice(onsets)
        lo, hi, forced = onset_age_range(self.hpo, onset)
        age = rng.randint(lo, hi)
        sex = forced or rng.choice(("male", "female"))
        return onset, age, sex

    def vignette(self, disease: Disease, qid: str, split: str, pool: np.ndarray | None,
                 rng: random.Random) -> Question | None:
        """One multiple-choice vignette, or None when the pool has fewer than 3 usable distractors."""
        hpo, index = self.hpo, self.index
        anns = self._sample_findings(disease, split, rng)
        rng.shuffle(anns)
        original = [a.hpo_id for a in anns]
        general = self._generalize(original, rng)
        shown = [general.get(i, h) for i, h in enumerate(original)]
        noise = self._noise(disease, original, rng)
        distractors = choose_distractors(index, disease.id, original, pool, rng, self.cfg.n_distractors,
                                         self.cfg.distractor_top)
        if len(distractors) < self.cfg.n_distractors:
            return None
        presented = list(shown)
        if noise:
            presented.insert(rng.randint(0, len(presented)), noise)
        onset, age, sex = self._age_sex(disease, anns, rng)
        who = patient_phrase(age, sex)
        seen, asked = rng.choice(_TEMPLATES)
        parts = [seen.format(who=who, findings=join_words([lower_label(hpo.label(h)) for h in presented]))]
        excluded: list[str] = []
        # its own generator, so the rest of every vignette (and every dev and test one) is what it was without it
        absent_rng = random.Random(stable_hash(f"hpo-dx-excluded:{qid}"))
        if split == "train" and absent_rng.random() < self.cfg.p_excluded_train:
            excluded = self._excluded(disease, presented, distractors, absent_rng)
        if excluded:
            parts.append(absent_sentence([hpo.label(h) for h in excluded]))
        text = " ".join(parts + [asked])
        answer_name = display_name(disease.name)
        options, answer = options_for(answer_name, [display_name(hpo.diseases[c.id].name) for c in distractors],
                                      rng)
        findings_meta = [
            {"hpo_id": shown[i], "label": hpo.label(shown[i]), "annotated_hpo_id": a.hpo_id,
             "annotated_label": hpo.label(a.hpo_id), "frequency": a.frequency_raw or None,
             "generalized": i in general}
            for i, a in enumerate(anns)]
        return Question(
            id=qid, question=text, options=options, answer=answer,
            explanation=self._explain(disease, anns, general, noise, distractors, shown),
            source="hpo-dx", split=split, gold_doc_ids=[disease.id],
            meta={
                "disease_id": disease.id, "disease_name": answer_name, "findings": findings_meta,
                "generalized": [shown[i] for i in sorted(general)],
                "noise": {"hpo_id": noise, "label": hpo.label(noise)} if noise else None,
                "excluded": [{"hpo_id": h, "label": hpo.label(h)} for h in excluded],
                "onset": onset, "age_days": age, "sex": sex,
                "distractors": [{"id": c.id, "name": display_name(hpo.diseases[c.id].name), "score": c.score,
                                 "shared_terms": c.shared_terms,
                                 "shared_findings": len(set(original) & index.sets[c.id])} for c in distractors],
            },
        )

    def _explain(self, disease: Disease, anns: list, general: dict[int, str], noise: str | None,
                 distractors: list[Candidate], shown: list[str]) -> str:
        hpo = self.hpo
        name = display_name(disease.name)
        parts = []
        for i, a in enumerate(anns):
            freq = f" ({a.frequency_word})" if a.frequency_word else ""
            if i in general:
                parts.append(f"{lower_label(hpo.label(general[i]))} (here for its annotated "
                             f"{lower_label(hpo.label(a.hpo_id))}{freq})")
            else:
                parts.append(lower_label(hpo.label(a.hpo_id)) + freq)
        out = [f"{name} explains the findings: it is annotated with {join_words(parts)}."]
        facts = disease_facts(hpo, disease)
        if facts:
            out.append(facts)
        if noise:
            out.append(f"The {lower_label(hpo.label(noise))} is not a feature of {name} and is incidental.")
        alt = alternatives_sentence(self.index, distractors, shown)
        if alt:
            out.append(alt)
        return " ".join(out)


# ----------------------------------------------------------------------------------------------------------------------
# the whole build
# ----------------------------------------------------------------------------------------------------------------------


def split_diseases(hpo: HPO, index: PhenotypeIndex) -> dict[str, dict[str, list[str]]]:
    """Per split: `all` diseases hashed into it, `answers` (>= 5 positives), `pool` (distractor candidates)."""
    out = {s: {"all": [], "answers": [], "pool": []} for s in SPLITS}
    for did in sorted(hpo.diseases):
        split = split_of(hpo.diseases[did].name)
        n = len(index.sets[did])
        out[split]["all"].append(did)
        if n >= MIN_PHENOTYPES:
            out[split]["answers"].append(did)
        if n >= MIN_DISTRACTOR_PHENOTYPES:
            out[split]["pool"].append(did)
    return out


def build_split(builder: Builder, split: str, answers: list[str], pool: np.ndarray, n: int,
                progress: bool = True) -> tuple[list[Question], list[str]]:
    """`n` vignettes cycling over the split's answer diseases in a seeded order; returns (questions, diseases
    skipped because their pool has fewer than 3 distractors)."""
    from tqdm import tqdm

    seed = builder.cfg.seed
    order = list(answers)
    random.Random(stable_hash(f"hpo-dx-order:{seed}:{split}")).shuffle(order)
    questions: list[Question] = []
    unusable: list[str] = []
    cursor = 0
    bar = tqdm(total=n, desc=f"hpo-dx {split}", unit="q", disable=None if progress else True, file=sys.stderr)
    while len(questions) < n:
        if len(unusable) == len(order):
            raise DataError(f"hpo-dx {split}: no disease has {builder.cfg.n_distractors} distractors in its split")
        did = order[cursor % len(order)]
        cursor += 1
        if did in unusable:
            continue
        i = len(questions)
        rng = random.Random(stable_hash(f"hpo-dx:{seed}:{split}:{i}:{did}"))
        q = builder.vignette(builder.hpo.diseases[did], f"hpo-dx-{split}-{i:05d}", split, pool, rng)
        if q is None:
            unusable.append(did)
            continue
        questions.append(q.validate(q.id))
        bar.update(1)
    bar.close()
    return questions, sorted(unusable)


def _summary(values: list[float], digits: int = 3) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": round(sum(values) / len(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def split_stats(questions: list[Question], groups: dict[str, list[str]], unusable: list[str]) -> dict[str, Any]:
    dis = [d for q in questions for d in q.meta["distractors"]]
    return {
        "questions": len(questions),
        "diseases_in_split": len(groups["all"]),
        "answer_diseases_eligible": len(groups["answers"]),
        "answer_diseases_used": len({q.meta["disease_id"] for q in questions}),
        "answer_diseases_without_3_distractors": len(unusable),
        "distractor_pool": len(groups["pool"]),
        "findings_per_vignette": _summary([len(q.meta["findings"]) for q in questions]),
        "generalized_per_vignette": _summary([len(q.meta["generalized"]) for q in questions]),
        "noise_rate": round(sum(q.meta["noise"] is not None for q in questions) / max(1, len(questions)), 3),
        "age_stated_rate": round(sum(q.meta["age_days"] is not None for q in questions) / max(1, len(questions)), 3),
        "distractor_score": _summary([d["score"] for d in dis]),
        "distractor_shared_terms": _summary([d["shared_terms"] for d in dis]),
        "distractor_shared_findings": _summary([d["shared_findings"] for d in dis]),
        "distractors_sharing_a_finding_rate": round(sum(d["shared_findings"] > 0 for d in dis) / max(1, len(dis)), 3),
        "answer_letters": dict(sorted(Counter(q.answer for q in questions).items())),
    }


def overlap_stats(by_split: dict[str, list[Question]], hpo: HPO) -> dict[str, int]:
    """Pairwise overlaps between splits (all must be 0): answer ids, any option disease id, disease name keys."""
    answers = {s: {q.meta["disease_id"] for q in qs} for s, qs in by_split.items()}
    options = {s: answers[s] | {d["id"] for q in qs for d in q.meta["distractors"]} for s, qs in by_split.items()}
    keys = {s: {name_key(hpo.diseases[d].name) for d in ids} for s, ids in options.items()}
    out = {}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            out[f"answer_ids_{a}_{b}"] = len(answers[a] & answers[b])
            out[f"option_ids_{a}_{b}"] = len(options[a] & options[b])
            out[f"name_keys_{a}_{b}"] = len(keys[a] & keys[b])
    return out


def build_hpo_dx(out_dir: str | Path, cfg: HpoDxConfig = HpoDxConfig(), hpo: HPO | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Write train/dev/test.jsonl and stats.json into `out_dir` (stats last); returns the stats."""
    hpo = hpo or load_hpo()
    builder = Builder.create(hpo, cfg)
    groups = split_diseases(hpo, builder.index)
    out = Path(out_dir)
    by_split: dict[str, list[Question]] = {}
    stats: dict[str, Any] = {"hpo_version": hpo.version, "config": asdict(cfg),
                             "split_rule": "stable_hash(name_key) % 100: <70 train, <80 dev, else test",
                             "distractor_pool": "same split, diseases with >= 3 positive phenotype annotations",
                             "splits": {}}
    for split in SPLITS:
        qs, unusable = build_split(builder, split, groups[split]["answers"], builder.index.mask(groups[split]["pool"]),
                                   cfg.n_for(split), progress)
        by_split[split] = qs
        stats["splits"][split] = split_stats(qs, groups[split], unusable)
    stats["overlap"] = overlap_stats(by_split, hpo)
    for split, qs in by_split.items():
        atomic_write_jsonl(out / f"{split}.jsonl", (q.to_dict() for q in qs))
    atomic_write_json(out / "stats.json", stats)
    return stats


def default_build_dir(seed: int = 0) -> Path:
    return medr1_home() / "data" / ("hpo-dx" if seed == 0 else f"hpo-dx-seed{seed}")


def _is_current(directory: Path, cfg: HpoDxConfig) -> bool:
    stats_path = directory / "stats.json"
    if not stats_path.is_file() or not all((directory / f"{s}.jsonl").is_file() for s in SPLITS):
        return False
    try:
        import json

        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    from medr1.data.hpo import hpo_version

    return stats.get("config") == asdict(cfg) and stats.get("hpo_version") == hpo_version()


def ensure_default_build(seed: int = 0) -> Path:
    """The default HPO-Dx build (default sizes, this seed) under medr1_home()/data, built on first use."""
    cfg = HpoDxConfig(seed=seed)
    directory = default_build_dir(seed)
    if not _is_current(directory, cfg):
        print(f"medr1: building the HPO-Dx benchmark (seed {seed}) into {directory} (first use)...", file=sys.stderr)
        start = time.perf_counter()
        stats = build_hpo_dx(directory, cfg)
        counts = ", ".join(f"{s} {stats['splits'][s]['questions']}" for s in SPLITS)
        print(f"medr1: HPO-Dx built: {counts} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return directory


def load_split(path: str | Path) -> list[Question]:
    """Read one built split (normalized Question jsonl) with line-checked errors."""
    return [Question.from_dict(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]
