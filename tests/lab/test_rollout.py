"""The Deployment and endpoints controllers through real rollouts of the tiny app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lab.influx import free_port
from lab.lag import Lag
from tests.lab.labkit import READY_PROBE, Cluster, cluster, run, tiny_manifest

FAST_READY: dict[str, Any] = {**READY_PROBE, "periodSeconds": 1}


async def _sample_while(c: Cluster, done: Any, timeout: float) -> list[tuple[int, int]]:
    """Every 20 ms until `done()`: (non-terminating pods, available non-terminating pods)."""
    samples: list[tuple[int, int]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"rollout not done after {timeout} s: {samples[-5:]}"
        active = c.controller.active()
        samples.append((len(active), sum(1 for p in active if c.controller.available(p))))
        await asyncio.sleep(0.02)
    return samples


@pytest.mark.parametrize(
    ("surge", "unavailable", "bounds"),
    [(1, 1, (5, 3)), ("50%", 0, (6, 4))],
)
def test_rolling_update_stays_within_surge_and_unavailable(
    tmp_path: Path, surge: int | str, unavailable: int | str, bounds: tuple[int, int]
) -> None:
    """4 replicas that need ~1 s to become ready; RollingUpdate with the given limits.
    1. Wait until all 4 are available; `rollout restart`.
    2. Sample the pods every 20 ms until the rollout completes.
    3. Never more than replicas + maxSurge pods, never fewer than replicas - maxUnavailable
       available ones; at the end 4 pods of the new revision."""
    most, fewest = bounds
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=4,
        args=["--ready-after", "0.5"],
        readiness=FAST_READY,
        strategy={
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
        },
        grace=2,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(c.controller.complete, 20, "the first rollout")
            c.controller.rollout_restart()
            samples = await _sample_while(c, c.controller.complete, 60)
            assert samples, "the rollout finished before the first sample"
            assert max(total for total, _ in samples) == most
            assert min(available for _, available in samples) >= fewest
            assert all(p.revision == 2 for p in c.controller.active())
            assert len(c.controller.active()) == 4

    run(scenario())


def test_recreate_stops_every_old_pod_before_starting_new_ones(tmp_path: Path) -> None:
    """2 replicas with the Recreate strategy.
    1. `rollout restart`.
    2. No pod of revision 2 was created before every revision-1 pod was gone."""
    manifest = tiny_manifest(
        tmp_path / "m.yml", port=free_port(), replicas=2, strategy={"type": "Recreate"}, grace=2
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(c.controller.complete, 20, "the first rollout")
            old = list(c.controller.active())
            c.controller.rollout_restart()
            await c.until(c.controller.complete, 30, "the rollout")
            gone = max(e.t for p in old for e in c.events.of(p.name) if e.kind == "gone")
            created = [
                e.t
                for p in c.controller.active()
                for e in c.events.of(p.name)
                if e.kind == "created"
            ]
            assert min(created) >= gone

    run(scenario())


def test_haproxy_follows_ready_pods_after_the_lag(tmp_path: Path) -> None:
    """3 replicas behind HAProxy with a 0.3 s propagation lag; scale to 5, then a rollout.
    1. Every 20 ms compare HAProxy's servers taking traffic (runtime API) with the ready,
       non-terminating pods.
    2. Whenever the pods have not changed for lag + 0.2 s, the two sets are equal.
    3. Each pod joins HAProxy no sooner than the lag after it became ready."""
    lag = 0.3
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=3,
        args=["--ready-after", "0.3"],
        readiness=FAST_READY,
        grace=1,
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest, lag=lag) as c:
            await c.until(c.controller.complete, 20, "the first rollout")
            c.controller.scale(5)
            checked = 0
            stable_since = c.events.now()
            last: set[str] = set()
            phase = "scale"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while loop.time() < deadline:
                desired = c.endpoints.desired()
                if desired != last:
                    last, stable_since = desired, c.events.now()
                elif c.events.now() - stable_since > lag + 0.2:
                    assert c.haproxy.active_servers() == desired
                    checked += 1
                if c.controller.complete() and c.events.now() - stable_since > lag + 0.5:
                    if phase == "scale":
                        c.controller.rollout_restart()
                        phase = "rollout"
                    else:
                        break
                await asyncio.sleep(0.02)
            assert phase == "rollout" and checked > 10
            assert c.haproxy.active_servers() == c.endpoints.desired()
            for pod in c.kubelet.pods:
                ready = c.events.first(pod.name, "ready")
                added = c.events.first(pod.name, "lb-added")
                if ready is not None and added is not None:
                    assert added.t - ready.t >= lag - 0.01

    run(scenario())


def test_min_ready_seconds_holds_old_pods_until_new_ones_are_available(tmp_path: Path) -> None:
    """1 replica, maxSurge 1, maxUnavailable 0, minReadySeconds 1.
    1. `rollout restart`.
    2. The old pod is deleted no sooner than 1 s after the new one became ready."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        readiness=FAST_READY,
        min_ready=1,
        grace=1,
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(c.controller.complete, 20, "the first rollout")
            (old,) = c.controller.active()
            c.controller.rollout_restart()
            await c.until(c.controller.complete, 20, "the rollout")
            (new,) = c.controller.active()
            ready = c.events.first(new.name, "ready")
            deleted = c.events.first(old.name, "deleted")
            assert ready is not None and deleted is not None
            assert deleted.t - ready.t >= 1.0

    run(scenario())


def test_lag_range_draws_per_change() -> None:
    """--endpoint-lag 0.5-1.5: each change draws its own lag inside the range."""
    import random

    from lab.endpoints import EndpointsController
    from lab.events import EventLog
    from lab.haproxy import HAProxy

    controller = EndpointsController(
        HAProxy(Path("/nonexistent"), 1),
        list,
        1,
        EventLog(progress=None),
        Lag("uniform", 0.5, 1.5),
        random.Random(3),
    )
    lags = [controller.draw_lag() for _ in range(200)]
    assert all(0.5 <= lag <= 1.5 for lag in lags)
    assert max(lags) - min(lags) > 0.8


def test_lognormal_lag_draws_match_its_median_and_p99() -> None:
    """--endpoint-lag lognormal:1,5: 20,000 draws (seeded) have a median near 1 s and a
    99th percentile near 5 s, every draw positive: a long tail, most changes quick."""
    import random
    import statistics

    lag = Lag("lognormal", 1.0, 5.0)
    rng = random.Random(11)
    draws = sorted(lag.draw(rng) for _ in range(20_000))
    assert min(draws) > 0
    assert 0.95 <= statistics.median(draws) <= 1.05
    assert 4.6 <= draws[int(0.99 * len(draws))] <= 5.4
    assert lag.describe() == "lognormal (median 1 s, p99 5 s)"
    assert Lag.fixed(1.0).draw(rng) == 1.0
