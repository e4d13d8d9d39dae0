"""Probe results against hostile servers on real loopback sockets: bytes split oddly, a
server that stalls, one that closes at once, one that speaks no HTTP, one not there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from lab.influx import free_port
from lab.probes import exec_result, http_probe, tcp_probe
from tests.lab.labkit import run

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _probe_against(handler: Handler, timeout: float = 1.0) -> str:
    """One probe against a server running `handler`; every connection it accepted is
    closed (its handler cancelled) before this returns."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[object]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await http_probe("127.0.0.1", port, "/ready", timeout)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
    return ("ok " if result.ok else "failed ") + result.detail


async def _answer(writer: asyncio.StreamWriter, *parts: bytes, pause: float = 0.0) -> None:
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(pause)
    writer.close()


def test_status_and_body_split_across_writes() -> None:
    """1. A server answers 500 in single bytes with pauses between them.
    2. The probe reads the whole status and the body excerpt."""
    response = b"HTTP/1.1 500 Internal\r\nContent-Length: 11\r\n\r\nbad\n  thing"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await _answer(writer, *(response[i : i + 1] for i in range(len(response))), pause=0.002)

    assert run(_probe_against(handler)) == "failed HTTP 500: 'bad thing'"


def test_redirect_counts_as_success() -> None:
    """A 302 is a success for the kubelet (200-399)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await _answer(writer, b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n")

    assert run(_probe_against(handler)) == "ok HTTP 302"


def test_server_that_stalls_times_out() -> None:
    """1. A server accepts, sends half a status line and stalls.
    2. The probe fails at its timeout, saying so."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 2")
        await asyncio.sleep(5)  # cancelled by _probe_against

    assert run(_probe_against(handler, timeout=0.3)) == "failed timeout: no answer within 0.3 s"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"", "failed not an HTTP response: ''"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "failed not an HTTP response: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "failed bad HTTP response: invalid literal"),
    ],
)
def test_server_that_speaks_no_http(answer: bytes, expected: str) -> None:
    """A server that closes at once, one that speaks another protocol, one with a broken
    status: each a failure that says what came back."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await _answer(writer, answer)

    assert run(_probe_against(handler)).startswith(expected)


def test_nothing_listening() -> None:
    """Connection refused is named in words, for HTTP and TCP probes."""
    port = free_port()
    http = run(http_probe("127.0.0.1", port, "/", 1))
    tcp = run(tcp_probe("127.0.0.1", port, 1))
    assert not http.ok and http.detail == f"connect 127.0.0.1:{port}: Connection refused"
    assert not tcp.ok and tcp.detail == http.detail


def test_exec_results_in_words() -> None:
    assert exec_result(0, b"4242\n").detail == "exit code 0"
    assert exec_result(127, b"sh: 1: calc: not found\n").detail == (
        "exit code 127 (command not found): 'sh: 1: calc: not found'"
    )
    assert exec_result(1, b"").detail == "exit code 1"
    long = exec_result(2, b"x" * 500).detail
    assert long.endswith("...'") and len(long) < 200


def test_failing_status_then_a_stalled_body_keeps_the_status() -> None:
    """1. A server answers 503 with part of a body and then neither sends more nor closes.
    2. At the timeout the probe fails with the status and what came of the body, not
       with a bare timeout."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Busy\r\n\r\ndraining, retry")
        await writer.drain()
        await asyncio.sleep(5)  # cancelled by _probe_against

    assert run(_probe_against(handler, timeout=0.3)) == "failed HTTP 503: 'draining, retry'"
