"""GracefulServer inside the pytest process: a real uvicorn server on a loopback port,
real httpx clients and real signals (os.kill of this very process).

The server runs in the main thread, as in a real process, so uvicorn installs its signal
handlers; each scenario runs in a second thread as the clients and the one who sends the
signals. The forced exit (`hard_exit`) is recorded instead of ending pytest. The same
cases run through real `graceful-serve` and `calc serve` processes elsewhere; here they
also run where a mutation tool can see which code each test reached.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from graceful import Lifecycle, Phase, ReadinessMiddleware, ShutdownConfig, build_server
from graceful.asgi import ASGIApp, Receive, Scope, Send
from graceful.server import GracefulServer
from tests.support import wait_until


class App:
    """A bare ASGI app that records what the server does to it.

    - `/work?seconds=S`: sleeps S s, answers "done"; records "cancelled" when cut. With
      `stubborn`, it goes on `stubborn` s after its cancellation.
    - `/ready`: answers `ready_status` with "app says <status>" (404: no such route).
    - `/keep`: answers with the app's own `Connection: keep-alive` header.
    - `/orphan`: starts a task named "orphan" (kept referenced) that sleeps an hour.
    - anything else: 200 "ok".
    - `/big?bytes=N`: N bytes of "x".
    - `/body`: reads the request body, answers its length.
    - `/bare`: answers 200 "bare" with no headers at all.
    - `/cancel-self`: the handler is cancelled by the app itself.
    - `/block?seconds=S`: blocks the event loop for S s (time.sleep), answers "ok".
    - a websocket: accepted, each text message sent back; after the client closed, a
      cleanup of `websocket_cleanup` s.
    - lifespan: the startup waits until `started` is set, the shutdown until `release`
      is (both are set to begin with).
    """

    def __init__(self, ready_status: int = 404, stubborn: float = 0.0) -> None:
        self.ready_status = ready_status
        self.stubborn = stubborn
        self.events: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()  # the lifespan startup waits for it
        self.started.set()
        # Called as the startup's last step, before it says complete (no await between).
        self.last_startup_step: Callable[[], None] | None = None
        self.kept: set[asyncio.Task[Any]] = set()
        self.websocket_cleanup = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await self.echo(receive, send)
            return
        path = scope["path"]
        if path == "/bare":  # an answer with no headers at all (ASGI allows it)
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"bare"})
            return
        status, headers, body = 200, [(b"content-type", b"text/plain")], b"ok"
        if path == "/work":
            seconds = float(scope["query_string"].decode().partition("=")[2] or 0)
            self.events.append("working")
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                self.events.append("cancelled")
                if not self.stubborn:
                    raise
                await asyncio.sleep(self.stubborn)
                self.events.append("went on")
            self.events.append("finished")
            body = b"done"
        elif path.endswith("/ready"):  # under a root path too
            status, body = self.ready_status, f"app says {self.ready_status}".encode()
        elif path == "/keep":
            headers.append((b"Connection", b"keep-alive"))
        elif path == "/cancel-self":  # cancelled by the app's own doing, not the server
            raise asyncio.CancelledError
        elif path == "/body":
            size = 0
            while True:
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            body = str(size).encode()
        elif path == "/block":  # holds the event loop itself, as blocking code does
            self.events.append("blocking")
            time.sleep(float(scope["query_string"].decode().partition("=")[2]))  # noqa: ASYNC251
        elif path == "/big":
            body = b"x" * int(scope["query_string"].decode().partition("=")[2])
            self.events.append("big answered")
        elif path == "/orphan":
            task = asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="orphan")
            self.kept.add(task)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def echo(self, receive: Receive, send: Send) -> None:
        """A websocket that sends back each text message until the client closes, then
        takes `websocket_cleanup` seconds to clean up."""
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif message["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                break
        if self.websocket_cleanup:
            self.events.append("websocket cleanup")
            await asyncio.sleep(self.websocket_cleanup)
            self.events.append("websocket cleanup done")

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.events.append("startup")
                while not self.started.is_set():  # noqa: ASYNC110 (set by a thread, not the loop)
                    await asyncio.sleep(0.01)
                if self.last_startup_step is not None:
                    self.last_startup_step()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.events.append("app shutdown")
                while not self.release.is_set():  # noqa: ASYNC110 (set by a thread, not the loop)
                    await asyncio.sleep(0.01)
                self.events.append("app shutdown done")
                await send({"type": "lifespan.shutdown.complete"})
                return


class Served:
    """A GracefulServer for `app` on 127.0.0.1:`port`, run in this (main) thread."""

    def __init__(
        self,
        app: App,
        config: ShutdownConfig,
        port: int,
        readiness: str | None = "/ready",
        **options: Any,
    ) -> None:
        self.app = app
        self.lifecycle = Lifecycle(config)
        served: ASGIApp = app
        if readiness:
            served = ReadinessMiddleware(app, self.lifecycle, readiness)
        self.server: GracefulServer = build_server(
            served,
            self.lifecycle,
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            **options,
        )
        self.exits: list[int] = []
        self.server.hard_exit = self.exits.append
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.signalled_at = 0.0

    def run(self, scenario: Callable[[Served], None]) -> float:
        """Serve until shut down while `scenario` runs in a thread; re-raise what it
        raised. A failed scenario hurries the server to its end. Returns the seconds from
        the first signal to the end of the shutdown."""
        failures: list[BaseException] = []
        stopped = threading.Event()

        def drive() -> None:
            try:
                wait_until(lambda: self.server.started or stopped.is_set(), 10, what="start")
                assert not stopped.is_set(), "the server ended before it started"
                scenario(self)
            except BaseException as exc:
                failures.append(exc)
                self.server.hurry = True
                self.server.should_exit = True
                self.app.release.set()

        # A signal that comes when the server's handlers are not installed (before it
        # starts, after it ends) is recorded here instead of ending pytest.
        stray: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda number, frame: stray.append(number))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        thread = threading.Thread(target=drive, name="scenario", daemon=True)
        thread.start()
        try:
            self.server.run()
        finally:
            stopped.set()
            self.app.release.set()
            thread.join(15)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        ended = time.monotonic()
        if failures:
            raise failures[0]
        assert not thread.is_alive(), "the scenario did not end"
        return ended - self.signalled_at

    def signal(self, sig: int) -> None:
        if not self.signalled_at:
            self.signalled_at = time.monotonic()
        os.kill(os.getpid(), sig)

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except ConnectionRefusedError:
            return False
        return True

    def in_background(self, method: str, path: str) -> Background:
        return Background(self.url, method, path)


class Background:
    """One request on its own connection, in a thread: its response, or its error."""

    def __init__(self, url: str, method: str, path: str) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._send, args=(url, method, path))
        self._thread.start()

    def _send(self, url: str, method: str, path: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=10) as client:
                self.response = client.request(method, path)
        except Exception as exc:
            self.error = exc

    def result(self) -> httpx.Response | Exception:
        self._thread.join(15)
        assert not self._thread.is_alive()
        outcome = self.response if self.response is not None else self.error
        assert outcome is not None
        return outcome


def config(**changes: Any) -> ShutdownConfig:
    settings: dict[str, Any] = {
        "drain": True,
        "drain_timeout": 2.0,
        "readiness_flip": True,
        "connection_close": True,
        "quiet_period": 0.0,
        "quiet_max": 0.0,
        "grace_period": 30.0,
        "enforce_budget": True,
    }
    settings.update(changes)
    return ShutdownConfig(**settings)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


def messages(caplog: pytest.LogCaptureFixture, logger: str = "graceful") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(logger)]


def test_sigterm_runs_every_phase_in_order_and_drains_a_running_request(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Serve with readiness flip, Connection: close and a 0.3 s quiet period.
    2. Before SIGTERM: readiness 200 (the app has no such route), no Connection: close.
    3. A 1 s request starts; SIGTERM. 4. Readiness answers 503 at once (GET and HEAD),
    without asking the app; requests are still served, with Connection: close (the
    app's own keep-alive header replaced). 5. The listener closes after the quiet
    period; the running request is drained and answered 200. 6. The app's shutdown runs
    last; each phase is timed and logged; the process would exit 0."""
    app = App()
    served = Served(app, config(quiet_period=0.3, quiet_max=5.0), port)
    lifecycle = served.lifecycle
    seen: dict[str, Any] = {}

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            ready = client.get("/ready")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            assert ready.headers["cache-control"] == "no-store"
            assert ready.headers["content-type"] == "text/plain; charset=utf-8"
            assert ready.headers["content-length"] == "6"
            head = client.head("/ready")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == "6"
            assert "connection" not in client.get("/").headers
            assert lifecycle.phase is Phase.SERVING and lifecycle.ready
            slow = s.in_background("GET", "/work?seconds=1")
            wait_until(lambda: lifecycle.in_flight == 1, 5, what="slow request running")
            s.signal(signal.SIGTERM)
            wait_until(lambda: lifecycle.phase is Phase.DELAY, 2, what="delay phase")
            assert not lifecycle.ready
            not_ready = client.get("/ready")
            assert (not_ready.status_code, not_ready.text) == (503, "not ready\n")
            assert not_ready.headers["cache-control"] == "no-store"
            head = client.head("/ready")
            assert (head.status_code, head.content) == (503, b"")
            assert head.headers["content-length"] == "10"
            kept = client.get("/keep")
            assert kept.status_code == 200
            assert kept.headers.get_list("connection") == ["close"]
            bare = client.get("/bare")
            assert (bare.text, bare.headers.get_list("connection")) == ("bare", ["close"])
            assert client.post("/body", content=b"b" * 70_000).text == "70000"
        wait_until(lambda: not s.listening(), 3, what="listener to close")
        seen["closed after"] = time.monotonic() - s.signalled_at
        outcome = slow.result()
        assert isinstance(outcome, httpx.Response), outcome
        assert (outcome.status_code, outcome.text) == (200, "done")
        assert outcome.headers["connection"] == "close"

    took = served.run(scenario)
    assert seen["closed after"] >= 0.3
    assert took < 3
    assert served.exits == []
    assert app.events == [
        "startup",
        "working",
        "finished",
        "app shutdown",
        "app shutdown done",
    ]
    assert list(served.server.phase_durations) == ["delay", "closing", "draining", "app-shutdown"]
    assert 0.3 <= served.server.phase_durations["delay"] < 1.0
    assert served.server.phase_durations["draining"] > 0.2  # it waited for the request
    assert lifecycle.phase is Phase.STOPPED
    assert (lifecycle.in_flight, lifecycle.requests_cancelled) == (0, 0)
    assert lifecycle.shutdown_signal == signal.SIGTERM
    assert served.server.signals == [(signal.SIGTERM, "start")]
    said = messages(logs)
    assert said[0] == "Shutdown started (signal SIGTERM)"
    # One connection is the request's; a probe of the port may not have closed yet.
    assert any(
        re.fullmatch(r"Draining 1 request handler\(s\) on [12] open connection\(s\)", m)
        for m in said
    ), said
    for phase in ("delay", "closing", "draining", "app-shutdown"):
        assert any(m.startswith(f"Shutdown phase {phase} took ") for m in said), said
    finished = re.fullmatch(r"Shutdown finished in (\d+\.\d\d) s", said[-1])
    assert finished and took - 0.2 <= float(finished.group(1)) <= took + 0.01, (said[-1], took)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING], logs.text


