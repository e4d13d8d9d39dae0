"""v10's manifest runs calc with a read-only root filesystem and an emptyDir on /tmp; the
spool then lives in calc's default spool directory under /tmp. Shown without Docker:
calc runs in a user and mount namespace of its own (`unshare -rm`) whose root is
remounted read-only, with a fresh tmpfs on /tmp standing in for the emptyDir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.influx import InfluxServer, free_port
from tests.calc.test_oplog import logged_ids, send_sums
from tests.calc_support import CalcProcess
from tests.support import REPO, VENV_BIN, Processes, http_ok, wait_until

# Runs "$@" with / read-only and an empty /tmp, writable as the v10 pod's container sees
# it ($2 rw) or read-only (ro: a pod without the emptyDir). $1 names a directory under /tmp
# to keep visible (the checkout or its venv when they live there, as a CI clone may), or
# is empty.
READ_ONLY_ROOT = (
    'keep="$1"; tmp_mode="$2"; shift 2; '
    'if [ -n "$keep" ]; then mount --rbind /tmp /mnt || exit 1; fi; '
    "mount -t tmpfs tmpfs /tmp || exit 1; "
    'if [ -n "$keep" ]; then mkdir -p "/tmp/$keep" && mount --rbind "/mnt/$keep" "/tmp/$keep" '
    "|| exit 1; fi; "
    'mount -o remount,bind,ro / && mount -o "remount,$tmp_mode" /tmp && exec "$@"'
)


def _kept_under_tmp() -> str:
    """The top directory under /tmp holding the checkout or the venv, if either is there:
    the fresh /tmp must not hide the code under test."""
    for path in (REPO, VENV_BIN):
        resolved = path.resolve()
        if resolved.is_relative_to("/tmp") and resolved != Path("/tmp"):
            return resolved.relative_to("/tmp").parts[0]
    return ""


def _unshare() -> str:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare not installed (util-linux; `make test-deps`)")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", READ_ONLY_ROOT, "sh", _kept_under_tmp(), "rw", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    return unshare


def _mounts(pid: int) -> dict[str, str]:
    """Mount point -> its options, as the process sees them (its mount namespace)."""
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5]
    return mounts


def test_v10_spools_under_tmp_with_a_read_only_root(
    processes: Processes, influx_server: InfluxServer, influx_db: str
) -> None:
    """1. calc v10 (no --spool-dir, no TMPDIR) in a namespace where / is read-only and
    /tmp an empty tmpfs, writing to a real InfluxDB every 30 s (the default).
    2. It starts and says it spools in /tmp/calc-spool/<pod>-<port>.
    3. 20 sums are answered; the spool in its /tmp holds their points until written.
    4. SIGTERM: it flushes, exits 0, all 20 points are in InfluxDB, and nothing in its
    log says it met a read-only file system."""
    unshare = _unshare()
    port = free_port()
    serve = [str(VENV_BIN / "calc"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = processes.start(
        [unshare, "-rm", "sh", "-c", READ_ONLY_ROOT, "sh", _kept_under_tmp(), "rw", *serve],
        env={
            "TMPDIR": "",
            "CALC_POD": "ro-pod",
            "CALC_QUIET_PERIOD": "0",
            "INFLUXDB_BASE_URL": influx_server.url,
            "INFLUXDB_DB": influx_db,
        },
        name="calc-ro",
    )
    calc = CalcProcess(process, f"http://127.0.0.1:{port}", port, processes)
    wait_until(lambda: process.poll() is not None or http_ok(f"{calc.url}/health"), 15, what="calc")
    assert process.poll() is None, calc.log
    mounts = _mounts(process.pid)
    assert mounts["/"].split(",")[0] == "ro" and mounts["/tmp"].split(",")[0] == "rw", mounts
    spool = f"/tmp/calc-spool/ro-pod-{port}"
    assert f"Spooling unwritten operations in {spool}" in calc.log

    ids = send_sums(calc, "ro")
    in_its_tmp = Path(f"/proc/{process.pid}/root{spool}")
    spooled = "".join(p.read_text() for p in in_its_tmp.iterdir() if p.is_file())
    assert all(f'id="{rid}"' in spooled for rid in ids), spooled[:2000]

    calc.terminate()
    assert calc.wait_exit(15) == 0, calc.log
    assert sorted(logged_ids(influx_server, influx_db)) == sorted(ids)
    assert "read-only" not in calc.log.lower(), calc.log


def test_without_a_writable_tmp_the_start_names_the_spool_directory(tmp_path: Path) -> None:
    """1. calc v10 (no --spool-dir) where / and /tmp are both read-only: a pod without
    the /tmp emptyDir. 2. It exits 1 at once: "Cannot start: cannot use spool directory
    /tmp/calc-spool/...: Read-only file system", no traceback (the default directory is
    not found by probing for a writable one, which raises)."""
    unshare = _unshare()
    serve = [str(VENV_BIN / "calc"), "serve", "--host", "127.0.0.1", "--port", "0"]
    done = subprocess.run(
        [unshare, "-rm", "sh", "-c", READ_ONLY_ROOT, "sh", _kept_under_tmp(), "ro", *serve],
        env={"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "CALC_POD": "ro-pod"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "Cannot start: cannot use spool directory /tmp/calc-spool/ro-pod-0" in done.stderr
    assert "Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr
