"""What the quiet period counts: real clients whatever their path, not the kubelet's
probes (told by `User-Agent: kube-probe/<major>.<minor>`), not the exempt paths. A real
`graceful-serve` process, SIGTERM, and a client loop during its delay phase."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import httpx
import pytest

from graceful.config import DEFAULT_QUIET_EXEMPT
from graceful.options import OptionError, resolve_shutdown
from tests.support import REPO, VENV_BIN, Processes, wait_until

COMMAND = str(VENV_BIN / "graceful-serve")
APP = "tests.graceful.apps.served:app"
KUBELET = {"User-Agent": "kube-probe/1.37"}
QUIET = 1.0
QUIET_MAX = 6.0
QUIET_MAX_ARGS = ("--quiet-max", str(QUIET_MAX), "--no-access-log")
# The quiet period counts from SIGTERM; the delay phase starts at the serving loop's
# next turn (every 0.1 s), so it may take a little less than the quiet period.
AFTER_QUIET = (QUIET - 0.15, QUIET + 1.0)


def serve(processes: Processes, port: int, *args: str) -> subprocess.Popen[bytes]:
    process = processes.start(
        [COMMAND, APP, "--port", str(port), "--quiet-period", str(QUIET), *QUIET_MAX_ARGS, *args],
        cwd=REPO,
        name="graceful-serve",
    )
    wait_until(
        lambda: "Uvicorn running" in processes.output(process) or process.poll() is not None,
        15,
        what="graceful-serve to start",
    )
    assert process.poll() is None, processes.output(process)
    return process


def delay_phase(
    processes: Processes,
    process: subprocess.Popen[bytes],
    port: int,
    path: str,
    headers: dict[str, str],
) -> float:
    """SIGTERM while a client loop GETs `path` every 50 ms; returns how long the delay
    phase took, as the server logged it. The loop runs until the listener closes."""
    stop = threading.Event()
    answered: list[int] = []

    def loop() -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=2
        ) as client:
            while not stop.is_set():
                try:
                    answered.append(client.get(path).status_code)
                except httpx.HTTPError:
                    return  # the listener closed
                stop.wait(0.05)

    thread = threading.Thread(target=loop, name="client-loop")
    thread.start()
    try:
        wait_until(lambda: len(answered) >= 3, 5, what="the client loop")
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(QUIET_MAX + 10) == 0
    finally:
        stop.set()
        thread.join(5)
    log = processes.output(process)
    took = re.search(r"Shutdown phase delay took ([\d.]+) s", log)
    assert took, log
    return float(took.group(1))


@pytest.mark.parametrize("path", ["/health", "/work"])
def test_clients_hold_the_pod_in_its_delay_whatever_the_path(
    processes: Processes, port: int, path: str
) -> None:
    """1. graceful-serve, quiet period 1 s, at most 6 s. 2. A client (no probe) GETs
    /health (which the app does not even have: 404) or /work every 50 ms. 3. SIGTERM.
    4. The delay phase lasts until quiet max (6 s): the client's requests count."""
    process = serve(processes, port)
    took = delay_phase(processes, process, port, path, {"User-Agent": "billing-service/2.1"})
    assert took >= QUIET_MAX - 0.2, took
    assert "Still receiving requests after" in processes.output(process)


@pytest.mark.parametrize("path", ["/health", "/ready", "/work"])
def test_kubelet_probes_alone_do_not_extend_the_quiet_period(
    processes: Processes, port: int, path: str
) -> None:
    """1. graceful-serve as above. 2. Only requests with the kubelet's User-Agent
    (kube-probe/1.37) every 50 ms, on /health, /ready or any other path. 3. SIGTERM.
    4. The delay phase ends after the quiet period (1 s), not at quiet max."""
    process = serve(processes, port)
    took = delay_phase(processes, process, port, path, KUBELET)
    assert AFTER_QUIET[0] <= took < AFTER_QUIET[1], took


def test_exempt_paths_do_not_count_and_the_option_chooses_them(
    processes: Processes, port: int
) -> None:
    """1. graceful-serve with the default exempt paths: a scraper (no kube-probe
    User-Agent) on /metrics every 50 ms; SIGTERM: the delay ends after 1 s. 2. The
    same with --quiet-exempt none: the scraper's requests count, the delay lasts to
    quiet max."""
    scraper = {"User-Agent": "Prometheus/3.5.0"}
    process = serve(processes, port)
    took = delay_phase(processes, process, port, "/metrics", scraper)
    assert AFTER_QUIET[0] <= took < AFTER_QUIET[1], took
    counted = serve(processes, port, "--quiet-exempt", "none")
    assert delay_phase(processes, counted, port, "/metrics", scraper) >= QUIET_MAX - 0.2


def test_the_exempt_paths_option_and_its_variable() -> None:
    """--quiet-exempt and GRACEFUL_QUIET_EXEMPT: comma-separated paths, 'none' for
    none, /metrics by default; a path without '/' is refused naming where it came
    from."""
    assert resolve_shutdown({}, {}).quiet_exempt == DEFAULT_QUIET_EXEMPT == {"/metrics"}
    env = {"GRACEFUL_QUIET_EXEMPT": "/metrics, /internal/stats"}
    assert resolve_shutdown({}, env).quiet_exempt == {"/metrics", "/internal/stats"}
    assert resolve_shutdown({"quiet_exempt": "none"}, env).quiet_exempt == frozenset()
    with pytest.raises(OptionError, match="GRACEFUL_QUIET_EXEMPT: a path starts with '/'"):
        resolve_shutdown({}, {"GRACEFUL_QUIET_EXEMPT": "metrics"})
    help_text = subprocess.run(
        [COMMAND, "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    flat = " ".join(help_text.split())
    assert "--quiet-exempt PATHS" in flat and "GRACEFUL_QUIET_EXEMPT; default /metrics" in flat
