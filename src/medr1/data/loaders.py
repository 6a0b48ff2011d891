"""One small function per upstream file format, each turning raw records into validated `Question`s.

Used through `medr1.data.sources.load_questions(spec)` (which resolves paths and defaults); run one directly as e.g.

    from medr1.io import SkipLog
    from medr1.data.loaders import load_medmcqa
    qs = list(load_medmcqa(Path("../shared/data/medmcqa/dev.json"), SkipLog(skip_bad=False)))

Every loader is a generator: a malformed record raises `RecordError` ("file:line: what is wrong", or "file: key K: ...")
through `SkipLog.handle`, which re-raises it unless `--skip-bad` is on, in which case it is counted by `reason`.
Nothing is dropped without being counted. A file that cannot be parsed at all is a plain `DataError` (not skippable).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medr1.data.schema import LETTERS, Question, marks_open
from medr1.errors import DataError
from medr1.io import SkipLog, jsonl_records

# Reasons under which skipped records are counted (shown by `medr1 data show --skip-bad`).
R_JSON = "invalid JSON"
R_FIELD = "missing field"
R_OPTIONS = "missing options"
R_LETTER = "unknown answer letter"
R_ANSWER = "answer not among options"
R_MISMATCH = "answer text mismatch"
R_QUESTION = "empty question"
R_INVALID = "invalid record"

MIRAGE_DATASETS = ("medqa", "medmcqa", "pubmedqa", "bioasq", "mmlu")
# The upstream split each MIRAGE dataset was drawn from (MIRAGE paper, Table 1).
MIRAGE_SPLITS = {"medqa": "test", "medmcqa": "dev", "pubmedqa": "test", "bioasq": "test", "mmlu": "test"}
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
_DECISION_TO_LETTER = {v: k for k, v in PUBMEDQA_OPTIONS.items()}
_MEDMCQA_META = {"subject": "subject_name", "topic": "topic_name", "choice_type": "choice_type"}
_SPLIT_WORDS = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev", "test": "test"}


class RecordError(DataError):
    """One malformed record; `reason` is the bucket it is counted under when skipping."""

    def __init__(self, where: str, message: str, reason: str) -> None:
        super().__init__(f"{where}: {message}")
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------------------------


def make_question(where: str, **fields: Any) -> Question:
    """Check the fields every format shares (so the skip reason is precise), then build and validate a Question."""
    text = fields.get("question")
    if not isinstance(text, str) or not text.strip():
        raise RecordError(where, "empty question text", R_QUESTION)
    if marks_open(fields.get("meta")):
        return _validated(where, fields)
    options = fields.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise RecordError(where, f"needs at least 2 options, got {options!r}", R_OPTIONS)
    for letter, value in options.items():
        if letter not in LETTERS:
            raise RecordError(where, f"unknown option letter {letter!r} (expected one of {LETTERS})", R_LETTER)
        if not isinstance(value, str) or not value.strip():
            raise RecordError(where, f"option {letter} is missing or empty", R_OPTIONS)
    answer = fields.get("answer")
    if not isinstance(answer, str) or len(answer) != 1 or answer not in LETTERS:
        raise RecordError(where, f"unknown answer letter {answer!r} (expected one of {sorted(options)})", R_LETTER)
    if answer not in options:
        raise RecordError(where, f"answer {answer!r} is not among options {sorted(options)}", R_ANSWER)
    return _validated(where, fields)


def _validated(where: str, fields: dict[str, Any]) -> Question:
    try:
        return Question(**fields).validate(where)
    except DataError as err:  # a check the schema has and we do not: keep its message
        raise RecordError(where, str(err).removeprefix(f"{where}: "), R_INVALID) from None


def option_text(value: Any) -> str | None:
    """Upstream options are sometimes numbers (MMLU, CSV-derived JSON); None or blank means missing."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


