"""Kubernetes rules the lab's controllers follow, each checked against the rule's source:
RollingUpdate fenceposts, scale-down victims, the probe ticker, terminating endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from lab.controller import DELETION_COST, VictimFacts, deletion_cost, deletion_key
from lab.endpoints import Conditions, usable
from lab.influx import free_port
from lab.manifest import ManifestError, Strategy, load
from lab.pods import Ticker
from lab.probes import http_probe
from tests.lab.labkit import READY_PROBE, cluster, run, tiny_manifest

# -- RollingUpdate fenceposts (ResolveFenceposts) -----------------------------------------


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "expected"),
    [
        ("28%", "28%", 25, (7, 7)),  # 25 * 28 / 100 = 7 exactly: ceil(7) is 7, not 8
        ("29%", "29%", 25, (8, 7)),  # 7.25: surge up, unavailable down
        ("25%", "25%", 13, (4, 3)),
        ("100%", "100%", 3, (3, 3)),
        ("1%", "1%", 1, (1, 0)),
        (0, "10%", 5, (0, 1)),  # 0.5 rounds down to 0; both 0 would stall: unavailable 1
        ("0%", 2, 4, (0, 2)),
        (3, 0, 13, (3, 0)),
    ],
)
def test_fenceposts_in_integer_arithmetic(
    surge: int | str, unavailable: int | str, replicas: int, expected: tuple[int, int]
) -> None:
    """A RollingUpdate strategy and a replica count.
    1. Resolve maxSurge and maxUnavailable to pod counts.
    2. Surge is the integer ceiling and unavailable the floor of percent * replicas / 100;
       when both come to 0, unavailable is 1."""
    assert Strategy("RollingUpdate", surge, unavailable).resolve(replicas) == expected


def _with_strategy(tmp_path: Path, rolling: dict[str, Any]) -> Path:
    return tiny_manifest(
        tmp_path / "m.yml",
        port=8123,
        replicas=25,
        strategy={"type": "RollingUpdate", "rollingUpdate": rolling},
    )


def test_a_manifest_with_28_percent_of_25_surges_7(tmp_path: Path) -> None:
    """A manifest with 25 replicas, maxSurge and maxUnavailable 28 %.
    1. Load it and resolve the strategy.
    2. 7 and 7: the float product 0.28 * 25 is 7.000000000000001 and must not round to 8."""
    manifests = load(_with_strategy(tmp_path, {"maxSurge": "28%", "maxUnavailable": "28%"}))
    assert manifests.deployment.strategy.resolve(25) == (7, 7)


@pytest.mark.parametrize(
    ("rolling", "field", "message"),
    [
        ({"maxSurge": "12.5%"}, "maxSurge", "whole percentage"),
        ({"maxUnavailable": "12.5%"}, "maxUnavailable", "whole percentage"),
        ({"maxSurge": "-5%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "5"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "1e1%"}, "maxSurge", "whole percentage"),
        ({"maxSurge": "٣%"}, "maxSurge", "whole percentage"),  # a non-ASCII digit
        ({"maxUnavailable": "110%"}, "maxUnavailable", "greater than 100%"),
        ({"maxSurge": 0, "maxUnavailable": "0%"}, "maxUnavailable", "may not be 0"),
    ],
)
def test_invalid_rolling_update_is_refused_naming_the_field(
    tmp_path: Path, rolling: dict[str, Any], field: str, message: str
) -> None:
    """A manifest whose rollingUpdate has a value the API server refuses.
    1. Load it.
    2. A ManifestError names the file, the field's full path and the rule."""
    path = _with_strategy(tmp_path, rolling)
    before = path.read_text()
    with pytest.raises(ManifestError) as caught:
        load(path)
    assert f"spec.strategy.rollingUpdate.{field}" in str(caught.value)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert path.read_text() == before  # nothing changed


# -- Scale-down victims (ActivePodsWithRanks) ---------------------------------------------


def _facts(uid: str, **kw: Any) -> VictimFacts:
    base: dict[str, Any] = {
        "pending": False,
        "ready": True,
        "ready_since": 90.0,
        "deletion_cost": 0,
        "restarts": 0,
        "created": 80.0,
    }
    return VictimFacts(uid=uid, **{**base, **kw})


def _order(pods: list[VictimFacts], now: float = 100.0) -> list[str]:
    return [f.uid for f in sorted(pods, key=lambda f: deletion_key(f, now))]


