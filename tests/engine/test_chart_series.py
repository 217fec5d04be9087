"""The series the chart's dashboard, alerts and ScaledObject query are on a real backend's
metrics port: the backend on the real vLLM CPU engine (tiny Llama), scraped after a streamed
chat, as Prometheus would scrape the pod.

tests/chart/test_monitoring.py checks the names against the code that registers them; this
checks that they are served, with samples, by a running server (vLLM registers its metrics
only once its engine runs with stats logging on, which the backend turns on)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from support.backend_process import BackendProcess
from support.metric_names import PROMETHEUS_SERIES, chart_queried_series
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc


def served_series(backend: BackendProcess) -> set[str]:
    families = text_string_to_metric_families(backend.metrics_text())
    return {sample.name for family in families for sample in family.samples}


def test_every_series_the_chart_queries_is_served_by_a_running_backend(
    tiny_backend: BackendProcess, tiny_channel
) -> None:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Hello there")],
        max_new_tokens=8,
    )
    chunks = list(
        chat_pb2_grpc.ChatCompletionStreamServiceStub(tiny_channel).ChatCompleteStream(request)
    )
    assert chunks
    queried = chart_queried_series()
    wanted = set().union(*queried.values()) - PROMETHEUS_SERIES
    # vLLM's logger records an engine step's stats when its output is handled: wait briefly.
    deadline = time.monotonic() + 30
    while (missing := wanted - served_series(tiny_backend)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, f"queried by the chart, not served: {sorted(missing)}"
    assert {"vllm:num_requests_waiting", "backend_time_to_first_token_seconds_bucket"} <= wanted
