"""Kubernetes manifests, as far as the lab runs them: a directory of plain YAML with
Deployments, Services, ConfigMaps and Secrets; one Deployment is under test.

Parsing validates everything the lab will use before anything starts, and every error
names the file and the field it is about
(`spec.template.spec.containers[0].readinessProbe.periodSeconds`), so a typo in a
manifest fails in a second instead of half-way through a rollout. A field the lab does not
model is refused (it would change what a cluster does), unless it cannot change what the
lab measures (resources, securityContext, scheduling hints): those are listed in the notes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import reprlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest the lab cannot run; the message names the file and the field."""


# The longest value an error quotes, in characters: an error is one line to read, not
# the value (which YAML aliases can make gigabytes long from a few hundred bytes).
QUOTE_LIMIT = 200
# Limits on what a YAML file may make the loader build, checked while the parser's
# nodes are composed, before any Python value exists. Aliases may stand for this many
# nodes and characters per document (a Kubernetes object is at most about 1.5 MB: etcd's
# request limit), and mappings and lists nest this deep (a manifest nests about 15).
MAX_ALIAS_EXPANSION = 1_000_000
MAX_DEPTH = 100

_QUOTING = reprlib.Repr()
_QUOTING.maxlevel = 3
_QUOTING.maxdict = _QUOTING.maxlist = _QUOTING.maxtuple = _QUOTING.maxset = 6
_QUOTING.maxstring = _QUOTING.maxother = _QUOTING.maxlong = 80


