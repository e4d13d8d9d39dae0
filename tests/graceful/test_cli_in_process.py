"""`graceful-serve` inside the pytest process: its entry function with argument lists and
environments, and whole runs that serve a real app on a loopback port until a real
SIGTERM. The same command runs as a child process in test_serve_cli.py; here a mutation
tool can also see which code each test reached."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from uvicorn.config import LOGGING_CONFIG

from graceful import ShutdownConfig
from graceful.cli import ServeConfig, build_parser, load_app, log_config, main, resolve
from graceful.config import DEFAULT_QUIET_EXEMPT
from graceful.options import OptionError, ServeShutdown, resolve_shutdown
from tests.graceful.in_process import (
    listening_or_ended,
    process_state_restored,
    refused,
    run_with_signals_guarded,
)
from tests.support import wait_until

ECHO = "tests.graceful.apps.echo"


@pytest.fixture
def restored() -> Iterator[None]:
    with process_state_restored():
        yield


def serve_main(
    argv: list[str], host: str, port: int, scenario: Callable[[str, Callable[[], None]], None]
) -> tuple[int, float]:
    """`graceful.cli.main(argv)` in this (main) thread; `scenario(url, stop)` in a thread
    once the port answers, where `stop()` sends SIGTERM to this process (sent after the
    scenario if it did not). Returns main's exit code and the seconds from SIGTERM to
    its return."""
    failures: list[BaseException] = []
    sent: list[float] = []

    def stop() -> None:
        if not sent:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

    def drive() -> None:
        try:
            listening_or_ended(host, port)
            scenario(f"http://{host}:{port}", stop)
        except BaseException as exc:
            failures.append(exc)
        finally:
            stop()

    code = run_with_signals_guarded(lambda: main(argv), drive)
    if failures:
        raise failures[0]
    return code, time.monotonic() - sent[0]


def test_serves_the_app_with_readiness_proxy_headers_and_root_path_then_exits_0(
    port: int, restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. graceful-serve APP --root-path /api --quiet-period 0.3 --timeout-keep-alive 1.
    2. /ready is graceful's 200 (the app has none); the app sees the client and scheme
    from X-Forwarded-For/-Proto (trusted from 127.0.0.1 by default), the root path, and
    the lifecycle as serving; a kept-alive connection is closed once idle 1 s. 3. SIGTERM
    while a probe polls /ready every 50 ms: readiness 503 at once; the probes do not hold
    the quiet period open (under the root path too). 4. main returns 0; uvicorn's log
    format carries graceful's lines and the access log."""
    seen: dict[str, float] = {}

    def scenario(url: str, stop: Callable[[], None]) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            ready = client.get("/ready")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            echo = client.get(
                "/echo", headers={"x-forwarded-for": "10.1.2.3", "x-forwarded-proto": "https"}
            )
            assert (
                echo.text == "client=10.1.2.3 scheme=https root=/api path=/api/echo phase=serving"
            )
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(4096)
            sock.settimeout(0.4)
            with pytest.raises(TimeoutError):  # kept alive for now
                sock.recv(4096)
            sock.settimeout(2.0)
            assert sock.recv(4096) == b""  # closed by the server once idle 1 s
        signalled = time.monotonic()
        stop()
        with httpx.Client(base_url=url, timeout=5) as client:
            wait_until(lambda: client.get("/ready").status_code == 503, 2, what="readiness 503")
            try:
                while time.monotonic() - signalled < 1.5:
                    client.get("/ready")
                    time.sleep(0.05)
            except httpx.ConnectError:
                seen["closed"] = time.monotonic() - signalled

    code, _ = serve_main(
        [
            f"{ECHO}:app",
            "--port",
            str(port),
            "--root-path",
            "/api",
            "--quiet-period",
            "0.3",
            "--timeout-keep-alive",
            "1",
        ],
        "127.0.0.1",
        port,
        scenario,
    )
    assert code == 0
    assert 0.3 <= seen["closed"] < 0.8, seen
    captured = capsys.readouterr()
    err = captured.err
    assert f"INFO:     Uvicorn running on http://127.0.0.1:{port}" in err
    assert "INFO:     Shutdown started (signal SIGTERM)" in err
    assert "INFO:     Shutdown phase delay took" in err
    assert "Shutdown budget" not in err
    assert '10.1.2.3:0 - "GET /api/echo HTTP/1.1" 200' in captured.out, captured.out


