"""Fixtures for the calc tests: real `calc serve` processes on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.influx import free_port
from tests.calc_support import CalcProcess, StartCalc
from tests.support import VENV_BIN, Processes, http_ok, wait_until


@pytest.fixture
def start_calc(processes: Processes, tmp_path: Path) -> StartCalc:
    """Start `calc serve --profile P` with extra CALC_* env; waits until /health answers."""

    def start(
        profile: str = "v10", wait: bool = True, port: int | None = None, **env: str
    ) -> CalcProcess:
        port = port or free_port()
        full_env = {
            "CALC_OPLOG_FILE": str(tmp_path / "operations.lp"),
            "CALC_SPOOL_DIR": str(tmp_path / "spool"),
            "CALC_POD": "test-pod",
            **env,
        }
        full_env = {k: v for k, v in full_env.items() if v is not None}
        process = processes.start(
            [
                str(VENV_BIN / "calc"),
                "serve",
                "--profile",
                profile,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=full_env,
            name=f"calc-{profile}",
        )
        calc = CalcProcess(process, f"http://127.0.0.1:{port}", port, processes)
        if wait:
            wait_until(
                lambda: process.poll() is not None or http_ok(f"{calc.url}/health"),
                timeout=15,
                what="calc to answer /health",
            )
            assert process.poll() is None, f"calc exited at start:\n{calc.log}"
        return calc

    return start
