"""InfluxDB 1.x line protocol for the operation log.

One point per successful sum:
    operation,name=sum,pod=<pod> id="<request id>",numbers=<count>,result=<sum> <ns>

The request id is a field, not a tag: as a tag every request would be a new series and
InfluxDB's max-values-per-tag (100,000 by default) would start rejecting writes. The pod
tag keeps cardinality bounded, and a strictly increasing timestamp per process makes a
retried write overwrite itself instead of duplicating (same measurement, tags, time).
`numbers` and `result` are always written as floats: a field keeps one type per shard.
"""

from __future__ import annotations

import time

MEASUREMENT = "operation"


def escape_tag(value: str) -> str:
    """Tag keys, tag values and field keys: backslash-escape commas, '=' and spaces."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_string_field(value: str) -> str:
    """String field values: backslash-escape '"' and backslashes."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def float_field(value: float) -> str:
    """A float in a form InfluxDB parses (Python's repr, e.g. 10.0 or 1e+20)."""
    return repr(float(value))


class NanoClock:
    """Wall-clock nanoseconds, strictly increasing within this process."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = time.time_ns()
        if now <= self._last:
            now = self._last + 1
        self._last = now
        return now


class PointFormatter:
    def __init__(self, pod: str) -> None:
        self._prefix = f"{MEASUREMENT},name=sum,pod={escape_tag(pod)} "
        self._clock = NanoClock()

    def sum_point(self, request_id: str, count: int, result: float) -> str:
        return (
            f'{self._prefix}id="{escape_string_field(request_id)}",'
            f"numbers={float_field(count)},result={float_field(result)} {self._clock.next()}"
        )
