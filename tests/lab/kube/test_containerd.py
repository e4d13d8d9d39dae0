"""containerd started by the lab for a real node: its own socket, root and state, the
CRI plugin, the pause image imported into k8s.io, and nothing left after it stops or
after its owner is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import leftovers
from lab.kube import node_bins
from lab.kube.containerd import (
    Containerd,
    Layout,
    config_toml,
    mounts_under,
    processes_in_mount_namespace,
)
from tests.support import wait_until


def test_config_names_only_the_labs_paths(tmp_path: Path) -> None:
    """containerd's config (version 3) puts its socket, root and state under the lab's
    directory, never the Docker engine's, with cgroupfs, the node's runc, CNI plugins and
    pause image as the pinned sandbox image."""
    found = node_bins.find()
    text = config_toml(Layout(tmp_path), found)
    assert text.splitlines()[1] == "version = 3"
    assert "/run/containerd" not in text and "/var/lib/containerd" not in text
    for path in (tmp_path / "containerd.sock", tmp_path / "root", tmp_path / "state"):
        assert f'"{path}"' in text
    assert "SystemdCgroup = false" in text
    assert f'sandbox = "{found.pause_image}"' in text
    assert f'bin_dirs = ["{found.cni_dir}"]' in text
    assert f'BinaryName = "{found.path("runc")}"' in text


def _mountinfo(pid: int) -> str:
    return Path(f"/proc/{pid}/mountinfo").read_text()


def _run(containerd: Containerd) -> dict[str, object]:
    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        try:
            await containerd.start()
            seen["namespace"] = containerd.mount_namespace
            seen["plugins"] = await containerd.ctr("plugins", "ls")
            found = containerd.binaries
            seen["labels"] = await containerd.import_image(found.pause_tarball, found.pause_image)
            seen["images"] = await containerd.image_names()
            seen["ls"] = await containerd.ctr("images", "ls")
            assert containerd.process is not None
            seen["mounts_in_its_namespace"] = _mountinfo(containerd.process.pid)
        finally:
            seen["forced"] = await containerd.stop()
        return seen

    return asyncio.run(scenario())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose path leaves room for containerd's sockets (a unix socket's path
    has at most 104 bytes here, and pytest-xdist's tmp_path is longer)."""
    path = Path(tempfile.mkdtemp(prefix="lab-ctrd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_start_import_pause_image_stop_leaves_nothing(short_dir: Path) -> None:
    """1. Start containerd in a directory of its own; wait for its socket.
    2. Its CRI plugin is loaded; import the pause tarball; `ctr -n k8s.io images ls`
       lists the pause image, pinned; /run in its namespace is its own tmpfs.
    3. Stop it: no process is left in its mount namespace, no mount under its directory,
       its root, state and socket are gone, and nothing had to be forced."""
    found = node_bins.find()
    containerd = Containerd(short_dir / "containerd", found)
    seen = _run(containerd)
    plugins = str(seen["plugins"])
    assert any(
        line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
        for line in plugins.splitlines()
    ), plugins
    assert found.pause_image in seen["images"]  # type: ignore[operator]
    assert found.pause_image in str(seen["ls"])
    # The CRI plugin took it into its store, pinned as the sandbox image.
    labels = str(seen["labels"]).split(",")
    assert "io.cri-containerd.image=managed" in labels
    assert "io.cri-containerd.pinned=pinned" in labels
    (run,) = [m for m in str(seen["mounts_in_its_namespace"]).splitlines() if " /run " in m]
    assert "lab-containerd-run" in run  # its own tmpfs: its shims' sockets are not Docker's
    assert seen["forced"] == []
    assert containerd.process is not None and containerd.process.returncode is not None
    assert processes_in_mount_namespace(str(seen["namespace"])) == []
    assert mounts_under(short_dir) == []
    layout = containerd.layout
    assert not layout.root.exists() and not layout.state.exists() and not layout.socket.exists()


OWNER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from lab.kube import node_bins
    from lab.kube.containerd import Containerd

    async def main():
        containerd = Containerd(Path(sys.argv[1]), node_bins.find())
        await containerd.start()
        found = containerd.binaries
        await containerd.import_image(found.pause_tarball, found.pause_image)
        print(containerd.process.pid, containerd.mount_namespace, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_sigkill_of_the_owner_leaves_no_process_or_mount(tmp_path: Path, short_dir: Path) -> None:
    """1. A process starts containerd and imports the pause image, then is SIGKILLed.
    2. The kernel kills containerd (parent-death signal); its mount namespace, with every
       mount it made, goes with it: no process left in it, no mount under its root."""
    node_bins.find()
    err = tmp_path / "owner.err"
    with err.open("wb") as err_file:
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(short_dir / "containerd")],
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
            start_new_session=True,
        )
    namespace = ""
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # the pytest timeout bounds it
        assert line, err.read_text()
        pid_text, namespace = line.split()
        pid = int(pid_text)
        started = leftovers.start_time(pid)
        assert started is not None
        assert processes_in_mount_namespace(namespace)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        wait_until(lambda: not leftovers.same_process(pid, started), 15.0, what="containerd to die")
        wait_until(
            lambda: processes_in_mount_namespace(namespace) == [],
            15.0,
            what="containerd's mount namespace to empty",
        )
        assert mounts_under(short_dir) == []
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
        for left, left_started in processes_in_mount_namespace(namespace) if namespace else []:
            if leftovers.same_process(left, left_started):
                os.kill(left, signal.SIGKILL)
