"""report.html: one page per run (`lab run`) and one per matrix (`lab matrix`), each a
single self-contained file: the styles inline, the pictures as data: URIs or inline SVG,
so it opens from disk, is mailed or archived as one file, and asks no network for
anything. Every value is escaped: manifests, pod names and error texts come from users.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.matrix import Cell, MatrixConfig
    from lab.report import Report

PAGE = "report.html"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.interrupted { background: #fde2e2; border: 1px solid #c00; padding: 0.5em 1em; }
.error { color: #b00; }
.none { color: #080; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
code { font-size: 0.9em; word-break: break-all; }
.ids { max-height: 12em; overflow: auto; }
"""

# Bars of the failures-by-class picture, in the order the classes are listed.
BAR_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        # No request leaves the page: not even for a favicon.
        '<link rel="icon" href="data:,">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _rows_table(rows: Iterable[tuple[str, str]], css_class: str) -> str:
    cells = "\n".join(
        f'<tr><th scope="row">{escape(name)}</th><td>{escape(value)}</td></tr>'
        for name, value in rows
    )
    return f'<table class="{css_class}">\n{cells}\n</table>'


def _png(path: Path, alt: str, css_class: str) -> str:
    """A PNG file inside the page as a data: URI; a line saying so when it is missing."""
    if not path.is_file() or path.stat().st_size == 0:
        return f"<p>No picture: {escape(path.name)} was not written.</p>"
    return _png_bytes(path.read_bytes(), alt, css_class)


def _png_bytes(data: bytes, alt: str, css_class: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{css_class}" alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def failure_bars(failed: dict[str, int], requests: int) -> str:
    """Failed requests by class as an inline SVG bar chart (no picture when none failed)."""
    kinds = [(kind, count) for kind, count in failed.items() if count]
    if not kinds:
        return '<p class="none">No request failed.</p>'
    label_w, bar_w, row_h = 140, 520, 26
    most = max(count for _, count in kinds)
    height = row_h * len(kinds) + 10
    parts = [
        f'<svg class="failures" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{label_w + bar_w + 170}" height="{height}" '
        f'viewBox="0 0 {label_w + bar_w + 170} {height}">',
        "<title>failed requests by class</title>",
    ]
    for row, (kind, count) in enumerate(kinds):
        y = 5 + row * row_h
        width = max(2, round(bar_w * count / most))
        share = f" ({100 * count / requests:.2f} %)" if requests else ""
        colour = BAR_COLOURS[row % len(BAR_COLOURS)]
        parts += [
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
            f"{escape(kind)}</text>",
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row_h - 8}" '
            f'fill="{colour}"/>',
            f'<text x="{label_w + width + 6}" y="{y + 17}" font-size="13">'
            f"{count}{escape(share)}</text>",
        ]
    parts.append("</svg>")
    return "\n".join(parts)


def _failures(report: Report) -> list[str]:
    out = ["<h2>Failures by class</h2>", failure_bars(report.failed, report.requests)]
    kinds = [(k, n) for k, n in report.failed.items() if n]
    if kinds:
        rows = "\n".join(
            f'<tr><td>{escape(kind)}</td><td class="num">{count}</td>'
            f"<td><code>{escape(report.error_examples.get(kind, ''))}</code></td></tr>"
            for kind, count in kinds
        )
        out.append(
            '<table class="failures-table">\n<tr><th>class</th><th>requests</th>'
            f"<th>an example</th></tr>\n{rows}\n</table>"
        )
    if report.failed_checks:
        out.append("<h3>Failed k6 checks</h3>")
        out.append(_rows_table(((c, str(n)) for c, n in report.failed_checks.items()), "checks"))
    if report.explanations:
        out.append("<h3>Why pods failed</h3>")
        out.append("<ul>" + "".join(f"<li>{escape(t)}</li>" for t in report.explanations) + "</ul>")
    return out


def _ids(name: str, ids: list[str], total: int | None) -> str:
    if not ids:
        return ""
    more = f" (the first {len(ids)} of {total})" if total is not None and total > len(ids) else ""
    listed = " ".join(escape(i) for i in ids)
    return f'<p>{escape(name)}{escape(more)}:</p>\n<div class="ids"><code>{listed}</code></div>'


def _operations(report: Report) -> list[str]:
    out = [
        "<h2>Lost and orphan operations</h2>",
        "<p>A <em>lost</em> operation is a request answered 200 whose operation the service "
        "never stored; an <em>orphan</em> is a stored operation whose request the client saw "
        "fail.</p>",
    ]
    if report.lost_operations is None:
        out.append("<p>Not measured: no InfluxDB in the manifests.</p>")
        return out
    orphans = "not known (counted)" if report.ops_method == "by count" else report.orphan_operations
    rows = [
        ("lost operations", str(report.lost_operations)),
        ("orphan operations", str(orphans)),
        ("operations stored", str(report.operations_logged)),
        ("accounted", report.ops_method or "by id"),
    ]
    if report.ops_method == "by count":
        rows.append(("give or take", f"{report.lost_margin} (requests in flight at the stop)"))
    out.append(_rows_table(rows, "operations"))
    out.append(_ids("lost ids", report.lost_ids, report.lost_operations))
    out.append(_ids("orphan ids", report.orphan_ids, report.orphan_operations))
    return out


