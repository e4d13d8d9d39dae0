"""TaskRegistry and BatchWriter on a real event loop, with hand-written sinks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from graceful import BatchWriter, PermanentWriteError, RetryPolicy, TaskRegistry


class RecordingSink:
    """Stores what it is given (and when); fails the next `fail_next` writes; can be
    slow; counts the writes cancelled mid-way."""

    def __init__(self, fail_next: int = 0, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.times: list[float] = []
        self.fail_next = fail_next
        self.delay = delay
        self.attempts = 0
        self.cancelled = 0

    async def write(self, items: Sequence[int]) -> None:
        self.attempts += 1
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("sink down")
        self.batches.append(list(items))
        self.times.append(time.monotonic())

    @property
    def items(self) -> list[int]:
        return [i for b in self.batches for i in b]


FAST_RETRY = RetryPolicy(initial=0.01, maximum=0.05)


async def eventually(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll on the running loop until `predicate()`; fail at the deadline."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {timeout} s")


def test_registry_awaits_tasks_within_timeout_then_cancels_the_rest() -> None:
    """1. Three tasks: two finish in 0.05 s, one would take 10 s. 2. shutdown(0.3).
    3. Two finished, one cancelled and reported; no new task is accepted afterwards."""

    async def scenario() -> tuple[int, TaskRegistry, float]:
        registry = TaskRegistry("work")
        for delay in (0.05, 0.05, 10):
            registry.spawn(asyncio.sleep(delay))
        started = time.monotonic()
        cut = await registry.shutdown(0.3)
        took = time.monotonic() - started
        with pytest.raises(RuntimeError, match="shut down"):
            registry.spawn(asyncio.sleep(0))
        return cut, registry, took

    cut, registry, took = asyncio.run(scenario())
    assert cut == 1
    assert (registry.finished, registry.cancelled, len(registry)) == (2, 1, 0)
    assert 0.25 <= took < 1.0


def test_registry_without_await_cuts_at_once_and_counts() -> None:
    """v6's registry: 1. Two pending tasks. 2. shutdown(7). 3. Both are cut at once, and
    the count says so (nothing is lost silently)."""

    async def scenario() -> tuple[int, float]:
        registry = TaskRegistry("work", await_on_shutdown=False)
        registry.spawn(asyncio.sleep(5))
        registry.spawn(asyncio.sleep(5))
        started = time.monotonic()
        return await registry.shutdown(7), time.monotonic() - started

    cut, took = asyncio.run(scenario())
    assert cut == 2
    assert took < 0.5


def test_registry_does_not_count_as_cut_a_task_that_finishes_its_work() -> None:
    """A task whose work cannot be taken back once begun (a write in a thread) finishes
    it when cancelled: 1. One such task (0.1 s left) and one plain task. 2. shutdown
    cuts both at once (v6). 3. One counted cut, one finished: none counted twice."""

    async def finishes_when_cancelled() -> None:
        work = asyncio.ensure_future(asyncio.sleep(0.1))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await work

    async def scenario() -> tuple[int, TaskRegistry]:
        registry = TaskRegistry("work", await_on_shutdown=False)
        registry.spawn(finishes_when_cancelled())
        registry.spawn(asyncio.sleep(5))
        await asyncio.sleep(0)  # both started
        return await registry.shutdown(7), registry

    cut, registry = asyncio.run(scenario())
    assert cut == 1
    assert (registry.finished, registry.cancelled) == (1, 1)


def test_registry_keeps_failed_tasks_counted() -> None:
    """A task that raises is counted failed, not lost, and does not break shutdown."""

    async def boom() -> None:
        raise ValueError("boom")

    async def scenario() -> TaskRegistry:
        registry = TaskRegistry("work")
        task = registry.spawn(boom())
        await asyncio.wait({task})
        assert await registry.shutdown(1) == 0
        return registry

    registry = asyncio.run(scenario())
    assert registry.failed == 1


def test_batcher_writes_full_batches_and_on_interval() -> None:
    """1. max_batch 3, interval 0.5 s. 2. Add 7 items. 3. Two full batches of 3 go at
    once (well before the interval); the last item goes alone, at the interval."""

    async def scenario() -> tuple[RecordingSink, float]:
        sink = RecordingSink()
        writer = BatchWriter(sink.write, max_batch=3, interval=0.5)
        writer.start()
        started = time.monotonic()
        for i in range(7):
            writer.add(i)
        await eventually(lambda: writer.pending == 0, 2)
        await writer.close(1)
        return sink, started

    sink, started = asyncio.run(scenario())
    assert sink.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert sink.times[1] - started < 0.25
    assert sink.times[2] - started >= 0.45


def test_batcher_flushes_at_close_and_retries_within_the_timeout() -> None:
    """1. Interval 30 s, retries on; the sink fails its next 3 writes. 2. Add 5 items,
    close(2). 3. The flush retries with backoff and writes all 5; nothing lost."""

    async def scenario() -> tuple[RecordingSink, BatchWriter[int], int]:
        sink = RecordingSink(fail_next=3)
        writer = BatchWriter(sink.write, interval=30, retry=FAST_RETRY)
        writer.start()
        for i in range(5):
            writer.add(i)
        lost = await writer.close(2)
        return sink, writer, lost

    sink, writer, lost = asyncio.run(scenario())
    assert lost == 0
    assert sink.items == list(range(5))
    assert sink.attempts == 4
    assert (writer.written, writer.lost, writer.failed_writes) == (5, 0, 3)


def test_batcher_without_retry_loses_a_failed_flush_and_says_so() -> None:
    """v9: one attempt at close; 1. the sink is down. 2. close. 3. All counted lost."""

    async def scenario() -> BatchWriter[int]:
        sink = RecordingSink(fail_next=100)
        writer = BatchWriter(sink.write, interval=30)
        writer.start()
        for i in range(5):
            writer.add(i)
        assert await writer.close(2) == 5
        return writer

    writer = asyncio.run(scenario())
    assert (writer.written, writer.lost) == (0, 5)


def test_batcher_gives_up_at_the_deadline_and_counts_the_loss() -> None:
    """1. The sink never recovers; retries on. 2. close(0.3). 3. close returns by the
    deadline with every item counted lost."""

    async def scenario() -> tuple[int, float]:
        sink = RecordingSink(fail_next=10_000)
        writer = BatchWriter(sink.write, interval=30, retry=FAST_RETRY)
        for i in range(5):
            writer.add(i)
        started = time.monotonic()
        lost = await writer.close(0.3)
        return lost, time.monotonic() - started

    lost, took = asyncio.run(scenario())
    assert lost == 5
    assert took < 0.6


def test_batcher_without_flush_on_shutdown_drops_and_counts() -> None:
    """v8: 1. Items buffered. 2. close. 3. Nothing written, all counted lost."""

    async def scenario() -> tuple[RecordingSink, int]:
        sink = RecordingSink()
        writer = BatchWriter(sink.write, interval=30, flush_on_shutdown=False)
        writer.start()
        for i in range(4):
            writer.add(i)
        return sink, await writer.close(5)

    sink, lost = asyncio.run(scenario())
    assert (sink.items, lost) == ([], 4)


def test_batcher_keeps_points_while_the_sink_is_down_up_to_the_cap() -> None:
    """1. Sink down for two writes, retries on, batches of 5, cap 10. 2. Add 5: the
    writer tries and fails. 3. Add 5 more: the retry fails too; 10 are kept. 4. Add 5
    more: over the cap, counted lost at once. 5. The sink recovers: the 10 kept are
    written by the background retry."""

    async def scenario() -> tuple[RecordingSink, BatchWriter[int]]:
        sink = RecordingSink(fail_next=2)
        writer = BatchWriter(
            sink.write,
            max_batch=5,
            interval=30,
            max_buffer=10,
            retry=RetryPolicy(initial=0.2, maximum=0.2),
        )
        writer.start()
        assert [writer.add(i) for i in range(5)] == [True] * 5
        await eventually(lambda: writer.failed_writes == 1, 2)
        assert [writer.add(i) for i in range(5, 10)] == [True] * 5
        await eventually(lambda: writer.failed_writes == 2, 2)
        assert writer.pending == 10
        assert [writer.add(i) for i in range(10, 15)] == [False] * 5
        await eventually(lambda: writer.pending == 0, 3)
        await writer.close(1)
        return sink, writer

    sink, writer = asyncio.run(scenario())
    assert sink.attempts >= 3
    assert sorted(sink.items) == list(range(10))
    assert (writer.written, writer.lost, writer.failed_writes) == (10, 5, 2)
    assert writer.losses.totals == {"buffer_full": 5}


def test_batcher_permanent_rejection_drops_only_the_rejected_items() -> None:
    """1. The sink rejects 1 item of a batch for good. 2. The writer does not retry that
    batch; 1 lost, the rest written."""

    async def reject_one(items: Sequence[int]) -> None:
        raise PermanentWriteError("bad point", rejected=1)

    async def scenario() -> BatchWriter[int]:
        writer = BatchWriter(reject_one, interval=30, retry=FAST_RETRY)
        for i in range(4):
            writer.add(i)
        await writer.close(1)
        return writer

    writer = asyncio.run(scenario())
    assert (writer.written, writer.lost, writer.failed_writes) == (3, 1, 0)


def test_batcher_close_lets_a_write_in_progress_finish() -> None:
    """1. A slow sink (0.3 s) is mid-write of [1, 2] when close(2) is called. 2. That
    write finishes rather than being cut (never cancelled, never written twice), and
    the item added meanwhile is flushed after it."""

    async def scenario() -> tuple[RecordingSink, float]:
        sink = RecordingSink(delay=0.3)
        writer = BatchWriter(sink.write, max_batch=2, interval=30)
        writer.start()
        writer.add(1)
        writer.add(2)  # full batch: the writer starts writing
        await eventually(lambda: sink.attempts > 0, 2)
        writer.add(3)
        started = time.monotonic()
        await writer.close(2)
        return sink, time.monotonic() - started

    sink, took = asyncio.run(scenario())
    assert sink.batches == [[1, 2], [3]]
    assert (sink.attempts, sink.cancelled) == (2, 0)
    assert took < 1.5


def test_retry_policy_backs_off_with_jitter_up_to_the_maximum() -> None:
    delays = RetryPolicy(initial=0.1, maximum=0.4, multiplier=2, jitter=0.5).delays()
    taken = [next(delays) for _ in range(6)]
    for got, nominal in zip(taken, [0.1, 0.2, 0.4, 0.4, 0.4, 0.4], strict=True):
        assert nominal * 0.5 <= got <= nominal


def test_batcher_refuses_impossible_settings() -> None:
    async def sink(items: Sequence[int]) -> None:
        return None

    for kwargs in ({"max_batch": 0}, {"max_buffer": 1, "max_batch": 5}, {"interval": 0}):
        with pytest.raises(ValueError, match="need max_batch"):
            BatchWriter(sink, **kwargs)  # type: ignore[arg-type]
