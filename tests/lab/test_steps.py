"""lab.steps: a run's steps and their undos, walked in reverse on every way out, with
real asyncio (tasks, cancellation, deadlines)."""

from __future__ import annotations

import asyncio
import time

import pytest

from lab.steps import Steps


class Log:
    """What the steps did, in order, and what the walk said."""

    def __init__(self) -> None:
        self.did: list[str] = []
        self.said: list[tuple[str, str]] = []

    def say(self, step: str, what: str) -> None:
        self.said.append((step, what))

    def start(self, name: str):  # type: ignore[no-untyped-def]
        async def start() -> str:
            self.did.append(f"start {name}")
            return name

        return start

    def undo(self, name: str):  # type: ignore[no-untyped-def]
        async def undo() -> None:
            self.did.append(f"undo {name}")

        return undo


def test_undos_run_in_reverse_and_down_to_a_mark() -> None:
    """Three steps done (`do` returns what each start returned); `undo(down_to=mark)`
    undoes only those after the mark, the last first; `undo()` the rest. Each undo runs
    once."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)
        assert await steps.do("a", log.start("a"), log.undo("a")) == "a"
        kept = steps.mark()
        await steps.do("b", log.start("b"), log.undo("b"))
        await steps.do("c", log.start("c"), log.undo("c"))
        await steps.undo(down_to=kept)
        assert log.did[3:] == ["undo c", "undo b"]
        await steps.undo()
        await steps.undo()
        assert log.did[3:] == ["undo c", "undo b", "undo a"] and log.said == []

    asyncio.run(main())


def test_an_undo_that_raises_is_said_and_the_walk_goes_on() -> None:
    """1. The middle step's undo raises. 2. The walk says so and still undoes the first
    step; the failing step's `kill` runs (its undo did not finish)."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)

        async def broken() -> None:
            raise RuntimeError("engine away")

        await steps.do("a", log.start("a"), log.undo("a"))
        await steps.do("b", log.start("b"), broken, kill=lambda: log.did.append("kill b"))
        await steps.undo()
        assert log.did[2:] == ["kill b", "undo a"]
        assert log.said == [("b", "undo failed: RuntimeError('engine away')")]

    asyncio.run(main())


def test_an_undo_that_hangs_is_cut_at_its_deadline() -> None:
    """1. An undo that would take an hour, with a 0.3 s deadline. 2. The walk cuts it
    (the undo sees its cancellation), says so, runs its kill, and undoes the step before
    it, within about the deadline."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)

        async def hangs() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                log.did.append("hang cancelled")
                raise

        await steps.do("a", log.start("a"), log.undo("a"))
        await steps.do(
            "b", log.start("b"), hangs, deadline=0.3, kill=lambda: log.did.append("kill b")
        )
        began = time.monotonic()
        await steps.undo()
        took = time.monotonic() - began
        assert log.did[2:] == ["hang cancelled", "kill b", "undo a"]
        assert log.said == [("b", "undo not done within 0.3 s: cut")]
        assert 0.3 <= took < 3, took

    asyncio.run(main())


def test_a_second_signal_during_the_undos_walks_on_with_the_forced_deadlines() -> None:
    """A graceful walk: the last step's undo (deadline 60 s, forced 0.2 s) waits. 1. 0.3 s
    into it, force() (what a second SIGINT does). 2. That undo is cut at once, the next
    one with forced deadline 0 is skipped (its kill runs instead), the first one still
    runs: the walk ends within seconds, not a minute."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)
        waiting = asyncio.Event()

        async def slow_pods() -> None:
            waiting.set()
            await asyncio.sleep(60)

        await steps.do("parts", log.start("parts"), log.undo("parts"))
        await steps.do(
            "load",
            log.start("load"),
            log.undo("load"),
            forced=0,
            kill=lambda: log.did.append("kill load"),
        )
        await steps.do("pods", log.start("pods"), slow_pods, deadline=60, forced=0.2)
        walk = asyncio.create_task(steps.undo())
        await asyncio.wait_for(waiting.wait(), 5)
        await asyncio.sleep(0.3)
        began = time.monotonic()
        steps.force()
        await asyncio.wait_for(walk, 10)
        assert time.monotonic() - began < 3
        assert log.did[3:] == ["kill load", "undo parts"]
        assert log.said == [("pods", "undo not done within 0.2 s: cut")]
        assert steps.forced and steps.done == []

    asyncio.run(main())


def test_a_step_that_fails_half_way_is_undone_too() -> None:
    """1. A step's start does half its work and raises. 2. `do` raises that error, and
    the walk undoes the failed step (its undo copes with the half) and the one before."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)
        made: list[str] = []

        async def half() -> None:
            made.append("network")
            raise OSError("no more subnets")

        async def remove() -> None:
            log.did.append(f"removed {made}")

        await steps.do("a", log.start("a"), log.undo("a"))
        with pytest.raises(OSError, match="no more subnets"):
            await steps.do("b", half, remove)
        await steps.undo()
        assert log.did[1:] == ["removed ['network']", "undo a"]

    asyncio.run(main())


def test_a_walk_cancelled_mid_undo_leaves_that_step_for_the_next_walk() -> None:
    """1. A graceful walk is cancelled while an undo waits (the run's task cancelled).
    2. The undo is cancelled with it and its step stays owed. 3. The next walk, forced,
    takes it (forced deadline 0: skipped, its kill runs) and the steps before it."""

    async def main() -> None:
        log = Log()
        steps = Steps(log.say)
        waiting = asyncio.Event()

        async def slow() -> None:
            waiting.set()
            await asyncio.sleep(60)

        await steps.do("a", log.start("a"), log.undo("a"))
        await steps.do("b", log.start("b"), slow, forced=0, kill=lambda: log.did.append("kill b"))
        walk = asyncio.create_task(steps.undo())
        await asyncio.wait_for(waiting.wait(), 5)
        walk.cancel()
        with pytest.raises(asyncio.CancelledError):
            await walk
        assert [s.name for s in steps.done] == ["a", "b"]
        steps.force()
        await steps.undo()
        assert log.did[2:] == ["kill b", "kill b", "undo a"]

    asyncio.run(main())
