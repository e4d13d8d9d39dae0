"""Kubernetes manifests, as far as the lab runs them: one Deployment and its Service.

Parsing validates everything the lab will use before anything starts, and every error
names the field it is about (`spec.template.spec.containers[0].readinessProbe.periodSeconds`),
so a typo in a manifest fails in a second instead of half-way through a rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest the lab cannot run; the message names the file and the field."""


@dataclass(frozen=True)
class Probe:
    """A readiness or liveness probe, with the Kubernetes defaults."""

    action: str  # "httpGet", "tcpSocket" or "exec"
    port: int | str = 0  # a number or a container port name (httpGet, tcpSocket)
    path: str = "/"
    host: str | None = None
    scheme: str = "HTTP"
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Handler:
    """A lifecycle handler (preStop): exec a command, sleep, or GET a URL."""

    action: str  # "exec", "sleep" or "httpGet"
    command: tuple[str, ...] = ()
    seconds: float = 0.0
    port: int | str = 0
    path: str = "/"
    host: str | None = None


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None  # with $(VAR) references, expanded per pod
    field_ref: str | None = None  # metadata.name, metadata.namespace, status.podIP


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...] | None
    args: tuple[str, ...] | None
    env: tuple[EnvVar, ...]
    ports: dict[str, int]  # name (or str(port) when unnamed) -> containerPort
    readiness: Probe | None
    liveness: Probe | None
    pre_stop: Handler | None
    working_dir: str | None = None

    @property
    def first_port(self) -> int | None:
        return next(iter(self.ports.values()), None)

    def resolve_port(self, port: int | str) -> int:
        """A probe's or Service's port: a number, or the name of a container port."""
        if isinstance(port, int):
            return port
        if port.isdigit():
            return int(port)
        return self.ports[port]


@dataclass(frozen=True)
class PodTemplate:
    labels: dict[str, str]
    annotations: dict[str, str]
    container: Container
    termination_grace: float = 30.0