def test_victims_in_the_order_of_active_pods_with_ranks() -> None:
    """Pods that differ in one fact each, against a ready, Running, cost-0 pod.
    1. Sort them for deletion at t = 100 s.
    2. Pending, then not ready (more restarts, then newer), then the lower deletion cost,
       then ready for a shorter time; the pod with cost 5 goes last."""
    pods = [
        _facts("z-ready-long", ready_since=10.0),
        _facts("y-costly", deletion_cost=5, ready_since=99.0),
        _facts("x-ready-short", ready_since=99.0),
        _facts("w-unready-old", ready=False, ready_since=None, created=10.0),
        _facts("v-unready-new", ready=False, ready_since=None, created=99.0),
        _facts("u-unready-restarted", ready=False, ready_since=None, created=10.0, restarts=2),
        _facts("t-pending", pending=True, ready=False, ready_since=None, created=10.0),
        _facts("s-negative-cost", deletion_cost=-1, ready_since=10.0),
    ]
    assert _order(pods) == [
        "t-pending",
        "u-unready-restarted",
        "v-unready-new",
        "w-unready-old",
        "s-negative-cost",
        "x-ready-short",
        "z-ready-long",
        "y-costly",
    ]


def test_times_compare_on_a_log2_scale_then_by_uid() -> None:
    """Two ready pods, ready 4.4 s and 8.5 s ago: the same floor(log2(ns)) bucket (32).
    1. Sort them for deletion.
    2. The UID decides, not the exact age (LogarithmicScaleDown); 1 s against 8.5 s
       falls in different buckets and the shorter goes first whatever the UIDs."""
    same = [_facts("b", ready_since=100.0 - 4.4), _facts("a", ready_since=100.0 - 8.5)]
    assert _order(same) == ["a", "b"]
    apart = [_facts("b", ready_since=100.0 - 1.0), _facts("a", ready_since=100.0 - 8.5)]
    assert _order(apart) == ["b", "a"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("-5", -5), ("7", 7), ("lots", 0), ("", 0), ("2147483648", 0), ("-2147483648", -(2**31))],
)
def test_deletion_cost_annotation(value: str, expected: int) -> None:
    """A pod-deletion-cost annotation value.
    1. Read it.
    2. An int32, or 0 when missing or not an int32 (the sort ignores the parse error)."""
    assert deletion_cost({DELETION_COST: value}) == expected
    assert deletion_cost({}) == 0


