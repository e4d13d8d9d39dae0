"""The service's one typed config object, the switches that make it up, and the profiles.

A profile (v1..v10) is a named set of switch values; every switch can also be set alone,
by environment variable or CLI option, and those win over the profile:
defaults <- profile <- environment <- command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPLOG_MODES = ("off", "task", "task-graceful", "batch", "batch-graceful")
DEFAULT_PROFILE = "v10"


class ConfigError(ValueError):
    """A switch has a value we cannot use; the message names the switch and its source."""


class Secret:
    """A credential: compares and hashes by value, never shows it in repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_spool_dir() -> str:
    """$TMPDIR/calc-spool, else /tmp/calc-spool. Not tempfile.gettempdir(): it probes for
    a writable directory and raises where there is none (a read-only root without an
    emptyDir on /tmp); the spool's own start then names the directory and what is wrong."""
    return str(Path(os.environ.get("TMPDIR") or "/tmp") / "calc-spool")


@dataclass(frozen=True)
class CalcConfig:
    host: str = "0.0.0.0"
    port: int = 4000
    profile: str = DEFAULT_PROFILE
    slow_math: float = 0.1
    log_level: str = "info"
    max_head_bytes: int = 16 * 1024
    head_timeout: float = 10.0
    # shutdown
    drain: bool = True
    drain_timeout: float | None = None
    readiness_flip: bool = False
    connection_close: bool = False
    pre_close_delay: float = 0.0
    quiet_period: float = 0.0
    quiet_max: float = 0.0
    grace_period: float = 30.0
    budget_check: bool = False
    # operation log
    oplog: str = "off"
    task_delay: float = 5.0
    task_timeout: float = 7.0
    batch_size: int = 500
    batch_interval: float = 30.0
    flush_timeout: float = 5.0
    flush_retries: bool = False
    max_buffer: int = 100_000
    influxdb_base_url: str | None = None
    influxdb_db: str = "calc"
    influxdb_username: str | None = None
    influxdb_password: Secret | None = None
    influxdb_password_file: str | None = None
    oplog_file: str = "operations.lp"
    spool: bool = False
    spool_dir: str = dataclasses.field(default_factory=lambda: default_spool_dir())
    pod: str = dataclasses.field(
        default_factory=lambda: os.environ.get("HOSTNAME") or socket.gethostname()
    )


@dataclass(frozen=True)
class Switch:
    """One config field as the outside world sets it."""

    name: str
    kind: str  # "bool", "float", "optional-float", "int", "str", "choice"
    help: str
    env: str
    choices: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _switch(name: str, kind: str, help: str, env: str | None = None, **kw: Any) -> Switch:
    return Switch(name, kind, help, env or f"CALC_{name.upper()}", **kw)


SWITCHES: tuple[Switch, ...] = (
    _switch("host", "str", "address to listen on"),
    _switch("port", "int", "port to listen on"),
    _switch("slow_math", "float", "seconds each sum takes (non-blocking sleep)"),
    _switch("log_level", "choice", "log level", choices=("debug", "info", "warning", "error")),
    _switch("max_head_bytes", "int", "answer 431 to request heads larger than this"),
    _switch(
        "head_timeout",
        "float",
        "answer 408 to a request head, or a body, not complete after this many s",
    ),
    _switch("drain", "bool", "on SIGTERM let in-flight requests finish (off: cut them)"),
    _switch(
        "drain_timeout", "optional-float", "longest wait for in-flight requests (none: no limit)"
    ),
    _switch("readiness_flip", "bool", "GET /ready answers 503 from SIGTERM on"),
    _switch("connection_close", "bool", "responses say Connection: close once draining"),
    _switch("pre_close_delay", "float", "seconds to keep serving after SIGTERM before closing"),
    _switch(
        "quiet_period",
        "float",
        "after the delay, keep serving until no request came for this long (0: off)",
    ),
    _switch("quiet_max", "float", "longest the delay phase may take in all"),
    _switch("grace_period", "float", "seconds from SIGTERM to SIGKILL the service may use"),
    _switch("budget_check", "bool", "check the phases fit the grace period and hold them to it"),
    _switch("oplog", "choice", "operation log mode", choices=OPLOG_MODES),
    _switch("task_delay", "float", "task modes: seconds a task sleeps before writing"),
    _switch("task_timeout", "float", "task-graceful: longest wait for tasks at shutdown"),
    _switch("batch_size", "int", "batch modes: points per write"),
    _switch("batch_interval", "float", "batch modes: seconds between periodic writes"),
    _switch("flush_timeout", "float", "batch-graceful: longest the shutdown flush may take"),
    _switch("flush_retries", "bool", "retry failed writes with backoff and jitter"),
    _switch("max_buffer", "int", "most points held while the database is unreachable"),
    _switch(
        "influxdb_base_url",
        "str",
        "InfluxDB 1.x URL (unset: write to --oplog-file)",
        env="INFLUXDB_BASE_URL",
    ),
    _switch("influxdb_db", "str", "InfluxDB database", env="INFLUXDB_DB"),
    _switch("influxdb_username", "str", "InfluxDB user", env="INFLUXDB_USERNAME"),
    _switch(
        "influxdb_password_file",
        "str",
        "file holding the InfluxDB password (a mounted secret; or env INFLUXDB_PASSWORD)",
        env="INFLUXDB_PASSWORD_FILE",
    ),
    _switch("oplog_file", "str", "line-protocol file used when no InfluxDB URL is set"),
    _switch("spool", "bool", "keep unwritten points in a spool file that survives a kill"),
    _switch("spool_dir", "str", "where the spool lives (a subdirectory per pod and port)"),
    _switch(
        "pod",
        "str",
        "value of the points' pod tag (default: $HOSTNAME, which Kubernetes sets to the pod name)",
        env="CALC_POD",
    ),
)
SWITCH_BY_NAME = {s.name: s for s in SWITCHES}

