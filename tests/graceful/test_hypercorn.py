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


def test_second_sigint_ends_the_delay_and_a_third_exits_at_once(
    processes: Processes, port: int
) -> None:
    """1. graceful-hypercorn with a quiet period of 5 s; a 10 s request starts.
    2. SIGINT: the delay begins. 3. SIGINT again: the delay ends at once, the listener
    closes and hypercorn waits for the request (drain timeout 10 s). 4. SIGINT a third
    time: the process exits at once with 130, logging what it leaves."""
    env = {"GRACEFUL_QUIET_PERIOD": "5", "GRACEFUL_QUIET_MAX": "5"}
    process = hypercorn(processes, port, env)
    result: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"http://127.0.0.1:{port}/work?seconds=10", result)
    try:
        wait_until(lambda: "Working 10.0 s" in processes.output(process), 5, what="request")
        os.kill(process.pid, signal.SIGINT)
        wait_until(lambda: "Shutdown started" in processes.output(process), 5, what="start")
        os.kill(process.pid, signal.SIGINT)
        wait_until(lambda: "running requests get" in processes.output(process), 3, what="drain")
        third = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(5) == 130
        assert time.monotonic() - third < 1.0
    finally:
        thread.join(15)
    log = processes.output(process)
    assert "Second SIGINT: stopped waiting for quiet period" in log, log
    assert "Exiting at once (third signal, SIGINT) in phase draining" in log, log
    assert "1 request(s) still running" in log


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
