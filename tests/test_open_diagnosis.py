"""Open-ended diagnosis: the hpo-sim ranker on a hand-made ontology slice, the open metrics on a table of cases, the
three subsets, and `medr1 open-eval` end to end on the fixture phenopackets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from medr1.data.hpo import HPO, Annotation, Disease, Term
from medr1.data.schema import Question
from medr1.errors import ConfigError
from medr1.evaluate import Generator
from medr1.open_diagnosis import (SimIndex, candidate_question, case_record, open_metrics, ranked, reranked,
                                  subset_metrics)

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
    assert bad.exit_code != 0 and "'magic' is not one of bm25, hpo-sim, self-ask-open, rag-open, rerank" in bad.output
    choice = CliRunner().invoke(app, ["open-eval", "--method", "cot", "--out", str(tmp_path)])
    assert choice.exit_code != 0 and "'cot' is a choice method" in choice.output


def test_a_limited_open_eval_counts_only_the_files_it_read(tmp_path):
    """With --limit the loader stops reading after the last case it needs, so "all cases" holds those cases plus
    the unannotated ones among the files read — a count, not an estimate. The fixture's unannotated packet is the
    last file: a run of one case never reads it."""
    from medr1.open_diagnosis import run_open_eval

    metrics = run_open_eval("hpo-sim", f"phenopackets:{FIXTURE}", tmp_path, limit=1, progress=False)
    assert metrics["skipped"] == {} and metrics["subsets"]["all cases"]["n"] == 1
    whole = run_open_eval("hpo-sim", f"phenopackets:{FIXTURE}", tmp_path / "whole", progress=False)
    assert whole["skipped"] == {"disease not in HPO annotations": 1} and whole["subsets"]["all cases"]["n"] == 3


# --- rerank: a ranker's top k as options, the model's pick first -----------------------------------------------------


def case(i: int, gold: str = "OMIM:2") -> Question:
    return Question(id=f"p{i}", question="A boy with seizures. Which of the following is the most likely diagnosis?",
                    options={"A": "x", "B": "y"}, answer="A", split="dev", source="phenopackets",
                    meta={"disease_id": gold, "subset": "unseen-publication"})


def test_candidate_questions_take_distinct_names_in_a_seeded_letter_order():
    names = {"OMIM:1": "Alpha syndrome", "ORPHA:1": "alpha syndrome", "OMIM:2": "Beta syndrome",
             "OMIM:3": "Gamma syndrome", "OMIM:4": "Delta syndrome"}
    ranking = ["OMIM:1", "ORPHA:1", "OMIM:2", "OMIM:3", "OMIM:4"]
    q = candidate_question(case(0), ranking, names, k=3)
    assert sorted(q.meta["option_ids"].values()) == ["OMIM:1", "OMIM:2", "OMIM:3"]  # ORPHA:1 repeats a name
    assert {q.options[letter] for letter in q.meta["option_ids"]} == {"Alpha syndrome", "Beta syndrome", "Gamma syndrome"}
    assert q.meta["option_ids"][q.answer] == "OMIM:2" and q.meta["gold_in_options"] and q.split == "dev"
    assert q.validate("test") is q and candidate_question(case(0), ranking, names, k=3) == q  # seeded: the same
    firsts = {candidate_question(case(i), ranking, names, k=3).meta["option_ids"]["A"] for i in range(30)}
    assert firsts == {"OMIM:1", "OMIM:2", "OMIM:3"}  # the ranker's first choice is not always A
    missed = candidate_question(case(1, gold="OMIM:9"), ranking, names, k=3)
    assert not missed.meta["gold_in_options"] and missed.answer == "A"
    with pytest.raises(ConfigError, match="p0: the ranker gave 1 candidate"):
        candidate_question(case(0), ["OMIM:1", "ORPHA:1"], names, k=3)


def test_the_pick_goes_first_and_no_pick_keeps_the_ranker_order():
    first, ids = ["OMIM:1", "OMIM:2", "OMIM:3"], {"A": "OMIM:3", "B": "OMIM:1"}
    assert reranked(first, ids, "A") == ["OMIM:3", "OMIM:1", "OMIM:2"]
    assert reranked(first, ids, None) == first and reranked(first, ids, "D") == first


def test_open_and_choice_methods_are_told_apart_by_the_method_table():
    from medr1.config import build_config
    from medr1.evaluate import EvalConfig
    from medr1.methods import METHODS, get_method, llm_methods

    assert {n for n, m in METHODS.items() if m.task == "open"} == {"bm25", "hpo-sim", "rerank", "self-ask-open",
                                                                    "rag-open"}
    assert get_method("rerank", task="open").in_loop and "rerank" not in llm_methods()
    with pytest.raises(ConfigError, match="'hpo-sim' is an open method"):
        build_config(EvalConfig, {"method": "hpo-sim", "out": "x"})
    with pytest.raises(ConfigError, match="'self-ask' is a choice method"):
        get_method("self-ask", "open-eval --method", task="open")


class ScriptedGenerator(Generator):
    """A scripted `medr1.evaluate.Generator`: records each prompt and answers it with `reply(prompt)` (a completion
    text, or None for a reply the budget cut off)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def prompt_ids(self, loaded, messages):
        self.prompts.append(messages[-1]["content"])
        return [len(self.prompts) - 1]

    def backend(self, loaded, kind):
        return None

    def reply(self, prompt: str) -> str | None:
        raise NotImplementedError

    def rollouts(self, loaded, prompts, retriever, rcfg, backend=None, seed_offset=0, bar=None):
        from types import SimpleNamespace

        out = []
        for (pid,) in prompts:
            text = self.reply(self.prompts[pid])
            out.append(SimpleNamespace(text=text or "<think>unsure", queries=[], retrieved_doc_ids=[],
                                       retrieved_titles=[], finish_reason="answer" if text else "budget",
                                       tool_errors=0, n_generated=3, turns=1))
        return out


