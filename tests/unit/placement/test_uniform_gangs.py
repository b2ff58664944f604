"""A gang's replicas on one device model (and site) unless placement.mixed_models says otherwise."""

from __future__ import annotations

import pytest

from services.scheduler.placement import build_snapshot, place
from tests.unit.placement.fleet import PROFILES, check_valid, devices, host, wl

PROFILES.setdefault("h100", dict(PROFILES["a100"], model="H100-80GB-HBM3", compute_units=989.0))


def _models(snap, d):
    return {snap.profiles[snap.dev_profile[snap.dev_index[x]]].model for a in d.assignments for x in a.device_ids}


@pytest.mark.parametrize("placer", ["cpsat", "cpsat-greedy-fallback"])
def test_uniform_gang_lands_on_one_model(placer):
    # one H100 host and one A100 host free, two more A100 hosts: 2 x 8 goes to the A100s only
    snap = build_snapshot([host("h1"), host("a1"), host("a2")],
                          devices("h1", "h100", 8) + devices("a1", "a100", 8) + devices("a2", "a100", 8))
    batch = [wl("g", hardware={"type": "gpu", "count": 8}, replicas=2, gang=True)]
    d = place(batch, snap) if placer == "cpsat" else place(batch, snap, time_limit_s=0)
    check_valid(d, snap, batch)
    assert len(d.assignments) == 2 and _models(snap, d) == {"A100-SXM4-80GB"}


def test_uniform_gang_that_cannot_fit_one_model_waits_and_says_so_unless_mixed():
    snap = build_snapshot([host("h1"), host("a1")], devices("h1", "h100", 8) + devices("a1", "a100", 8))
    batch = [wl("g", hardware={"type": "gpu", "count": 8}, replicas=2, gang=True)]
    d = place(batch, snap)
    assert not d.assignments and "on one device model and one site" in d.pending[0].reason
    mixed = [wl("g", hardware={"type": "gpu", "count": 8}, replicas=2, gang=True,
                placement={"mixed_models": True})]
    d = place(mixed, snap)
    check_valid(d, snap, mixed)
    assert _models(snap, d) == {"A100-SXM4-80GB", "H100-80GB-HBM3"}