def require(obj: dict, key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise RecordError(where, f"missing field {key!r}", R_FIELD)
    return obj[key]


def split_from_name(path: Path) -> str:
    """'phrases_no_exclude_test.jsonl' -> 'test', 'dev.json' -> 'dev', 'anatomy_val.csv' -> 'dev'; else ''."""
    for word in reversed(re.split(r"[_\-.]", path.stem.lower())):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return ""


def read_json_file(path: Path) -> Any:
    """A whole-file JSON document; unreadable JSON is a DataError with line and column (the file is unusable)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None


def iter_json_lines(path: Path) -> Iterator[tuple[str, int, dict | RecordError]]:
    """(where, line number, object or the RecordError for that line). Unlike io.iter_jsonl it goes on past a bad
    line, so that `--skip-bad` can count it and continue."""
    for lineno, obj in jsonl_records(path):
        where = f"{path}:{lineno}"
        yield where, lineno, RecordError(where, obj, R_JSON) if isinstance(obj, str) else obj


def guarded(
    items: Iterable[tuple[str, Any]], build: Callable[[str, Any], Question], skips: SkipLog
) -> Iterator[Question]:
    """Build each (where, raw) record; a RecordError (raised, or yielded by the reader) goes through `skips`."""
    for where, raw in items:
        if isinstance(raw, RecordError):
            skips.handle(raw, raw.reason)
            continue
        try:
            question = build(where, raw)
        except RecordError as err:
            skips.handle(err, err.reason)
            continue
        yield question


def _explanation(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# ---------------------------------------------------------------------------------------------------------------------
# one function per format
# ---------------------------------------------------------------------------------------------------------------------


def load_mirage(path: Path, dataset: str, skips: SkipLog) -> Iterator[Question]:
    """MIRAGE `benchmark.json`: {dataset: {qid: {question, options, answer, PMID?}}}; dataset 'all' = every one."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of datasets, got {type(data).__name__}")
    names = [d for d in data] if dataset == "all" else [dataset]
    for name in names:
        if name not in data:
            raise DataError(f"{path}: no dataset {name!r}; it has {sorted(data)}")
        if not isinstance(data[name], dict):
            raise DataError(f"{path}: dataset {name!r} is not an object of questions")
        items = ((f"{path}: key {name}/{qid}", (qid, rec)) for qid, rec in data[name].items())
        yield from guarded(items, lambda where, item, name=name: _mirage_question(where, name, *item), skips)


def _mirage_question(where: str, dataset: str, qid: str, rec: Any) -> Question:
    if not isinstance(rec, dict):
        raise RecordError(where, f"expected an object, got {type(rec).__name__}", R_JSON)
    options = require(rec, "options", where)
    if not isinstance(options, dict):
        raise RecordError(where, f"options must be a letter -> text object, got {type(options).__name__}", R_OPTIONS)
    meta: dict[str, Any] = {"dataset": dataset, "qid": qid}
    if "PMID" in rec:
        meta["pmid"] = rec["PMID"]
    return make_question(
        where,
        id=f"mirage-{dataset}-{qid}",
        question=require(rec, "question", where),
        options={k: option_text(v) for k, v in options.items()},
        answer=require(rec, "answer", where),
        source=f"mirage-{dataset}",
        split=MIRAGE_SPLITS.get(dataset, ""),
        meta=meta,
    )


def load_medqa(path: Path, skips: SkipLog) -> Iterator[Question]:
    """MedQA-USMLE JSON lines: {question, answer (text), options {A..}, answer_idx (letter), meta_info}.
    Ids are 'medqa-<split>-<line index>' for 4-option files and 'medqa5-...' for the 5-option ones."""
    split = split_from_name(path)
    items = ((w, obj if isinstance(obj, RecordError) else (n, obj)) for w, n, obj in iter_json_lines(path))
    yield from guarded(items, lambda where, item: medqa_question(where, item[1], split, path.stem, item[0] - 1), skips)


def medqa_question(where: str, obj: dict, split: str, stem: str, index: int, source: str = "medqa") -> Question:
    options = require(obj, "options", where)
    if not isinstance(options, dict):
        raise RecordError(where, f"options must be a letter -> text object, got {type(options).__name__}", R_OPTIONS)
    options = {k: option_text(v) for k, v in options.items()}
    answer_text = obj.get("answer")
    letter = obj.get("answer_idx")
    if letter is None:
        # Some MedQA derivatives drop answer_idx; recover the letter from the answer text.
        matches = [k for k, v in options.items() if answer_text is not None and v == answer_text]
        if not matches:
            raise RecordError(where, f"no answer_idx and answer {answer_text!r} is not among the options", R_ANSWER)
        letter = matches[0]
    elif isinstance(answer_text, str) and letter in options and options[letter] != answer_text:
        raise RecordError(
            where, f"answer_idx {letter!r} is {options[letter]!r} but answer says {answer_text!r}", R_MISMATCH
        )
    prefix = "medqa" if len(options) == 4 else f"medqa{len(options)}"
    meta = {"step": obj["meta_info"]} if obj.get("meta_info") else {}
    return make_question(
        where,
        id=f"{prefix}-{split or stem}-{index}",
        question=require(obj, "question", where),
        options=options,
        answer=letter,
        source=source,
        split=split,
        meta=meta,
    )


