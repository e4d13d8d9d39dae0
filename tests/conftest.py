"""Fixtures shared by every test package: child processes and a real InfluxDB on loopback."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.influx import InfluxServer, free_port
from tests.skipcheck import (  # noqa: F401  (hooks: pytest finds them by name here)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_sessionstart,
)
from tests.support import Processes

_db_counter = itertools.count()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def influx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One real influxd for the whole session; each test gets its own database."""
    server = InfluxServer(data_dir=tmp_path_factory.mktemp("influx"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def influx_db(influx_server: InfluxServer) -> Iterator[str]:
    """A fresh database name on the session's InfluxDB, dropped afterwards."""
    name = f"calc_test_{next(_db_counter)}"
    influx_server.create_database(name)
    try:
        yield name
    finally:
        influx_server.drop_database(name)
