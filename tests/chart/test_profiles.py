"""Profiles (chart/profiles/) and the values rendered from them (zarf_vllm.packaging.profiles)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from support.paths import REPO
from support.profiles_fixtures import (
    CATALOG,
    MANIFEST_IDS,
    PROFILE_NAMES,
    PROFILES,
    manifest,
    profile,
    values,
)
from zarf_vllm import __version__
from zarf_vllm.model import sizing
from zarf_vllm.model.sizing import ModelFacts
from zarf_vllm.packaging.cli import main
from zarf_vllm.packaging.profiles import (
    ProfileError,
    check_values,
    fitting_manifests,
    outcomes,
    render_values,
)

REQUIRED = [
    "cpu",
    "l4-24gb",
    "l40s-48gb",
    "a100-40gb",
    "a100-80gb",
    "h100-80gb-x1",
    "h100-80gb-x2",
    "h100-80gb-x4",
    "h100-80gb-x8",
    "h100-80gb-2x8",
    "h200-141gb-x1",
    "h200-141gb-x8",
    "h200-141gb-2x8",
    "custom",
]
GPUS = {
    "l4-24gb": (1, 23028),
    "l40s-48gb": (1, 46068),
    "a100-40gb": (1, 40960),
    "a100-80gb": (1, 81920),
    "h100-80gb-x1": (1, 81559),
    "h100-80gb-x2": (2, 81559),
    "h100-80gb-x4": (4, 81559),
    "h100-80gb-x8": (8, 81559),
    "h200-141gb-x1": (1, 143771),
    "h200-141gb-x8": (8, 143771),
}


def test_every_hardware_class_has_a_profile_in_order() -> None:
    assert PROFILE_NAMES == REQUIRED
    for name, (count, memory) in GPUS.items():
        assert (profile(name).gpu.count, profile(name).gpu.memory_mib) == (count, memory)


def test_gpu_profiles_schedule_on_gpu_nodes_and_the_cpu_profile_does_not() -> None:
    for p in PROFILES:
        keys = {t.key for t in p.scheduling.tolerations}
        assert p.scheduling.node_selector == {"kubernetes.io/os": "linux"}
        if p.name == "cpu":
            assert p.scheduling.runtime_class is None and not keys
        else:
            assert p.scheduling.runtime_class == "nvidia" and "nvidia.com/gpu" in keys
            assert p.host.cpu_per_gpu and p.engine.enforce_eager is False


def test_cpu_profile_engine_values_suit_vllm_cpu() -> None:
    cpu = profile("cpu")
    assert cpu.engine.enforce_eager is True
    assert cpu.engine.cpu_kvcache_space_gib == 2
    assert cpu.engine.max_model_len == 4096
    fit = sizing.size(ModelFacts.from_manifest(manifest("smollm2-135m-instruct")), cpu.hardware)
    assert (fit.dtype, fit.max_model_len, fit.max_num_seqs) == ("float32", 4096, 16)
    assert fit.host_memory_gib <= cpu.host.memory_gib


def test_a_bad_profile_file_is_refused(tmp_path) -> None:
    (tmp_path / "profiles").mkdir()
    data = yaml.safe_load((REPO / "chart/profiles/l4-24gb.yaml").read_text())
    data["engine"]["max_model_len"] = 5000  # not a multiple of the block size
    (tmp_path / "profiles" / "l4-24gb.yaml").write_text(yaml.safe_dump(data))
    from zarf_vllm.packaging.profiles import load_profiles

    with pytest.raises(ProfileError, match="multiple of 16"):
        load_profiles(tmp_path)
    data["engine"]["max_model_len"] = 4096
    (tmp_path / "profiles" / "l4-24gb.yaml").unlink()
    (tmp_path / "profiles" / "other.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profiles(tmp_path)


@pytest.mark.parametrize("manifest_id", MANIFEST_IDS)
@pytest.mark.parametrize("flavor", ["cpu", "cuda"])
def test_rendered_values_hold_every_profile_and_the_model(manifest_id: str, flavor: str) -> None:
    rendered = values(manifest_id, flavor)
    check_values(rendered)  # values.schema.json
    assert rendered["flavor"] == flavor
    assert rendered["defaultProfile"] == ("cpu" if flavor == "cpu" else "")
    assert rendered["image"] == {
        "repository": f"zarf.internal/zarf-vllm/model-{manifest_id}",
        "tag": f"{__version__}-{flavor}",
    }
    assert rendered["profileNames"] == REQUIRED
    assert set(rendered["profiles"]) == set(REQUIRED)
    model = ModelFacts.from_manifest(manifest(manifest_id))
    # The override check's inputs are the sizing's own numbers for this flavor.
    costs = sizing.costs_for(model, flavor)
    assert rendered["defaultDtype"] == costs.dtype
    default = rendered["costs"][costs.dtype]
    assert default["weightBytes"] == costs.weight_bytes
    assert default["kvBytes"] == costs.kv_bytes
    assert default["tensorParallelSizes"] == sorted(costs.tensor_parallel)
    # The cpu flavor carries the costs of every dtype CPU_DTYPE may choose.
    expected = {costs.dtype, *(sizing.CPU_DTYPES if flavor == "cpu" else ())}
    assert set(rendered["costs"]) == expected
    assert rendered["messages"] == sizing.MESSAGES
    # Where the weights are is the model image's to say (its BACKEND_MODEL__PATH), not the chart's.
    assert set(rendered["model"]) == {"id", "displayName", "adapters"}
    expected_fits = [o.fit.summary for o in outcomes(model, PROFILES) if o.fit]
    assert rendered["fits"] == expected_fits
    custom = rendered["profiles"]["custom"]
    assert custom["fit"] is None and "needs GPU_COUNT and GPU_MEMORY_GIB" in custom["refusal"]
    for name in REQUIRED:
        entry = rendered["profiles"][name]
        assert entry["fitsManifests"] == fitting_manifests(profile(name), CATALOG)
        # Each profile carries its decision: a fit, or the refusal the chart fails with.
        assert (entry["fit"] is None) != (entry["refusal"] is None)
        if entry["fit"] is not None:
            fit = sizing.size(model, profile(name).hardware)
            assert entry["fit"]["maxModelLen"] == fit.max_model_len
            assert entry["fit"]["hostMemoryGib"] == fit.host_memory_gib


def test_rendered_values_say_in_comments_what_fits() -> None:
    text = render_values(manifest("smollm2-135m-instruct"), flavor="cpu", catalog=CATALOG)
    fits = "# cpu: fits: TP 1 x DP 1, max_model_len 4096, KV cache 46603 tokens, 7 GiB host memory"
    assert fits in text
    assert "# custom: refused: profile custom needs GPU_COUNT and GPU_MEMORY_GIB" in text


def test_alternatives_name_profiles_and_manifests() -> None:
    text = sizing.alternatives("m", ["a (TP 1, max_model_len 4096)"], ["x", "y"], "p")
    assert text == (
        ". Profiles that fit m without overrides: a (TP 1, max_model_len 4096). "
        "Manifests that fit profile p: x, y."
    )
    assert sizing.alternatives("m", [], [], "p") == ". No profile fits m."


def test_demo_and_big_models_fit_where_expected() -> None:
    demo = ModelFacts.from_manifest(manifest("smollm2-135m-instruct"))
    assert all(o.fit for o in outcomes(demo, PROFILES))
    if "llama-3.1-70b-instruct" in MANIFEST_IDS:
        big = {
            o.profile.name: o
            for o in outcomes(
                ModelFacts.from_manifest(manifest("llama-3.1-70b-instruct")), PROFILES
            )
        }
        assert not big["l4-24gb"].fit and not big["h100-80gb-x1"].fit
        assert big["h100-80gb-x4"].fit and big["h100-80gb-x4"].fit.tensor_parallel_size == 4


def test_a_context_the_kv_cache_limits_leaves_vllm_its_margin_on_every_profile() -> None:
    # Issue 10: Llama-3.1-70B on h100-80gb-x2 got max_model_len 21,776, the whole estimated
    # capacity, and gemma-2-9b with KV_CACHE_DTYPE=fp8 on l4-24gb 6,016 of 6,028 tokens.
    for manifest_id in MANIFEST_IDS:
        model = ModelFacts.from_manifest(manifest(manifest_id))
        for kv_dtype in (None, "fp8"):
            for outcome in outcomes(model, PROFILES):
                try:
                    fit = sizing.size(
                        model, outcome.profile.hardware, sizing.Overrides(kv_cache_dtype=kv_dtype)
                    )
                except sizing.Refused:
                    continue
                if fit.kv_capacity_tokens is None or fit.kv_capacity_tokens >= 131072:
                    continue
                usable = fit.kv_capacity_tokens * sizing.KV_USABLE_PERCENT // 100
                assert fit.max_model_len <= usable, (manifest_id, outcome.profile.name, kv_dtype)
    if "llama-3.1-70b-instruct" in MANIFEST_IDS:
        # At 0.95 two H100s hold a usable context, which the KV cache limits.
        big = ModelFacts.from_manifest(manifest("llama-3.1-70b-instruct"))
        x2 = profile("h100-80gb-x2").hardware
        fit = sizing.size(big, x2, sizing.Overrides(util_permille=950))
        assert fit.kv_capacity_tokens is not None
        assert fit.max_model_len == sizing.align(fit.kv_capacity_tokens * 90 // 100) < 131072
    if "gemma-2-9b-it" in MANIFEST_IDS:
        gemma = ModelFacts.from_manifest(manifest("gemma-2-9b-it"))
        with pytest.raises(sizing.Refused, match="of which a context may take 90%"):
            sizing.size(gemma, profile("l4-24gb").hardware, sizing.Overrides(kv_cache_dtype="fp8"))


def test_values_command_writes_the_file_and_reports_the_fit(tmp_path, capsys) -> None:
    out = tmp_path / "values" / "demo.yaml"
    assert main(["values", "smollm2-135m-instruct", "--flavor", "cuda", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["flavor"] == "cuda"
    err = capsys.readouterr().err
    assert "values: smollm2-135m-instruct: fits: cpu (TP 1 x DP 1, max_model_len 4096)" in err
    assert main(["values", "--table"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| manifest | weights | cpu | l4-24gb |")
    assert len(table.strip().splitlines()) == 2 + len(CATALOG)


def test_render_values_script(tmp_path) -> None:
    out = tmp_path / "v.yaml"
    done = subprocess.run(
        [
            str(REPO / "scripts/render-values"),
            "model-manifests/smollm2-135m-instruct.yaml",
            "--flavor",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(out.read_text())["model"]["id"] == "smollm2-135m-instruct"
    bad = subprocess.run(
        [sys.executable, "-m", "zarf_vllm.packaging", "values", "nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "no manifest 'nope'" in bad.stderr


def test_docs_list_every_profile_and_variable_and_the_current_fit_table() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[
        readme.index("<!-- section:profiles -->") : readme.index("<!-- /section:profiles -->")
    ]
    doc = (REPO / "docs" / "profiles.md").read_text()
    variables = [v["name"] for v in yaml.safe_load((REPO / "zarf.yaml").read_text())["variables"]]
    for name in REQUIRED:
        assert f"`{name}`" in doc, name
        stem = name.rsplit("-x", 1)[0] if "-x" in name else name
        assert f"`{stem}" in section, name
    for name in variables:  # the README's table, generated from chart/zarf/deploy-variables.yaml
        assert f"`{name}`" in section, name
    assert "zarf package deploy" in section and "uds-config.yaml" in section
    from zarf_vllm.packaging.profiles import fit_table

    assert fit_table(CATALOG, PROFILES) in doc, (
        "docs/profiles.md's fit table is stale: paste `scripts/render-values --table`"
    )