def load_medmcqa(path: Path, skips: SkipLog) -> Iterator[Question]:
    """MedMCQA JSON lines: {id, question, opa..opd, cop (1-4), exp, subject_name, topic_name, choice_type}."""
    split = split_from_name(path)

    def build(where: str, item: tuple[int, dict]) -> Question:
        lineno, obj = item
        return medmcqa_question(where, obj, split, lineno - 1, cop_base=1, source="medmcqa")

    items = ((w, obj if isinstance(obj, RecordError) else (n, obj)) for w, n, obj in iter_json_lines(path))
    yield from guarded(items, build, skips)


def medmcqa_question(where: str, obj: dict, split: str, index: int, cop_base: int, source: str) -> Question:
    """One MedMCQA-layout record; `cop_base` is 1 for the upstream files and 0 for the Hugging Face copy."""
    options = {}
    for letter, key in zip("ABCD", ("opa", "opb", "opc", "opd")):
        options[letter] = option_text(require(obj, key, where))
    cop = require(obj, "cop", where)
    try:
        position = int(cop) - cop_base
    except (TypeError, ValueError):
        position = -1
    if isinstance(cop, bool) or not 0 <= position < 4:
        raise RecordError(where, f"cop must be {cop_base}-{cop_base + 3}, got {cop!r}", R_LETTER)
    qid = obj.get("id")
    meta = {name: obj[key] for name, key in _MEDMCQA_META.items() if obj.get(key) is not None}
    return make_question(
        where,
        id=f"medmcqa-{qid}" if qid else f"medmcqa-{split or 'all'}-{index}",
        question=require(obj, "question", where),
        options=options,
        answer="ABCD"[position],
        explanation=_explanation(obj.get("exp")),
        source=source,
        split=split,
        meta=meta,
    )


def load_pubmedqa(path: Path, skips: SkipLog) -> Iterator[Question]:
    """PubMedQA PQA-L `ori_pqal.json`: {pmid: {QUESTION, CONTEXTS, LABELS, MESHES, YEAR, LONG_ANSWER, final_decision}}.
    With `test_ground_truth.json` beside it, its PMIDs get split 'test' and the rest 'train'."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of pmid -> record, got {type(data).__name__}")
    test_ids = _pubmedqa_test_ids(path.parent / "test_ground_truth.json")
    items = ((f"{path}: key {pmid}", (pmid, rec)) for pmid, rec in data.items())
    yield from guarded(items, lambda where, item: _pubmedqa_question(where, *item, test_ids), skips)


def _pubmedqa_test_ids(gt_path: Path) -> set[str] | None:
    if not gt_path.is_file():
        return None
    truth = read_json_file(gt_path)
    if not isinstance(truth, dict):
        raise DataError(f"{gt_path}: expected a JSON object of pmid -> label, got {type(truth).__name__}")
    return {str(k) for k in truth}


def _pubmedqa_question(where: str, pmid: str, rec: Any, test_ids: set[str] | None) -> Question:
    if not isinstance(rec, dict):
        raise RecordError(where, f"expected an object, got {type(rec).__name__}", R_JSON)
    decision = require(rec, "final_decision", where)
    if decision not in _DECISION_TO_LETTER:
        raise RecordError(where, f"final_decision must be yes/no/maybe, got {decision!r}", R_LETTER)
    meta = {"pmid": str(pmid)}
    for key in ("CONTEXTS", "LABELS", "MESHES", "YEAR"):
        if key in rec:
            meta[key.lower()] = rec[key]
    split = "" if test_ids is None else ("test" if str(pmid) in test_ids else "train")
    return make_question(
        where,
        id=f"pubmedqa-{pmid}",
        question=require(rec, "QUESTION", where),
        options=dict(PUBMEDQA_OPTIONS),
        answer=_DECISION_TO_LETTER[decision],
        explanation=_explanation(rec.get("LONG_ANSWER")),
        source="pubmedqa",
        split=split,
        meta=meta,
    )


def load_mmlu(path: Path, skips: SkipLog) -> Iterator[Question]:
    """MMLU headerless CSVs `<subject>_<split>.csv` with rows question,A,B,C,D,answer; `path` is a folder or one CSV."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .csv files in this folder (expected e.g. anatomy_test.csv)")
    for csv_path in files:
        yield from guarded(_csv_rows(csv_path), _mmlu_builder(csv_path), skips)


