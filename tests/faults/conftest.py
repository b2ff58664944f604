"""Prints the fault table (one row per scenario) at the end of a run that ran the fault suite."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.faults.test_faults import TABLE

    if not TABLE:
        return
    w = terminalreporter
    w.section("fault table")
    head = ("scenario", "accepted", "lost", "missing wh/sse", "dup wh/sse", "detect s", "resched s", "recover s")
    w.write_line(" | ".join(head))
    for r in TABLE:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"
        w.write_line(" | ".join((r.scenario, str(r.accepted), str(r.lost), f"{r.missing_webhook}/{r.missing_sse}",
                                 f"{r.duplicates_webhook}/{r.duplicates_sse}", f(r.detection_s), f(r.reschedule_s),
                                 f(r.recovery_s))) + ("  # " + "; ".join(r.notes) if r.notes else ""))
