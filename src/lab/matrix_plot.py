"""The matrix's combined figure: per version, failed requests and lost operations side by
side, one row of panels per load-balancer mode."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lab.matrix import Cell


def draw(
    cells: list[Cell], versions: tuple[str, ...], scenarios: tuple[str, ...], path: Path
) -> None:
    picture = png(cells, versions, scenarios)
    if picture is not None:
        path.write_bytes(picture)


def png(cells: list[Cell], versions: tuple[str, ...], scenarios: tuple[str, ...]) -> bytes | None:
    """The figure as PNG bytes (matrix.png, and report.html's picture); None before any
    experiment is done."""
    lbs = list(dict.fromkeys(c.lb for c in cells))
    if not lbs:
        return None
    fig, axes = plt.subplots(len(lbs), 2, figsize=(13, 3.6 * len(lbs)), squeeze=False)
    width = 0.8 / max(1, len(scenarios))
    for row, lb in enumerate(lbs):
        failed_ax, lost_ax = axes[row]
        for i, scenario in enumerate(scenarios):
            failed, lost = [], []
            for version in versions:
                cell = next(
                    (c for c in cells if (c.version, c.scenario, c.lb) == (version, scenario, lb)),
                    None,
                )
                failed.append(cell.failed_total if cell and not cell.error else 0)
                lost.append((cell.lost_operations or 0) if cell and not cell.error else 0)
            xs = [x + (i - (len(scenarios) - 1) / 2) * width for x in range(len(versions))]
            failed_ax.bar(xs, failed, width, label=scenario)
            lost_ax.bar(xs, lost, width, label=scenario)
        for ax, title in ((failed_ax, "failed requests"), (lost_ax, "lost operations")):
            ax.set_title(f"{title} ({lb} load balancer)")
            ax.set_xticks(range(len(versions)), versions)
            ax.set_ylabel("count")
            ax.grid(axis="y", alpha=0.3)
        failed_ax.legend(fontsize="small")
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()
