"""A private InfluxDB 1.x server: temp data dir, loopback ports, started and stopped by us.

Used by the lab (the in-cluster `influxdb` service), by `make influxdb-local`, and by the
test fixtures. Stop and start may be repeated on the same data dir (the `influx-down`
fault), and `pause`/`resume` freeze it with SIGSTOP/SIGCONT (`influx-stall`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from lab.procs import DIE_WITH_PARENT

if TYPE_CHECKING:
    from lab.manifest import Container

# The in-cluster InfluxDB Service, in any of its DNS spellings, with the default port:
# the lab's own InfluxDB stands in for it (lab.experiment, lab.kube.nodes).
INFLUX_SERVICE = re.compile(r"(?<=//)influxdb(?:\.[A-Za-z0-9.-]+)?(?::8086)?(?=[/?]|$)")


def uses_influx(container: Container) -> bool:
    """The container writes to InfluxDB: an env value names the Service, or it sets
    INFLUXDB_BASE_URL."""
    return any(
        INFLUX_SERVICE.search(v.value or "") or v.name == "INFLUXDB_BASE_URL" for v in container.env
    )


CONFIG_TEMPLATE = """\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{data}/meta"
  logging-enabled = false

[data]
  dir = "{data}/data"
  wal-dir = "{data}/wal"
  query-log-enabled = false
  max-values-per-tag = {max_values_per_tag}

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  log-enabled = false
  pprof-enabled = false
  auth-enabled = {auth_enabled}

[continuous_queries]
  enabled = false
"""


class InfluxError(RuntimeError):
    """InfluxDB could not be started, or answered a query with an error."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class InfluxServer:
    """One influxd process on loopback; `url` is its HTTP base URL once started."""

    def __init__(
        self,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_values_per_tag: int = 100_000,
        log_path: Path | None = None,
        admin: tuple[str, str] | None = None,
        die_with_parent: bool = False,
        marks: Mapping[str, str] | None = None,
    ) -> None:
        self.binary = shutil.which("influxd")
        if self.binary is None:
            raise InfluxError(
                "influxd not found: install it with `apt-get install influxdb` (or `make setup`)"
            )
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="influx-")) if data_dir is None else data_dir
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.rpc_port = free_port(host)
        self.max_values_per_tag = max_values_per_tag
        self.log_path = log_path or self.data_dir / "influxd.log"
        self.process: subprocess.Popen[bytes] | None = None
        # With an admin (user, password), auth is on and every query uses it.
        self.admin = admin
        # Killed by the kernel when the thread that started it dies (lab.procs says how).
        self.die_with_parent = die_with_parent and shutil.which("setpriv") is not None
        # Its owner's mark in its environment (lab.leftovers), for the sweep after a SIGKILL.
        self.marks = dict(marks or {})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> None:
        """Start influxd and wait until /ping answers (deadline `timeout`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "influxd.conf"
        config.write_text(
            CONFIG_TEMPLATE.format(
                host=self.host,
                rpc_port=self.rpc_port,
                http_port=self.port,
                data=self.data_dir,
                max_values_per_tag=self.max_values_per_tag,
                auth_enabled="true" if self.admin else "false",
            )
        )
        with self.log_path.open("ab") as log:
            prefix = DIE_WITH_PARENT if self.die_with_parent else []
            self.process = subprocess.Popen(
                [*prefix, str(self.binary), "-config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.marks} if self.marks else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InfluxError(
                    f"influxd exited with code {self.process.returncode} at start; "
                    f"log: {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ping", timeout=0.5).status_code == 204:
                    self._ensure_admin()
                    return
            time.sleep(0.05)
        self.stop()
        raise InfluxError(f"influxd did not answer /ping within {timeout} s; log: {self.log_path}")

    def _ensure_admin(self) -> None:
        """InfluxDB lets the first admin be created without credentials."""
        if self.admin is None:
            return
        user, password = self.admin
        escaped = password.replace("\\", "\\\\").replace("'", "\\'")
        httpx.post(
            f"{self.url}/query",
            params={"q": f"CREATE USER \"{user}\" WITH PASSWORD '{escaped}' WITH ALL PRIVILEGES"},
            auth=self.admin,
            timeout=10,
        ).raise_for_status()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the data dir stays (see `close`)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove the data dir if we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> InfluxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- queries -------------------------------------------------------------------------

    def query(
        self, q: str, db: str | None = None, timeout: float = 10.0
    ) -> list[dict[str, object]]:
        """Run an InfluxQL statement; returns the `series` of the first result."""
        params = {"q": q}
        if db:
            params["db"] = db
        response = httpx.post(f"{self.url}/query", params=params, timeout=timeout, auth=self.admin)
        if response.status_code != 200:
            raise InfluxError(f"query {q!r} failed: {response.status_code} {response.text}")
        result = response.json()["results"][0]
        if "error" in result:
            raise InfluxError(f"query {q!r} failed: {result['error']}")
        series: list[dict[str, object]] = result.get("series", [])
        return series

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def field_values(self, db: str, measurement: str, field: str) -> list[object]:
        """Every value of one field in one measurement, in time order."""
        return series_values(self.query(f'SELECT "{field}" FROM "{measurement}"', db=db))


def series_values(series: list[dict[str, object]]) -> list[object]:
    """The first field's values of a query's series, in order (column 0 is the time)."""
    values: list[object] = []
    for s in series:
        rows = s.get("values", [])
        assert isinstance(rows, list)
        values.extend(row[1] for row in rows)
    return values


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.influx`: a local InfluxDB in the foreground (the Makefile's influxdb-local)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lab.influx",
        description="Run a local InfluxDB 1.x on loopback in the foreground until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8086, help="HTTP port (default 8086)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".influxdb"), help="data dir (default .influxdb)"
    )
    parser.add_argument("--db", default="calc", help="database to create (default calc)")
    args = parser.parse_args(argv)
    try:
        server = InfluxServer(data_dir=args.data_dir.resolve(), host=args.host, port=args.port)
        server.start()
    except InfluxError as exc:
        parser.exit(1, f"error: {exc}\n")
    stop = False

    def record(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)
    try:
        server.create_database(args.db)
        print(
            f"InfluxDB {server.url} (database {args.db!r}, data in {server.data_dir})", flush=True
        )
        while not stop and server.process is not None and server.process.poll() is None:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
