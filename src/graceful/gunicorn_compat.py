"""What graceful.gunicorn relies on in gunicorn beyond its documented worker API, and the
releases it supports: gunicorn `OLDEST` (23.0.0, 2024-08-10) up to the lock's
(requirements/dev.lock). The supported releases do not differ in any of it.

The worker subclasses `gunicorn.workers.base.Worker`, reads the attributes the base class
sets, and depends on the master's order of things: `Arbiter.stop` closes the listeners
before it signals the workers (how a worker tells the pod's shutdown from its rotation),
`Config.worker_class` calls the class's `setup` (the lifecycle for `--preload`), and
`Arbiter.start` its `check_config`. `unsupported()` checks each at the master's start;
tests/graceful/test_server_internals.py fails the day a release changes one of them.
"""

from __future__ import annotations

import gunicorn

from graceful import server_compat

OLDEST = (23, 0, 0)

METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "gunicorn.workers.base:Worker": {
        "__init__": ("age", "ppid", "sockets", "app", "timeout", "cfg", "log"),
        "init_process": (),
        "init_signals": (),
        "run": (),
        "notify": (),
        "handle_usr1": ("sig", "frame"),
    },
}
SET_BY = {
    "gunicorn.workers.base:Worker.__init__": (
        "ppid",
        "sockets",
        "timeout",
        "cfg",
        "log",
        "max_requests",
    ),
    "gunicorn.workers.base:Worker.load_wsgi": ("wsgi",),
    "gunicorn.glogging:Logger.__init__": ("error_log", "access_log"),
}
NAMES = {
    "gunicorn.arbiter:Arbiter": ("WORKER_BOOT_ERROR",),
    "gunicorn.workers.base:Worker": ("SIGNALS",),
    "gunicorn.config:Config": ("worker_class",),
}
CALL_ORDER = {
    # The pod's shutdown: the master's listeners are closed before the workers' SIGTERM.
    "gunicorn.arbiter:Arbiter.stop": ("close_sockets", "kill_workers"),
    "gunicorn.arbiter:Arbiter.start": ("check_config",),
    "gunicorn.config:Config.worker_class": ("load_class", "setup"),
}
#: Settings the worker reads (`cfg.settings[name]`, `cfg.<name>`).
SETTINGS = ("backlog", "keepalive", "forwarded_allow_ips", "graceful_timeout", "timeout")


def missing() -> list[str]:
    """What graceful relies on that the installed gunicorn lacks or has changed."""
    from gunicorn.config import KNOWN_SETTINGS

    known = {setting.name for setting in KNOWN_SETTINGS}
    gaps = server_compat.gaps(methods=METHODS, set_by=SET_BY, names=NAMES, call_order=CALL_ORDER)
    return gaps + [f"the {name!r} setting" for name in SETTINGS if name not in known]


def unsupported() -> str | None:
    """One line saying why the installed gunicorn cannot run graceful's worker, or None."""
    return server_compat.verdict("gunicorn", gunicorn.__version__, OLDEST, missing)
