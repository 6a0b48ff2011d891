"""Image question sets: PMC-VQA (CSV, four choices) and EHRXQA / MIMIC-CXR-VQA (JSON, keyword answers), as
Questions whose `image` is a checked path.

    medr1 data show pmc-vqa:data/pmc-vqa --limit 2          # every CSV in the folder, images under it or images/
    medr1 data show pmc-vqa:data/pmc-vqa/test_clean.csv
    medr1 data show ehrxqa:data/ehrxqa                       # every *.json in the folder

PMC-VQA's CSV columns: `Figure_path`, `Caption`, `Question`, `Choice A`..`Choice D` (written like " A:CT"), the
answer as `Answer_label` (a letter, in the cleaned test files) or `Answer` / `Anwser` (a letter, "B:MRI" or the
option's text). EHRXQA's JSON: a list of {question, answer: [keywords], image_path | image | image_id, ...}; a
yes/no answer becomes a two-option question, other answers open questions (meta task=open) whose gold is the
keywords joined by ", ". A missing or unreadable image is an error naming it (a counted skip with --skip-bad).
No real medical image set is on this machine; the tests make their own PNGs.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medr1.data.loaders import RecordError, guarded, make_question, read_json_file, require, split_from_name
from medr1.data.schema import OPEN_MARK, Question
from medr1.errors import DataError
from medr1.io import SkipLog

R_IMAGE = "missing or unreadable image"
_CHOICE_RE = re.compile(r"^\s*([A-D])\s*[:.)]\s*")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_image(name: str, roots: list[Path], where: str) -> Path:
    """The image `name` under the first root that has it, checked readable (PIL verifies the file)."""
    from PIL import Image, UnidentifiedImageError

    candidates = [name] if Path(name).suffix else [name + s for s in IMAGE_SUFFIXES]
    for root in roots:
        for candidate in candidates:
            path = root / candidate
            if path.is_file():
                try:
                    with Image.open(path) as img:
                        img.verify()
                except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                    raise RecordError(where, f"image {path} is unreadable ({type(exc).__name__}: {exc})", R_IMAGE) from None
                return path
    looked = ", ".join(str(r) for r in roots)
    raise RecordError(where, f"image {name!r} not found (looked in {looked})", R_IMAGE)


def _files(path: Path, suffix: str, expected: str) -> tuple[list[Path], list[Path]]:
    """(the data files: every *suffix in the folder, or the one file; the folders its images may be in)."""
    files = sorted(path.glob(f"*{suffix}")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no {suffix} files in this folder (expected {expected})")
    base = path if path.is_dir() else path.parent
    return files, [base / "images", base, base / "figures"]


# ---------------------------------------------------------------------------------------------------------------------
# PMC-VQA
# ---------------------------------------------------------------------------------------------------------------------


def load_pmc_vqa(path: Path, skips: SkipLog) -> Iterator[Question]:
    files, roots = _files(path, ".csv", "PMC-VQA's train.csv / test_clean.csv")
    for csv_path in files:
        yield from guarded(_dict_rows(csv_path), lambda where, row, p=csv_path: pmc_vqa_question(
            where, row, split_from_name(p), f"pmcvqa-{p.stem}", roots), skips)


def _dict_rows(path: Path) -> Iterator[tuple[str, tuple[int, dict]]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for index, row in enumerate(reader):
                yield f"{path}:{reader.line_num}", (index, row)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None


def _choice(value: Any) -> str | None:
    text = str(value or "").strip()
    return _CHOICE_RE.sub("", text, count=1).strip() or None


def pmc_vqa_answer(row: dict, options: dict[str, str | None], where: str) -> str:
    """The gold letter from Answer_label, or Answer/Anwser as a letter, "B:MRI" or the option's text."""
    label = str(row.get("Answer_label") or "").strip()
    if label:
        return label
    raw = row.get("Answer", row.get("Anwser"))
    text = str(raw or "").strip()
    if not text:
        raise RecordError(where, "missing field 'Answer' (or 'Anwser' / 'Answer_label')", "missing field")
    matches = [k for k, v in options.items() if v and v.strip().lower() == text.lower()]
    if matches:  # the option's text first: an option may itself be one letter
        return matches[0]
    m = _CHOICE_RE.match(text)
    letter = m.group(1) if m else text.upper()
    if letter not in options:
        raise RecordError(where, f"answer {text!r} matches no option {options}", "answer not among options")
    return letter


def pmc_vqa_question(where: str, item: tuple[int, dict], split: str, prefix: str, roots: list[Path] | None) -> Question:
    index, row = item
    options = {k: _choice(row.get(f"Choice {k}")) for k in "ABCD" if row.get(f"Choice {k}") is not None}
    figure = str(require(row, "Figure_path", where)).strip()
    image = str(find_image(figure, roots, where)) if roots is not None else figure
    caption = str(row.get("Caption") or "").strip()
    return make_question(
        where, id=f"{prefix}-{index}", question=str(require(row, "Question", where)).strip(), options=options,
        answer=pmc_vqa_answer(row, options, where), source="pmc-vqa", split=split, image=image,
        meta={"figure": figure, **({"caption": caption} if caption else {})},
    )


# ---------------------------------------------------------------------------------------------------------------------
# EHRXQA / MIMIC-CXR-VQA
# ---------------------------------------------------------------------------------------------------------------------

YES_NO = {"A": "yes", "B": "no"}


def load_ehrxqa(path: Path, skips: SkipLog) -> Iterator[Question]:
    files, roots = _files(path, ".json", "EHRXQA's train/valid/test.json")
    for json_path in files:
        records = read_json_file(json_path)
        if not isinstance(records, list):
            raise DataError(f"{json_path}: expected a JSON list of questions, got {type(records).__name__}")
        items = ((f"{json_path}[{i}]", (i, r)) for i, r in enumerate(records))
        yield from guarded(items, lambda where, item, p=json_path: ehrxqa_question(
            where, item, split_from_name(p), f"ehrxqa-{p.stem}", roots), skips)


def ehrxqa_question(where: str, item: tuple[int, Any], split: str, prefix: str, roots: list[Path] | None) -> Question:
    index, rec = item
    if not isinstance(rec, dict):
        raise RecordError(where, f"expected an object, got {type(rec).__name__}", "invalid record")
    answers = require(rec, "answer", where)
    answers = answers if isinstance(answers, list) else [answers]
    keywords = [str(a).strip() for a in answers if str(a).strip()]
    if not keywords:
        raise RecordError(where, "empty answer list", "missing field")
    ref = next((str(rec[k]) for k in ("image_path", "image", "image_id") if rec.get(k)), None)
    if ref is None:
        raise RecordError(where, "no image reference (image_path, image or image_id)", R_IMAGE)
    image = str(find_image(ref, roots, where)) if roots is not None else ref
    meta = {k: rec[k] for k in ("content_type", "semantic_type", "template", "study_id", "subject_id") if k in rec}
    meta["answers"] = keywords
    qid = f"{prefix}-{rec.get('idx', rec.get('id', index))}"
    question = str(require(rec, "question", where)).strip()
    if [k.lower() for k in keywords] in (["yes"], ["no"]):
        return make_question(where, id=qid, question=question, options=dict(YES_NO),
                             answer="A" if keywords[0].lower() == "yes" else "B", source="ehrxqa", split=split,
                             image=image, meta=meta)
    return make_question(where, id=qid, question=question, options={}, answer=", ".join(keywords), source="ehrxqa",
                         split=split, image=image, meta={**meta, **OPEN_MARK})
