"""calc's config in the pytest process: how each switch's text is parsed, which layer
wins (profile argument, environment, command line), every validation message, and the
InfluxDB credentials from the environment, a mounted file or the URL."""

from __future__ import annotations

import dataclasses
import locale
from pathlib import Path
from typing import Any

import pytest

from calc.config import (
    PROFILES,
    SWITCH_BY_NAME,
    SWITCHES,
    CalcConfig,
    ConfigError,
    Secret,
    Switch,
    _switch,
    default_spool_dir,
    parse_value,
    resolve,
    validate,
)

ALL_PROFILES = ", ".join(f"v{i}" for i in range(1, 11))


def parse(name: str, raw: str, source: str = "option") -> Any:
    return parse_value(SWITCH_BY_NAME[name], raw, source)


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("drain", "on", True),
        ("drain", " TRUE ", True),
        ("drain", "yes", True),
        ("drain", "1", True),
        ("drain", "off", False),
        ("drain", "False", False),
        ("drain", "NO", False),
        ("drain", "0", False),
        ("port", " 8080 ", 8080),
        ("slow_math", "0.25", 0.25),
        ("slow_math", "3", 3.0),
        ("drain_timeout", "none", None),
        ("drain_timeout", "None", None),
        ("drain_timeout", " ", None),
        ("drain_timeout", "2.5", 2.5),
        ("log_level", "WARNING", "warning"),
        ("oplog", " Batch-Graceful ", "batch-graceful"),
        ("host", " ::1 ", "::1"),
        ("influxdb_db", "Calc", "Calc"),
    ],
)
def test_each_kind_of_switch_parses_its_text(name: str, raw: str, value: object) -> None:
    """1. Parse the text an option or variable gives. 2. The value has the switch's type:
    on/off words of any case, ints, finite floats, `none` for an optional float, a
    choice lower-cased; surrounding blanks never count."""
    parsed = parse(name, raw)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("name", "raw", "source", "message"),
    [
        (
            "drain",
            "maybe",
            "option",
            "option --drain='maybe': expected on/off, true/false, yes/no or 1/0",
        ),
        (
            "drain",
            "maybe",
            "environment variable",
            "environment variable CALC_DRAIN='maybe': expected on/off, true/false, yes/no or 1/0",
        ),
        (
            "port",
            "80.5",
            "option",
            "option --port='80.5': invalid literal for int() with base 10: '80.5'",
        ),
        ("slow_math", "nan", "option", "option --slow-math='nan': must be a finite number"),
        ("slow_math", "-inf", "option", "option --slow-math='-inf': must be a finite number"),
        ("drain_timeout", "inf", "option", "option --drain-timeout='inf': must be a finite number"),
        (
            "quiet_period",
            "soon",
            "environment variable",
            "environment variable CALC_QUIET_PERIOD='soon': "
            "could not convert string to float: 'soon'",
        ),
        (
            "oplog",
            "sometimes",
            "option",
            "option --oplog='sometimes': "
            "expected one of off, task, task-graceful, batch, batch-graceful",
        ),
        (
            "influxdb_db",
            "x",
            "environment variable",
            None,  # a plain string: nothing to refuse
        ),
    ],
)
def test_bad_text_is_refused_naming_the_switch_and_its_source(
    name: str, raw: str, source: str, message: str | None
) -> None:
    """1. Parse text the switch cannot take. 2. ConfigError names the option (or the
    environment variable), the text as given, and what was expected."""
    if message is None:
        assert parse(name, raw, source) == raw
        return
    with pytest.raises(ConfigError) as error:
        parse(name, raw, source)
    assert str(error.value) == message


def test_switches_are_named_calc_and_their_option_unless_they_name_their_own() -> None:
    """1. A switch made without an environment name is CALC_<NAME>, its option
    --name-with-dashes. 2. One made with its own name keeps it (INFLUXDB_*). 3. Every
    switch of the table follows that rule."""
    made = _switch("quiet_period", "float", "help text")
    assert made == Switch("quiet_period", "float", "help text", "CALC_QUIET_PERIOD")
    assert made.option == "--quiet-period"
    own = _switch("influxdb_db", "str", "db", env="INFLUXDB_DB", choices=("a",))
    assert own == Switch("influxdb_db", "str", "db", "INFLUXDB_DB", ("a",))
    for switch in SWITCHES:
        assert switch.option == "--" + switch.name.replace("_", "-")
        assert switch.env in (f"CALC_{switch.name.upper()}", switch.name.upper())


