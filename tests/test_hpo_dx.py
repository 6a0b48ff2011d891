"""medr1.data.hpo_dx: determinism, disease-disjoint splits, vignette content, distractors, stats and the cached
default build. Small builds (tens of vignettes) keep it fast."""

from __future__ import annotations

import dataclasses
import json
import os
import random

import pytest

from medr1.data.hpo import load_hpo
from medr1.data.hpo_dx import (
    MIN_GENERAL_DEPTH, SPLITS, HpoDxConfig, PhenotypeIndex, build_hpo_dx, choose_distractors, ensure_default_build,
    load_split, name_key, patient_phrase, split_of,
)

SMALL = HpoDxConfig(seed=0, n_train=80, n_dev=25, n_test=40)


@pytest.fixture(scope="module")
def hpo():
    return load_hpo()


@pytest.fixture(scope="module")
def built(tmp_path_factory, hpo):
    out = tmp_path_factory.mktemp("hpo-dx")
    stats = build_hpo_dx(out, SMALL, hpo, progress=False)
    return out, stats, {s: load_split(out / f"{s}.jsonl") for s in SPLITS}


def _bytes(directory):
    return {name: (directory / name).read_bytes() for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "stats.json")}


def test_same_seed_is_byte_identical_other_seed_differs(built, tmp_path, hpo):
    out, _, _ = built
    again = tmp_path / "again"
    build_hpo_dx(again, SMALL, hpo, progress=False)
    assert _bytes(out) == _bytes(again)
    other = tmp_path / "other"
    build_hpo_dx(other, HpoDxConfig(seed=1, n_train=80, n_dev=25, n_test=40), hpo, progress=False)
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        assert (other / name).read_bytes() != (out / name).read_bytes()


def test_prefix_stability_more_vignettes_keep_earlier_ones(built, tmp_path, hpo):
    out, _, splits = built
    bigger = tmp_path / "bigger"
    build_hpo_dx(bigger, HpoDxConfig(seed=0, n_train=80, n_dev=30, n_test=40), hpo, progress=False)
    dev = load_split(bigger / "dev.jsonl")
    assert [q.to_dict() for q in dev[:25]] == [q.to_dict() for q in splits["dev"]]


def test_counts_and_disease_disjoint_splits(built, hpo):
    _, stats, splits = built
    assert {s: len(qs) for s, qs in splits.items()} == {"train": 80, "dev": 25, "test": 40}
    seen = {}
    for split, qs in splits.items():
        for q in qs:
            assert q.split == split and q.source == "hpo-dx"
            for did in [q.meta["disease_id"], *(d["id"] for d in q.meta["distractors"])]:
                assert split_of(hpo.diseases[did].name) == split  # options come from the answer's own split
                assert seen.setdefault(did, split) == split
    assert all(v == 0 for v in stats["overlap"].values())
    assert len({q.id for qs in splits.values() for q in qs}) == 145


def test_every_vignette_is_well_formed(built, hpo):
    _, _, splits = built
    index = PhenotypeIndex(hpo)
    for split, qs in splits.items():
        for q in qs:
            q.validate(q.id)
            did = q.meta["disease_id"]
            disease = hpo.diseases[did]
            assert len(disease.phenotypes) >= 5
            assert sorted(q.options) == ["A", "B", "C", "D"]
            assert q.options[q.answer] == q.meta["disease_name"]
            assert len({name_key(n) for n in q.options.values()}) == 4  # distinct names, no family members
            assert q.gold_doc_ids == [did]
            findings = q.meta["findings"]
            assert 3 <= len(findings) <= (SMALL.max_findings_train if split == "train" else SMALL.max_findings)
            positives = {a.hpo_id for a in disease.phenotypes}
            for f in findings:
                assert f["annotated_hpo_id"] in positives  # never an excluded / 0% annotation
                if f["generalized"]:
                    assert f["hpo_id"] in hpo.parents(f["annotated_hpo_id"])
                    assert hpo.depth(f["hpo_id"]) >= MIN_GENERAL_DEPTH
                else:
                    assert f["hpo_id"] == f["annotated_hpo_id"]
                assert f["label"][1:].lower() in q.question.lower()
            noise = q.meta["noise"]
            if noise:
                assert not index.explains(did, noise["hpo_id"])
                assert noise["label"][1:].lower() in q.question.lower()
            for d in q.meta["distractors"]:
                assert d["id"] != did
                assert index.sets[d["id"]] & index.sets[did]  # shares >= 1 annotated finding with the answer
                assert d["shared_terms"] >= 1 and 0 < d["score"] <= 0.8
            assert q.meta["disease_name"] in q.explanation
            assert (q.meta["age_days"] is None) == (q.meta["onset"] is None)
            if q.meta["age_days"] is None:
                assert q.question.startswith("A patient ")


