"""Every NATS subject the mesh uses, built in one place, and the one subject-token rule.

Site and host ride as subject tokens so that NATS permissions can confine an agent to
``xpumesh.host.<its site>.<its host>.>`` and ``xpumesh.agent.<its site>.<its host>.>``.
Sites, hosts, services, instances (and workload ids, which name replicas) are *tokens*:
``TOKEN_PATTERN`` as a string for pydantic ``Field``/FastAPI ``Query``/``Path``,
``Token`` as a validated type, ``check_token`` for plain values.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from libs.events import EVENT_TYPE_PREFIX

ROOT = "xpumesh"

TOKEN_CHARS = "A-Za-z0-9_-"  # inside a regex character class
TOKEN_MAX = 64
TOKEN_PATTERN = rf"^[{TOKEN_CHARS}]{{1,{TOKEN_MAX}}}$"
Token = Annotated[str, StringConstraints(pattern=TOKEN_PATTERN)]
_TOKEN = re.compile(TOKEN_PATTERN)


def check_token(value: str, what: str = "token") -> str:
    """A site, host, service or instance id must be one safe subject token."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '-' or '_'")
    return value


# --- agents → mesh -------------------------------------------------------------------
def host_subject(site: str, host: str, kind: str) -> str:
    """kind: capability | telemetry | heartbeat | state."""
    return f"{ROOT}.host.{site}.{host}.{kind}"


def host_of(subject: str | None) -> tuple[str, str] | None:
    """``(site, host)`` of a host subject ``xpumesh.host.<site>.<host>.<kind>``; None for any other subject."""
    if subject is None:
        return None
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != ROOT or parts[1] != "host":
        return None
    return parts[2], parts[3]


HOST_CAPABILITY_ALL = f"{ROOT}.host.*.*.capability"
HOST_STATE_ALL = f"{ROOT}.host.*.*.state"
HOST_TELEMETRY_ALL = f"{ROOT}.host.*.*.telemetry"
HOST_HEARTBEAT_ALL = f"{ROOT}.host.*.*.heartbeat"


# --- mesh → agents -------------------------------------------------------------------
def agent_command_subject(site: str, host: str) -> str:
    return f"{ROOT}.agent.{site}.{host}.cmd"


def agent_logs_subject(site: str, host: str) -> str:
    """Request/reply subject an agent answers log requests on (outside the command stream)."""
    return f"{ROOT}.agent.{site}.{host}.logs"


AGENT_COMMAND_ALL = f"{ROOT}.agent.*.*.cmd"

#: The simulator's control requests (``libs.schemas.sim.SimControl``).
SIM_CONTROL = f"{ROOT}.sim.ctl"


# --- services ------------------------------------------------------------------------
def service_heartbeat_subject(service: str, instance: str) -> str:
    return f"{ROOT}.svc.{service}.{instance}.heartbeat"


def service_of(subject: str | None) -> tuple[str, str] | None:
    """``(service, instance)`` of ``xpumesh.svc.<service>.<instance>.heartbeat``; None for any other subject."""
    if subject is None:
        return None
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != ROOT or parts[1] != "svc" or parts[4] != "heartbeat":
        return None
    return parts[2], parts[3]


SERVICE_HEARTBEAT_ALL = f"{ROOT}.svc.*.*.heartbeat"


def rpc_subject(service: str, endpoint: str) -> str:
    return f"{ROOT}.rpc.{service}.{endpoint}"


# every process answers these (no queue group): one scatter-gather request reaches every instance
CTL_HEALTH = f"{ROOT}.ctl.health"
CTL_METRICS = f"{ROOT}.ctl.metrics"

# the JetStream KV bucket of the singleton services' leases (libs/election.py): key = service name
LEASE_BUCKET = "xpumesh_leases"
LEASE_STREAM = f"KV_{LEASE_BUCKET}"

# core NATS broadcasts between gateway instances (each drops its cached copy)
GATEWAY_KEY_REVOKED = f"{ROOT}.gateway.ctl.key_revoked"
GATEWAY_SUBSCRIPTIONS_CHANGED = f"{ROOT}.gateway.ctl.subscriptions_changed"
# each gateway instance's requests in flight per service (to the scheduler's autoscaler)
GATEWAY_ENDPOINT_LOAD_ALL = f"{ROOT}.gateway.ctl.endpoint_load.*"


def gateway_endpoint_load_subject(instance: str) -> str:
    return f"{ROOT}.gateway.ctl.endpoint_load.{check_token(instance, 'instance')}"


# --- reply inboxes -------------------------------------------------------------------
INBOX_ROOT = "_INBOX"
_INBOX_NAMES = {"host": ("site", "host"), "service": ("service",), "sim": ()}


def inbox_prefix(role: str, *names: str) -> str:
    """The private reply-inbox prefix of one client: ``_INBOX.<role>.<names…>``.

    ``inbox_prefix("host", site, host)`` for an agent, ``inbox_prefix("service", name)`` for a
    service, ``inbox_prefix("sim")`` for the simulator. nats-py puts every reply a connection
    awaits (request/reply, JetStream publish acknowledgements, pull consumers' inboxes) under
    ``<prefix>.<nuid>``, so deploy/nats/nats.conf can let an agent subscribe to
    ``_INBOX.host.<its site>.<its host>.>`` alone: it hears no other client's replies. Every name
    is one token (dots separate them), so no two identities share a prefix.
    """
    expected = _INBOX_NAMES.get(role)
    if expected is None or len(names) != len(expected):
        raise ValueError(f"inbox prefix: role {role!r} takes {expected or 'a known role'}, got {names!r}")
    for what, name in zip(expected, names, strict=True):
        check_token(name, what)
    return ".".join((INBOX_ROOT, role, *names))


# --- durable events ------------------------------------------------------------------
EVENTS_ALL = f"{ROOT}.events.>"


def events_of(kind: str) -> str:
    """Every durable event under a kind: ``host`` → ``xpumesh.events.host.>``; ``""`` → ``EVENTS_ALL``."""
    return f"{ROOT}.events.{kind}.>" if kind else EVENTS_ALL


HOST_EVENTS_ALL = events_of("host")
DEVICE_EVENTS_ALL = events_of("device")
WORKLOAD_EVENTS_ALL = events_of("workload")
ENDPOINT_EVENTS_ALL = events_of("endpoint")


def event_subject(event_type: str, site: str | None = None) -> str:
    """``io.xpumesh.workload.placed`` at site ``hz`` → ``xpumesh.events.workload.placed.hz``.

    No site gives the ``_`` token; a filter may pass ``*`` for any site."""
    kind = event_type.removeprefix(EVENT_TYPE_PREFIX)
    return f"{ROOT}.events.{kind}.{site or '_'}"


def event_type_from_subject(subject: str) -> str:
    parts = subject.split(".")
    return EVENT_TYPE_PREFIX + ".".join(parts[2:-1])
