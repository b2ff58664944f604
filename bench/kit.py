"""What the benchmarks that run the mesh as processes share: starting a process, stopping them all."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from libs.config import Settings
from libs.embedded import EmbeddedNats, EmbeddedPostgres, free_port

REPO = Path(__file__).resolve().parents[1]


class Server(Protocol):
    def stop(self) -> None: ...


@dataclass
class Mesh:
    """An embedded NATS and PostgreSQL under ``workdir``, the settings and the environment the mesh's processes
    run with (a gateway port of its own, the bench's admin key, the rate limit out of the way)."""

    nats: EmbeddedNats
    pg: EmbeddedPostgres
    port: int
    settings: Settings
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_mesh(workdir: Path, admin_key: str, **env: str) -> Mesh:
    nats = EmbeddedNats(workdir).start()
    pg = EmbeddedPostgres(workdir).start()
    port = free_port()
    settings = Settings(nats_url=nats.url, database_url=SecretStr(pg.dsn), data_dir=workdir,
                        bootstrap_admin_key=SecretStr(admin_key))
    full = dict(os.environ, XPUMESH_NATS_URL=nats.url, XPUMESH_DATABASE_URL=pg.dsn, XPUMESH_DATA_DIR=str(workdir),
                XPUMESH_BOOTSTRAP_ADMIN_KEY=admin_key, XPUMESH_GATEWAY_PORT=str(port), XPUMESH_LOG_LEVEL="WARNING",
                XPUMESH_GATEWAY__RATE_PER_S="1000000", XPUMESH_GATEWAY__RATE_BURST="1000000", **env)
    return Mesh(nats, pg, port, settings, full)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A process of the mesh, run from the repository, its output in ``log``."""
    return subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)


def stop_all(procs: list[subprocess.Popen[bytes]], *servers: Server, timeout_s: float = 10.0) -> None:
    """SIGTERM every process still running, wait (killing what does not stop), then stop the servers."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
    for s in servers:
        s.stop()
