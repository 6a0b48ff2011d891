"""The run report: pure pieces (cells, intervals, H1/H2 sentences, exemplar choice) tested with tables of cases, and
the whole report built from a synthetic run directory (table content, hypotheses, embedded images, self-contained
HTML, "not run" for missing artifacts, the `medr1 report` command)."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from medr1 import report as rp
from medr1 import traces
from medr1.metrics import wilson_interval
from medr1.stats import paired_difference

# ---------------------------------------------------------------------------------------------------------------------
# a synthetic run directory
# ---------------------------------------------------------------------------------------------------------------------

# (row stage, method) -> {dataset key: (correct, n)}
HPO, PP = "hpo-dx-test", "phenopackets"
ACCURACY = {
    ("baselines", "cot"): {HPO: (60, 200), PP: (30, 100)},
    ("baselines", "rag"): {HPO: (110, 200), PP: (33, 100)},
    ("baselines", "self-ask"): {HPO: (80, 200), PP: (31, 100)},
    ("baselines", "bm25-ranker"): {HPO: (170, 200), PP: (60, 100)},
    ("eval-sft", "cot"): {HPO: (70, 200)},
    ("eval-sft", "self-ask"): {HPO: (100, 200)},
    ("eval-grpo-cot", "cot"): {HPO: (80, 200)},
    ("eval-grpo", "self-ask"): {HPO: (150, 200)},
}

TRACES = [
    {"id": "hpo-dx-test-00001", "method": "self-ask", "correct": True, "prediction": "B", "gold": "B",
     "completion": "<think>Tall stature and a dislocated lens.</think>\n<search>tall stature ectopia lentis</search>\n"
                   "<information>\nDoc 1 (Title: Marfan syndrome) Tall stature; arachnodactyly\n</information>\n"
                   "<think>Marfan fits the findings.</think>\n<answer>B</answer>",
     "queries": ["tall stature ectopia lentis"], "retrieved_titles": [["Marfan syndrome", "Homocystinuria"]],
     "retrieved_ids": [["OMIM:154700", "OMIM:236200"]]},
    {"id": "hpo-dx-test-00002", "method": "self-ask", "correct": False, "prediction": "A", "gold": "C",
     "completion": "<think>Recurrent infections.</think>\n<search>recurrent infections</search>\n"
                   "<information>\nDoc 1 (Title: Cystic fibrosis) ...\n</information>\n<answer>A</answer>",
     "queries": ["recurrent infections"], "retrieved_titles": [["Cystic fibrosis"]], "retrieved_ids": [["X"]]},
    {"id": "hpo-dx-test-00003", "method": "self-ask", "correct": True, "prediction": "D", "gold": "D",
     "completion": "<think>Obvious.</think>\n<answer>D</answer>", "queries": [], "retrieved_titles": [],
     "retrieved_ids": []},
]


def metrics_for(correct: int, n: int, searches: float = 0.0) -> dict:
    low, high = wilson_interval(correct, n)
    return {"n": n, "accuracy": correct / n, "ci_low": low, "ci_high": high, "unparseable_rate": 0.05,
            "bleu": 3.25, "rouge_l": 0.1412, "gold_hit_rate": 0.4, "searches_per_question": searches,
            "generated_tokens_mean": 120.0, "seconds_per_question": 1.5, "tool_errors": 0}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_synthetic_run(run_dir: Path) -> Path:
    """A run directory with everything the report reads, numbers chosen so H1/H2 verdicts differ per dataset."""
    _write_json(run_dir / "benchmark" / "datasets.json", [
        {"key": HPO, "spec": "hpo-dx:test", "title": "HPO-Dx test", "status": "ok", "n": 200, "available": 500,
         "sha256": "ab" * 32},
        {"key": PP, "spec": "phenopackets:", "title": "Phenopackets", "status": "ok", "n": 100, "available": 2976},
        {"key": "mirage-medqa", "spec": "mirage:medqa", "title": "MIRAGE medqa", "status": "unavailable",
         "reason": "shared data absent"},
    ])
    for (stage, method), per_ds in ACCURACY.items():
        for key, (correct, n) in per_ds.items():
            _write_json(run_dir / stage / method / key / "metrics.json",
                        metrics_for(correct, n, 1.0 if method in ("rag", "self-ask") else 0.0))
    for (stage, method), per_ds in ACCURACY.items():  # nested outcomes: question i is right when i < correct
        for key, (correct, n) in per_ds.items():
            records = [{"id": f"q{i}", "correct": i < correct} for i in range(n)]
            if (stage, key) == ("eval-grpo", HPO):  # the exemplar traces take two right ids and one wrong one
                for t, i in zip(TRACES, (0, n - 1, 1)):
                    records[i] = dict(t, id=f"q{i}", question=f"Case {i}: tall stature.", options={
                        "A": "Cystic fibrosis", "B": "Marfan syndrome", "C": "Noonan syndrome", "D": "Homocystinuria"})
            _write_jsonl(run_dir / stage / method / key / "samples.jsonl", records)
    _write_jsonl(run_dir / "sft" / "metrics.jsonl",
                 [{"step": s, "loss": 2.0 / s, "token_accuracy": 0.1 * s} for s in range(1, 6)])
    for stage, searches in (("grpo", 1.5), ("grpo-cot", 0.0)):
        _write_jsonl(run_dir / stage / "metrics.jsonl", [
            {"step": s, "reward_mean": 0.1 * s, "accuracy": 0.05 * s, "completion_length": 100 + s,
             "searches_per_rollout": searches} for s in range(1, 8)])
    _write_json(run_dir / "corpus" / "done.json", {"seconds": 4.2, "outputs": {
        "source": "hpo", "docs": 29089, "sha256": "9434848b332c31f2aaaa", "hpo_version": "2025-01-16"}})
    _write_json(run_dir / "benchmark" / "done.json", {"seconds": 9.0, "outputs": {
        "hpo_dx": {"hpo_version": "2025-01-16", "config": {"seed": 0}, "questions": {"train": 3000, "test": 500}}}})
    _write_json(run_dir / "sft" / "done.json", {"seconds": 100.0, "deps": {"index": "x"}, "outputs": {
        "final_model": str(run_dir / "sft" / "final"), "global_step": 5}})
    _write_json(run_dir / "grpo" / "done.json", {"seconds": 300.0, "deps": {"sft": "y", "index": "x"},
                                                 "outputs": {"final_model": "grpo/final", "global_step": 7}})
    _write_json(run_dir / "run.json", {"total_seconds": 512.5, "finished_at": "now", "stages": [
        {"stage": "corpus", "status": "skipped", "seconds": 0.0},
        {"stage": "grpo-cot", "status": "disabled", "reason": "disabled in the recipe", "seconds": 0.0}]})
    _write_json(run_dir / "provenance.json", {
        "name": "synthetic", "model": "smollm2-135m", "seed": 7, "recipe": "recipes/quickstart.yaml",
        "hardware": {"cpu": "Test CPU 9000", "cores": 2, "cores_usable": 2, "memory_gib": 8.0, "torch": "2.13.0",
                     "python": "3.11.7", "transformers": "5.23.0"}})
    (run_dir / "recipe.yaml").write_text("run:\n  name: synthetic\n  seed: 7\n", encoding="utf-8")
    return run_dir


@pytest.fixture
def built(tmp_path):
    run_dir = make_synthetic_run(tmp_path / "run")
    paths = rp.build_report(run_dir)
    return run_dir, paths, paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# the whole report
# ---------------------------------------------------------------------------------------------------------------------


def test_comparison_table_rows_columns_and_cells(built) -> None:
    _, _, md, _ = built
    table = md.split("## Comparison", 1)[1].split("\n\n")[1]
    lines = table.splitlines()
    assert lines[0] == "| variant | HPO-Dx test (n=200) | Phenopackets (n=100) |"
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["baseline cot", "baseline rag", "baseline self-ask", "SFT", "SFT+RAG", "GRPO", "GRPO+RAG",
                      "bm25-ranker"]
    rag = lines[3]
    assert "55.0% [48.1–61.7]" in rag and "BLEU 3.2" in rag and "ROUGE-L 0.141" in rag and "1.00 searches/q" in rag
    grpo_rag = next(line for line in lines if line.startswith("| GRPO+RAG"))
    assert grpo_rag.split("|")[2].strip().startswith("75.0%") and grpo_rag.split("|")[3].strip() == "not run"
    ranker = next(line for line in lines if line.startswith("| bm25-ranker"))
    assert "BLEU n/a" in ranker  # the ranker writes no reasoning to score
    assert "MIRAGE medqa: not run (shared data absent)" in md


def test_hypothesis_sentences_with_numbers_and_verdicts(built) -> None:
    _, _, md, _ = built
    line = lambda start: next(x for x in md.splitlines() if x.startswith(start))  # noqa: E731
    h1_hpo = line("- **H1 (HPO-Dx test, untrained)")
    assert "baseline self-ask 40.0% vs baseline cot 30.0% on the same 200 questions" in h1_hpo
    assert "+10.0 pp" in h1_hpo and "McNemar p < 0.001" in h1_hpo and "H1 is supported" in h1_hpo
    assert "+15.0 pp" in line("- **H1 (HPO-Dx test, after SFT)")
    assert "not separable at n = 100" in line("- **H1 (Phenopackets, untrained)")
    assert "H1 (Phenopackets, after SFT)" not in md  # no SFT evaluation on that dataset
    h2 = line("- **H2 (HPO-Dx test, vs SFT)")
    assert "+25.0 pp" in h2 and "+5.0 pp" in h2 and "difference in differences +20.0 pp" in h2
    assert "H2 is supported" in h2
    assert "GRPO+RAG − SFT+RAG (self-ask)" in md  # the definition is stated
    h2_pp = line("- **H2 (Phenopackets, vs SFT)")
    assert "not answered" in h2_pp and "GRPO+RAG" in h2_pp


def test_training_gains_are_paired_and_only_where_both_ran(built) -> None:
    _, _, md, page = built
    section = md.split("## Training gains", 1)[1].split("## Hypotheses", 1)[0]
    lines = [x for x in section.splitlines() if x.startswith("- ")]
    # nested synthetic outcomes: question i is right when i < correct, so every discordant pair favours the larger
    paired = paired_difference(outcomes(100, 200), outcomes(80, 200))  # the interval from medr1.stats
    assert lines[0] == f"- **SFT+RAG − baseline self-ask** (HPO-Dx test): 50.0% vs 40.0%, {paired.text()}."
    assert "+10.0 pp" in lines[0] and "(20 right only in the first, 0 only in the second, n = 200)" in lines[0]
    expected = {"SFT − baseline cot": "+5.0 pp", "GRPO+RAG − SFT+RAG": "+25.0 pp", "GRPO − SFT": "+5.0 pp",
                "SFT+RAG − bm25-ranker": "-35.0 pp", "GRPO+RAG − bm25-ranker": "-10.0 pp"}
    for pair, diff in expected.items():
        assert any(f"**{pair}** (HPO-Dx test)" in x and diff in x for x in lines), pair
    assert len(lines) == 6  # Phenopackets ran only the baselines: no trained variant to compare there
    assert "<h2>Training gains</h2>" in page and "SFT+RAG − baseline self-ask" in page


def test_gain_pairs_follow_the_model_grpo_started_from() -> None:
    assert ("GRPO+RAG", "SFT+RAG") in rp.gain_pairs("SFT") and ("GRPO", "SFT") in rp.gain_pairs("SFT")
    assert ("GRPO+RAG", "baseline self-ask") in rp.gain_pairs("baseline")
    assert ("GRPO", "baseline cot") in rp.gain_pairs("baseline")
    assert rp.gain_statement("D", {"A": [True], "B": None}, "A", "B") is None


def test_subset_columns_name_their_parent_in_provenance() -> None:
    datasets = [{"key": "pp", "spec": "phenopackets:", "title": "Patients", "status": "ok", "n": 3, "available": 90}]
    results = {("SFT", "pp"): {"accuracy": 0.5, "subsets": {"unseen-publication": {"n": 2}, "seen-publication": {
        "n": 1}}}}
    cols = rp.with_subset_columns(datasets, results)
    assert [c["key"].split(rp.SUBSET_SEP)[-1] for c in cols] == ["unseen-publication", "seen-publication", "pp"]
    assert cols[0]["spec"] == "phenopackets: (unseen-publication subset)" and cols[0]["available"] == 3
    assert ("SFT", cols[0]["key"]) in results


def test_images_are_written_and_embedded(built) -> None:
    run_dir, paths, md, page = built
    assert sorted(p.name for p in paths["figures"]) == ["grpo_curves.png", "sft_curves.png"]
    for p in paths["figures"]:
        assert p.read_bytes().startswith(b"\x89PNG") and f"report_files/{p.name}" in md
    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(blobs) == 2
    assert all(base64.b64decode(b).startswith(b"\x89PNG") and len(base64.b64decode(b)) > 5000 for b in blobs)


def test_html_is_self_contained(built) -> None:
    _, _, _, page = built
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert page.count("<style>") == 1


def test_exemplar_traces_are_colour_marked(built) -> None:
    _, _, md, page = built
    assert 'class="trace correct"' in page and 'class="trace wrong"' in page
    assert 'class="seg search"' in page and "tall stature ectopia lentis" in page
    assert 'class="seg info"' in page and "<li>Marfan syndrome</li>" in page and "<li>Homocystinuria</li>" in page
    assert 'class="final wrong"' in page and "gold <b>C. Noonan syndrome</b>" in page
    assert "From **GRPO+RAG** on HPO-Dx test." in md
    assert "🔎 search: `tall stature ectopia lentis` → Marfan syndrome; Homocystinuria" in md


def test_provenance_and_timings(built) -> None:
    _, _, md, page = built
    for text in ("2025-01-16", "29089 documents", "Test CPU 9000", "torch 2.13.0", "| seed | 7 |",
                 "recipes/quickstart.yaml", "HPO-Dx build | train 3000, test 500"):
        assert text in md, text
    assert "| corpus | skipped | 4.2 |" in md
    assert "| grpo-cot | disabled (disabled in the recipe) | n/a |" in md
    assert "| total (last invocation) | finished | 512.5 |" in md
    assert "seed: 7" in page  # the recipe is embedded


def test_empty_run_directory_reports_not_run(tmp_path) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    paths = rp.build_report(run_dir)
    md = paths["md"].read_text(encoding="utf-8")
    assert "H1" in md and "Training: not run" in md and "not run (no samples.jsonl)" in md
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_partial_run_without_benchmark_discovers_datasets(tmp_path) -> None:
    run_dir = tmp_path / "partial"
    _write_json(run_dir / "baselines" / "cot" / "medqa" / "metrics.json", metrics_for(5, 10))
    md = rp.build_report(run_dir)["md"].read_text(encoding="utf-8")
    assert "| baseline cot | 50.0% [23.7–76.3]" in md and "| SFT | not run |" in md
    assert "H1 (medqa, untrained)**: not answered" in md


def test_position_bias_section_pairs_the_shifted_run_with_the_same_model(tmp_path) -> None:
    """Letter shares per variant, and the rotation stage's run paired with the unshifted eval of its model: 8
    questions, right 6 as asked and 4 shifted; of the 8 answered both times, 5 keep the option's text, 3 the letter."""
    run_dir = tmp_path / "run"
    _write_json(run_dir / "benchmark" / "datasets.json",
                [{"key": HPO, "spec": "hpo-dx:test", "title": "HPO-Dx test", "status": "ok", "n": 8}])
    letters = "ABCD"
    plain, shifted = [], []
    for i in range(8):
        options = {k: f"disease {i}-{k}" for k in letters}
        moved = {letters[(j + 1) % 4]: options[k] for j, k in enumerate(letters)}  # medr1.evaluate.rotate_options
        pred = "A" if i < 6 else "B"  # gold A: right on 0-5
        keep_text = i < 5  # the shifted answer names the same text (5 of 8) or repeats the letter
        pred_shifted = letters[(letters.index(pred) + 1) % 4] if keep_text else pred
        plain.append({"id": f"q{i}", "options": options, "prediction": pred, "gold": "A", "correct": pred == "A"})
        shifted.append({"id": f"q{i}", "options": moved, "prediction": pred_shifted, "gold": "B",
                        "correct": pred_shifted == "B" and i < 4})
    shifted[4]["correct"] = False  # right 0-3 shifted
    for stage, records, model in (("eval-grpo", plain, "runs/x/grpo/final"), ("rotation", shifted, "runs/x/grpo/final"),
                                  ("eval-sft", plain, "runs/x/sft/final")):
        _write_jsonl(run_dir / stage / "self-ask" / HPO / "samples.jsonl", records)
        _write_json(run_dir / stage / "self-ask" / HPO / "metrics.json",
                    {**metrics_for(sum(r["correct"] for r in records), 8), "model": model,
                     "predictions": dict(Counter(r["prediction"] for r in records))})
    md = rp.build_report(run_dir)["md"].read_text(encoding="utf-8")
    section = md.split("## Position bias", 1)[1].split("\n## ", 1)[0]
    assert "- GRPO+RAG: HPO-Dx test (n=8) A 75% B 25%" in section
    line = next(x for x in section.splitlines() if x.startswith("- HPO-Dx test"))
    assert line.startswith("- HPO-Dx test (n=8), GRPO+RAG: 75.0% as asked, 50.0% with every question's options")
    assert "+25.0 pp" in line and "answer follows the option's text in 62.5% and its letter in 37.5%" in line
    # run.rotation_limit: a shifted run of the first 6 questions is paired with the unshifted answers to those 6
    _write_jsonl(run_dir / "rotation" / "self-ask" / HPO / "samples.jsonl", shifted[:6])
    md = rp.build_report(run_dir)["md"].read_text(encoding="utf-8")
    section = md.split("## Position bias", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in section.splitlines() if x.startswith("- HPO-Dx test"))
    assert line.startswith("- HPO-Dx test (n=8) (its first 6 questions), GRPO+RAG: 100.0% as asked, 66.7% with")
    assert "+33.3 pp" in line and "answer follows the option's text in 83.3% and its letter in 16.7%" in line
    # a shifted run whose model has no unshifted eval is said, not paired with another model's
    _write_json(run_dir / "rotation" / "self-ask" / HPO / "metrics.json", {**metrics_for(4, 8), "model": "other"})
    md = rp.build_report(run_dir)["md"].read_text(encoding="utf-8")
    assert "HPO-Dx test (n=8): no unshifted self-ask eval of other to pair the shifted one with" in md


