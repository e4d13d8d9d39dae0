"""The control plane's binaries: built from the pinned official modules, stamped with
their release, and found by the lab where `make cluster-bins` put them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from lab.kube import bins

CLUSTER = bins.repo_cluster_dir()


def _pinned(module: str, gomod: Path) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", gomod.read_text(), re.M)
    assert match, f"{module} not in {gomod}"
    return match.group(1)


def test_build_script_and_lab_agree_on_the_directory() -> None:
    """1. Run cluster/build.sh (make test built the binaries: it finds them up to date).
    2. The directory it prints is the one lab.kube.bins finds from the same pins."""
    result = subprocess.run(
        [str(CLUSTER / "build.sh")], capture_output=True, text=True, timeout=60, check=True
    )
    assert "up to date" in result.stderr
    assert Path(result.stdout.strip()) == bins.find().directory


def test_binaries_carry_the_pinned_releases() -> None:
    """1. Read the pinned versions from cluster/kube/go.mod and cluster/etcd/go.mod.
    2. kube-apiserver, kubectl and etcd report exactly those (stamped as upstream does,
       not v0.0.0-master)."""
    found = bins.find()
    kube = _pinned("k8s.io/kubernetes", CLUSTER / "kube" / "go.mod")
    etcd = _pinned("go.etcd.io/etcd/server/v3", CLUSTER / "etcd" / "go.mod")
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        out = subprocess.run(
            [str(found.path(name)), "--version"], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.strip() == f"Kubernetes {kube}", name
    client = subprocess.run(
        [str(found.path("kubectl")), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    info = json.loads(client.stdout)["clientVersion"]
    assert (info["gitVersion"], info["major"], info["minor"]) == (
        kube,
        kube.split(".")[0][1:],
        kube.split(".")[1],
    )
    out = subprocess.run(
        [str(found.path("etcd")), "--version"], capture_output=True, text=True, timeout=30
    )
    assert f"etcd Version: {etcd[1:]}" in out.stdout
    assert found.versions == {"kubernetes": kube, "etcd": etcd}


def test_staging_replaces_are_those_of_the_kubernetes_go_mod() -> None:
    """1. Download (from the module cache) the go.mod of the pinned k8s.io/kubernetes.
    2. Every module it replaces with ./staging/src/... is replaced in cluster/kube/go.mod
       by the published v0.MINOR.PATCH, and nothing else is replaced."""
    kube = _pinned("k8s.io/kubernetes", CLUSTER / "kube" / "go.mod")
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube}"],
        cwd=CLUSTER / "kube",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    upstream = Path(json.loads(info.stdout)["GoMod"]).read_text()
    staging = set(re.findall(r"^\s*(\S+) => \./staging/\S+$", upstream, re.M))
    ours = dict(
        re.findall(r"^\s*(\S+) => \S+ (v\S+)$", (CLUSTER / "kube" / "go.mod").read_text(), re.M)
    )
    assert set(ours) == staging
    assert set(ours.values()) == {"v0." + kube.removeprefix("v1.")}


def test_missing_binaries_name_the_directory_and_the_build(tmp_path: Path) -> None:
    """1. Point the lab at an empty directory, then at one with only etcd.
    2. Each error names the directory, what is missing and `make cluster-bins`."""
    with pytest.raises(bins.BinariesError) as empty:
        bins.find(tmp_path / "nowhere")
    assert "nowhere (no such directory)" in str(empty.value)
    assert "make cluster-bins" in str(empty.value)
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    with pytest.raises(bins.BinariesError) as partial:
        bins.find(tmp_path)
    assert "missing kube-apiserver, kube-controller-manager, kube-scheduler, kubectl" in str(
        partial.value
    )
