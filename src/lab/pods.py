"""Pods, and the kubelet that runs them on a container runtime (lab.runtime): process
groups on loopback addresses by default, or Docker containers.

Per pod: its own address (the pod IP), the container command from the manifest
and the image map, probes with the Kubernetes defaults, a restart with back-off when the
container exits or fails its liveness probe, and the termination sequence: marked
terminating, preStop, SIGTERM to the main process only, SIGKILL to the whole group when
`terminationGracePeriodSeconds` (counted from the deletion) runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.events import EventLog
from lab.images import Image, Launch
from lab.manifest import Container, Handler, PodTemplate, Probe
from lab.procs import Registry
from lab.runtime import ProcessRuntime, Runtime, RuntimeContainer, StartError
from lab.waits import stop_task, wait_event

# After SIGTERM with the grace period spent in preStop, the kubelet grants this much more
# (a one-time 2 s extension) before SIGKILL.
PRESTOP_OVERRUN_EXTENSION = 2.0
BACKOFF_START = 10.0
BACKOFF_MAX = 300.0


class AddressPool:
    """Pod IPs on loopback: a random 127.x.y.0/24 per run, so two labs on one machine
    (or a service bound to one port on 127.0.0.1) do not collide; .1 is never handed out."""

    def __init__(self, rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.prefix = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}"
        self.free = [f"{self.prefix}.{i}" for i in range(2, 255)]

    def take(self) -> str:
        if not self.free:
            raise RuntimeError("out of pod addresses (253 pods at once)")
        return self.free.pop(0)

    def give_back(self, address: str) -> None:
        # Back of the queue: a new pod should not inherit a just-deleted pod's address
        # while connections to it may still be closing.
        self.free.append(address)


@dataclass(eq=False)
class Pod:
    name: str
    ip: str
    revision: int
    template: PodTemplate
    image: Image
    launch: Launch
    created: float
    ready: bool = False
    ready_since: float | None = None
    terminating: bool = False
    gone: bool = False
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None  # the process runtime's main process
    running: RuntimeContainer | None = None  # the container the runtime started last
    delete_requested: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None

    @property
    def container(self) -> Container:
        return self.template.container

    def available(self, now: float, min_ready_seconds: float) -> bool:
        return (
            self.ready
            and not self.terminating
            and self.ready_since is not None
            and now - self.ready_since >= min_ready_seconds
        )


class Kubelet:
    """Runs pods; `on_change` is called whenever a pod's readiness or life changes."""

    def __init__(
        self,
        events: EventLog,
        registry: Registry,
        log_dir: Path,
        base_env: Mapping[str, str],
        rewrite: Callable[[str], str] | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[], None] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.events = events
        self.registry = registry
        self.log_dir = log_dir
        self.base_env = dict(base_env)
        self.rewrite = rewrite
        # Not from the seeded rng: two seeded runs at once must not share a subnet.
        self.runtime = runtime or ProcessRuntime(
            registry, log_dir, base_env, rewrite, AddressPool()
        )
        self.rng = rng or random.Random()
        self.on_change = on_change or (lambda: None)
        self.pods: list[Pod] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- pod life ------------------------------------------------------------------------

    def create_pod(self, name: str, template: PodTemplate, image: Image, revision: int) -> Pod:
        ip = self.runtime.addresses.take()
        pod = Pod(name, ip, revision, template, image, Launch((), {}, None), self.events.now())
        try:
            pod.launch = self.runtime.prepare(pod)
        except BaseException:
            self.runtime.addresses.give_back(ip)
            raise
        self.pods.append(pod)
        self.events.add(name, "created", f"{ip} revision {revision}")
        task = asyncio.create_task(self._run(pod), name=f"pod {name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return pod

    def delete_pod(self, pod: Pod) -> None:
        """Mark terminating now (endpoints drop it) and start the termination sequence."""
        if pod.terminating or pod.gone:
            return
        pod.terminating = True
        self.events.add(pod.name, "deleted", f"grace {pod.template.termination_grace:g}s")
        pod.delete_requested.set()
        self.on_change()

    def _set_ready(self, pod: Pod, ready: bool) -> None:
        if pod.ready == ready:
            return
        pod.ready = ready
        pod.ready_since = self.events.now() if ready else None
        self.events.add(pod.name, "ready" if ready else "not-ready")
        self.on_change()

    async def _run(self, pod: Pod) -> None:
        try:
            await self._lifecycle(pod)
        except Exception as exc:  # a pod's failure must not take the experiment down
            self.events.add(pod.name, "error", repr(exc))
        finally:
            if pod.running is not None and pod.running.returncode is None:
                pod.running.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pod.running.wait(), 5)
            self._set_ready(pod, False)
            try:
                await self.runtime.pod_gone(pod)
            except Exception as exc:
                self.events.add(pod.name, "error", f"removing the sandbox: {exc!r}")
            pod.gone = True
            self.runtime.addresses.give_back(pod.ip)
            self.events.add(pod.name, "gone")
            self.on_change()

    async def _lifecycle(self, pod: Pod) -> None:
        deleted = asyncio.ensure_future(pod.delete_requested.wait())
        try:
            while not pod.delete_requested.is_set():
                try:
                    await self._start_container(pod)
                except StartError as exc:  # e.g. no such executable
                    self.events.add(pod.name, "start-failed", str(exc))
                    await self._back_off(pod)
                    continue
                assert pod.running is not None
                liveness_failed = asyncio.Event()
                probes = [asyncio.create_task(self._readiness(pod))]
                if pod.container.liveness is not None:
                    probes.append(
                        asyncio.create_task(
                            self._liveness(pod, pod.container.liveness, liveness_failed)
                        )
                    )
                exited = asyncio.ensure_future(pod.running.wait())
                live = asyncio.ensure_future(liveness_failed.wait())
                try:
                    await asyncio.wait({exited, deleted, live}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    has_exited = exited.done()
                    for task in [*probes, live, exited]:
                        task.cancel()
                    await asyncio.gather(*probes, live, exited, return_exceptions=True)
                if pod.delete_requested.is_set() and not has_exited:
                    await self._terminate(pod, grace=pod.template.termination_grace)
                    return
                if not has_exited:  # liveness failure: kill the container, restart
                    self.events.add(pod.name, "liveness-failed", "restarting the container")
                    self._set_ready(pod, False)
                    await self._terminate(pod, grace=pod.template.termination_grace)
                else:
                    self._container_exited(pod)
                    self._set_ready(pod, False)
                if pod.delete_requested.is_set():
                    return
                await self._back_off(pod)
        finally:
            deleted.cancel()
            await asyncio.gather(deleted, return_exceptions=True)

    async def _back_off(self, pod: Pod) -> None:
        """Wait before the next restart: at once the first time, then 10 s doubling up to
        300 s (CrashLoopBackOff); a deletion ends the wait."""
        delay = (
            0.0 if pod.restarts == 0 else min(BACKOFF_MAX, BACKOFF_START * 2 ** (pod.restarts - 1))
        )
        pod.restarts += 1
        self.events.add(pod.name, "restarting", f"back-off {delay:g}s")
        await wait_event(pod.delete_requested, delay)

    async def _start_container(self, pod: Pod) -> None:
        pod.running = await self.runtime.start(pod)
        pod.exit_code = None
        self.events.add(pod.name, "started", f"{pod.running.main}: {' '.join(pod.launch.argv)}")

    def _container_exited(self, pod: Pod, killed: bool = False) -> None:
        assert pod.running is not None
        # The main process is PID 1 of its container: when it exits, everything else in
        # the container goes with it.
        pod.running.kill()
        pod.exit_code = pod.running.returncode
        if killed:
            self.events.add(pod.name, "sigkilled", "at the end of the grace period")
        else:
            self.events.add(pod.name, "exited", pod.running.exit_detail())

    async def _terminate(self, pod: Pod, grace: float) -> None:
        """preStop, SIGTERM, then SIGKILL once `grace` seconds (from now) have passed."""
        assert pod.running is not None
        process = pod.running
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        handler = pod.container.pre_stop
        if handler is not None and process.returncode is None:
            self.events.add(pod.name, "prestop-started", _describe(handler))
            try:
                await asyncio.wait_for(self._pre_stop(pod, handler), max(0.0, grace))
                self.events.add(pod.name, "prestop-finished")
            except TimeoutError:
                self.events.add(pod.name, "prestop-timeout", "grace period spent in preStop")
                deadline = loop.time() + PRESTOP_OVERRUN_EXTENSION
            except Exception as exc:  # a failing hook does not stop the termination
                self.events.add(pod.name, "prestop-failed", repr(exc))
        if process.returncode is None:
            process.terminate()  # the main process only
            self.events.add(pod.name, "sigterm", process.main)
        killed = False
        try:
            await asyncio.wait_for(process.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            process.kill()
            killed = True
            await asyncio.wait_for(process.wait(), 10)
        self._container_exited(pod, killed=killed)

    async def _pre_stop(self, pod: Pod, handler: Handler) -> None:
        if handler.action == "sleep":
            await asyncio.sleep(handler.seconds)
        elif handler.action == "exec":
            code = await self._exec(pod, handler.command, f"preStop {pod.name}", timeout=None)
            if code != 0:
                self.events.add(pod.name, "prestop-failed", f"exit code {code}")
        else:
            port = pod.container.resolve_port(handler.port)
            await http_get(handler.host or pod.ip, port, handler.path, timeout=None)

    async def _exec(
        self, pod: Pod, command: tuple[str, ...], name: str, timeout: float | None
    ) -> int:
        """Run a command in the pod's container (exec probes and preStop hooks)."""
        return await self.runtime.exec(pod, command, timeout)

    # -- probes --------------------------------------------------------------------------

    async def probe_once(self, pod: Pod, probe: Probe) -> bool:
        try:
            if probe.action == "exec":
                code = await self._exec(pod, probe.command, f"probe {pod.name}", probe.timeout)
                return code == 0
            port = pod.container.resolve_port(probe.port)
            host = probe.host or pod.ip
            if probe.action == "tcpSocket":
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), probe.timeout
                )
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True
            status = await http_get(host, port, probe.path, timeout=probe.timeout)
            return 200 <= status < 400
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return False

    async def _readiness(self, pod: Pod) -> None:
        probe = pod.container.readiness
        if probe is None:
            # No readiness probe: Ready as soon as the container runs (v1's problem).
            self._set_ready(pod, True)
            return
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            if await self.probe_once(pod, probe):
                successes, failures = successes + 1, 0
                if successes >= probe.success_threshold:
                    self._set_ready(pod, True)
            else:
                successes, failures = 0, failures + 1
                if failures >= probe.failure_threshold:
                    self._set_ready(pod, False)
            await asyncio.sleep(probe.period)

    async def _liveness(self, pod: Pod, probe: Probe, failed: asyncio.Event) -> None:
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            if await self.probe_once(pod, probe):
                failures = 0
            else:
                failures += 1
                if failures >= probe.failure_threshold:
                    failed.set()
                    return
            await asyncio.sleep(probe.period)

    async def wait_all_gone(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if all(p.gone for p in self.pods):
                return True
            await asyncio.sleep(0.05)
        return False

    async def shutdown(self, timeout: float = 5.0) -> None:
        """The forced path: kill every pod's group and wait for the pod tasks to finish."""
        for pod in self.pods:
            pod.terminating = True
            pod.delete_requested.set()
            if pod.running is not None and pod.running.returncode is None:
                pod.running.kill()
        tasks = list(self.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                await stop_task(task)


def _describe(handler: Handler) -> str:
    if handler.action == "exec":
        return "exec " + " ".join(handler.command)
    if handler.action == "sleep":
        return f"sleep {handler.seconds:g}s"
    return f"httpGet {handler.path}"


async def http_get(host: str, port: int, path: str, timeout: float | None) -> int:
    """A minimal HTTP/1.1 GET as the kubelet's prober does it; returns the status code."""

    async def get() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/lab\r\n"
                "Accept: */*\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            line = await reader.readline()
            parts = line.split()
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP response: {line!r}")
            return int(parts[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.wait_for(get(), timeout)
