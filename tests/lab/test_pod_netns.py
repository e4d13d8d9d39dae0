"""`--pod-network netns`: each pod of the process runtime in a network namespace of its
own, on a bridge of the run (in a namespace of its own too), so a command that binds 0.0.0.0 on a fixed port runs
unchanged in every pod at once; nothing of that network outlives the run."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lab import leftovers, pod_netns
from lab.influx import free_port
from lab.pods import Pod
from lab.procs import Registry
from tests.lab import labkit
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, Cluster, run, tiny_manifest
from tests.lab.test_lab_run import _kill_leftovers, _run
from tests.support import REPO, VENV_BIN, wait_until

needs_netns = pytest.mark.skipif(
    pod_netns.unavailable() is not None, reason=f"{pod_netns.unavailable()}"
)
GONE_WITHIN = 30.0  # seconds for the watchdog to remove a killed run's network


def _gateways() -> dict[str, str]:
    """The lab's host links to its pods' networks on this machine: name -> owner alias."""
    out = subprocess.run(["ip", "-j", "link", "show", "type", "veth"], capture_output=True)
    return {
        link["ifname"]: link.get("ifalias", "")
        for link in json.loads(out.stdout or b"[]")
        if link["ifname"].startswith(pod_netns.GATEWAY_PREFIX)
    }


def _namespaces(run: str) -> list[str]:
    prefix = f"{pod_netns.NETNS_PREFIX}{run}-"
    directory = pod_netns.NETNS_DIR
    return sorted(p.name for p in directory.glob(f"{prefix}*")) if directory.is_dir() else []


def _links(run: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True)
    return [
        link["ifname"]
        for link in json.loads(out.stdout or b"[]")
        if link["ifname"] == f"{pod_netns.GATEWAY_PREFIX}{run}"
        or link["ifname"].startswith(f"{pod_netns.VETH_PREFIX}{run}-")
    ]


def _network_left(run: str) -> list[str]:
    return [*_namespaces(run), *_links(run)]


def _zero_host_manifest(
    path: Path, port: int, replicas: int = 2, env: list[dict[str, Any]] | None = None
) -> Path:
    """The tiny app as an image runs it: bound to 0.0.0.0 on a fixed port in every pod,
    with the pod IP in POD_IP (status.podIP)."""
    return tiny_manifest(
        path,
        port=port,
        replicas=replicas,
        args=["--ready-after", "0.3"],
        readiness=READY_PROBE,
        pre_stop={"sleep": {"seconds": 1}},
        grace=5,
        env=[
            {"name": "TINY_HOST", "value": "0.0.0.0"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *(env or []),
        ],
    )


@contextlib.asynccontextmanager
async def netns_cluster(tmp_path: Path, manifest: Path) -> AsyncIterator[Cluster]:
    """labkit.cluster on the namespaced process runtime: every process, namespace and the
    run's network are gone when the block exits, also on failure."""
    made: list[pod_netns.NetnsRuntime] = []

    async def namespaced(registry: Registry, pods: Path) -> pod_netns.NetnsRuntime:
        made.append(await pod_netns.netns_runtime(registry, pods, dict(os.environ)))
        return made[0]

    try:
        async with labkit.cluster(tmp_path, manifest, make_runtime=namespaced) as c:
            yield c
    finally:
        if made:
            assert _network_left(made[0].network.run) == []


