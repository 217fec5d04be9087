"""server.api_processes: the setting's bounds and refusals, and the settings each front-end
process gets from the supervisor (frontends.py)."""

from __future__ import annotations

import pytest

from zarf_vllm.backend.config import ConfigError, Settings, load_settings
from zarf_vllm.backend.frontends import front_end_settings


def settings(**sections: dict) -> Settings:
    return load_settings(None, {"model": {"path": "/m"}, **sections})


def test_one_process_by_default() -> None:
    assert settings().server.api_processes == 1


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_SERVER__API_PROCESSES", "4")
    assert settings().server.api_processes == 4


@pytest.mark.parametrize("value", [0, -1, 65])
def test_out_of_bounds_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match=r"server\.api_processes"):
        settings(server={"api_processes": value})


def test_several_front_ends_with_several_nodes_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(server={"api_processes": 2}, engine={"nnodes": 2, "pipeline_parallel_size": 2})
    assert "server.api_processes 2 and engine.nnodes 2 do not go together" in str(caught.value)


def test_one_front_end_on_several_nodes_is_fine() -> None:
    assert settings(engine={"nnodes": 2}).engine.nnodes == 2


def test_each_front_end_gets_the_resolved_ports_no_metrics_port_and_its_share_of_the_cap() -> None:
    base = settings(
        server={"api_processes": 3, "port": 0, "openai_port": 0, "metrics_port": 9090},
        limits={"max_in_flight": 256},
    )
    ports = {"port": 41000, "openai_port": 41001, "health_port": None}
    data = front_end_settings(base, ports, 3)
    front_end = Settings.model_validate(data)
    assert (front_end.server.port, front_end.server.openai_port) == (41000, 41001)
    assert front_end.server.metrics_port is None  # the supervisor serves the pod's metrics
    assert front_end.limits.max_in_flight == 86  # 256 / 3, rounded up
    assert front_end.server.api_processes == 3
    assert front_end.engine == base.engine


def test_the_openai_key_reaches_the_front_ends_intact() -> None:
    base = settings(openai={"api_key": "s3cret"}, server={"api_processes": 2})
    ports = {"port": 1, "openai_port": 2, "health_port": None}
    front_end = Settings.model_validate(front_end_settings(base, ports, 2))
    assert front_end.openai.api_key is not None
    assert front_end.openai.api_key.get_secret_value() == "s3cret"
