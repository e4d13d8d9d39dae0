"""The guarded protocol's deadlines and answers, byte for byte: a head that stalls, the
next request's own deadline on a kept-alive connection, the body deadline's default,
and a body that stalls after the app began its answer. Same harness as
test_protocol.py: uvicorn's real parser and request cycle, a transport written by hand."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from graceful.protocol import guarded_protocol
from tests.graceful import test_protocol
from tests.graceful.test_protocol import (
    LIMIT,
    OK,
    TOO_LARGE,
    App,
    Connection,
    Transport,
    head_of,
    run,
    wait_for,
)


def reply(status: str, text: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(text)}\r\nconnection: close\r\n\r\n{text}"
    ).encode()


def test_a_head_that_stalls_gets_408_with_its_reason() -> None:
    """1. Head timeout 0.2 s. 2. Half a head, then nothing. 3. After about 0.2 s exactly
    this answer: 408, plain text, `connection: close`, "request head not received in
    time"; the connection closed, the app never called."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 0.2))
        started = time.monotonic()
        await connection.send(head_of(200)[:50])
        await wait_for(lambda: connection.transport.closed, 3, "the connection to close")
        assert 0.18 <= time.monotonic() - started < 1.0
        assert bytes(connection.transport.written) == reply(
            "408 Request Timeout", "request head not received in time"
        )
        assert app.requests == []

    run(scenario())


def test_a_head_too_large_gets_exactly_this_answer() -> None:
    """1. A limit of 100 bytes. 2. A 101-byte head. 3. Exactly: 431, plain text,
    `connection: close`, "request head too large"."""

    async def scenario() -> None:
        connection = Connection(App(), guarded_protocol(100, 10))
        await connection.send(head_of(101))
        assert bytes(connection.transport.written) == reply(
            "431 Request Header Fields Too Large", "request head too large"
        )
        assert connection.transport.closed

    run(scenario())


def test_the_next_request_on_a_kept_alive_connection_gets_its_own_head_deadline() -> None:
    """1. Head timeout 0.3 s. 2. A request answered at once; 0.2 s later the first bytes
    of a second head, then nothing. 3. The second head gets 408 about 0.3 s after its
    first byte (its own deadline, not the first request's, and not none)."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 0.3))
        await connection.send(head_of(100, "/one"))
        await connection.settle()
        assert connection.statuses() == [OK]
        await asyncio.sleep(0.2)  # the scenario: the client's next request comes later
        started = time.monotonic()
        await connection.send(head_of(100, "/two")[:30])
        await wait_for(lambda: connection.transport.closed, 3, "the connection to close")
        assert 0.25 <= time.monotonic() - started < 1.0
        assert connection.statuses() == [OK, b"HTTP/1.1 408 Request Timeout"]
        assert app.requests == [("/one", 0)]

    run(scenario())


def test_the_body_deadline_defaults_to_the_head_deadline() -> None:
    """1. guarded_protocol(head_timeout=0.2) with no body timeout. 2. A head with
    Content-Length 100 and 10 bytes of body, then nothing. 3. 408 about 0.2 s later."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 0.2))
        started = time.monotonic()
        await connection.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nbbbb")
        await wait_for(lambda: connection.transport.closed, 3, "the connection to close")
        assert 0.18 <= time.monotonic() - started < 1.0
        await connection.settle()
        assert bytes(connection.transport.written) == reply(
            "408 Request Timeout", "request body not received in time"
        )

    run(scenario())


class Streaming:
    """Starts its answer at once, then reads the body, then ends the answer."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            self.received.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"late"})


def test_a_body_that_stalls_after_the_answer_began_cuts_the_connection() -> None:
    """1. An app that starts its answer before reading the body; body timeout 0.2 s.
    2. Part of the body, then nothing. 3. Too late for a 408: the connection is cut, the
    app's receive() says the client is gone, and nothing more is written."""

    async def scenario() -> None:
        app = Streaming()
        connection = Connection(app, guarded_protocol(LIMIT, 10, body_timeout=0.2))  # type: ignore[arg-type]
        await connection.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nbb")
        await wait_for(lambda: connection.transport.closed, 3, "the connection to close")
        await connection.settle()
        written = bytes(connection.transport.written)
        assert written.startswith(b"HTTP/1.1 200 OK")
        assert b"408" not in written and b"late" not in written
        assert app.received[-1] == "http.disconnect"

    run(scenario())


def test_a_connection_lost_cancels_its_deadlines() -> None:
    """1. Head timeout 0.2 s; half a head; the client goes away. 2. No 408 is written
    to the gone connection when the deadline passes."""

    async def scenario() -> None:
        connection = Connection(App(), guarded_protocol(LIMIT, 0.2))
        await connection.send(head_of(100)[:20])
        connection.protocol.connection_lost(None)
        await asyncio.sleep(0.3)  # the scenario: the deadline passes
        assert bytes(connection.transport.written) == b""

    run(scenario())


