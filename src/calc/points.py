"""InfluxDB 1.x line protocol for the operation log.

One point per successful sum:
    operation,name=sum,pod=<pod>,port=<port> id="<request id>",numbers=<count>,result=<sum> <ns>

The request id is a field, not a tag: as a tag every request would be a new series and
InfluxDB's max-values-per-tag (100,000 by default) would start rejecting writes. The pod
and port tags keep cardinality bounded (a pod has one or a few ports), and a strictly
increasing timestamp per process makes a retried write overwrite itself instead of
duplicating (same measurement, tags, time). The port tells apart two processes that
share a pod name (two ports in one pod, `hostNetwork`): with the pod alone, two points
stamped the same nanosecond by two processes would overwrite each other. It is also what
keeps a spool's replay idempotent: the spool is per pod and port, so the next container
writing a spooled line writes it with the same tags.
`numbers` and `result` are always written as floats: a field keeps one type per shard.
A newline cannot be escaped in line protocol (it ends the point), so tag values and
strings with one are refused.

`point_problem` checks that a line is one line-protocol point (any measurement, tags and
fields, as InfluxDB would parse it): a spool's recovery keeps only such lines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

MEASUREMENT = "operation"


def _no_newline(value: str, what: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} {value!r} has a newline, which line protocol cannot carry")
    return value


def escape_tag(value: str) -> str:
    """Tag keys, tag values and field keys: backslash-escape commas, '=' and spaces."""
    _no_newline(value, "tag value")
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_string_field(value: str) -> str:
    """String field values: backslash-escape '"' and backslashes."""
    _no_newline(value, "string field")
    return value.replace("\\", "\\\\").replace('"', '\\"')


def float_field(value: float) -> str:
    """A float in a form InfluxDB parses (Python's repr, e.g. 10.0 or 1e+20)."""
    return repr(float(value))


class NanoClock:
    """Wall-clock nanoseconds, strictly increasing within this process."""

    def __init__(self, source: Callable[[], int] | None = None) -> None:
        self._source = source  # None: the wall clock, read at each call
        self._last = 0

    def next(self) -> int:
        now = self._source() if self._source is not None else time.time_ns()
        if now <= self._last:
            now = self._last + 1
        self._last = now
        return now


class PointFormatter:
    def __init__(self, pod: str, port: int | None = None, clock: NanoClock | None = None) -> None:
        if not pod:
            raise ValueError("the pod tag must not be empty")
        port_tag = "" if port is None else f",port={port}"
        self._prefix = f"{MEASUREMENT},name=sum,pod={escape_tag(pod)}{port_tag} "
        self._clock = clock or NanoClock()

    def sum_point(self, request_id: str, count: int, result: float) -> str:
        return (
            f'{self._prefix}id="{escape_string_field(request_id)}",'
            f"numbers={float_field(count)},result={float_field(result)} {self._clock.next()}"
        )


_FIELD_VALUE = re.compile(
    r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"  # float
    r"|[-+]?\d+i|\d+u"  # integer, unsigned
    r"|t|T|true|True|TRUE|f|F|false|False|FALSE"
    r'|"([^"\\]|\\.)*"'  # string, with \" and \\ escaped
)
_TIMESTAMP = re.compile(r"-?\d+")


def _split(text: str, separator: str, quoted: bool) -> list[str]:
    """`text` cut at each `separator` not escaped by a backslash (nor, when `quoted`,
    inside a double-quoted string)."""
    parts: list[str] = []
    start, i, in_string = 0, 0, False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if quoted and char == '"':
            in_string = not in_string
        elif char == separator and not in_string:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _pairs(section: str, quoted: bool) -> list[tuple[str, str]] | None:
    pairs = []
    for pair in _split(section, ",", quoted):
        key, *rest = _split(pair, "=", quoted)
        value = pair[len(key) + 1 :]
        if not key or not rest or not value:
            return None
        pairs.append((key, value))
    return pairs


def point_problem(line: str) -> str | None:
    """Why `line` is not one line-protocol point, or None when it is."""
    if any(ord(char) < 32 and char != "\t" for char in line) or "\ufffd" in line:
        return "control or replacement characters"
    sections = _split(line, " ", quoted=True)
    if len(sections) not in (2, 3):
        return "not measurement[,tags] fields [timestamp]"
    series, fields = sections[0], sections[1]
    measurement, *tags = _split(series, ",", quoted=False)
    if not measurement or measurement.startswith("#"):
        return "no measurement"
    if tags and _pairs(",".join(tags), quoted=False) is None:
        return "a tag is not key=value"
    field_pairs = _pairs(fields, quoted=True)
    if field_pairs is None:
        return "a field is not key=value"
    for key, value in field_pairs:
        if not _FIELD_VALUE.fullmatch(value):
            return f"field {key!r} has no valid value"
    if len(sections) == 3 and not _TIMESTAMP.fullmatch(sections[2]):
        return "the timestamp is not an integer"
    return None
