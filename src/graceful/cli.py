"""`graceful-serve module:app`: uvicorn's command with the phased shutdown.

A Dockerfile's `CMD ["uvicorn", "app:app"]` becomes `CMD ["graceful-serve", "app:app"]`:
uvicorn's common options keep their names and their `UVICORN_*` variables; the shutdown
options read `GRACEFUL_*` variables. The command only parses into a `ServeConfig` and
calls `run`, which needs no command line.
"""

from __future__ import annotations

import argparse
import copy
import logging
import logging.config
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graceful.asgi import ASGIApp
from graceful.current import install
from graceful.lifecycle import Lifecycle
from graceful.options import (
    SHUTDOWN_OPTIONS,
    OptionError,
    ServeShutdown,
    resolve_shutdown,
)
from graceful.readiness import ReadinessMiddleware

logger = logging.getLogger("graceful.cli")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class _Refused:
    """uvicorn options graceful-serve does not take, each refused as an option and as
    the UVICORN_<NAME> variable uvicorn's command would read for it (click's
    auto_envvar_prefix="UVICORN", uvicorn/main.py)."""

    flags: tuple[str, ...]  # the option first, then its "--no-" form if any
    env: str
    why: str
    flag_default: bool | None = None  # for a flag: uvicorn's default, which changes nothing
    # The uvicorn release that added the option. Refused on older ones too, which ignore
    # the variable: whoever sets it expects its effect, and does not get it there either.
    since: tuple[int, ...] = (0,)


WHY_WORKERS = (
    "run one process per container and scale with replicas, or run "
    "gunicorn -k graceful.gunicorn.Worker for several workers in one"
)
WHY_RELOAD = "it restarts the server without the shutdown phases; use uvicorn to develop"
WHY_SOCKET = "graceful-serve listens on --host/--port only"
WHY_TLS = "graceful-serve serves plain HTTP: terminate TLS at the ingress or load balancer"
WHY_DEFAULT = "graceful-serve runs uvicorn's default, with which its shutdown is tested"
WHY_SHUTDOWN = "graceful-serve bounds the shutdown with --drain-timeout and --grace-period"
WHY_MAX_REQUESTS = (
    "a process that leaves after N requests runs the whole pod shutdown and is not "
    "replaced inside the container"
)


def _refused(
    why: str, *names: str, flag_default: bool | None = None, since: tuple[int, ...] = (0,)
) -> list[_Refused]:
    """`names` as uvicorn's command names them: "reload_dirs:--reload-dir" where the
    option's flag is not the name's."""
    refused = []
    for name in names:
        name, _, flag = name.partition(":")
        option = flag or "--" + name.replace("_", "-")
        flags = (option, "--no-" + option[2:]) if flag_default is True else (option,)
        refused.append(_Refused(flags, "UVICORN_" + name.upper(), why, flag_default, since))
    return refused


UNSUPPORTED = (
    *_refused(WHY_WORKERS, "workers"),
    *_refused(WHY_RELOAD, "reload", flag_default=False),
    *_refused(
        WHY_RELOAD,
        "reload_dirs:--reload-dir",
        "reload_includes:--reload-include",
        "reload_excludes:--reload-exclude",
        "reload_delay",
    ),
    *_refused(WHY_SOCKET, "uds", "fd"),
    *_refused(
        WHY_TLS,
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_keyfile_password",
        "ssl_version",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ciphers",
    ),
    *_refused(
        WHY_DEFAULT,
        "loop",
        "http",
        "ws",
        "ws_max_size",
        "ws_max_queue",
        "ws_ping_interval",
        "ws_ping_timeout",
        "ws_per_message_deflate",
        "lifespan",
        "interface",
        "limit_concurrency",
        "backlog",
        "h11_max_incomplete_event_size",
        "headers:--header",
    ),
    *_refused(WHY_DEFAULT, "reset_contextvars", flag_default=False, since=(0, 45)),
    *_refused(WHY_DEFAULT, "http2", flag_default=False, since=(0, 53)),
    *_refused(WHY_DEFAULT, "server_header", "date_header", flag_default=True),
    *_refused(
        "graceful-serve reads its settings from the environment before uvicorn would "
        "load the file: set the variables in the container's environment",
        "env_file",
    ),
    *_refused(
        "graceful-serve sets up logging, uvicorn's with graceful's own loggers; "
        "choose the level with --log-level",
        "log_config",
    ),
    *_refused(
        "graceful-serve's logs keep uvicorn's default colours", "use_colors", flag_default=True
    ),
    *_refused(WHY_SHUTDOWN, "timeout_graceful_shutdown"),
    *_refused(WHY_WORKERS, "timeout_worker_healthcheck"),
    *_refused(WHY_MAX_REQUESTS, "limit_max_requests"),
    *_refused(WHY_MAX_REQUESTS, "limit_max_requests_jitter", since=(0, 41)),
)
REFUSED_FLAGS = {flag: refused for refused in UNSUPPORTED for flag in refused.flags}
# uvicorn.Config reads this for its worker count when --workers is not given.
WEB_CONCURRENCY = "WEB_CONCURRENCY"