class PickByName(ScriptedGenerator):
    """Answers the letter of the option named in `names`, else the last letter (`fallback`) or no letter at all."""

    def __init__(self, names: set[str], fallback: bool = True) -> None:
        super().__init__()
        self.names, self.fallback = names, fallback

    def reply(self, prompt: str) -> str:
        options = [line for line in prompt.splitlines() if line[1:3] == ". "]
        letter = next((line[0] for line in options if line[3:] in self.names),
                      options[-1][0] if self.fallback else None)
        return f"<answer>{letter}</answer>" if letter else "<answer>I cannot tell</answer>"


def test_rerank_on_the_fixture_phenopackets(tmp_path):
    """hpo-sim's top 10 become the options; a model that names the gold puts it first wherever hpo-sim had it in
    its top 10 (and else moves a wrong one up, which leaves the gold where it was); a model that names no option
    leaves hpo-sim's ranking as it was. Rankings hold OMIM ids only: the cases are coded in OMIM."""
    from medr1.data.hpo import load_hpo
    from medr1.evaluate import EvalConfig
    from medr1.open_diagnosis import run_open_eval

    hpo = load_hpo()
    data = f"phenopackets:{FIXTURE}"
    plain = run_open_eval("hpo-sim", data, tmp_path / "plain", progress=False, hpo=hpo)
    plain_top = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "plain" / "samples.jsonl").open()}
    golds = {hpo.diseases[r["gold"]].name for r in plain_top.values()}
    cfg = EvalConfig(method="cot", out="ignored", max_new_tokens_per_turn=8, max_total_tokens=8, data=data)
    assert plain["namespaces"] == ["OMIM"] and all(d.startswith("OMIM:") for r in plain_top.values() for d in r["top"])
    got = run_open_eval("rerank", data, tmp_path / "rr", progress=False, hpo=hpo, first="hpo-sim", k=10,
                        eval_cfg=cfg, loaded=object(), generator=PickByName(golds))
    records = [json.loads(line) for line in (tmp_path / "rr" / "samples.jsonl").open()]
    assert len(records) == 2 and got["unparsed"] == 0 and got["first"] == "hpo-sim" and got["k"] == 10
    assert {r["gold_in_options"] for r in records} == {True, False}  # the fixture has one of each
    for r in records:
        inside = plain_top[r["id"]]["rank"] <= 10
        assert r["gold_in_options"] == inside and r["pick"] is not None
        assert r["rank"] == (1 if inside else plain_top[r["id"]]["rank"])
        assert r["first_top"] == plain_top[r["id"]]["top"][0]
    assert got["gold_in_options"] == sum(r["gold_in_options"] for r in records)
    assert len((tmp_path / "rr" / "choice" / "samples.jsonl").read_text().splitlines()) == 2
    blind = run_open_eval("rerank", data, tmp_path / "blind", progress=False, hpo=hpo, first="hpo-sim", k=10,
                          eval_cfg=cfg, loaded=object(), generator=PickByName(set(), fallback=False))
    assert blind["unparsed"] == 2
    for line in (tmp_path / "blind" / "samples.jsonl").open():
        r = json.loads(line)
        assert r["top"] == plain_top[r["id"]]["top"] and r["rank"] == plain_top[r["id"]]["rank"]
    assert blind["subsets"] == plain["subsets"]
    from medr1.errors import DataError
    from medr1.report import compare_evals

    text = compare_evals(tmp_path / "rr", tmp_path / "plain")  # paired on the same cases, at top-1 and top-10
    assert "| A | " + str(tmp_path / "rr") + " | rerank | 50.0% |" in text and "| | eval | method | top-10 |" in text
    assert text.count("(Newcombe's paired 95% interval; McNemar's test)") == 2
    mc = tmp_path / "mc"
    mc.mkdir()
    (mc / "samples.jsonl").write_text(json.dumps({"id": "x", "correct": True}) + "\n")
    with pytest.raises(DataError, match="one is an open-eval"):
        compare_evals(tmp_path / "rr", mc)


