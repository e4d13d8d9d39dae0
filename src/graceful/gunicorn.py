"""`gunicorn -k graceful.gunicorn.Worker app:app`: each worker runs the app on uvicorn
with the phased shutdown of `graceful-serve`.

What a rollout does to a gunicorn pod (gunicorn's arbiter, `Arbiter.stop`):

1. The kubelet sends SIGTERM to the master (the container's PID 1).
2. The master closes its own copies of the listening sockets and sends SIGTERM to every
   worker. The workers keep theirs, so the port still accepts: each worker runs the
   delay and quiet period (answering `Connection: close`, readiness 503), then closes
   its listener, drains, and runs the app's lifespan shutdown.
3. The master waits up to its `--graceful-timeout` (default 30 s) for the workers, then
   sends SIGKILL to those left, and exits 0.

So a worker's budget is the master's graceful timeout: without `GRACEFUL_GRACE_PERIOD`
the worker takes `--graceful-timeout` as its grace period and ends every phase 1 s
before the master's SIGKILL. The pod's `terminationGracePeriodSeconds` must be longer
than `--graceful-timeout` (plus any preStop), or the kubelet's SIGKILL comes first.

A SIGINT or SIGQUIT to the master is its quick shutdown: SIGQUIT to the workers and
SIGKILL 2 s later. A worker takes SIGQUIT as a second SIGINT: no more waiting for
requests (they are aborted, counted and logged), the app's shutdown still runs. A
further signal exits at once.

The shutdown options come from the environment (`GRACEFUL_QUIET_PERIOD`, ...; see
`graceful-serve --help`); gunicorn's own options (bind, workers, keepalive, timeout,
max requests, forwarded_allow_ips) keep their meaning.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as BaseWorker

from graceful.current import install
from graceful.lifecycle import Lifecycle
from graceful.middleware import GracefulMiddleware
from graceful.options import OptionError, resolve_shutdown
from graceful.readiness import ReadinessMiddleware
from graceful.server import GracefulServer

logger = logging.getLogger("graceful.gunicorn")


class WorkerServer(GracefulServer):
    """GracefulServer that takes the master's SIGQUIT (its quick shutdown) as a second
    SIGINT: stop waiting for requests; a signal after that exits at once."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGQUIT:
            super().handle_exit(sig, frame)
        elif not self.should_exit:
            super().handle_exit(sig, frame)  # starts the shutdown ...
            self.hurry = True  # ... with no waiting for requests
            self.hurry_reason = "the master's quick shutdown (SIGQUIT)"
        else:
            if not self.hurry:
                self.hurry_reason = "the master's quick shutdown (SIGQUIT)"
            super().handle_exit(signal.SIGINT, frame)


class Worker(BaseWorker):  # type: ignore[misc]
    """A gunicorn worker class: uvicorn's protocol, graceful's shutdown phases."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's and graceful's loggers write through gunicorn's error and access logs.
        for name in ("uvicorn.error", "graceful"):
            target = logging.getLogger(name)
            target.handlers = self.log.error_log.handlers
            target.setLevel(self.log.error_log.level)
            target.propagate = False
        access = logging.getLogger("uvicorn.access")
        access.handlers = self.log.access_log.handlers
        access.setLevel(self.log.access_log.level)
        access.propagate = False
        self.lifecycle: Lifecycle | None = None
        self.readiness_path: str | None = None

    def init_process(self) -> None:
        # Before gunicorn imports the app (in super().init_process): the app may ask for
        # the lifecycle at import time.
        try:
            settings = resolve_shutdown(self._given(), os.environ)
        except OptionError as exc:
            self.log.error("graceful: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if settings.grace_period > self.cfg.graceful_timeout:
            self.log.warning(
                "graceful: grace period %g s is longer than gunicorn's --graceful-timeout "
                "%g s: the master sends SIGKILL first",
                settings.grace_period,
                self.cfg.graceful_timeout,
            )
        for problem in settings.problems():
            self.log.warning("graceful: shutdown budget: %s", problem)
        self.lifecycle = Lifecycle(settings.shutdown_config())
        self.readiness_path = settings.readiness_path
        install(self.lifecycle)
        super().init_process()

    def _given(self) -> dict[str, str | None]:
        """The master's graceful timeout is the grace period, unless the environment
        names one (then an error names the variable)."""
        if "GRACEFUL_GRACE_PERIOD" in os.environ:
            return {}
        return {"grace_period": str(self.cfg.graceful_timeout)}

    def init_signals(self) -> None:
        # The server installs its own SIGTERM/SIGINT handlers while it serves; the rest
        # go back to their defaults, as in uvicorn's worker, except log reopening.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def run(self) -> None:
        lifecycle = self.lifecycle
        assert lifecycle is not None  # set in init_process
        app = self.wsgi
        if self.readiness_path:
            app = ReadinessMiddleware(app, lifecycle, self.readiness_path)
        options: dict[str, Any] = {
            "lifespan": "auto",
            "log_config": None,
            "timeout_keep_alive": self.cfg.keepalive,
            "timeout_notify": self.timeout,
            "callback_notify": self.callback_notify,
            "limit_max_requests": self.max_requests,
            "forwarded_allow_ips": self.cfg.forwarded_allow_ips,
        }
        if self.cfg.settings["backlog"].value:
            options["backlog"] = self.cfg.settings["backlog"].value
        server = WorkerServer(
            uvicorn.Config(GracefulMiddleware(app, lifecycle), **options), lifecycle
        )
        # uvicorn's capture_signals covers SIGINT and SIGTERM while it serves; SIGQUIT
        # comes from the master's quick shutdown. A handler that only records, as those.
        signal.signal(signal.SIGQUIT, server.handle_exit)
        # Server.run, not asyncio.run: it runs the loop uvicorn's config picks (uvloop
        # when installed), as uvicorn's own worker does. The listeners go in as the
        # sockets inside gunicorn's wrappers: uvloop closes a socket it serves on itself,
        # and through a wrapper it closed the descriptor a second time at shutdown
        # ("Error while closing socket [Errno 9]" in every worker's log).
        server.run(sockets=[listener.sock for listener in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def callback_notify(self) -> None:
        self.notify()
