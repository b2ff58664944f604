"""Service endpoints in the registry: every running service's replicas in rotation, mirrored into the bridge.

The scheduler owns which replicas of a service take requests (``libs.schemas.endpoints``); the
registry follows them (``libs.endpoints.EndpointFollower``: the snapshot, then the
``io.xpumesh.endpoint.changed`` events) so that consumers outside xpumesh find them where they
find everything else: with ``consul_url`` set, each ready replica is a Consul service instance
named ``xpumesh-endpoint-<tenant>-<name>`` at the replica's address and port (see
``bridge.ConsulBridge.endpoints``). Changes are pushed in batches every
``registry.endpoint_push_interval_s`` (``EndpointMirror.push``),
the first after the first snapshot as a full sync, so what ended while the registry was away is
deregistered too. Without Consul the registry does not follow endpoints (``GET /v1/endpoints`` of
the gateway answers inside xpumesh).
"""

from __future__ import annotations

import logging

from libs.endpoints import VersionedSets
from libs.schemas.endpoints import EndpointSet
from services.registry.bridge import RegistryBridge

log = logging.getLogger(__name__)


class EndpointMirror(VersionedSets):
    """The newest endpoint set of each service, and the changes not yet pushed to the bridge."""

    def __init__(self, bridge: RegistryBridge) -> None:
        super().__init__()
        self.bridge = bridge
        self.pending: dict[str, EndpointSet | None] = {}  # workload → its new set, or None: gone
        self.full = True  # the next push is a full sync (the first after a start)

    def added(self, s: EndpointSet) -> None:
        self.pending[s.workload_id] = s

    def removed(self, workload_id: str, s: EndpointSet) -> None:
        self.pending[workload_id] = None

    async def push(self) -> int:
        """Hand the changes to the bridge (all sets when ``full``); on failure they stay for the next push."""
        if self.full:
            changes: dict[str, EndpointSet | None] = dict(self.sets)
            self.pending = {}
        else:
            changes, self.pending = self.pending, {}
        if not changes and not self.full:
            return 0
        try:
            await self.bridge.endpoints(changes, full=self.full)
        except Exception as exc:
            log.warning("endpoints not mirrored (%s); again on the next change", type(exc).__name__)
            if not self.full:
                self.pending = {**changes, **self.pending}
            return 0
        self.full = False
        return len(changes)
