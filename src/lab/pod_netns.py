"""Each pod of the process runtime in a network namespace of its own (`lab run
--pod-network netns`), as a pod has its own network namespace in Kubernetes: its own
loopback and one address, so an image's command that binds `0.0.0.0` on a fixed port runs
unchanged in every pod at once, and `$(POD_IP)` / `status.podIP` is that address.

What the run makes, all named as the lab's and as this run's (`<run>`: 6 random hex
digits):

- a hub namespace `lab-<run>-hub` holding the pods' bridge, with no firewall rules: pods
  reach each other there, where the host's FORWARD policy (DROP where Docker runs, applied
  to bridged packets by br_netfilter) would drop them on a bridge of the host's;
- the host's end of it, `labgw-<run>` (a veth whose peer is on the hub's bridge), with the
  gateway address `.1` of a private /24 (10.128-254.x.0/24, one that no route or address of
  this machine covers, picked under a machine-wide lock so two labs at once never take the
  same); its alias `lab.owner=<pid>:<start time>` names the lab that made it
  (lab.leftovers);
- per pod a namespace `lab-<run>-<n>` (`ip netns`, /run/netns) with `lo` up, an `eth0` with
  the pod's address and a default route through the gateway; its peer `lv-<run>-<n>` on the
  hub's bridge.

The host reaches every pod's address through `labgw-<run>` (HAProxy, the probes); a pod
reaches the host on the gateway address (InfluxDB listens there), and the other pods. A pod's
processes (its container, exec probes and hooks) enter the namespace through nsenter, which
execs: the main process keeps its PID, its session and its parent-death signal.

A pod's namespace goes with the pod (after its processes), the hub and the host's link
with the run; after a SIGKILL of the lab its watchdog, or the next lab's sweep, removes
what the alias of a dead owner's `labgw-<run>` names (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lab import blackhole, leftovers
from lab.blackhole import Blackhole
from lab.procs import Registry
from lab.runtime import Pod, ProcessRuntime, StartError

POD_NETWORKS = ("loopback", "netns")
GATEWAY_PREFIX = "labgw-"
NETNS_PREFIX = "lab-"
VETH_PREFIX = "lv-"
NETNS_DIR = Path("/run/netns")
OWNER_ALIAS = f"{leftovers.OWNER_LABEL}="
# Serialises picking a subnet and making its host link across every lab on this machine.
SUBNET_LOCK = Path("/run/lab-pod-network.lock")
IP_TIMEOUT = 10.0
# Longer than a lab holds the lock: two `ip` batches, or a sweep's few bounded calls.
LOCK_TIMEOUT = 60.0
SUBNET_TRIES = 200
_RUN = re.compile(r"[0-9a-f]{6}")


def unavailable() -> str | None:
    """None if pods can have network namespaces here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces, veth pairs and a bridge need root"
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if _which(tool) is None:
            return f"{tool} is not installed ({package})"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool)


