"""The project's images on the real nodes: taken from the Docker engine (`make image`
builds them there) and imported into each node's containerd, so that no node ever pulls.

A manifest that names `calc` (no tag: `calc:latest`) gets the pull policy Always from the
API server's defaults, and a kubelet told Always pulls even an image it has: it would
fail here, where no registry holds the image. The lab's cluster therefore carries a
MutatingAdmissionPolicy (the API server's own CEL mutation, no webhook) that sets
`imagePullPolicy: IfNotPresent` on the containers of a new pod that name one of the
imported images, and on no other: manifests run as they are written, and the cluster
says what it changed (the policy is an object of the API: `kubectl get
mutatingadmissionpolicy`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.manifest import image_name

POLICY = "lab-imported-images"
SAVE_TIMEOUT = 300.0  # seconds for the engine to stream one image
DOCKER_HUB = "docker.io/library/"


class NodeImagesError(RuntimeError):
    """An image could not be taken from the Docker engine."""


@dataclass(frozen=True)
class SavedImage:
    reference: str  # as the engine names it: calc:latest
    tarball: Path
    seconds: float

    @property
    def containerd_name(self) -> str:
        """The name the import gives it in containerd, the CRI plugin's normalised one."""
        name = self.reference
        first = name.split("/", 1)[0]
        if "/" not in name:
            return DOCKER_HUB + name
        if "." in first or ":" in first or first == "localhost":
            return name
        return "docker.io/" + name

    @property
    def names(self) -> list[str]:
        """Every way a pod's `image` may name it."""
        name = self.reference
        names = {name, self.containerd_name}
        if name.endswith(":latest"):
            names |= {n.removesuffix(":latest") for n in tuple(names)}
        return sorted(names)


def references(image_names: Iterable[str]) -> list[str]:
    """`NAME:latest` for each image name of the image map (the tag `make image` gives)."""
    return sorted({f"{image_name(n)}:latest" for n in image_names})


def save_from_engine(
    wanted: Iterable[str], directory: Path, log: Callable[[str], None]
) -> list[SavedImage]:
    """Each of `wanted` that the Docker engine has, saved as a tarball in `directory`
    (the engine's own `docker save` format, which `ctr images import` reads). One log
    line per image saved or missing; no engine: a line and nothing saved."""
    import docker
    import docker.errors

    from lab import engine_setup

    wanted = list(wanted)
    if not wanted:
        return []
    if not engine_setup.ping():
        log(f"no Docker engine: {', '.join(wanted)} not imported (pods naming them fail)")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    engine = docker.from_env(timeout=int(SAVE_TIMEOUT))
    saved = []
    try:
        for reference in wanted:
            try:
                image = engine.images.get(reference)
            except docker.errors.ImageNotFound:
                log(f"{reference} is not in the Docker engine (`make image` builds it): not imported")  # fmt: skip
                continue
            began = time.monotonic()
            tarball = directory / (reference.replace("/", "_").replace(":", "_") + ".tar")
            try:
                with tarball.open("wb") as out:
                    for chunk in image.save(named=True):
                        out.write(chunk)
            except (docker.errors.DockerException, OSError) as exc:
                tarball.unlink(missing_ok=True)
                raise NodeImagesError(f"saving {reference} from the Docker engine: {exc}") from exc
            saved.append(SavedImage(reference, tarball, time.monotonic() - began))
    finally:
        engine.close()
    return saved


def pull_policy_documents(images: list[SavedImage]) -> list[dict[str, Any]]:
    """The MutatingAdmissionPolicy and its binding: IfNotPresent on every container (and
    init container) of a new pod whose image is one of `images`."""
    names = json.dumps(sorted({n for i in images for n in i.names}))

    def patched(field: str) -> str:
        # An apply configuration merges into the pod: containers are a list keyed by name,
        # so only the named containers' policy changes.
        return (
            f"object.spec.?{field}.orValue([]).filter(c, c.image in {names})"
            f".map(c, Object.spec.{field}{{name: c.name, imagePullPolicy: 'IfNotPresent'}})"
        )

    mutations = [
        {
            "patchType": "ApplyConfiguration",
            "applyConfiguration": {
                "expression": f"Object{{spec: Object.spec{{{field}: {patched(field)}}}}}"
            },
        }
        for field in ("containers", "initContainers")
    ]
    condition = " || ".join(
        f"object.spec.?{f}.orValue([]).exists(c, c.image in {names})"
        for f in ("containers", "initContainers")
    )
    api_version = "admissionregistration.k8s.io/v1"
    return [
        {
            "apiVersion": api_version,
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ]
                },
                "matchConditions": [{"name": "names-an-imported-image", "expression": condition}],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "mutations": mutations,
            },
        },
        {
            "apiVersion": api_version,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY},
        },
    ]


def apply_pull_policy(api: Any, images: list[SavedImage], timeout: float) -> None:
    """Server-side apply the policy and its binding (blocking), then wait until the API
    server enforces it: a dry-run pod naming the first image comes back IfNotPresent.
    (The API server takes a policy in through its own watch, a moment after the write.)"""
    from kubernetes import client, dynamic

    from lab.kube.api import REQUEST_TIMEOUT

    resources = dynamic.DynamicClient(api).resources
    for doc in pull_policy_documents(images):
        resource = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        resource.server_side_apply(
            body=doc, field_manager="lab", force_conflicts=True, _request_timeout=REQUEST_TIMEOUT
        )
    core = client.CoreV1Api(api)
    probe = {
        "metadata": {"generateName": "lab-pull-policy-"},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "probe", "image": images[0].reference}],
        },
    }
    deadline = time.monotonic() + timeout
    said = "no answer"
    while time.monotonic() < deadline:
        try:
            pod = core.create_namespaced_pod(
                "default", probe, dry_run="All", _request_timeout=REQUEST_TIMEOUT
            )
            said = f"imagePullPolicy {pod.spec.containers[0].image_pull_policy}"
            if pod.spec.containers[0].image_pull_policy == "IfNotPresent":
                return
        except client.ApiException as exc:
            said = f"{exc.status} {exc.reason}"  # e.g. the default ServiceAccount not yet made
        time.sleep(0.2)  # the poll interval, bounded by the deadline
    raise NodeImagesError(
        f"the MutatingAdmissionPolicy {POLICY} not in force in {timeout:g} s ({said})"
    )
