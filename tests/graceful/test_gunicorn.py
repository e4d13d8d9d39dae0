"""`gunicorn -k graceful.gunicorn.Worker`: a gunicorn pod's shutdown as the kubelet
drives it (SIGTERM to the master), on real processes, sockets and signals. The app is
tests/graceful/apps/served.py."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.support import REPO, VENV_BIN, Processes, wait_until

APP = "tests.graceful.apps.served:app"


def gunicorn(
    processes: Processes,
    port: int,
    *args: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> subprocess.Popen[bytes]:
    argv = [str(VENV_BIN / "gunicorn"), "-k", "graceful.gunicorn.Worker", "-w", str(workers)]
    argv += ["--bind", f"127.0.0.1:{port}", *args, APP]
    process = processes.start(argv, env=env, cwd=REPO, name="gunicorn")
    if wait:
        wait_until(
            lambda: processes.output(process).count("Application startup complete") == workers,
            20,
            what="every worker to start",
        )
    return process


def request_in_thread(url: str, into: list[httpx.Response | Exception]) -> threading.Thread:
    def run() -> None:
        try:
            into.append(httpx.get(url, timeout=15))
        except httpx.HTTPError as exc:
            into.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_sigterm_to_the_master_runs_every_workers_phases(processes: Processes, port: int) -> None:
    """1. gunicorn with 2 graceful workers, --graceful-timeout 10, quiet period 1 s.
    2. /ready answers 200; the app runs on uvloop; a 1.5 s request starts. 3. SIGTERM to the master, as the
    kubelet sends it. 4. The master passes SIGTERM on; every worker keeps serving (the
    master closed only its own copy of the listener): /ready answers 503, other requests
    200 with `Connection: close`. 5. The slow request ends 200. 6. Both workers log their
    phases, and the master exits 0 within a few seconds, with no SIGKILL."""
    process = gunicorn(processes, port, "--graceful-timeout", "10")
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
    # The loop uvicorn's config picks, as in uvicorn's own worker: uvloop here.
    assert httpx.get(f"{base}/loop", timeout=5).text.startswith("uvloop")
    slow: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"{base}/work?seconds=1.5", slow)
    try:
        wait_until(lambda: "Working 1.5 s" in processes.output(process), 5, what="request")
        sigterm = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        wait_until(
            lambda: processes.output(process).count("Shutdown started") == 2, 5, what="workers"
        )
        for _ in range(4):  # both workers, whichever takes each connection
            assert httpx.get(f"{base}/ready", timeout=5).status_code == 503
            during = httpx.get(f"{base}/phase", timeout=5)
            assert (during.status_code, during.text) == (200, "delay")
            assert during.headers["connection"] == "close"
    finally:
        thread.join(15)
    assert isinstance(slow[0], httpx.Response) and slow[0].status_code == 200, slow
    assert process.wait(15) == 0
    assert time.monotonic() - sigterm < 6
    log = processes.output(process)
    assert log.count("Shutdown finished") == 2, log
    assert log.count("Worker exiting") == 2 and "Traceback" not in log, log  # none killed
    assert "Error while closing socket" not in log, log  # each listener closed once


def test_the_masters_graceful_timeout_is_the_workers_budget(
    processes: Processes, port: int
) -> None:
    """1. gunicorn with 1 graceful worker and --graceful-timeout 3 (no
    GRACEFUL_GRACE_PERIOD): the worker's budget ends 1 s before the master's SIGKILL.
    2. A 10 s request starts; SIGTERM to the master. 3. The worker aborts the request at
    its budget (about 2 s), counted and logged, runs the app's shutdown and exits. 4. The
    master exits 0 before its 3 s are up: no worker was killed."""
    process = gunicorn(processes, port, "--graceful-timeout", "3", workers=1)
    result: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"http://127.0.0.1:{port}/work?seconds=10", result)
    try:
        wait_until(lambda: "Working 10.0 s" in processes.output(process), 5, what="request")
        sigterm = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(10) == 0
        took = time.monotonic() - sigterm
    finally:
        thread.join(15)
    # Not killed is what the log shows below (a SIGKILLed worker logs no "Worker exiting");
    # the master's own exit after the worker's may lag on a loaded machine.
    assert 1.8 <= took < 4.0, took
    assert isinstance(result[0], httpx.HTTPError), result  # cut, as the log says
    log = processes.output(process)
    assert "Aborted 1 connection(s) and 1 request(s): drain time is up" in log, log
    assert "Shutdown finished" in log
    assert "Worker exiting" in log and "Traceback" not in log, log  # not killed


def test_sigint_to_the_master_is_a_quick_shutdown_without_waiting(
    processes: Processes, port: int
) -> None:
    """1. gunicorn with 1 graceful worker. 2. A 10 s request starts. 3. SIGINT to the
    master: it sends SIGQUIT to the worker and kills it 2 s later. 4. The worker takes
    SIGQUIT as "stop waiting": no quiet period, the request aborted at once (logged
    with the reason), the app's shutdown runs; the master exits 0 within 2 s."""
    process = gunicorn(processes, port, workers=1)
    result: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"http://127.0.0.1:{port}/work?seconds=10", result)
    try:
        wait_until(lambda: "Working 10.0 s" in processes.output(process), 5, what="request")
        sigint = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(10) == 0
        took = time.monotonic() - sigint
    finally:
        thread.join(15)
    assert took < 2.0, took
    log = processes.output(process)
    assert (
        "Aborted 1 connection(s) and 1 request(s): the master's quick shutdown (SIGQUIT)" in log
    ), log
    assert "Application shutdown complete" in log
    assert "Worker exiting" in log and "Traceback" not in log, log  # not killed


@pytest.mark.parametrize("variable", ["GRACEFUL_QUIET_PERIOD", "GRACEFUL_GRACE_PERIOD"])
def test_a_bad_shutdown_variable_stops_gunicorn_at_boot(
    processes: Processes, port: int, variable: str
) -> None:
    """1. gunicorn with a graceful worker and a shutdown variable set to "soon". 2. The
    worker refuses to boot, naming the variable; the master halts with gunicorn's worker
    boot error (exit 3) and serves nothing."""
    process = gunicorn(processes, port, workers=1, env={variable: "soon"}, wait=False)
    assert process.wait(20) == 3
    log = processes.output(process)
    assert f"{variable}: expected seconds (a number), got 'soon'" in log, log
    assert "Application startup complete" not in log
