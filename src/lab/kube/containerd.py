"""containerd as a child process of the lab, for a real node: its own config, socket,
root and state directories under a directory of the lab's (never the Docker engine's
/run/containerd or /var/lib/containerd), the CRI plugin on, the node's pause image
imported and pinned as the sandbox image, the CNI bridge network of the node's pod
subnet.

containerd runs in a mount namespace of its own (`unshare --mount --propagation slave`)
with a tmpfs on /run: its shims put their sockets in /run/containerd/s, a path compiled
into containerd that the Docker engine's containerd uses too, and runc and the CNI
plugins write under /run. In the namespace all of that is the lab's alone, and every
mount containerd makes (the snapshots, the pods' network namespaces) goes when the last
process in it does. Slave propagation lets the mounts the kubelet makes on the host (the
pods' volumes) reach the containers.

Like every child of the lab it carries the owner's mark (lab.leftovers) and the parent
death signal: after a SIGKILL of the lab the kernel kills containerd, and the watchdog
or the next start kills what carries the mark (its shims inherit it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab import leftovers
from lab.kube.node_bins import NodeBinaries
from lab.procs import DIE_WITH_PARENT, spawn_logged, terminate

NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace: the kubelet's images
# The label the CRI plugin puts on each image in its store; the sandbox image also gets
# io.cri-containerd.pinned=pinned, which keeps the kubelet's image GC off it.
CRI_MANAGED = "io.cri-containerd.image"
POD_SUBNET = "10.244.0.0/24"  # one node's podCIDR in the control plane's 10.244.0.0/16
BRIDGE = "lab-cni0"
MASQUERADE_TABLE = "cni_plugins_masquerade"  # the bridge plugin's (ipMasqBackend nftables)
NETWORK = "lab-pods"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CTR_TIMEOUT = 60.0
# The new mount namespace's /run (see the module's doc); `$0 "$@"` is containerd's argv.
_IN_OWN_MOUNTS = [
    "unshare",
    "--mount",
    "--propagation",
    "slave",
    "--",
    "/bin/sh",
    "-c",
    'mount -t tmpfs -o mode=755 lab-containerd-run /run && exec "$0" "$@"',
]


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr command failed."""


@dataclass(frozen=True)
class Layout:
    """Every path of one containerd under `directory`; its sockets in `socket_dir` when
    the directory's path is too long for a unix socket's (108 bytes)."""

    directory: Path
    socket_dir: Path | None = None

    @property
    def config(self) -> Path:
        return self.directory / "config.toml"

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def socket(self) -> Path:
        return (self.socket_dir or self.directory) / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.directory / "cni-conf"

    @property
    def cni_template(self) -> Path:
        return self.directory / "cni-template.json"

    @property
    def ipam_dir(self) -> Path:
        return self.directory / "cni-ipam"

    @property
    def log(self) -> Path:
        return self.directory / "containerd.log"


