"""The kubelet on the Docker runtime: real containers of calc:latest (make image), a real
Docker network per run, the same kubelet rules as on processes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.types
import pytest
import yaml

from lab.accounting import classify, read_requests
from lab.config import ConfigError, LabConfig, parse_fault
from lab.container_config import ContainerConfig, cpu_cores, from_pod_spec, memory_bytes
from lab.docker_runtime import LABEL, DockerContainer, DockerRuntime, docker_runtime
from lab.events import Event, EventLog
from lab.images import Image
from lab.k6 import find_k6
from lab.manifest import ManifestError, PodTemplate, load
from lab.pods import Kubelet, Pod
from lab.procs import Registry
from lab.run_cgroup import RunCgroup
from lab.runtime import StartError
from tests.docker_support import engine_or_skip, ensure_image
from tests.lab.env_rules import check, env_manifests, printed
from tests.lab.labkit import run
from tests.support import REPO, wait_until

READY: dict[str, Any] = {"httpGet": {"path": "/ready", "port": 4000}, "periodSeconds": 1}


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    engine = engine_or_skip()
    ensure_image(engine)
    return engine


def calc_manifest(
    path: Path,
    *,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    readiness: dict[str, Any] | None = READY,
    pre_stop: dict[str, Any] | None = None,
    grace: float = 10,
    pod_extra: dict[str, Any] | None = None,
    container_extra: dict[str, Any] | None = None,
    image: str = "registry.example.com/team/calc:0.1.0",
) -> Path:
    container: dict[str, Any] = {
        "name": "calc",
        "image": image,
        "ports": [{"name": "http", "containerPort": 4000}],
        "env": [{"name": k, "value": v} for k, v in {"CALC_PROFILE": "v3", **(env or {})}.items()],
        **(container_extra or {}),
    }
    if command is not None:
        container["command"] = command
    if readiness is not None:
        container["readinessProbe"] = readiness
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "calc"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "calc"}},
            "template": {
                "metadata": {"labels": {"app": "calc"}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
                    **(pod_extra or {}),
                },
            },
        },
    }
    path.write_text(yaml.safe_dump(deployment, sort_keys=False))
    return path


@dataclass
class Node:
    kubelet: Kubelet
    runtime: DockerRuntime
    events: EventLog
    # The runtime matches settings to a template's container: create pods from this one.
    template: PodTemplate

    def create(self, name: str = "calc-a") -> Pod:
        return self.kubelet.create_pod(name, self.template, Image("calc"), 1)

    async def until(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.05)

    def event(self, pod: Pod, kind: str) -> Event:
        event = self.events.first(pod.name, kind)
        assert event is not None, f"no {kind} event for {pod.name}: {self.events.of(pod.name)}"
        return event


@contextlib.asynccontextmanager
async def node(tmp_path: Path, manifest: Path, engine: docker.DockerClient) -> AsyncIterator[Node]:
    """A kubelet on a Docker runtime of its own; nothing of the run outlives the block."""
    manifests = load(manifest)
    events = EventLog(progress=None)
    runtime = await docker_runtime(manifests, None, tmp_path / "pods")
    kubelet = Kubelet(
        events, Registry(tmp_path / "pids.txt"), tmp_path / "pods", {}, runtime=runtime
    )
    made = Node(kubelet, runtime, events, manifests.deployment.template)
    try:
        yield made
    finally:
        await kubelet.shutdown()
        await runtime.close()
        left = engine.containers.list(all=True, filters={"label": f"{LABEL}={runtime.run_id}"})
        assert left == [], f"containers outlived the run: {left}"
        assert engine.networks.list(names=[runtime.network_name]) == []


def _connect_error(ip: str, port: int, timeout: float) -> OSError | None:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except OSError as exc:  # TimeoutError included
            return exc
    return None


K6_ONE_GET = """
import http from 'k6/http';
export const options = { vus: 1, iterations: 1 };
export default function () { http.get(`http://${__ENV.TARGET}/health`, { timeout: '8s' }); }
"""


def _k6_kinds(tmp_path: Path, ip: str) -> list[str]:
    """One k6 GET to ip:4000, classified from k6's CSV as the lab's report does."""
    script = tmp_path / "one-get.js"
    script.write_text(K6_ONE_GET)
    csv_path = tmp_path / "one-get.csv"
    subprocess.run(
        [find_k6(), "run", "--no-usage-report", "-q", "-e", f"TARGET={ip}:4000",
         "--out", f"csv={csv_path}", str(script)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return [r.kind for r in read_requests(csv_path)]


def test_pod_lifecycle_and_its_ip_goes_with_the_sandbox(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a calc v3 pod with an httpGet readiness probe on the run's network;
        2. it becomes ready at its own IP in the run's subnet, and answers there; 3. delete:
        SIGTERM to PID 1, exit code 0, pod gone; 4. its sandbox is removed, so a new
        connection to its IP is not refused (no live host sends RST): it times out or finds
        the host unreachable, as in a cluster; 5. a k6 request there is accounted as
    `unreachable` (or `timeout`), not as refused."""
    manifest = calc_manifest(tmp_path / "m.yml")

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: pod.ready, 30, "the pod ready")
            assert n.runtime.subnet is not None
            assert pod.ip in [str(h) for h in n.runtime.subnet.hosts()]
            assert await asyncio.to_thread(_connect_error, pod.ip, 4000, 2) is None
            n.kubelet.delete_pod(pod)
            await n.until(lambda: pod.gone, 30, "the pod gone")
            assert n.event(pod, "sigterm").detail.endswith("PID 1")
            assert n.event(pod, "exited").detail == "code 0"
            left = engine.containers.list(all=True, filters={"label": f"lab.pod={pod.name}"})
            assert left == []
            error = await asyncio.to_thread(_connect_error, pod.ip, 4000, 2)
            assert error is not None and not isinstance(error, ConnectionRefusedError), error
            if not isinstance(error, TimeoutError):
                assert error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH), error
            # What a k6 client sees there, through the lab's own accounting.
            kinds = await asyncio.to_thread(_k6_kinds, tmp_path, pod.ip)
            assert kinds in (["unreachable"], ["timeout"]), kinds

    run(scenario(), 80)


