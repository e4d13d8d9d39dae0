"""The kubelet's container runtime: one small interface, two implementations.

The kubelet (lab.pods) owns the rules: probes, preStop, the grace period, restarts with
back-off. A runtime only does what a container runtime does: give a pod its sandbox (an
IP), start its container, signal it, run a command in it, report how it exited, and
remove the sandbox when the pod is gone. The fault injector (lab.faults) acts through the
same interface: kill a container, freeze and thaw it, make a pod's address dead.

- ProcessRuntime (here): a pod is a process group on a loopback address; the image map
  says what to run for an image (lab.images). With `--pod-network netns`
  (lab.pod_netns.NetnsRuntime) each pod has a network namespace of its own.
- DockerRuntime (lab.docker_runtime): a pod is a sandbox container holding the network
  namespace and IP on a Docker network of the run, plus the app container joining it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from lab.blackhole import Blackhole, BlackholeError
from lab.images import Image, Launch, map_command, resolve
from lab.manifest import PodTemplate
from lab.probes import READ_LIMIT
from lab.procs import Registry


class StartError(Exception):
    """The container could not be started (the kubelet's StartError): it is retried."""


class Pod(Protocol):
    """What a pod is to a runtime (lab.pods.Pod is one): its name and address, its
    template and image, and what its container runs (the kubelet keeps prepare()'s
    answer as `launch`)."""

    @property
    def name(self) -> str: ...

    @property
    def ip(self) -> str: ...

    @property
    def template(self) -> PodTemplate: ...

    @property
    def image(self) -> Image: ...

    @property
    def launch(self) -> Launch: ...

    # The process runtime's main process, for tests that look at it.
    process: asyncio.subprocess.Process | None


class Addresses(Protocol):
    def take(self) -> str: ...

    def give_back(self, address: str) -> None: ...


class RuntimeContainer(abc.ABC):
    """One started container of a pod, as the kubelet sees it."""

    @property
    @abc.abstractmethod
    def main(self) -> str:
        """Its main process, for the event log (e.g. `pid 1234`)."""

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: killed by that signal), else None."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait until it has exited; returns the exit code."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """SIGTERM to the main process only (PID 1 of the container)."""

    @property
    @abc.abstractmethod
    def group(self) -> str:
        """Every process of it, for the event log (e.g. `group 1234`)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL to every process of the container."""

    @abc.abstractmethod
    async def freeze(self) -> None:
        """SIGSTOP to every process of the container (a hung container): nothing in it
        runs or handles a signal, a SIGTERM stays pending, SIGKILL still ends it, and the
        kernel still accepts connections to its listening sockets."""

    @abc.abstractmethod
    async def thaw(self) -> None:
        """SIGCONT to every process of the container: undoes freeze()."""

    def exit_detail(self) -> str:
        """How it exited, for the event log: `code N`, `by signal X`, `OOMKilled`."""
        code = self.returncode
        if code is not None and code < 0:
            return f"by signal {signal.Signals(-code).name}"
        return f"code {code}"


class Runtime(abc.ABC):
    """What the kubelet needs from a container runtime."""

    name: str
    addresses: Addresses
    # Edits the manifest's env values (the in-cluster influxdb:8086 -> the lab's InfluxDB).
    rewrite: Callable[[str], str] | None = None
    # Where a gone pod's address, or a failed node's, drops packets (None: not modelled,
    # or the runtime's own network does it).
    dead: Blackhole | None = None

    @abc.abstractmethod
    def prepare(self, pod: Pod) -> Launch:
        """What the pod's container runs (command, env, working dir), from its template,
        image and IP; fails with ManifestError on what the runtime cannot run."""

    @abc.abstractmethod
    async def start(self, pod: Pod) -> RuntimeContainer:
        """Start (or restart) the pod's container; raises StartError when it cannot."""

    @abc.abstractmethod
    async def exec(
        self, pod: Pod, command: Sequence[str], timeout: float | None
    ) -> tuple[int, bytes]:
        """Run an exec probe's or hook's command in the container: its exit code and
        output (at most READ_LIMIT bytes of it kept). Raises OSError when the command
        cannot start, TimeoutError after `timeout`."""

    async def pod_gone(self, pod: Pod) -> None:  # noqa: B027 (optional hook)
        """The pod's containers are stopped: remove its sandbox (and with it its IP)."""

    @property
    def gateway(self) -> str:
        """Where the pods reach this machine: the lab's InfluxDB listens there."""
        return "127.0.0.1"

    def phases(self) -> list[tuple[str, str]]:
        """What the run logs about the runtime once it is open: (phase, detail)."""
        if self.dead is None:
            return []
        return [("dead-addresses", f"nftables table {self.dead.table}, on demand")]

    def sweep_record(self) -> tuple[str | None, str | None]:
        """What it makes beside processes, for the sweep after a SIGKILL
        (lab.leftovers.record): its Docker run id, its table of dead addresses."""
        return None, self.dead.table if self.dead is not None else None

    @property
    def drops_addresses(self) -> bool:
        """Whether it can make an address drop every packet (drop_address)."""
        return self.dead is not None

    async def drop_address(self, pod: Pod) -> None:
        """From now on packets to and from the pod's IP vanish, its sandbox still there:
        the pod's node is off. Raises BlackholeError where that cannot be done."""
        await self.drop_ip(pod.ip)

    async def drop_ip(self, ip: str) -> None:
        """From now on packets to and from `ip` (a pod's, or a failed node's proxy's)
        vanish. Raises BlackholeError where that cannot be done."""
        if self.dead is None:
            raise BlackholeError(f"no nftables table for dead addresses on the {self.name} runtime")
        await self.dead.drop(ip)

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """The end of a run (its step's undo, lab.steps): remove whatever the runtime made."""


