"""Pod faults on the Docker runtime: the same faults (lab.faults) through the runtime's
container interface, on real containers of the tiny test app (an image made from
calc:latest with tests/lab/apps/tinyapp.py) and of calc v10."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import multiprocessing
import os
import random
import re
import socket
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from lab import blackhole
from lab.config import ConfigError, LabConfig, parse_fault
from lab.controller import VictimFacts
from lab.docker_runtime import LABEL, DockerContainer, DockerRuntime, docker_runtime
from lab.events import Event, EventLog
from lab.experiment import prepare
from lab.faults import Faults
from lab.images import Image
from lab.manifest import PodTemplate, load
from lab.matrix import rewrite_manifests
from lab.pods import Kubelet, Pod
from lab.procs import Registry
from lab.run_cgroup import RunCgroup
from tests.docker_support import IMAGE, engine_or_skip, ensure_image
from tests.lab.labkit import READY_PROBE, TINYAPP, run, tiny_manifest
from tests.lab.test_lab_run import _run
from tests.support import REPO

needs_nft = pytest.mark.skipif(blackhole.available() is not None, reason="needs nft as root")

TINY_TAG = "tinyapp:latest"  # what the tiny manifests' image maps to on the engine
TINY_PORT = 8080  # every pod has its own network namespace: one port for all
TINY_DOCKERFILE = f"""\
FROM {IMAGE}
COPY tinyapp.py /app/tinyapp.py
ENV TINY_HOST=0.0.0.0 PYTHONUNBUFFERED=1
ENTRYPOINT ["python3", "/app/tinyapp.py"]
CMD ["--port", "{TINY_PORT}"]
"""
LIVENESS: dict[str, Any] = {
    "httpGet": {"path": "/health", "port": "http"},
    "periodSeconds": 1,
    "failureThreshold": 2,
    "timeoutSeconds": 1,
}


def tiny_image(engine: docker.DockerClient) -> str:
    """The tiny app on calc:latest, rebuilt when the app, this recipe or the base change
    (a label holds their digest)."""
    base = str(engine.images.get(ensure_image(engine)).id)
    source = TINYAPP.read_bytes()
    digest = hashlib.sha256(source + TINY_DOCKERFILE.encode() + base.encode()).hexdigest()
    with contextlib.suppress(docker.errors.ImageNotFound):
        if engine.images.get(TINY_TAG).labels.get("lab.test.digest") == digest:
            return TINY_TAG
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", TINY_DOCKERFILE.encode()), ("tinyapp.py", source)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    output = engine.api.build(
        fileobj=context,
        custom_context=True,
        tag=TINY_TAG,
        labels={"lab.test.digest": digest},
        rm=True,
        forcerm=True,
        decode=True,
    )
    errors = [str(chunk["error"]) for chunk in output if "error" in chunk]
    assert not errors, errors
    return TINY_TAG


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    engine = engine_or_skip()
    tiny_image(engine)
    return engine


def tiny(path: Path, replicas: int = 1, empty_dir: bool = False, **options: Any) -> Path:
    """The tiny app's Deployment for the engine; with `empty_dir`, an emptyDir at /data."""
    tiny_manifest(path, port=TINY_PORT, replicas=replicas, **options)
    if empty_dir:
        documents = list(yaml.safe_load_all(path.read_text()))
        spec = documents[0]["spec"]["template"]["spec"]
        spec["volumes"] = [{"name": "data", "emptyDir": {}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


@dataclass
class Node:
    kubelet: Kubelet
    runtime: DockerRuntime
    events: EventLog
    template: PodTemplate

    def create(self, name: str) -> Pod:
        return self.kubelet.create_pod(name, self.template, Image("tinyapp"), 1)

    def faults(self, text: str, grace: float = 1.0, toleration: float = 1.0) -> Faults:
        return Faults(
            (parse_fault(text),),
            self.events,
            self.kubelet.registry,
            self.kubelet,
            None,
            lambda: list(self.kubelet.pods),
            node_monitor_grace=grace,
            unreachable_toleration=toleration,
        )

    async def until(self, predicate: Any, timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)

    def event(self, pod: str, kind: str, after: float = 0.0) -> Event:
        found = [e for e in self.events.of(pod) if e.kind == kind and e.t >= after]
        assert found, f"no {kind} event for {pod} after {after}: {self.events.of(pod)}"
        return found[0]

    def fault_events(self) -> list[Event]:
        return [e for e in self.events.events if e.kind == "fault"]


@contextlib.asynccontextmanager
async def node(
    tmp_path: Path, manifest: Path, engine: docker.DockerClient, nodes: int = 1
) -> AsyncIterator[Node]:
    """A kubelet on a Docker runtime of its own; no container, network or nftables table
    of the run outlives the block."""
    events = EventLog(progress=None)
    manifests = load(manifest)
    runtime = await docker_runtime(manifests, None, tmp_path / "pods")
    kubelet = Kubelet(
        events,
        Registry(tmp_path / "pids.txt"),
        tmp_path / "pods",
        {},
        rng=random.Random(1),
        runtime=runtime,
        nodes=nodes,
    )
    table = runtime.dead.table if runtime.dead is not None else None
    try:
        yield Node(kubelet, runtime, events, manifests.deployment.template)
    finally:
        await kubelet.shutdown()
        await runtime.close()
        left = engine.containers.list(all=True, filters={"label": f"{LABEL}={runtime.run_id}"})
        assert left == [], f"containers outlived the run: {left}"
        assert engine.networks.list(names=[runtime.network_name]) == []
        if table is not None:
            assert table not in _tables()
        assert RunCgroup(f"lab-{runtime.run_id}").directories() == []


def _tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def _states(engine: docker.DockerClient, container: DockerContainer) -> dict[int, str]:
    """Each process of the container (host PID, as the engine lists them) and its state
    letter from /proc (T: stopped)."""
    top = engine.api.top(container.id)
    column = top["Titles"].index("PID")
    states = {}
    for row in top["Processes"]:
        pid = int(row[column])
        with contextlib.suppress(FileNotFoundError):
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"^State:\s+(\w)", status, re.MULTILINE)
            assert match, status
            states[pid] = match.group(1)
    return states


def _cpu_weight(runtime: DockerRuntime) -> int:
    """The run's parent cgroup's CPU weight (cpu.shares on cgroup v1)."""
    assert runtime.cgroup is not None, runtime.cgroup_note
    return int((runtime.cgroup.cpu_dir / "cpu.shares").read_text())


def _cpu_cgroup(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line.split(":", 2)[2] for line in lines if line.split(":")[1] == "cpu")


def _connect(address: str, timeout: float) -> str:
    """How a connect to the tiny app's port ends: ok, refused, unreachable or timeout."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, TINY_PORT))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"unreachable ({exc})"
        return "ok"


def test_container_crash_restarts_in_the_same_sandbox(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a tiny-app pod on the engine, an emptyDir at /data, a file written to
    it; 2. `container-crash`: the fault SIGKILLs the app container through the runtime;
    3. the container exits 137, and the kubelet restarts it at once (CrashLoopBackOff
    starts at 0) in the same sandbox: same IP, same sandbox container, a new app
    container; 4. it is ready again and the emptyDir still holds the file; 5. the
    ReplicaSet's ranking never took it for a pending pod (no container started); its
    container is in the run's own parent cgroup, weighted as one process."""
    manifest = tiny(tmp_path / "m.yml", empty_dir=True, readiness=READY_PROBE)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create("tiny-a")
            await n.until(lambda: pod.ready, 30, "the pod ready")
            assert VictimFacts.of(pod).pending is False
            code, _ = await n.runtime.exec(pod, ["sh", "-c", "echo kept > /data/marker"], 10)
            assert code == 0
            first = pod.running
            assert isinstance(first, DockerContainer)
            pid = int(engine.api.inspect_container(first.id)["State"]["Pid"])
            assert _cpu_cgroup(pid).startswith(f"/lab-{n.runtime.run_id}/")
            assert _cpu_weight(n.runtime) == 1024
            sandbox = n.runtime.pods[pod.name].sandbox
            faults = n.faults("container-crash@0")
            faults.start()
            try:
                await n.until(lambda: len(n.fault_events()) == 2, 20, "the fault's end")
                start, end = (e.detail for e in n.fault_events())
                assert start == f"container-crash start SIGKILL to container {first.id[:12]}"
                assert end == "container-crash end container exited (137)"
                await n.until(lambda: pod.restarts == 1 and pod.ready, 30, "ready again")
            finally:
                await faults.stop()
            assert n.event(pod.name, "exited").detail == "code 137"
            assert n.event(pod.name, "restarting").detail == "back-off 0s"
            second = pod.running
            assert isinstance(second, DockerContainer) and second.id != first.id
            assert n.runtime.pods[pod.name].sandbox == sandbox
            assert await asyncio.to_thread(_connect, pod.ip, 2) == "ok"
            code, _ = await n.runtime.exec(pod, ["grep", "-q", "kept", "/data/marker"], 10)
            assert code == 0

    run(scenario(), 80)


def test_pod_hang_stops_every_process_until_liveness_restarts_it(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a tiny-app pod on the engine with a liveness probe (1 s period, 2
    failures) and a 2 s grace period, plus an exec'd `sleep` in its container (a second
    process); 2. `pod-hang`: every process of the container is stopped (state T), not
    frozen by the engine's pause; 3. liveness fails, the kubelet's SIGTERM stays pending
    on the stopped PID 1, and the container dies by SIGKILL at the end of the grace
    period (137); 4. the container is restarted in the same pod and ready again."""
    manifest = tiny(tmp_path / "m.yml", readiness=READY_PROBE, liveness=LIVENESS, grace=2)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create("tiny-a")
            await n.until(lambda: pod.ready, 30, "the pod ready")
            hung = pod.running
            assert isinstance(hung, DockerContainer)
            sleeper = asyncio.ensure_future(n.runtime.exec(pod, ["sleep", "300"], None))
            await n.until(lambda: len(_states(engine, hung)) == 2, 10, "the exec'd sleep")
            faults = n.faults("pod-hang@0")
            faults.start()
            try:
                await n.until(lambda: n.fault_events(), 10, "the hang")
                start = n.fault_events()[0]
                assert start.detail == f"pod-hang start SIGSTOP to container {hung.id[:12]}"
                states = _states(engine, hung)
                assert sorted(states.values()) == ["T", "T"], states
                assert engine.api.inspect_container(hung.id)["State"]["Paused"] is False
                await n.until(lambda: len(n.fault_events()) == 2, 20, "the hung one gone")
                assert n.fault_events()[1].detail == "pod-hang end hung container gone (137)"
                await n.until(lambda: pod.restarts == 1 and pod.ready, 30, "ready again")
            finally:
                await faults.stop()
                sleeper.cancel()
                await asyncio.gather(sleeper, return_exceptions=True)
            failed = n.event(pod.name, "liveness-failed", start.t)
            sigterm = n.event(pod.name, "sigterm", failed.t)
            killed = n.event(pod.name, "sigkilled", sigterm.t)
            assert 1.9 <= killed.t - sigterm.t < 5, (sigterm, killed)
            assert n.events.first(pod.name, "exited") is None
            assert pod.running is not hung
            assert await asyncio.to_thread(_connect, pod.ip, 2) == "ok"

    run(scenario(), 80)


def test_a_hang_without_liveness_is_undone_when_the_faults_stop(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a tiny-app pod on the engine without a liveness probe; 2. `pod-hang`:
    its processes are stopped and nothing restarts it; 3. the faults stop (the end of
    the cool-down): every process runs again and the app answers an HTTP request."""
    manifest = tiny(tmp_path / "m.yml", readiness=READY_PROBE)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create("tiny-a")
            await n.until(lambda: pod.ready, 30, "the pod ready")
            hung = pod.running
            assert isinstance(hung, DockerContainer)
            faults = n.faults("pod-hang@0")
            faults.start()
            try:
                await n.until(lambda: n.fault_events(), 10, "the hang")
                assert set(_states(engine, hung).values()) == {"T"}
            finally:
                await faults.stop()
            assert "T" not in _states(engine, hung).values()
            reader, writer = await asyncio.wait_for(asyncio.open_connection(pod.ip, TINY_PORT), 5)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            assert head.startswith(b"HTTP/1.1 200"), head
            assert hung.returncode is None and pod.restarts == 0

    run(scenario(), 60)


@needs_nft
def test_node_failure_drops_every_packet_of_the_nodes_pods(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. three tiny-app pods on two nodes (a and c on node0, b on node1); an
    idle connection open to a; 2. `node-failure` on the oldest ready pod, a, with the
    node-monitor grace and the toleration 1 s each: node0's pods a and c go; 3. their
    app containers are killed but no FIN or RST reaches the host (the idle connection
    sees nothing), and a new connection to their IPs times out, where b answers; 4. a
    and c stay ready until the grace, are deleted after the toleration, and their
    sandboxes go; 5. the run's nftables table is gone at the end."""
    manifest = tiny(tmp_path / "m.yml", replicas=3, readiness=READY_PROBE)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine, nodes=2) as n:
            a, b, c = (n.create(f"tiny-{x}") for x in "abc")
            assert (a.node, b.node, c.node) == (0, 1, 0)
            await n.until(lambda: a.ready and b.ready and c.ready, 40, "three ready pods")
            assert _cpu_weight(n.runtime) == 3 * 1024  # one process's per pod
            idle = socket.create_connection((a.ip, TINY_PORT), timeout=5)
            faults = n.faults("node-failure@0", grace=1.0, toleration=1.0)
            faults.start()
            try:
                await n.until(lambda: n.fault_events(), 10, "the node down")
                down = n.fault_events()[0]
                assert down.detail == (
                    f"node-failure start node0 down: {a.ip}, {c.ip} drop packets, 2 pods killed"
                )
                assert a.ready and c.ready  # until the node-monitor grace
                for pod in (a, c):
                    await n.until(
                        lambda pod=pod: pod.running is not None and pod.running.returncode,
                        10,
                        "the app container killed",
                    )
                idle.settimeout(1.5)
                with pytest.raises(TimeoutError):
                    idle.recv(1)  # no FIN or RST from the killed socket got out
                assert await asyncio.to_thread(_connect, a.ip, 1.0) == "timeout"
                assert await asyncio.to_thread(_connect, c.ip, 1.0) == "timeout"
                assert await asyncio.to_thread(_connect, b.ip, 2.0) == "ok"
                await n.until(lambda: a.gone and c.gone, 20, "both pods evicted and gone")
            finally:
                idle.close()
                await faults.stop()
            for pod in (a, c):
                not_ready = n.event(pod.name, "node-not-ready").t
                assert 0.9 <= not_ready - down.t < 3, (down, not_ready)
                assert n.event(pod.name, "not-ready").t >= not_ready
                assert n.event(pod.name, "deleted").t - down.t >= 1.9
                assert "restarting" not in [e.kind for e in n.events.of(pod.name)]
                left = engine.containers.list(all=True, filters={"label": f"lab.pod={pod.name}"})
                assert left == []
            assert b.ready and not b.gone
            assert _cpu_weight(n.runtime) == 1024

    run(scenario(), 90)


@needs_nft
def test_lab_run_on_docker_node_failure_counts_timeouts(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. `lab run --runtime docker`, two tiny-app pods, steady load with a 1 s
    request timeout; 2. `node-failure@1` with the grace and toleration 1.5 s each; 3. the
    victim stays ready until the grace, is evicted after the toleration and replaced by
    a new pod; 4. the clients that reached it fail by timeout, none refused or reset
    (no live host answers for a dead node); 5. no container, network or nftables table
    of the run is left (_run checks the processes)."""
    manifest = tiny(tmp_path / "m.yml", replicas=2, readiness=READY_PROBE, grace=5)
    report = _run(
        tmp_path / "out",
        manifest,
        *("--runtime", "docker", "--scenario", "steady", "--vus", "5", "--duration", "6"),
        *("--warmup", "1", "--cooldown", "1", "--endpoint-lag", "0.2"),
        *("--request-timeout", "1s", "--fault", "node-failure@1"),
        *("--node-monitor-grace", "1.5", "--unreachable-toleration", "1.5"),
        timeout=120,
    )
    faults = [e for e in report["events"] if e["kind"] == "fault"]
    assert [e["detail"].split()[:2] for e in faults] == [
        ["node-failure", "start"],
        ["node-failure", "end"],
    ]
    victim, down = faults[0]["pod"], faults[0]["t"]
    events = [e for e in report["events"] if e["pod"] == victim]
    not_ready = next(e["t"] for e in events if e["kind"] == "node-not-ready")
    assert 1.4 <= not_ready - down <= 3
    deleted = next(e["t"] for e in events if e["kind"] == "deleted")
    assert deleted - not_ready >= 1.4
    assert report["pods_created"] == 3
    assert report["failed"].get("timeout", 0) >= 1, report["failed"]
    assert not {"refused", "reset"} & set(report["failed"]), report["failed"]
    phases = [e["detail"].split() for e in report["events"] if e["kind"] == "phase"]
    network = next(words[2] for words in phases if words[0] == "docker")
    assert engine.networks.list(names=[network]) == []
    tables = [words[3].rstrip(",") for words in phases if words[0] == "dead-addresses"]
    assert len(tables) == 1 and tables[0].startswith("lab_dead_")
    assert tables[0] not in _tables()


def _calc_v10(tmp_path: Path) -> Path:
    """calc v10's own manifests as the quick matrix runs them, without the preStop sleep
    (5 s of each teardown that this test is not about); points batched every 30 s, so
    that none is written before the crash."""
    return rewrite_manifests(
        REPO / "deploy" / "k8s" / "v10", tmp_path / "v10", quick=True, no_prestop=True
    )


def test_calc_v10_on_docker_replays_its_spool_after_a_container_crash(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. `lab run --runtime docker` of calc v10, one replica, steady load;
    2. `container-crash@2`: the app container is SIGKILLed with every accepted point
    still unwritten (the batch interval is 30 s), in memory and in the spool on its
    emptyDir; 3. the kubelet restarts it in the same pod: the new container finds the
    spool and replays it; 4. every answered sum has its point: 0 lost, 0 orphans."""
    out = tmp_path / "out"
    report = _run(
        out,
        _calc_v10(tmp_path),
        *("--runtime", "docker", "--image-map", str(REPO / "deploy" / "lab-images.yml")),
        *("--scenario", "steady", "--replicas", "1", "--vus", "5", "--duration", "8"),
        *("--warmup", "1", "--cooldown", "2", "--endpoint-lag", "0.2"),
        *("--fault", "container-crash@2"),
        timeout=150,
    )
    faults = [e["detail"] for e in report["events"] if e["kind"] == "fault"]
    assert faults[0].startswith("container-crash start SIGKILL to container ")
    assert faults[1] == "container-crash end container exited (137)"
    assert report["ok"] > 20
    assert report["lost_operations"] == 0 and report["orphan_operations"] == 0
    assert report["operations_logged"] == report["ok"]
    logs = "".join(p.read_text(errors="replace") for p in out.rglob("calc-*.log"))
    recovered = [int(n) for n in re.findall(r"Recovered (\d+) spooled", logs)]
    assert recovered and recovered[0] > 0, logs[-3000:]


def _drop_root_and_call(check: Callable[[], list[str]]) -> list[str]:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    return check()


def _as_nobody(check: Callable[[], list[str]]) -> list[str]:
    """Run `check` (a module-level function) in a fresh interpreter that drops root for
    nobody (65534) first: what an unprivileged user's lab would see. Not a fork of this
    process: the test process may have threads."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        lines: list[str] = pool.apply_async(_drop_root_and_call, (check,)).get(60)
    return lines


V10 = REPO / "deploy" / "k8s" / "v10"


def _prepare_pod_faults() -> list[str]:
    """How `prepare` takes each pod fault, one line each."""
    lines = []
    for runtime, fault in (
        ("docker", "pod-hang@1"),
        ("docker", "node-failure@1"),
        ("process", "node-failure@1"),
        ("docker", "container-crash@1"),
    ):
        config = LabConfig(V10, runtime=runtime, faults=(parse_fault(fault),))
        try:
            prepare(config)
        except ConfigError as exc:
            lines.append(str(exc))
        else:
            lines.append(f"accepted {runtime} {fault}")
    return lines


def test_pod_faults_on_docker_are_checked_before_anything_starts() -> None:
    """Scenario: 1. as root, every pod fault is accepted with --runtime docker; 2. as an
    unprivileged user (nobody), `pod-hang` with --runtime docker is refused, naming the
    option and root (SIGSTOP to another user's processes), and `node-failure` is refused
    for want of nftables rules, on either runtime, before anything starts."""
    for kind in ("container-crash@1", "node-failure@1", "pod-hang@1"):
        LabConfig(V10, runtime="docker", faults=(parse_fault(kind),)).validate()
    assert _as_nobody(_prepare_pod_faults) == [
        "--fault pod-hang@1: on --runtime docker a hang is SIGSTOP to every process of "
        "the container from the host, which needs root",
        "--fault node-failure@1: a dead node's address needs nftables: nftables rules need root",
        "--fault node-failure@1: a dead node's address needs nftables: nftables rules need root",
        "accepted docker container-crash@1",
    ]
