"""What the cluster's nodes make beside processes, recorded so that the next `lab
cluster up` or `down` can remove it after a SIGKILL of `lab`: the Docker runtime's
containers, network and parent cgroup (all labelled with its run id), and the nftables
table of dead addresses. Processes die with `lab` on their own (a parent-death
signal); these do not. The record and the sweep are lab.leftovers', shared with `lab run`.
"""

from __future__ import annotations

from pathlib import Path

from lab import leftovers

NODES_DIR = "nodes"  # the nodes' directory in a cluster's state directory
RECORD = leftovers.RECORD  # in the nodes' directory


def record(nodes_dir: Path, docker_run: str | None, nft_table: str | None) -> None:
    """Write what the nodes made before they make it: a crash in between leaves a record
    of something that is not there, which the sweep takes as done."""
    leftovers.record(nodes_dir, docker_run, nft_table)


def forget(nodes_dir: Path) -> None:
    leftovers.forget(nodes_dir)


def sweep(nodes_dir: Path) -> list[str]:
    """Remove what a killed run's nodes left; one line per thing removed. The real
    nodes' (lab.kube.real_nodes) after the owner's marked processes are gone."""
    from lab.kube import real_nodes

    done = leftovers.sweep(nodes_dir)
    return done + real_nodes.sweep(nodes_dir)
