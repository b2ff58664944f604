"""The ``xpumesh`` command line.

Mesh commands: ``up``, ``run <service>``, ``prestart``, ``db upgrade``, ``agent``, ``sim``,
``config``. API-client commands (``submit``, ``workloads``, ``devices``, ``events``, ``keys``)
live in ``xpumesh.client_cli`` and talk to the gateway over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable

from pydantic import ValidationError

from libs.config import Settings, settings_table_markdown
from libs.logging import setup_logging

SERVICE_APPS = {
    "registry": "services.registry.api",
    "inventory": "services.inventory.api",
    "scheduler": "services.scheduler.api",
    "metrics": "services.metrics.api",
    "gateway": "services.gateway.api",
}


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  XPUMESH_{'__'.join(str(p).upper() for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        print("xpumesh: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from xpumesh.supervisor import run_up

    return run_up(settings, demo=args.demo, demo_hosts=args.hosts, replicas=args.replicas)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from libs.service import serve

    module = importlib.import_module(SERVICE_APPS[args.service])
    try:
        asyncio.run(serve(module.app, settings))
    except RuntimeError as exc:  # configuration or schema problems worth one clear line
        print(f"xpumesh run {args.service}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"xpumesh run {args.service}: cannot connect ({exc.strerror or type(exc).__name__})", file=sys.stderr)
        return 1
    return 0


def cmd_prestart(args: argparse.Namespace, settings: Settings) -> int:
    from xpumesh.prestart import prestart

    asyncio.run(prestart(settings))
    print("prestart done: database reachable, migrations applied, reference data seeded")
    return 0


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from xpumesh.prestart import migrate_all

    done = asyncio.run(migrate_all(settings.database_dsn(), args.service or None))
    print("migrated: " + ", ".join(done))
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(settings_table_markdown())
    else:
        print(settings.model_dump_json(indent=2))
    return 0


def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    if args.agent_cmd == "enroll":
        from pathlib import Path

        from agent.enroll import enroll_main

        if not args.token or not args.gateway:
            print("xpumesh agent enroll: --gateway URL and --token TOKEN are both required", file=sys.stderr)
            return 2
        return enroll_main(args.gateway, args.token, Path(args.dir) if args.dir else settings.data_dir / "agent",
                           Path(args.gateway_ca) if args.gateway_ca else None)
    if args.agent_cmd == "discover":
        from agent.discover import discover_main

        return discover_main(args.probe_dir, args.json)
    from agent.main import run_agent

    return run_agent(settings, probe_dir=args.probe_dir)


def cmd_nats(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from xpumesh.credentials import init_trust

    out = init_trust(Path(args.dir), resolver_dir=Path(args.resolver_dir))
    print(f"NATS trust written to {out.root} (seeds and credentials 0600):\n"
          f"  server config  include {out.server_include} in your nats-server config\n"
          f"  credentials    {out.root / 'creds'}/<role>.creds: one per service and the simulator\n"
          f"  gateway        XPUMESH_ENROLL__TRUST_DIR={out.trust.root} lets it enroll hosts")
    return 0


def cmd_sim(args: argparse.Namespace, settings: Settings) -> int:
    from agent.sim.main import run_sim

    return run_sim(settings, hosts=args.hosts, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpumesh", description="An open control plane for heterogeneous compute.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole mesh on this machine (embedded NATS and PostgreSQL by default)")
    up.add_argument("--demo", action="store_true", help="also run a simulated multi-city fleet")
    up.add_argument("--hosts", type=int, default=None, help="number of simulated hosts with --demo")
    up.add_argument("--replicas", type=int, default=1, choices=range(1, 6), metavar="N",
                    help="instances of every service (2 or more: also a 3-node NATS cluster, JetStream replicas 3; "
                         "registry, scheduler and metrics elect a leader)")
    up.set_defaults(fn=cmd_up)

    run = sub.add_parser("run", help="run one service against the configured NATS and PostgreSQL")
    run.add_argument("service", choices=sorted(SERVICE_APPS))
    run.set_defaults(fn=cmd_run)

    pre = sub.add_parser("prestart", help="wait for the database, migrate, seed")
    pre.set_defaults(fn=cmd_prestart)

    db = sub.add_parser("db", help="database maintenance")
    dbs = db.add_subparsers(dest="db_cmd", required=True)
    upg = dbs.add_parser("upgrade", help="apply migrations (all services, or those named)")
    upg.add_argument("service", nargs="*", choices=sorted(SERVICE_APPS), default=[])
    upg.set_defaults(fn=cmd_db)

    cfg = sub.add_parser("config", help="show the effective settings")
    cfg.add_argument("--markdown", action="store_true", help="print the settings table for the README")
    cfg.set_defaults(fn=cmd_config)

    ag = sub.add_parser("agent", help="the host agent")
    ag.add_argument("agent_cmd", nargs="?", choices=["run", "discover", "enroll"], default="run")
    ag.add_argument("--json", action="store_true", help="discover: print JSON")
    ag.add_argument("--probe-dir", default=None, help="read captured vendor-tool outputs from this folder")
    ag.add_argument("--gateway", default=None, help="enroll: the gateway's URL")
    ag.add_argument("--token", default=None, help="enroll: the single-use enrollment token an admin created")
    ag.add_argument("--dir", default=None, help="enroll: where to write agent.creds and agent.env "
                                                "(default: <data dir>/agent)")
    ag.add_argument("--gateway-ca", default=None, help="enroll: CA file that verifies an HTTPS gateway")
    ag.set_defaults(fn=cmd_agent)

    nats_p = sub.add_parser("nats", help="NATS trust for a deployment whose nats-server runs elsewhere")
    nats_sub = nats_p.add_subparsers(dest="nats_cmd", required=True)
    init = nats_sub.add_parser("init", help="create an operator, accounts, the server config and per-role credentials")
    init.add_argument("--dir", required=True, help="where to write them (kept: a second run reuses the keys)")
    init.add_argument("--resolver-dir", default="/data/nats-accounts",
                      help="the folder, on the NATS server, where it keeps account JWTs (must persist)")
    init.set_defaults(fn=cmd_nats)

    sim = sub.add_parser("sim", help="run a simulated fleet of agents")
    sim.add_argument("--hosts", type=int, default=None, help="number of hosts (default: the demo fleet)")
    sim.add_argument("--seed", type=int, default=7, help="random seed")
    sim.set_defaults(fn=cmd_sim)

    try:
        from xpumesh.client_cli import add_client_commands
    except ModuleNotFoundError:
        pass
    else:
        add_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    fn: Callable[[argparse.Namespace, Settings], int] = args.fn
    try:
        return fn(args, settings)
    except KeyboardInterrupt:
        return 130
