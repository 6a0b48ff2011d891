"""Atomic writes, hashing and line-checked JSONL reading used by every stage.

Writes go to a temporary file in the target directory and are renamed into place, so a killed stage leaves either
the old file or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medr1.errors import DataError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records one JSON object per line; returns the count."""
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record and flush it (used for resumable per-sample outputs and per-step metrics)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()


def jsonl_records(path: str | Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, object) for each non-blank line, or (line number, why the line is bad); goes on past bad lines."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, f"not valid UTF-8 ({exc.reason})"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield lineno, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line is a DataError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    for lineno, obj in jsonl_records(path):
        if isinstance(obj, str):
            raise DataError(f"{path}:{lineno}: {obj}")
        yield lineno, obj


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Read an append-only JSONL file that a killed writer may have left with a torn last line (resume files)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(text: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def seeded_order(items: Iterable[Any], seed: int, key: Callable[[Any], str]) -> list[Any]:
    """The items in a seeded pseudo-random order that depends only on the seed and each item's key (e.g. a question
    id): the same records give the same order whatever file, directory or run they were read from."""
    return sorted(items, key=lambda item: stable_hash(f"{seed}:{key(item)}"))


class SkipLog:
    """Counts records skipped under `--skip-bad`, by reason, so nothing is dropped silently."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def handle(self, error: DataError, reason: str) -> None:
        """Re-raise `error` unless skipping is on; then count it under `reason`."""
        if not self.skip_bad:
            raise error
        self.reasons[reason] += 1
        self.examples.setdefault(reason, str(error))

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        if not self.reasons:
            return "skipped 0 records"
        parts = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"skipped {self.total} records ({parts}); first of each: " + "; ".join(self.examples.values())
