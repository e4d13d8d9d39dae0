"""`lab run ...`: parse the options into a LabConfig and run the experiment."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import signal
import sys
import threading
from pathlib import Path

from lab import matrix_cli, quick
from lab.config import (
    CLUSTERS,
    HTTP_REUSE,
    LB_MODES,
    NODE_MONITOR_GRACE,
    RUNTIMES,
    SCENARIOS,
    UNREACHABLE_TOLERATION,
    ConfigError,
    LabConfig,
    LoadRequest,
    parse_fault,
    parse_header,
    parse_lag,
    parse_request,
)
from lab.experiment import Interrupted, LabError, run_experiment
from lab.haproxy import HAProxyError
from lab.influx import InfluxError
from lab.k6 import K6Error
from lab.kube import cli as cluster_cli
from lab.manifest import ManifestError, shortened
from lab.stopping import Signals

ERROR_LIMIT = 10_000  # characters of an error printed, at most


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab",
        description="Run a Kubernetes Deployment on this machine through a rollout, under "
        "k6 load, and account for every request and every operation.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    matrix_cli.add_parser(sub)
    cluster_cli.add_parser(sub)
    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("--manifests", type=Path, required=True, help="a manifest file or directory")
    run.add_argument(
        "--deployment",
        metavar="NAME",
        help="the Deployment under test when the manifests hold several (default: the only "
        "one, or the one behind the LoadBalancer/NodePort Service); the others run beside it "
        "as one pod each without load, and an InfluxDB one is replaced by the lab's own",
    )
    run.add_argument("--scenario", choices=SCENARIOS, default="rollout-restart")
    run.add_argument("--to", type=int, help="target replicas for --scenario scale")
    run.add_argument(
        "--update-to",
        type=Path,
        help="--scenario update: manifests whose pod template is rolled out (e.g. v3 -> v5)",
    )
    run.add_argument("--replicas", type=int, help="override the Deployment's replicas")
    run.add_argument("--vus", type=int, default=50, help="k6 virtual users (default 50)")
    run.add_argument(
        "--lb",
        choices=LB_MODES,
        default="tcp",
        help="HAProxy mode: tcp (L4), http (L7, keep-alive to pods), https or h2 (TLS here)",
    )
    run.add_argument("--lb-retries", type=int, default=0, help="HAProxy retries (default 0)")
    run.add_argument(
        "--http-reuse",
        choices=HTTP_REUSE,
        default="safe",
        help="L7 modes: HAProxy's sharing of idle pod connections (default safe)",
    )
    run.add_argument(
        "--endpoint-lag",
        default="1",
        help="propagation lag, drawn per change and proxy: SECONDS, MIN-MAX (uniform) or "
        "lognormal:MEDIAN,P99 (default 1)",
    )
    run.add_argument(
        "--warmup",
        type=float,
        help="seconds of load before the action (default 10; 2 with --quick)",
    )
    run.add_argument(
        "--cooldown", type=float, help="seconds of load after it (default 10; 2 with --quick)"
    )
    run.add_argument(
        "--quick",
        action="store_true",
        help="a copy of the manifests with readiness and startup probes' delays and periods "
        "shortened (2 s, 1 s; a startup probe keeps the time it allows to start), warm-up "
        "and cool-down 2 s; the report lists each change, the copy is in OUT/quick-manifests",
    )
    run.add_argument("--duration", type=float, default=30.0, help="steady scenario's load time")
    run.add_argument("--action-timeout", type=float, default=600.0, help="deadline for the action")
    run.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="deadline for the first deployment (default 180); past it, the error names the "
        "pods not ready, their probes and last results",
    )
    run.add_argument(
        "--out", type=Path, default=Path("out/lab"), help="output dir (default out/lab)"
    )
    run.add_argument("--image-map", type=Path, help="image map (default deploy/lab-images.yml)")
    run.add_argument(
        "--k6-script",
        type=Path,
        help="k6 script (default deploy/k6/load-test.js); one of your own must meet the "
        "contract in src/lab/README.md (environment, externally-controlled executor, "
        "request ids)",
    )
    run.add_argument(
        "--request",
        metavar="'METHOD /PATH'",
        help="the request the load sends, e.g. 'GET /health' (default: calc's sum, POST /sum "
        "with a JSON body); with it, only --header and --body add to it",
    )
    run.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header of --request (repeatable)",
    )
    run.add_argument("--body", metavar="TEXT", help="the body of --request")
    run.add_argument(
        "--body-file", type=Path, metavar="FILE", help="the body of --request, from a file"
    )
    run.add_argument(
        "--expect-status",
        type=int,
        default=200,
        help="the status that counts as ok (default 200); any other fails as http_<status>",
    )
    run.add_argument("--conn-reuse", action="store_true", help="k6 keeps connections alive")
    run.add_argument("--request-timeout", help="k6 per-request timeout, e.g. 10s")
    run.add_argument("--seed", type=int, help="seed for the drawn lags")
    run.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND@WHEN[:SECONDS]",
        help="inject a fault (repeatable): influx-down@W:S, influx-stall@W:S, "
        "container-crash@W, node-failure@W, pod-hang@W, lb-restart@W; W is seconds after the action starts, or EVENT[+SECONDS] "
        "for the first pod event of that kind after it (created, ready, lb-added, deleted, "
        "prestop-started, sigterm, lb-removed)",
    )
    run.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes the pods spread over (default 1); with more, each node has its own "
        "proxy with its own --endpoint-lag draws, and the load enters through an L4 "
        "balancer spreading connections over every node",
    )
    run.add_argument(
        "--cluster",
        default="lab",
        metavar="{" + ",".join(CLUSTERS) + ",kubeconfig[:CONTEXT]}",
        help="whose controllers: the lab's own (default, fast), or `local`: a real "
        "Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler, built by `make cluster-bins`) that the run starts in OUT/cluster, "
        "with the lab's kubelet as its nodes, on either runtime (--lb tcp, no faults yet); "
        "or `kubeconfig[:CONTEXT]`: any cluster, reached only through its API server "
        "(lab.kube.remote): the manifests and InfluxDB applied in a namespace of the run's "
        "own (deleted at the end), k6's load from this machine to --entry or the "
        "LoadBalancer's address, the operation log read through the API server's service "
        "proxy (or from --influx-url); a pod's SIGTERM and the proxies' syncs are not "
        "observed, and faults that need node access are refused",
    )
    run.add_argument(
        "--kubelet",
        choices=("lab", "real"),
        default="lab",
        help="--cluster local: the nodes' kubelet, the lab's own (default) or the real one "
        "with its containerd and kube-proxy (lab.kube.real_run; `make cluster-bins`, "
        "`make image`); no faults yet",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        help="--cluster kubeconfig: the file (default: the first of $KUBECONFIG, else "
        "~/.kube/config)",
    )
    run.add_argument(
        "--entry",
        metavar="URL",
        help="--cluster kubeconfig: where the load goes (default: the Service's "
        "LoadBalancer address and port)",
    )
    run.add_argument(
        "--influx-url",
        metavar="URL",
        help="--cluster kubeconfig: an InfluxDB 1.x both the pods and this machine reach; "
        "the manifests' influxdb:8086 is pointed at it and no InfluxDB is applied (default: "
        "deploy/k8s/influxdb.yml, or the manifests' own, in the run's namespace, read through "
        "the API server's service proxy, which dials the pod itself: no kubelet streaming "
        "server as port-forward needs; where the API server cannot reach pods, as with "
        "`lab cluster up`'s process runtime, use --influx-url)",
    )
    run.add_argument(
        "--node-monitor-grace",
        type=float,
        default=NODE_MONITOR_GRACE,
        help="node-failure: seconds until the failed node's pods are marked not ready "
        f"(default {NODE_MONITOR_GRACE:g}, Kubernetes before 1.32; 50 since)",
    )
    run.add_argument(
        "--unreachable-toleration",
        type=float,
        default=UNREACHABLE_TOLERATION,
        help="node-failure: seconds after that until they are evicted and replaced "
        f"(default {UNREACHABLE_TOLERATION:g})",
    )
    run.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="pods as process groups on loopback (default), or as Docker containers of the "
        "locally built image (make image) on a Docker network of the run's own",
    )
    run.add_argument(
        "--pod-network",
        choices=("loopback", "netns"),
        default="loopback",
        help="the process runtime's pod addresses: 127.x.y.z on loopback (default; the "
        "pod's command must bind its $(POD_IP)), or `netns`: each pod in a network "
        "namespace of its own on a bridge of the run (a private 10.x.y.0/24), so a "
        "command binding 0.0.0.0 runs unchanged (root, ip and nsenter)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def load_request(args: argparse.Namespace) -> LoadRequest | None:
    """--request and what adds to it; None: the script's default request."""
    if args.request is None:
        extra = [name for name, given in (
            ("--header", args.header),
            ("--body", args.body is not None),
            ("--body-file", args.body_file is not None),
        ) if given]  # fmt: skip
        if extra:
            raise ConfigError(f"{extra[0]}: add to --request 'METHOD /PATH', which is missing")
        return None
    method, path = parse_request(args.request)
    return LoadRequest(
        method,
        path,
        tuple(parse_header(text) for text in args.header),
        args.body,
        args.body_file,
    )


