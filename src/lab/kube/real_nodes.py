"""The nodes of `lab cluster up --kubelet real`: per node a containerd
(lab.kube.containerd) and the real kubelet (lab.kube.real_kubelet), lab-real-0 ..
lab-real-N-1, each with a bridge, a CNI network and a state directory of its own.

The real kubelet refuses a loopback InternalIP, and the API server reaches a node's
kubelet (logs, exec) at that address: each node gets one of its own on a link the cluster
makes, from 198.18.0.0/15 (RFC 2544's benchmarking block, routed nowhere) and clear of
every route and address on the machine. Only this machine reaches it. The link is a
bridge without ports: this machine's kernel has no `dummy` link type.

What the nodes make beside processes (the link, the bridges, the masquerade rules, the
cgroups, the kernel tunables the kubelet sets) is written to `real-nodes.json` in the
nodes' directory before it is made: `sweep()` removes it after a SIGKILL of the owner,
when `lab cluster down` or the next `up` runs (lab.kube.leftovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import leftovers
from lab.kube import kube_proxy, node_bins, node_images
from lab.kube.containerd import Containerd, remove_network
from lab.kube.controlplane import free_ports
from lab.kube.flags import CLUSTER_CIDR
from lab.kube.kube_proxy import KubeProxy
from lab.kube.real_kubelet import KubeletPorts, RealKubelet, kill_cgroup_processes, sweep_node
from lab.pod_netns import used_networks

RECORD = "real-nodes.json"
REAL_DIR = "real"  # in the nodes' directory: one directory per node
# A unix socket's path has at most 108 bytes, and a state directory's may be longer:
# the nodes' sockets and kubelet root directories go in /tmp/<link>-<index> (not /run:
# containerd has a /run of its own, lab.kube.containerd).
RUN_ROOT = Path("/tmp")
ADDRESS_BLOCK = ipaddress.ip_network("198.18.0.0/15")
READY_TIMEOUT = 120.0  # a cold containerd and kubelet on a busy 2-core machine
IP_TIMEOUT = 30.0


# Held by the one `lab cluster up --kubelet real` a machine can run: kube-proxy's tables
# (`ip kube-proxy`), the bridges, and the kernel settings the kubelet changes and the lab
# puts back are the machine's, not a cluster's.
MACHINE_LOCK = Path("/run/lab-real-nodes.lock")


class RealNodesError(RuntimeError):
    """A real node did not start."""


def hold_machine() -> int:
    """The machine's real-node lock (an open descriptor: closing it, or the owner's end,
    lets go); RealNodesError naming the holder when another lab has it."""
    fd = os.open(MACHINE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RealNodesError(
            f"--kubelet real: another lab cluster with real nodes runs on this machine "
            f"(PID {holder}); its kube-proxy tables, bridges and the kernel settings the "
            "kubelet changes are machine-wide: stop it first (lab cluster down)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def node_name(index: int) -> str:
    return f"lab-real-{index}"


def link_name(pid: int) -> str:
    return f"labkn{pid:x}"[:15]  # IFNAMSIZ: 15 characters


@dataclass(frozen=True)
class NodePlan:
    name: str
    directory: Path  # in the state directory: configs, logs, records
    run_dir: Path  # short, for unix sockets: containerd's and the kubelet's root
    address: str
    bridge: str
    network: str


def _ip(*args: str) -> str:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RealNodesError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def pick_addresses(count: int) -> list[str]:
    """`count` addresses of ADDRESS_BLOCK in no route or subnet of the machine's."""
    taken = used_networks()
    found: list[str] = []
    for subnet in ADDRESS_BLOCK.subnets(new_prefix=24):
        if any(subnet.overlaps(t) for t in taken):
            continue
        found += [str(subnet.network_address + 1 + i) for i in range(count - len(found))]
        if len(found) == count:
            return found
    raise RealNodesError(f"no free /24 in {ADDRESS_BLOCK} for the nodes' addresses")


