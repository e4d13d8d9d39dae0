"""timeline.png: requests per second by outcome in bins of 0.1 s, with the pod events
marked, and under it one lane per pod: created, ready, in each node's proxy,
terminating, gone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from lab.accounting import Request, timeline
from lab.events import Event

# Bins fine enough that a 0.3 s gap shows (3 empty bins), coarse enough to count in.
BIN_MS = 100

# Event kinds drawn as vertical marks, and their colours.
MARKS = {
    "created": "tab:blue",
    "ready": "tab:green",
    "lb-added": "tab:cyan",
    "lb-removed": "tab:orange",
    "deleted": "tab:purple",
    "sigterm": "tab:red",
    "sigkilled": "black",
    "fault": "magenta",  # a --fault's start and end, labelled with its kind
}

# Phases worth a label on the plot; the others are drawn as unlabelled lines.
LABELLED_PHASES = ("warm-up", "action", "action-complete", "steady", "stop-load", "teardown")

# Lane colours: the pod's own state (the lane's upper half), and its time in the proxies.
LANE_COLOURS = {
    "starting": "lightgrey",
    "ready": "tab:green",
    "not ready": "gold",
    "terminating": "tab:orange",
    "in proxy": "tab:cyan",
}


@dataclass
class Lane:
    """One pod's life, as spans of seconds since the start."""

    pod: str
    states: list[tuple[str, float, float]] = field(default_factory=list)
    proxies: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    end: float | None = None  # when it was gone


def _node(event: Event) -> str:
    """The node an lb event is about ("node1: ..." with --nodes, "" with one node)."""
    first = event.detail.split(":", 1)[0].split(" ", 1)[0]
    return first if first.startswith("node") else ""


def lanes(events: list[Event]) -> list[Lane]:
    """Each pod's spans from its events, in the order pods were created; a span still
    open at the last event ends there."""
    until = max((e.t for e in events), default=0.0)
    out: dict[str, Lane] = {}
    state: dict[str, tuple[str, float]] = {}
    joined: dict[tuple[str, str], float] = {}

    def close(pod: str, t: float, new: str | None) -> None:
        if pod in state:
            name, since = state.pop(pod)
            out[pod].states.append((name, since, t))
        if new is not None:
            state[pod] = (new, t)

    for event in events:
        pod = event.pod
        if event.kind == "created":
            out[pod] = Lane(pod)
            close(pod, event.t, "starting")
        if pod not in out:
            continue
        current = state.get(pod, ("", 0.0))[0]
        if event.kind == "ready" and current != "terminating":
            close(pod, event.t, "ready")
        elif event.kind == "not-ready" and current == "ready":
            close(pod, event.t, "not ready")
        elif event.kind == "deleted":
            close(pod, event.t, "terminating")
        elif event.kind == "gone":
            close(pod, event.t, None)
            out[pod].end = event.t
        elif event.kind == "lb-added":
            joined.setdefault((pod, _node(event)), event.t)
        elif event.kind == "lb-removed":
            node = _node(event)
            since = joined.pop((pod, node), None)
            if since is not None:
                out[pod].proxies.setdefault(node, []).append((since, event.t))
    for pod in list(state):
        close(pod, until, None)
    for (pod, node), since in joined.items():
        out[pod].proxies.setdefault(node, []).append((since, until))
    return list(out.values())


