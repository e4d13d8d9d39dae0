"""The calc command line: profiles table, and clear errors for bad input before serving."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import VENV_BIN


def calc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "calc"), *args],
        env={"PATH": str(VENV_BIN), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_profiles_table_lists_every_version_and_its_switches() -> None:
    result = calc("profiles")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["profile", "drain", "drain_timeout"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == [f"v{i}" for i in range(1, 11)]
    assert rows["v4"].split()[1] == "off"
    assert "batch-graceful" in rows["v9"] and "batch-graceful" in rows["v10"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "abc"], {}, "option --port='abc'"),
        (["--drain", "maybe"], {}, "expected on/off"),
        (["--profile", "v11"], {}, "unknown profile 'v11'"),
        ([], {"CALC_PROFILE": "v0"}, "unknown profile 'v0'"),
        ([], {"CALC_QUIET_PERIOD": "soon"}, "environment variable CALC_QUIET_PERIOD='soon'"),
        ([], {"CALC_OPLOG": "sometimes"}, "expected one of off, task, task-graceful"),
        (["--quiet-period", "-1"], {}, "--quiet-period must not be negative"),
        (["--port", "70000"], {}, "port 70000 is not in 0..65535"),
        (["--batch-size", "0"], {}, "--batch-size must be at least 1"),
        (["--slow-math", "nan"], {}, "must be a finite number"),
        ([], {"INFLUXDB_BASE_URL": "influxdb:8086"}, "must start with http:// or https://"),
    ],
)
def test_bad_switches_fail_before_serving(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """1. `calc serve` with one bad switch (option or env). 2. Exit 2 at once, naming it."""
    result = calc("serve", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Started server" not in result.stderr


def test_port_in_use_fails_with_a_clear_error() -> None:
    """1. Something already listens on the port. 2. `calc serve` exits non-zero, saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = calc("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode != 0
    assert "address already in use" in result.stderr.lower()


def test_a_spool_directory_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    """1. `calc serve` (v10, spool on) with --spool-dir under a plain file. 2. It exits 1
    at once with "Cannot start: cannot use spool directory ...: Not a directory", no
    traceback, and never listens."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = calc(
        "serve", "--host", "127.0.0.1", "--port", "0", "--spool-dir", str(blocker / "spool")
    )
    assert result.returncode == 1, result.stderr
    assert f"Cannot start: cannot use spool directory {blocker / 'spool'}" in result.stderr
    assert "Not a directory" in result.stderr
    assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr
