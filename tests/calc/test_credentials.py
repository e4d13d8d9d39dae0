"""InfluxDB credentials: from env, a mounted secret file or the URL; never in a log line."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.influx import InfluxServer
from tests.calc.test_oplog import logged_ids, send_sums
from tests.calc_support import StartCalc
from tests.support import VENV_BIN

PASSWORD = "s3cr3t-Pa55:w@rd"
WRONG = "wr0ng-Pa55w0rd-xyz"


@pytest.fixture
def secured_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    with InfluxServer(data_dir=tmp_path / "influx", admin=("admin", PASSWORD)) as influx:
        influx.create_database("calc")
        yield influx


def test_password_file_works_and_no_credential_reaches_the_log(
    start_calc: StartCalc, secured_influx: InfluxServer, tmp_path: Path
) -> None:
    """1. InfluxDB with auth on. 2. calc v9 with INFLUXDB_USERNAME and a mounted password
    file: 20 sums are stored. 3. calc with a wrong INFLUXDB_PASSWORD: writes fail with
    401, logged as errors. 4. Neither password appears in any log line."""
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD + "\n")
    good = start_calc(
        "v9",
        INFLUXDB_BASE_URL=secured_influx.url,
        INFLUXDB_USERNAME="admin",
        INFLUXDB_PASSWORD_FILE=str(secret_file),
    )
    ids = send_sums(good, "auth")
    good.terminate()
    assert good.wait_exit(10) == 0
    assert sorted(logged_ids(secured_influx, "calc")) == sorted(ids)

    bad = start_calc(
        "v9",
        INFLUXDB_BASE_URL=secured_influx.url,
        INFLUXDB_USERNAME="admin",
        INFLUXDB_PASSWORD=WRONG,
    )
    send_sums(bad, "bad-auth")
    bad.terminate()
    assert bad.wait_exit(10) == 0
    assert "401" in bad.log
    assert "20 lost" in bad.log
    for log in (good.log, bad.log):
        assert PASSWORD not in log
        assert WRONG not in log
        assert "s3cr3t" not in log


def test_user_info_in_the_url_is_used_and_stripped(
    start_calc: StartCalc, secured_influx: InfluxServer
) -> None:
    """1. INFLUXDB_BASE_URL with user:password@. 2. Writes succeed. 3. The start-up log
    names the URL without the user info."""
    url_with_auth = secured_influx.url.replace("http://", "http://admin:s3cr3t-Pa55%3Aw%40rd@")
    calc = start_calc("v9", INFLUXDB_BASE_URL=url_with_auth)
    ids = send_sums(calc, "url-auth")
    calc.terminate()
    assert calc.wait_exit(10) == 0
    assert sorted(logged_ids(secured_influx, "calc")) == sorted(ids)
    assert f"-> {secured_influx.url}" in calc.log
    assert "s3cr3t" not in calc.log


def run_calc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "calc"), *args],
        env={"PATH": str(VENV_BIN), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ops_count_with_credentials_and_clear_errors(
    secured_influx: InfluxServer, tmp_path: Path
) -> None:
    """1. `calc ops count` with the right credentials: 0. 2. With a wrong password: exit
    1, an error that does not echo the password. 3. A missing password file or a user
    without password: exit 2 before anything runs, naming the problem."""
    env = {"INFLUXDB_BASE_URL": secured_influx.url, "INFLUXDB_USERNAME": "admin"}
    ok = run_calc("ops", "count", env={**env, "INFLUXDB_PASSWORD": PASSWORD})
    assert (ok.returncode, ok.stdout.strip()) == (0, "0")
    wrong = run_calc("ops", "count", env={**env, "INFLUXDB_PASSWORD": WRONG})
    assert wrong.returncode == 1
    assert "401" in wrong.stderr
    assert WRONG not in wrong.stderr + wrong.stdout
    missing = run_calc(
        "ops", "count", env={**env, "INFLUXDB_PASSWORD_FILE": str(tmp_path / "nope")}
    )
    assert missing.returncode == 2
    assert f"cannot read the InfluxDB password file {tmp_path / 'nope'}" in missing.stderr
    half = run_calc("ops", "count", env=env)
    assert half.returncode == 2
    assert "need both a user and a password" in half.stderr