def test_wrapper_pod_dies_by_sigkill_at_grace_end(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario (v1): 1. command /app/start.sh, grace 3 s, no probes; 2. ready once it
    runs, calc answers at the pod IP; 3. delete: SIGTERM goes to the shell, which is a
    real PID 1 now and never passes it on; 4. the container dies by SIGKILL when the 3 s
    are up, not before."""
    manifest = calc_manifest(tmp_path / "m.yml", command=["/app/start.sh"], readiness=None, grace=3)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()

            def answers() -> bool:
                return _connect_error(pod.ip, 4000, 1) is None

            await n.until(answers, 30, "calc answering behind start.sh")
            n.kubelet.delete_pod(pod)
            await n.until(lambda: pod.gone, 30, "the pod gone")
            deleted = n.event(pod, "deleted").t
            killed = n.event(pod, "sigkilled").t
            assert 2.9 <= killed - deleted < 6, (deleted, killed)
            assert n.events.first(pod.name, "exited") is None
            assert pod.exit_code == 137

    run(scenario(), 80)


def test_restart_keeps_ip_and_empty_dir_under_v10_security_context(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario (v10's settings): 1. runAsUser/Group 10001, read-only root, capabilities
    dropped, an emptyDir at /tmp, a 256Mi memory limit; an exec readiness probe that
    checks the uid, that /tmp is writable and / is not; 2. the pod becomes ready, so the
    probe ran inside the container; 3. a file is written to /tmp; 4. the app container is
    killed behind the kubelet's back (a crash); 5. the kubelet restarts it at once in the
    same sandbox: same IP, the file still there, the limit applied to the new container."""
    check = 'test "$(id -u):$(id -g)" = 10001:10001 && touch /tmp/ok && ! touch /ok'
    manifest = calc_manifest(
        tmp_path / "m.yml",
        env={"CALC_PROFILE": "v10"},
        readiness={"exec": {"command": ["sh", "-c", check]}, "periodSeconds": 1},
        pod_extra={
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
        container_extra={
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        },
    )

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: pod.ready, 40, "the pod ready (exec probe)")
            ip = pod.ip
            assert (await n.runtime.exec(pod, ["sh", "-c", "echo kept > /tmp/marker"], 10))[0] == 0
            first = pod.running
            assert isinstance(first, DockerContainer)
            engine.api.kill(first.id, signal="SIGKILL")
            await n.until(lambda: pod.restarts == 1 and pod.ready, 40, "restarted and ready")
            assert pod.ip == ip
            second = pod.running
            assert isinstance(second, DockerContainer) and second.id != first.id
            assert n.event(pod, "exited").detail == "code 137"
            assert (await n.runtime.exec(pod, ["grep", "-q", "kept", "/tmp/marker"], 10))[0] == 0
            host = engine.api.inspect_container(second.id)["HostConfig"]
            assert host["Memory"] == 256 * 2**20
            assert host["ReadonlyRootfs"] is True
            assert host["CpuShares"] == 102

    run(scenario(), 100)


def test_oom_kill_is_reported(tmp_path: Path, engine: docker.DockerClient) -> None:
    """Scenario: 1. a container that allocates 512 MiB under a 64Mi limit; 2. the engine
    kills it; 3. the kubelet reports the exit as OOMKilled (code 137) and backs off."""
    manifest = calc_manifest(
        tmp_path / "m.yml",
        command=["python3", "-c", "x = bytearray(512 * 1024 * 1024)"],
        readiness=None,
        container_extra={"resources": {"limits": {"memory": "64Mi"}}},
    )

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: n.events.first(pod.name, "exited"), 30, "the exit")
            assert n.event(pod, "exited").detail == "OOMKilled (code 137)"

    run(scenario(), 60)


