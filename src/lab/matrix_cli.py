"""`lab matrix ...`: parse the options into a MatrixConfig and run the matrix."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

from lab.config import CLUSTERS, LB_MODES, RUNTIMES, ConfigError, parse_lag
from lab.matrix import SCENARIOS, VERSIONS, MatrixConfig, experiment_config, markdown, run_matrix
from lab.stopping import Signals


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    matrix = sub.add_parser(
        "matrix",
        help="run every version x scenario x load balancer and print one table",
        description="One experiment per version, scenario and load-balancer mode, on the "
        "project's manifests (deploy/k8s/vN); prints a table of failed requests and lost "
        "operations, and writes matrix.json, matrix.md, matrix.png and each experiment's "
        "report and timeline under --out.",
    )
    matrix.add_argument(
        "--versions", default=",".join(VERSIONS), help="comma-separated (default: v1..v10)"
    )
    matrix.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)",
    )
    matrix.add_argument(
        "--lb", default="tcp", help=f"comma-separated, of {', '.join(LB_MODES)} (default tcp)"
    )
    matrix.add_argument(
        "--quick",
        action="store_true",
        help="fewer replicas and shorter probe delays (the table's header lists every change)",
    )
    matrix.add_argument(
        "--no-prestop",
        action="store_true",
        help="remove every preStop hook, as on a cluster without a preStop sleep",
    )
    matrix.add_argument("--vus", type=int, default=50, help="k6 virtual users (default 50)")
    matrix.add_argument(
        "--endpoint-lag",
        default="1",
        help="SECONDS, MIN-MAX (uniform) or lognormal:MEDIAN,P99 (default 1)",
    )
    matrix.add_argument("--warmup", type=float, help="seconds of load before each action")
    matrix.add_argument("--cooldown", type=float, help="seconds of load after it")
    matrix.add_argument(
        "--manifests-dir", type=Path, help="where the vN directories are (default deploy/k8s)"
    )
    matrix.add_argument("--image-map", type=Path, help="image map (default deploy/lab-images.yml)")
    matrix.add_argument("--out", type=Path, default=Path("out/matrix"), help="default out/matrix")
    matrix.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="pods as process groups (default) or Docker containers of the built image",
    )
    matrix.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="nodes per run, each with its own proxy and lag draws (default 1; see lab run)",
    )
    matrix.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default="lab",
        help="the lab's own controllers (default) or `local`: a real control plane per "
        "run (see lab run --cluster)",
    )
    matrix.add_argument("--quiet", action="store_true", help="no progress lines")


def config_from(args: argparse.Namespace) -> MatrixConfig:
    config = MatrixConfig(
        versions=_names(args.versions),
        scenarios=_names(args.scenarios),
        lbs=_names(args.lb),
        quick=args.quick,
        no_prestop=args.no_prestop,
        vus=args.vus,
        endpoint_lag=parse_lag(args.endpoint_lag),
        warmup=args.warmup,
        cooldown=args.cooldown,
        out=args.out,
        progress=not args.quiet,
        runtime=args.runtime,
        nodes=args.nodes,
        cluster=args.cluster,
    )
    if args.manifests_dir is not None:
        config = dataclasses.replace(config, manifests_dir=args.manifests_dir)
    if args.image_map is not None:
        config = dataclasses.replace(config, image_map=args.image_map)
    return config


def check_capacity(config: MatrixConfig) -> None:
    """Before the first experiment: every version's manifests load, and every planned
    experiment's pods fit the run's addresses and this machine's memory (a ConfigError
    in an experiment would stop the matrix half way)."""
    from lab.capacity import check
    from lab.manifest import load

    config.validate()
    for version in config.versions:
        manifests_dir = config.manifests_dir / version
        manifests = load(manifests_dir)
        for scenario in config.scenarios:
            for lb in config.lbs:
                out = config.out / f"{version}-{scenario}-{lb}"
                check(experiment_config(config, manifests_dir, scenario, lb, out), manifests)


def run(args: argparse.Namespace) -> int:
    # Imported here: the experiment pulls in the whole lab.
    from lab.experiment import Interrupted, run_experiment
    from lab.manifest import ManifestError, shortened
    from lab.matrix_plot import draw

    # The first SIGINT/SIGTERM stops the whole matrix (the running experiment tears down
    # gracefully; a second signal kills at once), not just the experiment it lands in.
    try:
        config = config_from(args)
        check_capacity(config)
        with Signals().installed() as signals:
            runner = functools.partial(run_experiment, signals=signals)
            cells = run_matrix(config, runner, signals)
    except (ConfigError, ManifestError) as exc:
        print(f"lab: error: {shortened(str(exc), 10_000)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(
            f"lab: {exc}; every process the lab started is stopped; the experiments done "
            f"are in {args.out}/matrix.md, matrix.json and report.html, marked interrupted",
            file=sys.stderr,
        )
        return exc.exit_code
    draw(cells, config.versions, config.scenarios, config.out / "matrix.png")
    print(markdown(config, cells))
    print(f"results: {config.out}/matrix.md, matrix.json, matrix.png, report.html")
    return 1 if any(c.error for c in cells) else 0
