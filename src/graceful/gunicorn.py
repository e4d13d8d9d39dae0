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

A worker can also leave while the pod stays; the master starts another in its place and
keeps the listening sockets open all along, so the pod goes on accepting:

- `--max-requests`: uvicorn's `limit_max_requests` ends the worker's serving loop
  (`Server.on_tick`); no signal comes at all.
- a reload (SIGHUP to the master: `Arbiter.reload` starts new workers, then
  `manage_workers` sends SIGTERM to the oldest beyond `--workers`), fewer workers
  (SIGTTOU: `manage_workers` again), or SIGWINCH to a daemonized master (`kill_workers`).
  These send the same SIGTERM as the pod's shutdown, but the master keeps its listeners;
  `Arbiter.stop` (the master's SIGTERM) closes them before it signals the workers. So a
  worker tells the two apart by whether the master still holds the socket it listens on.

Such a worker stops accepting and drains only (`Lifecycle.record_worker_exit`): no
readiness flip, no `Connection: close`, no delay or quiet period. Where the master's
descriptors cannot be read (no /proc, or `--user` switched the worker to another user)
or the master has no listener (`--reuse-port`), every SIGTERM is the pod's shutdown.

While a worker shuts down it keeps up its heartbeat, within its budget: the master's
`murder_workers` SIGABRTs a worker silent for `--timeout`, and a rotating worker is
still watched (the pod's SIGTERM stops that watch: the master is then in `stop`).

With `--preload` gunicorn imports the app in the master (`Arbiter.setup`). The lifecycle
the app may ask for at import is installed there when gunicorn loads this class
(`Config.worker_class` calls `Worker.setup`), and each worker takes over its own copy.

A SIGINT or SIGQUIT to the master is its quick shutdown: SIGQUIT to the workers and
SIGKILL 2 s later. A worker takes SIGQUIT as a second SIGINT: no more waiting for
requests (they are aborted, counted and logged), the app's shutdown still runs. A
further signal exits at once.

The shutdown options come from the environment (`GRACEFUL_QUIET_PERIOD`, ...; see
`graceful-serve --help`); gunicorn's own options (bind, workers, keepalive, timeout,
max requests, forwarded_allow_ips) keep their meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as BaseWorker

from graceful import gunicorn_compat, uvicorn_compat
from graceful.config import ShutdownConfig
from graceful.current import install
from graceful.lifecycle import Lifecycle
from graceful.middleware import GracefulMiddleware
from graceful.options import OptionError, ServeShutdown, resolve_shutdown
from graceful.readiness import ReadinessMiddleware
from graceful.server import GracefulServer

logger = logging.getLogger("graceful.gunicorn")


ROTATION = "worker rotation, the pod stays ready: "
HEARTBEAT_MAX_EVERY = 1.0  # seconds between heartbeats during the shutdown, at most
FIRST_REQUEST_WAIT = 0.5  # seconds a connection accepted before a rotation gets to send


def master_holds(master: int, inodes: frozenset[int]) -> bool:
    """Whether process `master` still has one of these sockets open (their inodes, as in
    /proc/PID/fd's "socket:[INODE]" links). False when that cannot be read."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    folder = f"/proc/{master}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):  # closed since the listing
            if os.readlink(f"{folder}/{name}") in wanted:
                return True
    return False


class WorkerServer(GracefulServer):
    """GracefulServer in a gunicorn worker:

    - the master's SIGQUIT (its quick shutdown) counts as a second SIGINT: stop waiting
      for requests; a signal after that exits at once.
    - leaving while the pod stays (`--max-requests`, or a SIGTERM while the master keeps
      listening on `listeners`) is a worker rotation: drain only.
    - `heartbeat` is called through the shutdown, within the budget."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        master: int | None = None,
        listeners: list[socket.socket] | None = None,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_every: float = HEARTBEAT_MAX_EVERY,
    ) -> None:
        super().__init__(config, lifecycle)
        self.master = master
        # Inodes, not sockets: the worker's own descriptors close at its CLOSING phase,
        # and a later SIGTERM still has to be told apart.
        self.listener_inodes = frozenset(os.fstat(s.fileno()).st_ino for s in listeners or [])
        self.heartbeat = heartbeat
        self.heartbeat_every = min(HEARTBEAT_MAX_EVERY, max(0.05, heartbeat_every))
        self._heartbeat_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self._record_who_leaves()
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

    def _record_who_leaves(self) -> None:
        """A SIGTERM: the pod's shutdown when the master has closed its listeners
        (`Arbiter.stop` does before it signals), else this worker's rotation. The one read
        in this handler (the master's descriptors, a few syscalls) is what keeps
        readiness from flipping between the signal and the loop's next turn."""
        master_listens = self.master is not None and master_holds(self.master, self.listener_inodes)
        if master_listens and not self.should_exit:
            self.lifecycle.record_worker_exit(
                f"{ROTATION}SIGTERM from the master, which keeps listening "
                "(a reload, or fewer workers)"
            )
        elif not master_listens and self.lifecycle.worker_exit is not None:
            # The pod's shutdown comes while this worker rotates: readiness flips too.
            self.lifecycle.record_pod_shutdown()

    async def on_tick(self, counter: int) -> bool:
        leaving = await super().on_tick(counter)
        if leaving and not self.should_exit:
            # uvicorn's limit_max_requests (gunicorn's --max-requests, with its jitter)
            # ended the serving loop: no signal, and the master replaces this worker.
            self.lifecycle.record_worker_exit(
                f"{ROTATION}reached --max-requests {self.config.limit_max_requests}"
            )
            self._signals_logged = 0  # no signal started it: every signal is a later one
            self.should_exit = True  # later ticks (in the drain's waits) stop here
        return leaving

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.heartbeat is not None:
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._beat(self.heartbeat), name="graceful-worker-heartbeat"
            )
        try:
            await super().shutdown(sockets)
        finally:
            await self._stop_heartbeat()

    async def _drain(self) -> None:
        if self.lifecycle.worker_exit is not None:
            # Traffic goes on through a rotation (the pod stays in the load balancer's
            # list), so a connection accepted just before the listener closed may not have
            # sent its request yet; uvicorn's drain closes such a connection as idle, and
            # the request arriving then is reset. A moment for each to start its request,
            # which is then served and its connection closed after the response.
            await self._wait(self._every_connection_had_a_request, FIRST_REQUEST_WAIT, "requests")
        await super()._drain()

    def _every_connection_had_a_request(self) -> bool:
        connections = uvicorn_compat.server_state(self).connections
        return all(uvicorn_compat.had_a_request(c) for c in connections)

    async def _report_leftovers(self) -> None:
        await self._stop_heartbeat()  # the phases are over: it is not a leftover
        await super()._report_leftovers()

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self, heartbeat: Callable[[], None]) -> None:
        """The master SIGABRTs a worker whose heartbeat is older than --timeout
        (`Arbiter.murder_workers`), and uvicorn beats only from its serving loop; the
        app's lifespan shutdown (its final flush) may take longer. Beat until the budget
        is spent: past it the worker exits at once by itself, or is stuck and may be
        killed."""
        while True:
            left = self.lifecycle.remaining(None)
            if left is not None and left <= 0:
                return
            heartbeat()
            await asyncio.sleep(
                self.heartbeat_every if left is None else min(self.heartbeat_every, left)
            )


