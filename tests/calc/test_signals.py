"""Signals at odd moments and clients that vanish, against real `calc serve` processes.

Every id answered 200 must reach the sink; a forced exit must log how many operations
it leaves; no handler may run or be cancelled after "Shutdown finished" unseen.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from calc.app import create_app
from calc.config import CalcConfig
from calc.service import operation_log_of, report_unwritten, shutdown_config
from calc.sinks import FileSink
from graceful import Lifecycle
from lab.influx import free_port
from tests.calc_support import CalcProcess, StartCalc
from tests.support import wait_until

ACCEPTED = 25
BODY = b'{"numbers": [1, 2, 3, 4]}'
_ID = re.compile(r'id="([^"]+)"')


def send_sums(calc: CalcProcess, prefix: str, n: int = ACCEPTED) -> list[str]:
    """n concurrent /sum requests, each with its own id; all must answer 200."""
    ids = [f"{prefix}-{i}" for i in range(n)]

    def one(rid: str) -> int:
        response = httpx.post(
            f"{calc.url}/sum", content=BODY, headers={"x-request-id": rid}, timeout=10
        )
        return response.status_code

    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(one, ids)) == [200] * n
    return ids


def sink_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return _ID.findall(path.read_text())


def open_sum(calc: CalcProcess, rid: str, body_bytes: int | None = None) -> socket.socket:
    """A raw POST /sum that sends its head and the first `body_bytes` of its body (all of
    it when None), leaving the socket open."""
    sock = socket.create_connection(("127.0.0.1", calc.port), timeout=10)
    head = (
        f"POST /sum HTTP/1.1\r\nhost: calc\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\nx-request-id: {rid}\r\n\r\n"
    ).encode()
    sock.sendall(head + BODY[: len(BODY) if body_bytes is None else body_bytes])
    return sock


def read_status(sock: socket.socket) -> int:
    """The status of the response on `sock` (0 when the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])


def after_finish(log: str) -> list[str]:
    """Log lines after "Shutdown finished", but uvicorn's own last word."""
    _, _, tail = log.partition("Shutdown finished")
    lines = tail.splitlines()[1:]
    return [line for line in lines if "Finished server process" not in line]


def assert_clean_log(log: str) -> None:
    assert "Traceback" not in log, log
    assert "CancelledError" not in log, log
    assert "ended after the app's shutdown began" not in log, log
    assert after_finish(log) == [], log


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does) but never answers: a stalled
    InfluxDB."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


