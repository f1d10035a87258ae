"""The API's operations, declared once, and the OpenAPI 3.1 document generated from them.

An :class:`Operation` names its method, path, scope, query and body models and its responses
(status → model); the server validates requests with the same models, and :func:`openapi`
turns the list into ``/api/openapi.json`` with pydantic's JSON Schemas (no hand-written schema).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from frontdesk.daemon.api.calls import Answer, Call
from frontdesk.daemon.api.models import ErrorOut

_PARAM = re.compile(r"\{(\w+)\}")

_COMMON_ERRORS: dict[int, str] = {
    401: "No valid token (Authorization: Bearer TOKEN)",
    422: "The request does not fit its schema, or a repeated Idempotency-Key came with "
         "another body",
    429: "Past the token's rate limit: wait Retry-After seconds",
    503: "The store cannot be reached just now: try again",
}


@dataclass(frozen=True)
class Operation:
    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    operation_id: str
    summary: str
    handler: Callable[[Call], Awaitable[Answer]]
    responses: Mapping[int, tuple[str, type[BaseModel] | None]]
    """Status → (description, body model or None for no body)."""
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    path_types: Mapping[str, Literal["string", "integer"]] = field(default_factory=dict)
    path_examples: Mapping[str, str | int] = field(default_factory=dict)
    idempotent: bool = False
    """Takes an ``Idempotency-Key`` header (a POST that creates or sends)."""
    own_transactions: bool = False
    """The operation commits on its own (it waits for the daemon to process what it wrote), so
    it gets a read session and the Idempotency-Key's record is written after it."""
    description: str = ""

    @property
    def writes(self) -> bool:
        return self.method != "GET"

    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)


def openapi(operations: Sequence[Operation], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``."""
    models: dict[type[BaseModel], None] = {ErrorOut: None}
    for op in operations:
        for _, model in op.responses.values():
            if model is not None:
                models[model] = None
        if op.body is not None:
            models[op.body] = None
    refs, top = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/components/schemas/{model}")
    schemas = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, "validation")])

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters: list[dict[str, Any]] = []
        for name in op.path_params():
            parameter = {"name": name, "in": "path", "required": True,
                         "schema": {"type": op.path_types.get(name, "string")}}
            if name in op.path_examples:
                parameter["example"] = op.path_examples[name]
            parameters.append(parameter)
        if op.query is not None:
            schema = op.query.model_json_schema()
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                prop = dict(prop)
                description = prop.pop("description", None)
                prop.pop("title", None)
                parameter = {"name": name, "in": "query", "required": name in required,
                             "schema": prop}
                if description:
                    parameter["description"] = description
                parameters.append(parameter)
        if op.idempotent:
            parameters.append({
                "name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "A repeat with the same key returns the first answer"})
        responses: dict[str, Any] = {}
        statuses = dict(op.responses)
        if op.body is not None:
            statuses.setdefault(400, ("The body is not JSON", ErrorOut))
            statuses.setdefault(413, ("The body is larger than api.max_body", ErrorOut))
        if op.writes:
            statuses.setdefault(403, ("The token may only read", ErrorOut))
        for status, text in _COMMON_ERRORS.items():
            statuses.setdefault(status, (text, ErrorOut))
        for status, (description, model) in sorted(statuses.items()):
            entry: dict[str, Any] = {"description": description}
            if model is not None:
                entry["content"] = {"application/json": {"schema": ref(model)}}
            responses[str(status)] = entry
        operation: dict[str, Any] = {
            "operationId": op.operation_id, "summary": op.summary, "parameters": parameters,
            "responses": responses, "security": [{"bearer": []}]}
        if op.description:
            operation["description"] = op.description
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": ref(op.body)}}}
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "frontdesk", "version": version,
                 "description": "The REST API of frontdesk, the support inbox. Every /api/v1 "
                                "request carries Authorization: Bearer TOKEN "
                                "(frontdesk token create)."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }
