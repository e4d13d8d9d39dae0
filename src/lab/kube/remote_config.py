"""`--cluster kubeconfig[:CONTEXT]`: which cluster, and what a run on it can do, checked
before anything starts.

The kubeconfig is read as kubectl reads it (`--kubeconfig`, else the first file of
$KUBECONFIG, else ~/.kube/config); CONTEXT defaults to its current-context. A file that
is missing or unreadable, or a context it does not hold, is one line naming the file and
the contexts it has. Whether the API server answers is the run's first step
(lab.kube.remote), with a deadline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.config import ConfigError, LabConfig
from lab.lag import DEFAULT_LAG

PREFIX = "kubeconfig"


def is_kubeconfig(cluster: str) -> bool:
    return cluster == PREFIX or cluster.startswith(PREFIX + ":")


def default_kubeconfig() -> Path:
    """kubectl's choice: the first file of $KUBECONFIG, else ~/.kube/config."""
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return Path(listed[0]) if listed else Path.home() / ".kube" / "config"


@dataclass(frozen=True)
class Target:
    kubeconfig: Path
    context: str
    server: str  # the context's cluster's API server URL, for messages


def resolve(cluster: str, kubeconfig: Path | None) -> Target:
    """`kubeconfig` or `kubeconfig:CONTEXT` with the file to read: the context it names."""
    path = kubeconfig if kubeconfig is not None else default_kubeconfig()
    _, _, wanted = cluster.partition(":")
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"--cluster {cluster}: cannot read the kubeconfig {path}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--cluster {cluster}: {path} is no kubeconfig (not a mapping)")
    contexts = {
        str(c.get("name")): c.get("context") or {}
        for c in data.get("contexts") or []
        if isinstance(c, dict)
    }
    name = wanted or str(data.get("current-context") or "")
    if not name:
        raise ConfigError(
            f"--cluster {cluster}: the kubeconfig {path} has no current-context; name one "
            f"as kubeconfig:CONTEXT (it has: {', '.join(sorted(contexts)) or 'none'})"
        )
    if name not in contexts:
        raise ConfigError(
            f"--cluster {cluster}: the kubeconfig {path} has no context {name!r} "
            f"(it has: {', '.join(sorted(contexts)) or 'none'})"
        )
    clusters = {
        str(c.get("name")): c.get("cluster") or {}
        for c in data.get("clusters") or []
        if isinstance(c, dict)
    }
    cluster_name = str(contexts[name].get("cluster", ""))
    server = str(clusters.get(cluster_name, {}).get("server", ""))
    if not server:
        raise ConfigError(
            f"--cluster {cluster}: the context {name!r} of {path} names cluster "
            f"{cluster_name!r}, which has no server in that file"
        )
    return Target(path, name, server)


# Faults the lab makes on a node of its own, and why a cluster reached only through its
# API cannot have them.
NEEDS_NODE = {
    "container-crash": "it kills the container's process on its node",
    "pod-hang": "it stops (SIGSTOP) the container's processes on its node",
    "node-failure": "it powers a node off (its lease, its pods and its address)",
    "lb-restart": "it restarts the node proxy, which the cluster runs",
    # Scaling InfluxDB to 0 through the API is no outage of the same server: its pod
    # and its emptyDir go, and with them the operation log the run accounts from.
    "influx-down": "it stops and restarts the InfluxDB process on its data (scaling "
    "InfluxDB to 0 through the API would delete its pod and the operation log with it)",
    "influx-stall": "it freezes (SIGSTOP) the InfluxDB process on its node",
}


def validate(config: LabConfig) -> None:
    """What a cluster reached through a kubeconfig cannot do, refused with the reason;
    then the kubeconfig and its context (`resolve`)."""
    where = f"--cluster {config.cluster}"
    for fault in config.faults:
        raise ConfigError(
            f"--fault {fault}: refused with {where}: {NEEDS_NODE[fault.kind]}; the lab has "
            "no access to that cluster's nodes"
        )
    settings = [
        (config.nodes != 1, "--nodes", "the cluster's own nodes run the pods"),
        (config.runtime != "process", "--runtime", "the cluster's own runtime runs the pods"),
        (config.lb != "tcp", f"--lb {config.lb}", "the cluster's own load balancer takes the load"),
        (config.lb_retries != 0, "--lb-retries", "the cluster's own load balancer takes the load"),
        (
            config.endpoint_lag != DEFAULT_LAG,
            "--endpoint-lag",
            "the cluster's own proxies follow the endpoints, with their own lag",
        ),
    ]
    for refused, option, why in settings:
        if refused:
            raise ConfigError(f"{option}: not with {where}: {why}")
    if config.entry is not None and not config.entry.startswith(("http://", "https://")):
        raise ConfigError(f"--entry: expected an http:// or https:// URL, got {config.entry!r}")
    if config.influx_url is not None and not config.influx_url.startswith("http://"):
        raise ConfigError(f"--influx-url: expected an http:// URL, got {config.influx_url!r}")
    resolve(config.cluster, config.kubeconfig)
