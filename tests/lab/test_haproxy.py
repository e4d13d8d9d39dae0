"""HAProxy's configuration and runtime API, against a real haproxy."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

from lab.haproxy import HAProxy
from lab.influx import free_port
from lab.procs import Registry
from tests.lab.labkit import TINYAPP
from tests.support import Processes, http_ok, wait_until


def test_config_defaults_to_no_retries(tmp_path: Path) -> None:
    """retries 0 unless asked: retries would hide refused connections from the report."""
    assert "retries 0" in HAProxy(tmp_path, 1).config()
    assert "option redispatch" not in HAProxy(tmp_path, 1).config()
    http = HAProxy(tmp_path, 1, mode="http", retries=2).config()
    assert "retries 2" in http and "option redispatch" in http and "http-reuse safe" in http
    assert "http-reuse always" in HAProxy(tmp_path, 1, mode="http", http_reuse="always").config()
    h2 = HAProxy(tmp_path, 1, mode="h2")
    assert "alpn h2,http/1.1" in h2.config() and "mode http" in h2.config()
    assert h2.url.startswith("https://")


def test_runtime_api_adds_drains_and_deletes_servers(tmp_path: Path) -> None:
    """A real haproxy with an empty backend and a plain TCP server that answers "hi".
    1. add_server: the server takes connections through the frontend.
    2. drain_server: it shows as MAINT, no longer active; then delete_server removes it.
    3. HAProxy never reloaded (same PID) and is gone after stop."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"hi")

    thread = threading.Thread(target=serve)
    thread.start()

    async def scenario() -> None:
        registry = Registry()
        haproxy = HAProxy(tmp_path, free_port())
        try:
            await haproxy.start(registry)
            assert haproxy.process is not None
            pid = haproxy.process.pid
            haproxy.add_server("pod-a", "127.0.0.1", port)
            assert haproxy.active_servers() == {"pod-a"}

            def fetch() -> bytes:
                with socket.create_connection(("127.0.0.1", haproxy.port), timeout=2) as sock:
                    return sock.recv(10)

            assert await asyncio.to_thread(fetch) == b"hi"
            haproxy.drain_server("pod-a")
            assert haproxy.servers() == {"pod-a": "MAINT"}
            assert haproxy.active_servers() == set()
            # The client has closed its connection; HAProxy lets go of it a moment later
            # (later on a loaded machine), and refuses the delete until then.
            deadline = time.monotonic() + 10
            while not haproxy.delete_server("pod-a"):
                assert time.monotonic() < deadline, "pod-a kept a connection for 10 s"
                await asyncio.sleep(0.05)
            assert haproxy.servers() == {}
            assert haproxy.process is not None and haproxy.process.pid == pid
        finally:
            await haproxy.stop()
            await registry.kill_all()
        assert registry.alive() == []

    try:
        asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_draining_keeps_established_connections(processes: Processes) -> None:
    """The tiny app answers after 1.5 s, behind a real haproxy (tcp mode).
    1. A request is in flight when its server is drained (taken out of rotation).
    2. The request still gets its 200 (established connections live on, as with
       conntrack); `del server` is refused while it is attached, and works afterwards."""
    port = free_port()
    processes.start(
        [sys.executable, str(TINYAPP), "--port", str(port), "--delay", "1.5"],
        env={"TINY_HOST": "127.0.0.1"},
        name="tinyapp",
    )
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 10, what="tinyapp")
    app = processes.started[0]

    async def scenario(tmp: Path) -> None:
        registry = Registry()
        haproxy = HAProxy(tmp, free_port())
        try:
            await haproxy.start(registry)
            haproxy.add_server("pod-a", "127.0.0.1", port)

            def post() -> int:
                url = f"{haproxy.url}/sum"
                headers = {"x-request-id": "through-haproxy"}
                return httpx.post(
                    url, json={"numbers": [1, 2]}, headers=headers, timeout=10
                ).status_code

            request = asyncio.ensure_future(asyncio.to_thread(post))
            # In flight: the app has the request (it logs it on arrival, then waits 1.5 s).
            await asyncio.to_thread(
                wait_until,
                lambda: "request through-haproxy " in processes.output(app),
                5,
                what="the request to reach the app",
            )
            haproxy.drain_server("pod-a")
            assert haproxy.servers() == {"pod-a": "MAINT"}
            assert not haproxy.delete_server("pod-a"), "deleted with a connection attached"
            assert not request.done()
            assert await request == 200
            # HAProxy lets go of the server's connection shortly after the answer.
            await asyncio.to_thread(
                wait_until, lambda: haproxy.delete_server("pod-a"), 5, what="del server"
            )
            assert haproxy.servers() == {}
        finally:
            await haproxy.stop()
            await registry.kill_all()

    asyncio.run(asyncio.wait_for(scenario(processes.log_dir), 30))
