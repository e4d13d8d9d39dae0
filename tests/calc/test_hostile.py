"""Hostile clients: oversized and slow request heads and bodies, slowloris, 404/405, and schemathesis against
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
from tests.support import VENV_BIN, wait_until


def read_status(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def read_response(sock: socket.socket) -> bytes:
    """Head and body of one response with a content-length."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


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


def head_of(size: int, path: str = "/health") -> bytes:
    """A GET head of exactly `size` bytes, end of head included."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode()
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


def test_oversized_head_gets_431_and_the_connection_closes(start_calc: StartCalc) -> None:
    """1. A request whose head is 1 MiB (one giant header), sent in one piece. 2. 431 and
    the connection is closed. 3. The 16 KiB edge, each head sent in one piece: exactly
    16 KiB is answered 200, one byte more 431 (20 KB and 60 KB heads used to get 200 when
    they arrived in one read). 4. A 500 KB body sent in one piece with its head is not
    mistaken for a large head, and a normal request still works."""
    calc = start_calc("v10", CALC_SLOW_MATH="0")
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        sock.sendall(head_of(1024 * 1024))
        assert read_status(sock) == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert closed_by_peer(sock)
    for size, status in (
        (16 * 1024, b"HTTP/1.1 200 OK"),
        (16 * 1024 + 1, b"HTTP/1.1 431 Request Header Fields Too Large"),
        (20_000, b"HTTP/1.1 431 Request Header Fields Too Large"),
        (60_000, b"HTTP/1.1 431 Request Header Fields Too Large"),
    ):
        head = head_of(size)
        assert len(head) == size
        with socket.create_connection(("127.0.0.1", calc.port)) as sock:
            sock.sendall(head)
            assert read_status(sock) == status, size
    body = b'{"numbers": [1, 2], "pad": "' + b"x" * 500_000 + b'"}'
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        head = f"POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        sock.sendall(head + body)
        assert read_status(sock) == b"HTTP/1.1 200 OK"
    assert httpx.post(f"{calc.url}/sum", json={"numbers": [1, 2]}).json() == {"result": 3}


def test_a_head_sent_byte_by_byte_is_held_to_the_same_limit(start_calc: StartCalc) -> None:
    """1. TCP_NODELAY, a head of 16 KiB + 1 sent one byte per send. 2. 431 and closed.
    3. A head of exactly 16 KiB sent the same way: 200."""
    calc = start_calc("v10", CALC_SLOW_MATH="0")
    for size, status in (
        (16 * 1024 + 1, b"HTTP/1.1 431 Request Header Fields Too Large"),
        (16 * 1024, b"HTTP/1.1 200 OK"),
    ):
        with socket.create_connection(("127.0.0.1", calc.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = head_of(size)
            with contextlib.suppress(OSError):  # refused before the last bytes went out
                for i in range(len(head)):
                    sock.send(head[i : i + 1])
            assert read_status(sock) == status, size
            if size > 16 * 1024:
                assert closed_by_peer(sock)


def test_a_too_large_content_length_gets_413_and_the_connection_closes(
    start_calc: StartCalc,
) -> None:
    """1. POST /sum with Content-Length 2 MiB (over the 1 MiB limit) and no body yet.
    2. 413 in JSON, `connection: close`, and the connection is closed: the server does
    not wait to read and discard 2 MiB."""
    calc = start_calc("v10", CALC_SLOW_MATH="0")
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        sock.sendall(b"POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n{")
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 413 ")
        assert b"\r\nconnection: close\r\n" in response.lower()
        assert response.endswith(b'{"error":"body larger than 1048576 bytes"}')
        assert closed_by_peer(sock)


def test_a_chunked_upload_over_the_limit_is_cut_off(start_calc: StartCalc) -> None:
    """1. POST /sum with a chunked body, sent as fast as the connection takes it, 4 KiB
    chunks, with no end. 2. 413 and the connection closed after a little over 1 MiB:
    the sender fails within 10 s, having sent less than 8 MiB (it used to go on for
    73 MiB over 12 s)."""
    calc = start_calc("v10", CALC_SLOW_MATH="0")
    sent = 0
    answer = b""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"POST /sum HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"1000\r\n" + b"7" * 4096 + b"\r\n"
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 10:
                sock.sendall(chunk)
                sent += len(chunk)
        with contextlib.suppress(OSError):
            answer = sock.recv(65536)
    elapsed = time.monotonic() - started
    print(f"chunked upload cut off after {sent} bytes, {elapsed:.2f} s; answer {answer[:40]!r}")
    assert elapsed < 10, f"still sending after {elapsed:.1f} s ({sent} bytes)"
    assert sent < 8 * 1024 * 1024
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 ")


def test_a_body_that_stalls_gets_408_and_the_connection_closes(start_calc: StartCalc) -> None:
    """1. Head and body timeout 1 s. 2. POST /sum, Content-Length 100, 10 bytes of body,
    then nothing. 3. About 1 s after the head: 408 and the connection closed. 4. The
    service still answers."""
    calc = start_calc("v10", CALC_HEAD_TIMEOUT="1", CALC_SLOW_MATH="0")
    with socket.create_connection(("127.0.0.1", calc.port)) as sock:
        started = time.monotonic()
        sock.sendall(b'POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"numbers"')
        assert read_status(sock) == b"HTTP/1.1 408 Request Timeout"
        assert 0.9 <= time.monotonic() - started < 3
        assert closed_by_peer(sock)
    assert httpx.post(f"{calc.url}/sum", json={"numbers": [1, 2]}).json() == {"result": 3}


def test_unknown_path_and_wrong_method_answer_json(start_calc: StartCalc) -> None:
    """1. GET /nowhere: 404 with `{"error": "not found"}` as JSON. 2. GET /sum: 405 with
    `{"error": "method not allowed"}` as JSON and `allow: POST`."""
    calc = start_calc("v10", CALC_SLOW_MATH="0", CALC_OPLOG="off")
    missing = httpx.get(f"{calc.url}/nowhere")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {"error": "not found"}
    wrong = httpx.get(f"{calc.url}/sum")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/json"
    assert wrong.json() == {"error": "method not allowed"}
    assert wrong.headers["allow"] == "POST"


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


def test_a_client_gone_before_its_body_is_counted_without_a_traceback(
    start_calc: StartCalc,
) -> None:
    """1. A client sends POST /sum's head (Content-Length 100) and 10 bytes of body, then
    closes its socket. 2. calc logs that the client went away and computed nothing, with
    no traceback and no 500; /metrics counts it as 499 (client closed request). 3. The
    next client is served as usual."""
    calc = start_calc("v10")
    host, port = calc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /sum HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"numbers"'
        )
    wait_until(lambda: "Client went away before its body arrived" in calc.log, 5, what="log")
    assert "Traceback" not in calc.log
    wait_until(lambda: 'calc_requests_total{status="499"} 1' in _metrics(calc.url), 5)
    assert 'status="500"' not in _metrics(calc.url)
    assert httpx.post(f"{calc.url}/sum", json={"numbers": [1, 2]}, timeout=5).json() == {
        "result": 3
    }


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=2).text
