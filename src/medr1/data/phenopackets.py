"""Real published patients (GA4GH Phenopackets v2) as HPO-Dx-style multiple-choice diagnosis questions.

Each `*.json` under the directory (recursively; phenopacket-store keeps `cohorts/<GENE>/*.json`) becomes one question:
observed `phenotypicFeatures` are the findings (the list is optional, as in GA4GH), excluded ones become "no X",
`measurements` are stated with their values ("Measurements: platelet count 40 10^9/L."), the subject's sex and age
(`timeAtLastEncounter`: ISO 8601 duration such as P3Y2M, gestational age or an onset class) give the patient phrase,
and the diagnosed OMIM disease (`interpretations[].diagnosis.disease`, else `diseases[]`) is the answer. The three
distractors are chosen exactly as in HPO-Dx (`hpo_dx.choose_distractors`), from all HPO-annotated diseases.

Leakage: HPO curated many of its disease annotations from the very publications these patients come from. Each
question's `meta["subset"]` says which (`publication_subset`): "unseen-publication" when none of the patient's
publications (`metaData.externalReferences` PMIDs) is among the references of its disease's annotations — the
honest, headline subset, a patient the knowledge base was not written from; "seen-publication" otherwise;
"no-publication" when the phenopacket cites none. Every metric is also reported per subset.

Skips are always counted in the SkipLog and never silent: "disease not in HPO annotations" (the phenopacket is fine,
the HPO release just does not annotate its disease), "no observed phenotypic features", "measurements but no
phenotypic features" (GA4GH allows it; distractors need observed HPO terms), "fewer than 3 distractors".
Every file is first validated against the GA4GH schema with the official `phenopackets` package (`check_schema`:
protobuf's JSON parser, so a field of the wrong type or one the schema does not define is refused; all 3,639 shared
phenopacket-store files pass). Malformed files (invalid JSON, not the schema, missing diagnosis, features without an
id) are DataErrors naming the file, which `--skip-bad` turns into counted skips.

    from medr1.io import SkipLog
    from medr1.data.phenopackets import load_phenopacket_questions
    qs = load_phenopacket_questions("../shared/data/phenopackets", SkipLog(skip_bad=False))
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from medr1.data.hpo import HPO, display_name, load_hpo, lower_label
from medr1.data.hpo_dx import (
    MIN_DISTRACTOR_PHENOTYPES, PhenotypeIndex, alternatives_sentence, choose_distractors,
    absent_sentence, disease_facts, join_words, onset_age_range, options_for, patient_phrase,
)
from medr1.data.schema import Question
from medr1.errors import DataError
from medr1.io import SkipLog, stable_hash

CHOICE_ASK = "Which of the following is the most likely diagnosis?"  # the open task asks without options
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T.*)?$")


def iso_age_days(duration: str) -> int | None:
    """P3Y2M -> days (years*365 + months*30 + weeks*7 + days); None if not an ISO 8601 age duration."""
    m = _DURATION.match(duration.strip())
    if not m or not any(m.groups()):
        return None
    y, mo, w, d = (int(g) if g else 0 for g in m.groups())
    return y * 365 + mo * 30 + w * 7 + d


def _note_skip(skips: SkipLog, reason: str, example: str) -> None:
    """Count a skip that is not an error (reported always, whatever --skip-bad says)."""
    skips.reasons[reason] += 1
    skips.examples.setdefault(reason, example)


def _age_days(hpo: HPO, subject: dict, where: str) -> int | None:
    t = subject.get("timeAtLastEncounter")
    if not isinstance(t, dict):
        return None
    if isinstance(t.get("age"), dict) and "iso8601duration" in t["age"]:
        days = iso_age_days(str(t["age"]["iso8601duration"]))
        if days is None:
            raise DataError(f"{where}: unreadable subject age {t['age']['iso8601duration']!r}")
        return days
    if "gestationalAge" in t:
        return 0  # a fetus or stillbirth: described as a newborn
    oc = t.get("ontologyClass")
    if isinstance(oc, dict):
        rng = onset_age_range(hpo, hpo.resolve(str(oc.get("id", ""))))
        if rng:
            return (rng[0] + rng[1]) // 2
    return None


def check_schema(packet: dict, where: str) -> None:
    """Validate against the GA4GH Phenopacket v2 schema (the official `phenopackets` protobuf package): a field of
    the wrong type or a name the schema does not define is a DataError naming the file and the field."""
    from google.protobuf import json_format
    from phenopackets import Phenopacket

    try:
        json_format.ParseDict(packet, Phenopacket())
    except json_format.ParseError as exc:
        raise DataError(f"{where}: not a GA4GH Phenopacket v2 ({exc})") from None


def _disease(packet: dict, where: str) -> tuple[str, str]:
    """The diagnosed disease (id, label): interpretations first, then the non-excluded diseases[]."""
    for interp in packet.get("interpretations") or []:
        disease = ((interp or {}).get("diagnosis") or {}).get("disease") or {}
        if disease.get("id"):
            return str(disease["id"]), str(disease.get("label", ""))
    for entry in packet.get("diseases") or []:
        term = (entry or {}).get("term") or {}
        if term.get("id") and not entry.get("excluded"):
            return str(term["id"]), str(term.get("label", ""))
    raise DataError(f"{where}: no diagnosis (interpretations[].diagnosis.disease or diseases[].term)")


def _label(term: Any) -> str:
    return str(term.get("label") or term.get("id") or "").strip() if isinstance(term, dict) else ""


def measurement_phrase(measurement: Any, where: str) -> str:
    """One GA4GH Measurement as text: the assay's label with its value — a quantity with its unit, or an ontology
    class (`platelet count 40 10^9/L`, `blood group A`); the description alone when there is no assay."""
    if not isinstance(measurement, dict):
        raise DataError(f"{where}: a measurement is not an object")
    assay = _label(measurement.get("assay")) or str(measurement.get("description") or "").strip()
    value = measurement.get("value") if isinstance(measurement.get("value"), dict) else {}
    quantity = value.get("quantity") if isinstance(value.get("quantity"), dict) else None
    if quantity is not None and "value" in quantity:
        number = quantity["value"]
        shown = f"{number:g}" if isinstance(number, (int, float)) else str(number)
        result = f"{shown} {_label(quantity.get('unit'))}".strip()
    else:
        result = _label(value.get("ontologyClass"))
    if not assay:
        raise DataError(f"{where}: a measurement has no assay (or description)")
    return f"{lower_label(assay)} {result}".strip()


UNSEEN, SEEN, NO_PUBLICATION = "unseen-publication", "seen-publication", "no-publication"


def publications(packet: dict) -> list[str]:
    """The PMIDs a phenopacket cites (`metaData.externalReferences[].id`), in order, without duplicates."""
    refs = ((packet.get("metaData") or {}).get("externalReferences") or []) if isinstance(packet, dict) else []
    ids = [str(r.get("id", "")).strip() for r in refs if isinstance(r, dict)]
    return list(dict.fromkeys(i for i in ids if i.upper().startswith("PMID:")))


def publication_subset(pmids: list[str], disease_references: frozenset[str]) -> str:
    """Whether the knowledge base's annotations of the patient's disease were curated from the patient's own
    publication: SEEN if any PMID is among them, UNSEEN if none is, NO_PUBLICATION without a PMID."""
    if not pmids:
        return NO_PUBLICATION
    return SEEN if any(p in disease_references for p in pmids) else UNSEEN


def _features(hpo: HPO, packet: dict, where: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(observed, excluded) features as (resolved HPO id, label); labels from this HPO release when it knows the id."""
    features = packet.get("phenotypicFeatures", [])  # optional in GA4GH v2 (a packet may hold only measurements)
    observed, excluded = [], []
    for i, feat in enumerate(features):
        ftype = feat.get("type") if isinstance(feat, dict) else None
        if not isinstance(ftype, dict) or not str(ftype.get("id", "")).startswith("HP:"):
            raise DataError(f"{where}: phenotypicFeatures[{i}] has no HPO type.id")
        hpo_id = hpo.resolve(str(ftype["id"]))
        label = hpo.terms[hpo_id].name if hpo_id in hpo.terms else str(ftype.get("label") or hpo_id)
        target = excluded if feat.get("excluded") else observed
        if all(hpo_id != h for h, _ in target):
            target.append((hpo_id, label))
    return observed, excluded


