"""Builds the server from a CalcConfig and runs it: `run(config)` needs no CLI."""

from __future__ import annotations

import logging

from calc.app import create_app
from calc.config import CalcConfig
from calc.logs import setup_logging
from calc.oplog import OperationLog, make_sink
from graceful import (
    GracefulServer,
    Lifecycle,
    ShutdownConfig,
    SpoolBusy,
    SpoolUnavailable,
    budget_problems,
    guarded_protocol,
)
from graceful import build_server as build_graceful_server

logger = logging.getLogger("calc")


def shutdown_config(config: CalcConfig) -> ShutdownConfig:
    return ShutdownConfig(
        drain=config.drain,
        drain_timeout=config.drain_timeout,
        readiness_flip=config.readiness_flip,
        connection_close=config.connection_close,
        pre_close_delay=config.pre_close_delay,
        quiet_period=config.quiet_period,
        quiet_max=config.quiet_max,
        grace_period=config.grace_period,
        enforce_budget=config.budget_check,
    )


def app_phase_limits(config: CalcConfig) -> dict[str, float]:
    if config.oplog == "task-graceful":
        return {"tasks": config.task_timeout}
    if config.oplog == "batch-graceful":
        return {"flush": config.flush_timeout}
    return {}


def operation_log_of(app: object) -> OperationLog:
    """The OperationLog inside an app from `create_app`: on the Starlette app's state,
    under however many ASGI middlewares (each keeps the next one as `.app`; a chain that
    comes back to a layer it passed is searched once)."""
    layer: object | None = app
    passed: set[int] = set()
    while layer is not None and id(layer) not in passed:
        passed.add(id(layer))
        oplog = getattr(getattr(layer, "state", None), "oplog", None)
        if isinstance(oplog, OperationLog):
            return oplog
        layer = getattr(layer, "app", None)
    raise TypeError(f"no operation log in {app!r}")


def report_unwritten(lifecycle: Lifecycle, oplog: OperationLog, spool: bool) -> None:
    """Let a forced exit (a third signal) log how many accepted operations it leaves."""
    if oplog.mode == "off":
        return
    what = "operations"
    if spool and oplog.mode.startswith("batch"):
        what += " (left in the spool, lost unless this pod's next container starts)"
    lifecycle.report_unwritten(what, lambda: oplog.pending)
    # Losses counted in the last second are not logged yet: a forced exit says them.
    lifecycle.before_forced_exit(oplog.writer.log_losses_now)


def build_server(config: CalcConfig) -> GracefulServer:
    lifecycle = Lifecycle(shutdown_config(config))
    app = create_app(config, lifecycle, make_sink(config))
    report_unwritten(lifecycle, operation_log_of(app), config.spool)
    return build_graceful_server(
        app,
        lifecycle,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http=guarded_protocol(config.max_head_bytes, config.head_timeout),
        access_log=False,
        log_config=None,
        log_level=config.log_level,
    )


def run(config: CalcConfig) -> int:
    setup_logging(config.log_level)
    if config.budget_check:
        for problem in budget_problems(shutdown_config(config), app_phase_limits(config)):
            logger.warning("Shutdown budget: %s", problem)
    sink = config.influxdb_base_url or f"file {config.oplog_file}"
    logger.info(
        "calc %s on %s:%d, operation log %s -> %s",
        config.profile,
        config.host,
        config.port,
        config.oplog,
        sink if config.oplog != "off" else "-",
    )
    try:
        server = build_server(config)
    except (SpoolBusy, SpoolUnavailable) as exc:
        logger.error("Cannot start: %s", exc)
        return 1
    server.run()
    return 0 if server.started else 1
