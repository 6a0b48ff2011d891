"""Source specs: one string names any question set, and `load_questions(spec)` returns it normalized.

    from medr1.data.sources import load_questions
    result = load_questions("mirage:medqa", skip_bad=False, limit=None)
    result.questions[0].answer, result.skips.summary(), result.counts()

or from the shell: `medr1 data show mirage:medqa --limit 2`. Specs (`describe_sources()` lists them):

    mirage:medqa[@PATH]     MIRAGE benchmark.json; medqa|medmcqa|pubmedqa|bioasq|mmlu|all
    medqa:PATH.jsonl        MedQA-USMLE JSON lines (4- or 5-option); `medqa:dev` / `medqa:test` = shared 4-option files
    medmcqa:PATH.json       MedMCQA JSON lines (cop 1-4, exp = explanation)
    pubmedqa:PATH.json      PubMedQA PQA-L ori_pqal.json (+ test_ground_truth.json beside it for the split)
    mmlu:DIR                MMLU headerless CSVs (question,A,B,C,D,answer), one file per subject
    phenopackets:DIR        GA4GH phenopackets as diagnosis questions (medr1.data.phenopackets)
    hpo-dx:test|dev|train   the default HPO-Dx build (made on first use), or hpo-dx:PATH.jsonl
    pmc-vqa:DIR|FILE.csv    PMC-VQA image questions (four choices; images under DIR or images/)
    ehrxqa:DIR|FILE.json    EHRXQA image questions (keyword answers; yes/no ones as two options)
    jsonl:PATH              medr1's normalized format (Question.to_dict per line)
    hf:NAME[:SPLIT]         a Hugging Face dataset (needs the hub or a local cache)

With no path, a spec reads the shared data folder (`medr1.paths.shared_path`). Per-record problems are DataErrors
naming file and line (or key); with `skip_bad=True` they are counted in `LoadResult.skips` instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from medr1.data import loaders
from medr1.data.schema import Question
from medr1.errors import DataError
from medr1.io import SkipLog
from medr1.paths import shared_path

HF_DEFAULT_SPLIT = None  # None loads every split of the dataset
HPO_DX_SPLITS = ("train", "dev", "test")

# (name, split) -> a datasets.Dataset or DatasetDict; tests pass a local one instead of the hub.
DatasetLoader = Callable[[str, "str | None"], Any]


@dataclass
class LoadResult:
    """The questions of one spec (in source order) and the records skipped under `skip_bad`, by reason."""

    spec: str
    questions: list[Question]
    skips: SkipLog
    path: Path | None = None

    def counts(self) -> dict[str, Any]:
        return question_counts(self.questions)


def question_counts(questions: Iterable[Question]) -> dict[str, Any]:
    """total, per split, per source, answer-letter distribution, options per question, with explanation."""
    questions = list(questions)
    return {
        "total": len(questions),
        "splits": dict(Counter(q.split or "(none)" for q in questions).most_common()),
        "sources": dict(Counter(q.source or "(none)" for q in questions).most_common()),
        "answers": dict(sorted(Counter(q.answer for q in questions).items())),
        "n_options": dict(sorted(Counter(len(q.options) for q in questions).items())),
        "with_explanation": sum(1 for q in questions if q.explanation),
    }


@dataclass
class _Context:
    spec: str
    skips: SkipLog
    dataset_loader: DatasetLoader | None = None
    path: Path | None = None


@dataclass(frozen=True)
class SourceKind:
    prefix: str
    example: str
    summary: str
    load: Callable[[str, _Context], Iterable[Question]] = field(repr=False)


# ---------------------------------------------------------------------------------------------------------------------
# path resolution
# ---------------------------------------------------------------------------------------------------------------------


def _resolve(ctx: _Context, arg: str, default: tuple[str, ...], example: str, want_dir: bool = False) -> Path:
    """The explicit path, or the shared-data default; a missing one is a DataError saying how to pass one."""
    path = Path(arg).expanduser() if arg else shared_path(*default)
    ok = path.is_dir() if want_dir else path.is_file()
    if not ok:
        kind = "folder" if want_dir else "file"
        if arg:
            raise DataError(f"{ctx.spec}: {kind} not found: {path}; pass an existing {kind}, e.g. {example}")
        raise DataError(
            f"{ctx.spec}: no path given and the default {path} does not exist; pass a {kind}, e.g. {example} "
            f"(or set MEDR1_SHARED_DATA to the shared data folder)"
        )
    ctx.path = path
    return path


# ---------------------------------------------------------------------------------------------------------------------
# one small function per spec prefix
# ---------------------------------------------------------------------------------------------------------------------


def _load_mirage(arg: str, ctx: _Context) -> Iterable[Question]:
    dataset, _, path_arg = arg.partition("@")
    valid = (*loaders.MIRAGE_DATASETS, "all")
    if dataset not in valid:
        raise DataError(
            f"{ctx.spec}: unknown MIRAGE dataset {dataset!r}; use one of {'|'.join(valid)}, "
            f"e.g. mirage:medqa or mirage:medqa@PATH/benchmark.json"
        )
    path = _resolve(ctx, path_arg, ("mirage", "benchmark.json"), "mirage:medqa@PATH/benchmark.json")
    return loaders.load_mirage(path, dataset, ctx.skips)


_MEDQA_4OPT = ("medqa", "questions", "US", "4_options")


def _load_medqa(arg: str, ctx: _Context) -> Iterable[Question]:
    # `medqa:dev` / `medqa:test` (and bare `medqa:`) name the shared 4-option files.
    split = arg or "test"
    if split in ("dev", "test"):
        default, arg = (*_MEDQA_4OPT, f"phrases_no_exclude_{split}.jsonl"), ""
    else:
        default = ()
    path = _resolve(ctx, arg, default, "medqa:PATH/phrases_no_exclude_test.jsonl")
    return loaders.load_medqa(path, ctx.skips)


def _load_medmcqa(arg: str, ctx: _Context) -> Iterable[Question]:
    path = _resolve(ctx, arg, ("medmcqa", "dev.json"), "medmcqa:PATH/dev.json")
    return loaders.load_medmcqa(path, ctx.skips)


def _load_pubmedqa(arg: str, ctx: _Context) -> Iterable[Question]:
    path = _resolve(ctx, arg, ("pubmedqa", "ori_pqal.json"), "pubmedqa:PATH/ori_pqal.json")
    return loaders.load_pubmedqa(path, ctx.skips)


def _load_mmlu(arg: str, ctx: _Context) -> Iterable[Question]:
    example = "mmlu:PATH/mmlu-med (a folder of <subject>_test.csv files)"
    path = Path(arg).expanduser() if arg else None
    if path is not None and path.is_file():
        ctx.path = path
        return loaders.load_mmlu(path, ctx.skips)
    return loaders.load_mmlu(_resolve(ctx, arg, ("mmlu-med",), example, want_dir=True), ctx.skips)


def _load_phenopackets(arg: str, ctx: _Context) -> Iterable[Question]:
    path = _resolve(ctx, arg, ("phenopackets", "cohorts"), "phenopackets:PATH/cohorts", want_dir=True)
    from medr1.data.phenopackets import iter_phenopacket_questions

    return iter_phenopacket_questions(path, ctx.skips)  # lazy: a limit stops the reading and the skip counts


def _load_hpo_dx(arg: str, ctx: _Context) -> Iterable[Question]:
    example = "hpo-dx:test or hpo-dx:PATH/test.jsonl"
    if arg in ("", *HPO_DX_SPLITS):
        from medr1.data.hpo_dx import ensure_default_build

        arg = str(Path(ensure_default_build()) / f"{arg or 'test'}.jsonl")
    elif Path(arg).expanduser().is_dir():
        raise DataError(f"{ctx.spec}: {arg} is a folder; name one split file, e.g. hpo-dx:{arg}/test.jsonl")
    return loaders.load_normalized_jsonl(_resolve(ctx, arg, (), example), ctx.skips)


def _load_pmc_vqa(arg: str, ctx: _Context) -> Iterable[Question]:
    from medr1.data import images

    if not arg:
        raise DataError(f"{ctx.spec}: name PMC-VQA's folder or one of its CSV files, e.g. pmc-vqa:data/pmc-vqa")
    return images.load_pmc_vqa(_resolve_any(ctx, arg, "pmc-vqa:PATH/pmc-vqa"), ctx.skips)


def _load_ehrxqa(arg: str, ctx: _Context) -> Iterable[Question]:
    from medr1.data import images

    if not arg:
        raise DataError(f"{ctx.spec}: name EHRXQA's folder or one of its JSON files, e.g. ehrxqa:data/ehrxqa")
    return images.load_ehrxqa(_resolve_any(ctx, arg, "ehrxqa:PATH/ehrxqa"), ctx.skips)


def _resolve_any(ctx: _Context, arg: str, example: str) -> Path:
    """A folder or a file."""
    return _resolve(ctx, arg, (), example, want_dir=Path(arg).expanduser().is_dir())


def _load_jsonl(arg: str, ctx: _Context) -> Iterable[Question]:
    if not arg:
        raise DataError(f"{ctx.spec}: name a file, e.g. jsonl:questions.jsonl")
    return loaders.load_normalized_jsonl(_resolve(ctx, arg, (), "jsonl:PATH/questions.jsonl"), ctx.skips)


def _load_hf(arg: str, ctx: _Context) -> Iterable[Question]:
    name, _, split = arg.partition(":")
    if not name:
        raise DataError(f"{ctx.spec}: name a dataset, e.g. hf:openlifescienceai/medmcqa:validation")
    loader = ctx.dataset_loader or _hub_loader
    try:
        data = loader(name, split or HF_DEFAULT_SPLIT)
    except DataError:
        raise
    except Exception as exc:  # the hub raises many types (offline, missing config, missing split)
        raise DataError(
            f"{ctx.spec}: could not load {name!r} (split {split or 'all'}) with datasets.load_dataset: "
            f"{type(exc).__name__}: {exc}. The hf: source needs the Hugging Face hub or a local cache of the dataset."
        ) from None
    return _iter_hf(data, name, split, ctx)


def _hub_loader(name: str, split: str | None) -> Any:
    from datasets import load_dataset

    return load_dataset(name, split=split)


def _iter_hf(data: Any, name: str, split: str, ctx: _Context) -> Iterable[Question]:
    # A DatasetDict (no split asked for) maps split names to Datasets; a Dataset is one split.
    parts = list(data.items()) if hasattr(data, "items") else [(split or str(getattr(data, "split", "") or ""), data)]
    for split_name, dataset in parts:
        layout = loaders.hf_layout(dataset.column_names, f"hf:{name}[{split_name}]")
        yield from loaders.load_hf_rows(dataset, name, str(split_name), layout, ctx.skips)


SOURCES: dict[str, SourceKind] = {
    s.prefix: s
    for s in (
        SourceKind("mirage", "mirage:medqa", "MIRAGE (medqa|medmcqa|pubmedqa|bioasq|mmlu|all[@PATH])", _load_mirage),
        SourceKind(
            "medqa", "medqa:PATH/phrases_no_exclude_test.jsonl", "MedQA-USMLE JSON lines (or medqa:dev|test)",
            _load_medqa,
        ),
        SourceKind("medmcqa", "medmcqa:PATH/dev.json", "MedMCQA JSON lines", _load_medmcqa),
        SourceKind("pubmedqa", "pubmedqa:PATH/ori_pqal.json", "PubMedQA PQA-L", _load_pubmedqa),
        SourceKind("mmlu", "mmlu:PATH/mmlu-med", "MMLU CSV folder (or one CSV)", _load_mmlu),
        SourceKind(
            "phenopackets", "phenopackets:PATH/cohorts", "GA4GH phenopackets as diagnosis questions", _load_phenopackets
        ),
        SourceKind("hpo-dx", "hpo-dx:test", "HPO-Dx benchmark (default build) or hpo-dx:PATH.jsonl", _load_hpo_dx),
        SourceKind("pmc-vqa", "pmc-vqa:PATH/pmc-vqa", "PMC-VQA CSVs with their images (folder or one CSV)",
                   _load_pmc_vqa),
        SourceKind("ehrxqa", "ehrxqa:PATH/ehrxqa", "EHRXQA / MIMIC-CXR-VQA JSON with images (folder or one JSON)",
                   _load_ehrxqa),
        SourceKind("jsonl", "jsonl:PATH/questions.jsonl", "medr1 normalized questions", _load_jsonl),
        SourceKind("hf", "hf:openlifescienceai/medmcqa:validation", "Hugging Face dataset NAME[:SPLIT]", _load_hf),
    )
}


def describe_sources() -> str:
    width = max(len(s.example) for s in SOURCES.values())
    return "\n".join(f"  {s.example:<{width}}  {s.summary}" for s in SOURCES.values())


def parse_spec(spec: str) -> tuple[SourceKind, str]:
    """'medqa:PATH' -> (the medqa SourceKind, 'PATH'); a bare known prefix ('medmcqa') means its default."""
    prefix, _, arg = spec.strip().partition(":")
    kind = SOURCES.get(prefix.strip().lower())
    if kind is None:
        raise DataError(f"unknown source spec {spec!r}; valid sources (prefix:argument):\n{describe_sources()}")
    return kind, arg.strip()


def load_questions(
    spec: str,
    skip_bad: bool = False,
    limit: int | None = None,
    *,
    dataset_loader: DatasetLoader | None = None,
) -> LoadResult:
    """Load and validate the questions `spec` names, in source order, stopping after `limit` good ones.

    Bad records raise a DataError naming file and line (or key) unless `skip_bad`, which counts them in
    `result.skips`. Duplicate ids are bad records too (results are keyed by id downstream).
    `dataset_loader(name, split)` replaces `datasets.load_dataset` for `hf:` specs (tests, local datasets).
    """
    if limit is not None and limit < 0:
        raise DataError(f"{spec}: limit must be >= 0, got {limit}")
    kind, arg = parse_spec(spec)
    ctx = _Context(spec=spec, skips=SkipLog(skip_bad), dataset_loader=dataset_loader)
    questions = list(islice(_unique(kind.load(arg, ctx), ctx), limit))
    return LoadResult(spec=spec, questions=questions, skips=ctx.skips, path=ctx.path)


def _unique(questions: Iterable[Question], ctx: _Context) -> Iterable[Question]:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            ctx.skips.handle(DataError(f"{ctx.spec}: duplicate question id {q.id!r}"), "duplicate id")
            continue
        seen.add(q.id)
        yield q


# ---------------------------------------------------------------------------------------------------------------------
# human-readable views (used by `medr1 data show`)
# ---------------------------------------------------------------------------------------------------------------------


def format_counts(result: LoadResult) -> str:
    counts = result.counts()
    total = counts["total"] or 1

    def dist(d: dict) -> str:
        return ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in d.items()) or "-"

    where = f"  ({result.path})" if result.path else ""
    lines = [
        f"source: {result.spec}{where}",
        f"questions: {counts['total']}",
        "splits: " + ", ".join(f"{k} {v}" for k, v in counts["splits"].items()),
        "sources: " + ", ".join(f"{k} {v}" for k, v in counts["sources"].items()),
        "answers: " + dist(counts["answers"]),
        "options per question: " + ", ".join(f"{k}: {v}" for k, v in counts["n_options"].items()),
        f"with explanation: {counts['with_explanation']}",
    ]
    return "\n".join(lines)


def format_question(q: Question, number: int, width: int = 100, max_chars: int = 400) -> str:
    """A question as a reader wants it: header, wrapped text (whole: the ask is at its end), options, answer, and a
    shortened explanation and meta."""
    import json
    import textwrap

    def short(text: str) -> str:
        return text if len(text) <= max_chars else text[: max_chars - 3] + "..."

    lines = [f"[{number}] {q.id}  (source {q.source or '-'}, split {q.split or '-'})"]
    lines += textwrap.wrap(q.question, width) or [""]
    lines += [f"  {k}. {v}" for k, v in sorted(q.options.items())]
    lines.append(f"answer: {q.answer}")
    if q.explanation:
        lines += textwrap.wrap("explanation: " + short(q.explanation), width)
    if q.gold_doc_ids:
        lines.append(f"gold docs: {', '.join(q.gold_doc_ids)}")
    if q.meta:
        lines.append("meta: " + short(json.dumps(q.meta, ensure_ascii=False)))
    return "\n".join(lines)