def _draw_lanes(ax: Axes, pod_lanes: list[Lane]) -> None:
    nodes = sorted({node for lane in pod_lanes for node in lane.proxies})
    labelled: set[str] = set()
    for row, lane in enumerate(pod_lanes):
        y = len(pod_lanes) - 1 - row  # the first pod on top
        for name, start, end in lane.states:
            label = name if name not in labelled else None
            labelled.add(name)
            ax.broken_barh(
                [(start, max(end - start, 0.01))],
                (y + 0.45, 0.45),
                facecolors=LANE_COLOURS[name],
                label=label,
            )
        # The lower half: one thin strip per node's proxy, so the slowest node's
        # removal (the tail that still sends new connections) is visible.
        height = 0.4 / max(len(nodes), 1)
        for index, node in enumerate(nodes):
            spans = lane.proxies.get(node, [])
            if not spans:
                continue
            label = "in proxy" if "in proxy" not in labelled else None
            labelled.add("in proxy")
            ax.broken_barh(
                [(start, max(end - start, 0.01)) for start, end in spans],
                (y + 0.05 + (len(nodes) - 1 - index) * height, height * 0.9),
                facecolors=LANE_COLOURS["in proxy"],
                edgecolors="none",
                label=label,
            )
        if lane.end is not None:
            ax.plot([lane.end], [y + 0.5], marker="x", color="black", markersize=4)
    ax.set_yticks([len(pod_lanes) - 1 - row + 0.5 for row in range(len(pod_lanes))])
    ax.set_yticklabels([lane.pod for lane in pod_lanes], fontsize=6)
    ax.set_ylim(0, max(len(pod_lanes), 1))
    ax.set_ylabel("pods", fontsize=7)
    order = f"\nin proxy: {', '.join(nodes)}\ntop to bottom" if len(nodes) > 1 else ""
    # Beside the lanes, not over the first ones.
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.002, 1.0),
        fontsize=6,
        frameon=False,
        title=f"x: gone{order}",
        title_fontsize=6,
    )
    ax.grid(True, axis="x", alpha=0.3)


def draw(requests: list[Request], events: list[Event], start_wall: float, path: Path) -> None:
    start_ms = int(start_wall * 1000)
    series = timeline(requests, start_ms, BIN_MS)
    bins = [b for counts in series.values() for b in counts]
    first, last = (min(bins), max(bins)) if bins else (0, 0)
    pod_lanes = lanes(events)
    height = 5 + min(len(pod_lanes), 60) * 0.18
    fig, (ax, lane_ax) = plt.subplots(
        2,
        1,
        figsize=(12, height),
        sharex=True,
        gridspec_kw={"height_ratios": [5, max(1.0, height - 5)]},
    )
    per_second = 1000 / BIN_MS
    try:
        for kind in sorted(series, key=lambda k: (k != "ok", k)):
            # Every bin of the load gets a value, zeros included, so a failure burst
            # shows as a spike instead of a line drawn across the quiet bins.
            xs = list(range(first, last + 1))
            ys = [series[kind].get(x, 0) * per_second for x in xs]
            ax.step(
                [x * BIN_MS / 1000 for x in xs],
                ys,
                where="post",
                label=kind,
                linewidth=0.9 if kind == "ok" else 1.4,
            )
        seen: set[str] = set()
        for event in events:
            colour = MARKS.get(event.kind)
            if colour is not None:
                label = event.kind if event.kind not in seen else None
                seen.add(event.kind)
                ax.axvline(event.t, color=colour, alpha=0.35, linewidth=0.8, label=label)
                if event.kind == "fault":
                    ax.annotate(
                        " ".join(event.detail.split()[:2]),
                        (event.t, 0.5),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        va="center",
                        ha="right",
                        fontsize=8,
                        color="magenta",
                    )
            elif event.kind == "phase":
                name = event.detail.split()[0] if event.detail else ""
                for axes in (ax, lane_ax):
                    axes.axvline(event.t, color="grey", linestyle="--", linewidth=0.8)
                if name in LABELLED_PHASES:
                    ax.annotate(
                        name,
                        (event.t, 1),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        va="top",
                        ha="right",
                        fontsize=8,
                        color="dimgrey",
                    )
        ax.set_ylabel(f"requests per second, {BIN_MS / 1000:g} s bins (symlog)")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower left", fontsize=7, ncol=5, framealpha=0.9)
        ax.grid(True, alpha=0.3)
        ax.set_title("requests per second by outcome, with pod events; each pod's life below")
        _draw_lanes(lane_ax, pod_lanes)
        lane_ax.set_xlabel("seconds since the experiment started")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
