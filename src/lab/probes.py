"""Probe results that explain themselves: what a probe saw, in the words a person needs
to fix it (HTTP status and a body excerpt, exec exit code and output, connect error).

The kubelet keeps the same things: an HTTP probe fails with "HTTP probe failed with
statuscode: 500" and reads at most 10 KiB of the body, an exec probe's output is kept up
to 10 KiB (`pkg/probe/http/http.go`, `pkg/probe/exec/exec.go`, `maxReadLength`). The lab
keeps a shorter excerpt, enough for an event line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from lab.manifest import Handler, Probe

EXCERPT = 160  # characters of a body or of an exec's output kept in a result
# The kubelet's HTTP probes say what they are: "kube-probe/<major>.<minor>" of the
# kubelet's version (pkg/probe/http/request.go); 1.37 is what cluster/ builds. Servers
# tell probes from clients by it (graceful's quiet period does).
USER_AGENT = "kube-probe/1.37"
READ_LIMIT = 10 * 1024  # bytes read from a body or an exec's output, as the kubelet


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "HTTP 500: 'not ready'", "exit code 127: 'sh: 1: /app/bin/calc: not found'"

    def __str__(self) -> str:
        return self.detail


def excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    text = " ".join(text.split())  # one line: events and progress lines are single lines
    return repr(text[:EXCERPT] + ("..." if len(text) > EXCERPT else ""))


def describe(probe: Probe | Handler) -> str:
    """`httpGet :http/ready`, `tcpSocket :4000`, `exec /app/bin/calc pid`, `sleep 5s`."""
    if probe.action == "exec":
        return "exec " + " ".join(probe.command)
    if isinstance(probe, Handler) and probe.action == "sleep":
        return f"sleep {probe.seconds:g}s"
    if probe.action == "tcpSocket":
        return f"tcpSocket :{probe.port}"
    return f"httpGet :{probe.port}{probe.path}"


def _reason(exc: OSError) -> str:
    # asyncio's "Connect call failed (...)" hides the errno's own words.
    return os.strerror(exc.errno) if exc.errno else str(exc)


def exec_result(code: int, output: bytes) -> ProbeResult:
    if code == 0:
        return ProbeResult(True, "exit code 0")
    # 126 and 127 are the shell's "cannot execute" and "not found": say it in words.
    meaning = {126: " (cannot execute)", 127: " (command not found)"}.get(code, "")
    text = f"exit code {code}{meaning}"
    return ProbeResult(False, f"{text}: {excerpt(output)}" if output.strip() else text)


async def http_probe(host: str, port: int, path: str, timeout: float | None) -> ProbeResult:
    """GET as the kubelet's prober does; 200-399 succeeds (`pkg/probe/http/http.go`).
    A failing status keeps an excerpt of the body, read until the server closes, its
    Content-Length or the limit, within what is left of the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout is not None else None
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeResult(False, f"timeout: no connection within {timeout or 0:g} s")
    except OSError as exc:
        return ProbeResult(False, f"connect {host}:{port}: {_reason(exc)}")
    try:
        try:
            async with asyncio.timeout_at(deadline):
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                line = await reader.readline()
                parts = line.split()
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                    return ProbeResult(False, f"not an HTTP response: {excerpt(line)}")
                status = int(parts[1])
                if 200 <= status < 400:
                    return ProbeResult(True, f"HTTP {status}")
                head = b""
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    head += header
        except TimeoutError:
            return ProbeResult(False, f"timeout: no answer within {timeout or 0:g} s")
        body = await _body(reader, _content_length(head), deadline)
        return ProbeResult(False, f"HTTP {status}" + (f": {excerpt(body)}" if body else ""))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return ProbeResult(False, f"connection lost: {exc}")
    except ValueError as exc:
        return ProbeResult(False, f"bad HTTP response: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


async def _body(reader: asyncio.StreamReader, length: int | None, deadline: float | None) -> bytes:
    """Up to READ_LIMIT bytes of the body; whatever came before the deadline or an error."""
    wanted = min(length, READ_LIMIT) if length is not None else READ_LIMIT
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout_at(deadline):
            while size < wanted:
                chunk = await reader.read(wanted - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    return b"".join(chunks)


async def tcp_probe(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return ProbeResult(False, f"timeout: no connection within {timeout:g} s")
    except OSError as exc:
        return ProbeResult(False, f"connect {host}:{port}: {_reason(exc)}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, "connected")
