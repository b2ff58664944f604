"""Placement engine: pure functions from (pending batch, fleet snapshot) to a decision.

Entry point::

    place(
        batch: Sequence[PendingWorkload],        # id + WorkloadSpec; queue order = priority, then this order
        snapshot: FleetSnapshot,                 # build_snapshot(hosts, devices, allocations, links)
        *,
        rules: PlacementRules | None = None,     # PlacementRules.of(compat=[CompatRule…], runtime_driver=[…])
        quotas: Mapping[str, Mapping[HardwareType | str, float]] | None = None,
                                                 # tenant → hardware type → max devices (shares count as fractions)
        time_limit_s: float = 1.0,               # wall budget for the whole call; <= 0: greedy only, no preemption
        max_candidates: int = 4,                 # options (pools/devices) kept per replica for the solver
        weights: Weights = DEFAULT_WEIGHTS,      # objective weights
        workers: int = 1,                        # CP-SAT threads (1 keeps results deterministic)
    ) -> PlacementDecision

Stages, each a module:

1. ``feasibility`` - hardware type/vendor/model glob, variants, device memory, runtime and
   framework requirements (``rules``: the driver decides which runtime versions a device can
   run when driver rules exist), host up, sites, host labels, health. Decided per device
   profile / host / pool and cached per workload shape.
2. ``greedy`` - scored best-fit in queue order; records each replica's best ``max_candidates``
   pools at that moment plus a couple it could have had at batch start. Plain best-fit runs
   too (``hint``): its choices join the candidates, and whichever of the two places more
   whole workloads is the hint.
   Spread, link-group and tenant-quota rules are one object each (``constraints``): the
   greedy pass asks them whether an option may be taken, the CP-SAT model lets each add
   its constraints; quota accounting is in ``quota``.
3. ``solver`` - placements that already fill their pool exactly are committed; the rest is
   split into independent sub-problems (shared pools, gangs, binding quotas) and each is
   solved by CP-SAT with the hint as starting point, as fallback and as a floor: at least
   as many whole workloads of each priority or above. Items that compete with nothing take
   their cheapest option directly. So CP-SAT never places fewer workloads than best-fit
   on the same batch.
4. ``capacity.select_devices`` - concrete devices (best-fit link group).
5. ``preempt`` - still-pending work may stop lower-priority preemptible work (least disruption).
6. ``explain`` - per-filter host counts for whatever is still pending.

``PlacementDecision`` carries ``assignments`` (workload id, replica → host, devices, share and
memory per device), ``preemptions``, ``pending`` (reason text + host counts per filter),
``solver_status`` (OPTIMAL | FEASIBLE | GREEDY_FALLBACK | TRIVIAL | EXACT_FILL | EMPTY; GREEDY for the
baselines), ``objective``, ``hint`` (``scored`` | ``best_fit``),
``timings_s`` per stage and per-sub-problem stats.

``place_alternatives(batch, snapshot, **place_kw)`` tries each workload's ordered hardware
alternatives (``alternatives``): what the scheduler calls.

``place_greedy(batch, snapshot, *, rules, quotas, strategy="best_fit"|"first_fit")`` is the
baseline with the same input and output types. ``snapshot.with_decision(decision, batch)``
applies a decision (assignments become allocations, preemptions free theirs).
Nothing here does I/O; with ``workers=1`` results are deterministic unless the time limit
cuts a search short.
"""

from services.scheduler.placement.alternatives import place_alternatives
from services.scheduler.placement.capacity import DEFAULT_WEIGHTS, Weights
from services.scheduler.placement.engine import place, place_greedy
from services.scheduler.placement.quota import Quotas
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
    HostHold,
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
    "HostHold",
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
    "place_alternatives",
    "place_greedy",
]
