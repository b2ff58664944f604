"""An OpenAI-compatible embeddings service over a model that ships inside a package: ``python -m
xpumesh.examples.embeddings`` (the catalog's ``wordllama-l2-supercat-256``, build ``wordllama-cpu``).

It listens on ``$XPUMESH_HOST_ADDRESS:$PORT`` (127.0.0.1:8000 without them) and answers:

* ``GET /healthz`` → ``ok`` once the model is loaded (its readiness path);
* ``GET /v1/models`` → the one model it serves, as OpenAI lists models;
* ``POST /v1/embeddings`` with ``{"input": "text" | ["text", ...], "model": "wordllama-l2-supercat-256"}`` →
  ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model": ...,
  "usage": {"prompt_tokens": n, "total_tokens": n}}``; vectors have unit length (cosine similarity is their dot
  product). Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.

The weights (``wordllama/weights/l2_supercat_256.safetensors``, 32,000 tokens x 256) and the tokenizer come from
the installed ``wordllama`` wheel, loaded with downloads disabled: nothing is fetched at run time. (WordLlama's
own default ``load()`` looks for the tokenizer under a folder name the wheel does not use and would fetch it
from a model hub; pointing its cache at the package's own folder finds both files.) numpy only, no torch.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MODEL_ID = "wordllama-l2-supercat-256"
MAX_BODY_BYTES = 1 << 20
MAX_INPUTS = 2048
MAX_INPUT_CHARS = 32_768


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` (OpenAI's fields; token-id inputs are not accepted)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str = MODEL_ID
    encoding_format: Literal["float"] = "float"
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Embedder:
    """The packaged model, loaded once from the wheel's own files."""

    def __init__(self) -> None:
        import wordllama
        from wordllama import WordLlama

        self.package_dir = Path(wordllama.__file__).parent
        self.model = WordLlama.load(config="l2_supercat", dim=256, cache_dir=self.package_dir, disable_download=True)

    def tokens(self, texts: list[str]) -> int:
        return sum(len(e.ids) for e in self.model.tokenizer.encode_batch(texts, add_special_tokens=False))

    def answer(self, request: EmbeddingRequest) -> dict[str, Any]:
        if request.model != MODEL_ID:
            raise ApiError(404, f"the model {request.model!r} does not exist here; this service serves {MODEL_ID}",
                           "model", "model_not_found")
        texts = request.texts()
        if not texts:
            raise ApiError(400, "input must not be empty", "input")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input holds {len(texts)} texts; at most {MAX_INPUTS}", "input")
        for i, text in enumerate(texts):
            if not text:
                raise ApiError(400, f"input[{i}] is empty", "input")
            if len(text) > MAX_INPUT_CHARS:
                raise ApiError(400, f"input[{i}] is longer than {MAX_INPUT_CHARS} characters", "input")
        vectors = self.model.embed(texts, norm=True)
        n = self.tokens(texts)
        return {"object": "list", "model": MODEL_ID,
                "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in row]}
                         for i, row in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}}


def make_handler(embedder: Embedder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok", "text/plain")
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "xpumesh"}]})
            else:
                self._json(404, ApiError(404, f"no route GET {path}", code="not_found").body())

        def do_POST(self) -> None:
            try:
                if self.path.split("?", 1)[0] != "/v1/embeddings":
                    raise ApiError(404, f"no route POST {self.path}", code="not_found")
                self._json(200, embedder.answer(self._request()))
            except ApiError as exc:
                self._json(exc.status, exc.body())

        def _request(self) -> EmbeddingRequest:
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                raise ApiError(411, "a Content-Length is needed") from None
            if length > MAX_BODY_BYTES:
                raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
            raw = self.rfile.read(length)
            try:
                return EmbeddingRequest.model_validate(json.loads(raw))
            except (ValueError, ValidationError) as exc:
                errors = exc.errors() if isinstance(exc, ValidationError) else []
                param = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
                why = errors[0]["msg"] if errors else "the body is not JSON"
                if param == "input":
                    why = "input must be a text or a list of texts"
                raise ApiError(400, f"{param + ': ' if param else ''}{why}", param) from None

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def serve(address: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """The server (not yet serving): the model is loaded before the socket listens, so /healthz means ready."""
    return ThreadingHTTPServer((address, port), make_handler(Embedder()))


def main() -> None:
    serve(os.environ.get("XPUMESH_HOST_ADDRESS", "127.0.0.1"), int(os.environ.get("PORT", "8000"))).serve_forever()


if __name__ == "__main__":
    main()
