"""The guard in front of vLLM's OpenAI app, on a small Starlette app in its place: health, the
key, admission through the shared call tracker, and what each call counts. (vLLM's app itself
runs in tests/engine/test_openai.py, on the real engine.)"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.metrics import Metrics
from zarf_vllm.backend.openai.errors import code_of
from zarf_vllm.backend.openai.guard import Guard

KEY = "k-123"


class Inner:
    """Stands where vLLM's app goes: /v1/models, a call that waits to be released, a failure."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/wait", self.wait, methods=["POST"]),
                Route("/v1/fail", self.fail, methods=["POST"]),
            ]
        )

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"data": [{"id": "m"}]})

    async def wait(self, request: Request) -> JSONResponse:
        await self.release.wait()
        return JSONResponse({"ok": True})

    @staticmethod
    async def fail(request: Request) -> JSONResponse:
        raise RuntimeError("boom")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def calls(registry: CollectorRegistry) -> CallTracker:
    return CallTracker(Metrics(registry), max_in_flight=1, log_prompts=False)


def client(guard: Guard) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t")


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def count(registry: CollectorRegistry, method: str, code: str) -> float:
    labels = {"api": "openai", "method": method, "code": code}
    return registry.get_sample_value("backend_requests_total", labels) or 0.0


async def test_health_follows_loading_serving_and_draining(calls: CallTracker) -> None:
    guard = Guard(calls, KEY)
    async with client(guard) as http:
        loading = await http.get("/health")  # no key: probes carry none
        assert loading.status_code == 503
        assert loading.json()["error"]["message"] == "the model is still loading"
        refused = await http.post("/v1/wait", headers=auth())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        guard.attach(Inner().app)
        calls.accepting = True
        assert (await http.get("/health")).json() == {"status": "serving"}
        calls.draining = True
        draining = await http.get("/health")
        assert draining.status_code == 503
        assert draining.json()["error"] == {
            "message": "the server is shutting down",
            "type": "ServiceUnavailableError",
            "param": None,
            "code": 503,
        }


async def test_the_key_is_required_and_compared_whole(
    calls: CallTracker, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(calls, KEY)
    guard.attach(Inner().app)
    calls.accepting = True
    async with client(guard) as http:
        for headers in ({}, auth("k-12"), auth(KEY + "4"), {"Authorization": KEY}):
            response = await http.get("/v1/models", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["type"] == "AuthenticationError"
        with caplog.at_level(logging.INFO, logger="backend"):
            assert (await http.get("/v1/models", headers=auth())).status_code == 200
    assert count(registry, "/v1/models", "UNAUTHENTICATED") == 4
    assert count(registry, "/v1/models", "OK") == 1
    [line] = [r for r in caplog.records if r.getMessage() == "request"]
    assert line.fields["api"] == "openai" and line.fields["http_status"] == 200  # type: ignore[attr-defined]


async def test_without_a_key_anyone_in_the_network_policy_may_call(calls: CallTracker) -> None:
    guard = Guard(calls, None)
    guard.attach(Inner().app)
    calls.accepting = True
    async with client(guard) as http:
        assert (await http.get("/v1/models")).status_code == 200


async def test_past_the_cap_429_while_models_bypasses_it(
    calls: CallTracker, registry: CollectorRegistry
) -> None:
    inner = Inner()
    guard = Guard(calls, None)
    guard.attach(inner.app)
    calls.accepting = True
    async with client(guard) as http:
        held = asyncio.create_task(http.post("/v1/wait"))
        while calls.in_flight == 0:  # noqa: ASYNC110 (the tracker has no event for this)
            await asyncio.sleep(0.01)
        refused = await http.post("/v1/wait")
        assert refused.status_code == 429
        assert "limit of 1 calls in flight" in refused.json()["error"]["message"]
        assert refused.json()["error"]["type"] == "RateLimitError"
        assert (await http.get("/v1/models")).status_code == 200  # uncapped, like gRPC's Name
        inner.release.set()
        assert (await held).status_code == 200
    assert calls.in_flight == 0
    assert count(registry, "/v1/wait", "RESOURCE_EXHAUSTED") == 1
    assert count(registry, "/v1/wait", "OK") == 1


class Raising:
    """An app that fails before it answers anything."""

    routes = (Route("/v1/fail", Inner.fail),)

    async def __call__(self, scope: object, receive: object, send: object) -> None:
        raise RuntimeError("boom")


async def test_a_failing_app_answers_500_and_leaves_nothing_in_flight(
    calls: CallTracker, registry: CollectorRegistry
) -> None:
    guard = Guard(calls, None)
    guard.attach(Raising())
    calls.accepting = True
    async with client(guard) as http:
        failed = await http.post("/v1/fail")
        assert failed.status_code == 500
        assert failed.json()["error"]["message"] == "internal error; see the server log"
        assert (await http.post("/v1/fail")).status_code == 500  # and it keeps answering
    assert calls.in_flight == 0
    assert count(registry, "/v1/fail", "INTERNAL") == 2


async def test_unknown_paths_share_one_label(
    calls: CallTracker, registry: CollectorRegistry
) -> None:
    guard = Guard(calls, None)
    guard.attach(Inner().app)
    calls.accepting = True
    async with client(guard) as http:
        for path in ("/v1/nothing-here", "/v1/or-here", "/admin"):
            assert (await http.post(path)).status_code == 404
    assert count(registry, "other", "NOT_FOUND") == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [(200, "OK"), (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (404, "NOT_FOUND"),
     (422, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"),
     (503, "UNAVAILABLE")],
)  # fmt: skip
def test_http_statuses_count_under_grpc_code_names(status: int, code: str) -> None:
    assert code_of(status).name == code
