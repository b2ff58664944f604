"""Every NATS subject the mesh uses, built in one place.

Site and host ride as subject tokens so that NATS permissions can confine an agent to
``xpumesh.host.<its site>.<its host>.>`` and ``xpumesh.agent.<its site>.<its host>.>``.
"""

from __future__ import annotations

import re

from libs.events import EVENT_TYPE_PREFIX

ROOT = "xpumesh"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_token(value: str, what: str = "token") -> str:
    """A site, host, service or instance id must be one safe subject token."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of letters, digits, '-' or '_'")
    return value


# --- agents → mesh -------------------------------------------------------------------
def host_subject(site: str, host: str, kind: str) -> str:
    """kind: capability | telemetry | heartbeat | state."""
    return f"{ROOT}.host.{site}.{host}.{kind}"


HOST_CAPABILITY_ALL = f"{ROOT}.host.*.*.capability"
HOST_STATE_ALL = f"{ROOT}.host.*.*.state"
HOST_TELEMETRY_ALL = f"{ROOT}.host.*.*.telemetry"
HOST_HEARTBEAT_ALL = f"{ROOT}.host.*.*.heartbeat"


# --- mesh → agents -------------------------------------------------------------------
def agent_command_subject(site: str, host: str) -> str:
    return f"{ROOT}.agent.{site}.{host}.cmd"


AGENT_COMMAND_ALL = f"{ROOT}.agent.*.*.cmd"


# --- services ------------------------------------------------------------------------
def service_heartbeat_subject(service: str, instance: str) -> str:
    return f"{ROOT}.svc.{service}.{instance}.heartbeat"


SERVICE_HEARTBEAT_ALL = f"{ROOT}.svc.*.*.heartbeat"


def rpc_subject(service: str, endpoint: str) -> str:
    return f"{ROOT}.rpc.{service}.{endpoint}"


# --- durable events ------------------------------------------------------------------
EVENTS_ALL = f"{ROOT}.events.>"
# every process answers these (no queue group): one scatter-gather request reaches every instance
CTL_HEALTH = f"{ROOT}.ctl.health"
CTL_METRICS = f"{ROOT}.ctl.metrics"


def event_subject(event_type: str, site: str | None = None) -> str:
    """``io.xpumesh.workload.placed`` at site ``hz`` → ``xpumesh.events.workload.placed.hz``."""
    kind = event_type.removeprefix(EVENT_TYPE_PREFIX)
    return f"{ROOT}.events.{kind}.{site or '_'}"


def event_type_from_subject(subject: str) -> str:
    parts = subject.split(".")
    return EVENT_TYPE_PREFIX + ".".join(parts[2:-1])
