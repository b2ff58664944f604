"""Hosts send their last capability report again: periodically, and after a reconnect to NATS.

Before: an agent sent a report only when its fingerprint changed, so a report a consumer lost (or a
stream that lost it) stayed lost until the hardware changed. The resend has the first send's
generation and time (a consumer that has it skips it as not newer) under an id of its own.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from functools import partial
from pathlib import Path

from agent.sim.fleet import build_fleet
from agent.sim.host import SimHost
from agent.sim.main import Simulator
from libs.bus import subjects
from libs.bus.connection import STREAM_HOSTS, Bus
from libs.embedded import EmbeddedNats
from libs.events import CloudEvent
from libs.schemas.hostevents import host_id_for
from tests.conftest import REPO, assert_eventually, spawn_agent, stream_events

FIXTURE = REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8"


async def _reports(bus: Bus, host_id: str) -> list[CloudEvent]:
    return [e for _, e in await stream_events(bus, subjects.HOST_CAPABILITY_ALL, stream=STREAM_HOSTS)
            if e.subject == host_id]


def _same_report(first: CloudEvent, again: CloudEvent) -> bool:
    return (again.id != first.id and again.data["generation"] == first.data["generation"]
            and again.time == first.time and again.data == first.data)


async def test_capability_resend_agent_sends_its_report_again_periodically(settings, bus: Bus,
                                                                           tmp_path: Path) -> None:
    probe_dir = tmp_path / "probes"
    shutil.copytree(FIXTURE, probe_dir)
    host_id = host_id_for(socket.gethostname())
    proc = spawn_agent(settings, probe_dir, tmp_path / "agent.log", XPUMESH_AGENT__CAPABILITY_RESEND_S="1")
    try:
        await assert_eventually(lambda: _reports(bus, host_id), timeout=20, message="first report")
        first = (await _reports(bus, host_id))[-1]
        await bus.js.purge_stream(STREAM_HOSTS)  # lost, as far as anyone reading the stream is concerned
        again = await assert_eventually(lambda: _reports(bus, host_id), timeout=10, message="the report again")
        assert _same_report(first, again[0]), (first, again[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_capability_resend_agent_sends_report_and_state_again_after_a_reconnect(
        settings, bus: Bus, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    probe_dir = tmp_path / "probes"
    shutil.copytree(FIXTURE, probe_dir)
    host_id = host_id_for(socket.gethostname())
    proc = spawn_agent(settings, probe_dir, tmp_path / "agent.log", XPUMESH_AGENT__CAPABILITY_RESEND_S="3600",
                       XPUMESH_AGENT__STATE_INTERVAL_S="3600")
    try:
        await assert_eventually(lambda: _reports(bus, host_id), timeout=20, message="first report")
        first = (await _reports(bus, host_id))[-1]
        await bus.js.purge_stream(STREAM_HOSTS)
        nats_server.stop()
        await asyncio.sleep(0.5)
        nats_server.start()
        again = await assert_eventually(lambda: _reports(bus, host_id), timeout=15, message="the report again")
        assert _same_report(first, again[0])
        states = [e for _, e in await stream_events(bus, subjects.HOST_STATE_ALL, stream=STREAM_HOSTS)
                  if e.subject == host_id]
        assert states, "a state report after the reconnect (the interval is an hour)"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_capability_resend_simulated_hosts_send_their_reports_again(settings, bus: Bus) -> None:
    s = settings.model_copy(update={"agent": settings.agent.model_copy(update={"capability_resend_s": 1.0})})
    hosts = [SimHost(spec, bus, interval_s=s.heartbeat_interval_s) for spec in build_fleet(3)]
    sim = Simulator(s, bus, hosts)
    stop = asyncio.Event()
    run = asyncio.create_task(sim.run(stop))
    try:
        firsts = {h.host_id: (await assert_eventually(partial(_reports, bus, h.host_id), timeout=10))[-1]
                  for h in hosts}
        await bus.js.purge_stream(STREAM_HOSTS)
        for h in hosts:
            again = await assert_eventually(partial(_reports, bus, h.host_id), timeout=10)
            assert _same_report(firsts[h.host_id], again[0])
    finally:
        stop.set()
        await run


async def test_capability_resend_fresh_simulator_says_its_hosts_run_nothing(settings, bus: Bus) -> None:
    """A simulator started again (after a SIGKILL) has hosts without work, which send no state report of
    their own: the scheduler kept their last report from before, live replicas and all, and held those
    devices for work nobody wants. Each host now says once, with its first heartbeat, that it runs nothing."""
    hosts = [SimHost(spec, bus, interval_s=settings.heartbeat_interval_s) for spec in build_fleet(3)]
    sim = Simulator(settings, bus, hosts)
    stop = asyncio.Event()
    run = asyncio.create_task(sim.run(stop))

    async def states(host_id: str) -> list[CloudEvent]:
        return [e for _, e in await stream_events(bus, subjects.HOST_STATE_ALL, stream=STREAM_HOSTS)
                if e.subject == host_id]

    try:
        for h in hosts:
            (report, *_) = await assert_eventually(partial(states, h.host_id), timeout=10,
                                                   message=f"a state report from {h.host_id}")
            assert report.data["host_id"] == h.host_id and report.data["replicas"] == []
    finally:
        stop.set()
        await run