def test_exec_prestop_runs_in_the_container_before_sigterm(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario (v5): 1. preStop exec `sleep 1` then a line on stdout; 2. delete; 3. the
    hook ran inside the container (its line is in the pod's log), took >= 1 s, and SIGTERM
    came only after it; 4. exit code 0."""
    manifest = calc_manifest(
        tmp_path / "m.yml",
        pre_stop={"exec": {"command": ["sh", "-c", "sleep 1; echo prestop in $(hostname)"]}},
    )

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: pod.ready, 30, "the pod ready")
            n.kubelet.delete_pod(pod)
            await n.until(lambda: pod.gone, 30, "the pod gone")
            started = n.event(pod, "prestop-started").t
            finished = n.event(pod, "prestop-finished").t
            assert finished - started >= 1.0
            assert n.event(pod, "sigterm").t >= finished
            assert n.event(pod, "exited").detail == "code 0"
            log = (n.kubelet.log_dir / f"{pod.name}.log").read_text()
            assert f"prestop in {pod.name}" in log

    run(scenario(), 60)


def test_missing_image_fails_before_any_pod(tmp_path: Path, engine: docker.DockerClient) -> None:
    """Scenario: 1. the manifest names an image the engine does not hold; 2. making the
    runtime fails and says to run `make image`; 3. the run's network is removed again."""
    manifest = calc_manifest(tmp_path / "m.yml", image="example.com/nosuchimage:1")
    before = {n.name for n in engine.networks.list()}

    async def scenario() -> None:
        with pytest.raises(StartError, match="make image"):
            await docker_runtime(load(manifest), None, tmp_path / "pods")

    run(scenario(), 30)
    assert {n.name for n in engine.networks.list()} == before


def test_container_config_from_a_pod_spec() -> None:
    """Scenario: 1. v10's pod spec; 2. securityContext merged pod < container, quantities
    in bytes and cores, the emptyDir mount; 3. a hostPath volume, a mount of an unknown
    volume and a bad quantity each fail with the field's path."""
    spec = load(Path("deploy/k8s/v10")).deployment  # the manifests load
    assert spec.name == "calc"
    docs = list(yaml.safe_load_all(Path("deploy/k8s/v10/calc.yml").read_text()))
    pod = next(d for d in docs if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]
    config = from_pod_spec(pod, "v10")
    assert config == ContainerConfig(
        run_as_user=10001,
        run_as_group=10001,
        run_as_non_root=True,
        read_only_root=True,
        no_new_privileges=True,
        cap_drop=("ALL",),
        memory_limit=256 * 2**20,
        cpu_request=0.1,
        mounts=config.mounts,
    )
    assert [(m.volume, m.path) for m in config.mounts] == [("tmp", "/tmp")]
    assert memory_bytes("1G", "x") == 10**9 and memory_bytes("129e6", "x") == 129 * 10**6
    assert cpu_cores("250m", "x") == 0.25 and cpu_cores("2", "x") == 2.0
    with pytest.raises(ManifestError, match=r"v\.volumes\[0\]: only emptyDir"):
        from_pod_spec({"containers": [{}], "volumes": [{"name": "h", "hostPath": {}}]}, "v")
    with pytest.raises(ManifestError, match="no emptyDir volume named 'x'"):
        from_pod_spec({"containers": [{"volumeMounts": [{"name": "x", "mountPath": "/x"}]}]}, "v")
    with pytest.raises(ManifestError, match=r"limits\.memory: not a memory quantity"):
        from_pod_spec({"containers": [{"resources": {"limits": {"memory": "lots"}}}]}, "v")


def test_runtime_option_is_checked_before_anything_starts() -> None:
    """Scenario: 1. an unknown --runtime; 2. it fails validation naming the option; 3. the
    docker runtime with an InfluxDB fault is accepted (pod faults: test_docker_faults)."""
    manifests = Path("deploy/k8s/v10")
    with pytest.raises(ConfigError, match="--runtime: must be one of process, docker"):
        LabConfig(manifests, runtime="podman").validate()
    LabConfig(manifests, runtime="docker", faults=(parse_fault("influx-down@1:2"),)).validate()


def test_network_taken_between_look_and_create_is_retried(
    tmp_path: Path, engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: 1. another network holds a /24 that the runtime's pick returns first (as
    when two runs pick at once); 2. the engine refuses the overlap; 3. the runtime picks
    again and makes its network on another /24; 4. close() removes only its own."""
    import ipaddress
    import random

    from lab import docker_runtime as module

    rng = random.Random(1)
    occupied = module.pick_subnet([], rng)
    other = engine.networks.create(
        f"lab-test-occupied-{os.getpid()}",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(occupied))]),
    )
    picks = [occupied]
    real_pick = module.pick_subnet

    def pick(taken: list[ipaddress.IPv4Network], rng: random.Random) -> ipaddress.IPv4Network:
        return picks.pop(0) if picks else real_pick(taken, rng)

    monkeypatch.setattr(module, "pick_subnet", pick)

    async def scenario() -> None:
        runtime = DockerRuntime(tmp_path / "pods", lambda c: ContainerConfig())
        try:
            await runtime.open()
            assert runtime.subnet is not None and not runtime.subnet.overlaps(occupied)
        finally:
            await runtime.close()
        assert engine.networks.list(names=[runtime.network_name]) == []

    try:
        run(scenario(), 30)
    finally:
        other.remove()


def test_lab_run_on_docker_interrupted_twice_leaves_nothing(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. `lab run --runtime docker` of calc v10 (InfluxDB on the run's network
    gateway), 2 replicas, steady load for a long time; 2. once its sandbox and app
    containers run, SIGINT, and SIGINT again during the clean-up (an impatient Ctrl-C);
    3. it exits 130 within 60 s; 4. no container, network or parent cgroup of the run is
    left, and no process it logged runs."""
    out = tmp_path / "out"
    argv = [
        str(Path(sys.executable).parent / "lab"), "run", "--runtime", "docker",
        "--manifests", "deploy/k8s/v10", "--replicas", "2", "--scenario", "steady",
        "--duration", "300", "--vus", "2", "--quiet", "--out", str(out),
    ]  # fmt: skip
    before = {n.name for n in engine.networks.list()}
    with (tmp_path / "lab.log").open("wb") as log:
        lab = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        events = out / "events.jsonl"

        def started() -> int:
            return events.read_text().count('"kind": "started"') if events.exists() else 0

        wait_until(lambda: started() >= 2, 90, interval=0.2, what="two pods' containers started")
        match = re.search(r"docker network (lab-[0-9a-f]+)", events.read_text())
        assert match, events.read_text()
        network = match.group(1)
        lab.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the second Ctrl-C lands in the clean-up, not before it
        lab.send_signal(signal.SIGINT)
        assert lab.wait(60) == 130, (tmp_path / "lab.log").read_text()
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
    assert "interrupted by SIGINT" in (tmp_path / "lab.log").read_text()
    run_id = network.removeprefix("lab-")
    assert engine.containers.list(all=True, filters={"label": f"{LABEL}={run_id}"}) == []
    assert engine.networks.list(names=[network]) == []
    assert {n.name for n in engine.networks.list()} == before
    assert RunCgroup(f"lab-{run_id}").directories() == []
    for line in (out / "pids.txt").read_text().splitlines():
        pid = int(line.split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            raise AssertionError(f"{line} still runs")


def test_classify_unreachable_from_k6s_dial_error() -> None:
    """Scenario: 1. k6's record of a dial to an address with no host (code 1213, errno
    113 or 101); 2. it is `unreachable`; 3. code 1213 with another errno stays
    `error_1213`, and a refused dial stays `refused`."""
    no_route = "dial: unknown errno 113 error with msg `no route to host`"
    assert classify(0, "1213", no_route) == "unreachable"
    no_net = "dial: unknown errno 101 error with msg `network is unreachable`"
    assert classify(0, "1213", no_net) == "unreachable"
    assert classify(0, "1213", "dial: unknown errno 5 error with msg `i/o error`") == "error_1213"
    assert classify(0, "1212", "connection refused") == "refused"


def test_hanging_exec_probe_is_killed_at_its_timeout(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. an exec readiness probe that notes its attempt in a file, then hangs
    (`exec sleep 300`), timeoutSeconds 1, every second; 2. after three attempts the pod
    is still not ready; 3. at most one
    probe process runs in the container: each was killed at its timeout, so hanging
    probes pile up neither in the container nor on the runtime's API threads."""
    manifest = calc_manifest(
        tmp_path / "m.yml",
        readiness={
            "exec": {"command": ["sh", "-c", "echo x >> /tmp/attempts; exec sleep 300"]},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
        },
    )

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: isinstance(pod.running, DockerContainer), 30, "a container")
            assert isinstance(pod.running, DockerContainer)
            ident = pod.running.id

            def attempts() -> int:
                container = engine.containers.get(ident)
                _, out = container.exec_run(["sh", "-c", "cat /tmp/attempts || true"])
                assert isinstance(out, bytes)
                return out.count(b"x")

            await n.until(lambda: attempts() >= 3, 30, "three probe attempts")
            assert not pod.ready
            top = engine.api.top(ident)
            column = top["Titles"].index("CMD")
            sleeps = [row for row in top["Processes"] if "sleep 300" in row[column]]
            assert len(sleeps) <= 1, top["Processes"]

    run(scenario(), 60)


def test_exit_is_seen_when_the_event_stream_is_gone(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a running pod; 2. the runtime's event stream from the engine ends
    (as when dockerd restarts its API); 3. the app container is killed; 4. the kubelet
    still learns of the exit (the wait asks the engine every 2 s) and restarts it."""
    manifest = calc_manifest(tmp_path / "m.yml", readiness=None)

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: isinstance(pod.running, DockerContainer), 30, "a container")
            first = pod.running
            assert isinstance(first, DockerContainer)
            n.runtime.events_stream.close()
            assert n.runtime.events_thread is not None
            await asyncio.to_thread(n.runtime.events_thread.join, 10)
            assert not n.runtime.events_thread.is_alive()
            engine.api.kill(first.id, signal="SIGKILL")
            await n.until(lambda: pod.restarts == 1, 15, "the exit seen and a restart")
            assert n.event(pod, "exited").detail == "code 137"

    run(scenario(), 60)


def test_env_and_args_follow_the_kubelet_rules_in_a_container(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. a container whose app prints its environment and argv; its env has a
    value that names earlier entries, and entries from a ConfigMap (envFrom and
    configMapKeyRef), a Secret and a fieldRef, whose values hold `$(EARLY)`; its args name
    env entries; 2. the ConfigMap's and Secret's values reach the app as written, not
    expanded; 3. the value expands against the entries before it, `$$` escapes, a later
    name and HOSTNAME (the runtime's, not the env list's) stay as written in the args:
    the same as on the process runtime (test_pods)."""
    manifest = env_manifests(tmp_path / "manifests", "registry.example.com/team/calc:0.1.0", 4000)

    def logs(pod: Pod) -> str:
        container = pod.running
        if not isinstance(container, DockerContainer):
            return ""
        return bytes(engine.api.logs(container.id, stdout=True, stderr=True)).decode()

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create("app-a")
            await n.until(lambda: printed(logs(pod)), 30, "the app's env and argv")
            seen = printed(logs(pod))
            assert seen is not None
            check(*seen, pod.name)

    run(scenario(), 60)


def _two_deployments(path: Path) -> Path:
    """A file with two Deployments: first `other` (64Mi, uid 10002, no volume), then
    `calc`, the one under test (behind the LoadBalancer Service): 256Mi, 0.5 CPU, uid
    10001, a read-only root and an emptyDir at /tmp. Its readiness probe checks, inside
    the container, that its own settings are the ones applied."""
    check_settings = 'test "$(id -u):$(id -g)" = 10001:10001 && touch /tmp/ok && ! touch /ok'
    calc_manifest(
        path,
        readiness={"exec": {"command": ["sh", "-c", check_settings]}, "periodSeconds": 1},
        pod_extra={
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001},
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
        container_extra={
            "securityContext": {"readOnlyRootFilesystem": True},
            "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        },
    )
    under_test = yaml.safe_load(path.read_text())
    other = yaml.safe_load(path.read_text())
    other["metadata"]["name"] = "other"
    other["spec"]["selector"]["matchLabels"] = {"app": "other"}
    pod = other["spec"]["template"]
    pod["metadata"]["labels"] = {"app": "other"}
    pod["spec"]["securityContext"] = {"runAsUser": 10002, "runAsGroup": 10002}
    del pod["spec"]["volumes"]
    container = pod["spec"]["containers"][0]
    container["resources"] = {"limits": {"memory": "64Mi"}}
    del container["securityContext"], container["volumeMounts"]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "calc"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "calc"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }  # fmt: skip
    path.write_text(yaml.safe_dump_all([other, under_test, service], sort_keys=False))
    return path


def test_container_settings_come_from_the_deployment_under_test(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Scenario: 1. one file with two Deployments, the second under test with other
    limits, user and volumes than the first; 2. the manifests pick `calc`; 3. its pod
    becomes ready: the exec probe found uid 10001, a writable /tmp and a read-only root;
    4. the engine holds calc's 256Mi and 0.5 CPU, not the first Deployment's 64Mi."""
    manifest = _two_deployments(tmp_path / "m.yml")
    assert load(manifest).deployment.name == "calc"

    async def scenario() -> None:
        async with node(tmp_path, manifest, engine) as n:
            pod = n.create()
            await n.until(lambda: pod.ready, 40, "the pod ready (exec probe)")
            assert isinstance(pod.running, DockerContainer)
            info = engine.api.inspect_container(pod.running.id)
            assert info["Config"]["User"] == "10001:10001"
            host = info["HostConfig"]
            assert host["Memory"] == 256 * 2**20
            assert host["CpuQuota"] == 50_000 and host["CpuPeriod"] == 100_000
            assert host["ReadonlyRootfs"] is True

    run(scenario(), 80)
