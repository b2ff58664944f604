"""Auth flood benchmark: a valid key's latency while one address floods the gateway with bad tokens.

A fresh embedded NATS and PostgreSQL, ``prestart``, then the gateway as a real process
(``xpumesh run gateway``). One valid key sends ``GET /v1/me`` back to back, first alone
(``--quiet`` seconds: the baseline), then while ``--concurrency`` clients on the same
loopback address send ``--flood`` requests with random well-formed tokens (and every tenth
a malformed one). Reports the flood's answers (401 inside the per-address budget, 429 past
it), how fast they came, and the valid key's p50/p99/max in both phases. Prints a table,
then ONE JSON object on its last line.

    python bench/auth_flood.py                         # 10,000 bad tokens, 64 clients
    python bench/auth_flood.py --flood 1000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kit import spawn, start_mesh, stop_all  # noqa: E402
from xpumesh.prestart import prestart  # noqa: E402

ADMIN_KEY = "xpm_bench_" + uuid.uuid4().hex


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
            "max_ms": round(ordered[-1], 2)}


async def valid_key(api: httpx.AsyncClient, until: asyncio.Event, errors: list[int]) -> list[float]:
    latencies: list[float] = []
    while not until.is_set():
        t = time.perf_counter()
        r = await api.get("/v1/me")
        latencies.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            errors.append(r.status_code)
    return latencies


async def flood(base: str, n: int, concurrency: int) -> tuple[dict[int, int], float]:
    codes: dict[int, int] = {}
    todo = iter(range(n))
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def one() -> None:
            for i in todo:
                token = "bad" if i % 10 == 0 else "xpm_" + secrets.token_urlsafe(32)
                r = await c.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return codes, time.monotonic() - started


async def phase(api: httpx.AsyncClient, work: Any) -> tuple[list[float], list[int], Any]:
    done, errors = asyncio.Event(), list[int]()
    measuring = asyncio.create_task(valid_key(api, done, errors))
    try:
        result = await work
    finally:
        done.set()
    return await measuring, errors, result


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    mesh = start_mesh(workdir, ADMIN_KEY)
    nats, pg, settings, env, base = mesh.nats, mesh.pg, mesh.settings, mesh.env, mesh.base_url
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await prestart(settings)
        procs.append(spawn([sys.executable, "-m", "xpumesh", "run", "gateway"], env, workdir / "gateway.log"))
        async with httpx.AsyncClient(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await api.get("/v1/me")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not come up")
                await asyncio.sleep(0.2)
            quiet, quiet_errors, _ = await phase(api, asyncio.sleep(args.quiet))
            during, flood_errors, (codes, elapsed) = await phase(api, flood(base, args.flood, args.concurrency))
    finally:
        stop_all(procs, nats, pg)
    return {"bench": "auth_flood", "cpus": os.cpu_count(), "flood": args.flood, "concurrency": args.concurrency,
            "flood_s": round(elapsed, 2), "flood_rps": round(args.flood / elapsed, 1),
            "flood_codes": {str(k): v for k, v in sorted(codes.items())},
            "valid_quiet": spread(quiet), "valid_during_flood": spread(during),
            "valid_errors": quiet_errors + flood_errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flood", type=int, default=10_000, help="bad-token requests sent")
    p.add_argument("--concurrency", type=int, default=64, help="flooding clients at once")
    p.add_argument("--quiet", type=float, default=3.0, help="seconds of baseline before the flood")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="xpumesh-bench-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    print(f"auth flood: {out['flood']} bad tokens from one address in {out['flood_s']} s "
          f"({out['flood_rps']} req/s): {out['flood_codes']}")
    for label, key in (("valid key, quiet", "valid_quiet"), ("valid key, during the flood", "valid_during_flood")):
        s = out[key]
        print(f"  {label:<28} n={s.get('n')} p50 {s.get('p50_ms')} ms  p99 {s.get('p99_ms')} ms  max {s.get('max_ms')} ms")
    if out["valid_errors"]:
        print(f"  the valid key got {len(out['valid_errors'])} non-200 answers: {sorted(set(out['valid_errors']))}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
