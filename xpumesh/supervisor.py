"""``xpumesh up``: the whole mesh on one machine, each service in its own process.

Starts the embedded NATS and PostgreSQL when no URLs are configured, runs prestart,
spawns every service (and, with ``--demo``, the fleet simulator and one real agent of this
machine, its CPUs one device of type cpu, at site hangzhou), restarts a child that dies, and
on SIGINT/SIGTERM stops everything within the shutdown budget.

With ``--replicas N`` (N ≥ 2) it runs N instances of every service and, unless a NATS URL is
configured, a 3-node embedded NATS cluster with JetStream replicas 3 (``bus.replicas``): the
registry, scheduler and metrics elect a leader among their instances (``libs/election.py``),
the gateway and inventory all act. Gateway instance ``i`` (from 0) listens on
``gateway_port + i``, and metrics instance ``i`` serves ``/metrics`` on ``metrics_port + i``
(only the leader serves it): one machine cannot give two processes one port, and a load
balancer or DNS in front of the gateways is the operator's choice, not the mesh's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from libs.config import Settings
from libs.embedded import EmbeddedError, EmbeddedNats, EmbeddedNatsCluster, EmbeddedPostgres, ensure_port_free
from libs.schemas.hostevents import host_id_for
from xpumesh.credentials import EmbeddedSecrets, ensure_embedded_secrets

log = logging.getLogger(__name__)
SERVICES = ("registry", "inventory", "scheduler", "metrics", "gateway")
CLUSTER_SIZE = 3  # embedded NATS nodes with --replicas 2 or more: JetStream keeps 3 replicas, any one may go


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path | None = None
    log_file: IO[bytes] | None = field(default=None, repr=False)


DEMO_SITE = "hangzhou"  # where the demo's real local host is placed on the map
LOCAL_LABELS = {"pool": "local"}  # how a workload asks for the demo's real local host (placement.host_labels)


def local_host_id() -> str:
    """This machine's host id, as its agent derives it."""
    return host_id_for(socket.gethostname())


