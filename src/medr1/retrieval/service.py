"""The retrieval HTTP service (FastAPI) in Search-R1's contract, so external trainers can use it and our rollout can
use theirs.

    POST /retrieve  {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}
        -> 200 {"result": [[{"document": {"id", "title", "contents"}, "score": 12.3}, ...], ...]}
       with "return_scores": false (Search-R1's default) each inner list holds the documents themselves:
        -> 200 {"result": [[{"id", "title", "contents"}, ...], ...]}
    GET /health -> 200 {"status": "ok", "kind": "bm25", "docs": 32000, ...}   (liveness and counters)
    GET /ready  -> 200 {"ready": true} once a probe search answers, else 503 {"ready": false, "error": ...}

As in Search-R1, "topk" and "return_scores" may be omitted (defaults: the server's default topk, false); "queries"
is required. `contents` is "title\\ntext", which Search-R1's prompt code splits back into title and text.

Bad requests get a 4xx answer with {"error": "<message>"} and the service keeps serving:
  400  body is not UTF-8, not JSON, or not a JSON object
  413  body larger than max_body_bytes
  422  a missing/unknown/mistyped field, an empty or whitespace-only query, a query over max_query_chars
       (4096 by default: such "queries" are runaway generations, refused rather than silently truncated),
       topk <= 0 or > max_topk (100), more than 1024 queries
All queries of one request are answered by one batched `search` call.

    medr1 serve-retriever --index indexes/hpo-bm25 --port 8000
    curl -s localhost:8000/retrieve -d '{"queries": ["arachnodactyly"], "topk": 3, "return_scores": true}'
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medr1.retrieval.base import MAX_QUERY_CHARS, MAX_TOPK, Hit, RetrievalError, Retriever, validate_request

ALLOWED_FIELDS = {"queries", "topk", "return_scores"}
DEFAULT_TOPK = 3
MAX_BODY_BYTES = 8 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or BadRequest(400) saying why not (also `medr1.serve`'s first check)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_request(body: bytes, default_topk: int = DEFAULT_TOPK, max_topk: int = MAX_TOPK,
                  max_query_chars: int = MAX_QUERY_CHARS) -> tuple[list[str], int, bool]:
    """Validate a /retrieve body; returns (queries, topk, return_scores) or raises BadRequest."""
    obj = parse_json_object(body)
    unknown = set(obj) - ALLOWED_FIELDS
    if unknown:
        raise BadRequest(422, f"unknown field(s) {sorted(unknown)}; expected {sorted(ALLOWED_FIELDS)}")
    if "queries" not in obj:
        raise BadRequest(422, "missing field 'queries' (a list of query strings)")
    queries = obj["queries"]
    if not isinstance(queries, list):
        raise BadRequest(422, f"'queries' must be a list of strings, got {type(queries).__name__}")
    topk = obj.get("topk")
    topk = default_topk if topk is None else topk
    return_scores = obj.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(422, f"'return_scores' must be true or false, got {return_scores!r}")
    try:
        validate_request(queries, topk, max_chars=max_query_chars, max_k=max_topk)
    except RetrievalError as exc:
        raise BadRequest(422, str(exc)) from None
    return queries, topk, return_scores


def document_json(hit: Hit) -> dict[str, str]:
    return {"id": hit.doc.id, "title": hit.doc.title, "contents": hit.doc.contents}


def format_result(hits: list[list[Hit]], return_scores: bool) -> dict[str, Any]:
    if return_scores:
        return {"result": [[{"document": document_json(h), "score": h.score} for h in row] for row in hits]}
    return {"result": [[document_json(h) for h in row] for row in hits]}


def create_app(retriever: Retriever, default_topk: int = DEFAULT_TOPK, max_topk: int = MAX_TOPK,
               max_query_chars: int = MAX_QUERY_CHARS, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """A FastAPI app serving `retriever`. Search runs in FastAPI's thread pool (the endpoint is synchronous)."""
    app = FastAPI(title="medr1 retriever", description="Search-R1-compatible retrieval service")
    started = time.time()
    stats = {"requests": 0, "queries": 0, "bad_requests": 0, "errors": 0}
    stats_lock = threading.Lock()

    def count(**deltas: int) -> None:
        with stats_lock:
            for key, delta in deltas.items():
                stats[key] += delta

    def error(status: int, message: str) -> JSONResponse:
        count(**{"bad_requests" if status < 500 else "errors": 1})
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405 and the 413 of the body reader answer in the same {"error": ...} shape as everything else
        return error(exc.status_code, str(exc.detail))

    @app.post("/retrieve")
    def retrieve(body: bytes = body_dependency(max_body_bytes)) -> Any:
        try:
            queries, topk, return_scores = parse_request(body, default_topk, max_topk, max_query_chars)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        try:
            hits = retriever.search(queries, topk)
        except RetrievalError as exc:
            return error(422, str(exc))
        except Exception as exc:  # keep serving; the client sees a 500 with the reason and may retry
            return error(500, f"retrieval failed: {type(exc).__name__}: {exc}")
        count(requests=1, queries=len(queries))
        return format_result(hits, return_scores)

    @app.get("/ready")
    def ready() -> Any:
        # readiness (for an orchestrator): a one-document probe search answers; /health is liveness + counters
        try:
            retriever.search(["ready"], 1)
        except Exception as exc:
            return JSONResponse(status_code=503, content={"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return {"ready": True}

    @app.get("/health")
    def health() -> dict[str, Any]:
        meta = getattr(retriever, "meta", {}) or {}
        return {
            "status": "ok",
            "kind": getattr(retriever, "kind", type(retriever).__name__),
            "docs": getattr(retriever, "num_docs", None),
            "index": str(getattr(retriever, "index_dir", "")) or None,
            "corpus_sha256": meta.get("corpus", {}).get("sha256"),
            "max_topk": max_topk,
            "max_query_chars": max_query_chars,
            "uptime_s": round(time.time() - started, 1),
            **dict(stats),
        }

    return app


def body_dependency(max_body_bytes: int) -> Any:
    """A FastAPI dependency that reads the raw body, refusing oversized ones (413) before reading them whole."""
    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise HTTPException(413, f"request body of {declared} bytes exceeds the limit of {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise HTTPException(413, f"request body exceeds the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    return Depends(read_body)


INDEX_ENV = "MEDR1_SERVE_INDEX"  # how `--workers N` hands the index to each worker process


def app_from_env() -> Any:
    """The app factory uvicorn's worker processes call: each opens the index named in $MEDR1_SERVE_INDEX
    (memory-mapped, so N workers share its pages)."""
    import os

    from medr1.retrieval import open_retriever

    return create_app(open_retriever(os.environ.get(INDEX_ENV) or None))


def serve(retriever: Retriever | None, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          access_log: bool = False, workers: int = 1, index: str | None = None) -> None:
    """Run the service with uvicorn until interrupted. The per-request access log is off by default: under RL
    load it is thousands of lines a minute and costs throughput; errors are still logged. `workers` > 1 runs that
    many processes on one port (uvicorn's workers), each loading `index` itself."""
    import os

    import uvicorn

    if workers > 1:
        os.environ[INDEX_ENV] = index or ""
        uvicorn.run("medr1.retrieval.service:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=access_log)
        return
    uvicorn.run(create_app(retriever), host=host, port=port, log_level=log_level, access_log=access_log)
