"""Image question loaders (PMC-VQA CSV, EHRXQA JSON, both through hf:) on fixtures this test makes, PNGs included:
counts, answers in each of PMC-VQA's spellings, checked image paths, missing and corrupt images named or counted.

    pytest tests/test_images.py -q
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medr1.data.schema import Question
from medr1.data.sources import load_questions
from medr1.errors import DataError
from medr1.io import atomic_write_jsonl

HEADER = ["Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer"]


def png(path: Path, shade: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def pmc(tmp_path) -> Path:
    root = tmp_path / "pmc-vqa"
    for i in range(4):
        png(root / "images" / f"fig{i}.jpg".replace(".jpg", ".png"), shade=40 * i)
    write_csv(root / "train.csv", HEADER, [
        ["fig0.png", "Axial CT", "What imaging modality is shown?", " A:CT", " B:MRI", " C:X-ray", " D:PET", "CT"],
        ["fig1.png", "", "Which organ is enlarged?", " A:Liver", " B:Spleen", " C:Kidney", " D:Heart", "B:Spleen"],
    ])
    write_csv(root / "test_clean.csv", HEADER[:-1] + ["Anwser", "Answer_label"], [
        ["fig2.png", "", "Where is the lesion?", "A:Left", "B:Right", "C:Both", "D:Neither", "Right", "B"],
        ["fig3.png", "", "Is contrast used?", "A:Yes", "B:No", "C:Unclear", "D:Partly", "", "A"],
    ])
    return root


def test_pmc_vqa_folder_loads_every_csv_with_checked_images(pmc) -> None:
    result = load_questions(f"pmc-vqa:{pmc}")
    qs = {q.id: q for q in result.questions}
    assert sorted(qs) == ["pmcvqa-test_clean-0", "pmcvqa-test_clean-1", "pmcvqa-train-0", "pmcvqa-train-1"]
    first = qs["pmcvqa-train-0"]
    assert first.options == {"A": "CT", "B": "MRI", "C": "X-ray", "D": "PET"} and first.answer == "A"
    assert first.image == str(pmc / "images" / "fig0.png") and first.meta["caption"] == "Axial CT"
    assert first.split == "train" and qs["pmcvqa-test_clean-0"].split == "test"
    assert [qs[k].answer for k in sorted(qs)] == ["B", "A", "A", "B"]  # label, label, text, "B:Spleen"
    one = load_questions(f"pmc-vqa:{pmc / 'train.csv'}")
    assert [q.id for q in one.questions] == ["pmcvqa-train-0", "pmcvqa-train-1"]


def test_a_missing_or_corrupt_image_is_named_or_counted(pmc) -> None:
    (pmc / "images" / "fig1.png").unlink()
    (pmc / "images" / "fig2.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"test_clean\.csv:2: image .*fig2\.png is unreadable"):
        load_questions(f"pmc-vqa:{pmc}")
    with pytest.raises(DataError, match=r"train\.csv:3: image 'fig1.png' not found \(looked in .*images"):
        load_questions(f"pmc-vqa:{pmc / 'train.csv'}")
    result = load_questions(f"pmc-vqa:{pmc}", skip_bad=True)
    assert len(result.questions) == 2 and result.skips.reasons == {"missing or unreadable image": 2}


def test_an_answer_that_matches_no_option_is_an_error(tmp_path) -> None:
    png(tmp_path / "f.png")
    write_csv(tmp_path / "x.csv", HEADER, [["f.png", "", "q?", "A:a", "B:b", "C:c", "D:d", "e"]])
    with pytest.raises(DataError, match=r"x\.csv:2: answer 'e' matches no option"):
        load_questions(f"pmc-vqa:{tmp_path / 'x.csv'}")


def test_ehrxqa_yes_no_and_keyword_answers(tmp_path) -> None:
    root = tmp_path / "ehrxqa"
    png(root / "images" / "p10" / "s1.jpg".replace(".jpg", ".png"))
    png(root / "images" / "img2.png")
    records = [
        {"idx": 7, "question": "Is there pleural effusion?", "answer": ["yes"], "image_path": "p10/s1.png",
         "content_type": "presence"},
        {"idx": 8, "question": "Which abnormalities are in the left lung?", "answer": ["atelectasis", "effusion"],
         "image_id": "img2", "study_id": 5},
        {"idx": 9, "question": "Any devices?", "answer": [], "image_id": "img2"},
    ]
    (root / "test.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"test\.json\[2\]: empty answer list"):
        load_questions(f"ehrxqa:{root}")
    result = load_questions(f"ehrxqa:{root}", skip_bad=True)
    yes, keywords = result.questions
    assert yes.options == {"A": "yes", "B": "no"} and yes.answer == "A" and yes.meta["content_type"] == "presence"
    assert keywords.is_open and keywords.options == {} and keywords.answer == "atelectasis, effusion"
    assert keywords.image == str(root / "images" / "img2.png") and keywords.meta["answers"] == ["atelectasis", "effusion"]
    # an open question round-trips through medr1's normalized jsonl (the explain output, an SFT source)
    atomic_write_jsonl(tmp_path / "q.jsonl", [q.to_dict() for q in result.questions])
    back = load_questions(f"jsonl:{tmp_path / 'q.jsonl'}").questions
    assert [q.to_dict() for q in back] == [q.to_dict() for q in result.questions]


def test_an_open_question_needs_its_task_mark_and_gold() -> None:
    with pytest.raises(DataError, match="needs at least 2 options"):
        Question(id="x", question="q", options={}, answer="effusion").validate("here")
    with pytest.raises(DataError, match="needs its gold answer text"):
        Question(id="x", question="q", options={}, answer=" ", meta={"task": "open"}).validate("here")
    assert Question(id="x", question="q", options={}, answer="effusion", meta={"task": "open"}).validate("here")


def test_both_formats_through_hf(tmp_path) -> None:
    from datasets import Dataset

    pmc_rows = [{"Figure_path": "PMC1_fig.jpg", "Question": "Modality?", "Choice A": " A:CT", "Choice B": " B:MRI",
                 "Choice C": " C:US", "Choice D": " D:PET", "Answer": "MRI", "Caption": "c"}]
    ehr_rows = [{"question": "Which findings?", "answer": ["edema"], "image_path": "p1/s2.jpg"}]
    data = {"xmcmic/PMC-VQA": Dataset.from_list(pmc_rows), "ehrxqa": Dataset.from_list(ehr_rows)}
    pmc = load_questions("hf:xmcmic/PMC-VQA:test", dataset_loader=lambda name, split: data[name]).questions[0]
    assert pmc.answer == "B" and pmc.image == "PMC1_fig.jpg" and pmc.source == "pmc-vqa"
    ehr = load_questions("hf:ehrxqa:test", dataset_loader=lambda name, split: data[name]).questions[0]
    assert ehr.is_open and ehr.answer == "edema" and ehr.image == "p1/s2.jpg"
