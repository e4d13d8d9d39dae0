"""graceful on hypercorn through its public API (`graceful-hypercorn`, i.e.
`graceful.hypercorn.HypercornRunner`): real processes, sockets and signals. The app is
tests/graceful/apps/served.py."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx

from tests.support import REPO, VENV_BIN, Processes, wait_until

APP = "tests.graceful.apps.served:app"


def hypercorn(
    processes: Processes, port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    argv = [str(VENV_BIN / "graceful-hypercorn"), APP, "--bind", f"127.0.0.1:{port}"]
    process = processes.start(argv, env=env, cwd=REPO, name="hypercorn")
    wait_until(lambda: "Running on" in processes.output(process), 15, what="hypercorn")
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


def test_sigterm_flips_readiness_keeps_serving_then_drains(processes: Processes, port: int) -> None:
    """1. graceful-hypercorn, quiet period 1 s. 2. /ready 200 (graceful's answer); a
    1.5 s request starts. 3. SIGTERM. 4. /ready 503 while other requests are still
    served with `Connection: close` (hypercorn's shutdown trigger has not returned).
    5. The slow request ends 200; the process exits 0 after the quiet period."""
    process = hypercorn(processes, port)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/ready", timeout=5).status_code == 200
    assert httpx.get(f"{base}/phase", timeout=5).text == "serving"
    slow: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"{base}/work?seconds=1.5", slow)
    try:
        wait_until(lambda: "Working 1.5 s" in processes.output(process), 5, what="request")
        sigterm = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="shutdown")
        assert httpx.get(f"{base}/ready", timeout=5).status_code == 503
        during = httpx.get(f"{base}/phase", timeout=5)
        assert (during.text, during.headers["connection"]) == ("delay", "close")
    finally:
        thread.join(15)
    assert isinstance(slow[0], httpx.Response) and slow[0].status_code == 200, slow
    assert process.wait(10) == 0
    assert 1.0 <= time.monotonic() - sigterm < 5
    log = processes.output(process)
    assert "Shutdown phase delay took" in log and "Shutdown finished" in log, log
    assert "Traceback" not in log, log


def test_the_drain_timeout_becomes_hypercorns_graceful_timeout(
    processes: Processes, port: int
) -> None:
    """1. graceful-hypercorn with GRACEFUL_QUIET_PERIOD=0 and GRACEFUL_DRAIN_TIMEOUT=0.5.
    2. A 10 s request starts; SIGTERM. 3. The listener closes at once; hypercorn waits
    0.5 s for the request, then cancels it (answered 500), counted and logged. 4. Exit 0
    within 2 s."""
    env = {"GRACEFUL_QUIET_PERIOD": "0", "GRACEFUL_DRAIN_TIMEOUT": "0.5"}
    process = hypercorn(processes, port, env)
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
    assert 0.4 <= took < 2.0, took
    # hypercorn answers a request it cancelled with 500, if the answer had not started.
    assert isinstance(result[0], httpx.Response) and result[0].status_code == 500, result
    log = processes.output(process)
    assert "running requests get 0.50 s" in log
    assert "1 request(s) cancelled by hypercorn at its graceful_timeout" in log, log


def _second_sigint_cuts(
    processes: Processes, port: int, env: dict[str, str], first: signal.Signals, after: str
) -> str:
    """Start graceful-hypercorn with `env` and a 20 s request; send `first`, wait for
    `after` in its log, then SIGINT. The running request must be cut (500), and the
    process exit 0 within 2 s of the SIGINT, not at the request's or the drain's end.
    Returns the log."""
    process = hypercorn(processes, port, env)
    result: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"http://127.0.0.1:{port}/work?seconds=20", result)
    try:
        wait_until(lambda: "Working 20.0 s" in processes.output(process), 5, what="request")
        os.kill(process.pid, first)
        wait_until(lambda: after in processes.output(process), 5, what=after)
        sigint = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(8) == 0
        took = time.monotonic() - sigint
    finally:
        thread.join(25)
    assert took < 2.0, took
    assert isinstance(result[0], httpx.Response) and result[0].status_code == 500, result
    log = processes.output(process)
    assert "Second SIGINT: cancelled 1 running request(s)" in log, log
    assert "at its graceful_timeout" not in log, log
    assert "Traceback" not in log, log
    return log


def test_second_sigint_ends_the_delay_and_cuts_the_drain(processes: Processes, port: int) -> None:
    """1. graceful-hypercorn with a quiet period of 5 s and a drain timeout of 10 s; a
    20 s request starts. 2. SIGINT: the delay begins. 3. SIGINT again: the delay ends at
    once, the listener closes, and the drain is cut too: the request is cancelled
    (answered 500, counted and logged as the second SIGINT's), and the process exits 0
    within 2 s, not at the request's or the drain's end."""
    env = {"GRACEFUL_QUIET_PERIOD": "5", "GRACEFUL_QUIET_MAX": "5"}
    log = _second_sigint_cuts(processes, port, env, signal.SIGINT, "Shutdown started")
    assert "Second SIGINT: stopped waiting for quiet period" in log, log


def test_a_sigint_after_sigterm_cuts_a_drain_under_way(processes: Processes, port: int) -> None:
    """1. graceful-hypercorn with no quiet period and a drain timeout of 20 s; a 20 s
    request starts. 2. SIGTERM: the listener closes and hypercorn's drain waits for the
    request. 3. Once the drain is under way, SIGINT: the running request is cancelled
    (500, logged), hypercorn's wait ends with it and the process exits 0 within 2 s,
    where it would otherwise wait out the request."""
    env = {"GRACEFUL_QUIET_PERIOD": "0", "GRACEFUL_DRAIN_TIMEOUT": "20"}
    log = _second_sigint_cuts(processes, port, env, signal.SIGTERM, "running requests get")
    assert "SIGINT again: no more waiting for requests" in log, log


def test_a_third_signal_exits_at_once_during_a_stuck_app_shutdown(
    processes: Processes, port: int
) -> None:
    """1. graceful-hypercorn of an app whose lifespan shutdown never ends (7 items
    unwritten), a 30 s grace period, quiet period 5 s. 2. SIGINT, SIGINT: the delay ends,
    the drain has nothing to wait for and the app's shutdown hangs. 3. SIGINT a third
    time: the process exits at once with 130, logging the 7 items."""
    argv = [str(VENV_BIN / "graceful-hypercorn"), "tests.graceful.apps.served:stuck_app"]
    env = {"GRACEFUL_GRACE_PERIOD": "30", "GRACEFUL_QUIET_PERIOD": "5"}
    process = processes.start(
        [*argv, "--bind", f"127.0.0.1:{port}"], env=env, cwd=REPO, name="stuck"
    )
    wait_until(lambda: "Running on" in processes.output(process), 15, what="hypercorn")
    os.kill(process.pid, signal.SIGINT)
    wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="start")
    os.kill(process.pid, signal.SIGINT)
    wait_until(
        lambda: "Lifespan shutdown began" in processes.output(process), 5, what="app shutdown"
    )
    third = time.monotonic()
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(5) == 130
    assert time.monotonic() - third < 1.0
    log = processes.output(process)
    assert "Exiting at once (third signal, SIGINT) in phase app-shutdown" in log, log
    assert "left unwritten: 7 items" in log, log


def test_an_app_shutdown_past_the_budget_exits_at_once_with_its_counts(
    processes: Processes, port: int
) -> None:
    """1. graceful-hypercorn of an app whose lifespan shutdown never ends and which
    reports 7 items unwritten; grace period 3 s, no quiet period. 2. SIGTERM. 3. hypercorn
    alone would wait for the app forever; about 2.5 s after SIGTERM (the budget's end plus
    half the safety margin) the process exits 1, logging the 7 items."""
    argv = [str(VENV_BIN / "graceful-hypercorn"), "tests.graceful.apps.served:stuck_app"]
    env = {"GRACEFUL_GRACE_PERIOD": "3", "GRACEFUL_QUIET_PERIOD": "0"}
    process = processes.start(
        [*argv, "--bind", f"127.0.0.1:{port}"], env=env, cwd=REPO, name="stuck"
    )
    wait_until(lambda: "Running on" in processes.output(process), 15, what="hypercorn")
    sigterm = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(10) == 1
    assert 2.2 <= time.monotonic() - sigterm < 4.0
    log = processes.output(process)
    assert (
        "Exiting at once (the app's shutdown overran the budget) in phase app-shutdown: "
        "left unwritten: 7 items"
    ) in log, log
