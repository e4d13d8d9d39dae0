"""Where a real node's binaries are: the directory `make cluster-bins`
(cluster/build-node.sh) builds kubelet, kube-proxy, containerd, ctr, the runc shim, runc,
the CNI plugins and the pause image into.

As for the control plane (lab.kube.bins), the directory's name is the hash build-node.sh
computes of the pinned module files and the build's own scripts, so a checkout finds
exactly the node of its own pins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lab.kube.bins import (
    BinariesError,
    cache_key,
    cache_root,
    read_versions,
    repo_cluster_dir,
)

BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "runc")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
MODULES = ("kube", "containerd", "runc", "cni")
# The files whose bytes make the cache key, in build-node.sh's order.
KEY_FILES = (
    *(f"node/{m}/{f}" for m in MODULES for f in ("go.mod", "go.sum")),
    "build-node.sh",
    "node/build-pause.sh",
    "node/pause-image.py",
)
PAUSE_TARBALL = "pause.tar"
BUILD_HINT = "build them with `make cluster-bins` (minutes the first time: docs/cluster.md)"


@dataclass(frozen=True)
class NodeBinaries:
    directory: Path

    def path(self, name: str) -> Path:
        """A program: kubelet, kube-proxy, containerd, ctr, runc, the shim."""
        return self.directory / "bin" / name

    @property
    def bin_dir(self) -> Path:
        """Goes first on containerd's PATH: it finds the shim there, the shim runc."""
        return self.directory / "bin"

    @property
    def cni_dir(self) -> Path:
        return self.directory / "cni"

    @property
    def pause_tarball(self) -> Path:
        return self.directory / PAUSE_TARBALL

    @property
    def versions(self) -> dict[str, str]:
        """{"kubernetes": "v1.37.2", "containerd": "v2.4.2", ..., "pause-image": NAME}."""
        return read_versions(self.directory)

    @property
    def pause_image(self) -> str:
        """The sandbox image's name, as the tarball's index names it."""
        return self.versions["pause-image"]


def find(directory: Path | None = None) -> NodeBinaries:
    """The node's binaries in `directory`, or in the cache directory of this checkout's
    pins. Raises BinariesError naming what is missing and how to build it."""
    if directory is None:
        directory = cache_root("node-bins", "LAB_NODE_BINS") / cache_key(
            repo_cluster_dir(), KEY_FILES
        )
    wanted = [f"bin/{b}" for b in BINARIES] + [f"cni/{p}" for p in CNI_PLUGINS]
    missing = [name for name in wanted if not os.access(directory / name, os.X_OK)]
    if not (directory / PAUSE_TARBALL).is_file():
        missing.append(PAUSE_TARBALL)
    if missing:
        where = "no such directory" if not directory.is_dir() else f"missing {', '.join(missing)}"
        raise BinariesError(f"node binaries not found in {directory} ({where}): {BUILD_HINT}")
    return NodeBinaries(directory)
