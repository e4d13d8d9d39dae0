"""Hostile clients: oversized and slow request heads, slowloris, and schemathesis against
the service's own OpenAPI document. Real sockets to a real `calc serve`."""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.calc_support import StartCalc
from tests.support import VENV_BIN


def read_status(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the server closes the connection within 5 s (EOF or reset)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_oversized_head_gets_431_and_the_connection_closes(start_calc: StartCalc) -> None:
    """1. A request whose head is 1 MiB (one giant header). 2. 431 and the connection is
    closed before the head ends. 3. A normal request still works; a 500 KB body sent in
    one piece with its head is not mistaken for a large head."""
    calc = start_calc("v10", CALC_SLOW_MATH="0")
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536)
        assert read_status(sock) == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert closed_by_peer(sock)
    body = b'{"numbers": [1, 2], "pad": "' + b"x" * 500_000 + b'"}'
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        head = f"POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body)
        assert read_status(sock) == b"HTTP/1.1 200 OK"
    assert httpx.post(f"{calc.url}/sum", json={"numbers": [1, 2]}).json() == {"result": 3}


def test_slow_head_gets_408_after_the_head_timeout(start_calc: StartCalc) -> None:
    """1. head timeout 1 s. 2. A client sends half a request head and stops. 3. After
    about 1 s: 408 and the connection is closed."""
    calc = start_calc("v10", CALC_HEAD_TIMEOUT="1")
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert read_status(sock) == b"HTTP/1.1 408 Request Timeout"
        assert 0.9 <= time.monotonic() - started < 3
        assert closed_by_peer(sock)


def sum_latencies(url: str, n: int) -> list[float]:
    latencies = []
    with httpx.Client(timeout=10) as client:
        for _ in range(n):
            started = time.monotonic()
            assert client.post(f"{url}/sum", json={"numbers": [1, 2]}).status_code == 200
            latencies.append(time.monotonic() - started)
    return latencies


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def test_slowloris_does_not_stop_other_clients(start_calc: StartCalc) -> None:
    """1. Measure /sum p95 unloaded (30 requests). 2. 200 connections send their request
    heads one byte every 50 ms. 3. /sum p95 meanwhile stays under 2x the unloaded value."""
    calc = start_calc("v10", CALC_OPLOG="off")
    unloaded = p95(sum_latencies(calc.url, 30))
    head = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Filler: " + b"z" * 200 + b"\r\n\r\n"
    socks = [socket.create_connection(("127.0.0.1", calc.port)) for _ in range(200)]
    stop = threading.Event()

    def dribble() -> None:
        position = 0
        while not stop.is_set() and position < len(head):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(head[position : position + 1])
            position += 1
            time.sleep(0.05)

    sender = threading.Thread(target=dribble)
    sender.start()
    try:
        loaded = p95(sum_latencies(calc.url, 30))
    finally:
        stop.set()
        sender.join(10)
        for sock in socks:
            sock.close()
    print(
        f"slowloris: /sum p95 unloaded {unloaded * 1000:.1f} ms, with 200 slow heads {loaded * 1000:.1f} ms"
    )
    assert loaded < 2 * unloaded, (loaded, unloaded)


def test_schemathesis_finds_no_server_error_or_schema_violation(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """Run schemathesis (every check, 60 examples per operation) against the running
    service's /openapi.json; it must report no issue."""
    calc = start_calc("v10", CALC_SLOW_MATH="0", CALC_OPLOG="off")
    result = subprocess.run(
        [
            str(VENV_BIN / "schemathesis"),
            "run",
            f"{calc.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,  # schemathesis keeps a cache dir in its working directory
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
