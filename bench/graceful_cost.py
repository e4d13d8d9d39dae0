"""What graceful costs per request, measured two ways side by side in one run.

    .venv/bin/python bench/graceful_cost.py [--rounds 7] [--requests 10000] [--calls 50000]

1. **In process**: the ASGI layers each server's graceful stack adds (readiness path,
   in-flight bookkeeping and `Connection: close`, and on hypercorn the lifespan phase
   and the request-task registry), around bench/peers/app.py's FastAPI app, called
   directly `--calls` times per round; CPU time of this process (`time.process_time`).
   Rounds alternate bare and wrapped. Prints the microseconds graceful adds per request.
2. **End to end**: each server with and without graceful on loopback (the commands of
   bench/peers, one replica), one keep-alive client process sending `--requests` cheap
   `GET /health` per round, sequentially (the cheapest request makes graceful's share
   the largest); CPU seconds of the server's process tree per request. Rounds alternate
   the order. Prints per-round ratios and their median.

The throughput part of bench/peers measures the same ratios under k6 load, where the
round-to-round spread of CPU per request (up to 25 % on a quiet 2-core machine) hides a
few percent; here the load is one sequential client, so the spread is smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.peers.servers import PEERS, Server, cpu_delta, tree_cpu  # noqa: E402
from bench.throughput import free_port  # noqa: E402

SERVERS = ("uvicorn", "hypercorn", "gunicorn")
CLIENT = """
import sys, httpx
url, n = sys.argv[1], int(sys.argv[2])
with httpx.Client() as client:
    for _ in range(n):
        if client.get(url).status_code != 200:
            raise SystemExit("not 200")
"""

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def stacks() -> dict[str, tuple[App, App]]:
    """Per server: (the bare app, the app as graceful wraps it on that server)."""
    from bench.peers.app import app as fastapi_app
    from graceful.config import ShutdownConfig
    from graceful.hypercorn import _LifespanPhase, _RequestTasks
    from graceful.lifecycle import Lifecycle, Phase
    from graceful.middleware import GracefulMiddleware
    from graceful.readiness import ReadinessMiddleware

    def serving() -> Lifecycle:
        lifecycle = Lifecycle(ShutdownConfig())
        lifecycle.phase = Phase.SERVING  # as after the server's startup
        return lifecycle

    def uvicorn_stack() -> App:
        lifecycle = serving()
        ready = ReadinessMiddleware(fastapi_app, lifecycle, "/ready")
        return GracefulMiddleware(ready, lifecycle)

    def hypercorn_stack() -> App:
        lifecycle = serving()
        ready = ReadinessMiddleware(fastapi_app, lifecycle, "/ready")
        tracked = _RequestTasks(_LifespanPhase(ready, lifecycle), set())
        return GracefulMiddleware(tracked, lifecycle)

    # gunicorn's graceful worker serves the same stack as graceful-serve on uvicorn.
    return {
        "uvicorn": (fastapi_app, uvicorn_stack()),
        "hypercorn": (fastapi_app, hypercorn_stack()),
        "gunicorn": (fastapi_app, uvicorn_stack()),
    }


async def call_many(app: App, calls: int) -> float:
    """CPU seconds for `calls` GET /health requests through `app`, in this process."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/health",
        "raw_path": b"/health",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.process_time()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    took = time.process_time() - start
    if statuses != [200] * calls:
        raise SystemExit(f"in-process calls did not all answer 200: {set(statuses)}")
    return took


def in_process(rounds: int, calls: int) -> dict[str, list[float]]:
    """Microseconds graceful adds per request, per round, per server stack."""
    added: dict[str, list[float]] = {name: [] for name in SERVERS}
    pairs = stacks()
    for round_no in range(rounds):
        for name in SERVERS:
            bare, wrapped = pairs[name]
            order = [bare, wrapped] if round_no % 2 == 0 else [wrapped, bare]
            took = {id(app): asyncio.run(call_many(app, calls)) for app in order}
            added[name].append((took[id(wrapped)] - took[id(bare)]) / calls * 1e6)
        print(f"in process: round {round_no + 1}/{rounds} done", file=sys.stderr, flush=True)
    return added


def server_cpu_per_request(target: str, requests: int, tmp: Path) -> float:
    peer = next(p for p in PEERS if p.name == target)
    with Server(peer, "127.0.0.1", free_port(), tmp / f"{target}.log") as server:
        server.wait_healthy()
        url = f"{server.url}/health"
        for _ in range(50):  # warm: first-request code paths, the client's pool
            httpx.get(url, timeout=5)
        before = tree_cpu(server.pid)
        subprocess.run([sys.executable, "-c", CLIENT, url, str(requests)], check=True)
        return cpu_delta(before, tree_cpu(server.pid)) / requests


def end_to_end(rounds: int, requests: int, tmp: Path) -> dict[str, list[float]]:
    """Per server: CPU per request with graceful / without, one ratio per round."""
    ratios: dict[str, list[float]] = {name: [] for name in SERVERS}
    for round_no in range(rounds):
        for name in SERVERS:
            targets = [name, f"{name}+graceful"]
            if round_no % 2:
                targets.reverse()
            cpu = {t: server_cpu_per_request(t, requests, tmp) for t in targets}
            ratios[name].append(cpu[f"{name}+graceful"] / cpu[name])
            print(
                f"end to end: round {round_no + 1}/{rounds} {name}: "
                f"{cpu[name] * 1e6:.0f} / {cpu[f'{name}+graceful'] * 1e6:.0f} us per request",
                file=sys.stderr,
                flush=True,
            )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each part (default 7)")
    parser.add_argument(
        "--requests", type=int, default=10000, help="end-to-end requests per round (10000)"
    )
    parser.add_argument("--calls", type=int, default=50000, help="in-process calls per round")
    parser.add_argument("--out", type=Path, default=Path("out/graceful-cost"))
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 100 or args.calls < 100:
        parser.error("need --rounds >= 1, --requests >= 100 and --calls >= 100")
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    added = in_process(args.rounds, args.calls)
    ratios = end_to_end(args.rounds, args.requests, args.out)
    print(
        f"\nwhat graceful costs per request: medians of {args.rounds} rounds; "
        f"1-min load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
    )
    print(
        "| server | graceful's layers, in process: us added per request | "
        "end to end, CPU per request with / without (median) | per round |"
    )
    print("|---|--:|--:|---|")
    for name in SERVERS:
        rounds = ", ".join(f"{r:.2f}" for r in ratios[name])
        print(
            f"| {name} | {statistics.median(added[name]):.1f} | "
            f"{statistics.median(ratios[name]):.3f}x | {rounds} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
