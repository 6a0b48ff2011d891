"""Persisted retrieval indexes: build one from a corpus directory, load it back as a Retriever.

An index directory holds `index.json` and the retriever's files (hybrid: `bm25/` and `dense/`):

    {"format": 1, "kind": "bm25", "corpus": {"path": ".../corpora/hpo", "sha256": "...", "docs": 32000},
     "params": {...}, "build_seconds": 4.2, "created": "2025-...", "medr1_version": "0.1.0"}

The documents themselves are read from the corpus at load time, and the corpus `docs.jsonl` must still hash to the
recorded sha256: an index over a corpus that was since rebuilt or edited would return the wrong documents for its
row numbers, so loading refuses it and names both hashes. A build writes into a temporary sibling directory and
renames it into place, so a killed build leaves the old index or none.

    from medr1.retrieval.index import build_index, load_index
    build_index("corpora/hpo", "bm25", "indexes/hpo-bm25")
    retriever = load_index("indexes/hpo-bm25")

The kinds (`bm25`, `dense`, `hybrid`) are the entries of `RETRIEVERS`, the retriever registry: a new kind is one
entry (its build and load functions); `medr1 index build --retriever`, the recipe's `index:` section and
`load_index` all read the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medr1.data.schema import Document
from medr1.errors import ConfigError, DataError
from medr1.io import atomic_write_json, file_sha256
from medr1.retrieval.base import Retriever
from medr1.retrieval.bm25 import BM25Params
from medr1.retrieval.hybrid import HybridParams

INDEX_FILE = "index.json"
DOCS_FILE = "docs.jsonl"
FORMAT_VERSION = 1


def corpus_file(corpus: str | Path) -> Path:
    """The docs.jsonl of a corpus given as its directory or as the file itself."""
    path = Path(corpus).expanduser()
    if path.is_dir():
        path = path / DOCS_FILE
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found (expected a directory with {DOCS_FILE}, or the file itself)")
    return path.resolve()


def load_corpus_documents(corpus: str | Path) -> list[Document]:
    """All documents of a corpus, in file order (medr1.corpus checks lines and refuses duplicate ids)."""
    from medr1.corpus import load_documents

    path = corpus_file(corpus)
    docs = load_documents(path)
    if not docs:
        raise DataError(f"{path}: the corpus has no documents")
    return docs


def read_index_meta(index_dir: str | Path) -> dict[str, Any]:
    """The parsed and checked index.json of an index directory."""
    index_dir = Path(index_dir).expanduser()
    meta_path = index_dir / INDEX_FILE
    if not index_dir.is_dir():
        raise DataError(f"{index_dir}: index directory not found (build one with `medr1 index build`)")
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; {index_dir} is not a medr1 index (or its build did not finish)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: corrupt index metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: corrupt index metadata (not a JSON object)")
    for key in ("format", "kind", "corpus", "params"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r}")
    if meta["format"] != FORMAT_VERSION:
        raise DataError(f"{meta_path}: index format {meta['format']} is not {FORMAT_VERSION}; rebuild the index")
    if meta["kind"] not in KINDS:
        raise DataError(f"{meta_path}: unknown index kind {meta['kind']!r} (expected one of {', '.join(KINDS)})")
    corpus = meta["corpus"]
    if not isinstance(corpus, dict) or not {"path", "sha256", "docs"} <= set(corpus):
        raise DataError(f"{meta_path}: 'corpus' must record path, sha256 and docs")
    return meta


def _reuse_dense(dense_index: str | Path, docs: list[Document], sha: str, embedder: str | None) -> Any:
    """The dense part of an existing dense or hybrid index over the same corpus (its embeddings, not re-encoded)."""
    from medr1.retrieval.dense import DenseRetriever

    src = Path(dense_index).expanduser().resolve()
    meta = read_index_meta(src)
    if meta["kind"] == "bm25":
        raise ConfigError(f"{src}: --dense-index must be a dense or hybrid index, this one is bm25")
    if meta["corpus"]["sha256"] != sha:
        raise DataError(f"{src}: was built from a corpus with sha256 {meta['corpus']['sha256']}, not {sha}")
    params = meta["params"]["dense"] if meta["kind"] == "hybrid" else meta["params"]
    if embedder and embedder != params.get("embedder"):
        raise ConfigError(f"{src}: embeds with {params.get('embedder')!r}, not the requested {embedder!r}")
    return DenseRetriever.load(src / "dense" if meta["kind"] == "hybrid" else src, docs, params, mmap=True)


def _bm25_part(docs: list[Document], sha: str, opts: dict[str, Any], show_progress: bool) -> Any:
    from medr1.retrieval.bm25 import BM25Retriever

    return BM25Retriever.build(docs, opts["bm25"], show_progress=show_progress)


def _dense_part(docs: list[Document], sha: str, opts: dict[str, Any], show_progress: bool) -> Any:
    from medr1.retrieval.dense import DEFAULT_EMBEDDER, DenseParams, DenseRetriever

    if opts["dense_index"]:
        return _reuse_dense(opts["dense_index"], docs, sha, opts["embedder"])
    return DenseRetriever.build(docs, DenseParams(embedder=opts["embedder"] or DEFAULT_EMBEDDER),
                                show_progress=show_progress)


def _build_single(part: Callable[..., Any]) -> Callable[..., tuple[dict[str, Any], dict[str, Any]]]:
    def build(kind: str, docs: list[Document], sha: str, opts: dict[str, Any], show_progress: bool):
        retriever = part(docs, sha, opts, show_progress)
        return {kind: retriever}, retriever.params_dict()

    return build


def _build_hybrid(kind: str, docs: list[Document], sha: str, opts: dict[str, Any], show_progress: bool):
    parts = {"bm25": _bm25_part(docs, sha, opts, show_progress), "dense": _dense_part(docs, sha, opts, show_progress)}
    params = {"hybrid": asdict(opts["hybrid"]), "bm25": parts["bm25"].params_dict(),
              "dense": parts["dense"].params_dict()}
    return parts, params


def _load_bm25(index_dir: Path, docs: list[Document], params: Any, mmap: bool) -> Any:
    from medr1.retrieval.bm25 import BM25Retriever

    return BM25Retriever.load(index_dir, docs, params, mmap=mmap)


def _load_dense(index_dir: Path, docs: list[Document], params: Any, mmap: bool) -> Any:
    from medr1.retrieval.dense import DenseRetriever

    return DenseRetriever.load(index_dir, docs, params, mmap=mmap)


def _load_hybrid(index_dir: Path, docs: list[Document], params: Any, mmap: bool) -> Any:
    from medr1.retrieval.hybrid import HybridParams, HybridRetriever

    try:
        bm25_p, dense_p, hybrid_p = params["bm25"], params["dense"], params["hybrid"]
    except (KeyError, TypeError):
        raise DataError(f"{index_dir}/{INDEX_FILE}: hybrid params need 'bm25', 'dense' and 'hybrid'") from None
    return HybridRetriever(_load_bm25(index_dir / "bm25", docs, bm25_p, mmap),
                           _load_dense(index_dir / "dense", docs, dense_p, mmap),
                           HybridParams.from_dict(hybrid_p, f"{index_dir}/{INDEX_FILE}"))


@dataclass(frozen=True)
class RetrieverKind:
    """One entry of the retriever registry: how an index of this kind is built and loaded, and whether it embeds
    (takes --embedder / --dense-index)."""

    build: Callable[..., tuple[dict[str, Any], dict[str, Any]]]  # (kind, docs, sha, opts, progress) -> (parts, params)
    load: Callable[..., Any]  # (index_dir, docs, params, mmap) -> Retriever
    embeds: bool


RETRIEVERS: dict[str, RetrieverKind] = {
    "bm25": RetrieverKind(_build_single(_bm25_part), _load_bm25, embeds=False),
    "dense": RetrieverKind(_build_single(_dense_part), _load_dense, embeds=True),
    "hybrid": RetrieverKind(_build_hybrid, _load_hybrid, embeds=True),
}
KINDS = tuple(RETRIEVERS)


def _build_parts(kind: str, docs: list[Document], sha: str, opts: dict[str, Any],
                 show_progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the retriever objects for `kind`; returns ({subdir: retriever}, params)."""
    return RETRIEVERS[kind].build(kind, docs, sha, opts, show_progress)


