"""Each control-plane component's command line and the files it reads (kubeconfigs, the
scheduler's configuration).

The flags follow `hack/local-up-cluster.sh` of the Kubernetes sources (v1.37.2), minus
what needs a kubelet, a cloud provider or aggregated API servers. A timer flag is only
given when the lab's config sets it: otherwise Kubernetes' own default applies.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from lab.kube.health import CONTEXT
from lab.kube.pki import FRONT_PROXY_CLIENT, SERVICE_CIDR, Pki, write_secret

if TYPE_CHECKING:
    from lab.kube.controlplane import ClusterConfig

LOOPBACK = "127.0.0.1"
# Pod CIDRs: the node IPAM controller gives each Node a /24 of this as spec.podCIDR.
CLUSTER_CIDR = "10.244.0.0/16"
NODE_CIDR_MASK_SIZE = 24
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"  # as local-up-cluster.sh


def _seconds(value: float) -> str:
    return f"{value:g}s"  # a Go duration


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    """A kubeconfig (0600: it holds the token) whose context `lab` is `user` on `server`,
    the CA inlined so the file works wherever it is copied."""
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lab", "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "lab", "user": user}}],
        "current-context": CONTEXT,
    }
    write_secret(path, yaml.safe_dump(config, sort_keys=False))


def etcd_args(data_dir: Path, client_url: str, peer_port: int) -> list[str]:
    peer_url = f"http://{LOOPBACK}:{peer_port}"
    return [
        "--name=lab",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=lab={peer_url}",
    ]


def apiserver_args(pki: Pki, config: ClusterConfig, etcd_url: str, port: int) -> list[str]:
    args = [
        f"--etcd-servers={etcd_url}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        # Left unset, the advertise address is the host's default-route IP
        # (ResolveBindAddress, apimachinery/pkg/util/net/interface.go): it fails on a
        # machine without one, and is an address this server does not listen on.
        f"--advertise-address={LOOPBACK}",
        # The endpoint reconciler writes the advertise address into the `kubernetes`
        # Service's Endpoints and EndpointSlice, and a loopback address is invalid
        # there (ValidateEndpointIP, pkg/apis/core/validation/validation.go): no
        # reconciler, so the Service has no endpoints; nothing in the lab uses them.
        "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--token-auth-file={pki.token_file}",
        "--authorization-mode=Node,RBAC",
        # The request-header (front-proxy) settings kubeadm gives every API server
        # (cmd/kubeadm/app/phases/controlplane/manifests.go); see pki.py.
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
        f"--proxy-client-key-file={pki.front_proxy_client_key}",
    ]
    if config.not_ready_toleration is not None:
        args.append(f"--default-not-ready-toleration-seconds={config.not_ready_toleration}")
    if config.unreachable_toleration is not None:
        args.append(f"--default-unreachable-toleration-seconds={config.unreachable_toleration}")
    return args


def controller_manager_args(
    pki: Pki, config: ClusterConfig, kubeconfig: Path, port: int, flexvolume_dir: Path
) -> list[str]:
    args = [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        # As local-up-cluster.sh: approved CSRs are signed by the cluster's CA.
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        "--use-service-account-credentials=true",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={CLUSTER_CIDR}",
        f"--node-cidr-mask-size={NODE_CIDR_MASK_SIZE}",
        # Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec/, is
        # created on the host when missing; the lab writes only in its state directory.
        f"--flex-volume-plugin-dir={flexvolume_dir}",
    ]
    if config.node_monitor_grace is not None:
        args.append(f"--node-monitor-grace-period={_seconds(config.node_monitor_grace)}")
    if config.endpointslice_batch is not None:
        batch = _seconds(config.endpointslice_batch)
        args.append(f"--endpointslice-updates-batch-period={batch}")
    return args


def scheduler_args(config_file: Path, kubeconfig: Path, port: int) -> list[str]:
    """Also writes `config_file`: the client connection goes in a
    KubeSchedulerConfiguration, as local-up-cluster.sh does (the scheduler's
    --kubeconfig flag is deprecated)."""
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
    }
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return [
        f"--config={config_file}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=false",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
    ]
