"""A manifest directory whose app prints its environment and argv, and what Kubernetes
gives it: the same expectations for the process and the Docker runtime.

The rules (k8s.io/kubernetes pkg/kubelet/kubelet_pods.go makeEnvironmentVariables,
pkg/kubelet/container/helpers.go ExpandContainerCommandAndArgs,
third_party/forked/golang/expansion/expand.go): an env entry's `value` expands `$(NAME)`
against the entries before it, `$$` escapes; values from a ConfigMap, a Secret, a
fieldRef or envFrom are used as written; command and args expand against the env list.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml

# Prints its env and argv as JSON lines, then waits for SIGTERM and exits 0.
PRINT_ENV = """
import json, os, signal, sys
print("ENV " + json.dumps(dict(os.environ), sort_keys=True), flush=True)
print("ARGV " + json.dumps(sys.argv[1:]), flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""

ARGS = ["$(EARLY)", "$(TOKEN)", "$(CM_MODE)", "$$(EARLY)", "$(LATER)", "$(MISSING)", "$(HOSTNAME)"]


def env_manifests(directory: Path, image: str, port: int) -> Path:
    """A Deployment (one replica, a LoadBalancer Service) with a ConfigMap and a Secret
    whose values hold `$(EARLY)`, read through envFrom, configMapKeyRef and secretKeyRef."""
    directory.mkdir(parents=True, exist_ok=True)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"MODE": "$(EARLY)-cm", "PLAIN": "cm"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "data": {"token": base64.b64encode(b"$(EARLY)-secret").decode()},
    }
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "command": ["python3", "-c", PRINT_ENV],
        "args": ARGS,
        "ports": [{"name": "http", "containerPort": port}],
        "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "EARLY", "value": "e"},
            {
                "name": "FROM_CM",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}},
            },
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "JOINED",
                "value": "$(EARLY)+$(TOKEN)+$(CM_PLAIN)+$(NAME)+$$(EARLY)+$(LATER)",
            },
            {"name": "LATER", "value": "l"},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "env"}},
            "template": {
                "metadata": {"labels": {"app": "env"}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "app"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "env"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }
    docs = [config_map, secret, deployment, service]
    (directory / "app.yml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


def printed(log: str) -> tuple[dict[str, str], list[str]] | None:
    """The env and argv the app printed, once both lines are in `log`."""
    env = argv = None
    for line in log.splitlines():
        if line.startswith("ENV "):
            env = json.loads(line[4:])
        elif line.startswith("ARGV "):
            argv = json.loads(line[5:])
    return (env, argv) if env is not None and argv is not None else None


def check(env: dict[str, str], argv: list[str], pod_name: str) -> None:
    """What Kubernetes gives the container of `env_manifests`."""
    # From a ConfigMap, a Secret or envFrom: as written, `$(EARLY)` and all.
    assert env["CM_MODE"] == "$(EARLY)-cm", env
    assert env["FROM_CM"] == "$(EARLY)-cm", env
    assert env["TOKEN"] == "$(EARLY)-secret", env
    assert env["NAME"] == pod_name
    # A value: expanded against what came before it (envFrom and valueFrom included,
    # their values not expanded again), `$$` escaped, a later name left as written.
    assert env["JOINED"] == f"e+$(EARLY)-secret+cm+{pod_name}+$(EARLY)+$(LATER)", env
    # Args: against the env list; HOSTNAME is the runtime's, not in that list.
    assert argv == [
        "e",
        "$(EARLY)-secret",
        "$(EARLY)-cm",
        "$(EARLY)",
        "l",
        "$(MISSING)",
        "$(HOSTNAME)",
    ]
