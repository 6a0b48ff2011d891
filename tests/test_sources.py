"""Tests for source specs and loaders (medr1.data.sources, medr1.data.loaders) and `medr1 data show`.

Fast tests use the small files in tests/fixtures/sources/ and bad files written to tmp_path; `shared` tests check the
record counts of SOURCES.md on ../shared/data. Run: pytest tests/test_sources.py -q
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medr1.cli import app
from medr1.data.schema import Question
from medr1.data.sources import load_questions, parse_spec, question_counts
from medr1.errors import DataError
from medr1.io import atomic_write_jsonl
from medr1.paths import shared_path

FIX = Path(__file__).parent / "fixtures" / "sources"


def load(spec: str, **kw):
    return load_questions(spec, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# every loader on its fixture
# ---------------------------------------------------------------------------------------------------------------------


def test_mirage_one_dataset_and_all():
    r = load(f"mirage:medqa@{FIX}/mirage/benchmark.json")
    assert [q.id for q in r.questions] == ["mirage-medqa-0000", "mirage-medqa-0001"]
    q = r.questions[1]
    assert (q.answer, q.source, q.split, q.options["B"]) == ("B", "mirage-medqa", "test", "Protamine sulfate")
    assert q.meta == {"dataset": "medqa", "qid": "0001"}
    everything = load(f"mirage:all@{FIX}/mirage/benchmark.json")
    assert everything.counts()["sources"] == {
        "mirage-medqa": 2, "mirage-medmcqa": 1, "mirage-pubmedqa": 1, "mirage-bioasq": 1, "mirage-mmlu": 1
    }
    split_of = {q.source: q.split for q in everything.questions}
    assert split_of["mirage-medmcqa"] == "dev" and split_of["mirage-bioasq"] == "test"
    bio = next(q for q in everything.questions if q.source == "mirage-bioasq")
    assert bio.options == {"A": "yes", "B": "no"} and bio.meta["pmid"] == [2222]


def test_mirage_unknown_dataset_lists_valid_ones():
    with pytest.raises(DataError, match=r"unknown MIRAGE dataset 'medquad'.*medqa\|medmcqa\|pubmedqa\|bioasq\|mmlu"):
        load(f"mirage:medquad@{FIX}/mirage/benchmark.json")


def test_medqa_4_and_5_options():
    four = load(f"medqa:{FIX}/medqa/4_options/phrases_no_exclude_test.jsonl").questions
    assert [q.id for q in four] == ["medqa-test-0", "medqa-test-1", "medqa-test-2"]
    assert [q.answer for q in four] == ["B", "C", "A"]
    assert four[0].split == "test" and four[0].source == "medqa" and four[0].meta == {"step": "step2&3"}
    five = load(f"medqa:{FIX}/medqa/test.jsonl").questions
    assert [q.id for q in five] == ["medqa5-test-0", "medqa5-test-1"]
    assert len(five[0].options) == 5 and five[1].options[five[1].answer] == "Borrelia burgdorferi"


def test_medmcqa_answers_explanations_meta():
    qs = load(f"medmcqa:{FIX}/medmcqa/dev.json").questions
    assert [q.id for q in qs] == ["medmcqa-mc-1", "medmcqa-mc-2", "medmcqa-mc-3"]
    assert [q.answer for q in qs] == ["A", "C", "D"]  # cop is 1-based
    assert qs[0].explanation.startswith("HbA") and qs[1].explanation is None and qs[2].explanation is None
    assert qs[0].meta == {"subject": "Physiology", "topic": "Blood", "choice_type": "single"}
    assert "topic" not in qs[1].meta and qs[0].split == "dev"


def test_pubmedqa_split_from_ground_truth(tmp_path):
    qs = load(f"pubmedqa:{FIX}/pubmedqa/ori_pqal.json").questions
    assert {q.id: (q.answer, q.split) for q in qs} == {
        "pubmedqa-10000001": ("A", "train"), "pubmedqa-10000002": ("B", "test"), "pubmedqa-10000003": ("C", "train")
    }
    assert qs[0].options == {"A": "yes", "B": "no", "C": "maybe"}
    assert qs[0].explanation == "Aspirin use was associated with fewer strokes."
    assert qs[0].meta["contexts"] == ["Background text.", "Results text."] and qs[0].meta["pmid"] == "10000001"
    # Without the ground-truth file beside it there is no split.
    alone = tmp_path / "ori_pqal.json"
    alone.write_text((FIX / "pubmedqa" / "ori_pqal.json").read_text())
    assert {q.split for q in load(f"pubmedqa:{alone}").questions} == {""}


def test_mmlu_folder_and_single_file():
    qs = load(f"mmlu:{FIX}/mmlu").questions
    assert [q.id for q in qs] == ["mmlu-anatomy-000", "mmlu-anatomy-001", "mmlu-medical_genetics-000"]
    assert qs[1].question.startswith('Which of the following, in the "adult" heart,\nseparates')  # quoted multi-line
    assert [q.answer for q in qs] == ["A", "A", "B"]
    assert qs[2].meta == {"subject": "medical_genetics"} and qs[2].split == "test"
    one = load(f"mmlu:{FIX}/mmlu/medical_genetics_test.csv").questions
    assert [q.id for q in one] == ["mmlu-medical_genetics-000"]


def test_jsonl_round_trip(tmp_path):
    original = load(f"jsonl:{FIX}/normalized.jsonl").questions
    assert [q.id for q in original] == ["n-1", "n-2"] and original[0].gold_doc_ids == ["OMIM:162200"]
    # Any source, written in the normalized format and read back, is the same questions.
    specs = (f"medmcqa:{FIX}/medmcqa/dev.json", f"pubmedqa:{FIX}/pubmedqa/ori_pqal.json",
             f"jsonl:{FIX}/normalized.jsonl")
    for spec in specs:
        questions = load(spec).questions
        out = tmp_path / "round.jsonl"
        atomic_write_jsonl(out, (q.to_dict() for q in questions))
        assert load(f"jsonl:{out}").questions == questions


def test_hpo_dx_default_build_and_path(tmp_path, monkeypatch):
    build = tmp_path / "hpo-dx"
    build.mkdir()
    q = Question(id="hpodx-1", question="Findings: seizures. Diagnosis?", options={"A": "X", "B": "Y"}, answer="B",
                 source="hpo-dx", split="dev")
    atomic_write_jsonl(build / "dev.jsonl", [q.to_dict()])
    fake = types.ModuleType("medr1.data.hpo_dx")
    fake.ensure_default_build = lambda seed=0: build
    monkeypatch.setitem(sys.modules, "medr1.data.hpo_dx", fake)
    assert load("hpo-dx:dev").questions == [q]
    assert load(f"hpo-dx:{build}/dev.jsonl").questions == [q]
    with pytest.raises(DataError, match=r"hpo-dx:test: file not found: .*hpo-dx/test\.jsonl"):
        load("hpo-dx:test")  # default build without that split file
    with pytest.raises(DataError, match="is a folder"):
        load(f"hpo-dx:{build}")


def test_phenopackets_delegates_with_skiplog(tmp_path, monkeypatch):
    seen = {}

    made = []

    def fake_loader(directory, skips):
        seen["dir"], seen["skip_bad"] = Path(directory), skips.skip_bad
        skips.reasons["no diagnosis"] += 1
        for i in range(3):
            made.append(i)
            yield Question(id=f"pp-{i}", question="case", options={"A": "a", "B": "b"}, answer="A")

    fake = types.ModuleType("medr1.data.phenopackets")
    fake.iter_phenopacket_questions = fake_loader
    monkeypatch.setitem(sys.modules, "medr1.data.phenopackets", fake)
    r = load(f"phenopackets:{tmp_path}", skip_bad=True, limit=2)
    assert seen == {"dir": tmp_path, "skip_bad": True}
    assert [q.id for q in r.questions] == ["pp-0", "pp-1"] and r.skips.reasons["no diagnosis"] == 1
    assert made == [0, 1]  # lazy: the third case is never read


# ---------------------------------------------------------------------------------------------------------------------
# hf: with a local datasets.Dataset (never the network)
# ---------------------------------------------------------------------------------------------------------------------


def test_hf_layouts_with_local_datasets():
    from datasets import Dataset, DatasetDict

    mc = Dataset.from_list([
        {"id": "x1", "question": "Q1?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 0, "exp": "because",
         "subject_name": "S", "topic_name": None, "choice_type": "single"},
        {"id": "x2", "question": "Q2?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 3, "exp": None,
         "subject_name": "S", "topic_name": "T", "choice_type": "single"},
    ])
    medqa = Dataset.from_list([
        {"question": "Q?", "answer": "two", "options": {"A": "one", "B": "two", "C": "three", "D": "four"},
         "answer_idx": "B", "meta_info": "step1"},
    ])
    bigbio = Dataset.from_list([
        {"question": "Q?", "answer_idx": "C", "answer": "z",
         "options": [{"key": "A", "value": "x"}, {"key": "B", "value": "y"}, {"key": "C", "value": "z"}]},
    ])
    norm = Dataset.from_list([
        {"question": "Q?", "options": ["p", "q", "r"], "answer": 2, "explanation": "e", "extra": 7},
        {"question": "Q?", "options": ["p", "q"], "answer": 0, "explanation": None, "extra": 8},
    ])
    data = {"mc": DatasetDict({"validation": mc}), "medqa": medqa, "bigbio": bigbio, "norm": norm}
    calls = []

    def loader(name, split):
        calls.append((name, split))
        return data[name]

    r = load_questions("hf:mc", dataset_loader=loader)
    assert calls == [("mc", None)]
    assert [(q.id, q.answer, q.split, q.source) for q in r.questions] == [
        ("medmcqa-x1", "A", "dev", "hf:mc"), ("medmcqa-x2", "D", "dev", "hf:mc")  # hub cop is 0-based
    ]
    assert r.questions[0].explanation == "because"
    q = load_questions("hf:medqa:test", dataset_loader=loader).questions[0]
    assert (q.id, q.answer, q.split, q.source) == ("medqa-test-0", "B", "test", "hf:medqa")
    q = load_questions("hf:bigbio:train", dataset_loader=loader).questions[0]
    assert q.options == {"A": "x", "B": "y", "C": "z"} and q.answer == "C"
    qs = load_questions("hf:norm:train", dataset_loader=loader).questions
    assert [(q.id, q.answer, q.meta) for q in qs] == [
        ("hf-norm-train-0", "C", {"extra": 7}), ("hf-norm-train-1", "A", {"extra": 8})
    ]
    assert qs[0].options == {"A": "p", "B": "q", "C": "r"} and qs[1].explanation is None


def test_hf_unknown_layout_and_load_failure():
    from datasets import Dataset

    with pytest.raises(DataError, match=r"unrecognized columns \['foo'\]; supported layouts"):
        load_questions("hf:odd:train", dataset_loader=lambda n, s: Dataset.from_list([{"foo": 1}]))

    def offline(name, split):
        raise ConnectionError("no network")

    with pytest.raises(DataError, match="could not load 'x/y'.*no network"):
        load_questions("hf:x/y:test", dataset_loader=offline)


def test_hf_default_loader_is_datasets_load_dataset(monkeypatch):
    import datasets
    from datasets import Dataset

    seen = []

    def fake_load_dataset(name, split=None):
        seen.append((name, split))
        return Dataset.from_list([{"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "B"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load("hf:org/name:test").questions[0].answer == "B"
    assert seen == [("org/name", "test")]


# ---------------------------------------------------------------------------------------------------------------------
# spec errors, missing files, bad input, skip_bad, limit
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_spec_lists_every_prefix_with_example():
    with pytest.raises(DataError) as err:
        load("medquad:foo")
    msg = str(err.value)
    assert "unknown source spec 'medquad:foo'" in msg
    for example in ("mirage:medqa", "medqa:", "medmcqa:", "pubmedqa:", "mmlu:", "phenopackets:", "hpo-dx:test",
                    "jsonl:", "hf:"):
        assert example in msg
    kind, arg = parse_spec("medmcqa")  # a bare prefix means its default
    assert kind.prefix == "medmcqa" and arg == ""


def test_missing_file_names_path_and_how_to_pass_one(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=rf"file not found: {tmp_path}/nope.json; pass an existing file, e.g. medmcqa:"):
        load(f"medmcqa:{tmp_path}/nope.json")
    monkeypatch.setenv("MEDR1_SHARED_DATA", str(tmp_path / "absent"))
    with pytest.raises(DataError, match=r"no path given and the default .*absent/mmlu-med does not exist.*mmlu:PATH"):
        load("mmlu:")
    with pytest.raises(DataError, match=r"absent/mirage/benchmark.json does not exist"):
        load("mirage:medqa")


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD_MC = {"question": "Q?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 2, "id": "ok"}


@pytest.mark.parametrize(
    "bad, pattern, reason",
    [
        ("{not json", r"bad\.json:2: invalid JSON", "invalid JSON"),
        ({**GOOD_MC, "id": "b", "opc": None}, r"bad\.json:2: missing field 'opc'", "missing field"),
        ({**GOOD_MC, "id": "b", "opd": "  "}, r"bad\.json:2: option D is missing or empty", "missing options"),
        ({**GOOD_MC, "id": "b", "cop": 7}, r"bad\.json:2: cop must be 1-4, got 7", "unknown answer letter"),
        ({**GOOD_MC, "id": "b", "question": ""}, r"bad\.json:2: empty question text", "empty question"),
    ],
)
def test_medmcqa_bad_record_names_file_line_and_is_counted(tmp_path, bad, pattern, reason):
    path = write_lines(tmp_path / "bad.json", [GOOD_MC, bad, {**GOOD_MC, "id": "after"}])
    with pytest.raises(DataError, match=pattern):
        load(f"medmcqa:{path}")
    r = load(f"medmcqa:{path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["medmcqa-ok", "medmcqa-after"]
    assert dict(r.skips.reasons) == {reason: 1} and "bad.json:2" in r.skips.summary()


GOOD_MEDQA = {"question": "Q?", "answer": "b", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "B"}


@pytest.mark.parametrize(
    "bad, pattern, reason",
    [
        ({**GOOD_MEDQA, "options": None}, r"x_test\.jsonl:3: missing field 'options'", "missing field"),
        ({**GOOD_MEDQA, "options": {"A": "a"}, "answer_idx": "A", "answer": "a"}, r":3: needs at least 2 options",
         "missing options"),
        ({**GOOD_MEDQA, "answer_idx": "E", "answer": "e"}, r":3: answer 'E' is not among options",
         "answer not among options"),
        ({**GOOD_MEDQA, "answer_idx": "?"}, r":3: unknown answer letter '\?'", "unknown answer letter"),
        ({**GOOD_MEDQA, "options": {"A": "a", "Z": "b"}, "answer_idx": "A", "answer": "a"},
         r":3: unknown option letter 'Z'", "unknown answer letter"),
        ({**GOOD_MEDQA, "answer_idx": "A"}, r":3: answer_idx 'A' is 'a' but answer says 'b'", "answer text mismatch"),
        ("[1, 2]", r":3: expected a JSON object, got list", "invalid JSON"),
    ],
)
def test_medqa_bad_record(tmp_path, bad, pattern, reason):
    path = write_lines(tmp_path / "x_test.jsonl", [GOOD_MEDQA, "", bad, GOOD_MEDQA])  # line 2 blank: lines still count
    with pytest.raises(DataError, match=pattern):
        load(f"medqa:{path}")
    r = load(f"medqa:{path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["medqa-test-0", "medqa-test-3"]
    assert dict(r.skips.reasons) == {reason: 1}


def test_mmlu_bad_rows_name_the_starting_line(tmp_path):
    (tmp_path / "anatomy_test.csv").write_text('Q1,a,b,c,d,A\n"multi\nline",a,b,c,d,E\nQ3,a,b,c,A\nQ4,a,b,c,d,D\n')
    with pytest.raises(DataError, match=r"anatomy_test\.csv:2: answer 'E' is not among options"):
        load(f"mmlu:{tmp_path}")
    r = load(f"mmlu:{tmp_path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["mmlu-anatomy-000", "mmlu-anatomy-003"]
    assert dict(r.skips.reasons) == {"answer not among options": 1, "missing options": 1}
    assert "anatomy_test.csv:4: expected 6 columns" in r.skips.summary()


def test_whole_file_json_errors_and_key_errors(tmp_path):
    bad = tmp_path / "ori_pqal.json"
    bad.write_text('{\n "1": {"QUESTION": "q"\n')
    with pytest.raises(DataError, match=r"ori_pqal\.json:3: invalid JSON"):
        load(f"pubmedqa:{bad}", skip_bad=True)  # an unparseable file cannot be skipped around
    records = {"1": {"QUESTION": "q", "final_decision": "perhaps"}, "2": {"QUESTION": "q", "final_decision": "no"}}
    bad.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"ori_pqal\.json: key 1: final_decision must be yes/no/maybe, got 'perhaps'"):
        load(f"pubmedqa:{bad}")
    assert [q.id for q in load(f"pubmedqa:{bad}", skip_bad=True).questions] == ["pubmedqa-2"]
    mirage = tmp_path / "benchmark.json"
    mirage.write_text(json.dumps({"medqa": {"0": {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "C"}}}))
    with pytest.raises(DataError, match=r"benchmark\.json: key medqa/0: answer 'C' is not among options \['A', 'B'\]"):
        load(f"mirage:medqa@{mirage}")


def test_jsonl_bad_records(tmp_path):
    good = json.loads((FIX / "normalized.jsonl").read_text().splitlines()[0])
    no_options = {k: v for k, v in good.items() if k != "options"}
    records = [good, {**good, "id": "n-x", "colour": "red"}, {**good, "id": "n-y", "answer": "Q"}, no_options,
               {**good, "id": "n-1b"}]
    path = write_lines(tmp_path / "q.jsonl", records)
    with pytest.raises(DataError, match=r"q\.jsonl:2: unknown field\(s\) \['colour'\]"):
        load(f"jsonl:{path}")
    r = load(f"jsonl:{path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["n-1", "n-1b"]
    assert dict(r.skips.reasons) == {"invalid record": 1, "unknown answer letter": 1, "missing field": 1}


def test_a_line_that_is_not_utf8_is_named_and_counted(tmp_path):
    good = (FIX / "normalized.jsonl").read_text().splitlines()[0]
    path = tmp_path / "q.jsonl"
    second = json.dumps({**json.loads(good), "id": "n-2"})
    path.write_bytes(good.encode() + b"\n" + '{"question": "caf\u00e9"}'.encode("latin-1") + b"\n" + second.encode() + b"\n")
    with pytest.raises(DataError, match=r"q\.jsonl:2: not valid UTF-8"):
        load(f"jsonl:{path}")
    r = load(f"jsonl:{path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["n-1", "n-2"] and "q.jsonl:2" in r.skips.summary()


def test_a_bad_hpo_dx_line_names_file_and_line(tmp_path):
    """A built HPO-Dx file is a jsonl: of Questions; a damaged line stops the load, naming where (or is counted)."""
    q = Question(id="hpodx-1", question="Findings: seizures. Diagnosis?", options={"A": "X", "B": "Y"}, answer="B",
                 source="hpo-dx", split="test")
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(q.to_dict()) + "\n" + json.dumps({**q.to_dict(), "id": "hpodx-2", "answer": "C"})
                    + "\n" + json.dumps({**q.to_dict(), "id": "hpodx-3"})[:40] + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: .*answer 'C'"):
        load(f"hpo-dx:{path}")
    r = load(f"hpo-dx:{path}", skip_bad=True)
    assert [x.id for x in r.questions] == ["hpodx-1"] and r.skips.total == 2
    assert "test.jsonl:3" in r.skips.summary()


def test_mirage_skip_bad_counts_the_bad_question_and_keeps_the_rest(tmp_path):
    good = {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps({"medqa": {"0": good, "1": {**good, "answer": "C"}, "2": {**good, "options": {}},
                                          "3": good}}))
    with pytest.raises(DataError, match=r"key medqa/1: answer 'C' is not among options"):
        load(f"mirage:medqa@{path}")
    r = load(f"mirage:medqa@{path}", skip_bad=True)
    assert [q.id for q in r.questions] == ["mirage-medqa-0", "mirage-medqa-3"] and r.skips.total == 2
    assert "medqa/1" in r.skips.summary() and "medqa/2" in r.skips.summary()


def test_duplicate_ids_are_errors_or_counted(tmp_path):
    good = json.loads((FIX / "normalized.jsonl").read_text().splitlines()[0])
    path = write_lines(tmp_path / "q.jsonl", [good, good])
    with pytest.raises(DataError, match="duplicate question id 'n-1'"):
        load(f"jsonl:{path}")
    r = load(f"jsonl:{path}", skip_bad=True)
    assert len(r.questions) == 1 and dict(r.skips.reasons) == {"duplicate id": 1}


def test_limit_counts_good_records_only(tmp_path):
    records = ["{oops", GOOD_MC, "{oops", {**GOOD_MC, "id": "2"}, {**GOOD_MC, "id": "3"}]
    path = write_lines(tmp_path / "dev.json", records)
    r = load(f"medmcqa:{path}", skip_bad=True, limit=2)
    assert [q.id for q in r.questions] == ["medmcqa-ok", "medmcqa-2"]
    assert r.skips.total == 2
    assert load(f"medmcqa:{path}", skip_bad=True, limit=0).questions == []
    # limit stops reading: the bad line after the limit is never reached, so no error.
    path2 = write_lines(tmp_path / "x.json", [GOOD_MC, "{oops"])
    assert len(load(f"medmcqa:{path2}", limit=1).questions) == 1


def test_question_counts():
    qs = load(f"medmcqa:{FIX}/medmcqa/dev.json").questions
    assert question_counts(qs) == {
        "total": 3, "splits": {"dev": 3}, "sources": {"medmcqa": 3}, "answers": {"A": 1, "C": 1, "D": 1},
        "n_options": {4: 3}, "with_explanation": 1,
    }


# ---------------------------------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_data_show_readable_and_json(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "show", f"medmcqa:{FIX}/medmcqa/dev.json", "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert "questions: 3" in res.stdout and "splits: dev 3" in res.stdout and "with explanation: 1" in res.stdout
    assert "answers: A 1 (33.3%), C 1 (33.3%), D 1 (33.3%)" in res.stdout
    assert "[1] medmcqa-mc-1" in res.stdout and "[2]" not in res.stdout and "  A. HbA" in res.stdout

    res = runner.invoke(app, ["data", "show", f"jsonl:{FIX}/normalized.jsonl", "--json", "--limit", "0"])
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["n-1", "n-2"]  # stdout is pure JSON lines
    assert "questions: 2" in res.stderr

    bad = write_lines(tmp_path / "dev.json", [GOOD_MC, "{oops"])
    res = runner.invoke(app, ["data", "show", f"medmcqa:{bad}"])
    assert res.exit_code == 2 and "error:" in res.stderr and "dev.json:2: invalid JSON" in res.stderr
    res = runner.invoke(app, ["data", "show", f"medmcqa:{bad}", "--skip-bad"])
    assert res.exit_code == 0 and "questions: 1" in res.stdout and "skipped 1 records (1 invalid JSON)" in res.stderr

    res = runner.invoke(app, ["data", "show", "nope:x"])
    assert res.exit_code == 2 and "unknown source spec" in res.stderr


# ---------------------------------------------------------------------------------------------------------------------
# the real data of SOURCES.md
# ---------------------------------------------------------------------------------------------------------------------


def need_shared(*parts: str) -> Path:
    path = shared_path(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set MEDR1_SHARED_DATA)")
    return path


MIRAGE_COUNTS = {"medqa": 1273, "medmcqa": 4183, "pubmedqa": 500, "bioasq": 618, "mmlu": 1089}


@pytest.mark.shared
@pytest.mark.parametrize("dataset, n", sorted(MIRAGE_COUNTS.items()))
def test_shared_mirage_counts(dataset, n):
    need_shared("mirage", "benchmark.json")
    r = load(f"mirage:{dataset}")
    assert len(r.questions) == n and r.skips.total == 0
    assert len({q.id for q in r.questions}) == n


@pytest.mark.shared
def test_shared_mirage_all():
    need_shared("mirage", "benchmark.json")
    counts = load("mirage:all").counts()
    assert counts["total"] == 7663 == sum(MIRAGE_COUNTS.values())
    assert counts["sources"] == {f"mirage-{k}": v for k, v in MIRAGE_COUNTS.items()}


@pytest.mark.shared
@pytest.mark.parametrize(
    "spec, split, n, n_options",
    [("medqa:dev", "dev", 1272, 4), ("medqa:test", "test", 1273, 4), ("medqa:", "test", 1273, 4)],
)
def test_shared_medqa_4_options(spec, split, n, n_options):
    need_shared("medqa", "questions", "US", "4_options", f"phrases_no_exclude_{split}.jsonl")
    counts = load(spec).counts()
    assert counts["total"] == n and counts["n_options"] == {n_options: n}


@pytest.mark.shared
@pytest.mark.parametrize("split, n", [("dev", 1272), ("test", 1273)])
def test_shared_medqa_5_options(split, n):
    path = need_shared("medqa", "questions", "US", f"{split}.jsonl")
    counts = load(f"medqa:{path}").counts()
    assert counts["total"] == n and counts["n_options"] == {5: n} and counts["splits"] == {split: n}


@pytest.mark.shared
def test_shared_medmcqa_dev():
    need_shared("medmcqa", "dev.json")
    counts = load("medmcqa:").counts()
    assert counts["total"] == 4183 and counts["with_explanation"] == 2206 and counts["splits"] == {"dev": 4183}


@pytest.mark.shared
def test_shared_pubmedqa():
    need_shared("pubmedqa", "ori_pqal.json")
    counts = load("pubmedqa:").counts()
    assert counts["total"] == 1000 and counts["splits"] == {"test": 500, "train": 500}
    assert counts["with_explanation"] == 1000


@pytest.mark.shared
def test_shared_mmlu_med():
    need_shared("mmlu-med")
    r = load("mmlu:")
    assert len(r.questions) == 1089
    assert {q.meta["subject"] for q in r.questions} == {
        "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
        "professional_medicine",
    }
