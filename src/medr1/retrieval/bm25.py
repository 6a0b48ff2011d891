"""BM25 retrieval with `bm25s`: medical-text tokenization, building, saving and memory-mapped loading.

Tokenization (shared by the index, the queries and the rank-bm25 reference in bench/retrieval.py): lower-case,
split on runs of letters/digits (so "X-linked" gives "x" and "linked", and "type 1" keeps its "1", which tells
diabetes types apart), drop NLTK's English stopwords (keeping the letters "d" and "t": vitamin D, T cells) plus the
boilerplate words of clinical vignettes ("patient", "presents", "likely", ...), then Snowball-stem with PyStemmer
("seizures" -> "seizur" = "seizure"). Negations ("no", "not") are stopwords: bag-of-words BM25 cannot use them.

A document that shares no term with the query scores 0 and is not returned, so a query made only of stopwords gets
an empty list rather than k arbitrary documents.

    from medr1.retrieval.index import build_index, load_index
    build_index("corpora/hpo", "bm25", "indexes/hpo-bm25")
    load_index("indexes/hpo-bm25").search(["arachnodactyly ectopia lentis"], k=5)
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medr1.data.schema import Document
from medr1.errors import DataError
from medr1.retrieval.base import Hit, RetrievalError, params_from_dict, validate_request

TOKENIZER_VERSION = "medr1-en-snowball-v2"

# Words every vignette carries ("A 5-year-old patient presents with ... What is the most likely diagnosis?"); they
# match thousands of documents by chance and only add noise to the findings that matter.
VIGNETTE_STOPWORDS = frozenset(
    "patient patients presents presenting presented present likely diagnosis following finding findings "
    "shows showed reveals revealed noted year years old".split()
)

# NLTK's English list (bm25s' STOPWORDS_EN_PLUS) holds contraction fragments that are also medical letters:
# vitamin D, T cells.
KEPT_LETTERS = frozenset({"d", "t"})

_WORD = re.compile(r"[^\W_]+")


class MedicalTokenizer:
    """Lower-case, split, drop stopwords, stem. Deterministic; `tokenize` is the only entry point."""

    def __init__(self) -> None:
        from bm25s.stopwords import STOPWORDS_EN_PLUS

        self._stopwords = (frozenset(STOPWORDS_EN_PLUS) - KEPT_LETTERS) | VIGNETTE_STOPWORDS
        # PyStemmer objects are not thread-safe and the service searches from a thread pool: one per thread.
        self._local = threading.local()

    def _stemmer(self) -> Any:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            import Stemmer  # PyStemmer

            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        return stemmer

    def tokenize(self, text: str) -> list[str]:
        words = [w for w in _WORD.findall(text.lower()) if w not in self._stopwords]
        return self._stemmer().stemWords(words)

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        return [self.tokenize(t) for t in texts]


@dataclass(frozen=True)
class BM25Params:
    # Anserini/Pyserini's defaults (what Search-R1's BM25 retriever runs), not bm25s' 1.5/0.75: disease documents
    # are long phenotype lists, and a milder length penalty keeps them from losing to one-line term definitions.
    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    tokenizer: str = TOKENIZER_VERSION

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str) -> "BM25Params":
        params = params_from_dict(cls, obj, where, "BM25")
        if params.tokenizer != TOKENIZER_VERSION:
            raise DataError(
                f"{where}: index was tokenized with {params.tokenizer!r}, this medr1 uses {TOKENIZER_VERSION!r}; "
                "rebuild the index with `medr1 index build`"
            )
        return params


class BM25Retriever:
    """In-process BM25 over a list of documents; `search` answers a batch of queries in one bm25s call."""

    kind = "bm25"

    def __init__(self, model: Any, docs: list[Document], params: BM25Params) -> None:
        self.model = model
        self.docs = docs
        self.params = params
        self.tokenizer = MedicalTokenizer()

    @property
    def num_docs(self) -> int:
        return len(self.docs)

    @classmethod
    def build(cls, docs: list[Document], params: BM25Params | None = None, show_progress: bool = True) -> "BM25Retriever":
        import bm25s

        params = params or BM25Params()
        if not docs:
            raise DataError("cannot build a BM25 index over an empty corpus")
        tokenizer = MedicalTokenizer()
        corpus_tokens = tokenizer.tokenize_many([d.contents for d in docs])
        model = bm25s.BM25(k1=params.k1, b=params.b, method=params.method)
        model.index(corpus_tokens, show_progress=show_progress)
        return cls(model, docs, params)

    def save(self, out_dir: str | Path) -> None:
        self.model.save(str(out_dir), show_progress=False)

    def params_dict(self) -> dict[str, Any]:
        return asdict(self.params)

    @classmethod
    def load(cls, index_dir: str | Path, docs: list[Document], params: dict[str, Any], mmap: bool = True) -> "BM25Retriever":
        """Load a saved index; with `mmap` the score matrix stays on disk and pages in on demand."""
        import bm25s

        bm25_params = BM25Params.from_dict(params, f"{index_dir}/index.json")
        try:
            model = bm25s.BM25.load(str(index_dir), mmap=mmap, load_corpus=False, show_progress=False)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{index_dir}: BM25 index files are missing or corrupt ({exc}); rebuild the index") from None
        n_model = model.scores.get("num_docs")
        if n_model != len(docs):
            raise DataError(f"{index_dir}: BM25 index holds {n_model} documents but the corpus has {len(docs)}")
        return cls(model, docs, bm25_params)

    def query_ids(self, query: str) -> list[int]:
        vocab = self.model.vocab_dict
        return [vocab[t] for t in self.tokenizer.tokenize(query) if t in vocab]

    def score_all(self, query: str) -> Any:
        """The BM25 score of every document (in corpus order) for one query: a numpy array, zeros when no query
        term is in the vocabulary."""
        import numpy as np

        ids = self.query_ids(query)
        return self.model.get_scores(ids) if ids else np.zeros(len(self.docs))

    def search_indices(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-k (document index, score) per query, best first, zero-score documents left out."""
        k = min(k, len(self.docs))
        token_ids = [self.query_ids(q) for q in queries]
        answerable = [i for i, ids in enumerate(token_ids) if ids]
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        if not answerable:
            return out
        try:
            indices, scores = self.model.retrieve([token_ids[i] for i in answerable], k=k, show_progress=False)
        except (ValueError, IndexError) as exc:
            raise RetrievalError(f"BM25 index could not answer: {exc}") from None
        for row, qi in enumerate(answerable):
            out[qi] = [(int(d), float(s)) for d, s in zip(indices[row], scores[row]) if s > 0]
        return out

    def search(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        validate_request(queries, k)
        return [[Hit(self.docs[d], s) for d, s in ranked] for ranked in self.search_indices(queries, k)]