class RealNodes:
    """`await start()` on a healthy control plane, `await stop()` before it stops.
    Start it from the event loop's thread (the parent death signal follows it)."""

    def __init__(
        self,
        api: Any,  # kubernetes.client.ApiClient
        api_url: str,
        pki_dir: Path,
        out: Path,
        count: int,
        progress: Callable[[str], None] = lambda _: None,
        images: tuple[str, ...] = (),
    ) -> None:
        """`images`: references in the Docker engine (calc:latest) imported into every
        node's containerd (lab.kube.node_images)."""
        self.api = api
        self.images = images
        self.imported: list[node_images.SavedImage] = []
        self.api_url = api_url
        self.pki_dir = pki_dir
        self.out = out.resolve()
        self.count = count
        self.progress = progress
        self.link = link_name(os.getpid())
        self.plans: list[NodePlan] = []
        self.nodes: list[tuple[Containerd, RealKubelet]] = []
        self.proxy: KubeProxy | None = None
        self.ready_after: float | None = None  # seconds from start() to every node Ready

    @property
    def names(self) -> list[str]:
        return [plan.name for plan in self.plans]

    async def start(self) -> None:
        began = time.monotonic()
        binaries = node_bins.find()
        self.out.mkdir(parents=True, exist_ok=True)
        # The owner, so that a sweep kills its marked processes (containerd's shims).
        leftovers.record(self.out, None, None)
        addresses = await asyncio.to_thread(pick_addresses, self.count)
        self.plans = [
            NodePlan(
                node_name(i),
                self.out / REAL_DIR / node_name(i),
                RUN_ROOT / f"{self.link}-{i}",
                addresses[i],
                f"lab-cni{i}",
                f"lab-pods-{i}",
            )
            for i in range(self.count)
        ]
        self._write_record()
        await asyncio.to_thread(self._make_link)
        client_ca = self.out / REAL_DIR / "kubelet-client-ca.crt"
        client_ca.parent.mkdir(parents=True, exist_ok=True)
        # The cluster CA (the nodes' own certificates) and the front-proxy CA, whose
        # client certificate the API server shows the kubelets (lab.kube.controlplane).
        client_ca.write_text(
            (self.pki_dir / "ca.crt").read_text() + (self.pki_dir / "front-proxy-ca.crt").read_text()
        )  # fmt: skip
        saved = await asyncio.to_thread(
            node_images.save_from_engine, self.images, self.out / REAL_DIR / "images", self.progress
        )
        used: set[int] = set()
        for plan in self.plans:
            containerd = Containerd(
                plan.directory / "containerd",
                binaries,
                subnet=None,
                bridge=plan.bridge,
                network=plan.network,
                socket_dir=plan.run_dir,
            )
            ports = free_ports(3, used)
            used.update(ports)
            kubelet = RealKubelet(
                plan.name,
                plan.directory / "kubelet",
                binaries,
                containerd.socket,
                self.api_url,
                self.pki_dir,
                KubeletPorts(*ports),
                address=plan.address,
                client_ca=client_ca,
                root_dir=plan.run_dir / "kubelet",
            )
            self.nodes.append((containerd, kubelet))
            await containerd.start()
            await containerd.import_image(binaries.pause_tarball, binaries.pause_image)
            for image in saved:
                await containerd.import_image(image.tarball, image.containerd_name)
            await kubelet.start()
            self.progress(f"{plan.name}: containerd and the kubelet started at {plan.address}")
        # One kube-proxy for every node: they share the machine's network namespace.
        first = self.plans[0]
        healthz, metrics = free_ports(2, used)
        proxy_ports = (healthz, metrics)
        self.proxy = KubeProxy(
            first.name,
            first.directory / "kube-proxy",
            binaries,
            self.api_url,
            self.pki_dir,
            CLUSTER_CIDR,
            first.address,
            proxy_ports,
        )
        await self.proxy.start()
        for image in saved:
            image.tarball.unlink(missing_ok=True)  # in containerd now; 200+ MB each
            self.progress(f"{image.reference} imported from the Docker engine into every node's containerd (saved in {image.seconds:.1f} s)")  # fmt: skip
        if saved:
            await asyncio.to_thread(node_images.apply_pull_policy, self.api, saved, READY_TIMEOUT)
            names = ", ".join(i.reference for i in saved)
            self.progress(
                f"MutatingAdmissionPolicy {node_images.POLICY}: imagePullPolicy IfNotPresent "
                f"on pods' containers naming {names} (imported, never pulled)"
            )
        self.imported = saved
        await asyncio.to_thread(self._wait_ready, READY_TIMEOUT)
        self.ready_after = time.monotonic() - began

    def _write_record(self) -> None:
        data = {
            "link": self.link,
            "kube_proxy": True,
            "nodes": [
                {
                    "name": p.name,
                    "directory": str(p.directory),
                    "run_dir": str(p.run_dir),
                    "bridge": p.bridge,
                    "network": p.network,
                }
                for p in self.plans
            ],
        }
        tmp = self.out / (RECORD + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.out / RECORD)

    def _make_link(self) -> None:
        for plan in self.plans:
            plan.run_dir.mkdir(mode=0o700)
        _ip("link", "add", self.link, "type", "bridge")
        for plan in self.plans:
            _ip("address", "add", f"{plan.address}/32", "dev", self.link)
        _ip("link", "set", self.link, "up")

    def _wait_ready(self, timeout: float) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        deadline = time.monotonic() + timeout
        waiting = set(self.names)
        while waiting:
            for name in sorted(waiting):
                with contextlib.suppress(client.ApiException):
                    node = core.read_node(name)
                    conditions = node.status.conditions or []
                    if any(c.type == "Ready" and c.status == "True" for c in conditions):
                        waiting.discard(name)
            if not waiting and self._proxy_healthy():
                return
            proxy = self.proxy.process if self.proxy is not None else None
            if proxy is not None and proxy.returncode is not None:
                raise RealNodesError(f"kube-proxy exited with {proxy.returncode}")
            for containerd, kubelet in self.nodes:
                for name, process in (("containerd", containerd.process), ("kubelet", kubelet.process)):  # fmt: skip
                    if process is not None and process.returncode is not None:
                        raise RealNodesError(f"{kubelet.node}'s {name} exited with {process.returncode}")  # fmt: skip
            if time.monotonic() >= deadline:
                raise RealNodesError(
                    f"{', '.join(sorted(waiting)) or 'kube-proxy'} not Ready in {timeout:g} s (see "
                    f"kubelet.log under {self.out / REAL_DIR})"
                )
            time.sleep(0.2)  # the poll interval, bounded by the deadline above

    def _proxy_healthy(self) -> bool:
        """kube-proxy's /healthz answers 200 once it synced its rules."""
        if self.proxy is None:
            return True
        try:
            url = f"http://127.0.0.1:{self.proxy.healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    async def stop(self) -> list[str]:
        """Each node, the last first: the kubelet, then containerd, the node's containers
        (SIGKILL: a pod's grace period is the kubelet's, and it is gone), the network, the cgroups, the machine's tunables and chains; then the link
        and the record. Every step runs, whatever failed before it. One line per thing
        that had to be forced or was left."""
        said: list[str] = []
        if self.proxy is not None:
            said += await self.proxy.stop()
        for containerd, kubelet in reversed(self.nodes):
            try:
                said += await kubelet.stop()
            finally:
                try:
                    said += await containerd.stop()
                finally:
                    # Its containers outlive containerd and their shims (each in a mount
                    # namespace of its own): they go by the node's cgroups.
                    said += await asyncio.to_thread(kill_cgroup_processes, kubelet.node)
                    await containerd.remove_network()
                    said += await asyncio.to_thread(kubelet.remove_cgroups)
                    kubelet.restore_host()
        for plan in self.plans:
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        self.nodes = []
        await asyncio.to_thread(_remove_link, self.link)
        (self.out / RECORD).unlink(missing_ok=True)
        leftovers.forget(self.out)
        return said