class Supervisor:
    def __init__(self, settings: Settings, *, demo: bool = False, demo_hosts: int | None = None,
                 services: tuple[str, ...] = SERVICES, quiet: bool = False, replicas: int = 1) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.settings = settings
        self.replicas = replicas
        self.demo = demo
        self.demo_hosts = demo_hosts
        self.services = services
        self.quiet = quiet
        self.nats: EmbeddedNats | EmbeddedNatsCluster | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: list[Child] = []
        self.env: dict[str, str] = dict(os.environ)
        self.secrets: EmbeddedSecrets | None = None
        self._stopping = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    # --- start ------------------------------------------------------------------------
    def start_infrastructure(self) -> None:
        data = self.settings.data_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)
        emb = self.settings.embedded
        if not self.settings.nats_url:
            if emb.nats_secure:
                self.secrets = ensure_embedded_secrets(data, self.services, listen_host=emb.nats_host,
                                                       local_agent=(DEMO_SITE, local_host_id()) if self.demo else None)
            trust, tls = (self.secrets.trust, self.secrets.tls) if self.secrets else (None, None)
            if self.replicas > 1:
                self.nats = EmbeddedNatsCluster(data, emb.nats_port, size=CLUSTER_SIZE,
                                                password=secrets.token_urlsafe(24), monitor_port=emb.nats_monitor_port,
                                                start_timeout_s=emb.start_timeout_s, trust=trust, tls=tls,
                                                host=emb.nats_host).start()
                self.settings.bus.replicas = CLUSTER_SIZE
                self.env["XPUMESH_BUS__REPLICAS"] = str(CLUSTER_SIZE)
                self.say(f"  nats        {CLUSTER_SIZE}-node cluster, JetStream replicas {CLUSTER_SIZE}")
            else:
                self.nats = EmbeddedNats(data, emb.nats_port, monitor_port=emb.nats_monitor_port,
                                         start_timeout_s=emb.start_timeout_s, trust=trust, tls=tls,
                                         host=emb.nats_host).start()
            self.settings.nats_url = self.nats.url
            if self.secrets:
                self.settings.bus.tls_ca_file = self.secrets.tls.ca
                self.env["XPUMESH_BUS__TLS_CA_FILE"] = str(self.secrets.tls.ca)
                self.say(f"  nats        {self.nats.url} (embedded, TLS and credentials on; secrets in {self.secrets.root})")
            else:
                self.say(f"  nats        {self.nats.url} (embedded, NO auth: XPUMESH_EMBEDDED__NATS_SECURE=false)")
        if self.settings.database_url is None:
            self.postgres = EmbeddedPostgres(data, emb.postgres_port, start_timeout_s=emb.start_timeout_s).start()
            self.settings.database_url = SecretStr(self.postgres.dsn)
            self.say(f"  postgresql  127.0.0.1:{self.postgres.port} (embedded, data in {self.postgres.pgdata})")
        self.env["XPUMESH_NATS_URL"] = self.settings.nats_url or ""
        self.env["XPUMESH_DATABASE_URL"] = self.settings.database_dsn()

    def ensure_admin_key(self) -> str | None:
        """The first admin key: from settings, or created now and shown once."""
        if self.settings.bootstrap_admin_key is not None:
            return None
        marker = self.settings.data_dir / "bootstrap-admin-key.created"
        if marker.exists():
            return None
        key = "xpm_" + secrets.token_urlsafe(32)
        self.env["XPUMESH_BOOTSTRAP_ADMIN_KEY"] = key
        self.settings.bootstrap_admin_key = SecretStr(key)
        return key

    def child_env(self, name: str) -> dict[str, str]:
        """What one child gets beyond the shared environment: its own NATS credentials only."""
        if self.secrets is None:
            return {}
        env = {"XPUMESH_BUS__CREDS_FILE": str(self.secrets.creds[name])}
        if name == "gateway":  # enrollment issues host credentials: only the gateway holds the signing key
            env["XPUMESH_ENROLL__TRUST_DIR"] = str(self.secrets.trust.root)
            if self.nats is not None and not self.settings.enroll.agent_nats_url:
                env["XPUMESH_ENROLL__AGENT_NATS_URL"] = self.nats.public_url()
        return env

    def spawn(self, child: Child) -> None:
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        child.log_path = logs / f"{child.name}.log"
        child.log_file = open(child.log_path, "ab")
        child.proc = subprocess.Popen(child.argv, env={**self.env, **child.env}, stdin=subprocess.DEVNULL,
                                      stdout=child.log_file, stderr=subprocess.STDOUT)
        child.started_at = time.monotonic()

    def gateway_ports(self) -> list[int]:
        """The port of each gateway instance (one per replica, counting up from ``gateway_port``)."""
        port = self.settings.gateway_port
        return [port + i if port else 0 for i in range(self.replicas)]

    def instance_env(self, name: str, i: int) -> dict[str, str]:
        """What instance ``i`` of a service gets beyond its service's environment: its own ports."""
        if i == 0:
            return {}
        if name == "gateway":
            return {"XPUMESH_GATEWAY_PORT": str(self.gateway_ports()[i])}
        if name == "metrics" and self.settings.metrics_port:
            return {"XPUMESH_METRICS_PORT": str(self.settings.metrics_port + i)}
        return {}

    def start_children(self) -> None:
        if "gateway" in self.services:
            for port in self.gateway_ports():
                ensure_port_free(port, "gateway HTTP server", self.settings.gateway_host)
        for name in self.services:
            for i in range(self.replicas):
                self.children.append(Child(name if i == 0 else f"{name}-{i + 1}",
                                           [sys.executable, "-m", "xpumesh", "run", name],
                                           {**self.child_env(name), **self.instance_env(name, i)}))
        if self.demo:
            argv = [sys.executable, "-m", "xpumesh", "sim"]
            if self.demo_hosts:
                argv += ["--hosts", str(self.demo_hosts)]
            self.children.append(Child("sim", argv, self.child_env("sim")))
            # one real host beside the simulated fleet: this machine, labelled pool=local, its CPUs shared
            # (overcommitted) so a service's several replicas fit on a small machine
            self.children.append(Child("agent", [sys.executable, "-m", "xpumesh", "agent", "run"],
                                       {**self.child_env("agent"), "XPUMESH_SITE": DEMO_SITE,
                                        "XPUMESH_AGENT__LABELS": json.dumps(LOCAL_LABELS),
                                        "XPUMESH_AGENT__CPU_ALLOCATION_RATIO": "16",
                                        "XPUMESH_AGENT__STOP_REPLICAS_ON_EXIT": "true"}))
        for child in self.children:
            self.spawn(child)

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        if "gateway" not in self.services:
            return True
        url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stopping:
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            self.check_children()
            time.sleep(0.2)
        return False

    # --- run --------------------------------------------------------------------------
    def check_children(self) -> None:
        """Restart a child that died (with backoff), unless we are stopping."""
        for child in self.children:
            if self._stopping or child.proc is None or child.proc.poll() is None:
                continue
            code = child.proc.returncode
            if time.monotonic() - child.started_at < 2.0 * (child.restarts + 1) and child.restarts > 0:
                continue
            child.restarts += 1
            self.say(f"  ! {child.name} exited with code {code}; restarting (see {child.log_path})")
            self.spawn(child)

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        budget = self.settings.shutdown_timeout_s
        deadline = time.monotonic() + budget * 0.6
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=2)
        if self.postgres:
            self.postgres.stop(timeout_s=budget * 0.2)  # then up to 1 s of immediate shutdown
        if self.nats:
            self.nats.stop(timeout_s=budget * 0.1)


