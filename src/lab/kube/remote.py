"""`lab run --cluster kubeconfig[:CONTEXT]`: the experiment on any cluster a kubeconfig
names, reached only through its API server.

The run makes a namespace of its own (deleted at the end, also after an error or
Ctrl-C), applies InfluxDB there and then the manifests (server-side apply, as
`--cluster local`), acts through the API (`restartedAt` annotation, scale subresource,
apply) and sends k6's load from this machine to `--entry` or the Service's LoadBalancer
address. The timeline is the API's view, from watches on the Deployment's Pods and the
Service's EndpointSlices: created, ready, deleted, gone, and when an endpoint is
published or withdrawn.

What only a node shows (a pod's preStop and SIGTERM, each node proxy applying an
endpoint change) is not observed, and the report says so. The operation log is read
from the cluster's InfluxDB through the API server's service proxy
(`/api/v1/namespaces/NS/services/influxdb:8086/proxy/query`): the API server dials the
pod itself, so it needs no kubelet streaming server (which port-forward needs and the
lab's own kubelet does not serve) and no route from this machine to the pods. The API
server must reach the pod's address, as on kind, k3d and managed clusters; the process
runtime of `lab cluster up` reports podCIDR addresses nobody listens on, so there
`--influx-url` names an InfluxDB that both the pods and this machine reach: the
manifests' `influxdb:8086` is pointed at it and no InfluxDB is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from kubernetes import client
from kubernetes import config as kube_config

from lab.config import REPO
from lab.experiment import LabError, OperationLog, Prepared
from lab.influx import INFLUX_SERVICE, InfluxError, series_values
from lab.kube.api import REQUEST_TIMEOUT, Informer, WatchEvent, call, status_of
from lab.kube.experiment import KubeLab, _ready
from lab.kube.remote_config import resolve
from lab.manifest import raw_documents

CONNECT_TIMEOUT = 10.0  # the API server answers its version within this, or the run stops
NAMESPACE_GONE_TIMEOUT = 60.0
ENTRY_ANSWERS = 5  # answered requests in a row before the load starts
MANAGED_BY = {"app.kubernetes.io/managed-by": "lab"}
NOT_OBSERVED = (
    "not observed on a cluster reached through its kubeconfig: a pod's preStop and "
    "SIGTERM times (the kubelet's) and each node proxy applying an endpoint change; the "
    "timeline shows the API's view (pods created, ready, deleted, gone; endpoints "
    "published and withdrawn in the EndpointSlices)"
)


def influx_docs_path() -> Path:
    here = Path("deploy/k8s/influxdb.yml")
    return here if here.exists() else REPO / "deploy/k8s/influxdb.yml"


class InfluxThroughApi:
    """InfluxDB queries through the API server's service proxy, with the run's client."""

    def __init__(self, api: Any, namespace: str, service: str, port: int) -> None:
        self.api = api
        self.path = f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/query"
        self.where = f"service {namespace}/{service}:{port} through the API server"

    def query(self, q: str, db: str | None = None) -> list[dict[str, object]]:
        params = [("q", q), *([("db", db)] if db else [])]
        method, url, headers, _body, _post = self.api.param_serialize(
            "POST",
            self.path,
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(
                method, url, header_params=headers, _request_timeout=REQUEST_TIMEOUT
            )
            text = bytes(response.read()).decode(errors="replace")
        except Exception as exc:  # the client raises urllib3's and its own errors alike
            raise InfluxError(f"{self.where}: {q!r}: {exc}") from exc
        return _series(self.where, q, int(response.status), text)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def field_values(self, db: str, measurement: str, field: str) -> list[object]:
        return series_values(self.query(f'SELECT "{field}" FROM "{measurement}"', db=db))


class InfluxAtUrl:
    """InfluxDB queries to a URL this machine reaches (`--influx-url`)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.where = self.url

    def query(self, q: str, db: str | None = None) -> list[dict[str, object]]:
        params = {"q": q, **({"db": db} if db else {})}
        try:
            response = httpx.post(f"{self.url}/query", params=params, timeout=REQUEST_TIMEOUT)
        except httpx.HTTPError as exc:
            raise InfluxError(f"{self.where}: {q!r}: {exc}") from exc
        return _series(self.where, q, response.status_code, response.text)

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def field_values(self, db: str, measurement: str, field: str) -> list[object]:
        return series_values(self.query(f'SELECT "{field}" FROM "{measurement}"', db=db))


