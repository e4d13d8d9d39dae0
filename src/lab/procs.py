"""Every process the lab starts goes through one registry, so clean-up can find them all.

Each child runs in its own session (its own process group), which lets the lab signal a
pod's main process alone (SIGTERM) or the whole group (SIGKILL), and keeps Ctrl-C on the
terminal from reaching the children: the lab decides when and how they stop.

Each child also carries its owner's mark in its environment (lab.leftovers.marks), which
its own children inherit: after a SIGKILL of the lab, its watchdog and the next start
find every process it left by that mark, never by a PID alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from lab import leftovers

# A container's main process is PID 1, which the kernel shields from every signal it has
# no handler for. Starting the main process with SIGTERM ignored gives the same outcome: a
# shell that does not exec its child stays deaf to SIGTERM, while an app that installs a
# handler (uvicorn does) still gets it. `trap "" TERM` sets SIG_IGN, which survives exec;
# a shell does it rather than a preexec_fn, which is not safe in a threaded parent.
_PID1 = ["/bin/sh", "-c", 'trap "" TERM; exec "$0" "$@"']


# util-linux's setpriv sets PR_SET_PDEATHSIG and execs the child: the kernel SIGKILLs it
# when the thread that started it dies, also by SIGKILL, where no clean-up code runs.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


async def spawn_logged(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, append: bool = True
) -> tuple[asyncio.subprocess.Process, int]:
    """A daemon in a session of its own, stdin closed, stdout and stderr to `log` (appended
    to, or a new file), with its start time (lab.leftovers: 0 if it is gone already)."""
    with log.open("ab" if append else "wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    # Our child is not reaped before we wait for it, so /proc has it (a zombie at worst,
    # which has no start time: it is dead already, and 0 matches nothing).
    return process, leftovers.start_time(process.pid) or 0


async def terminate(
    process: asyncio.subprocess.Process | None, started: int, name: str, timeout: float
) -> list[str]:
    """SIGTERM `process` (only if it is still the one started at `started`, by its start
    time: lab.leftovers.same_process), SIGKILL it after `timeout`. What was forced, one
    line (empty when it stopped in time or was not running)."""
    if process is None or process.returncode is not None:
        return []
    if leftovers.same_process(process.pid, started):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return [f"{name} (pid {process.pid}) killed after {timeout:g} s"]
    return []


class Registry:
    """Starts children in new sessions, logs their PIDs, and kills leftovers' groups.
    With `die_with_parent`, each child is also killed by the kernel when the lab dies
    (start it from the event loop's thread: the signal follows the thread that forked)."""

    def __init__(self, pid_log: Path | None = None, die_with_parent: bool = False) -> None:
        self.die_with_parent = die_with_parent and shutil.which("setpriv") is not None
        self.pid_log = pid_log
        self.marks = leftovers.marks(pid_log.parent if pid_log is not None else None)
        self.children: dict[int, str] = {}  # pid (= pgid) -> name
        self.processes: list[asyncio.subprocess.Process] = []

    def record(self, pid: int, name: str) -> None:
        self.children[pid] = name
        if self.pid_log is not None:
            with self.pid_log.open("a") as f:
                f.write(f"{pid} {name}\n")

    async def start(
        self,
        argv: Sequence[str],
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        pid1: bool = False,
        stdout_pipe: bool = False,
    ) -> asyncio.subprocess.Process:
        out: IO[bytes] | int
        out = asyncio.subprocess.PIPE if stdout_pipe else asyncio.subprocess.DEVNULL
        log_file = log.open("ab") if log is not None else None
        try:
            command = _PID1 + list(argv) if pid1 else list(argv)
            if self.die_with_parent:
                command = DIE_WITH_PARENT + command
            process = await asyncio.create_subprocess_exec(
                *command,
                env={**(env if env is not None else os.environ), **self.marks},
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file if log_file is not None else out,
                stderr=log_file if log_file is not None else asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_file is not None:
                log_file.close()
        self.processes.append(process)
        self.record(process.pid, name)
        return process

    @staticmethod
    def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def alive(self) -> list[int]:
        alive = []
        for pid in self.children:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                continue
            alive.append(pid)
        return alive

    async def kill_all(self, timeout: float = 5.0) -> None:
        """The forced path: SIGKILL every group still there, then reap the leaders."""
        for pid in self.alive():
            self.kill_group(pid, signal.SIGCONT)
            self.kill_group(pid, signal.SIGKILL)
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(TimeoutError, ProcessLookupError):
                    await asyncio.wait_for(process.wait(), timeout)