def test_train_vignettes_record_absent_findings_between_findings_and_question(built, hpo, tmp_path):
    """Train vignettes (only) record findings as absent, as phenopacket-store does, in the case text and in
    `meta["excluded"]` (what the SFT trace queries read); each is the disease's own annotation or a distractor's,
    and related to no presented finding; without them (p_excluded_train=0) every vignette is otherwise the same."""
    from medr1.data.hpo_dx import absent_sentence

    _, _, splits = built
    index = PhenotypeIndex(hpo)
    assert all(q.meta["excluded"] == [] and " no " not in q.question for s in ("dev", "test") for q in splits[s])
    with_absent = [q for q in splits["train"] if q.meta["excluded"]]
    assert 0.6 <= len(with_absent) / len(splits["train"]) <= 0.95  # p_excluded_train = 0.8
    for q in with_absent:
        labels = [e["label"] for e in q.meta["excluded"]]
        assert 1 <= len(labels) <= SMALL.max_excluded
        assert absent_sentence(labels) in q.question
        assert q.question.index(absent_sentence(labels)) > q.question.index(q.meta["findings"][-1]["label"][1:])
        assert q.question.rstrip().endswith("?")
        did = q.meta["disease_id"]
        distractor_terms = set().union(*(index.sets[d["id"]] for d in q.meta["distractors"]))
        shown = [f["hpo_id"] for f in q.meta["findings"]] + ([q.meta["noise"]["hpo_id"]] if q.meta["noise"] else [])
        for e in q.meta["excluded"]:
            h = e["hpo_id"]
            assert h in {a.hpo_id for a in hpo.diseases[did].phenotypes} or h in distractor_terms
            assert not any(h == t or h in hpo.ancestors(t) or t in hpo.ancestors(h) for t in shown)
        assert q.absent_findings() == [label.lower() for label in labels]
    plain = tmp_path / "plain"
    build_hpo_dx(plain, dataclasses.replace(SMALL, p_excluded_train=0.0), hpo, progress=False)
    for q, p in zip(splits["train"], load_split(plain / "train.jsonl"), strict=True):
        if q.meta["excluded"]:
            q_text = q.question.replace(" " + absent_sentence([e["label"] for e in q.meta["excluded"]]), "")
        else:
            q_text = q.question
        assert q_text == p.question and q.options == p.options and q.answer == p.answer
        assert {k: v for k, v in q.meta.items() if k != "excluded"} == {k: v for k, v in p.meta.items()
                                                                          if k != "excluded"}
    assert (plain / "test.jsonl").read_bytes() == (built[0] / "test.jsonl").read_bytes()


def test_longer_train_vignettes_leave_dev_and_test_unchanged(built, hpo, tmp_path):
    """`max_findings_train` draws longer train lists (real patients list up to ~20 findings); dev and test keep 3-8
    and stay byte-identical whatever it is."""
    longer = tmp_path / "longer"
    build_hpo_dx(longer, dataclasses.replace(SMALL, max_findings_train=16), hpo, progress=False)
    lengths = [len(q.meta["findings"]) for q in load_split(longer / "train.jsonl")]
    assert max(lengths) > SMALL.max_findings and min(lengths) >= SMALL.min_findings
    assert max(len(q.meta["findings"]) for q in built[2]["train"]) <= SMALL.max_findings_train == SMALL.max_findings
    for split in ("dev", "test"):
        assert (longer / f"{split}.jsonl").read_bytes() == (built[0] / f"{split}.jsonl").read_bytes()


