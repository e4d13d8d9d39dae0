"""Part 2: `lab run --scenario rollout-restart` for each target, load balancer and preStop.

Each run is the lab's own CLI on `k8s/<target>-prestop.yml` or `-nostop.yml` with the
image map `images.yml`; its report.json gives the requests and the failed ones by kind.
The lab runs in its own session; if this script is stopped, the lab gets SIGTERM (its
handler stops every process it started) and its group SIGKILL after a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers.servers import IMAGES, REPO, Peer, manifest_path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RolloutOptions:
    vus: int = 50
    endpoint_lag: str = "1"
    warmup: float = 5.0
    cooldown: float = 5.0
    replicas: int | None = None  # None: the manifest's 5
    timeout: float = 600.0  # for one whole lab run


def lab_command(peer: Peer, lb: str, prestop: bool, out: Path, opts: RolloutOptions) -> list[str]:
    command = [
        str(BIN / "lab"),
        "run",
        "--manifests",
        str(manifest_path(peer, prestop)),
        "--image-map",
        str(IMAGES),
        "--scenario",
        "rollout-restart",
        "--vus",
        str(opts.vus),
        "--lb",
        lb,
        "--endpoint-lag",
        opts.endpoint_lag,
        "--warmup",
        str(opts.warmup),
        "--cooldown",
        str(opts.cooldown),
        "--out",
        str(out),
        "--quiet",
    ]
    if opts.replicas is not None:
        command += ["--replicas", str(opts.replicas)]
    return command


def run_lab(command: Sequence[str], log: Path, timeout: float) -> int:
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return -1  # the finally clause stops it
    finally:
        if process.poll() is None:
            # Stopped early (Ctrl-C, timeout): let the lab clean up its pods, then force.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def measure(peer: Peer, lb: str, prestop: bool, out: Path, opts: RolloutOptions) -> dict[str, Any]:
    # Absolute: the lab names HAProxy's stats socket by a path under its out dir, and
    # HAProxy reads a path without a leading / as host:port.
    stop = "prestop" if prestop else "nostop"
    run_dir = (out / f"{peer.name}-{lb}-{stop}-lag{opts.endpoint_lag}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "lab.log"
    code = run_lab(lab_command(peer, lb, prestop, run_dir, opts), log, opts.timeout)
    row: dict[str, Any] = {
        "target": peer.name,
        "lb": lb,
        "prestop": prestop,
        "endpoint_lag": opts.endpoint_lag,
        "lab_exit": code,
        "out": str(run_dir),
    }
    report_path = run_dir / "report.json"
    if code != 0 or not report_path.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        row["error"] = " / ".join(tail) or f"lab exited with {code}"
        return row
    report = json.loads(report_path.read_text())
    for key in ("requests", "ok", "failed", "failed_total", "action_completed", "action_s"):
        row[key] = report[key]
    row["error_examples"] = report.get("error_examples", {})
    return row


def run(
    peers: Sequence[Peer],
    lbs: Sequence[str],
    out: Path,
    opts: RolloutOptions,
    lags: Sequence[str] = (),
    prestops: Sequence[bool] = (True, False),
) -> list[dict[str, Any]]:
    """Every combination; `lags` (endpoint lags) defaults to `opts.endpoint_lag`."""
    rows = []
    for lag in lags or (opts.endpoint_lag,):
        lag_opts = dataclasses.replace(opts, endpoint_lag=lag)
        for prestop in prestops:
            for lb in lbs:
                for peer in peers:
                    print(
                        f"rollouts: {peer.name}, lb {lb}, lag {lag} s, "
                        f"{'preStop sleep 5' if prestop else 'no preStop'}",
                        file=sys.stderr,
                        flush=True,
                    )
                    rows.append(measure(peer, lb, prestop, out, lag_opts))
    return rows


def render(rows: Sequence[dict[str, Any]], opts: RolloutOptions) -> str:
    lines = [
        f"rollouts: lab rollout-restart, {opts.replicas or 5} replicas, {opts.vus} VUs, new "
        f"connection per request, HAProxy retries 0",
        "",
        "| target | preStop | lb | lag s | requests | failed | failed by kind | rollout s (until old pods are gone) |",
        "|---|---|---|--:|--:|--:|---|--:|",
    ]
    for r in rows:
        prestop = "sleep 5" if r["prestop"] else "none"
        if "error" in r:
            lines.append(
                f"| {r['target']} | {prestop} | {r['lb']} | {r['endpoint_lag']} | - | - "
                f"| lab failed: {r['error']} | - |"
            )
            continue
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["failed"].items())) or "-"
        action = f"{r['action_s']:.1f}" if r["action_s"] is not None else "?"
        if not r["action_completed"]:
            action += " (not completed)"
        pct = 100 * r["failed_total"] / r["requests"] if r["requests"] else 0.0
        lines.append(
            f"| {r['target']} | {prestop} | {r['lb']} | {r['endpoint_lag']} | {r['requests']} "
            f"| {r['failed_total']} ({pct:.2f} %) | {kinds} | {action} |"
        )
    return "\n".join(lines)
