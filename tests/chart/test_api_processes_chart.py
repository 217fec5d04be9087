"""API_PROCESSES, rendered by Helm through the Zarf deploy preview: it reaches the backend's
server.api_processes, adds its front ends' memory to the pod's (the CPU stays the profile's),
and is refused out of bounds and on a profile that spans nodes."""

from __future__ import annotations

import pytest

from support.profiles_fixtures import (
    LWS_API,
    config_of,
    run_preview,
    run_preview_on,
    serving_pod_of,
)
from zarf_vllm.model import sizing
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


def gibibytes(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity.removesuffix("Gi"))


def test_the_variable_reaches_the_backend_and_adds_its_memory_to_the_pod() -> None:
    one, four = resources(demo())["backend"], resources(demo(API_PROCESSES="4"))["backend"]
    assert config_of(demo(API_PROCESSES="4"))["server"]["api_processes"] == 4
    added = 4 * sizing.HOST_BYTES_PER_FRONT_END // sizing.GIB
    for side in ("requests", "limits"):
        assert gibibytes(four[side]["memory"]) == gibibytes(one[side]["memory"]) + added
        assert four[side].get("cpu") == one[side].get("cpu")


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
