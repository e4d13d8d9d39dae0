"""A container's environment and its command and args as the kubelet makes them: the one
place both runtimes (processes, lab.images; Docker, lab.docker_runtime) take them from.

The rules, from k8s.io/kubernetes:

- pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables: envFrom's variables first, then
  env's in order (lab.manifest puts them in that order, an env name winning). Only an env
  entry's `value` is expanded, against the variables defined before it in that list;
  a value from `valueFrom` (fieldRef, configMapKeyRef, secretKeyRef) or from `envFrom`
  is used exactly as it is, `$(...)` and all.
- pkg/kubelet/container/helpers.go, ExpandContainerCommandAndArgs: `command` and `args`
  expand against the container's whole env list from above; the image's ENTRYPOINT and
  CMD are never expanded.
- third_party/forked/golang/expansion/expand.go, Expand: `$(NAME)` becomes NAME's value;
  a name not defined stays as written; `$$` is an escaped `$`; any other `$` stays.

Service-link variables (`<SERVICE>_SERVICE_HOST`, ...) are not made: the lab's pods
reach Services by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from lab.manifest import Container

# What a fieldRef to metadata.namespace gives: the lab runs its pods in one namespace.
NAMESPACE = "default"


def expand(value: str, variables: Mapping[str, str]) -> str:
    """`$(NAME)` references in `value` expanded from `variables`, as expansion.Expand does:
    an unknown name stays `$(NAME)`, `$$` is `$`, an unclosed `$(` and a lone `$` stay."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            rest = value[cursor + 1 :]
            if rest[0] == "$":  # an escaped operator
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:  # incomplete reference: kept as written
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(variables.get(name, f"$({name})"))
                    advance = close + 1
            else:  # not a reference: the operator and the character after it stay
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(value[checkpoint:])
    return "".join(out)


def manifest_env(
    container: Container,
    pod_name: str,
    pod_ip: str,
    rewrite: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """The container's env list from its manifest, in order: a `value` expanded against
    the variables before it, a `valueFrom` or `envFrom` value as it is. `rewrite` edits
    each resulting value (the lab points the in-cluster `influxdb:8086` at its own)."""
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": pod_ip}
    env: dict[str, str] = {}
    for var in container.env:
        if var.field_ref is not None:
            value = fields[var.field_ref]
        elif var.literal:  # configMapKeyRef, secretKeyRef, envFrom
            value = var.value or ""
        else:
            value = expand(var.value or "", env)
        if rewrite is not None:
            value = rewrite(value)
        env[var.name] = value
    return env


def _expand_all(values: Sequence[str] | None, env: Mapping[str, str]) -> tuple[str, ...] | None:
    return None if values is None else tuple(expand(v, env) for v in values)


def command_and_args(
    container: Container, env: Mapping[str, str]
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """The container's `command` and `args`, each `$(NAME)` expanded against `env` (the
    container's `manifest_env`); None where the manifest sets none, so the image's
    ENTRYPOINT or CMD applies."""
    return _expand_all(container.command, env), _expand_all(container.args, env)
