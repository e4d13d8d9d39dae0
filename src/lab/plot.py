"""timeline.png: requests per second by outcome, with the pod events marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt

from lab.accounting import Request, timeline
from lab.events import Event

# Event kinds drawn as vertical marks, and their colours.
MARKS = {
    "created": "tab:blue",
    "ready": "tab:green",
    "lb-added": "tab:cyan",
    "lb-removed": "tab:orange",
    "deleted": "tab:purple",
    "sigterm": "tab:red",
    "sigkilled": "black",
}


def draw(requests: list[Request], events: list[Event], start_wall: float, path: Path) -> None:
    start_ms = int(start_wall * 1000)
    series = timeline(requests, start_ms)
    fig, ax = plt.subplots(figsize=(12, 5))
    try:
        kinds = sorted(series, key=lambda k: (k != "ok", k))
        for kind in kinds:
            points = sorted(series[kind].items())
            xs = [s for s, _ in points]
            ys = [c for _, c in points]
            style = "-" if kind == "ok" else "-o"
            ax.plot(xs, ys, style, label=kind, markersize=3, linewidth=1.2)
        seen: set[str] = set()
        for event in events:
            colour = MARKS.get(event.kind)
            if colour is not None:
                label = event.kind if event.kind not in seen else None
                seen.add(event.kind)
                ax.axvline(event.t, color=colour, alpha=0.35, linewidth=0.8, label=label)
            elif event.kind == "phase":
                ax.axvline(event.t, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(
                    event.detail.split()[0],
                    (event.t, 1),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    va="top",
                    fontsize=7,
                    color="grey",
                )
        ax.set_xlabel("seconds since the experiment started")
        ax.set_ylabel("requests per second")
        ax.set_yscale("symlog", linthresh=10)
        ax.legend(loc="lower left", fontsize=7, ncol=4)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
