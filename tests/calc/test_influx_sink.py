"""InfluxSink in the pytest process: what each InfluxDB answer raises (a scripted fake
InfluxDB on loopback), its time limits and connection pool, and count / clear / write
against a real InfluxDB, with and without auth."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calc.config import CalcConfig, Secret, resolve
from calc.oplog import influx_auth, make_sink
from calc.points import NanoClock, PointFormatter
from calc.sinks import FileSink, InfluxSink, SinkError, rejected_count
from graceful import BatchTooLargeError, HoldWriteError, PermanentWriteError
from lab.influx import InfluxServer
from tests.fake_influx import FakeInflux

PASSWORD = "pa55-word"


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    with FakeInflux() as fake:
        yield fake


@pytest.fixture(scope="module")
def secured_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One real InfluxDB with auth on for this module, database calc."""
    with InfluxServer(data_dir=tmp_path_factory.mktemp("influx"), admin=("admin", PASSWORD)) as db:
        db.create_database("calc")
        yield db


def lines(n: int, prefix: str = "r") -> list[str]:
    points = PointFormatter("pod-a", 4000)
    return [points.sum_point(f"{prefix}{i}", 2, 3.0) for i in range(n)]


def write(url: str, batch: list[str], **kw: object) -> BaseException | None:
    """One InfluxSink.write on a fresh sink; the exception it raised, if any. A write
    still hanging after 5 s (no time limit of its own) fails the test."""

    async def scenario() -> BaseException | None:
        sink = InfluxSink(url, "calc", **kw)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(sink.write(batch), 5)
        except Exception as exc:
            return exc
        finally:
            await sink.aclose()
        return None

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "sent", "rejected"),
    [
        ('{"error":"partial write: field type conflict dropped=3"}', 10, 3),
        ('{"error":"partial write: dropped=1 and later dropped=2"}', 10, 3),
        ('{"error":"partial write: x dropped=99"}', 5, 5),
        ('{"error":"partial write: dropped=0"}', 5, 0),
        (
            "{\"error\":\"partial write: unable to parse 'a': bad\\nunable to parse 'b': bad"
            ' dropped=0"}',
            10,
            2,
        ),
        ('{"error":"unable to parse \'a\': bad"}', 4, 1),
        ('{"error":"bad timestamp"}', 4, 4),
        ('{"other":1}', 4, 4),
        ('{"message":"partial write: dropped=2"}', 4, 2),
        ('{"error":"unable to parse \'a\': bad dropped=1"}', 5, 2),
        ("[1, 2]", 4, 4),
        ("partial write: dropped=2", 4, 2),
        ("not json at all", 4, 4),
    ],
)
def test_rejected_count_reads_influxdbs_400_answers(body: str, sent: int, rejected: int) -> None:
    """A 400's body says how many lines were not stored: `dropped=N` summed, one per
    unparseable line, the whole batch when it is no partial write; never more than sent."""
    assert rejected_count(body, sent) == rejected


@pytest.mark.parametrize("status", [200, 204, 299])
def test_a_2xx_answer_is_a_write(influx: FakeInflux, status: int) -> None:
    """1. The fake answers `status`. 2. write returns; the fake stored the batch, one
    line per point, as sent."""
    influx.status(status)
    batch = lines(3)
    assert write(influx.url, batch) is None
    assert influx.stored == batch


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (400, '{"error":"bad timestamp"}', PermanentWriteError, "InfluxDB 400: "),
        (413, '{"error":"too large"}', BatchTooLargeError, "InfluxDB 413: "),
        (408, '{"error":"timeout"}', RuntimeError, "InfluxDB answered 408: "),
        (429, '{"error":"slow down"}', RuntimeError, "InfluxDB answered 429: "),
        (500, '{"error":"engine"}', RuntimeError, "InfluxDB answered 500: "),
        (503, '{"error":"busy"}', RuntimeError, "InfluxDB answered 503: "),
        (300, '{"error":"moved"}', HoldWriteError, "InfluxDB answered 300: "),
        (401, '{"error":"authorization failed"}', HoldWriteError, "InfluxDB answered 401: "),
        (404, '{"error":"database not found"}', HoldWriteError, "InfluxDB answered 404: "),
        (499, '{"error":"odd"}', HoldWriteError, "InfluxDB answered 499: "),
    ],
)
def test_each_answer_raises_what_the_writer_acts_on(
    influx: FakeInflux, status: int, body: str, kind: type[BaseException], message: str
) -> None:
    """1. The fake answers `status` with a JSON error. 2. write raises the error that
    tells the batching writer what to do, its message the status and InfluxDB's text."""
    influx.status(status, body)
    raised = write(influx.url, lines(2))
    assert type(raised) is kind
    assert str(raised) == message + body


