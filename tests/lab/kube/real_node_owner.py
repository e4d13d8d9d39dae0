"""An owner of a real node that a test can SIGKILL: starts containerd and the real
kubelet for the API of a running `lab cluster up`, prints `started <kubelet pid>
<containerd pid>`, then waits (at most LIFETIME s) for the end it does not live to see.

python -m tests.lab.kube.real_node_owner NODE NODE_DIR API_URL PKI_DIR SOCKETS_DIR
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lab.kube import node_bins
from lab.kube.containerd import Containerd
from lab.kube.controlplane import free_ports
from lab.kube.real_kubelet import KubeletPorts, RealKubelet

LIFETIME = 300.0


async def main(node: str, node_dir: Path, api_url: str, pki_dir: Path, sockets: Path) -> None:
    found = node_bins.find()
    containerd = Containerd(node_dir / "containerd", found, subnet=None, socket_dir=sockets)
    kubelet = RealKubelet(
        node,
        node_dir / "kubelet",
        found,
        containerd.socket,
        api_url,
        pki_dir,
        KubeletPorts(*free_ports(3, set())),
        root_dir=sockets / "kubelet",
    )
    await containerd.start()
    await containerd.import_image(found.pause_tarball, found.pause_image)
    await kubelet.start()
    assert kubelet.process is not None and containerd.process is not None
    print(f"started {kubelet.process.pid} {containerd.process.pid}", flush=True)
    await asyncio.sleep(LIFETIME)  # the test's SIGKILL ends it long before


if __name__ == "__main__":
    name, directory, url, pki, short = sys.argv[1:6]
    asyncio.run(main(name, Path(directory), url, Path(pki), Path(short)))
