"""Placement engine: pure functions from (pending batch, fleet snapshot) to a decision.

Entry point::

    place(
        batch: Sequence[PendingWorkload],        # id + WorkloadSpec, in arrival order
        snapshot: FleetSnapshot,                 # build_snapshot(hosts, devices, allocations, links)
        *,
        rules: PlacementRules | None = None,     # PlacementRules.of(compat=[CompatRule…], runtime_driver=[…])
        quotas: Mapping[str, Mapping[HardwareType | str, float]] | None = None,
                                                 # tenant → hardware type → max devices (shares count as fractions)
        time_limit_s: float = 1.0,               # wall budget for the whole call; <= 0: greedy only
        max_candidates: int = 4,                 # options (pools/devices) kept per replica for the solver
        weights: Weights = DEFAULT_WEIGHTS,      # objective weights
        workers: int = 1,                        # CP-SAT threads
    ) -> PlacementDecision

Stages: ``feasibility`` (filters per profile/host/pool, cached per workload shape) →
``greedy`` (scored best-fit in queue order; records each replica's best options as it goes)
→ ``solver`` (CP-SAT per independent sub-problem, greedy result as hint and as fallback;
items that compete with nothing take their cheapest option directly) → device selection →
``preempt`` (pending high-priority work may stop lower-priority preemptible work) →
``explain`` (per-filter host counts for whatever is still pending).

``PlacementDecision`` carries ``assignments`` (workload id, replica → host, devices, share
and memory per device), ``preemptions``, ``pending`` (reason text + counts per filter),
``solver_status`` (OPTIMAL | FEASIBLE | GREEDY_FALLBACK | TRIVIAL | EMPTY), ``objective``,
``timings_s`` and per-sub-problem stats.

``place_greedy(batch, snapshot, *, rules, quotas, strategy="best_fit"|"first_fit")`` is the
baseline with the same input and output types. The caller applies a decision with
``snapshot.with_decision(decision, batch)`` (or rebuilds the snapshot from its tables).
Nothing here does I/O; everything is deterministic for a given input with ``workers=1``.
"""

from services.scheduler.placement.capacity import DEFAULT_WEIGHTS, Weights
from services.scheduler.placement.engine import Quotas, place, place_greedy
from services.scheduler.placement.result import (
    Assignment,
    Pending,
    PlacementDecision,
    Preemption,
    SubproblemStats,
)
from services.scheduler.placement.rules import PlacementRules
from services.scheduler.placement.snapshot import (
    AllocatedDevice,
    Allocation,
    DeviceInfo,
    FleetSnapshot,
    HostInfo,
    SiteLink,
    build_snapshot,
)
from services.scheduler.placement.workloads import PendingWorkload

__all__ = [
    "DEFAULT_WEIGHTS",
    "AllocatedDevice",
    "Allocation",
    "Assignment",
    "DeviceInfo",
    "FleetSnapshot",
    "HostInfo",
    "Pending",
    "PendingWorkload",
    "PlacementDecision",
    "PlacementRules",
    "Preemption",
    "Quotas",
    "SiteLink",
    "SubproblemStats",
    "Weights",
    "build_snapshot",
    "place",
    "place_greedy",
]
