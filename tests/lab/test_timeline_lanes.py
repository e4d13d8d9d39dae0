"""The timeline's picture: 0.1 s bins, and one lane per pod with each node's proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lab.accounting import Request, timeline
from lab.events import Event
from lab.plot import BIN_MS, draw, lanes


def _event(t: float, pod: str, kind: str, detail: str = "") -> Event:
    return Event(t, 1000.0 + t, pod, kind, detail)


def test_a_short_gap_shows_in_tenth_second_bins() -> None:
    """1. Requests every 50 ms for 2 s, with none from 1.0 s to 1.3 s; 2. in 0.1 s bins
    the three bins of the gap are empty and their neighbours are not; 3. in 1 s bins the
    gap would not show (every second has requests); 4. a bin of 0 ms is refused."""
    start_ms = 1_000_000
    times = [t for t in range(0, 2000, 50) if not 1000 <= t < 1300]
    requests = [Request(start_ms + t, f"r{t}", 200, "", "") for t in times]
    fine = timeline(requests, start_ms, BIN_MS)["ok"]
    assert [fine.get(b, 0) for b in range(9, 14)] == [2, 0, 0, 0, 2]
    coarse = timeline(requests, start_ms)["ok"]
    assert all(coarse[s] > 0 for s in (0, 1))
    with pytest.raises(ValueError, match="bin_ms"):
        timeline(requests, start_ms, 0)


def test_lane_spans_per_pod_and_per_node_proxy() -> None:
    """1. A pod's events on two nodes: created, ready, added to node0's then node1's
    proxy, deleted, removed from node0's proxy, gone, removed from node1's (the slow
    node's tail); 2. its lane has the states starting, ready, terminating, each node's
    time in the proxy and its end; 3. a second pod still running at the last event has
    its spans closed there."""
    events = [
        _event(0.0, "a", "created", "127.1.1.2 revision 1 node0"),
        _event(0.5, "b", "created", "127.1.1.3 revision 1 node1"),
        _event(1.0, "a", "ready"),
        _event(1.2, "a", "lb-added", "node0: 127.1.1.2:8000"),
        _event(2.0, "a", "lb-added", "node1: 127.1.1.2:8000"),
        _event(2.5, "b", "ready"),
        _event(2.6, "b", "lb-added", "node0: 127.1.1.3:8000"),
        _event(5.0, "a", "deleted", "grace 30s"),
        _event(5.3, "a", "lb-removed", "node0"),
        _event(6.0, "a", "not-ready"),
        _event(6.0, "a", "gone"),
        _event(6.8, "a", "lb-removed", "node1"),
        _event(7.0, "", "phase", "teardown"),
    ]
    a, b = lanes(events)
    assert a.pod == "a" and b.pod == "b"
    assert a.states == [("starting", 0.0, 1.0), ("ready", 1.0, 5.0), ("terminating", 5.0, 6.0)]
    assert a.proxies == {"node0": [(1.2, 5.3)], "node1": [(2.0, 6.8)]}
    assert a.end == 6.0
    assert b.states == [("starting", 0.5, 2.5), ("ready", 2.5, 7.0)]
    assert b.proxies == {"node0": [(2.6, 7.0)]} and b.end is None


def test_one_node_lanes_and_the_drawn_picture(tmp_path: Path) -> None:
    """1. One node (lb events without a node name), a pod that becomes not ready and
    ready again; 2. its states follow; 3. the picture is drawn, taller than the plot
    alone, with the lanes under the requests."""
    events = [
        _event(0.0, "p", "created"),
        _event(1.0, "p", "ready"),
        _event(1.1, "p", "lb-added", "127.1.1.2:8000"),
        _event(3.0, "p", "not-ready"),
        _event(3.2, "p", "lb-removed"),
        _event(4.0, "p", "ready"),
        _event(4.2, "p", "lb-added", "127.1.1.2:8000"),
        _event(6.0, "p", "deleted"),
        _event(6.1, "p", "lb-removed"),
        _event(7.0, "p", "gone"),
    ]
    (lane,) = lanes(events)
    assert [name for name, _, _ in lane.states] == [
        "starting",
        "ready",
        "not ready",
        "ready",
        "terminating",
    ]
    assert lane.proxies == {"": [(1.1, 3.2), (4.2, 6.1)]}
    requests = [Request(1_000_000 + t, str(t), 200, "", "") for t in range(0, 7000, 20)]
    path = tmp_path / "timeline.png"
    draw(requests, events, 1000.0, path)
    with Image.open(path) as image:
        width, height = image.size
    assert width == 12 * 110 and height > 5 * 110