def build_index(corpus_dir: str | Path, retriever: str, out_dir: str | Path, embedder: str | None = None,
                rrf_k: float = 60.0, bm25: BM25Params | None = None, hybrid: HybridParams | None = None,
                dense_index: str | Path | None = None, show_progress: bool = True) -> Path:
    """Build a `retriever` ("bm25", "dense" or "hybrid") index over a corpus and write it to `out_dir`.

    `hybrid` (RRF constant, candidate depth, per-retriever weights) overrides `rrf_k`; `dense_index` reuses the
    embeddings of an existing dense/hybrid index over the same corpus instead of encoding it again.
    """
    if retriever not in KINDS:
        raise ConfigError(f"unknown retriever {retriever!r} (expected one of {', '.join(KINDS)})")
    if (embedder or dense_index) and not RETRIEVERS[retriever].embeds:
        raise ConfigError(f"--embedder and --dense-index apply to dense and hybrid indexes, not {retriever}")
    bm25 = bm25 or BM25Params()
    if bm25.k1 < 0 or not 0 <= bm25.b <= 1:
        raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={bm25.k1}, b={bm25.b}")
    hybrid = hybrid or HybridParams(rrf_k=rrf_k)
    if hybrid.rrf_k < 0 or hybrid.depth < 1 or hybrid.bm25_weight < 0 or hybrid.dense_weight < 0:
        raise ConfigError(f"hybrid needs rrf_k >= 0, depth >= 1 and weights >= 0, got {hybrid}")
    opts = {"bm25": bm25, "hybrid": hybrid, "embedder": embedder, "dense_index": dense_index}
    path = corpus_file(corpus_dir)
    out = Path(out_dir).expanduser().resolve()
    _check_target(out)  # before the build, which can take a long time for dense indexes
    sha = file_sha256(path)
    start = time.perf_counter()
    docs = load_corpus_documents(path)
    parts, params = _build_parts(retriever, docs, sha, opts, show_progress)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _chmod_like_mkdir(tmp)
        for name, part in parts.items():
            part.save(tmp if retriever != "hybrid" else tmp / name)
        atomic_write_json(tmp / INDEX_FILE, {
            "format": FORMAT_VERSION,
            "kind": retriever,
            "corpus": {"path": str(path.parent), "sha256": sha, "docs": len(docs)},
            "params": params,
            "build_seconds": round(seconds, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "medr1_version": _version(),
        })
        _chmod_like_mkdir(tmp / INDEX_FILE)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _chmod_like_mkdir(path: Path) -> None:
    """mkdtemp/mkstemp make private (0700/0600) paths; an index should be as readable as anything made under the
    umask, so that one user's build can be served by another."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _check_target(target: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier index."""
    if target.is_file() or (target.is_dir() and not (target / INDEX_FILE).is_file() and any(target.iterdir())):
        raise ConfigError(f"{target}: exists and is not a medr1 index; refusing to overwrite it")


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` onto `target`; an existing target is moved aside first and removed only after the swap."""
    old = None
    if target.exists():
        _check_target(target)
        old = target.with_name(f".{target.name}.old-{time.time_ns()}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("medr1")
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


def _checked_corpus(meta: dict[str, Any], index_dir: Path, corpus_dir: str | Path | None) -> Path:
    """The corpus file to read, after checking that it hashes to what the index recorded."""
    recorded = meta["corpus"]
    if corpus_dir is not None:
        path = corpus_file(corpus_dir)
    else:
        try:
            path = corpus_file(recorded["path"])
        except DataError:
            raise DataError(
                f"{index_dir}: the corpus it was built from ({recorded['path']}) is gone; pass the corpus "
                "directory explicitly (load_index(dir, corpus_dir=...)) or rebuild the index"
            ) from None
    actual = file_sha256(path)
    if actual != recorded["sha256"]:
        raise DataError(
            f"{index_dir}: corpus mismatch: the index was built from a docs.jsonl with sha256 {recorded['sha256']}, "
            f"but {path} has sha256 {actual} (the corpus was rebuilt or modified); rebuild the index with "
            f"`medr1 index build --corpus {path.parent} --retriever {meta['kind']} --out {index_dir}`"
        )
    return path


def corpus_documents(index_dir: str | Path, corpus_dir: str | Path | None = None) -> list[Document]:
    """The documents of the corpus an index was built from, checked against its recorded hash and count."""
    index_dir = Path(index_dir).expanduser().resolve()
    meta = read_index_meta(index_dir)
    docs = load_corpus_documents(_checked_corpus(meta, index_dir, corpus_dir))
    if len(docs) != meta["corpus"]["docs"]:
        raise DataError(f"{index_dir}: index records {meta['corpus']['docs']} documents, corpus has {len(docs)}")
    return docs


def load_index(index_dir: str | Path, corpus_dir: str | Path | None = None, mmap: bool = True) -> Retriever:
    """Load a persisted index as a Retriever, refusing a corpus that does not match the recorded hash."""
    index_dir = Path(index_dir).expanduser().resolve()
    meta = read_index_meta(index_dir)
    docs = corpus_documents(index_dir, corpus_dir)
    retriever = RETRIEVERS[meta["kind"]].load(index_dir, docs, meta["params"], mmap)
    retriever.index_dir = index_dir
    retriever.meta = meta
    return retriever


def describe(index_dir: str | Path) -> str:
    """One line about an index, for progress messages."""
    meta = read_index_meta(index_dir)
    return f"{meta['kind']} index over {meta['corpus']['docs']} documents ({meta['corpus']['path']})"


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
