"""Benchmark results: a printed table, `loadtest/results/<name>.json` with a `targets` list, and a
bar chart `loadtest/results/<name>.png`."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Target:
    name: str
    target: str
    measured: float | str
    holds: bool | None  # None: reported, no target


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def print_targets(name: str, targets: list[Target]) -> None:
    print(f"\n{name}")
    width = max(len(t.name) for t in targets) + 2
    print(f"  {'target'.ljust(width)}{'wanted':<16}{'measured':>14}  holds")
    for t in targets:
        measured = f"{t.measured:,.2f}" if isinstance(t.measured, float) else str(t.measured)
        holds = "-" if t.holds is None else ("yes" if t.holds else "NO")
        print(f"  {t.name.ljust(width)}{t.target:<16}{measured:>14}  {holds}")


def draw_chart(name: str, values: dict[str, float], unit: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = list(values)
    bars = ax.barh(labels, [values[k] for k in labels], color="#4c78a8")
    ax.bar_label(bars, labels=[_figure(values[k]) for k in labels], padding=3)
    ax.margins(x=0.12)  # room for the bar labels
    ax.set_xlabel(unit)
    ax.set_title(name)
    ax.invert_yaxis()
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure(value: float) -> str:
    """Three significant figures or more: a 0.53 s bar must not read "1"."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def write_result(
    name: str,
    data: dict[str, Any],
    targets: list[Target],
    chart: dict[str, float] | None = None,
    unit: str = "",
) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "machine": machine(),
        **data,
        "targets": [asdict(t) for t in targets],
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if chart:
        draw_chart(name, chart, unit)
    print_targets(name, targets)
    return result
