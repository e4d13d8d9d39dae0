"""A service that is not calc: standard library only, no /sum. GET /health and GET /ready
answer 200 "ok", `POST /echo` answers 201 with the body's length; every other request is
404, as a real service answers calc's `POST /sum`.

    python healthonly.py --port 8080

Binds HEALTHONLY_HOST (default 127.0.0.1). Prints one line per request that a probe did
not send (`request <METHOD> <path> x-team=<header> body=<bytes> <user agent>`) for the
tests to read in the pod log.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: object) -> None:
            pass

        def answer(self, status: int, body: bytes) -> None:
            length = int(self.headers.get("content-length") or 0)
            received = self.rfile.read(length) if length else b""
            agent = self.headers.get("user-agent", "")
            if not agent.startswith("kube-probe"):
                print(
                    f"request {self.command} {self.path} x-team={self.headers.get('x-team', '-')} "
                    f"body={received.decode(errors='replace')!r} {agent}",
                    flush=True,
                )
            if self.command == "POST" and self.path == "/echo":
                status, body = 201, str(len(received)).encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in ("/health", "/ready"):
                self.answer(200, b"ok")
            else:
                self.answer(404, b"not found")

        def do_POST(self) -> None:
            self.answer(404, b"not found")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    ThreadingHTTPServer.daemon_threads = True
    host = os.environ.get("HEALTHONLY_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, args.port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    print("listening", flush=True)
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
