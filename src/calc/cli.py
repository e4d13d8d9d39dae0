"""`calc`: serve the API, print the profiles, count or clear logged operations.

The CLI only parses into a CalcConfig and calls `calc.service.run`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from calc.config import (
    DEFAULT_PROFILE,
    PROFILE_NOTES,
    PROFILES,
    SWITCHES,
    CalcConfig,
    ConfigError,
    Switch,
    parse_value,
    resolve,
)


def _cli_type(switch: Switch) -> Any:
    def convert(raw: str) -> Any:
        try:
            return parse_value(switch, raw, "option")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = switch.kind  # argparse shows this name in its errors
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calc",
        description="The calc demo service: POST /sum, with graceful shutdown profiles v1..v10.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the API server",
        description="Run the API. Every option can also be set by the environment variable "
        "shown; options win over the environment, which wins over the profile.",
    )
    serve.add_argument(
        "--profile",
        help=f"one of {', '.join(PROFILES)} (env CALC_PROFILE; default {DEFAULT_PROFILE})",
    )
    defaults = CalcConfig(pod="the host name")
    for switch in SWITCHES:
        extra = f"; one of {', '.join(switch.choices)}" if switch.choices else ""
        default = _show(getattr(defaults, switch.name))
        if any(switch.name in overrides for overrides in PROFILES.values()):
            default += ", or the profile's"
        serve.add_argument(
            switch.option,
            dest=switch.name,
            type=_cli_type(switch),
            metavar="VALUE" if switch.kind != "bool" else "on|off",
            help=f"{switch.help}{extra} (env {switch.env}; default {default})",
        )

    commands.add_parser("profiles", help="print what each profile switches on")

    ops = commands.add_parser(
        "ops",
        help="count or clear logged operations (INFLUXDB_BASE_URL, else the local file)",
    )
    ops.add_argument("action", choices=("count", "clear"))
    return parser


def profiles_table() -> str:
    defaults = CalcConfig(pod="-")
    names = [s.name for s in SWITCHES if any(s.name in p for p in PROFILES.values())]
    rows = []
    for profile, overrides in PROFILES.items():
        values = {n: overrides.get(n, getattr(defaults, n)) for n in names}
        cells = [profile] + [_show(values[n]) for n in names] + [PROFILE_NOTES[profile]]
        rows.append(cells)
    header = ["profile", *names, "what it shows"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "profiles":
        print(profiles_table())
        return 0
    cli = {k: v for k, v in vars(args).items() if k not in ("command", "action")}
    try:
        config = resolve(cli.pop("profile", None), os.environ, cli)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.command == "ops":
        return _ops(config, args.action)
    from calc.service import run  # imported here so `calc profiles` stays fast

    return run(config)


def _ops(config: CalcConfig, action: str) -> int:
    from calc.oplog import influx_auth
    from calc.sinks import FileSink, InfluxSink, SinkError

    sink: FileSink | InfluxSink
    if config.influxdb_base_url:
        sink = InfluxSink(config.influxdb_base_url, config.influxdb_db, auth=influx_auth(config))
        where = f"{config.influxdb_base_url} database {config.influxdb_db}"
    else:
        sink = FileSink(config.oplog_file)
        where = config.oplog_file
    try:
        if action == "count":
            print(sink.count())
        else:
            sink.clear()
            print(f"cleared operations in {where}", file=sys.stderr)
    except SinkError as exc:
        print(f"calc ops {action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
