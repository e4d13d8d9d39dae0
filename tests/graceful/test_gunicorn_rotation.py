"""`gunicorn -k graceful.gunicorn.Worker`: a worker that leaves while the pod stays (its
`--max-requests`, a reload), a rotating worker's long flush, and `--preload`, on real
processes, sockets and signals. The app is tests/graceful/apps/rotating.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.graceful.test_gunicorn import request_in_thread
from tests.support import REPO, VENV_BIN, Processes, wait_until

APP = "tests.graceful.apps.rotating:app"


def gunicorn(
    processes: Processes, port: int, *args: str, workers: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    argv = [str(VENV_BIN / "gunicorn"), "-k", "graceful.gunicorn.Worker", "-w", str(workers)]
    argv += ["--bind", f"127.0.0.1:{port}", *args, APP]
    process = processes.start(argv, env=env, cwd=REPO, name="gunicorn")
    wait_until(
        lambda: processes.output(process).count("Application startup complete") >= workers,
        20,
        what="every worker to start",
    )
    return process


def probe(url: str) -> str:
    """One readiness probe as the kubelet sends it (a new connection each time)."""
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        return f"error {exc!r}"
    return str(response.status_code)


def test_a_worker_rotating_on_max_requests_leaves_the_pod_ready(
    processes: Processes, port: int
) -> None:
    """1. gunicorn with 1 graceful worker, --max-requests 4 and the default 1 s quiet
    period. 2. 30 readiness probes, one after another: the worker is replaced about 7
    times. 3. Every probe answers 200 (the pod never looks unready: the master keeps the
    port, the next worker answers), none fails. 4. Each rotating worker says why it
    leaves, runs no delay and no quiet period, and drains only; no "signal SIGTERM"."""
    process = gunicorn(processes, port, "--max-requests", "4", workers=1)
    answers = [probe(f"http://127.0.0.1:{port}/ready") for _ in range(30)]
    assert answers == ["200"] * 30, answers
    said = "Shutdown started (worker rotation, the pod stays ready: reached --max-requests 4)"
    # A worker leaves after its last answer: its lines may come a moment after the probe's.
    wait_until(
        lambda: processes.output(process).count(said) >= 5,
        10,
        what="five worker rotations in the log",
    )
    log = processes.output(process)
    rotations = log.count(said)
    assert "signal SIGTERM" not in log and "signal none" not in log, log
    assert "Still receiving requests" not in log, log
    assert log.count("Shutdown phase delay took 0.00") >= rotations, log
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log, log


def test_a_reload_drains_the_old_workers_and_the_pod_stays_ready(
    processes: Processes, port: int
) -> None:
    """1. gunicorn with 2 graceful workers and the default 1 s quiet period; a 1.5 s
    request runs. 2. SIGHUP to the master (a reload): it starts 2 new workers and sends
    SIGTERM to the old ones while it keeps its listener. 3. Probes during the reload all
    answer 200; the slow request ends 200. 4. Each old worker logs that it leaves as a
    rotation. 5. SIGTERM to the master afterwards is still the pod's shutdown: both
    workers run the full phases, the master exits 0."""
    process = gunicorn(processes, port, "--graceful-timeout", "10", workers=2)
    base = f"http://127.0.0.1:{port}"
    slow: list[httpx.Response | Exception] = []
    thread = request_in_thread(f"{base}/work?seconds=1.5", slow)
    try:
        time.sleep(0.2)  # the scenario: the reload comes while the request runs
        os.kill(process.pid, signal.SIGHUP)
        answers = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            answers.append(probe(f"{base}/ready"))
            time.sleep(0.02)
    finally:
        thread.join(15)
    assert isinstance(slow[0], httpx.Response) and slow[0].status_code == 200, slow
    assert set(answers) == {"200"}, answers
    wait_until(
        lambda: processes.output(process).count("Worker exiting") == 2, 10, what="old workers"
    )
    log = processes.output(process)
    assert (
        log.count(
            "Shutdown started (worker rotation, the pod stays ready: SIGTERM from the master, "
            "which keeps listening (a reload, or fewer workers))"
        )
        == 2
    ), log
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(15) == 0
    log = processes.output(process)
    assert log.count("Shutdown started (signal SIGTERM)") == 2, log
    assert "Traceback" not in log, log


def test_a_rotating_workers_long_flush_keeps_its_heartbeat(
    processes: Processes, port: int, tmp_path: Path
) -> None:
    """1. gunicorn with 1 graceful worker, --max-requests 2, --timeout 2, and an app whose
    lifespan shutdown takes 4 s before its final write. 2. gunicorn warns at start that
    --timeout is shorter than the shutdown budget. 3. Two requests: the worker rotates; its
    heartbeat goes on through the app's shutdown, so the master does not kill it: the
    final write happens, no WORKER TIMEOUT."""
    flushed = tmp_path / "flushed"
    env = {"ROTATING_APP_FLUSH_SECONDS": "4", "ROTATING_APP_FLUSH_FILE": str(flushed)}
    process = gunicorn(processes, port, "--max-requests", "2", "--timeout", "2", workers=1, env=env)
    first = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    old_pid = first.split()[1]
    ended = (f"Worker exiting (pid: {old_pid})", f"WORKER TIMEOUT (pid:{old_pid})")
    wait_until(lambda: any(e in processes.output(process) for e in ended), 15, what="rotation")
    log = processes.output(process)
    assert "WORKER TIMEOUT" not in log, log
    assert f"flushed {old_pid}" in flushed.read_text(), log
    assert ("graceful: gunicorn's --timeout 2 s is shorter than the shutdown budget 29 s") in log, (
        log
    )


def test_preload_gives_the_app_the_workers_lifecycle(processes: Processes, port: int) -> None:
    """1. gunicorn --preload with 2 graceful workers, --graceful-timeout 7, and an app that
    takes its lifecycle at import (in the master, with --preload). 2. The master starts.
    3. The lifecycle the app took is each worker's own: serving, the one
    `current_lifecycle()` returns, with the worker's budget. 4. On SIGTERM to the master
    the app sees that lifecycle in its delay; the master exits 0."""
    process = gunicorn(processes, port, "--preload", "--graceful-timeout", "7", workers=2)
    base = f"http://127.0.0.1:{port}"
    phase, same, grace, pid = httpx.get(f"{base}/phase", timeout=5).text.split()
    assert (phase, same, grace) == ("serving", "same", "7")
    assert int(pid) != process.pid
    os.kill(process.pid, signal.SIGTERM)
    wait_until(lambda: processes.output(process).count("Shutdown started") == 2, 5, what="workers")
    assert httpx.get(f"{base}/phase", timeout=5).text.split()[:3] == ["delay", "same", "7"]
    assert process.wait(15) == 0
    log = processes.output(process)
    assert "Traceback" not in log and "NoLifecycle" not in log, log