def _ip_sync(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str] | None:
    """`ip`'s result, or None when it could not run."""
    try:
        return subprocess.run(
            [_which("ip") or "ip", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=IP_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _json(*args: str) -> list[dict[str, Any]]:
    result = _ip_sync("-j", *args)
    if result is None or result.returncode != 0 or not result.stdout.strip():
        return []
    with contextlib.suppress(ValueError):
        data = json.loads(result.stdout)
        if isinstance(data, list):
            return [d for d in data if isinstance(d, dict)]
    return []


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine routes or has an address in (all routing tables)."""
    networks: list[ipaddress.IPv4Network] = []
    for route in _json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                networks.append(ipaddress.IPv4Network(dst, strict=False))
    for link in _json("-4", "addr", "show"):
        for info in link.get("addr_info") or []:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                networks.append(
                    ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                )
    return networks


def pick_subnet(used: Sequence[ipaddress.IPv4Network], rng: random.Random) -> ipaddress.IPv4Network:
    """A random 10.128-254.x.0/24 that overlaps none of `used` (a default route is no
    overlap: it is what everything else falls to)."""
    for _ in range(SUBNET_TRIES):
        subnet = ipaddress.IPv4Network(f"10.{rng.randint(128, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(n) for n in used if n.prefixlen > 0):
            return subnet
    raise RuntimeError("no free private /24 for the pods' network")


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """The machine's pod-network lock; IPError when another lab holds it past
    LOCK_TIMEOUT (one stopped with SIGSTOP, say): its holders only run a few bounded `ip`
    calls."""
    timeout = LOCK_TIMEOUT
    fd = os.open(SUBNET_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IPError(f"{SUBNET_LOCK} held by another lab for {timeout:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # drops the flock


class PodNetwork:
    """The run's hub, its pods' namespaces, and the pool of their addresses."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.run = secrets.token_hex(3)
        self.link = f"{GATEWAY_PREFIX}{self.run}"  # the host's end, with the gateway address
        self.hub = f"{NETNS_PREFIX}{self.run}-hub"
        self.rng = rng or random.Random()
        self.subnet: ipaddress.IPv4Network | None = None
        self.free: list[str] = []
        self.index: dict[str, int] = {}  # pod address -> its namespace's number
        self.made: set[str] = set()  # pod addresses whose namespace is there
        self.opened = False

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    # -- the addresses (lab.runtime.Addresses) -----------------------------------------

    def take(self) -> str:
        if not self.free:
            raise RuntimeError("out of pod addresses (253 pods at once)")
        return self.free.pop(0)

    def give_back(self, address: str) -> None:
        # Back of the queue, as lab.pods.AddressPool does.
        self.free.append(address)

    def namespace(self, address: str) -> str:
        return f"{NETNS_PREFIX}{self.run}-{self.index[address]}"

    def veth(self, address: str) -> str:
        return f"{VETH_PREFIX}{self.run}-{self.index[address]}"

    # -- the hub -----------------------------------------------------------------------

    async def open(self) -> None:
        """Pick the subnet; make the hub with its bridge, and the host's link to it."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        with _subnet_lock():
            self.subnet = pick_subnet(used_networks(), self.rng)
            hosts = [str(self.subnet.network_address + i) for i in range(2, 255)]
            self.free = hosts
            self.index = {address: i for i, address in enumerate(hosts, start=2)}
            self.opened = True  # before the hub: close() removes a half-made one
            _check(
                _ip_sync(
                    "-batch",
                    "-",
                    stdin=(
                        f"netns add {self.hub}\n"
                        f"link add {self.link} type veth peer name uplink netns {self.hub}\n"
                        f"link set {self.link} alias {OWNER_ALIAS}{leftovers.owner()}\n"
                        f"addr add {self.gateway}/24 dev {self.link}\n"
                        f"link set {self.link} up\n"
                    ),
                ),
                f"making {self.link}",
            )
            _check(
                _ip_sync(
                    "-n",
                    self.hub,
                    "-batch",
                    "-",
                    stdin=(
                        "link add br0 type bridge\nlink set uplink master br0 up\nlink set br0 up\n"
                    ),
                ),
                f"making the bridge in {self.hub}",
            )

    async def close(self) -> None:
        """Remove every namespace left, the hub and the host's link; safe to call twice."""
        for address in sorted(self.made):
            await self.remove(address)
        if self.opened:
            self.opened = False
            # Both ends of a pair go with one: at once, where the hub's end would go only
            # when the kernel gets to destroying the namespace.
            await _ip("link", "del", self.link, ok_if_gone=True)
            await _ip("netns", "delete", self.hub, ok_if_gone=True)

    # -- a pod's namespace -------------------------------------------------------------

    async def make(self, address: str) -> None:
        """The namespace of the pod with `address`: `lo` up, `eth0` with the address, a
        default route through the gateway, its peer on the hub's bridge."""
        if address in self.made:
            return
        namespace, veth = self.namespace(address), self.veth(address)
        self.made.add(address)  # before it is made: remove() takes a half-made one
        await _ip(
            "-batch",
            "-",
            stdin=(
                f"netns add {namespace}\n"
                f"link add {veth} netns {self.hub} type veth peer name eth0 netns {namespace}\n"
            ),
        )
        await _ip("-n", self.hub, "link", "set", veth, "master", "br0", "up")
        await _ip(
            "-n",
            namespace,
            "-batch",
            "-",
            stdin=(
                "link set lo up\n"
                f"addr add {address}/24 dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {self.gateway}\n"
            ),
        )

    async def remove(self, address: str) -> None:
        """The pod's namespace and its link go (its processes are gone first)."""
        if address not in self.made:
            return
        self.made.discard(address)
        await _ip("-n", self.hub, "link", "del", self.veth(address), ok_if_gone=True)
        await _ip("netns", "delete", self.namespace(address), ok_if_gone=True)

    def enter(self, address: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the pod's namespace: nsenter joins it and execs."""
        nsenter = _which("nsenter") or "nsenter"
        return [nsenter, f"--net={NETNS_DIR / self.namespace(address)}", "--", *argv]


class IPError(RuntimeError):
    pass


def _check(result: subprocess.CompletedProcess[str] | None, what: str) -> None:
    if result is None:
        raise IPError(f"{what}: ip did not run")
    if result.returncode != 0:
        raise IPError(f"{what}: {(result.stderr or result.stdout).strip()}")


async def _ip(*args: str, stdin: str | None = None, ok_if_gone: bool = False) -> None:
    process = await asyncio.create_subprocess_exec(
        _which("ip") or "ip",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), IP_TIMEOUT
        )
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    text = output.decode(errors="replace").strip()
    if process.returncode != 0 and not (ok_if_gone and _gone(text)):
        raise IPError(f"ip {' '.join(args)}: {text}")


def _gone(text: str) -> bool:
    return any(s in text for s in ("Cannot find device", "No such file", "does not exist"))


class NetnsRuntime(ProcessRuntime):
    """The process runtime with each pod in its own network namespace."""

    def __init__(
        self,
        registry: Registry,
        log_dir: Path,
        base_env: Mapping[str, str],
        rewrite: Callable[[str], str] | None,
        network: PodNetwork,
        dead: Blackhole | None = None,
    ) -> None:
        super().__init__(registry, log_dir, base_env, rewrite, network, dead)
        self.network = network

    @property
    def gateway(self) -> str:
        return self.network.gateway

    def phases(self) -> list[tuple[str, str]]:
        detail = f"{self.network.link} {self.network.subnet}, a network namespace per pod"
        return [("pod-network", detail)]

    async def make_sandbox(self, pod: Pod) -> None:
        try:
            await self.network.make(pod.ip)
        except IPError as exc:
            raise StartError(f"the pod's network namespace: {exc}") from exc

    def in_sandbox(self, pod: Pod, argv: Sequence[str]) -> Sequence[str]:
        return self.network.enter(pod.ip, argv)

    async def pod_gone(self, pod: Pod) -> None:
        await super().pod_gone(pod)
        await self.network.remove(pod.ip)

    async def close(self) -> None:
        try:
            await self.network.close()
        finally:
            await super().close()


async def netns_runtime(
    registry: Registry,
    log_dir: Path,
    base_env: Mapping[str, str],
    made: Callable[[NetnsRuntime], None] | None = None,
) -> NetnsRuntime:
    """The runtime with its hub made; `made` learns of it before (to record its dead
    addresses' table for a sweep, lab.leftovers)."""
    dead = Blackhole() if blackhole.available() is None else None
    runtime = NetnsRuntime(registry, log_dir, base_env, None, PodNetwork(), dead)
    if made is not None:
        made(runtime)
    try:
        await runtime.network.open()
    except BaseException:
        await runtime.close()
        raise
    return runtime


# -- the sweep of a dead lab's networks (lab.leftovers) ----------------------------------


def sweep(owner: str | None = None) -> list[str]:
    """Remove the pod networks of `owner` (None: of every lab that is gone): their
    namespaces (the hub's with its bridge) and the host's link; also the namespaces of a
    run whose host link is gone. One line per thing removed."""
    if _which("ip") is None or os.geteuid() != 0:
        return []
    # Under the lock a live run holds while it makes its hub and then its host link, so a
    # hub made a moment before its link is never taken for an orphan.
    try:
        with _subnet_lock():
            return _sweep(owner)
    except IPError as exc:  # said; the lab's start goes on, the next sweep tries again
        return [f"pod networks not swept: {exc}"]


def _sweep(owner: str | None) -> list[str]:
    links: dict[str, str] = {}  # run -> its owner
    for link in _json("link", "show", "type", "veth"):
        name = str(link.get("ifname", ""))
        alias = str(link.get("ifalias", ""))
        if name.startswith(GATEWAY_PREFIX) and alias.startswith(OWNER_ALIAS):
            links[name[len(GATEWAY_PREFIX) :]] = alias[len(OWNER_ALIAS) :]
    runs = {
        run
        for run, who in links.items()
        if (who == owner if owner is not None else not leftovers.owner_alive(who))
    }
    done: list[str] = []
    for run in sorted(runs):
        result = _ip_sync("link", "del", f"{GATEWAY_PREFIX}{run}")
        if result is not None and result.returncode == 0:
            done.append(f"removed leftover link {GATEWAY_PREFIX}{run}")
    names = NETNS_DIR.glob(f"{NETNS_PREFIX}*") if NETNS_DIR.is_dir() else iter(())
    # The hub last: its bridge's ports go with the pods' namespaces.
    for name in sorted((p.name for p in names), key=lambda n: (n.endswith("-hub"), n)):
        run = name[len(NETNS_PREFIX) :].rpartition("-")[0]
        # A namespace whose host link is gone is an orphan (a live run makes both
        # under the lock this sweep holds).
        if run in runs or (owner is None and run not in links and _RUN.fullmatch(run)):
            result = _ip_sync("netns", "delete", name)
            if result is not None and result.returncode == 0:
                done.append(f"removed leftover network namespace {name}")
    return done
