"""An OpenAI-compatible model server (FastAPI) for any medr1 model: plain chat, or a method of the method table
(self-ask with retrieval inside, rag, cot) behind the same endpoint.

    medr1 serve --model smollm2-135m                        # plain chat completions
    medr1 serve --model runs/quickstart/sft/final --method self-ask --index indexes/hpo-bm25 --port 8001

    curl -s localhost:8001/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"model": "medr1", "messages": [{"role": "user", "content": "Tall stature, arachnodactyly, ectopia lentis"}]}'

    from openai import OpenAI
    OpenAI(base_url="http://127.0.0.1:8001/v1", api_key="none").chat.completions.create(model="medr1", messages=[...])

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health` (liveness, counters), `GET /ready`.

- Plain mode renders the messages with the model's chat template and generates (`max_tokens`, `temperature`,
  `top_p`, `stop`, `seed` honoured).
- Method mode takes the last user message as the case and runs the method under the server's budget (the recipe's
  `rollout:` section, so a served answer is what `medr1 eval` measures; `max_tokens` is not used). A medr1 extension
  field `options` ({"A": "...", ...}) makes it a multiple-choice question. The reply's `content` is the whole
  trajectory (reasoning, searches, evidence, answer); the extra field `medr1` holds the answer, the queries, the
  retrieved titles, the turns and the finish reason.

Concurrency is bounded: requests wait in one queue (at most `max_pending`; beyond that 503 with Retry-After) and a
single worker thread takes up to `max_batch` requests with the same sampling settings into one engine call, so
concurrent clients are batched into the generation engine. Bad requests get 4xx with {"error": {"message": ...}}
(OpenAI's error shape); the server keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medr1.retrieval.service import BadRequest, body_dependency, parse_json_object

ROLES = ("system", "user", "assistant")
MAX_STOPS = 4
# Fields an OpenAI client may send; the ones medr1 does not implement are accepted only at their neutral value.
FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n",
          "stream", "user", "options", "frequency_penalty", "presence_penalty", "logprobs", "response_format"}
# response_format: decoding is never constrained to JSON here, so only plain text is served (a JSON judge needs an
# engine with guided decoding, e.g. a vLLM server)
NEUTRAL = {"n": 1, "stream": False, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False,
           "response_format": {"type": "text"}}


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions body."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int = 0
    options: dict[str, str] = field(default_factory=dict)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys share one engine call (one sampling setting and seed per call; greedy requests
        batch whatever their seed)."""
        return (self.temperature, self.top_p, self.stop, self.seed if self.temperature > 0 else 0)

    @property
    def case(self) -> str:
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length", as OpenAI spells them
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any] | None = None  # method mode: the trace


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(422, f"{where}.content[{j}]: only text parts are served (type {kind!r}); image "
                                      "input needs a VLM")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest(422, f"{where}.content must be a string or a list of text parts")


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest(422, "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise BadRequest(422, f"messages[{i}] must be an object with role in {list(ROLES)} and content")
        out.append({"role": m["role"], "content": _message_text(m["content"], f"messages[{i}]")})
    if not any(m["role"] == "user" for m in out):
        raise BadRequest(422, "'messages' has no user message")
    return tuple(out)


def _number(obj: dict, key: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(422, f"'{key}' must be {kind} in [{low}, {high}], got {value!r}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(422, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them")
    return tuple(stops)


def _options(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (not isinstance(value, dict) or len(value) < 2
            or not all(isinstance(k, str) and len(k) == 1 and k.isalpha() and k.isupper() and isinstance(v, str)
                       and v.strip() for k, v in value.items())):
        raise BadRequest(422, "'options' must map at least two capital letters to option texts, e.g. "
                              '{"A": "Marfan syndrome", "B": "Homocystinuria"}')
    return dict(sorted(value.items()))


def parse_chat_request(body: bytes, model_name: str, max_tokens_limit: int, default_max_tokens: int) -> ChatRequest:
    """Validate a /v1/chat/completions body; raises BadRequest (status, message)."""
    obj = parse_json_object(body)
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; served fields: {sorted(FIELDS)}")
    for key, neutral in NEUTRAL.items():
        if obj.get(key) not in (None, neutral):
            raise BadRequest(422, f"'{key}'={obj[key]!r} is not supported (only {neutral!r})")
    if obj.get("model") not in (None, model_name):
        raise BadRequest(404, f"model {obj.get('model')!r} is not served here; this server serves {model_name!r}")
    limit = obj.get("max_completion_tokens", obj.get("max_tokens"))
    return ChatRequest(
        messages=_messages(obj.get("messages")),
        max_tokens=_number({"max_tokens": limit}, "max_tokens", default_max_tokens, 1, max_tokens_limit, True),
        temperature=float(_number(obj, "temperature", 0.0, 0.0, 2.0)),
        top_p=float(_number(obj, "top_p", 1.0, 1e-6, 1.0)),
        stop=_stops(obj.get("stop")),
        seed=int(_number(obj, "seed", 0, 0, 2**31 - 1, True)),
        options=_options(obj.get("options")),
    )


# ---------------------------------------------------------------------------------------------------------------------
# engines: a batch of requests with one batch_key -> completions
# ---------------------------------------------------------------------------------------------------------------------


class PlainEngine:
    """Chat template + the generation backend (medr1's HF engine with its prefix KV cache, or vLLM)."""

    def __init__(self, loaded: Any, backend: Any) -> None:
        self.loaded = loaded
        self.backend = backend

    def __call__(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        from medr1.generation import SamplingParams
        from medr1.models import chat_prompt_ids

        prompts = [chat_prompt_ids(self.loaded, list(r.messages)) for r in requests]
        first = requests[0]
        sampling = SamplingParams(temperature=first.temperature, top_p=first.top_p,
                                  seeds=tuple(r.seed for r in requests))
        outs = self.backend.generate(prompts, [r.max_tokens for r in requests], first.stop, sampling)
        tok = self.loaded.tokenizer
        return [Completion(tok.decode(o.token_ids, skip_special_tokens=True) + (o.stop or ""),
                           "length" if o.finish == "length" else "stop", len(p), len(o.token_ids))
                for p, o in zip(prompts, outs)]


class MethodEngine:
    """A method of the method table (self-ask, rag, cot) under the server's budget, as `medr1 eval` runs it."""

    def __init__(self, loaded: Any, cfg: Any, retriever: Any, backend: Any = None, generator: Any = None) -> None:
        self.loaded, self.cfg, self.retriever, self.backend, self.generator = loaded, cfg, retriever, backend, generator

    def __call__(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        from medr1.data.schema import Question
        from medr1.evaluate import llm_batch

        questions = [Question(id=f"serve-{i}", question=r.case.strip(), options=r.options, answer="", source="serve")
                     for i, r in enumerate(requests)]
        cfg = dataclasses.replace(self.cfg, temperature=requests[0].temperature, top_p=requests[0].top_p)
        records = llm_batch(questions, cfg, self.loaded, self.retriever, seed=requests[0].seed, backend=self.backend,
                            generator=self.generator)
        # usage counts the generated tokens only: a trajectory's prompt grows with every search
        return [Completion(rec["completion"], "length" if rec["finish_reason"] in CUT_OFF else "stop",
                           0, int(rec["n_generated"]), _trace(rec)) for rec in records]


CUT_OFF = ("budget", "max_turns", "forced")  # the budget ended the reply (a forced answer included)


def _trace(rec: dict) -> dict[str, Any]:
    keys = ("method", "prediction", "queries", "retrieved_ids", "retrieved_titles", "turns", "finish_reason",
            "tool_errors")
    return {key: rec[key] for key in keys}


# ---------------------------------------------------------------------------------------------------------------------
# the batching queue
# ---------------------------------------------------------------------------------------------------------------------


class Busy(Exception):
    pass


class Batcher:
    """One worker thread runs `engine` on batches of queued requests that share a batch_key (oldest first)."""

    def __init__(self, engine: Callable[[Sequence[ChatRequest]], list[Completion]], max_batch: int = 8,
                 max_pending: int = 64, wait_s: float = 0.01) -> None:
        self.engine, self.max_batch, self.max_pending, self.wait_s = engine, max_batch, max_pending, wait_s
        self.pending: list[tuple[ChatRequest, concurrent.futures.Future]] = []
        self.cond = threading.Condition()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "errors": 0}
        self.worker = threading.Thread(target=self._work, name="medr1-serve-engine", daemon=True)
        self.worker.start()

    def submit(self, request: ChatRequest) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            if len(self.pending) >= self.max_pending:
                raise Busy(f"server busy: {len(self.pending)} requests queued (max_pending {self.max_pending})")
            self.pending.append((request, future))
            self.cond.notify()
        return future

    def _take(self) -> list[tuple[ChatRequest, concurrent.futures.Future]]:
        with self.cond:
            while not self.pending:
                self.cond.wait()
        time.sleep(self.wait_s)  # let concurrent requests arrive and join the batch
        with self.cond:
            key = self.pending[0][0].batch_key
            batch = [item for item in self.pending if item[0].batch_key == key][: self.max_batch]
            taken = {id(item[1]) for item in batch}
            self.pending = [item for item in self.pending if id(item[1]) not in taken]
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            self.stats["batches"] += 1
            self.stats["requests"] += len(batch)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                results = self.engine([r for r, _ in batch])
            except Exception as exc:  # every waiting client gets a 500 with the reason; the server goes on
                self.stats["errors"] += 1
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)


# ---------------------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    model_name: str = "medr1"
    method: str | None = None  # None = plain chat
    max_batch: int = 8
    max_pending: int = 64
    max_tokens: int = 2048  # the largest max_tokens a plain request may ask
    default_max_tokens: int = 256
    max_body_bytes: int = 4 * 1024 * 1024


def create_app(engine: Callable[[Sequence[ChatRequest]], list[Completion]], cfg: ServeConfig = ServeConfig()) -> Any:
    """The FastAPI app around `engine` (a PlainEngine, a MethodEngine, or a test's scripted one)."""
    app = FastAPI(title="medr1 model server", description="OpenAI-compatible chat completions")
    batcher = Batcher(engine, cfg.max_batch, cfg.max_pending)
    started = int(time.time())

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}},
                            headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Any, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.post("/v1/chat/completions")
    async def chat(body: bytes = body_dependency(cfg.max_body_bytes)) -> Any:
        try:
            req = parse_chat_request(body, cfg.model_name, cfg.max_tokens, cfg.default_max_tokens)
            if cfg.method and not req.case.strip():
                raise BadRequest(422, f"the last user message is the case for {cfg.method}; it is empty")
            future = batcher.submit(req)
        except BadRequest as exc:
            return error(exc.status, exc.message)
        except Busy as exc:
            return error(503, str(exc), {"Retry-After": "1"})
        try:
            done = await asyncio.wrap_future(future)
        except Exception as exc:
            return error(500, f"generation failed: {type(exc).__name__}: {exc}")
        return completion_json(done, cfg.model_name)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": started,
                                            "owned_by": "medr1"}]}

    @app.get("/ready")
    def ready() -> Any:
        if not batcher.worker.is_alive():
            return JSONResponse(status_code=503, content={"ready": False, "error": "the engine worker has stopped"})
        return {"ready": True}

    @app.get("/health")
    def health() -> dict[str, Any]:
        with batcher.cond:
            queued = len(batcher.pending)
        return {"status": "ok", "model": cfg.model_name, "method": cfg.method, "queued": queued, **batcher.stats}

    return app