class RecordingTransport(Transport):
    """Records writes after close instead of failing on them (a real transport that is
    closing still sends what is written before the connection is lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.after_close = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            self.after_close += data
        else:
            super().write(data)


def test_a_connection_the_server_is_closing_gets_no_408(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. Head timeout 0.2 s; a client connects and sends nothing. 2. The server shuts
    down: the idle connection is closed. 3. When the head deadline passes before the
    connection is gone, nothing (no 408) is written to it."""
    monkeypatch.setattr(test_protocol, "Transport", RecordingTransport)

    async def scenario() -> None:
        connection = Connection(App(), guarded_protocol(LIMIT, 0.2))
        transport = connection.transport
        assert isinstance(transport, RecordingTransport)
        connection.protocol.shutdown()
        assert transport.closed
        await asyncio.sleep(0.3)  # the scenario: the deadline passes
        assert bytes(transport.written) == b"" and bytes(transport.after_close) == b""

    run(scenario())


def test_a_pipelined_head_at_the_limit_is_counted_exactly() -> None:
    """Limit 1,000 bytes. 1. One read holds a complete GET, a second complete GET, an
    empty line (allowed between requests) and the first 600 bytes of a third head of
    exactly 1,000 bytes; the next read holds the rest of it. 2. All three are served:
    the third head is counted from its own first byte (not from the first empty line
    of the read, nor with the blank line before it), and 1,000 is within the limit.
    3. The same with a third head of 1,001 bytes: 431, and the third never reaches the
    app."""

    async def scenario() -> None:
        for size, last in ((1000, OK), (1001, b"HTTP/1.1 431 Request Header Fields Too Large")):
            app = App()
            connection = Connection(app, guarded_protocol(1000, 10))
            third = head_of(size, "/third")
            first_read = head_of(100, "/one") + head_of(500, "/two") + b"\r\n" + third[:600]
            await connection.send(first_read, third[600:])
            await connection.settle()
            statuses = connection.statuses()
            if last == OK:
                assert statuses == [OK, OK, OK], size
                assert [path for path, _ in app.requests] == ["/one", "/two", "/third"]
            else:  # refused: what was still queued behind it is dropped with the connection
                assert statuses[-1] == last and OK in statuses, statuses
                assert "/third" not in [path for path, _ in app.requests]

    run(scenario())


def test_empty_lines_before_the_next_head_do_not_end_it_early() -> None:
    """Limit 1,000 bytes, on a kept-alive connection. 1. A request answered. 2. The next
    read begins with two empty lines (which llhttp skips) and holds the first 800 bytes
    of a 1,200-byte head; the read after it holds the rest. 3. 431: the empty lines are
    not taken for the end of that head, so its bytes in both reads are counted."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        await connection.send(head_of(100, "/one"))
        await connection.settle()
        head = head_of(1200, "/two")
        await connection.send(b"\r\n\r\n" + head[:800], head[800:])
        await connection.settle()
        assert connection.statuses() == [OK, b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert app.requests == [("/one", 0)]

    run(scenario())


def test_a_head_after_a_body_in_the_same_read_is_counted_from_its_start() -> None:
    """Limit 1,000 bytes. 1. One read holds a POST with a 500-byte body and then a
    complete head of exactly 1,000 bytes. 2. Both are served: the second head is
    counted from where the body ended, not from where the POST's head ended."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        post = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + b"b" * 500
        await connection.send(post + head_of(1000, "/next"))
        await connection.settle()
        assert connection.statuses() == [OK, OK]
        assert app.requests == [("/up", 500), ("/next", 0)]

    run(scenario())


