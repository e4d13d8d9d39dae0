"""Kubelet semantics with real processes, real probes and real HAProxy."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx

from lab.events import Event
from lab.influx import free_port
from lab.pods import Pod
from tests.lab.env_rules import check, env_manifests, printed
from tests.lab.labkit import READY_PROBE, Cluster, cluster, run, tiny_manifest


def _event(c: Cluster, pod: Pod, kind: str) -> Event:
    event = c.events.first(pod.name, kind)
    assert event is not None, f"no {kind} event for {pod.name}: {c.events.of(pod.name)}"
    return event


def _log_times(c: Cluster, pod: Pod, word: str) -> list[float]:
    pattern = rf"^{word} (?:\S+ )?([\d.]+)$"
    return [float(m) for m in re.findall(pattern, c.log(pod), re.M)]


def test_pod_gets_no_traffic_before_it_is_ready(tmp_path: Path) -> None:
    """A pod whose /ready answers 503 for its first 2 s, behind HAProxy (lag 0).
    1. A client POSTs through HAProxy every 20 ms from the moment the pod is created.
    2. The pod becomes ready after >= 2 s and only then joins HAProxy.
    3. The app saw its first request after the ready event, and requests succeed then."""
    manifest = tiny_manifest(
        tmp_path / "m.yml", port=free_port(), args=["--ready-after", "2"], readiness=READY_PROBE
    )
    outcomes: list[tuple[float, int]] = []
    stop = threading.Event()

    def client(url: str) -> None:
        while not stop.is_set():
            try:
                status = httpx.post(f"{url}/sum", json={"numbers": [1]}, timeout=2).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append((time.time(), status))
            time.sleep(0.02)

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            thread = threading.Thread(target=client, args=(c.haproxy.url,))
            thread.start()
            try:
                await c.until(lambda: c.endpoints.in_lb, 15, "the pod in HAProxy")
                await c.until(lambda: any(s == 200 for _, s in outcomes), 5, "a 200")
            finally:
                stop.set()
                thread.join(5)
            pod = c.pods()[0]
            started = _event(c, pod, "started")
            ready = _event(c, pod, "ready")
            assert ready.t - started.t >= 2.0
            served = _log_times(c, pod, "request")
            assert served, "the app served nothing"
            assert min(served) >= ready.wall
            assert any(t < ready.wall and s != 200 for t, s in outcomes), "no early attempts"

    run(scenario())


def test_prestop_runs_before_sigterm_within_the_grace_period(tmp_path: Path) -> None:
    """A pod with a 1 s exec preStop hook and a 5 s grace period.
    1. Delete it.
    2. Order: deleted, preStop started, preStop finished (>= 1 s later), SIGTERM, exit 0.
    3. The app logged SIGTERM after the hook finished; it all took less than the grace."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        pre_stop={"exec": {"command": ["sh", "-c", "echo prestop-hook; sleep 1"]}},
        grace=5,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
            pod = c.pods()[0]
            await c.until(lambda: "listening" in c.log(pod), 10, "the app listening")
            c.controller.scale(0)
            await c.until(lambda: pod.gone, 10, "the pod gone")
            deleted = _event(c, pod, "deleted")
            hook = _event(c, pod, "prestop-started")
            hook_done = _event(c, pod, "prestop-finished")
            term = _event(c, pod, "sigterm")
            exited = _event(c, pod, "exited")
            assert deleted.t <= hook.t <= hook_done.t <= term.t <= exited.t
            assert hook_done.t - hook.t >= 1.0
            assert exited.detail == "code 0"
            assert exited.t - deleted.t < 5
            assert "prestop-hook" in c.log(pod)
            (app_sigterm,) = _log_times(c, pod, "sigterm")
            assert app_sigterm >= hook_done.wall - 0.01

    run(scenario())