def _toml(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def config_toml(layout: Layout, binaries: NodeBinaries, templated: bool = False) -> str:
    """containerd 2.x's config, version 3, for the lab's node; `templated`: the CNI
    network comes from the template once the kubelet reports the podCIDR."""
    template = f"\n  conf_template = {_toml(layout.cni_template)}" if templated else ""
    cri_images = "plugins.'io.containerd.cri.v1.images'"
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{cri_runtime}.containerd.runtimes.runc"
    return f"""\
# Written by lab.kube.containerd: a node's containerd, none of its paths shared.
version = 3
root = {_toml(layout.root)}
state = {_toml(layout.state)}

[grpc]
  address = {_toml(layout.socket)}

[ttrpc]
  address = {_toml(str(layout.socket) + ".ttrpc")}

[plugins.'io.containerd.internal.v1.opt']
  path = {_toml(layout.root / "opt")}

# NRI would listen on /var/run/nri/nri.sock, a path of the machine's.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[{cri_images}]
  snapshotter = "overlayfs"

[{cri_images}.pinned_images]
  sandbox = {_toml(binaries.pause_image)}

[{cri_runtime}]
  netns_mounts_under_state_dir = true
  # This machine's root lacks CAP_SYS_RESOURCE, without which runc cannot lower a
  # container's oom_score_adj (the kubelet asks -998 for the sandbox): keep each at
  # least containerd's own, as a rootless containerd does.
  restrict_oom_score_adj = true
  cdi_spec_dirs = []

[{cri_runtime}.containerd]
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"

# cgroupfs: this machine's cgroups are v1 and no systemd manages them.
[{runc}.options]
  BinaryName = {_toml(binaries.path("runc"))}
  Root = {_toml(layout.state / "runc")}
  SystemdCgroup = false

[{cri_runtime}.cni]
  bin_dirs = [{_toml(binaries.cni_dir)}]
  conf_dir = {_toml(layout.cni_conf_dir)}
  max_conf_num = 1{template}

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_conflist(
    layout: Layout, subnet: str, bridge: str = BRIDGE, network: str = NETWORK
) -> dict[str, object]:
    """The node's pod network: a bridge with host-local addresses from `subnet` and
    portmap for hostPorts. containerd sets up each pod's loopback itself, with the
    `loopback` plugin from the same bin directory. Each node of a cluster has a bridge
    and a network name of its own."""
    return {
        "cniVersion": "1.1.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "ipMasqBackend": "nftables",
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "backend": "nftables"},
        ],
    }


def write_files(
    layout: Layout,
    binaries: NodeBinaries,
    subnet: str | None = POD_SUBNET,
    bridge: str = BRIDGE,
    network: str = NETWORK,
) -> None:
    """The config and the CNI network, in a directory made fresh for them. With no
    `subnet`, the network is a template the CRI plugin fills with the node's podCIDR
    when the kubelet reports it (as on a cluster whose node IPAM assigns them): until
    then the runtime's network is not ready, and the node with it."""
    for d in (layout.directory, layout.root, layout.state, layout.cni_conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(config_toml(layout, binaries, templated=subnet is None))
    for old in layout.cni_conf_dir.iterdir():
        old.unlink()
    conflist = cni_conflist(layout, subnet or "{{.PodCIDR}}", bridge, network)
    text = json.dumps(conflist, indent=2) + "\n"
    if subnet is None:
        layout.cni_template.write_text(text)
    else:
        (layout.cni_conf_dir / f"10-{network}.conflist").write_text(text)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under `path` in this process's mount namespace, deepest first."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            # Field 5 is the mount point, with spaces and such octal-escaped (proc(5)).
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def processes_in_mount_namespace(namespace: str) -> list[tuple[int, int]]:
    """(pid, start time) of every process whose mount namespace is `namespace`
    (as /proc/PID/ns/mnt reads, e.g. "mnt:[4026532201]")."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") != namespace:
                continue
        except OSError:
            continue
        started = leftovers.start_time(pid)
        if started is not None:
            found.append((pid, started))
    return found


class Containerd:
    """One containerd: `await start()`, `await import_image(tarball)`, `await stop()`.
    Start it from the thread that lives as long as the lab (the event loop's): the
    parent death signal follows the thread that forked (prctl(2))."""

    def __init__(
        self,
        directory: Path,
        binaries: NodeBinaries,
        subnet: str | None = POD_SUBNET,
        owner_dir: Path | None = None,
        bridge: str = BRIDGE,
        network: str = NETWORK,
        socket_dir: Path | None = None,
    ) -> None:
        self.layout = Layout(directory.resolve(), socket_dir)
        self.binaries = binaries
        self.subnet = subnet
        self.bridge = bridge
        self.network = network
        self.marks = leftovers.marks(owner_dir)
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0  # the process's start time (lab.leftovers), 0 before start
        self.mount_namespace: str | None = None

    @property
    def socket(self) -> Path:
        return self.layout.socket

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write the files, start containerd, wait for its socket to answer."""
        write_files(self.layout, self.binaries, self.subnet, self.bridge, self.network)
        # The shim and runc come from the node's own build, found first on the PATH.
        path = f"{self.binaries.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        env = {**os.environ, "PATH": path, **self.marks}
        argv = [
            *DIE_WITH_PARENT,
            *_IN_OWN_MOUNTS,
            str(self.binaries.path("containerd")),
            "--config",
            str(self.layout.config),
        ]
        self.process, self.started = await spawn_logged(argv, self.layout.log, env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                raise ContainerdError(
                    f"containerd exited with {self.process.returncode} before its socket "
                    f"answered; the end of {self.layout.log}:\n{self._log_tail()}"
                )
            if self.layout.socket.exists() and await self._answers():
                break
            if time.monotonic() >= deadline:
                raise ContainerdError(
                    f"containerd's socket {self.layout.socket} did not answer in "
                    f"{timeout:g} s; the end of {self.layout.log}:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.1)  # the poll interval, bounded by the deadline above
        with contextlib.suppress(OSError):
            self.mount_namespace = os.readlink(f"/proc/{self.process.pid}/ns/mnt")

    async def _answers(self) -> bool:
        code, _ = await self._ctr("version", check=False, timeout=5.0)
        return code == 0

    async def ctr(self, *args: str, timeout: float = CTR_TIMEOUT) -> str:
        """`ctr` on this containerd in the k8s.io namespace; its output. Raises
        ContainerdError with ctr's output when it fails."""
        _, out = await self._ctr("-n", NAMESPACE, *args, timeout=timeout)
        return out

    async def _ctr(self, *args: str, check: bool = True, timeout: float) -> tuple[int, str]:
        """ctr's exit code and standard output; its standard error (containerd's own
        warnings, such as cgroup v1's deprecation) only in the error of a failure."""
        argv = [str(self.binaries.path("ctr")), "--address", str(self.layout.socket), *args]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.marks},
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ContainerdError(f"ctr {' '.join(args)}: no answer in {timeout:g} s") from None
        code = process.returncode if process.returncode is not None else -1
        if check and code != 0:
            said = (err or out).decode(errors="replace").strip()
            raise ContainerdError(f"ctr {' '.join(args)} failed ({code}): {said}")
        return code, out.decode(errors="replace")

    async def import_image(self, tarball: Path, name: str, timeout: float = CTR_TIMEOUT) -> str:
        """Import an OCI (or docker-archive) tarball holding the image `name` into the
        k8s.io namespace, unpacked into the overlayfs snapshotter, and wait until the CRI
        plugin has taken it into its store (it labels it from containerd's events, a
        moment after the import): from then on the kubelet finds it and never pulls it.
        The image's labels, as `ctr images ls` shows them."""
        await self.ctr("images", "import", str(tarball), timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            out = await self.ctr("images", "ls", f"name=={name}")
            rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
            labels = rows[0][-1] if rows else ""
            if f"{CRI_MANAGED}=managed" in labels.split(","):
                return labels
            if time.monotonic() >= deadline:
                raise ContainerdError(
                    f"{name} imported, but the CRI plugin did not take it in {timeout:g} s "
                    f"(labels: {labels or 'none'}); the end of {self.layout.log}:\n"
                    f"{self._log_tail()}"
                )
            await asyncio.sleep(0.1)  # the poll interval, bounded by the deadline above

    async def image_names(self) -> list[str]:
        """Every image reference in k8s.io (the CRI plugin adds each image's ID too)."""
        out = await self.ctr("images", "ls", "--quiet")
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """SIGTERM containerd, SIGKILL it after `timeout`, kill whatever else is left in
        its mount namespace (its shims), unmount anything under its directories that
        this namespace sees, and remove them. What had to be forced, one line each."""
        forced = await terminate(self.process, self.started, "containerd", timeout)
        if self.mount_namespace is not None:
            left = processes_in_mount_namespace(self.mount_namespace)
            for pid, started in left:
                if leftovers.same_process(pid, started):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    forced.append(f"killed pid {pid} left in containerd's mount namespace")
            alive = await asyncio.to_thread(leftovers.wait_gone, left, timeout)
            if alive:
                raise ContainerdError(f"processes {alive} in containerd's namespace survived")
        for point in mounts_under(self.layout.directory):
            rc = await (await asyncio.create_subprocess_exec("umount", "--lazy", point)).wait()
            forced.append(f"unmounted {point}" if rc == 0 else f"could not unmount {point}")
        self._remove_directories()
        return forced

    async def remove_network(self) -> list[str]:
        """What the CNI plugins made on the machine and left after the last pod's
        teardown: the bridge, and the bridge plugin's masquerade table once no pod of
        any user of the plugin has a rule in it (the table is the machine's: each pod's
        teardown removes only its own rules). One line each."""
        return await asyncio.to_thread(remove_network, self.bridge, self.network)

    def _remove_directories(self) -> None:
        """What containerd wrote; the config and its log stay, for a look afterwards."""
        for d in (self.layout.root, self.layout.state, self.layout.ipam_dir):
            shutil.rmtree(d, ignore_errors=True)
        self.layout.socket.unlink(missing_ok=True)
        Path(str(self.layout.socket) + ".ttrpc").unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.layout.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _nft(*args: str) -> str | None:
    """nft's output, or None when it failed or is not here."""
    try:
        result = subprocess.run(
            ["nft", *args], capture_output=True, text=True, timeout=CTR_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def remove_network(bridge: str = BRIDGE, network: str = NETWORK) -> list[str]:
    """What the CNI plugins made on the machine for the node's network: the bridge; the
    masquerade rules of the network's pods that no teardown removed (a pod's containerd
    killed with its owner), found by the network's name in each rule's comment
    (`net: NAME,`); and the bridge plugin's masquerade table once no rule of any
    network is left in it (the table is the machine's). One line each."""
    done = []
    if os.path.exists(f"/sys/class/net/{bridge}"):
        result = subprocess.run(
            ["ip", "link", "delete", bridge], capture_output=True, timeout=30, check=False
        )
        if result.returncode == 0:
            done.append(f"removed the bridge {bridge}")
    checks = _nft("-a", "list", "chain", "inet", MASQUERADE_TABLE, "masq_checks")
    if checks is None:
        return done
    rules = [
        line.strip()
        for line in checks.splitlines()
        if line.strip() and line.split()[0] not in ("table", "chain", "comment", "}")
    ]
    left = 0
    for rule in rules:
        handle = rule.rsplit("# handle ", 1)[-1].strip()
        ours = f"net: {network}," in rule
        if ours and _nft("delete", "rule", "inet", MASQUERADE_TABLE, "masq_checks", "handle", handle) is not None:  # fmt: skip
            done.append(f"removed a masquerade rule of {network} (handle {handle})")
        else:
            left += 1
    if not left and _nft("delete", "table", "inet", MASQUERADE_TABLE) is not None:
        done.append(f"removed the nftables table inet {MASQUERADE_TABLE}")
    return done
