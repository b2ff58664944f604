"""``xpumesh sim``: many simulated hosts in one process, heartbeating like real agents."""

from __future__ import annotations

import asyncio
import logging
import random
import signal

from agent.publisher import HostPublisher
from libs.bus.connection import Bus
from libs.config import Settings

log = logging.getLogger(__name__)
DEFAULT_SITES = ("hangzhou", "ningbo", "wenzhou")


async def simulate(settings: Settings, hosts: int, seed: int, stop: asyncio.Event) -> None:
    rng = random.Random(seed)
    bus = Bus(settings.bus, name="sim")
    if not settings.nats_url:
        raise RuntimeError("XPUMESH_NATS_URL is not set")
    await bus.connect(settings.nats_url)
    pubs = [HostPublisher(bus, f"sim-{DEFAULT_SITES[i % len(DEFAULT_SITES)]}-{i:05d}", DEFAULT_SITES[i % len(DEFAULT_SITES)],
                          f"sim-{i:05d}", interval_s=settings.heartbeat_interval_s) for i in range(hosts)]
    await asyncio.sleep(rng.random() * 0.1)
    while not stop.is_set():
        for p in pubs:
            await p.heartbeat()
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.heartbeat_interval_s)
        except TimeoutError:
            pass
    await bus.close()


def run_sim(settings: Settings, *, hosts: int | None, seed: int) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await simulate(settings, hosts or 6, seed, stop)

    asyncio.run(main())
    return 0
