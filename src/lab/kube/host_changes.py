"""What a real node changes on the machine outside its own directories, recorded before
the node starts and put back when it stops, or by the sweep after a SIGKILL of its owner
(the record is a file in the node's directory, so the sweep needs nothing else).

The kubelet, on start:
- sets six kernel tunables machine-wide (setupKernelTunables in
  pkg/kubelet/cm/container_manager_linux.go, with protectKernelDefaults false; with it
  true the kubelet refuses to start on a machine with other values): vm.overcommit_memory
  1, vm.panic_on_oom 0, kernel.panic 10, kernel.panic_on_oops 1,
  kernel.keys.root_maxkeys 1000000, kernel.keys.root_maxbytes 25000000;
- makes iptables chains in the machine's own tables for both families
  (pkg/kubelet/kubelet_network_linux.go): KUBE-IPTABLES-HINT in mangle,
  KUBE-KUBELET-CANARY in mangle, nat and filter, and in IPv4's filter KUBE-FIREWALL,
  jumped to from INPUT and OUTPUT, which drops packets to 127.0.0.0/8 from any other
  source;
- makes /var/log/containers (a symlink per container into its pod logs directory) and
  /var/lib/kubelet/device-plugins/kubelet.sock, paths compiled into it.
The CNI plugins under containerd: the bridge plugin turns on net.ipv4.ip_forward for its
gateway, and libcni caches each attachment's result in /var/lib/cni/results.

Each tunable goes back to its recorded value, each chain and path that was not there
before goes, and of those that were, only the node's own entries.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import leftovers

RECORD = "host-changes.json"
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    # kube-proxy's conntrack settings; its config (lab.kube.kube_proxy) turns them off.
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
# (iptables program, table, chain), the kubelet's.
CHAINS = (
    *(
        (program, table, "KUBE-KUBELET-CANARY")
        for program in ("iptables", "ip6tables")
        for table in ("mangle", "nat", "filter")
    ),
    ("iptables", "mangle", "KUBE-IPTABLES-HINT"),
    ("ip6tables", "mangle", "KUBE-IPTABLES-HINT"),
    ("iptables", "filter", "KUBE-FIREWALL"),
)
FIREWALL_JUMPS = ("INPUT", "OUTPUT")  # the built-in chains that jump to KUBE-FIREWALL
CONTAINER_LOGS = Path("/var/log/containers")
CNI_CACHE = Path("/var/lib/cni")
# Parents before children: a path that was not there goes with all under it.
PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/lib/kubelet/device-plugins"),
    Path("/var/lib/kubelet/device-plugins/kubelet.sock"),
    Path("/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint"),
    CONTAINER_LOGS,
    CNI_CACHE,
    CNI_CACHE / "results",
)
IPTABLES_TIMEOUT = 10.0


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    """The tunables' values as /proc/sys shows them (those this kernel has)."""
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def _iptables(program: str, *args: str) -> bool:
    try:
        result = subprocess.run(
            [program, "-w", "5", *args],
            capture_output=True,
            timeout=IPTABLES_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def chains_present() -> list[list[str]]:
    """The kubelet's chains that exist now, as [program, table, chain]."""
    return [
        [program, table, chain]
        for program, table, chain in CHAINS
        if _iptables(program, "-t", table, "-S", chain)
    ]


def state() -> dict[str, Any]:
    """What a node may change, as it is now (what the tests compare too)."""
    return {
        "sysctls": read_sysctls(),
        "chains": chains_present(),
        "paths": [str(p) for p in PATHS if p.exists() or p.is_symlink()],
    }


def record(directory: Path, pod_logs: Path, network: str) -> Path:
    """Write the record before the node starts: the machine's state, and what marks the
    node's own entries (its pod logs directory, its CNI network's name). An existing
    record is kept: it holds the values from before an earlier start that the owner did
    not live to put back."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RECORD
    if not path.exists():
        data = {
            **state(),
            "pod_logs": str(pod_logs.resolve()),
            "network": network,
            "recorded_at": time.time(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    return path


def recorded(directory: Path) -> dict[str, Any] | None:
    return leftovers.recorded(directory, RECORD)


def restore(directory: Path) -> list[str]:
    """Put back what the record in `directory` says, then remove the record. One line
    per thing put back or removed; nothing when there is no record. Run it after the
    kubelet and containerd stopped: a running kubelet makes it all again."""
    data = recorded(directory)
    if data is None:
        return []
    done = _restore_sysctls(data.get("sysctls", {}))
    done += _remove_chains({tuple(c) for c in data.get("chains", [])})
    done += _remove_paths(set(data.get("paths", [])), data)
    (directory / RECORD).unlink(missing_ok=True)
    return done


def restore_all(directories: list[Path]) -> list[str]:
    """Several nodes' records, the latest first: the earliest holds the values from
    before any of them started, so it is put back last."""
    found = [(d, recorded(d)) for d in directories]
    order = sorted(
        (d for d, data in found if data is not None),
        key=lambda d: -float((recorded(d) or {}).get("recorded_at", 0)),
    )
    done: list[str] = []
    for d in order:
        done += restore(d)
    return done


def _restore_sysctls(values: dict[str, str]) -> list[str]:
    done = []
    now = read_sysctls()
    for name, value in values.items():
        if name in SYSCTLS and now.get(name) != value:
            try:
                _sysctl_path(name).write_text(value)
                done.append(f"set {name} back to {value} (was {now.get(name)})")
            except OSError as exc:
                done.append(f"could not set {name} back to {value}: {exc.strerror}")
    return done


def _remove_chains(before: set[tuple[str, ...]]) -> list[str]:
    done = []
    for program, table, chain in CHAINS:
        if (program, table, chain) in before:
            continue
        if not _iptables(program, "-t", table, "-S", chain):
            continue
        if chain == "KUBE-FIREWALL":
            for builtin in FIREWALL_JUMPS:
                while _iptables(program, "-t", table, "-D", builtin, "-j", chain):
                    pass
        _iptables(program, "-t", table, "-F", chain)
        if _iptables(program, "-t", table, "-X", chain):
            done.append(f"removed the {program} chain {table} {chain}")
        else:
            done.append(f"could not remove the {program} chain {table} {chain}")
    return done


def _remove_paths(before: set[str], data: dict[str, Any]) -> list[str]:
    done = []
    for path in PATHS:
        if str(path) in before or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"removed {path}")
    # Of the shared directories that were there before, only the node's own entries.
    pod_logs = str(data.get("pod_logs", "")) + "/"
    if pod_logs != "/" and CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(link.readlink()).startswith(pod_logs):
                    link.unlink()
                    done.append(f"removed {link}")
    network = str(data.get("network", ""))
    results = CNI_CACHE / "results"
    if network and results.is_dir():
        for entry in results.glob(f"{network}-*"):
            entry.unlink(missing_ok=True)
            done.append(f"removed {entry}")
    return done
