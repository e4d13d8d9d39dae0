"""Same k6 load on one calc v10 replica and on a plain FastAPI+uvicorn app, in one run.

For each target and round: start the server on loopback, run k6 (the project's script,
no connection reuse unless --reuse) for --duration, read the server's own CPU time and
peak RSS from /proc, stop it. Targets alternate round by round so drift in the machine's
load hits both alike; the table shows medians over the rounds and calc/plain ratios.

    .venv/bin/python bench/throughput.py [--vus 50] [--duration 15] [--rounds 3] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.procstat import cpu_seconds, peak_rss_mib

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT = REPO / "deploy" / "k6" / "load-test.js"


@dataclass(frozen=True)
class Target:
    name: str
    command: list[str]
    env: dict[str, str]


def targets(tmp: Path) -> list[Target]:
    return [
        Target(
            "calc-v10",
            [
                str(BIN / "calc"),
                "serve",
                "--profile",
                "v10",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ],
            {"CALC_OPLOG_FILE": str(tmp / "operations.lp"), "CALC_LOG_LEVEL": "info"},
        ),
        Target(
            "fastapi-uvicorn",
            [
                str(BIN / "uvicorn"),
                "bench.plain_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
            ],
            {},
        ),
    ]


@dataclass
class Sample:
    target: str
    round: int
    vus: int
    reuse: bool
    requests: int
    failed: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s: float
    cpu_s_per_10k: float
    peak_rss_mib: float

    @classmethod
    def from_k6(
        cls,
        target: str,
        round_no: int,
        vus: int,
        reuse: bool,
        k6: dict[str, float],
        cpu: float,
        rss: float,
    ) -> Sample:
        """One round's figures: k6's summary plus the server's own CPU and memory."""
        requests = int(k6["requests"])
        return cls(
            target=target,
            round=round_no,
            vus=vus,
            reuse=reuse,
            requests=requests,
            failed=int(k6["failed"]),
            rps=k6["rps"],
            p50_ms=k6["p50"],
            p95_ms=k6["p95"],
            p99_ms=k6["p99"],
            cpu_s=cpu,
            cpu_s_per_10k=cpu / requests * 10_000 if requests else float("nan"),
            peak_rss_mib=rss,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer /health within {timeout} s")


def run_k6(url: str, vus: int, duration: float, reuse: bool, summary: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "CALC_URL": url,
        "VUS": str(vus),
        "DURATION": f"{duration}s",
        "CONN_REUSE": "1" if reuse else "0",
        # Throughput needs no per-request tag: one k6 time series per request costs CPU.
        "TAG_IDS": "0",
    }
    subprocess.run(
        [
            str(BIN / "k6"),
            "run",
            "--quiet",
            "--no-usage-report",
            "--summary-trend-stats",
            "p(50),p(95),p(99)",
            "--summary-export",
            str(summary),
            str(SCRIPT),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=duration + 60,
    )
    metrics = json.loads(summary.read_text())["metrics"]
    duration_ms = metrics["http_req_duration"]
    return {
        "requests": metrics["http_reqs"]["count"],
        "rps": metrics["http_reqs"]["rate"],
        "failed": metrics["http_req_failed"]["passes"],
        "p50": duration_ms["p(50)"],
        "p95": duration_ms["p(95)"],
        "p99": duration_ms["p(99)"],
    }


def measure(
    target: Target, round_no: int, vus: int, duration: float, reuse: bool, tmp: Path
) -> Sample:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [part.replace("{port}", str(port)) for part in target.command]
    log = (tmp / f"{target.name}-{round_no}.log").open("wb")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **target.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(url, process)
        cpu_before = cpu_seconds(process.pid)
        k6 = run_k6(url, vus, duration, reuse, tmp / f"summary-{target.name}-{round_no}.json")
        cpu = cpu_seconds(process.pid) - cpu_before
        rss = peak_rss_mib(process.pid)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()
    return Sample.from_k6(target.name, round_no, vus, reuse, k6, cpu, rss)


def medians(samples: list[Sample], target: str) -> dict[str, float]:
    mine = [s for s in samples if s.target == target]
    keys = ("rps", "p50_ms", "p95_ms", "p99_ms", "cpu_s_per_10k", "peak_rss_mib")
    result = {k: statistics.median(getattr(s, k) for s in mine) for k in keys}
    result["failed"] = sum(s.failed for s in mine)
    result["requests"] = sum(s.requests for s in mine)
    return result


def render(summary: dict[str, dict[str, float]], vus: int, reuse: bool, rounds: int) -> str:
    names = list(summary)
    base, other = names[0], names[1]
    lines = [
        f"k6 {vus} VUs, {'keep-alive' if reuse else 'new connection per request'}, "
        f"medians of {rounds} round(s), 100 ms sum",
        f"{'target':<18}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'CPU s/10k':>11}{'RSS MiB':>9}{'failed':>8}",
    ]
    for name, m in summary.items():
        lines.append(
            f"{name:<18}{m['rps']:>9.1f}{m['p50_ms']:>9.1f}{m['p95_ms']:>9.1f}{m['p99_ms']:>9.1f}"
            f"{m['cpu_s_per_10k']:>11.2f}{m['peak_rss_mib']:>9.1f}{int(m['failed']):>8}"
        )
    b, o = summary[base], summary[other]
    lines.append(
        f"ratio {base}/{other}: rps {b['rps'] / o['rps']:.3f} (goal >= 1.0), "
        f"CPU per request {b['cpu_s_per_10k'] / o['cpu_s_per_10k']:.3f} (goal <= 1.0), "
        f"p95 {b['p95_ms'] / o['p95_ms']:.3f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vus", type=int, nargs="+", default=[50], help="VU counts (default 50)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (median)")
    parser.add_argument("--reuse", action="store_true", help="keep connections alive")
    parser.add_argument("--out", type=Path, help="write all samples and medians as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or min(args.vus) < 1:
        parser.error("--rounds, --duration and --vus must be positive")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        all_targets = targets(tmp)
        for vus in args.vus:
            samples: list[Sample] = []
            for round_no in range(1, args.rounds + 1):
                order = all_targets if round_no % 2 else list(reversed(all_targets))
                for target in order:
                    print(
                        f"round {round_no}/{args.rounds}: {target.name}, {vus} VUs ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    samples.append(measure(target, round_no, vus, args.duration, args.reuse, tmp))
            summary = {t.name: medians(samples, t.name) for t in all_targets}
            print(render(summary, vus, args.reuse, args.rounds))
            print()
            results.append(
                {
                    "vus": vus,
                    "reuse": args.reuse,
                    "samples": [asdict(s) for s in samples],
                    "medians": summary,
                }
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
