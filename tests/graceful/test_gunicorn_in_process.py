"""`graceful.gunicorn.Worker` inside the pytest process, as gunicorn's master would run it
after the fork: a real gunicorn config, logger and listening socket, the worker's
`init_process` serving until a real signal to this process (SIGTERM from the master, or
its SIGQUIT quick shutdown). The forced exit is recorded instead of ending pytest. The
same cases run under a real gunicorn master in test_gunicorn.py."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gunicorn import glogging
from gunicorn import sock as gunicorn_sock
from gunicorn.app.base import BaseApplication

from graceful import current_lifecycle
from graceful.asgi import ASGIApp
from graceful.config import ShutdownConfig
from graceful.gunicorn import Worker, WorkerServer
from graceful.lifecycle import Lifecycle, Phase
from tests.graceful.apps import echo
from tests.graceful.in_process import Slow, process_state_restored, refused
from tests.support import wait_until


class Application(BaseApplication):  # type: ignore[misc]
    """gunicorn's application object for one ASGI app and a few settings."""

    def __init__(self, app: ASGIApp, settings: dict[str, Any]) -> None:
        self.application = app
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.settings.items():
            self.cfg.set(name, value)

    def load(self) -> ASGIApp:
        return self.application


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The worker's forced exits, recorded; the process state the worker sets up (its
    loggers, signal dispositions, the current lifecycle) put back afterwards."""
    recorded: list[int] = []
    monkeypatch.setattr(WorkerServer, "hard_exit", staticmethod(recorded.append))
    for name in list(os.environ):
        if name.startswith("GRACEFUL_"):
            monkeypatch.delenv(name)
    handled = [*Worker.SIGNALS, signal.SIGUSR1]
    previous = {sig: signal.getsignal(sig) for sig in handled}
    with process_state_restored("gunicorn.error", "gunicorn.access"):
        yield recorded
    echo.release.set()
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def serving(worker: Worker) -> bool:
    return worker.lifecycle is not None and worker.lifecycle.phase is Phase.SERVING


def boot(
    port: int,
    scenario: Callable[[str], None] | None,
    app: ASGIApp = echo.app,
    observed: dict[str, float] | None = None,
    master: int | None = None,
    **settings: Any,
) -> Worker:
    """A worker of `app` on 127.0.0.1:`port` with these gunicorn settings, served in this
    thread by `init_process`; `scenario(url)` in a thread once the port answers (None: a
    worker expected to stop before it serves).

    Its master is `master`: by default pytest's parent, which does not hold the listener,
    as gunicorn's master after its SIGTERM; this process (which does) for a master that
    keeps listening."""
    application = Application(app, {"bind": [f"127.0.0.1:{port}"], **settings})
    cfg = application.cfg
    log = glogging.Logger(cfg)
    sockets = gunicorn_sock.create_sockets(cfg, log)
    master = os.getppid() if master is None else master
    worker = Worker(1, master, sockets, application, cfg.timeout, cfg, log)
    failures: list[BaseException] = []
    ended = threading.Event()

    def drive() -> None:
        try:
            # gunicorn's socket accepts from its creation on: wait for the worker to serve.
            wait_until(lambda: serving(worker) or ended.is_set(), 10, what="the worker to serve")
            assert not ended.is_set(), "the worker ended before it served"
        except AssertionError as exc:
            failures.append(exc)  # no server to signal: its handlers may not be there
            return
        try:
            assert scenario is not None
            scenario(f"http://127.0.0.1:{port}")
        except BaseException as exc:
            failures.append(exc)
            echo.release.set()
            # The master's quick shutdown, twice: the worker ends at once.
            os.kill(os.getpid(), signal.SIGQUIT)
            os.kill(os.getpid(), signal.SIGQUIT)

    thread = threading.Thread(target=drive, name="scenario", daemon=True)
    if scenario is not None:
        thread.start()
    try:
        worker.init_process()
    finally:
        ended.set()
        if scenario is not None:
            thread.join(15)
        if observed is not None:
            observed["heartbeat"] = worker.tmp.last_update()
        worker.tmp.close()
        for fd in worker.PIPE:
            os.close(fd)
        for listener in sockets:  # the worker closes them at shutdown, if it served
            if listener.sock is not None:
                listener.close()
    if failures:
        raise failures[0]
    assert not thread.is_alive()
    return worker


def test_sigterm_from_the_master_runs_the_phases_within_its_graceful_timeout(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A worker with gunicorn's --graceful-timeout 5, keepalive 0, a 0.3 s quiet
    period (at most 1 s) and a 2 s drain timeout, which fit the 5 s. 2. /ready is graceful's 200; X-Forwarded-For from 127.0.0.1 is trusted (as
    gunicorn's forwarded_allow_ips says); an idle kept-alive connection is closed at
    once; the worker has notified the master. 3. SIGTERM: readiness 503 at once, requests
    still served with Connection: close. 4. The listener closes after the quiet period;
    the worker returns, its budget the master's graceful timeout; its log lines go
    through gunicorn's error log."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0.3")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "1")
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "2")
    seen: dict[str, Any] = {}

    def scenario(url: str) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/ready").text == "ready\n"
            echoed = client.get("/echo", headers={"x-forwarded-for": "10.1.2.3"})
            assert echoed.text.startswith("client=10.1.2.3 "), echoed.text
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(4096)
            sock.settimeout(1.0)
            assert sock.recv(4096) == b""  # closed by the worker (keepalive 0)
        seen["lifecycle"] = current_lifecycle()
        signalled = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/ready").status_code == 503
            assert client.get("/echo").headers["connection"] == "close"
        wait_until(lambda: refused("127.0.0.1", port), 3, what="listener to close")
        seen["closed"] = time.monotonic() - signalled

    observed: dict[str, float] = {}
    boot(port, scenario, observed=observed, graceful_timeout=5, keepalive=0)
    assert exits == []
    assert 0.3 <= seen["closed"] < 1.0
    assert seen["lifecycle"].config.grace_period == 5.0
    # It told the master it is alive: gunicorn's heartbeat file carries a monotonic time
    # once notified (its creation time, a wall-clock time, before).
    assert observed["heartbeat"] <= time.monotonic()
    err = capsys.readouterr().err
    assert "[INFO] Shutdown started (signal SIGTERM)" in err
    assert "[INFO] Shutdown phase delay took 0." in err
    assert "Started server process" in err and "INFO:     " not in err
    assert "graceful:" not in err  # no warning about the budget


def test_the_masters_quick_shutdown_aborts_at_once_and_a_second_exits(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A worker with a 5 s quiet period and a 30 s request running. 2. SIGQUIT (the
    master's SIGINT or SIGQUIT quick shutdown): no delay, no drain wait: the request is
    aborted at once, with the reason named. 3. SIGQUIT again: the forced exit, 130."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "5")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "5")
    echo.release.clear()

    def scenario(url: str) -> None:
        slow = Slow(f"{url}/work?seconds=30")
        wait_until(lambda: current_lifecycle().in_flight == 1, 5, what="the request to run")
        quick = time.monotonic()
        os.kill(os.getpid(), signal.SIGQUIT)
        assert isinstance(slow.result(), httpx.HTTPError)
        assert time.monotonic() - quick < 1.0
        os.kill(os.getpid(), signal.SIGQUIT)
        wait_until(lambda: exits, 2, what="forced exit")
        echo.release.set()

    boot(port, scenario, app=echo.stuck_app, graceful_timeout=10)
    assert exits == [128 + signal.SIGINT]
    err = capsys.readouterr().err
    assert "Shutdown started (signal SIGQUIT)" in err
    assert "The master's quick shutdown (SIGQUIT): stopped waiting for quiet period" not in err
    assert (
        "[WARNING] Aborted 1 connection(s) and 1 request(s): the master's quick shutdown (SIGQUIT)"
    ) in err
    assert "Exiting at once (third signal, SIGINT) in phase app-shutdown" in err


def test_sigterm_then_the_quick_shutdown_stops_the_waits(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A worker with a 5 s quiet period and a 30 s request running. 2. SIGTERM: the
    delay begins. 3. SIGQUIT: the waits end, naming the master's quick shutdown, and the
    request is aborted. 4. SIGQUIT again: the forced exit."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "5")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "5")
    echo.release.clear()

    def scenario(url: str) -> None:
        slow = Slow(f"{url}/work?seconds=30")
        wait_until(lambda: current_lifecycle().in_flight == 1, 5, what="the request to run")
        os.kill(os.getpid(), signal.SIGTERM)
        lifecycle = current_lifecycle()
        wait_until(lambda: lifecycle.shutting_down, 2, what="shutdown")
        time.sleep(0.2)  # the scenario: the master gives up waiting
        os.kill(os.getpid(), signal.SIGQUIT)
        assert isinstance(slow.result(), httpx.HTTPError)
        os.kill(os.getpid(), signal.SIGQUIT)
        wait_until(lambda: exits, 2, what="forced exit")
        echo.release.set()

    boot(port, scenario, app=echo.stuck_app, graceful_timeout=10)
    assert exits == [128 + signal.SIGINT]
    err = capsys.readouterr().err
    assert "The master's quick shutdown (SIGQUIT): stopped waiting for quiet period" in err
    assert "Aborted 1 connection(s) and 1 request(s): the master's quick shutdown (SIGQUIT)" in err


def test_the_environment_names_the_budget_and_a_bad_value_stops_the_boot(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. GRACEFUL_GRACE_PERIOD longer than gunicorn's --graceful-timeout, and limits that
    cannot fit it: the worker warns about both, and takes the variable's grace period.
    2. forwarded_allow_ips that does not trust us: X-Forwarded-For is ignored. 3. A bad
    GRACEFUL_* value: the worker exits with gunicorn's boot error (3), naming it."""
    monkeypatch.setenv("GRACEFUL_GRACE_PERIOD", "8")
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    seen: dict[str, Any] = {}

    def scenario(url: str) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            echoed = client.get("/echo", headers={"x-forwarded-for": "10.1.2.3"})
            assert echoed.text.startswith("client=127.0.0.1 "), echoed.text
        seen["grace"] = current_lifecycle().config.grace_period
        os.kill(os.getpid(), signal.SIGTERM)

    boot(port, scenario, graceful_timeout=4, forwarded_allow_ips="10.0.0.1")
    assert seen["grace"] == 8.0
    err = capsys.readouterr().err
    assert (
        "[WARNING] graceful: grace period 8 s is longer than gunicorn's --graceful-timeout "
        "4 s: the master sends SIGKILL first"
    ) in err
    assert (
        "[WARNING] graceful: shutdown budget: shutdown phases need up to 10 s (delay 0 + "
        "drain 10) but only 7 s remain before SIGKILL (grace period 8 s - safety margin 1 s)"
    ) in err
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "soon")
    with pytest.raises(SystemExit) as exited:
        boot(port, None)
    assert exited.value.code == 3
    assert (
        "[ERROR] graceful: GRACEFUL_QUIET_PERIOD: expected seconds (a number), got 'soon'"
    ) in capsys.readouterr().err


