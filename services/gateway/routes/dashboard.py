"""The multi-city dashboard: ``/`` and its static files (no build step, nothing from a CDN).

The page and its files load without a key (plain Starlette routes, outside the API's key
check); the page then asks for an API key, checks it with ``GET /v1/me`` and sends it with
every API call. Files are
served from ``services/gateway/static`` only — a path that resolves outside it is a 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, Response

router = APIRouter(tags=["dashboard"])
STATIC = (Path(__file__).resolve().parent.parent / "static").resolve()
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json",
         ".ico": "image/x-icon", ".png": "image/png"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}


def _not_found() -> Response:
    return Response("not found\n", status_code=404, media_type="text/plain; charset=utf-8")


def _file(path: Path) -> Response:
    return FileResponse(path, media_type=TYPES.get(path.suffix, "application/octet-stream"), headers=HEADERS)


async def index(request: Request) -> Response:
    return _file(STATIC / "index.html")


async def static_file(request: Request) -> Response:
    rel = str(request.path_params.get("path", ""))
    target = (STATIC / rel).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file() or target.suffix not in TYPES:
        return _not_found()
    return _file(target)


router.add_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
router.add_route("/static/{path:path}", static_file, methods=["GET", "HEAD"], include_in_schema=False)

