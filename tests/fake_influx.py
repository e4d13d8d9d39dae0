"""A scripted InfluxDB 1.x on loopback: a real HTTP server whose answers each test sets.

    from tests.fake_influx import FakeInflux

    with FakeInflux() as influx:          # listens on a free 127.0.0.1 port (a thread)
        influx.url                        # "http://127.0.0.1:<port>": INFLUXDB_BASE_URL
        influx.up()                       # the default: every write answered 204, stored
        influx.status(404, '{"error":"database not found: \\"calc\\""}')
        influx.status(400, body, store=3) # answer 400, but store the first 3 lines
        influx.stall()                    # read the write, never answer (until changed)
        influx.slow(0.5)                  # answer 204 after 0.5 s
        influx.refuse()                   # stop listening: connection refused
        influx.script([(413, ""), (204, "")])  # answers for the next writes, in order
        influx.received                   # every line of every write, whatever the answer
        influx.stored                     # lines of writes it answered 2xx (or `store=`)
        influx.stored_ids()               # the `id` field of each stored line
        influx.writes                     # number of POST /write requests seen
        influx.write_times                # time.monotonic() of each, in order

Changing the behaviour releases stalled writes (they then get the new answer); `refuse`
also cuts established keep-alive connections, as a stopped InfluxDB would. `up` after
`refuse` listens again on the same port. `/ping` answers 204 while listening; any other
path 404. Everything is stopped, and every thread joined, by `close` (or the `with`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_ID = re.compile(r'[ ,]id="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Behaviour:
    kind: str  # "status", "stall", "refuse"
    status: int = 204
    body: str = ""
    delay: float = 0.0
    store: int | None = None  # lines kept of a non-2xx answer (a partial write)


UP = Behaviour("status", 204)


class FakeInflux:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._lock = threading.Condition()
        self._behaviour = UP
        self._script: list[Behaviour] = []
        self._generation = 0  # bumped on every change: releases stalled writes
        self.received: list[str] = []
        self.stored: list[str] = []
        self.writes = 0
        self.write_times: list[float] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._closed = False
        self.port = port
        self._listen()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- behaviours -----------------------------------------------------------------------

    def up(self) -> None:
        self._set(UP)
        if self._server is None:
            self._listen()

    def status(self, status: int, body: str = "", store: int | None = None) -> None:
        self._set(Behaviour("status", status, body, store=store))

    def slow(self, delay: float, status: int = 204, body: str = "") -> None:
        self._set(Behaviour("status", status, body, delay=delay))

    def stall(self) -> None:
        self._set(Behaviour("stall"))

    def refuse(self) -> None:
        self._set(Behaviour("refuse"))
        self._stop_listening()

    def script(self, answers: Iterable[tuple[int, str]]) -> None:
        """The next writes get these (status, body) answers in order, then the behaviour."""
        with self._lock:
            self._script.extend(Behaviour("status", s, b) for s, b in answers)

    def stored_ids(self) -> list[str]:
        with self._lock:
            found = [m.group(1) for line in self.stored if (m := _ID.search(line))]
        return [re.sub(r"\\(.)", r"\1", value) for value in found]  # undo the escaping

    def _set(self, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour
            self._generation += 1
            self._lock.notify_all()

    # -- serving --------------------------------------------------------------------------

    def _listen(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                self._answer(204 if self.path.startswith("/ping") else 404, "")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                data = self.rfile.read(length).decode("utf-8", errors="replace")
                if not self.path.startswith("/write"):
                    self._answer(404, '{"error":"not found"}')
                    return
                lines = [line for line in data.split("\n") if line]
                behaviour = fake._take(lines)
                if behaviour is None:  # refused or closed while stalled: drop the connection
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if behaviour.delay:
                    time.sleep(behaviour.delay)
                with fake._lock:
                    if 200 <= behaviour.status < 300:
                        fake.stored.extend(lines)
                    elif behaviour.store:
                        fake.stored.extend(lines[: behaviour.store])
                self._answer(behaviour.status, behaviour.body)

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-influx"
        )
        self._thread.start()

    def _take(self, lines: list[str]) -> Behaviour | None:
        """Record a write and decide its answer; a stall waits for the next change."""
        with self._lock:
            self.writes += 1
            self.write_times.append(time.monotonic())
            self.received.extend(lines)
            if self._script:
                return self._script.pop(0)
            while True:
                behaviour = self._behaviour
                if self._closed or behaviour.kind == "refuse":
                    return None
                if behaviour.kind != "stall":
                    return behaviour
                generation = self._generation
                while generation == self._generation and not self._closed:
                    self._lock.wait(1.0)

    def _stop_listening(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join(10)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._stop_listening()

    def __enter__(self) -> FakeInflux:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
