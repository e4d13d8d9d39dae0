"""Where operation points go: InfluxDB 1.x over HTTP, or a local line-protocol file.

Each sink writes a batch of lines (`write`), and can count and clear what it holds (the
original Makefile's influxdb-count / influxdb-clear).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx

from calc.config import Secret
from calc.points import MEASUREMENT
from graceful import PermanentWriteError

_DROPPED = re.compile(r"dropped=(\d+)")


class SinkError(RuntimeError):
    """A count or clear could not be done; the message says why."""


class Sink(Protocol):
    async def write(self, lines: Sequence[str]) -> None: ...
    async def aclose(self) -> None: ...


class InfluxSink:
    """Writes with one pooled async client; connect and write timeouts bound every call."""

    def __init__(
        self,
        base_url: str,
        db: str,
        timeout: float = 5.0,
        auth: tuple[str, Secret] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.db = db
        # Basic auth, never a URL with user info: URLs end up in errors and logs.
        self._auth = (auth[0], auth[1].reveal()) if auth else None
        self._client = httpx.AsyncClient(
            auth=self._auth,
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )

    async def write(self, lines: Sequence[str]) -> None:
        response = await self._client.post(
            "/write",
            params={"db": self.db, "precision": "ns"},
            content="\n".join(lines).encode(),
        )
        if response.status_code == 204:
            return
        text = response.text.strip()[:500]
        if response.status_code == 400:
            # InfluxDB 1.x keeps the valid points of a batch and reports the rest.
            match = _DROPPED.search(text)
            rejected = int(match.group(1)) if match else len(lines)
            raise PermanentWriteError(f"InfluxDB 400: {text}", rejected=min(rejected, len(lines)))
        raise RuntimeError(f"InfluxDB answered {response.status_code}: {text}")

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- count / clear (synchronous: used by the CLI) -------------------------------------

    def _query(self, q: str) -> list[dict[str, object]]:
        try:
            response = httpx.post(
                f"{self.base_url}/query",
                params={"db": self.db, "q": q},
                timeout=10.0,
                auth=self._auth,
            )
        except httpx.HTTPError as exc:
            raise SinkError(f"cannot reach InfluxDB at {self.base_url}: {exc}") from None
        if response.status_code != 200:
            raise SinkError(f"InfluxDB answered {response.status_code}: {response.text.strip()}")
        result = response.json()["results"][0]
        if "error" in result:
            raise SinkError(f"InfluxDB: {result['error']}")
        series: list[dict[str, object]] = result.get("series", [])
        return series

    def count(self) -> int:
        series = self._query(f'SELECT count("result") FROM "{MEASUREMENT}"')
        if not series:
            return 0
        values = series[0]["values"]
        assert isinstance(values, list)
        return int(values[0][1])

    def clear(self) -> None:
        self._query(f'DROP MEASUREMENT "{MEASUREMENT}"')


class FileSink:
    """Appends lines to a local file: the standalone default, so nothing is lost."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def write(self, lines: Sequence[str]) -> None:
        data = "".join(line + "\n" for line in lines)
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(data)

    async def aclose(self) -> None:
        return None

    def count(self) -> int:
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.startswith(MEASUREMENT.encode()))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise SinkError(f"cannot read {self.path}: {exc}") from None

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot remove {self.path}: {exc}") from None
