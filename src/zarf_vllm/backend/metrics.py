"""Prometheus metrics of the front ends, served with vLLM's own engine metrics.

Every call metric carries an `api` label: `grpc` (the LeapfrogAI contract) or `openai` (the
OpenAI-compatible HTTP API), so one dashboard shows both and each apart.

vLLM registers its `vllm:*` metrics (queue depth, KV-cache usage, token throughput...) in
prometheus_client's default registry when stats logging is on, so one HTTP endpoint on the
metrics port exposes both.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server

# Buckets reach from a millisecond (a small model's first token on a GPU) to minutes
# (a long generation on a CPU).
_TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# With several front-end processes (frontends.py) prometheus_client keeps each process's values
# in files under this directory, and the supervisor serves their merge. Counters and histograms
# add up; the gauges below say how (`multiprocess_mode`, ignored in one process).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a front end writes the engine's request count in that mode: the merge reads files,
# so a value computed at scrape time (set_function) never reaches it.
ENGINE_GAUGE_INTERVAL_S = 1.0
# The `api` label's values (calls.Call.api): both in-flight series exist, at 0, from the start.
APIS = ("grpc", "openai")


class Metrics:
    """The backend's metrics; one instance per process (per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "backend_requests",
            "Calls by API, method and final status code (gRPC code names for both APIs)",
            ["api", "method", "code"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "backend_requests_in_flight",
            "Calls being served now",
            ["api"],
            registry=registry,
            multiprocess_mode="livesum",  # the pod's calls: every live front end's, added up
        )
        for api in APIS:
            self.in_flight.labels(api)
        self.time_to_first_token = Histogram(
            "backend_time_to_first_token_seconds",
            "From receiving a generation call to its first token",
            ["api", "method"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "backend_request_duration_seconds",
            "From receiving a call to its end",
            ["api", "method"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "backend_prompt_tokens", "Prompt tokens processed", ["api", "method"], registry=registry
        )
        self.completion_tokens = Counter(
            "backend_completion_tokens", "Tokens generated", ["api", "method"], registry=registry
        )
        self.engine_unfinished = Gauge(
            "backend_engine_unfinished_requests",
            "Requests the engine still holds (generating or aborted but not yet freed)",
            registry=registry,
            # Each front end counts the requests it sent; the engine holds their sum.
            multiprocess_mode="livesum",
        )

    def watch_engine(self, unfinished_requests: Callable[[], int]) -> None:
        """Reads the engine's request count at scrape time (in one process), or writes it every
        ENGINE_GAUGE_INTERVAL_S for the supervisor's merge (several front ends)."""
        if MULTIPROC_DIR_ENV not in os.environ:
            self.engine_unfinished.set_function(unfinished_requests)
            return

        def refresh() -> None:
            while True:
                self.engine_unfinished.set(unfinished_requests())
                time.sleep(ENGINE_GAUGE_INTERVAL_S)

        threading.Thread(target=refresh, name="engine-gauge", daemon=True).start()


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the port (0 picks one)."""
    server, _thread = _start_http_server(port, addr=host, registry=registry)
    return server.server_port
