"""A model with LoRA adapters, through the chart (real Helm, via the Zarf deploy preview): one
LeapfrogAI discovery entry, one Service port, one container port and one ingress rule per
adapter, at the port the backend listens on (zarf_vllm.backend.adapters.adapter_port)."""

from __future__ import annotations

import tomllib

from support.custom_resources import assert_valid
from support.profiles_fixtures import manifest, objects
from zarf_vllm.backend.adapters import adapter_port
from zarf_vllm.backend.config import ServerSettings
from zarf_vllm.model.manifest import Adapter, LocalSource, ModelManifest
from zarf_vllm.packaging.preview import preview

DEMO = "smollm2-135m-instruct"
ADAPTERS = ("sql", "poems")
MODEL_PORT = ServerSettings().port  # the chart's gRPC port is the backend's default


def with_adapters() -> ModelManifest:
    adapters = [
        Adapter(name=n, source=LocalSource(kind="local", path="x"), files=[], rank=8)
        for n in ADAPTERS
    ]
    return ModelManifest.model_validate({**manifest(DEMO).model_dump(), "adapters": adapters})


def rendered(**sets: str) -> dict[str, dict]:
    result = preview(with_adapters(), {"PROFILE": "cpu", **sets})
    assert_valid(result)
    return objects(result)


def test_each_adapter_is_discovered_at_its_own_port() -> None:
    found = rendered()
    models = tomllib.loads(found[f"vllm-{DEMO}-leapfrogai"]["data"]["models.toml"])["models"]
    host = f"vllm-{DEMO}.leapfrogai.svc.cluster.local"
    assert [(m["name"], m["backend"]) for m in models] == [
        (DEMO, f"{host}:{MODEL_PORT}"),
        *((n, f"{host}:{adapter_port(MODEL_PORT, i)}") for i, n in enumerate(ADAPTERS)),
    ]
    assert {m["type"] for m in models} == {"gRPC"}


def test_the_adapter_ports_are_open_on_the_pod_and_service() -> None:
    found = rendered()
    expected = {f"lora-{i}": adapter_port(MODEL_PORT, i) for i in range(len(ADAPTERS))}
    container = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {k: ports[k] for k in expected} == expected
    service = {p["name"]: p["port"] for p in found["Service"]["spec"]["ports"]}
    assert {k: service[k] for k in expected} == expected
    ingress = found["NetworkPolicy"]["spec"]["ingress"]
    allowed = {p["port"] for rule in ingress for p in rule.get("ports", [])}
    assert set(expected) <= allowed


def test_a_model_without_adapters_renders_no_adapter_port() -> None:
    found = objects(preview(manifest(DEMO), {"PROFILE": "cpu"}))
    service = [p["name"] for p in found["Service"]["spec"]["ports"]]
    assert not [name for name in service if name.startswith("lora-")]


def test_the_uds_package_lets_the_leapfrogai_api_reach_each_adapter() -> None:
    package = rendered(UDS_PACKAGE="true")["Package"]
    ports = {rule.get("port") for rule in package["spec"]["network"]["allow"]}
    assert {adapter_port(MODEL_PORT, i) for i in range(len(ADAPTERS))} <= ports