def test_a_body_in_later_reads_is_not_counted_as_head() -> None:
    """Limit 1,000 bytes. 1. A POST head, then its 20 KB body in two later reads.
    2. Served 200 with the whole body: once the head is complete, nothing more is
    counted against the head limit."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        await connection.send(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n",
            b"b" * 10_000,
            b"b" * 10_000,
        )
        await connection.settle()
        assert connection.statuses() == [OK]
        assert app.requests == [("/up", 20_000)]

    run(scenario())


def test_the_first_heads_deadline_counts_from_the_connection() -> None:
    """1. Head timeout 0.3 s. 2. A client connects, waits 0.2 s, then sends half a head.
    3. 408 about 0.3 s after the connection was made, not 0.3 s after its first byte."""

    async def scenario() -> None:
        connected = time.monotonic()
        connection = Connection(App(), guarded_protocol(LIMIT, 0.3))
        await asyncio.sleep(0.2)  # the scenario: the client is slow to start
        await connection.send(head_of(100)[:20])
        await wait_for(lambda: connection.transport.closed, 3, "the connection to close")
        assert 0.28 <= time.monotonic() - connected < 0.45
        assert connection.statuses() == [b"HTTP/1.1 408 Request Timeout"]

    run(scenario())


def test_after_an_early_answer_nothing_more_is_parsed() -> None:
    """1. A POST with a 10-byte body; the app answers 413 before reading it; the
    connection closes. 2. The rest of the body arrives with a second request behind it.
    3. The second request never reaches the app: nothing after the answer is parsed."""

    async def scenario() -> None:
        app = App(early=True)
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        await connection.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nbbbb")
        await connection.settle()
        assert connection.transport.closed
        await connection.send(b"bbbbbb" + head_of(100, "/two"))
        await connection.settle()
        assert app.requests == [("/up", 0)]

    run(scenario())


def test_after_a_refused_pipelined_head_the_rest_of_the_read_is_ignored() -> None:
    """Limit 1,000 bytes. 1. One read holds a GET, two heads over the limit and a small
    GET. 2. One 431, written once, then the connection closes: the second head over the
    limit is not answered again (no write after close) and the last GET never reaches
    the app."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        over = head_of(1001, "/over")
        await connection.send(head_of(100, "/one") + over + over + head_of(100, "/four"))
        await connection.settle()
        assert connection.transport.closed
        assert connection.statuses().count(TOO_LARGE) == 1, connection.statuses()
        assert "/four" not in [path for path, _ in app.requests]

    run(scenario())


def test_a_head_after_a_body_that_came_in_its_own_read_is_counted_exactly() -> None:
    """Limit 1,000 bytes. 1. A POST head with Content-Length 500. 2. One read holds the
    500-byte body and then a head of 1,001 bytes: that head is refused (431), counted
    from the body's end to the byte."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        await connection.send(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n",
            b"b" * 500 + head_of(1001, "/next"),
        )
        await connection.settle()
        assert connection.statuses()[-1] == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert "/next" not in [path for path, _ in app.requests]

    run(scenario())


def test_a_head_at_the_limit_with_its_body_is_served_however_the_reads_fall() -> None:
    """Limit 1,000 bytes; a POST head of exactly 1,000 bytes with a 500-byte body.
    1. Head and body in one read. 2. The head's last byte and the body in the second
    read. 3. Two newlines, then two more with the head's first 800 bytes, then the rest
    and the body: each is served 200 with the whole body, counted to the byte (the
    body is not head, the end of the head is found across reads)."""
    body = b"b" * 500
    start = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nX-Pad: "
    head = start + b"p" * (1000 - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == 1000
    splits = [
        [head + body],
        [head[:-1], head[-1:] + body],
    ]

    async def scenario() -> None:
        for reads in splits:
            app = App()
            connection = Connection(app, guarded_protocol(1000, 10))
            await connection.send(*reads)
            await connection.settle()
            assert connection.statuses() == [OK], [len(r) for r in reads]
            assert app.requests == [("/up", 500)]

    run(scenario())


def test_newlines_in_their_own_read_do_not_start_the_head() -> None:
    """Limit 1,000 bytes. 1. A read of one empty line; then two more empty lines with
    the first 800 bytes of a 1,200-byte head; then the rest. 2. 431: the empty lines
    neither start the head in the first read nor end it in the second."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        head = head_of(1200, "/big")
        await connection.send(b"\r\n", b"\r\n\r\n" + head[:800], head[800:])
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert app.requests == []

    run(scenario())


def test_an_oversized_head_is_refused_before_the_parser_sees_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. 20 KB of bytes that are no HTTP at all, in one read. 2. Exactly one answer, 431,
    and the connection closed: the parser never saw them (it would have logged an
    invalid request and answered 400 as well)."""

    async def scenario() -> None:
        connection = Connection(App(), guarded_protocol(LIMIT, 10))
        await connection.send(b"\x00" * 20_000)
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert connection.transport.closed

    with caplog.at_level(logging.INFO):
        run(scenario())
    assert "Invalid HTTP request" not in caplog.text


def test_bare_lf_line_ends_are_refused_by_the_parser() -> None:
    """The guard also takes a bare-LF empty line for the end of a head; that is safe only
    because the parser refuses bare LF. 1. A head with bare LF line ends: 400, the app
    sees nothing. 2. A chunked body framed with bare LF, a head behind it in the same
    read: 400 and the connection closes; the head behind it never reaches the app."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        await connection.send(b"GET /bare HTTP/1.1\nHost: x\n\n")
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 400 Bad Request"]
        assert connection.transport.closed
        assert app.requests == []

        app = App()
        connection = Connection(app, guarded_protocol(1000, 10))
        post = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        await connection.send(post + b"5\nhello\n0\n\n" + head_of(100, "/next"))
        assert connection.statuses() == [b"HTTP/1.1 400 Bad Request"]
        assert connection.transport.closed
        connection.protocol.connection_lost(None)  # what the closed socket then reports
        await connection.settle()
        assert app.requests == [("/up", -1)]  # its body never completed: a disconnect

    run(scenario())
