"""A batching writer: buffers items, writes them in batches by size or interval, and
flushes what it holds at shutdown, retrying with backoff within the time left.

What a sink's answer means (the sink raises one of these, or returns for success):

- returns: the batch is written.
- `PermanentWriteError(rejected=N)`: N items refused for good (bad data): counted lost,
  the rest written, no retry.
- `BatchTooLargeError`: the batch is split in halves and they are written at once; an
  item too large alone is counted lost.
- `HoldWriteError`: the sink cannot take anything until its configuration is fixed
  (wrong database, credentials): the batch is held, tried again once per backoff
  interval (with or without a retry policy), and every try logs an error.
- anything else (refused, timeout, 5xx): retried with backoff when a retry policy is
  set, else counted lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from graceful.losses import BUFFER_FULL, CLOSED, REJECTED, SHUTDOWN, WRITE_FAILED, LossLog

T = TypeVar("T")
logger = logging.getLogger("graceful.batcher")

#: How long a write the writer cancelled (it timed out) may take to end; a sink that
#: cannot take back a write under way finishes it, and its answer is what counts.
CANCEL_GRACE = 1.0
#: Pause before a crashed writer task is started again.
RESTART_DELAY = 1.0


class PermanentWriteError(Exception):
    """The sink refused `rejected` items of the batch for good (bad data): retrying the
    same items cannot help, and the rest of the batch counts as written."""

    def __init__(self, message: str, rejected: int) -> None:
        super().__init__(message)
        self.rejected = rejected


class BatchTooLargeError(Exception):
    """The sink refuses the batch for its size: smaller batches may pass."""


class HoldWriteError(Exception):
    """The sink refuses every write until its configuration is fixed (e.g. database not
    found, bad credentials): the items are kept, not dropped, and retried slowly."""


class NotAccepted(Exception):
    """`add` could not take the item (its journal could not store it): nothing was kept,
    and the caller must say so to whoever gave the item."""


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
    """Keeps accepted items on disk until they are settled (see graceful.spool.Spool).

    `append` raises (and stores nothing) when it cannot store the item. `settle(n)` marks
    the n oldest unsettled items done; when it raises, nothing was marked."""

    def recover(self) -> list[T]: ...
    def append(self, item: T) -> None: ...
    def settle(self, n: int) -> None: ...
    def close(self) -> None: ...


class _Outcome(enum.Enum):
    DONE = "done"  # the batch left the buffer (written, or counted lost)
    SPLIT = "split"  # too large: try half as many
    RETRY = "retry"  # kept: try again after a backoff pause
    HOLD = "hold"  # kept: the sink's configuration is wrong; try again after a pause


class BatchWriter(Generic[T]):
    """Items go in with `add`; a background task (kept by the writer, restarted if it
    crashes) writes them to `sink` in batches of at most `max_batch`, when a batch is
    full or every `interval`.

    While writes fail, the task tries once per backoff interval, whatever the rate of
    `add` calls. At most `max_buffer` items wait; what comes beyond is counted lost and
    logged. `close` flushes everything within its timeout (with `flush_on_shutdown`), or
    drops the buffer (without: the talk's v8). Every loss is counted by reason
    (`losses.totals`) and logged at least once a second while it happens.
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
        self._stopping = asyncio.Event()  # set by close: ends a restart pause at once
        self._backoff: Iterator[float] | None = None
        self._retry_at: float | None = None  # while backing off: no attempt before this
        # A write whose outcome is not known yet (cancelled, still finishing): the next
        # attempt waits for it instead of writing the same items a second time.
        self._inflight: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[int] | None = None
        self._inflight_n = 0
        self._inflight_cancelled = False
        self._owed_settle = 0  # items done but not yet settled in the journal
        self.losses = LossLog(name, logger, at_once=frozenset({REJECTED, WRITE_FAILED}))
        self._refusals = LossLog(name, logger, verb="Refused")
        self.written = 0
        self.attempts = 0
        self.failed_writes = 0
        self.refused = 0
        self.crashes = 0
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

    @property
    def lost(self) -> int:
        return self.losses.total

    @property
    def backing_off(self) -> bool:
        return self._retry_at is not None

    def add(self, item: T) -> bool:
        """Queue one item; False (and counted lost) when the buffer is full or closed.
        Raises NotAccepted, keeping nothing, when the journal cannot store it."""
        if self._closing:
            self.losses.add(CLOSED, 1, "writer closed")
            return False
        if len(self._buffer) >= self.max_buffer:
            self.losses.add(BUFFER_FULL, 1, f"buffer full ({self.max_buffer})")
            return False
        if self.journal is not None:
            # On disk first: an item the journal refused never enters the buffer, so
            # buffer and journal hold the same items in the same order.
            try:
                self.journal.append(item)
            except (OSError, ValueError) as exc:
                self.refused += 1
                self._refusals.add("not_accepted", 1, f"the journal cannot store them: {exc}")
                raise NotAccepted(f"not accepted: the journal cannot store it ({exc})") from exc
        self._buffer.append(item)
        # A writer backing off is not woken: it tries again when its pause is over.
        if len(self._buffer) >= self.max_batch and self._retry_at is None:
            self._wake.set()
        return True

    def log_losses_now(self) -> None:
        """Log every loss and refusal counted but not yet logged (the rate limit holds
        some back for up to a second): for a process about to end without closing."""
        self.losses.flush()
        self._refusals.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"batch-writer-{self.name}"
            )

    async def _supervise(self) -> None:
        """Run the writer loop; a crash is logged and the loop started again, so the
        buffer is never left without a writer until shutdown."""
        while not self._closing:
            try:
                await self._run()
                return
            except Exception:
                self.crashes += 1
                logger.exception(
                    "%s writer crashed (%d so far); restarting in %.1f s",
                    self.name.capitalize(),
                    self.crashes,
                    RESTART_DELAY,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RESTART_DELAY)

    async def _run(self) -> None:
        while not self._closing:
            retrying = self._retry_at is not None
            if self._retry_at is not None:
                wait = max(0.0, self._retry_at - time.monotonic())
            else:
                wait = self.interval
            woken = True
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                woken = False
            self._wake.clear()
            if self._closing:
                return
            if self._retry_at is not None and time.monotonic() < self._retry_at:
                continue  # woken early: the pause holds whatever the request rate
            # Woken by a full batch: write full batches; the rest waits for the interval.
            await self._flush_available(self.write_timeout, full_only=woken and not retrying)

    async def _flush_available(self, timeout: float, full_only: bool = False) -> bool:
        """Write full batches (and, unless `full_only`, the remainder) until no more is
        due or a write fails; False when one failed and the items wait for a retry."""
        async with self._lock:
            limit = self.max_batch
            # What is due now; items that come during the writes wait for the next full
            # batch or interval (else every write would be chased by a tiny one). Woken
            # by size: the partial batch at the end waits for the interval too.
            due = len(self._buffer)
            if full_only:
                due -= due % self.max_batch
            while due > 0 and self._buffer:
                outcome, error, n = await self._attempt(min(limit, due), timeout)
                if outcome is _Outcome.DONE:
                    due -= n
                elif outcome is _Outcome.SPLIT:
                    limit = max(1, min(limit, due) // 2)
                else:
                    delay = self._schedule_retry()
                    self._log_kept(outcome, error, delay)
                    return False
            self._retry_at = None
            self._backoff = None
            return True

    def _schedule_retry(self) -> float:
        if self._backoff is None:
            self._backoff = (self.retry or RetryPolicy()).delays()
        delay = next(self._backoff)
        self._retry_at = time.monotonic() + delay
        return delay

    def _log_kept(self, outcome: _Outcome, error: BaseException | None, delay: float) -> None:
        n = min(len(self._buffer), self.max_batch)
        if outcome is _Outcome.HOLD:
            logger.error(
                "Writing %s refused (%s): holding %d, next try in %.1f s; fix the configuration",
                self.name,
                error,
                len(self._buffer),
                delay,
            )
        else:
            logger.warning(
                "Writing %d %s failed (%r); will retry in %.1f s", n, self.name, error, delay
            )

    async def _attempt(
        self, limit: int, timeout: float
    ) -> tuple[_Outcome, BaseException | None, int]:
        """One write attempt of the oldest `limit` items (or the wait for a write still
        under way); the buffer's front leaves it only when the outcome says so."""
        if self._inflight is None:
            batch = self._buffer[:limit]
            self._inflight = asyncio.get_running_loop().create_task(
                self._call_sink(batch), name=f"batch-write-{self.name}"
            )
            self._inflight_n = len(batch)
            self._inflight_cancelled = False
            self.attempts += 1
            logger.info("Logging %d %s", len(batch), self.name)
        task, n = self._inflight, self._inflight_n
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done and not self._inflight_cancelled:
            # Cancelled once only: a sink finishing a write it cannot take back obeys a
            # second cancel, which would turn a write that happened into a "failure".
            task.cancel()
            self._inflight_cancelled = True
            await asyncio.wait({task}, timeout=min(CANCEL_GRACE, timeout))
        if not task.done():
            self.failed_writes += 1
            still_running = TimeoutError(
                f"a write of {n} is still running after being cancelled; "
                "its answer is awaited before any other write"
            )
            return _Outcome.RETRY, still_running, n
        self._inflight = None
        if task.cancelled():
            return (*self._failed(n, TimeoutError(f"no answer within {timeout:.1f} s")), n)
        error = task.exception()
        if error is None:
            self._settle(n, lost=0)
            self._backoff = None
            logger.info("%s logged", self.name.capitalize())
            return _Outcome.DONE, None, n
        if isinstance(error, PermanentWriteError):
            if error.rejected <= 0:
                logger.warning("Writing %d %s: %s; none counted lost", n, self.name, error)
            self._settle(n, lost=max(0, min(error.rejected, n)), why=str(error))
            return _Outcome.DONE, None, n
        if isinstance(error, BatchTooLargeError):
            if n == 1:
                self._settle(1, lost=1, why=f"too large even alone: {error}")
                return _Outcome.DONE, None, n
            logger.warning("%d %s too large for one write (%s): splitting", n, self.name, error)
            return _Outcome.SPLIT, error, n
        if isinstance(error, HoldWriteError):
            self.failed_writes += 1
            return _Outcome.HOLD, error, n
        return (*self._failed(n, error), n)

    async def _call_sink(self, batch: list[T]) -> None:
        await self.sink(batch)

    def _failed(self, n: int, error: BaseException) -> tuple[_Outcome, BaseException | None]:
        self.failed_writes += 1
        if self.retry is not None:
            return _Outcome.RETRY, error
        self._settle(n, lost=n, reason=WRITE_FAILED, why=repr(error))
        return _Outcome.DONE, None

    def _settle(self, n: int, lost: int, reason: str = REJECTED, why: str = "") -> None:
        del self._buffer[:n]
        self.written += n - lost
        self.losses.add(reason, lost, why)
        if self.journal is not None:
            self._owed_settle += n
            self._settle_journal()

    def _settle_journal(self) -> None:
        if self.journal is None or self._owed_settle == 0:
            return
        try:
            self.journal.settle(self._owed_settle)
        except OSError as exc:
            # Still on disk: a restart would write them again, which the sink stores once.
            logger.error(
                "Cannot settle %d %s in the journal (%r); will try again",
                self._owed_settle,
                self.name,
                exc,
            )
            return
        self._owed_settle = 0

    async def close(self, timeout: float | None) -> int:
        """Stop the background task and flush (or drop) what is buffered, within
        `timeout` seconds (None: no limit). Returns how many items were lost here.
        A second call while the first runs waits for the same close (never a second
        flush of the same items)."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(timeout), name=f"batch-writer-close-{self.name}"
            )
        return await self._close_task

    async def _close(self, timeout: float | None) -> int:
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        lost_before = self.lost
        self._closing = True
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            # Let a write in progress finish rather than cut it, within the time we have.
            done, _ = await asyncio.wait({self._task}, timeout=_left(deadline))
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
        if not self.flush_on_shutdown:
            self._drop_all("writer does not flush on shutdown")
        else:
            await self._final_flush(deadline)
        self._settle_journal()
        if self.journal is not None:
            self.journal.close()
        self.log_losses_now()
        logger.info(
            "%s writer closed in %.2f s: %d written, %d lost in all, %d left in the journal",
            self.name.capitalize(),
            time.monotonic() - started,
            self.written,
            self.lost,
            self.left_in_journal,
        )
        return self.lost - lost_before

    async def _final_flush(self, deadline: float | None) -> None:
        backoff = (self.retry or RetryPolicy()).delays()
        limit = self.max_batch
        while self._buffer:
            left = _left(deadline)
            if left is not None and left <= 0:
                self._drop_all("shutdown time is up")
                return
            write_timeout = self.write_timeout if left is None else min(self.write_timeout, left)
            outcome, error, _ = await self._attempt(limit, write_timeout)
            if outcome is _Outcome.DONE:
                continue
            if outcome is _Outcome.SPLIT:
                limit = max(1, min(limit, len(self._buffer)) // 2)
                continue
            pause = next(backoff)
            self._log_kept(outcome, error, pause)
            left = _left(deadline)
            if left is not None and pause >= left:
                self._drop_all("shutdown time is up while retrying")
                return
            await asyncio.sleep(pause)

    def _drop_all(self, why: str) -> None:
        n = len(self._buffer)
        if not n:
            return
        if self._inflight is not None:
            why += "; a write of them was still under way, its outcome unknown"
            self._inflight.cancel()
            # Its answer no longer matters; retrieve it so that none goes unobserved.
            self._inflight.add_done_callback(_observe)
        if self.journal is not None:
            # Still on disk, but only the next container of this pod reads that disk.
            del self._buffer[:n]
            self.left_in_journal += n
            logger.warning(
                "Left %d %s in the spool, lost unless this pod's next container starts (%s)",
                n,
                self.name,
                why,
            )
            return
        self._settle(n, lost=n, reason=SHUTDOWN, why=why)


def _observe(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