def test_an_app_that_cannot_start_stops_the_worker_with_the_boot_error(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A worker of an app whose lifespan startup fails. 2. It exits with gunicorn's
    boot error (3) rather than serve."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    with pytest.raises(SystemExit) as exited:
        boot(port, None, app=echo.failing_startup)
    assert exited.value.code == 3


def test_the_workers_log_lines_go_through_gunicorns_logs_only(
    port: int,
    exits: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A worker with gunicorn's access log on stdout; the app's process has its own
    root logging (here pytest's). 2. A request, then SIGTERM. 3. The access line is in
    gunicorn's access log, graceful's and uvicorn's lines in gunicorn's error log, and
    none of them also reaches the root logger (no line twice); the root logging still
    works for the app's own loggers."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "0")
    caplog.set_level(logging.INFO)

    def scenario(url: str) -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/ready").status_code == 200
        os.kill(os.getpid(), signal.SIGTERM)

    boot(port, scenario, accesslog="-", graceful_timeout=10)
    logging.getLogger("tests.app").warning("the app's own line")
    captured = capsys.readouterr()
    assert '"GET /ready HTTP/1.1" 200' in captured.out
    assert "[INFO] Shutdown started (signal SIGTERM)" in captured.err
    assert "[INFO] Started server process" in captured.err
    names = {r.name for r in caplog.records} - {"httpx"}  # the test's own client
    assert names == {"tests.app"}, names


def test_a_sigterm_while_the_master_keeps_listening_drains_only(
    port: int, exits: list[int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. A worker whose master still holds the listener (as after a reload's SIGTERM),
    with a 5 s quiet period. 2. SIGTERM: readiness stays 200 and responses carry no
    `Connection: close` while it still answers; the listener closes at once (no delay, no
    quiet period). 3. The log says why it leaves; no "signal SIGTERM"."""
    monkeypatch.setenv("GRACEFUL_QUIET_PERIOD", "5")
    monkeypatch.setenv("GRACEFUL_QUIET_MAX", "5")
    seen: dict[str, Any] = {}

    def scenario(url: str) -> None:
        lifecycle = current_lifecycle()
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/ready").status_code == 200
            signalled = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            seen["ready"] = lifecycle.ready
            seen["close"] = lifecycle.close_connections
        wait_until(lambda: lifecycle.phase is Phase.STOPPED, 3, what="the worker to stop")
        seen["stopped"] = time.monotonic() - signalled

    boot(port, scenario, master=os.getpid(), graceful_timeout=10)
    assert exits == []
    assert (seen["ready"], seen["close"]) == (True, False)
    assert seen["stopped"] < 1.5  # the drain's moment for first requests, not 5 s of quiet
    err = capsys.readouterr().err
    assert (
        "[INFO] Shutdown started (worker rotation, the pod stays ready: SIGTERM from the "
        "master, which keeps listening (a reload, or fewer workers))"
    ) in err
    assert "signal SIGTERM" not in err


def test_a_rotating_worker_takes_the_pods_shutdown_when_it_comes() -> None:
    """A worker leaving on its own reads ready (the pod stays) and sends no
    `Connection: close`; when the pod's shutdown comes during its rotation, both turn to
    the pod's shutdown's answers."""
    lifecycle = Lifecycle(ShutdownConfig(readiness_flip=True, connection_close=True))
    lifecycle.phase = Phase.SERVING
    lifecycle.record_worker_exit("worker rotation, the pod stays ready: test")
    lifecycle.phase = Phase.DRAINING
    assert lifecycle.shutting_down and lifecycle.ready and not lifecycle.close_connections
    lifecycle.record_pod_shutdown()
    assert not lifecycle.ready and lifecycle.close_connections
