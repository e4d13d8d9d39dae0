"""The real kubelet as a child process of the lab, for a node of the lab's control plane:
its credentials (a client certificate of the cluster CA for system:node:NAME in
system:nodes, as the Node authorizer and NodeRestriction expect), its kubeconfig, its
config file, and its clean-up.

The config, for this machine (cgroup v1, two cores and a shared disk):
- the cgroupfs driver, `failCgroupV1: false`, its pods' cgroups under a cgroup root of
  the node's own in each v1 hierarchy (`/lab-kubelet-NAME`), so nodes never share one
  and the clean-up removes exactly the node's;
- the container runtime is the node's containerd (lab.kube.containerd), on its socket;
- the API on 127.0.0.1 only: the secure port accepts client certificates of the cluster
  CA, anonymous requests only on the read-only port;
- eviction thresholds at 0 and image GC off, so a busy shared disk never evicts the
  run's own pods nor removes its images; swap is not refused (the machine has none).

Like every child of the lab it carries the owner's mark and the parent death signal.

What the kubelet changes on the machine beside its directories (kernel tunables,
iptables chains, paths compiled into it: lab.kube.host_changes) is recorded in its
directory before it starts and put back by `restore_host()` once the node stopped, or by
`sweep_node()` after its owner died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab import leftovers
from lab.kube import host_changes
from lab.kube.containerd import NETWORK, mounts_under
from lab.kube.node_bins import NodeBinaries
from lab.procs import DIE_WITH_PARENT, spawn_logged, terminate

CGROUP_V1 = Path("/sys/fs/cgroup")
STOP_TIMEOUT = 15.0
OPENSSL_TIMEOUT = 30.0


class KubeletError(RuntimeError):
    """The kubelet could not be set up or started."""


@dataclass(frozen=True)
class KubeletPorts:
    secure: int
    read_only: int
    healthz: int


def cgroup_root(node: str) -> str:
    return f"/lab-kubelet-{node}"


def config(
    node: str,
    directory: Path,
    containerd_socket: Path,
    ca_cert: Path,
    ports: KubeletPorts,
    address: str = "127.0.0.1",
) -> dict[str, object]:
    """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1); JSON is valid YAML.
    The API on `address`, the node's own; the anonymous read-only port only when that is
    loopback."""
    zero = "0%"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupRoot": cgroup_root(node),
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "address": address,
        "port": ports.secure,
        "readOnlyPort": ports.read_only if address.startswith("127.") else 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.healthz,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only the CA's certificates get here
        "evictionHard": {
            "memory.available": zero,
            "nodefs.available": zero,
            "nodefs.inodesFree": zero,
            "imagefs.available": zero,
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": str(directory / "pod-logs"),
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "localStorageCapacityIsolation": False,
    }


def _openssl(*args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise KubeletError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def node_certificate(node: str, ca_cert: Path, ca_key: Path, directory: Path) -> tuple[Path, Path]:
    """A client certificate of the cluster CA for the node's kubelet."""
    subject = f"/O=system:nodes/CN=system:node:{node}"
    return client_certificate(subject, "kubelet-client", ca_cert, ca_key, directory)


def client_certificate(
    subject: str, name: str, ca_cert: Path, ca_key: Path, directory: Path
) -> tuple[Path, Path]:
    """A client certificate of the cluster CA for `subject`: NAME.crt, NAME.key."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    _openssl("genrsa", "-out", str(key), "2048")
    key.chmod(0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", "0x" + os.urandom(16).hex(), "-days", "365", "-sha256", "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    return cert, key


def kubeconfig(api_url: str, ca_cert: Path, cert: Path, key: Path) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lab", "cluster": {"server": api_url, "certificate-authority": str(ca_cert)}}
        ],
        "users": [
            {"name": "node", "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "node", "context": {"cluster": "lab", "user": "node"}}],
        "current-context": "node",
    }


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies the kubelet and runc make cgroups in: every v1 controller
    and, on a hybrid machine like this one, the v2 `unified` one beside them."""
    if not CGROUP_V1.is_dir():
        return []
    return [d for d in sorted(CGROUP_V1.iterdir()) if (d / "cgroup.procs").exists()]


def make_cgroup_root(node: str) -> None:
    """The kubelet wants its cgroup root to exist in every hierarchy; cpuset's needs the
    parent's cpus and memory nodes before any task or child can join it."""
    for hierarchy in _hierarchies():
        path = hierarchy / cgroup_root(node).lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((hierarchy / name).read_text())


