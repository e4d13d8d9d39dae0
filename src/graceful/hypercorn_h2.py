"""GOAWAY for hypercorn's HTTP/2 connections: the HTTP/2 form of `Connection: close`.

An HTTP/1.1 client that reads `Connection: close` sends its next request on a new
connection, which the load balancer gives to another pod. HTTP/2 forbids that header (h2
strips it); its equivalent is a GOAWAY frame, and hypercorn sends none until its listener
has closed, so an HTTP/2 client keeps its connection through the whole delay and loses
the request in transit when the connection is closed under it.

From the delay's start each HTTP/2 connection is told to go away as soon as no stream is
open on it (at once if idle, else when its last response has been sent in full):

- GOAWAY, NO_ERROR, last-stream-id = the highest stream the connection has accepted.
  Every stream up to it is served to its end; a stream the client opened after that is
  ignored unprocessed (RFC 9113 §6.8), which the GOAWAY's last-stream-id already tells the
  client to retry on a new connection (§8.7). No RST_STREAM for it: the h2 library (httpx's
  client) that reads the GOAWAY and such a reset in one read raises a protocol error on the
  reset (the connection is CLOSED for it by then) and fails the request instead of retrying
  it, which a client under load, reading late, does.
- The connection is closed a second later (what `Connection: close` does after the
  answer), by when the client has read the GOAWAY.

Not RFC 9113 §6.8's first GOAWAY with last-stream-id 2^31-1 sent at once to every
connection: the Python h2 library (in httpx, and in hypercorn) moves a connection to
CLOSED on the first GOAWAY it sends or receives, so an httpx client fails every stream
still open on it ("ConnectionTerminated"), even one the GOAWAY names as served, and a
stream it opened while the GOAWAY was on its way fails too where a real last-stream-id
has it retried. Sent only while no stream is open, and naming the real last stream, a
GOAWAY loses nothing with h2 clients and with clients that follow the RFC alike. The frame
is written beside h2's state machine, which would otherwise close the connection for the
streams it still has to refuse.

A new connection made during the delay (the balancer may still send some) is told after
its first stream, so that its client is not sent back to the same pod in a loop. When the
listener closes, the idle connections not yet told are told; a busy one still is when its
last stream ends, as hypercorn serves it through the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import h2.errors
import h2.events
import h2.exceptions
import hypercorn.protocol
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hyperframe.frame import GoAwayFrame

logger = logging.getLogger("graceful.hypercorn")

LINGER = 1.0  # seconds between GOAWAY and closing the connection: more than a round trip


class GoingAway:
    """The HTTP/2 connections of one server and whether they are to go away."""

    def __init__(self) -> None:
        self.live: weakref.WeakSet[GoingAwayH2Protocol] = weakref.WeakSet()
        self.started = False
        self.final = False
        self.told = 0
        self.refused = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """hypercorn builds the HTTP/2 protocol of each connection by this module-level
        name (`hypercorn.protocol.ProtocolWrapper`): ours while the server runs."""
        owner = self

        class Bound(GoingAwayH2Protocol):
            pass

        Bound.owner = owner
        previous = hypercorn.protocol.H2Protocol  # type: ignore[attr-defined]
        hypercorn.protocol.H2Protocol = Bound  # type: ignore[attr-defined]
        try:
            yield
        finally:
            hypercorn.protocol.H2Protocol = previous  # type: ignore[attr-defined]

    async def start(self) -> None:
        """The delay begins: tell each connection, idle ones now."""
        self.started = True
        connections = list(self.live)
        for connection in connections:
            await connection.go_away_when_idle()
        told = self.told
        if connections:
            logger.info(
                "HTTP/2: GOAWAY sent to %d idle connection(s); %d busy one(s) get it "
                "when their open streams end",
                told,
                len(connections) - told,
            )

    async def finish(self) -> None:
        """The listener is about to close: tell every idle connection not yet told."""
        self.started = self.final = True
        for connection in list(self.live):
            await connection.go_away_when_idle()
        if self.told or self.refused:
            logger.info(
                "HTTP/2: GOAWAY sent to %d connection(s) in all; %d stream(s) opened "
                "after it refused unprocessed (for the client to retry)",
                self.told,
                self.refused,
            )


class GoingAwayH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, which goes away as the module doc says."""

    owner: ClassVar[GoingAway]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_stream_told: int | None = None
        self.closed_event = asyncio.Event()
        self.owner.live.add(self)

    async def go_away_when_idle(self) -> None:
        owner = self.owner
        if not owner.started or self.last_stream_told is not None or self.closed:
            return
        last = self.connection.highest_inbound_stream_id
        if self.streams or self.stream_buffers or (last == 0 and not owner.final):
            return
        # h2's own frames first: the GOAWAY must follow the end of every answered stream.
        await self._flush()
        frame = GoAwayFrame(
            stream_id=0, last_stream_id=last, error_code=h2.errors.ErrorCodes.NO_ERROR
        )
        self.last_stream_told = last
        owner.told += 1
        await self.send(RawData(data=frame.serialize()))
        self.task_group.spawn(self._close_after_linger)

    async def _close_after_linger(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed_event.wait(), LINGER)
        if not self.closed and not (self.streams or self.stream_buffers):
            await self.send(Closed())

    async def handle(self, event: Event) -> None:
        await super().handle(event)
        if isinstance(event, Closed):
            self.closed_event.set()
            self.owner.live.discard(self)

    async def stream_send(self, event: StreamEvent) -> None:
        await super().stream_send(event)
        if isinstance(event, StreamClosed):
            await self.go_away_when_idle()

    async def _send_data(self, stream_id: int) -> None:
        await super()._send_data(stream_id)
        # The last byte of a stream is sent here, possibly after its StreamClosed.
        await self.go_away_when_idle()

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        told = self.last_stream_told
        if told is not None:
            events = [event for event in events if not self._refused(event, told)]
        await super()._handle_events(events)

    def _refused(self, event: h2.events.Event, told: int) -> bool:
        """A stream above the GOAWAY's last stream is refused unprocessed: its frames
        dropped, no reset sent (the module doc says why), its data's flow-control
        window given back."""
        stream_id = getattr(event, "stream_id", None)
        if stream_id is None or stream_id <= told:
            return False
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            if isinstance(event, h2.events.RequestReceived):
                self.owner.refused += 1
            elif isinstance(event, h2.events.DataReceived):
                self.connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
        return True
