"""`python -m tests.chaos --seeds 1-200 --duration 6`: run seeds one at a time (the
machine is shared), print one line per seed and, for a failing seed, what broke and the
command that replays it. Exit status 1 when any seed failed."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from tests.chaos.plan import draw
from tests.chaos.run import ChaosRun, Interrupted
from tests.support import Processes


def parse_seeds(text: str) -> list[int]:
    """`7`, `1-200`, `3,9,20-25`."""
    seeds: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a seed list: {text!r} (e.g. 7, 1-200, 3,9,20-25)"
            ) from None
        if high < low:
            raise argparse.ArgumentTypeError(f"empty seed range {part!r}")
        seeds.extend(range(low, high + 1))
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=parse_seeds("1-20"),
        help="e.g. 7, 1-200, 3,9,20-25 (default 1-20)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds of load per seed before the last stop (default 6)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/chaos"),
        help="logs of failing seeds go to OUT/seed-N (default out/chaos)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs of clean seeds too")
    args = parser.parse_args(argv)
    # Ctrl-C or SIGTERM (also when started in the background, where SIGINT is ignored)
    # are only recorded here; the run stops at its next wait and kills what it started.
    interrupt = threading.Event()

    def record(signum: int, frame: object) -> None:
        interrupt.set()

    signal.signal(signal.SIGINT, record)
    signal.signal(signal.SIGTERM, record)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    started = time.monotonic()
    failed: list[int] = []
    done: list[int] = []
    run_seeds(args, failed, done, interrupt)
    if interrupt.is_set():
        print(f"interrupted after {len(done)} seed(s); their processes are stopped", flush=True)
        return 130
    took = time.monotonic() - started
    print(
        f"{len(args.seeds) - len(failed)} of {len(args.seeds)} seeds clean in {took / 60:.1f} min"
        + (f"; failed: {','.join(map(str, failed))}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


def run_seeds(
    args: argparse.Namespace, failed: list[int], done: list[int], interrupt: threading.Event
) -> None:
    for seed in args.seeds:
        if interrupt.is_set():
            return
        plan = draw(seed, args.duration)
        workdir = args.out / f"seed-{seed}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        processes = Processes(workdir)
        try:
            outcome = ChaosRun(plan, workdir, processes, interrupt).execute()
        except Interrupted:
            return
        except Exception as exc:  # the harness itself failed: report it as the seed's failure
            print(f"seed {seed}: HARNESS ERROR {exc!r}", flush=True)
            failed.append(seed)
            done.append(seed)
            continue
        finally:
            processes.cleanup()
        if outcome.problems:
            failed.append(seed)
            print(f"seed {seed}: FAILED  {outcome.summary()}", flush=True)
            for problem in outcome.problems:
                print(f"    - {problem}", flush=True)
            print(f"    plan: {plan.describe()}", flush=True)
            print(f"    logs: {workdir}", flush=True)
            print(f"    replay: make chaos SEEDS={seed} DURATION={args.duration:g}", flush=True)
        else:
            print(f"seed {seed}: clean  {outcome.summary()}", flush=True)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        done.append(seed)


if __name__ == "__main__":
    sys.exit(main())