def _csv_rows(path: Path) -> Iterator[tuple[str, tuple[int, list[str]]]]:
    """(file:line where the row starts, (row index, row)); quoted fields may span lines."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            start = 1
            for index, row in enumerate(reader):
                yield f"{path}:{start}", (index, row)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}:{start}: unreadable CSV ({exc})") from None


def _mmlu_builder(path: Path) -> Callable[[str, tuple[int, list[str]]], Question]:
    words = path.stem.split("_")
    split = _SPLIT_WORDS.get(words[-1], "") if len(words) > 1 else ""
    subject = "_".join(words[:-1]) if split else path.stem

    def build(where: str, item: tuple[int, list[str]]) -> Question:
        index, row = item
        if len(row) != 6:
            raise RecordError(where, f"expected 6 columns (question,A,B,C,D,answer), got {len(row)}", R_OPTIONS)
        return make_question(
            where,
            id=f"mmlu-{subject}-{index:03d}",
            question=row[0],
            options=dict(zip("ABCD", row[1:5])),
            answer=row[5].strip(),
            source="mmlu",
            split=split,
            meta={"subject": subject},
        )

    return build


_QUESTION_FIELDS = set(Question.__dataclass_fields__)


def load_normalized_jsonl(path: Path, skips: SkipLog) -> Iterator[Question]:
    """medr1's own format: `Question.to_dict()` one per line (what HPO-Dx builds and `data show --json` prints)."""
    items = ((w, obj) for w, _, obj in iter_json_lines(path))
    yield from guarded(items, normalized_question, skips)


def normalized_question(where: str, obj: dict) -> Question:
    extra = set(obj) - _QUESTION_FIELDS
    if extra:
        raise RecordError(where, f"unknown field(s) {sorted(extra)}", R_INVALID)
    for key in ("id", "question", "options", "answer"):
        require(obj, key, where)
    if not isinstance(obj["options"], dict):
        raise RecordError(where, f"options must be an object of letter -> text, got {obj['options']!r}", R_OPTIONS)
    if not isinstance(obj.get("meta", {}), dict) or not isinstance(obj.get("gold_doc_ids", []), list):
        raise RecordError(where, "meta must be an object and gold_doc_ids a list", R_INVALID)
    make_question(where, **obj)  # precise reasons for the shared checks
    try:
        return Question.from_dict(obj, where)
    except DataError as err:
        raise RecordError(where, str(err).removeprefix(f"{where}: "), R_INVALID) from None


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (rows already loaded; `sources` does the loading)
# ---------------------------------------------------------------------------------------------------------------------

HF_LAYOUTS = {
    "medmcqa": "question, opa..opd, cop (0-3, as on the hub), exp",
    "medqa": "question, options (dict or list of {key, value}), answer_idx (letter), answer",
    "pubmedqa": "question, final_decision (yes/no/maybe), long_answer, context",
    "normalized": "question, options (dict or list), answer (letter or index), explanation?, id?",
    "pmc-vqa": "Figure_path, Question, Choice A..D, Answer_label or Answer (image paths kept as given)",
    "ehrxqa": "question, answer (keyword list), image_path or image_id (kept as given)",
}


def hf_layout(columns: Iterable[str], where: str) -> str:
    """Which known column layout a Hugging Face dataset has; a DataError lists the supported ones otherwise."""
    cols = set(columns)
    if {"question", "opa", "opb", "opc", "opd", "cop"} <= cols:
        return "medmcqa"
    if {"question", "options", "answer_idx"} <= cols:
        return "medqa"
    if {"question", "final_decision"} <= cols:
        return "pubmedqa"
    if {"question", "options", "answer"} <= cols:
        return "normalized"
    if {"Figure_path", "Question"} <= cols:
        return "pmc-vqa"
    if {"question", "answer"} <= cols and cols & {"image_path", "image_id", "image"}:
        return "ehrxqa"
    known = "; ".join(f"{k}: {v}" for k, v in HF_LAYOUTS.items())
    raise DataError(f"{where}: unrecognized columns {sorted(cols)}; supported layouts are {known}")