def test_each_uvicorn_option_reaches_the_server(
    port: int, restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. graceful-serve --factory APP --host 127.0.0.2 --no-proxy-headers
    --forwarded-allow-ips '*' --readiness-path off --no-access-log --log-level warning.
    2. It listens on 127.0.0.2 only; X-Forwarded-For is ignored; /ready is the app's own
    404. 3. After SIGTERM it exits 0, having logged nothing below warning and no access
    line."""

    def scenario(url: str, stop: Callable[[], None]) -> None:
        assert refused("127.0.0.1", port)
        with httpx.Client(base_url=url, timeout=5) as client:
            echo = client.get("/echo", headers={"x-forwarded-for": "10.1.2.3"})
            assert echo.text.startswith("client=127.0.0.") and "scheme=http " in echo.text
            assert client.get("/ready").status_code == 404

    code, took = serve_main(
        [
            "--factory",
            f"{ECHO}:make_app",
            "--host",
            "127.0.0.2",
            "--port",
            str(port),
            "--no-proxy-headers",
            "--forwarded-allow-ips",
            "*",
            "--readiness-path",
            "off",
            "--no-access-log",
            "--log-level",
            "warning",
            "--quiet-period",
            "0",
        ],
        "127.0.0.2",
        port,
        scenario,
    )
    assert code == 0
    assert took < 1.5
    captured = capsys.readouterr()
    assert "Shutdown started" not in captured.err
    assert "Uvicorn running on" not in captured.err  # uvicorn's loggers at warning too
    assert "GET /echo" not in captured.out + captured.err


def test_forwarded_allow_ips_from_the_environment_limits_proxy_headers(
    port: int, restored: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. UVICORN_APP, UVICORN_FORWARDED_ALLOW_IPS=10.0.0.1 (not us), UVICORN_ACCESS_LOG
    off, GRACEFUL_QUIET_PERIOD 0, and UVICORN_PORT=1 overridden by --port. 2. It serves
    on --port; X-Forwarded-For from 127.0.0.1 is not trusted; no access line is logged,
    while the info lines are."""
    monkeypatch.setenv("UVICORN_APP", f"{ECHO}:app")
    monkeypatch.setenv("UVICORN_ACCESS_LOG", "off")
    monkeypatch.setenv("UVICORN_FORWARDED_ALLOW_IPS", "10.0.0.1")
    monkeypatch.setenv("UVICORN_PORT", "1")
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")

    def scenario(url: str, stop: Callable[[], None]) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            echo = client.get("/echo", headers={"x-forwarded-for": "10.1.2.3"})
            assert echo.text.startswith("client=127.0.0.1 "), echo.text

    code, _ = serve_main(["--port", str(port)], "127.0.0.1", port, scenario)
    assert code == 0
    captured = capsys.readouterr()
    assert "INFO:     Shutdown started (signal SIGTERM)" in captured.err
    assert "GET /echo" not in captured.out + captured.err


def test_an_app_that_cannot_load_or_start_returns_1_with_the_reason(
    restored: None, capsys: pytest.CaptureFixture[str], port: int
) -> None:
    """1. graceful-serve of a missing module, with limits that cannot fit the grace
    period. 2. It warns about the budget, logs why the app cannot load, and returns 1.
    3. An app whose lifespan startup fails: uvicorn's startup-failure exit (3), nothing
    served."""
    code = main(["no_such_module_here:app", "--grace-period", "5", "--drain-timeout", "10"])
    assert code == 1
    err = capsys.readouterr().err
    assert (
        "WARNING:  Shutdown budget: shutdown phases need up to 20 s (delay 10 + drain 10) "
        "but only 4 s remain before SIGKILL (grace period 5 s - safety margin 1 s)"
    ) in err
    assert "ERROR:    cannot load APP: " in err and "no_such_module_here" in err
    with pytest.raises(SystemExit) as exited:  # uvicorn's own exit for a failed startup
        main([f"{ECHO}:failing_startup", "--port", str(port)])
    assert exited.value.code == 3
    assert refused("127.0.0.1", port)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["app:app", "--workers", "2"], {}, "--workers is not supported: run one process per"),
        (["app:app", "--workers=2"], {}, "--workers is not supported"),
        (["--reload", "app:app"], {}, "--reload is not supported: it restarts the server"),
        ([], {}, "APP is required: graceful-serve module:attribute"),
        (["nocolon"], {}, "APP must be \"<module>:<attribute>\", got 'nocolon'"),
        (["app:app", "--port", "http"], {}, "--port: expected a whole number, got 'http'"),
        (["app:app", "--port", "65536"], {}, "--port: a port is 0-65535, got 65536"),
        (["app:app", "--workers=2=3"], {}, "--workers is not supported"),
        (["app:app", "--port", "-1"], {}, "--port: a port is 0-65535, got -1"),
        (
            ["app:app", "--timeout-keep-alive", "-1"],
            {},
            "--timeout-keep-alive: expected a number >= 0, got -1",
        ),
        (["app:app"], {"UVICORN_PORT": "x"}, "UVICORN_PORT: expected a whole number, got 'x'"),
        (
            ["app:app"],
            {"UVICORN_FACTORY": "maybe"},
            "UVICORN_FACTORY: expected one of 1/true/yes/on/0/false/no/off, got 'maybe'",
        ),
        (
            ["app:app", "--log-level", "loud"],
            {},
            "--log-level: expected one of critical, error, warning, info, debug, trace, got 'loud'",
        ),
        (["app:app"], {"UVICORN_LOG_LEVEL": "loud"}, "UVICORN_LOG_LEVEL: expected one of"),
        (
            ["app:app"],
            {"GRACEFUL_DRAIN_TIMEOUT": "soon"},
            "GRACEFUL_DRAIN_TIMEOUT: expected seconds (a number), got 'soon'",
        ),
        (
            ["app:app", "--quiet-period", "-1"],
            {},
            "--quiet-period: expected seconds >= 0, got '-1'",
        ),
        (["app:app", "--quiet-max", "inf"], {}, "--quiet-max: expected seconds >= 0, got 'inf'"),
        (
            ["app:app", "--readiness-path", "ready"],
            {},
            "--readiness-path: a path starts with '/', got 'ready' (or 'off')",
        ),
        (
            ["app:app", "--grace-period", "1"],
            {},
            "grace period must be over 1 s (the safety margin), got 1",
        ),
        (
            ["app:app", "--quiet-period", "5", "--quiet-max", "2"],
            {},
            "quiet max (2 s) is shorter than the quiet period (5 s): the quiet period could "
            "never be met",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_option_or_variable(
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1. main() with one bad option or variable. 2. It exits 2 with argparse's usage and
    a message naming the option or variable, before anything is loaded or served."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: graceful-serve"), err
    assert f"graceful-serve: error: {message}" in err, err


def squashed(text: str) -> str:
    return " ".join(text.split())


HELP = {
    "--host HOST": "bind socket to this host (default 127.0.0.1) (env UVICORN_HOST)",
    "--port PORT": "bind socket to this port (default 8000) (env UVICORN_PORT)",
    "--factory": "treat APP as an application factory, a () -> ASGI app callable "
    "(env UVICORN_FACTORY)",
    "--root-path ROOT_PATH": "the ASGI root_path, behind a path prefix (env UVICORN_ROOT_PATH)",
    "--proxy-headers, --no-proxy-headers": "take the client address and scheme from "
    "X-Forwarded-For/-Proto (default on) (env UVICORN_PROXY_HEADERS)",
    "--forwarded-allow-ips FORWARDED_ALLOW_IPS": "comma-separated IPs or networks to trust "
    "with proxy headers, '*' for all (default: env FORWARDED_ALLOW_IPS, else 127.0.0.1) "
    "(env UVICORN_FORWARDED_ALLOW_IPS)",
    "--log-level LOG_LEVEL": "one of critical, error, warning, info, debug, trace "
    "(default info) (env UVICORN_LOG_LEVEL)",
    "--app-dir APP_DIR": "look for APP in this directory, added to the module path "
    "(default .) (env UVICORN_APP_DIR)",
    "--access-log, --no-access-log": "log each request (default on) (env UVICORN_ACCESS_LOG)",
    "--timeout-keep-alive TIMEOUT_KEEP_ALIVE": "close keep-alive connections idle this many "
    "seconds (default 5) (env UVICORN_TIMEOUT_KEEP_ALIVE)",
    "--grace-period SECONDS": "seconds from SIGTERM to SIGKILL (the pod's "
    "terminationGracePeriodSeconds); every phase ends 1 s before (env GRACEFUL_GRACE_PERIOD; "
    "default 30.0)",
    "--pre-close-delay SECONDS": "seconds to keep serving after SIGTERM before the quiet "
    "period (env GRACEFUL_PRE_CLOSE_DELAY; default 0.0)",
    "--quiet-period SECONDS": "then keep serving until no request came for this many seconds "
    "(kubelet probes, told by their User-Agent kube-probe/..., do not count, nor "
    "--quiet-exempt paths); 0 = off (env GRACEFUL_QUIET_PERIOD; default 1.0)",
    "--quiet-max SECONDS": "at most this many seconds of delay and quiet period in all "
    "(env GRACEFUL_QUIET_MAX; default 10.0)",
    "--drain-timeout SECONDS": "after closing the listener, wait at most this many seconds "
    "for running requests, then abort them (env GRACEFUL_DRAIN_TIMEOUT; default 10.0)",
    "--readiness-path PATH": "answer GET/HEAD here: 503 from SIGTERM on, else the app's "
    "answer, or 200 if the app has no such route; 'off' leaves the path to the app "
    "(env GRACEFUL_READINESS_PATH; default /ready)",
    "--quiet-exempt PATHS": "comma-separated paths whose requests never count as traffic for "
    "the quiet period, whoever sends them (a scraper's /metrics); 'none' for no path. The "
    "readiness path never counts (env GRACEFUL_QUIET_EXEMPT; default /metrics)",
}


def test_help_says_what_each_option_does_with_its_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. `graceful-serve --help`, 200 columns wide. 2. Each option is listed with its
    metavar, what it does, its environment variable and its default; the groups, the
    description and the epilog (what is not supported, and the later signals) say what
    README.md's four steps and docs/graceful.md say."""
    monkeypatch.setenv("COLUMNS", "200")
    text = squashed(build_parser().format_help())
    assert text.startswith("usage: graceful-serve [-h]")
    assert "positional arguments: APP module:attribute (env UVICORN_APP)" in text
    for flags, help_text in HELP.items():
        assert f"{flags} {help_text}" in text, flags
    assert (
        "uvicorn's options (same names and meaning; env UVICORN_<NAME>, e.g. UVICORN_PORT):"
    ) in text
    assert "shutdown (env GRACEFUL_<NAME>):" in text
    assert (
        "Serve an ASGI 3 app with uvicorn and a shutdown that drops nothing: at SIGTERM, "
        "readiness answers 503, the server keeps serving until the load balancer has "
        "stopped sending (quiet period), answers Connection: close, then stops listening, "
        "drains running requests and runs the app's lifespan shutdown, all within the "
        "grace period. Options win over environment variables."
    ) in text
    assert (
        "Not supported: --workers, --timeout-worker-healthcheck (run one process per container "
        "and scale with replicas, or run gunicorn -k graceful.gunicorn.Worker for several "
        "workers in one); --reload, --reload-dir, --reload-include, --reload-exclude, "
        "--reload-delay (it restarts the server without the shutdown phases; use uvicorn to "
        "develop); --uds, --fd (graceful-serve listens on --host/--port only); --ssl-keyfile, "
    ) in text
    assert text.endswith(
        "Each is refused as an option and as its UVICORN_<NAME> variable. A repeated SIGTERM "
        "is ignored; a second SIGINT stops waiting for requests; a third signal exits at "
        "once. A signal during the app's startup cancels it and exits with 128 + the signal "
        "(a second one at once)."
    )


def parsed(*args: str, env: dict[str, str] | None = None) -> ServeConfig:
    return resolve(build_parser().parse_args(list(args)), env or {})


def test_defaults_are_uvicorns_and_the_shutdown_options() -> None:
    """graceful-serve APP alone: uvicorn's defaults and the shutdown defaults."""
    assert parsed("m:app") == ServeConfig(app="m:app")
    assert parsed("m:app", "--port", "65535").port == 65535
    config = ServeConfig(app="m:app")
    assert (config.host, config.port, config.factory, config.root_path) == (
        "127.0.0.1",
        8000,
        False,
        "",
    )
    assert (config.proxy_headers, config.forwarded_allow_ips, config.log_level) == (
        True,
        None,
        "info",
    )
    assert (config.app_dir, config.access_log, config.timeout_keep_alive) == (".", True, 5)
    assert config.shutdown == ServeShutdown(30.0, 0.0, 1.0, 10.0, 10.0, "/ready")


def test_every_option_from_the_environment_and_the_command_line_over_it() -> None:
    """1. Every UVICORN_* and GRACEFUL_* variable set. 2. The config takes each, typed
    (booleans in any case, the log level lower-cased). 3. The same settings given as
    options win over different values in the environment."""
    env = {
        "UVICORN_APP": "pkg.mod:application",
        "UVICORN_HOST": "127.0.0.3",
        "UVICORN_PORT": "8123",
        "UVICORN_FACTORY": "Yes",
        "UVICORN_ROOT_PATH": "/api",
        "UVICORN_PROXY_HEADERS": "OFF",
        "UVICORN_FORWARDED_ALLOW_IPS": "10.0.0.0/8",
        "UVICORN_LOG_LEVEL": "WARNING",
        "UVICORN_APP_DIR": "src",
        "UVICORN_ACCESS_LOG": "0",
        "UVICORN_TIMEOUT_KEEP_ALIVE": "7",
        "GRACEFUL_GRACE_PERIOD": "40",
        "GRACEFUL_PRE_CLOSE_DELAY": "2",
        "GRACEFUL_QUIET_PERIOD": "3",
        "GRACEFUL_QUIET_MAX": "12",
        "GRACEFUL_DRAIN_TIMEOUT": "9",
        "GRACEFUL_READINESS_PATH": "off",
    }
    from_env = ServeConfig(
        app="pkg.mod:application",
        host="127.0.0.3",
        port=8123,
        factory=True,
        root_path="/api",
        proxy_headers=False,
        forwarded_allow_ips="10.0.0.0/8",
        log_level="warning",
        app_dir="src",
        access_log=False,
        timeout_keep_alive=7,
        shutdown=ServeShutdown(40.0, 2.0, 3.0, 12.0, 9.0, None),
    )
    assert parsed(env=env) == from_env
    for truth in ("1", "true", "TRUE", "on"):
        assert parsed(env={**env, "UVICORN_FACTORY": truth}).factory is True
    for falsehood in ("no", "False", "0"):
        assert parsed(env={**env, "UVICORN_FACTORY": falsehood}).factory is False
    given = parsed(
        "other:app",
        "--host",
        "127.0.0.4",
        "--port",
        "0",
        "--root-path",
        "",
        "--proxy-headers",
        "--forwarded-allow-ips",
        "*",
        "--log-level",
        "DEBUG",
        "--app-dir",
        ".",
        "--access-log",
        "--timeout-keep-alive",
        "0",
        "--grace-period",
        "20",
        "--pre-close-delay",
        "0",
        "--quiet-period",
        "1.5",
        "--quiet-max",
        "4",
        "--drain-timeout",
        "5",
        "--readiness-path",
        "/healthz/ready",
        env=env,
    )
    assert given == ServeConfig(
        app="other:app",
        host="127.0.0.4",
        port=0,
        factory=True,  # --factory has no "off" form: the environment's stands
        root_path="",
        proxy_headers=True,
        forwarded_allow_ips="*",
        log_level="debug",
        app_dir=".",
        access_log=True,
        timeout_keep_alive=0,
        shutdown=ServeShutdown(20.0, 0.0, 1.5, 4.0, 5.0, "/healthz/ready"),
    )


def test_shutdown_settings_become_the_phases_config() -> None:
    """1. A readiness path of /healthz/ready under the root path /api. 2. The phases get
    drain, readiness flip, Connection: close and the budget switched on, the given
    limits, and probes of every exempt path (with and without the root path) do not
    count as traffic."""
    settings = ServeShutdown(20.0, 2.0, 1.5, 4.0, 5.0, "/healthz/ready")
    config = settings.shutdown_config("/api")
    exempt = set(DEFAULT_QUIET_EXEMPT) | {"/healthz/ready"}
    assert config == ShutdownConfig(
        drain=True,
        drain_timeout=5.0,
        readiness_flip=True,
        connection_close=True,
        pre_close_delay=2.0,
        quiet_period=1.5,
        quiet_max=4.0,
        grace_period=20.0,
        safety_margin=1.0,
        enforce_budget=True,
        quiet_exempt_paths=frozenset(exempt | {"/api" + path for path in exempt}),
    )
    plain = ServeShutdown(readiness_path=None).shutdown_config()
    assert plain.quiet_exempt_paths == DEFAULT_QUIET_EXEMPT == {"/metrics"}
    chosen = ServeShutdown(readiness_path=None, quiet_exempt=frozenset()).shutdown_config()
    assert chosen.quiet_exempt_paths == frozenset()
    assert settings.problems() == []
    assert ServeShutdown(grace_period=5.0).problems() == [
        "shutdown phases need up to 20 s (delay 10 + drain 10) but only 4 s remain before "
        "SIGKILL (grace period 5 s - safety margin 1 s)"
    ]


def test_shutdown_options_edges() -> None:
    """Edges the server commands share: 'off', 'none', '' and ' OFF ' switch readiness
    off; a grace period just over the margin is accepted; a quiet period of 0 needs no
    quiet max; a quiet max equal to the quiet period is enough."""
    for off in ("off", "none", "", " OFF "):
        assert resolve_shutdown({"readiness_path": off}, {}).readiness_path is None
    assert resolve_shutdown({"grace_period": "1.01"}, {}).grace_period == 1.01
    assert resolve_shutdown({"quiet_period": "0", "quiet_max": "0"}, {}).quiet_max == 0
    assert resolve_shutdown({"quiet_period": "2", "quiet_max": "2"}, {}).quiet_period == 2
    assert resolve_shutdown({}, {"GRACEFUL_GRACE_PERIOD": "9"}).grace_period == 9
    assert resolve_shutdown({"grace_period": "8"}, {"GRACEFUL_GRACE_PERIOD": "9"}).grace_period == 8
    with pytest.raises(OptionError, match=r"^GRACEFUL_GRACE_PERIOD: expected seconds >= 0"):
        resolve_shutdown({}, {"GRACEFUL_GRACE_PERIOD": "-3"})
    with pytest.raises(OptionError, match=r"^GRACEFUL_READINESS_PATH: a path starts with"):
        resolve_shutdown({}, {"GRACEFUL_READINESS_PATH": "ready"})
    with pytest.raises(OptionError, match=r"got 0.5$"):
        resolve_shutdown({"grace_period": "0.5"}, {})


def test_log_config_adds_gracefuls_loggers_without_changing_uvicorns() -> None:
    """graceful's loggers go to uvicorn's handler at the chosen level (trace = DEBUG),
    without propagating twice; uvicorn's own default config is left as it was."""
    assert log_config("trace")["loggers"]["graceful"] == {
        "handlers": ["default"],
        "level": "DEBUG",
        "propagate": False,
    }
    assert log_config("warning")["loggers"]["graceful"]["level"] == "WARNING"
    assert log_config("info")["loggers"]["uvicorn"] == LOGGING_CONFIG["loggers"]["uvicorn"]
    assert "graceful" not in LOGGING_CONFIG["loggers"]


def test_load_app_from_a_directory_a_factory_or_not_at_all(restored: None) -> None:
    """1. APP in --app-dir; a factory; a factory that is not callable; one that returns
    something that is not an app; an attribute that is not an app. 2. The first two load;
    each other is refused naming APP and why."""
    from tests.graceful.apps import echo

    loaded = load_app(ServeConfig(app="echo:make_app", app_dir="tests/graceful/apps", factory=True))
    assert sys.path[0] == os.path.abspath("tests/graceful/apps")
    assert loaded.__name__ == "app" and callable(loaded)
    assert load_app(ServeConfig(app=f"{ECHO}:app")) is echo.app
    with pytest.raises(OptionError, match=r"is not callable, so not a factory$"):
        load_app(ServeConfig(app=f"{ECHO}:not_a_factory", factory=True))
    with pytest.raises(
        OptionError, match=rf"^APP '{ECHO}:makes_nothing' is not an ASGI app \(not callable\)$"
    ):
        load_app(ServeConfig(app=f"{ECHO}:makes_nothing", factory=True))
    with pytest.raises(OptionError, match=r"is not an ASGI app \(not callable\)$"):
        load_app(ServeConfig(app=f"{ECHO}:not_a_factory"))
    with pytest.raises(OptionError, match=r'^cannot load APP: Attribute "nope" not found'):
        load_app(ServeConfig(app=f"{ECHO}:nope"))


def test_main_reads_the_command_line_when_given_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`graceful-serve --workers 2` as the console script calls it (main() with no
    arguments): the command line is read, and --workers refused."""
    monkeypatch.setattr(sys, "argv", ["graceful-serve", "--workers", "2", "m:app"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "graceful-serve: error: --workers is not supported" in capsys.readouterr().err


def test_a_short_quiet_period_longer_than_its_limit_is_refused() -> None:
    """A quiet period of 0.5 s with at most 0.2 s could never be met: refused, however
    short."""
    with pytest.raises(OptionError, match="could never be met"):
        resolve_shutdown({"quiet_period": "0.5", "quiet_max": "0.2"}, {})
