"""medr1.io and the index builder under failure: a writer that fails part-way leaves the old file (or index) intact
and no temporary behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medr1.io import atomic_write_json, atomic_write_jsonl, atomic_write_text

RETRIEVAL_FIXTURE = Path(__file__).parent / "fixtures" / "retrieval"


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"accuracy": 0.7, "bad": object()})  # json.dumps fails before anything is renamed
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert _siblings(path) == ["metrics.json"]


def test_failed_jsonl_write_part_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "train.jsonl"
    atomic_write_jsonl(path, [{"id": 1}, {"id": 2}])
    old = path.read_bytes()

    def records():
        yield {"id": 10}
        yield {"id": 11}
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write_jsonl(path, records())
    assert path.read_bytes() == old
    assert _siblings(path) == ["train.jsonl"]


def test_interrupt_during_text_write_keeps_the_old_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt (as a Ctrl-C or a signal turned into an exception) during the final fsync: old file kept."""
    import os

    path = tmp_path / "report.md"
    atomic_write_text(path, "old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and _siblings(path) == ["report.md"]


def test_failed_index_rebuild_keeps_the_old_index(tmp_path, monkeypatch):
    from medr1.retrieval import open_retriever
    from medr1.retrieval import index as index_mod
    from medr1.retrieval.bm25 import BM25Retriever

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(RETRIEVAL_FIXTURE / "docs.jsonl", corpus / "docs.jsonl")
    out = index_mod.build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    want = [h.doc.id for h in open_retriever(str(out)).search(["spider fingers"], 3)[0]]

    def fails_part_way(self, out_dir):
        Path(out_dir, "params.index.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(BM25Retriever, "save", fails_part_way)
    with pytest.raises(OSError, match="disk full"):
        index_mod.build_index(corpus, "bm25", out, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _siblings(out) == ["corpus", "idx"]  # no temporary or moved-aside directory left
    monkeypatch.undo()
    assert [h.doc.id for h in open_retriever(str(out)).search(["spider fingers"], 3)[0]] == want
