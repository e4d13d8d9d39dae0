"""The calc command line called as `calc.cli.main(argv)` in the pytest process: the
profiles table, --help, argument errors, and `calc ops count|clear` against the
line-protocol file and a real InfluxDB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calc.cli import build_parser, main, profiles_table
from calc.config import SWITCHES
from calc.points import PointFormatter
from lab.influx import InfluxServer
from tests.calc.logging_support import restored_logging, taken_port

PROFILES_TABLE = """\
profile  drain  drain_timeout  readiness_flip  connection_close  quiet_period  quiet_max  budget_check  oplog           flush_retries  spool  what it shows
v1       on     none           off             off               0.0           0.0        off           off             off            off    bare app (the manifest starts it through a shell wrapper)
v2       on     none           off             off               0.0           0.0        off           off             off            off    same app; the manifest adds probes and a rolling update
v3       on     none           off             off               0.0           0.0        off           off             off            off    same app; the manifest execs it so SIGTERM arrives; drain on
v4       off    none           off             off               0.0           0.0        off           off             off            off    drain off: in-flight requests are cut at SIGTERM
v5       on     none           off             off               0.0           0.0        off           off             off            off    same app; the manifest adds a preStop sleep
v6       on     none           off             off               0.0           0.0        off           task            off            off    a task per sum writes its point after 5 s, not awaited
v7       on     none           off             off               0.0           0.0        off           task-graceful   off            off    tasks awaited at shutdown (7 s)
v8       on     none           off             off               0.0           0.0        off           batch           off            off    points batched (500 / 30 s), buffer dropped at shutdown
v9       on     none           off             off               0.0           0.0        off           batch-graceful  off            off    batch flushed at shutdown
v10      on     8.0            on              on                1.0           10.0       on            batch-graceful  on             on     v9 + readiness flip, Connection: close, drain until quiet, retries, budget, spool"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALC_* or INFLUXDB_* variable of the machine leaks into a test; help text is
    not wrapped (argparse wraps at $COLUMNS). The spool directory cannot be made, so a
    command that went on to serve by mistake returns 1 at once instead of serving."""
    for name in list(os.environ):
        if name.startswith(("CALC_", "INFLUXDB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "2000")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("CALC_SPOOL_DIR", str(blocker / "spool"))


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr); an argparse exit is an exit code too."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    return " ".join(text.split())


def test_profiles_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """1. `calc profiles`. 2. Exit 0 and the table of every profile's switches, each
    column as wide as its widest cell, no trailing blanks."""
    assert run_main(["profiles"], capsys) == (0, PROFILES_TABLE + "\n", "")
    assert profiles_table() == PROFILES_TABLE


def test_help_lists_the_commands_and_every_switch(capsys: pytest.CaptureFixture[str]) -> None:
    """1. `calc --help` and `calc serve --help`. 2. Exit 0; the commands with their help;
    every switch with its help, its choices, its variable and its default (saying when a
    profile sets it); on|off for booleans, VALUE for the rest."""
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    text = flat(out)
    assert text.startswith(
        "usage: calc [-h] COMMAND ... "
        "The calc demo service: POST /sum, with graceful shutdown profiles v1..v10. "
    )
    assert "serve run the API server" in text
    assert "profiles print what each profile switches on" in text
    assert "ops count or clear logged operations (INFLUXDB_BASE_URL, else the local file)" in text

    code, out, _ = run_main(["serve", "--help"], capsys)
    assert code == 0
    text = flat(out)
    assert text.startswith("usage: calc serve [-h] [--profile PROFILE]")
    assert (
        "Run the API. Every option can also be set by the environment variable shown; "
        "options win over the environment, which wins over the profile." in text
    )
    assert "--profile PROFILE one of v1, v2, v3, v4, v5, v6, v7, v8, v9, v10 " in text
    assert "(env CALC_PROFILE; default v10)" in text
    for expected in (
        "--port VALUE port to listen on (env CALC_PORT; default 4000)",
        "--drain on|off on SIGTERM let in-flight requests finish (off: cut them) "
        "(env CALC_DRAIN; default on, or the profile's)",
        "--drain-timeout VALUE longest wait for in-flight requests (none: no limit) "
        "(env CALC_DRAIN_TIMEOUT; default none, or the profile's)",
        "--log-level VALUE log level; one of debug, info, warning, error "
        "(env CALC_LOG_LEVEL; default info)",
        "--oplog VALUE operation log mode; one of off, task, task-graceful, batch, "
        "batch-graceful (env CALC_OPLOG; default off, or the profile's)",
        "--influxdb-base-url VALUE InfluxDB 1.x URL (unset: write to --oplog-file) "
        "(env INFLUXDB_BASE_URL; default none)",
        "--pod VALUE value of the points' pod tag (default: $HOSTNAME, which Kubernetes "
        "sets to the pod name) (env CALC_POD; default the host name)",
    ):
        assert expected in text
    for switch in SWITCHES:
        assert f"{switch.option} " in text and f"(env {switch.env}; default " in text


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["serve", "--port", "abc"],
            "calc serve: error: argument --port: "
            "option --port='abc': invalid literal for int() with base 10: 'abc'",
        ),
        (
            ["serve", "--drain", "maybe"],
            "calc serve: error: argument --drain: "
            "option --drain='maybe': expected on/off, true/false, yes/no or 1/0",
        ),
        (["serve", "--batch-size", "0"], "calc: error: --batch-size must be at least 1"),
        (
            ["serve", "--profile", "v0"],
            "calc: error: unknown profile 'v0': choose one of v1, v2, v3, v4, v5, v6, v7, v8, "
            "v9, v10",
        ),
        (["ops", "bogus"], "calc ops: error: argument action: invalid choice: 'bogus'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    """1. `calc` with a bad value, a value a rule refuses, an unknown profile or action. 2. Exit 2, the usage and one error line naming it; nothing runs."""
    code, out, err = run_main(argv, capsys)
    assert (code, out) == (2, "")
    assert err.startswith("usage: calc")
    assert error in err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """1. `calc` with no command (parsed only: were it taken, it would serve). 2. Exit 2
    with the usage, naming COMMAND as required."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: calc [-h] COMMAND ...")
    assert "calc: error: the following arguments are required: COMMAND" in err


