"""The calc ASGI app (Starlette): POST /sum, GET /health, /ready, /metrics.

Starlette rather than FastAPI: the API is one endpoint whose every bad input needs its own
status (400/413/422) and JSON error, which we check by hand anyway; FastAPI's validation
layer would add per-request cost and answer its own 422 shapes. Starlette gives routing,
lifespan and responses with little overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calc.api import MAX_BODY_BYTES, BadInput, parse_numbers, sum_numbers
from calc.config import CalcConfig
from calc.logs import request_id_var
from calc.openapi import OPENAPI
from calc.oplog import OperationLog
from calc.sinks import Sink
from graceful import Lifecycle, NotAccepted

logger = logging.getLogger("calc")
CLIENT_CLOSED = 499  # counted when a client leaves before its body arrives (nginx's code)

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def json_response(status: int, payload: dict[str, Any]) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
    )


class RequestContext:
    """Pure ASGI middleware: request id in, request id out, responses counted by status."""

    def __init__(self, app: ASGIApp, statuses: Counter[int]) -> None:
        self.app = app
        self.statuses = statuses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                rid = value
                break
        if not _SANE_ID.fullmatch(rid):
            rid = uuid.uuid4().hex.encode()
        token = request_id_var.set(rid.decode())
        sent_status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal sent_status
            if message["type"] == "http.response.start":
                sent_status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.statuses[sent_status or 500] += 1
            request_id_var.reset(token)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadInput(413, f"body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadInput(413, f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 in the JSON shape of every other calc error (Starlette answers text)."""
    assert isinstance(exc, HTTPException)
    response = json_response(exc.status_code, {"error": exc.detail.lower()})
    response.headers.update(exc.headers or {})  # 405 keeps its Allow header
    return response


def create_app(config: CalcConfig, lifecycle: Lifecycle, sink: Sink) -> ASGIApp:
    oplog = OperationLog(config, sink)
    statuses: Counter[int] = Counter()
    slow_math = config.slow_math

    async def calc_sum(request: Request) -> Response:
        try:
            numbers = parse_numbers(await read_body(request))
            result, count = sum_numbers(numbers)
        except BadInput as exc:
            return json_response(exc.status, {"error": exc.error})
        except ClientDisconnect:
            # Gone before its body arrived: nothing was computed or recorded, and nobody
            # is left to answer; 499 (client closed request) only counts it.
            logger.info("Client went away before its body arrived: nothing computed")
            return Response(status_code=CLIENT_CLOSED)
        logger.info("Calculating sum")
        if slow_math > 0:
            await asyncio.sleep(slow_math)
        try:
            oplog.record(request_id_var.get(), count, result)
        except NotAccepted as exc:
            # Neither written nor counted: the client must know, and may retry.
            return json_response(503, {"error": f"operation not recorded: {exc}"})
        return json_response(200, {"result": result})

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "healthy"})

    async def ready(request: Request) -> Response:
        if lifecycle.ready:
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "draining"})

    async def metrics(request: Request) -> Response:
        lines = [
            "# HELP calc_requests_total Responses sent, by HTTP status.",
            "# TYPE calc_requests_total counter",
            *(f'calc_requests_total{{status="{s}"}} {n}' for s, n in sorted(statuses.items())),
            "# HELP calc_requests_in_flight Requests being handled now.",
            "# TYPE calc_requests_in_flight gauge",
            f"calc_requests_in_flight {lifecycle.in_flight}",
            "# HELP calc_draining 1 once shutdown began.",
            "# TYPE calc_draining gauge",
            f"calc_draining {int(lifecycle.shutting_down)}",
            "# HELP calc_operations_pending Operations recorded but not yet written.",
            "# TYPE calc_operations_pending gauge",
            f"calc_operations_pending {oplog.pending}",
            "# HELP calc_operations_written_total Operations written to the log.",
            "# TYPE calc_operations_written_total counter",
            f"calc_operations_written_total {oplog.written}",
            "# HELP calc_operations_lost_total Operations that could not be written.",
            "# TYPE calc_operations_lost_total counter",
            f"calc_operations_lost_total {oplog.lost}",
            "# HELP calc_operations_lost_by_reason_total Operations lost, by reason.",
            "# TYPE calc_operations_lost_by_reason_total counter",
            *(
                f'calc_operations_lost_by_reason_total{{reason="{r}"}} {n}'
                for r, n in oplog.lost_by_reason.items()
            ),
            "# HELP calc_operations_refused_total Operations not accepted (answered 503).",
            "# TYPE calc_operations_refused_total counter",
            f"calc_operations_refused_total {oplog.refused}",
            "# HELP calc_operations_spooled Operations left in the spool at shutdown.",
            "# TYPE calc_operations_spooled gauge",
            f"calc_operations_spooled {oplog.spooled}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    openapi_body = json.dumps(OPENAPI)

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logger.info("App starting (profile %s)", config.profile)
        oplog.start()
        logger.info("App started")
        yield
        logger.info("App stopping")
        await oplog.close(lifecycle.remaining(oplog.shutdown_limit))
        logger.info(
            "App stopped: %d operations recorded, %d written, %d lost, %d left in the spool",
            oplog.recorded,
            oplog.written,
            oplog.lost,
            oplog.spooled,
        )

    app = Starlette(
        routes=[
            Route("/sum", calc_sum, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: http_error, 405: http_error},
    )
    app.state.oplog = oplog
    return RequestContext(app, statuses)
