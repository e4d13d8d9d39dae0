"""Where the control plane's binaries are: the directory `make cluster-bins`
(cluster/build.sh) builds them into.

The directory's name is a hash of the pinned module files and the build script, the same
hash build.sh computes, so a checkout finds exactly the binaries of its own pins and
never a stale build of other ones.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# The files whose bytes make the cache key, in build.sh's order.
KEY_FILES = ("kube/go.mod", "kube/go.sum", "etcd/go.mod", "etcd/go.sum", "build.sh")
BUILD_HINT = "build them with `make cluster-bins` (minutes the first time: docs/cluster.md)"


class BinariesError(RuntimeError):
    """The control plane's binaries are missing or incomplete."""


def repo_cluster_dir() -> Path:
    """cluster/ of the checkout this package runs from (src/lab/kube -> the root)."""
    return Path(__file__).resolve().parents[3] / "cluster"


def cache_root(name: str = "cluster-bins", env: str = "LAB_CLUSTER_BINS") -> Path:
    """Where a build's keyed directories go: $`env`, else the user's cache (as the build
    scripts compute it)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "graceful-calc" / name


def cache_key(cluster_dir: Path, key_files: tuple[str, ...] = KEY_FILES) -> str:
    """The hash of `key_files` (under cluster/) a build script names its directory by."""
    digest = hashlib.sha256()
    for name in key_files:
        path = cluster_dir / name
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise BinariesError(f"cannot read {path}: {exc.strerror}") from exc
    return digest.hexdigest()[:16]


def read_versions(directory: Path) -> dict[str, str]:
    """A build's VERSIONS file ("NAME VERSION" lines) as a dict; empty if it is missing."""
    out: dict[str, str] = {}
    try:
        lines = (directory / "VERSIONS").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, _, version = line.partition(" ")
        if version:
            out[name] = version
    return out


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def versions(self) -> dict[str, str]:
        """{"kubernetes": "v1.37.2", "etcd": "v3.7.3"} from the build's VERSIONS file."""
        return read_versions(self.directory)


def find(directory: Path | None = None) -> Binaries:
    """The binaries in `directory`, or in the cache directory of this checkout's pins.
    Raises BinariesError naming what is missing and how to build it."""
    if directory is None:
        directory = cache_root() / cache_key(repo_cluster_dir())
    missing = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    if missing:
        where = "no such directory" if not directory.is_dir() else f"missing {', '.join(missing)}"
        raise BinariesError(
            f"control plane binaries not found in {directory} ({where}): {BUILD_HINT}"
        )
    return Binaries(directory)
