"""Request classification and operation accounting, from real k6 runs against the tiny
app and a real InfluxDB."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from lab.accounting import account, classify, read_requests
from lab.influx import InfluxServer, free_port
from tests.lab.labkit import TINYAPP
from tests.support import VENV_BIN, Processes, wait_until

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k6" / "load-test.js"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tinyapp(processes: Processes, *args: str) -> int:
    port = free_port()
    processes.start(
        [sys.executable, str(TINYAPP), "--port", str(port), *args],
        env={"TINY_HOST": "127.0.0.1"},
        name="tinyapp",
    )
    wait_until(lambda: _listening(port), 10, what=f"tinyapp on {port}")
    return port


def _k6(
    processes: Processes, tmp_path: Path, name: str, port: int, **env: str
) -> subprocess.Popen[bytes]:
    options = {"CALC_URL": f"http://127.0.0.1:{port}", "VUS": "1", "DURATION": "1s", **env}
    argv = [str(VENV_BIN / "k6"), "run", "--no-usage-report", "--quiet"]
    argv += ["--out", f"csv={tmp_path / (name + '.csv')}"]
    for key, value in options.items():
        argv += ["-e", f"{key}={value}"]
    return processes.start(
        [*argv, str(SCRIPT)], env={"K6_CSV_TIME_FORMAT": "unix_milli"}, name=f"k6-{name}"
    )


def test_classify_by_status_and_k6_error_code() -> None:
    assert classify(200, "") == "ok"
    assert classify(503, "1503") == "http_503"
    assert classify(0, "1212") == "refused"
    assert classify(0, "1220") == "reset"
    assert classify(0, "1000") == "eof"
    assert classify(0, "1050") == "timeout"
    assert classify(0, "1211") == "timeout"  # a dial timeout: a dead node's address
    assert classify(0, "1210") == "error_1210"


def test_each_failure_kind_is_classified(processes: Processes, tmp_path: Path) -> None:
    """Five targets: an app that resets the connection (RST), one that closes it without
    an answer (EOF), one that answers 503, one that never answers (300 ms k6 timeout), and
    a port nothing listens on.
    1. k6 runs the project's script against each for 1 s (1 VU).
    2. Every request of each run lands in the one expected kind."""
    targets = {
        "reset": _tinyapp(processes, "--mode", "reset"),
        "eof": _tinyapp(processes, "--mode", "eof"),
        "http_503": _tinyapp(processes, "--status", "503"),
        "timeout": _tinyapp(processes, "--mode", "hang"),
        "refused": free_port(),
    }
    runs = {
        kind: _k6(processes, tmp_path, kind, port, TIMEOUT="300ms", RUN_ID=f"run{kind}")
        for kind, port in targets.items()
    }
    # What k6 records for each kind: a status, or no status and k6's error code.
    recorded = {
        "reset": (0, "1220"),
        "eof": (0, "1000"),
        "http_503": (503, "1503"),
        "timeout": (0, "1050"),
        "refused": (0, "1212"),
    }
    for kind, process in runs.items():
        assert process.wait(60) == 0, f"{kind}: k6 failed: {Processes.output(process)}"
        requests = read_requests(tmp_path / f"{kind}.csv")
        assert requests, f"{kind}: no requests recorded; {Processes.output(process)}"
        kinds = {r.kind for r in requests}
        assert kinds == {kind}, f"{kind}: got {kinds}, e.g. {requests[0]}"
        assert {(r.status, r.error_code) for r in requests} == {recorded[kind]}, requests[0]
        # One VU, its iterations in order: every request's id read back from the CSV.
        assert sorted(r.rid for r in requests) == sorted(
            f"run{kind}-1-{i}" for i in range(len(requests))
        )


def test_lost_and_orphan_operations_are_exact(
    processes: Processes, tmp_path: Path, influx_server: InfluxServer, influx_db: str
) -> None:
    """The tiny app logs one InfluxDB point per sum, except: request `acct-1-2` answers 200
    without a point (lost), request `acct-1-4` writes its point and answers 500 (orphan).
    1. k6 sends requests with ids acct-1-0, acct-1-1, ... for 1 s.
    2. Accounting against the real InfluxDB finds exactly acct-1-2 lost and acct-1-4
       orphaned; every other 200 has its point."""
    port = _tinyapp(
        processes,
        "--influx",
        influx_server.url,
        "--db",
        influx_db,
        "--drop-id",
        "acct-1-2",
        "--fail-id=-1-4",  # the suffix form, as `lab run` tests use it
    )
    k6 = _k6(processes, tmp_path, "acct", port, RUN_ID="acct")
    assert k6.wait(60) == 0, Processes.output(k6)  # a k6 that failed part-way counts nothing
    requests = read_requests(tmp_path / "acct.csv")
    assert len(requests) >= 6, "too few iterations to include both special ids"
    ids = influx_server.field_values(influx_db, "operation", "id")
    result = account(requests, ids)
    assert result.lost == ["acct-1-2"]
    assert result.orphans == ["acct-1-4"]
    assert result.failed == {"http_500": 1}
    assert result.ok == len(requests) - 1
    assert result.points == len(requests) - 1
    assert result.unmatched_points == [] and result.duplicate_points == 0


def test_throughput_runs_can_leave_the_id_tag_out(processes: Processes, tmp_path: Path) -> None:
    """1. k6 runs the project's script for 1 s against the tiny app, once as the lab runs
    it and once with TAG_IDS=0 (as the throughput benches do). 2. The lab's run tags each
    request with its id (rid=...); the other has no such tag, one time series in all."""
    port = _tinyapp(processes)
    tagged = _k6(processes, tmp_path, "tagged", port, RUN_ID="tag")
    assert tagged.wait(60) == 0, Processes.output(tagged)
    plain = _k6(processes, tmp_path, "plain", port, RUN_ID="tag", TAG_IDS="0")
    assert plain.wait(60) == 0, Processes.output(plain)
    assert "rid=tag-1-0" in (tmp_path / "tagged.csv").read_text()
    untagged = (tmp_path / "plain.csv").read_text()
    assert "http_reqs" in untagged and "rid=" not in untagged
