"""Background tasks with hard references, awaited with a deadline at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("graceful.tasks")


class TaskRegistry:
    """Keeps every task it starts until the task ends (the event loop itself only keeps
    weak references, so an unreferenced task can vanish mid-flight).

    `shutdown(timeout)` waits for the pending tasks up to `timeout`, then cancels the rest
    and reports how many were cut. With `await_on_shutdown=False` (the talk's v6) it cuts
    them at once, as a runtime that does not supervise its tasks would, but still counts
    and logs what was cut: nothing is lost silently.
    """

    def __init__(self, name: str, await_on_shutdown: bool = True) -> None:
        self.name = name
        self.await_on_shutdown = await_on_shutdown
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.cancelled = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self.closed:
            coro.close()
            raise RuntimeError(f"task registry {self.name!r} is shut down")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        self.started += 1
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            self.cancelled += 1
        elif task.exception() is not None:
            self.failed += 1
            logger.error("task %s failed: %r", task.get_name(), task.exception())
        else:
            self.finished += 1

    async def shutdown(self, timeout: float | None) -> int:
        """Wait for pending tasks (at most `timeout` s), cancel the rest; returns how many
        were cancelled. No new task may be spawned afterwards."""
        self.closed = True
        pending = set(self._tasks)
        if not pending:
            return 0
        started = time.monotonic()
        if self.await_on_shutdown and (timeout is None or timeout > 0):
            logger.info("Waiting for %d %s task(s), at most %s s", len(pending), self.name, timeout)
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if not pending:
            logger.info("All %s tasks done in %.2f s", self.name, time.monotonic() - started)
            return 0
        for task in pending:
            task.cancel()
        # Cancelled tasks get one chance to run their cleanup; bounded, never forever.
        await asyncio.wait(pending, timeout=1.0)
        # A task may finish its work rather than stop (a write begun in a thread cannot
        # be taken back): that one is done, not cut, or it would count twice.
        cut = [task for task in pending if not task.done() or task.cancelled()]
        if cut:
            logger.error(
                "Cancelled %d %s task(s) after %.2f s: their work is lost",
                len(cut),
                self.name,
                time.monotonic() - started,
            )
        if len(cut) < len(pending):
            logger.info(
                "%d %s task(s) finished their work when cancelled",
                len(pending) - len(cut),
                self.name,
            )
        return len(cut)
