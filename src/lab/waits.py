"""Waiting with deadlines, safe against cancellation.

Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives just as the
awaited thing finishes or times out; a loop built on it may then never stop, and whoever
waits for that loop waits forever. These helpers use `asyncio.timeout` instead, and
stopping a task never waits without a deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set, at most `timeout` seconds; True if it is set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


async def stop_task(task: asyncio.Task[Any] | None, timeout: float = 5.0) -> bool:
    """Cancel `task` and wait for it at most `timeout` seconds; True if it ended."""
    if task is None:
        return True
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: an error was already reported where it happened
    return task.done()