def test_the_default_spool_dir_follows_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. TMPDIR set: the spool is $TMPDIR/calc-spool. 2. TMPDIR unset or empty:
    /tmp/calc-spool (no probing for a writable directory)."""
    monkeypatch.setenv("TMPDIR", "/run/scratch")
    assert default_spool_dir() == "/run/scratch/calc-spool"
    assert CalcConfig(pod="p").spool_dir == "/run/scratch/calc-spool"
    monkeypatch.setenv("TMPDIR", "")
    assert default_spool_dir() == "/tmp/calc-spool"
    monkeypatch.delenv("TMPDIR")
    assert default_spool_dir() == "/tmp/calc-spool"


# -- precedence -----------------------------------------------------------------------


def test_the_profile_comes_from_the_argument_then_the_cli_then_the_environment() -> None:
    """1. Resolve with a profile given in each place. 2. The explicit argument wins, then
    the CLI's `profile`, then CALC_PROFILE, then v10; names are trimmed and lower-cased."""
    env = {"CALC_PROFILE": "v4"}
    assert resolve("v3", env, {"profile": "v5"}).profile == "v3"
    assert resolve(None, env, {"profile": "v5"}).profile == "v5"
    assert resolve(None, env, {}).profile == "v4"
    assert resolve(None, {"CALC_PROFILE": " V6 "}, {}).profile == "v6"
    assert resolve(None, {}, {}).profile == "v10"
    assert resolve("", {"CALC_PROFILE": ""}, {"profile": None}).profile == "v10"


def test_an_unknown_profile_is_refused_with_the_choices() -> None:
    """1. Resolve profile v11. 2. ConfigError names it and lists v1..v10."""
    with pytest.raises(ConfigError) as error:
        resolve("v11", {}, {})
    assert str(error.value) == f"unknown profile 'v11': choose one of {ALL_PROFILES}"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_sets_its_switches_and_leaves_the_rest_default(profile: str) -> None:
    """1. Resolve each profile with nothing else set. 2. Every switch it names has its
    value, every other switch its default."""
    config = resolve(profile, {"CALC_POD": "p"}, {})
    default = CalcConfig(pod="p")
    for switch in SWITCHES:
        expected = PROFILES[profile].get(switch.name, getattr(default, switch.name))
        assert getattr(config, switch.name) == expected, switch.name


def test_profiles_differ_as_the_talk_says() -> None:
    """v4 cuts requests (drain off); v6..v9 only change the log mode; v10 switches on
    every improvement."""
    modes = {name: resolve(name, {}, {}).oplog for name in PROFILES}
    assert modes == {
        **{f"v{i}": "off" for i in range(1, 6)},
        "v6": "task",
        "v7": "task-graceful",
        "v8": "batch",
        "v9": "batch-graceful",
        "v10": "batch-graceful",
    }
    assert [name for name in PROFILES if not resolve(name, {}, {}).drain] == ["v4"]
    v10 = resolve("v10", {}, {})
    assert (v10.readiness_flip, v10.connection_close, v10.flush_retries) == (True, True, True)
    assert (v10.budget_check, v10.spool, v10.drain_timeout) == (True, True, 8.0)
    assert (v10.quiet_period, v10.quiet_max) == (1.0, 10.0)


