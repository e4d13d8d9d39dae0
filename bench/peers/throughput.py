"""Part 1: the same k6 load on one replica of each target; medians over rounds.

For each load (VUs x connection reuse) and round, every target in turn (order reversed
on even rounds, so drift in the machine's load hits all alike): start it on loopback,
wait for /health, run k6 (`bench.throughput.run_k6`, the project's script) for the
duration, read the CPU time of its whole process tree (master + workers) and the tree's
peak RSS from /proc, stop it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.peers.servers import BASELINE, Peer, Server, cpu_delta, tree_cpu, tree_peak_rss_mib
from bench.throughput import Sample, free_port, medians, run_k6


def measure(peer: Peer, round_no: int, vus: int, duration: float, reuse: bool, tmp: Path) -> Sample:
    tag = f"{peer.name}-{vus}-{'reuse' if reuse else 'new'}-{round_no}"
    with Server(peer, "127.0.0.1", free_port(), tmp / f"throughput-{tag}.log") as server:
        server.wait_healthy()
        before = tree_cpu(server.pid)
        k6 = run_k6(server.url, vus, duration, reuse, tmp / f"summary-{tag}.json")
        cpu = cpu_delta(before, tree_cpu(server.pid))
        rss = tree_peak_rss_mib(server.pid)
    return Sample.from_k6(peer.name, round_no, vus, reuse, k6, cpu, rss)


def run(
    peers: Sequence[Peer],
    vus_list: Sequence[int],
    reuse_list: Sequence[bool],
    rounds: int,
    duration: float,
    tmp: Path,
) -> list[dict[str, Any]]:
    """One result per load: its samples and the per-target medians."""
    results = []
    for vus in vus_list:
        for reuse in reuse_list:
            samples: list[Sample] = []
            load_averages: list[float] = []  # the machine's 1-min load before each sample
            for round_no in range(1, rounds + 1):
                order = list(peers) if round_no % 2 else list(reversed(peers))
                for peer in order:
                    print(
                        f"throughput: round {round_no}/{rounds}, {vus} VUs, "
                        f"{'keep-alive' if reuse else 'new connections'}: {peer.name}",
                        file=sys.stderr,
                        flush=True,
                    )
                    load_averages.append(round(os.getloadavg()[0], 2))
                    samples.append(measure(peer, round_no, vus, duration, reuse, tmp))
            summary = {p.name: medians(samples, p.name) for p in peers}
            results.append(
                {
                    "vus": vus,
                    "reuse": reuse,
                    "rounds": rounds,
                    "duration_s": duration,
                    "samples": [asdict(s) for s in samples],
                    "medians": summary,
                    "spread": spread(samples),
                    "loadavg_1m": load_averages,
                }
            )
    return results


def spread(samples: Sequence[Sample]) -> dict[str, float]:
    """Per target: (max - min) / median of rps over the rounds, a noise gauge."""
    result = {}
    for target in sorted({s.target for s in samples}):
        rps = sorted(s.rps for s in samples if s.target == target)
        mid = (
            rps[len(rps) // 2]
            if len(rps) % 2
            else (rps[len(rps) // 2 - 1] + rps[len(rps) // 2]) / 2
        )
        result[target] = (rps[-1] - rps[0]) / mid if mid else 0.0
    return result


def render(result: dict[str, Any]) -> str:
    summary: dict[str, dict[str, float]] = result["medians"]
    base = summary.get(BASELINE)
    lines = [
        f"throughput: k6 {result['vus']} VUs, "
        f"{'keep-alive' if result['reuse'] else 'new connection per request'}, "
        f"{result['duration_s']:g} s per round, medians of {result['rounds']} round(s); "
        f"machine's 1-min load average {min(result['loadavg_1m']):.1f}-{max(result['loadavg_1m']):.1f} "
        f"(2 cores)",
        "",
        "| target | rps | p50 ms | p95 ms | p99 ms | CPU s/10k req | peak RSS MiB | failed "
        "| rps spread | rps vs calc | CPU/req vs calc |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, m in summary.items():
        ratio_rps = ratio_cpu = "-"
        if base is not None and name != BASELINE:
            ratio_rps = f"{m['rps'] / base['rps']:.2f}x"
            ratio_cpu = f"{m['cpu_s_per_10k'] / base['cpu_s_per_10k']:.2f}x"
        lines.append(
            f"| {name} | {m['rps']:.1f} | {m['p50_ms']:.1f} | {m['p95_ms']:.1f} "
            f"| {m['p99_ms']:.1f} | {m['cpu_s_per_10k']:.2f} | {m['peak_rss_mib']:.1f} "
            f"| {int(m['failed'])} | {result['spread'][name]:.0%} | {ratio_rps} | {ratio_cpu} |"
        )
    cost = graceful_cost(summary)
    if cost:
        lines += [
            "",
            "graceful's cost: each server with graceful / the same server without it",
            "",
            "| server | rps with / without | CPU per request with / without |",
            "|---|--:|--:|",
            *(f"| {server} | {rps:.2f}x | {cpu:.2f}x |" for server, rps, cpu in cost),
        ]
    return "\n".join(lines)


GRACEFUL = "+graceful"


def graceful_cost(summary: dict[str, dict[str, float]]) -> list[tuple[str, float, float]]:
    """(server, rps ratio, CPU-per-request ratio) of "X+graceful" against "X", for each X
    measured both ways."""
    rows = []
    for name, with_graceful in summary.items():
        plain = summary.get(name.removesuffix(GRACEFUL))
        if not name.endswith(GRACEFUL) or plain is None:
            continue
        if plain["rps"] and plain["cpu_s_per_10k"]:
            rows.append(
                (
                    name.removesuffix(GRACEFUL),
                    with_graceful["rps"] / plain["rps"],
                    with_graceful["cpu_s_per_10k"] / plain["cpu_s_per_10k"],
                )
            )
    return rows
