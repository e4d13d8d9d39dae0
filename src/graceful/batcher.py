"""A batching writer: buffers items, writes them in batches by size or interval, and
flushes what it holds at shutdown, retrying with backoff within the time left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
logger = logging.getLogger("graceful.batcher")


class PermanentWriteError(Exception):
    """The sink refused `rejected` items of the batch for good (bad data): retrying the
    same items cannot help, and the rest of the batch counts as written."""

    def __init__(self, message: str, rejected: int) -> None:
        super().__init__(message)
        self.rejected = rejected


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: initial, initial*multiplier, ... capped at maximum;
    each delay drawn from [d * (1 - jitter), d]."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * random.random())
            delay = min(self.maximum, delay * self.multiplier)


Sink = Callable[[Sequence[T]], Awaitable[None]]


class Journal(Protocol[T]):
    """Keeps accepted items on disk until they are settled (see graceful.spool.Spool)."""

    def recover(self) -> list[T]: ...
    def append(self, item: T) -> None: ...
    def seal(self) -> None: ...
    def settle(self, n: int) -> None: ...
    def close(self) -> None: ...


class BatchWriter(Generic[T]):
    """Items go in with `add`; a background task (kept by the writer) writes them to
    `sink` in batches of at most `max_batch`, when a batch is full or every `interval`.

    Failures: a `PermanentWriteError` drops only the rejected items; any other error
    keeps the batch for another try when `retry` is set, else loses it (logged, counted).
    At most `max_buffer` items wait; what comes beyond is counted lost and logged.
    `close` flushes everything within its timeout (with `flush_on_shutdown`), or drops
    the buffer (without: the talk's v8), counting and logging what it drops.
    """

    def __init__(
        self,
        sink: Sink[T],
        *,
        name: str = "items",
        max_batch: int = 500,
        interval: float = 30.0,
        max_buffer: int = 100_000,
        retry: RetryPolicy | None = None,
        flush_on_shutdown: bool = True,
        write_timeout: float = 10.0,
        journal: Journal[T] | None = None,
    ) -> None:
        if max_batch < 1 or max_buffer < max_batch or interval <= 0:
            raise ValueError("need max_batch >= 1, max_buffer >= max_batch and interval > 0")
        self.sink = sink
        self.name = name
        self.max_batch = max_batch
        self.interval = interval
        self.max_buffer = max_buffer
        self.retry = retry
        self.flush_on_shutdown = flush_on_shutdown
        self.write_timeout = write_timeout
        self._buffer: list[T] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backoff: Iterator[float] | None = None
        self.written = 0
        self.lost = 0
        self.failed_writes = 0
        self.left_in_journal = 0
        self.journal = journal
        # Items a killed predecessor accepted but never wrote go first.
        self.recovered = 0
        if journal is not None:
            self._buffer = journal.recover()
            self.recovered = len(self._buffer)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, item: T) -> bool:
        """Queue one item; False (and counted lost) when the buffer is full or closed."""
        if self._closing or len(self._buffer) >= self.max_buffer:
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                why = "writer closed" if self._closing else f"buffer full ({self.max_buffer})"
                logger.error("Dropping %s: %s; %d lost so far", self.name, why, self.lost)
            return False
        self._buffer.append(item)
        if self.journal is not None:
            self.journal.append(item)
        if len(self._buffer) >= self.max_batch:
            self._wake.set()
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batch-writer-{self.name}"
            )

    async def _run(self) -> None:
        next_delay = self.interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), next_delay)
            self._wake.clear()
            if self._closing:
                return
            ok = await self._flush_available(self.write_timeout)
            if not ok and self._backoff is not None:
                next_delay = min(next(self._backoff), self.interval)
            else:
                next_delay = self.interval

    async def _flush_available(self, timeout: float) -> bool:
        """Write full batches (and the remainder) until the buffer is empty or a write
        fails; False when one failed and the items wait for a retry."""
        async with self._lock:
            while self._buffer:
                if not await self._write_one(self._buffer[: self.max_batch], timeout):
                    return False
            return True

    async def _write_one(self, batch: list[T], timeout: float) -> bool:
        """One write attempt; removes the batch from the buffer unless it should be retried."""
        n = len(batch)
        if self.journal is not None:
            self.journal.seal()  # every item of this batch is now in a sealed segment
        logger.info("Logging %d %s", n, self.name)
        try:
            await asyncio.wait_for(self.sink(batch), timeout)
        except PermanentWriteError as exc:
            self._settle(n, lost=exc.rejected)
            logger.error("%d of %d %s rejected for good: %s", exc.rejected, n, self.name, exc)
            return True
        except (Exception, TimeoutError) as exc:
            self.failed_writes += 1
            if self.retry is not None:
                if self._backoff is None:
                    self._backoff = self.retry.delays()
                logger.warning("Writing %d %s failed (%r); will retry", n, self.name, exc)
                return False
            self._settle(n, lost=n)
            logger.error("Writing %d %s failed, %d lost: %r", n, self.name, n, exc)
            return True
        self._settle(n, lost=0)
        self._backoff = None
        logger.info("%s logged", self.name.capitalize())
        return True

    def _settle(self, n: int, lost: int) -> None:
        del self._buffer[:n]
        self.written += n - lost
        self.lost += lost
        if self.journal is not None:
            self.journal.settle(n)

    async def close(self, timeout: float | None) -> int:
        """Stop the background task and flush (or drop) what is buffered, within
        `timeout` seconds (None: no limit). Returns how many items were lost here."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        lost_before = self.lost
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Let a write in progress finish rather than cut it, within the time we have.
            done, _ = await asyncio.wait({self._task}, timeout=_left(deadline))
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
        if not self.flush_on_shutdown:
            self._drop_all("writer does not flush on shutdown")
            if self.journal is not None:
                self.journal.close()
            return self.lost - lost_before
        # _write_one asks for a retry only when a retry policy is set.
        backoff = (self.retry or RetryPolicy()).delays()
        while self._buffer:
            left = _left(deadline)
            if left is not None and left <= 0:
                self._drop_all("shutdown time is up")
                break
            batch = self._buffer[: self.max_batch]
            write_timeout = self.write_timeout if left is None else min(self.write_timeout, left)
            if await self._write_one(batch, write_timeout):
                continue
            pause = next(backoff)
            left = _left(deadline)
            if left is not None and pause >= left:
                self._drop_all("shutdown time is up while retrying")
                break
            await asyncio.sleep(pause)
        if self.journal is not None:
            self.journal.close()
        logger.info(
            "%s writer closed in %.2f s: %d written, %d lost in all",
            self.name.capitalize(),
            time.monotonic() - started,
            self.written,
            self.lost,
        )
        return self.lost - lost_before

    def _drop_all(self, why: str) -> None:
        n = len(self._buffer)
        if not n:
            return
        if self.journal is not None:
            # Still on disk: the next process in this pod writes them.
            del self._buffer[:n]
            self.left_in_journal += n
            logger.warning("Left %d %s in the spool for the next start: %s", n, self.name, why)
            return
        self._settle(n, lost=n)
        logger.error("Dropped %d buffered %s: %s", n, self.name, why)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
