"""The autoscaler's arithmetic: up at once, down only after the load stayed low, within the bounds; load
reports summed over gateway instances, stale ones dropped."""

from __future__ import annotations

import pytest

from libs.schemas.endpoints import EndpointLoad, WorkloadLoad
from libs.schemas.workload import WorkloadSpec
from services.scheduler.autoscale import Load, desired


def test_autoscale_desired_goes_up_at_once_and_down_only_after_the_wait() -> None:
    assert desired(1, 9.0, 4.0, 1, 8, None, 100.0, 60.0) == (3, None)
    assert desired(2, 40.0, 4.0, 1, 8, None, 100.0, 60.0) == (8, None)  # capped at max
    assert desired(3, 0.0, 4.0, 2, 8, None, 100.0, 60.0) == (3, 100.0)  # low: wait
    assert desired(3, 0.0, 4.0, 2, 8, 100.0, 130.0, 60.0) == (3, 100.0)
    assert desired(3, 0.0, 4.0, 2, 8, 100.0, 161.0, 60.0) == (2, None)  # floored at min
    assert desired(3, 11.0, 4.0, 1, 8, 100.0, 161.0, 60.0) == (3, None)  # load back: the wait starts over


def test_autoscale_load_sums_instances_and_forgets_silent_ones() -> None:
    load = Load()
    load.record("gw-1", EndpointLoad(interval_s=2, items=[WorkloadLoad(workload_id="wl_a", in_flight=3.5)]), now=0)
    load.record("gw-2", EndpointLoad(interval_s=2, items=[WorkloadLoad(workload_id="wl_a", in_flight=1.5),
                                                          WorkloadLoad(workload_id="wl_b", in_flight=0)]), now=8)
    assert load.in_flight(10, now=9) == {"wl_a": 5.0, "wl_b": 0.0}
    assert load.in_flight(10, now=12) == {"wl_a": 1.5, "wl_b": 0.0}  # gw-1 silent for 12 s: gone


def test_autoscale_bounds_are_checked_in_the_spec() -> None:
    base = {"name": "s", "kind": "service", "hardware": {"type": "cpu"}}
    with pytest.raises(ValueError, match="go together"):
        WorkloadSpec.model_validate({**base, "service": {"min_replicas": 1}})
    with pytest.raises(ValueError, match="above max_replicas"):
        WorkloadSpec.model_validate({**base, "service": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ValueError, match="between"):
        WorkloadSpec.model_validate({**base, "replicas": 5, "service": {"min_replicas": 1, "max_replicas": 4}})
    ok = WorkloadSpec.model_validate({**base, "replicas": 2, "service": {"min_replicas": 1, "max_replicas": 4}})
    assert ok.service is not None and ok.service.autoscaled
