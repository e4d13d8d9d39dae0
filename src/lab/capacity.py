"""How many pods a run can hold, checked before anything starts.

Every pod the lab runs needs an address of the run's pool and memory of this machine,
until it is gone (a terminating pod keeps both through its preStop and grace period).
A replica count past either would start pods until the pool or the memory ran out, half
way through the run; this refuses it first, naming the count and what it needs.

Pods at once, at most (R: the replicas, from --replicas or the manifest):
- steady: R; scale: the larger of R and --to (scaled-down pods terminate one by one);
- rollout-restart and update with RollingUpdate: 2R. The controller counts no
  terminating pod (as Kubernetes), so the new pods grow to R while the old R may all
  still be terminating; with Recreate: R (the old pods are gone before new ones start);
- a node-failure fault: R more (the failed node's pods stay until evicted, beside their
  replacements);
- one more per Deployment run beside the one under test.

Addresses: a run's pods take .2-.254 of one /24 (253): the loopback pool
(lab.pods.AddressPool) or the run's Docker network (lab.docker_runtime). With --nodes > 1
on the process runtime each node's proxy takes one of the loopback pool too. With
`--cluster local` each node takes one of the same pool, pods are addressed in their
node's podCIDR (a /24 each, by the same host number, so the shared pool is the bound),
and the scheduler places at most PODS_PER_NODE (the kubelet's default maxPods) per node.

Memory: a pod needs its container's `resources.requests.memory` (else its limit, which
Kubernetes then takes as the request; else DEFAULT_POD_MEMORY), against MemAvailable
of /proc/meminfo less what the lab's own parts need (LAB_RESERVE, and with
`--cluster local` CONTROL_PLANE_RESERVE). A cluster named by a kubeconfig holds its pods
itself: nothing is checked here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.config import ConfigError, LabConfig
from lab.container_config import memory_bytes
from lab.manifest import Deployment, ManifestError, Manifests

MiB = 2**20
GiB = 2**30
POD_ADDRESSES = 253  # .2-.254 of a /24 (.1 is never a pod's)
PODS_PER_NODE = 110  # the kubelet's default maxPods (lab.kube.nodes registers its nodes so)
# An idle `calc serve` (uvicorn, Python 3.11) measured 40 MiB RSS, 30 MiB PSS
# (/proc/PID/status VmRSS, smaps_rollup Pss); under load and with exec probes and
# hooks a pod needs more: 64 MiB each when the manifest asks for nothing.
DEFAULT_POD_MEMORY = 64 * MiB
# InfluxDB, HAProxy, k6 with its VUs and the lab itself.
LAB_RESERVE = 512 * MiB
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler.
CONTROL_PLANE_RESERVE = 1 * GiB
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class PodSize:
    memory: int  # bytes
    how: str  # where the figure comes from, for messages


@dataclass(frozen=True)
class Peak:
    """The most pods a run holds at once, and the memory they need."""

    pods: int
    memory: int
    why: str  # how the count comes about, in words


def pod_size(deployment: Deployment, source: str) -> PodSize:
    """The memory one pod of the Deployment needs: its request, else its limit, else the
    measured default."""
    spec = deployment.template.spec
    containers = spec.get("containers") if isinstance(spec, dict) else None
    container = containers[0] if isinstance(containers, list) and containers else {}
    resources = container.get("resources") if isinstance(container, dict) else None
    resources = resources if isinstance(resources, dict) else {}
    at = f"{source}: spec.template.spec.containers[0].resources"
    for kind in ("requests", "limits"):
        values = resources.get(kind)
        if isinstance(values, dict) and "memory" in values:
            try:
                memory = memory_bytes(values["memory"], f"{at}.{kind}.memory")
            except OverflowError:  # 1e400: no float holds it
                raise ManifestError(f"{at}.{kind}.memory: too large") from None
            return PodSize(memory, f"{_mib(memory)} ({kind}.memory)")
    return PodSize(DEFAULT_POD_MEMORY, f"{_mib(DEFAULT_POD_MEMORY)} (measured default)")


def _mib(size: int) -> str:
    return f"{size / GiB:.1f} GiB" if size >= GiB else f"{size / MiB:.0f} MiB"


def replicas_of(config: LabConfig, manifests: Manifests) -> int:
    return config.replicas if config.replicas is not None else manifests.deployment.replicas


def _factor(config: LabConfig, manifests: Manifests) -> tuple[int, str]:
    """Pods under test at once per replica, and why (scale aside)."""
    strategy = manifests.deployment.strategy.type
    factor, why = 1, "the replicas"
    if config.scenario in ("rollout-restart", "update"):
        if strategy == "RollingUpdate":
            factor, why = 2, "the new pods grow to the replicas while the old may still terminate"
        else:
            why = "Recreate: the old pods are gone before new ones start"
    if any(f.kind == "node-failure" for f in config.faults):
        factor += 1
        why += "; a failed node's pods stay beside their replacements"
    return factor, why


def peak(config: LabConfig, manifests: Manifests, update: Manifests | None) -> Peak:
    replicas = replicas_of(config, manifests)
    source = str(manifests.sources[0]) if manifests.sources else str(config.manifests)
    size = pod_size(manifests.deployment, source)
    factor, why = _factor(config, manifests)
    if config.scenario == "scale":
        target = max(replicas, config.to or 0)
        pods, memory = target * factor, target * factor * size.memory
        why = f"scale to {config.to}: at most {target} pods" + why.removeprefix("the replicas")
    elif config.scenario == "update" and update is not None:
        new = pod_size(update.deployment, str(config.update_to))
        pods = replicas * factor
        if factor == 1 or manifests.deployment.strategy.type == "Recreate":
            memory = pods * max(size.memory, new.memory)
        else:
            # The old pods of their size, the new of theirs, and a failed node's extra.
            memory = replicas * (size.memory + new.memory)
            memory += replicas * (factor - 2) * max(size.memory, new.memory)
        size = PodSize(max(size.memory, new.memory), f"{size.how} -> {new.how}")
    else:
        pods, memory = replicas * factor, replicas * factor * size.memory
    beside = [pod_size(s.deployment, s.source) for s in manifests.supporting if not s.replaced_by]
    if beside:
        why += f"; {len(beside)} pod(s) of the Deployments beside it"
    return Peak(
        pods + len(beside), memory + sum(s.memory for s in beside), f"{why}; {size.how} each"
    )


def addresses(config: LabConfig) -> tuple[int, str]:
    """The pods a run can address at once, and why."""
    if config.cluster == "local":
        taken = config.nodes if config.runtime == "process" else 0
        pool = POD_ADDRESSES - taken
        per_node = PODS_PER_NODE * config.nodes
        if per_node < pool:
            return per_node, f"{config.nodes} node(s) of at most {PODS_PER_NODE} pods (maxPods)"
        return pool, f"{POD_ADDRESSES} pod addresses, {taken} of them the nodes'"
    taken = config.nodes if config.runtime == "process" and config.nodes > 1 else 0
    where = "the run's Docker network" if config.runtime == "docker" else "loopback"
    if taken:
        return POD_ADDRESSES - taken, f"{POD_ADDRESSES} addresses on {where}, {taken} the nodes'"
    return POD_ADDRESSES, f"{POD_ADDRESSES} pod addresses on {where}"


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        for line in meminfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "MemAvailable":
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _what(config: LabConfig, manifests: Manifests) -> str:
    """The option or field the count comes from, for the error."""
    if config.scenario == "scale" and (config.to or 0) > replicas_of(config, manifests):
        return f"--to {config.to}"
    if config.replicas is not None:
        return f"--replicas {config.replicas}"
    deployment = manifests.deployment
    return f"{config.manifests}: Deployment {deployment.name} spec.replicas {deployment.replicas}"


Fits = Callable[[Peak], bool]


def _most(config: LabConfig, manifests: Manifests, update: Manifests | None, fits: Fits) -> int:
    """The largest count (of --to when it sets the peak, else of the replicas) whose
    peak `fits`: the peak grows with it, so a binary search."""
    scale_to = config.scenario == "scale" and (config.to or 0) > replicas_of(config, manifests)
    low, high = 0, POD_ADDRESSES * 4
    while low < high:
        middle = (low + high + 1) // 2
        trial = (
            dataclasses.replace(config, to=middle)
            if scale_to
            else dataclasses.replace(config, replicas=middle)
        )
        if fits(peak(trial, manifests, update)):
            low = middle
        else:
            high = middle - 1
    return low


def check(
    config: LabConfig,
    manifests: Manifests,
    update: Manifests | None = None,
    meminfo: Path = MEMINFO,
) -> str:
    """Refuse (ConfigError) a run whose pods at once exceed its addresses or this
    machine's memory; else a note saying what it needs and has."""
    if config.cluster not in ("lab", "local"):
        return "capacity: the cluster holds the pods; this machine's limits not checked"
    need = peak(config, manifests, update)
    what = _what(config, manifests)
    limit, limit_why = addresses(config)
    if need.pods > limit:
        most = _most(config, manifests, update, lambda p: p.pods <= limit)
        raise ConfigError(
            f"{what}: the run would hold up to {need.pods} pods at once ({need.why}), "
            f"more than it can address: {limit} ({limit_why}); at most {most} replicas fit"
        )
    reserve = LAB_RESERVE + (CONTROL_PLANE_RESERVE if config.cluster == "local" else 0)
    available = available_memory(meminfo)
    if available is None:
        return f"capacity: up to {need.pods} pods at once; no MemAvailable, memory not checked"
    room = max(0, available - reserve)
    if need.memory > room:
        most = _most(config, manifests, update, lambda p: p.memory <= room)
        raise ConfigError(
            f"{what}: the run would hold up to {need.pods} pods at once ({need.why}): "
            f"{_mib(need.memory)}, more than this machine has for pods: {_mib(room)} "
            f"(MemAvailable {_mib(available)} less {_mib(reserve)} for the lab's own parts); "
            f"at most {most} replicas fit"
        )
    return (
        f"capacity: up to {need.pods} pods at once ({need.why}) of {limit} addressable; "
        f"{_mib(need.memory)} of {_mib(room)} memory for pods"
    )