def test_every_switch_is_read_from_its_environment_variable() -> None:
    """1. Each switch's variable set to a value other than its default (the pod too).
    2. The config holds every one of them, parsed."""
    env = {
        "CALC_HOST": "127.0.0.2",
        "CALC_PORT": "4001",
        "CALC_SLOW_MATH": "0.5",
        "CALC_LOG_LEVEL": "debug",
        "CALC_MAX_HEAD_BYTES": "2048",
        "CALC_HEAD_TIMEOUT": "3",
        "CALC_DRAIN": "off",
        "CALC_DRAIN_TIMEOUT": "4",
        "CALC_READINESS_FLIP": "on",
        "CALC_CONNECTION_CLOSE": "on",
        "CALC_PRE_CLOSE_DELAY": "1.5",
        "CALC_QUIET_PERIOD": "2",
        "CALC_QUIET_MAX": "6",
        "CALC_GRACE_PERIOD": "40",
        "CALC_BUDGET_CHECK": "on",
        "CALC_OPLOG": "batch",
        "CALC_TASK_DELAY": "0.1",
        "CALC_TASK_TIMEOUT": "2",
        "CALC_BATCH_SIZE": "7",
        "CALC_BATCH_INTERVAL": "0.5",
        "CALC_FLUSH_TIMEOUT": "3",
        "CALC_FLUSH_RETRIES": "on",
        "CALC_MAX_BUFFER": "70",
        "INFLUXDB_BASE_URL": "http://db:8086",
        "INFLUXDB_DB": "ops",
        "INFLUXDB_USERNAME": "u",
        "INFLUXDB_PASSWORD": "pw",
        "CALC_OPLOG_FILE": "/data/ops.lp",
        "CALC_SPOOL": "on",
        "CALC_SPOOL_DIR": "/data/spool",
        "CALC_POD": "pod-7",
    }
    config = resolve("v3", env, {})
    assert config == CalcConfig(
        host="127.0.0.2",
        port=4001,
        profile="v3",
        slow_math=0.5,
        log_level="debug",
        max_head_bytes=2048,
        head_timeout=3.0,
        drain=False,
        drain_timeout=4.0,
        readiness_flip=True,
        connection_close=True,
        pre_close_delay=1.5,
        quiet_period=2.0,
        quiet_max=6.0,
        grace_period=40.0,
        budget_check=True,
        oplog="batch",
        task_delay=0.1,
        task_timeout=2.0,
        batch_size=7,
        batch_interval=0.5,
        flush_timeout=3.0,
        flush_retries=True,
        max_buffer=70,
        influxdb_base_url="http://db:8086",
        influxdb_db="ops",
        influxdb_username="u",
        influxdb_password=Secret("pw"),
        oplog_file="/data/ops.lp",
        spool=True,
        spool_dir="/data/spool",
        pod="pod-7",
    )


def test_command_line_over_environment_over_profile_and_empty_means_unset() -> None:
    """1. v10 (quiet max 10), CALC_QUIET_MAX=6, --quiet-max 8: the option wins.
    2. Options given as None (not on the command line) and empty variables set nothing.
    3. A `profile` key among the options is no switch value."""
    env = {"CALC_QUIET_MAX": "6", "CALC_PORT": "", "CALC_POD": "p"}
    assert resolve("v10", env, {"quiet_max": 8.0}).quiet_max == 8.0
    assert resolve("v10", env, {"quiet_max": None}).quiet_max == 6.0
    config = resolve(None, env, {"profile": "v4", "port": None, "drain_timeout": None})
    assert (config.profile, config.port, config.drain, config.quiet_max) == ("v4", 4000, False, 6)
    assert config.drain_timeout is None


def test_resolve_validates_what_it_builds() -> None:
    """1. Layers that each look fine but together break a rule (batch size over the
    buffer). 2. ConfigError with the rule."""
    with pytest.raises(ConfigError) as error:
        resolve("v9", {"CALC_MAX_BUFFER": "10"}, {"batch_size": 20})
    assert str(error.value) == "--max-buffer must be at least --batch-size"


# -- credentials ------------------------------------------------------------------------


def test_user_info_in_the_url_is_taken_out_and_unquoted() -> None:
    """1. INFLUXDB_BASE_URL with user:password@ (quoted '@' in the password, and an
    unquoted one). 2. The URL keeps no user info; user and password are set, unquoted;
    the password never shows in the config's repr."""
    config = resolve("v9", {"INFLUXDB_BASE_URL": "http://ad%40min:p%40ss@db:8086/x"}, {})
    assert config.influxdb_base_url == "http://db:8086/x"
    assert config.influxdb_username == "ad@min"
    assert config.influxdb_password == Secret("p@ss")
    assert "p@ss" not in repr(config)
    raw_at = resolve("v9", {"INFLUXDB_BASE_URL": "http://u:p@ss@db:8086"}, {})
    assert raw_at.influxdb_base_url == "http://db:8086"
    assert (raw_at.influxdb_username, raw_at.influxdb_password) == ("u", Secret("p@ss"))