def test_report_command(tmp_path) -> None:
    from typer.testing import CliRunner

    from medr1.cli import app

    run_dir = make_synthetic_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file() and "report.md" in result.output
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def _eval_dir(path: Path, correct: int, n: int, method: str, samples=()) -> Path:
    _write_json(path / "metrics.json", dict(metrics_for(correct, n), method=method, data="hpo-dx:test",
                                            model="/home/u/.cache/medr1/models/smollm2-135m", chance_accuracy=0.25,
                                            predictions={"A": 10, "D": 30, "unparseable": 60}))
    if samples:
        _write_jsonl(path / "samples.jsonl", samples)
    return path


def test_table_and_trace_commands_on_standalone_evals(tmp_path) -> None:
    from typer.testing import CliRunner

    from medr1.cli import app

    samples = [dict(t, question="Case: tall stature.", options={"A": "Cystic fibrosis", "B": "Marfan syndrome",
                                                                "C": "Noonan syndrome"}) for t in TRACES]
    cot = _eval_dir(tmp_path / "cot", 30, 100, "cot")
    sa = _eval_dir(tmp_path / "self-ask", 45, 100, "self-ask", samples)
    out = tmp_path / "table.md"
    result = CliRunner().invoke(app, ["table", str(cot), str(sa), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("| dataset | method | model | n | accuracy | chance | answers by letter | unparseable |")
    assert len(lines) == 4
    assert lines[2].startswith("| hpo-dx:test | cot | smollm2-135m | 100 | 30.0% [21.9–39.6] | 25.0% | A 10% D 30% none 60% | 5.0% |")
    assert lines[3].startswith("| hpo-dx:test | self-ask | smollm2-135m | 100 | 45.0% [35.6–54.8] |")

    traces = CliRunner().invoke(app, ["trace", str(sa), "-k", "2"])
    assert traces.exit_code == 0, traces.output
    assert traces.output.index("hpo-dx-test-00001") < traces.output.index("hpo-dx-test-00002")
    assert "🔎 search: `tall stature ectopia lentis` → Marfan syndrome; Homocystinuria" in traces.output
    assert "hpo-dx-test-00003" not in traces.output
    one = CliRunner().invoke(app, ["trace", str(sa), "--id", "hpo-dx-test-00003"])
    assert one.exit_code == 0 and "✅ correct" in one.output and "00001" not in one.output

    for args, message in ((["table", str(cot), str(tmp_path / "nope")], "no metrics.json"),
                          (["trace", str(cot)], "no samples"),
                          (["trace", str(sa), "--id", "x-9"], "no sample with id x-9")):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and message in bad.output, bad.output


# ---------------------------------------------------------------------------------------------------------------------
# pure pieces, tables of cases
# ---------------------------------------------------------------------------------------------------------------------


def m(correct: int, n: int) -> dict:
    return metrics_for(correct, n)


@pytest.mark.parametrize("metrics, expected", [
    (None, ["not run"]),
    ({}, ["not run"]),
    ({"accuracy": None}, ["not run"]),
    (m(1, 4), ["25.0% [4.6–69.9]", "BLEU 3.2", "ROUGE-L 0.141", "0.00 searches/q"]),
    ({"accuracy": 0.5, "ci_low": 0.25, "ci_high": 0.75, "bleu": None, "rouge_l": None},
     ["50.0% [25.0–75.0]", "BLEU n/a", "ROUGE-L n/a", "searches n/a"]),
])
def test_cell_parts(metrics, expected) -> None:
    assert rp.cell_parts(metrics) == expected


def outcomes(right: int, n: int, offset: int = 0) -> list[bool]:
    """n outcomes with `right` of them correct, starting at position `offset` (wrapping)."""
    return [((i - offset) % n) < right for i in range(n)]


@pytest.mark.parametrize("a, b, fragments", [
    (outcomes(120, 200), outcomes(60, 200), ["60.0% vs", "+30.0 pp", "H1 is supported"]),
    (outcomes(60, 200), outcomes(120, 200), ["-30.0 pp", "H1 is not supported"]),
    (outcomes(31, 100), outcomes(30, 100), ["+1.0 pp", "not separable at n = 100"]),
    (outcomes(50, 100), outcomes(50, 100, offset=50), ["+0.0 pp", "50 right only in the first, 50 only"]),
    (None, outcomes(1, 2), ["not answered", "with did not run"]),
])
def test_h1_statement(a, b, fragments) -> None:
    text = rp.h1_statement("D", "M", {"with": a, "without": b}, "with", "without")
    assert text.startswith("**H1 (D, M)**")
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize("acc, fragments", [
    # (GRPO+RAG, ref self-ask, GRPO cot, ref cot) as (right, n[, offset]) outcomes
    (((150, 200), (100, 200), (80, 200), (70, 200)), ["+25.0 pp", "+5.0 pp", "+20.0 pp", "H2 is supported"]),
    (((105, 200), (100, 200), (110, 200), (70, 200)), ["+2.5 pp", "+20.0 pp", "-17.5 pp", "H2 is not supported"]),
    (((55, 100), (50, 100, 40), (33, 100), (30, 100, 40)),  # shifted: many discordant pairs each way
     ["not separable at n = 100", "Neither RL gain is itself distinguishable from zero"]),
    (((55, 100), None, (33, 100), (30, 100)), ["not answered", "R self-ask did not run"]),
])
def test_h2_statement(acc, fragments) -> None:
    labels = ("GRPO+RAG", "R self-ask", "GRPO", "R cot")
    got = {lab: outcomes(*x) if x else None for lab, x in zip(labels, acc)}
    text = rp.h2_statement("D", got, ("R", "R self-ask", "R cot"))
    assert text.startswith("**H2 (D, vs R)**")
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize("flags, k, expected", [
    # (correct, searched) per record -> chosen indices: alternate right/wrong, searching ones first
    ([(True, False), (True, True), (False, False), (False, True)], 4, [1, 3, 0, 2]),
    ([(True, True), (True, True), (True, False)], 2, [0, 1]),
    ([(False, False)], 3, [0]),
    ([], 2, []),
])
def test_select_exemplars(flags, k, expected) -> None:
    samples = [{"i": i, "correct": c, "queries": ["q"] if s else []} for i, (c, s) in enumerate(flags)]
    assert [r["i"] for r in rp.select_exemplars(samples, k)] == expected


def test_trace_pieces_for_rag_put_the_up_front_retrieval_first() -> None:
    rec = {"method": "rag", "completion": "<think>x</think><answer>A</answer>", "queries": ["the question"],
           "retrieved_titles": [["Doc A", "Doc B"]]}
    assert traces.trace_pieces(rec) == [("search", "the question", ["Doc A", "Doc B"]), ("think", "x", []),
                                    ("answer", "A", [])]


def test_series_skips_records_without_the_metric() -> None:
    records = [{"step": 1, "reward": 0.5}, {"step": 2}, {"step": 3, "reward_mean": 0.7, "reward": 0.1},
               {"step": 4, "reward": float("nan")}]
    assert rp.series(records, ("reward_mean", "reward")) == ([1.0, 3.0], [0.5, 0.7])


@pytest.mark.parametrize("value, expected", [
    ("jsonl:/a/b/test.jsonl", "jsonl:test.jsonl"), ("mirage:medqa@/x/benchmark.json", "mirage:medqa"),
    ("/runs/q/sft/final", "sft/final"), ("/x/y/checkpoint-4", "y/checkpoint-4"), ("hpo-dx:test", "hpo-dx:test"),
    ("smollm2-135m", "smollm2-135m"), (None, "-"),
])
def test_short_path_for_eval_tables(value, expected) -> None:
    assert rp._short_path(value) == expected


def _paired_dir(path: Path, method: str, correct: list[bool], opts: dict | None = None, subsets=None, **cfg) -> Path:
    opts = opts or {"A": "w", "B": "x", "C": "y", "D": "z"}
    subsets = subsets or [None] * len(correct)
    _write_jsonl(path / "samples.jsonl", [{"id": f"q{i}", "correct": c, "prediction": "B" if c else "A",
                                           "options": opts, "subset": sub}
                                          for i, (c, sub) in enumerate(zip(correct, subsets))])
    conf = {"method": method, "max_turns": 3, "max_new_tokens_per_turn": 128, "max_total_tokens": 640, "topk": 3,
            "max_info_tokens": 160, "rotate": 0}
    conf.update(cfg)
    import yaml

    (path / "config.yaml").write_text(yaml.safe_dump(conf))
    return path


def test_compare_minus_gives_h2_for_any_four_evals(tmp_path) -> None:
    from typer.testing import CliRunner

    from medr1.cli import app
    from medr1.stats import difference_in_differences

    def right(k: int) -> list[bool]:
        return [i < k for i in range(40)]

    subsets = ["seen-publication", "unseen-publication"] * 20
    outcomes = {"grpo-rag": right(30), "sft-rag": right(20), "grpo": right(12), "sft": right(10)}
    dirs = [_paired_dir(tmp_path / name, "cot" if name in ("grpo", "sft") else "self-ask", c, subsets=subsets)
            for name, c in outcomes.items()]
    out = rp.compare_did(dirs)
    # per question: +1 on q20-q29 (RL helped with retrieval only), -1 on q10-q11 (without retrieval only): +8 of 40
    dd = difference_in_differences(*outcomes.values())
    assert dd.estimate == pytest.approx(0.2)
    assert f"(A − B) − (C − D) = {dd.text()}" in out
    assert "A − B = +25.0 pp" in out and "C − D = +5.0 pp" in out and "| C | " in out
    lines = out.splitlines()
    unseen = next(i for i, line in enumerate(lines) if line.startswith("unseen-publication (n = 20): A − B"))
    seen = next(i for i, line in enumerate(lines) if line.startswith("seen-publication (n = 20): A − B"))
    assert unseen < seen  # the headline subset first
    with pytest.raises(rp.DataError, match="four evals"):
        rp.compare_did(dirs[:3])
    other = _paired_dir(tmp_path / "other", "cot", right(10), max_new_tokens_per_turn=96)
    with pytest.raises(rp.DataError, match=f"{other}: max_new_tokens_per_turn: 128 vs 96"):
        rp.compare_did([*dirs[:3], other])
    fewer = _paired_dir(tmp_path / "fewer", "cot", right(10)[:39])
    with pytest.raises(rp.DataError, match="same questions"):
        rp.compare_did([*dirs[:3], fewer])
    result = CliRunner().invoke(app, ["compare", *map(str, dirs[:2]), "--minus", *map(str, dirs[2:])])
    assert result.exit_code == 0 and "(A − B) − (C − D) = +20.0 pp" in result.output, result.output


def test_compare_is_paired_and_refuses_other_budgets_or_questions(tmp_path) -> None:
    from typer.testing import CliRunner

    from medr1.cli import app

    a = _paired_dir(tmp_path / "a", "self-ask", [True] * 30 + [False] * 10)
    b = _paired_dir(tmp_path / "b", "cot", [True] * 18 + [False] * 22)
    out = rp.compare_evals(a, b)
    assert "A − B = +30.0 pp" in out and "12 right only in the first, 0 only in the second, n = 40" in out
    assert "McNemar p < 0.001" in out
    ranker = _paired_dir(tmp_path / "r", "bm25-ranker", [True] * 40, max_turns=1)  # no budget to compare
    assert "A − B = -25.0 pp" in rp.compare_evals(a, ranker)
    other = _paired_dir(tmp_path / "o", "cot", [True] * 40, max_new_tokens_per_turn=96)
    with pytest.raises(rp.DataError, match="different budgets \\(max_new_tokens_per_turn: 128 vs 96\\)"):
        rp.compare_evals(a, other)
    assert "Warning: different budgets" in rp.compare_evals(a, other, allow_budget_mismatch=True)
    fewer = _paired_dir(tmp_path / "f", "cot", [True] * 39)
    with pytest.raises(rp.DataError, match="same questions"):
        rp.compare_evals(a, fewer)
    shifted = {"A": "z", "B": "w", "C": "x", "D": "y"}  # what rotate=1 makes of a's options
    rotated = _paired_dir(tmp_path / "rot", "self-ask", [True] * 40, opts=shifted, rotate=1)  # answers B = "w"
    assert "follows the content in 25.0% and the letter in 75.0%" in rp.compare_evals(a, rotated)
    result = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 0 and "+30.0 pp" in result.output
    result = CliRunner().invoke(app, ["compare", str(a), str(other)])
    assert result.exit_code != 0 and "different budgets" in result.output
