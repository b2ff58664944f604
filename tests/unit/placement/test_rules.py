"""Placement rules are one object each: the greedy pass asks them, the CP-SAT model encodes them."""

from __future__ import annotations

from typing import Any

import pytest

from services.scheduler.placement import constraints
from services.scheduler.placement.capacity import DEFAULT_WEIGHTS, PlacementCosts
from services.scheduler.placement.feasibility import FeasibilityCache
from services.scheduler.placement.greedy import greedy_pass
from services.scheduler.placement.rules import PlacementRules
from services.scheduler.placement.workloads import expand
from tests.unit.placement.fleet import fleet, wl


def test_rules_the_greedy_pass_asks_are_the_rules_the_model_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: set[type] = set()
    for cls in constraints.MODEL_RULES:
        def spy(self: Any, group: Any, _start: Any = cls.start) -> None:
            asked.add(type(self))
            _start(self, group)

        monkeypatch.setattr(cls, "start", spy)
    snap = fleet({"h1": ("a100", 8)})
    items = expand([wl("w", hardware={"type": "gpu"}, tenant="acme")])
    greedy_pass(items, snap, FeasibilityCache(snap, PlacementRules()), PlacementCosts(snap, DEFAULT_WEIGHTS),
                DEFAULT_WEIGHTS, {("acme", "gpu"): 100}, strategy="best_fit")
    assert asked == set(constraints.MODEL_RULES)
