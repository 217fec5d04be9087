"""A PNG of bench/serving.py's results: output tokens/s and TTFT p50 against concurrency.

Two panels side by side, one line per system and client pattern: our server per configuration
and channel pattern, vLLM's OpenAI server, and each host process's raw AsyncLLM baseline (dashed,
in its server's colour: serving.py measures each server against raw waves in its own process).

It takes plain rows (`Row`), so it is tested without a benchmark (tests/unit/test_bench_plot.py).
matplotlib comes from the `bench` extra (`pip install -e '.[bench]'`) and is imported only when
a plot is drawn; it draws with the Agg backend (no display).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FIGSIZE = (14.0, 4.8)  # inches: two panels and the legend beside them
DPI = 100
RAW = "raw"  # the client pattern of a host's baseline waves, straight into its AsyncLLM
# Line styles by client pattern: the baseline dashed, served patterns solid or dotted.
STYLES = {RAW: "--", "shared": "-", "per-call": ":"}


@dataclass(frozen=True)
class Row:
    """One point: a system ("ours/default", "openai") with one client pattern ("shared",
    "per-call", or RAW) at one concurrency."""

    system: str
    client: str
    concurrency: int
    tokens_per_s: float
    ttft_p50_ms: float


def check_path(path: Path, name: str = "path") -> None:
    """`name`: what the caller calls the path (serving.py: --plot)."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"{name}: {path} must end with .png")


def check(rows: list[Row], path: Path) -> None:
    """Refuses what would draw nothing useful, naming the input and the bound."""
    if not rows:
        raise ValueError("rows: nothing to plot (at least 1 row needed)")
    check_path(path)
    for row in rows:
        if row.concurrency < 1:
            raise ValueError(f"concurrency: {row.concurrency} for {row.system} must be >= 1")
        if row.tokens_per_s < 0 or row.ttft_p50_ms < 0:
            raise ValueError(f"tokens_per_s, ttft_p50_ms: must be >= 0 ({row})")


def series(rows: Iterable[Row]) -> dict[tuple[str, str], list[Row]]:
    """The rows of each (system, client) line, in the order they first appear, by concurrency."""
    lines: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        lines.setdefault((row.system, row.client), []).append(row)
    return {key: sorted(points, key=lambda r: r.concurrency) for key, points in lines.items()}


def label(system: str, client: str) -> str:
    return f"{system} ({client})"


def draw(rows: Iterable[Row], path: Path, title: str = "") -> Path:
    """Writes the two-panel PNG to `path` and returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    check(rows, path)
    # A Figure with its own Agg canvas: no pyplot, so no global state and no display needed.
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    throughput, ttft = figure.subplots(1, 2)
    systems = list(dict.fromkeys(row.system for row in rows))
    colours = {s: f"C{i % 10}" for i, s in enumerate(systems)}
    for (system, client), points in series(rows).items():
        x = [p.concurrency for p in points]
        style = {"color": colours[system], "linestyle": STYLES.get(client, "-."), "marker": "o"}
        throughput.plot(x, [p.tokens_per_s for p in points], label=label(system, client), **style)
        ttft.plot(x, [p.ttft_p50_ms for p in points], label=label(system, client), **style)
    concurrencies = sorted({row.concurrency for row in rows})
    for axes, ylabel in ((throughput, "output tokens/s"), (ttft, "TTFT p50 (ms)")):
        # Concurrency sweeps go in multiples (8, 32, 128): even steps on a log axis.
        axes.set_xscale("log", base=2)
        axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axes.minorticks_off()  # only the measured concurrencies are labelled
        axes.set_xlabel("concurrent streams")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
    # One legend for both panels, outside them, so that it hides no line.
    handles, labels = throughput.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    if title:
        figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path
