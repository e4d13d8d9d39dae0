"""calc's operation log when things go wrong: a full spool disk, a full buffer, two
processes sharing a pod name, bad pod names."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from calc.config import ConfigError, resolve
from calc.points import NanoClock, PointFormatter, escape_tag
from lab.influx import InfluxServer
from tests.calc_support import CalcProcess, StartCalc
from tests.fake_influx import FakeInflux
from tests.support import VENV_BIN, wait_until


def lost_by_reason(calc: CalcProcess) -> dict[str, float]:
    text = httpx.get(f"{calc.url}/metrics", timeout=2).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'calc_operations_lost_by_reason_total\{reason="(\w+)"\} (\S+)', text)
    }


def post_sum(calc: CalcProcess, rid: str) -> httpx.Response:
    return httpx.post(
        f"{calc.url}/sum", json={"numbers": [1, 2]}, headers={"x-request-id": rid}, timeout=10
    )


def test_a_point_the_spool_cannot_store_is_refused_with_503(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """Case 6 end to end: 1. v10 writing to the line-protocol file, spool on. 2. The
    spool's next segment is a link to /dev/full (the kernel answers ENOSPC). 3. A sum
    gets 503 and a JSON error naming the cause; /metrics counts it refused. 4. The next
    sum goes to a fresh segment and gets 200. 5. After SIGTERM the file holds the
    accepted id only: the refused one was never written, the accepted one not lost."""
    calc = start_calc("v10", CALC_QUIET_PERIOD="0", CALC_SLOW_MATH="0")
    spool = tmp_path / "spool" / f"test-pod-{calc.port}"
    (spool / "000000000001.spool").symlink_to("/dev/full")
    refused = post_sum(calc, "refused-1")
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/json"
    assert "No space left on device" in refused.json()["error"]
    assert calc.metric("calc_operations_refused_total") == 1
    assert calc.metric("calc_operations_pending") == 0
    assert post_sum(calc, "accepted-1").status_code == 200
    calc.terminate()
    assert calc.wait_exit(15) == 0
    written = (tmp_path / "operations.lp").read_text()
    assert 'id="accepted-1"' in written
    assert "refused-1" not in written
    assert "Refused 1 operations (not_accepted: the journal cannot store them" in calc.log
    assert "1 operations recorded, 1 written, 0 lost" in calc.log


def test_buffer_full_drops_are_logged_and_counted_by_reason(start_calc: StartCalc) -> None:
    """Case 5 end to end: 1. v10 with batches of 2 and a buffer of 4, InfluxDB refusing
    connections. 2. 10 sums, all answered 200. 3. Within a second a log line gives the
    buffer-full total (6) and /metrics has it under its own reason. 4. SIGTERM: the 4
    held points are left in the spool, and the log says they are lost unless this pod's
    next container starts."""
    with FakeInflux() as influx:
        influx.refuse()
        calc = start_calc(
            "v10",
            INFLUXDB_BASE_URL=influx.url,
            CALC_BATCH_SIZE="2",
            CALC_MAX_BUFFER="4",
            CALC_QUIET_PERIOD="0",
            CALC_SLOW_MATH="0",
            CALC_FLUSH_TIMEOUT="0.5",
        )
        for i in range(10):
            assert post_sum(calc, f"full-{i}").status_code == 200
        wait_until(lambda: "6 buffer_full so far" in calc.log, 2, what="the buffer-full log line")
        assert lost_by_reason(calc)["buffer_full"] == 6
        assert calc.metric("calc_operations_lost_total") == 6
        calc.terminate()
        assert calc.wait_exit(15) == 0
    assert "Left 4 operations in the spool, lost unless this pod's next container starts" in (
        calc.log
    )


def test_two_processes_sharing_a_pod_name_never_overwrite_each_other(
    influx_server: InfluxServer, influx_db: str
) -> None:
    """Also: 1. Two formatters with the same pod name (two ports of one pod), whose
    clocks give the very same nanosecond. 2. One point each, written to a real
    InfluxDB. 3. Both are stored: the port tag keeps their series apart."""
    same_instant = 1_790_000_000_000_000_000
    first = PointFormatter("shared-pod", 4000, NanoClock(lambda: same_instant))
    second = PointFormatter("shared-pod", 4001, NanoClock(lambda: same_instant))
    lines = [first.sum_point("from-4000", 1, 1.0), second.sum_point("from-4001", 1, 1.0)]
    response = httpx.post(
        f"{influx_server.url}/write", params={"db": influx_db}, content="\n".join(lines)
    )
    assert response.status_code == 204, response.text
    ids = sorted(str(v) for v in influx_server.field_values(influx_db, "operation", "id"))
    assert ids == ["from-4000", "from-4001"]


def test_newlines_never_reach_the_line_protocol() -> None:
    """Also: a tag value or request id with a newline would split a point in two (and a
    spool line): it is refused with a clear error, never written."""
    with pytest.raises(ValueError, match="newline"):
        escape_tag("pod\nevil,name=x")
    with pytest.raises(ValueError, match="newline"):
        PointFormatter("pod-a").sum_point("id\r\nx", 1, 1.0)
    with pytest.raises(ConfigError, match="control characters"):
        resolve("v10", {}, {"pod": "pod\nname"})


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--pod", ""], {}),
        (["--pod", "   "], {}),
        ([], {"CALC_POD": "  "}),
    ],
)
def test_an_empty_pod_name_is_refused_at_start(args: list[str], env: dict[str, str]) -> None:
    """Also: 1. `calc serve` with an empty pod name (option or environment). 2. It exits
    at once with status 2 and a message naming the switch; it never serves."""
    done = subprocess.run(
        [str(VENV_BIN / "calc"), "serve", "--port", "0", *args],
        env={"PATH": str(VENV_BIN), "HOSTNAME": "h", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--pod (CALC_POD, else $HOSTNAME) must not be empty" in done.stderr


def test_a_sigkill_mid_spool_write_loses_only_the_torn_line(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """Case 6, torn line: 1. v10 accepts 5 sums (spooled, not yet written: 30 s
    interval). 2. SIGKILL, and the segment is cut mid-line as a kill during a write
    would leave it. 3. The next container in the pod replays the 4 whole lines and
    skips the torn one; nothing else is lost."""
    first = start_calc("v10", CALC_QUIET_PERIOD="0", CALC_SLOW_MATH="0")
    for i in range(5):
        assert post_sum(first, f"kill-{i}").status_code == 200
    os.killpg(first.process.pid, signal.SIGKILL)
    first.wait_exit(5)
    (segment,) = (tmp_path / "spool" / f"test-pod-{first.port}").glob("*.spool")
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 7])
    second = start_calc("v10", port=first.port, CALC_QUIET_PERIOD="0")
    second.terminate()
    assert second.wait_exit(15) == 0
    written = (tmp_path / "operations.lp").read_text()
    assert sorted(re.findall(r'id="(kill-\d)"', written)) == [f"kill-{i}" for i in range(4)]
    assert "Recovered 4 spooled lines" in second.log


def test_a_missing_database_holds_the_points_until_it_exists(start_calc: StartCalc) -> None:
    """Case 4 end to end: 1. v10 writing every 0.3 s to an InfluxDB that answers 404
    `database not found`. 2. 10 sums answered 200. 3. The points are held: four tries
    take at least the backoff pauses, each failed one logged as a configuration error,
    none lost. 4. The database appears: all 10 are stored, and SIGTERM finds nothing to
    lose."""
    with FakeInflux() as influx:
        influx.status(404, '{"error":"database not found: \\"calc\\""}')
        calc = start_calc(
            "v10",
            INFLUXDB_BASE_URL=influx.url,
            CALC_BATCH_INTERVAL="0.3",
            CALC_QUIET_PERIOD="0",
            CALC_SLOW_MATH="0",
        )
        ids = [f"held-{i}" for i in range(10)]
        for rid in ids:
            assert post_sum(calc, rid).status_code == 200
        wait_until(lambda: influx.writes >= 4, 5, what="four tries")
        # Pauses of at least 0.05, 0.1 and 0.2 s (jittered 0.1, 0.2, 0.4): a writer that
        # spun would make these tries within milliseconds.
        assert influx.write_times[3] - influx.write_times[0] >= 0.35
        assert calc.log.count("fix the configuration") >= 3
        assert calc.metric("calc_operations_lost_total") == 0
        influx.up()
        wait_until(lambda: sorted(influx.stored_ids()) == ids, 10, what="the held points")
        calc.terminate()
        assert calc.wait_exit(15) == 0
    assert "10 operations recorded, 10 written, 0 lost" in calc.log
