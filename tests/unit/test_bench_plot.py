"""bench/plot.py, on fake result rows (no benchmark runs): the PNG of tokens/s and TTFT p50
against concurrency that bench/serving.py --plot writes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support.paths import REPO

pytest.importorskip(
    "matplotlib", reason="matplotlib is the bench extra, not in this venv (pip install '.[bench]')"
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_plot() -> ModuleType:
    """bench/ holds scripts, not a package: the module is loaded from its file."""
    spec = importlib.util.spec_from_file_location("bench_plot", REPO / "bench" / "plot.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


plot = load_plot()


def fake_results(system: str, clients: list[str], scale: float) -> list:
    """A result set of one system: tokens/s rising and TTFT growing with concurrency."""
    return [
        plot.Row(system, client, c, scale * 40 * c**0.5 * (0.9 if client != plot.RAW else 1), c)
        for client in [plot.RAW, *clients]
        for c in (8, 32, 128)
    ]


def test_two_result_sets_draw_a_valid_png(tmp_path: Path) -> None:
    rows = fake_results("ours/default", ["shared", "per-call"], 1.0)
    rows += fake_results("openai", ["shared"], 0.95)
    path = plot.draw(rows, tmp_path / "out" / "serving.png", "fake results")
    assert path == tmp_path / "out" / "serving.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # two panels of five lines, axes and a legend: not a blank image
    # The IHDR chunk: the figure's size in pixels.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (plot.FIGSIZE[0] * plot.DPI, plot.FIGSIZE[1] * plot.DPI)


def pixels_of(path: Path, colour: str) -> int:
    """How many pixels of the PNG are this colour (within rounding)."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    image = imread(path)[..., :3]
    return int((abs(image - to_rgb(colour)) < 0.02).all(axis=-1).sum())


def test_each_system_is_drawn_in_its_own_colour(tmp_path: Path) -> None:
    one = plot.draw(fake_results("openai", ["shared"], 1.0), tmp_path / "one.png")
    rows = fake_results("openai", ["shared"], 1.0) + fake_results("ours/tuned", ["shared"], 2.0)
    two = plot.draw(rows, tmp_path / "two.png")
    # The first system's lines are C0, the second's C1: absent until there is a second.
    assert pixels_of(one, "C0") > 500
    assert pixels_of(one, "C1") == 0
    assert pixels_of(two, "C1") > 500


def test_each_system_and_client_is_its_own_line_in_concurrency_order() -> None:
    rows = list(reversed(fake_results("ours/default", ["shared"], 1.0)))
    lines = plot.series(rows)
    assert set(lines) == {("ours/default", plot.RAW), ("ours/default", "shared")}
    for points in lines.values():
        assert [p.concurrency for p in points] == [8, 32, 128]


def test_bad_input_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows: nothing to plot"):
        plot.draw([], tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"path: .*must end with \.png"):
        plot.draw(fake_results("openai", ["shared"], 1.0), tmp_path / "out.svg")
    with pytest.raises(ValueError, match="concurrency: 0 for openai must be >= 1"):
        plot.draw([plot.Row("openai", "shared", 0, 1.0, 1.0)], tmp_path / "zero.png")
    assert not list(tmp_path.iterdir())
