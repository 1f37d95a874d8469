"""OpenAPI 3.1 description of the gateway's routes, served at /openapi.json.

The copy in docs/openapi.json is generated from this module (``python -m gateway.openapi``); a unit
test keeps the two equal and checks every served route is described.
"""

from __future__ import annotations

import json
from typing import Any

from eventpipe import __version__

CAPTURE_ROUTES = ("capture", "batch", "e", "track", "engage", "i/v0/e")

_ERROR = {
    "type": "object",
    "required": ["type", "code", "detail"],
    "properties": {
        "type": {"type": "string", "enum": ["validation_error", "authentication_error", "server_error"]},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "attr": {"type": ["string", "null"]},
    },
}

_EVENT = {
    "type": "object",
    "description": "One event. distinct_id may also be given as $distinct_id or properties.distinct_id.",
    "properties": {
        "event": {"type": "string"},
        "distinct_id": {},
        "properties": {"type": "object"},
        "timestamp": {"type": ["string", "number"]},
        "uuid": {"type": "string", "format": "uuid"},
        "api_key": {"type": "string"},
        "$set": {"type": "object"},
        "$set_once": {"type": "object"},
        "type": {"type": "string", "enum": ["alias", "capture", "track", "identify", "group", "page", "screen"]},
    },
}

_BODY = {
    "oneOf": [
        _EVENT,
        {"type": "array", "items": _EVENT},
        {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "api_key": {"type": "string"},
                "sent_at": {"type": "string"},
                "batch": {"type": "array", "items": _EVENT},
            },
        },
    ]
}


def _capture_operation(route: str, method: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": f"Capture events ({method.upper()} /{route})",
        "operationId": f"capture_{route.replace('/', '_')}_{method}",
        "parameters": [
            {"name": "data", "in": "query", "schema": {"type": "string"}, "description": "payload (wins over body)"},
            {
                "name": "compression",
                "in": "query",
                "schema": {"type": "string"},
                "description": "gzip-js, lz64 or base64: a hint only, the payload's bytes decide",
            },
            {"name": "_", "in": "query", "schema": {"type": "string"}, "description": "sent_at, epoch s or ms"},
            {"name": "ver", "in": "query", "schema": {"type": "string"}},
            {"name": "beacon", "in": "query", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "Kafka acknowledged every event",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {}}}}},
            },
            "204": {"description": "accepted (beacon=1)"},
            "400": {"description": "invalid payload", "content": {"application/json": {"schema": _ERROR}}},
            "401": {"description": "missing or invalid api key", "content": {"application/json": {"schema": _ERROR}}},
            "408": {"description": "headers or body too slow", "content": {"application/json": {"schema": _ERROR}}},
            "413": {
                "description": "payload, a JSON bound or one event too large (the detail names the limit)",
                "content": {"application/json": {"schema": _ERROR}},
            },
            "503": {
                "description": "Kafka unavailable, or the gateway shedding load: retry (after Retry-After seconds)",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": {"application/json": {"schema": _ERROR}},
            },
        },
    }
    if method == "get":  # a POST's query key is ignored, as PostHog's capture ignores it
        op["parameters"] += [
            {"name": name, "in": "query", "schema": {"type": "string"}, "description": "project api key"}
            for name in ("token", "api_key")
        ]
    if method == "post":
        op["requestBody"] = {
            "content": {
                "application/json": {"schema": _BODY},
                "text/plain": {"schema": {"type": "string"}},
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"data": {"type": "string"}, "compression": {}}}
                },
            }
        }
    return op


def build_spec() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in CAPTURE_ROUTES:
        for path in (f"/{route}", f"/{route}/"):
            paths[path] = {
                "get": _capture_operation(route, "get"),
                "post": _capture_operation(route, "post"),
                "options": {"summary": "CORS preflight", "responses": {"200": {"description": "CORS headers"}}},
            }
    ok = {"200": {"description": "ok"}}
    paths["/_health"] = {"get": {"summary": "Liveness", "responses": ok}}
    paths["/_ready"] = {
        "get": {"summary": "Readiness: Kafka reachable", "responses": {**ok, "503": {"description": "not ready"}}}
    }
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "responses": ok}}
    paths["/openapi.json"] = {"get": {"summary": "This document", "responses": ok}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "eventpipe capture gateway", "version": __version__},
        "paths": paths,
    }


def render() -> str:
    return json.dumps(build_spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