class SlowInflux:
    """A hand-written InfluxDB 1.x stand-in on loopback: each write is held `delay`
    seconds, then stored and answered 204."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.lines: list[str] = []
        self.writes_started = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                fake.writes_started += 1
                time.sleep(fake.delay)
                fake.lines.extend(body.splitlines())
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def ids(self) -> list[str]:
        return [m for line in self.lines for m in _ID.findall(line)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def slow_influx() -> Iterator[SlowInflux]:
    fake = SlowInflux(delay=1.5)
    try:
        yield fake
    finally:
        fake.close()


PAIRS = {
    "TERM+TERM": (signal.SIGTERM, signal.SIGTERM),
    "INT+INT": (signal.SIGINT, signal.SIGINT),
    "TERM+INT": (signal.SIGTERM, signal.SIGINT),
}


@pytest.mark.parametrize("profile", ["v9", "v10"])
@pytest.mark.parametrize("pair", list(PAIRS))
def test_a_second_signal_keeps_every_accepted_operation(
    start_calc: StartCalc, tmp_path: Path, profile: str, pair: str
) -> None:
    """1. calc (v9 or v10, file sink) answers 25 sums 200; their points wait in the
    buffer. 2. A client sends a /sum head and half its body, and stalls: the drain waits
    for it. 3. First signal; once the drain waits, the second. 4. A second SIGTERM is
    logged and ignored: the stalled client sends the rest and gets 200. A second SIGINT
    ends the drain: the stalled request is aborted (counted, logged). 5. Either way the
    app's flush runs: every id answered 200 is in the sink, the exit code is 0, the log
    has no traceback and nothing after "Shutdown finished"."""
    first, second = PAIRS[pair]
    calc = start_calc(profile, CALC_SLOW_MATH="0.05", CALC_QUIET_PERIOD="0")
    answered = send_sums(calc, f"{profile}-{pair.replace('+', '-')}")
    stalled = open_sum(calc, "stalled", body_bytes=5)
    try:
        wait_until(lambda: calc.metric("calc_requests_in_flight") >= 2, 5, what="stalled")
        os.kill(calc.process.pid, first)
        wait_until(lambda: "Shutdown phase closing took" in calc.log, 10, what="drain")
        os.kill(calc.process.pid, second)
        if second == signal.SIGTERM:
            wait_until(lambda: "SIGTERM again" in calc.log or calc.process.poll() is not None, 5)
            assert calc.process.poll() is None, calc.log
            assert "SIGTERM again during shutdown: ignored, the shutdown goes on" in calc.log
            assert "Aborted" not in calc.log
            stalled.sendall(BODY[5:])
            assert read_status(stalled) == 200
            answered.append("stalled")
        else:
            assert read_status(stalled) == 0
        assert calc.wait_exit(15) == 0
    finally:
        stalled.close()
    log = calc.log
    assert sorted(sink_ids(tmp_path / "operations.lp")) == sorted(answered), log
    assert "Draining 1 request handler(s) on 1 open connection(s)" in log
    if second == signal.SIGINT:
        assert "SIGINT again: no more waiting for requests" in log
        assert "Aborted 1 connection(s) and 1 request(s): second SIGINT" in log
    assert f"{len(answered)} written" in log
    assert_clean_log(log)


@pytest.mark.parametrize("profile", ["v9", "v10"])
@pytest.mark.parametrize("pair", list(PAIRS))
def test_a_second_signal_during_the_flush_does_not_cut_it(
    start_calc: StartCalc, slow_influx: SlowInflux, profile: str, pair: str
) -> None:
    """1. calc (v9 or v10) writes to an InfluxDB that holds each write 1.5 s. 2. 25 sums
    answered 200. 3. First signal; once the flush is under way, the second. 4. The second
    is logged; the flush finishes: all 25 ids are in the sink, exit code 0, no
    traceback, nothing after "Shutdown finished"."""
    first, second = PAIRS[pair]
    calc = start_calc(
        profile, CALC_SLOW_MATH="0.05", CALC_QUIET_PERIOD="0", INFLUXDB_BASE_URL=slow_influx.url
    )
    answered = send_sums(calc, f"flush-{profile}-{pair.replace('+', '-')}")
    os.kill(calc.process.pid, first)
    wait_until(lambda: slow_influx.writes_started == 1, 5, what="the flush to reach the sink")
    os.kill(calc.process.pid, second)
    assert calc.wait_exit(10) == 0
    log = calc.log
    assert sorted(slow_influx.ids()) == sorted(answered), log
    logged = "SIGINT again: no more waiting" if second == signal.SIGINT else "SIGTERM again"
    assert logged in log
    assert_clean_log(log)


def test_a_second_sigint_ends_the_delay_at_once(start_calc: StartCalc) -> None:
    """1. v10 with a 10 s pre-close delay. 2. SIGTERM, then SIGINT once the delay has
    begun. 3. The process stops waiting and exits with code 0 within a second."""
    calc = start_calc("v10", CALC_PRE_CLOSE_DELAY="10", CALC_QUIET_PERIOD="0")
    calc.terminate()
    wait_until(lambda: "Shutdown started" in calc.log, 5, what="shutdown to start")
    second = time.monotonic()
    os.kill(calc.process.pid, signal.SIGINT)
    assert calc.wait_exit(5) == 0
    assert time.monotonic() - second < 1.5
    assert "Second SIGINT: stopped waiting for pre-close delay" in calc.log
    assert_clean_log(calc.log)


def test_repeated_sigterm_does_not_shorten_the_delay(start_calc: StartCalc) -> None:
    """1. v10 with a 2 s pre-close delay. 2. SIGTERM, then SIGTERM twice more during the
    delay. 3. Each is logged as ignored; the delay runs its full 2 s; exit code 0."""
    calc = start_calc("v10", CALC_PRE_CLOSE_DELAY="2", CALC_QUIET_PERIOD="0")
    calc.terminate()
    wait_until(lambda: "Shutdown started" in calc.log, 5, what="shutdown to start")
    calc.terminate()
    wait_until(lambda: calc.log.count("ignored, the shutdown goes on") == 1, 5)
    calc.terminate()
    wait_until(lambda: calc.log.count("ignored, the shutdown goes on") == 2, 5)
    assert calc.wait_exit(10) == 0
    match = re.search(r"Shutdown phase delay took ([0-9.]+) s", calc.log)
    assert match is not None
    assert float(match.group(1)) >= 1.95
    assert_clean_log(calc.log)


@pytest.mark.parametrize("profile", ["v9", "v10"])
@pytest.mark.parametrize("third_signal", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_third_signal_exits_at_once_and_logs_what_it_leaves(
    start_calc: StartCalc, tmp_path: Path, stalled_port: int, profile: str, third_signal: int
) -> None:
    """1. calc writes to an InfluxDB that accepts connections and never answers. 2. 25
    sums answered 200. 3. SIGTERM: the flush starts and hangs. 4. SIGINT: logged; the
    flush goes on. 5. A third signal (SIGINT or SIGTERM): the process exits at once
    (code 128 + the signal) and logs that it leaves 25 operations unwritten, which is
    exactly what the sink lacks. 6. v10 only: the same pod's next start writes the 25
    from the spool."""
    port = free_port()
    calc = start_calc(
        profile,
        port=port,
        CALC_SLOW_MATH="0.05",
        CALC_QUIET_PERIOD="0",
        INFLUXDB_BASE_URL=f"http://127.0.0.1:{stalled_port}",
    )
    answered = send_sums(calc, f"third-{profile}-{third_signal}")
    calc.terminate()
    wait_until(lambda: f"Logging {ACCEPTED} operations" in calc.log, 5, what="flush start")
    os.kill(calc.process.pid, signal.SIGINT)
    wait_until(lambda: "SIGINT again: no more waiting" in calc.log, 5, what="second logged")
    assert calc.process.poll() is None  # the flush is still allowed to run
    third = time.monotonic()
    os.kill(calc.process.pid, third_signal)
    assert calc.wait_exit(5) == 128 + third_signal
    assert time.monotonic() - third < 1.0
    log = calc.log
    name = signal.Signals(third_signal).name
    match = re.search(
        rf"Exiting at once \(third signal, {name}\) in phase app-shutdown: "
        r"left unwritten: (\d+) operations",
        log,
    )
    assert match is not None, log
    assert int(match.group(1)) == ACCEPTED  # none reached the stalled sink
    assert "Traceback" not in log and "CancelledError" not in log, log
    if profile == "v10":
        assert "left in the spool, lost unless this pod's next container starts" in log
        again = start_calc(profile, port=port, CALC_QUIET_PERIOD="0")
        again.terminate()
        assert again.wait_exit(10) == 0
        assert sorted(sink_ids(tmp_path / "operations.lp")) == sorted(answered)


@pytest.mark.parametrize("profile", ["v9", "v10"])
def test_a_handler_whose_client_vanished_still_records_its_operation(
    start_calc: StartCalc, tmp_path: Path, profile: str
) -> None:
    """1. calc with a 2 s sum. 2. A client sends POST /sum and, once the handler is
    computing, disconnects (a load balancer's timeout). 3. SIGTERM at once. 4. The drain
    waits for the handler although no connection is left; its point is flushed; exit 0,
    and nothing is logged after "Shutdown finished" but the exit."""
    calc = start_calc(profile, CALC_SLOW_MATH="2", CALC_QUIET_PERIOD="0")
    sock = open_sum(calc, "vanished")
    wait_until(lambda: "request_id=vanished calc: Calculating sum" in calc.log, 5)
    sock.close()
    calc.terminate()
    assert calc.wait_exit(10) == 0
    log = calc.log
    assert sink_ids(tmp_path / "operations.lp") == ["vanished"], log
    assert "Draining 1 request handler(s) on 0 open connection(s)" in log
    assert "1 written" in log
    assert_clean_log(log)


@pytest.mark.parametrize("profile", ["v9", "v10"])
def test_a_client_that_vanishes_during_the_drain_still_gets_its_operation_recorded(
    start_calc: StartCalc, tmp_path: Path, profile: str
) -> None:
    """1. calc with a 2 s sum; a client's POST /sum is computing. 2. SIGTERM: the drain
    waits for it. 3. The client disconnects mid-drain. 4. The drain goes on waiting for
    the handler; its point is flushed; exit 0, nothing after "Shutdown finished"."""
    calc = start_calc(profile, CALC_SLOW_MATH="2", CALC_QUIET_PERIOD="0")
    sock = open_sum(calc, "vanished-late")
    try:
        wait_until(lambda: "request_id=vanished-late calc: Calculating sum" in calc.log, 5)
        calc.terminate()
        wait_until(lambda: "Shutdown phase closing took" in calc.log, 5, what="the drain")
    finally:
        sock.close()
    assert calc.wait_exit(10) == 0
    log = calc.log
    assert sink_ids(tmp_path / "operations.lp") == ["vanished-late"], log
    assert "Draining 1 request handler(s) on 1 open connection(s)" in log
    assert "1 written" in log
    assert_clean_log(log)


def test_a_handler_past_the_drain_timeout_is_cancelled_counted_and_logged(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v10 with a 0.5 s drain timeout and a 5 s sum. 2. A client sends POST /sum and
    vanishes once the handler runs. 3. SIGTERM. 4. The drain waits 0.5 s for the handler,
    then cancels it and logs so before the app's shutdown; no traceback, nothing after
    "Shutdown finished", exit 0 well before the sum would have ended."""
    calc = start_calc("v10", CALC_SLOW_MATH="5", CALC_QUIET_PERIOD="0", CALC_DRAIN_TIMEOUT="0.5")
    sock = open_sum(calc, "cut")
    wait_until(lambda: "request_id=cut calc: Calculating sum" in calc.log, 5)
    sock.close()
    sigterm = time.monotonic()
    calc.terminate()
    assert calc.wait_exit(10) == 0
    assert time.monotonic() - sigterm < 3.0
    log = calc.log
    aborted = log.index("Aborted 0 connection(s) and 1 request(s): drain time is up")
    assert aborted < log.index("App stopping")
    assert sink_ids(tmp_path / "operations.lp") == []
    assert_clean_log(log)


def test_drain_off_cuts_handlers_before_the_app_shutdown_without_a_traceback(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v4 (drain off) with a 5 s sum; one request computing. 2. SIGTERM. 3. The
    request is cut (no response), counted and logged before the app's shutdown; the log
    has no traceback and nothing after "Shutdown finished"; exit code 0."""
    calc = start_calc("v4", CALC_SLOW_MATH="5")
    sock = open_sum(calc, "cut-v4")
    try:
        wait_until(lambda: "request_id=cut-v4 calc: Calculating sum" in calc.log, 5)
        calc.terminate()
        assert read_status(sock) == 0
        assert calc.wait_exit(10) == 0
    finally:
        sock.close()
    log = calc.log
    aborted = log.index("Aborted 1 connection(s) and 1 request(s): drain is off")
    assert aborted < log.index("Shutdown phase app-shutdown took")
    assert_clean_log(log)


def test_a_third_signal_counts_the_operation_tasks_it_leaves(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v7 (a task per sum writes its point after a delay, tasks awaited at shutdown),
    with a 30 s task delay. 2. 25 sums answered 200. 3. SIGTERM: the shutdown waits for
    the 25 tasks. 4. SIGINT twice: exit at once (code 130), logging 25 operations left
    unwritten, which is what the sink lacks."""
    calc = start_calc("v7", CALC_SLOW_MATH="0.05", CALC_TASK_DELAY="30", CALC_TASK_TIMEOUT="60")
    send_sums(calc, "tasks-v7")
    calc.terminate()
    wait_until(lambda: f"Waiting for {ACCEPTED} operation-log task(s)" in calc.log, 5)
    os.kill(calc.process.pid, signal.SIGINT)
    wait_until(lambda: "SIGINT again: no more waiting" in calc.log, 5, what="second logged")
    os.kill(calc.process.pid, signal.SIGINT)
    assert calc.wait_exit(5) == 128 + signal.SIGINT
    log = calc.log
    assert f"left unwritten: {ACCEPTED} operations;" in log, log
    assert sink_ids(tmp_path / "operations.lp") == []
    assert "Traceback" not in log


def test_the_unwritten_count_hook_finds_the_operation_log_or_refuses(tmp_path: Path) -> None:
    """1. An app from create_app (batch-graceful, spool on). 2. The hook finds its
    operation log through the middleware and registers a count on the Lifecycle that
    names the spool. 3. An object that holds no operation log is refused with a clear
    error."""
    config = CalcConfig(oplog="batch-graceful", spool=False, oplog_file=str(tmp_path / "o"))
    lifecycle = Lifecycle(shutdown_config(config))
    app = create_app(config, lifecycle, FileSink(tmp_path / "o"))
    oplog = operation_log_of(app)
    report_unwritten(lifecycle, oplog, spool=True)
    oplog.record("one", 1, 1.0)
    assert lifecycle.unwritten() == {
        "operations (left in the spool, lost unless this pod's next container starts)": 1
    }
    with pytest.raises(TypeError, match="no operation log"):
        operation_log_of(object())
