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

# Tests that must have the machine to themselves: whole modules whose tests bound how long
# a shutdown phase, a flush or a signal's effect takes with margins of a second or less
# (listed here), and tests or modules marked `alone` that watch machine-wide state another
# test's lab would change (every lab's start sweeps a dead lab's leftovers). `make pytest`
# runs the rest side by side (pytest-xdist, `-m "not alone"`) and then these by themselves
# (`-m alone`): their margins measure the code, not a dozen lab experiments beside them.
ALONE_MODULES = frozenset(
    {
        "tests/calc/test_app_in_process.py",
        "tests/calc/test_service_in_process.py",
        "tests/calc/test_shutdown.py",
        "tests/calc/test_shutdown_limits.py",
        "tests/graceful/test_bare_asgi.py",
        "tests/graceful/test_batcher_edges.py",
        "tests/graceful/test_cli_in_process.py",
        "tests/graceful/test_gunicorn.py",
        "tests/graceful/test_gunicorn_in_process.py",
        "tests/graceful/test_hypercorn.py",
        "tests/graceful/test_hypercorn_http2.py",
        "tests/graceful/test_hypercorn_in_process.py",
        "tests/graceful/test_registry_and_loss_log.py",
        "tests/graceful/test_serve_cli.py",
        "tests/graceful/test_server_in_process.py",
        "tests/graceful/test_signals.py",
        "tests/graceful/test_startup_signals.py",
        "tests/graceful/test_tasks_and_batcher.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent
    for item in items:
        if item.path.relative_to(root).as_posix() in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)


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
