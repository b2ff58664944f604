"""``xpumesh agent discover``: host facts, every probe's devices, and the labels derived from them.

Probes run concurrently, against this host or against outputs captured in a directory
(``--probe-dir DIR``). In a capture directory, files are routed to probes by their
``# command:`` header, and an optional ``DIR/sys`` tree stands in for ``/sys`` (FPGAs by
PCI id, RDMA devices, NUMA nodes of PCI devices). Host facts always describe this host.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from agent.facts import collect_host_facts
from agent.probes.amd import AmdProbe
from agent.probes.ascend import AscendProbe
from agent.probes.base import (
    CommandRunner,
    Probe,
    ProbeRun,
    load_captures,
    run_probe_captured,
    run_probe_live,
)
from agent.probes.cambricon import CambriconProbe
from agent.probes.enflame import EnflameProbe
from agent.probes.fpga import FpgaProbe
from agent.probes.gaudi import GaudiProbe
from agent.probes.hygon import HygonProbe
from agent.probes.iluvatar import IluvatarProbe
from agent.probes.intel_xpu import IntelXpuProbe
from agent.probes.kunlunxin import KunlunxinProbe
from agent.probes.metax import MetaxProbe
from agent.probes.mthreads import MthreadsProbe
from agent.probes.neuron import NeuronProbe
from agent.probes.nvidia import NvidiaProbe
from agent.probes.readings import DeviceReading
from agent.probes.util import UNKNOWN_MODEL
from libs.schemas.devices import Device, Discovery, HostFacts, ProbeReport

log = logging.getLogger(__name__)
LABEL_PREFIX = "xpumesh.io/"
SYSFS = Path("/sys")


def default_probes(sysfs_root: Path = SYSFS) -> list[Probe]:
    return [NvidiaProbe(), AmdProbe(), HygonProbe(), AscendProbe(), CambriconProbe(), KunlunxinProbe(),
            IntelXpuProbe(), IluvatarProbe(), MetaxProbe(), MthreadsProbe(), EnflameProbe(), GaudiProbe(),
            NeuronProbe(), FpgaProbe(sysfs_root)]


async def run_probes(probe_dir: Path | None = None, *, timeout_s: float = 10.0,
                     probes: Sequence[Probe] | None = None) -> tuple[list[ProbeRun], list[str]]:
    """Every probe's run (concurrently), plus warnings about capture files no probe could take."""
    chosen = list(probes) if probes is not None else default_probes()
    if probe_dir is None:
        runner = CommandRunner(timeout_s)
        runs = await asyncio.gather(*(run_probe_live(probe, runner) for probe in chosen))
        return list(runs), []
    known = sorted({tool for probe in chosen for tool in probe.tools})
    captures, warnings = await asyncio.to_thread(load_captures, probe_dir, known)
    taken = {id(c) for c in captures for probe in chosen if probe.accepts(c)}
    warnings += [f"{Path(c.origin).name}: no probe reads '{c.tool}' output; skipped"
                 for c in captures if id(c) not in taken]
    runs = await asyncio.gather(*(asyncio.to_thread(run_probe_captured, probe, captures, probe_dir)
                                  for probe in chosen))
    return list(runs), warnings


async def discover(probe_dir: Path | None = None, *, timeout_s: float = 10.0, probes: list[Probe] | None = None,
                   sysfs_root: Path | None = None, reserved_cpus: int = 1, reserved_memory_mib: int = 2048
                   ) -> Discovery:
    """Discover this host's accelerators (or those of a capture directory) and derive its labels; the host
    reports its CPUs and memory less the reserves as allocatable."""
    return (await discover_runs(probe_dir, timeout_s=timeout_s, probes=probes, sysfs_root=sysfs_root,
                                reserved_cpus=reserved_cpus, reserved_memory_mib=reserved_memory_mib))[0]


