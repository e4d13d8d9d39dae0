"""Helpers shared by the tests: waiting on state with a deadline, and child processes
that are always cleaned up (their whole process group), also when a test fails.

Import as `from tests.support import ...` (tests is a package, so mypy sees one module).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def wait_until(
    predicate: Callable[[], T | None], timeout: float, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what or predicate}: {last_error}"
    )


class Processes:
    """Starts child processes in their own sessions and kills their groups at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        name: str = "proc",
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, **(env or {})}
        log = (self.log_dir / f"{name}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            list(args),
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
        )
        log.close()
        process.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    @staticmethod
    def output(process: subprocess.Popen[bytes]) -> str:
        return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        for process in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGCONT)
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            else:
                # The leader is gone; its group may not be.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False
