"""graceful around an app that uses no framework at all: a real process and SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import httpx

from tests.support import REPO, Processes, http_ok, wait_until


def test_bare_asgi_app_gets_readiness_flip_delay_and_connection_close(
    processes: Processes, port: int
) -> None:
    """1. A bare ASGI app served by graceful.serve with a 1 s pre-close delay.
    2. SIGTERM. 3. Readiness is 503 at once; requests on a kept-alive connection are
    still served, with Connection: close. 4. About 1 s after SIGTERM the listener closes.
    5. Exit code 0."""
    proc = processes.start(
        [sys.executable, "-m", "tests.graceful.apps.bare_asgi", str(port), "1.0"],
        cwd=REPO,
        name="bare",
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/ready"), 15, what="bare app ready")
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.get("/work").headers.get("connection") != "close"
        sigterm = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        wait_until(lambda: client.get("/ready").status_code == 503, 1, what="readiness flip")
        response = client.get("/work")
        assert response.text == "done"
        assert response.headers["connection"] == "close"

    def listener_closed() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(listener_closed, 5, what="listener to close")
    assert 0.9 <= time.monotonic() - sigterm < 2.0
    assert proc.wait(5) == 0
    assert "Shutdown phase delay took 1.0" in processes.output(proc)
