"""docs/calc.md: "defaults <- profile <- environment <- command line". Each layer over the one
before, through the real resolver and through a real `calc serve`."""

from __future__ import annotations

import pytest

from calc.config import ConfigError, resolve
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


# What the kubelet puts in every pod's environment for a Service named calc on port 80
# (enableServiceLinks, true by default): the talk's manifests name their Service calc.
CALC_SERVICE_LINKS = {
    "CALC_SERVICE_HOST": "10.96.228.66",
    "CALC_SERVICE_PORT": "80",
    "CALC_PORT": "tcp://10.96.228.66:80",
    "CALC_PORT_80_TCP": "tcp://10.96.228.66:80",
    "CALC_PORT_80_TCP_PROTO": "tcp",
    "CALC_PORT_80_TCP_PORT": "80",
    "CALC_PORT_80_TCP_ADDR": "10.96.228.66",
}


def test_a_services_link_variables_are_not_taken_for_calcs_port() -> None:
    """1. The variables of a Service named calc alone: the port stays the default.
    2. A CALC_PORT that is neither a port nor a Service's link is still refused."""
    assert resolve("v10", CALC_SERVICE_LINKS, {}).port == resolve("v10", {}, {}).port
    with pytest.raises(ConfigError, match="CALC_PORT='tcp:80'"):
        resolve("v10", {"CALC_PORT": "tcp:80"}, {})


def test_calc_starts_in_a_pod_beside_a_service_named_calc(processes: Processes) -> None:
    """1. `calc serve` (deploy/k8s's command, its port from --port) with the variables a
    Kubernetes pod gets from a Service named calc. 2. It serves, rather than exit on
    CALC_PORT=tcp://...: every pod of the talk's manifests crashed so on a real kubelet."""
    port = free_port()
    process = processes.start(
        [str(VENV_BIN / "calc"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**CALC_SERVICE_LINKS, "CALC_OPLOG": "off"},
        name="calc-service-links",
    )
    wait_until(
        lambda: process.poll() is not None or http_ok(f"http://127.0.0.1:{port}/health"),
        15,
        what="calc to serve",
    )
    assert process.poll() is None, Processes.output(process)
