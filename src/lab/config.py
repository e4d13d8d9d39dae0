"""One typed configuration for one experiment; the CLI only fills it in."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab import lag
from lab.lag import DEFAULT_LAG, Lag

SCENARIOS = ("rollout-restart", "scale", "steady", "update")
LB_MODES = ("tcp", "http", "https", "h2")
HTTP_REUSE = ("never", "safe", "aggressive", "always")  # HAProxy's http-reuse modes
REPO = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A bad option; the message names it."""


def _project_file(relative: str) -> Path:
    """A project file: from the current directory if there, else from the source tree."""
    here = Path(relative)
    return here if here.exists() else REPO / relative


def default_image_map() -> Path:
    return _project_file("deploy/lab-images.yml")


def default_k6_script() -> Path:
    return _project_file("deploy/k6/load-test.js")


def parse_lag(text: str) -> Lag:
    """`--endpoint-lag`'s forms (lab.lag): each change draws its own lag."""
    try:
        return lag.parse_lag(text)
    except lag.LagError as exc:
        raise ConfigError(f"--endpoint-lag: {exc}") from None


TIMED_KINDS = ("influx-down", "influx-stall")
INSTANT_KINDS = ("container-crash", "node-failure", "pod-hang", "lb-restart")
KINDS = TIMED_KINDS + INSTANT_KINDS
# The node controller's defaults (see faults.py for the rules and their sources).
NODE_MONITOR_GRACE = 40.0
UNREACHABLE_TOLERATION = 300.0
MAX_NODES = 20  # each node is an HAProxy of its own


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # seconds after the action starts, or after the `on` event
    seconds: float = 0.0  # how long a timed fault lasts
    on: str | None = None  # a pod event kind: the first one after the action starts

    def __str__(self) -> str:
        when = f"{self.on}+{self.at:g}" if self.on else f"{self.at:g}"
        return f"{self.kind}@{when}" + (f":{self.seconds:g}" if self.seconds else "")


# Rollout events a fault can be scheduled at (the first of its kind after the action).
FAULT_EVENTS = (
    "created",
    "ready",
    "lb-added",
    "deleted",
    "prestop-started",
    "sigterm",
    "lb-removed",
)


def parse_fault(text: str) -> Fault:
    """`influx-down@2:5` -> Fault("influx-down", 2.0, 5.0); `node-failure@3` -> instant."""
    kind, sep, when = text.partition("@")
    if not sep:
        raise ConfigError(f"--fault: expected KIND@WHEN[:SECONDS], got {text!r}")
    if kind == "pod-kill":
        # The old name meant two different things: refused rather than guessed.
        raise ConfigError(
            "--fault: pod-kill is split in two: container-crash (the container dies and "
            "the kubelet restarts it in the same pod) or node-failure (the pod's node "
            "stops answering; the pod is replaced only after the unreachable toleration)"
        )
    if kind not in KINDS:
        raise ConfigError(f"--fault: KIND must be one of {', '.join(KINDS)}, got {kind!r}")
    at_text, colon, seconds_text = when.partition(":")
    on: str | None = None
    if at_text[:1].isalpha():
        # KIND@EVENT[+OFFSET]: at the first such event after the action starts.
        on, _, at_text = at_text.partition("+")
        at_text = at_text or "0"
        if on not in FAULT_EVENTS:
            raise ConfigError(
                f"--fault: WHEN must be seconds or one of {', '.join(FAULT_EVENTS)}"
                f"[+SECONDS], got {text!r}"
            )
    try:
        at = float(at_text)
        seconds = float(seconds_text) if colon else 0.0
    except ValueError:
        raise ConfigError(f"--fault: WHEN and SECONDS must be numbers, got {text!r}") from None
    if not 0 <= at <= 3600:
        raise ConfigError(f"--fault: WHEN must be between 0 and 3600 s, got {text!r}")
    if kind in TIMED_KINDS and not 0 < seconds <= 600:
        raise ConfigError(f"--fault: {kind} needs SECONDS between 0 and 600, e.g. {kind}@2:5")
    if kind in INSTANT_KINDS and colon:
        raise ConfigError(f"--fault: {kind} takes no SECONDS, e.g. {kind}@2")
    return Fault(kind, at, seconds, on)


# A header name is an HTTP token (RFC 9110 5.6.2); a method is one too.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_BODY_BYTES = 16 * 1024 * 1024  # k6 holds the body in memory once per VU


@dataclass(frozen=True)
class LoadRequest:
    """The request the lab's k6 script sends instead of calc's sum (`--request`,
    `--header`, `--body`, `--body-file`): exactly these, no default header or body."""

    method: str
    path: str  # from the Service's root, with any query string
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    body_file: Path | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def is_calc_sum(self) -> bool:
        """calc's own request: the only one that writes calc's operation log."""
        return self.method == "POST" and self.path.partition("?")[0] == "/sum"


def parse_request(text: str) -> tuple[str, str]:
    """`--request 'GET /health'` -> ("GET", "/health")."""
    parts = text.split()
    if len(parts) != 2 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith("/"):
        raise ConfigError(
            f"--request: expected 'METHOD /PATH' (e.g. 'GET /health'), got {text[:200]!r}"
        )
    return parts[0].upper(), parts[1]


