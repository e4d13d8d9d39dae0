"""lab.procs.terminate: SIGTERM, SIGKILL after a deadline, on real child processes."""

from __future__ import annotations

import asyncio
import sys

from lab import leftovers
from lab.procs import terminate

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"


async def _start(code: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 10) == b"ready\n"
    return process, leftovers.start_time(process.pid) or 0


def test_a_process_that_stops_on_sigterm_is_not_killed() -> None:
    async def scenario() -> None:
        process, started = await _start(SLEEPS)
        assert await terminate(process, started, "sleeper", 10) == []
        assert process.returncode == -15  # SIGTERM, not SIGKILL

    asyncio.run(scenario())


def test_one_that_ignores_sigterm_is_killed_at_the_deadline_and_said() -> None:
    async def scenario() -> None:
        process, started = await _start(IGNORES_SIGTERM)
        said = await terminate(process, started, "deaf", 0.5)
        assert said == [f"deaf (pid {process.pid}) killed after 0.5 s"]
        assert process.returncode == -9

    asyncio.run(scenario())


def test_a_process_that_is_not_the_one_started_gets_no_sigterm_and_none_is_none() -> None:
    """A start time that is not the process's (its PID reused by another) sends no
    SIGTERM; the deadline's SIGKILL goes to the child the lab holds, which is its own."""

    async def scenario() -> None:
        process, started = await _start(SLEEPS)
        said = await terminate(process, started + 1, "other", 0.3)
        assert process.returncode == -9 and said  # killed, never terminated
        assert await terminate(None, 0, "none", 1) == []
        assert await terminate(process, started, "gone", 1) == []  # already exited

    asyncio.run(scenario())
