"""Dead addresses: packets to and from a pod address dropped, as for a sandbox or a node
that is gone.

On loopback a closed port answers a SYN with an instant RST; in a cluster a pod's IP
goes with its sandbox right after its containers stop, and a failed node answers
nothing, so clients wait for their connect or request timeout. The lab adds one nftables
table of its own per run (`lab_dead_<pid>_<n>`): a set of dead addresses and rules
dropping every packet to or from one of them (the SYN to it, and the RST a killed socket
would still send from it), at three hooks: output (what this host sends, loopback
included), input (what a container sends to the host through the run's bridge) and
forward (what crosses the bridge between containers, where br_netfilter passes bridged
packets to it, as the Docker engine sets up). An address leaves the set when a new pod
gets it. The whole table is deleted when the run ends, on the forced path as well. No
other address and no other table is touched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil

NFT_TIMEOUT = 10.0


class BlackholeError(RuntimeError):
    pass


def available() -> str | None:
    """None if dead addresses can be made here, else why not."""
    if shutil.which("nft") is None and not os.access("/usr/sbin/nft", os.X_OK):
        return "nft (nftables) is not installed: run `make system-deps`"
    if os.geteuid() != 0:
        return "nftables rules need root"
    return None


_made = itertools.count()


class Blackhole:
    def __init__(self, table: str | None = None) -> None:
        # Unique per run, also for two runs in one process.
        self.table = table or f"lab_dead_{os.getpid()}_{next(_made)}"
        self.created = False
        self.dead: set[str] = set()

    async def _nft(self, *args: str) -> None:
        nft = shutil.which("nft") or "/usr/sbin/nft"
        process = await asyncio.create_subprocess_exec(
            nft,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), NFT_TIMEOUT)
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            text = output.decode(errors="replace").strip()
            raise BlackholeError(f"nft {' '.join(args)}: {text}")

    async def _create(self) -> None:
        await self._nft("add", "table", "ip", self.table)
        self.created = True  # before the rest: close() must delete a half-made table
        await self._nft("add", "set", "ip", self.table, "dead", "{ type ipv4_addr; }")
        for chain, hook, fields in (
            ("out", "output", ("daddr", "saddr")),
            ("in", "input", ("saddr",)),
            ("through", "forward", ("daddr", "saddr")),
        ):
            await self._nft(
                "add",
                "chain",
                "ip",
                self.table,
                chain,
                f"{{ type filter hook {hook} priority 0; policy accept; }}",
            )
            for field in fields:
                await self._nft(
                    "add", "rule", "ip", self.table, chain, "ip", field, "@dead", "drop"
                )

    async def drop(self, address: str) -> None:
        """From now on, packets to or from `address` vanish."""
        if not self.created:
            await self._create()
        await self._nft("add", "element", "ip", self.table, "dead", f"{{ {address} }}")
        self.dead.add(address)

    async def revive(self, address: str) -> None:
        """The address answers again (a new pod has it)."""
        if address not in self.dead:
            return
        await self._nft("delete", "element", "ip", self.table, "dead", f"{{ {address} }}")
        self.dead.discard(address)

    async def close(self) -> None:
        """Delete the table with its set and rules; safe to call twice."""
        if not self.created:
            return
        await self._nft("delete", "table", "ip", self.table)
        self.created = False
        self.dead.clear()