def _series(where: str, q: str, status: int, text: str) -> list[dict[str, object]]:
    if status != 200:
        raise InfluxError(f"{where}: {q!r}: HTTP {status} {text[:300]}")
    result = json.loads(text)["results"][0]
    if "error" in result:
        raise InfluxError(f"{where}: {q!r}: {result['error']}")
    series: list[dict[str, object]] = result.get("series", [])
    return series


def _point_at(value: Any, host_port: str) -> Any:
    """Every string in a document with the InfluxDB Service's name pointed at host_port."""
    if isinstance(value, str):
        return INFLUX_SERVICE.sub(host_port, value)
    if isinstance(value, list):
        return [_point_at(v, host_port) for v in value]
    if isinstance(value, dict):
        return {k: _point_at(v, host_port) for k, v in value.items()}
    return value


class RemoteLab(KubeLab):
    """One experiment on a cluster reached only through its kubeconfig."""

    def __init__(self, prepared: Prepared) -> None:
        self.target = resolve(prepared.config.cluster, prepared.config.kubeconfig)
        influx_url = prepared.config.influx_url
        replaced = "replaced by the lab's own InfluxDB"
        notes = [
            note.replace(
                replaced,
                f"replaced by --influx-url {influx_url}"
                if influx_url
                else "applied to the cluster as it is",
            )
            for note in prepared.notes
            # The lab's own runtime's limits: the cluster's runtime has others.
            if not note.startswith("a gone pod's address") and "not modelled" not in note
        ]
        super().__init__(dataclasses.replace(prepared, notes=notes))
        # Unique on a shared cluster: the time and a random part.
        self.namespace = f"lab-{int(time.time())}-{secrets.token_hex(3)}"
        self.influx: InfluxThroughApi | InfluxAtUrl | None = None
        self.endpoints: dict[str, set[str]] = {}  # EndpointSlice uid -> ready pod names
        self.published: set[str] = set()  # pods with a ready endpoint in any slice
        self.endpoint_informer: Informer | None = None
        self.namespace_made = False
        self.entry: str | None = None

    def _where(self) -> str:
        return (
            f"on {self.target.server} (context {self.target.context} of {self.target.kubeconfig})"
        )

    # -- up: the API server, the namespace, InfluxDB -------------------------------------

    async def _up(self) -> None:
        self.api = await self._connect()
        core = client.CoreV1Api(self.api)
        body = {"metadata": {"name": self.namespace, "labels": MANAGED_BY}}
        await call(core.create_namespace, body)
        self.namespace_made = True
        self.events.phase("cluster", f"{self.target.server}, namespace {self.namespace}")
        self._watch_endpoints()
        if self.p.uses_influx:
            await self._influx_up()

    async def _connect(self) -> Any:
        """A client for the context; its API server answers within CONNECT_TIMEOUT."""
        configuration = client.Configuration()
        await asyncio.to_thread(
            kube_config.load_kube_config,
            config_file=str(self.target.kubeconfig),
            context=self.target.context,
            client_configuration=configuration,
            persist_config=False,
        )
        configuration.retries = 0  # one try each: a request's deadline is its own
        api = client.ApiClient(configuration)
        version = client.VersionApi(api)
        try:
            found = await asyncio.wait_for(
                call(version.get_code, _request_timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 2
            )
        except Exception as exc:
            api.close()
            what = (
                f"did not answer within {CONNECT_TIMEOUT:g} s"
                if isinstance(exc, TimeoutError) or "timed out" in str(exc)
                else "cannot be reached"
            )
            raise LabError(
                f"the API server {self.target.server} (context {self.target.context} of "
                f"{self.target.kubeconfig}) {what}: {_short(exc)}"
            ) from None
        self.events.add("", "cluster", f"Kubernetes {found.git_version}")
        return api

    async def _influx_up(self) -> None:
        """`--influx-url`, or InfluxDB applied in the namespace and ready; then the
        database the pods write to, made through it."""
        if self.config.influx_url is not None:
            self.influx = InfluxAtUrl(self.config.influx_url)
        else:
            docs = self._influx_documents()
            applied = await asyncio.to_thread(lambda: [self._apply_one(d) for d in docs])
            self.events.phase("influxdb", ", ".join(applied))
            service = next(d for d in docs if d.get("kind") == "Service")
            port = int(service["spec"]["ports"][0]["port"])
            self.influx = InfluxThroughApi(
                self.api, self.namespace, service["metadata"]["name"], port
            )
        influx = self.influx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ready_timeout
        while True:  # until InfluxDB answers: its pod starts, its endpoint is published
            try:
                await asyncio.to_thread(influx.create_database, self.p.influx_db)
                break
            except InfluxError as exc:
                if loop.time() > deadline:
                    hint = (
                        ""
                        if self.config.influx_url
                        else " (read through the API server's service proxy, which dials the "
                        "pod's address: where the API server cannot, as with the process "
                        "runtime of `lab cluster up`, use --influx-url)"
                    )
                    raise LabError(
                        f"InfluxDB did not answer within {self.config.ready_timeout:g} s{hint}: "
                        f"{exc}"
                    ) from None
            await asyncio.sleep(1.0)
        self.events.phase("influxdb-ready", f"database {self.p.influx_db} at {influx.where}")

    def _influx_documents(self) -> list[dict[str, Any]]:
        """The manifests' own InfluxDB Deployment and its Services, else
        deploy/k8s/influxdb.yml."""
        replaced = [s for s in self.p.manifests.supporting if s.replaced_by]
        if not replaced:
            return [d for _, d in raw_documents([influx_docs_path()])]
        names = {("Deployment", s.deployment.name) for s in replaced}
        names |= {("Service", svc.name) for s in replaced for svc in s.services}
        return [
            d
            for _, d in raw_documents(list(self.p.manifests.sources))
            if (d.get("kind"), (d.get("metadata") or {}).get("name")) in names
        ]

    async def _apply(self) -> None:
        docs = self._documents()
        if self.config.influx_url is not None:
            where = urlsplit(self.config.influx_url).netloc
            docs = [_point_at(d, where) if d.get("kind") != "Service" else d for d in docs]
        applied = await asyncio.to_thread(lambda: [self._apply_one(d) for d in docs])
        self.events.phase("applied", ", ".join(applied))

    # -- the API's view: pods and endpoints ----------------------------------------------

    def _pod_event(self, event: WatchEvent) -> None:
        if event.kind != "SYNCED":
            name = event.obj["metadata"]["name"]
            before = self.pods.get(name)
            after = None if event.kind == "DELETED" else event.obj
            for kind, detail in _pod_changes(before, after):
                self.events.add(name, kind, detail)
        super()._pod_event(event)

    def _watch_endpoints(self) -> None:
        service = self.p.manifests.service
        if service is None:
            return
        discovery = client.DiscoveryV1Api(self.api)
        self.endpoint_informer = Informer(
            f"endpoints of {service.name}",
            lambda **kw: discovery.list_namespaced_endpoint_slice(self.namespace, **kw),
            self._endpoint_event,
            lambda message: self.events.add("", "api-error", message),
            label_selector=f"kubernetes.io/service-name={service.name}",
        )
        self.endpoint_informer.start()

    def _endpoint_event(self, event: WatchEvent) -> None:
        if event.kind == "SYNCED":
            return
        uid = event.obj["metadata"]["uid"]
        if event.kind == "DELETED":
            self.endpoints.pop(uid, None)
        else:
            self.endpoints[uid] = {
                str((e.get("targetRef") or {}).get("name"))
                for e in event.obj.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready") and e.get("targetRef")
            }
        published = set().union(*self.endpoints.values()) if self.endpoints else set()
        for pod in sorted(published - self.published):
            self.events.add(pod, "endpoint-published", "ready in the Service's EndpointSlice")
        for pod in sorted(self.published - published):
            self.events.add(pod, "endpoint-withdrawn", "not ready in the EndpointSlice")
        self.published = published

    # -- deployed: rolled out, published, an entry ---------------------------------------

    async def _wait_deployed(self) -> str:
        timeout = self.config.ready_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self._until(self._deployed, timeout):
            raise LabError(
                f"the Deployment {self.deployment} was not rolled out with every pod in its "
                f"Service's endpoints within {timeout:g} s (namespace {self.namespace})"
            )
        entry = self.config.entry or await self._load_balancer(deadline - loop.time())
        # The API publishes an endpoint before the cluster's proxies route to it (their
        # lag is not observed): the load starts once the entry answers several new
        # connections in a row, each of which may go to another node and pod.
        answered = 0
        while answered < ENTRY_ANSWERS:
            if loop.time() > deadline:
                raise LabError(
                    f"the entry {entry} did not answer {ENTRY_ANSWERS} requests in a row "
                    f"within {timeout:g} s (each a new connection)"
                )
            answered = answered + 1 if await asyncio.to_thread(_answers, entry) else 0
            await asyncio.sleep(0.1)
        self.entry = entry
        self.events.phase("entry", f"{entry} answered {ENTRY_ANSWERS} requests in a row")
        return entry

    def _deployed(self) -> bool:
        if not self._rolled_out(1):
            return False
        ready = {p["metadata"]["name"] for p in self._available()}
        return bool(ready) and ready <= self.published

    async def _load_balancer(self, timeout: float) -> str:
        """`http://ADDRESS:PORT` of the Service's LoadBalancer, once it has one."""
        service = self.p.manifests.service
        if service is None or service.type != "LoadBalancer":
            kind = f"{service.name} is type {service.type}" if service else "there is none"
            raise LabError(
                f"no LoadBalancer address for the load (the Service {kind}): pass --entry URL"
            )
        core = client.CoreV1Api(self.api)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 1.0)
        while loop.time() < deadline:
            found = await call(core.read_namespaced_service, service.name, self.namespace)
            for ingress in (found.status.load_balancer.ingress or []) if found.status else []:
                address = ingress.ip or ingress.hostname
                if address:
                    return f"http://{address}:{service.port}"
            await asyncio.sleep(0.5)
        raise LabError(
            f"the Service {service.name} got no LoadBalancer address within "
            f"{self.config.ready_timeout:g} s: pass --entry URL"
        )

    # -- the end ---------------------------------------------------------------------------

    def _operation_log(self) -> OperationLog | None:
        return self.influx

    def _cluster_notes(self) -> tuple[str, ...]:
        return (
            f"a cluster reached through its kubeconfig (--cluster {self.config.cluster}): "
            f"{self.target.server}, namespace {self.namespace}, load to {self.entry}",
            f"endpoint lag: the cluster's own proxies' (not set by the lab); {NOT_OBSERVED}",
        )

    async def cleanup(self) -> None:
        """Always run: k6 and the watches stop, the namespace and all in it is deleted."""
        if self.k6 is not None:
            self.k6.kill()
        for informer in (self.informer, self.endpoint_informer):
            if informer is not None:
                await informer.stop()
        try:
            if self.namespace_made:
                await self._delete_namespace()
        finally:
            if self.api is not None:
                with contextlib.suppress(Exception):
                    self.api.close()
            await self.registry.kill_all()
            self.events.sink = None
            self.event_file.close()

    async def _delete_namespace(self) -> None:
        core = client.CoreV1Api(self.api)
        self.events.phase("namespace-delete", self.namespace)
        try:
            await call(core.delete_namespace, self.namespace)
        except Exception as exc:
            if status_of(exc) != 404:
                self.events.phase("namespace-left", f"{self.namespace}: {_short(exc)}")
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NAMESPACE_GONE_TIMEOUT
        while loop.time() < deadline:
            try:
                await call(core.read_namespace, self.namespace)
            except Exception as exc:
                if status_of(exc) == 404:
                    self.events.phase("namespace-gone", self.namespace)
                    return
            await asyncio.sleep(0.5)
        self.events.phase(
            "namespace-left",
            f"{self.namespace} still terminating after {NAMESPACE_GONE_TIMEOUT:g} s: the "
            "cluster deletes it",
        )