@pytest.mark.parametrize(
    "url",
    ["http://db:8086/a@b", "http://db:8086/a@b/c", "http://db:8086/a//b@c", "http://db?q=a@b"],
)
def test_an_at_sign_outside_the_host_part_is_no_user_info(url: str) -> None:
    """1. A URL with '@' only in its path or query. 2. It is kept as given, with no
    credentials."""
    config = resolve("v9", {"INFLUXDB_BASE_URL": url}, {})
    assert config.influxdb_base_url == url
    assert (config.influxdb_username, config.influxdb_password) == (None, None)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("user@db:8086", "INFLUXDB_BASE_URL 'user@db:8086' must start with http:// or https://"),
        ("db@x", "INFLUXDB_BASE_URL 'db@x' must start with http:// or https://"),
        (
            "http://u:p@[::1",
            "INFLUXDB_BASE_URL 'http://u:p@[::1' is not a URL: Invalid IPv6 URL",
        ),
        ("http://[::1", "INFLUXDB_BASE_URL 'http://[::1' is not a URL: Invalid IPv6 URL"),
        # only user info: what is left once it is taken out (never the password)
        ("http://u:p@", "INFLUXDB_BASE_URL 'http://' names no host"),
        ("https://:8086/x", "INFLUXDB_BASE_URL 'https://:8086/x' names no host"),
    ],
)
def test_a_malformed_url_with_an_at_sign_gets_a_clear_error(url: str, message: str) -> None:
    """1. INFLUXDB_BASE_URL with an '@' but no scheme, not a URL at all, or with no
    host. 2. ConfigError saying what is wrong with it (no crash while looking for
    credentials)."""
    with pytest.raises(ConfigError) as error:
        resolve("v9", {"INFLUXDB_BASE_URL": url}, {})
    assert str(error.value) == message


def test_an_empty_password_in_the_url_is_a_password() -> None:
    """1. A URL with `user:@`. 2. The user has the empty password (no error)."""
    config = resolve("v9", {"INFLUXDB_BASE_URL": "http://u:@db:8086"}, {})
    assert (config.influxdb_username, config.influxdb_password) == ("u", Secret(""))


def test_a_user_with_no_password_is_refused() -> None:
    """1. A URL with a user and no password. 2. ConfigError: both are needed."""
    with pytest.raises(ConfigError) as error:
        resolve("v9", {"INFLUXDB_BASE_URL": "http://u@db:8086"}, {})
    assert str(error.value) == "InfluxDB credentials need both a user and a password"


def test_credential_sources_override_each_other_in_order(tmp_path: Path) -> None:
    """1. A URL with user info, INFLUXDB_USERNAME, INFLUXDB_PASSWORD and a password file
    all set. 2. The variable's user beats the URL's; the file's password beats the
    variable's, which beats the URL's; only the file's line end is removed."""
    url = "http://url-user:url-pw@db:8086"
    env = {"INFLUXDB_BASE_URL": url, "INFLUXDB_USERNAME": "env-user"}
    config = resolve("v9", env, {})
    assert (config.influxdb_username, config.influxdb_password) == ("env-user", Secret("url-pw"))
    env["INFLUXDB_PASSWORD"] = "env-pw"
    assert resolve("v9", env, {}).influxdb_password == Secret("env-pw")
    secret = tmp_path / "password"
    secret.write_text(" file pw X\r\n")
    env["INFLUXDB_PASSWORD_FILE"] = str(secret)
    config = resolve("v9", env, {})
    assert config.influxdb_password == Secret(" file pw X")
    secret.write_text("blank ends \n")
    assert resolve("v9", env, {}).influxdb_password == Secret("blank ends ")
    assert config.influxdb_base_url == "http://db:8086"


def test_the_password_file_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    """1. A mounted password file with non-ASCII characters, in UTF-8. 2. Under the C
    locale (an image with no locale set) the password is read as written."""
    secret = tmp_path / "password"
    secret.write_bytes("pässwörd\n".encode())
    env = {"INFLUXDB_USERNAME": "u", "INFLUXDB_PASSWORD_FILE": str(secret)}
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        config = resolve("v9", env, {})
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert config.influxdb_password == Secret("pässwörd")


def test_an_unreadable_password_file_is_named(tmp_path: Path) -> None:
    """1. INFLUXDB_PASSWORD_FILE names a file that does not exist. 2. ConfigError names
    the file and the reason."""
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as error:
        resolve("v9", {"INFLUXDB_USERNAME": "u", "INFLUXDB_PASSWORD_FILE": str(missing)}, {})
    assert str(error.value) == (
        f"cannot read the InfluxDB password file {missing}: No such file or directory"
    )


def test_a_secret_compares_by_value_and_never_shows() -> None:
    """A Secret equals another with the same value (and hashes alike), reveals its value
    on request, and prints as stars."""
    secret = Secret("hunter2")
    assert secret == Secret("hunter2")
    assert secret != Secret("hunter3")
    assert secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))
    assert len({secret, Secret("hunter2"), Secret("other")}) == 2
    assert secret.reveal() == "hunter2"
    assert repr(secret) == str(secret) == "Secret('***')"


# -- validation -------------------------------------------------------------------------

