"""Signals while the app's lifespan startup still runs: `graceful-serve` of an app whose
startup never ends. Real processes, real signals; the apps are in
tests/graceful/apps/hung_startup.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.support import REPO, VENV_BIN, Processes, wait_until

COMMAND = str(VENV_BIN / "graceful-serve")
APPS = "tests.graceful.apps.hung_startup"


def start_hung(processes: Processes, app: str, *args: str) -> subprocess.Popen[bytes]:
    process = processes.start([COMMAND, f"{APPS}:{app}", "--port", "0", *args], cwd=REPO, name=app)
    wait_until(
        lambda: "Startup began" in processes.output(process) or process.poll() is not None,
        15,
        what="the app's startup to begin",
    )
    assert process.poll() is None, processes.output(process)
    return process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_hung_startup_cancels_it_and_exits_128_plus_the_signal(
    processes: Processes, sig: signal.Signals
) -> None:
    """1. graceful-serve of an app whose lifespan startup awaits forever. 2. SIGTERM (or
    SIGINT). 3. The startup is cancelled (the app sees it), the process exits with
    128 + the signal within 2 s, serving nothing, with no traceback and no claim that
    the app lacks a lifespan."""
    process = start_hung(processes, "app")
    sent = time.monotonic()
    os.kill(process.pid, sig)
    assert process.wait(10) == 128 + sig
    assert time.monotonic() - sent < 2.0
    log = processes.output(process)
    assert f"{sig.name} during the app's startup: startup cancelled" in log, log
    assert "Startup cancelled" in log
    assert f"Exiting with code {128 + sig}" in log
    assert "Uvicorn running" not in log and "Traceback" not in log
    assert "lifespan' protocol appears unsupported" not in log


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_a_startup_that_ignores_its_cancellation_exits_at_once(
    processes: Processes, second: signal.Signals
) -> None:
    """1. graceful-serve of an app whose startup awaits forever and ignores its
    cancellation. 2. SIGTERM: the startup is cancelled and ignores it. 3. A second
    signal (SIGTERM too: a repeated SIGTERM is ignored only once something was served).
    4. The process exits at once with 128 + the second signal."""
    process = start_hung(processes, "deaf_app")
    os.kill(process.pid, signal.SIGTERM)
    wait_until(
        lambda: "Cancellation ignored" in processes.output(process), 5, what="the cancellation"
    )
    sent = time.monotonic()
    os.kill(process.pid, second)
    assert process.wait(10) == 128 + second
    assert time.monotonic() - sent < 1.0
    log = processes.output(process)
    assert f"Exiting at once (second signal during startup, {second.name})" in log, log
    assert "Traceback" not in log


def test_a_startup_that_ignores_its_cancellation_ends_with_the_budget(
    processes: Processes,
) -> None:
    """1. graceful-serve --grace-period 3 of an app whose startup ignores its
    cancellation. 2. SIGTERM only. 3. About 2 s later (3 s - the 1 s margin) the process
    exits at once with 143, naming the startup that still runs."""
    process = start_hung(processes, "deaf_app", "--grace-period", "3")
    sent = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(10) == 143
    took = time.monotonic() - sent
    assert 1.8 <= took < 3.5, took
    log = processes.output(process)
    assert "the app's startup still ran 2.0 s after being cancelled" in log, log
    assert "Traceback" not in log
