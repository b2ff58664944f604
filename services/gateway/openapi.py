"""The OpenAPI 3.1 document: bearer auth, problem+json errors and examples on every operation.

FastAPI's generated document is completed here rather than in every route:

- the bearer scheme (public operations opt out);
- the RFC 9457 problem responses each operation can give, each with an example: 401 and 429
  (with ``Retry-After``) wherever a key is needed; 403 on writes (viewers are read-only); 422 where there are parameters or a body; 400 for a malformed cursor or
  ``Idempotency-Key``; 409 for a retry while the first request still runs; 413 and 415 where
  there is a body; a ``default`` for the rest. Statuses a route declares itself (404, 409, a
  role-gated read's 403…) keep its description and example;
- the ``Idempotency-Key`` header on every POST, and ``X-Request-Id`` on every response;
- an example for every page of results (``Page[X]``), built from its item's example.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway.auth import PUBLIC_PATHS
from services.gateway.pagination import encode_cursor
from services.gateway.problems import PROBLEM_JSON, Problem

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# status: (description, example title, example detail)
_ERRORS: dict[str, tuple[str, str, str]] = {
    "400": ("The cursor or Idempotency-Key is malformed", "Invalid cursor",
            "the cursor is not one this API returned"),
    "401": ("Missing or invalid API key", "Missing API key", "send the header 'Authorization: Bearer <key>'"),
    "403": ("The key's role does not allow this (viewer keys are read-only)", "Forbidden",
            "viewer keys are read-only"),
    "409": ("A request with this Idempotency-Key is still running", "Request in progress",
            "a request with this Idempotency-Key is still running; retry shortly"),
    "413": ("The body is larger than the gateway accepts", "Request body too large", "the limit is 1048576 bytes"),
    "415": ("The body is not JSON", "Unsupported media type", "send the body as application/json"),
    "422": ("The request does not validate, or reuses an Idempotency-Key for a different request",
            "Invalid request", "body.name: Field required"),
    "429": ("Rate limit reached; see Retry-After", "Too many requests",
            "this key may make 50 requests per second (bursts of 200)"),
}
_DEFAULT = ("Any other error, as problem+json", "Service unavailable",
            "no instance answers xpumesh.rpc.inventory.devices.list")
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1},
                "example": 1}
_REQUEST_ID = {"description": "The request's id: the caller's X-Request-Id, or a new one.",
               "schema": {"type": "string"}, "example": "9f1c2e7a4b6d4e0f8a3b5c7d9e1f2a4b"}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Retrying with the same key (per API key; kept a day by default) returns the first answer instead of "
                   "doing the work again; the same key with a different request is a 422.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "example": "2f8e5c1a-7b3d-4e9f-a6c2-1d0b9e8f7a65"}


def problem(description: str, title: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
    """A documented problem response for a route's ``responses=``: its status comes from the key it is under."""
    example: dict[str, Any] = {"type": "about:blank", "title": title}
    if detail:
        example["detail"] = detail
    example.update(extra)
    return {"description": description, "content": {PROBLEM_JSON: {"example": example}}}


def _instance(path: str, op: dict[str, Any]) -> str:
    """The operation's path with its parameters' examples filled in."""
    for param in op.get("parameters", []):
        if param.get("in") != "path":
            continue
        examples = param.get("schema", {}).get("examples") or ([param["example"]] if "example" in param else [])
        if examples:
            path = path.replace("{" + param["name"] + "}", str(examples[0]))
    return path