def test_a_bad_variable_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. CALC_QUIET_PERIOD=soon in the environment. 2. `calc ops count` exits 2 naming
    the variable and its text."""
    monkeypatch.setenv("CALC_QUIET_PERIOD", "soon")
    code, _, err = run_main(["ops", "count"], capsys)
    assert code == 2
    assert (
        "calc: error: environment variable CALC_QUIET_PERIOD='soon': "
        "could not convert string to float: 'soon'" in err
    )


def test_ops_count_and_clear_the_line_protocol_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. No InfluxDB URL; CALC_OPLOG_FILE holds 3 points and 2 other lines. 2. `ops
    count` prints 3. 3. `ops clear` removes the file, saying where. 4. `ops count` prints
    0, and `ops clear` of no file succeeds."""
    path = tmp_path / "operations.lp"
    points = PointFormatter("pod-a")
    lines = [points.sum_point(f"r{i}", 1, 1.0) for i in range(3)]
    path.write_text("\n".join([lines[0], "# note", lines[1], "", lines[2]]) + "\n")
    monkeypatch.setenv("CALC_OPLOG_FILE", str(path))
    assert run_main(["ops", "count"], capsys) == (0, "3\n", "")
    assert run_main(["ops", "clear"], capsys) == (0, "", f"cleared operations in {path}\n")
    assert not path.exists()
    assert run_main(["ops", "count"], capsys) == (0, "0\n", "")
    assert run_main(["ops", "clear"], capsys)[0] == 0