def load_hf_rows(rows: Iterable[dict], name: str, split: str, layout: str, skips: SkipLog) -> Iterator[Question]:
    """Map one split of a Hugging Face dataset (rows as dicts) in `layout` to Questions."""
    from medr1.data import images

    split = _SPLIT_WORDS.get(split, split)
    source = f"hf:{name}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    builders: dict[str, Callable[[str, dict, int], Question]] = {
        "medmcqa": lambda where, row, i: medmcqa_question(where, row, split, i, cop_base=0, source=source),
        "medqa": lambda where, row, i: medqa_question(
            where, {**row, "options": hf_options(row.get("options"), where)}, split, split, i, source=source
        ),
        "pubmedqa": lambda where, row, i: _hf_pubmedqa(where, row, split, source),
        "normalized": lambda where, row, i: _hf_normalized(where, row, split, source, f"hf-{slug}-{split}-{i}"),
        "pmc-vqa": lambda where, row, i: images.pmc_vqa_question(where, (i, row), split, f"hf-{slug}-{split}", None),
        "ehrxqa": lambda where, row, i: images.ehrxqa_question(where, (i, row), split, f"hf-{slug}-{split}", None),
    }
    build = builders[layout]
    items = ((f"hf:{name}[{split}] row {i}", (i, row)) for i, row in enumerate(rows))
    yield from guarded(items, lambda where, item: build(where, item[1], item[0]), skips)


def hf_options(value: Any, where: str) -> dict[str, str | None]:
    """Options as a dict (missing letters of a struct column are None and dropped), a list of texts, or a list of
    {key, value} pairs (BigBio)."""
    if isinstance(value, dict):
        return {k: option_text(v) for k, v in value.items() if v is not None}
    if isinstance(value, list) and all(isinstance(v, dict) and {"key", "value"} <= set(v) for v in value):
        return {str(v["key"]): option_text(v["value"]) for v in value}
    if isinstance(value, list):
        if len(value) > len(LETTERS):
            raise RecordError(where, f"{len(value)} options; at most {len(LETTERS)} are supported", R_OPTIONS)
        return {LETTERS[i]: option_text(v) for i, v in enumerate(value)}
    raise RecordError(where, f"options must be a dict or a list, got {value!r}", R_OPTIONS)


def _hf_answer(answer: Any, options: dict[str, str | None], where: str) -> Any:
    """A letter stays; an integer is an index into the options; an option's exact text maps to its letter."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(options):
            raise RecordError(where, f"answer index {answer} is out of range for {len(options)} options", R_LETTER)
        return sorted(options)[answer]
    if isinstance(answer, str) and answer not in options:
        matches = [k for k, v in options.items() if v == answer]
        if matches:
            return matches[0]
    return answer


def _hf_normalized(where: str, row: dict, split: str, source: str, default_id: str) -> Question:
    options = hf_options(require(row, "options", where), where)
    fields = {k: row[k] for k in ("explanation", "gold_doc_ids", "image") if row.get(k) is not None}
    meta = dict(row.get("meta") or {})
    meta.update({k: v for k, v in row.items() if k not in _QUESTION_FIELDS})
    return make_question(
        where,
        id=str(row["id"]) if row.get("id") is not None else default_id,
        question=require(row, "question", where),
        options=options,
        answer=_hf_answer(require(row, "answer", where), options, where),
        source=row.get("source") or source,
        split=row.get("split") or split,
        meta=meta,
        **fields,
    )


def _hf_pubmedqa(where: str, row: dict, split: str, source: str) -> Question:
    decision = require(row, "final_decision", where)
    if decision not in _DECISION_TO_LETTER:
        raise RecordError(where, f"final_decision must be yes/no/maybe, got {decision!r}", R_LETTER)
    pmid = row.get("pubid", row.get("pmid"))
    context = row.get("context")
    return make_question(
        where,
        id=f"pubmedqa-{pmid}" if pmid is not None else f"pubmedqa-{split}-{where.rsplit(' ', 1)[-1]}",
        question=require(row, "question", where),
        options=dict(PUBMEDQA_OPTIONS),
        answer=_DECISION_TO_LETTER[decision],
        explanation=_explanation(row.get("long_answer")),
        source=source,
        split=split,
        meta={"pmid": str(pmid), **({"contexts": context.get("contexts")} if isinstance(context, dict) else {})},
    )