async def discover_runs(probe_dir: Path | None = None, *, timeout_s: float = 10.0, probes: list[Probe] | None = None,
                        sysfs_root: Path | None = None, reserved_cpus: int = 1, reserved_memory_mib: int = 2048
                        ) -> tuple[Discovery, list[ProbeRun]]:
    """:func:`discover`, plus each probe's run (what it read), for the human summary of the CLI."""
    root = sysfs_root or (probe_dir / "sys" if probe_dir is not None else SYSFS)
    if probes is None:
        probes = default_probes(root)
    (runs, warnings), host = await asyncio.gather(
        run_probes(probe_dir, timeout_s=timeout_s, probes=probes), asyncio.to_thread(
        collect_host_facts, reserved_cpus=reserved_cpus, reserved_memory_mib=reserved_memory_mib))
    reports = [run.report for run in runs]
    if warnings:
        reports.append(ProbeReport(probe="probe-dir", available=True, warnings=warnings))
    devices = [_with_numa(device, root) for device in merge_devices(r.devices for r in reports)]
    network = network_features(root / "class" / "infiniband")
    discovery = Discovery(host=host, devices=devices, probes=reports, labels=derive_labels(host, devices, network))
    return discovery, list(runs)


async def collect_readings(probe_dir: Path | None = None, *, timeout_s: float = 10.0,
                           probes: list[Probe] | None = None) -> list[DeviceReading]:
    """Telemetry readings (utilisation, memory used, temperature, power) where a probe can give them."""
    runs, _ = await run_probes(probe_dir, timeout_s=timeout_s, probes=probes)
    return [reading for run in runs for reading in run.readings]


def merge_devices(groups: Iterable[Sequence[Device]]) -> list[Device]:
    """One list of devices; a device two probes both report (same vendor and index) is merged."""
    merged: dict[tuple[str, int], Device] = {}
    for group in groups:
        for device in group:
            key = (device.vendor, device.index)
            if key not in merged:
                merged[key] = device
                continue
            known = merged[key]
            update = {name: getattr(device, name) for name in Device.model_fields
                      if getattr(known, name) in (None, "", UNKNOWN_MODEL, [], {})
                      and getattr(device, name) not in (None, "", [], {})}
            merged[key] = known.model_copy(update=update)
    return list(merged.values())


