"""HAProxy's configuration and runtime API, against a real haproxy."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from lab.haproxy import HAProxy
from lab.influx import free_port
from lab.procs import Registry


def test_config_defaults_to_no_retries(tmp_path: Path) -> None:
    """retries 0 unless asked: retries would hide refused connections from the report."""
    assert "retries 0" in HAProxy(tmp_path, 1).config()
    assert "option redispatch" not in HAProxy(tmp_path, 1).config()
    http = HAProxy(tmp_path, 1, mode="http", retries=2).config()
    assert "retries 2" in http and "option redispatch" in http and "http-reuse safe" in http
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
            assert haproxy.delete_server("pod-a")
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
