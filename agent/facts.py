"""The host's own facts: name, architecture, OS, kernel, CPU (vendor, model, features), memory, NUMA
nodes with their CPUs and memory, and what of the CPUs and memory replicas may take.

Every source is optional: a missing or unreadable file gives a fallback value, never an
exception. The roots are parameters so tests can point them at fake trees.

Allocatable CPUs are the logical CPUs the agent itself may run on (its affinity mask, which a
container's cpuset narrows) less ``reserved_cpus``; allocatable memory is the host's less
``reserved_memory_mib`` (as kubelet's system-reserved), never below 0.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
from pathlib import Path

import psutil

from libs.schemas.devices import HostFacts, NumaNode, format_cpu_list, parse_cpu_list

log = logging.getLogger(__name__)
MIB = 1024 * 1024

# (implementer, part) from /proc/cpuinfo on arm64, which has no 'model name'
ARM_CPUS = {
    (0x48, 0xD01): "HiSilicon Kunpeng-920", (0x48, 0xD02): "HiSilicon Kunpeng-930",
    (0x41, 0xD0C): "ARM Neoverse-N1", (0x41, 0xD40): "ARM Neoverse-V1", (0x41, 0xD49): "ARM Neoverse-N2",
    (0x41, 0xD4F): "ARM Neoverse-V2", (0x41, 0xD08): "ARM Cortex-A72", (0x70, 0x662): "Phytium FT-2000+/64",
    (0x70, 0x663): "Phytium S2500", (0xC0, 0xAC3): "Ampere Altra-Max", (0x41, 0xD0D): "ARM Cortex-A77",
}


# CPU vendors: x86 vendor_id strings and arm64 implementer codes, as lower-case keys.
X86_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "zhaoxin",
               "  Shanghai  ": "zhaoxin"}
ARM_VENDORS = {0x41: "arm", 0x48: "huawei", 0x70: "phytium", 0xC0: "ampere", 0x51: "qualcomm", 0x46: "fujitsu",
               0x4E: "nvidia", 0x61: "apple"}
# The features workloads ask for (/proc/cpuinfo 'flags' on x86, 'Features' on arm64); the rest are not reported.
CPU_FEATURES = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "aes", "sha_ni", "avx512f", "avx512dq", "avx512cd", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512ifma", "avx512vbmi", "avx_vnni", "amx_tile",
    "amx_bf16", "amx_int8", "vaes", "vpclmulqdq", "gfni",
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "sme", "bf16", "i8mm", "sm3", "sm4", "sha2", "sha3",
    "sha512", "atomics", "crc32", "pmull", "dcpop",
})


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def os_name(etc_root: Path = Path("/etc")) -> str:
    """'Ubuntu 22.04.4 LTS' from os-release's PRETTY_NAME, or NAME VERSION, or the kernel's system name."""
    fields: dict[str, str] = {}
    for source in (etc_root / "os-release", Path("/usr/lib/os-release")):
        for line in _read(source).splitlines():
            key, found, value = line.partition("=")
            if found:
                fields.setdefault(key.strip(), value.strip().strip('"').strip("'"))
        if fields:
            break
    if fields.get("PRETTY_NAME"):
        return fields["PRETTY_NAME"]
    name = " ".join(part for part in (fields.get("NAME"), fields.get("VERSION")) if part)
    return name or f"{platform.system()} {platform.release()}".strip() or "unknown"


def _cpuinfo_blocks(proc: Path) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = [{}]
    for line in _read(proc / "cpuinfo").splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, found, value = line.partition(":")
        if found:
            blocks[-1].setdefault(key.strip().lower(), value.strip())
    return [block for block in blocks if block]


def cpu_model(blocks: list[dict[str, str]]) -> str:
    for block in blocks:
        for key in ("model name", "cpu model", "processor name"):
            if block.get(key):
                return re.sub(r"\s+", " ", block[key])
    for block in blocks:
        implementer, part = block.get("cpu implementer"), block.get("cpu part")
        if implementer and part:
            try:
                known = ARM_CPUS.get((int(implementer, 16), int(part, 16)))
            except ValueError:
                known = None
            return known or f"arm64 implementer {implementer} part {part}"
    for block in blocks:
        if block.get("hardware"):
            return block["hardware"]
    return platform.processor() or platform.machine() or "unknown"


def cpu_sockets(blocks: list[dict[str, str]], sys_root: Path) -> int:
    ids = {block["physical id"] for block in blocks if "physical id" in block}
    if ids:
        return len(ids)
    packages = set()
    for path in (sys_root / "devices" / "system" / "cpu").glob("cpu[0-9]*/topology/physical_package_id"):
        value = _read(path).strip()
        if value:
            packages.add(value)
    return len(packages) or 1


def cpu_mhz(blocks: list[dict[str, str]]) -> float | None:
    try:
        frequency = psutil.cpu_freq()
    except Exception:  # not every platform exposes cpufreq
        frequency = None
    if frequency is not None and (frequency.max or frequency.current):
        return round(float(frequency.max or frequency.current), 1)
    values = []
    for block in blocks:
        try:
            values.append(float(block["cpu mhz"]))
        except (KeyError, ValueError):
            continue
    return round(max(values), 1) if values else None


def numa_nodes(sys_root: Path) -> int:
    nodes = [p for p in (sys_root / "devices" / "system" / "node").glob("node[0-9]*") if p.is_dir()]
    return len(nodes) or 1


def cpu_vendor(blocks: list[dict[str, str]]) -> str:
    """'intel', 'amd', 'hygon', 'huawei', 'phytium'…, or '' when /proc/cpuinfo does not say."""
    for block in blocks:
        raw = block.get("vendor_id")
        if raw:
            return X86_VENDORS.get(raw, X86_VENDORS.get(raw.strip(), raw.strip().lower()[:32]))
        implementer = block.get("cpu implementer")
        if implementer:
            try:
                return ARM_VENDORS.get(int(implementer, 16), f"arm-{int(implementer, 16):02x}")
            except ValueError:
                return ""
    return ""


def cpu_features(blocks: list[dict[str, str]]) -> list[str]:
    """The features of ``CPU_FEATURES`` the first CPU lists."""
    for block in blocks:
        flags = block.get("flags") or block.get("features")
        if flags:
            return sorted(CPU_FEATURES & set(flags.lower().split()))
    return []


def numa_layout(sys_root: Path) -> list[NumaNode]:
    """Each NUMA node's CPUs (``cpulist``) and memory (``meminfo``'s MemTotal); empty when /sys has no nodes."""
    out: list[NumaNode] = []
    for path in sorted((sys_root / "devices" / "system" / "node").glob("node[0-9]*"),
                       key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1):
        if not path.is_dir() or not path.name[4:].isdigit():
            continue
        try:
            cpus = format_cpu_list(parse_cpu_list(_read(path / "cpulist")))
        except ValueError:
            cpus = ""
        total = re.search(r"MemTotal:\s+(\d+)\s*kB", _read(path / "meminfo"))
        out.append(NumaNode(id=int(path.name[4:]), cpus=cpus, memory_mib=int(total.group(1)) // 1024 if total else 0))
    return out


def usable_cpus(threads: int) -> int:
    """Logical CPUs this process may run on (its affinity: a container's cpuset narrows it)."""
    try:
        return len(os.sched_getaffinity(0)) or threads
    except (AttributeError, OSError):
        return threads


def local_hostname() -> str:
    """This host's name as the agent reports it (its host id is ``host_id_for`` of it)."""
    return socket.gethostname() or platform.node() or "localhost"


def collect_host_facts(proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys"),
                       etc_root: Path = Path("/etc"), *, reserved_cpus: int = 1,
                       reserved_memory_mib: int = 2048) -> HostFacts:
    """This host's facts, from psutil, /proc, /sys and /etc; allocatable CPUs and memory less the reserves."""
    blocks = _cpuinfo_blocks(proc_root)
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or len(blocks) or 1
    cores = psutil.cpu_count(logical=False) or threads
    try:
        memory = psutil.virtual_memory().total // MIB
    except Exception:
        log.debug("psutil.virtual_memory failed", exc_info=True)
        total = re.search(r"MemTotal:\s+(\d+)\s*kB", _read(proc_root / "meminfo"))
        memory = int(total.group(1)) // 1024 if total else 0
    return HostFacts(
        hostname=local_hostname(),
        arch=platform.machine() or "unknown",
        os=os_name(etc_root),
        kernel=platform.release() or "unknown",
        cpu_model=cpu_model(blocks),
        cpu_sockets=cpu_sockets(blocks, sys_root),
        cpu_cores=cores,
        cpu_threads=threads,
        cpu_mhz=cpu_mhz(blocks),
        memory_mib=memory,
        numa_nodes=numa_nodes(sys_root),
        cpu_vendor=cpu_vendor(blocks),
        cpu_features=cpu_features(blocks),
        numa=numa_layout(sys_root),
        cpu_allocatable=max(0, min(threads, usable_cpus(threads)) - reserved_cpus),
        memory_allocatable_mib=max(0, memory - reserved_memory_mib),
    )