def run_up(settings: Settings, *, demo: bool, demo_hosts: int | None = None, replicas: int = 1) -> int:
    import asyncio

    from xpumesh.prestart import prestart

    sup = Supervisor(settings, demo=demo, demo_hosts=demo_hosts, replicas=replicas)
    stop_requested = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("xpumesh is starting…", flush=True)
    try:
        sup.start_infrastructure()
        admin_key = sup.ensure_admin_key()
        asyncio.run(prestart(settings))
        sup.start_children()
    except EmbeddedError as exc:
        print(f"xpumesh: {exc}", file=sys.stderr)
        sup.stop()
        return 2
    except Exception as exc:
        print(f"xpumesh: could not start: {exc}", file=sys.stderr)
        sup.stop()
        return 1
    base = f"http://{'localhost' if settings.gateway_host in ('127.0.0.1', '0.0.0.0') else settings.gateway_host}:{settings.gateway_port}"
    if sup.wait_ready():
        others = "".join(f"\n              also {base.rsplit(':', 1)[0]}:{p}/v1 (gateway instance {i + 1})"
                         for i, p in enumerate(sup.gateway_ports()) if i > 0)
        print(f"\n  API         {base}/v1   (OpenAPI: {base}/docs){others}\n  dashboard   {base}/\n"
              f"  metrics     http://127.0.0.1:{settings.metrics_port}/metrics\n"
              f"  logs        {settings.data_dir.resolve() / 'logs'}", flush=True)
        if sup.secrets:
            print(f"  secrets     {sup.secrets.root}  (TLS CA, NATS trust, one credential per process; 0600)\n"
                  f"  add a host  create a token (POST {base}/v1/enrollment-tokens, admin key), then on the host:\n"
                  f"              xpumesh agent enroll --gateway {base} --token <token>", flush=True)
        if admin_key:
            print(f"\n  admin API key (shown once; keep it): {admin_key}", flush=True)
            (settings.data_dir / "bootstrap-admin-key.created").write_text("an admin key was created and shown once\n")
        print("\nxpumesh is up. Ctrl-C stops everything.", flush=True)
    elif not stop_requested:
        print("xpumesh: the gateway did not become ready in 60 s; see the logs", file=sys.stderr)
    try:
        while not stop_requested:
            sup.check_children()
            time.sleep(0.2)
    finally:
        print("\nxpumesh is stopping…", flush=True)
        sup.stop()
    return 0
