"""The OpenAI-compatible HTTP API on the real backend and vLLM CPU engine (tiny random Llama).

One backend for the module, started here so the first test watches it load: an API key, a cap
of 2 calls in flight shared with gRPC. The official `openai` client for what a client does;
plain httpx for the error cases. The last test drains it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from support.backend_process import SERVING, BackendProcess
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

KEY = "test-key-3f9a"
MODEL = "tiny"
NO_EOS = {"0": -100}  # tiny_model's "<|end|>", the first special token
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def backend(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    process = BackendProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("openai"),
        {
            "model": {"name": MODEL},
            "engine": {"max_model_len": 1024},
            "limits": {"max_in_flight": 2, "drain_timeout_s": 60},
        },
        extra_env={"BACKEND_OPENAI__API_KEY": KEY},
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def base_url(backend: BackendProcess) -> str:
    backend.wait_listening()
    assert backend.openai_port, "the listening line names the OpenAI port"
    return f"http://127.0.0.1:{backend.openai_port}"


@pytest.fixture(scope="module")
def client(base_url: str, backend: BackendProcess) -> openai.OpenAI:
    backend.wait_serving()
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(base_url: str, path: str, body: object, *, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return httpx.post(base_url + path, content=body, headers=headers, timeout=60, **kw)
    return httpx.post(base_url + path, json=body, headers=headers, timeout=60, **kw)


def assert_openai_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"] and error["message"], error
    for word in words:
        assert word in error["message"], error["message"]
    return error


# -- loading -------------------------------------------------------------------------------


def test_health_and_calls_answer_503_until_the_model_is_served(
    backend: BackendProcess, base_url: str
) -> None:
    first = httpx.get(f"{base_url}/health", timeout=10)
    assert first.status_code == 503, "health must not be 200 before the model is loaded"
    refused = post(base_url, "/v1/chat/completions", {"model": MODEL, "messages": HELLO})
    assert_openai_error(refused, 503, "loading")
    assert refused.headers["retry-after"]
    deadline = time.monotonic() + 600
    while httpx.get(f"{base_url}/health", timeout=10).status_code != 200:
        assert backend.process is not None and backend.process.poll() is None, backend.log_tail()
        assert time.monotonic() < deadline, backend.log_tail()
        time.sleep(0.1)
    assert backend.health() == SERVING  # both APIs turn ready together


# -- what a client does --------------------------------------------------------------------


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion_reports_usage_and_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, logit_bias=NO_EOS
    )
    [choice] = response.choices
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert response.usage.completion_tokens == 12
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_chat_stream_matches_the_whole_answer(client: openai.OpenAI) -> None:
    fields = {"model": MODEL, "messages": HELLO, "max_tokens": 30, "logit_bias": NO_EOS}
    chunks = list(
        client.chat.completions.create(
            **fields, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 30
    whole = client.chat.completions.create(**fields, temperature=0)
    assert streamed == whole.choices[0].message.content  # greedy: the same text both ways


def test_completions_stream_and_not(client: openai.OpenAI) -> None:
    fields = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 10}
    whole = client.completions.create(**fields, temperature=0, logit_bias=NO_EOS)
    assert whole.usage.completion_tokens == 10 and whole.choices[0].finish_reason == "length"
    chunks = list(
        client.completions.create(
            **fields,
            temperature=0,
            logit_bias=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10


def test_each_call_is_one_request_log_line_and_counted_under_api_openai(
    backend: BackendProcess, client: openai.OpenAI
) -> None:
    labels = {"api": "openai", "method": "/v1/chat/completions", "code": "OK"}
    before = backend.metric("backend_requests_total", labels)
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, logit_bias=NO_EOS)
    assert backend.metric("backend_requests_total", labels) == before + 1
    line = backend.wait_for_event(
        lambda e: (
            e.get("message") == "request"
            and e.get("api") == "openai"
            and e.get("completion_tokens") == 5
        )
    )
    assert line["method"] == "/v1/chat/completions" and line["status"] == "OK"
    assert line["http_status"] == 200 and line["prompt_tokens"] > 0 and line["ttft_ms"] > 0
    completion_tokens = {"api": "openai", "method": "/v1/chat/completions"}
    assert backend.metric("backend_completion_tokens_total", completion_tokens) >= 5


# -- bad input -----------------------------------------------------------------------------


def test_no_key_or_a_wrong_key_is_401_and_health_needs_none(
    backend: BackendProcess, base_url: str
) -> None:
    body = {"model": MODEL, "messages": HELLO}
    assert_openai_error(post(base_url, "/v1/chat/completions", body, key=None), 401, "API key")
    assert_openai_error(post(base_url, "/v1/chat/completions", body, key="wrong"), 401)
    assert_openai_error(httpx.get(f"{base_url}/v1/models", timeout=10), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    assert (
        backend.metric("backend_requests_total", {"api": "openai", "code": "UNAUTHENTICATED"}) >= 4
    )


def test_bad_json_and_bad_fields_are_400_naming_the_problem(base_url: str) -> None:
    assert_openai_error(post(base_url, "/v1/chat/completions", b'{"model": "tiny", "mess'), 400)
    cases = [
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "messages": HELLO, "max_tokens": 5000}, "max"),  # past the context
    ]
    for body, word in cases:
        assert_openai_error(post(base_url, "/v1/chat/completions", body), 400, word)
    assert_openai_error(post(base_url, "/v1/completions", {"model": MODEL, "prompt": []}), 400)


def test_an_unknown_model_is_404_naming_the_models_served(base_url: str) -> None:
    response = post(base_url, "/v1/chat/completions", {"model": "gpt-5", "messages": HELLO})
    assert_openai_error(response, 404, "gpt-5", MODEL)
    assert_openai_error(post(base_url, "/v1/no-such-endpoint", {}), 404)


async def test_past_the_cap_is_429_at_once_and_grpc_shares_the_cap(
    backend: BackendProcess, base_url: str, client: openai.OpenAI
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    # Long enough to be in flight for seconds: two choices of 1000 tokens that cannot stop.
    long = {"model": MODEL, "prompt": "Once", "max_tokens": 1000, "min_tokens": 1000, "n": 2}
    grpc_long = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Hi")],
        max_new_tokens=1000,
        logit_bias=NO_EOS,
    )
    async with (
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=long | {"stream": True}) as first,
        grpc.aio.insecure_channel(backend.address) as channel,
    ):
        # Kept: a dropped line iterator closes the stream, which the server sees as a cancel.
        lines = first.aiter_lines()
        await anext(lines)  # one call in flight through the OpenAI API
        stub = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel)
        grpc_call = stub.ChatCompleteStream(grpc_long)
        await grpc_call.read()  # and one through gRPC: the shared cap of 2 is reached
        assert backend.metric("backend_requests_in_flight") == 2
        started = time.monotonic()
        refused = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
        assert time.monotonic() - started < 1.0
        assert_openai_error(refused, 429, "limit of 2")
        assert refused.headers["retry-after"]
        grpc_call.cancel()
    labels = {"api": "openai", "code": "RESOURCE_EXHAUSTED"}
    assert backend.metric("backend_requests_total", labels) >= 1
    for _ in range(100):
        if backend.metric("backend_requests_in_flight") == 0:
            break
        await asyncio.sleep(0.1)
    assert backend.metric("backend_requests_in_flight") == 0
    assert backend.metric("backend_engine_unfinished_requests") == 0
    cancelled = backend.wait_for_event(
        lambda e: (
            e.get("message") == "request"
            and e.get("api") == "openai"
            and e.get("status") == "CANCELLED"
        )
    )
    assert cancelled["method"] == "/v1/completions"


def test_after_the_errors_both_apis_still_serve(
    backend: BackendProcess, client: openai.OpenAI
) -> None:
    answer = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logit_bias=NO_EOS)
    assert answer.usage.completion_tokens == 3
    with grpc.insecure_channel(backend.address) as channel:
        response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            chat_pb2.ChatCompletionRequest(
                chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Hi")],
                max_new_tokens=3,
                logit_bias=NO_EOS,
            )
        )
    assert response.usage.completion_tokens == 3
    assert backend.metric("backend_requests_total", {"code": "INTERNAL"}) == 0


# -- drain (last: it stops the module's backend) -------------------------------------------


async def test_sigterm_lets_a_stream_finish_and_refuses_new_calls_with_503(
    backend: BackendProcess, base_url: str
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 1000, "min_tokens": 1000, "n": 2}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with (
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body) as stream,
    ):
        lines = stream.aiter_lines()
        await anext(lines)
        backend.terminate()
        for _ in range(50):
            if (await http.get("/health")).status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/health")).status_code == 503
        refused = await http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi"})
        assert_openai_error(refused, 503, "shutting down")
        events = [line async for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 2000
    assert await asyncio.to_thread(backend.wait, 60) == 0
