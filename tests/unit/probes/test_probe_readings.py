"""Telemetry readings (utilisation, memory used, temperature, power) where the tool prints them."""

from __future__ import annotations

from pathlib import Path

from agent.discover import collect_readings
from agent.probes.amd import AmdProbe
from agent.probes.ascend import AscendProbe
from agent.probes.base import load_capture
from agent.probes.nvidia import NvidiaProbe
from libs.schemas.devices import Health


def test_readings_nvidia_table_gives_temperature_power_and_memory(fixtures_dir: Path) -> None:
    capture = load_capture(fixtures_dir / "nvidia-a100x8" / "nvidia-smi.txt")
    assert capture is not None
    readings = NvidiaProbe(use_nvml=False).parse_readings([capture])
    assert len(readings) == 8
    first = readings[0]
    assert (first.vendor, first.index, first.temperature_c, first.power_w, first.memory_used_mib,
            first.utilization_pct) == ("nvidia", 0, 31.0, 62.0, 4, 0.0)


def test_readings_ascend_table_carry_health(fixtures_dir: Path) -> None:
    capture = load_capture(fixtures_dir / "ascend-910b" / "npu-smi-info.txt")
    assert capture is not None
    readings = AscendProbe().parse_readings([capture])
    assert [r.memory_used_mib for r in readings][:2] == [3391, 3390]
    assert readings[6].health is Health.UNHEALTHY
    assert readings[0].power_w == 95.1 and readings[0].temperature_c == 42.0


def test_readings_amd_concise_table_gives_temperature_and_power(fixtures_dir: Path) -> None:
    capture = load_capture(fixtures_dir / "amd-mi300x" / "rocm-smi.txt")
    assert capture is not None
    readings = AmdProbe().parse_readings([capture])
    assert [(r.temperature_c, r.power_w, r.utilization_pct) for r in readings][:2] == [(44.0, 139.0, 0.0),
                                                                                        (41.0, 134.0, 0.0)]


async def test_collect_readings_from_a_probe_dir(fixtures_dir: Path) -> None:
    readings = await collect_readings(fixtures_dir / "cambricon-mlu370")
    assert len(readings) == 8
    assert {r.vendor for r in readings} == {"cambricon"}
    assert readings[0].power_w == 108.0
