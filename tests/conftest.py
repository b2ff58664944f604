"""Test infrastructure: real nats-server and real PostgreSQL, no fakes.

- one embedded PostgreSQL cluster per xdist worker (or ``XPUMESH_DATABASE_URL`` when set),
  with a template database built from the real migrations; every test that asks for
  ``database_url`` gets a fresh database cloned from it;
- a fresh nats-server (JetStream on, port chosen free) for every test that asks for ``nats_url``;
- ``settings`` ties them together with short intervals;
- ``running_service`` runs a ServiceApp in-process; ``spawn_service`` runs ``xpumesh run`` as a process;
- ``assert_eventually`` instead of sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest
from pydantic import SecretStr

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.embedded import EmbeddedNats, EmbeddedPostgres
from libs.events import CloudEvent
from libs.service import ServiceApp, serve

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
_db_counter = itertools.count()
# The admin key every test database is seeded with (prestart creates it from XPUMESH_BOOTSTRAP_ADMIN_KEY).
TEST_ADMIN_KEY = "xpm_test_admin_0123456789abcdefghijklmnopqrstuvwxyz"


async def stream_events(bus: Bus, subject_filter: str = subjects.EVENTS_ALL, *,
                        stream: str | None = None) -> list[tuple[str, CloudEvent]]:
    """(NATS subject, event) of every message so far in a JetStream stream matching the filter, in order."""
    sub = await bus.js.subscribe(subject_filter, ordered_consumer=True, stream=stream)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.3)
            except Exception:
                break
            out.append((msg.subject, CloudEvent.from_bytes(msg.data)))
    finally:
        await sub.unsubscribe()
    return out


async def assert_eventually(check: Callable[[], Any], *, timeout: float = 10.0,
                            interval: float = 0.05, message: str = "condition not met") -> Any:
    """Retry ``check`` (sync or async) until it returns a truthy value without raising AssertionError.

    Returns that value, typed ``Any``: checks return ``X | None`` and callers use the ``X``.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last_exc = None
        except AssertionError as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s" + (f": {last_exc}" if last_exc else ""))
        await asyncio.sleep(interval)


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"xpumesh-test-{_worker()}-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """A PostgreSQL server for this worker: ``XPUMESH_DATABASE_URL`` if set, else an embedded one."""
    external = os.environ.get("XPUMESH_DATABASE_URL")
    if external:
        yield external, None
        return
    pg = EmbeddedPostgres(tmp_root, durable=False).start()
    try:
        yield pg.dsn, pg
    finally:
        pg.stop()


def _with_db(dsn: str, name: str) -> str:
    u = urlparse(dsn)
    return urlunparse(u._replace(path=f"/{name}"))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(_with_db(dsn, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def template_db(pg_server: tuple[str, EmbeddedPostgres | None]) -> str:
    """A database built from the real migrations (and seeds), cloned for every test."""
    from xpumesh.prestart import migrate_all, seed_all

    dsn, _ = pg_server
    name = f"xpm_tpl_{_worker()}_{os.getpid()}"
    await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}"')
    await _admin(dsn, f'CREATE DATABASE "{name}"')
    url = _with_db(dsn, name)
    await migrate_all(url)
    await seed_all(Settings(database_url=SecretStr(url), bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY)))
    return name


@pytest.fixture
async def database_url(pg_server: tuple[str, EmbeddedPostgres | None], template_db: str) -> AsyncIterator[str]:
    dsn, _ = pg_server
    name = f"xpm_t_{_worker()}_{os.getpid()}_{next(_db_counter)}"
    await _admin(dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(dsn, name)
    with contextlib.suppress(Exception):
        await _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    n = EmbeddedNats(tmp_path).start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def settings(nats_url: str, database_url: str, tmp_path: Path) -> Settings:
    from libs.embedded import free_port

    return Settings(nats_url=nats_url, database_url=SecretStr(database_url), data_dir=tmp_path,
                    bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY),
                    heartbeat_interval_s=0.5, telemetry_interval_s=0.5, gateway_port=free_port(),
                    metrics_port=free_port(), registry={"sweep_interval_s": 0.1, "flush_interval_s": 0.3},
                    bus={"request_timeout_s": 3.0, "drain_timeout_s": 1.0})


class RunningService:
    def __init__(self, app: ServiceApp[Any], task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.app, self.task, self.stop_event = app, task, stop

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, timeout=10)


@pytest.fixture
async def running_service(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[RunningService]]]:
    """Start ServiceApps in this process (each with its own NATS connection); stopped after the test."""
    started: list[RunningService] = []

    async def start(app: ServiceApp[Any], s: Settings | None = None) -> RunningService:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(app, s or settings, ready=ready, stop=stop))
        done, _ = await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=20,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the startup error
        if not ready.is_set():
            raise AssertionError(f"{app.name} did not become ready")
        rs = RunningService(app, task, stop)
        started.append(rs)
        return rs

    yield start
    for rs in reversed(started):
        if not rs.task.done():
            with contextlib.suppress(Exception):
                await rs.stop()


def spawn_agent(settings: Settings, probe_dir: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A real ``xpumesh agent run`` process in site hangzhou replaying the captures in ``probe_dir``; the caller
    stops it (its output goes to ``log``)."""
    return subprocess.Popen([sys.executable, "-m", "xpumesh", "agent", "run", "--probe-dir", str(probe_dir)],
                            env=service_env(settings, XPUMESH_SITE="hangzhou", **env), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, cwd=REPO)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "XPUMESH_NATS_URL": settings.nats_url or "",
        "XPUMESH_DATABASE_URL": settings.database_dsn(),
        "XPUMESH_DATA_DIR": str(settings.data_dir),
        "XPUMESH_BOOTSTRAP_ADMIN_KEY": TEST_ADMIN_KEY,
        "XPUMESH_HEARTBEAT_INTERVAL_S": str(settings.heartbeat_interval_s),
        "XPUMESH_TELEMETRY_INTERVAL_S": str(settings.telemetry_interval_s),
        "XPUMESH_GATEWAY_PORT": str(settings.gateway_port),
        "XPUMESH_METRICS_PORT": str(settings.metrics_port),
        "XPUMESH_REGISTRY__SWEEP_INTERVAL_S": str(settings.registry.sweep_interval_s),
        "XPUMESH_REGISTRY__FLUSH_INTERVAL_S": str(settings.registry.flush_interval_s),
    })
    env.update(extra)
    return env


@pytest.fixture
def spawn_service(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Run ``xpumesh run <service>`` as a real process; all are killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(service: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{service}-{len(procs)}.log", "wb")
        argv = [sys.executable, "-m", "xpumesh", "run", service, *args] if service != "sim" else \
            [sys.executable, "-m", "xpumesh", "sim", *args]
        p = subprocess.Popen(argv, env=service_env(settings, **env), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Any]:
    from libs.bus.connection import Bus

    b = Bus(settings.bus, name="test")
    await b.connect(settings.nats_url or "")
    await b.ensure_streams()
    yield b
    await b.close()
