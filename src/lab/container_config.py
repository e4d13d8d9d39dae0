"""What a real container runtime needs from a pod template beyond the command and probes:
securityContext, resources and emptyDir volumes, read from the pod spec of a Deployment
as lab.manifest parsed it (PodTemplate.spec) or of a pod as the API server has it.

The process runtime has no use for them (no users, cgroups or mounts), so lab.manifest
does not model them; the Docker runtime reads them here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lab.manifest import Container, Deployment, ManifestError

_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(?:e([0-9]+)|(Ki|Mi|Gi|Ti|k|M|G|T|m))?$")
_UNITS = {
    None: 1,
    "m": 0.001,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerConfig:
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    read_only_root: bool = False
    no_new_privileges: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    memory_limit: int | None = None  # bytes
    cpu_limit: float | None = None  # cores
    cpu_request: float | None = None  # cores
    mounts: tuple[Mount, ...] = ()


def memory_bytes(value: object, where: str) -> int:
    """A Kubernetes memory quantity (`256Mi`, `1G`, `128974848`, `129e6`) in bytes."""
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise ManifestError(f"{where}: not a memory quantity: {value!r}")
    number, exponent, unit = match.groups()
    scale = 10 ** int(exponent) if exponent else _UNITS[unit]
    return int(float(number) * scale)


def cpu_cores(value: object, where: str) -> float:
    """A Kubernetes CPU quantity (`100m`, `0.5`, `2`) in cores."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ManifestError(f"{where}: not a CPU quantity: {value!r}") from None


def _map(data: object, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: must be a mapping")
    return data


def from_pod_spec(spec: Mapping[str, Any], where: str) -> ContainerConfig:
    """The config of the pod spec's (single) container: container securityContext over
    the pod's, resources, and its volumeMounts of emptyDir volumes."""
    containers = spec.get("containers") or [{}]
    container = _map(containers[0], f"{where}.containers[0]")
    at = f"{where}.containers[0]"
    pod_sc = _map(spec.get("securityContext"), f"{where}.securityContext")
    sc = {**pod_sc, **_map(container.get("securityContext"), f"{at}.securityContext")}
    caps = _map(sc.get("capabilities"), f"{at}.securityContext.capabilities")
    resources = _map(container.get("resources"), f"{at}.resources")
    limits = _map(resources.get("limits"), f"{at}.resources.limits")
    requests = _map(resources.get("requests"), f"{at}.resources.requests")
    empty_dirs = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        volume = _map(volume, f"{where}.volumes[{i}]")
        if "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise ManifestError(
                f"{where}.volumes[{i}]: only emptyDir volumes run in a container here, got {kinds}"
            )
        empty_dirs.add(str(volume.get("name")))
    mounts = []
    for i, mount in enumerate(container.get("volumeMounts") or []):
        mount = _map(mount, f"{at}.volumeMounts[{i}]")
        name = str(mount.get("name"))
        if name not in empty_dirs:
            raise ManifestError(f"{at}.volumeMounts[{i}]: no emptyDir volume named {name!r}")
        mounts.append(Mount(name, str(mount.get("mountPath")), bool(mount.get("readOnly"))))

    def optional_int(key: str) -> int | None:
        value = sc.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ManifestError(f"{at}.securityContext.{key}: must be a user/group id")
        return value

    return ContainerConfig(
        run_as_user=optional_int("runAsUser"),
        run_as_group=optional_int("runAsGroup"),
        run_as_non_root=bool(sc.get("runAsNonRoot")),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        cap_add=tuple(str(c) for c in caps.get("add") or ()),
        cap_drop=tuple(str(c) for c in caps.get("drop") or ()),
        memory_limit=(
            memory_bytes(limits["memory"], f"{at}.resources.limits.memory")
            if "memory" in limits
            else None
        ),
        cpu_limit=cpu_cores(limits["cpu"], f"{at}.resources.limits.cpu")
        if "cpu" in limits
        else None,
        cpu_request=cpu_cores(requests["cpu"], f"{at}.resources.requests.cpu")
        if "cpu" in requests
        else None,
        mounts=tuple(mounts),
    )


def from_deployment(deployment: Deployment, source: str | None = None) -> ContainerConfig:
    """The config of a Deployment's container, from its pod spec as lab.manifest read it
    (the Deployment under test, or one beside it: each has its own). `source`, the file
    it came from, goes into errors."""
    where = f"{source + ': ' if source else ''}Deployment {deployment.name}: spec.template.spec"
    return from_pod_spec(deployment.template.spec, where)


class Configs:
    """The config of each template's container: the Deployment under test's, an update's,
    those beside them, or each pod's as the API server has it."""

    def __init__(self) -> None:
        self.known: list[tuple[Container, ContainerConfig]] = []

    def add(self, container: Container, config: ContainerConfig) -> None:
        self.known.append((container, config))

    def of(self, container: Container) -> ContainerConfig:
        for known, config in self.known:
            if known is container:
                return config
        for known, config in self.known:
            if known == container:
                return config
        return ContainerConfig()