def test_stats_json(built):
    out, stats, _ = built
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == stats
    assert stats["hpo_version"] == "2025-01-16"
    train = stats["splits"]["train"]
    assert train["questions"] == 80 and train["diseases_in_split"] > 5000
    assert 3 <= train["findings_per_vignette"]["min"] <= train["findings_per_vignette"]["mean"] <= 8
    assert sum(train["answer_letters"].values()) == 80 and len(train["answer_letters"]) == 4
    assert train["distractors_sharing_a_finding_rate"] > 0.9


def test_choose_distractors_respects_pool_and_names(hpo):
    index = PhenotypeIndex(hpo)
    rng = random.Random(0)
    marfan = "OMIM:154700"
    chosen = choose_distractors(index, marfan, ["HP:0001166"], None, rng)
    assert len(chosen) == 3
    keys = {index.keys[c.id] for c in chosen}
    assert len(keys) == 3 and index.keys[marfan] not in keys
    assert all(index.sets[c.id] & index.sets[marfan] for c in chosen)
    assert [c.score for c in chosen] == sorted((c.score for c in chosen), reverse=True)
    assert choose_distractors(index, marfan, [], index.mask([]), rng) == []  # empty pool -> none
    same = choose_distractors(index, marfan, ["HP:0001166"], None, random.Random(5))
    assert same == choose_distractors(index, marfan, ["HP:0001166"], None, random.Random(5))


@pytest.mark.parametrize("name,key", [
    ("Ehlers-Danlos syndrome, classic type, 1", "classic danlos ehlers"),
    ("Classic Ehlers-Danlos syndrome", "classic danlos ehlers"),
    ("Spastic paraplegia 7, autosomal recessive", "paraplegia spastic"),
    ("Mucopolysaccharidosis type II", "mucopolysaccharidosis"),
])
def test_name_key(name, key):
    assert name_key(name) == key


@pytest.mark.parametrize("days,sex,text", [
    (None, None, "A patient"), (None, "female", "A female patient"), (0, "male", "A newborn boy"),
    (0, None, "A newborn"),
    (10, "female", "A 10-day-old girl"), (240, None, "An 8-month-old infant"),
    (3 * 365 + 60, "female", "A 3-year-old girl"), (34 * 365, "male", "A 34-year-old man"),
    (11 * 365, "male", "An 11-year-old boy"), (70 * 365, None, "A 70-year-old adult"),
])
def test_patient_phrase(days, sex, text):
    assert patient_phrase(days, sex) == text


def test_ensure_default_build_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path))
    directory = ensure_default_build(seed=0)
    assert directory == tmp_path / "data" / "hpo-dx"
    assert "building the HPO-Dx benchmark" in capsys.readouterr().err
    stats = json.loads((directory / "stats.json").read_text())
    assert {s: stats["splits"][s]["questions"] for s in SPLITS} == {"train": 3000, "dev": 300, "test": 500}
    stamp = os.stat(directory / "test.jsonl").st_mtime_ns
    assert ensure_default_build(0) == directory
    assert "building" not in capsys.readouterr().err
    assert os.stat(directory / "test.jsonl").st_mtime_ns == stamp


def test_byte_identical_across_processes_with_different_hash_seeds(built, tmp_path):
    """Two `medr1 data build hpo-dx` processes with different PYTHONHASHSEED (set iteration order differs between
    them) write the same bytes as this process: no result depends on the order of a set."""
    import subprocess
    import sys

    out, _, _ = built
    for seed in ("1", "4242"):
        target = tmp_path / f"hash-{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "medr1.cli", "data", "build", "hpo-dx", "--out", str(target),
                        "--n-train", str(SMALL.n_train), "--n-dev", str(SMALL.n_dev), "--n-test", str(SMALL.n_test)],
                       env=env, check=True, capture_output=True, timeout=300)
        assert _bytes(target) == _bytes(out), f"PYTHONHASHSEED={seed}"
