"""The shutdown switches and time limits, and the check that they fit the grace period."""

from __future__ import annotations

from dataclasses import dataclass, field

# Requests that say nothing about whether the load balancer still sends us traffic do
# not count for the quiet period. Kubelets keep probing a terminating pod; a probe is
# told by what it is, not by its path, since real clients may call the same path
# (`GET /health` from another service): the kubelet's HTTP probes send
# `User-Agent: kube-probe/<major>.<minor>` unless the probe's httpHeaders set one
# (kubernetes pkg/probe/http/request.go, `userAgent("probe")`).
PROBE_USER_AGENT_PREFIX = b"kube-probe/"
# Paths that never count, whoever asks. A Prometheus scraper is no client of the service
# and keeps scraping every pod it still lists, through the whole shutdown.
DEFAULT_QUIET_EXEMPT = frozenset({"/metrics"})


@dataclass(frozen=True)
class ShutdownConfig:
    """What happens between SIGTERM and exit, in phase order.

    delay: keep serving `pre_close_delay` seconds, then (if `quiet_period` > 0) until no
        new request came for `quiet_period` seconds, at most `quiet_max` seconds in all.
    close: stop listening.
    drain: with `drain`, wait for in-flight requests, i.e. open connections and running
        handlers (at most `drain_timeout`, None = no limit but the budget); without, abort
        every connection and cancel every handler at once.
    app: the ASGI lifespan shutdown (the app awaits its tasks and flushes its writers,
        bounded by `Lifecycle.remaining()`).
    Every wait ends by `grace_period - safety_margin` after SIGTERM when `enforce_budget`.
    """

    drain: bool = True
    drain_timeout: float | None = None
    readiness_flip: bool = False
    connection_close: bool = False
    pre_close_delay: float = 0.0
    quiet_period: float = 0.0
    quiet_max: float = 0.0
    grace_period: float = 30.0
    safety_margin: float = 1.0
    enforce_budget: bool = False
    quiet_exempt_paths: frozenset[str] = field(default=DEFAULT_QUIET_EXEMPT)

    def delay_limit(self) -> float:
        """The longest the pre-close delay phase can take."""
        if self.quiet_period > 0:
            return max(self.pre_close_delay, self.quiet_max)
        return self.pre_close_delay


def budget_problems(config: ShutdownConfig, app_phases: dict[str, float]) -> list[str]:
    """Why the phases cannot all fit before SIGKILL; empty when they fit.

    `app_phases` names the app's own shutdown limits (e.g. {"tasks": 7, "flush": 5}).
    """
    problems: list[str] = []
    if config.drain and config.drain_timeout is None:
        problems.append("drain has no timeout: in-flight requests could outlast the grace period")
    parts = {"delay": config.delay_limit(), "drain": config.drain_timeout or 0.0, **app_phases}
    total = sum(parts.values())
    available = config.grace_period - config.safety_margin
    if total > available:
        listed = " + ".join(f"{name} {seconds:g}" for name, seconds in parts.items())
        problems.append(
            f"shutdown phases need up to {total:g} s ({listed}) but only {available:g} s "
            f"remain before SIGKILL (grace period {config.grace_period:g} s "
            f"- safety margin {config.safety_margin:g} s)"
        )
    return problems
