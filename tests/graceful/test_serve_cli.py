"""`graceful-serve module:app`: the drop-in for `uvicorn module:app`. Real processes on
real sockets, real signals; the apps are in tests/graceful/apps/served.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.support import REPO, VENV_BIN, Processes, wait_until

COMMAND = str(VENV_BIN / "graceful-serve")
APP_PLAIN = "tests.graceful.apps.served:app"
SUPPORTED = {
    "-h",
    "--help",
    "--host",
    "--port",
    "--factory",
    "--root-path",
    "--proxy-headers",
    "--no-proxy-headers",
    "--forwarded-allow-ips",
    "--log-level",
    "--app-dir",
    "--access-log",
    "--no-access-log",
    "--timeout-keep-alive",
    "--grace-period",
    "--pre-close-delay",
    "--quiet-period",
    "--quiet-max",
    "--drain-timeout",
    "--readiness-path",
    "--quiet-exempt",
}


def serve(
    processes: Processes, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    process = processes.start([COMMAND, *args], env=env, cwd=REPO, name="graceful-serve")
    wait_until(
        lambda: "Uvicorn running" in processes.output(process) or process.poll() is not None,
        15,
        what="graceful-serve to start",
    )
    assert process.poll() is None, processes.output(process)
    return process


def run_briefly(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, *args],
        env={**os.environ, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_lists_exactly_the_supported_options() -> None:
    """1. `graceful-serve --help`. 2. The options it lists are exactly uvicorn's common
    ones and the shutdown ones, each with its environment variable; --workers and
    --reload, and every other uvicorn option, are named as not supported."""
    from graceful.cli import UNSUPPORTED

    result = run_briefly("--help")
    assert result.returncode == 0
    text = result.stdout
    supported, _, refused = text.partition("Not supported:")
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", supported))
    assert listed == SUPPORTED, listed ^ SUPPORTED
    for env in ("UVICORN_PORT", "UVICORN_APP", "GRACEFUL_GRACE_PERIOD", "GRACEFUL_READINESS_PATH"):
        assert env in text
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", refused.replace("-\n", "-")))
    assert {r.flags[0] for r in UNSUPPORTED} <= named, {r.flags[0] for r in UNSUPPORTED} - named
    assert "WEB_CONCURRENCY other than 1" in " ".join(refused.split())


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["app:app", "--workers", "2"], {}, "--workers is not supported"),
        (["--reload", "app:app"], {}, "--reload is not supported"),
        (["app:app", "--uds", "/tmp/app.sock"], {}, "--uds is not supported"),
        (["app:app", "--ssl-certfile=c.pem"], {}, "--ssl-certfile is not supported"),
        (["app:app", "--no-date-header"], {}, "--no-date-header is not supported"),
        ([], {}, "APP is required"),
        (["nocolon"], {}, 'APP must be "<module>:<attribute>"'),
        (["app:app", "--port", "http"], {}, "--port: expected a whole number"),
        (["app:app", "--port", "70000"], {}, "--port: a port is 0-65535"),
        (["app:app"], {"UVICORN_PORT": "x"}, "UVICORN_PORT: expected a whole number"),
        (["app:app"], {"UVICORN_FACTORY": "maybe"}, "UVICORN_FACTORY: expected one of"),
        (["app:app", "--log-level", "loud"], {}, "--log-level: expected one of"),
        (["app:app"], {"GRACEFUL_DRAIN_TIMEOUT": "soon"}, "GRACEFUL_DRAIN_TIMEOUT: expected"),
        (["app:app", "--quiet-period", "-1"], {}, "--quiet-period: expected seconds >= 0"),
        (["app:app", "--quiet-period", "nan"], {}, "--quiet-period: expected seconds >= 0"),
        (["app:app", "--readiness-path", "ready"], {}, "a path starts with '/'"),
        (["app:app", "--grace-period", "1"], {}, "grace period must be over 1 s"),
        (["app:app", "--quiet-period", "5", "--quiet-max", "2"], {}, "could never be met"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_before_anything_starts(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """1. graceful-serve with one bad option or variable. 2. It exits 2 at once with a
    message naming the option or variable, and serves nothing."""
    result = run_briefly(*args, env=env)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Uvicorn running" not in result.stderr


def test_an_app_that_cannot_be_loaded_exits_1_with_the_reason() -> None:
    """1. graceful-serve of a module that does not exist, then of an attribute that is
    not there. 2. Each exits 1, saying what could not be loaded."""
    missing_module = run_briefly("no_such_module:app", "--port", "0")
    assert missing_module.returncode == 1
    assert "cannot load APP" in missing_module.stderr and "no_such_module" in missing_module.stderr
    missing_attr = run_briefly("tests.graceful.apps.served:nope", "--port", "0")
    assert missing_attr.returncode == 1
    assert 'Attribute "nope" not found' in missing_attr.stderr, missing_attr.stderr


def test_sigterm_flips_readiness_keeps_serving_then_drains_and_exits_0(
    processes: Processes, port: int
) -> None:
    """1. graceful-serve of an app with no readiness route, quiet period 1 s. 2. /ready
    answers 200 (graceful's own; HEAD too, with no body; a POST goes to the app), the app
    sees phase "serving". 3. A 1.5 s request
    starts; SIGTERM. 4. /ready answers 503 at once, while other requests are still
    served, with `Connection: close`. 5. The slow request ends 200. 6. The process exits
    0 after the quiet period, having logged each phase."""
    process = serve(processes, "tests.graceful.apps.served:app", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    ready = httpx.get(f"{base}/ready", timeout=5)
    assert (ready.status_code, ready.text) == (200, "ready\n")
    head = httpx.head(f"{base}/ready", timeout=5)
    assert (head.status_code, head.content) == (200, b"")
    assert httpx.post(f"{base}/ready", timeout=5).status_code == 404  # GET and HEAD only
    assert httpx.get(f"{base}/phase", timeout=5).text == "serving"
    assert httpx.get(f"{base}/loop", timeout=5).text.startswith("uvloop")  # as uvicorn's

    slow: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: slow.append(httpx.get(f"{base}/work?seconds=1.5", timeout=10))
    )
    thread.start()
    try:
        wait_until(lambda: "Working 1.5 s" in processes.output(process), 5, what="slow request")
        sigterm = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="shutdown")
        not_ready = httpx.get(f"{base}/ready", timeout=5)
        assert not_ready.status_code == 503
        during = httpx.get(f"{base}/phase", timeout=5)
        assert during.text == "delay"
        assert during.headers["connection"] == "close"
    finally:
        thread.join(10)
    assert slow[0].status_code == 200 and slow[0].text == "done"
    assert process.wait(10) == 0
    took = time.monotonic() - sigterm
    assert 1.0 <= took < 5.0, took
    log = processes.output(process)
    for phase in ("delay", "closing", "draining", "app-shutdown"):
        assert f"Shutdown phase {phase} took" in log, log
    assert "Traceback" not in log


def test_environment_variables_set_every_option_and_the_apps_own_readiness_stands(
    processes: Processes, port: int
) -> None:
    """1. graceful-serve configured by environment only (UVICORN_APP, UVICORN_PORT,
    GRACEFUL_QUIET_PERIOD=0) of an app with its own /ready, answering 503 "database
    down" until /db-up. 2. /ready gives the app's 503, then after /db-up the app's 200.
    3. SIGTERM: /ready is graceful's 503 (the app would still say 200) until the
    listener closes. 4. Exit 0 within 2 s: no quiet period."""
    env = {
        "UVICORN_APP": "tests.graceful.apps.served:app_with_ready",
        "UVICORN_PORT": str(port),
        "GRACEFUL_QUIET_PERIOD": "0",
        "GRACEFUL_PRE_CLOSE_DELAY": "1",
    }
    process = serve(processes, env=env)
    base = f"http://127.0.0.1:{port}"
    down = httpx.get(f"{base}/ready", timeout=5)
    assert (down.status_code, down.text) == (503, "database down")
    httpx.get(f"{base}/db-up", timeout=5)
    up = httpx.get(f"{base}/ready", timeout=5)
    assert (up.status_code, up.text) == (200, "app ready")
    sigterm = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="shutdown")
    flipped = httpx.get(f"{base}/ready", timeout=5)
    assert (flipped.status_code, flipped.text) == (503, "not ready\n")
    assert process.wait(10) == 0
    assert time.monotonic() - sigterm < 2.5


def test_readiness_under_a_root_path(processes: Processes, port: int) -> None:
    """1. graceful-serve --root-path /api (behind a proxy that strips /api). 2. GET
    /ready is graceful's 200, the app's routes answer as before. 3. SIGTERM: /ready
    503; exit 0."""
    process = serve(
        processes, APP_PLAIN, "--port", str(port), "--root-path", "/api", "--quiet-period", "0.5"
    )
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/ready", timeout=5).text == "ready\n"
    assert httpx.get(f"{base}/phase", timeout=5).text == "serving"
    os.kill(process.pid, signal.SIGTERM)
    wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="shutdown")
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 503
    assert process.wait(10) == 0


def test_factory_app_dir_and_readiness_off(processes: Processes, port: int) -> None:
    """1. graceful-serve --factory --app-dir tests/graceful/apps served:make_app with
    --readiness-path off. 2. The factory's app serves /work. 3. /ready is the app's
    (404: it has none), not graceful's. 4. SIGINT: exit 0."""
    process = serve(
        processes,
        "--factory",
        "--app-dir",
        "tests/graceful/apps",
        "served:make_app",
        "--port",
        str(port),
        "--readiness-path",
        "off",
        "--no-access-log",
        "--quiet-period",
        "0",
    )
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/work", timeout=5).text == "done"
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 404
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(10) == 0
    assert '"GET /work' not in processes.output(process)  # --no-access-log


def test_a_repeated_sigterm_is_ignored_and_the_drain_still_waits(
    processes: Processes, port: int
) -> None:
    """1. graceful-serve, quiet period 0. 2. A 1 s request; SIGTERM, then SIGTERM
    again. 3. The second is logged and ignored; the request still ends 200; exit 0."""
    process = serve(
        processes, "tests.graceful.apps.served:app", "--port", str(port), "--quiet-period", "0"
    )
    result: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: result.append(
            httpx.get(f"http://127.0.0.1:{port}/work?seconds=1", timeout=10)
        )
    )
    thread.start()
    try:
        wait_until(lambda: "Working 1.0 s" in processes.output(process), 5, what="request")
        os.kill(process.pid, signal.SIGTERM)
        wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="shutdown")
        os.kill(process.pid, signal.SIGTERM)
    finally:
        thread.join(10)
    assert result[0].status_code == 200
    assert process.wait(10) == 0
    assert "SIGTERM again during shutdown: ignored" in processes.output(process)


def test_current_lifecycle_without_a_graceful_server_says_how_to_start_one() -> None:
    """1. In a process no graceful server command runs (this one). 2.
    `current_lifecycle()` raises NoLifecycle naming the commands that provide one."""
    from graceful import NoLifecycle, current_lifecycle

    with pytest.raises(NoLifecycle, match="start the app with graceful-serve"):
        current_lifecycle()
