"""The retrieval HTTP service (Search-R1 contract, bad input -> 4xx and still serving) and the retrying client.

    pytest tests/test_service.py -q
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from medr1.data.schema import Document
from medr1.retrieval.base import MAX_QUERY_CHARS, Hit, RetrievalError
from helpers import serving_app

FIXTURE = Path(__file__).parent / "fixtures" / "retrieval"


@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    from medr1.retrieval.index import build_index, load_index

    corpus = tmp_path_factory.mktemp("corpus")
    shutil.copy(FIXTURE / "docs.jsonl", corpus / "docs.jsonl")
    return load_index(build_index(corpus, "bm25", tmp_path_factory.mktemp("idx") / "bm25", show_progress=False))


@pytest.fixture(scope="module")
def client(bm25):
    from medr1.retrieval.service import create_app

    return TestClient(create_app(bm25))


GOOD = {"queries": ["Kayser-Fleischer rings tremor", "seizures"], "topk": 2, "return_scores": True}


def assert_still_serving(client) -> None:
    res = client.post("/retrieve", json=GOOD)
    assert res.status_code == 200
    assert res.json()["result"][0][0]["document"]["id"] == "OMIM:277900"


def test_contract_with_scores(client):
    res = client.post("/retrieve", json=GOOD)
    assert res.status_code == 200
    result = res.json()["result"]
    assert len(result) == 2 and all(len(row) == 2 for row in result)
    first = result[0][0]
    assert set(first) == {"document", "score"}
    assert set(first["document"]) == {"id", "title", "contents"}
    assert first["document"]["id"] == "OMIM:277900" and result[1][0]["document"]["id"] == "HP:0001250"
    assert first["document"]["contents"].startswith("Wilson disease\n")
    assert isinstance(first["score"], float) and first["score"] >= result[0][1]["score"]


def test_contract_without_scores_is_a_list_of_documents(client):
    res = client.post("/retrieve", json={**GOOD, "return_scores": False})
    assert res.status_code == 200
    row = res.json()["result"][0]
    assert set(row[0]) == {"id", "title", "contents"} and row[0]["id"] == "OMIM:277900"


def test_topk_and_return_scores_default_like_search_r1(client):
    res = client.post("/retrieve", json={"queries": ["syndrome anemia disease"]})
    assert res.status_code == 200
    row = res.json()["result"][0]
    assert len(row) == 3 and "document" not in row[0]  # default topk 3, return_scores false
    assert client.post("/retrieve", json={"queries": ["anemia"], "topk": None}).status_code == 200


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["kind"] == "bm25" and body["docs"] == 32
    assert body["max_topk"] == 100 and body["max_query_chars"] == MAX_QUERY_CHARS


BAD_REQUESTS = [
    ("empty query", json.dumps({"queries": [""], "topk": 3}).encode(), 422, "query 0 is empty"),
    ("whitespace query", json.dumps({"queries": ["ok", " \t\n "], "topk": 3}).encode(), 422, "query 1 is empty"),
    ("10,000-char query", json.dumps({"queries": ["fever " * 1667], "topk": 3}).encode(), 422, "too long"),
    ("non-UTF-8 body", b'{"queries": ["caf\xe9 \xff"], "topk": 3}', 400, "not valid UTF-8"),
    ("topk 0", json.dumps({"queries": ["fever"], "topk": 0}).encode(), 422, "topk must be"),
    ("topk negative", json.dumps({"queries": ["fever"], "topk": -5}).encode(), 422, "topk must be"),
    ("topk huge", json.dumps({"queries": ["fever"], "topk": 10**12}).encode(), 422, "topk must be"),
    ("topk string", json.dumps({"queries": ["fever"], "topk": "5"}).encode(), 422, "topk must be"),
    ("topk float", json.dumps({"queries": ["fever"], "topk": 2.5}).encode(), 422, "topk must be"),
    ("topk bool", json.dumps({"queries": ["fever"], "topk": True}).encode(), 422, "topk must be"),
    ("malformed JSON", b'{"queries": ["fever"', 400, "not valid JSON"),
    ("empty body", b"", 400, "not valid JSON"),
    ("JSON array", b'["fever"]', 400, "must be a JSON object"),
    ("missing queries", json.dumps({"topk": 3}).encode(), 422, "missing field 'queries'"),
    ("queries is a string", json.dumps({"queries": "fever"}).encode(), 422, "must be a list"),
    ("query not a string", json.dumps({"queries": ["fever", 7]}).encode(), 422, "query 1 is not a string"),
    ("no queries", json.dumps({"queries": []}).encode(), 422, "queries is empty"),
    ("misspelt field", json.dumps({"queries": ["fever"], "top_k": 3}).encode(), 422, "unknown field"),
    ("return_scores not bool", json.dumps({"queries": ["fever"], "return_scores": "yes"}).encode(), 422,
     "return_scores"),
    ("too many queries", json.dumps({"queries": ["fever"] * 1025}).encode(), 422, "too many queries"),
]


@pytest.mark.parametrize("name,body,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_4xx_with_message_and_service_keeps_serving(client, name, body, status, message):
    res = client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert res.status_code == status, res.text
    assert message in res.json()["error"]
    assert_still_serving(client)


def test_wrong_method_and_path_answer_in_the_same_error_shape(client):
    res = client.get("/retrieve")
    assert res.status_code == 405 and "error" in res.json()
    res = client.post("/search", json=GOOD)
    assert res.status_code == 404 and "error" in res.json()
    assert_still_serving(client)


def test_oversized_body_is_refused_with_413(bm25):
    from medr1.retrieval.service import create_app

    small = TestClient(create_app(bm25, max_body_bytes=200))
    res = small.post("/retrieve", json={"queries": ["fever " * 100]})
    assert res.status_code == 413 and "exceeds the limit" in res.json()["error"]
    assert small.post("/retrieve", json={"queries": ["fever"]}).status_code == 200


class CountingRetriever:
    """A fake retriever that records its calls and can be told to fail."""

    kind = "fake"
    num_docs = 1

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.fail_with = fail_with

    def search(self, queries, k=5):
        self.calls.append((list(queries), k))
        if self.fail_with is not None:
            raise self.fail_with
        return [[Hit(Document(id=f"d{i}", title=f"T{i}", text=q), float(k))] for i, q in enumerate(queries)]


def test_a_batch_is_answered_in_one_search_call():
    from medr1.retrieval.service import create_app

    fake = CountingRetriever()
    res = TestClient(create_app(fake)).post("/retrieve", json={"queries": [f"q{i}" for i in range(7)], "topk": 4})
    assert res.status_code == 200 and len(res.json()["result"]) == 7
    assert fake.calls == [([f"q{i}" for i in range(7)], 4)]


def test_a_failing_backend_gives_500_with_reason_then_recovers():
    from medr1.retrieval.service import create_app

    fake = CountingRetriever(fail_with=RuntimeError("disk on fire"))
    tc = TestClient(create_app(fake))
    res = tc.post("/retrieve", json={"queries": ["q"]})
    assert res.status_code == 500 and "disk on fire" in res.json()["error"]
    fake.fail_with = None
    assert tc.post("/retrieve", json={"queries": ["q"]}).status_code == 200
    assert tc.get("/health").json()["errors"] == 1


# ------------------------------------------------------------------------------------------------ client


def search_r1_answer(n_queries: int, with_scores: bool = True) -> dict:
    doc = {"id": "OMIM:1", "title": "Disease one", "contents": "Disease one\nfinding a; finding b"}
    return {"result": [[{"document": doc, "score": 2.5}] if with_scores else [doc] for _ in range(n_queries)]}


class FlakyHandler:
    """A fake service: the first `failures` calls fail (`mode`), then it answers correctly."""

    def __init__(self, failures: int, mode: str) -> None:
        self.failures = failures
        self.mode = mode
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.failures:
            if self.mode == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if self.mode == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(503, json={"error": "warming up"})
        n = len(json.loads(request.content)["queries"])
        return httpx.Response(200, json=search_r1_answer(n))


@pytest.mark.parametrize("mode", ["connect", "timeout", "503"])
def test_client_retries_transient_failures(mode):
    from medr1.retrieval.client import RetrieverClient

    handler = FlakyHandler(failures=2, mode=mode)
    client = RetrieverClient("http://svc:1", retries=3, backoff=0.0, transport=httpx.MockTransport(handler))
    hits = client.search(["a", "b"], k=1)
    assert handler.calls == 3
    assert len(hits) == 2 and hits[0][0].doc.id == "OMIM:1" and hits[0][0].score == 2.5
    assert hits[0][0].doc.title == "Disease one" and hits[0][0].doc.text == "finding a; finding b"


def test_client_gives_a_clear_error_after_the_last_retry(monkeypatch):
    from medr1.retrieval import client as client_mod

    slept: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", slept.append)
    handler = FlakyHandler(failures=100, mode="connect")
    client = client_mod.RetrieverClient("http://svc:1/retrieve", retries=2, backoff=0.01,
                                        transport=httpx.MockTransport(handler))
    with pytest.raises(RetrievalError, match=r"failed after 3 attempts; last error: ConnectError"):
        client.search(["a"], k=1)
    assert handler.calls == 3 and slept == [0.01, 0.02]  # exponential backoff between the three attempts


def test_client_does_not_retry_a_4xx_and_reports_the_server_message():
    from medr1.retrieval.client import RetrieverClient

    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(422, json={"error": "query 0 is empty or whitespace only"})

    client = RetrieverClient("http://svc:1", retries=3, backoff=0.0, transport=httpx.MockTransport(handler))
    with pytest.raises(RetrievalError, match="HTTP 422.*query 0 is empty"):
        client.search([" "], k=1)
    assert len(calls) == 1


def test_client_reads_search_r1_answers_without_scores_or_titles():
    from medr1.retrieval.client import hit_from_json

    hit = hit_from_json({"id": "7", "contents": "\"Title\"\nbody text"}, "test")
    assert hit.doc.title == '"Title"' and hit.doc.text == "body text" and hit.score == 0.0
    with pytest.raises(RetrievalError, match="malformed document"):
        hit_from_json({"document": {"id": "x"}}, "test")


def test_client_refuses_an_answer_of_the_wrong_shape():
    from medr1.retrieval.client import RetrieverClient

    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"result": []}))
    with pytest.raises(RetrievalError, match="expected"):
        RetrieverClient("http://svc:1", transport=transport).search(["a"], 1)


@contextmanager
def serving(retriever):
    """A real uvicorn server for `retriever` on a free loopback port, for the block: yields its base URL."""
    from medr1.retrieval.service import create_app

    with serving_app(create_app(retriever)) as url:
        yield url


def test_service_under_concurrent_good_and_bad_requests(bm25):
    """16 clients x 50 requests on a real server, a third of them malformed: no server error, every good answer
    equals the answer to the same request sent alone, every bad one is a 4xx, and the counters add up."""
    from concurrent.futures import ThreadPoolExecutor

    goods = [json.dumps({"queries": q, "topk": k}).encode() for q, k in (
        (["Kayser-Fleischer rings"], 3), (["seizures", "spider fingers"], 2), (["tall stature", "the of and"], 5))]
    bads = [b"{not json", json.dumps({"topk": 3}).encode(), json.dumps({"queries": ["x"], "topk": 10**6}).encode(),
            b"\xff\xfe", json.dumps({"queries": "seizures"}).encode()]
    with serving(bm25) as url, httpx.Client(base_url=url, timeout=30) as alone:
        expected = {body: alone.post("/retrieve", content=body).json() for body in goods}
        before = alone.get("/health").json()

        def client(worker: int) -> list[tuple[bytes, int, object]]:
            out = []
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(50):
                    body = bads[(worker + i) % len(bads)] if i % 3 == 2 else goods[(worker + i) % len(goods)]
                    r = c.post("/retrieve", content=body)
                    out.append((body, r.status_code, r.json()))
            return out

        with ThreadPoolExecutor(16) as pool:
            results = [row for rows in pool.map(client, range(16)) for row in rows]
        after = alone.get("/health").json()
    assert len(results) == 800 and all(status < 500 for _, status, _ in results)
    good = [(b, st, js) for b, st, js in results if b in expected]
    bad = [(b, st, js) for b, st, js in results if b not in expected]
    assert all(st == 200 and js == expected[b] for b, st, js in good)
    assert all(400 <= st < 500 and "error" in js for _, st, js in bad)
    assert after["requests"] - before["requests"] == len(good)
    assert after["bad_requests"] - before["bad_requests"] == len(bad) and after["errors"] == before["errors"] == 0
    assert after["queries"] - before["queries"] == sum(len(json.loads(b)["queries"]) for b, _, _ in good)


def test_client_against_a_real_server_matches_in_process_results(bm25):
    from medr1.retrieval.client import RetrieverClient

    with serving(bm25) as url:
        queries = ["Kayser-Fleischer rings", "seizures", "the of and"]
        with RetrieverClient(url, timeout=5) as client:
            remote = client.search(queries, k=3)
            assert client.health()["docs"] == 32
            with pytest.raises(RetrievalError, match="HTTP 422"):
                client.search(["x" * (MAX_QUERY_CHARS + 1)], 3)
        local = bm25.search(queries, 3)
        def fields(rows):  # the contract carries id, title and contents (not the source tag)
            return [[(h.doc.id, h.doc.title, h.doc.text) for h in row] for row in rows]

        assert fields(remote) == fields(local)
        assert [h.score for row in remote for h in row] == pytest.approx([h.score for row in local for h in row])


def test_readiness_probes_a_search(bm25):
    from medr1.retrieval.service import create_app

    assert TestClient(create_app(bm25)).get("/ready").json() == {"ready": True}

    class Broken:
        def search(self, queries, k=5):
            raise OSError("index file vanished")

    reply = TestClient(create_app(Broken())).get("/ready")
    assert reply.status_code == 503 and "index file vanished" in reply.json()["error"]


def test_two_uvicorn_workers_serve_the_same_index(tmp_path):
    """`serve-retriever --workers 2`: two processes on one port, each loading the index; both answer alike."""
    import subprocess
    import sys

    from helpers import free_port

    from medr1.retrieval.index import build_index

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(FIXTURE / "docs.jsonl", corpus / "docs.jsonl")
    index = build_index(corpus, "bm25", tmp_path / "idx", show_progress=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medr1.cli", "serve-retriever", "--index", str(index), "--port",
                             str(port), "--workers", "2", "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"no ready worker: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")
        body = {"queries": ["arachnodactyly ectopia lentis"], "topk": 2}
        answers = {json.dumps(httpx.post(url + "/retrieve", json=body).json()) for _ in range(20)}
        assert len(answers) == 1  # every worker gives the same answer
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_service_of_an_opened_index_answers_candidate_queries(bm25, monkeypatch):
    """`medr1 serve-retriever` opens its index with `open_retriever` (here through the worker factory), so a client
    such as verl's search tool gets the candidate search: only the named diseases, best first."""
    from medr1.retrieval.service import INDEX_ENV, app_from_env

    monkeypatch.setenv(INDEX_ENV, str(bm25.index_dir))
    client = TestClient(app_from_env())
    body = {"queries": ["Kayser-Fleischer rings, tremor | among: Marfan syndrome; Wilson disease; Fabry disease",
                        "Kayser-Fleischer rings, tremor"], "topk": 5}
    res = client.post("/retrieve", json=body)
    assert res.status_code == 200
    named, plain = ([d["id"] for d in row] for row in res.json()["result"])
    assert named[0] == "OMIM:277900" and sorted(named) == ["OMIM:154700", "OMIM:277900", "OMIM:301500"]
    assert set(plain) - set(named)  # the plain query ranks the whole corpus
