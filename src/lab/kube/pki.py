"""The control plane's credentials, made with the `openssl` CLI: a CA, the API server's
serving certificate, the aggregation layer's front-proxy CA and client certificate, the
service-account signing key and a static token file.

Every `lab cluster up` makes a new set (the cluster is new each time too: see
`controlplane.py`), so a token of an earlier cluster never works on a later one.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# The API server's Service IP is the first address of --service-cluster-ip-range, and
# in-cluster clients reach it as kubernetes.default.svc...: both go on the serving
# certificate, as kubeadm does (cmd/kubeadm/app/phases/certs: GetAPIServerAltNames).
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
IP_ADDRESSES = ("127.0.0.1", SERVICE_IP)

# Users of the token file. The bootstrap RBAC policy binds the controller-manager's and
# the scheduler's roles to these user names (plugin/pkg/auth/authorizer/rbac/
# bootstrappolicy/policy.go: system:kube-controller-manager, system:kube-scheduler), and
# system:masters to cluster-admin.
ADMIN = ("admin", ("system:masters",))
CONTROLLER_MANAGER = ("system:kube-controller-manager", ())
SCHEDULER = ("system:kube-scheduler", ())
# The name the API server's request-header authenticator accepts (kubeadm's).
FRONT_PROXY_CLIENT = "front-proxy-client"

_CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = {cn}
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
"""

_LEAF_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
{alt_names}
"""


class PkiError(RuntimeError):
    """openssl failed; the message quotes its output."""


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    front_proxy_ca_cert: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path
    service_account_key: Path  # private: the public half is read from it too
    token_file: Path
    tokens: dict[str, str] = field(repr=False)  # user name -> bearer token

    @property
    def admin_token(self) -> str:
        return self.tokens[ADMIN[0]]


def _openssl(*args: str) -> None:
    try:
        result = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise PkiError("openssl is not installed (the lab makes its certificates with it)") from exc
    if result.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {(result.stderr or result.stdout).strip()}")


def write_secret(path: Path, text: str = "") -> None:
    """Create `path` as 0600 before anything is in it (openssl then writes into it)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _rsa_key(path: Path) -> None:
    write_secret(path)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path))
    path.chmod(0o600)


def _rsa_keys(paths: list[Path]) -> None:
    # Key generation is most of the time here: one openssl each, side by side.
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        for done in [pool.submit(_rsa_key, path) for path in paths]:
            done.result()


def _token_line(token: str, user: str, groups: tuple[str, ...]) -> str:
    # token,user,uid,"group1,group2" (https://kubernetes.io/docs/reference/access-authn-authz/
    # authentication/#static-token-file); the uid is the user name.
    line = f"{token},{user},{user}"
    return f'{line},"{",".join(groups)}"' if groups else line


def _ca(directory: Path, name: str, cn: str) -> tuple[Path, Path]:
    """A self-signed CA certificate for the key `name`.key: (cert, key)."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    config = directory / f"{name}.cnf"
    config.write_text(_CA_CONFIG.format(cn=cn))
    _openssl("req", "-x509", "-new", "-key", str(key), "-config", str(config), "-days", "3650", "-sha256", "-out", str(cert))  # fmt: skip
    return cert, key


def _leaf(
    directory: Path, name: str, cn: str, ca: tuple[Path, Path], usage: str, alt_names: str = ""
) -> tuple[Path, Path]:
    """A certificate for `cn` and the key `name`.key, signed by `ca`: (cert, key)."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    config = directory / f"{name}.cnf"
    alt = f"subjectAltName = {alt_names}" if alt_names else ""
    config.write_text(_LEAF_CONFIG.format(cn=cn, usage=usage, alt_names=alt))
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", str(key), "-config", str(config), "-out", str(csr))
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", "0x" + secrets.token_hex(16), "-days", "365", "-sha256",
        "-extfile", str(config), "-extensions", "ext", "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Make new CAs, certificates, service-account key and token file in `directory`
    (replacing what is there). Raises PkiError."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    service_account_key = directory / "service-account.key"
    names = ("ca", "apiserver", "front-proxy-ca", "front-proxy-client")
    _rsa_keys([directory / f"{name}.key" for name in names] + [service_account_key])
    ca = _ca(directory, "ca", "lab-kubernetes-ca")
    alt_names = ", ".join([f"DNS:{n}" for n in DNS_NAMES] + [f"IP:{a}" for a in IP_ADDRESSES])
    serving = _leaf(directory, "apiserver", "kube-apiserver", ca, "serverAuth", alt_names)
    # The aggregation layer's request-header CA and the API server's client certificate
    # for it, apart from the cluster CA as kubeadm makes them (front-proxy-ca,
    # front-proxy-client): a client certificate the cluster CA signs (an approved CSR)
    # must not be able to assert users in headers. kube-controller-manager and
    # kube-scheduler read this CA from the extension-apiserver-authentication ConfigMap
    # and log an error every few seconds while it is missing.
    front_proxy_ca = _ca(directory, "front-proxy-ca", "lab-front-proxy-ca")
    front_proxy = _leaf(directory, "front-proxy-client", FRONT_PROXY_CLIENT, front_proxy_ca, "clientAuth")  # fmt: skip

    tokens: dict[str, str] = {}
    lines = []
    for user, groups in (ADMIN, CONTROLLER_MANAGER, SCHEDULER):
        tokens[user] = secrets.token_urlsafe(32)
        lines.append(_token_line(tokens[user], user, groups))
    token_file = directory / "tokens.csv"
    write_secret(token_file, "\n".join(lines) + "\n")
    return Pki(
        directory=directory,
        ca_cert=ca[0],
        ca_key=ca[1],
        serving_cert=serving[0],
        serving_key=serving[1],
        front_proxy_ca_cert=front_proxy_ca[0],
        front_proxy_client_cert=front_proxy[0],
        front_proxy_client_key=front_proxy[1],
        service_account_key=service_account_key,
        token_file=token_file,
        tokens=tokens,
    )
