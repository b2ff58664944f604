"""The simulator's responder answers only for simulated replicas that run, and says which one answered."""

from __future__ import annotations

import httpx

from agent.sim.responder import Responder


async def test_sim_responder_answers_for_running_replicas_only() -> None:
    running = {("h1", "wl_a", 0, 2)}
    app = Responder(lambda host, wid, replica, attempt: (host, wid, replica, attempt) in running, stream_gap_s=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as client:
        r = await client.post("/h1/wl_a/0/2/v1/infer?x=1", content=b"12345")
        assert r.status_code == 200
        assert r.json() == {"simulated": True, "host": "h1", "workload": "wl_a", "replica": "0", "attempt": "2",
                            "method": "POST", "path": "/v1/infer", "query": "x=1", "body_bytes": 5}
        for gone in ("/h1/wl_a/0/1/", "/h2/wl_a/0/2/", "/h1/wl_a/x/2/", "/h1/wl_a"):
            assert (await client.get(gone)).status_code == 404, gone
        stream = await client.get("/h1/wl_a/0/2/stream")
        assert stream.headers["content-type"] == "text/event-stream" and stream.text.count("data: token") == 3
    assert app.requests == 2
