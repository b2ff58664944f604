"""The gateway's OpenAPI document as a contract: valid OpenAPI 3.1, an example for every request body
and success response, every example valid against its own schema, and the error answers each
operation can give documented as RFC 9457 problem+json."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
from jsonschema import Draft202012Validator, FormatChecker
from schemathesis.specs.openapi.definitions import OPENAPI_31

from libs.config import Settings
from services.gateway.auth import PUBLIC_PATHS
from tests.integration.test_api_kit import gateway_settings, start_gateway

PROBLEM = "application/problem+json"
PUBLIC = PUBLIC_PATHS  # of these, /healthz and /readyz appear in the document
METHODS = ("get", "put", "post", "delete", "patch")
EMPTY_NOT_MISSING = {"/v1/metrics/sites/{site}/hosts"}  # an unknown site's hosts are an empty page
Doc = dict[str, Any]
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or ("T" in value and datetime.fromisoformat(value).tzinfo is not None)


async def fetch_doc(settings: Settings, running_service: Callable[..., Any]) -> Doc:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get("/openapi.json")
        assert (await c.get("/docs")).status_code == 200  # the interactive docs need no key either
    assert r.status_code == 200, r.text
    doc: Doc = r.json()
    return doc


def operations(doc: Doc) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def resolve(doc: Doc, schema: Any) -> Any:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def whole_examples(doc: Doc, media: dict[str, Any]) -> list[Any]:
    """Complete example values for a media type: its own, or its schema's (an array's from its items')."""
    if "example" in media:
        return [media["example"]]
    if isinstance(media.get("examples"), dict) and media["examples"]:
        return [e["value"] for e in media["examples"].values() if "value" in e]
    return schema_examples(doc, media.get("schema"))


def schema_examples(doc: Doc, schema: Any) -> list[Any]:
    schema = resolve(doc, schema)
    if not isinstance(schema, dict):
        return []
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return list(schema["examples"])
    if "example" in schema:
        return [schema["example"]]
    if schema.get("type") == "array":
        return [[item] for item in schema_examples(doc, schema.get("items"))]
    return []


def validator(doc: Doc, schema: Any) -> Draft202012Validator:
    """A validator for ``schema`` whose ``#/components/…`` references resolve in ``doc``."""
    return Draft202012Validator({"components": doc.get("components", {}), "allOf": [schema]},
                                format_checker=FORMATS)


def every_example(node: Any, where: str = "#") -> Iterator[tuple[str, Any, Any]]:
    """(location, example, schema) for every example anywhere in the document: media types, parameters,
    headers (``example``/``examples`` beside a ``schema``) and schemas (``examples`` lists, ``example``)."""
    if isinstance(node, list):
        for i, sub in enumerate(node):
            yield from every_example(sub, f"{where}/{i}")
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("schema"), dict) and ("example" in node or isinstance(node.get("examples"), dict)):
        if "example" in node:
            yield f"{where}/example", node["example"], node["schema"]
        for name, ex in (node.get("examples") or {}).items():
            if isinstance(ex, dict) and "value" in ex:
                yield f"{where}/examples/{name}", ex["value"], node["schema"]
    elif isinstance(node.get("examples"), list) or "example" in node:
        bare = {k: v for k, v in node.items() if k not in ("examples", "example")}
        for i, ex in enumerate(node.get("examples") or []):
            yield f"{where}/examples/{i}", ex, bare
        if "example" in node:
            yield f"{where}/example", node["example"], bare
    for key, sub in node.items():
        if key not in ("example", "examples"):
            yield from every_example(sub, f"{where}/{key}")


async def test_openapi_document_is_valid_openapi_3_1(settings, running_service) -> None:
    doc = await fetch_doc(settings, running_service)
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"]), doc["openapi"]
    errors = [f"{e.json_path}: {e.message[:200]}" for e in Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert not errors, "\n".join(errors[:20])
    bad = [name for name, schema in doc["components"]["schemas"].items()
           if not Draft202012Validator(Draft202012Validator.META_SCHEMA).is_valid(schema)]
    assert not bad, f"schemas that are not JSON Schema 2020-12: {bad}"


async def test_openapi_every_operation_has_request_and_success_examples(settings, running_service) -> None:
    doc = await fetch_doc(settings, running_service)
    missing: list[str] = []
    for method, path, op in operations(doc):
        body = op.get("requestBody")
        for media_type, media in ((body or {}).get("content") or {}).items():
            if not whole_examples(doc, media):
                missing.append(f"{method.upper()} {path}: request body {media_type}")
        successes = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert successes, f"{method.upper()} {path} documents no success response"
        for code, response in successes.items():
            if code == "204":
                assert not response.get("content"), f"{method.upper()} {path}: a 204 has no body"
                continue
            content = response.get("content") or {}
            if not content:
                missing.append(f"{method.upper()} {path}: {code} documents no body")
            for media_type, media in content.items():
                if not whole_examples(doc, media):
                    missing.append(f"{method.upper()} {path}: {code} {media_type}")
    assert not missing, "operations without an example:\n" + "\n".join(missing)


async def test_openapi_examples_validate_against_their_own_schemas(settings, running_service) -> None:
    doc = await fetch_doc(settings, running_service)
    found = list(every_example(doc))
    assert len(found) > 100, "the document's examples are found"
    invalid: list[str] = []
    for where, example, schema in found:
        for error in validator(doc, schema).iter_errors(example):
            invalid.append(f"{where}: {error.json_path}: {error.message[:200]}")
    assert not invalid, f"{len(invalid)} example errors:\n" + "\n".join(invalid[:40])


async def test_openapi_errors_are_documented_as_problems(settings, running_service) -> None:
    doc = await fetch_doc(settings, running_service)
    gaps: list[str] = []
    for method, path, op in operations(doc):
        responses = op["responses"]
        params = {p["name"]: p for p in op.get("parameters", [])}
        wanted = {"default"}
        if path not in PUBLIC:
            wanted |= {"401", "429"} | ({"403"} if method != "get" else set())  # viewers are read-only
        if params or "requestBody" in op:
            wanted.add("422")
        if any(p["in"] == "path" for p in params.values()) and method != "put" and path not in EMPTY_NOT_MISSING:
            wanted.add("404")  # an unknown or another tenant's resource (PUT upserts instead)
        if "cursor" in params:
            wanted.add("400")
        if "requestBody" in op:
            wanted |= {"413", "415"}
        if method == "post":
            wanted |= {"400", "409"}  # a malformed Idempotency-Key; a retry while the first still runs
        for code, response in responses.items():
            if code.startswith(("4", "5")) or code == "default":
                if path == "/readyz" and code == "503":
                    continue  # readiness answers its checks, not a problem
                if PROBLEM not in (response.get("content") or {}):
                    gaps.append(f"{method.upper()} {path}: {code} is not problem+json")
        gaps += [f"{method.upper()} {path}: {code} not documented" for code in sorted(wanted - set(responses))]
        if "429" in responses and "Retry-After" not in (responses["429"].get("headers") or {}):
            gaps.append(f"{method.upper()} {path}: 429 without Retry-After")
        if method == "post" and "Idempotency-Key" not in params:
            gaps.append(f"{method.upper()} {path}: Idempotency-Key not documented")
        if path in PUBLIC:
            if op.get("security") != []:
                gaps.append(f"{method.upper()} {path}: public but asks for a key")
    assert "403" in doc["paths"]["/v1/keys"]["get"]["responses"], "an admin-only read says so"
    assert "403" not in doc["paths"]["/v1/me"]["get"]["responses"], "every key may read itself"
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearerAuth": []}]
    assert not gaps, "\n".join(gaps)
