"""The guarded httptools protocol, fed bytes split exactly as a test chooses.

The protocol runs on a real event loop with uvicorn's real parser and request cycle; only
the transport is a hand-written stand-in, so that each read is exactly the bytes given
(over a socket the kernel would merge or split them as it likes). End-to-end versions of
these cases, over real sockets to `calc serve`, are in tests/calc/test_hostile.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from graceful.protocol import GuardedHttpToolsProtocol, guarded_protocol

LIMIT = 16 * 1024
OK = b"HTTP/1.1 200 OK"
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large"


class Transport(asyncio.Transport):
    """Collects what the server writes; records close, pause and resume."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )


class App:
    """ASGI app: reads the whole body and answers its length, or (early=True) answers 413
    at once without reading it. Records each request it saw."""

    def __init__(self, early: bool = False) -> None:
        self.early = early
        self.requests: list[tuple[str, int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        size = 0
        if not self.early:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.requests.append((scope["path"], -1))
                    return
                size += len(message["body"])
                if not message["more_body"]:
                    break
        self.requests.append((scope["path"], size))
        status = 413 if self.early else 200
        body = str(size).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Connection:
    def __init__(self, app: App, protocol: type[GuardedHttpToolsProtocol]) -> None:
        config = uvicorn.Config(app, http=protocol, lifespan="off", log_config=None)
        config.load()
        self.server_state = ServerState()
        self.transport = Transport()
        self.protocol = protocol(config, self.server_state, {}, _loop=asyncio.get_running_loop())
        self.protocol.connection_made(self.transport)

    async def send(self, *reads: bytes) -> None:
        """Each argument is one read; the loop runs between reads."""
        for data in reads:
            self.protocol.data_received(data)
            await asyncio.sleep(0)

    async def settle(self) -> None:
        """Until every request task the connection started has finished (deadline 5 s)."""
        await wait_for(lambda: not self.server_state.tasks, 5, "request tasks to finish")

    def statuses(self) -> list[bytes]:
        return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", self.transport.written)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def head_of(size: int, path: str = "/", extra: str = "") -> bytes:
    """A GET head of exactly `size` bytes, end of head included."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}X-Pad: ".encode()
    head = start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == size
    return head


def one_byte_reads(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def odd_chunks(head: bytes) -> list[bytes]:
    """Reads of 7, 4093, 7, 4093, ... bytes, in order."""
    reads: list[bytes] = []
    position, sizes = 0, (7, 4093)
    while position < len(head):
        size = sizes[len(reads) % 2]
        reads.append(head[position : position + size])
        position += size
    return reads


SPLITS: dict[str, Callable[[bytes], Sequence[bytes]]] = {
    "one read": lambda head: [head],
    "byte by byte": one_byte_reads,
    "split after \\r": lambda head: [head[:-3], head[-3:]],
    "split after \\r\\n": lambda head: [head[:-2], head[-2:]],
    "split after \\r\\n\\r": lambda head: [head[:-1], head[-1:]],
    "odd chunks of 7 and 4093": odd_chunks,
}


@pytest.mark.parametrize("split", list(SPLITS))
def test_a_head_at_the_limit_is_served_and_one_byte_over_is_refused(split: str) -> None:
    """For each way of splitting the head into reads (one read, a byte per read, the
    end-of-head `\\r\\n\\r\\n` split after each of its first three bytes, odd chunks):
    1. A head of exactly 16 KiB: answered 200 by the app.
    2. A head of 16 KiB + 1: 431, the connection closed, and the app never called."""

    async def scenario() -> None:
        for size, status, calls in ((LIMIT, OK, 1), (LIMIT + 1, TOO_LARGE, 0)):
            app = App()
            connection = Connection(app, guarded_protocol(LIMIT, 10))
            await connection.send(*SPLITS[split](head_of(size)))
            await connection.settle()
            assert connection.statuses() == [status], (size, split)
            assert len(app.requests) == calls
            assert connection.transport.closed == (status == TOO_LARGE)

    run(scenario())


def test_a_one_mib_head_in_one_read_is_refused_before_parsing() -> None:
    """1. A 1 MiB head arrives in one read. 2. 431, closed, the app is never called.
    3. A further read on the refused connection is ignored."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        await connection.send(head_of(1024 * 1024), head_of(100))
        await connection.settle()
        assert connection.statuses() == [TOO_LARGE]
        assert connection.transport.closed and app.requests == []

    run(scenario())


def test_newlines_before_the_request_line_do_not_end_the_head_early() -> None:
    """llhttp skips empty lines before a request line. 1. `\\r\\n\\r` in one read, then
    `\\n` followed by a 20 KB head in the next. 2. 431: the leading empty lines are not
    taken for the end of a head."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        await connection.send(b"\r\n\r", b"\n" + head_of(20_000))
        await connection.settle()
        assert connection.statuses() == [TOO_LARGE] and app.requests == []

    run(scenario())


def test_a_large_body_in_the_same_read_as_its_head_is_not_head() -> None:
    """1. A small POST head and a 500 KB body arrive in one read. 2. The app gets the
    whole body and answers 200; the connection stays open (keep-alive)."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        body = b"b" * 500_000
        head = f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        await connection.send(head.encode() + body)
        await connection.settle()
        assert connection.statuses() == [OK]
        assert app.requests == [("/up", 500_000)]
        assert not connection.transport.closed
        assert b"connection: close" not in connection.transport.written

    run(scenario())


def test_pipelined_heads_in_one_read_are_counted_each() -> None:
    """1. One read holds a POST with a 40 KB body and then a small GET: both answered
    200, neither head taken as over. 2. One read holds a small GET and then a 20 KB
    head: the first is served, the second refused with 431 and never reaches the app.
    3. One read holds a small GET and the first 20 KB of a head not yet complete: 431."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        body = b"\n\n" + b"b" * 40_000
        post = f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        await connection.send(post + body + head_of(200, "/next"))
        await connection.settle()
        assert app.requests == [("/up", len(body)), ("/next", 0)]
        assert connection.statuses() == [OK, OK] and not connection.transport.closed

        for second in (head_of(20_000, "/big"), head_of(30_000, "/big")[:20_000]):
            app = App()
            connection = Connection(app, guarded_protocol(LIMIT, 10))
            await connection.send(head_of(200, "/first") + second)
            await connection.settle()
            assert ("/big", 0) not in app.requests
            assert connection.statuses()[-1] == TOO_LARGE and connection.transport.closed

    run(scenario())


def test_an_answer_before_the_body_closes_the_connection() -> None:
    """1. A POST head with Content-Length 10 MB and the first 64 KB of its body. 2. The
    app answers 413 without reading. 3. The answer says `connection: close`, the
    connection is closed, and 1 MB more of body is not read (the app saw one request)."""

    async def scenario() -> None:
        app = App(early=True)
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        await connection.send(head + b"b" * 65536)
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 413 Request Entity Too Large"]
        assert b"connection: close\r\n" in connection.transport.written
        assert connection.transport.closed
        written = len(connection.transport.written)
        await connection.send(*[b"b" * 65536] * 16)
        assert len(connection.transport.written) == written and len(app.requests) == 1

    run(scenario())


def test_a_chunked_body_answered_early_closes_too() -> None:
    """1. A chunked POST; the app answers 413 without reading. 2. More chunks follow.
    3. The answer says close, the connection is closed, the chunks are not read."""

    async def scenario() -> None:
        app = App(early=True)
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        chunk = b"1000\r\n" + b"c" * 4096 + b"\r\n"
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        await connection.send(head + chunk)
        await connection.settle()
        assert b"connection: close\r\n" in connection.transport.written
        assert connection.transport.closed
        await connection.send(*[chunk] * 100)
        assert len(app.requests) == 1

    run(scenario())


def test_a_body_that_stalls_gets_408() -> None:
    """1. Body timeout 0.3 s. 2. A POST head with Content-Length 100 and 10 bytes of
    body, then nothing. 3. After about 0.3 s: 408 and the connection closed; the app's
    receive() returned http.disconnect, and nothing it sent reached the client."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10, body_timeout=0.3))
        started = time.monotonic()
        await connection.send(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"b" * 10
        )
        await wait_for(lambda: connection.transport.closed, 5, "the connection to close")
        assert 0.25 <= time.monotonic() - started < 3
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 408 Request Timeout"]
        assert app.requests == [("/up", -1)]

    run(scenario())


def test_a_body_dribbled_byte_by_byte_still_times_out() -> None:
    """The body deadline is a total, not an idle timeout. 1. Body timeout 0.3 s. 2. A
    body of 100 bytes sent a byte every 20 ms. 3. 408 well before the last byte."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10, body_timeout=0.3))
        await connection.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            if connection.transport.closed:
                break
            await connection.send(b"b")
            await asyncio.sleep(0.02)
        assert connection.transport.closed
        await connection.settle()
        assert connection.statuses() == [b"HTTP/1.1 408 Request Timeout"]

    run(scenario())


def test_keep_alive_survives_a_complete_body_and_a_draining_server_closes() -> None:
    """1. Two POSTs one after the other on one connection, each body complete before the
    answer: both 200, no `connection: close`, the connection open. 2. The server begins
    shutdown while a third POST's body is half sent; the body completes: its answer says
    close and the connection is closed after it."""

    async def scenario() -> None:
        app = App()
        connection = Connection(app, guarded_protocol(LIMIT, 10))
        post = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
        for _ in range(2):
            await connection.send(post + b"abcd")
            await connection.settle()
        assert connection.statuses() == [OK, OK] and not connection.transport.closed
        assert b"connection: close" not in connection.transport.written
        await connection.send(post + b"ab")
        connection.protocol.shutdown()
        await connection.send(b"cd")
        await connection.settle()
        assert connection.statuses() == [OK, OK, OK]
        assert connection.transport.written.endswith(b"4")
        assert b"connection: close\r\n" in connection.transport.written
        assert connection.transport.closed

    run(scenario())