class PhenopacketConverter:
    """Turns parsed phenopackets into Questions against one HPO release (index built once)."""

    def __init__(self, hpo: HPO | None = None) -> None:
        self.hpo = hpo or load_hpo()
        self.index = PhenotypeIndex(self.hpo)
        self.pool = self.index.mask(d for d, s in self.index.sets.items() if len(s) >= MIN_DISTRACTOR_PHENOTYPES)

    def question(self, packet: dict, qid: str, where: str, skips: SkipLog, rel_path: str = "") -> Question | None:
        """The question for one parsed phenopacket (`where` names it in errors; `rel_path` goes into meta)."""
        hpo = self.hpo
        if not isinstance(packet, dict):
            raise DataError(f"{where}: expected a JSON object (a phenopacket)")
        check_schema(packet, where)
        disease_id, disease_label = _disease(packet, where)
        observed, excluded = _features(hpo, packet, where)
        subject = packet.get("subject") if isinstance(packet.get("subject"), dict) else {}
        age = _age_days(hpo, subject, where)
        if disease_id not in hpo.diseases:
            _note_skip(skips, "disease not in HPO annotations", f"{where}: {disease_id} {disease_label}")
            return None
        if not observed:  # distractors are chosen by phenotype overlap, so a question needs observed HPO terms
            reason = "measurements but no phenotypic features" if packet.get("measurements") else \
                "no observed phenotypic features"
            _note_skip(skips, reason, where)
            return None
        rng = random.Random(stable_hash(f"phenopackets:{qid}"))
        finding_ids = [h for h, _ in observed]
        distractors = choose_distractors(self.index, disease_id, finding_ids, self.pool, rng)
        if len(distractors) < 3:
            _note_skip(skips, "fewer than 3 distractors", f"{where}: {disease_id}")
            return None
        sex = {"MALE": "male", "FEMALE": "female"}.get(str(subject.get("sex", "")).upper())
        text = f"{patient_phrase(age, sex)} presents with {join_words([lower_label(l) for _, l in observed])}."
        if excluded:
            text += " " + absent_sentence([label for _, label in excluded])
        measured = [measurement_phrase(m, where) for m in packet.get("measurements") or []]
        if measured:
            text += " Measurements: " + "; ".join(measured) + "."
        text += f" {CHOICE_ASK}"
        disease = hpo.diseases[disease_id]
        pmids = publications(packet)
        answer_name = display_name(disease.name)
        options, answer = options_for(answer_name, [display_name(hpo.diseases[c.id].name) for c in distractors], rng)
        return Question(
            id=qid, question=text, options=options, answer=answer,
            explanation=self._explain(disease, finding_ids, distractors),
            source="phenopackets", split="dev", gold_doc_ids=[disease_id],
            meta={
                "disease_id": disease_id, "disease_name": answer_name, "phenopacket_disease_label": disease_label,
                "file": rel_path or where, "age_days": age, "sex": sex,
                "pmids": pmids, "subset": publication_subset(pmids, disease.references), "measurements": measured,
                "findings": [{"hpo_id": h, "label": l} for h, l in observed],
                "excluded": [{"hpo_id": h, "label": l} for h, l in excluded],
                "distractors": [{"id": c.id, "name": display_name(hpo.diseases[c.id].name), "score": c.score,
                                 "shared_terms": c.shared_terms,
                                 "shared_findings": len(set(finding_ids) & self.index.sets[c.id])}
                                for c in distractors],
            },
        )

    def _explain(self, disease, finding_ids: list[str], distractors) -> str:
        hpo, index = self.hpo, self.index
        by_id = {a.hpo_id: a for a in disease.phenotypes}
        fits = [f for f in finding_ids if index.explains(disease.id, f)]
        shown = []
        for f in fits[:8]:
            word = by_id[f].frequency_word if f in by_id else None
            shown.append(lower_label(hpo.label(f)) + (f" ({word})" if word else ""))
        name = display_name(disease.name)
        if fits:
            out = [f"{name} fits {len(fits)} of the {len(finding_ids)} observed findings, among them "
                   f"{join_words(shown)}."]
        else:
            out = [f"{name} is the diagnosis, although none of the observed findings is among its HPO annotations."]
        facts = disease_facts(hpo, disease)
        if facts:
            out.append(facts)
        alt = alternatives_sentence(index, distractors, finding_ids)
        if alt:
            out.append(alt)
        return " ".join(out)