def test_a_jsonl_of_cases_ranks_like_its_phenopackets_and_plain_questions_are_refused(tmp_path):
    """A run's benchmark/phenopackets.jsonl (the pipeline's seeded sample) can be ranked, pairing the open methods with
    the 4-option variants on the same patients; a question set without gold disease ids is an error naming one."""
    from medr1.data.hpo import load_hpo
    from medr1.data.sources import load_questions
    from medr1.io import atomic_write_jsonl
    from medr1.open_diagnosis import run_open_eval

    hpo = load_hpo()
    cases = load_questions(f"phenopackets:{FIXTURE}", skip_bad=True).questions
    atomic_write_jsonl(tmp_path / "cases.jsonl", [q.to_dict() for q in cases])
    a = run_open_eval("hpo-sim", f"phenopackets:{FIXTURE}", tmp_path / "a", progress=False, hpo=hpo)
    b = run_open_eval("hpo-sim", f"jsonl:{tmp_path / 'cases.jsonl'}", tmp_path / "b", progress=False, hpo=hpo)
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    assert a["subsets"]["disease in KB"] == b["subsets"]["disease in KB"]
    plain = Path(__file__).parent / "fixtures" / "sources" / "normalized.jsonl"
    with pytest.raises(ConfigError, match=r"needs cases with a gold disease id .*: n-2 has none"):
        run_open_eval("hpo-sim", f"jsonl:{plain}", tmp_path / "c", progress=False, hpo=hpo)


def test_names_are_normalized_to_disease_ids_by_counted_routes():
    """Exact (case and punctuation aside, a trained "(B)" tail dropped), the same words reordered (OMIM's inverted
    names), then BM25 over the names when the best name holds half the answer's distinctive words; nothing to read,
    no shared word or only generic ones shared is a counted failure, never a guess."""
    from medr1.data.hpo import load_hpo
    from medr1.open_diagnosis import NameNormalizer

    hpo = load_hpo()
    norm = NameNormalizer(hpo, {"OMIM"})
    assert hpo.diseases["OMIM:107640"].name == "Apnea, central sleep"
    assert norm("marfan SYNDROME") == ("OMIM:154700", "exact name")
    assert norm("Marfan syndrome (B)") == ("OMIM:154700", "exact name")
    assert norm("central sleep apnea") == ("OMIM:107640", "reordered name")
    assert norm("Marfan disease") == ("OMIM:154700", "name retrieval")
    assert all(d.startswith("OMIM:") for d in norm.ids)  # Orphanet twins are not candidates for OMIM-coded cases
    assert norm(None) == (None, "no answer") and norm("  (C) ") == (None, "no answer")
    assert norm("qwzx blorft") == (None, "no name shares a word")
    assert norm("Autosomal recessive syndrome type 2") == (None, "no close name")  # only generic words
    assert norm("Wolfram-like retinitis of the qwzx blorft") == (None, "no close name")  # 1 of 4 distinctive words


