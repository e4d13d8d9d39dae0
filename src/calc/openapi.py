"""The OpenAPI 3 document of the calc API, served at GET /openapi.json.

Written by hand so that it states every status the API answers; schemathesis checks
the running service against it in the test suite."""

from __future__ import annotations

from typing import Any

from calc.api import MAX_ITEMS

_ERROR = {
    "description": "client error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}
_REQUEST_ID = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "description": "kept when it matches the pattern, else replaced by a generated id",
    "schema": {"type": "string"},
}
_STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "calc", "version": "1.0.0"},
    "paths": {
        "/sum": {
            "post": {
                "summary": "Sum the items of `numbers` that are numbers (booleans are not)",
                "parameters": [_REQUEST_ID],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["numbers"],
                                "properties": {
                                    "numbers": {"type": "array", "maxItems": MAX_ITEMS, "items": {}}
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        "the sum (an integer when every number is one)",
                        {
                            "type": "object",
                            "required": ["result"],
                            "properties": {"result": {"type": "number"}},
                        },
                    ),
                    "400": _ERROR,
                    "413": _ERROR,
                    "422": _ERROR,
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": _json("alive", _STATUS)},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: 503 once shutdown began (with the readiness flip)",
                "responses": {"200": _json("ready", _STATUS), "503": _json("draining", _STATUS)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}