def test_ops_on_a_file_it_cannot_use_exits_1_saying_why(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. CALC_OPLOG_FILE names a directory. 2. `ops count` and `ops clear` exit 1 with
    `calc ops <action>: cannot read|remove <path>: <reason>`; the directory stays."""
    directory = tmp_path / "dir.lp"
    directory.mkdir()
    monkeypatch.setenv("CALC_OPLOG_FILE", str(directory))
    code, out, err = run_main(["ops", "count"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"calc ops count: cannot read {directory}: [Errno 21] Is a directory: '{directory}'\n"
    )
    code, out, err = run_main(["ops", "clear"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"calc ops clear: cannot remove {directory}: [Errno 21]")
    assert directory.is_dir()


@pytest.fixture(scope="module")
def secured_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One real InfluxDB with auth on (admin / the password below) for this module."""
    data = tmp_path_factory.mktemp("influx-auth")
    with InfluxServer(data_dir=data, admin=("admin", "pa55-word")) as influx:
        influx.create_database("calc")
        yield influx


def test_ops_count_and_clear_in_influxdb_with_credentials(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    secured_influx: InfluxServer,
) -> None:
    """1. A real InfluxDB with auth on holds 4 points in database calc. 2. `ops count`
    with INFLUXDB_USERNAME/PASSWORD prints 4. 3. `ops clear` empties it, naming the URL
    and database. 4. `ops count` prints 0. 5. A wrong password exits 1 with InfluxDB's
    401, and the password is in no output."""
    points = PointFormatter("pod-a")
    body = "\n".join(points.sum_point(f"r{i}", 2, 3.0) for i in range(4))
    written = httpx.post(
        f"{secured_influx.url}/write",
        params={"db": "calc"},
        content=body,
        auth=("admin", "pa55-word"),
    )
    assert written.status_code == 204, written.text
    monkeypatch.setenv("INFLUXDB_BASE_URL", secured_influx.url)
    monkeypatch.setenv("INFLUXDB_USERNAME", "admin")
    monkeypatch.setenv("INFLUXDB_PASSWORD", "pa55-word")
    assert run_main(["ops", "count"], capsys) == (0, "4\n", "")
    where = f"{secured_influx.url} database calc"
    assert run_main(["ops", "clear"], capsys) == (0, "", f"cleared operations in {where}\n")
    assert run_main(["ops", "count"], capsys) == (0, "0\n", "")

    monkeypatch.setenv("INFLUXDB_PASSWORD", "wrong-pass")
    code, out, err = run_main(["ops", "count"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("calc ops count: InfluxDB answered 401: ")
    assert "wrong-pass" not in err


def test_ops_against_an_unreachable_influxdb_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. INFLUXDB_BASE_URL points at a loopback port nothing listens on. 2. `ops clear`
    exits 1, naming the URL it could not reach."""
    monkeypatch.setenv("INFLUXDB_BASE_URL", "http://127.0.0.1:9")
    code, out, err = run_main(["ops", "clear"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("calc ops clear: cannot reach InfluxDB at http://127.0.0.1:9: ")


def test_serve_whose_spool_cannot_be_made_returns_1_before_listening(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """1. `calc serve` (v10: spool on) with --spool-dir under a plain file, in-process.
    2. It returns 1 after logging its start line and "Cannot start: cannot use spool
    directory ...", and never listens."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    spool = blocker / "spool"
    with taken_port() as port:  # were the spool skipped, serving would fail at once too
        argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--pod", "p"]
        with restored_logging():
            code, out, err = run_main([*argv, "--spool-dir", str(spool)], capsys)
    assert (code, out) == (1, "")
    assert (
        f"calc v10 on 127.0.0.1:{port}, operation log batch-graceful -> file operations.lp" in err
    )
    assert f"ERROR request_id=- calc: Cannot start: cannot use spool directory {spool}" in err
    assert "Uvicorn running" not in err
