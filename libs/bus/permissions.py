"""Who may publish and subscribe what on NATS: one permission set per role, written once.

The same sets go into the user JWTs xpumesh issues (the embedded default, enrollment) and are
described in docs/deploy.md. Every client hears only its own replies (``subjects.inbox_prefix``)
and answers requests through ``allow_responses`` rather than a publish grant on other inboxes.

- a **service** calls any service, publishes durable events and its own heartbeat, drives
  JetStream consumers (never deletes a stream), and subscribes to its own endpoints, the control
  broadcasts and the core subjects it declared; a singleton (registry, scheduler, metrics) also
  writes its own key of the lease bucket, and no other;
- an **agent** publishes only under ``xpumesh.host.<site>.<host>.>`` and hears only
  ``xpumesh.agent.<site>.<host>.>``;
- the **simulator** speaks for every simulated host and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from libs.bus import subjects

# JetStream API subjects a service needs: stream info/create/update (ensure_streams), consumers
# (create, info, list, delete, next), direct reads. Deleting or purging a stream is not granted.
JS_API_SERVICE = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.CREATE.*",
    "$JS.API.STREAM.UPDATE.*",
    "$JS.API.CONSUMER.>",
]
JS_ACK = "$JS.ACK.>"

#: Core subjects a service publishes beyond the common set, by service.
SERVICE_PUBLISHES: dict[str, list[str]] = {
    "scheduler": [subjects.AGENT_COMMAND_ALL, subjects.agent_logs_subject("*", "*")],
    "gateway": [f"{subjects.ROOT}.gateway.ctl.>"],
}


class Permissions(BaseModel):
    """One NATS user's grants (``allow`` lists; nothing else is allowed)."""

    publish: list[str] = Field(description="Subjects this user may publish on.")
    subscribe: list[str] = Field(description="Subjects this user may subscribe to.")
    responses: bool = Field(default=False, description="Whether it may answer the requests it receives.")

    def claims(self) -> dict[str, object]:
        """The ``pub``/``sub``/``resp`` part of a NATS user JWT."""
        out: dict[str, object] = {"pub": {"allow": sorted(set(self.publish))},
                                  "sub": {"allow": sorted(set(self.subscribe))}}
        if self.responses:
            out["resp"] = {"max": 1, "ttl": 60_000_000_000}  # one reply each, within a minute (ns)
        return out


def lease(name: str) -> list[str]:
    """What a singleton service publishes to hold its lease (libs/election.py): its own key only, and reads."""
    return [f"$KV.{subjects.LEASE_BUCKET}.{name}", f"$JS.API.STREAM.MSG.GET.{subjects.LEASE_STREAM}",
            f"$JS.API.DIRECT.GET.{subjects.LEASE_STREAM}.>"]


def service(name: str, subscribes: Iterable[str] = (), *, singleton: bool = False) -> Permissions:
    """A mesh service: ``subscribes`` are the core subjects it declared (``ServiceApp.subscriptions``);
    a ``singleton`` also holds a lease, on its own key of the lease bucket."""
    subjects.check_token(name, "service")
    return Permissions(
        publish=[f"{subjects.ROOT}.rpc.>", subjects.EVENTS_ALL, subjects.service_heartbeat_subject(name, "*"),
                 *JS_API_SERVICE, JS_ACK, *SERVICE_PUBLISHES.get(name, []), *(lease(name) if singleton else [])],
        subscribe=[f"{subjects.ROOT}.rpc.{name}.>", subjects.CTL_HEALTH, subjects.CTL_METRICS,
                   subjects.inbox_prefix("service", name) + ".>", *subscribes],
        responses=True)


def agent(site: str, host: str) -> Permissions:
    """One host's agent: its own subjects, its own replies, answers to the requests it is sent."""
    return Permissions(
        publish=[f"{subjects.ROOT}.host.{subjects.check_token(site, 'site')}.{subjects.check_token(host, 'host')}.>"],
        subscribe=[f"{subjects.ROOT}.agent.{site}.{host}.>", subjects.inbox_prefix("host", site, host) + ".>"],
        responses=True)


def simulator() -> Permissions:
    """The fleet simulator: every simulated host's reports and commands, its control subject."""
    return Permissions(
        publish=[f"{subjects.ROOT}.host.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.*"],
        subscribe=[f"{subjects.ROOT}.agent.>", subjects.SIM_CONTROL, subjects.inbox_prefix("sim") + ".>"],
        responses=True)


def table_markdown(roles: dict[str, Permissions]) -> str:
    """The permission table docs/deploy.md shows (tests/integration/test_nats_trust.py keeps it current)."""
    rows = ["| user | may publish | may subscribe | answers requests |", "|---|---|---|---|"]
    for name, p in roles.items():
        pub = "<br>".join(f"`{x}`" for x in p.publish)
        sub = "<br>".join(f"`{x}`" for x in p.subscribe)
        rows.append(f"| {name} | {pub} | {sub} | {'yes' if p.responses else 'no'} |")
    return "\n".join(rows)
