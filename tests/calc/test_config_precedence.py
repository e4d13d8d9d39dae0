"""docs/calc.md: "defaults <- profile <- environment <- command line". Each layer over the one
before, through the real resolver and through a real `calc serve`."""

from __future__ import annotations

import pytest

from calc.config import resolve
from lab.influx import free_port
from tests.support import VENV_BIN, Processes, http_ok, wait_until


@pytest.mark.parametrize(
    ("profile", "environ", "cli", "quiet_period"),
    [
        (None, {}, {}, 1.0),  # v10 by default: its profile says 1 s
        ("v3", {}, {}, 0.0),  # v3 sets nothing: the default, 0
        (None, {"CALC_PROFILE": "v3"}, {}, 0.0),  # the profile from the environment
        ("v10", {"CALC_QUIET_PERIOD": "2.5"}, {}, 2.5),  # environment over profile
        ("v10", {"CALC_QUIET_PERIOD": "2.5"}, {"quiet_period": 4.0}, 4.0),  # CLI over both
        ("v10", {"CALC_QUIET_PERIOD": ""}, {"quiet_period": None}, 1.0),  # unset: no layer
    ],
)
def test_each_layer_wins_over_the_one_before(
    profile: str | None, environ: dict[str, str], cli: dict[str, object], quiet_period: float
) -> None:
    """1. Resolve the config from a profile, an environment and CLI values. 2. The
    quiet period comes from the last layer that sets it."""
    assert resolve(profile, environ, cli).quiet_period == quiet_period


def test_profile_option_wins_over_calc_profile(processes: Processes) -> None:
    """1. `calc serve --profile v9 --port P --oplog batch` with CALC_PROFILE=v3,
    CALC_PORT=1 and CALC_OPLOG=task in its environment. 2. It serves on P, and its start
    line names v9 and the batch log: every option beat its environment variable."""
    port = free_port()
    argv = [str(VENV_BIN / "calc"), "serve", "--profile", "v9", "--host", "127.0.0.1"]
    process = processes.start(
        [*argv, "--port", str(port), "--oplog", "batch", "--oplog-file", "/dev/null"],
        env={"CALC_PROFILE": "v3", "CALC_PORT": "1", "CALC_OPLOG": "task", "CALC_POD": "prec"},
        name="calc-precedence",
    )
    wait_until(
        lambda: process.poll() is not None or http_ok(f"http://127.0.0.1:{port}/health"),
        15,
        what="calc on the option's port",
    )
    log = Processes.output(process)
    assert process.poll() is None, log
    assert f"calc v9 on 127.0.0.1:{port}, operation log batch -> file /dev/null" in log