def _wanted(path: str, method: str, op: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """The generic problem statuses this operation can answer, with description, title and detail."""
    if path in PUBLIC_PATHS:
        wanted: dict[str, tuple[str, str, str]] = {}
    else:
        wanted = {s: _ERRORS[s] for s in ("401", "429")}
        if method != "get":  # reads behind a role declare their 403 themselves
            wanted["403"] = _ERRORS["403"]
    params = {p["name"] for p in op.get("parameters", [])}
    if "requestBody" in op:
        wanted["422"] = _ERRORS["422"]
    elif params:
        wanted["422"] = ("The request does not validate", "Invalid request",
                         "query.limit: Input should be less than or equal to 500")
    if "cursor" in params:
        wanted["400"] = _ERRORS["400"]
    elif method == "post":
        wanted["400"] = ("The Idempotency-Key is malformed", "Invalid Idempotency-Key",
                         "use 1-255 printable characters, e.g. a UUID")
    if method == "post":
        wanted["409"] = _ERRORS["409"]
    if "requestBody" in op:
        wanted |= {s: _ERRORS[s] for s in ("413", "415")}
    return wanted


def _complete_errors(path: str, method: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    instance = _instance(path, op)
    for status, (description, title, detail) in _wanted(path, method, op).items():
        own = responses.get(status)
        if own is None:
            responses[status] = problem(description, title, detail)
            continue
        if PROBLEM_JSON not in own.get("content", {}):  # the route's description, the generic example
            own["content"] = problem(description, title, detail)["content"]
        if own.get("description") in (None, "", "Validation Error"):  # FastAPI's own words for a 422
            own["description"] = description
        elif description not in own["description"]:
            own["description"] = f"{own['description']}; or: {description[0].lower()}{description[1:]}"
    for status, resp in responses.items():
        if status == "default" or not status.isdigit() or int(status) < 400:
            continue
        content = resp.setdefault("content", {})
        if content and PROBLEM_JSON not in content:
            continue  # a documented non-problem answer (readiness)
        content.pop("application/json", None)
        media = content.setdefault(PROBLEM_JSON, {})
        media["schema"] = {"$ref": "#/components/schemas/Problem"}
        given = media.get("example") or {}
        example = {"type": given.get("type", "about:blank"), "title": given.get("title", resp.get("description")),
                   "status": int(status)} | {k: v for k, v in given.items() if k not in ("type", "title", "status")}
        example.setdefault("instance", instance)
        media["example"] = example
        if status == "429":
            resp.setdefault("headers", {})["Retry-After"] = _RETRY_AFTER
    default = problem(_DEFAULT[0], _DEFAULT[1], _DEFAULT[2], status=503, instance=instance)
    default["content"][PROBLEM_JSON]["schema"] = {"$ref": "#/components/schemas/Problem"}
    responses["default"] = default
    for resp in responses.values():
        resp.setdefault("headers", {})["X-Request-Id"] = _REQUEST_ID


def _page_examples(schemas: dict[str, Any]) -> None:
    """``Page[X]`` schemas get an example page: X's first example, and a cursor to the next page."""
    for name, schema in schemas.items():
        if not name.startswith("Page_") or schema.get("examples"):
            continue
        ref = schema.get("properties", {}).get("items", {}).get("items", {}).get("$ref", "")
        item_examples = schemas.get(ref.rsplit("/", 1)[-1], {}).get("examples") or []
        if item_examples:
            item = item_examples[0]
            after = item.get("id") or item.get("host_id") or item.get("site") if isinstance(item, dict) else None
            schema["examples"] = [{"items": [item], "next_cursor": encode_cursor(after or 1)}]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                      description=app.description, routes=app.routes, tags=app.openapi_tags)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema()
    schemas["Problem"]["examples"] = [{"type": "about:blank", "title": "Workload not found", "status": 404,
                                       "detail": "no workload 'wl_18ea52ab2dac349aa6915d69'",
                                       "instance": "/v1/workloads/wl_18ea52ab2dac349aa6915d69"}]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    _page_examples(schemas)
    components["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer xpm_…`. Admins create keys with `POST /v1/keys`."}}
    doc["security"] = [{"bearerAuth": []}]
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            if path in PUBLIC_PATHS:
                op["security"] = []
            if method == "post":
                params = op.setdefault("parameters", [])
                if not any(p["name"].lower() == "idempotency-key" for p in params):
                    params.append(dict(IDEMPOTENCY_KEY))
            _complete_errors(path, method, op)
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
