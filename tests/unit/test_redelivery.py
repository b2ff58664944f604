"""How long a failed message waits before it comes back."""

from __future__ import annotations

from libs.bus.outcomes import Redelivery


def test_redelivery_delay_doubles_up_to_its_cap() -> None:
    r = Redelivery(base_s=1.0, factor=2.0, max_s=30.0)
    assert [r.delay(n) for n in (1, 2, 3, 4, 5, 6, 50)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
