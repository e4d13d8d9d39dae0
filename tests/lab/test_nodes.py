"""Node failures and container crashes, as Kubernetes tells them apart; dead addresses."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab import blackhole
from lab.blackhole import Blackhole
from lab.config import ConfigError, parse_fault
from lab.influx import free_port
from lab.lag import Lag
from lab.matrix import MatrixConfig, experiment_config
from tests.lab.labkit import cluster, run, tiny_manifest, until
from tests.lab.test_faults import STEADY, _fault_events, _tiny
from tests.lab.test_lab_run import _lab, _run
from tests.support import REPO

needs_nft = pytest.mark.skipif(blackhole.available() is not None, reason="needs nft as root")


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def _connect(address: str, port: int, timeout: float) -> str:
    """How a connect to address:port ends within `timeout`: ok, refused or timeout."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        return "ok"


def _at(report: dict[str, Any], pod: str, kind: str) -> float:
    """When the pod's first event of this kind happened (seconds into the run)."""
    times = [e["t"] for e in report["events"] if e["pod"] == pod and e["kind"] == kind]
    assert times, f"no {kind} event for {pod}"
    return float(times[0])


def test_pod_kill_is_refused_naming_the_two_faults() -> None:
    """1. `pod-kill@1` is parsed; 2. it is refused, and the message names container-crash
    and node-failure, the two faults it was split into."""
    with pytest.raises(ConfigError, match=r"container-crash.*node-failure") as caught:
        parse_fault("pod-kill@1")
    assert str(caught.value).startswith("--fault")


@needs_nft
def test_blackhole_drops_exactly_one_address_and_is_removed() -> None:
    """1. Two addresses listen on one port; 2. the first is made dead: a connect to it
    times out (no RST), the second still connects; 3. close: the table is gone and the
    first connects again; a second close does nothing."""
    listeners: list[socket.socket] = []
    for address in ("127.201.7.2", "127.201.7.3"):
        sock = socket.socket()
        sock.bind((address, 0 if not listeners else listeners[0].getsockname()[1]))
        sock.listen()
        listeners.append(sock)
    port = listeners[0].getsockname()[1]
    hole = Blackhole(f"lab_dead_test_{port}")
    try:
        asyncio.run(hole.drop("127.201.7.2"))
        assert hole.table in _tables()
        assert _connect("127.201.7.2", port, 0.5) == "timeout"
        assert _connect("127.201.7.3", port, 0.5) == "ok"
        assert _connect("127.201.7.4", port, 0.5) == "refused"  # loopback's usual RST
    finally:
        asyncio.run(hole.close())
        for sock in listeners:
            sock.close()
    assert hole.table not in _tables()
    asyncio.run(hole.close())


@needs_nft
def test_revived_address_answers_again() -> None:
    """1. An address with a listener is made dead: connects time out; 2. it is revived
    (a new pod got it): connects succeed again, and the table stays for other dead
    addresses until closed."""
    with socket.socket() as sock:
        sock.bind(("127.201.8.2", 0))
        sock.listen()
        port = sock.getsockname()[1]
        hole = Blackhole(f"lab_dead_test_{port}")

        async def scenario() -> None:
            try:
                await hole.drop("127.201.8.2")
                assert _connect("127.201.8.2", port, 0.5) == "timeout"
                await hole.revive("127.201.8.2")
                await hole.revive("127.201.8.2")  # not dead: nothing to do
                assert _connect("127.201.8.2", port, 0.5) == "ok"
                assert hole.table in _tables()
            finally:
                await hole.close()

        asyncio.run(scenario())


@needs_nft
def test_balancer_health_checks_take_a_dead_nodes_proxy_out(tmp_path: Path) -> None:
    """1. A balancer (real HAProxy, TCP health checks every 0.3 s, down after 2 failures)
    in front of two listeners on their own loopback addresses, as --nodes puts each
    node's proxy: both UP. 2. The first address is made dead (its node failed): its
    checks time out, and within a few intervals it is DOWN, the other still UP. 3. Every
    new connection through the balancer then reaches the live one."""
    from lab.haproxy import HAProxy, HealthChecks
    from lab.procs import Registry

    listeners: list[socket.socket] = []
    for address in ("127.201.9.2", "127.201.9.3"):
        sock = socket.socket()
        sock.bind((address, 0 if not listeners else listeners[0].getsockname()[1]))
        sock.listen(64)
        listeners.append(sock)
    port = listeners[0].getsockname()[1]
    hole = Blackhole(f"lab_dead_test_{port}")

    async def scenario() -> None:
        registry = Registry()
        front = HAProxy(tmp_path, free_port(), health_checks=HealthChecks(0.3, 2, 2))
        try:
            await front.start(registry)
            front.add_server("node0", "127.201.9.2", port)
            front.add_server("node1", "127.201.9.3", port)
            await until(lambda: front.servers() == {"node0": "UP", "node1": "UP"}, 5, "both UP")
            await hole.drop("127.201.9.2")
            await until(
                lambda: front.servers() == {"node0": "DOWN", "node1": "UP"}, 5, "node0 DOWN"
            )
            before = _server_sessions(front)
            for _ in range(6):
                assert await asyncio.to_thread(_connect, "127.0.0.1", front.port, 1.0) == "ok"

            def sent() -> dict[str, int]:
                now = _server_sessions(front)
                return {name: now[name] - before[name] for name in now}

            await until(lambda: sent()["node1"] >= 6, 5, "six connections to node1")
            assert sent()["node0"] == 0, sent()
        finally:
            await hole.close()
            await front.stop()
            await registry.kill_all()
        assert registry.alive() == []

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        for sock in listeners:
            sock.close()


