"""bench/peers' targets with graceful: their manifests probe graceful's readiness path,
the cost table compares each server with itself, and the rollout options parse."""

from __future__ import annotations

import argparse

import pytest

from bench.peers import cli, throughput
from bench.peers.servers import PEER_BY_NAME, manifest_path
from lab import manifest


def test_graceful_targets_probe_ready_and_run_the_graceful_commands() -> None:
    """1. Load the three +graceful targets' manifests with the lab's parser. 2. Each
    probes readiness on /ready (graceful's own answer) and liveness on /health, with or
    without the preStop sleep; the image differs from the plain target's."""
    for server in ("uvicorn", "hypercorn", "gunicorn"):
        peer = PEER_BY_NAME[f"{server}+graceful"]
        for prestop in (True, False):
            container = manifest.load(manifest_path(peer, prestop)).deployment.template.container
            assert container.readiness is not None and container.readiness.path == "/ready"
            assert container.liveness is not None and container.liveness.path == "/health"
            assert container.image == f"peer-{server}-graceful:latest"


def _medians(rps: float, cpu: float) -> dict[str, float]:
    return {
        "rps": rps,
        "p50_ms": 100.0,
        "p95_ms": 110.0,
        "p99_ms": 120.0,
        "cpu_s_per_10k": cpu,
        "peak_rss_mib": 50.0,
        "failed": 0.0,
    }


def test_graceful_cost_compares_each_server_with_itself() -> None:
    """1. Medians for uvicorn, uvicorn+graceful, hypercorn+graceful (no plain hypercorn)
    and calc-v10. 2. The cost rows: uvicorn only, rps 450/500 = 0.90x and CPU 5.5/5.0 =
    1.10x; the rendered table carries them."""
    summary = {
        "calc-v10": _medians(480, 4.0),
        "uvicorn": _medians(500, 5.0),
        "uvicorn+graceful": _medians(450, 5.5),
        "hypercorn+graceful": _medians(300, 9.0),
    }
    ((server, rps, cpu),) = throughput.graceful_cost(summary)
    assert (server, round(rps, 6), round(cpu, 6)) == ("uvicorn", 0.9, 1.1)
    result = {
        "vus": 50,
        "reuse": False,
        "duration_s": 5,
        "rounds": 1,
        "loadavg_1m": [1.0],
        "medians": summary,
        "spread": dict.fromkeys(summary, 0.0),
    }
    assert "| uvicorn | 0.90x | 1.10x |" in throughput.render(result)


@pytest.mark.parametrize("bad", ["", "x", "-1", "1,,y"])
def test_endpoint_lags_must_be_seconds(bad: str) -> None:
    """1. --endpoint-lags with an empty list, a word or a negative number. 2. Refused
    with a message naming the bad item; "1,3" parses to ("1", "3")."""
    with pytest.raises(argparse.ArgumentTypeError):
        cli._lags(bad)
    assert cli._lags("1, 3") == ("1", "3")
