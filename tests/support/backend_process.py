"""Runs the real backend (`python -m zarf_vllm.backend serve`) as a child process for tests.

The server picks free ports itself (port 0) and reports them in its "listening" log line, so
tests never race for ports. Stderr is collected in a thread and kept for assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Settings that suit the CPU engine on a 2-core test machine.
CPU_TEST_SETTINGS: dict[str, Any] = {
    "engine": {"enforce_eager": True, "dtype": "float32", "cpu_kvcache_space_gib": 1},
    "server": {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "openai_port": 0,
        "engine_check_interval_s": 0.5,
    },
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class BackendProcess:
    def __init__(
        self,
        model_dir: Path | None,
        workdir: Path,
        settings: dict[str, Any] | None = None,
        *,
        command_prefix: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
        config_file: Path | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        """`config_file` serves that file as it is (no test settings, no --model: the model
        comes from the file, as in the pod); `base_env` replaces this process's environment
        as the one the child starts from, so nothing outside the test steers it."""
        if config_file is not None and (settings or model_dir is not None):
            raise ValueError("config_file is served as it is: pass no model_dir or settings")
        self.model_dir = model_dir
        if config_file is None:
            config_file = workdir / "backend.yaml"
            config_file.write_text(yaml.safe_dump(deep_merge(CPU_TEST_SETTINGS, settings or {})))
        self.config_file = config_file
        self.command_prefix = list(command_prefix)
        self.extra_env = extra_env or {}
        self.base_env = base_env
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.openai_port: int | None = None
        self.health_port: int | None = None  # tls.health_port: plaintext health only
        self._listening = threading.Event()

    # -- process ------------------------------------------------------------------------

    def start(self) -> BackendProcess:
        model = [] if self.model_dir is None else ["--model", str(self.model_dir)]
        command = [
            *self.command_prefix,
            sys.executable, "-m", "zarf_vllm.backend", "serve",
            *model, "--config", str(self.config_file),
        ]  # fmt: skip
        base = os.environ if self.base_env is None else self.base_env
        env = {**base, "VLLM_LOGGING_LEVEL": "WARNING", **self.extra_env}
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        return self

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            event = json_event(line)
            if event and event.get("message") == "listening":
                self.port, self.metrics_port = event["port"], event["metrics_port"]
                self.openai_port = event.get("openai_port")
                self.health_port = event.get("health_port")
                self._listening.set()

    def wait_listening(self, timeout: float = 60) -> None:
        if not self._listening.wait(timeout):
            raise TimeoutError(f"backend did not listen within {timeout}s:\n{self.log_tail()}")

    def wait_serving(self, timeout: float = 600) -> None:
        self.wait_listening()
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.health_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"backend exited early:\n{self.log_tail()}")
                if self.health(stub) == SERVING:
                    return
                time.sleep(0.25)
        raise TimeoutError(f"backend not SERVING within {timeout}s:\n{self.log_tail()}")

    def health(self, stub: health_pb2_grpc.HealthStub | None = None, service: str = "") -> int:
        if stub is None:
            with grpc.insecure_channel(self.health_address) as channel:
                return self.health(health_pb2_grpc.HealthStub(channel), service)
        try:
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        except grpc.RpcError:
            return -1

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 120) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    @contextmanager
    def serving(self) -> Iterator[BackendProcess]:
        """Started and SERVING for the with-block, stopped after it whatever happens."""
        self.start()
        try:
            self.wait_serving()
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)

    # -- observations -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_address(self) -> str:
        """Where plaintext health checks go: the gRPC port, or with TLS the health-only port."""
        return f"127.0.0.1:{self.health_port or self.port}"

    def events(self, message: str | None = None) -> list[dict[str, Any]]:
        """The backend's JSON log lines (optionally those with one message)."""
        parsed = (json_event(line) for line in list(self.lines))
        return [e for e in parsed if e and (message is None or e.get("message") == message)]

    def wait_for_event(self, predicate, timeout: float = 10) -> dict[str, Any]:
        """The first log event matching `predicate`, waiting for stderr to catch up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no such log event within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "".join(self.lines[-lines:])

    def metrics_text(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    total += sample.value
        return total


def json_event(line: str) -> dict[str, Any] | None:
    """One of the server's JSON log lines, parsed; None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None