def _environ(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(v.decode().partition("=")[::2] for v in data if b"=" in v)


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


@needs_netns
def test_two_pods_bind_0_0_0_0_on_one_port_and_serve_through_haproxy(tmp_path: Path) -> None:
    """Two tiny-app pods bound to 0.0.0.0 on the same fixed port (on loopback the second
    would fail to bind), each in its own namespace.
    1. Both become Ready and join HAProxy; requests through HAProxy reach both pods.
    2. Each pod's POD_IP is its own address, in the run's subnet, on the namespace's eth0,
       and its main process runs in that namespace (not the host's).
    3. When the cluster ends, no namespace or link of the run is left."""
    port = free_port()
    manifest = _zero_host_manifest(tmp_path / "m.yml", port)

    async def scenario() -> None:
        async with netns_cluster(tmp_path, manifest) as c:
            await c.until(lambda: len(c.endpoints.in_lb) == 2, 20, "both pods in HAProxy")
            pods: list[Pod] = c.pods()
            assert len({p.ip for p in pods}) == 2
            runtime = c.kubelet.runtime
            assert isinstance(runtime, pod_netns.NetnsRuntime)
            subnet = runtime.network.subnet
            assert subnet is not None
            host_netns = _netns_inode(os.getpid())
            for pod in pods:
                assert ipaddress.IPv4Address(pod.ip) in subnet
                assert pod.process is not None
                assert _environ(pod.process.pid)["POD_IP"] == pod.ip
                namespace = runtime.network.namespace(pod.ip)
                inode = os.stat(pod_netns.NETNS_DIR / namespace).st_ino
                assert _netns_inode(pod.process.pid) == inode != host_netns
                shown = await asyncio.create_subprocess_exec(
                    "ip", "-n", namespace, "-j", "-4", "addr", "show", "eth0",
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                output, _ = await shown.communicate()
                addresses = [a["local"] for a in json.loads(output)[0]["addr_info"]]
                assert addresses == [pod.ip]

            def served_by_both() -> bool:
                return all("request " in c.log(p) for p in pods)

            async with httpx.AsyncClient(timeout=2) as client:
                deadline = asyncio.get_running_loop().time() + 10
                while not served_by_both():
                    assert asyncio.get_running_loop().time() < deadline, "not served by both"
                    # A new connection each: HAProxy's tcp mode balances connections.
                    response = await client.post(
                        f"{c.haproxy.url}/sum",
                        json={"numbers": [1, 2]},
                        headers={"Connection": "close"},
                    )
                    assert response.status_code == 200

    run(scenario())


@needs_netns
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_lab_run_rollout_with_pod_network_netns_fails_nothing(tmp_path: Path) -> None:
    """`lab run --pod-network netns`: two tiny-app pods bound to 0.0.0.0 on one fixed port,
    writing to the lab's InfluxDB (on the pods' gateway address), 1 s preStop.
    1. A rollout-restart with 5 VUs: 0 failed, 0 lost operations.
    2. The event log names the run's host link and subnet; every pod's address is in it.
    3. Nothing of the run's network is left when it has ended."""
    influx = {"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}
    manifest = _zero_host_manifest(tmp_path / "m.yml", free_port(), env=[influx])
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--pod-network", "netns", "--scenario", "rollout-restart", "--vus", "5",
        "--warmup", "2", "--cooldown", "1", "--endpoint-lag", "0.2", "--quiet", timeout=120,
    )  # fmt: skip
    assert report["failed"] == {} and report["ok"] == report["requests"] > 50
    assert report["lost_operations"] == 0 and report["action_completed"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    phase = next(e["detail"] for e in events if str(e["detail"]).startswith("pod-network "))
    link, subnet = phase.split()[1], ipaddress.IPv4Network(phase.split()[2].rstrip(","))
    created = [e["detail"].split()[0] for e in events if e["kind"] == "created"]
    assert len(created) == 4 and all(ipaddress.IPv4Address(a) in subnet for a in created)
    assert _network_left(link.removeprefix(pod_netns.GATEWAY_PREFIX)) == []


@needs_netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "signals", [[signal.SIGKILL], [signal.SIGINT], [signal.SIGINT, signal.SIGINT]]
)
def test_a_stopped_lab_run_leaves_no_network(tmp_path: Path, signals: list[int]) -> None:
    """`lab run --pod-network netns --scenario steady` for a long time, stopped once both
    pods are ready: by SIGKILL, within 30 s (its watchdog) no namespace or link of the
    run is left; by SIGINT (graceful) or SIGINT twice (forced), none is left when it has
    exited, 130."""
    manifest = _zero_host_manifest(tmp_path / "m.yml", free_port())
    out = tmp_path / "out"
    argv = [
        str(VENV_BIN / "lab"), "run", "--manifests", str(manifest), "--image-map",
        str(TINY_IMAGES), "--out", str(out), "--seed", "1", "--quiet", "--pod-network",
        "netns", "--scenario", "steady", "--duration", "300", "--vus", "1",
    ]  # fmt: skip
    lab = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:

        def ready_pods() -> int:
            path = out / "events.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            return sum(json.loads(line)["kind"] == "ready" for line in lines if line.strip())

        wait_until(lambda: ready_pods() >= 2, 60, what="both pods ready")
        runs = [
            name.removeprefix(pod_netns.GATEWAY_PREFIX)
            for name, alias in _gateways().items()
            if alias.startswith(f"{pod_netns.OWNER_ALIAS}{lab.pid}:")
        ]
        assert len(runs) == 1, f"no network of the lab {lab.pid}: {_gateways()}"
        assert len(_namespaces(runs[0])) == 3  # the hub's and both pods'
        for sig in signals:
            lab.send_signal(sig)
            time.sleep(0.2)
        if signals == [signal.SIGKILL]:
            lab.wait(10)
            wait_until(lambda: not _network_left(runs[0]), GONE_WITHIN, what="the network gone")
        else:
            assert lab.wait(90) == 130
            assert _network_left(runs[0]) == []
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
        _kill_leftovers(out)


# Alone: every lab's start sweeps dead labs' networks; another starting meanwhile would
# take this test's dead one first (tests/conftest.py).
@pytest.mark.alone
@needs_netns
def test_next_lab_sweeps_a_dead_labs_network_and_spares_a_live_ones(tmp_path: Path) -> None:
    """What a lab killed together with its watchdog leaves: its host link, whose alias
    names an owner that is gone, its hub and a pod's namespace; and a namespace of a run
    whose host link is gone. The next lab's sweep (leftovers.sweep_stale, at every start)
    removes them all and says so; a live lab's network stays."""
    dead, live = pod_netns.PodNetwork(), pod_netns.PodNetwork()
    orphan = f"{pod_netns.NETNS_PREFIX}e0e0e0-2"
    try:
        for network in (dead, live):
            asyncio.run(network.open())
            asyncio.run(network.make(network.take()))
        dead_owner = f"{os.getpid()}:1"  # this PID, another start time: a process gone
        alias = f"{pod_netns.OWNER_ALIAS}{dead_owner}"
        subprocess.run(["ip", "link", "set", dead.link, "alias", alias], check=True)
        subprocess.run(["ip", "netns", "add", orphan], check=True)
        done = leftovers.sweep_stale()
        assert f"removed leftover link {dead.link}" in done
        for namespace in (dead.hub, f"{pod_netns.NETNS_PREFIX}{dead.run}-2", orphan):
            assert f"removed leftover network namespace {namespace}" in done
        wait_until(lambda: not _network_left(dead.run), 5, what="the dead lab's network gone")
        assert not (pod_netns.NETNS_DIR / orphan).exists()
        assert _network_left(live.run) == [
            f"{pod_netns.NETNS_PREFIX}{live.run}-2",
            live.hub,
            live.link,
        ]
    finally:
        subprocess.run(["ip", "netns", "delete", orphan], capture_output=True)
        for network in (dead, live):
            with contextlib.suppress(pod_netns.IPError):
                asyncio.run(network.close())


def _refused(tmp_path: Path, *options: str, env: dict[str, str] | None = None,
             user: bool = False) -> tuple[int, str]:  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    manifest = _zero_host_manifest(tmp_path / "m.yml", free_port())
    out = tmp_path / "out"
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(manifest), "--image-map",
            str(TINY_IMAGES), "--out", str(out), "--quiet", *options]  # fmt: skip
    if user:  # as nobody, from a directory nobody may read
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
    before = set(_gateways())
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert not out.exists(), "the refused run made its --out"
    assert set(_gateways()) == before, "the refused run made a network"
    return done.returncode, done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop it")
def test_pod_network_netns_without_root_is_refused(tmp_path: Path) -> None:
    """As a user who is not root: `lab: error: --pod-network netns: ... need root`, exit 2,
    nothing made."""
    tmp_path.chmod(0o777)
    # A home of its own that nobody may write (matplotlib's cache), outside pytest's.
    with tempfile.TemporaryDirectory() as home:
        os.chmod(home, 0o777)
        env = {**os.environ, "HOME": home, "MPLCONFIGDIR": home}
        code, stderr = _refused(tmp_path, "--pod-network", "netns", env=env, user=True)
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [
        "lab: error: --pod-network netns: network namespaces, veth pairs and a bridge need root"
    ]


def test_pod_network_netns_without_ip_or_on_docker_is_refused(tmp_path: Path) -> None:
    """Without `ip` on the PATH, and with --runtime docker: one `lab: error:` line each,
    exit 2, nothing made."""
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("nsenter", "haproxy", "k6", "python3"):
        if (found := shutil.which(tool)) is not None:
            (bare / tool).symlink_to(found)
    if os.geteuid() == 0:
        code, stderr = _refused(
            tmp_path / "a", "--pod-network", "netns", env={**os.environ, "PATH": str(bare)}
        )
        assert code == 2, stderr
        assert stderr.strip() == "lab: error: --pod-network netns: ip is not installed (iproute2)"
    code, stderr = _refused(tmp_path / "b", "--pod-network", "netns", "--runtime", "docker")
    assert code == 2, stderr
    assert stderr.strip().startswith(
        "lab: error: --pod-network netns: only for the process runtime"
    )


@needs_netns
def test_pod_namespaces_reach_the_host_and_each_other(tmp_path: Path) -> None:
    """Two pods' namespaces: each made with its address on eth0 and a default route
    through the gateway; a listener bound to 0.0.0.0 in one is reached from the host and
    from the other pod; removed with its link; the hub and host link removed at close."""
    network = pod_netns.PodNetwork()
    asyncio.run(network.open())
    try:
        address = network.take()
        asyncio.run(network.make(address))
        namespace = network.namespace(address)
        shown = subprocess.run(
            ["ip", "-n", namespace, "-j", "-4", "route", "show", "default"],
            capture_output=True,
            check=True,
        )
        assert json.loads(shown.stdout)[0]["gateway"] == network.gateway
        port = free_port()
        server = subprocess.Popen(
            network.enter(
                address, ["python3", "-m", "http.server", "--bind", "0.0.0.0", str(port)]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: httpx.get(f"http://{address}:{port}/", timeout=1).status_code == 200,
                10,
                what="the listener in the namespace",
            )
            other = network.take()
            asyncio.run(network.make(other))
            fetch = f"import urllib.request; urllib.request.urlopen('http://{address}:{port}/', timeout=5)"
            subprocess.run(network.enter(other, ["python3", "-c", fetch]), check=True, timeout=10)
            asyncio.run(network.remove(other))
        finally:
            server.kill()
            server.wait(5)
        asyncio.run(network.remove(address))
        assert _namespaces(network.run) == [network.hub]
    finally:
        asyncio.run(network.close())
    wait_until(lambda: not _network_left(network.run), 5, what="the hub and link gone")


@needs_netns
def test_a_lab_holding_the_network_lock_stalls_no_other_past_its_deadline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. Another lab holds the machine's pod-network lock and does not let go (stopped,
    say). 2. A run that needs it fails with the lock's name after LOCK_TIMEOUT, and a
    start's sweep says it did not sweep, rather than either waiting for ever."""
    monkeypatch.setattr(pod_netns, "LOCK_TIMEOUT", 0.3)
    holder = os.open(pod_netns.SUBNET_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        network = pod_netns.PodNetwork()
        with pytest.raises(pod_netns.IPError, match=r"held by another lab for 0\.3 s"):
            run(network.open(), 10)
        assert not network.opened  # nothing made
        assert pod_netns.sweep() == [
            f"pod networks not swept: {pod_netns.SUBNET_LOCK} held by another lab for 0.3 s"
        ]
    finally:
        os.close(holder)