def _with_numa(device: Device, root: Path) -> Device:
    if device.numa_node is not None or not device.pci_bus_id:
        return device
    try:
        node = int((root / "bus" / "pci" / "devices" / device.pci_bus_id / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return device
    return device.model_copy(update={"numa_node": node}) if node >= 0 else device


def network_features(root: Path) -> dict[str, bool]:
    """RDMA devices under /sys/class/infiniband and the link layers of their ports."""
    try:
        devices = [entry for entry in root.iterdir() if entry.is_dir()] if root.is_dir() else []
    except OSError:
        devices = []
    layers = set()
    for device in devices:
        for port in (device / "ports").glob("*"):
            try:
                layers.add((port / "link_layer").read_text().strip().lower())
            except OSError:
                continue
    if not devices:
        return {}
    return {"rdma": True, "infiniband": "infiniband" in layers, "roce": "ethernet" in layers}


def label_value(value: object) -> str | None:
    """A Kubernetes-valid label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value))[:63]
    text = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text)
    return text or None


def _most_common(values: Iterable[str | None]) -> str | None:
    counted = Counter(v for v in values if v and v != UNKNOWN_MODEL)
    return sorted(counted.items(), key=lambda item: (-item[1], item[0]))[0][0] if counted else None


def derive_labels(host: HostFacts, devices: Sequence[Device], network: dict[str, bool]) -> dict[str, str]:
    labels: dict[str, str | None] = {"arch": host.arch, "numa-nodes": str(host.numa_nodes)}
    for vendor in sorted({d.vendor for d in devices}):
        labels[f"{vendor}.driver"] = _most_common(d.driver_version for d in devices if d.vendor == vendor)
    for runtime in sorted({name for d in devices for name in d.runtimes}):
        labels[runtime] = _most_common(d.runtimes.get(runtime) for d in devices)
    for kind in sorted({d.hardware_type.value for d in devices}):
        group = [d for d in devices if d.hardware_type.value == kind]
        memories = [d.memory_mib for d in group if d.memory_mib]
        models = {d.model for d in group if d.model != UNKNOWN_MODEL}
        labels[f"{kind}.count"] = str(len(group))
        labels[f"{kind}.vendor"] = _most_common(d.vendor for d in group)
        labels[f"{kind}.model"] = _most_common(d.model for d in group)
        labels[f"{kind}.memory-mib"] = str(min(memories)) if memories else None
        labels[f"{kind}.mixed"] = "true" if len(models) > 1 or len({d.vendor for d in group}) > 1 else None
    for feature, present in network.items():
        labels[f"network.{feature}"] = "true" if present else None
    result = {}
    for key, value in labels.items():
        clean = label_value(value) if value is not None else None
        if clean:
            result[LABEL_PREFIX + key] = clean
    return result


# ---------------------------------------------------------------- CLI entry


def probe_lines(discovery: Discovery, runs: Sequence[ProbeRun] = ()) -> list[str]:
    """One line per probe (what it ran or read, what it found), then one per thing it could not read, and why."""
    by_name = {run.report.probe: run for run in runs}
    lines = ["probes"]
    problems: list[str] = []
    for report in discovery.probes:
        run = by_name.get(report.probe)
        sources = [capture.label for capture in run.captures] if run else []
        if not report.available and not report.devices:
            why = "no FPGA among the PCI ids in sysfs" if report.probe == "fpga" else "its tools are not on this host"
            lines.append(f"  {report.probe:<10} not present ({why})")
        else:
            kinds = Counter((d.hardware_type.value, d.model) for d in report.devices)
            found = ", ".join(f"{n} {kind} {model}" for (kind, model), n in sorted(kinds.items())) or "no device"
            unhealthy = sum(1 for d in report.devices if d.health.value == "unhealthy")
            verb = "read" if any(capture.origin != "live" for capture in (run.captures if run else [])) else "ran"
            what = f"{verb} {'; '.join(sources)}" if sources else "read sysfs" if report.probe == "fpga" else "read"
            lines.append(f"  {report.probe:<10} {what}: {found}" + (f" ({unhealthy} unhealthy)" if unhealthy else ""))
        problems += [f"  ! {report.probe:<8} {warning}" for warning in report.warnings]
    return lines + problems


def format_table(discovery: Discovery, runs: Sequence[ProbeRun] = ()) -> str:
    host = discovery.host
    lines = [f"host   {host.hostname}  {host.arch}  {host.os}  kernel {host.kernel}",
             f"cpu    {host.cpu_model}  {host.cpu_sockets} socket(s) {host.cpu_cores} cores {host.cpu_threads} threads"
             f"  memory {host.memory_mib} MiB  numa {host.numa_nodes}",
             f"       vendor {host.cpu_vendor or '-'}  allocatable {host.cpu_allocatable} CPUs "
             f"{host.memory_allocatable_mib} MiB  features {' '.join(host.cpu_features) or '-'}"]
    lines += [f"       numa node {n.id}: CPUs {n.cpus or '-'}  memory {n.memory_mib} MiB" for n in host.numa]
    lines.append("")
    if discovery.devices:
        lines.append(f"{'IDX':>3}  {'VENDOR':<10} {'TYPE':<5} {'MODEL':<22} {'MEMORY':>10}  {'DRIVER':<14} "
                     f"{'RUNTIMES':<18} HEALTH")
        for d in discovery.devices:
            runtimes = ",".join(f"{k}={v}" for k, v in sorted(d.runtimes.items())) or "-"
            memory = f"{d.memory_mib} MiB" if d.memory_mib is not None else "-"
            lines.append(f"{d.index:>3}  {d.vendor:<10} {d.hardware_type.value:<5} {d.model:<22} {memory:>10}  "
                         f"{d.driver_version or '-':<14} {runtimes:<18} {d.health.value}")
    else:
        lines.append("no accelerators found")
    lines += ["", *probe_lines(discovery, runs)]
    if discovery.labels:
        lines.append("")
        lines += [f"{key}={value}" for key, value in sorted(discovery.labels.items())]
    return "\n".join(lines)


def discover_main(probe_dir: str | None, as_json: bool) -> int:
    """Print this host's discovery (JSON or a short table); 0 on success, 2 for a missing probe dir."""
    directory = Path(probe_dir) if probe_dir else None
    if directory is not None and not directory.is_dir():
        print(f"xpumesh agent discover: probe dir not found: {probe_dir}", file=sys.stderr)
        return 2
    try:
        result, runs = asyncio.run(discover_runs(directory))
    except Exception as exc:
        log.exception("discovery failed")
        print(f"xpumesh agent discover: failed: {exc}", file=sys.stderr)
        return 1
    print(result.model_dump_json(indent=2) if as_json else format_table(result, runs) + "\n\n" + isolation_line())
    return 0


def isolation_line() -> str:
    """How this host keeps tenants' replicas apart, as the agent would run them now."""
    from agent.drivers.isolation import isolation_status
    from libs.config import get_settings

    a = get_settings().agent
    return "isolation  " + isolation_status(a.replica_uid_start, a.replica_uid_count, a.replica_cgroup_parent)
