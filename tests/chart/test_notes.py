"""The chart's post-install NOTES (rendered by Helm in-process): every port the release serves, at
the port the backend's rendered config listens on, and the engines' layout (TP x DP, x PP across
nodes) as the sizing writes it."""

from __future__ import annotations

import copy
import re

import yaml
from helm_python.chart import Chart

from support.paths import CHART
from support.profiles_fixtures import LWS_API, python_fit, values
from zarf_vllm.backend.adapters import adapter_port
from zarf_vllm.model.sizing import Fit

# helm-python-sdk's Chart.render cannot pass the cluster's APIs on (a LeaderWorkerSet profile needs
# them); preview's own wrapper can.
from zarf_vllm.packaging.preview import _render

DEMO = "smollm2-135m-instruct"
ADAPTERS = ["sql", "poems"]
NOTES = "zarf-vllm/templates/NOTES.txt"


def render(
    manifest_id: str, profile: str, apis: tuple[str, ...] = (), **chosen: object
) -> dict[str, str]:
    flavor = "cpu" if profile == "cpu" else "cuda"
    settings = {**copy.deepcopy(values(manifest_id, flavor)), "profile": profile}
    for key, value in chosen.items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    with Chart.load(CHART) as chart:
        return _render(chart, settings, "demo", "leapfrogai", apis)


def everything_on() -> dict[str, str]:
    """Adapters, the OpenAI API and TLS: every port the chart can open."""
    return render(
        DEMO,
        "cpu",
        model={"adapters": ADAPTERS},
        openai={"enabled": "true"},
        tls={"secret": "backend-tls", "clientCa": "false"},
    )


def backend_config(files: dict[str, str]) -> dict:
    configmap = yaml.safe_load(files["zarf-vllm/templates/configmap.yaml"])
    return yaml.safe_load(configmap["data"]["config.yaml"])


def service_ports(files: dict[str, str]) -> dict[str, int]:
    service = yaml.safe_load(files["zarf-vllm/templates/service.yaml"])
    return {p["name"]: p["port"] for p in service["spec"]["ports"]}


def listed_ports(notes: str) -> dict[str, int]:
    """The NOTES' port table: `  NAME  PORT  what it serves` under "Ports of Service"."""
    table = notes.split("Ports of Service", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^  (\S+) +(\d+)  \S", table, re.MULTILINE)}


def test_notes_list_every_port_the_backend_listens_on() -> None:
    files = everything_on()
    server, tls = backend_config(files)["server"], backend_config(files)["tls"]
    model = server["port"]
    expected = {
        "grpc": model,
        **{f"lora-{i}": adapter_port(model, i) for i in range(len(ADAPTERS))},
        "metrics": server["metrics_port"],
        "openai": server["openai_port"],
        "health": tls["health_port"],
    }
    assert None not in expected.values()
    assert listed_ports(files[NOTES]) == expected
    # The Service serves all of them but the health port (the probes' only, on the pod).
    assert service_ports(files) == {k: v for k, v in expected.items() if k != "health"}


def test_notes_say_what_each_port_serves() -> None:
    notes = everything_on()[NOTES]
    for index, name in enumerate(ADAPTERS):
        assert f'lora-{index}   {adapter_port(50051, index)}  gRPC, LoRA adapter "{name}"' in notes
    assert "OpenAI-compatible API, HTTPS" in notes
    assert "plaintext grpc.health.v1.Health for kubelet's probes" in notes
    assert "TLS only on gRPC 50051, the adapters' gRPC ports and the OpenAI port" in notes
    # port-forward carries every Service port.
    forward = next(line for line in notes.splitlines() if "port-forward" in line)
    for port in service_ports(everything_on()).values():
        assert f" {port}:{port}" in forward


def test_without_adapters_openai_or_tls_the_notes_list_only_grpc_and_metrics() -> None:
    files = render(DEMO, "cpu", openai={"enabled": "false"})
    server = backend_config(files)["server"]
    assert listed_ports(files[NOTES]) == {
        "grpc": server["port"],
        "metrics": server["metrics_port"],
    }
    assert server["openai_port"] is None
    assert listed_ports(files[NOTES]) == service_ports(files)


def python_layout(manifest_id: str, profile: str) -> Fit:
    fit = python_fit(manifest_id, profile)
    assert isinstance(fit, Fit), str(fit)
    return fit


def test_notes_show_data_parallel_engines_as_the_sizing_does() -> None:
    fit = python_layout(DEMO, "h100-80gb-x8")
    assert fit.data_parallel_size > 1  # the whole node: several engines
    notes = render(DEMO, "h100-80gb-x8")[NOTES]
    assert f"  {fit.parallelism} ({fit.data_parallel_size} engines) on {fit.gpus} GPU(s)" in notes
    cpu = python_layout(DEMO, "cpu")
    assert f"CPU only, {cpu.parallelism} (1 engine)" in render(DEMO, "cpu")[NOTES]


def test_notes_show_the_multi_node_group() -> None:
    model = "llama-3.1-405b-instruct"
    fit = python_layout(model, "h100-80gb-2x8")
    assert fit.nodes > 1 and " x PP " in fit.parallelism
    notes = render(model, "h100-80gb-2x8", (LWS_API,))[NOTES]
    assert f"  {fit.parallelism} (" in notes
    assert f"on each of {fit.nodes} nodes: a LeaderWorkerSet group of size {fit.nodes}" in notes
