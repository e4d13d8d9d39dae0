"""Pods, and the kubelet that runs them on a container runtime (lab.runtime): process
groups on loopback addresses by default (or each in a network namespace of its own,
lab.pod_netns), or Docker containers.

Per pod: its own address (the pod IP), the container command from the manifest
and the image map, probes with the Kubernetes defaults, a restart with back-off when the
container exits or fails its liveness probe, and the termination sequence: marked
terminating, preStop, SIGTERM to the main process only, SIGKILL to the whole group when
`terminationGracePeriodSeconds` (counted from the deletion) runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab.events import EventLog
from lab.images import Image, Launch
from lab.manifest import Container, Handler, PodTemplate, Probe
from lab.probes import ProbeResult, describe, exec_result, http_probe, tcp_probe
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
    # Each probe's last result ("readiness", "liveness", "startup"), for explanations.
    last_probe: dict[str, ProbeResult] = field(default_factory=dict)
    # Why the kubelet is killing the running container (a failed liveness or startup
    # probe, or postStart hook), for the event that says so.
    kill_reason: str = ""
    # Its node failed (the node-failure fault): nothing on the node acts any more, and
    # the API keeps the pod's last status until the node controller changes it.
    node_lost: bool = False
    node: int = 0  # the node it is bound to (`--nodes`), counted from 0
    node_down: asyncio.Event = field(default_factory=asyncio.Event)

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
        nodes: int = 1,
    ) -> None:
        self.nodes = nodes
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

    def create_pod(
        self, name: str, template: PodTemplate, image: Image, revision: int, node: int | None = None
    ) -> Pod:
        """Start a pod; `node` is the node it is bound to (None: the kubelet's own
        spreading, `_schedule`; a real scheduler's binding gives it)."""
        ip = self.runtime.addresses.take()
        pod = Pod(name, ip, revision, template, image, Launch((), {}, None), self.events.now())
        try:
            pod.launch = self.runtime.prepare(pod)
        except BaseException:
            self.runtime.addresses.give_back(ip)
            raise
        pod.node = self._schedule() if node is None else node
        self.pods.append(pod)
        where = f" node{pod.node}" if self.nodes > 1 else ""
        self.events.add(name, "created", f"{ip} revision {revision}{where}")
        task = asyncio.create_task(self._run(pod), name=f"pod {name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return pod

    def _schedule(self) -> int:
        """The node with the fewest pods that are not gone (the lowest on a tie): the
        spreading that kube-scheduler's default topology spread constraints
        (`maxSkew` over `kubernetes.io/hostname`, pkg/scheduler/framework/plugins/
        podtopologyspread) give equal nodes with no other pods."""
        counts = [0] * self.nodes
        for other in self.pods:
            if not other.gone:
                counts[other.node] += 1
        return counts.index(min(counts))

    def delete_pod(self, pod: Pod) -> None:
        """Mark terminating now (endpoints drop it) and start the termination sequence."""
        if pod.terminating or pod.gone:
            return
        pod.terminating = True
        self.events.add(pod.name, "deleted", f"grace {pod.template.termination_grace:g}s")
        pod.delete_requested.set()
        self.on_change()

    def lose_node(self, pod: Pod) -> None:
        """The pod's node stops: its containers die with it, and no kubelet is left to
        probe, restart or report, so the pod stays Ready in the API until the node
        controller notices (`node_not_ready`)."""
        pod.node_lost = True
        pod.node_down.set()

    def node_not_ready(self, pod: Pod, detail: str) -> None:
        """The node controller marks the pods of a node it no longer hears from not
        ready (MarkPodsNotReady, pkg/controller/util/node/controller_utils.go, called by
        pkg/controller/nodelifecycle/node_lifecycle_controller.go)."""
        self.events.add(pod.name, "node-not-ready", detail)
        self._set_ready(pod, False)

    def _set_ready(self, pod: Pod, ready: bool) -> None:
        if pod.ready == ready:
            return
        pod.ready = ready
        pod.ready_since = self.events.now() if ready else None
        last = pod.last_probe.get("readiness")
        detail = f"last readiness probe: {last}" if not ready and last and not last.ok else ""
        self.events.add(pod.name, "ready" if ready else "not-ready", detail)
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
            if not pod.node_lost:  # a dead node's address stays dead until the run ends
                self.runtime.addresses.give_back(pod.ip)
            self.events.add(pod.name, "gone")
            self.on_change()

    async def _lifecycle(self, pod: Pod) -> None:
        deleted = asyncio.ensure_future(pod.delete_requested.wait())
        down = asyncio.ensure_future(pod.node_down.wait())
        try:
            while not pod.delete_requested.is_set() and not pod.node_lost:
                try:
                    await self._start_container(pod)
                except StartError as exc:  # e.g. no such executable
                    self.events.add(pod.name, "start-failed", str(exc))
                    await self._back_off(pod)
                    continue
                assert pod.running is not None
                liveness_failed = asyncio.Event()
                pod.kill_reason = ""
                # The readiness worker, once started by _probes, outlives the other probes
                # while the pod terminates.
                readiness: list[asyncio.Task[None]] = []
                try:
                    probes = asyncio.create_task(self._probes(pod, liveness_failed, readiness))
                    exited = asyncio.ensure_future(pod.running.wait())
                    live = asyncio.ensure_future(liveness_failed.wait())
                    try:
                        await asyncio.wait(
                            {exited, deleted, live, down}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        has_exited = exited.done()
                        for task in [probes, live, exited]:
                            task.cancel()
                        await asyncio.gather(probes, live, exited, return_exceptions=True)
                    if pod.node_lost:
                        # No kubelet is left: no probe, no restart, no status change.
                        for task in readiness:
                            await stop_task(task)
                        break
                    if pod.delete_requested.is_set() and not has_exited:
                        # The kubelet stops liveness (and startup) probes once the pod is
                        # being deleted but keeps the readiness probe running: it feeds
                        # the endpoint's `serving` condition while the pod terminates
                        # (doProbe in pkg/kubelet/prober/worker.go).
                        await self._terminate(pod, grace=pod.template.termination_grace)
                        # The container has exited: the pod is not ready (nor serving).
                        for task in readiness:
                            await stop_task(task)
                        self._set_ready(pod, False)
                        return
                    for task in readiness:
                        await stop_task(task)
                    if not has_exited:  # liveness failure: kill the container, restart
                        kind, _, detail = pod.kill_reason.partition(": ")
                        if not pod.kill_reason:
                            last = pod.last_probe.get("liveness")
                            kind, detail = "liveness-failed", "restarting the container"
                            if last is not None and pod.container.liveness is not None:
                                probe = describe(pod.container.liveness)
                                detail = f"{probe}: {last}; {detail}"
                        self.events.add(pod.name, kind, detail)
                        self._set_ready(pod, False)
                        await self._terminate(pod, grace=pod.template.termination_grace)
                    else:
                        self._container_exited(pod)
                        self._set_ready(pod, False)
                finally:
                    # A container that is not running fails its readiness probe.
                    for task in readiness:
                        await stop_task(task)
                if pod.delete_requested.is_set():
                    return
                await self._back_off(pod)
            if pod.node_lost:
                await self._lost(pod)
        finally:
            deleted.cancel()
            down.cancel()
            await asyncio.gather(deleted, down, return_exceptions=True)

    async def _lost(self, pod: Pod) -> None:
        """A pod on a failed node: its containers are dead; it stays as the API last saw
        it until deleted (the taint manager's eviction, or the run's end)."""
        if pod.running is not None:
            pod.running.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.running.wait(), 10)
            pod.exit_code = pod.running.returncode
        await pod.delete_requested.wait()

    async def _probes(
        self, pod: Pod, failed: asyncio.Event, readiness: list[asyncio.Task[None]]
    ) -> None:
        """postStart, then the startup probe, then readiness and liveness; `failed` is set
        (with `pod.kill_reason`) when the container must be killed and restarted. The
        readiness worker goes into `readiness`, for the caller to stop: it keeps running
        while the pod terminates, when this task is cancelled."""
        container = pod.container
        # Every probe worker starts with the container and ticks from then on
        # (pkg/kubelet/prober/worker.go): a readiness probe after a startup probe keeps
        # the schedule it had from the start.
        origin = asyncio.get_running_loop().time()
        if container.post_start is not None:
            # The hook runs right after the container is created; the container is not
            # Running (no probes, not ready) until it completes, and a failing hook kills
            # it (https://kubernetes.io/docs/concepts/containers/container-lifecycle-hooks/,
            # kuberuntime_container.go startContainer: FailedPostStartHook).
            error = await self._post_start(pod, container.post_start)
            if error is not None:
                pod.kill_reason = (
                    f"poststart-failed: {describe(container.post_start)}: {error}; "
                    "killing the container"
                )
                failed.set()
                return
            self.events.add(pod.name, "poststart-finished")
        if container.startup is not None:
            # Liveness and readiness probes do not run until the startup probe has
            # succeeded; failureThreshold failures kill the container
            # (https://kubernetes.io/docs/concepts/configuration/liveness-readiness-startup-probes/,
            # prober/worker.go doProbe skips other probes until startup succeeded).
            if not await self._startup(pod, container.startup, origin):
                last = pod.last_probe.get("startup")
                pod.kill_reason = (
                    f"startup-failed: {describe(container.startup)}: {last}; "
                    "restarting the container"
                )
                failed.set()
                return
            self.events.add(pod.name, "started-up", "startup probe succeeded")
        readiness.append(asyncio.create_task(self._readiness(pod, origin)))
        if container.liveness is None:
            return
        liveness = asyncio.create_task(self._liveness(pod, container.liveness, failed, origin))
        try:
            await liveness
        finally:
            await stop_task(liveness)

    async def _post_start(self, pod: Pod, handler: Handler) -> str | None:
        """Run the postStart hook; None if it succeeded, else why it failed."""
        self.events.add(pod.name, "poststart-started", describe(handler))
        try:
            if handler.action == "sleep":
                await asyncio.sleep(handler.seconds)
                return None
            if handler.action == "exec":
                result = await self._exec_result(
                    pod, handler.command, f"postStart {pod.name}", None
                )
                return None if result.ok else result.detail
            port = pod.container.resolve_port(handler.port)
            result = await http_probe(handler.host or pod.ip, port, handler.path, timeout=None)
            return None if result.ok else result.detail
        except Exception as exc:  # a hook that cannot run fails like one that exits non-zero
            return f"cannot run: {exc}"

    async def _startup(self, pod: Pod, probe: Probe, origin: float) -> bool:
        """The startup probe until it succeeds (True) or fails failureThreshold times."""
        failures = 0
        schedule = ProbeSchedule(probe, origin)
        while True:
            await schedule.next()
            if await self.probe_once(pod, probe):
                return True
            failures += 1
            if failures >= probe.failure_threshold:
                return False

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
            result = await self._exec_result(pod, handler.command, f"preStop {pod.name}", None)
            if not result.ok:
                self.events.add(pod.name, "prestop-failed", result.detail)
        else:
            port = pod.container.resolve_port(handler.port)
            result = await http_probe(handler.host or pod.ip, port, handler.path, timeout=None)
            if not result.ok:
                self.events.add(pod.name, "prestop-failed", result.detail)

    async def _exec_result(
        self, pod: Pod, command: tuple[str, ...], name: str, timeout: float | None
    ) -> ProbeResult:
        """Run a command in the pod's container (exec probes and hooks). The result
        keeps its exit code and an excerpt of its output. A command that cannot start
        (not found, not executable) raises OSError, as the runtime's exec fails."""
        code, output = await self.runtime.exec(pod, command, timeout)
        return exec_result(code, output)

    # -- probes --------------------------------------------------------------------------

    async def probe_once(self, pod: Pod, probe: Probe) -> bool:
        """Run one probe; its result is kept in `pod.last_probe`, and a failure whose
        output differs from the last one becomes a `probe-failed` event."""
        result = await self.check(pod, probe)
        kind = _probe_kind(pod.container, probe)
        previous = pod.last_probe.get(kind)
        pod.last_probe[kind] = result
        if not result.ok and (previous is None or previous.detail != result.detail):
            self.events.add(pod.name, "probe-failed", f"{kind} {describe(probe)}: {result}")
        return result.ok

    async def check(self, pod: Pod, probe: Probe) -> ProbeResult:
        if probe.action == "exec":
            try:
                return await self._exec_result(
                    pod, probe.command, f"probe {pod.name}", probe.timeout
                )
            except TimeoutError:
                return ProbeResult(False, f"timeout: still running after {probe.timeout:g} s")
            except OSError as exc:
                return ProbeResult(False, f"cannot run: {exc}")
        port = pod.container.resolve_port(probe.port)
        host = probe.host or pod.ip
        if probe.action == "tcpSocket":
            return await tcp_probe(host, port, probe.timeout)
        return await http_probe(host, port, probe.path, probe.timeout)

    async def _readiness(self, pod: Pod, origin: float) -> None:
        probe = pod.container.readiness
        if probe is None:
            # No readiness probe: Ready as soon as the container runs (v1's problem).
            self._set_ready(pod, True)
            return
        successes = failures = 0
        schedule = ProbeSchedule(probe, origin)
        while True:
            await schedule.next()
            if await self.probe_once(pod, probe):
                successes, failures = successes + 1, 0
                if successes >= probe.success_threshold:
                    self._set_ready(pod, True)
            else:
                successes, failures = 0, failures + 1
                if failures >= probe.failure_threshold:
                    self._set_ready(pod, False)

    async def _liveness(self, pod: Pod, probe: Probe, failed: asyncio.Event, origin: float) -> None:
        failures = 0
        schedule = ProbeSchedule(probe, origin)
        while True:
            await schedule.next()
            if await self.probe_once(pod, probe):
                failures = 0
            else:
                failures += 1
                if failures >= probe.failure_threshold:
                    failed.set()
                    return

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


class Ticker:
    """A Go `time.Ticker`: ticks at `origin + k * period`. A receiver still busy at a tick
    gets that tick as soon as it asks, and the ticks after it are dropped, so a slow probe
    does not shift the schedule."""

    def __init__(self, period: float, origin: float) -> None:
        self.period = period
        self.origin = origin
        self.last = origin

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self.last + self.period
        if now >= due:
            self.last = self.origin + math.floor((now - self.origin) / self.period) * self.period
            return
        await asyncio.sleep(due - now)
        self.last = due


class ProbeSchedule:
    """When a probe worker probes, as the kubelet's does (`worker.run` and `doProbe` in
    pkg/kubelet/prober/worker.go): once when the worker starts and then on every tick
    of a fixed ticker of `periodSeconds`, skipping each tick that comes before
    `initialDelaySeconds` since the container started. The lab starts the worker with
    the container, so both clocks start together."""

    def __init__(self, probe: Probe, origin: float) -> None:
        self.initial_delay = probe.initial_delay
        self.origin = origin
        self.ticker = Ticker(probe.period, origin)
        self.started = False

    async def next(self) -> None:
        """Return when the next probe is due."""
        loop = asyncio.get_running_loop()
        while True:
            if self.started:
                await self.ticker.wait()
            self.started = True
            # The tick's own time, so a timer that fires a hair early is not a tick early.
            now = max(loop.time(), self.ticker.last)
            if now - self.origin >= self.initial_delay:
                return


def _describe(handler: Handler) -> str:
    return describe(handler)


def _probe_kind(container: Container, probe: Probe) -> str:
    for kind, candidate in (
        ("readiness", container.readiness),
        ("liveness", container.liveness),
        ("startup", container.startup),
    ):
        if candidate is probe:
            return kind
    return "probe"
