"""The gateway's in-process state, built once at start and handed to every handler as ``ctx.state``.

Nothing here is the record of anything: API keys, idempotency records, subscriptions and
deliveries are in PostgreSQL (``store.py``, ``webhooks/store.py``). What a gateway instance
keeps for itself is its key cache and rate-limit buckets (``AuthState``), the service endpoints
it routes to (``EndpointTable``, followed from events), its client to their replicas and what it
forwarded to each (``Traffic``), the enrollment signer
(``Enrollment``: the trust directory, when this gateway holds it), the webhook engine
(one intake consumer per active subscription, the delivery worker's attempts in flight) and
how many Server-Sent Event streams it serves now.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.endpoints import EndpointFollower
from libs.service import Context
from services.gateway.auth import AuthState
from services.gateway.endpoints import EndpointTable, LoadMeter
from services.gateway.enrollment import Enrollment
from services.gateway.proxy import Clients
from services.gateway.traffic import Traffic
from services.gateway.webhooks.engine import WebhookEngine


@dataclass
class GatewayState:
    auth: AuthState
    webhooks: WebhookEngine
    enrollment: Enrollment
    endpoints: EndpointTable  # every service's ready replicas, kept by ``follower``
    follower: EndpointFollower
    proxy: Clients  # httpx clients to service replicas behind /v1/endpoints/
    load: LoadMeter  # requests in flight per service, reported to the scheduler's autoscaler
    traffic: Traffic  # what this instance forwarded per endpoint, recent window (GET /v1/endpoint-stats)
    sse_clients: int = 0  # event streams open on this instance (at most ``gateway.sse_max_clients``)


async def load_state(ctx: Context[GatewayState]) -> GatewayState:
    table = EndpointTable()
    follower = EndpointFollower(ctx.bus, table, service="gateway",
                                request_timeout_s=ctx.settings.bus.request_timeout_s,
                                drain_timeout_s=ctx.settings.bus.drain_timeout_s)
    return GatewayState(auth=AuthState(ctx.settings.gateway), webhooks=WebhookEngine(ctx),
                        enrollment=Enrollment.from_settings(ctx.settings), endpoints=table, follower=follower,
                        proxy=Clients(ctx.settings.gateway), load=LoadMeter(table),
                        traffic=Traffic(ctx.settings.gateway.endpoint_stats_window_s))
