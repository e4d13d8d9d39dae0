"""A pod bound to a lab node, from the API server's JSON to the lab's PodTemplate.

The pod is read by the same rules as a manifest (lab.manifest), after taking out what
the API server adds to every pod and the lab does not run: the projected service
account token volume (the ServiceAccount admission plugin's `kube-api-access-*`,
plugin/pkg/admission/serviceaccount) and its mount. The ConfigMaps and Secrets its env
and volumes name are read from the pod's namespace.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from lab.manifest import ManifestError, PodTemplate, pod_from_api

TOKEN_VOLUME_PREFIX = "kube-api-access-"


def strip_api_additions(pod: dict[str, Any]) -> dict[str, Any]:
    """A copy of `pod` without the service account token's volume and mounts."""
    out = copy.deepcopy(pod)
    spec = out.get("spec") or {}
    volumes = spec.get("volumes") or []
    token = {
        v.get("name")
        for v in volumes
        if str(v.get("name", "")).startswith(TOKEN_VOLUME_PREFIX) and "projected" in v
    }
    if token:
        spec["volumes"] = [v for v in volumes if v.get("name") not in token]
        if not spec["volumes"]:
            del spec["volumes"]
        for container in spec.get("containers") or []:
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") not in token]
            if mounts:
                container["volumeMounts"] = mounts
            else:
                container.pop("volumeMounts", None)
    return out


def referenced(pod: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The names of the ConfigMaps and Secrets the pod's containers and volumes use."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec") or {}
    for container in spec.get("containers") or []:
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            if "configMapKeyRef" in source:
                config_maps.add(source["configMapKeyRef"].get("name", ""))
            if "secretKeyRef" in source:
                secrets.add(source["secretKeyRef"].get("name", ""))
        for env_from in container.get("envFrom") or []:
            if "configMapRef" in env_from:
                config_maps.add(env_from["configMapRef"].get("name", ""))
            if "secretRef" in env_from:
                secrets.add(env_from["secretRef"].get("name", ""))
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            config_maps.add(volume["configMap"].get("name", ""))
        if "secret" in volume:
            secrets.add(volume["secret"].get("secretName", ""))
    return config_maps - {""}, secrets - {""}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's keys as text (the API holds `data` base64-encoded)."""
    out = dict(secret.get("stringData") or {})
    for key, value in (secret.get("data") or {}).items():
        out[key] = base64.b64decode(value).decode("utf-8", "replace")
    return out


Reader = Callable[[str, str], Awaitable[dict[str, Any] | None]]


async def template_of(
    pod: dict[str, Any], read_config_map: Reader, read_secret: Reader, notes: list[str]
) -> PodTemplate:
    """The pod as the lab's kubelet runs it. `read_*(namespace, name)` return the object,
    or None when it does not exist (then a non-optional reference is refused, as the
    kubelet's CreateContainerConfigError). Raises ManifestError for what the lab cannot
    run, naming the field."""
    clean = strip_api_additions(pod)
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    names_cm, names_secret = referenced(clean)
    config_maps: dict[str, dict[str, str]] = {}
    secrets: dict[str, dict[str, str]] = {}
    for name in sorted(names_cm):
        found = await read_config_map(namespace, name)
        if found is not None:
            config_maps[name] = {str(k): str(v) for k, v in (found.get("data") or {}).items()}
    for name in sorted(names_secret):
        found = await read_secret(namespace, name)
        if found is not None:
            secrets[name] = secret_data(found)
    try:
        return pod_from_api(clean, config_maps, secrets, notes)
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError) as exc:  # a shape the rules did not expect
        raise ManifestError(f"pod {namespace}/{pod['metadata'].get('name')}: {exc!r}") from exc
