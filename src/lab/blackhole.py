"""Dead addresses: packets to and from a pod address dropped, as for a node that is off.

On loopback a closed port answers a SYN with an instant RST; a real cluster's dead node
answers nothing, so clients wait for their connect or request timeout. The lab adds one
nftables table of its own per run (`lab_dead_<pid>`), with one rule per dead address in
both directions (the SYN to it, and the RST a killed socket would still send from it),
and deletes the whole table when the run ends, on the forced path as well. No other
address and no other table is touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil

NFT_TIMEOUT = 10.0


class BlackholeError(RuntimeError):
    pass


def available() -> str | None:
    """None if dead addresses can be made here, else why not."""
    if shutil.which("nft") is None:
        return "nft (nftables) is not installed: run `make system-deps`"
    if os.geteuid() != 0:
        return "nftables rules need root"
    return None


class Blackhole:
    def __init__(self, table: str | None = None) -> None:
        self.table = table or f"lab_dead_{os.getpid()}"
        self.created = False
        self.dead: list[str] = []

    async def _nft(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "nft",
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

    async def drop(self, address: str) -> None:
        """From now on, packets to or from `address` vanish."""
        if not self.created:
            await self._nft("add", "table", "ip", self.table)
            self.created = True  # before the chain: close() must delete a half-made table
            await self._nft(
                "add",
                "chain",
                "ip",
                self.table,
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            )
        await self._nft("add", "rule", "ip", self.table, "out", "ip", "daddr", address, "drop")
        await self._nft("add", "rule", "ip", self.table, "out", "ip", "saddr", address, "drop")
        self.dead.append(address)

    async def close(self) -> None:
        """Delete the table and every rule in it; safe to call twice."""
        if not self.created:
            return
        await self._nft("delete", "table", "ip", self.table)
        self.created = False
        self.dead.clear()
