"""The real kube-proxy in nftables mode, as a child process of the lab, for a real node:
its credentials (a client certificate of the cluster CA for system:kube-proxy, the user
the API server's bootstrap binding system:node-proxier grants Services, EndpointSlices
and Nodes), its kubeconfig and config file, and its clean-up.

kube-proxy programs the machine's network namespace, which every real node of the lab
shares: one kube-proxy serves them all. Its rules are in the nftables tables
`ip kube-proxy` and `ip6 kube-proxy` (the name is compiled into it:
pkg/proxy/nftables/proxier.go), which it leaves behind when it stops; `stop()` and
`remove_tables()` delete them. Its conntrack settings are all 0, so it changes none of the
machine's conntrack tunables (pkg/proxy/conntrack/sysctls.go sets only those > 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from lab import leftovers
from lab.kube.node_bins import NodeBinaries
from lab.kube.real_kubelet import client_certificate, kubeconfig
from lab.procs import DIE_WITH_PARENT, spawn_logged, terminate

TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
USER = "system:kube-proxy"
STOP_TIMEOUT = 10.0
NFT_TIMEOUT = 10.0


def config(
    node: str, kubeconfig_path: Path, cluster_cidr: str, address: str, healthz: int, metrics: int
) -> dict[str, object]:
    """The KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1)."""
    zero = "0s"
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(kubeconfig_path)},
        "hostnameOverride": node,
        "clusterCIDR": cluster_cidr,
        "bindAddress": address,
        "healthzBindAddress": f"127.0.0.1:{healthz}",
        "metricsBindAddress": f"127.0.0.1:{metrics}",
        # NodePorts on the node's own address only, not on every address of the machine.
        "nodePortAddresses": [f"{address}/32"],
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": zero,
            "tcpCloseWaitTimeout": zero,
            "tcpBeLiberal": False,
            "udpTimeout": zero,
            "udpStreamTimeout": zero,
        },
    }


def _nft(*args: str) -> bool:
    try:
        result = subprocess.run(
            ["nft", *args], capture_output=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def remove_tables() -> list[str]:
    """Delete kube-proxy's nftables tables; one line per table removed."""
    return [
        f"removed the nftables table {family} {name}"
        for family, name in TABLES
        if _nft("delete", "table", family, name)
    ]


class KubeProxy:
    """One kube-proxy: `await start()`, `await stop()`. Start it from the event loop's
    thread (the parent death signal follows the thread that forked)."""

    def __init__(
        self,
        node: str,
        directory: Path,
        binaries: NodeBinaries,
        api_url: str,
        pki_dir: Path,
        cluster_cidr: str,
        address: str,
        ports: tuple[int, int],
    ) -> None:
        self.node = node
        self.directory = directory.resolve()
        self.binaries = binaries
        self.api_url = api_url
        self.pki_dir = pki_dir
        self.cluster_cidr = cluster_cidr
        self.address = address
        self.healthz, self.metrics = ports
        self.marks = leftovers.marks()
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0

    @property
    def log(self) -> Path:
        return self.directory / "kube-proxy.log"

    def write_files(self) -> list[str]:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        ca_cert = self.pki_dir / "ca.crt"
        cert, key = client_certificate(
            f"/CN={USER}", "kube-proxy", ca_cert, self.pki_dir / "ca.key", d / "pki"
        )
        (d / "kubeconfig").write_text(json.dumps(kubeconfig(self.api_url, ca_cert, cert, key)))
        conf = config(
            self.node, d / "kubeconfig", self.cluster_cidr, self.address, self.healthz, self.metrics
        )
        (d / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
        return ["--config", str(d / "config.json")]

    async def start(self) -> None:
        argv = [*DIE_WITH_PARENT, str(self.binaries.path("kube-proxy")), *self.write_files()]
        env = {**os.environ, **self.marks}
        self.process, self.started = await spawn_logged(argv, self.log, env)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> list[str]:
        """SIGTERM, SIGKILL after `timeout`, then its tables. What was forced, one line
        each."""
        said = await terminate(self.process, self.started, "kube-proxy", timeout)
        await asyncio.to_thread(remove_tables)
        return said