VALID = CalcConfig(pod="pod-a")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"port": 0}, None),
        ({"port": 65535}, None),
        ({"port": -1}, "port -1 is not in 0..65535"),
        ({"port": 65536}, "port 65536 is not in 0..65535"),
        *(({name: 0.0}, None) for name in ("slow_math", "pre_close_delay", "task_delay")),
        ({"slow_math": -0.1}, "--slow-math must not be negative"),
        ({"pre_close_delay": -1.0}, "--pre-close-delay must not be negative"),
        ({"quiet_period": -1.0}, "--quiet-period must not be negative"),
        ({"quiet_max": -1.0}, "--quiet-max must not be negative"),
        ({"task_delay": -1.0}, "--task-delay must not be negative"),
        ({"task_timeout": -1.0}, "--task-timeout must not be negative"),
        ({"task_timeout": 0.0}, None),
        ({"flush_timeout": -1.0}, "--flush-timeout must not be negative"),
        ({"flush_timeout": 0.0}, None),
        ({"drain_timeout": None}, None),
        ({"drain_timeout": 0.0}, None),
        ({"drain_timeout": -0.5}, "--drain-timeout must not be negative"),
        ({"grace_period": 0.0}, "--grace-period must be positive"),
        ({"grace_period": 0.5}, None),
        ({"batch_interval": 0.0}, "--batch-interval must be positive"),
        ({"batch_interval": 0.01}, None),
        ({"max_head_bytes": 1023}, "--max-head-bytes must be at least 1024"),
        ({"max_head_bytes": 1024}, None),
        ({"head_timeout": 0.0}, "--head-timeout must be positive"),
        ({"head_timeout": 0.01}, None),
        ({"batch_size": 0, "max_buffer": 10}, "--batch-size must be at least 1"),
        ({"batch_size": 1, "max_buffer": 1}, None),
        ({"batch_size": 10, "max_buffer": 9}, "--max-buffer must be at least --batch-size"),
        ({"quiet_period": 2.0, "quiet_max": 2.0}, None),
        ({"quiet_period": 2.0, "quiet_max": 1.9}, "--quiet-max must be at least --quiet-period"),
        ({"quiet_period": 0.0, "quiet_max": 0.0}, None),
        ({"quiet_period": 0.5, "quiet_max": 0.2}, "--quiet-max must be at least --quiet-period"),
        ({"influxdb_base_url": "http://db:8086"}, None),
        ({"influxdb_base_url": "https://db:8086"}, None),
        (
            {"influxdb_base_url": "db:8086"},
            "INFLUXDB_BASE_URL 'db:8086' must start with http:// or https://",
        ),
        (
            {"influxdb_username": "u"},
            "InfluxDB credentials need both a user and a password",
        ),
        (
            {"influxdb_password": Secret("p")},
            "InfluxDB credentials need both a user and a password",
        ),
        ({"influxdb_username": "u", "influxdb_password": Secret("p")}, None),
        ({"pod": "a b~"}, None),
        ({"pod": ""}, "--pod (CALC_POD, else $HOSTNAME) must not be empty: it tags every point"),
        ({"pod": " \t"}, "--pod (CALC_POD, else $HOSTNAME) must not be empty: it tags every point"),
        (
            {"pod": "a\nb"},
            "--pod 'a\\nb' must not contain control characters (newlines) or '/'",
        ),
        (
            {"pod": "a\x1fb"},
            "--pod 'a\\x1fb' must not contain control characters (newlines) or '/'",
        ),
        (
            {"pod": "a\x7f"},
            "--pod 'a\\x7f' must not contain control characters (newlines) or '/'",
        ),
        ({"pod": "a/b"}, "--pod 'a/b' must not contain control characters (newlines) or '/'"),
    ],
)
def test_each_rule_refuses_the_values_past_its_edge_and_takes_the_edge(
    changes: dict[str, Any], problem: str | None
) -> None:
    """1. A valid config with one value changed (at or past the edge of its rule).
    2. At the edge it is taken; past it, ConfigError says exactly what is wrong."""
    config = dataclasses.replace(VALID, **changes)
    if problem is None:
        validate(config)
        return
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == problem


def test_every_problem_is_named_at_once() -> None:
    """1. A config with three problems. 2. One ConfigError lists them all, in order,
    joined by '; '."""
    config = dataclasses.replace(VALID, port=-1, batch_size=0, max_buffer=10, pod="")
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == (
        "port -1 is not in 0..65535; --batch-size must be at least 1; "
        "--pod (CALC_POD, else $HOSTNAME) must not be empty: it tags every point"
    )
