"""The OpenAPI 3.1 document: bearer auth, problem+json errors on every operation.

FastAPI's generated document is completed here rather than in every route: the bearer
scheme (public operations opt out), and the RFC 9457 problem responses every operation can
give (401, 403, 422, 429 and a ``default`` for the rest), each with an example.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.auth import PUBLIC_PATHS
from services.gateway.problems import PROBLEM_JSON, Problem

_ERRORS: dict[str, tuple[str, str, str]] = {
    "401": ("Missing or invalid API key", "Missing API key", "send the header 'Authorization: Bearer <key>'"),
    "403": ("The key's role or quota does not allow this", "Forbidden", "viewer keys are read-only"),
    "422": ("The request does not validate", "Invalid request", "body.hardware.count: Input should be >= 1"),
    "429": ("Rate limit reached; see Retry-After", "Too many requests",
            "this key may make 50 requests per second (bursts of 200)"),
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _problem(status: str, description: str, title: str, detail: str) -> dict[str, Any]:
    example = {"type": "about:blank", "title": title, "status": int(status) if status.isdigit() else 500,
               "detail": detail, "instance": "/v1/workloads"}
    return {"description": description,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}}}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=app.description, routes=app.routes, tags=app.openapi_tags)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema()
    schemas["Problem"]["examples"] = [{"type": "about:blank", "title": "Workload not found", "status": 404,
                                       "detail": "no workload 'wl_7d3e'", "instance": "/v1/workloads/wl_7d3e"}]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer xpm_…`. Admins create keys with `POST /v1/keys`."}}
    doc["security"] = [{"bearerAuth": []}]
    for path, item in doc.get("paths", {}).items():
        public = path in PUBLIC_PATHS
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            if public:
                op["security"] = []
            for status, (description, title, detail) in _ERRORS.items():
                if public and status in ("401", "403", "429"):
                    continue
                if status == "422" and not (op.get("parameters") or op.get("requestBody")):
                    continue
                if status not in responses or status == "422":
                    responses[status] = _problem(status, description, title, detail)
                else:
                    responses[status].setdefault("content", {})[PROBLEM_JSON] = \
                        _problem(status, description, title, detail)["content"][PROBLEM_JSON]
                    responses[status]["content"].pop("application/json", None)
            for status, resp in list(responses.items()):
                if status.isdigit() and int(status) >= 400 and "content" not in resp:
                    responses[status] = _problem(status, resp.get("description", "Error"),
                                                 resp.get("description", "Error"), "")
            responses["default"] = _problem("default", "Any other error, as problem+json", "Service unavailable",
                                            "no instance answers xpumesh.rpc.inventory.devices.list")
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