def test_quiet_counts_from_sigterm_and_each_request_restarts_it(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Serve with a 0.2 s pre-close delay and a 0.4 s quiet period; the pod has been
    idle 0.5 s when SIGTERM comes. 2. A request 0.3 s after SIGTERM restarts the quiet
    period; the kubelet's probes of /ready and a scraper's /metrics do not. 3. The listener closes no sooner than
    0.4 s after the last request, well within quiet_max."""
    served = Served(App(), config(pre_close_delay=0.2, quiet_period=0.4, quiet_max=5.0), port)
    marks: dict[str, float] = {}

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            client.get("/")
            time.sleep(0.5)  # the scenario: the pod idles before SIGTERM
            s.signal(signal.SIGTERM)
            time.sleep(0.3)  # the scenario: one more request comes 0.3 s later
            assert s.listening()
            assert client.get("/").headers["connection"] == "close"
            marks["request"] = time.monotonic()
            while time.monotonic() - marks["request"] < 0.3:  # probes, paced by the scenario
                assert client.get("/metrics").status_code == 200
                probe = client.get("/ready", headers={"User-Agent": "kube-probe/1.37"})
                assert probe.status_code == 503
                time.sleep(0.05)
        wait_until(lambda: not s.listening(), 3, what="listener to close")
        marks["closed"] = time.monotonic()

    served.run(scenario)
    assert 0.4 <= marks["closed"] - marks["request"] < 0.65
    assert marks["closed"] - served.signalled_at < 1.5
    # From when the serving loop noticed SIGTERM (within 0.1 s) to the close.
    assert 0.55 <= served.server.phase_durations["delay"] < 1.2
    assert not [r for r in logs.records if r.levelno >= logging.WARNING], logs.text


def test_quiet_max_ends_the_delay_and_says_so(port: int, logs: pytest.LogCaptureFixture) -> None:
    """1. A 0.2 s pre-close delay, a quiet period of 5 s but quiet_max 0.5 s (the limit
    for both). 2. SIGTERM. 3. The delay phase ends 0.5 s after SIGTERM with a warning
    that names how long the quiet period waited (the quiet_max left after the pre-close
    delay, about 0.3 s)."""
    served = Served(App(), config(pre_close_delay=0.2, quiet_period=5.0, quiet_max=0.5), port)

    def scenario(s: Served) -> None:
        s.signal(signal.SIGTERM)
        wait_until(lambda: not s.listening(), 3, what="listener to close")

    served.run(scenario)
    assert 0.45 <= served.server.phase_durations["delay"] < 0.8
    (warning,) = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    # 0.5 s less the pre-close delay as polled (0.2 s, give or take a 0.05 s poll)
    assert re.fullmatch(r"Still receiving requests after 0\.[23]\d s; closing anyway", warning)


def test_a_pre_close_delay_longer_than_the_quiet_period_is_the_whole_wait(port: int) -> None:
    """1. A 0.4 s pre-close delay and a 0.3 s quiet period; no request after SIGTERM.
    2. Quiet is counted from SIGTERM, so it has been met when the pre-close delay ends:
    the delay phase takes about 0.4 s, not 0.7 s."""
    served = Served(App(), config(pre_close_delay=0.4, quiet_period=0.3, quiet_max=5.0), port)

    def scenario(s: Served) -> None:
        s.signal(signal.SIGTERM)

    served.run(scenario)
    assert 0.35 <= served.server.phase_durations["delay"] < 0.6


def test_a_second_sigint_ends_the_pre_close_delay_and_says_so(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. A 5 s pre-close delay. 2. SIGTERM, then SIGINT during the delay. 3. The delay
    ends at once, with a warning naming what was no longer waited for."""
    served = Served(App(), config(pre_close_delay=5.0), port)

    def scenario(s: Served) -> None:
        s.signal(signal.SIGTERM)
        wait_until(lambda: s.lifecycle.phase is Phase.DELAY, 2, what="the delay")
        s.signal(signal.SIGINT)

    took = served.run(scenario)
    assert took < 1.0
    assert "Second SIGINT: stopped waiting for pre-close delay" in messages(logs)


def test_the_budget_cuts_the_delay_short(port: int) -> None:
    """1. A pre-close delay of 5 s, but a grace period of 1.6 s with a 1 s safety margin.
    2. SIGTERM. 3. The delay ends 0.6 s after SIGTERM (the budget), and so does the
    whole shutdown, less than 1 s after SIGTERM."""
    served = Served(App(), config(pre_close_delay=5.0, grace_period=1.6, safety_margin=1.0), port)

    def scenario(s: Served) -> None:
        s.signal(signal.SIGTERM)

    took = served.run(scenario)
    # The budget counts from SIGTERM, the phase from when the loop noticed it (its 0.05 s
    # poll, later on a loaded machine): the phase is 0.6 s less that notice.
    assert 0.4 <= served.server.phase_durations["delay"] < 0.9
    assert took < 1.2
    assert served.exits == []


def test_the_drain_timeout_aborts_a_request_that_outlives_it(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Drain timeout 0.3 s, no quiet period. 2. A 30 s request runs; SIGTERM. 3. The
    drain waits 0.3 s, then aborts the connection and cancels the handler, counted and
    logged. 4. The app's shutdown still runs; nothing is reported as still running."""
    app = App()
    served = Served(app, config(drain_timeout=0.3), port)
    seen: dict[str, Any] = {}

    def scenario(s: Served) -> None:
        slow = s.in_background("GET", "/work?seconds=30")
        wait_until(lambda: s.lifecycle.in_flight == 1, 5, what="request running")
        s.signal(signal.SIGTERM)
        seen["outcome"] = slow.result()

    took = served.run(scenario)
    assert isinstance(seen["outcome"], httpx.HTTPError), seen
    assert 0.3 <= served.server.phase_durations["draining"] < 1.0
    assert took < 1.5
    assert app.events == ["startup", "working", "cancelled", "app shutdown", "app shutdown done"]
    assert served.lifecycle.requests_cancelled == 1
    assert served.lifecycle.requests_finished_late == 0
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert errors == ["Aborted 1 connection(s) and 1 request(s): drain time is up"], errors


def test_drain_off_aborts_at_once(port: int, logs: pytest.LogCaptureFixture) -> None:
    """The talk's v4: 1. drain off, drain timeout 5 s. 2. Two 30 s requests run;
    SIGTERM. 3. Both are aborted at once (the drain timeout is not waited for) and
    counted."""
    app = App()
    served = Served(app, config(drain=False, drain_timeout=5.0), port)

    def scenario(s: Served) -> None:
        slow = [s.in_background("GET", "/work?seconds=30") for _ in range(2)]
        wait_until(lambda: s.lifecycle.in_flight == 2, 5, what="requests running")
        s.signal(signal.SIGTERM)
        assert all(isinstance(each.result(), httpx.HTTPError) for each in slow)

    took = served.run(scenario)
    assert took < 0.8
    assert served.lifecycle.requests_cancelled == 2
    assert app.events.count("cancelled") == 2
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert warnings == ["Aborted 2 connection(s) and 2 request(s): drain is off"]


def test_drain_waits_for_a_handler_whose_client_has_gone(port: int) -> None:
    """1. A 0.6 s request starts and its client goes away at once. 2. SIGTERM.
    3. The drain still waits for the handler (uvicorn only marks it disconnected), so
    it finishes before the app's shutdown starts; nothing is cancelled."""
    app = App()
    served = Served(app, config(drain_timeout=5.0), port)

    def scenario(s: Served) -> None:
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(b"GET /work?seconds=0.6 HTTP/1.1\r\nhost: x\r\n\r\n")
            wait_until(lambda: s.lifecycle.in_flight == 1, 5, what="request running")
        wait_until(lambda: not s.server.server_state.connections, 5, what="client gone")
        s.signal(signal.SIGTERM)

    served.run(scenario)
    assert app.events == ["startup", "working", "finished", "app shutdown", "app shutdown done"]
    assert served.lifecycle.requests_cancelled == 0


def test_drain_waits_for_a_websocket_handler_whose_client_has_gone(port: int) -> None:
    """1. A websocket handler that takes 0.6 s to clean up once its client has closed.
    2. The client closes; SIGTERM while the handler cleans up (no connection is open and
    no HTTP request runs). 3. The drain waits for the handler: its cleanup ends before
    the app's shutdown starts."""
    from websockets.sync.client import connect

    app = App()
    app.websocket_cleanup = 0.6
    served = Served(app, config(drain_timeout=5.0), port)

    def scenario(s: Served) -> None:
        with connect(f"ws://127.0.0.1:{s.port}/ws", open_timeout=5) as websocket:
            websocket.send("one")
            assert websocket.recv(timeout=5) == "one"
        wait_until(lambda: "websocket cleanup" in app.events, 5, what="the cleanup to start")
        wait_until(lambda: not s.server.server_state.connections, 5, what="client gone")
        s.signal(signal.SIGTERM)

    served.run(scenario)
    assert app.events == [
        "startup",
        "websocket cleanup",
        "websocket cleanup done",
        "app shutdown",
        "app shutdown done",
    ]


def test_drain_waits_for_a_response_a_slow_client_is_still_reading(port: int) -> None:
    """1. A client with a small receive buffer asks for 4 MiB and reads nothing yet: the
    handler has handed over the whole answer, which waits in the server's buffer.
    2. SIGTERM: no request runs any more, but the connection is still sending. 3. The
    client then reads at its own pace: it gets all 4 MiB (the drain waited for the
    connection), before the app's shutdown starts."""
    app = App()
    served = Served(app, config(drain_timeout=10.0), port)
    size = 4 * 1024 * 1024
    received: list[int] = []

    def scenario(s: Served) -> None:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", s.port))
            sock.sendall(f"GET /big?bytes={size} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            state = s.server.server_state
            wait_until(
                lambda: "big answered" in app.events and not state.tasks, 5, what="handed over"
            )
            s.signal(signal.SIGTERM)
            wait_until(lambda: s.lifecycle.phase is Phase.DRAINING, 5, what="the drain")
            total = 0
            sock.settimeout(5)
            while chunk := sock.recv(65536):  # a small window: a few KiB a read
                total += len(chunk)
            received.append(total)

    served.run(scenario)
    assert received and received[0] > size, received  # the head and every byte of the body
    assert app.events == ["startup", "big answered", "app shutdown", "app shutdown done"]


def test_an_unlimited_drain_without_a_budget_waits_for_the_request(port: int) -> None:
    """1. No drain timeout and no shutdown budget (the wait has no deadline at all).
    2. A 0.5 s request runs; SIGTERM. 3. The drain waits for it: it finishes, then the
    app's shutdown runs; nothing is cancelled."""
    app = App()
    served = Served(app, config(drain_timeout=None, enforce_budget=False), port)
    outcome: list[httpx.Response | Exception] = []

    def scenario(s: Served) -> None:
        slow = s.in_background("GET", "/work?seconds=0.5")
        wait_until(lambda: s.lifecycle.in_flight == 1, 5, what="request running")
        s.signal(signal.SIGTERM)
        outcome.append(slow.result())

    served.run(scenario)
    assert isinstance(outcome[0], httpx.Response) and outcome[0].text == "done", outcome
    assert app.events == ["startup", "working", "finished", "app shutdown", "app shutdown done"]
    assert served.lifecycle.requests_cancelled == 0


def test_the_date_header_stays_fresh_during_a_long_delay(port: int) -> None:
    """1. A 2.3 s pre-close delay (uvicorn's own loop, which refreshes the Date header,
    no longer runs once the shutdown starts). 2. A response's Date just before SIGTERM,
    and another 2.1 s into the delay. 3. The later one is at least 1 s later: the
    shutdown's waits keep the header fresh."""
    served = Served(App(), config(pre_close_delay=2.3), port)
    dates: list[float] = []

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            before = client.get("/")
            s.signal(signal.SIGTERM)
            wait_until(lambda: s.lifecycle.phase is Phase.DELAY, 2, what="the delay")
            wait_until(lambda: time.monotonic() - s.signalled_at >= 2.1, 3, what="2.1 s")
            during = client.get("/")
        for response in (before, during):
            dates.append(email.utils.parsedate_to_datetime(response.headers["date"]).timestamp())

    served.run(scenario)
    assert dates[1] - dates[0] >= 1.0, dates


def test_a_sigterm_during_startup_still_runs_every_phase(port: int) -> None:
    """1. SIGTERM comes as the app's startup takes its last step (a signal while the
    startup still waits cancels it: test_startup_signals.py). 2. The startup completes.
    3. The shutdown runs at once, every phase of it, the app's shutdown included (what
    the startup set up is released)."""
    app = App()
    served = Served(app, config(), port)
    app.last_startup_step = lambda: served.signal(signal.SIGTERM)

    def signal_during_startup() -> None:
        wait_until(lambda: served.server.should_exit, 5, what="the signal")

    # A signal outside the server's own handlers is recorded, not the end of pytest.
    stray: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda number, frame: stray.append(number))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    thread = threading.Thread(target=signal_during_startup)
    thread.start()
    try:
        served.server.run()
    finally:
        app.started.set()
        thread.join(10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert not thread.is_alive() and stray == []
    assert served.server.started
    assert served.server.signals == [(signal.SIGTERM, "start")]
    assert app.events == ["startup", "app shutdown", "app shutdown done"]
    assert list(served.server.phase_durations) == ["delay", "closing", "draining", "app-shutdown"]
    assert served.lifecycle.phase is Phase.STOPPED


def test_a_sigint_recorded_before_the_shutdown_starts_hurries_it(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. No pre-close delay, a 5 s quiet period. 2. While a handler blocks the event
    loop, SIGTERM then SIGINT arrive: both are recorded before the shutdown starts. 3. The shutdown starts hurried: no quiet period and no delay to wait for
    (none is said to be cut short), and it ends at once."""
    app = App()
    served = Served(app, config(quiet_period=5.0, quiet_max=5.0), port)

    def scenario(s: Served) -> None:
        blocked = s.in_background("GET", "/block?seconds=0.5")
        wait_until(lambda: "blocking" in app.events, 5, what="the loop to block")
        s.signal(signal.SIGTERM)
        # Handled in the main thread even while the loop is blocked (not both at once:
        # Python runs pending handlers in signal-number order, SIGINT first).
        wait_until(lambda: s.server.should_exit, 2, what="SIGTERM recorded")
        s.signal(signal.SIGINT)
        wait_until(lambda: s.server.hurry, 2, what="SIGINT recorded")
        assert "blocking" in app.events and s.lifecycle.phase is Phase.SERVING
        outcome = blocked.result()
        assert isinstance(outcome, httpx.Response) and outcome.status_code == 200, outcome

    took = served.run(scenario)
    assert served.server.signals == [(signal.SIGTERM, "start"), (signal.SIGINT, "hurry")]
    assert took < 2.0
    said = messages(logs)
    assert not [m for m in said if "stopped waiting" in m or "closing anyway" in m], said


def test_a_handler_cancelled_while_serving_is_not_counted_as_cut(port: int) -> None:
    """1. While serving, a handler ends cancelled by the app's own doing. 2. uvicorn
    answers 500 as for any failed handler; the lifecycle does not count it among the
    requests the shutdown cut (none was: the server aborts only while shutting down)."""
    served = Served(App(), config(), port)

    def scenario(s: Served) -> None:
        assert httpx.get(f"{s.url}/cancel-self", timeout=5).status_code == 500  # uvicorn's
        assert s.lifecycle.requests_cancelled == 0
        assert s.lifecycle.in_flight == 0
        s.signal(signal.SIGTERM)

    served.run(scenario)
    assert served.lifecycle.requests_cancelled == 0


def test_no_connection_close_without_the_switch(port: int) -> None:
    """1. connection_close off, readiness flip off, a 0.5 s quiet period. 2. SIGTERM.
    3. During the delay, responses keep the app's own headers (no Connection: close)
    and readiness still asks the app."""
    served = Served(
        App(ready_status=200),
        config(connection_close=False, readiness_flip=False, quiet_period=0.5, quiet_max=1.0),
        port,
    )

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            s.signal(signal.SIGTERM)
            wait_until(lambda: s.lifecycle.phase is Phase.DELAY, 2, what="delay phase")
            assert "connection" not in client.get("/").headers
            assert client.post("/body", content=b"b" * 70_000).text == "70000"
            assert client.get("/keep").headers["connection"] == "keep-alive"
            ready = client.get("/ready")
            assert (ready.status_code, ready.text) == (200, "app says 200")

    served.run(scenario)


def test_the_apps_own_readiness_answer_stands_and_other_methods_reach_it(port: int) -> None:
    """1. An app whose /ready answers 503 (its database is down). 2. GET /ready: the
    app's 503 stands (not turned into 200); POST /ready goes to the app as it is;
    other paths are untouched."""
    served = Served(App(ready_status=503), config(), port)

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            ready = client.get("/ready")
            assert (ready.status_code, ready.text) == (503, "app says 503")
            assert "cache-control" not in ready.headers
            s.app.ready_status = 404
            posted = client.post("/ready")
            assert (posted.status_code, posted.text) == (404, "app says 404")
            assert client.get("/ready/").text == "ok"
        s.signal(signal.SIGTERM)

    served.run(scenario)


def test_readiness_under_a_root_path(port: int) -> None:
    """1. uvicorn with --root-path /api, behind a proxy that strips /api (uvicorn puts
    the root path back in front of the path the app sees). 2. /ready is still the
    readiness route: 200, then 503 after SIGTERM."""
    served = Served(App(), config(quiet_period=0.5, quiet_max=1.0), port, root_path="/api")

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            assert client.get("/ready").text == "ready\n"
            s.signal(signal.SIGTERM)
            wait_until(lambda: s.lifecycle.shutting_down, 2, what="shutdown")
            assert client.get("/ready").status_code == 503

    served.run(scenario)


def test_readiness_path_must_start_with_a_slash() -> None:
    """A readiness path without its leading '/' is refused at once, with the path."""
    with pytest.raises(ValueError, match=r"readiness path must start with '/': 'ready'"):
        ReadinessMiddleware(App(), Lifecycle(ShutdownConfig()), "ready")


def test_later_signals_sigterm_ignored_sigint_hurries_a_third_exits(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. A 10 s quiet period; a 30 s request runs; the app reports 3 points unwritten
    and has last words to log; its shutdown waits until released. 2. SIGTERM: the
    shutdown starts. 3. SIGTERM again: logged and ignored (still in the delay). 4. SIGINT:
    the waits end at once, the request is aborted ("second SIGINT"), the app's shutdown
    starts. 5. A third signal during the app's shutdown: the forced exit with 130,
    logging the app's last words and its unwritten count first."""
    app = App()
    app.release.clear()
    served = Served(app, config(quiet_period=10.0, quiet_max=20.0, drain_timeout=20.0), port)
    lifecycle = served.lifecycle
    lifecycle.report_unwritten("points", lambda: 3)
    last_words: list[str] = []
    lifecycle.before_forced_exit(lambda: last_words.append("said"))

    def scenario(s: Served) -> None:
        slow = s.in_background("GET", "/work?seconds=30")
        wait_until(lambda: lifecycle.in_flight == 1, 5, what="request running")
        s.signal(signal.SIGTERM)
        wait_until(lambda: lifecycle.phase is Phase.DELAY, 2, what="delay phase")
        s.signal(signal.SIGTERM)
        wait_until(
            lambda: (
                "SIGTERM again during shutdown: ignored, the shutdown goes on" in messages(logs)
            ),
            2,
            what="second SIGTERM logged",
        )
        assert lifecycle.phase is Phase.DELAY
        s.signal(signal.SIGINT)
        wait_until(lambda: lifecycle.phase is Phase.APP_SHUTDOWN, 2, what="app shutdown")
        assert isinstance(slow.result(), httpx.HTTPError)
        s.signal(signal.SIGINT)
        wait_until(lambda: s.exits, 2, what="forced exit")
        s.app.release.set()

    took = served.run(scenario)
    assert served.exits == [128 + signal.SIGINT]
    assert last_words == ["said"]
    assert served.server.signals == [
        (signal.SIGTERM, "start"),
        (signal.SIGTERM, "ignore"),
        (signal.SIGINT, "hurry"),
        (signal.SIGINT, "exit"),
    ]
    assert took < 3
    assert lifecycle.requests_cancelled == 1
    said = messages(logs)
    hurried = (
        "SIGINT again: no more waiting for requests; accepted work is still written "
        "(one more signal exits at once)"
    )
    order = [
        "Shutdown started (signal SIGTERM)",
        "SIGTERM again during shutdown: ignored, the shutdown goes on",
        "Second SIGINT: stopped waiting for quiet period",
        "Second SIGINT: stopped waiting for in-flight requests",
        "Aborted 1 connection(s) and 1 request(s): second SIGINT",
        "Exiting at once (third signal, SIGINT) in phase app-shutdown: left unwritten: "
        "3 points; 0 request(s) still running",
    ]
    assert [m for m in said if m in order] == order, said
    # The watcher logs the SIGINT on its own poll: after the SIGTERM, before the exit.
    assert order[1] in said[: said.index(hurried)] and order[-1] in said[said.index(hurried) :]
    assert "Still receiving requests" not in logs.text


def test_a_second_sigint_during_the_drain_aborts_what_runs(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. No quiet period, drain timeout 20 s; a 30 s request runs. 2. SIGINT (Ctrl-C):
    the drain waits for the request. 3. SIGINT again: the drain stops waiting and aborts
    the request ("second SIGINT"); the app's shutdown runs; the shutdown ends well
    before the drain timeout, with no forced exit."""
    app = App()
    served = Served(app, config(drain_timeout=20.0), port)

    def scenario(s: Served) -> None:
        slow = s.in_background("GET", "/work?seconds=30")
        wait_until(lambda: s.lifecycle.in_flight == 1, 5, what="request running")
        s.signal(signal.SIGINT)
        wait_until(lambda: s.lifecycle.phase is Phase.DRAINING, 2, what="drain")
        s.signal(signal.SIGINT)
        assert isinstance(slow.result(), httpx.HTTPError)

    took = served.run(scenario)
    assert took < 2
    assert served.exits == []
    assert app.events[-2:] == ["app shutdown", "app shutdown done"]
    said = messages(logs)
    assert said[0] == "Shutdown started (signal SIGINT)"
    assert "Second SIGINT: stopped waiting for in-flight requests" in said
    assert "Aborted 1 connection(s) and 1 request(s): second SIGINT" in said


def test_an_app_shutdown_past_the_budget_takes_the_forced_exit(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Grace period 2 s with a 1 s margin: 1 s of budget; the app's shutdown never
    ends by itself; 7 items unwritten, and one count that fails. 2. SIGTERM. 3. The
    app's shutdown gets the budget plus half the margin (1.5 s after SIGTERM), then the
    forced exit with code 1, logging the 7 items and the failed count (-1). 4. (The
    exit only recorded, the shutdown goes on: the stuck app's shutdown is named among
    the tasks still running at the end.)"""
    app = App()
    app.release.clear()
    served = Served(app, config(grace_period=2.0, safety_margin=1.0), port)
    served.lifecycle.report_unwritten("items", lambda: 7)
    served.lifecycle.report_unwritten("broken", lambda: 1 // 0)
    seen: dict[str, float] = {}

    def scenario(s: Served) -> None:
        s.signal(signal.SIGTERM)
        wait_until(lambda: s.exits, 3, what="forced exit")
        seen["exit"] = time.monotonic() - s.signalled_at

    served.run(scenario)  # the exit is only recorded: the shutdown goes on to its end
    assert served.exits == [1]
    assert 1.4 <= seen["exit"] < 1.9, seen
    said = messages(logs)
    # the stuck shutdown, named among what is still running at the end
    assert any(
        re.fullmatch(
            r"\d task\(s\) still running at exit are cancelled: ([\w-]+, )*graceful-app-shutdown", m
        )
        for m in said
    ), said
    assert (
        "Exiting at once (the app's shutdown overran the budget) in phase app-shutdown: "
        "left unwritten: 7 items, -1 broken; 0 request(s) still running"
    ) in said
    assert (
        "Cannot count unwritten broken: ZeroDivisionError('integer division or modulo by zero')"
        in said
    )


def test_a_stubborn_handler_and_a_left_task_are_named_before_the_end(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Two handlers that go on 2 s after their cancellation; a request that leaves a
    task named "orphan" running; drain timeout 0.2 s. 2. SIGTERM. 3. The drain aborts
    the handlers, gives them 1 s, logs that they still run, runs the app's shutdown,
    and before "Shutdown finished" names the handlers and the orphan task that the
    loop's end will cancel; each handler's late end is logged too."""
    app = App(stubborn=2.0)
    served = Served(app, config(drain_timeout=0.2), port)

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            assert client.get("/orphan").status_code == 200
        slow = [s.in_background("GET", "/work?seconds=30") for _ in range(2)]
        wait_until(lambda: s.lifecycle.in_flight == 2, 5, what="requests running")
        s.signal(signal.SIGTERM)
        assert all(isinstance(each.result(), httpx.HTTPError) for each in slow)

    took = served.run(scenario)
    assert 1.2 <= took < 2.5
    said = messages(logs)
    end = said.index(next(m for m in said if m.startswith("Shutdown finished")))
    before_end = said[:end]
    assert (
        "2 request handler(s) still running 1.0 s after being cancelled; "
        "the app's shutdown starts anyway"
    ) in before_end
    assert "2 request handler(s) still running at exit are cancelled" in before_end
    assert "1 task(s) still running at exit are cancelled: orphan" in before_end
    assert said.count("A GET /work handler ended after the app's shutdown began") == 2
    assert served.lifecycle.requests_finished_late == 2
    assert "cancelled" in app.events and "went on" not in app.events


def test_a_shutdown_no_signal_asked_for_still_counts_from_its_start(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. uvicorn's request limit of 2 (--limit-max-requests). 2. Two requests. 3. The
    server shuts itself down with no signal: the shutdown is dated from then, named as
    SIGTERM's, and runs every phase with the budget."""
    served = Served(App(), config(), port, limit_max_requests=2)

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            client.get("/")
            before = time.monotonic()
            client.get("/")
        wait_until(lambda: s.lifecycle.shutting_down, 3, what="shutdown")
        requested = s.lifecycle.shutdown_requested_at
        assert requested is not None and requested >= before

    served.run(scenario)
    assert served.lifecycle.shutdown_signal == signal.SIGTERM
    assert served.server.signals == []
    assert messages(logs)[0] == "Shutdown started (signal SIGTERM)"
    assert served.lifecycle.phase is Phase.STOPPED


def test_a_shutdown_called_directly_says_no_signal_asked_for_it(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. An embedding program drives the server itself: startup(), then shutdown() with
    no main loop and no signal. 2. The shutdown says it started with no signal, runs
    every phase and ends stopped."""
    served = Served(App(), config(), port)

    async def drive() -> None:
        server = served.server
        server.config.load()  # what uvicorn's serve() does before its startup
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup()
        await server.shutdown()

    asyncio.run(drive())
    said = messages(logs)
    assert said[0] == "Shutdown started (signal none)", said
    assert served.lifecycle.shutdown_signal is None
    assert served.lifecycle.phase is Phase.STOPPED


def test_serve_runs_until_sigterm_and_returns_the_server(port: int) -> None:
    """`graceful.serve(app, lifecycle, **uvicorn options)`: 1. A bare app with a lifespan,
    uvicorn's default lifespan mode. 2. It serves; SIGTERM. 3. serve returns the server,
    its phases timed, the app's shutdown run."""
    from graceful import serve
    from tests.graceful.in_process import listening_or_ended, run_with_signals_guarded

    app = App()
    lifecycle = Lifecycle(config())

    def drive() -> None:
        listening_or_ended("127.0.0.1", port)
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{port}/").text == "ok"
        os.kill(os.getpid(), signal.SIGTERM)

    server = run_with_signals_guarded(
        lambda: serve(app, lifecycle, host="127.0.0.1", port=port, log_config=None), drive
    )
    assert isinstance(server, GracefulServer) and server.lifecycle is lifecycle
    assert list(server.phase_durations) == ["delay", "closing", "draining", "app-shutdown"]
    assert app.events == ["startup", "app shutdown", "app shutdown done"]


def test_the_guarded_protocol_on_a_real_socket(port: int) -> None:
    """uvicorn builds its protocol with keyword arguments: 1. A server with
    http=guarded_protocol(1 KiB head limit, 5 s). 2. A small request is served; a 2 KiB
    head gets 431 and the connection closes."""
    from graceful import guarded_protocol

    served = Served(App(), config(), port, http=guarded_protocol(1024, 5.0))

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            assert client.get("/").text == "ok"
            big = client.get("/", headers={"x-pad": "p" * 2048})
            assert big.status_code == 431
        s.signal(signal.SIGTERM)

    served.run(scenario)


def test_websockets_are_served_and_outlive_the_body_deadline(
    port: int,
) -> None:
    """1. A server with the guarded protocol's body deadline at 0.3 s. 2. A websocket on
    a fresh connection answers. 3. One connection: a GET is answered and kept alive, then
    the connection is upgraded to a websocket. 4. The websocket still answers 1 s later:
    the body deadline of the request before does not carry over to the upgraded
    connection."""
    from websockets.sync.client import connect

    from graceful import guarded_protocol

    served = Served(App(), config(), port, http=guarded_protocol(1024, 5.0, 0.3))

    def scenario(s: Served) -> None:
        with connect(f"ws://127.0.0.1:{s.port}/ws", open_timeout=5) as websocket:
            websocket.send("fresh")
            assert websocket.recv(timeout=5) == "fresh"
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            with connect(f"ws://127.0.0.1:{s.port}/ws", sock=sock) as websocket:
                websocket.send("one")
                assert websocket.recv(timeout=5) == "one"
                time.sleep(1.0)  # past the body deadline: there is no state to wait on
                websocket.send("two")
                assert websocket.recv(timeout=5) == "two"
        s.signal(signal.SIGTERM)

    served.run(scenario)


def test_drain_off_aborts_an_idle_kept_alive_connection_and_says_so(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. Drain off. 2. A client keeps its connection open after an answer; no request
    runs. 3. SIGTERM: that connection is aborted, and the log says so (1 connection, 0
    requests)."""
    served = Served(App(), config(drain=False), port)

    def scenario(s: Served) -> None:
        with httpx.Client(base_url=s.url, timeout=5) as client:
            assert client.get("/").text == "ok"
            s.signal(signal.SIGTERM)
            wait_until(lambda: s.lifecycle.phase is Phase.STOPPED, 3, what="stopped")

    served.run(scenario)
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert warnings == ["Aborted 1 connection(s) and 0 request(s): drain is off"], warnings


def test_a_handler_cut_at_the_end_of_the_budget_gets_no_extra_second(
    port: int, logs: pytest.LogCaptureFixture
) -> None:
    """1. A handler that goes on 3 s after its cancellation; grace period 1.6 s with a
    1 s margin (0.6 s of budget); drain timeout 5 s. 2. SIGTERM. 3. The drain ends with
    the budget and aborts the handler; with no budget left it gets one poll (not the
    usual second) before the app's shutdown: the shutdown ends about 0.7 s after
    SIGTERM."""
    served = Served(
        App(stubborn=3.0), config(grace_period=1.6, safety_margin=1.0, drain_timeout=5.0), port
    )

    def scenario(s: Served) -> None:
        slow = s.in_background("GET", "/work?seconds=30")
        wait_until(lambda: s.lifecycle.in_flight == 1, 5, what="request running")
        s.signal(signal.SIGTERM)
        assert isinstance(slow.result(), httpx.HTTPError)

    took = served.run(scenario)
    assert took < 1.4, took
    assert (
        "1 request handler(s) still running 0.1 s after being cancelled; the app's shutdown "
        "starts anyway"
    ) in messages(logs)
