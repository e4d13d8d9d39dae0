"""A tiny HTTP service for the lab's tests, standard library only, with switches for
every way a service can drop the ball.

    python tinyapp.py --port 8080 [--ready-after S] [--ready-status 500] [--ignore-sigterm] [--status 503]
        [--mode ok|reset|eof|hang] [--delay S] [--influx URL] [--drop-id ID] [--fail-id ID]

Binds TINY_HOST (default 127.0.0.1). GET /health is liveness, GET /ready readiness (503
for the first --ready-after seconds; always --ready-status if given), POST /sum sums `numbers` after --delay seconds.
With --influx, each successful sum writes one point (the calc contract's shape) before
the answer; --drop-id skips the point of one request (a lost operation), --fail-id
writes the point and then answers 500 (an orphan); both take an id or a `-VU-ITER` suffix. Prints one line per event to stdout
(`request <id> <unix time>`, `sigterm <unix time>`) for the tests to read in the pod log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def matches(rid: str, pattern: str) -> bool:
    # The lab picks the run id, so tests name a request by its `-VU-ITER` suffix.
    return bool(pattern) and (rid == pattern or (pattern.startswith("-") and rid.endswith(pattern)))


def log(line: str) -> None:
    print(line, flush=True)


class Clock:
    """Strictly increasing nanosecond timestamps: InfluxDB overwrites equal ones."""

    def __init__(self) -> None:
        self.last = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.last = max(time.time_ns(), self.last + 1)
            return self.last


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--ready-status", type=int, default=0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--mode", choices=("ok", "reset", "eof", "hang"), default="ok")
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--influx", default=os.environ.get("INFLUXDB_BASE_URL", ""))
    parser.add_argument("--db", default="calc")
    parser.add_argument("--drop-id", default="", help="a request id, or its -VU-ITER suffix")
    parser.add_argument("--fail-id", default="", help="a request id, or its -VU-ITER suffix")
    args = parser.parse_args()
    started = time.monotonic()
    clock = Clock()
    pod = os.environ.get("HOSTNAME", "tinyapp")

    def write_point(rid: str) -> None:
        line = f'operation,name=sum,pod={pod} id="{rid}",numbers=4i,result=10.0 {clock.next()}'
        request = urllib.request.Request(
            f"{args.influx}/write?db={args.db}", data=line.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: object) -> None:
            pass

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path not in ("/health", "/ready"):
                log(f"get {self.path} {time.time():.3f}")
            if self.path == "/ready" and args.ready_status:
                self.answer(args.ready_status, b"database unreachable")
            elif self.path == "/ready" and time.monotonic() - started < args.ready_after:
                self.answer(503, b"not ready")
            else:
                self.answer(200, b"ok")

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                data = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:  # e.g. line protocol, when it stands in for a dependency
                data = {}
            rid = self.headers.get("x-request-id", "")
            log(f"request {rid or '-'} {time.time():.3f}")
            if args.mode == "reset":
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                # Closing the descriptor at once, before the server's own shutdown()
                # could send a FIN.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                os.close(self.connection.detach())
                self.close_connection = True
                return
            if args.mode == "eof":
                self.close_connection = True
                return
            if args.mode == "hang":
                time.sleep(3600)
            time.sleep(args.delay)
            if args.status != 200:
                self.answer(args.status, b'{"error": "configured"}')
                return
            if args.influx and not matches(rid, args.drop_id):
                write_point(rid)
            if matches(rid, args.fail_id):
                self.answer(500, b'{"error": "failed after logging"}')
                return
            total = sum(n for n in data.get("numbers", []) if isinstance(n, int | float))
            self.answer(200, json.dumps({"result": total}).encode())

    stop = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        log(f"sigterm {time.time():.3f}")
        if not args.ignore_sigterm:
            stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((os.environ.get("TINY_HOST", "127.0.0.1"), args.port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    log(f"listening {time.time():.3f}")
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    thread.join(5)
    log(f"exiting {time.time():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