class Worker(BaseWorker):  # type: ignore[misc]
    """A gunicorn worker class: uvicorn's protocol, graceful's shutdown phases."""

    #: Installed in the master when gunicorn loads this class, so that an app imported
    #: there (`--preload`) can take it at import; each worker takes over its own copy.
    master_lifecycle: ClassVar[Lifecycle | None] = None

    @classmethod
    def setup(cls) -> None:
        """In the master, from `Config.worker_class`, before `--preload` imports the app
        (`Arbiter.setup`). Its settings are each worker's from the worker's boot on."""
        if cls.master_lifecycle is None:
            cls.master_lifecycle = Lifecycle(ShutdownConfig())
            install(cls.master_lifecycle)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """In the master at start (`Arbiter.start`), once: what the workers' settings
        mean next to gunicorn's, and whether the installed gunicorn and uvicorn have what
        the workers rely on (one line and exit 1 if not, before any worker starts). A bad
        GRACEFUL_* value is left to the workers' boot."""
        for problem in (gunicorn_compat.unsupported(), uvicorn_compat.unsupported()):
            if problem is not None:
                log.error("graceful: %s", problem)
                raise SystemExit(1)
        try:
            settings = resolve_shutdown(_given(cfg), os.environ)
        except OptionError:
            return
        budget = settings.grace_period - ShutdownConfig().safety_margin
        if cfg.timeout and cfg.timeout < budget:
            log.warning(
                "graceful: gunicorn's --timeout %g s is shorter than the shutdown budget "
                "%g s: a worker keeps its heartbeat through its shutdown, but a step that "
                "blocks its event loop longer than that gets it killed by the master",
                cfg.timeout,
                budget,
            )

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
            settings = resolve_shutdown(_given(self.cfg), os.environ)
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
        self.lifecycle = self._take_lifecycle(settings)
        self.readiness_path = settings.readiness_path
        install(self.lifecycle)
        super().init_process()

    def _take_lifecycle(self, settings: ServeShutdown) -> Lifecycle:
        """The lifecycle installed in the master before the fork (which an app imported
        there holds), now this worker's own copy with the worker's settings; else a new
        one."""
        lifecycle = type(self).master_lifecycle
        if lifecycle is None:
            return Lifecycle(settings.shutdown_config())
        lifecycle.config = settings.shutdown_config()
        return lifecycle

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
        listeners = [listener.sock for listener in self.sockets]
        server = WorkerServer(
            uvicorn.Config(GracefulMiddleware(app, lifecycle), **options),
            lifecycle,
            master=self.ppid,
            listeners=listeners,
            heartbeat=self.notify,
            heartbeat_every=self.timeout / 2,
        )
        # uvicorn's capture_signals covers SIGINT and SIGTERM while it serves; SIGQUIT
        # comes from the master's quick shutdown. A handler that only records, as those.
        signal.signal(signal.SIGQUIT, server.handle_exit)
        # Server.run, not asyncio.run: it runs the loop uvicorn's config picks (uvloop
        # when installed), as uvicorn's own worker does. The listeners go in as the
        # sockets inside gunicorn's wrappers: uvloop closes a socket it serves on itself,
        # and through a wrapper it closed the descriptor a second time at shutdown
        # ("Error while closing socket [Errno 9]" in every worker's log).
        server.run(sockets=listeners)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def callback_notify(self) -> None:
        self.notify()


def _given(cfg: Any) -> dict[str, str | None]:
    """The master's graceful timeout is the grace period, unless the environment names
    one (then an error names the variable)."""
    if "GRACEFUL_GRACE_PERIOD" in os.environ:
        return {}
    return {"grace_period": str(cfg.graceful_timeout)}
