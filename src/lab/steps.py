"""A run as a list of steps, each with its own undo: one way out for every ending.

`await steps.do(name, start, undo)` runs `start`; from the moment it begins, `undo` is
owed. On the way out the undos of the steps done run in reverse order, each under its
own deadline, whatever ended the run: its normal end, an error, a first SIGINT/SIGTERM
(graceful) or a second one (forced). Graceful and forced are the same list walked with
different deadlines: after `force()` every undo gets its `forced` deadline (0 skips it),
also the one running at that moment. An undo that raises or outlives its deadline is
said (`said(step, what)`) and the walk goes on; a step's `kill`, if it has one, then
ends at once what its undo did not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from lab.waits import stop_task

T = TypeVar("T")

CANCEL_WAIT = 5.0  # seconds for an undo cut at its deadline to finish its cancellation


@dataclass(frozen=True)
class Step:
    name: str
    undo: Callable[[], Awaitable[object]]
    graceful: float  # seconds its undo may take on a graceful way out
    forced: float  # ... after force(); 0 skips it
    kill: Callable[[], object] | None  # ends at once what an unfinished undo left


def _silent(step: str, what: str) -> None:
    pass


class Steps:
    def __init__(self, said: Callable[[str, str], object] = _silent) -> None:
        self.done: list[Step] = []
        self.said = said
        self._forced = asyncio.Event()

    async def do(
        self,
        name: str,
        start: Callable[[], Awaitable[T]],
        undo: Callable[[], Awaitable[object]],
        *,
        deadline: float = 30.0,
        forced: float | None = None,
        kill: Callable[[], object] | None = None,
    ) -> T:
        """Run `start` and return what it returns. Its undo is owed from before it
        begins: a start that fails or is cancelled half-way is undone too, so an undo
        must cope with whatever part of its start was done. `deadline` bounds the undo;
        `forced` (default: the same) after force(), where 0 skips it."""
        self.done.append(Step(name, undo, deadline, deadline if forced is None else forced, kill))
        return await start()

    def mark(self) -> int:
        """How many steps are done: `undo(down_to=mark)` keeps these."""
        return len(self.done)

    def force(self) -> None:
        """From now on every undo, the running one too, gets its forced deadline."""
        self._forced.set()

    @property
    def forced(self) -> bool:
        return self._forced.is_set()

    async def undo(self, down_to: int = 0) -> None:
        """Undo the steps done after the first `down_to`, the last one first. A step
        leaves the list once its undo ended or its deadline passed; a walk cancelled
        meanwhile leaves it for the next walk."""
        while len(self.done) > down_to:
            step = self.done[-1]
            await self._undo(step)
            self.done.pop()

    async def _undo(self, step: Step) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.forced and step.forced <= 0:
            self._kill(step)
            return
        task = asyncio.ensure_future(step.undo())
        forcing = asyncio.create_task(self._forced.wait(), name=f"force {step.name}")
        finished = False
        try:
            while not task.done():
                limit = step.forced if self.forced else step.graceful
                left = started + limit - loop.time()
                if left <= 0:
                    self.said(step.name, f"undo not done within {limit:g} s: cut")
                    break
                waiting = {task} if forcing.done() else {task, forcing}
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and not task.cancelled():
                finished = task.exception() is None
                if not finished:
                    self.said(step.name, f"undo failed: {task.exception()!r}")
        finally:
            forcing.cancel()
            await asyncio.gather(forcing, return_exceptions=True)
            if not task.done():
                await stop_task(task, CANCEL_WAIT)
            if not finished:
                self._kill(step)

    def _kill(self, step: Step) -> None:
        if step.kill is None:
            return
        try:
            step.kill()
        except Exception as exc:  # said: the rest of the walk runs anyway
            self.said(step.name, f"kill failed: {exc!r}")