def _pod_changes(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """Timeline events for one pod's change as the API shows it."""
    changes: list[tuple[str, str]] = []
    if before is None and after is not None:
        changes.append(("created", (after.get("spec") or {}).get("nodeName") or "not scheduled"))
    if after is None:
        return [*changes, ("gone", "deleted from the API")]
    was_ready = before is not None and _ready(before)
    if _ready(after) and not was_ready:
        changes.append(("ready", "Ready condition True"))
    elif was_ready and not _ready(after):
        changes.append(("not-ready", "Ready condition False"))
    deleting = after["metadata"].get("deletionTimestamp")
    if deleting and not (before is not None and before["metadata"].get("deletionTimestamp")):
        grace = after["metadata"].get("deletionGracePeriodSeconds")
        changes.append(("deleted", f"deletionTimestamp set, grace {grace} s"))
    return changes


def _answers(url: str) -> bool:
    """A GET on a new connection gets an HTTP answer that is no server error (a
    balancer without backends answers 503, or closes the connection)."""
    try:
        with httpx.Client(timeout=2.0, verify=False) as http:
            return http.get(url, headers={"Connection": "close"}).status_code < 500
    except httpx.HTTPError:
        return False


def _short(exc: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(exc) or type(exc).__name__)
    return text if len(text) <= limit else text[:limit] + "..."