def parse_header(text: str) -> tuple[str, str]:
    """`--header 'Accept: text/plain'` -> ("Accept", "text/plain")."""
    name, colon, value = text.partition(":")
    if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
        raise ConfigError(
            f"--header: expected 'Name: value' (e.g. 'Accept: text/plain'), got {text[:200]!r}"
        )
    return name, value.strip()


# The kubelet's container runtimes (lab.runtime): process groups, or Docker containers.
RUNTIMES = ("process", "docker")
# The controllers that run the experiment: the lab's own, or a real control plane.
CLUSTERS = ("lab", "local")


@dataclass(frozen=True)
class LabConfig:
    manifests: Path
    scenario: str = "rollout-restart"
    to: int | None = None  # the scale scenario's target
    update_to: Path | None = None  # the update scenario's new manifests (its template)
    vus: int = 50
    lb: str = "tcp"
    lb_retries: int = 0
    http_reuse: str = "safe"  # the L7 modes' sharing of idle server connections
    endpoint_lag: Lag = DEFAULT_LAG
    warmup: float = 10.0
    cooldown: float = 10.0
    duration: float = 30.0  # the steady scenario's load time after warm-up
    out: Path = Path("out/lab")
    replicas: int | None = None  # overrides the Deployment's replicas
    image_map: Path | None = None
    k6_script: Path | None = None
    action_timeout: float = 600.0
    ready_timeout: float = 180.0
    conn_reuse: bool = False
    request_timeout: str | None = None  # k6 duration, e.g. "10s"
    seed: int | None = None
    progress: bool = True
    faults: tuple[Fault, ...] = ()  # `--fault KIND@WHEN[:SECONDS]`, see faults.py
    deployment: str | None = None  # the Deployment under test, when there are several
    runtime: str = "process"  # the kubelet's container runtime: process or docker
    # The process runtime's pod addresses: on loopback, or a network namespace per pod.
    pod_network: str = "loopback"
    # node-failure: when the node controller marks the node's pods not ready, and when
    # the taint manager evicts them (after that, on top).
    node_monitor_grace: float = NODE_MONITOR_GRACE
    unreachable_toleration: float = UNREACHABLE_TOLERATION
    # Nodes the pods spread over, each with its own proxy and its own drawn lags, behind
    # one L4 balancer (a cloud load balancer to a NodePort).
    nodes: int = 1
    # Whose controllers run the experiment: the lab's own ("lab"), or a real control
    # plane the run starts (`--cluster local`, lab.kube.experiment), or any cluster a
    # kubeconfig names (`--cluster kubeconfig[:CONTEXT]`, lab.kube.remote).
    cluster: str = "lab"
    # --cluster local: the nodes' kubelet, the lab's own or the real one (lab.kube.real_run).
    kubelet: str = "lab"
    kubeconfig: Path | None = None  # --cluster kubeconfig: the file (default as kubectl's)
    entry: str | None = None  # --cluster kubeconfig: the URL the load goes to
    influx_url: str | None = None  # --cluster kubeconfig: an InfluxDB the pods and the lab reach
    # The load: None sends calc's sum (the lab's k6 script's default); a script of your own
    # sends what it sends. The status that counts as ok, for any script.
    request: LoadRequest | None = None
    expect_status: int = 200
    # `--quick` (lab.quick): the run's manifests are a copy in OUT/quick-manifests with
    # shorter probe delays and periods; quick_changes names what --quick changed of the
    # options (the warm-up and cool-down it shortened).
    quick: bool = False
    quick_changes: tuple[str, ...] = ()

    def _validate_pod_network(self) -> None:
        from lab import pod_netns

        if self.pod_network not in pod_netns.POD_NETWORKS:
            raise ConfigError(
                f"--pod-network: must be one of {', '.join(pod_netns.POD_NETWORKS)}, "
                f"got {self.pod_network!r}"
            )
        if self.pod_network == "netns":
            if self.runtime != "process" or self.cluster != "lab":
                raise ConfigError(
                    "--pod-network netns: only for the process runtime with the lab's own "
                    "controllers (a Docker pod has its namespace already)"
                )
            if (why := pod_netns.unavailable()) is not None:
                raise ConfigError(f"--pod-network netns: {why}")

    @property
    def image_map_path(self) -> Path:
        return self.image_map or default_image_map()

    @property
    def k6_script_path(self) -> Path:
        return self.k6_script or default_k6_script()

    def validate(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(
                f"--scenario: must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}"
            )
        if self.scenario == "scale" and self.to is None:
            raise ConfigError("--to: the scale scenario needs the target replica count")
        if self.to is not None and self.to < 0:
            raise ConfigError(f"--to: must be >= 0, got {self.to}")
        if self.scenario != "scale" and self.to is not None:
            raise ConfigError("--to: only the scale scenario takes a target")
        if (self.scenario == "update") != (self.update_to is not None):
            raise ConfigError("--update-to: the update scenario, and only it, needs new manifests")
        if not 1 <= self.vus <= 2000:
            raise ConfigError(f"--vus: must be between 1 and 2000, got {self.vus}")
        if self.lb not in LB_MODES:
            raise ConfigError(f"--lb: must be one of {', '.join(LB_MODES)}, got {self.lb!r}")
        if self.http_reuse not in HTTP_REUSE:
            raise ConfigError(
                f"--http-reuse: must be one of {', '.join(HTTP_REUSE)}, got {self.http_reuse!r}"
            )
        if not 0 <= self.lb_retries <= 10:
            raise ConfigError(f"--lb-retries: must be between 0 and 10, got {self.lb_retries}")
        for name, value in (
            ("--warmup", self.warmup),
            ("--cooldown", self.cooldown),
            ("--duration", self.duration),
            ("--action-timeout", self.action_timeout),
            ("--ready-timeout", self.ready_timeout),
            ("--node-monitor-grace", self.node_monitor_grace),
            ("--unreachable-toleration", self.unreachable_toleration),
        ):
            if value < 0:
                raise ConfigError(f"{name}: must be >= 0 seconds, got {value}")
        if not 1 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes: must be between 1 and {MAX_NODES}, got {self.nodes}")
        if self.replicas is not None and not 0 <= self.replicas <= 250:
            raise ConfigError(f"--replicas: must be between 0 and 250, got {self.replicas}")
        if not self.image_map_path.exists():
            raise ConfigError(f"--image-map: {self.image_map_path} does not exist")
        for fault in self.faults:
            parse_fault(str(fault))  # the same checks as the option's
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"--runtime: must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )
        self._validate_pod_network()
        hangs = [f for f in self.faults if f.kind == "pod-hang"]
        if self.runtime == "docker" and hangs and os.geteuid() != 0:
            # The engine's pause (the cgroup freezer) is no hang: the engine thaws a
            # paused container it signals, so the kubelet's SIGTERM would be handled.
            raise ConfigError(
                f"--fault {hangs[0]}: on --runtime docker a hang is SIGSTOP to every "
                "process of the container from the host, which needs root"
            )
        if not self.k6_script_path.exists():
            raise ConfigError(f"--k6-script: {self.k6_script_path} does not exist")
        self._validate_load()
        from lab.kube import remote_config

        if self.cluster not in CLUSTERS and not remote_config.is_kubeconfig(self.cluster):
            raise ConfigError(
                f"--cluster: must be one of {', '.join(CLUSTERS)} or kubeconfig[:CONTEXT], "
                f"got {self.cluster!r}"
            )
        if self.cluster == "local":
            self._validate_local()
        if self.kubelet not in ("lab", "real"):
            raise ConfigError(f"--kubelet: must be lab or real, got {self.kubelet!r}")
        if self.kubelet == "real" and (self.cluster != "local" or self.faults):
            raise ConfigError("--kubelet real: only with --cluster local, and no --fault yet")
        if remote_config.is_kubeconfig(self.cluster):
            remote_config.validate(self)
        elif (self.kubeconfig, self.entry, self.influx_url) != (None, None, None):
            raise ConfigError(
                "--kubeconfig, --entry and --influx-url: only with --cluster kubeconfig[:CONTEXT]"
            )

    @property
    def own_k6_script(self) -> bool:
        """A k6 script other than the lab's own."""
        return self.k6_script_path.resolve() != default_k6_script().resolve()

    def _validate_load(self) -> None:
        if not 100 <= self.expect_status <= 599:
            raise ConfigError(
                f"--expect-status: must be an HTTP status (100-599), got {self.expect_status}"
            )
        request = self.request
        if request is None:
            return
        if self.own_k6_script:
            raise ConfigError(
                f"--request: the lab's k6 script sends it; {self.k6_script_path} sends its own "
                "requests (see src/lab/README.md, 'Load: the request and your own k6 script')"
            )
        parse_request(str(request))
        for name, value in request.headers:
            parse_header(f"{name}: {value}")
            if name.lower() == "x-request-id":
                raise ConfigError(
                    "--header: x-request-id is the script's own, a new id per request (the "
                    "accounting matches requests to operations by it)"
                )
        if request.body is not None and request.body_file is not None:
            raise ConfigError("--body and --body-file: give one of them")
        if request.body_file is not None:
            path = request.body_file
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(f"--body-file: {path} {what}")
            if path.stat().st_size > MAX_BODY_BYTES:
                raise ConfigError(
                    f"--body-file: {path} is {path.stat().st_size} bytes; at most "
                    f"{MAX_BODY_BYTES} (k6 keeps it in memory)"
                )

    def _validate_local(self) -> None:
        """What `--cluster local` does not run yet, refused before anything starts."""
        unsupported = [
            (self.lb != "tcp", f"--lb {self.lb}"),
            (self.lb_retries != 0, "--lb-retries"),
        ]
        for refused, what in unsupported:
            if refused:
                raise ConfigError(
                    f"{what}: not available with --cluster local yet (every scenario, "
                    "--lb tcp, every fault)"
                )