def test_scale_down_deletes_by_rank_on_the_tiny_app(tmp_path: Path) -> None:
    """Tiny-app pods that are ready 1.5 s after they start.
    1. 2 replicas (A, B) ready; B annotated with pod-deletion-cost 10.
    2. Scale to 3 and wait until C is ready; scale to 4 (D starts, not ready yet).
    3. Scale to 1 at once: D (not ready), C (ready for less time), then A go, in that
       order; B, with the highest deletion cost, stays."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "1.5"],
        readiness={**READY_PROBE, "periodSeconds": 1},
        grace=1,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(c.controller.complete, 20, "2 ready pods")
            a, b = sorted(c.controller.active(), key=lambda p: p.created)
            annotations = {**b.template.annotations, DELETION_COST: "10"}
            b.template = dataclasses.replace(b.template, annotations=annotations)
            c.controller.scale(3)
            await c.until(c.controller.complete, 20, "3 ready pods")
            (pod_c,) = [p for p in c.controller.active() if p not in (a, b)]
            c.controller.scale(4)
            await c.until(lambda: len(c.controller.active()) == 4, 5, "a 4th pod")
            (d,) = [p for p in c.controller.active() if p not in (a, b, pod_c)]
            assert not d.ready
            c.controller.scale(1)
            await c.until(lambda: len(c.controller.active()) == 1, 5, "1 pod left")
            deleted = [e.pod for e in c.events.events if e.kind == "deleted"]
            assert deleted == [d.name, pod_c.name, a.name]
            assert c.controller.active() == [b]

    run(scenario())


# -- Probe timing (prober/worker.go) -------------------------------------------------------


def _probe_times(log: str, word: str) -> list[float]:
    return [float(line.split()[1]) for line in log.splitlines() if line.startswith(word + " ")]


def test_ticker_keeps_its_schedule_after_a_slow_receiver() -> None:
    """A Ticker of 0.2 s.
    1. Take the first tick (0.2 s); stay busy 0.3 s, past the tick at 0.4.
    2. The next wait returns at once (the one kept tick); the one after waits for the tick
       at 0.6, on the original schedule, not 0.2 s after the busy spell."""

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        origin = loop.time()
        ticker = Ticker(0.2, origin)
        await ticker.wait()
        times = [loop.time() - origin]
        await asyncio.sleep(0.3)
        for _ in range(2):
            await ticker.wait()
            times.append(loop.time() - origin)
        return times

    first, late, next_tick = asyncio.run(scenario())
    assert 0.2 <= first < 0.35
    assert 0.5 <= late < 0.55  # at once
    assert 0.6 <= next_tick < 0.7  # 0.2 s after the busy spell would be 0.7


def test_probes_run_on_a_fixed_ticker_from_the_container_start(tmp_path: Path) -> None:
    """A readiness exec probe that prints its start time and takes 0.3 s;
    initialDelaySeconds 1.5, periodSeconds 1.
    1. Start one pod; collect the probe start times from the pod log.
    2. The first probe runs at the first tick after the initial delay (2 s, not 1.5 s),
       then one per period on the same schedule (3 s, 4 s), not a period after each
       probe ended (3.3 s, 4.6 s)."""
    readiness = {
        "exec": {"command": ["sh", "-c", "echo probe $(date +%s.%N); sleep 0.3"]},
        "initialDelaySeconds": 1.5,
        "periodSeconds": 1,
        "timeoutSeconds": 5,
    }
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=readiness, grace=1)

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: len(_probe_times(c.log(pod), "probe")) >= 3, 15, "3 probes")
            started = c.events.first(pod.name, "started")
            assert started is not None
            offsets = [t - started.wall for t in _probe_times(c.log(pod), "probe")[:3]]
            for tick, offset in zip((2.0, 3.0, 4.0), offsets, strict=True):
                assert tick - 0.05 <= offset < tick + 0.25, offsets

    run(scenario())


def test_readiness_keeps_probing_a_terminating_pod_liveness_stops(tmp_path: Path) -> None:
    """A pod with readiness and liveness exec probes (period 1 s, each prints a line),
    the readiness one failing once a flag file exists; preStop sleeps 8 s.
    1. Wait until the pod is ready and both probes ran; delete it.
    2. Readiness probes go on during preStop and the pod stays Ready (serving); no
       liveness probe starts after the deletion.
    3. Create the flag file: the pod turns not ready while still terminating."""
    flag = tmp_path / "unready"
    readiness = {
        "exec": {"command": ["sh", "-c", f"echo ready $(date +%s.%N); test ! -e {flag}"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
        "timeoutSeconds": 5,  # a busy machine must not fail it by a slow fork
    }
    liveness = {
        "exec": {"command": ["sh", "-c", "echo live $(date +%s.%N)"]},
        "periodSeconds": 1,
    }
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        readiness=readiness,
        liveness=liveness,
        pre_stop={"sleep": {"seconds": 8}},
        grace=12,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(c.controller.complete, 15, "a ready pod")
            (pod,) = c.controller.active()
            await c.until(lambda: _probe_times(c.log(pod), "live"), 5, "a liveness probe")
            c.controller.scale(0)
            await c.until(lambda: pod.terminating, 2, "the pod deleted")
            deleted = c.events.first(pod.name, "deleted")
            assert deleted is not None

            def after(word: str, margin: float) -> list[float]:
                lines = _probe_times(c.log(pod), word)
                return [t for t in lines if t > deleted.wall + margin]

            await c.until(lambda: len(after("ready", 0.2)) >= 3, 8, "3 readiness probes")
            assert pod.ready and pod.terminating and not pod.gone
            # A liveness probe started just before the deletion may print a moment after
            # it on a busy machine; one per second would have printed 2 or more by now.
            assert after("live", 1.0) == []
            flag.touch()
            await c.until(lambda: not pod.ready, 3, "the pod not ready")
            assert pod.terminating and not pod.gone
            assert c.events.first(pod.name, "sigterm") is None  # still in preStop

    run(scenario())


# -- Terminating endpoints (ProxyTerminatingEndpoints) -------------------------------------


def test_endpoint_usability_falls_back_to_serving_terminating() -> None:
    """EndpointSlice conditions of a few endpoints.
    1. Ask which ones a proxy uses.
    2. The ready ones while there are any; otherwise the serving and terminating ones;
       never a terminating one that is not serving, nor a starting one."""
    ready = Conditions(ready=True, serving=True, terminating=False)
    draining = Conditions(ready=False, serving=True, terminating=True)
    dying = Conditions(ready=False, serving=False, terminating=True)
    starting = Conditions(ready=False, serving=False, terminating=False)
    assert usable({"a": ready, "b": draining, "c": dying}) == {"a"}
    assert usable({"b": draining, "c": dying, "d": starting}) == {"b"}
    assert usable({"c": dying, "d": starting}) == set()
    assert usable({}) == set()


def test_terminating_pod_keeps_traffic_only_when_no_pod_is_ready(tmp_path: Path) -> None:
    """2 tiny-app pods, readiness by an exec probe that fails once a flag file exists,
    preStop sleeps 6 s, lag 0.2 s.
    1. Scale to 1: the deleted pod leaves HAProxy during its preStop (a ready pod is left).
    2. Scale to 0: the last pod is terminating but still serving and no pod is ready, so
       it stays in HAProxy, and the first one, still in its preStop, comes back; requests
       sent through HAProxy are answered.
    3. Create the flag file: the readiness probes, still running, fail; the pods are no
       longer serving and leave HAProxy, before the last one's SIGTERM."""
    flag = tmp_path / "unready"
    readiness = {
        "exec": {"command": ["test", "!", "-e", str(flag)]},
        "periodSeconds": 1,
        "failureThreshold": 1,
        "timeoutSeconds": 5,  # a busy machine must not fail it by a slow fork
    }
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        readiness=readiness,
        pre_stop={"sleep": {"seconds": 6}},
        grace=10,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest, lag=0.2) as c:
            await c.until(lambda: c.controller.complete() and len(c.endpoints.in_lb) == 2, 15)
            c.controller.scale(1)
            await c.until(lambda: any(p.terminating for p in c.pods()), 2, "a pod deleted")
            (first,) = [p for p in c.pods() if p.terminating]
            await c.until(lambda: first.name not in c.haproxy.active_servers(), 2, "removal")
            assert first.ready and first.terminating  # serving, but a ready pod exists
            assert c.events.first(first.name, "sigterm") is None

            (last,) = c.controller.active()
            c.controller.scale(0)
            await c.until(lambda: last.terminating, 2, "the last pod deleted")
            await c.until(lambda: c.endpoints.fallback, 2, "the proxy's fallback")
            # Every serving-terminating endpoint: the first pod is in its preStop too.
            assert c.haproxy.active_servers() == {first.name, last.name}
            for _ in range(2):
                result = await http_probe(c.haproxy.host, c.haproxy.port, "/via-lb", timeout=5)
                assert result.detail == "HTTP 200"
            assert "get /via-lb" in c.log(last) + c.log(first)
            assert c.events.first(last.name, "lb-removed") is None

            flag.touch()
            await c.until(lambda: not c.haproxy.active_servers(), 4, "the last pod removed")
            assert last.terminating and not last.ready and not last.gone
            assert c.events.first(last.name, "sigterm") is None  # still in preStop
            assert any(e.kind == "lb-fallback" for e in c.events.events)
            ended = [e for e in c.events.events if e.kind == "lb-fallback-ended"]
            assert [e.detail for e in ended] == ["no serving endpoints left"]

    run(scenario())