def test_a_retrieved_name_is_close_when_it_holds_half_the_distinctive_words():
    from medr1.open_diagnosis import close_name, distinctive_words

    assert distinctive_words("Lipodystrophy, familial partial, type 4") == {"lipodystrophy", "partial"}
    assert close_name("Familial partial lipodystrophy", "Lipodystrophy, familial partial, type 4")
    assert close_name("Marfan disease", "Marfan syndrome") and not close_name("Syndrome", "Marfan syndrome")
    assert not close_name("Retinitis Wolfram blend", "Retinitis pigmentosa")  # 1 of 3
    assert close_name("Retinitis Wolfram", "Retinitis pigmentosa")  # 1 of 2: half


class NameTheDiagnosis(ScriptedGenerator):
    """For option-less cases: names the diagnosis of `answers` (a case phrase -> name), else writes no answer."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers

    def reply(self, prompt: str) -> str | None:
        name = next((n for case, n in self.answers.items() if case in prompt), None)
        return f"<think>fits</think><answer>{name}</answer>" if name else None


def test_self_ask_open_names_the_diagnosis_and_is_scored_top_1_only(tmp_path):
    """The model sees each case without options; a right name is top-1, a wrong one or none is a miss, the routes
    are counted, the table has no top-3/top-10/MRR, and compare pairs it with a ranker at top-1 only."""
    from medr1.data.hpo import load_hpo
    from medr1.evaluate import EvalConfig
    from medr1.open_diagnosis import run_open_eval
    from medr1.report import compare_evals

    hpo = load_hpo()
    data = f"phenopackets:{FIXTURE}"
    plain = run_open_eval("hpo-sim", data, tmp_path / "plain", progress=False, hpo=hpo)
    cases = [json.loads(line) for line in (tmp_path / "plain" / "samples.jsonl").open()]
    marfan = next(r for r in cases if r["gold"] == "OMIM:154700")
    other = next(r for r in cases if r["gold"] != "OMIM:154700")
    gen = NameTheDiagnosis({"ectopia lentis": "Syndrome, Marfan (A)"})
    cfg = EvalConfig(method="self-ask", out="ignored", max_new_tokens_per_turn=8, max_total_tokens=8, data=data)
    got = run_open_eval("self-ask-open", data, tmp_path / "named", progress=False, hpo=hpo, eval_cfg=cfg,
                        loaded=object(), generator=gen, retriever=object())
    assert all("Options:" not in p and "What is the most likely diagnosis?" in p for p in gen.prompts)
    records = {r["id"]: r for r in (json.loads(line) for line in (tmp_path / "named" / "samples.jsonl").open())}
    assert records[marfan["id"]]["rank"] == 1 and records[marfan["id"]]["route"] == "reordered name"
    assert records[other["id"]]["rank"] is None and records[other["id"]]["route"] == "no answer"
    assert got["single_answer"] and got["answered_by"] == "self-ask" and got["model_eval"] == "answers"
    assert got["normalized"] == {"exact name": 0, "reordered name": 1, "name retrieval": 0, "no answer": 1,
                                 "no name shares a word": 0, "no close name": 0}
    assert got["subsets"]["disease in KB"]["top1"] == 0.5 and "| — | — | — |" in got["table"]
    assert len((tmp_path / "named" / "answers" / "samples.jsonl").read_text().splitlines()) == 2
    text = compare_evals(tmp_path / "named", tmp_path / "plain")
    assert "top-1" in text and "top-10" not in text
    assert plain["namespaces"] == got["namespaces"] == ["OMIM"]
