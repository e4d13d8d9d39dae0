"""Pods as Docker containers (`lab run --runtime docker`), through the Engine API.

Per run, a bridge network of the lab's own (a free /24, labelled with the run id, removed
at the end). Per pod, as the kubelet does with its pause container: a sandbox container
that holds the network namespace and the pod IP (static, from the run's /24), and the app
container joining that namespace. A container restart keeps the IP and the emptyDir
volumes (host directories under the pod's log directory).

From the manifest: the image (its name mapped to the locally built tag, `calc` ->
`calc:latest`), command/args and env per the Kubernetes rules (lab.container_env, as on
the process runtime), workingDir, and the Deployment's own securityContext, memory and
CPU limits and emptyDir mounts (lab.container_config). Exec probes and preStop
hooks run in the container through the Engine API's exec; SIGTERM goes to PID 1; exits
and OOM kills come from the engine's event stream. When a pod is gone its sandbox is
removed, and its IP with it: new connections to it fail as in a cluster, not with an
instant RST from a live host.

Blocking API calls run on the runtime's own thread pool; the event stream has one thread
of its own. Everything is labelled `lab.run=<id>`, so close() finds all of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
import random
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from lab import blackhole, leftovers, run_cgroup
from lab.blackhole import Blackhole
from lab.container_config import Configs, ContainerConfig, from_deployment
from lab.container_env import command_and_args, manifest_env
from lab.images import Launch, image_name
from lab.manifest import Container, ManifestError, Manifests
from lab.probes import READ_LIMIT
from lab.runtime import Pod, Runtime, RuntimeContainer, StartError

T = TypeVar("T")
LABEL = "lab.run"
SANDBOX_COMMAND = ["sleep", "infinity"]
# A wait falls back to asking the engine this often, in case the event stream broke.
WAIT_POLL = 2.0
API_TIMEOUT = 60


class SubnetAddresses:
    """Pod IPs of the run's /24: .1 is the gateway (the host), .2-.254 are pods."""

    def __init__(self, subnet: ipaddress.IPv4Network) -> None:
        hosts = list(subnet.hosts())
        self.gateway = str(hosts[0])
        self.free = [str(h) for h in hosts[1:]]

    def take(self) -> str:
        if not self.free:
            raise RuntimeError("out of pod addresses in the run's network")
        return self.free.pop(0)

    def give_back(self, address: str) -> None:
        # Back of the queue, as on loopback: no new pod inherits a just-freed IP.
        self.free.append(address)


def pick_subnet(
    taken: Sequence[ipaddress.IPv4Network], rng: random.Random
) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps no network the engine or the host routes."""
    for _ in range(1000):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(16, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 for the lab's Docker network")


def host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host routes to (from /proc/net/route), default route aside."""
    routes = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            dest, mask = int(fields[1], 16), int(fields[7], 16)
            if mask == 0:
                continue
            net = ipaddress.IPv4Address(dest.to_bytes(4, "little"))
            bits = bin(mask).count("1")
            routes.append(ipaddress.IPv4Network(f"{net}/{bits}", strict=False))
    return routes


@dataclass
class _PodState:
    launch: Launch
    config: ContainerConfig
    image: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    volumes: dict[str, Path]
    sandbox: str | None = None
    app: str | None = None
    containers: list[str] = field(default_factory=list)


