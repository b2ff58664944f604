"""A tiny HTTP service for trying service workloads: ``python echo.py`` (or ``python -m xpumesh.examples.echo``).

It listens on ``$XPUMESH_HOST_ADDRESS:$PORT`` (127.0.0.1:8000 without them) and answers:

* ``GET /healthz`` → ``ok`` (its readiness path);
* ``GET|POST /stream?n=N`` → N Server-Sent Events, one every 50 ms (token streaming);
* ``/drop?replica=R`` → replica R closes the connection without answering (as a replica killed
  mid-request would); the others answer as below;
* anything else → JSON naming the replica, host, ``$VERSION``, method, path and the body's length and SHA-256.

Standard library only, so any Python 3 runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._send(200, b"ok", "text/plain")
            return
        if url.path == "/drop" and parse_qs(url.query).get("replica", [None])[0] == os.environ.get("XPUMESH_REPLICA"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if url.path == "/stream":
            n = int(parse_qs(url.query).get("n", ["5"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                event = f"data: token {i} from replica {os.environ.get('XPUMESH_REPLICA', '?')}\n\n".encode()
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = {"replica": os.environ.get("XPUMESH_REPLICA"), "host": os.environ.get("XPUMESH_HOST"),
                  "version": os.environ.get("VERSION"),
                  "workload": os.environ.get("XPUMESH_WORKLOAD_ID"), "method": self.command, "path": self.path,
                  "body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
                  "authorization": self.headers.get("Authorization")}
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def main() -> None:
    address = os.environ.get("XPUMESH_HOST_ADDRESS", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer((address, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
