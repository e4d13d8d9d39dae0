"""uvicorn's httptools protocol with limits on request heads and bodies.

uvicorn with httptools accepts request heads of any size (a 4 MiB header was answered
200 here), waits forever for a head or a body to complete, and after answering early
(e.g. 413 before reading the body) keeps reading and discarding whatever the client goes
on sending (a chunked upload went on for 73 MiB over 12 s). This protocol:

- answers 431 once a head passes `max_head_bytes`, counting the bytes received however
  they are split across reads (one read or one byte per read, the end of head split
  anywhere), before the parser sees a head that is over;
- answers 408 when a head takes longer than `head_timeout` seconds, and when a body is
  not complete `body_timeout` seconds after its head (a total, not an idle, deadline: a
  body dribbled a byte at a time cannot hold the connection either);
- closes the connection after a response sent before the request body was received:
  the response says `connection: close`, and nothing more is read.

Head bytes are counted exactly when a head starts at the beginning of a read (every
request of a client that waits for each answer). A pipelined head that starts in the
middle of a read is measured from a lower bound of where the previous message ended, so
it can be over-counted by the framing of a chunked body before it, never under-counted.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from graceful.uvicorn_compat import (
    HttpToolsProtocol,
    RequestResponseCycle,
    say_close_when_not_kept_alive,
)

# The end of a head: an empty line. llhttp (httptools) refuses bare LF line ends with
# 400, so only CRLF ends a head it serves; taking a bare-LF empty line for an end as
# well only stops counting a head the parser refuses anyway.
_END_OF_HEAD = re.compile(rb"\n\r?\n")


def _after_last_empty_line(data: bytes) -> int:
    ends = [at + len(line) for line in (b"\n\n", b"\n\r\n") if (at := data.rfind(line)) >= 0]
    return max(ends, default=0)


def _reply(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 16 * 1024
    head_timeout = 10.0
    body_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._messages = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # Head accounting: bytes of the current head so far, its last two bytes (an end
        # of head can straddle reads), whether it has started (past leading newlines).
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._head_started = False
        # Where the current head begins in the current read (0 unless pipelined), and a
        # lower bound of how far the parser has got in it.
        self._read = b""
        self._head_start = 0
        self._position = 0
        self._feeding = False
        self._pipelined = False  # a message ended in the current read
        # The body of the current request is still arriving; keep-alive is granted only
        # once it has all been received.
        self._in_body = False
        self._keep_alive_after_body = False

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return  # answered already; what the client still sends is not read
        self._read = data
        self._head_start = 0
        self._position = 0
        self._pipelined = False
        if self._in_head and not self._count_head(data, 0):
            return
        self._feeding = True
        try:
            super().data_received(data)
        finally:
            self._feeding = False
            self._read = b""
        if self._pipelined and self._in_head and not self.transport.is_closing():
            # A message ended in this read and the next head has begun, not complete:
            # it holds no empty line, so it starts after the last one in the read.
            self._new_head()
            self._count_head(data, max(self._head_start, _after_last_empty_line(data)))

    def _new_head(self) -> None:
        self._head_bytes, self._head_tail, self._head_started = 0, b"", False

    def _count_head(self, data: bytes, offset: int) -> bool:
        """Count the head bytes of `data[offset:]`; refuse and return False when over.

        Sets `_position` to where the head ends in `data` when it ends there.
        """
        start = offset
        if not self._head_started:
            start = len(data) - len(data[offset:].lstrip(b"\r\n"))
            self._head_started = start < len(data)
            tail = b""
        else:
            tail = self._head_tail
        end: int | None = None
        if self._head_started:
            # No need to look further than the limit: a head that ends beyond it is over.
            window_end = offset + self.max_head_bytes - self._head_bytes + 1
            found = _END_OF_HEAD.search(tail + data[start:window_end])
            if found is not None:
                end = start + found.end() - len(tail)
        counted = (len(data) if end is None else end) - offset
        self._head_bytes += counted
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, "Request Header Fields Too Large", "request head too large")
            return False
        if end is None:
            self._head_tail = (tail + data[start:])[-2:] if self._head_started else b""
        else:
            self._position = end
        return True

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._messages += 1
        if self._messages > 1:  # a further request on a kept-alive connection
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if self._pipelined:  # a head that began in this read after a message ended
            self._new_head()
            if not self._count_head(self._read, self._head_start):
                return
        self._in_head = False
        self._cancel_head_timer()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is previous:  # an upgrade: no request cycle of ours
            return
        say_close_when_not_kept_alive(self.cycle)
        # Keep-alive only once the whole body is in: a response sent before that (an
        # early 413, or an app that ignores the body) says close, and the rest of the
        # body is never read. on_message_complete gives keep-alive back.
        self._in_body = True
        self._keep_alive_after_body = self.cycle.keep_alive
        self.cycle.keep_alive = False
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._position += len(body)  # a lower bound: chunk framing is not reported
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        if self._in_body:
            self._in_body = False
            self._cancel_body_timer()
            if not self.cycle.response_started:
                self.cycle.keep_alive = self._keep_alive_after_body
        self._in_head = True
        self._new_head()
        if self._feeding:  # the next message, if any, starts at or after this point
            self._pipelined = True
            self._head_start = self._position

    def shutdown(self) -> None:
        super().shutdown()
        self._keep_alive_after_body = False  # draining: no keep-alive after the body either

    # Timers

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "Request Timeout", "request head not received in time")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        cycle: RequestResponseCycle = self.cycle
        if cycle.response_started:
            self._refused = True
            self.transport.close()  # too late for a 408: cut the connection
        else:
            self._refuse(408, "Request Timeout", "request body not received in time")
        # The app's receive() now returns http.disconnect, and its sends are dropped.
        cycle.disconnected = True
        cycle.message_event.set()

    def _refuse(self, status: int, reason: str, text: str) -> None:
        self._refused = True
        self._cancel_timers()
        self.transport.write(_reply(status, reason, text))
        self.transport.close()


def guarded_protocol(
    max_head_bytes: int, head_timeout: float, body_timeout: float | None = None
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class with these limits, for `uvicorn.Config(http=...)`.

    `body_timeout` defaults to `head_timeout`."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout": head_timeout,
            "body_timeout": head_timeout if body_timeout is None else body_timeout,
        },
    )