def _remove_link(link: str) -> list[str]:
    if not os.path.exists(f"/sys/class/net/{link}"):
        return []
    result = subprocess.run(["ip", "link", "delete", link], capture_output=True, timeout=IP_TIMEOUT, check=False)  # fmt: skip
    return [f"removed the link {link}"] if result.returncode == 0 else [f"could not remove {link}"]


def sweep(nodes_dir: Path) -> list[str]:
    """After the owner died (its marked processes killed by the caller): what the record
    names. Each node's leftover containers (by its cgroups), mounts, kernel tunables,
    chains and cgroups, its bridge and masquerade rules and its directories; the link;
    the record. One line per thing done."""
    try:
        data = json.loads((nodes_dir / RECORD).read_text())
    except (OSError, ValueError):
        return []
    done: list[str] = []
    for node in reversed(data.get("nodes", [])):
        directory = Path(node["directory"])
        run_dir = Path(node["run_dir"])
        done += sweep_node(node["name"], directory / "kubelet", run_dir)
        done += remove_network(node["bridge"], node["network"])
        for made in (run_dir, *(directory / s for s in ("containerd/root", "containerd/state", "containerd/cni-ipam"))):  # fmt: skip
            if made.exists():
                shutil.rmtree(made, ignore_errors=True)
                done.append(f"removed {made}")
    if data.get("kube_proxy"):
        done += kube_proxy.remove_tables()
    done += _remove_link(str(data.get("link", "")))
    (nodes_dir / RECORD).unlink(missing_ok=True)
    return done