def test_a_400_says_how_many_lines_were_rejected(influx: FakeInflux) -> None:
    """1. The fake stores 8 of 10 and answers a partial write, dropped=2. 2. The error
    carries rejected=2; its text is InfluxDB's, trimmed and cut at 500 characters."""
    body = '  {"error":"partial write: conflict dropped=2' + "x" * 600 + '"}  '
    influx.status(400, body, store=8)
    raised = write(influx.url, lines(10))
    assert isinstance(raised, PermanentWriteError)
    assert raised.rejected == 2
    assert str(raised) == "InfluxDB 400: " + body.strip()[:500]


def test_a_stalled_write_times_out_at_the_sinks_timeout(influx: FakeInflux) -> None:
    """1. The fake reads the write and never answers. 2. A sink with a 0.3 s timeout
    raises a timeout after about 0.3 s."""
    influx.stall()
    started = time.monotonic()
    raised = write(influx.url, lines(1), timeout=0.3)
    took = time.monotonic() - started
    assert isinstance(raised, httpx.ReadTimeout)
    assert 0.25 <= took < 2.0, took


def test_the_default_time_limits_are_1_s_to_connect_5_s_to_write_10_s_to_query() -> None:
    """The limits docs/calc.md "Operation log" names, as the sink's client and queries use
    them (the stall tests here show each limit is applied)."""
    sink = InfluxSink("http://127.0.0.1:9", "calc")
    try:
        assert sink._client.timeout == httpx.Timeout(5.0, connect=1.0)
        assert sink.query_timeout == 10.0
    finally:
        asyncio.run(sink.aclose())


def test_a_base_url_keeps_its_path_and_loses_only_trailing_slashes() -> None:
    """InfluxDB behind a path prefix: /write and /query are added to the prefix, which
    is kept whole, whatever it ends with."""
    sink = InfluxSink("http://proxy:8080/influX//", "calc")
    try:
        assert sink.base_url == "http://proxy:8080/influX"
    finally:
        asyncio.run(sink.aclose())


def test_a_stalled_count_or_clear_gives_up_at_the_query_timeout() -> None:
    """1. A loopback listener that never accepts: the kernel sets connections up, nobody
    answers. 2. count() and clear() with a 0.3 s query timeout each fail after about
    0.3 s, with an error that names InfluxDB's address."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        sink = InfluxSink(url, "calc", query_timeout=0.3)
        for call in (sink.count, sink.clear):
            started = time.monotonic()
            with pytest.raises(SinkError, match=f"cannot reach InfluxDB at {url}: "):
                call()
            took = time.monotonic() - started
            assert 0.25 <= took < 2.0, took
        asyncio.run(sink.aclose())


def test_a_connection_that_is_never_accepted_times_out_after_one_second() -> None:
    """1. A loopback listener whose accept queue is full, so a new connection is never
    set up (as a host that drops SYNs). 2. A sink with the default 5 s timeout gives up
    connecting after 1 s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the queue; later SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            started = time.monotonic()
            raised = write(f"http://127.0.0.1:{port}", lines(1))
            took = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert isinstance(raised, httpx.ConnectTimeout), raised
    assert 0.9 <= took < 1.8, took


def test_at_most_20_writes_run_at_once() -> None:
    """1. A loopback HTTP server that answers each write after 0.4 s. 2. 20 writes at
    once on one sink take one round; 21 take two: the pool holds 20 connections."""

    async def answer_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await asyncio.sleep(0.4)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def rounds(n: int) -> float:
        server = await asyncio.start_server(answer_slowly, "127.0.0.1", 0, backlog=100)
        port = server.sockets[0].getsockname()[1]
        sink = InfluxSink(f"http://127.0.0.1:{port}", "calc")
        try:
            started = time.monotonic()
            await asyncio.gather(*(sink.write(lines(1, f"w{i}-")) for i in range(n)))
            return time.monotonic() - started
        finally:
            await sink.aclose()
            server.close()
            await server.wait_closed()

    assert asyncio.run(rounds(20)) < 0.75
    assert asyncio.run(rounds(21)) >= 0.75


def test_a_closed_sink_writes_nothing(influx: FakeInflux) -> None:
    """After aclose, a write fails at once and the fake sees nothing."""

    async def scenario() -> BaseException | None:
        sink = InfluxSink(influx.url, "calc")
        await sink.aclose()
        try:
            await sink.write(lines(1))
        except RuntimeError as exc:
            return exc
        return None

    assert isinstance(asyncio.run(scenario()), RuntimeError)
    assert influx.writes == 0


