"""API_PROCESSES, rendered by Helm through the Zarf deploy preview: it reaches the backend's
server.api_processes, leaves the pod's resources as the profile has them, and is refused out
of bounds and on a profile that spans nodes."""

from __future__ import annotations

import pytest

from support.profiles_fixtures import (
    LWS_API,
    config_of,
    run_preview,
    run_preview_on,
    serving_pod_of,
)
from zarf_vllm.packaging.preview import Preview, PreviewError


def demo(**sets: str) -> Preview:
    result = run_preview("smollm2-135m-instruct", PROFILE="cpu", **sets)
    assert isinstance(result, Preview), str(result)
    return result


def resources(result: Preview) -> dict:
    pod = serving_pod_of(result)
    return {c["name"]: c["resources"] for c in pod["spec"]["containers"]}


def test_one_front_end_by_default() -> None:
    assert config_of(demo())["server"]["api_processes"] == 1


def test_the_variable_reaches_the_backend_and_leaves_the_pods_resources_alone() -> None:
    four = demo(API_PROCESSES="4")
    assert config_of(four)["server"]["api_processes"] == 4
    assert resources(four) == resources(demo())


@pytest.mark.parametrize("value", ["0", "65", "two", "-1"])
def test_out_of_bounds_is_refused_before_rendering(value: str) -> None:
    result = run_preview("smollm2-135m-instruct", PROFILE="cpu", API_PROCESSES=value)
    assert isinstance(result, PreviewError)
    assert "API_PROCESSES" in str(result)


def test_a_profile_across_nodes_refuses_several_front_ends() -> None:
    model, profile = "llama-3.1-405b-instruct", "h100-80gb-2x8"
    assert isinstance(run_preview_on((LWS_API,), model, PROFILE=profile), Preview)
    result = run_preview_on((LWS_API,), model, PROFILE=profile, API_PROCESSES="2")
    assert isinstance(result, PreviewError)
    assert f"API_PROCESSES=2 needs a model served on one node, but profile {profile}" in str(result)
