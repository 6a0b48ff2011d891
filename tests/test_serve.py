"""The OpenAI-compatible model server: request validation, plain generation equal to the engine's, a method
(self-ask) behind the endpoint with its trace, batching of concurrent requests, bounded queue, the `openai` client.

    pytest tests/test_serve.py -q
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from helpers import serving_app, tiny_loaded
from test_evaluate import FakeRetriever, ScriptedLLM, load_fixture_docs

from medr1 import serve
from medr1.evaluate import EvalConfig

USER = [{"role": "user", "content": "Tall stature, arachnodactyly"}]


def _body(**kw) -> bytes:
    return json.dumps({"model": "medr1", "messages": USER, **kw}).encode()


@pytest.mark.parametrize("body, status, fragment", [
    (b"\xff", 400, "UTF-8"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1]", 400, "JSON object"),
    (_body(tools=[]), 422, "unknown field(s) ['tools']"),
    (_body(stream=True), 422, "'stream'=True is not supported"),
    (_body(n=2), 422, "'n'=2"),
    (_body(response_format={"type": "json_object"}), 422, "'response_format'"),  # decoding is not constrained
    (_body(model="gpt-4"), 404, "'gpt-4' is not served"),
    (json.dumps({"messages": []}).encode(), 422, "non-empty list"),
    (json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 422, "messages[0]"),
    (json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(), 422, "no user message"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}).encode(),
     422, "needs a VLM"),
    (_body(max_tokens=0), 422, "'max_tokens' must be an integer in [1, 64]"),
    (_body(max_tokens=1.5), 422, "'max_tokens' must be an integer"),
    (_body(temperature=-1), 422, "'temperature'"),
    (_body(top_p=0), 422, "'top_p'"),
    (_body(stop=["a", "b", "c", "d", "e"]), 422, "'stop'"),
    (_body(options={"A": "Marfan"}), 422, "'options'"),
    (_body(options={"a": "Marfan", "b": "Stickler"}), 422, "capital letters"),
])
def test_bad_requests_are_refused_with_the_reason(body, status, fragment) -> None:
    with pytest.raises(serve.BadRequest) as info:
        serve.parse_chat_request(body, "medr1", max_tokens_limit=64, default_max_tokens=16)
    assert info.value.status == status and fragment in info.value.message


def test_a_good_request_parses_with_defaults_and_text_parts() -> None:
    body = json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": [{"type": "text", "text": "fever, "},
                                                                 {"type": "text", "text": "rash"}]}],
                       "max_completion_tokens": 5, "stop": "</answer>", "options": {"B": "y", "A": "x"}}).encode()
    req = serve.parse_chat_request(body, "medr1", 64, 16)
    assert req.case == "fever, rash" and req.max_tokens == 5 and req.stop == ("</answer>",)
    assert req.temperature == 0.0 and list(req.options) == ["A", "B"]
    assert serve.parse_chat_request(_body(), "medr1", 64, 16).max_tokens == 16
    assert serve.parse_chat_request(_body(response_format={"type": "text"}), "medr1", 64, 16).max_tokens == 16


@pytest.fixture(scope="module")
def plain():
    from medr1.rollout import make_backend

    loaded = tiny_loaded(seed=3)
    return loaded, serve.PlainEngine(loaded, make_backend(loaded, "hf"))


def test_plain_completion_equals_the_engine_s_greedy_output(plain) -> None:
    from medr1.generation import SamplingParams
    from medr1.models import chat_prompt_ids

    loaded, engine = plain
    client = TestClient(serve.create_app(engine, serve.ServeConfig(max_tokens=64)))
    reply = client.post("/v1/chat/completions", content=_body(max_tokens=12))
    assert reply.status_code == 200, reply.text
    out = reply.json()
    prompt = chat_prompt_ids(loaded, USER)
    direct = engine.backend.generate([prompt], 12, (), SamplingParams())[0]
    assert out["choices"][0]["message"] == {"role": "assistant",
                                            "content": loaded.tokenizer.decode(direct.token_ids, skip_special_tokens=True)}
    assert out["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(direct.token_ids),
                            "total_tokens": len(prompt) + len(direct.token_ids)}
    assert out["choices"][0]["finish_reason"] == ("length" if direct.finish == "length" else "stop")
    assert out["object"] == "chat.completion" and "medr1" not in out
    assert client.get("/v1/models").json()["data"][0]["id"] == "medr1"
    assert client.get("/ready").json() == {"ready": True}
    bad = client.post("/v1/chat/completions", content=_body(max_tokens=65))
    assert bad.status_code == 422 and "max_tokens" in bad.json()["error"]["message"]
    assert client.get("/health").json()["requests"] == 1  # the refused request never reached the engine


def test_self_ask_behind_the_endpoint_returns_the_trace() -> None:
    llm = ScriptedLLM({"s1": "<think>fits</think><search>tall stature</search><answer>B</answer>"},
                      searches={"s1": ["tall stature"]})
    cfg = EvalConfig(method="self-ask", out="-", max_turns=2)
    engine = serve.MethodEngine(object(), cfg, FakeRetriever(load_fixture_docs()), generator=llm)
    client = TestClient(serve.create_app(engine, serve.ServeConfig(method="self-ask")))
    messages = [{"role": "user", "content": "[s1] Tall stature, arachnodactyly, ectopia lentis"}]
    out = client.post("/v1/chat/completions", json={"messages": messages,
                                                    "options": {"A": "Stickler syndrome", "B": "Marfan syndrome"}}).json()
    assert out["choices"][0]["message"]["content"].endswith("<answer>B</answer>")
    assert out["medr1"]["prediction"] == "B" and out["medr1"]["queries"] == ["tall stature"]
    assert out["medr1"]["retrieved_titles"] == [["Marfan syndrome"]] and out["medr1"]["method"] == "self-ask"
    assert "B. Marfan syndrome" in llm.messages[-1][-1]["content"]  # the options reached the method's prompt
    assert llm.calls[-1]["cfg"].max_turns == 2  # the server's budget, not the request's
    empty = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "  "}]})
    assert empty.status_code == 422 and "it is empty" in empty.json()["error"]["message"]


class Recording:
    """An engine that records its batch sizes and can be held closed (to fill the queue)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, requests):
        self.gate.wait(10)
        self.sizes.append(len(requests))
        return [serve.Completion(f"echo {r.case}", "stop", 1, 2) for r in requests]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer() -> None:
    engine = Recording()
    engine.gate.clear()
    client = TestClient(serve.create_app(engine, serve.ServeConfig(max_batch=4)))

    def ask(i: int) -> str:
        body = {"messages": [{"role": "user", "content": f"case {i}"}]}
        return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, i) for i in range(8)]
        threading.Timer(0.3, engine.gate.set).start()
        answers = [f.result() for f in futures]
    assert answers == [f"echo case {i}" for i in range(8)]
    assert sum(engine.sizes) == 8 and max(engine.sizes) == 4 and len(engine.sizes) < 8


