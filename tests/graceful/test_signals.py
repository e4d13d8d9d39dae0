"""The server's forced paths against apps that misbehave at shutdown: a stuck lifespan
shutdown, a handler that ignores its cancellation, a task left running. Real processes
and real signals; the apps are in tests/graceful/apps/stubborn.py."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import REPO, Processes, wait_until


class App:
    def __init__(self, processes: Processes, port: int, mode: str) -> None:
        self.processes = processes
        self.port = port
        self.process = processes.start(
            [sys.executable, "-m", "tests.graceful.apps.stubborn", str(port), mode],
            cwd=REPO,
            name=mode,
        )
        wait_until(lambda: "Uvicorn running" in self.log, 15, what=f"{mode} app to start")

    @property
    def log(self) -> str:
        return self.processes.output(self.process)

    def before_finish(self, text: str) -> bool:
        log = self.log
        return text in log and log.index(text) < log.index("Shutdown finished")


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket()
    try:
        yield sock
    finally:
        sock.close()


def test_an_app_shutdown_past_the_budget_exits_at_once_with_its_counts(
    processes: Processes, port: int
) -> None:
    """1. An app whose lifespan shutdown never ends; budget 3 s - 1 s margin; it reports
    7 items unwritten and has one count that fails. 2. SIGTERM. 3. About 2.5 s later the
    process exits with code 1, logging the 7 items and the failed count (-1), with no
    traceback."""
    app = App(processes, port, "stuck-shutdown")
    sigterm = time.monotonic()
    os.kill(app.process.pid, signal.SIGTERM)
    assert app.process.wait(10) == 1
    took = time.monotonic() - sigterm
    assert 2.3 <= took < 4.0, took
    log = app.log
    assert (
        "Exiting at once (the app's shutdown overran the budget) in phase app-shutdown: "
        "left unwritten: 7 items, -1 broken; 0 request(s) still running"
    ) in log, log
    assert "Cannot count unwritten broken: ZeroDivisionError" in log
    assert "Traceback" not in log
    assert "Shutdown finished" not in log


def test_a_handler_that_ignores_its_cancellation_is_counted_and_logged(
    processes: Processes, port: int, client: socket.socket
) -> None:
    """1. An app whose handler goes on for 3 s after it is cancelled; drain timeout
    0.3 s. 2. A request starts that handler. 3. SIGTERM. 4. The drain cancels it; the
    server waits 1 s, logs that it still runs, runs the app's shutdown, and before
    "Shutdown finished" logs that the handler will be cancelled at exit. 5. Exit code 0
    with no traceback."""
    app = App(processes, port, "stubborn-handler")
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /work HTTP/1.1\r\nhost: app\r\n\r\n")
    wait_until(lambda: "Working" in app.log, 5, what="handler to run")
    os.kill(app.process.pid, signal.SIGTERM)
    assert app.process.wait(10) == 0
    log = app.log
    assert "Aborted 1 connection(s) and 1 request(s): drain time is up" in log
    assert "Cancelled, but going on" in log
    assert app.before_finish("1 request handler(s) still running 1.0 s after being cancelled")
    assert app.before_finish("1 request handler(s) still running at exit are cancelled")
    assert "A GET /work handler ended after the app's shutdown began" in log
    assert "Traceback" not in log, log


def test_a_task_left_running_is_named_before_shutdown_finished(
    processes: Processes, port: int
) -> None:
    """1. An app whose request starts a task (kept referenced) that sleeps an hour.
    2. One request. 3. SIGTERM. 4. Before "Shutdown finished" the server logs that the
    task named "orphan" will be cancelled at exit; exit code 0, no traceback."""
    app = App(processes, port, "orphan-task")
    assert httpx.get(f"http://127.0.0.1:{port}/work", timeout=5).text == "done"
    os.kill(app.process.pid, signal.SIGTERM)
    assert app.process.wait(10) == 0
    assert app.before_finish("1 task(s) still running at exit are cancelled: orphan"), app.log
    assert "Traceback" not in app.log
