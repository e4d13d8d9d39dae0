"""`bench/peers/run`: the calc API on uvicorn, hypercorn, granian and gunicorn defaults,
and on uvicorn, hypercorn and gunicorn with graceful, against calc v10, in one go:
(1) throughput, (2) rollouts in the lab, (3) shutdown.

    bench/peers/run [--quick] [--parts throughput,rollouts,shutdown] [--targets ...]
                    [--rounds 3] [--duration 15] [--vus 50 200] [--reuse both]
                    [--lbs tcp,http] [--endpoint-lags 1,3] [--prestop both]
                    [--out out/peers]

Prints one Markdown table per part (and per load for throughput); writes every sample,
median and lab report summary to OUT/peers.json, the lab runs' own output under
OUT/rollouts/, and the servers' logs under OUT/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peers import rollouts, shutdown, throughput
from bench.peers.servers import PEER_BY_NAME, PEERS, Peer

PARTS = ("throughput", "rollouts", "shutdown")


@dataclass(frozen=True)
class PeersConfig:
    parts: tuple[str, ...]
    targets: tuple[Peer, ...]
    rounds: int
    duration: float
    vus: tuple[int, ...]
    reuse: tuple[bool, ...]
    lbs: tuple[str, ...]
    rollout: rollouts.RolloutOptions
    lags: tuple[str, ...]
    prestops: tuple[bool, ...]
    inflight: int
    shutdown_limit: float
    out: Path


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items

    return parse


def _lags(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    for item in items:
        try:
            ok = float(item) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"lags are seconds >= 0; got {item!r}")
    if not items:
        raise argparse.ArgumentTypeError("give at least one lag")
    return items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/peers/run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="1 round of 5 s, 50 VUs, tcp only, short lab runs"
    )
    p.add_argument("--parts", type=_csv(PARTS), default=PARTS, help="comma-separated (default all)")
    p.add_argument(
        "--targets",
        type=_csv(tuple(PEER_BY_NAME)),
        default=tuple(PEER_BY_NAME),
        help=f"comma-separated (default {','.join(PEER_BY_NAME)})",
    )
    p.add_argument("--rounds", type=int, help="throughput and shutdown rounds (default 3; quick 1)")
    p.add_argument(
        "--duration",
        type=float,
        help="seconds of k6 load per throughput round (default 15; quick 5)",
    )
    p.add_argument(
        "--vus", type=int, nargs="+", help="throughput VU counts (default 50 200; quick 50)"
    )
    p.add_argument(
        "--reuse",
        choices=("both", "yes", "no"),
        default="both",
        help="throughput: keep-alive, new connections or both",
    )
    p.add_argument(
        "--lbs",
        type=_csv(("tcp", "http")),
        help="rollout load balancers (default tcp,http; quick tcp)",
    )
    p.add_argument("--rollout-vus", type=int, default=50, help="rollout k6 VUs (default 50)")
    p.add_argument(
        "--endpoint-lags",
        type=_lags,
        default=("1",),
        help="rollout endpoint lags in seconds, comma-separated (default 1), e.g. 1,3",
    )
    p.add_argument(
        "--prestop",
        choices=("both", "yes", "no"),
        default="both",
        help="rollouts with the preStop sleep, without it, or both (default)",
    )
    p.add_argument("--replicas", type=int, help="rollout replicas (default: the manifests' 5)")
    p.add_argument(
        "--warmup", type=float, help="rollout seconds of load before/after (default 5; quick 3)"
    )
    p.add_argument(
        "--inflight", type=int, default=50, help="shutdown: requests in flight (default 50)"
    )
    p.add_argument(
        "--shutdown-limit",
        type=float,
        default=30.0,
        help="shutdown: kill after this (default 30 s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("out/peers"), help="output dir (default out/peers)"
    )
    return p


def config_from(args: argparse.Namespace) -> PeersConfig:
    quick = args.quick
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    duration = args.duration if args.duration is not None else (5.0 if quick else 15.0)
    vus = tuple(args.vus) if args.vus else ((50,) if quick else (50, 200))
    lbs = args.lbs if args.lbs else (("tcp",) if quick else ("tcp", "http"))
    warmup = args.warmup if args.warmup is not None else (3.0 if quick else 5.0)
    if rounds < 1 or duration <= 0 or min(vus) < 1 or args.inflight < 1 or warmup < 0:
        raise SystemExit(
            "bench/peers/run: --rounds, --duration, --vus and --inflight must be positive"
        )
    reuse = {"both": (False, True), "yes": (True,), "no": (False,)}[args.reuse]
    return PeersConfig(
        parts=args.parts,
        targets=tuple(PEER_BY_NAME[name] for name in args.targets),
        rounds=rounds,
        duration=duration,
        vus=vus,
        reuse=reuse,
        lbs=lbs,
        rollout=rollouts.RolloutOptions(
            vus=args.rollout_vus, warmup=warmup, cooldown=warmup, replicas=args.replicas
        ),
        lags=args.endpoint_lags,
        prestops={"both": (True, False), "yes": (True,), "no": (False,)}[args.prestop],
        inflight=args.inflight,
        shutdown_limit=args.shutdown_limit,
        out=args.out,
    )


def run(config: PeersConfig) -> dict[str, Any]:
    """Run the chosen parts; print each table as soon as its part is done."""
    config.out.mkdir(parents=True, exist_ok=True)
    logs = config.out / "logs"
    logs.mkdir(exist_ok=True)
    targets = [p for p in PEERS if p in config.targets]
    started = time.time()
    result: dict[str, Any] = {
        "config": {**asdict(config), "out": str(config.out), "targets": [p.name for p in targets]},
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "started": started},
    }
    if "throughput" in config.parts:
        loads = throughput.run(
            targets, config.vus, config.reuse, config.rounds, config.duration, logs
        )
        result["throughput"] = loads
        for load in loads:
            print(throughput.render(load) + "\n", flush=True)
        _write(config.out, result)
    if "rollouts" in config.parts:
        rows = rollouts.run(
            targets,
            config.lbs,
            config.out / "rollouts",
            config.rollout,
            config.lags,
            config.prestops,
        )
        result["rollouts"] = rows
        print(rollouts.render(rows, config.rollout) + "\n", flush=True)
        _write(config.out, result)
    if "shutdown" in config.parts:
        rows = shutdown.run(targets, config.inflight, config.rounds, config.shutdown_limit, logs)
        result["shutdown"] = rows
        print(shutdown.render(rows) + "\n", flush=True)
    result["machine"]["elapsed_s"] = round(time.time() - started, 1)
    _write(config.out, result)
    print(f"written: {config.out / 'peers.json'} ({result['machine']['elapsed_s']:.0f} s)")
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _write(out: Path, result: dict[str, Any]) -> None:
    (out / "peers.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    config = config_from(parser().parse_args(argv))
    try:
        run(config)
    except KeyboardInterrupt:
        print("bench/peers/run: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    return 0
