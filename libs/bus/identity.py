"""Who may speak for whom: the sender a subject names, checked against what the message says.

NATS permissions confine an agent to publishing on ``xpumesh.host.<its site>.<its host>.>`` and
a service instance to ``xpumesh.svc.<service>.<instance>.>``. The transport subject is therefore
the one part of a message its sender cannot choose; the body (host id, site, a heartbeat's member
id) is whatever the sender wrote. Every handler of agent traffic compares the two here: a message
whose body names another host (or, on a host subject, a service) raises ``IdentityMismatch``.

The framework sets the subject (``CloudEvent.received_on``, or the ``subject`` a decoder is
given) from the message it received, never from the body, and turns ``IdentityMismatch`` into
an ack (a retry cannot make it true) counted as
``xpumesh_bus_rejected_total{reason="identity_mismatch"}``; the handler changes nothing.

The subjects are parsed where they are built (``subjects.host_of``, ``subjects.service_of``);
the checks split the subject and compare tokens: cheap enough for the telemetry hot path.
"""

from __future__ import annotations

from libs.bus.errors import InvalidRequest
from libs.bus.subjects import host_of, service_of

__all__ = ["REASON", "IdentityMismatch", "check_host", "check_service", "host_of", "service_of"]
REASON = "identity_mismatch"


class IdentityMismatch(InvalidRequest):
    """The message's body speaks for someone its subject does not name."""

    default_title = "Identity mismatch"


def check_host(subject: str | None, site: str | None, host: str) -> None:
    """The body's ``site``/``host`` must be the host subject's tokens (a non-host subject never matches)."""
    if host_of(subject) != (site, host):
        raise IdentityMismatch("the message names a host other than the subject it was published on")


def check_service(subject: str | None, member_id: str) -> None:
    """A service heartbeat's id must be ``<service>.<instance>`` of its service subject."""
    origin = service_of(subject)
    if origin is None or member_id != f"{origin[0]}.{origin[1]}":
        raise IdentityMismatch("the heartbeat names a service instance other than its subject")