def shortened(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text`, cut at `limit` characters with how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` for an error message, at most `limit` characters (and a count of
    the rest). A list or mapping is shown a few levels and items deep (reprlib), so
    quoting a huge value costs no more than quoting a small one."""
    text = repr(value) if isinstance(value, str) else _QUOTING.repr(value)
    return shortened(text, limit)


class _TooBig(yaml.YAMLError):
    """A YAML document past the loader's limits, with where the parser was."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark

    def __str__(self) -> str:
        if self.mark is None:
            return self.problem
        return f"line {self.mark.line + 1}, column {self.mark.column + 1}: {self.problem}"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses, while composing nodes, a document whose
    aliases stand for more than MAX_ALIAS_EXPANSION nodes and characters (a "billion
    laughs" bomb: each level an alias list of the one before), an alias inside the node
    it names (a recursive value), and nesting deeper than MAX_DEPTH. The constructor,
    which would build the values, runs only on a document within those limits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # Each composed node's size with every alias in it expanded: 1 per node plus
        # the length of each scalar. Keyed by id(): the nodes live until the document
        # is built, and an alias's node is the very node its anchor named.
        self._sizes: dict[int, int] = {}
        self._expanded = 0  # what the document's aliases stand for, so far
        self._depth = 0

    def compose_document(self) -> yaml.Node | None:
        self._sizes, self._expanded, self._depth = {}, 0, 0
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            anchor = str(getattr(event, "anchor", ""))
            target = self.anchors.get(anchor)
            if target is not None:  # an unknown anchor: the composer's own error
                size = self._sizes.get(id(target))
                if size is None:
                    raise _TooBig(
                        f"alias *{shortened(anchor, 40)} is inside the node &"
                        f"{shortened(anchor, 40)} it names (a value that contains itself)",
                        event.start_mark,
                    )
                self._expanded += size
                if self._expanded > MAX_ALIAS_EXPANSION:
                    raise _TooBig(
                        f"the aliases of this document stand for more than "
                        f"{MAX_ALIAS_EXPANSION:,} nodes and characters (an alias bomb?); "
                        "refused before building it",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooBig(
                f"mappings and lists nested more than {MAX_DEPTH} deep",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        assert node is not None
        self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return 1 + len(node.value)
        if isinstance(node, yaml.SequenceNode):
            return 1 + sum(self._sizes[id(child)] for child in node.value)
        assert isinstance(node, yaml.MappingNode)
        return 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, and what (its message repeats the line with a
    caret under it, over several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        return f"line {mark.line + 1}, column {mark.column + 1}: {shortened(what)}"
    return shortened(" ".join(str(exc).split()), 1000)


def read_yaml(path: Path, what: str = "a manifest") -> list[Any]:
    """Every document of a YAML file, or a ManifestError naming the file: not a regular
    file, not readable, not UTF-8, not YAML, or past the loader's limits."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not {what} file")
    if path.exists() and not path.is_file():
        # A FIFO or device named *.yml: reading it could block forever.
        raise ManifestError(f"{path}: not a regular file, so not {what} file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start : exc.start + 1]
        raise ManifestError(
            f"{path}: not UTF-8 text (byte {byte!r} at offset {exc.start}); YAML is UTF-8"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return list(yaml.load_all(text, Loader=_BoundedLoader))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ManifestError(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise plain errors for some bad values: an integer of
        # more than 4300 digits, a date like 2020-13-45, an empty !!timestamp.
        raise ManifestError(
            f"{path}: not valid YAML: a value cannot be read: {quoted(str(exc))}"
        ) from None


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
    # A value from a ConfigMap or Secret: used as it is, never $(VAR)-expanded (the
    # kubelet expands only `value`: pkg/kubelet/kubelet_pods.go makeEnvironmentVariables).
    literal: bool = False


@dataclass(frozen=True)
class Mount:
    """A volume mounted into the container. The lab gives each mounted volume a directory
    of the pod's own (`pods/<pod>/volumes/<volume>`), which survives container restarts
    as in a cluster, and maps the mount path to it in the command, args, env values,
    workingDir and exec commands of the manifest."""

    path: str  # mountPath, absolute
    volume: str
    kind: str  # "emptyDir", "configMap" or "secret"
    files: tuple[tuple[str, str], ...] = ()  # (relative path, content) of a configMap/secret
    mode: int | None = None  # defaultMode


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
    startup: Probe | None = None
    post_start: Handler | None = None
    mounts: tuple[Mount, ...] = ()

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
    # The pod spec as read, for what only a container runtime applies (securityContext,
    # resources, volumes: lab.container_config), taken from this template, not re-read.
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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
            rolling.at("maxUnavailable"),
            f"must not be greater than 100%, got {quoted(unavailable)}",
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
    type: str = "ClusterIP"
    selector: dict[str, str] = field(default_factory=dict)
    ports: tuple[tuple[int, int | str], ...] = ()  # every (port, targetPort)

    def selects(self, deployment: Deployment) -> bool:
        labels = deployment.template.labels
        return bool(self.selector) and all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True)
class Supporting:
    """A Deployment next to the one under test: run as one pod without load, or replaced
    by a part the lab provides itself (`replaced_by`)."""

    deployment: Deployment
    services: tuple[Service, ...]
    source: str
    replaced_by: str | None = None


# Images of dependencies the lab runs itself (image name -> the lab's part).
LAB_PROVIDED = {"influxdb": "influxdb"}


@dataclass(frozen=True)
class Manifests:
    deployment: Deployment
    service: Service | None
    sources: tuple[Path, ...]
    notes: tuple[str, ...] = ()
    supporting: tuple[Supporting, ...] = ()

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

    def __init__(
        self, source: str, path: str, data: object, notes: list[str] | None = None
    ) -> None:
        self.source = source
        self.path = path
        # Shared by every sub-mapping of one document: fields accepted but not modelled.
        self.notes: list[str] = notes if notes is not None else []
        if not isinstance(data, dict):
            self.fail(path, f"must be a mapping, got {type(data).__name__}")
        assert isinstance(data, dict)
        self.data: dict[str, Any] = data

    def fail(self, path: str, message: str) -> None:
        # The path holds keys as the file wrote them, and a key can be any length.
        raise ManifestError(f"{self.source}: {shortened(path)}: {shortened(message, 1000)}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def only(
        self,
        modelled: Collection[str],
        inert: Collection[str] = (),
        refused: dict[str, str] | None = None,
    ) -> None:
        """Refuse every field the lab does not model, naming it. `inert` fields cannot
        change what the lab measures on one machine; they are accepted with a note."""
        for key in self.data:
            if key in modelled:
                continue
            if key in inert:
                self.notes.append(f"{self.source}: {self.at(key)}: not modelled, no effect here")
                continue
            reason = (refused or {}).get(key, "is not modelled by the lab")
            self.fail(self.at(key), reason)

    def sub(self, key: str, required: bool = False) -> _Fields | None:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(self.at(key), "is required")
            return None
        return _Fields(self.source, self.at(key), self.data[key], self.notes)

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(self.at(key), "is required")
            return default
        if not isinstance(value, str):
            self.fail(self.at(key), f"must be a string, got {quoted(value)}")
        return str(value)

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            self.fail(self.at(key), f"must be true or false, got {quoted(value)}")
        return bool(value)

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            self.fail(self.at(key), f"must be a number >= {minimum:g}, got {quoted(value)}")
        return float(value)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(self.at(key), f"must be an integer >= {minimum}, got {quoted(value)}")
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
            f"must be an integer or a whole percentage like '25%', got {quoted(value)}",
        )
        raise AssertionError  # unreachable: fail() raises

    def int_or_str(self, key: str, required: bool = False) -> int | str:
        value = self.data.get(key)
        if value is None and required:
            self.fail(self.at(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(self.at(key), f"must be a port number or name, got {quoted(value)}")
        assert isinstance(value, int | str)
        return value

    def str_list(self, key: str) -> tuple[str, ...] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(self.at(key), f"must be a list of strings, got {quoted(value)}")
        return tuple(value)

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, dict):
            self.fail(self.at(key), f"must be a mapping, got {quoted(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, str | int | float) or isinstance(v, bool):
                self.fail(f"{self.at(key)}.{k}", f"must be a string, got {quoted(v)}")
            out[str(k)] = str(v)
        return out

    def items(self, key: str) -> list[_Fields]:
        value = self.data.get(key) or []
        if not isinstance(value, list):
            self.fail(self.at(key), f"must be a list, got {quoted(value)}")
        return [
            _Fields(self.source, f"{self.at(key)}[{i}]", v, self.notes) for i, v in enumerate(value)
        ]


# Probe fields: core/v1 Probe (https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#Probe).
_PROBE_TIMING = {
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
}
_PROBE_ACTIONS = {"httpGet", "tcpSocket", "exec", "grpc"}


def _probe(f: _Fields) -> Probe:
    f.only(
        _PROBE_TIMING | _PROBE_ACTIONS,
        refused={
            "terminationGracePeriodSeconds": "a probe-level grace period is not modelled by "
            "the lab (the pod's terminationGracePeriodSeconds applies)"
        },
    )
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
        sub.only({"command"})
        command = sub.str_list("command")
        if not command:
            sub.fail(sub.at("command"), "is required")
        assert command is not None
        return Probe(action, command=command, **timing)  # type: ignore[arg-type]
    sub.only(
        {"port", "path", "host", "scheme"} if action == "httpGet" else {"port", "host"},
        refused={"httpHeaders": "custom probe headers are not modelled by the lab"},
    )
    scheme = sub.text("scheme", "HTTP") or "HTTP"
    if scheme != "HTTP":
        sub.fail(sub.at("scheme"), f"only HTTP is supported, got {quoted(scheme)}")
    return Probe(
        action,
        port=sub.int_or_str("port", required=True),
        path=sub.text("path", "/") or "/",
        host=sub.text("host"),
        **timing,  # type: ignore[arg-type]
    )


def _handler(f: _Fields) -> Handler:
    f.only({"exec", "sleep", "httpGet", "tcpSocket"})
    actions = [a for a in ("exec", "sleep", "httpGet", "tcpSocket") if a in f.data]
    if len(actions) != 1:
        f.fail(f.path, "needs exactly one of exec, sleep, httpGet")
    action = actions[0]
    if action == "tcpSocket":
        f.fail(f.at("tcpSocket"), "tcpSocket lifecycle handlers are deprecated and not supported")
    sub = f.sub(action, required=True)
    assert sub is not None
    if action == "exec":
        sub.only({"command"})
        command = sub.str_list("command")
        if not command:
            sub.fail(sub.at("command"), "is required")
        assert command is not None
        return Handler("exec", command=command)
    if action == "sleep":
        sub.only({"seconds"})
        if "seconds" not in sub.data:
            sub.fail(sub.at("seconds"), "is required")
        return Handler("sleep", seconds=float(sub.integer("seconds", 0)))
    sub.only(
        {"port", "path", "host", "scheme"},
        refused={"httpHeaders": "custom hook headers are not modelled by the lab"},
    )
    scheme = sub.text("scheme", "HTTP") or "HTTP"
    if scheme != "HTTP":
        sub.fail(sub.at("scheme"), f"only HTTP is supported, got {quoted(scheme)}")
    return Handler(
        "httpGet",
        port=sub.int_or_str("port", required=True),
        path=sub.text("path", "/") or "/",
        host=sub.text("host"),
    )


@dataclass(frozen=True)
class _Data:
    """A ConfigMap's or Secret's keys, and where it was defined."""

    kind: str
    source: str
    data: dict[str, str]


class _Sources:
    """The ConfigMaps and Secrets of the directory, for env and envFrom."""

    def __init__(self, where: str = "the manifests") -> None:
        self.config_maps: dict[str, _Data] = {}
        self.secrets: dict[str, _Data] = {}
        self.where = where  # where a missing one was looked for, for the error

    def lookup(self, kind: str, f: _Fields, key: str = "name") -> _Data | None:
        """The ConfigMap or Secret a reference names; None if missing and optional.

        A missing one that is not optional keeps the container from starting in a
        cluster (CreateContainerConfigError, pkg/kubelet/kubelet_pods.go): refused here."""
        name = f.text(key, required=True) or ""
        table = self.config_maps if kind == "ConfigMap" else self.secrets
        found = table.get(name)
        if found is None and not f.flag("optional"):
            f.fail(
                f.at(key),
                f"{kind} {quoted(name)} is not in {self.where} (add it, or set optional: true)",
            )
        return found


def _env(f: _Fields, sources: _Sources) -> EnvVar | None:
    f.only({"name", "value", "valueFrom"})
    name = f.text("name", required=True)
    assert name is not None
    if "valueFrom" in f.data:
        value_from = f.sub("valueFrom", required=True)
        assert value_from is not None
        value_from.only(
            {"fieldRef", "configMapKeyRef", "secretKeyRef"},
            refused={"resourceFieldRef": "resource limits are not modelled by the lab"},
        )
        sources_named = [
            k for k in ("fieldRef", "configMapKeyRef", "secretKeyRef") if k in value_from.data
        ]
        if len(sources_named) != 1:
            value_from.fail(
                value_from.path, "needs exactly one of fieldRef, configMapKeyRef, secretKeyRef"
            )
        for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            key_ref = value_from.sub(key)
            if key_ref is None:
                continue
            key_ref.only({"name", "key", "optional"})
            data = sources.lookup(kind, key_ref)
            wanted = key_ref.text("key", required=True) or ""
            if data is None:
                return None  # optional and missing: the variable is not set
            if wanted not in data.data:
                if key_ref.flag("optional"):
                    return None
                key_ref.fail(
                    key_ref.at("key"),
                    f"{kind} {quoted(key_ref.data['name'])} has no key {quoted(wanted)}",
                )
            return EnvVar(name, value=data.data[wanted], literal=True)
        ref = value_from.sub("fieldRef")
        if ref is None:
            value_from.fail(value_from.path, "needs one of fieldRef, configMapKeyRef, secretKeyRef")
        assert ref is not None
        ref.only({"fieldPath", "apiVersion"})
        field_path = ref.text("fieldPath", required=True)
        if field_path not in ("metadata.name", "metadata.namespace", "status.podIP"):
            ref.fail(ref.at("fieldPath"), f"{quoted(field_path)} is not supported by the lab")
        return EnvVar(name, field_ref=field_path)
    value = f.data.get("value", "")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        f.fail(f.at("value"), f"must be a string, got {quoted(value)}")
    return EnvVar(name, value=str(value))


def _env_from(f: _Fields, sources: _Sources) -> list[EnvVar]:
    """`envFrom`: every key of a ConfigMap or Secret, with an optional prefix."""
    f.only({"configMapRef", "secretRef", "prefix"})
    refs = [(k, kind) for k, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret"))]
    present = [(k, kind) for k, kind in refs if k in f.data]
    if len(present) != 1:
        f.fail(f.path, "needs exactly one of configMapRef, secretRef")
    key, kind = present[0]
    ref = f.sub(key, required=True)
    assert ref is not None
    ref.only({"name", "optional"})
    data = sources.lookup(kind, ref)
    prefix = f.text("prefix", "") or ""
    if data is None:
        return []
    return [EnvVar(prefix + k, value=v, literal=True) for k, v in data.data.items()]


# Container fields (core/v1 Container): the lab models these ...
_CONTAINER_MODELLED = {
    "name",
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "ports",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "lifecycle",
    "workingDir",
    "volumeMounts",
}
# ... accepts these, which change nothing on one machine without cgroups or users ...
_CONTAINER_INERT = {
    "resources",
    "securityContext",
    "imagePullPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "resizePolicy",
}
# ... and refuses the rest, these with a reason.
_CONTAINER_REFUSED = {
    "restartPolicy": "a container restartPolicy makes a sidecar, which the lab does not model",
    "stdin": "an attached stdin is not modelled by the lab",
    "stdinOnce": "an attached stdin is not modelled by the lab",
    "tty": "a TTY is not modelled by the lab",
    "volumeDevices": "block devices are not modelled by the lab",
}


def _container(f: _Fields, sources: _Sources, volumes: dict[str, Mount]) -> Container:
    f.only(_CONTAINER_MODELLED, _CONTAINER_INERT, _CONTAINER_REFUSED)
    ports: dict[str, int] = {}
    mounts: list[Mount] = []
    for p in f.items("ports"):
        p.only(
            {"containerPort", "name", "protocol"},
            refused={
                "hostPort": "host ports are not modelled by the lab",
                "hostIP": "host ports are not modelled by the lab",
            },
        )
        number = p.integer("containerPort", 0, minimum=1)
        protocol = p.text("protocol", "TCP")
        if protocol != "TCP":
            p.fail(p.at("protocol"), f"only TCP is supported, got {quoted(protocol)}")
        ports[p.text("name") or str(number)] = number
    for mount in f.items("volumeMounts"):
        mount.only(
            {"name", "mountPath", "readOnly"},
            refused={
                "subPath": "subPath mounts are not modelled by the lab",
                "subPathExpr": "subPath mounts are not modelled by the lab",
                "mountPropagation": "mount propagation is not modelled by the lab",
                "recursiveReadOnly": "is not modelled by the lab",
            },
        )
        volume = mount.text("name", required=True) or ""
        path = mount.text("mountPath", required=True) or ""
        if not path.startswith("/") or path.rstrip("/") == "":
            mount.fail(
                mount.at("mountPath"), f"must be an absolute path below /, got {quoted(path)}"
            )
        if volume not in volumes:
            mount.fail(
                mount.at("name"), f"no volume named {quoted(volume)} in spec.template.spec.volumes"
            )
        mounts.append(dataclasses.replace(volumes[volume], path=path.rstrip("/")))
    readiness = f.sub("readinessProbe")
    liveness = f.sub("livenessProbe")
    startup = f.sub("startupProbe")
    lifecycle = f.sub("lifecycle")
    if lifecycle is not None:
        lifecycle.only(
            {"preStop", "postStart"},
            refused={"stopSignal": "a custom stop signal is not modelled by the lab (SIGTERM)"},
        )
    pre_stop = lifecycle.sub("preStop") if lifecycle else None
    post_start = lifecycle.sub("postStart") if lifecycle else None
    image = f.text("image", required=True)
    assert image is not None
    env: list[EnvVar] = []
    # envFrom first, then env: a name in env wins (the kubelet's order,
    # pkg/kubelet/kubelet_pods.go makeEnvironmentVariables;
    # https://kubernetes.io/docs/tasks/inject-data-application/define-environment-variable-container/).
    for item in f.items("envFrom"):
        env.extend(_env_from(item, sources))
    for item in f.items("env"):
        var = _env(item, sources)
        if var is not None:
            env.append(var)
    container = Container(
        name=f.text("name", required=True) or "",
        image=image,
        command=f.str_list("command"),
        args=f.str_list("args"),
        env=tuple(env),
        ports=ports,
        readiness=_probe(readiness) if readiness else None,
        liveness=_probe(liveness) if liveness else None,
        pre_stop=_handler(pre_stop) if pre_stop else None,
        working_dir=f.text("workingDir"),
        startup=_probe(startup) if startup else None,
        post_start=_handler(post_start) if post_start else None,
        mounts=tuple(mounts),
    )
    for probe, key in (
        (container.readiness, "readinessProbe"),
        (container.liveness, "livenessProbe"),
        (container.startup, "startupProbe"),
    ):
        named = probe is not None and probe.action != "exec" and isinstance(probe.port, str)
        if (
            named
            and probe is not None
            and not str(probe.port).isdigit()
            and probe.port not in ports
        ):
            f.fail(
                f"{f.at(key)}.{probe.action}.port", f"no container port named {quoted(probe.port)}"
            )
    return container


# Pod spec fields (core/v1 PodSpec), as for containers: modelled, inert, refused.
_POD_MODELLED = {"containers", "terminationGracePeriodSeconds", "volumes", "restartPolicy"}
_POD_INERT = {
    "securityContext",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
    "priority",
    "imagePullSecrets",
    "schedulerName",
    "enableServiceLinks",
    "dnsPolicy",
}
_POD_REFUSED = {
    "initContainers": "init containers (and sidecars) are not modelled by the lab: "
    "one container per pod",
    # A pod with readiness gates is Ready only once something sets each gate's condition
    # (https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/#pod-readiness-gate);
    # the lab has no such controller, so its pods would never be Ready.
    "readinessGates": "readiness gates are not modelled by the lab: nothing would set "
    "their conditions, so no pod would become Ready",
    "hostNetwork": "the host network is not modelled by the lab (each pod has its own IP)",
    "hostPID": "the host PID namespace is not modelled by the lab",
    "hostIPC": "the host IPC namespace is not modelled by the lab",
    "hostUsers": "user namespaces are not modelled by the lab",
    "shareProcessNamespace": "a shared process namespace is not modelled by the lab",
    "ephemeralContainers": "ephemeral containers are not modelled by the lab",
    "hostAliases": "/etc/hosts entries are not modelled by the lab",
    "dnsConfig": "pod DNS settings are not modelled by the lab",
    "activeDeadlineSeconds": "an active deadline is not modelled by the lab",
    "runtimeClassName": "runtime classes are not modelled by the lab",
    "hostname": "a pod hostname is not modelled by the lab (HOSTNAME is the pod's name)",
    "subdomain": "pod DNS names are not modelled by the lab",
    "nodeName": "the lab has one node: nodeName is not modelled",
    "schedulingGates": "scheduling gates are not modelled by the lab (pods never schedule)",
    "resourceClaims": "dynamic resources are not modelled by the lab",
}
# Volumes the lab gives each pod (see Mount): an emptyDir is an empty directory, a
# configMap or secret one holds a file per key (or per `items` entry).
_VOLUME_KINDS = ("emptyDir", "configMap", "secret")


def _volumes(tspec: _Fields, sources: _Sources) -> dict[str, Mount]:
    volumes: dict[str, Mount] = {}
    for v in tspec.items("volumes"):
        name = v.text("name", required=True) or ""
        kinds = [k for k in v.data if k != "name"]
        if len(kinds) != 1:
            v.fail(v.path, "needs exactly one volume source")
        kind = kinds[0]
        if kind not in _VOLUME_KINDS:
            v.fail(
                v.at(kind),
                f"{kind} volumes are not modelled by the lab (only emptyDir, configMap and "
                "secret, as directories of the pod's own)",
            )
        if name in volumes:
            v.fail(v.at("name"), f"volume {quoted(name)} is defined twice")
        source = v.sub(kind) or _Fields(v.source, v.at(kind), {}, v.notes)
        if kind == "emptyDir":
            source.only({"medium", "sizeLimit"})
            volumes[name] = Mount("", name, kind)
            continue
        volumes[name] = _data_volume(source, kind, name, sources)
    return volumes


def _data_volume(f: _Fields, kind: str, name: str, sources: _Sources) -> Mount:
    """A configMap or secret volume: a file per key, or per `items` entry (key -> path),
    as the kubelet's volume plugins project them (pkg/volume/configmap, pkg/volume/secret)."""
    ref = "name" if kind == "configMap" else "secretName"
    f.only({ref, "items", "defaultMode", "optional"})
    data = sources.lookup("ConfigMap" if kind == "configMap" else "Secret", f, ref)
    keys = dict(data.data) if data is not None else {}
    files: dict[str, str] = {}
    items = f.items("items")
    if not items:
        files = keys
    for item in items:
        item.only({"key", "path", "mode"})
        key = item.text("key", required=True) or ""
        path = item.text("path", required=True) or ""
        parts = Path(path).parts
        if path.startswith("/") or ".." in parts or not parts:
            item.fail(item.at("path"), f"must be a relative path without '..', got {quoted(path)}")
        if key not in keys:
            if data is None or f.flag("optional"):
                continue
            item.fail(item.at("key"), f"{data.kind} {quoted(f.data[ref])} has no key {quoted(key)}")
        files[path] = keys[key]
    mode = f.integer("defaultMode", 0o644) if "defaultMode" in f.data else None
    return Mount("", name, kind, tuple(sorted(files.items())), mode)


def _pod_template(
    meta: _Fields,
    spec: _Fields,
    sources: _Sources,
    owner: str,
    modelled: Collection[str] = _POD_MODELLED,
    inert: Collection[str] = _POD_INERT,
) -> PodTemplate:
    """A pod's metadata and spec, as a Deployment's template holds them or as the API
    server has a pod (`pod_from_api`)."""
    spec.only(modelled, inert, _POD_REFUSED)
    restart = spec.text("restartPolicy", "Always")
    if restart != "Always":
        # A Deployment's pods must restart always (pkg/apis/apps/validation:
        # ValidatePodTemplateSpecForReplicaSet allows only Always).
        spec.fail(spec.at("restartPolicy"), f"{owner} needs Always, got {quoted(restart)}")
    containers = spec.items("containers")
    if len(containers) != 1:
        spec.fail(
            spec.at("containers"), f"the lab runs exactly one container, got {len(containers)}"
        )
    volumes = _volumes(spec, sources)
    return PodTemplate(
        labels=meta.str_map("labels"),
        annotations=meta.str_map("annotations"),
        container=_container(containers[0], sources, volumes),
        termination_grace=spec.number("terminationGracePeriodSeconds", 30),
        spec=spec.data,
    )


def pod_from_api(
    pod: dict[str, Any],
    config_maps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
    notes: list[str],
) -> PodTemplate:
    """A pod as the API server has it (bound to a node, every default filled in), read
    by the same rules as a Deployment's template. `config_maps` and `secrets` hold the
    pod's namespace's objects its env and volumes name; fields the lab does not model
    but the API server always sets are accepted (`notes` gets none for them)."""
    meta = pod.get("metadata") or {}
    source = f"pod {meta.get('namespace', '')}/{meta.get('name', '')}"
    sources = _Sources(f"namespace {quoted(meta.get('namespace', ''))}")
    for name, data in config_maps.items():
        sources.config_maps[name] = _Data("ConfigMap", source, data)
    for name, data in secrets.items():
        sources.secrets[name] = _Data("Secret", source, data)
    return _pod_template(
        _Fields(source, "metadata", meta, notes),
        _Fields(source, "spec", pod.get("spec"), notes),
        sources,
        "a ReplicaSet's pod",
        _POD_MODELLED | {"nodeName"},
        _POD_INERT | _POD_API_DEFAULTS,
    )


# Pod spec fields the API server sets on every pod (defaults and admission), which change
# nothing the lab runs.
_POD_API_DEFAULTS = {"preemptionPolicy", "securityContext", "serviceAccount"}


def _deployment(f: _Fields, sources: _Sources) -> Deployment:
    f.only({"apiVersion", "kind", "metadata", "spec", "status"})
    meta = f.sub("metadata", required=True)
    spec = f.sub("spec", required=True)
    assert meta is not None and spec is not None
    spec.only(
        {"replicas", "selector", "template", "strategy", "minReadySeconds"},
        {"revisionHistoryLimit", "progressDeadlineSeconds"},
        {"paused": "a paused Deployment does not roll out: not modelled by the lab"},
    )
    name = meta.text("name", required=True) or ""
    selector = spec.sub("selector", required=True)
    assert selector is not None
    selector.only(
        {"matchLabels"}, refused={"matchExpressions": "the lab supports matchLabels only"}
    )
    match = selector.str_map("matchLabels")
    if not match:
        selector.fail(selector.at("matchLabels"), "is required (the lab supports matchLabels)")
    template = spec.sub("template", required=True)
    assert template is not None
    template.only({"metadata", "spec"})
    tmeta = template.sub("metadata", required=True)
    tspec = template.sub("spec", required=True)
    assert tmeta is not None and tspec is not None
    pod_template = _pod_template(tmeta, tspec, sources, "a Deployment")
    for key, value in match.items():
        if pod_template.labels.get(key) != value:
            tmeta.fail(
                tmeta.at("labels"), f"does not match spec.selector.matchLabels {key}={value}"
            )
    strategy_f = spec.sub("strategy")
    strategy = Strategy()
    if strategy_f is not None:
        strategy_f.only({"type", "rollingUpdate"})
        kind = strategy_f.text("type", "RollingUpdate")
        if kind == "Recreate":
            strategy = Strategy("Recreate", 0, 0)
        elif kind == "RollingUpdate":
            rolling = strategy_f.sub("rollingUpdate")
            if rolling is not None:
                rolling.only({"maxSurge", "maxUnavailable"})
                strategy = Strategy(
                    "RollingUpdate",
                    rolling.int_or_percent("maxSurge", "25%"),
                    rolling.int_or_percent("maxUnavailable", "25%"),
                )
                _check_rolling(rolling, strategy)
        else:
            strategy_f.fail(
                strategy_f.at("type"), f"must be RollingUpdate or Recreate, got {quoted(kind)}"
            )
    return Deployment(
        name=name,
        replicas=spec.integer("replicas", 1),
        selector=match,
        template=pod_template,
        strategy=strategy,
        min_ready_seconds=spec.number("minReadySeconds", 0),
    )


def _service(f: _Fields) -> Service:
    meta = f.sub("metadata", required=True)
    spec = f.sub("spec", required=True)
    assert meta is not None and spec is not None
    spec.only(
        {"selector", "ports", "type"},
        {
            "externalTrafficPolicy",
            "internalTrafficPolicy",
            "loadBalancerIP",
            "loadBalancerSourceRanges",
            "loadBalancerClass",
            "allocateLoadBalancerNodePorts",
            "ipFamilies",
            "ipFamilyPolicy",
            "clusterIP",
            "clusterIPs",
            "publishNotReadyAddresses",
        },
        {"sessionAffinity": "session affinity is not modelled by the lab (round robin)"},
    )
    kind = spec.text("type", "ClusterIP") or "ClusterIP"
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer"):
        spec.fail(
            spec.at("type"), f"must be ClusterIP, NodePort or LoadBalancer, got {quoted(kind)}"
        )
    ports = spec.items("ports")
    if not ports:
        spec.fail(spec.at("ports"), "needs at least one port")
    pairs: list[tuple[int, int | str]] = []
    for item in ports:
        item.only({"name", "protocol", "port", "targetPort", "nodePort", "appProtocol"})
        port = item.integer("port", 0, minimum=1)
        target = item.data.get("targetPort", port)
        if isinstance(target, bool) or not isinstance(target, int | str):
            item.fail(item.at("targetPort"), f"must be a port number or name, got {quoted(target)}")
        protocol = item.text("protocol", "TCP")
        if protocol != "TCP":
            item.fail(item.at("protocol"), f"only TCP is supported, got {quoted(protocol)}")
        pairs.append((port, target))
    return Service(
        meta.text("name", required=True) or "",
        pairs[0][0],
        pairs[0][1],
        type=kind,
        selector=spec.str_map("selector"),
        ports=tuple(pairs),
    )


def _data(f: _Fields, kind: str) -> dict[str, str]:
    """A ConfigMap's `data`, or a Secret's `data` (base64) and `stringData`."""
    f.only(
        {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"},
        refused={"binaryData": "binary data cannot be passed as environment variables"},
    )
    data = f.str_map("data")
    if kind == "Secret":
        decoded: dict[str, str] = {}
        for key, value in data.items():
            try:
                decoded[key] = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                f.fail(f"{f.at('data')}.{key}", f"is not base64 of UTF-8 text: {exc}")
        data = {**decoded, **f.str_map("stringData")}
    elif "stringData" in f.data:
        f.fail(f.at("stringData"), "is a Secret field; a ConfigMap has data")
    return data


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.suffix in (".yml", ".yaml"))
        except OSError as exc:
            raise ManifestError(f"{path}: cannot list the directory: {exc.strerror}") from None
        if not files:
            raise ManifestError(f"{path}: no .yml or .yaml files in this directory")
        for file in files:
            if not file.is_file():
                # Refused, not skipped: a manifest the user meant to be read.
                kind = "a directory" if file.is_dir() else "not a regular file"
                raise ManifestError(f"{file}: {kind}, not a manifest file")
        return files
    if not path.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return [path]


def _documents(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    documents: list[tuple[str, dict[str, Any]]] = []
    for file in files:
        loaded = read_yaml(file)
        for index, doc in enumerate(loaded):
            if doc is None:
                continue
            source = f"{file} (document {index + 1})" if len(loaded) > 1 else str(file)
            if not isinstance(doc, dict):
                raise ManifestError(f"{source}: must be a mapping, got {type(doc).__name__}")
            if doc.get("kind") == "List":
                # `kubectl get -o yaml` output: the objects are its items.
                items = doc.get("items") or []
                if not isinstance(items, list):
                    raise ManifestError(f"{source}: items: must be a list")
                for i, item in enumerate(items):
                    if not isinstance(item, dict):
                        raise ManifestError(f"{source}: items[{i}]: must be a mapping")
                    documents.append((f"{source} items[{i}]", item))
                continue
            documents.append((source, doc))
    return documents


def raw_documents(files: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every document of the files as plain YAML data, with where it came from (for
    applying them to a real API server as they are)."""
    return _documents(files)


def _pick(
    path: Path,
    deployments: list[tuple[Deployment, str]],
    services: list[Service],
    wanted: str | None,
) -> int:
    """The index of the Deployment under test: `--deployment`, the only one, or the one
    the load enters through (the one Service of type LoadBalancer or NodePort selects)."""
    names = [d.name for d, _ in deployments]
    if wanted is not None:
        if wanted not in names:
            raise ManifestError(
                f"{path}: --deployment {wanted}: no such Deployment (found: "
                f"{', '.join(names) or 'none'})"
            )
        return names.index(wanted)
    if not deployments:
        raise ManifestError(f"{path}: needs a Deployment, found none")
    if len(deployments) == 1:
        return 0
    front = {
        i
        for s in services
        if s.type in ("LoadBalancer", "NodePort")
        for i, (d, _) in enumerate(deployments)
        if s.selects(d)
    }
    if len(front) == 1:
        return front.pop()
    raise ManifestError(
        f"{path}: {len(deployments)} Deployments ({', '.join(names)}) and no single one "
        "behind a LoadBalancer or NodePort Service: name the one under test with "
        "--deployment NAME"
    )


def load(path: Path, deployment: str | None = None) -> Manifests:
    """Read a manifest file or a directory of them. One Deployment is under test
    (`deployment`, see `_pick`); the others run beside it (`Manifests.supporting`)."""
    files = _files(path)
    notes: list[str] = []
    # A kustomization file is kustomize's input, not a manifest (and often has no kind):
    # the lab reads the plain files beside it, unpatched, and says so.
    for file in [f for f in files if f.name in ("kustomization.yaml", "kustomization.yml")]:
        files.remove(file)
        notes.append(f"{file}: kustomize is not applied; the plain YAML files are read as they are")
    sources = _Sources()
    by_kind: dict[str, list[_Fields]] = {}
    for source, doc in _documents(files):
        f = _Fields(source, "", doc, notes)
        kind = f.text("kind", required=True) or ""
        by_kind.setdefault(kind, []).append(f)
    # ConfigMaps and Secrets first: env and envFrom in any file may name them.
    for kind, table in (("ConfigMap", sources.config_maps), ("Secret", sources.secrets)):
        for f in by_kind.pop(kind, []):
            meta = f.sub("metadata", required=True)
            assert meta is not None
            name = meta.text("name", required=True) or ""
            if name in table:
                meta.fail(meta.at("name"), f"{kind} {quoted(name)} is also in {table[name].source}")
            table[name] = _Data(kind, f.source, _data(f, kind))
    deployments = [(_deployment(f, sources), f.source) for f in by_kind.pop("Deployment", [])]
    services = []
    for f in by_kind.pop("Service", []):
        spec = f.data.get("spec")
        if isinstance(spec, dict) and spec.get("type") == "ExternalName":
            # A DNS alias to something outside the cluster: nothing for the lab to run.
            notes.append(f"{f.source}: ExternalName Service not modelled; values naming it stay")
            continue
        services.append(_service(f))
    for kind, fs in sorted(by_kind.items()):
        notes += [f"{f.source}: ignoring kind {kind}" for f in fs]
    seen: dict[str, str] = {}
    for d, source in deployments:
        if d.name in seen:
            raise ManifestError(f"{source}: Deployment {quoted(d.name)} is also in {seen[d.name]}")
        seen[d.name] = source
    index = _pick(path, deployments, services, deployment)
    chosen = deployments[index][0]
    matching = [s for s in services if s.selects(chosen)]
    # The Service the load enters through: a LoadBalancer or NodePort one if there is.
    matching.sort(key=lambda s: s.type == "ClusterIP")
    service = matching[0] if matching else None
    container = chosen.template.container
    if service is not None:
        target = service.target_port
        if isinstance(target, str) and not target.isdigit() and target not in container.ports:
            raise ManifestError(
                f"{path}: Service {service.name} spec.ports[0].targetPort: "
                f"no container port named {quoted(target)} in Deployment {chosen.name}"
            )
    elif container.first_port is None:
        raise ManifestError(
            f"{path}: Deployment {chosen.name} spec.template.spec.containers[0].ports: "
            "needs a containerPort when there is no Service"
        )
    supporting = []
    for i, (d, source) in enumerate(deployments):
        if i == index:
            continue
        from_image = LAB_PROVIDED.get(image_name(d.template.container.image))
        supporting.append(
            Supporting(d, tuple(s for s in services if s.selects(d)), source, from_image)
        )
    return Manifests(chosen, service, tuple(files), tuple(notes), tuple(supporting))


def image_name(reference: str) -> str:
    """`registry.example.com/team/influxdb:1.8@sha256:...` -> `influxdb`."""
    ref = reference.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]
