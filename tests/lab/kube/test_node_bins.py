"""A real node's binaries: kubelet and kube-proxy at the control plane's release,
containerd 2.x, runc 1.5.x and the CNI plugins built from their pinned modules, and the
pause image from the Kubernetes pause source, found where `make cluster-bins` put them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from lab.kube import bins, node_bins

CLUSTER = bins.repo_cluster_dir()
NODE = CLUSTER / "node"


def _pinned(module: str, gomod: Path) -> str:
    match = re.search(rf"^\s*(?:require )?{re.escape(module)} (v\S+)", gomod.read_text(), re.M)
    assert match, f"{module} not in {gomod}"
    return match.group(1)


def _version(path: Path, *args: str) -> str:
    result = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def test_build_script_is_a_no_op_once_built_and_the_lab_finds_its_directory() -> None:
    """1. Run cluster/build-node.sh (make test built the node: it is up to date).
    2. It says so, builds nothing, and prints the directory lab.kube.node_bins finds."""
    result = subprocess.run(
        [str(CLUSTER / "build-node.sh")], capture_output=True, text=True, timeout=60, check=True
    )
    assert "up to date" in result.stderr
    assert "building" not in result.stderr
    assert Path(result.stdout.strip()) == node_bins.find().directory


def test_binaries_report_the_pinned_releases() -> None:
    """1. Read the pins of cluster/node/*/go.mod.
    2. kubelet and kube-proxy print the control plane's release, containerd 2.x, runc
       1.5.x with seccomp, and each CNI plugin the plugins' release."""
    found = node_bins.find()
    kube = _pinned("k8s.io/kubernetes", CLUSTER / "kube" / "go.mod")
    containerd = _pinned("github.com/containerd/containerd/v2", NODE / "containerd" / "go.mod")
    runc = _pinned("github.com/opencontainers/runc", NODE / "runc" / "go.mod")
    cni = _pinned("github.com/containernetworking/plugins", NODE / "cni" / "go.mod")
    assert containerd.startswith("v2.") and runc.startswith("v1.5.")
    for name in ("kubelet", "kube-proxy"):
        assert _version(found.path(name), "--version").strip() == f"Kubernetes {kube}", name
    out = _version(found.path("containerd"), "--version")
    assert out.startswith(f"containerd github.com/containerd/containerd/v2 {containerd}"), out
    assert f"ctr github.com/containerd/containerd/v2 {containerd}" in _version(
        found.path("ctr"), "--version"
    )
    out = _version(found.path("runc"), "--version")
    assert f"runc version {runc[1:]}" in out and "libseccomp: " in out, out
    for plugin in node_bins.CNI_PLUGINS:
        out = _version(found.cni_dir / plugin)
        assert f"CNI {plugin} plugin {cni}" in out, out
    assert found.versions == {
        "kubernetes": kube,
        "containerd": containerd,
        "runc": runc,
        "cni-plugins": cni,
        "pause-image": found.pause_image,
    }


def test_node_kubernetes_pin_is_the_control_planes() -> None:
    """cluster/node/kube/go.mod (kubelet, kube-proxy) requires the k8s.io/kubernetes of
    cluster/kube/go.mod with the same staging replaces, so node and control plane are one
    release (gen-pins.sh derives it; this catches a hand edit of one of them)."""
    node, plane = (NODE / "kube" / "go.mod").read_text(), (CLUSTER / "kube" / "go.mod").read_text()
    assert _pinned("k8s.io/kubernetes", NODE / "kube" / "go.mod") == _pinned(
        "k8s.io/kubernetes", CLUSTER / "kube" / "go.mod"
    )
    block = re.compile(r"^replace \(\n(.*?)^\)", re.M | re.S)
    node_replaces, plane_replaces = block.search(node), block.search(plane)
    assert node_replaces and plane_replaces
    assert node_replaces.group(1) == plane_replaces.group(1)


def test_pause_image_is_the_same_bytes_on_every_build(tmp_path: Path) -> None:
    """1. Build the pause binary and its image twice from the pinned Kubernetes source
       (cluster/node/build-pause.sh, as build-node.sh does).
    2. The two tarballs, and the one in the node's directory, have one digest; the
       image is FROM scratch: one layer holding only /pause, run as 65535:65535."""
    kube = _pinned("k8s.io/kubernetes", NODE / "kube" / "go.mod")
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube}"],
        cwd=NODE / "kube",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    source = json.loads(info.stdout)["Dir"]
    digests, names = [], []
    for n in (1, 2):
        out = subprocess.run(
            [str(NODE / "build-pause.sh"), source, kube, str(tmp_path / str(n))],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        names.append(out.stdout.strip())
        digests.append(hashlib.sha256((tmp_path / str(n) / "pause.tar").read_bytes()).hexdigest())
    found = node_bins.find()
    assert names == [found.pause_image] * 2
    assert digests == [hashlib.sha256(found.pause_tarball.read_bytes()).hexdigest()] * 2

    with tarfile.open(found.pause_tarball) as image:
        index = json.loads(image.extractfile("index.json").read())  # type: ignore[union-attr]
        (entry,) = index["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == found.pause_image

        def blob(digest: str) -> bytes:
            member = image.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None
            return member.read()

        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        assert config["config"] == {"Entrypoint": ["/pause"], "User": "65535:65535"}
        (layer,) = manifest["layers"]
        (tmp_path / "layer.tar").write_bytes(blob(layer["digest"]))
    with tarfile.open(tmp_path / "layer.tar") as files:
        assert files.getnames() == ["pause"]


def test_missing_go_is_one_clear_error(tmp_path: Path) -> None:
    """1. Run build-node.sh into an empty cache with a PATH that has no go.
    2. Exit 1 with one line naming the go command; nothing is left in the cache."""
    go = shutil.which("go")
    assert go is not None
    path = ":".join(d for d in os.environ["PATH"].split(":") if d and not (Path(d) / "go").exists())
    assert shutil.which("go", path=path) is None
    result = subprocess.run(
        [str(CLUSTER / "build-node.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": path, "LAB_NODE_BINS": str(tmp_path / "cache")},
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "node-bins: error: the go command is not on PATH (Go 1.26 or newer builds the node)"
    ]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