def _server_sessions(haproxy: Any) -> dict[str, int]:
    """Connections HAProxy has sent to each backend server so far (`stot`)."""
    out = {}
    for row in haproxy.command("show stat").splitlines():
        cols = row.split(",")
        if len(cols) > 7 and cols[0] == "pods" and cols[1] not in ("BACKEND", "FRONTEND"):
            out[cols[1]] = int(cols[7] or 0)
    return out


@needs_nft
def test_gone_pods_address_drops_connections_instead_of_rst(tmp_path: Path) -> None:
    """1. One pod of the tiny app runs and serves on its address; 2. the Deployment is
    scaled to 0 and the pod is gone; 3. a connect to its address and port times out (in a
    cluster the sandbox and its IP are gone), where loopback would refuse at once; 4. the
    run's table is removed at the end."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), readiness=None)
    table = f"lab_dead_test_{tmp_path.name}"[:60].replace("-", "_")

    async def scenario() -> None:
        async with cluster(tmp_path, manifest, dead=Blackhole(table)) as c:
            await c.until(lambda: any(p.ready for p in c.pods()), 15, "a ready pod")
            pod = c.pods()[0]
            port = c.manifests.target_port
            # No readiness probe: ready at start, listening a moment later.
            await c.until(lambda: _connect(pod.ip, port, 0.2) == "ok", 15, "the app listening")
            c.controller.scale(0)
            await c.until(lambda: pod.gone, 40, "the pod gone")
            assert await asyncio.to_thread(_connect, pod.ip, port, 1.0) == "timeout"
            assert await asyncio.to_thread(_connect, pod.ip, port + 1, 1.0) == "timeout"

    run(scenario())
    assert table not in _tables()


def test_container_crash_restarts_the_container_in_the_same_pod(tmp_path: Path) -> None:
    """1. Two pods under a 4 s steady load; 2. one pod's container is SIGKILLed 1 s in;
    3. the kubelet restarts it in the same pod (same address, one restart, no new pod,
    no preStop or SIGTERM), and it is ready again."""
    manifest = _tiny(tmp_path, 2, pre_stop={"sleep": {"seconds": 1}}, grace=5)
    report = _run(
        tmp_path / "out", manifest, *STEADY, "--duration", "4", "--fault", "container-crash@1"
    )
    faults = _fault_events(report)
    assert [e["detail"].split()[:2] for e in faults] == [
        ["container-crash", "start"],
        ["container-crash", "end"],
    ]
    victim = faults[0]["pod"]
    events = [e for e in report["events"] if e["pod"] == victim]
    kinds = [e["kind"] for e in events]
    crashed = _at(report, victim, "exited")
    assert "restarting" in kinds and "prestop-started" not in kinds[: kinds.index("exited")]
    assert [e["kind"] for e in events if e["t"] > crashed].count("ready") == 1
    started = [e["detail"] for e in events if e["kind"] == "started"]
    assert len(started) == 2  # the same pod, its container started twice
    assert report["pods_created"] == 2
    assert report["ok"] > 50


@needs_nft
def test_node_failure_keeps_the_endpoint_until_the_grace_then_evicts(tmp_path: Path) -> None:
    """1. Two pods under a 7 s steady load, 1 s requests timeout, grace 1.5 s and
    toleration 1.5 s; 2. one pod's node fails 1 s in: its address drops packets and its
    processes die; 3. the pod stays ready (and in HAProxy) until the node-monitor grace
    period, when it is marked not ready and removed; 4. it is deleted only after the
    toleration, and only then is a replacement created; 5. the failed requests are
    timeouts, not RSTs; 6. no nftables table of the run is left."""
    manifest = _tiny(tmp_path, 2, grace=5)
    report = _run(
        tmp_path / "out",
        manifest,
        *STEADY,
        *("--duration", "7", "--request-timeout", "1s", "--fault", "node-failure@1"),
        *("--node-monitor-grace", "1.5", "--unreachable-toleration", "1.5"),
    )
    faults = _fault_events(report)
    assert [e["detail"].split()[:2] for e in faults] == [
        ["node-failure", "start"],
        ["node-failure", "end"],
    ]
    victim = faults[0]["pod"]
    down = faults[0]["t"]
    kinds = [e["kind"] for e in report["events"] if e["pod"] == victim and e["t"] > down]
    not_ready = _at(report, victim, "node-not-ready")
    assert 1.4 <= not_ready - down <= 2.5
    # Ready and in the load balancer until then; no probe or restart on a dead node.
    assert _at(report, victim, "not-ready") >= not_ready
    assert _at(report, victim, "lb-removed") >= not_ready
    assert "restarting" not in kinds and "probe-failed" not in kinds
    deleted = _at(report, victim, "deleted")
    assert 2.9 <= deleted - down <= 4.5
    replacements = [e for e in report["events"] if e["kind"] == "created" and e["t"] > down]
    assert len(replacements) == 1 and replacements[0]["t"] >= deleted
    assert report["pods_created"] == 3
    assert report["failed"].get("timeout", 0) >= 1, report["failed"]
    assert not {"refused", "reset"} & set(report["failed"]), report["failed"]
    phases = [e["detail"].split() for e in report["events"] if e["kind"] == "phase"]
    tables = [words[3].rstrip(",") for words in phases if words[0] == "dead-addresses"]
    assert len(tables) == 1 and tables[0].startswith("lab_dead_")
    assert tables[0] not in _tables()


@needs_nft
@pytest.mark.parametrize("signals", [1, 2])
def test_node_failure_table_removed_when_the_run_is_interrupted(
    tmp_path: Path, signals: int
) -> None:
    """1. A node fails 0.5 s into a long steady run with the default 40 s grace; 2. the
    run gets SIGINT (graceful stop), or SIGINT twice (the forced path) while the pod's
    address is dead; 3. the run ends within 20 s, although requests hang on the dead
    address (k6's own timeout is 60 s: an interrupted run does not wait for them), and
    the nftables table it added is gone."""
    manifest = _tiny(tmp_path, 2, grace=2)
    out = tmp_path / "out"
    lab = subprocess.Popen(
        _lab(out, manifest, *STEADY, "--duration", "60", "--fault", "node-failure@0.5"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        table = f"lab_dead_{lab.pid}_"
        deadline = time.monotonic() + 60
        while table not in _tables():
            assert lab.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        signalled = time.monotonic()
        for _ in range(signals):
            lab.send_signal(signal.SIGINT)
            time.sleep(0.3)
        try:
            _, err = lab.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"lab ran on after SIGINT: {exc.stderr!r}") from None
        assert time.monotonic() - signalled < 20, err
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.communicate()
    assert table not in _tables()


def test_nodes_spread_pods_each_proxy_with_its_own_lag(tmp_path: Path) -> None:
    """1. Three nodes, three replicas, a drawn lag of 0.2-1.5 s, a rollout restart under
    load; 2. the first pods spread one per node; 3. every pod joins every node's
    proxy, each after its own drawn lag (not all at once); 4. the load entered through
    every node's proxy."""
    manifest = _tiny(tmp_path, 3)
    report = _run(
        tmp_path / "out",
        manifest,
        *("--scenario", "rollout-restart", "--vus", "5", "--warmup", "1", "--cooldown", "1"),
        *("--endpoint-lag", "0.2-1.5", "--nodes", "3"),
    )
    created = [e for e in report["events"] if e["kind"] == "created"]
    assert len(created) == 6
    # The first three spread one per node; the rollout's pods go where the fewest pods
    # are not gone yet (a terminating pod still holds its node), so any node may repeat.
    nodes = [e["detail"].split()[-1] for e in created]
    assert sorted(nodes[:3]) == ["node0", "node1", "node2"]
    assert set(nodes[3:]) <= {"node0", "node1", "node2"}
    for pod in {e["pod"] for e in created}:
        added = [e for e in report["events"] if e["pod"] == pod and e["kind"] == "lb-added"]
        nodes = sorted(e["detail"].split(":")[0] for e in added)
        assert nodes == ["node0", "node1", "node2"], (pod, added)
    # Independent draws: some pod's three joins are spread over more than 0.1 s.
    spreads = []
    for pod in {e["pod"] for e in created}:
        times = [e["t"] for e in report["events"] if e["pod"] == pod and e["kind"] == "lb-added"]
        spreads.append(max(times) - min(times))
    assert max(spreads) > 0.1, spreads
    phases = [e["detail"] for e in report["events"] if e["kind"] == "phase"]
    counts = next(p for p in phases if p.startswith("node-connections"))
    per_node = [int(part.split()[-1]) for part in counts.split(" ", 1)[1].split(", ")]
    assert len(per_node) == 3 and min(per_node) > 10, counts
    assert report["ok"] > 50


@needs_nft
def test_node_failure_takes_every_pod_on_that_node(tmp_path: Path) -> None:
    """1. Four pods on two nodes (two each) under a steady load; 2. a node fails 1 s in
    (grace and toleration 1 s each); 3. both pods on that node drop packets, are marked
    not ready together and evicted together; the other node's pods are untouched; 4. two
    replacements are created, after the eviction."""
    manifest = _tiny(tmp_path, 4, grace=5)
    report = _run(
        tmp_path / "out",
        manifest,
        *STEADY,
        *("--duration", "6", "--request-timeout", "1s", "--fault", "node-failure@1"),
        *("--node-monitor-grace", "1", "--unreachable-toleration", "1", "--nodes", "2"),
    )
    faults = _fault_events(report)
    assert [e["detail"].split()[:2] for e in faults] == [
        ["node-failure", "start"],
        ["node-failure", "end"],
    ]
    down = faults[0]["t"]
    node_of = {
        e["pod"]: e["detail"].split()[-1] for e in report["events"] if e["kind"] == "created"
    }
    victim_node = node_of[faults[0]["pod"]]
    assert faults[0]["detail"].startswith(f"node-failure start {victim_node} down")
    # The failed node's proxy goes with it, until the balancer's checks take it out.
    assert (
        f"{victim_node}'s proxy 127." in faults[0]["detail"]
        and "drops packets, out of the balancer after 2 failed checks every 5 s"
        in faults[0]["detail"]
    ), faults[0]
    first = [pod for pod, node in node_of.items()][:4]
    lost = {pod for pod in first if node_of[pod] == victim_node}
    assert len(lost) == 2
    marked = {e["pod"] for e in report["events"] if e["kind"] == "node-not-ready"}
    assert marked == lost
    teardown = next(
        e["t"]
        for e in report["events"]
        if e["kind"] == "phase" and e["detail"].startswith("teardown")
    )
    # Before the run's own teardown deletes every pod: only the lost ones were deleted.
    evicted = {
        e["pod"] for e in report["events"] if e["kind"] == "deleted" and down < e["t"] < teardown
    }
    assert evicted == lost
    deleted_at = min(_at(report, pod, "deleted") for pod in lost)
    replacements = [e for e in report["events"] if e["kind"] == "created" and e["t"] > down]
    assert len(replacements) == 2 and all(e["t"] >= deleted_at for e in replacements)


def test_matrix_passes_nodes_to_every_run_and_says_so(tmp_path: Path) -> None:
    """1. A matrix config with --nodes 3 and a drawn lag; 2. each run's LabConfig has 3
    nodes and the lag range; 3. the table's header names the nodes; 4. `lab run` refuses
    0 nodes before anything starts."""
    config = MatrixConfig(out=tmp_path / "out", nodes=3, endpoint_lag=Lag("uniform", 0.5, 3.0))
    config.validate()
    lab = experiment_config(config, Path("deploy/k8s/v10"), "rollout-restart", "tcp", tmp_path)
    assert lab.nodes == 3 and lab.endpoint_lag == Lag("uniform", 0.5, 3.0)
    assert any(line.startswith("--nodes 3:") for line in config.changes())
    assert not any("--nodes" in line for line in MatrixConfig().changes())
    with pytest.raises(ConfigError, match="--nodes: must be between 1 and"):
        dataclasses.replace(lab, nodes=0).validate()


@needs_nft
def test_two_node_failures_at_once_take_two_pods(tmp_path: Path) -> None:
    """1. Three pods; 2. two node-failure faults at the same moment; 3. each takes a
    different pod (a lost pod is no victim), both are replaced after the eviction."""
    manifest = _tiny(tmp_path, 3, grace=5)
    report = _run(
        tmp_path / "out",
        manifest,
        *STEADY,
        *("--duration", "4", "--request-timeout", "1s"),
        *("--fault", "node-failure@1", "--fault", "node-failure@1"),
        *("--node-monitor-grace", "0.5", "--unreachable-toleration", "0.5"),
    )
    starts = [e for e in _fault_events(report) if e["detail"].split()[1] == "start"]
    assert len(starts) == 2 and starts[0]["pod"] != starts[1]["pod"]
    assert report["pods_created"] == 5
