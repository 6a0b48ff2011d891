"""The normalized data model: `Question` (a multiple-choice item) and `Document` (a corpus entry).

Normalized JSONL is `Question.to_dict()` one per line; a corpus `docs.jsonl` is `Document.to_dict()` one per line.
`Question.validate` is the single place that decides whether a record is well-formed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medr1.errors import DataError

LETTERS = "ABCDEFGHIJ"


OPEN_MARK = {"task": "open"}  # in a Question's meta: no options, a free-text gold


def marks_open(meta: Any) -> bool:
    return isinstance(meta, dict) and meta.get("task") == OPEN_MARK["task"]


@dataclass
class Question:
    id: str
    question: str
    options: dict[str, str]
    answer: str
    explanation: str | None = None
    source: str = ""
    split: str = ""
    gold_doc_ids: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    image: str | None = None

    def validate(self, where: str) -> "Question":
        """Raise DataError naming `where` (file:line or key) unless the record is usable; return self."""
        if not str(self.id).strip():
            raise DataError(f"{where}: empty id")
        if not isinstance(self.question, str) or not self.question.strip():
            raise DataError(f"{where}: empty question text")
        if self.is_open:
            if self.options:
                raise DataError(f"{where}: an open question (meta task=open) has no options, got {self.options!r}")
            if not isinstance(self.answer, str) or not self.answer.strip():
                raise DataError(f"{where}: an open question (meta task=open) needs its gold answer text")
            return self
        if not isinstance(self.options, dict) or len(self.options) < 2:
            raise DataError(f"{where}: needs at least 2 options, got {self.options!r}")
        for letter, text in self.options.items():
            if letter not in LETTERS:
                raise DataError(f"{where}: unknown option letter {letter!r} (expected one of {LETTERS})")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: option {letter} is empty")
        if self.answer not in self.options:
            raise DataError(f"{where}: answer {self.answer!r} is not among options {sorted(self.options)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str) -> "Question":
        """Build and validate from a normalized record; unknown or missing keys are errors naming `where`."""
        known = set(cls.__dataclass_fields__)
        extra = set(obj) - known
        if extra:
            raise DataError(f"{where}: unknown field(s) {sorted(extra)}")
        missing = {"id", "question", "options", "answer"} - set(obj)
        if missing:
            raise DataError(f"{where}: missing field(s) {sorted(missing)}")
        return cls(**obj).validate(where)

    def format_options(self) -> str:
        return "\n".join(f"{k}. {v}" for k, v in sorted(self.options.items()))

    @property
    def is_open(self) -> bool:
        """An open question has no options and a free-text gold (a diagnosis name, EHRXQA's answer keywords)."""
        return marks_open(self.meta)

    @property
    def subset(self) -> str | None:
        """A real patient's leakage subset (`medr1.data.phenopackets`: unseen-/seen-/no-publication), else None."""
        return self.meta.get("subset") if isinstance(self.meta, dict) else None

    def findings(self) -> list[str]:
        """The findings a reader of the vignette sees (lower-case).

        HPO-Dx and phenopackets record them in `meta["findings"]` (dicts with the shown `label`); HPO-Dx's incidental
        finding is `meta["noise"]`, kept because the model cannot tell it apart either. Other sources: the
        comma-separated parts of the question text.
        """
        meta = self.meta if isinstance(self.meta, dict) else {}
        found = meta.get("findings")
        if isinstance(found, list) and found:
            noise = meta.get("noise")
            return _labels(found + ([noise] if isinstance(noise, dict) and noise.get("label") else []))
        text = self.question.replace("\n", " ")
        parts = [p.strip(" .") for p in text.replace(";", ",").split(",")]
        return [p for p in parts if p and "?" not in p]

    def absent_findings(self) -> list[str]:
        """The findings the case records as absent (lower-case): `meta["excluded"]` of phenopackets and of HPO-Dx
        train vignettes; none for other sources."""
        meta = self.meta if isinstance(self.meta, dict) else {}
        return _labels(meta.get("excluded") or [])


def _labels(items: list[Any]) -> list[str]:
    """The lower-case labels of recorded findings (dicts with a `label`, or plain strings), blanks left out."""
    labels = [str(f.get("label", "")) if isinstance(f, dict) else str(f) for f in items]
    return [label.strip().lower() for label in labels if label.strip()]


@dataclass
class Document:
    id: str
    title: str
    text: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str) -> "Document":
        missing = {"id", "title", "text"} - set(obj)
        if missing:
            raise DataError(f"{where}: missing field(s) {sorted(missing)}")
        return cls(id=str(obj["id"]), title=str(obj["title"]), text=str(obj["text"]), source=str(obj.get("source", "")))

    @property
    def contents(self) -> str:
        """Search-R1's `contents` field: the title on the first line, then the text."""
        return f"{self.title}\n{self.text}"
