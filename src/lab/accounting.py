"""Every request and every operation, accounted per id from k6's CSV and InfluxDB.

A request is classified from its `http_reqs` row: `ok` (the expected status, 200 unless
`lab run --expect-status` says otherwise), `http_<status>` for any other status, or by
k6's error code when no response came: `refused` (1212), `reset`
(1220), `timeout` (1050 for the request, 1211 for the connect), `unreachable` (1213 with "no route to host" or "network is
unreachable": the address of a removed pod sandbox), `eof` (1000, the generic code: EOF and
anything else).
Operations are the service's InfluxDB points, matched to requests by id: a *lost*
operation is a request answered 200 without a point; an *orphan* is a point whose
request the client saw fail. Only calc's sum writes that log: for any other request
(`lab run --request`) operations are not accounted (lab.k6.operations_unmeasured). A k6
script that sends no request ids (a user's own) cannot
be matched: then operations are counted instead (`ops_method` "by count"): lost is the
200s minus the points stored, give or take the requests in flight while the load stopped
(those that ended after it was told to stop), and orphans are not known.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

# k6's codes (lib/netext/httpext/error_codes.go): 1211 is tcpDialTimeoutErrorCode, the
# connect to an address that drops packets (a failed node's) running out of time.
ERROR_KINDS = {
    "1212": "refused",
    "1220": "reset",
    "1050": "timeout",
    "1211": "timeout",
    "1000": "eof",
}


@dataclass(frozen=True)
class Request:
    t_ms: int  # k6's timestamp (Unix ms) of the sample
    rid: str
    status: int
    error_code: str
    error: str
    proto: str = ""
    # k6's http_req_duration (sending, waiting, receiving: no connect), in ms.
    duration_ms: float | None = None
    expected_status: int = 200  # the status that counts as ok

    @property
    def kind(self) -> str:
        return classify(self.status, self.error_code, self.error, self.expected_status)

    @property
    def ok(self) -> bool:
        return self.status == self.expected_status


# k6 files a dial error with an errno it has no code for under 1213 ("dial: unknown errno
# 113 error with msg `no route to host`", checked with k6 1.1); these two mean the address
# has no host behind it any more.
UNREACHABLE = ("no route to host", "network is unreachable")


def classify(status: int, error_code: str, error: str = "", expected: int = 200) -> str:
    if status == expected:
        return "ok"
    if status:
        return f"http_{status}"
    if error_code == "1213" and any(text in error for text in UNREACHABLE):
        return "unreachable"
    return ERROR_KINDS.get(error_code, "eof" if not error_code else f"error_{error_code}")


def _rid(extra_tags: str) -> str:
    # extra_tags is "k=v&k2=v2" in k6's CSV; our script sets rid=<id> on every request.
    for part in extra_tags.split("&"):
        key, _, value = part.partition("=")
        if key == "rid":
            return value
    return ""


def read_requests(path: Path, expected_status: int = 200) -> list[Request]:
    return read_csv(path, expected_status)[0]


def read_csv(path: Path, expected_status: int = 200) -> tuple[list[Request], dict[str, int]]:
    """The `http_reqs` rows as requests, each with the `http_req_duration` row k6 writes
    right after it (same time and tags), and how often each k6 check failed.
    `expected_status` is the status that counts as ok."""
    requests: list[Request] = []
    failed_checks: Counter[str] = Counter()
    if not path.exists():
        return requests, {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            metric = row.get("metric_name")
            if metric == "checks":
                if float(row.get("metric_value") or 0) == 0:
                    failed_checks[row.get("check") or "?"] += 1
                continue
            if metric == "http_req_duration":
                last = requests[-1] if requests else None
                if last is not None and last.duration_ms is None and _same_request(last, row):
                    requests[-1] = replace(last, duration_ms=float(row.get("metric_value") or 0))
                continue
            if metric != "http_reqs":
                continue
            status = row.get("status") or "0"
            requests.append(
                Request(
                    t_ms=int(float(row.get("timestamp") or 0)),
                    rid=_rid(row.get("extra_tags") or ""),
                    status=int(status) if status.isdigit() else 0,
                    error_code=row.get("error_code") or "",
                    error=row.get("error") or "",
                    proto=row.get("proto") or "",
                    expected_status=expected_status,
                )
            )
    return requests, dict(failed_checks)


def _same_request(request: Request, row: dict[str, str]) -> bool:
    status = row.get("status") or "0"
    return (
        request.t_ms == int(float(row.get("timestamp") or 0))
        and request.rid == _rid(row.get("extra_tags") or "")
        and request.status == (int(status) if status.isdigit() else 0)
        and request.error_code == (row.get("error_code") or "")
    )


@dataclass
class Accounting:
    requests: int
    ok: int
    failed: dict[str, int]
    lost: list[str] | None = None  # None: the service logs no operations
    orphans: list[str] | None = None
    unmatched_points: list[str] = field(default_factory=list)  # ids k6 never recorded
    duplicate_points: int = 0
    points: int | None = None
    errors: dict[str, str] = field(default_factory=dict)  # kind -> one example message
    protocols: dict[str, int] = field(default_factory=dict)  # of the answered requests
    ops_method: str | None = None  # "by id" or "by count"; None: no operations measured
    lost_by_count: int | None = None  # "by count": 200s minus points, at least 0
    in_flight_at_stop: int | None = None  # "by count": the margin of lost_by_count

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def lost_operations(self) -> int | None:
        if self.ops_method == "by count":
            return self.lost_by_count
        return None if self.lost is None else len(self.lost)


def account(
    requests: Iterable[Request],
    point_ids: Iterable[object] | None,
    stopped_ms: int | None = None,
) -> Accounting:
    """Per id: which 200s left no point, which failures left one anyway. Without request
    ids, by count; `stopped_ms` (Unix ms) is when the load was told to stop."""
    by_id: dict[str, Request] = {}
    kinds: Counter[str] = Counter()
    protocols: Counter[str] = Counter()
    examples: dict[str, str] = {}
    total = 0
    in_flight = 0
    for request in requests:
        total += 1
        # k6 stamps a request when it ends: one that ends after the stop was in flight.
        if stopped_ms is not None and request.t_ms > stopped_ms:
            in_flight += 1
        kind = request.kind
        kinds[kind] += 1
        if kind != "ok" and kind not in examples:
            examples[kind] = request.error or f"HTTP {request.status}"
        if request.rid:
            by_id[request.rid] = request
        if request.status:
            protocols[request.proto or "?"] += 1
    ok = kinds.pop("ok", 0)
    result = Accounting(
        total, ok, dict(sorted(kinds.items())), errors=examples, protocols=dict(protocols)
    )
    if point_ids is None:
        return result
    ids = [str(p) for p in point_ids]
    seen = set(ids)
    result.points = len(ids)
    result.duplicate_points = len(ids) - len(seen)
    if not by_id:
        # No request carries an id: nothing to match, so count.
        result.ops_method = "by count"
        result.lost_by_count = max(0, ok - len(ids))
        result.in_flight_at_stop = in_flight
        return result
    result.ops_method = "by id"
    result.lost = sorted(rid for rid, r in by_id.items() if r.ok and rid not in seen)
    result.orphans = sorted(rid for rid in seen if rid in by_id and not by_id[rid].ok)
    result.unmatched_points = sorted(rid for rid in seen if rid not in by_id)
    return result


def timeline(
    requests: Iterable[Request], start_ms: int, bin_ms: int = 1000
) -> dict[str, dict[int, int]]:
    """Requests per bin by kind: kind -> {bin since start -> count}; bins of `bin_ms`
    (a second by default)."""
    if bin_ms <= 0:
        raise ValueError(f"bin_ms must be > 0, got {bin_ms}")
    out: dict[str, Counter[int]] = {}
    for request in requests:
        index = (request.t_ms - start_ms) // bin_ms
        out.setdefault(request.kind, Counter())[index] += 1
    return {kind: dict(counts) for kind, counts in out.items()}
