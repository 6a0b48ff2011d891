"""Retrieval: BM25 (bm25s), dense (sentence-transformers + FAISS/numpy) and hybrid (RRF) indexes, the HTTP service
in Search-R1's contract, and a client with the same interface as the in-process retriever.

    from medr1.retrieval import open_retriever
    retriever = open_retriever(None)                     # the default HPO BM25 index, built on first use
    retriever = open_retriever("indexes/hpo-hybrid")     # a persisted index directory
    retriever = open_retriever("http://127.0.0.1:8000")  # a running `medr1 serve-retriever`
    hits = retriever.search(["tall stature arachnodactyly"], k=5)[0]

Nothing heavy is imported here; each retriever imports its libraries when it is built or loaded.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from medr1.errors import DataError
from medr1.retrieval.base import MAX_QUERY_CHARS, MAX_TOPK, Hit, RetrievalError, Retriever, validate_request

DEFAULT_INDEX_NAME = "hpo-bm25"

__all__ = [
    "Hit", "Retriever", "RetrievalError", "validate_request", "MAX_QUERY_CHARS", "MAX_TOPK",
    "open_retriever", "ensure_default_index", "default_index_dir",
]


def default_index_dir() -> Path:
    from medr1.paths import medr1_home

    return medr1_home() / "indexes" / DEFAULT_INDEX_NAME


def ensure_default_index() -> Path:
    """The HPO BM25 index in the medr1 cache, built (with a message) on first use or when the corpus changed."""
    from medr1.corpus import ensure_corpus
    from medr1.retrieval.index import INDEX_FILE, build_index, corpus_file, echo, read_index_meta
    from medr1.io import file_sha256
    from medr1.retrieval.bm25 import BM25Params

    out = default_index_dir()
    corpus_dir = ensure_corpus("hpo")
    reason = "not built yet"
    if (out / INDEX_FILE).is_file():
        try:
            meta = read_index_meta(out)
        except DataError as exc:
            reason = f"unreadable ({exc})"
        else:
            if meta["kind"] != "bm25" or meta["params"] != asdict(BM25Params()):
                reason = "built with other BM25 settings or by another medr1 version"
            elif meta["corpus"]["sha256"] != file_sha256(corpus_file(corpus_dir)):
                reason = "the HPO corpus changed since it was built"
            else:
                return out
    echo(f"medr1: building the default HPO BM25 index in {out} ({reason}) ...")
    build_index(corpus_dir, "bm25", out)
    echo(f"medr1: default index ready: {out}")
    return out


def open_retriever(spec: str | Path | None = None, timeout: float = 30.0, retries: int = 3) -> Retriever:
    """A Retriever from a spec: None -> the default HPO BM25 index; "http(s)://..." -> a client of a running
    service (which answers candidate queries itself); anything else -> a persisted index directory. A local index
    also answers candidate queries (`FINDINGS | among: NAME; ...`, `medr1.retrieval.candidates`)."""
    from medr1.retrieval.candidates import CandidateSearch
    from medr1.retrieval.index import load_index

    if spec is None or str(spec).strip() in ("", "default", DEFAULT_INDEX_NAME):
        return CandidateSearch(load_index(ensure_default_index()))
    text = str(spec).strip()
    if text.startswith(("http://", "https://")):
        from medr1.retrieval.client import RetrieverClient

        return RetrieverClient(text, timeout=timeout, retries=retries)
    return CandidateSearch(load_index(Path(text)))