def _wait_for(client, key: str, value: int) -> None:
    for _ in range(200):
        if client.get("/health").json()[key] == value:
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"/health never showed {key}={value}")


def test_a_full_queue_answers_503_and_the_server_goes_on() -> None:
    engine = Recording()
    engine.gate.clear()
    client = TestClient(serve.create_app(engine, serve.ServeConfig(max_batch=1, max_pending=1)))
    body = {"messages": USER}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/chat/completions", json=body)
        _wait_for(client, "batches", 1)  # the first is inside the (held) engine
        queued = pool.submit(client.post, "/v1/chat/completions", json=body)
        _wait_for(client, "queued", 1)
        refused = client.post("/v1/chat/completions", json=body)
        engine.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "server busy: 1 requests queued" in refused.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_an_engine_failure_is_a_500_and_the_next_request_is_served() -> None:
    calls = []

    def flaky(requests):
        calls.append(len(requests))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return [serve.Completion("ok", "stop", 1, 1) for _ in requests]

    client = TestClient(serve.create_app(flaky, serve.ServeConfig(max_body_bytes=200)))
    big = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 300}]})
    assert big.status_code == 413 and "exceeds the limit of 200" in big.json()["error"]["message"]
    first = client.post("/v1/chat/completions", json={"messages": USER})
    assert first.status_code == 500 and "RuntimeError: out of memory" in first.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 200


def test_the_openai_client_talks_to_the_server_on_loopback() -> None:
    from openai import BadRequestError, OpenAI, UnprocessableEntityError

    with serving_app(serve.create_app(Recording())) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="medr1", messages=USER, max_tokens=8)
        assert reply.choices[0].message.content == f"echo {USER[0]['content']}"
        assert reply.usage.total_tokens == 3
        assert [m.id for m in client.models.list()] == ["medr1"]
        with pytest.raises((BadRequestError, UnprocessableEntityError)):
            client.chat.completions.create(model="medr1", messages=USER, temperature=5)
