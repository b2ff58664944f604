"""The platform's own Prometheus metrics, shared by every process.

Each process keeps these in the default registry; the gateway and the metrics service
expose them over HTTP, and every service answers ``xpumesh.ctl.metrics`` with its text
exposition so the metrics service can publish all of them in one scrape.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest

BUS_MESSAGES = Counter(
    "xpumesh_bus_messages_total", "Messages handled, by service, handler and outcome.",
    ["service", "handler", "outcome"],
)
BUS_REJECTED = Counter(
    "xpumesh_bus_rejected_total", "Messages rejected as malformed or invalid, by service, handler and reason.",
    ["service", "handler", "reason"],
)
BUS_STUCK = Gauge(
    "xpumesh_bus_stuck_messages", "Messages a consumer has failed to handle bus.stuck_deliveries times or more and "
    "still retries (each is also logged as an error), by service and handler.", ["service", "handler"],
)
BUS_STUCK_TOTAL = Counter(
    "xpumesh_bus_stuck_total", "Messages that became stuck (see xpumesh_bus_stuck_messages), by service and handler.",
    ["service", "handler"],
)
HANDLER_SECONDS = Histogram(
    "xpumesh_handler_seconds", "Time spent in a bus handler.", ["service", "handler"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SERVICE_UP = Gauge("xpumesh_service_up", "1 while this service instance runs.", ["service", "instance"])
LEADER = Gauge("xpumesh_leader", "1 while this instance of a singleton service holds its lease and acts.",
               ["service", "instance"])
FENCED = Counter("xpumesh_fenced_transactions_total",
                 "Transactions refused because a newer leader of the service has claimed the fence.", ["service"])
BUS_RETRIES = Counter("xpumesh_bus_retries_total", "Requests asked again because no instance answered (no responders, "
                      "a timeout, a leader change), by service, endpoint and reason.", ["service", "endpoint", "reason"])
OUTBOX_PENDING = Gauge("xpumesh_outbox_pending", "Outbox rows not yet relayed to JetStream.", ["service"])


LOOP_RUNS = Counter(
    "xpumesh_loop_runs_total", "Runs of a service's periodic loop, by outcome (ok, error, overrun).",
    ["service", "loop", "outcome"],
)
LOOP_SECONDS = Histogram(
    "xpumesh_loop_seconds", "Time one run of a periodic loop took.", ["service", "loop"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0),
)



def exposition() -> bytes:
    return generate_latest(REGISTRY)
