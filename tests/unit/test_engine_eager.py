"""`engine.enforce_eager` unset: eager on the CPU (as the chart's CPU profile), compiled on GPUs."""

from __future__ import annotations

import pytest

from support.paths import REPO
from zarf_vllm.backend.config import EngineSettings, Settings
from zarf_vllm.backend.engine import engine_args, resolve_enforce_eager
from zarf_vllm.packaging.profiles import load_profiles


def test_unset_is_eager_on_the_cpu_and_compiled_on_gpus() -> None:
    assert EngineSettings().enforce_eager is None
    assert resolve_enforce_eager(None, on_cpu=True) is True
    assert resolve_enforce_eager(None, on_cpu=False) is False


@pytest.mark.parametrize("requested", [True, False])
@pytest.mark.parametrize("on_cpu", [True, False])
def test_an_explicit_value_is_kept(requested: bool, on_cpu: bool) -> None:
    assert resolve_enforce_eager(requested, on_cpu=on_cpu) is requested


def test_the_engine_gets_the_resolved_value(tmp_path) -> None:
    settings = Settings.model_validate({"model": {"path": str(tmp_path)}})
    assert engine_args(settings, False, "float32", on_cpu=True)["enforce_eager"] is True
    assert engine_args(settings, False, "auto", on_cpu=False)["enforce_eager"] is False


def test_a_hand_started_cpu_backend_runs_what_the_chart_renders() -> None:
    [cpu] = [p for p in load_profiles(REPO / "chart") if p.name == "cpu"]
    assert cpu.engine.enforce_eager is resolve_enforce_eager(None, on_cpu=True)