def test_sigterm_ignoring_pod_is_sigkilled_at_grace_end(tmp_path: Path) -> None:
    """Two pods with a 2 s grace period: one app ignores SIGTERM, the other is started by
    a shell that does not exec it (PID 1 semantics: the shell never passes SIGTERM on).
    1. Delete both.
    2. Both are SIGKILLed 2 s after deletion, not earlier; nothing of them is left."""
    port = free_port()
    ignoring = tiny_manifest(tmp_path / "a.yml", port=port, args=["--ignore-sigterm"], grace=2)
    wrapped = tiny_manifest(
        tmp_path / "b.yml",
        port=port,
        command=["sh", "-c", f"python3 tinyapp.py --port {port}; echo wrapper-done"],
        grace=2,
    )
    for name, manifest in (("ignoring", ignoring), ("wrapped", wrapped)):

        async def scenario(manifest: Path = manifest, name: str = name) -> None:
            async with cluster(tmp_path / name, manifest) as c:
                await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
                pod = c.pods()[0]
                await c.until(lambda: "listening" in c.log(pod), 10, "the app listening")
                c.controller.scale(0)
                await c.until(lambda: pod.gone, 10, "the pod gone")
                deleted = _event(c, pod, "deleted")
                killed = _event(c, pod, "sigkilled")
                assert 2.0 <= killed.t - deleted.t < 3.0
                assert c.events.first(pod.name, "exited") is None
                assert "exiting" not in c.log(pod)
                assert pod.process is not None
                pid = pod.process.pid
                await c.until(lambda: pid not in c.registry.alive(), 5, "the pod's group gone")

        (tmp_path / name).mkdir()
        run(scenario())


def test_liveness_failure_restarts_the_container(tmp_path: Path) -> None:
    """A pod whose liveness probe checks a port nothing listens on (period 1 s,
    failureThreshold 2).
    1. It fails twice; the kubelet kills and restarts the container (no back-off the
       first time), keeping the pod.
    2. The restarted container runs again (a second `started`)."""
    port = free_port()
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=port,
        liveness={"tcpSocket": {"port": free_port()}, "periodSeconds": 1, "failureThreshold": 2},
        grace=2,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(
                lambda: len([e for e in c.events.of(pod.name) if e.kind == "started"]) >= 2,
                15,
                "a restart",
            )
            assert c.events.first(pod.name, "liveness-failed") is not None
            assert pod.restarts == 1 and not pod.gone

    run(scenario())


def test_prestop_http_get_reaches_the_app_before_sigterm(tmp_path: Path) -> None:
    """A pod with an httpGet preStop hook on /prestop-hook.
    1. Delete it.
    2. The app logged the GET, then SIGTERM."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        pre_stop={"httpGet": {"path": "/prestop-hook", "port": "http"}},
        grace=5,
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods() and c.pods()[0].ready, 15, "a ready pod")
            pod = c.pods()[0]
            await c.until(lambda: "listening" in c.log(pod), 10, "the app listening")
            c.controller.scale(0)
            await c.until(lambda: pod.gone, 10, "the pod gone")
            (hook,) = _log_times(c, pod, "get")
            (term,) = _log_times(c, pod, "sigterm")
            assert hook <= term
            assert _event(c, pod, "prestop-finished").t <= _event(c, pod, "sigterm").t

    run(scenario())


def test_container_that_cannot_start_backs_off_in_place(tmp_path: Path) -> None:
    """A container whose command does not exist.
    1. It fails at once (exit 127), is restarted at once, fails, then backs off 10 s
       (CrashLoopBackOff).
    2. The pod stays (not replaced by the controller) and is never ready."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port(), command=["/no/such/binary"])

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 5, "a pod")
            pod = c.pods()[0]
            await c.until(
                lambda: any(e.detail == "back-off 10s" for e in c.events.of(pod.name)),
                5,
                "the second back-off",
            )
            # The main process starts through a shell (see lab.procs), whose exec fails
            # with 127 where a container runtime reports a StartError.
            failures = [e for e in c.events.of(pod.name) if e.kind in ("exited", "start-failed")]
            assert len(failures) == 2
            assert all(e.kind == "start-failed" or e.detail == "code 127" for e in failures)
            assert not pod.ready and not pod.gone and len(c.kubelet.pods) == 1

    run(scenario())


def test_env_and_args_follow_the_kubelet_rules_on_processes(tmp_path: Path) -> None:
    """A pod whose app prints its environment and argv; its env has a value that names
    earlier entries, and entries from a ConfigMap (envFrom and configMapKeyRef), a Secret
    and a fieldRef, whose values hold `$(EARLY)`; its args name env entries.
    1. The ConfigMap's and Secret's values reach the app as written, not expanded.
    2. The value expands against the entries before it; `$$` escapes; a later name and
       HOSTNAME (the runtime's, not the env list's) stay as written in the args."""
    manifest = env_manifests(
        tmp_path / "manifests", "registry.example.com/lab/tinyapp:test", free_port()
    )

    async def scenario() -> None:
        async with cluster(tmp_path, manifest) as c:
            await c.until(lambda: c.pods(), 10, "a pod")
            pod = c.pods()[0]
            await c.until(lambda: printed(c.log(pod)), 15, "the app's env and argv")
            seen = printed(c.log(pod))
            assert seen is not None
            check(*seen, pod.name)

    run(scenario())