def config_from(args: argparse.Namespace) -> LabConfig:
    warmup, cooldown = quick.phases(args.warmup, args.cooldown, args.quick)
    return LabConfig(
        manifests=args.manifests,
        scenario=args.scenario,
        to=args.to,
        update_to=args.update_to,
        vus=args.vus,
        lb=args.lb,
        lb_retries=args.lb_retries,
        http_reuse=args.http_reuse,
        endpoint_lag=parse_lag(args.endpoint_lag),
        warmup=warmup,
        cooldown=cooldown,
        duration=args.duration,
        out=args.out,
        replicas=args.replicas,
        image_map=args.image_map,
        k6_script=args.k6_script,
        action_timeout=args.action_timeout,
        ready_timeout=args.ready_timeout,
        conn_reuse=args.conn_reuse,
        request_timeout=args.request_timeout,
        seed=args.seed,
        progress=not args.quiet,
        faults=tuple(parse_fault(text) for text in args.fault),
        deployment=args.deployment,
        runtime=args.runtime,
        pod_network=args.pod_network,
        nodes=args.nodes,
        cluster=args.cluster,
        kubelet=args.kubelet,
        kubeconfig=args.kubeconfig,
        entry=args.entry,
        influx_url=args.influx_url,
        node_monitor_grace=args.node_monitor_grace,
        unreachable_toleration=args.unreachable_toleration,
        request=load_request(args),
        expect_status=args.expect_status,
        quick=args.quick,
        quick_changes=tuple(quick.phase_changes(args.warmup, args.cooldown, args.quick)),
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "matrix":
        return matrix_cli.run(args)
    if args.command == "cluster":
        return cluster_cli.run(args)
    if threading.current_thread() is threading.main_thread():
        # `kill -USR1 <lab pid>` prints every thread's stack: for a run that seems stuck.
        # (Not possible when stderr is no real file, as under pytest's capture.)
        with contextlib.suppress(io.UnsupportedOperation, ValueError, AttributeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        config = config_from(args)
        # Until the experiment's loop handles them, signals are recorded, not fatal.
        with Signals().installed() as signals:
            result = run_experiment(config, signals)
    except (ConfigError, ManifestError) as exc:
        # Bounded as a last resort: each message quotes values bounded already.
        print(f"lab: error: {shortened(str(exc), ERROR_LIMIT)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        if exc.report is not None:
            print(exc.report.table())
            print(f"partial report: {config.out / 'report.json'}, {config.out / 'report.html'}")
        print(f"lab: {exc}; every process the lab started is stopped", file=sys.stderr)
        return exc.exit_code
    except (LabError, HAProxyError, InfluxError, K6Error) as exc:
        print(f"lab: failed: {exc}", file=sys.stderr)
        return 1
    print(result.table())
    print(
        f"report: {config.out / 'report.json'}, plot: {config.out / 'timeline.png'}, "
        f"page: {config.out / 'report.html'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