@dataclass(frozen=True)
class ServeConfig:
    app: str
    host: str = "127.0.0.1"
    port: int = 8000
    factory: bool = False
    root_path: str = ""
    proxy_headers: bool = True
    forwarded_allow_ips: str | None = None
    log_level: str = "info"
    app_dir: str = "."
    access_log: bool = True
    timeout_keep_alive: int = 5
    shutdown: ServeShutdown = field(default_factory=ServeShutdown)


@dataclass(frozen=True)
class _Option:
    name: str
    flags: tuple[str, ...]
    kind: str  # str, int, bool, level
    help: str


# uvicorn's own names, help texts and defaults (uvicorn/main.py); env UVICORN_<NAME>.
UVICORN_OPTIONS = (
    _Option("host", ("--host",), "str", "bind socket to this host (default 127.0.0.1)"),
    _Option("port", ("--port",), "int", "bind socket to this port (default 8000)"),
    _Option(
        "factory",
        ("--factory",),
        "bool",
        "treat APP as an application factory, a () -> ASGI app callable",
    ),
    _Option("root_path", ("--root-path",), "str", "the ASGI root_path, behind a path prefix"),
    _Option(
        "proxy_headers",
        ("--proxy-headers", "--no-proxy-headers"),
        "bool",
        "take the client address and scheme from X-Forwarded-For/-Proto (default on)",
    ),
    _Option(
        "forwarded_allow_ips",
        ("--forwarded-allow-ips",),
        "str",
        "comma-separated IPs or networks to trust with proxy headers, '*' for all "
        "(default: env FORWARDED_ALLOW_IPS, else 127.0.0.1)",
    ),
    _Option(
        "log_level", ("--log-level",), "level", f"one of {', '.join(LOG_LEVELS)} (default info)"
    ),
    _Option(
        "app_dir",
        ("--app-dir",),
        "str",
        "look for APP in this directory, added to the module path (default .)",
    ),
    _Option(
        "access_log",
        ("--access-log", "--no-access-log"),
        "bool",
        "log each request (default on)",
    ),
    _Option(
        "timeout_keep_alive",
        ("--timeout-keep-alive",),
        "int",
        "close keep-alive connections idle this many seconds (default 5)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful-serve",
        description="Serve an ASGI 3 app with uvicorn and a shutdown that drops nothing: "
        "at SIGTERM, readiness answers 503, the server keeps serving until the load "
        "balancer has stopped sending (quiet period), answers Connection: close, then "
        "stops listening, drains running requests and runs the app's lifespan shutdown, "
        "all within the grace period. Options win over environment variables.",
        epilog="Not supported: "
        + "; ".join(
            f"{', '.join(r.flags[0] for r in UNSUPPORTED if r.why == why)} ({why})"
            for why in dict.fromkeys(r.why for r in UNSUPPORTED)
        )
        + f"; {WEB_CONCURRENCY} other than 1 ({WHY_WORKERS}). Each is refused as an option "
        "and as its UVICORN_<NAME> variable. A repeated SIGTERM is ignored; a second SIGINT stops waiting for requests; "
        "a third signal exits at once. A signal during the app's startup cancels it and "
        "exits with 128 + the signal (a second one at once).",
    )
    parser.add_argument("app", nargs="?", metavar="APP", help="module:attribute (env UVICORN_APP)")
    server = parser.add_argument_group(
        "uvicorn's options (same names and meaning; env UVICORN_<NAME>, e.g. UVICORN_PORT)"
    )
    for option in UVICORN_OPTIONS:
        env = "UVICORN_" + option.name.upper()
        if option.kind == "bool" and len(option.flags) == 2:
            server.add_argument(
                option.flags[0],
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{option.help} (env {env})",
            )
        elif option.kind == "bool":
            server.add_argument(
                *option.flags,
                dest=option.name,
                action="store_const",
                const=True,
                default=None,
                help=f"{option.help} (env {env})",
            )
        else:
            server.add_argument(
                *option.flags,
                dest=option.name,
                metavar=option.name.upper(),
                help=f"{option.help} (env {env})",
            )
    shutdown = parser.add_argument_group("shutdown (env GRACEFUL_<NAME>)")
    for shutdown_option in SHUTDOWN_OPTIONS:
        shutdown.add_argument(
            shutdown_option.flag,
            dest=shutdown_option.name,
            metavar={"readiness_path": "PATH", "quiet_exempt": "PATHS"}.get(
                shutdown_option.name, "SECONDS"
            ),
            help=f"{shutdown_option.help} (env {shutdown_option.env}; "
            f"default {shutdown_option.default})",
        )
    return parser


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> ServeConfig:
    """The config from parsed options, then UVICORN_*/GRACEFUL_* variables, then defaults.
    Raises OptionError naming the option or variable at fault."""
    refuse_unsupported_variables(environ)
    given = vars(args)
    values: dict[str, Any] = {}
    app = given.get("app") or environ.get("UVICORN_APP")
    if not app:
        raise OptionError("APP is required: graceful-serve module:attribute")
    if ":" not in app:
        raise OptionError(f'APP must be "<module>:<attribute>", got {app!r}')
    for option in UVICORN_OPTIONS:
        value = given.get(option.name)
        env = "UVICORN_" + option.name.upper()
        if value is None and env in environ:
            value = _from_env(option, environ[env], env)
        elif value is not None and option.kind != "bool":
            value = _typed(option, value, option.flags[0])
        if value is not None:
            values[option.name] = value
    shutdown_given = {o.name: given.get(o.name) for o in SHUTDOWN_OPTIONS}
    return ServeConfig(app=app, shutdown=resolve_shutdown(shutdown_given, environ), **values)


def refuse_unsupported_variables(environ: Mapping[str, str]) -> None:
    """Raise OptionError for a UVICORN_* variable uvicorn would act on and graceful-serve
    does not: served without it, the process would silently differ from what was asked.
    As in uvicorn, an empty value counts as unset; a flag set to uvicorn's default
    changes nothing and passes."""
    for refused in UNSUPPORTED:
        raw = environ.get(refused.env, "")
        if not raw:
            continue
        unchanged = TRUE if refused.flag_default else FALSE
        if refused.flag_default is not None and raw.lower() in unchanged:
            continue
        raise OptionError(f"{refused.env}={raw} is not supported: {refused.why}")
    workers = environ.get(WEB_CONCURRENCY, "").strip()
    if workers not in ("", "1"):
        raise OptionError(f"{WEB_CONCURRENCY}={workers} is not supported: {WHY_WORKERS}")


def _from_env(option: _Option, raw: str, env: str) -> Any:
    if option.kind == "bool":
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise OptionError(f"{env}: expected one of {'/'.join(TRUE + FALSE)}, got {raw!r}")
    return _typed(option, raw, env)


def _typed(option: _Option, raw: str, where: str) -> Any:
    if option.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise OptionError(f"{where}: expected a whole number, got {raw!r}") from None
        if option.name == "port" and not 0 <= value <= 65535:
            raise OptionError(f"{where}: a port is 0-65535, got {value}")
        if value < 0:
            raise OptionError(f"{where}: expected a number >= 0, got {value}")
        return value
    if option.kind == "level":
        if raw.lower() not in LOG_LEVELS:
            raise OptionError(f"{where}: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
        return raw.lower()
    return raw


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's default logging, plus graceful's own loggers on the same handler."""
    from graceful.uvicorn_compat import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["graceful"] = {
        "handlers": ["default"],
        "level": "DEBUG" if level == "trace" else level.upper(),
        "propagate": False,
    }
    return config


def load_app(config: ServeConfig) -> ASGIApp:
    """Import APP (after adding --app-dir to the module path) and call it if a factory."""
    from graceful.uvicorn_compat import ImportFromStringError, import_from_string

    sys.path.insert(0, os.path.abspath(config.app_dir))
    try:
        app: Any = import_from_string(config.app)
    except ImportFromStringError as exc:
        raise OptionError(f"cannot load APP: {exc}") from None
    if config.factory:
        if not callable(app):
            raise OptionError(f"APP {config.app!r} is not callable, so not a factory")
        app = app()
    if not callable(app):
        raise OptionError(f"APP {config.app!r} is not an ASGI app (not callable)")
    return app  # type: ignore[no-any-return]


def run(config: ServeConfig) -> int:
    """Serve until shut down; 0 after a clean shutdown, 1 when the app cannot be loaded.

    A server that cannot start leaves through uvicorn's own exit: 3 when the app's
    lifespan startup fails, 1 when the address cannot be bound."""
    from graceful.run import build_server

    logging.config.dictConfig(log_config(config.log_level))
    lifecycle = Lifecycle(config.shutdown.shutdown_config(config.root_path))
    install(lifecycle)  # before the import: the app may ask for it at import time
    for problem in config.shutdown.problems():
        logger.warning("Shutdown budget: %s", problem)
    try:
        app = load_app(config)
    except OptionError as exc:
        logger.error("%s", exc)
        return 1
    path = config.shutdown.readiness_path
    served = ReadinessMiddleware(app, lifecycle, path) if path else app
    server = build_server(
        served,
        lifecycle,
        host=config.host,
        port=config.port,
        root_path=config.root_path,
        proxy_headers=config.proxy_headers,
        forwarded_allow_ips=config.forwarded_allow_ips,
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_keep_alive=config.timeout_keep_alive,
        log_config=log_config(config.log_level),
        workers=1,  # not WEB_CONCURRENCY, which uvicorn.Config would read (refused above)
    )
    server.run()
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    for arg in args_list:
        flag = arg.split("=", 1)[0]
        if flag in REFUSED_FLAGS:
            parser.error(f"{flag} is not supported: {REFUSED_FLAGS[flag].why}")
    args = parser.parse_args(args_list)
    from graceful.uvicorn_compat import unsupported

    if (problem := unsupported()) is not None:
        parser.error(problem)  # before anything is imported or bound
    try:
        config = resolve(args, os.environ)
    except OptionError as exc:
        parser.error(str(exc))
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
