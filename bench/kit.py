"""What the benchmarks that run the mesh as processes share: starting a process, stopping them all."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]


class Server(Protocol):
    def stop(self) -> None: ...


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
