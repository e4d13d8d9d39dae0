"""The shutdown options every graceful server command shares, each with its environment
variable: `graceful-serve` takes them as options too, the gunicorn worker and the
hypercorn runner read them from the environment."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from graceful.config import DEFAULT_QUIET_EXEMPT, ShutdownConfig, budget_problems


class OptionError(ValueError):
    """A shutdown option or its environment variable has a value we cannot use."""


@dataclass(frozen=True)
class ShutdownOption:
    name: str  # field of ServeShutdown
    flag: str
    env: str
    default: float | str
    help: str


SHUTDOWN_OPTIONS = (
    ShutdownOption(
        "grace_period",
        "--grace-period",
        "GRACEFUL_GRACE_PERIOD",
        30.0,
        "seconds from SIGTERM to SIGKILL (the pod's terminationGracePeriodSeconds); "
        "every phase ends 1 s before",
    ),
    ShutdownOption(
        "pre_close_delay",
        "--pre-close-delay",
        "GRACEFUL_PRE_CLOSE_DELAY",
        0.0,
        "seconds to keep serving after SIGTERM before the quiet period",
    ),
    ShutdownOption(
        "quiet_period",
        "--quiet-period",
        "GRACEFUL_QUIET_PERIOD",
        1.0,
        "then keep serving until no request came for this many seconds (kubelet probes, "
        "told by their User-Agent kube-probe/..., do not count, nor --quiet-exempt paths); "
        "0 = off",
    ),
    ShutdownOption(
        "quiet_max",
        "--quiet-max",
        "GRACEFUL_QUIET_MAX",
        10.0,
        "at most this many seconds of delay and quiet period in all",
    ),
    ShutdownOption(
        "drain_timeout",
        "--drain-timeout",
        "GRACEFUL_DRAIN_TIMEOUT",
        10.0,
        "after closing the listener, wait at most this many seconds for running requests, "
        "then abort them",
    ),
    ShutdownOption(
        "readiness_path",
        "--readiness-path",
        "GRACEFUL_READINESS_PATH",
        "/ready",
        "answer GET/HEAD here: 503 from SIGTERM on, else the app's answer, or 200 if the "
        "app has no such route; 'off' leaves the path to the app",
    ),
    ShutdownOption(
        "quiet_exempt",
        "--quiet-exempt",
        "GRACEFUL_QUIET_EXEMPT",
        ",".join(sorted(DEFAULT_QUIET_EXEMPT)),
        "comma-separated paths whose requests never count as traffic for the quiet period, "
        "whoever sends them (a scraper's /metrics); 'none' for no path. The readiness path "
        "never counts",
    ),
)


@dataclass(frozen=True)
class ServeShutdown:
    """The shutdown settings of a server command, before they become a ShutdownConfig."""

    grace_period: float = 30.0
    pre_close_delay: float = 0.0
    quiet_period: float = 1.0
    quiet_max: float = 10.0
    drain_timeout: float = 10.0
    readiness_path: str | None = "/ready"
    quiet_exempt: frozenset[str] = DEFAULT_QUIET_EXEMPT

    def shutdown_config(self, root_path: str = "") -> ShutdownConfig:
        exempt = set(self.quiet_exempt)
        # Only probes and load balancers ask graceful's readiness path, and not all of
        # them say so in a User-Agent.
        if self.readiness_path:
            exempt.add(self.readiness_path)
        # uvicorn puts --root-path in front of the path the middleware sees.
        exempt |= {root_path + path for path in exempt}
        return ShutdownConfig(
            drain=True,
            drain_timeout=self.drain_timeout,
            readiness_flip=True,
            connection_close=True,
            pre_close_delay=self.pre_close_delay,
            quiet_period=self.quiet_period,
            quiet_max=self.quiet_max,
            grace_period=self.grace_period,
            enforce_budget=True,
            quiet_exempt_paths=frozenset(exempt),
        )

    def problems(self) -> list[str]:
        """Why these phases may not fit before SIGKILL (logged as warnings at start)."""
        return budget_problems(self.shutdown_config(), {})


def parse_seconds(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise OptionError(f"{where}: expected seconds (a number), got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"{where}: expected seconds >= 0, got {raw!r}")
    return value


def parse_path(raw: str, where: str) -> str | None:
    if raw.strip().lower() in ("off", "none", ""):
        return None
    if not raw.startswith("/"):
        raise OptionError(f"{where}: a path starts with '/', got {raw!r} (or 'off')")
    return raw


def parse_paths(raw: str, where: str) -> frozenset[str]:
    if raw.strip().lower() in ("none", "off", ""):
        return frozenset()
    paths = frozenset(part.strip() for part in raw.split(",") if part.strip())
    for path in sorted(paths):
        if not path.startswith("/"):
            raise OptionError(f"{where}: a path starts with '/', got {path!r} (or 'none')")
    return paths


def resolve_shutdown(given: Mapping[str, str | None], environ: Mapping[str, str]) -> ServeShutdown:
    """Each setting from `given` (option values as typed), else the environment, else its
    default. Raises OptionError naming the option or variable at fault."""
    values: dict[str, float | str | frozenset[str] | None] = {}
    for option in SHUTDOWN_OPTIONS:
        raw = given.get(option.name)
        where = option.flag
        if raw is None and option.env in environ:
            raw, where = environ[option.env], option.env
        if raw is None and option.name == "quiet_exempt":
            values[option.name] = DEFAULT_QUIET_EXEMPT
        elif raw is None:
            values[option.name] = option.default
        elif option.name == "quiet_exempt":
            values[option.name] = parse_paths(raw, where)
        elif option.name == "readiness_path":
            values[option.name] = parse_path(raw, where)
        else:
            values[option.name] = parse_seconds(raw, where)
    settings = ServeShutdown(**values)  # type: ignore[arg-type]
    if settings.grace_period <= 1.0:
        raise OptionError(
            f"grace period must be over 1 s (the safety margin), got {settings.grace_period:g}"
        )
    if settings.quiet_period > 0 and settings.quiet_max < settings.quiet_period:
        raise OptionError(
            f"quiet max ({settings.quiet_max:g} s) is shorter than the quiet period "
            f"({settings.quiet_period:g} s): the quiet period could never be met"
        )
    return settings
