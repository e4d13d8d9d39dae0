"""A real Kubernetes control plane as child processes of the lab: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, all on loopback, each on a free port.

The command lines are in flags.py; every timer keeps Kubernetes' own default unless
`ClusterConfig` sets it.

Each component runs as `setpriv --pdeathsig KILL -- <binary> ...` in a session of its
own: if the lab dies, even by SIGKILL, the kernel kills the components too. The parent
death signal fires when the *thread* that forked the child ends (prctl(2)), so the
components are started from the event loop's thread, which lives as long as the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.kube import flags, health
from lab.kube import state as st
from lab.kube.bins import Binaries, find
from lab.kube.flags import LOOPBACK
from lab.kube.pki import Pki, PkiError, make_pki
from lab.lag import DEFAULT_LAG, Lag
from lab.procs import spawn_logged

RUNTIMES = ("process", "docker")
KUBELETS = ("lab", "real")  # the lab's own kubelet, or the real one (lab.kube.real_nodes)


class ClusterConfigError(ValueError):
    """A bad option, or a precondition that fails before anything starts (exit 2)."""


class ClusterError(RuntimeError):
    """The control plane failed to start or a component died (exit 1)."""


def _exited(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class ClusterConfig:
    state_dir: Path = Path("out/cluster")
    bins_dir: Path | None = None  # None: the build cache of this checkout's pins
    nodes: int = 1
    # None keeps Kubernetes' default: 50 s since 1.32 (kube-controller-manager
    # --node-monitor-grace-period).
    node_monitor_grace: float | None = None
    # None keeps the API server's 300 s (--default-not-ready-toleration-seconds and
    # --default-unreachable-toleration-seconds).
    not_ready_toleration: int | None = None
    unreachable_toleration: int | None = None
    # None keeps the controller-manager's 0 (--endpointslice-updates-batch-period).
    endpointslice_batch: float | None = None
    api_port: int | None = None  # None: a free loopback port
    runtime: str = "process"
    kubelet: str = "lab"
    # The nodes' side (lab.kube.workers): the image map their pods' images go through,
    # each node proxy's propagation lag, and the seed of its draws.
    image_map: Path | None = None  # None: deploy/lab-images.yml
    endpoint_lag: Lag = DEFAULT_LAG
    seed: int | None = None
    ready_timeout: float = 120.0  # per component, from its start to healthy
    stop_timeout: float = 15.0  # per component, from SIGTERM to SIGKILL

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ClusterConfigError(f"--nodes must be at least 1, not {self.nodes}")
        if self.runtime not in RUNTIMES:
            raise ClusterConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}")
        if self.kubelet not in KUBELETS:
            raise ClusterConfigError(f"--kubelet must be one of {', '.join(KUBELETS)}")
        for flag, value in (
            ("--node-monitor-grace-period", self.node_monitor_grace),
            ("--endpointslice-batch", self.endpointslice_batch),
        ):
            if value is not None and value < 0:
                raise ClusterConfigError(f"{flag} must not be negative, not {value:g}")
        for flag, seconds in (
            ("--not-ready-toleration", self.not_ready_toleration),
            ("--unreachable-toleration", self.unreachable_toleration),
        ):
            if seconds is not None and seconds < 0:
                raise ClusterConfigError(f"{flag} must not be negative, not {seconds}")
        if self.api_port is not None and not 1 <= self.api_port <= 65535:
            raise ClusterConfigError(f"--api-port must be 1-65535, not {self.api_port}")


def port_free(port: int) -> bool:
    """Nothing is bound to 127.0.0.1:port (SO_REUSEADDR as the Go servers set it, so a
    closed connection's TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int, exclude: set[int]) -> list[int]:
    """`count` distinct loopback ports nothing listens on now (the kernel picks them)."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            if sock.getsockname()[1] in exclude:
                sock.close()
                continue
            sockets.append(sock)  # held open until all are picked: all distinct
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Component:
    name: str
    process: asyncio.subprocess.Process
    start_time: int
    ports: dict[str, int]
    log: Path
    started: float = field(default_factory=time.monotonic)
    healthy: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def record(self) -> st.ComponentRecord:
        return st.ComponentRecord(
            self.name, self.pid, self.start_time, self.ports, str(self.log), self.healthy
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


async def _wait_exit(process: asyncio.subprocess.Process, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await process.wait()
    return process.returncode is not None


class ControlPlane:
    """The control plane of one state directory. `preflight()` (or `start()`, which
    calls it) takes the directory's lock; `stop()` always runs its forced path and
    releases the lock; `kill()` is the forced path alone, for a second signal."""

    def __init__(self, config: ClusterConfig, progress: Callable[[str], None] | None = None):
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.kubeconfig = self.state_dir / st.KUBECONFIG
        self.progress = progress or (lambda _line: None)
        self.components: dict[str, Component] = {}
        self.api_url = ""
        self.binaries: Binaries | None = None
        self.pki: Pki | None = None
        self.state: st.ClusterState | None = None
        self.swept: list[str] = []
        self._lock = st.StateLock(self.state_dir)
        self._forced = False

    async def __aenter__(self) -> ControlPlane:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def preflight(self) -> list[str]:
        """Everything that can fail before a process starts: the binaries
        (BinariesError), setpriv and openssl, --api-port and the state directory's lock
        (ClusterConfigError). Then sweeps what a dead owner left; returns those lines."""
        if self._lock.held:
            return self.swept
        self.binaries = find(self.config.bins_dir)
        for tool in ("setpriv", "openssl"):
            if shutil.which(tool) is None:
                raise ClusterConfigError(f"{tool} is not on PATH (util-linux / openssl)")
        port = self.config.api_port
        if port is not None and not port_free(port):
            raise ClusterConfigError(f"--api-port {port}: {LOOPBACK}:{port} is already in use")
        if not self._lock.try_acquire():
            recorded = st.ClusterState.load(self.state_dir)
            holder = self._lock.holder()
            if holder is None and recorded is not None and recorded.owner_alive():
                holder = recorded.owner_pid
            who = f"pid {holder}" if holder is not None else "its pid not known yet"
            raise ClusterConfigError(
                f"{self.state_dir} is in use by another `lab cluster up` ({who}); "
                f"stop it with `lab cluster down --state-dir {self.config.state_dir}`"
            )
        self.swept = st.sweep(self.state_dir)
        for line in self.swept:
            self.progress(line)
        return self.swept

    def _save(self) -> None:
        if self.state is not None:
            self.state.components = [c.record() for c in self.components.values()]
            self.state.save(self.state_dir)

    async def start(self) -> None:
        """Start etcd, the API server, then the controller-manager and the scheduler,
        each healthy before the next step. Raises ClusterError (with the failing
        component's log tail); the caller then calls `stop()`."""
        self.preflight()
        assert self.binaries is not None
        d = self.state_dir
        try:
            self.pki = await asyncio.to_thread(make_pki, d / "pki")
        except PkiError as exc:
            raise ClusterError(str(exc)) from exc
        api_port = self.config.api_port
        exclude = {api_port} if api_port is not None else set()
        etcd_client, etcd_peer, kcm_port, scheduler_port, picked_api = free_ports(5, exclude)
        api_port = api_port or picked_api
        self.api_url = f"https://{LOOPBACK}:{api_port}"
        self.state = st.ClusterState(
            owner_pid=os.getpid(),
            owner_start_time=st.own_start_time(),
            api_url=self.api_url,
            kubeconfig=str(self.kubeconfig),
        )
        self._save()
        etc = d / "etc"
        etc.mkdir(exist_ok=True)
        (d / "logs").mkdir(exist_ok=True)
        pki = self.pki
        kubeconfigs = {
            "admin": self.kubeconfig,
            "system:kube-controller-manager": etc / "kube-controller-manager.kubeconfig",
            "system:kube-scheduler": etc / "kube-scheduler.kubeconfig",
        }
        for user, path in kubeconfigs.items():
            flags.write_kubeconfig(path, self.api_url, pki.ca_cert, user, pki.tokens[user])

        # etcd's data is wiped on each `up`: the PKI is new each time too (Secrets and
        # service-account tokens stored under the old keys would be useless), and an
        # experiment must not inherit the last one's Nodes, Pods and Leases, which the
        # controllers would act on as soon as they start.
        data_dir = d / "etcd"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(mode=0o700)
        etcd_url = f"http://{LOOPBACK}:{etcd_client}"
        etcd_args = flags.etcd_args(data_dir, etcd_url, etcd_peer)
        etcd = await self._spawn("etcd", etcd_args, {"client": etcd_client, "peer": etcd_peer})
        await self._wait_healthy(etcd, lambda: health.etcd_health(etcd_url), etcd_url)

        api_args = flags.apiserver_args(pki, self.config, etcd_url, api_port)
        if self.config.kubelet == "real":  # its logs and exec reach the real kubelets'
            # API with the front-proxy client certificate, which their client CAs take.
            api_args += [
                f"--kubelet-client-certificate={pki.front_proxy_client_cert}",
                f"--kubelet-client-key={pki.front_proxy_client_key}",
                # The nodes' names resolve nowhere: their InternalIP (lab.kube.real_nodes).
                "--kubelet-preferred-address-types=InternalIP",
            ]
        api = await self._spawn("kube-apiserver", api_args, {"secure": api_port})
        client = health.api_client(self.kubeconfig)
        try:
            await self._wait_healthy(api, lambda: health.api_readyz(client), self.api_url)
        finally:
            client.close()

        kcm_config = kubeconfigs["system:kube-controller-manager"]
        kcm_args = flags.controller_manager_args(
            pki, self.config, kcm_config, kcm_port, d / "flexvolume"
        )
        kcm = await self._spawn("kube-controller-manager", kcm_args, {"secure": kcm_port})
        scheduler_config = kubeconfigs["system:kube-scheduler"]
        scheduler_args = flags.scheduler_args(
            etc / "kube-scheduler.yaml", scheduler_config, scheduler_port
        )
        scheduler = await self._spawn("kube-scheduler", scheduler_args, {"secure": scheduler_port})
        # Both start at once; each one's time counts from its own start.
        await self._wait_healthy(kcm, lambda: health.secure_healthz(kcm_port))
        await self._wait_healthy(scheduler, lambda: health.secure_healthz(scheduler_port))

    def mark_ready(self) -> None:
        """Record `ready` in cluster.json: the control plane (and whatever the caller
        started on it) is up."""
        if self.state is not None:
            self.state.ready = True
            self._save()

    async def _spawn(self, name: str, args: list[str], ports: dict[str, int]) -> Component:
        assert self.binaries is not None
        log = self.state_dir / "logs" / f"{name}.log"
        argv = ["setpriv", "--pdeathsig", "KILL", "--", str(self.binaries.path(name)), *args]
        self.progress(f"starting {name}")
        process, started = await spawn_logged(argv, log, append=False)  # a new log
        component = Component(name, process, started, ports, log)
        self.components[name] = component
        self._save()
        return component

    async def _wait_healthy(
        self, component: Component, check: Callable[[], Awaitable[str | None]], url: str = ""
    ) -> None:
        deadline = component.started + self.config.ready_timeout
        while True:
            if component.process.returncode is not None:
                raise ClusterError(
                    f"{component.name} {_exited(component.process.returncode)} "
                    f"before it was healthy; the end of {component.log}:\n{component.log_tail()}"
                )
            problem = await check()
            if problem is None:
                break
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{component.name} not healthy after {self.config.ready_timeout:g} s "
                    f"({problem}); the end of {component.log}:\n{component.log_tail()}"
                )
            await asyncio.sleep(0.2)  # the poll interval, bounded by the deadline above
        component.healthy = True
        self._save()
        where = f" ({url})" if url else ""
        self.progress(
            f"{component.name} ready in {time.monotonic() - component.started:.1f} s{where}"
        )

    async def first_exit(self) -> str:
        """Wait until a component exits; what happened, with the end of its log."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.components.values()}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        component = waits[next(iter(done))]
        return (
            f"{component.name} {_exited(component.process.returncode)}; "
            f"the end of {component.log}:\n{component.log_tail()}"
        )

    def _kill(self, component: Component) -> None:
        # Only while the leader is not reaped: until then its PID (= its process group's
        # ID) cannot belong to anyone else.
        if component.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(component.pid, signal.SIGKILL)

    def kill(self) -> None:
        """The forced path alone: SIGKILL every component's group at once."""
        self._forced = True
        for component in self.components.values():
            self._kill(component)

    async def stop(self) -> None:
        """SIGTERM each component in reverse order, each with `stop_timeout`, then
        SIGKILL its group (always: a no-op for one that is gone); remove cluster.json and
        the kubeconfig, and release the lock. Safe to call more than once."""
        try:
            for component in reversed(list(self.components.values())):
                process = component.process
                if process.returncode is None and not self._forced:
                    self.progress(f"stopping {component.name}")
                    began = time.monotonic()
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                    if await _wait_exit(process, self.config.stop_timeout):
                        took = time.monotonic() - began
                        self.progress(f"{component.name} stopped in {took:.1f} s")
                    elif not self._forced:
                        timeout = self.config.stop_timeout
                        self.progress(f"{component.name} still running {timeout:g} s after SIGTERM: SIGKILL")  # fmt: skip
                self._kill(component)
            for component in self.components.values():
                self._kill(component)
                if not await _wait_exit(component.process, 5.0):
                    self.progress(f"{component.name} (pid {component.pid}) did not exit after SIGKILL")  # fmt: skip
        finally:
            if self._lock.held:
                for path in (self.state_dir / st.STATE_FILE, self.kubeconfig):
                    path.unlink(missing_ok=True)
            self._lock.release()

    def client(self) -> Any:
        """A `kubernetes.client.ApiClient` as the admin (the caller closes it)."""
        return health.api_client(self.kubeconfig)
