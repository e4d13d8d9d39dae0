"""Part 3: SIGTERM -> exit, idle and with requests in flight, on one replica of each target.

Idle: start the target, wait for /health, SIGTERM its main process (what the kubelet
signals: gunicorn's or granian's master), time until it exits. In flight: open N
connections, send `POST /sum` (100 ms handler) on each, SIGTERM 50 ms later, time the
exit and read every response: 200, another status, or how the connection failed.
A target still running after `limit` seconds is killed (the kubelet's SIGKILL) and shown
as such.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.peers.servers import Peer, Server
from bench.throughput import free_port

BODY = b'{"numbers": [1, 2, 3, 4]}'
SIGTERM_AFTER = 0.05  # seconds after the requests are sent; the handler takes 0.1 s


@dataclass
class ShutdownSample:
    target: str
    round: int
    inflight: int
    exit_s: float | None  # None: still running at the limit, killed
    exit_code: int | None
    outcomes: dict[str, int] = field(default_factory=dict)  # "200", "503", "EOF", ...

    @property
    def ok(self) -> int:
        return self.outcomes.get("200", 0)


async def _request(host: str, port: int, timeout: float) -> str:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return type(exc).__name__
    try:
        writer.write(
            b"POST /sum HTTP/1.1\r\nHost: %s:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (host.encode(), port, len(BODY), BODY)
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            return "EOF"
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 else "bad response"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def _watch_exit(server: Server, sent: float, limit: float) -> tuple[float | None, int | None]:
    """Seconds from SIGTERM to exit (polled every 10 ms) and the exit code; None at the limit."""
    while time.monotonic() - sent < limit:
        code = server.process.poll()
        if code is not None:
            return time.monotonic() - sent, code
        await asyncio.sleep(0.01)
    return None, None


async def _shutdown(
    server: Server, host: str, port: int, n: int, limit: float
) -> tuple[float | None, int | None, list[str]]:
    requests = [asyncio.create_task(_request(host, port, limit)) for _ in range(n)]
    if n:
        await asyncio.sleep(SIGTERM_AFTER)
    sent = time.monotonic()
    server.terminate()
    exit_s, code = await _watch_exit(server, sent, limit)
    return exit_s, code, list(await asyncio.gather(*requests))


def measure(peer: Peer, round_no: int, inflight: int, limit: float, tmp: Path) -> ShutdownSample:
    host, port = "127.0.0.1", free_port()
    log = tmp / f"shutdown-{peer.name}-{inflight}-{round_no}.log"
    with Server(peer, host, port, log) as server:
        server.wait_healthy()
        exit_s, code, outcomes = asyncio.run(_shutdown(server, host, port, inflight, limit))
        if exit_s is None:
            server.kill_group()  # the kubelet's SIGKILL at the end of the grace period
    return ShutdownSample(peer.name, round_no, inflight, exit_s, code, dict(Counter(outcomes)))


def run(
    peers: Sequence[Peer], inflight: int, rounds: int, limit: float, tmp: Path
) -> list[dict[str, Any]]:
    samples = []
    for round_no in range(1, rounds + 1):
        order = list(peers) if round_no % 2 else list(reversed(peers))
        for peer in order:
            for n in (0, inflight):
                print(
                    f"shutdown: round {round_no}/{rounds}: {peer.name}, {n} in flight",
                    file=sys.stderr,
                    flush=True,
                )
                samples.append(measure(peer, round_no, n, limit, tmp))
    return [summarize(peer.name, samples, inflight, limit) for peer in peers]


def summarize(
    target: str, samples: Sequence[ShutdownSample], inflight: int, limit: float
) -> dict[str, Any]:
    def exit_median(n: int) -> float | None:
        times = [s.exit_s for s in samples if s.target == target and s.inflight == n]
        if not times or any(t is None for t in times):
            return None  # killed at the limit in at least one round
        return statistics.median(t for t in times if t is not None)

    busy = [s for s in samples if s.target == target and s.inflight == inflight]
    outcomes: Counter[str] = Counter()
    for s in busy:
        outcomes.update(s.outcomes)
    return {
        "target": target,
        "inflight": inflight,
        "limit_s": limit,
        "idle_exit_s": exit_median(0),
        "busy_exit_s": exit_median(inflight),
        "busy_ok_min": min((s.ok for s in busy), default=0),
        "busy_outcomes": dict(outcomes),
        "exit_codes": sorted({str(s.exit_code) for s in samples if s.target == target}),
        "samples": [asdict(s) for s in samples if s.target == target],
    }


def render(results: Sequence[dict[str, Any]]) -> str:
    if not results:
        return ""
    first = results[0]
    rounds = len(first["samples"]) // 2

    def seconds(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else f"killed at {first['limit_s']:g}"

    n = first["inflight"]
    lines = [
        f"shutdown: SIGTERM -> exit, medians of {rounds} round(s); "
        f"{n} requests in flight (sent {SIGTERM_AFTER * 1000:.0f} ms before SIGTERM)",
        "",
        f"| target | idle: exit s | {n} in flight: exit s | 200s of {n} (worst round) "
        "| other outcomes (all rounds) | exit codes |",
        "|---|--:|--:|--:|---|---|",
    ]
    for r in results:
        others = ", ".join(f"{k}: {v}" for k, v in sorted(r["busy_outcomes"].items()) if k != "200")
        lines.append(
            f"| {r['target']} | {seconds(r['idle_exit_s'])} | {seconds(r['busy_exit_s'])} "
            f"| {r['busy_ok_min']} | {others or 'none'} | {', '.join(r['exit_codes'])} |"
        )
    return "\n".join(lines)
