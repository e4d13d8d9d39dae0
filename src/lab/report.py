"""The experiment's results, computed apart from their rendering (table, JSON)."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.accounting import Accounting, Request
from lab.events import Event
from lab.lag import Lag
from lab.manifest import Service

ID_SAMPLE = 50  # ids listed in the report per category; the counts are exact


@dataclass
class Report:
    manifests: str
    scenario: str
    lb: str
    lb_retries: int
    endpoint_lag: str  # as lab.lag.Lag.describe() says it
    vus: int
    replicas: int
    requests: int
    ok: int
    failed: dict[str, int]
    failed_total: int
    lost_operations: int | None
    orphan_operations: int | None
    duration_s: float
    achieved_rps: float | None
    # What the VUs would send if each request took the steady window's median answer time
    # (k6's http_req_duration of its 200s) and the next followed at once: VUs / median.
    # None when no request in the window succeeded. The gap to achieved is the time
    # between answers: connecting, k6's own work, the slower answers.
    ideal_rps: float | None
    steady_window_s: list[float] | None
    action_completed: bool
    action_s: float | None
    pods_created: int
    lost_ids: list[str] = field(default_factory=list)
    orphan_ids: list[str] = field(default_factory=list)
    unmatched_points: int = 0
    operations_logged: int | None = None
    error_examples: dict[str, str] = field(default_factory=dict)
    protocols: dict[str, int] = field(default_factory=dict)
    failed_checks: dict[str, int] = field(default_factory=dict)
    http_reuse: str | None = None  # the L7 modes only
    # During the action: the most non-terminating pods and the fewest available ones.
    peak_pods: int | None = None
    fewest_available: int | None = None
    notes: list[str] = field(default_factory=list)
    # Why pods failed: each distinct probe, hook or start failure with its last output.
    explanations: list[str] = field(default_factory=list)
    # How operations were accounted: "by id", or "by count" when k6 sent no request ids
    # (then lost_operations is 200s minus points, give or take lost_margin).
    ops_method: str | None = None
    lost_margin: int | None = None
    events: list[dict[str, object]] = field(default_factory=list)
    median_ms: float | None = None  # the answer time ideal_rps is derived from
    # The load: which k6 script, which request, and the status that counted as ok.
    k6_script: str | None = None
    request: str | None = None
    expect_status: int = 200
    # Why lost and orphan operations are None (no InfluxDB, or a request not calc's sum).
    operations_unmeasured: str | None = None
    # `lab run --quick`: each field it changed, from and to (lab.quick).
    quick_changes: list[str] = field(default_factory=list)

    @property
    def steady_ratio(self) -> float | None:
        if self.achieved_rps is None or not self.ideal_rps:
            return None
        return self.achieved_rps / self.ideal_rps

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["steady_ratio"] = self.steady_ratio
        return data

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def rows(self) -> list[tuple[str, str]]:
        """The table's rows, (name, value): the terminal's table and report.html's."""
        rows: list[tuple[str, str]] = [
            ("manifests", self.manifests),
            ("scenario", self.scenario),
            ("load balancer", _lb(self)),
            ("endpoint lag", self.endpoint_lag),
            ("replicas / VUs", f"{self.replicas} / {self.vus}"),
            *_load_rows(self),
            ("duration", f"{self.duration_s:.1f} s"),
            ("action", _action(self)),
            ("pods during the action", _pods(self)),
            ("requests", str(self.requests)),
            (f"ok ({self.expect_status})", str(self.ok)),
            (
                "failed",
                f"{self.failed_total}"
                + (f" ({_pct(self.failed_total, self.requests)})" if self.requests else ""),
            ),
        ]
        rows += [(f"  {kind}", _failed(self, kind, count)) for kind, count in self.failed.items()]
        rows += [
            ("lost operations", _opt(self.lost_operations, self.operations_unmeasured)),
            ("orphan operations", _opt(self.orphan_operations, self.operations_unmeasured)),
        ]
        rows = _ops_method_rows(self, rows)
        if self.protocols:
            rows.append(("protocols", ", ".join(f"{p} {n}" for p, n in self.protocols.items())))
        if self.failed_checks:
            rows.append(
                ("failed k6 checks", ", ".join(f"{c}: {n}" for c, n in self.failed_checks.items()))
            )
        if self.unmatched_points:
            rows.append(("points without a k6 record", str(self.unmatched_points)))
        rows.append(("steady rps achieved/ideal", _rate(self)))
        rows += [
            ("pod failures" if i == 0 else "", text) for i, text in enumerate(self.explanations)
        ]
        rows += [("--quick" if i == 0 else "", t) for i, t in enumerate(self.quick_changes)]
        rows += [("note" if i == 0 else "", text) for i, text in enumerate(self.notes)]
        return rows

    def table(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        line = "-" * (width + 2 + max(len(v) for _, v in rows))
        body = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
        return f"{line}\n{body}\n{line}"


# Events that say why a pod failed, with the probe's or hook's last output.
FAILURE_KINDS = (
    "probe-failed",
    "liveness-failed",
    "startup-failed",
    "poststart-failed",
    "start-failed",
    "prestop-failed",
)
_POD_IP = re.compile(r"\b127\.\d+\.\d+\.\d+\b")
MAX_EXPLANATIONS = 20


def explain(events: list[Event]) -> list[str]:
    """Each distinct failure once, with how often and on which pods it happened."""
    seen: dict[tuple[str, str], tuple[int, dict[str, None]]] = {}
    for event in events:
        if event.kind not in FAILURE_KINDS:
            continue
        key = (event.kind, _POD_IP.sub("<pod IP>", event.detail))
        count, pods = seen.get(key, (0, {}))
        pods[event.pod] = None
        seen[key] = (count + 1, pods)
    lines = []
    for (kind, detail), (count, pods) in seen.items():
        names = list(pods)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{kind}: {detail} ({count}x on {shown})")
    if len(lines) > MAX_EXPLANATIONS:
        rest = len(lines) - MAX_EXPLANATIONS
        lines = [*lines[:MAX_EXPLANATIONS], f"... {rest} more in events.jsonl"]
    return lines


def entry_notes(service: Service | None, nodes: int, entry: str | None) -> list[str]:
    """What the load's entry means when the Service is ClusterIP: in a cluster no client
    outside reaches it; its clients are pods, each through its own node's proxy."""
    if service is None or service.type != "ClusterIP":
        return []
    if entry is not None:
        path = f"from this machine through --entry {entry}, not the way those pods come in"
    elif nodes > 1:
        path = (
            f"through an L4 balancer to {nodes} nodes' proxies, a balancer a ClusterIP "
            "Service does not have: its clients' own nodes spread the load instead"
        )
    else:
        path = "through one node's proxy (HAProxy, with the endpoint lag), as a pod's would"
    return [
        f"Service {service.name} is type ClusterIP: only pods in the cluster reach it, each "
        f"through its own node's proxy; the load stands in for them, {path}"
    ]


def _rate(report: Report) -> str:
    if report.achieved_rps is None:
        return "n/a (no steady window of 1 s or more)"
    if report.ideal_rps is None or report.median_ms is None:
        return f"{report.achieved_rps:.0f} rps; ideal n/a (no request succeeded in the window)"
    ratio = report.steady_ratio or 0.0
    return (
        f"{report.achieved_rps:.0f} / {report.ideal_rps:.0f} rps ({ratio:.0%}); ideal = "
        f"{report.vus} VUs / {report.median_ms:.1f} ms, the window's median answer time"
    )


def _pods(report: Report) -> str:
    if report.peak_pods is None:
        return "n/a"
    return f"at most {report.peak_pods}, at least {report.fewest_available} available"


def _lb(report: Report) -> str:
    text = f"{report.lb}, retries {report.lb_retries}"
    return text + (f", http-reuse {report.http_reuse}" if report.http_reuse else "")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %"


def _opt(value: int | None, why: str | None = None) -> str:
    if value is not None:
        return str(value)
    return why or "not measured (no InfluxDB in the manifests)"


def _load_rows(report: Report) -> list[tuple[str, str]]:
    """Which script and request made the load: a 100 % http_404 reads differently when
    the request is on the same screen."""
    if report.k6_script is None:
        return []
    return [("k6 script", report.k6_script), ("request", report.request or "?")]


def _failed(report: Report, kind: str, count: int) -> str:
    """A failure kind's count; an unexpected status says which one was expected."""
    if kind.startswith("http_"):
        return f"{count} (expected {report.expect_status})"
    return str(count)


def _ops_method_rows(report: Report, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`rows` with the way operations were accounted; counted, orphans are not known and
    lost is give or take the requests in flight while the load stopped."""
    if report.ops_method is None:
        return rows
    if report.ops_method != "by count":
        return [*rows, ("operations accounted", report.ops_method)]
    rows = [(k, "not known (counted)") if k == "orphan operations" else (k, v) for k, v in rows]
    margin = f"lost ± {report.lost_margin} (requests in flight while the load stopped)"
    return [*rows, ("operations accounted", f"by count (no request ids): {margin}")]


def _action(report: Report) -> str:
    if report.scenario == "steady":
        return "none"
    took = f"{report.action_s:.1f} s" if report.action_s is not None else "?"
    return f"{'completed' if report.action_completed else 'NOT completed'} in {took}"


def steady_rate(
    requests: list[Request], start_ms: int | None, end_ms: int | None
) -> tuple[float | None, list[float] | None]:
    """Requests per second between two Unix-ms times (the steady window)."""
    if start_ms is None or end_ms is None or end_ms - start_ms < 1000:
        return None, None
    count = sum(1 for r in requests if start_ms <= r.t_ms < end_ms)
    return count / ((end_ms - start_ms) / 1000), [start_ms / 1000, end_ms / 1000]


def median_answer_ms(
    requests: list[Request], start_ms: int | None, end_ms: int | None
) -> float | None:
    """The median answer time (k6's http_req_duration) of the oks in the window: the
    service's own pace under this load, whatever its handler does."""
    if start_ms is None or end_ms is None:
        return None
    times = [
        r.duration_ms
        for r in requests
        if r.ok and r.duration_ms is not None and start_ms <= r.t_ms < end_ms
    ]
    return statistics.median(times) if times else None


def ideal_rate(vus: int, median_ms: float | None) -> float | None:
    """VUs / the median answer time: each VU sends its next request the moment the last
    one is answered (the project's k6 script does not sleep between requests)."""
    if median_ms is None or median_ms <= 0:
        return None
    return vus / (median_ms / 1000)


def build(
    *,
    manifests: str,
    scenario: str,
    lb: str,
    lb_retries: int,
    endpoint_lag: Lag,
    vus: int,
    replicas: int,
    accounting: Accounting,
    requests: list[Request],
    events: list[Event],
    duration_s: float,
    steady_ms: tuple[int | None, int | None],
    action_completed: bool,
    action_s: float | None,
    notes: list[str],
    failed_checks: dict[str, int] | None = None,
    http_reuse: str | None = None,
    pod_bounds: tuple[int, int | None] | None = None,
    supporting: frozenset[str] = frozenset(),
    k6_script: str | None = None,
    request: str | None = None,
    expect_status: int = 200,
    operations_unmeasured: str | None = None,
    quick_changes: list[str] | None = None,
) -> Report:
    achieved, window = steady_rate(requests, *steady_ms)
    median_ms = median_answer_ms(requests, *steady_ms) if achieved is not None else None
    ideal = ideal_rate(vus, median_ms)
    lost = accounting.lost
    orphans = accounting.orphans
    return Report(
        manifests=manifests,
        scenario=scenario,
        lb=lb,
        lb_retries=lb_retries,
        endpoint_lag=endpoint_lag.describe(),
        vus=vus,
        replicas=replicas,
        requests=accounting.requests,
        ok=accounting.ok,
        failed=accounting.failed,
        failed_total=accounting.failed_total,
        lost_operations=accounting.lost_operations,
        orphan_operations=None if orphans is None else len(orphans),
        duration_s=round(duration_s, 3),
        achieved_rps=None if achieved is None else round(achieved, 1),
        ideal_rps=None if ideal is None else round(ideal, 1),
        median_ms=None if median_ms is None else round(median_ms, 2),
        steady_window_s=window,
        action_completed=action_completed,
        action_s=None if action_s is None else round(action_s, 3),
        # The Deployment under test's pods; supporting ones are in the notes.
        pods_created=sum(1 for e in events if e.kind == "created" and e.pod not in supporting),
        lost_ids=(lost or [])[:ID_SAMPLE],
        orphan_ids=(orphans or [])[:ID_SAMPLE],
        unmatched_points=len(accounting.unmatched_points),
        operations_logged=accounting.points,
        error_examples=accounting.errors,
        protocols=accounting.protocols,
        failed_checks=failed_checks or {},
        http_reuse=http_reuse,
        peak_pods=pod_bounds[0] if pod_bounds else None,
        fewest_available=pod_bounds[1] if pod_bounds else None,
        notes=notes,
        explanations=explain(events),
        ops_method=accounting.ops_method,
        lost_margin=accounting.in_flight_at_stop,
        events=[e.as_dict() for e in events],
        k6_script=k6_script,
        request=request,
        expect_status=expect_status,
        operations_unmeasured=operations_unmeasured if accounting.points is None else None,
        quick_changes=quick_changes or [],
    )
