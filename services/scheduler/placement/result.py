"""What ``place`` returns: assignments, preemptions, pending explanations and solver facts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Assignment:
    """One replica placed: the host and the devices, with the share and memory taken on each."""

    workload_id: str
    replica: int
    host_id: str
    device_ids: tuple[str, ...]
    shares: tuple[float, ...]  # 1.0 for whole devices
    memory_mib: tuple[int, ...]  # memory reserved per device (whole devices: all of it)
    cpu: int = 0  # logical CPUs of the host it holds
    host_memory_mib: int = 0  # host memory it holds
    alternative: int = 0  # which of the workload's hardware alternatives it was placed with
    numa_node: int | None = None  # with placement.numa 'single': the node its devices and CPUs are on


@dataclass(frozen=True, slots=True)
class Preemption:
    """Running work to stop so that ``for_workload`` can be placed."""

    workload_id: str
    priority: int
    device_ids: tuple[str, ...]
    for_workload: str
    reason: str = ""  # set when borrowed work is reclaimed (else the placer says "preempted for ...")


@dataclass(frozen=True, slots=True)
class Pending:
    """A workload (or some of its replicas) left unplaced, and why."""

    workload_id: str
    replicas: tuple[int, ...]
    reason: str  # one line, e.g. "12 hosts: driver too old for cuda>=12.4; 40 hosts: no free npu"
    counts: dict[str, int] = field(default_factory=dict)  # filter → hosts it excluded


@dataclass(frozen=True, slots=True)
class SubproblemStats:
    name: str
    items: int
    options: int
    status: str  # OPTIMAL, FEASIBLE, GREEDY_FALLBACK, TRIVIAL, …
    objective: float
    bound: float
    wall_s: float


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    assignments: list[Assignment]
    preemptions: list[Preemption]
    pending: list[Pending]
    solver_status: str  # OPTIMAL | FEASIBLE | GREEDY_FALLBACK | GREEDY | TRIVIAL | EXACT_FILL | EMPTY
    objective: float
    timings_s: dict[str, float]  # feasibility, greedy, build, solve, preempt, select, total
    subproblems: list[SubproblemStats] = field(default_factory=list)
    placer: str = "cpsat"
    hint: str = ""  # CP-SAT: the greedy placement it started from and had to match ('scored' | 'best_fit')

    def placed_workloads(self) -> set[str]:
        """Workloads with every replica placed."""
        partial = {p.workload_id for p in self.pending}
        return {a.workload_id for a in self.assignments} - partial

    def by_workload(self) -> dict[str, list[Assignment]]:
        out: dict[str, list[Assignment]] = {}
        for a in self.assignments:
            out.setdefault(a.workload_id, []).append(a)
        return out