class DockerContainer(RuntimeContainer):
    def __init__(self, runtime: DockerRuntime, ident: str, exited: asyncio.Future[int]) -> None:
        self.runtime = runtime
        self.id = ident
        self.exited = exited
        self.oom_killed = False

    @property
    def main(self) -> str:
        return f"container {self.id[:12]} PID 1"

    @property
    def group(self) -> str:
        return f"container {self.id[:12]}"

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        while True:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(self.exited), WAIT_POLL)
            # No event within WAIT_POLL: ask the engine (its event stream may have broken).
            state = await self.runtime.call(self.runtime.state, self.id)
            if state is not None and not state.get("Running"):
                self.exit(int(state.get("ExitCode", -1)), bool(state.get("OOMKilled")))

    def exit(self, code: int, oom: bool) -> None:
        """Record how it exited (from the event stream or an inspect), once."""
        if oom:
            self.oom_killed = True
        if not self.exited.done():
            self.exited.set_result(code)

    def terminate(self) -> None:
        self.runtime.signal(self.id, "SIGTERM")

    def kill(self) -> None:
        self.runtime.signal(self.id, "SIGKILL")

    async def freeze(self) -> None:
        await self.runtime.call(self.runtime.signal_every_process, self.id, signal.SIGSTOP)

    async def thaw(self) -> None:
        await self.runtime.call(self.runtime.signal_every_process, self.id, signal.SIGCONT)

    def exit_detail(self) -> str:
        code = self.returncode
        if self.oom_killed:
            return f"OOMKilled (code {code})"
        return f"code {code}"


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(
        self,
        log_dir: Path,
        configs: Callable[[Container], ContainerConfig],
        rewrite: Callable[[str], str] | None = None,
        tags: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        engine: docker.DockerClient | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.configs = configs
        self.rewrite = rewrite
        self.tags = dict(tags or {})
        self.rng = rng or random.Random()
        self.engine = engine
        self.run_id = uuid.uuid4().hex[:10]
        # Who made it: a sweep removes what a dead owner left (lab.leftovers).
        self.owner = leftovers.owner()
        self.network_name = f"lab-{self.run_id}"
        self.pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="docker-api")
        self.pods: dict[str, _PodState] = {}
        self.running: dict[str, DockerContainer] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events_thread: threading.Thread | None = None
        self.events_stream: Any = None
        self.network: Any = None
        self.network_gateway = ""  # the host's address on the run's network
        self.subnet: ipaddress.IPv4Network | None = None
        # The run's own parent cgroup (lab.run_cgroup), or why the engine's default is used.
        self.cgroup: run_cgroup.RunCgroup | None = None
        self.cgroup_note = ""

    @property
    def gateway(self) -> str:
        return self.network_gateway

    def phases(self) -> list[tuple[str, str]]:
        cgroup = self.cgroup
        return [
            ("docker", f"network {self.network_name} {self.subnet}"),
            (
                "cgroup",
                f"{cgroup.parent}, one process's CPU weight per pod"
                if cgroup is not None
                else f"the engine's default parent: {self.cgroup_note}",
            ),
            *super().phases(),
        ]

    def sweep_record(self) -> tuple[str | None, str | None]:
        return self.run_id, super().sweep_record()[1]

    # -- run ---------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, partial(fn, *args, **kwargs))

    async def open(self) -> None:
        """Connect, start the event stream, and make the run's network."""
        self.loop = asyncio.get_running_loop()
        if self.engine is None:
            try:
                self.engine = await self.call(docker.from_env, timeout=API_TIMEOUT)
                await self.call(self.engine.ping)
            except docker.errors.DockerException as exc:
                raise StartError(
                    f"no Docker engine answers ({exc}): run `make system-deps` and `make image`"
                ) from exc
        info = await self.call(self.engine.info)
        why = run_cgroup.unavailable(str(info.get("CgroupDriver", "")))
        if why is None:
            cgroup = run_cgroup.RunCgroup(f"lab-{self.run_id}")
            try:
                await self.call(cgroup.make)
                self.cgroup = cgroup
            except OSError as exc:
                why = f"cannot make {cgroup.cpu_dir}: {exc}"
        self.cgroup_note = why or ""
        self.events_stream = await self.call(
            self.engine.events, decode=True, filters={"type": "container", "label": LABEL}
        )
        self.events_thread = threading.Thread(
            target=self._read_events, name="docker-events", daemon=True
        )
        self.events_thread.start()
        networks = await self.call(self.engine.networks.list)
        taken = host_routes()
        for net in networks:
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                with contextlib.suppress(ValueError, KeyError):
                    taken.append(ipaddress.IPv4Network(pool["Subnet"], strict=False))
        # Another run may take the same /24 between our look and our create: try others.
        for attempt in range(5):
            subnet = pick_subnet(taken, self.rng)
            addresses = SubnetAddresses(subnet)
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=addresses.gateway)]
            )
            try:
                # internal: no route out (no NAT); pods, and the host at the gateway address.
                self.network = await self.call(
                    self.engine.networks.create,
                    self.network_name,
                    driver="bridge",
                    ipam=ipam,
                    internal=True,
                    labels={LABEL: self.run_id, leftovers.OWNER_LABEL: self.owner},
                )
            except docker.errors.APIError as exc:
                if attempt == 4 or "overlap" not in str(exc).lower():
                    raise StartError(f"cannot make the run's Docker network: {exc}") from exc
                taken.append(subnet)
                continue
            break
        self.subnet, self.addresses = subnet, addresses
        self.network_gateway = addresses.gateway

    def local_image(self, reference: str) -> str:
        """The manifest's image reference as a tag the engine holds: `calc:latest`."""
        name = image_name(reference)
        return self.tags.get(name, f"{name}:latest")

    async def check_images(self, references: Sequence[str]) -> None:
        assert self.engine is not None
        for reference in references:
            tag = self.local_image(reference)
            try:
                await self.call(self.engine.images.get, tag)
            except docker.errors.ImageNotFound:
                raise StartError(
                    f"image {reference!r} maps to {tag!r}, which the engine does not hold: "
                    "run `make image`"
                ) from None

    def _read_events(self) -> None:
        stream = self.events_stream
        with contextlib.suppress(Exception):  # the stream ends when close() closes it
            for event in stream:
                if event.get("Type") != "container":
                    continue
                action = str(event.get("Action") or event.get("status") or "")
                ident = str(event.get("id") or event.get("Actor", {}).get("ID") or "")
                attributes = event.get("Actor", {}).get("Attributes", {})
                if action == "oom":
                    self._soon(self.oomed, ident)
                elif action == "die":
                    code = int(attributes.get("exitCode", -1))
                    self._soon(self.died, ident, code, None)

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(fn, *args)

    def oomed(self, ident: str) -> None:
        container = self.running.get(ident)
        if container is not None:
            container.oom_killed = True

    def died(self, ident: str, code: int, oom: bool | None) -> None:
        container = self.running.get(ident)
        if container is not None:
            container.exit(code, bool(oom))

    def state(self, ident: str) -> dict[str, Any] | None:
        assert self.engine is not None
        try:
            info: dict[str, Any] = self.engine.api.inspect_container(ident)
        except docker.errors.NotFound:
            return {"Running": False, "ExitCode": -1}
        result: dict[str, Any] = info["State"]
        return result

    def signal(self, ident: str, sig: str) -> None:
        """Send a signal to the container's PID 1 now (a short blocking call: the kubelet
        logs the signal as sent, so it must be)."""
        assert self.engine is not None
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.engine.api.kill(ident, signal=sig)

    def signal_every_process(self, ident: str, sig: int) -> int:
        """Send `sig` to every process of the container from the host (root): the
        engine's kill reaches PID 1 only, and its pause is the cgroup freezer, under which
        the kubelet's SIGTERM would not stay pending (the engine thaws a paused container
        it signals) nor would SIGKILL act (cgroup v1). Frozen meanwhile, so that no
        process forks or exits between the listing and the signals; returns how many
        processes got it (0 when the container is not running)."""
        assert self.engine is not None
        if os.geteuid() != 0:
            raise PermissionError("signalling a container's processes from the host needs root")
        api = self.engine.api
        try:
            api.pause(ident)
        except docker.errors.APIError:  # not running (any more): nothing to signal
            return 0
        try:
            pids = container_pids(self.state(ident))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            # A kill from the kubelet meanwhile may have thawed it already (the engine
            # does when it signals a paused container).
            with contextlib.suppress(docker.errors.APIError):
                api.unpause(ident)
        return len(pids)

    # -- pods --------------------------------------------------------------------------

    def prepare(self, pod: Pod) -> Launch:
        container = pod.template.container
        config = self.configs(container)
        # The image's own ENV stays the engine's business; HOSTNAME is the runtime's.
        declared = manifest_env(container, pod.name, pod.ip, self.rewrite)
        env = {**declared, "HOSTNAME": pod.name}
        command, args = command_and_args(container, declared)
        # command replaces the ENTRYPOINT and drops the CMD; args replace the CMD.
        if command is not None:
            entrypoint: list[str] | None = list(command)
            cmd: list[str] | None = list(args or ())
        else:
            entrypoint = None
            cmd = list(args) if args is not None else None
        if config.run_as_non_root and config.run_as_user == 0:
            raise ManifestError(
                f"{pod.name}: runAsNonRoot is set but runAsUser is 0 (the kubelet refuses it)"
            )
        pod_dir = self.log_dir / pod.name
        volumes = {m.volume: pod_dir / "volumes" / m.volume for m in config.mounts}
        image = self.local_image(container.image)
        if entrypoint is not None:
            argv = (*entrypoint, *(cmd or ()))
        elif cmd is not None:
            argv = (f"<{image} ENTRYPOINT>", *cmd)
        else:
            argv = (f"<{image} ENTRYPOINT + CMD>",)
        launch = Launch(argv, env, Path(container.working_dir) if container.working_dir else None)
        self.pods[pod.name] = _PodState(launch, config, image, entrypoint, cmd, volumes)
        return launch

    async def start(self, pod: Pod) -> RuntimeContainer:
        state = self.pods[pod.name]
        try:
            if state.sandbox is None:
                state.sandbox = await self.call(self._create_sandbox, pod, state)
            if state.app is not None:  # a restart: the old container goes, logs kept
                await self.call(self._remove, pod.name, state.app)
                self.running.pop(state.app, None)
                state.app = None
            ident = await self.call(self._create_app, pod, state)
        except docker.errors.DockerException as exc:
            raise StartError(f"{type(exc).__name__}: {exc}") from exc
        if self.cgroup is not None:  # the pods not gone, this one included
            self.cgroup.weigh(len(self.pods))
        assert self.loop is not None
        container = DockerContainer(self, ident, self.loop.create_future())
        self.running[ident] = container
        state.app = ident
        state.containers.append(ident)
        try:
            await self.call(self._start, ident)
        except docker.errors.DockerException as exc:
            self.running.pop(ident, None)
            raise StartError(f"{type(exc).__name__}: {exc}") from exc
        return container

    def _create_sandbox(self, pod: Pod, state: _PodState) -> str:
        assert self.engine is not None
        api = self.engine.api
        for path in state.volumes.values():
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # an emptyDir is world-writable: any runAsUser may use it
        # The stubs type the argument as one EndpointConfig; the API takes a mapping.
        networking = api.create_networking_config(
            {self.network_name: api.create_endpoint_config(ipv4_address=pod.ip)}  # type: ignore[arg-type]
        )
        host_config = api.create_host_config(
            network_mode=self.network_name,
            extra_hosts={"influxdb": self.network_gateway},
            read_only=True,
            cgroup_parent=self.cgroup.parent if self.cgroup is not None else None,
        )
        created = api.create_container(
            state.image,
            command=SANDBOX_COMMAND,
            entrypoint=[],
            name=f"{self.network_name}-{pod.name}-sandbox",
            hostname=pod.name,
            labels={
                LABEL: self.run_id,
                leftovers.OWNER_LABEL: self.owner,
                "lab.pod": pod.name,
                "lab.role": "sandbox",
            },
            host_config=host_config,
            networking_config=networking,
        )
        ident: str = created["Id"]
        api.start(ident)
        return ident

    def _create_app(self, pod: Pod, state: _PodState) -> str:
        assert self.engine is not None and state.sandbox is not None
        api = self.engine.api
        config = state.config
        user = None
        if config.run_as_user is not None or config.run_as_group is not None:
            uid = "" if config.run_as_user is None else str(config.run_as_user)
            gid = "" if config.run_as_group is None else f":{config.run_as_group}"
            user = f"{uid or self._image_user(state.image)}{gid}"
        if config.run_as_non_root:
            effective = (user or self._image_user(state.image)).split(":")[0]
            if not effective.isdigit() or int(effective) == 0:
                raise StartError(
                    f"runAsNonRoot: the image's user {effective!r} is not a non-zero uid"
                )
        # CPU as the kubelet sets it: limit -> CFS quota per 100 ms, request -> shares.
        limit, request = config.cpu_limit, config.cpu_request
        host_config = api.create_host_config(
            network_mode=f"container:{state.sandbox}",
            binds={
                str(state.volumes[m.volume].resolve()): {
                    "bind": m.path,
                    "mode": "ro" if m.read_only else "rw",
                }
                for m in config.mounts
            },
            read_only=config.read_only_root,
            cap_add=list(config.cap_add) or None,
            cap_drop=list(config.cap_drop) or None,
            security_opt=["no-new-privileges"] if config.no_new_privileges else None,
            mem_limit=config.memory_limit,
            memswap_limit=config.memory_limit,  # no swap, as on a kubelet's node
            cpu_period=100_000 if limit is not None else None,
            cpu_quota=max(1000, int(limit * 100_000)) if limit is not None else None,
            cpu_shares=max(2, int(request * 1024)) if request is not None else None,
            cgroup_parent=self.cgroup.parent if self.cgroup is not None else None,
        )
        count = len(state.containers)
        created = api.create_container(
            state.image,
            command=state.cmd,
            entrypoint=state.entrypoint,
            environment=state.launch.env,
            working_dir=str(state.launch.cwd) if state.launch.cwd else None,
            user=user,
            name=f"{self.network_name}-{pod.name}-{count}",
            labels={
                LABEL: self.run_id,
                leftovers.OWNER_LABEL: self.owner,
                "lab.pod": pod.name,
                "lab.role": "app",
            },
            host_config=host_config,
        )
        ident: str = created["Id"]
        return ident

    def _image_user(self, image: str) -> str:
        assert self.engine is not None
        info: dict[str, Any] = self.engine.api.inspect_image(image)  # type: ignore[no-untyped-call]
        config = info.get("Config") or {}
        return str(config.get("User") or "0")

    def _start(self, ident: str) -> None:
        assert self.engine is not None
        self.engine.api.start(ident)

    def _remove(self, pod_name: str, ident: str) -> None:
        """Append the container's output to the pod's log, then remove the container."""
        assert self.engine is not None
        with contextlib.suppress(docker.errors.DockerException):
            output = self.engine.api.logs(ident, stdout=True, stderr=True)
            with (self.log_dir / f"{pod_name}.log").open("ab") as log:
                log.write(output)
        with contextlib.suppress(docker.errors.NotFound):
            self.engine.api.remove_container(ident, force=True)

    async def exec(
        self, pod: Pod, command: Sequence[str], timeout: float | None
    ) -> tuple[int, bytes]:
        """Run the command in the app container; at `timeout` its process is killed (as
        the CRI's ExecSync does), so a hanging probe never holds an API thread for long."""
        state = self.pods[pod.name]
        if state.app is None:
            return 126, b"container not running"
        assert self.engine is not None
        api = self.engine.api
        try:
            created = await self.call(
                api.exec_create, state.app, list(command), stdout=True, stderr=True
            )
            exec_id: str = created["Id"]
            running = asyncio.ensure_future(self.call(self._exec_run, pod.name, exec_id))
            try:
                return await asyncio.wait_for(asyncio.shield(running), timeout)
            except (TimeoutError, asyncio.CancelledError):
                await self.call(self._exec_kill, exec_id)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, 5)
                raise
        except docker.errors.DockerException as exc:
            # Not running: the kubelet sees the command fail.
            return 126, str(exc).encode()

    def _exec_run(self, pod_name: str, exec_id: str) -> tuple[int, bytes]:
        assert self.engine is not None
        api = self.engine.api
        output = api.exec_start(exec_id)
        data = output if isinstance(output, bytes) else b""
        if data:
            with (self.log_dir / f"{pod_name}.log").open("ab") as log:
                log.write(data)
        code = api.exec_inspect(exec_id).get("ExitCode")
        return (int(code) if code is not None else 126), data[:READ_LIMIT]

    def _exec_kill(self, exec_id: str) -> None:
        """SIGKILL an exec's process from the host (the engine has no call for it)."""
        assert self.engine is not None
        with contextlib.suppress(docker.errors.DockerException):
            pid = self.engine.api.exec_inspect(exec_id).get("Pid")
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)

    async def pod_gone(self, pod: Pod) -> None:
        """Remove the app container(s) and the sandbox: the pod's IP goes with it."""
        state = self.pods.pop(pod.name, None)
        if state is None:
            return
        if self.cgroup is not None:
            self.cgroup.weigh(len(self.pods))
        for ident in (state.app, state.sandbox):
            if ident is not None:
                await self.call(self._remove, pod.name, ident)
                self.running.pop(ident, None)

    async def close(self) -> None:
        """Remove every container and the network of this run, and the run's table of
        dead addresses; stop the event thread."""
        try:
            await self._close()
        finally:
            if self.cgroup is not None:
                left = await asyncio.to_thread(self.cgroup.remove)
                if left:  # said, not raised: the rest of the clean-up must run
                    print(f"lab: cgroup directories left: {left}", file=sys.stderr)
            if self.dead is not None:
                await self.dead.close()

    async def _close(self) -> None:
        if self.engine is not None:
            with contextlib.suppress(docker.errors.DockerException):
                leftovers = await self.call(
                    self.engine.api.containers,
                    all=True,
                    filters={"label": f"{LABEL}={self.run_id}"},
                )
                for info in leftovers:
                    pod = (info.get("Labels") or {}).get("lab.pod", "unknown")
                    await self.call(self._remove, pod, info["Id"])
            if self.network is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    await self.call(self.network.remove)
        if self.events_stream is not None:
            with contextlib.suppress(Exception):
                self.events_stream.close()
        if self.events_thread is not None:
            await asyncio.to_thread(self.events_thread.join, 5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()


def container_pids(state: Mapping[str, Any] | None) -> list[int]:
    """Host PIDs of every process in a container: those in the PID namespace of its PID 1
    (`State.Pid` from an inspect), exec'd probes and hooks included."""
    pid1 = int((state or {}).get("Pid") or 0)
    if pid1 <= 0:
        return []
    try:
        namespace = os.readlink(f"/proc/{pid1}/ns/pid")
    except OSError:  # it exited meanwhile
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == namespace:
                    pids.append(int(entry.name))
    return pids


def _configs(manifests: Manifests, update: Manifests | None) -> Configs:
    """Each template's container settings from its own Deployment as lab.manifest read
    it: the one under test, an update's, and those running beside them."""
    configs = Configs()
    for m in (manifests, update):
        if m is not None:
            configs.add(m.deployment.template.container, from_deployment(m.deployment))
            for s in m.supporting:
                if s.replaced_by is None:
                    config = from_deployment(s.deployment, s.source)
                    configs.add(s.deployment.template.container, config)
    return configs


def check_docker(manifests: Manifests, update: Manifests | None) -> None:
    """Before anything starts: the manifests' container settings parse (ManifestError)."""
    _configs(manifests, update)


async def docker_runtime(
    manifests: Manifests,
    update: Manifests | None,
    log_dir: Path,
    made: Callable[[DockerRuntime], None] | None = None,
) -> DockerRuntime:
    """The run's Docker runtime, its network made and its images checked. `made` learns
    of it before it makes anything (to record its run id for a sweep, lab.leftovers)."""
    runtime = DockerRuntime(log_dir, _configs(manifests, update).of)
    if blackhole.available() is None:
        # A failed node's pod IPs drop packets (node-failure); made on first use. A gone
        # pod's IP needs none: it goes with its sandbox.
        runtime.dead = Blackhole()
    if made is not None:
        made(runtime)
    try:
        await runtime.open()
        images = [manifests.deployment.template.container.image]
        if update is not None:
            images.append(update.deployment.template.container.image)
        await runtime.check_images(images)
    except BaseException:
        await runtime.close()
        raise
    return runtime