def test_endpoints_controller_outlives_haproxy_going_away(tmp_path: Path) -> None:
    """1 tiny-app pod in HAProxy, lag 0.
    1. Stop HAProxy; scale to 2: the new pod becomes ready while HAProxy is away.
    2. The add fails: one `lb-error` event for that pod however often it is retried, and
       the endpoints controller keeps running.
    3. Start HAProxy again: the pending add goes through, the new pod takes traffic."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        readiness={**READY_PROBE, "periodSeconds": 1},
        grace=1,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.controller.complete() and c.endpoints.in_lb, 15, "1 pod")
            (first,) = c.controller.active()
            await c.haproxy.stop()
            c.controller.scale(2)
            await c.until(lambda: len(c.controller.active()) == 2, 5, "a second pod")
            (second,) = [p for p in c.controller.active() if p is not first]

            def errors() -> list[str]:
                return [e.detail for e in c.events.of(second.name) if e.kind == "lb-error"]

            await c.until(errors, 15, "the failed add")
            failed_at = c.events.now()
            await c.until(lambda: c.events.now() > failed_at + 0.5, 2, "retries")
            assert len(errors()) == 1 and errors()[0].startswith("add: ")
            assert c.endpoints.task is not None and not c.endpoints.task.done()
            assert second.name not in c.endpoints.in_lb

            await c.haproxy.start(c.registry)
            await c.until(lambda: second.name in c.haproxy.active_servers(), 5, "the add")
            assert c.events.first(second.name, "lb-added") is not None

    run(scenario())