def kill_cgroup_processes(node: str, timeout: float = 10.0) -> list[str]:
    """SIGKILL every process in the node's cgroup trees (its pods' containers, which
    carry no mark of the lab's: runc gives them the pod's environment) and wait for
    them to go. One line per process killed."""
    found: set[tuple[int, int]] = set()
    for hierarchy in _hierarchies():
        top = hierarchy / cgroup_root(node).lstrip("/")
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                for pid in map(int, procs.read_text().split()):
                    started = leftovers.start_time(pid)
                    if started is not None:
                        found.add((pid, started))
    done = []
    for pid, started in sorted(found):
        if leftovers.same_process(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                done.append(f"killed pid {pid} left in the cgroups of {cgroup_root(node)}")
    for pid in leftovers.wait_gone(sorted(found), timeout):
        done.append(f"pid {pid} still alive {timeout:g} s after SIGKILL")
    return done


def remove_cgroup_root(node: str) -> list[str]:
    """rmdir the node's cgroup trees, deepest first; what could not go (a process in it)."""
    left = []
    for hierarchy in _hierarchies():
        top = hierarchy / cgroup_root(node).lstrip("/")
        if not top.exists():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        try:
            top.rmdir()
        except OSError as exc:
            left.append(f"{top}: {exc.strerror}")
    return left


class RealKubelet:
    """One kubelet: `await start()`, `await stop()`. Start it from the event loop's
    thread (the parent death signal follows the thread that forked)."""

    def __init__(
        self,
        node: str,
        directory: Path,
        binaries: NodeBinaries,
        containerd_socket: Path,
        api_url: str,
        pki_dir: Path,
        ports: KubeletPorts,
        owner_dir: Path | None = None,
        address: str = "127.0.0.1",
        client_ca: Path | None = None,
        root_dir: Path | None = None,
    ) -> None:
        """`address`: the node's InternalIP, where its API listens (the API server's
        logs and exec come there); `client_ca`: the CAs whose client certificates it
        accepts (default the cluster CA); `root_dir`: its --root-dir (default `root` in
        `directory`), where it makes unix sockets, so a path short enough for them
        (108 bytes with the socket's name)."""
        self.node = node
        self.address = address
        self._root_dir = root_dir
        self.client_ca = client_ca
        self.directory = directory.resolve()
        self.binaries = binaries
        self.containerd_socket = containerd_socket
        self.api_url = api_url
        self.pki_dir = pki_dir
        self.ports = ports
        self.marks = leftovers.marks(owner_dir)
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0

    @property
    def root_dir(self) -> Path:
        return self._root_dir or self.directory / "root"

    @property
    def log(self) -> Path:
        return self.directory / "kubelet.log"

    def write_files(self) -> list[str]:
        """The credentials, kubeconfig and config; the kubelet's argv after the binary."""
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        ca_cert = self.pki_dir / "ca.crt"
        cert, key = node_certificate(self.node, ca_cert, self.pki_dir / "ca.key", d / "pki")
        (d / "kubeconfig").write_text(json.dumps(kubeconfig(self.api_url, ca_cert, cert, key)))
        client_ca = self.client_ca or ca_cert
        conf = config(self.node, d, self.containerd_socket, client_ca, self.ports, self.address)
        (d / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
        return [
            "--config", str(d / "config.json"),
            "--kubeconfig", str(d / "kubeconfig"),
            "--root-dir", str(self.root_dir),
            "--cert-dir", str(d / "pki"),
            "--hostname-override", self.node,
            # The real kubelet refuses a loopback node IP as the node's InternalIP, but
            # only says so: the Node has no address then (and the API server no way to
            # its kubelet's logs and exec) unless the node has an address of its own.
            "--node-ip", self.address,
        ]  # fmt: skip

    async def start(self) -> None:
        args = self.write_files()
        host_changes.record(self.directory, self.directory / "pod-logs", NETWORK)
        make_cgroup_root(self.node)
        argv = [*DIE_WITH_PARENT, str(self.binaries.path("kubelet")), *args]
        env = {**os.environ, **self.marks}
        self.process, self.started = await spawn_logged(argv, self.log, env)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """SIGTERM, SIGKILL after `timeout`; then unmount what it mounted under its root
        directory and remove its cgroup root. What was forced or left, one line each.
        (Its pods' containers are containerd's: stop containerd after the kubelet.)"""
        said = await terminate(self.process, self.started, "kubelet", timeout)
        for point in mounts_under(self.root_dir):
            rc = await (await asyncio.create_subprocess_exec("umount", "--lazy", point)).wait()
            if rc != 0:
                said.append(f"could not unmount {point}")
        return said

    def restore_host(self) -> list[str]:
        """After the kubelet and containerd stopped: the machine as it was before the
        kubelet started (lab.kube.host_changes). What was put back, one line each."""
        return host_changes.restore(self.directory)

    def remove_cgroups(self, deadline: float = 10.0) -> list[str]:
        """After containerd stopped (its containers' cgroups emptied): the node's cgroup
        root goes. Tries until `deadline` s: an exiting task leaves a cgroup late."""
        end = time.monotonic() + deadline
        while True:
            left = remove_cgroup_root(self.node)
            if not left or time.monotonic() >= end:
                return left
            time.sleep(0.1)


def sweep_node(node: str, directory: Path, root_dir: Path | None = None) -> list[str]:
    """After the owner of a kubelet died (and the kubelet with it: the parent death
    signal): unmount what it left under its directory (and its root directory when
    that is elsewhere), put the machine back as it was, remove its cgroup root. One
    line per thing done."""
    done = kill_cgroup_processes(node)
    points = mounts_under(directory) + (mounts_under(root_dir) if root_dir else [])
    for point in sorted(points, key=len, reverse=True):
        rc = subprocess.run(["umount", "--lazy", point], check=False, timeout=30).returncode
        done.append(f"unmounted {point}" if rc == 0 else f"could not unmount {point}")
    done += host_changes.restore(directory)
    done += [f"could not remove {left}" for left in remove_cgroup_root(node)]
    return done