@dataclass(frozen=True)
class Strategy:
    type: str = "RollingUpdate"  # or "Recreate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"

    def resolve(self, replicas: int) -> tuple[int, int]:
        """(maxSurge, maxUnavailable) as pod counts: surge rounds up, unavailable down,
        and both zero would deadlock, so unavailable becomes 1 (as Kubernetes does)."""
        surge = _scaled(self.max_surge, replicas, round_up=True)
        unavailable = _scaled(self.max_unavailable, replicas, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        return surge, unavailable


def _scaled(value: int | str, replicas: int, round_up: bool) -> int:
    # intstr.GetScaledValueFromIntOrPercent, called by ResolveFenceposts
    # (kubernetes pkg/controller/deployment/util/deployment_util.go): an integer percent
    # of replicas, rounded up for maxSurge and down for maxUnavailable. In integers:
    # in floats 28 % of 25 is 0.28 * 25 = 7.000000000000001, which would round up to 8.
    if isinstance(value, int):
        return value
    whole, rest = divmod(int(value[:-1]) * replicas, 100)
    return whole + 1 if round_up and rest else whole


def _check_rolling(rolling: _Fields, strategy: Strategy) -> None:
    """The API server's checks (ValidateRollingUpdateDeployment, kubernetes
    pkg/apis/apps/validation/validation.go): maxUnavailable at most 100 %, and not both 0."""
    surge, unavailable = strategy.max_surge, strategy.max_unavailable
    if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
        rolling.fail(
            rolling.at("maxUnavailable"), f"must not be greater than 100%, got {unavailable!r}"
        )
    if int(str(surge).rstrip("%")) == 0 and int(str(unavailable).rstrip("%")) == 0:
        rolling.fail(rolling.at("maxUnavailable"), "may not be 0 when maxSurge is 0")


@dataclass(frozen=True)
class Deployment:
    name: str
    replicas: int
    selector: dict[str, str]
    template: PodTemplate
    strategy: Strategy = field(default_factory=Strategy)
    min_ready_seconds: float = 0.0


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    target_port: int | str


@dataclass(frozen=True)
class Manifests:
    deployment: Deployment
    service: Service | None
    sources: tuple[Path, ...]
    notes: tuple[str, ...] = ()

    @property
    def target_port(self) -> int:
        """The container port the Service sends to (its targetPort, or the first port)."""
        container = self.deployment.template.container
        if self.service is not None:
            return container.resolve_port(self.service.target_port)
        port = container.first_port
        assert port is not None  # checked in load()
        return port


class _Fields:
    """Reads typed values from a YAML mapping, raising errors that name the field path."""

    def __init__(self, source: str, path: str, data: object) -> None:
        self.source = source
        self.path = path
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping, got {type(data).__name__}")
        assert isinstance(data, dict)
        self.data: dict[str, Any] = data

    def fail(self, path: str, message: str) -> None:
        raise ManifestError(f"{self.source}: {path}: {message}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def sub(self, key: str, required: bool = False) -> _Fields | None:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(self.at(key), "is required")
            return None
        return _Fields(self.source, self.at(key), self.data[key])

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(self.at(key), "is required")
            return default
        if not isinstance(value, str):
            self.fail(self.at(key), f"must be a string, got {value!r}")
        return str(value)

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            self.fail(self.at(key), f"must be a number >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(self.at(key), f"must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def int_or_percent(self, key: str, default: int | str) -> int | str:
        value = self.data.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        # The API server takes a whole percent only (IsValidPercent: ^[0-9]+%$, in
        # k8s.io/apimachinery/pkg/util/validation): "12.5%" is refused, not rounded.
        if isinstance(value, str) and value.endswith("%"):
            digits = value[:-1]
            if digits.isascii() and digits.isdigit():
                return value
        self.fail(
            self.at(key),
            f"must be an integer or a whole percentage like '25%', got {value!r}",
        )
        raise AssertionError  # unreachable: fail() raises

    def int_or_str(self, key: str, required: bool = False) -> int | str:
        value = self.data.get(key)
        if value is None and required:
            self.fail(self.at(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(self.at(key), f"must be a port number or name, got {value!r}")
        assert isinstance(value, int | str)
        return value

    def str_list(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(self.at(key), f"must be a list of strings, got {value!r}")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            self.fail(self.at(key), f"must be a mapping, got {value!r}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                self.fail(f"{self.at(key)}.{k}", f"must be a string, got {v!r}")
            out[str(k)] = str(v)
        return out

    def items(self, key: str) -> list[_Fields]:
        value = self.data.get(key) or []
        if not isinstance(value, list):
            self.fail(self.at(key), f"must be a list, got {value!r}")
        return [_Fields(self.source, f"{self.at(key)}[{i}]", v) for i, v in enumerate(value)]


def _probe(f: _Fields) -> Probe:
    timing = {
        "initial_delay": f.number("initialDelaySeconds", 0),
        "period": f.number("periodSeconds", 10, minimum=1),
        "timeout": f.number("timeoutSeconds", 1, minimum=1),
        "success_threshold": f.integer("successThreshold", 1, minimum=1),
        "failure_threshold": f.integer("failureThreshold", 3, minimum=1),
    }
    actions = [a for a in ("httpGet", "tcpSocket", "exec", "grpc") if a in f.data]
    if len(actions) != 1:
        f.fail(f.path, "needs exactly one of httpGet, tcpSocket, exec")
    action = actions[0]
    if action == "grpc":
        f.fail(f.at("grpc"), "grpc probes are not supported by the lab")
    sub = f.sub(action, required=True)
    assert sub is not None
    if action == "exec":
        command = sub.str_list("command")
        if not command:
            sub.fail(sub.at("command"), "is required")
        assert command is not None
        return Probe(action, command=command, **timing)  # type: ignore[arg-type]
    scheme = sub.text("scheme", "HTTP") or "HTTP"
    if scheme != "HTTP":
        sub.fail(sub.at("scheme"), f"only HTTP is supported, got {scheme!r}")
    return Probe(
        action,
        port=sub.int_or_str("port", required=True),
        path=sub.text("path", "/") or "/",
        host=sub.text("host"),
        **timing,  # type: ignore[arg-type]
    )


def _handler(f: _Fields) -> Handler:
    actions = [a for a in ("exec", "sleep", "httpGet", "tcpSocket") if a in f.data]
    if len(actions) != 1:
        f.fail(f.path, "needs exactly one of exec, sleep, httpGet")
    action = actions[0]
    if action == "tcpSocket":
        f.fail(f.at("tcpSocket"), "tcpSocket lifecycle handlers are deprecated and not supported")
    sub = f.sub(action, required=True)
    assert sub is not None
    if action == "exec":
        command = sub.str_list("command")
        if not command:
            sub.fail(sub.at("command"), "is required")
        assert command is not None
        return Handler("exec", command=command)
    if action == "sleep":
        if "seconds" not in sub.data:
            sub.fail(sub.at("seconds"), "is required")
        return Handler("sleep", seconds=float(sub.integer("seconds", 0)))
    return Handler(
        "httpGet",
        port=sub.int_or_str("port", required=True),
        path=sub.text("path", "/") or "/",
        host=sub.text("host"),
    )


def _env(f: _Fields) -> EnvVar:
    name = f.text("name", required=True)
    assert name is not None
    if "valueFrom" in f.data:
        value_from = f.sub("valueFrom", required=True)
        assert value_from is not None
        ref = value_from.sub("fieldRef")
        if ref is None:
            value_from.fail(value_from.path, "only fieldRef is supported by the lab")
        assert ref is not None
        field_path = ref.text("fieldPath", required=True)
        if field_path not in ("metadata.name", "metadata.namespace", "status.podIP"):
            ref.fail(ref.at("fieldPath"), f"{field_path!r} is not supported by the lab")
        return EnvVar(name, field_ref=field_path)
    value = f.data.get("value", "")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        f.fail(f.at("value"), f"must be a string, got {value!r}")
    return EnvVar(name, value=str(value))


def _container(f: _Fields) -> Container:
    ports: dict[str, int] = {}
    for p in f.items("ports"):
        number = p.integer("containerPort", 0, minimum=1)
        protocol = p.text("protocol", "TCP")
        if protocol != "TCP":
            p.fail(p.at("protocol"), f"only TCP is supported, got {protocol!r}")
        ports[p.text("name") or str(number)] = number
    readiness = f.sub("readinessProbe")
    liveness = f.sub("livenessProbe")
    lifecycle = f.sub("lifecycle")
    pre_stop = lifecycle.sub("preStop") if lifecycle else None
    image = f.text("image", required=True)
    assert image is not None
    container = Container(
        name=f.text("name", required=True) or "",
        image=image,
        command=f.str_list("command"),
        args=f.str_list("args"),
        env=tuple(_env(e) for e in f.items("env")),
        ports=ports,
        readiness=_probe(readiness) if readiness else None,
        liveness=_probe(liveness) if liveness else None,
        pre_stop=_handler(pre_stop) if pre_stop else None,
        working_dir=f.text("workingDir"),
    )
    for probe, key in (
        (container.readiness, "readinessProbe"),
        (container.liveness, "livenessProbe"),
    ):
        named = probe is not None and probe.action != "exec" and isinstance(probe.port, str)
        if (
            named
            and probe is not None
            and not str(probe.port).isdigit()
            and probe.port not in ports
        ):
            f.fail(f"{f.at(key)}.{probe.action}.port", f"no container port named {probe.port!r}")
    return container


def _deployment(f: _Fields) -> Deployment:
    meta = f.sub("metadata", required=True)
    spec = f.sub("spec", required=True)
    assert meta is not None and spec is not None
    name = meta.text("name", required=True) or ""
    selector = spec.sub("selector", required=True)
    assert selector is not None
    match = selector.str_map("matchLabels")
    if not match:
        selector.fail(selector.at("matchLabels"), "is required (the lab supports matchLabels)")
    template = spec.sub("template", required=True)
    assert template is not None
    tmeta = template.sub("metadata", required=True)
    tspec = template.sub("spec", required=True)
    assert tmeta is not None and tspec is not None
    labels = tmeta.str_map("labels")
    for key, value in match.items():
        if labels.get(key) != value:
            tmeta.fail(
                tmeta.at("labels"), f"does not match spec.selector.matchLabels {key}={value}"
            )
    containers = tspec.items("containers")
    if len(containers) != 1:
        tspec.fail(
            tspec.at("containers"), f"the lab runs exactly one container, got {len(containers)}"
        )
    container = _container(containers[0])
    if tspec.items("initContainers"):
        tspec.fail(tspec.at("initContainers"), "are not supported by the lab")
    strategy_f = spec.sub("strategy")
    strategy = Strategy()
    if strategy_f is not None:
        kind = strategy_f.text("type", "RollingUpdate")
        if kind == "Recreate":
            strategy = Strategy("Recreate", 0, 0)
        elif kind == "RollingUpdate":
            rolling = strategy_f.sub("rollingUpdate")
            if rolling is not None:
                strategy = Strategy(
                    "RollingUpdate",
                    rolling.int_or_percent("maxSurge", "25%"),
                    rolling.int_or_percent("maxUnavailable", "25%"),
                )
                _check_rolling(rolling, strategy)
        else:
            strategy_f.fail(
                strategy_f.at("type"), f"must be RollingUpdate or Recreate, got {kind!r}"
            )
    return Deployment(
        name=name,
        replicas=spec.integer("replicas", 1),
        selector=match,
        template=PodTemplate(
            labels=labels,
            annotations=tmeta.str_map("annotations"),
            container=container,
            termination_grace=tspec.number("terminationGracePeriodSeconds", 30),
        ),
        strategy=strategy,
        min_ready_seconds=spec.number("minReadySeconds", 0),
    )


def _service(f: _Fields) -> Service:
    meta = f.sub("metadata", required=True)
    spec = f.sub("spec", required=True)
    assert meta is not None and spec is not None
    ports = spec.items("ports")
    if not ports:
        spec.fail(spec.at("ports"), "needs at least one port")
    port = ports[0].integer("port", 0, minimum=1)
    target = ports[0].data.get("targetPort", port)
    if isinstance(target, bool) or not isinstance(target, int | str):
        ports[0].fail(ports[0].at("targetPort"), f"must be a port number or name, got {target!r}")
    return Service(meta.text("name", required=True) or "", port, target)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml"))
        if not files:
            raise ManifestError(f"{path}: no .yml or .yaml files in this directory")
        return files
    if not path.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return [path]


def load(path: Path) -> Manifests:
    """Read a manifest file or a directory of them; exactly one Deployment must be there."""
    deployments: list[Deployment] = []
    services: list[tuple[Service, dict[str, str]]] = []
    notes: list[str] = []
    files = _files(path)
    for file in files:
        try:
            documents = list(yaml.safe_load_all(file.read_text()))
        except yaml.YAMLError as exc:
            raise ManifestError(f"{file}: not valid YAML: {exc}") from exc
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            source = f"{file} (document {index + 1})"
            f = _Fields(source, "", doc)
            kind = f.text("kind", required=True)
            if kind == "Deployment":
                deployments.append(_deployment(f))
            elif kind == "Service":
                spec = f.sub("spec", required=True)
                assert spec is not None
                services.append((_service(f), spec.str_map("selector")))
            else:
                notes.append(f"{source}: ignoring kind {kind}")
    if len(deployments) != 1:
        raise ManifestError(f"{path}: needs exactly one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    labels = deployment.template.labels
    matching = [s for s, sel in services if sel and all(labels.get(k) == v for k, v in sel.items())]
    service = matching[0] if matching else None
    container = deployment.template.container
    if service is not None:
        target = service.target_port
        if isinstance(target, str) and not target.isdigit() and target not in container.ports:
            raise ManifestError(
                f"{path}: Service {service.name} spec.ports[0].targetPort: "
                f"no container port named {target!r} in Deployment {deployment.name}"
            )
    elif container.first_port is None:
        raise ManifestError(
            f"{path}: Deployment {deployment.name} spec.template.spec.containers[0].ports: "
            "needs a containerPort when there is no Service"
        )
    return Manifests(deployment, service, tuple(files), tuple(notes))
