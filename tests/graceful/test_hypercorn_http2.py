"""HTTP/2 clients through a `graceful-hypercorn` shutdown: real processes, a real TCP
balancer on loopback, a real HTTP/2 client (httpx over h2, prior knowledge) and real
signals.

The balancer does what a Service does when a pod is terminating: from SIGTERM on it
sends new connections to the other server, and established connections stay where they
are. An HTTP/1.1 client learns from `Connection: close` to reconnect; an HTTP/2 client
learns it from GOAWAY.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter

import httpx

from lab.influx import free_port
from tests.support import REPO, VENV_BIN, Processes, wait_until

APP = "tests.graceful.apps.whoami:app"


class Balancer:
    """Forwards each accepted connection to `backend` as it is when the connection comes;
    counts connections per backend port."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.connections: Counter[int] = Counter()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self.threads: list[threading.Thread] = []
        self.closed = False
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            backend = self.backend
            try:
                server = socket.create_connection(("127.0.0.1", backend), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.connections[backend] += 1
            self.sockets += [client, server]
            self._start(self._pump, client, server)
            self._start(self._pump, server, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # One side reset: pass the reset on, as a proxy that splices would.
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    end.close()

    def close(self) -> None:
        self.closed = True
        for sock in self.sockets:
            # shutdown, unlike close, wakes a thread blocked in accept or recv on it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


def start_server(processes: Processes, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [str(VENV_BIN / "graceful-hypercorn"), APP, "--bind", f"127.0.0.1:{port}"]
    process = processes.start(argv, env=env, cwd=REPO, name=f"hypercorn-{port}")
    wait_until(lambda: "Running on" in processes.output(process), 15, what="hypercorn")
    return process


class Client:
    """One HTTP/2 client sending requests one after another until stopped, as a
    service's client does; keeps every answer (the answering pid) and every failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(http1=False, http2=True, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    response = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200 or response.http_version != "HTTP/2":
                    self.failures.append(f"{response.http_version} {response.status_code}")
                    continue
                self.answers.append((time.monotonic(), response.text.split()[0]))
                time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(15)


def test_an_http2_client_loses_nothing_through_a_shutdown(processes: Processes) -> None:
    """1. Two graceful-hypercorn servers A and B (quiet period 0.5 s, at most 1.5 s), a
    balancer sending new connections to A. 2. An HTTP/2 client sends requests one after
    another through the balancer: A answers them on one connection. 3. SIGTERM to A; the
    balancer sends new connections to B from then on (established ones stay on A). 4. A
    tells its HTTP/2 connection to go away (GOAWAY) at once: the client opens a new
    connection, to B, long before A closes its listener, and B answers the rest. 5. Not
    one request fails; A exits 0 having logged the GOAWAY."""
    env = {"GRACEFUL_QUIET_PERIOD": "0.5", "GRACEFUL_QUIET_MAX": "1.5"}
    port_a, port_b = free_port(), free_port()
    server_a = start_server(processes, port_a, env)
    server_b = start_server(processes, port_b, env)
    balancer = Balancer(port_a)
    client = Client(f"http://127.0.0.1:{balancer.port}/")
    try:
        wait_until(lambda: len(client.answers) >= 20, 10, what="answers from A")
        balancer.backend = port_b
        sigterm = time.monotonic()
        os.kill(server_a.pid, signal.SIGTERM)
        assert server_a.wait(10) == 0
        after_exit = len(client.answers)
        wait_until(lambda: len(client.answers) >= after_exit + 20, 10, what="answers from B")
    finally:
        client.finish()
        balancer.close()
    assert client.failures == [], client.failures[:5]
    answered_by = {pid for _, pid in client.answers}
    assert answered_by == {str(server_a.pid), str(server_b.pid)}, answered_by
    # The client moved at GOAWAY, not when A closed its listener 1.5 s later.
    moved = min(at for at, pid in client.answers if pid == str(server_b.pid))
    assert moved - sigterm < 1.0, moved - sigterm
    assert balancer.connections == {port_a: 1, port_b: 1}, balancer.connections
    log = processes.output(server_a)
    assert "GOAWAY" in log, log
    assert "Traceback" not in log, log
    server_b.send_signal(signal.SIGTERM)
    assert server_b.wait(10) == 0


def test_a_busy_http2_connection_goes_away_when_its_last_stream_ends(
    processes: Processes,
) -> None:
    """1. Servers A and B with a 2.5 s pre-close delay; the balancer sends new
    connections to A. 2. An HTTP/2 client's request takes 1 s on A. 3. SIGTERM to A; the
    balancer now sends new connections to B. 4. A does not tell the busy connection to go
    away (an h2 client would fail the open stream): the slow request is answered 200 by A.
    5. Then A sends GOAWAY: the client's next request goes over a new connection to B,
    while A is still in its delay, and nothing fails."""
    env = {"GRACEFUL_PRE_CLOSE_DELAY": "2.5", "GRACEFUL_QUIET_PERIOD": "0"}
    port_a, port_b = free_port(), free_port()
    server_a = start_server(processes, port_a, env)
    server_b = start_server(processes, port_b, env)
    balancer = Balancer(port_a)
    url = f"http://127.0.0.1:{balancer.port}/"
    slow: list[httpx.Response | Exception] = []
    with httpx.Client(http1=False, http2=True, timeout=10) as client:

        def slow_request() -> None:
            try:
                slow.append(client.get(url, params={"sleep": "1"}))
            except httpx.HTTPError as exc:
                slow.append(exc)

        try:
            assert client.get(url).text == f"{server_a.pid} 2"
            thread = threading.Thread(target=slow_request)
            thread.start()
            wait_until(lambda: "Sleeping 1 s" in processes.output(server_a), 5, what="request")
            balancer.backend = port_b
            sigterm = time.monotonic()
            os.kill(server_a.pid, signal.SIGTERM)
            thread.join(10)
            assert isinstance(slow[0], httpx.Response), slow
            assert slow[0].text == f"{server_a.pid} 2"
            assert client.get(url).text == f"{server_b.pid} 2"
            assert time.monotonic() - sigterm < 2.5
            assert server_a.wait(10) == 0
        finally:
            balancer.close()
    assert balancer.connections == {port_a: 1, port_b: 1}, balancer.connections
    log = processes.output(server_a)
    assert "GOAWAY sent to 0 idle connection(s); 1 busy one(s)" in log, log
    assert "Traceback" not in log, log


def _h2_headers(port: int) -> list[tuple[str, str]]:
    return [
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "http"),
        (":authority", f"127.0.0.1:{port}"),
    ]


def test_a_stream_opened_while_the_goaway_is_on_its_way_is_left_for_the_client_to_retry(
    processes: Processes,
) -> None:
    """The race a loaded client meets: it opens a stream while the GOAWAY is on its way,
    then reads the GOAWAY and the server's answer to that stream in one read.
    1. A client on the h2 library (httpx's) gets one answer on stream 1. 2. SIGTERM: the
    server sends GOAWAY (it says so in its log); the client, not reading, opens stream 3.
    3. The client reads everything until the server closes the connection (a second
    later) and hands it to h2 at once. 4. h2 takes it without a protocol error: a
    GOAWAY, NO_ERROR, naming stream 1 as the last, so stream 3 is safe to retry on a
    new connection (RFC 9113 §8.7), which httpx does; and no reset of stream 3 (h2 raises
    on a RST_STREAM read after the GOAWAY, and httpx fails the request with it)."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    port = free_port()
    env = {"GRACEFUL_QUIET_PERIOD": "0", "GRACEFUL_PRE_CLOSE_DELAY": "5"}
    server = start_server(processes, port, env)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, _h2_headers(port), end_stream=True)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        answered = False
        while not answered:
            data = sock.recv(65536)
            assert data, "the server closed the connection before answering stream 1"
            events = conn.receive_data(data)
            answered = any(
                isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events
            )
        sock.sendall(conn.data_to_send())
        os.kill(server.pid, signal.SIGTERM)
        wait_until(lambda: "GOAWAY sent" in processes.output(server), 5, what="the GOAWAY")
        conn.send_headers(3, _h2_headers(port), end_stream=True)
        sock.sendall(conn.data_to_send())
        chunks = []
        while data := sock.recv(65536):  # until the server closes it, a second later
            chunks.append(data)
    events = conn.receive_data(b"".join(chunks))
    terminated = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [(e.error_code, e.last_stream_id) for e in terminated] == [
        (h2.errors.ErrorCodes.NO_ERROR, 1)
    ], events
    assert not [e for e in events if isinstance(e, h2.events.StreamReset)], events
    assert not [e for e in events if getattr(e, "stream_id", None) == 3], events
    assert server.wait(15) == 0, processes.output(server)  # at the end of its delay
    assert "1 stream(s) opened after it refused unprocessed" in processes.output(server)
