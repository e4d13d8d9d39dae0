"""POST /sum and the other endpoints, over a real socket to a real `calc serve`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.influx import InfluxServer, free_port
from tests.calc_support import StartCalc
from tests.support import VENV_BIN, Processes, http_ok, wait_until


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Processes]]:
    """One v10 server for the module, with no slow-math delay so examples run fast."""
    procs = Processes(tmp_path_factory.mktemp("api"))
    port = free_port()
    process = procs.start(
        [str(VENV_BIN / "calc"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"CALC_SLOW_MATH": "0", "CALC_OPLOG": "off", "CALC_POD": "api"},
        name="calc-api",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), 15, what="calc /health")
        yield url, procs
    finally:
        procs.cleanup()
    assert process.poll() is not None


def post(url: str, body: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/sum", content=body, headers=headers, timeout=10)


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ([1, 2, 3, 4], 10),
        ([], 0),
        ([1, 2.5], 3.5),
        ([1, True, False, "7", None, {"a": 1}, [2], 3], 4),
        ([10**20, 1], 10**20 + 1),
        ([-1.5, 1.5], 0.0),
    ],
)
def test_sum_adds_the_items_that_are_numbers(
    api: tuple[str, Processes], numbers: list[object], expected: float
) -> None:
    """1. POST the list. 2. The result sums the numbers only (booleans are not numbers);
    integer sums stay integers, any float makes a float."""
    url, _ = api
    response = post(url, json.dumps({"numbers": numbers}))
    assert response.status_code == 200
    result = response.json()["result"]
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"numbers": [1, 2', 400),
        (b"\xff\xfe not utf-8", 400),
        (b"", 400),
        (b"[1, 2, 3]", 422),
        (b'"numbers"', 422),
        (b"{}", 422),
        (b'{"numbers": "1,2"}', 422),
        (b'{"numbers": {"a": 1}}', 422),
        (b'{"numbers": [NaN]}', 422),
        (b'{"numbers": [Infinity, 1]}', 422),
        (b'{"numbers": [-Infinity]}', 422),
        (b'{"numbers": [1e999]}', 422),
        (b'{"numbers": [' + b"9" * 5000 + b"]}", 422),
        (b'{"numbers": [' + b"9" * 400 + b"]}", 422),
        (b'{"numbers": [1.7e308, 1.7e308]}', 422),
        (b'{"numbers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422),
        (b'{"numbers": [' + b",".join([b"1"] * 100_001) + b"]}", 413),
    ],
)
def test_bad_input_gets_a_json_client_error(
    api: tuple[str, Processes], body: bytes, status: int
) -> None:
    """1. POST a bad body. 2. The status is the documented client error, with a JSON
    `error`, never a 5xx."""
    url, _ = api
    response = post(url, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_body_over_one_mebibyte_is_refused_with_413(api: tuple[str, Processes]) -> None:
    """1. POST a 1 MiB + 1 body with content-length, and again chunked (no length).
    2. Both get 413 before the service parses anything."""
    url, _ = api
    body = b'{"numbers": [' + b" " * (1 << 20) + b"]}"
    assert post(url, body).status_code == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    response = httpx.post(f"{url}/sum", content=chunks(), timeout=10)
    assert response.status_code == 413


def test_request_id_is_honoured_or_generated_and_logged(api: tuple[str, Processes]) -> None:
    """1. Send a sane x-request-id: it comes back and the log line carries it.
    2. Send an insane one, and none: each gets a fresh generated id."""
    url, procs = api
    sane = "req-42.a:b_C"
    response = post(url, b'{"numbers": [1]}', **{"x-request-id": sane})
    assert response.headers["x-request-id"] == sane
    insane = post(url, b'{"numbers": [1]}', **{"x-request-id": "bad id with spaces"})
    generated = insane.headers["x-request-id"]
    assert generated != "bad id with spaces"
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    other = post(url, b'{"numbers": [1]}').headers["x-request-id"]
    assert other != generated

    def log_with_other() -> str | None:
        text = procs.output(procs.started[0])
        return text if f"request_id={other}" in text else None

    log = wait_until(log_with_other, 5, what="log line with the generated id")
    assert f"request_id={sane} calc: Calculating sum" in log
    assert f"request_id={generated} calc: Calculating sum" in log


def test_health_and_ready(api: tuple[str, Processes]) -> None:
    """1. GET /health and /ready. 2. Liveness and readiness say so. 3. A bad request is
    counted by its status in /metrics, and /metrics counts itself in flight."""
    url, _ = api
    assert httpx.get(f"{url}/health").json() == {"status": "healthy"}
    ready = httpx.get(f"{url}/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    post(url, b"{}")
    text = httpx.get(f"{url}/metrics").text
    assert re.search(r'^calc_requests_total\{status="422"\} [1-9]', text, re.M)
    assert "calc_requests_in_flight 1" in text  # the /metrics request itself


def test_metrics_count_pending_written_lost_and_draining(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """The operation gauges and counters, each moved away from zero.
    1. v10 writing to an InfluxDB that is not running yet, batches of 2, --max-buffer 3.
    2. Five sums: 3 are held (pending 3), the 2 beyond the cap are counted lost and the
       log says so; nothing written; not draining.
    3. InfluxDB starts on that address: the retry writes the 3 (written 3, pending 0,
       lost stays 2).
    4. SIGTERM: during the quiet period /metrics still answers and says draining 1."""
    influx_port = free_port()
    calc = start_calc(
        "v10",
        INFLUXDB_BASE_URL=f"http://127.0.0.1:{influx_port}",
        CALC_BATCH_SIZE="2",
        CALC_MAX_BUFFER="3",
        CALC_BATCH_INTERVAL="0.2",
        CALC_SLOW_MATH="0",
        CALC_QUIET_PERIOD="3",
    )

    def metrics() -> dict[str, float]:
        text = httpx.get(f"{calc.url}/metrics", timeout=2).text
        return {
            name: float(value)
            for name, value in re.findall(r"^(calc_[a-z_]+) ([0-9.]+)$", text, re.M)
        }

    for i in range(5):
        assert post(calc.url, b'{"numbers": [1, 2]}', **{"x-request-id": f"m-{i}"}).is_success
    m = metrics()
    assert (m["calc_operations_pending"], m["calc_operations_lost_total"]) == (3, 2), m
    assert m["calc_operations_written_total"] == 0 and m["calc_draining"] == 0, m
    # The loss is logged at once, and the rest of the burst within a second.
    wait_until(lambda: "2 lost in all" in calc.log, 5, what="both losses logged")
    assert "Lost 1 operations (buffer_full: buffer full (3)); 1 buffer_full so far" in calc.log
    wait_until(lambda: "Writing 2 operations failed" in calc.log, 5, what="a failed write")

    influx = InfluxServer(data_dir=tmp_path / "influx", port=influx_port)
    try:
        influx.start()
        influx.create_database("calc")
        wait_until(lambda: metrics()["calc_operations_written_total"] == 3, 15, what="3 written")
        m = metrics()
        assert (m["calc_operations_pending"], m["calc_operations_lost_total"]) == (0, 2), m
        assert sorted(map(str, influx.field_values("calc", "operation", "id"))) == [
            "m-0",
            "m-1",
            "m-2",
        ]
        calc.terminate()
        wait_until(lambda: metrics()["calc_draining"] == 1, 2, what="draining 1")
        assert calc.wait_exit(10) == 0
    finally:
        influx.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["numbers", "x", ""]), children, max_size=3)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.builds(lambda v: json.dumps({"numbers": v}).encode(), st.lists(json_values, max_size=8)),
        st.binary(max_size=64),
    )
)
def test_no_body_of_any_shape_yields_a_server_error(
    api: tuple[str, Processes], body: bytes
) -> None:
    """For any JSON value, any numbers list, any bytes: the answer is 200 or a 4xx."""
    url, _ = api
    response = post(url, body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code == 200:
        assert "result" in response.json()