def completion_json(done: Completion, model_name: str) -> dict[str, Any]:
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                     "finish_reason": done.finish_reason}],
        "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                  "total_tokens": done.prompt_tokens + done.completion_tokens},
    }
    if done.extra is not None:
        body["medr1"] = done.extra
    return body


def build_engine(eval_cfg: Any, method: str | None) -> Callable[[Sequence[ChatRequest]], list[Completion]]:
    """Load the model (and, for a retrieving method, the index) that `eval_cfg` names."""
    from medr1.evaluate import _load_model, _open_retriever
    from medr1.methods import get_method
    from medr1.rollout import make_backend

    if eval_cfg.num_threads:
        import torch

        torch.set_num_threads(eval_cfg.num_threads)
    loaded = _load_model(eval_cfg)
    backend = make_backend(loaded, eval_cfg.backend)
    if method is None:
        return PlainEngine(loaded, backend)
    spec = get_method(method, "--method")
    if not spec.llm:
        from medr1.errors import ConfigError

        raise ConfigError(f"--method {method}: not an LLM method; serve one of cot, rag, self-ask (or none)")
    retriever = _open_retriever(eval_cfg.index) if spec.retrieves else None
    return MethodEngine(loaded, dataclasses.replace(eval_cfg, method=method), retriever, backend)


def serve(engine: Callable[[Sequence[ChatRequest]], list[Completion]], cfg: ServeConfig, host: str = "127.0.0.1",
          port: int = 8001, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(create_app(engine, cfg), host=host, port=port, log_level=log_level, access_log=False)