@functools.lru_cache(maxsize=2)
def _converter(hpo: HPO) -> PhenopacketConverter:
    """One converter (its phenotype index takes about a second) per loaded HPO release."""
    return PhenopacketConverter(hpo)


def _question_id(path: Path, base: Path, stems: dict[str, int]) -> str:
    """`phenopackets-<file stem>`; the cohort folder is added only when two files share a stem."""
    if stems[path.stem] == 1:
        return f"phenopackets-{path.stem}"
    return f"phenopackets-{path.parent.relative_to(base).as_posix()}/{path.stem}"


def load_phenopacket_questions(directory: str | Path, skips: SkipLog, hpo: HPO | None = None,
                               limit: int | None = None) -> list[Question]:
    """One Question per phenopacket JSON under `directory` (sorted paths, deterministic ids and options)."""
    return list(islice(iter_phenopacket_questions(directory, skips, hpo), limit))


def iter_phenopacket_questions(directory: str | Path, skips: SkipLog, hpo: HPO | None = None) -> Iterator[Question]:
    """The questions one by one, reading a file only when the next question is asked for: a caller that stops
    early (a `limit`) has read, and counted the skips of, only the files before its last question."""
    base = Path(directory)
    if not base.is_dir():
        raise DataError(f"{base}: phenopacket directory not found")
    files = sorted(p for p in base.rglob("*.json") if p.is_file())
    if not files:
        raise DataError(f"{base}: no phenopacket *.json files")
    stems: dict[str, int] = {}
    for p in files:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    converter = _converter(hpo or load_hpo())
    for path in files:
        where = str(path)
        try:
            try:
                packet: Any = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{where}: invalid JSON ({exc})") from None
            q = converter.question(packet, _question_id(path, base, stems), where, skips,
                                   path.relative_to(base).as_posix())
        except DataError as exc:
            skips.handle(exc, "malformed phenopacket")
            continue
        if q is not None:
            yield q.validate(where)
