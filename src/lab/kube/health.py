"""Health of the control plane's components, one check each, and the API client.

Each check returns None when healthy, else what it saw (for the error or the status
line). The API server is only ever called through the official `kubernetes` client; the
other components' health endpoints are plain HTTP(S) on loopback.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONTEXT = "lab"
CHECK_TIMEOUT = 3.0


def api_client(kubeconfig: Path) -> Any:
    """A `kubernetes.client.ApiClient` for the kubeconfig's `lab` context (the caller
    closes it)."""
    from kubernetes import config  # imported late: `lab run` never needs it

    return config.new_client_from_config(
        config_file=str(kubeconfig), context=CONTEXT, persist_config=False
    )


def get_raw(client: Any, path: str, timeout: float = CHECK_TIMEOUT) -> tuple[int, str]:
    """GET a non-resource path (/readyz, /livez) through the client, with its auth and
    TLS settings: (HTTP status, body)."""
    method, url, headers, _body, _post = client.param_serialize(
        "GET", path, header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"]
    )
    response = client.call_api(method, url, header_params=headers, _request_timeout=timeout)
    return int(response.status), bytes(response.read()).decode(errors="replace")


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def api_readyz_sync(client: Any) -> str | None:
    try:
        status, body = get_raw(client, "/readyz")
    except Exception as exc:  # the client raises urllib3's and its own errors alike
        return f"{type(exc).__name__}: {_short(str(exc))}"
    if status == 200 and body.strip() == "ok":
        return None
    # A failing /readyz lists every check with [-] for the failed ones.
    failed = [line for line in body.splitlines() if line.startswith("[-]")]
    return f"/readyz HTTP {status}: {_short('; '.join(failed) or body)}"


async def api_readyz(client: Any) -> str | None:
    # The client is synchronous: its calls run in a thread, each with a timeout.
    return await asyncio.to_thread(api_readyz_sync, client)


async def _http_check(url: str, verify: bool) -> tuple[int, str] | str:
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT, verify=verify) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {_short(str(exc)) or 'no answer'}"
    return response.status_code, response.text


async def etcd_health(client_url: str) -> str | None:
    """etcd's /health: {"health":"true"} once it has a leader and serves reads."""
    result = await _http_check(f"{client_url}/health", verify=True)
    if isinstance(result, str):
        return result
    status, body = result
    if status == 200 and '"health":"true"' in body.replace(" ", ""):
        return None
    return f"/health HTTP {status}: {_short(body)}"


async def secure_healthz(port: int) -> str | None:
    """/healthz of kube-controller-manager or kube-scheduler on their secure port. Their
    serving certificate is self-signed in memory, so it is not verified: the address is
    loopback and the path needs no credentials (--authorization-always-allow-paths)."""
    result = await _http_check(f"https://127.0.0.1:{port}/healthz", verify=False)
    if isinstance(result, str):
        return result
    status, body = result
    return None if status == 200 and body.strip() == "ok" else f"/healthz HTTP {status}"


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ready: str  # the Ready condition's status: "True", "False", "Unknown", or "none"
    reason: str


def list_nodes(client: Any) -> list[NodeStatus]:
    from kubernetes.client import CoreV1Api

    nodes = CoreV1Api(client).list_node(_request_timeout=CHECK_TIMEOUT)
    out = []
    for node in nodes.items:
        conditions = (node.status.conditions if node.status else None) or []
        ready = next((c for c in conditions if c.type == "Ready"), None)
        out.append(
            NodeStatus(
                name=node.metadata.name,
                ready=ready.status if ready is not None else "none",
                reason=(ready.reason or "") if ready is not None else "",
            )
        )
    return out
