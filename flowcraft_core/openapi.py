"""The OpenAPI 3.1 document of the HTTP API, built from the same table and models the handlers use.

Request bodies come from the pydantic request models' JSON Schema (OpenAPI 3.1 is JSON Schema 2020-12
compatible, so pydantic's output is used as is), responses from the response models. The function-key
security schemes describe what the Functions host enforces: the ``x-functions-key`` header or the
``code`` query parameter; health and this document are anonymous.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .analysis import BlueprintAnalysis
from .models import WorkflowBlueprint

API_TITLE = "flowcraft-azure"
API_VERSION = "1.0.0"
ROUTE_PREFIX = "/api"

_STATUS_TEXT = {
    200: "OK", 202: "Accepted",
    400: "Bad request: malformed JSON, invalid fields, a bad id, or a blueprint refused at start-up (with problems)",
    401: "Missing or wrong function key", 404: "No such run, blueprint or node",
    409: "The run is in a state that does not allow this", 413: "Request body over FLOWCRAFT_MAX_REQUEST_BYTES",
    415: "Request body is not JSON", 422: "The deployed blueprint is invalid",
    500: "Unexpected error (logged with an incident id)", 503: "A backing service is unavailable",
}

_PARAMETER_TEXT = {
    "runId": "Run id: 1-128 characters of letters, digits and . _ : @ = + -.",
    "nodeId": "Id of a webhook node of the run's blueprint.",
    "id": "Blueprint id.",
}

_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "top": {"type": "integer", "minimum": 1, "maximum": 1000},
    "createdFrom": {"type": "string", "format": "date-time"},
    "createdTo": {"type": "string", "format": "date-time"},
    "status": {"type": "string"},
}


class DocumentedOperation(Protocol):
    """What the document needs of an operation (``flowcraft_core.http_api.Operation`` has it)."""

    @property
    def operation_id(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def route(self) -> str: ...

    @property
    def auth(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def success(self) -> int: ...

    @property
    def request_model(self) -> type[BaseModel] | None: ...

    @property
    def body(self) -> str: ...

    @property
    def response_model(self) -> type[BaseModel] | None: ...

    @property
    def errors(self) -> tuple[int, ...]: ...

    @property
    def description(self) -> str: ...

    @property
    def query(self) -> tuple[tuple[str, str], ...]: ...

    @property
    def also(self) -> tuple[int, ...]: ...


def _schemas(operations: list[DocumentedOperation], error_model: type[BaseModel]) -> dict[str, Any]:
    """Component schemas of every request and response model, with refs pointing at components."""
    requests = list(dict.fromkeys(op.request_model for op in operations if op.request_model is not None))
    responses = list(dict.fromkeys([error_model, *(op.response_model for op in operations
                                                   if op.response_model is not None), WorkflowBlueprint]))
    pairs = [(m, "validation") for m in requests] + [(m, "serialization") for m in responses]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    schemas["BlueprintAnalysis"] = {
        "type": "object", "description": BlueprintAnalysis.__doc__,
        "properties": {
            "startNodeIds": {"type": "array", "items": {"type": "string"}},
            "terminalNodeIds": {"type": "array", "items": {"type": "string"}},
            "cycles": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            "isDag": {"type": "boolean"}, "nodeCount": {"type": "integer"}, "edgeCount": {"type": "integer"},
        },
        "required": ["startNodeIds", "terminalNodeIds", "cycles", "isDag", "nodeCount", "edgeCount"],
    }
    schemas["BlueprintDetail"] = {
        "description": "A blueprint's JSON with its analysis and a Mermaid flowchart.",
        "allOf": [
            {"$ref": "#/components/schemas/WorkflowBlueprint"},
            {"type": "object", "required": ["analysis", "mermaid"], "properties": {
                "analysis": {"$ref": "#/components/schemas/BlueprintAnalysis"},
                "mermaid": {"type": "string", "description": "Mermaid `flowchart` source."}}},
        ],
    }
    schemas["OpenApiDocument"] = {"type": "object", "description": "An OpenAPI 3.1 document."}
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _response_schema(op: DocumentedOperation) -> dict[str, Any]:
    if op.response_model is not None:
        return _ref(op.response_model.__name__)
    return _ref({"getBlueprint": "BlueprintDetail", "openapi": "OpenApiDocument"}.get(op.operation_id, "Error"))


def _operation(op: DocumentedOperation) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.route.split("/")[0]]}
    if op.description:
        doc["description"] = op.description
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": _PARAMETER_TEXT.get(name, name)}
        for name in re.findall(r"{([^}:?*]+)", op.route)
    ]
    params += [{"name": name, "in": "query", "required": False,
                "schema": _QUERY_SCHEMAS.get(name, {"type": "string"}), "description": text}
               for name, text in op.query]
    if params:
        doc["parameters"] = params
    if op.request_model is not None:
        doc["requestBody"] = {"required": op.body == "required", **_json(_ref(op.request_model.__name__))}
    elif op.body == "any":
        doc["requestBody"] = {"required": False, "description": "Any JSON value.", **_json({})}
    content = ({"content": {"text/html": {"schema": {"type": "string"}}}} if op.operation_id == "runView"
               else _json(_response_schema(op)))
    responses: dict[str, Any] = {str(op.success): {"description": _STATUS_TEXT[op.success], **content}}
    for code in op.also:
        responses[str(code)] = {"description": _STATUS_TEXT[code], **_json(_response_schema(op))}
    if "202" in responses:
        responses["202"]["headers"] = {
            "Location": {"schema": {"type": "string"}, "description": "The run's status URL."},
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before polling again."},
        }
    codes = set(op.errors) | {500}
    if op.auth == "function":
        codes.add(401)
    for code in sorted(codes):
        responses[str(code)] = {"description": _STATUS_TEXT[code], **_json(_ref("ErrorResponse"))}
    if op.operation_id == "health":
        # Health reports its checks in its own shape on 503 too.
        responses["503"] = {"description": "A dependency is down", **_json(_ref("HealthReport"))}
    doc["responses"] = responses
    if op.auth == "anonymous":
        doc["security"] = []
    return doc


def build_document(operations: Iterable[DocumentedOperation], *, error_model: type[BaseModel],
                   server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these operations (``http_api.openapi_document`` passes the app's)."""
    ops = list(operations)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(f"/{op.route}", {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE, "version": API_VERSION,
            "description": "Start, watch, resume and cancel Flowcraft workflow runs on Azure Functions. "
                           "Errors are {\"error\": code, \"detail\": text}.",
        },
        "servers": [{"url": server_url or ROUTE_PREFIX}],
        "paths": paths,
        "components": {
            "schemas": _schemas(ops, error_model),
            "securitySchemes": {
                "functionKeyHeader": {"type": "apiKey", "in": "header", "name": "x-functions-key",
                                      "description": "A function or host key of the Function App."},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code",
                                     "description": "The same key as a query parameter."},
            },
        },
        # Either scheme is enough (a list of alternatives); anonymous operations override this with [].
        "security": [{"functionKeyHeader": []}, {"functionKeyQuery": []}],
    }
