"""A real `calc serve` process for tests, and the factory type of the start_calc fixture."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.support import Processes


@dataclass
class CalcProcess:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    processes: Processes

    def terminate(self) -> None:
        os.kill(self.process.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout)

    @property
    def log(self) -> str:
        return self.processes.output(self.process)

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=2).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


StartCalc = Callable[..., CalcProcess]