_TALK = {"drain": True, "oplog": "off"}
PROFILES: dict[str, dict[str, Any]] = {
    "v1": {**_TALK},
    "v2": {**_TALK},
    "v3": {**_TALK},
    "v4": {**_TALK, "drain": False},
    "v5": {**_TALK},
    "v6": {**_TALK, "oplog": "task"},
    "v7": {**_TALK, "oplog": "task-graceful"},
    "v8": {**_TALK, "oplog": "batch"},
    "v9": {**_TALK, "oplog": "batch-graceful"},
    "v10": {
        **_TALK,
        "oplog": "batch-graceful",
        "readiness_flip": True,
        "connection_close": True,
        "quiet_period": 1.0,
        "quiet_max": 10.0,
        "drain_timeout": 8.0,
        "flush_retries": True,
        "budget_check": True,
        "spool": True,
    },
}
PROFILE_NOTES = {
    "v1": "bare app (the manifest starts it through a shell wrapper)",
    "v2": "same app; the manifest adds probes and a rolling update",
    "v3": "same app; the manifest execs it so SIGTERM arrives; drain on",
    "v4": "drain off: in-flight requests are cut at SIGTERM",
    "v5": "same app; the manifest adds a preStop sleep",
    "v6": "a task per sum writes its point after 5 s, not awaited",
    "v7": "tasks awaited at shutdown (7 s)",
    "v8": "points batched (500 / 30 s), buffer dropped at shutdown",
    "v9": "batch flushed at shutdown",
    "v10": "v9 + readiness flip, Connection: close, drain until quiet, retries, budget, spool",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(switch: Switch, raw: str, source: str) -> Any:
    """Turn a string from the environment or the command line into the switch's type."""
    text = raw.strip()
    where = f"{source} {switch.env if source == 'environment variable' else switch.option}"
    try:
        if switch.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError("expected on/off, true/false, yes/no or 1/0")
        if switch.kind == "int":
            return int(text)
        if switch.kind in ("float", "optional-float"):
            if switch.kind == "optional-float" and text.lower() in ("", "none"):
                return None
            value = float(text)
            if not math.isfinite(value):
                raise ValueError("must be a finite number")
            return value
        if switch.kind == "choice" and text.lower() not in switch.choices:
            raise ValueError(f"expected one of {', '.join(switch.choices)}")
        if switch.kind == "choice":
            return text.lower()
        return text
    except ValueError as exc:
        raise ConfigError(f"{where}={raw!r}: {exc}") from None


# Kubernetes gives every pod, for each Service of its namespace, Docker-link style
# variables unless the pod sets `enableServiceLinks: false`: for a Service named calc,
# CALC_SERVICE_HOST, CALC_SERVICE_PORT, and CALC_PORT=tcp://<cluster IP>:<port> (the
# kubelet's service environment variables, "Discovering services" in the Kubernetes
# docs). CALC_PORT is also calc's own switch: a value of that form is the Service's, not
# a port to listen on, and is passed over (the talk's manifests name their Service calc).
SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://[^\s/]+:\d+")


def _service_link(switch: Switch, raw: str) -> bool:
    return switch.name == "port" and SERVICE_LINK.fullmatch(raw.strip()) is not None


def resolve(
    profile: str | None,
    environ: Mapping[str, str],
    cli: Mapping[str, Any],
) -> CalcConfig:
    """defaults <- profile <- environment <- command line, then validated."""
    name = profile or cli.get("profile") or environ.get("CALC_PROFILE") or DEFAULT_PROFILE
    name = name.strip().lower()
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    values: dict[str, Any] = {"profile": name, **PROFILES[name]}
    for switch in SWITCHES:
        raw = environ.get(switch.env)
        if raw is not None and raw != "" and not _service_link(switch, raw):
            values[switch.name] = parse_value(switch, raw, "environment variable")
    for key, value in cli.items():
        if key != "profile" and value is not None:
            values[key] = value
    values.update(_credentials(values, environ))
    config = CalcConfig(**values)
    validate(config)
    return config


def _credentials(values: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """User and password from INFLUXDB_USERNAME / INFLUXDB_PASSWORD(_FILE), or from the
    URL's user info, which is then removed from the URL so it is never logged."""
    found: dict[str, Any] = {}
    url = values.get("influxdb_base_url")
    parts = _split_url(url) if url and "@" in url else None
    # User info lives in the network location only: an '@' in a URL with no '//' (no
    # scheme) or in its path or query is no credential (validate names what is wrong).
    if parts is not None and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        found["influxdb_base_url"] = urllib.parse.urlunsplit(parts._replace(netloc=host))
        if parts.username and not values.get("influxdb_username"):
            found["influxdb_username"] = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            found["influxdb_password"] = Secret(urllib.parse.unquote(parts.password))
    if environ.get("INFLUXDB_PASSWORD"):
        found["influxdb_password"] = Secret(environ["INFLUXDB_PASSWORD"])
    path = values.get("influxdb_password_file")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the InfluxDB password file {path}: {exc.strerror}"
            ) from None
        found["influxdb_password"] = Secret(text.rstrip("\r\n"))
    return found


def _split_url(url: str) -> urllib.parse.SplitResult:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed '[' of an IPv6 address
        raise ConfigError(f"INFLUXDB_BASE_URL {url!r} is not a URL: {exc}") from None


def _url_problems(url: str) -> list[str]:
    """INFLUXDB_BASE_URL (its user info already taken out) must name a host over HTTP."""
    if not url.startswith(("http://", "https://")):
        return [f"INFLUXDB_BASE_URL {url!r} must start with http:// or https://"]
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError as exc:
        return [f"INFLUXDB_BASE_URL {url!r} is not a URL: {exc}"]
    if not host:
        return [f"INFLUXDB_BASE_URL {url!r} names no host"]
    return []


def _pod_problems(pod: str) -> list[str]:
    """The pod name is a tag value of every point and a directory name of the spool."""
    if not pod.strip():
        return ["--pod (CALC_POD, else $HOSTNAME) must not be empty: it tags every point"]
    if any(ord(c) < 32 or c == "\x7f" for c in pod) or "/" in pod:
        return [f"--pod {pod!r} must not contain control characters (newlines) or '/'"]
    return []


def validate(config: CalcConfig) -> None:
    problems: list[str] = []
    if not 0 <= config.port <= 65535:
        problems.append(f"port {config.port} is not in 0..65535")
    for name in (
        "slow_math",
        "pre_close_delay",
        "quiet_period",
        "quiet_max",
        "task_delay",
        "task_timeout",
        "flush_timeout",
    ):
        if getattr(config, name) < 0:
            problems.append(f"{SWITCH_BY_NAME[name].option} must not be negative")
    if config.drain_timeout is not None and config.drain_timeout < 0:
        problems.append("--drain-timeout must not be negative")
    if config.grace_period <= 0:
        problems.append("--grace-period must be positive")
    if config.batch_interval <= 0:
        problems.append("--batch-interval must be positive")
    if config.max_head_bytes < 1024:
        problems.append("--max-head-bytes must be at least 1024")
    if config.head_timeout <= 0:
        problems.append("--head-timeout must be positive")
    if config.batch_size < 1:
        problems.append("--batch-size must be at least 1")
    if config.max_buffer < config.batch_size:
        problems.append("--max-buffer must be at least --batch-size")
    if config.quiet_period > 0 and config.quiet_max < config.quiet_period:
        problems.append("--quiet-max must be at least --quiet-period")
    if config.influxdb_base_url is not None:
        problems.extend(_url_problems(config.influxdb_base_url))
    if (config.influxdb_password is None) != (config.influxdb_username is None):
        problems.append("InfluxDB credentials need both a user and a password")
    problems.extend(_pod_problems(config.pod))
    if problems:
        raise ConfigError("; ".join(problems))
