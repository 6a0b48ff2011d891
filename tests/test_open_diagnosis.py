"""Open-ended diagnosis: the hpo-sim ranker on a hand-made ontology slice, the open metrics on a table of cases, the
three subsets, and `medr1 open-eval` end to end on the fixture phenopackets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medr1.data.hpo import HPO, Annotation, Disease, Term
from medr1.data.schema import Question
from medr1.open_diagnosis import SimIndex, case_record, open_metrics, ranked, subset_metrics

FIXTURE = Path(__file__).parent / "fixtures" / "phenopackets"


@pytest.fixture()
def slice_hpo() -> HPO:
    """root -> A -> {A1, A2}; root -> B -> B1. D1 = {A1 (obligate), B1 (1 in 5)}, D2 = {A2}, D3 = {B1}."""
    terms = {t.id: t for t in (
        Term("HP:0000001", "All"), Term("HP:A", "A", parents=("HP:0000001",)),
        Term("HP:A1", "A one", parents=("HP:A",)), Term("HP:A2", "A two", parents=("HP:A",)),
        Term("HP:B", "B", parents=("HP:0000001",)), Term("HP:B1", "B one", parents=("HP:B",)))}
    freq = {("OMIM:1", "HP:A1"): 1.0, ("OMIM:1", "HP:B1"): 0.2}
    diseases = {d: Disease(d, d, [Annotation(t, "P", frequency=freq.get((d, t))) for t in ts])
                for d, ts in (("OMIM:1", ("HP:A1", "HP:B1")), ("OMIM:2", ("HP:A2",)), ("OMIM:3", ("HP:B1",)))}
    return HPO(terms, {}, diseases, "test", {})


def test_information_content_and_most_informative_common_ancestor(slice_hpo):
    index = SimIndex(slice_hpo)
    assert index.ic["HP:0000001"] == 0.0 and index.ic["HP:A"] == pytest.approx(math.log(3 / 2))
    assert index.ic["HP:A1"] == pytest.approx(math.log(3)) and index.ic["HP:B1"] == pytest.approx(math.log(3 / 2))
    # A1 against D1 (has A1), D2 (shares A), D3 (shares only the root)
    assert list(index.term_scores("HP:A1")) == pytest.approx([math.log(3), math.log(3 / 2), 0.0])


def test_hpo_sim_ranks_and_counts_excluded_terms_against(slice_hpo):
    index = SimIndex(slice_hpo)
    assert ranked(index.ids, index.scores(["HP:A1"])) == ["OMIM:1", "OMIM:2", "OMIM:3"]
    assert ranked(index.ids, index.scores(["HP:A2"])) == ["OMIM:2", "OMIM:1", "OMIM:3"]  # D1 shares A, D3 the root
    with_exclusion = index.scores(["HP:A2"], excluded=["HP:A1"])  # D1 always has A1: it drops below D3
    assert ranked(index.ids, with_exclusion) == ["OMIM:2", "OMIM:3", "OMIM:1"]
    # D1: patient -> disease log(3/2) (A2 meets A1 at A); disease -> patient (log(3/2) + 0) / 2 (B1 meets only the
    # root); symmetric mean, minus the IC of the excluded A1 that D1 has
    assert with_exclusion[0] == pytest.approx((math.log(3 / 2) + math.log(3 / 2) / 2) / 2 - math.log(3))
    # B1 is only occasional in D1 (1 in 5): excluding it costs D1 nothing, while D3 (frequency unknown) is not
    # penalised either — only near-obligate annotations count against a disease
    assert list(index.scores(["HP:A2"], excluded=["HP:B1"])) == pytest.approx(list(index.scores(["HP:A2"])))
    assert list(index.disease_to_patient(["HP:A1"])) == pytest.approx([math.log(3) / 2, math.log(3 / 2), 0.0])


def test_open_metrics_on_a_table_of_cases():
    m = open_metrics([1, 2, None, 11], misses=1)
    assert m.n == 5 and m.mrr == pytest.approx((1 + 0.5 + 1 / 11) / 5)
    assert [m.top[k][0] for k in (1, 3, 10)] == [0.2, 0.4, 0.4]
    assert m.mrr_ci[0] <= m.mrr <= m.mrr_ci[1]


def test_subsets_and_case_records():
    q = Question(id="p1", question="x", options={}, answer=None, meta={"disease_id": "OMIM:2", "subset": "unseen-publication"},
                 gold_doc_ids=["OMIM:2"], split="dev", source="phenopackets")
    rec = case_record(q, ["OMIM:1", "OMIM:2", "OMIM:3"])
    assert rec == {"id": "p1", "gold": "OMIM:2", "rank": 2, "top": ["OMIM:1", "OMIM:2", "OMIM:3"],
                   "subset": "unseen-publication"}
    records = [rec, {**rec, "id": "p2", "rank": 1, "subset": "seen-publication"}]
    got = subset_metrics(records, not_in_kb=2)
    assert [got[k].n for k in ("unseen-publication", "seen-publication", "disease in KB", "all cases")] == [1, 1, 2, 4]
    assert got["unseen-publication"].top[1][0] == 0.0 and got["all cases"].top[1][0] == 0.25


def test_open_eval_on_the_fixture_phenopackets(tmp_path):
    from typer.testing import CliRunner

    from medr1.cli import app

    result = CliRunner().invoke(app, ["open-eval", "--method", "hpo-sim", "--data", f"phenopackets:{FIXTURE}",
                                      "--out", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {r["gold"] for r in records} == {"OMIM:615120", "OMIM:154700"}
    assert all(r["rank"] is not None and r["top"][r["rank"] - 1] == r["gold"] for r in records if r["rank"] <= 10)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["skipped"] == {"disease not in HPO annotations": 1}
    assert metrics["subsets"]["disease in KB"]["n"] == 2 and metrics["subsets"]["all cases"]["n"] == 3
    assert "| | all cases | 3 |" in result.output
    bad = CliRunner().invoke(app, ["open-eval", "--method", "magic", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "must be one of ['bm25', 'hpo-sim']" in bad.output


def test_a_limited_open_eval_counts_only_the_files_it_read(tmp_path):
    """With --limit the loader stops reading after the last case it needs, so "all cases" holds those cases plus
    the unannotated ones among the files read — a count, not an estimate. The fixture's unannotated packet is the
    last file: a run of one case never reads it."""
    from medr1.open_diagnosis import run_open_eval

    metrics = run_open_eval("hpo-sim", f"phenopackets:{FIXTURE}", tmp_path, limit=1, progress=False)
    assert metrics["skipped"] == {} and metrics["subsets"]["all cases"]["n"] == 1
    whole = run_open_eval("hpo-sim", f"phenopackets:{FIXTURE}", tmp_path / "whole", progress=False)
    assert whole["skipped"] == {"disease not in HPO annotations": 1} and whole["subsets"]["all cases"]["n"] == 3
