"""xpumesh.examples.embeddings: the packaged WordLlama model behind an OpenAI-compatible /v1/embeddings, with real
vectors (related sentences closer than unrelated ones), OpenAI-shaped errors, and weights loaded from the wheel
without a single socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import REPO
from xpumesh.examples.embeddings import MODEL_ID, serve

# What reaches the network (a lookup, a connection, a datagram, an HTTP request). Importing requests makes urllib3
# bind a socket to ::1 once to learn whether IPv6 works: that is local and is not counted.
PROBE = """
import json, sys
NET = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto",
       "socket.sendmsg", "urllib.Request"}
events = []
sys.addaudithook(lambda e, a: events.append([e, repr(a)]) if e in NET else None)
from xpumesh.examples.embeddings import Embedder
vectors = Embedder().model.embed(["hello"])
loaded = list(events)
from wordllama import WordLlama
try:
    WordLlama.load(disable_download=True)  # the package's own default resolution, downloads off
    default = "loaded"
except FileNotFoundError as exc:
    default = str(exc)
import socket
socket.getaddrinfo("localhost", 80)  # the hook sees a lookup: an empty list above is not blindness
print(json.dumps({"loaded": loaded, "after": events[len(loaded):], "dim": int(vectors.shape[1]), "default": default}))
"""


def test_embeddings_model_loads_from_the_wheel_without_opening_a_socket() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": "/nonexistent-home"}  # no cache of earlier downloads either
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and got["dim"] == 256
    assert any(e == "socket.getaddrinfo" for e, _ in got["after"])
    # Why the example points WordLlama at the wheel's own folder: its default looks elsewhere for the tokenizer
    # and, with downloads allowed, would fetch it.
    assert "tokenizer" in got["default"].lower() and "not found" in got["default"]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = serve("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SENTENCES = ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply on Monday."]


def test_embeddings_related_sentences_are_closer_than_unrelated_ones(url: str) -> None:
    r = httpx.post(f"{url}/v1/embeddings", json={"input": SENTENCES, "model": MODEL_ID}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL_ID
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    v = np.array([d["embedding"] for d in body["data"]])
    assert v.shape == (3, 256)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    related, unrelated = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert related > unrelated + 0.1, (related, unrelated)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(SENTENCES)

    one = httpx.post(f"{url}/v1/embeddings", json={"input": SENTENCES[1]}, timeout=30).json()
    assert len(one["data"]) == 1 and np.allclose(one["data"][0]["embedding"], v[1], atol=1e-5)


def test_embeddings_errors_are_openai_shaped(url: str) -> None:
    assert httpx.get(f"{url}/healthz").text == "ok"
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == MODEL_ID
    cases = [({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
             ({"input": []}, 400, "input"),
             ({"input": ["ok", ""]}, 400, "input"),
             ({"input": [1, 2, 3]}, 400, "input"),
             ({"model": MODEL_ID}, 400, "input")]
    for body, status, param in cases:
        r = httpx.post(f"{url}/v1/embeddings", json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (body, r.text)
    bad = httpx.post(f"{url}/v1/embeddings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(f"{url}/v1/embeddings", content=b"x" * ((1 << 20) + 1))
    assert big.status_code == 413
    assert httpx.post(f"{url}/v1/chat/completions", json={}).status_code == 404
