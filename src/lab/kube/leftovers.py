"""What the cluster's nodes make beside processes, recorded so that the next `lab
cluster up` or `down` can remove it after a SIGKILL of `lab`: the Docker runtime's
containers, network and parent cgroup (all labelled with its run id), and the nftables
table of dead addresses. Processes die with `lab` on their own (a parent-death
signal); these do not.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

NODES_DIR = "nodes"  # the nodes' directory in a cluster's state directory
RECORD = "resources.json"  # in the nodes' directory
NFT_TIMEOUT = 10.0


def record(nodes_dir: Path, docker_run: str | None, nft_table: str | None) -> None:
    """Write what the nodes made before they make it: a crash in between leaves a record
    of something that is not there, which the sweep takes as done."""
    nodes_dir.mkdir(parents=True, exist_ok=True)
    path = nodes_dir / RECORD
    path.write_text(json.dumps({"docker_run": docker_run, "nft_table": nft_table}))


def forget(nodes_dir: Path) -> None:
    (nodes_dir / RECORD).unlink(missing_ok=True)


def sweep(nodes_dir: Path) -> list[str]:
    """Remove what a killed run's nodes left; one line per thing removed."""
    path = nodes_dir / RECORD
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    done: list[str] = []
    if recorded.get("nft_table"):
        done += _drop_table(str(recorded["nft_table"]))
    if recorded.get("docker_run"):
        done += _drop_docker(str(recorded["docker_run"]))
    path.unlink(missing_ok=True)
    return done


def _drop_table(table: str) -> list[str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        result = subprocess.run(
            [nft, "delete", "table", "ip", table],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f"removed leftover nftables table {table}"] if result.returncode == 0 else []


def _drop_docker(run_id: str) -> list[str]:
    import docker

    from lab.docker_runtime import LABEL
    from lab.run_cgroup import RunCgroup

    done: list[str] = []
    try:
        engine = docker.from_env(timeout=30)
    except docker.errors.DockerException:
        return done
    with contextlib.closing(engine):
        selector: dict[str, str | list[str] | bool] = {"label": f"{LABEL}={run_id}"}
        with contextlib.suppress(docker.errors.DockerException):
            for container in engine.containers.list(all=True, filters=selector):
                container.remove(force=True)
                done.append(f"removed leftover container {container.name}")
            for network in engine.networks.list(filters=selector):
                network.remove()
                done.append(f"removed leftover network {network.name}")
    cgroup = RunCgroup(f"lab-{run_id}")
    existed = [d for d in cgroup.directories() if d.exists()]
    if existed and not cgroup.remove():
        done.append(f"removed leftover cgroup {cgroup.parent}")
    return done
