#!/opt/xpumesh/bin/python
"""Health probe of one xpumesh container, for docker-compose healthchecks and Kubernetes exec probes.

    xpumesh-healthcheck service NAME [--live] [--timeout S]
        this container's instance of service NAME answers on the bus;
    xpumesh-healthcheck http URL [--timeout S]
        URL answers with a 2xx status (the gateway's /healthz and /readyz).

Exit status 0 means healthy; 1 means not, with one line on stderr saying why.

``service`` asks every instance of every service (``xpumesh.ctl.health``) and waits for the
one running in this container: the instance named by ``XPUMESH_INSTANCE_ID`` when that is set,
otherwise the one whose id starts with this hostname (the default instance id is
``<hostname>-<pid>``; in a container the hostname is the container's or the pod's name). The
readiness form needs that instance to report status ``ok``. The ``--live`` form only needs an
answer, and passes when the probe itself cannot reach NATS: an unreachable NATS is not this
process's fault, and restarting every service during a NATS outage would not help.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import urllib.error
import urllib.request

import nats
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError

from libs.bus.subjects import CTL_HEALTH
from libs.config import Settings
from libs.schemas.registry import ServiceHealth


class NatsUnreachable(Exception):
    """The probe could not connect to NATS."""


def instance_matches(instance: str, *, configured: str | None, hostname: str) -> bool:
    """Whether ``instance`` is the process of this container (see ``libs.service.default_instance_id``)."""
    if configured:
        return instance == configured
    prefix = (hostname.split(".")[0] + "-")[:64]
    rest = instance[len(prefix):]
    return instance.startswith(prefix) and (rest.isdigit() or rest == "")  # "": the pid was cut at 64 characters


async def ask_service(url: str, service: str, *, configured: str | None, hostname: str,
                      timeout_s: float) -> ServiceHealth | None:
    """The health this container's instance of ``service`` reports, or None when it does not answer in time."""
    servers = [u.strip() for u in url.split(",") if u.strip()]

    async def quiet(exc: Exception) -> None:  # the outcome is reported once, below
        pass

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s  # one budget for connecting and for the answer
    try:
        nc = await asyncio.wait_for(
            nats.connect(servers=servers, name="healthcheck", connect_timeout=timeout_s, allow_reconnect=False,
                         max_reconnect_attempts=1, error_cb=quiet), timeout=timeout_s)
    except Exception as exc:
        raise NatsUnreachable(type(exc).__name__) from None
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(CTL_HEALTH, b"{}", reply=inbox)
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except NatsTimeout:
                break
            try:
                health = ServiceHealth.model_validate_json(msg.data)
            except ValidationError:
                continue
            if health.service == service and instance_matches(health.instance, configured=configured,
                                                               hostname=hostname):
                return health
        return None
    finally:
        await nc.close()


def check_service(service: str, *, live: bool, timeout_s: float) -> tuple[bool, str]:
    try:
        settings = Settings()
    except ValidationError:
        return False, "invalid XPUMESH_* configuration"
    if not settings.nats_url:
        return False, "XPUMESH_NATS_URL is not set"
    try:
        health = asyncio.run(ask_service(settings.nats_url, service, configured=settings.instance_id,
                                         hostname=socket.gethostname(), timeout_s=timeout_s))
    except NatsUnreachable as exc:
        return live, f"cannot reach NATS ({exc})"
    if health is None:
        return False, f"{service} in this container did not answer within {timeout_s:g}s"
    if live or health.status == "ok":
        return True, f"{service} {health.instance}: {health.status}"
    failing = ", ".join(sorted(k for k, ok in health.checks.items() if not ok)) or "unknown"
    return False, f"{service} {health.instance}: {health.status} (failing: {failing})"


def check_http(url: str, *, timeout_s: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return False, f"{url}: {type(exc).__name__}"
    return 200 <= status < 300, f"{url}: HTTP {status}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xpumesh-healthcheck", description="Health probe of one xpumesh container.")
    sub = p.add_subparsers(dest="mode", required=True)
    svc = sub.add_parser("service", help="this container's instance of a service answers on the bus")
    svc.add_argument("name", help="service name (registry, inventory, scheduler, metrics, gateway)")
    svc.add_argument("--live", action="store_true", help="liveness: any answer will do; pass when NATS is unreachable")
    svc.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    http = sub.add_parser("http", help="an HTTP endpoint answers 2xx")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "service":
        ok, why = check_service(args.name, live=args.live, timeout_s=args.timeout)
    else:
        ok, why = check_http(args.url, timeout_s=args.timeout)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
