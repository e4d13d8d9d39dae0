"""HAProxy as the Service's load balancer, driven through its runtime API.

Modes: `tcp` (L4, like kube-proxy or a cloud TCP balancer), `http` (L7 with keep-alive
connections to the pods, shared between clients), `https` and `h2` (L7 with TLS
terminated here, with a self-signed certificate the lab makes; `h2` offers HTTP/2 to
clients through ALPN). Pods always get plain HTTP/1.1, as behind a cloud balancer.

The backend starts empty; the endpoints controller adds, drains and deletes servers over
the stats socket (`level admin`), never reloading, so established connections live on
as they do through kube-proxy's conntrack. `retries 0` by default: a cloud L4 path does
not retry a refused connection, and retries would hide exactly the failures we measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.procs import Registry

BACKEND = "pods"


@dataclass(frozen=True)
class HealthChecks:
    """TCP health checks of each server, as a cloud load balancer checks the nodes behind
    a Service of type LoadBalancer. Google Cloud's defaults: a check every 5 s, 5 s
    timeout, unhealthy after 2 failures, healthy again after 2 successes
    (https://cloud.google.com/load-balancing/docs/health-check-concepts)."""

    interval: float = 5.0
    fall: int = 2
    rise: int = 2

    def keywords(self) -> str:
        ms = max(1, round(self.interval * 1000))
        return f"check inter {ms} fall {self.fall} rise {self.rise}"


_CONFIG = """\
global
  stats socket {socket} level admin
  maxconn {maxconn}
  log stderr format short local0 notice

defaults
  mode {mode}
  log global
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  retries {retries}
{redispatch}{http_options}
frontend service
  bind {host}:{port}{tls}
  default_backend {backend}

backend {backend}
  balance roundrobin
"""

# In the L7 modes HAProxy keeps server-side connections alive and shares idle ones between
# client requests. With `safe` (HAProxy's default) a client connection's first request
# gets a server connection of its own, so one-request clients (k6 without reuse) share
# nothing; `always` shares idle connections with every request, as cloud HTTP load
# balancers pool their backend connections.
_HTTP_OPTIONS = """  option http-keep-alive
  http-reuse {reuse}
"""


class HAProxyError(RuntimeError):
    pass


def _maxconn() -> int:
    """As many connections as our file limit allows: HAProxy needs two descriptors per
    proxied connection and refuses to start when it cannot raise the limit far enough."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 65536 if hard == resource.RLIM_INFINITY else hard
    return max(256, min(20000, (limit - 200) // 2))


class HAProxy:
    def __init__(
        self,
        workdir: Path,
        port: int,
        host: str = "127.0.0.1",
        mode: str = "tcp",
        retries: int = 0,
        binary: str | None = None,
        http_reuse: str = "safe",
        health_checks: HealthChecks | None = None,
    ) -> None:
        found = binary or shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(found).exists():
            raise HAProxyError("haproxy not found: install it with `apt-get install haproxy`")
        self.binary = found
        self.workdir = workdir
        self.host = host
        self.port = port
        self.mode = mode
        self.retries = retries
        self.http_reuse = http_reuse
        self.health_checks = health_checks
        # A Unix socket path must fit in 108 bytes, which a deep --out dir (pytest's tmp
        # dirs) does not: the socket lives in a short private dir of its own.
        self.socket_dir: Path | None = None  # made by start()
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def socket_path(self) -> Path:
        return (self.socket_dir or self.workdir) / "admin.sock"

    @property
    def tls(self) -> bool:
        return self.mode in ("https", "h2")

    @property
    def certificate_path(self) -> Path:
        return self.workdir / "lb.pem"

    def _tls_bind(self) -> str:
        if not self.tls:
            return ""
        alpn = "h2,http/1.1" if self.mode == "h2" else "http/1.1"
        return f" ssl crt {self.certificate_path} alpn {alpn}"

    async def make_certificate(self, registry: Registry, timeout: float = 30.0) -> None:
        """A self-signed certificate for 127.0.0.1 and localhost, key and cert in one PEM
        (HAProxy's `crt` format); k6 skips verification (INSECURE=1)."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise HAProxyError(
                "openssl not found: needed for --lb https/h2 (apt-get install openssl)"
            )
        key, cert = self.workdir / "lb.key", self.workdir / "lb.crt"
        argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        argv += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        argv += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        process = await registry.start(argv, "openssl", log=self.log_path)
        if await asyncio.wait_for(process.wait(), timeout) != 0:
            raise HAProxyError(f"openssl could not make a certificate; see {self.log_path}")
        self.certificate_path.write_bytes(cert.read_bytes() + key.read_bytes())

    def config(self) -> str:
        return _CONFIG.format(
            socket=self.socket_path,
            maxconn=_maxconn(),
            mode="tcp" if self.mode == "tcp" else "http",
            retries=self.retries,
            redispatch="  option redispatch\n" if self.retries else "",
            http_options=_HTTP_OPTIONS.format(reuse=self.http_reuse) if self.mode != "tcp" else "",
            tls=self._tls_bind(),
            host=self.host,
            port=self.port,
            backend=BACKEND,
        )

    async def start(self, registry: Registry, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="lab-haproxy-"))
        if self.tls:
            await self.make_certificate(registry)
        self.config_path.write_text(self.config())
        check = await registry.start(
            [self.binary, "-c", "-f", str(self.config_path)],
            "haproxy-check",
            log=self.log_path,
        )
        if await asyncio.wait_for(check.wait(), timeout) != 0:
            raise HAProxyError(f"haproxy rejected its config; see {self.log_path}")
        self.process = await registry.start(
            [self.binary, "-db", "-f", str(self.config_path)], "haproxy", log=self.log_path
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise HAProxyError(f"haproxy exited at start; see {self.log_path}")
            with contextlib.suppress(OSError):
                self.command("show info")
                return
            await asyncio.sleep(0.05)
        raise HAProxyError(f"haproxy's stats socket did not answer within {timeout} s")

    async def stop(self, timeout: float = 5.0) -> None:
        try:
            await self._stop(timeout)
        finally:
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    async def _stop(self, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            Registry.kill_group(process.pid)
            await asyncio.wait_for(process.wait(), timeout)

    def command(self, line: str, timeout: float = 2.0) -> str:
        """One runtime API command; the socket closes after the answer (non-interactive)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()

    def add_server(self, name: str, address: str, port: int) -> None:
        """Register a server and take it out of maintenance (new servers start in maint);
        with health checks, start checking it (a dynamic server's checks start off)."""
        checks = f" {self.health_checks.keywords()}" if self.health_checks else ""
        answer = self.command(f"add server {BACKEND}/{name} {address}:{port}{checks}")
        if "New server registered" not in answer:
            raise HAProxyError(f"add server {name}: {answer}")
        commands = ["enable server", "enable health"] if checks else ["enable server"]
        for command in commands:
            answer = self.command(f"{command} {BACKEND}/{name}")
            if answer:
                raise HAProxyError(f"{command} {name}: {answer}")

    def drain_server(self, name: str) -> None:
        """No new connections to it; established ones carry on (conntrack's behaviour)."""
        answer = self.command(f"disable server {BACKEND}/{name}")
        if answer:
            raise HAProxyError(f"disable server {name}: {answer}")

    def delete_server(self, name: str) -> bool:
        """Delete a drained server; False while connections are still attached to it."""
        answer = self.command(f"del server {BACKEND}/{name}")
        if "Server deleted" in answer:
            return True
        if "connections attached" in answer or "still has" in answer:
            return False
        raise HAProxyError(f"del server {name}: {answer}")

    def servers(self) -> dict[str, str]:
        """Backend servers by name -> status (`no check` when in rotation without health
        checks, `UP`/`DOWN` with them, `MAINT` drained)."""
        out: dict[str, str] = {}
        for row in self.command("show stat").splitlines():
            cols = row.split(",")
            if len(cols) > 17 and cols[0] == BACKEND and cols[1] not in ("BACKEND", "FRONTEND"):
                out[cols[1]] = cols[17]
        return out

    def connections_total(self) -> int:
        """Client connections the frontend has accepted since it started (`stot`)."""
        for row in self.command("show stat").splitlines():
            cols = row.split(",")
            if len(cols) > 7 and cols[0] == "service" and cols[1] == "FRONTEND":
                return int(cols[7] or 0)
        raise HAProxyError("show stat: no row for the frontend")

    def active_servers(self) -> set[str]:
        """Servers that take new connections."""
        return {name for name, status in self.servers().items() if status != "MAINT"}
