"""Shared helpers for the probe tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.discover import default_probes
from agent.probes.base import load_capture, run_probe_captured
from libs.schemas.devices import Device

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "probes"
ParseFile = Callable[[Path], tuple[list[Device], list[str]]]


def parse_file(path: Path) -> tuple[list[Device], list[str]]:
    """Devices and warnings every default probe gets from one capture file (as --probe-dir would)."""
    capture = load_capture(path)
    assert capture is not None, f"{path.name}: no command header"
    devices: list[Device] = []
    warnings: list[str] = []
    for probe in default_probes(Path("/nonexistent-sysfs")):
        if not probe.accepts(capture):
            continue
        report = run_probe_captured(probe, [capture]).report
        devices += report.devices
        if report.devices or capture.tool in probe.tools:
            warnings += report.warnings
    return devices, sorted(set(warnings))


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def parse_capture_file() -> ParseFile:
    return parse_file