def _events(report: Report) -> list[str]:
    rows = "\n".join(
        f'<tr><td class="num">{float(str(e.get("t", 0))):.3f}</td>'
        f"<td>{escape(str(e.get('pod', '')))}</td><td>{escape(str(e.get('kind', '')))}</td>"
        f"<td>{escape(str(e.get('detail', '')))}</td></tr>"
        for e in report.events
    )
    return [
        f"<details><summary>Events ({len(report.events)}; also in events.jsonl)</summary>",
        f'<table class="events">\n<tr><th>s</th><th>pod</th><th>kind</th><th>detail</th></tr>\n'
        f"{rows}\n</table></details>",
    ]


def run_page(report: Report, out: Path) -> str:
    """The page of one run whose files (timeline.png) are in `out`."""
    settings = [
        ("manifests", report.manifests),
        ("scenario", report.scenario),
        (
            "load balancer",
            report.lb + (f", http-reuse {report.http_reuse}" if report.http_reuse else ""),
        ),
        ("load-balancer retries", str(report.lb_retries)),
        ("endpoint lag", report.endpoint_lag),
        ("replicas", str(report.replicas)),
        ("k6 VUs", str(report.vus)),
        ("duration", f"{report.duration_s:.1f} s"),
    ]
    body = [f"<h1>lab run: {escape(report.scenario)}</h1>", f"<p>{escape(report.manifests)}</p>"]
    body += [
        f'<p class="interrupted">{escape(note)}</p>'
        for note in report.notes
        if note.startswith("INTERRUPTED")
    ]
    body += ["<h2>Settings</h2>", _rows_table(settings, "settings")]
    body += ["<h2>Results</h2>", _rows_table(report.rows(), "report")]
    body += [
        "<h2>Requests by outcome, and each pod's lane</h2>",
        _png(
            out / "timeline.png",
            "requests per second by outcome, with pod events; each pod's life below",
            "timeline",
        ),
    ]
    body += _failures(report)
    body += _operations(report)
    body += ["<h2>Events</h2>", *_events(report)]
    return _page(f"lab run: {report.scenario}, {report.manifests}", body)


def write_run(report: Report, out: Path) -> Path:
    path = out / PAGE
    path.write_text(run_page(report, out))
    return path


def _cell_html(cell: Cell | None, root: Path) -> list[str]:
    """A matrix cell's three columns, the first linked to its run's page."""
    if cell is None:
        return ["", "", ""]
    if cell.error:
        return [
            '<span class="error">error</span>',
            f'<span class="error">{escape(cell.error)}</span>',
            "-",
        ]
    requests = str(cell.requests)
    page = Path(cell.out) / PAGE
    if cell.out and page.is_file():
        href = os.path.relpath(page, root)
        requests = f'<a href="{escape(href)}">{requests}</a>'
    if cell.lost_operations is None:
        ops = "n/a"
    else:
        ops = f"{cell.lost_operations} / {cell.orphan_operations}"
    failed = escape(cell.failed_text())
    if cell.requests and not cell.failed_total:
        failed = f'<span class="none">{failed}</span>'
    return [requests, failed, escape(ops)]


def matrix_page(
    config: MatrixConfig, cells: list[Cell], interrupted: str | None, picture: bytes | None
) -> str:
    body = ["<h1>lab matrix</h1>"]
    if interrupted:
        body.append(
            f'<p class="interrupted">INTERRUPTED: {escape(interrupted)}; the table shows '
            "those done.</p>"
        )
    settings = [
        ("k6 VUs", f"{config.vus}, a new connection per request"),
        ("endpoint lag", config.endpoint_lag.describe()),
        ("versions", ", ".join(config.versions)),
        ("scenarios", ", ".join(config.scenarios)),
        ("load balancers", ", ".join(config.lbs)),
        *(("changes" if i == 0 else "", c) for i, c in enumerate(config.changes())),
    ]
    body += ["<h2>Settings</h2>", _rows_table(settings, "settings")]
    body.append("<h2>Results</h2>")
    body.append("<p>Each experiment's requests link to its own page.</p>")
    for lb in dict.fromkeys(c.lb for c in cells):
        header = "".join(f'<th colspan="3">{escape(s)}</th>' for s in config.scenarios)
        sub = "<th>requests</th><th>failed</th><th>lost / orphan ops</th>" * len(config.scenarios)
        rows = []
        for version in config.versions:
            columns = []
            for scenario in config.scenarios:
                cell = next(
                    (c for c in cells if (c.version, c.scenario, c.lb) == (version, scenario, lb)),
                    None,
                )
                columns += _cell_html(cell, config.out)
            rows.append(
                f"<tr><th>{escape(version)}</th>"
                + "".join(f"<td>{c}</td>" for c in columns)
                + "</tr>"
            )
        body += [
            f"<h3>load balancer: {escape(lb)}</h3>",
            f'<table class="matrix">\n<tr><th rowspan="2">version</th>{header}</tr>\n'
            f"<tr>{sub}</tr>\n" + "\n".join(rows) + "\n</table>",
        ]
    if not cells:
        body.append("<p>No experiment finished.</p>")
    body.append("<h2>Failed requests and lost operations per version</h2>")
    if picture is None:
        body.append("<p>No picture: no experiment finished.</p>")
    else:
        body.append(
            _png_bytes(picture, "failed requests and lost operations per version", "matrix")
        )
    return _page("lab matrix", body)


def write_matrix(config: MatrixConfig, cells: list[Cell], interrupted: str | None = None) -> Path:
    from lab.matrix_plot import png  # matplotlib: only once there is a page to draw

    path = config.out / PAGE
    path.write_text(
        matrix_page(config, cells, interrupted, png(cells, config.versions, config.scenarios))
    )
    return path