def test_write_count_and_clear_against_a_real_influxdb_with_auth(
    secured_influx: InfluxServer,
) -> None:
    """1. A real InfluxDB with auth on; a sink with the right credentials and a base URL
    ending in '/'. 2. A batch of 3 points with nanosecond timestamps is stored with its
    exact times; count says 3. 3. clear empties the measurement; count says 0."""
    clock = NanoClock(source=lambda: 1_700_000_000_123_456_789)
    points = PointFormatter("pod-a", 4000, clock)
    batch = [points.sum_point(f"a{i}", 2, 3.0) for i in range(3)]
    auth = ("admin", Secret(PASSWORD))
    assert write(secured_influx.url + "/", batch, auth=auth) is None
    series = secured_influx.query('SELECT "id" FROM "operation"', db="calc")
    rows = series[0]["values"]
    assert isinstance(rows, list)
    assert [row[1] for row in rows] == ["a0", "a1", "a2"]
    assert rows[0][0] == "2023-11-14T22:13:20.123456789Z"
    sink = InfluxSink(secured_influx.url + "/", "calc", auth=auth)
    assert sink.count() == 3
    sink.clear()
    assert sink.count() == 0


def test_wrong_credentials_or_database_are_named(secured_influx: InfluxServer) -> None:
    """1. A write with a wrong password: HoldWriteError with InfluxDB's 401. 2. count
    with no credentials: SinkError with the 401. 3. count on a database that does not
    exist: SinkError with InfluxDB's error. 4. count on a port nothing listens on:
    SinkError naming the URL."""
    raised = write(secured_influx.url, lines(1), auth=("admin", Secret("wrong")))
    assert isinstance(raised, HoldWriteError)
    assert str(raised).startswith("InfluxDB answered 401: ")
    with pytest.raises(SinkError) as anonymous:
        InfluxSink(secured_influx.url, "calc").count()
    assert str(anonymous.value).startswith("InfluxDB answered 401: {")
    with pytest.raises(SinkError) as missing:
        InfluxSink(secured_influx.url, "nope", auth=("admin", Secret(PASSWORD))).count()
    assert str(missing.value) == "InfluxDB: database not found: nope"
    with pytest.raises(SinkError) as unreachable:
        InfluxSink("http://127.0.0.1:9", "calc").count()
    assert str(unreachable.value).startswith("cannot reach InfluxDB at http://127.0.0.1:9: ")


def test_writing_to_a_missing_database_is_a_configuration_error(
    secured_influx: InfluxServer,
) -> None:
    """1. A write to a database that does not exist (real InfluxDB). 2. HoldWriteError:
    the points are held until the configuration is fixed."""

    async def scenario() -> BaseException | None:
        sink = InfluxSink(secured_influx.url, "nope", auth=("admin", Secret(PASSWORD)))
        try:
            await sink.write(lines(1))
        except Exception as exc:
            return exc
        finally:
            await sink.aclose()
        return None

    raised = asyncio.run(scenario())
    assert isinstance(raised, HoldWriteError)
    assert 'database not found: \\"nope\\"' in str(raised)


def test_the_service_sink_is_influxdb_with_its_credentials_when_a_url_is_set(
    secured_influx: InfluxServer,
) -> None:
    """1. A config naming the secured InfluxDB, its database and credentials. 2. The
    service's sink writes there with them: count and clear work. 3. Without a URL the
    sink is the line-protocol file; credentials count only when both are given."""
    config = resolve(
        "v9",
        {
            "INFLUXDB_BASE_URL": secured_influx.url,
            "INFLUXDB_DB": "calc",
            "INFLUXDB_USERNAME": "admin",
            "INFLUXDB_PASSWORD": PASSWORD,
        },
        {},
    )
    assert influx_auth(config) == ("admin", Secret(PASSWORD))
    sink = make_sink(config)
    assert isinstance(sink, InfluxSink)

    async def write_and_close() -> None:
        try:
            await sink.write(lines(2, "svc"))
        finally:
            await sink.aclose()

    asyncio.run(write_and_close())
    assert sink.count() == 2
    sink.clear()
    assert sink.count() == 0
    local = make_sink(CalcConfig(pod="p", oplog_file="/tmp/x.lp"))
    assert isinstance(local, FileSink) and local.path == Path("/tmp/x.lp")
    assert influx_auth(CalcConfig(pod="p", influxdb_username="u")) is None
    assert influx_auth(CalcConfig(pod="p", influxdb_password=Secret("s"))) is None