# -- processes ---------------------------------------------------------------------------


class ProcessContainer(RuntimeContainer):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def main(self) -> str:
        return f"pid {self.process.pid}"

    @property
    def group(self) -> str:
        return f"group {self.process.pid}"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)

    def kill(self) -> None:
        # The main process stands for PID 1: its group is the container.
        Registry.kill_group(self.process.pid)

    async def freeze(self) -> None:
        Registry.kill_group(self.process.pid, signal.SIGSTOP)

    async def thaw(self) -> None:
        if self.process.returncode is None:
            Registry.kill_group(self.process.pid, signal.SIGCONT)


class ProcessRuntime(Runtime):
    """Pods as process groups on loopback addresses; images from the image map."""

    name = "process"

    def __init__(
        self,
        registry: Registry,
        log_dir: Path,
        base_env: Mapping[str, str],
        rewrite: Callable[[str], str] | None,
        addresses: Addresses,
        dead: Blackhole | None = None,
    ) -> None:
        self.dead = dead
        self.registry = registry
        self.log_dir = log_dir
        self.base_env = dict(base_env)
        self.rewrite = rewrite
        self.addresses = addresses

    def prepare(self, pod: Pod) -> Launch:
        pod_dir = self.log_dir / pod.name
        pod_dir.mkdir(parents=True, exist_ok=True)
        return resolve(
            pod.template.container,
            pod.image,
            pod.name,
            pod.ip,
            self.base_env,
            self.rewrite,
            pod_dir,
        )

    async def make_sandbox(self, pod: Pod) -> None:
        """Make the pod's sandbox before its first container, once (the namespaces of
        lab.pod_netns); loopback needs none. Raises StartError when it cannot."""

    def in_sandbox(self, pod: Pod, argv: Sequence[str]) -> Sequence[str]:
        """`argv` as run inside the pod's sandbox: on loopback, as it is."""
        return argv

    async def start(self, pod: Pod) -> RuntimeContainer:
        launch = pod.launch
        if self.dead is not None:  # an address handed out again answers again
            await self.dead.revive(pod.ip)
        await self.make_sandbox(pod)
        try:
            process = await self.registry.start(
                self.in_sandbox(pod, launch.argv),
                f"pod {pod.name}",
                env=launch.env,
                cwd=launch.cwd,
                log=self.log_dir / f"{pod.name}.log",
                pid1=True,
            )
        except OSError as exc:  # e.g. no such executable
            raise StartError(str(exc)) from exc
        pod.process = process  # its group, for tests that look at it
        return ProcessContainer(process)

    async def pod_gone(self, pod: Pod) -> None:
        # The pod's sandbox, and its IP with it, goes right after its containers stop
        # (the kubelet's killPodWithSyncResult, then StopPodSandbox and the CNI DEL in
        # pkg/kubelet/kuberuntime/kuberuntime_manager.go): nothing answers the address
        # any more, where loopback would send an instant RST.
        if self.dead is not None:
            await self.dead.drop(pod.ip)

    async def close(self) -> None:
        if self.dead is not None:
            await self.dead.close()

    async def exec(
        self, pod: Pod, command: Sequence[str], timeout: float | None
    ) -> tuple[int, bytes]:
        """Run a command "in the container": its env and working dir, its own group. Its
        output (up to READ_LIMIT bytes kept) also goes to the pod's log."""
        argv = map_command(command, pod.image, pod.launch.mounts)
        process = await self.registry.start(
            self.in_sandbox(pod, argv),
            f"exec {pod.name}",
            env=pod.launch.env,
            cwd=pod.launch.cwd,
            stdout_pipe=True,
        )
        chunks: list[bytes] = []

        async def collect() -> int:
            assert process.stdout is not None
            size = 0
            while chunk := await process.stdout.read(4096):
                if size < READ_LIMIT:
                    chunks.append(chunk)
                size += len(chunk)
            return await process.wait()

        try:
            code = await asyncio.wait_for(collect(), timeout)
        finally:
            if process.returncode is None:
                Registry.kill_group(process.pid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 5)
            output = b"".join(chunks)
            if output:
                with (
                    contextlib.suppress(OSError),
                    (self.log_dir / f"{pod.name}.log").open("ab") as log,
                ):
                    log.write(output)
        return code, output
