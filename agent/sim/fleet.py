"""The simulated fleet: which hosts exist, where, and with what hardware and software.

Profiles describe realistic host types of Chinese data centres: NVIDIA (A100, H100, L40S,
T4), Huawei Ascend 910B and 310P, Hygon DCU (K100_AI, Z100), Cambricon MLU370,
Kunlunxin (R200, P800), and CPU-only x86 and ARM servers. Model names are exactly the
catalog's; driver and runtime versions come in pairs that exist (NVIDIA 535 → CUDA 12.2,
550 → CUDA 12.4, 470 → CUDA 11.4; Ascend driver 24.1.rc2 → CANN 8.0.RC3 …), some hosts on
older stacks. The same seed and size always give the same fleet.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.discover import derive_labels
from libs.schemas.devices import Device, HardwareType, Health, HostFacts, Link, NumaNode, format_cpu_list
from libs.sites import DEMO_SITES

Stack = tuple[str, dict[str, str], float]  # driver, runtimes, weight


@dataclass(frozen=True)
class Profile:
    name: str
    hardware_type: HardwareType | None
    vendor: str
    model: str
    count: int
    memory_mib: int
    tdp_w: float
    stacks: tuple[Stack, ...]
    arch: str = "x86_64"
    cpu_model: str = "Intel(R) Xeon(R) Platinum 8468"
    cpu_threads: int = 192
    host_memory_mib: int = 2_063_600
    os: str = "Ubuntu 22.04.4 LTS"
    kernel: str = "5.15.0-105-generic"
    link_kind: str | None = None
    network: tuple[tuple[str, bool], ...] = ()
    firmware: str | None = None


IB = (("rdma", True), ("infiniband", True), ("roce", False))
ROCE = (("rdma", True), ("infiniband", False), ("roce", True))
KUNPENG: dict[str, Any] = {"arch": "aarch64", "cpu_model": "HiSilicon Kunpeng-920", "cpu_threads": 192,
           "os": "openEuler 22.03 (LTS-SP2)", "kernel": "5.10.0-182.0.0.95.oe2203sp2.aarch64"}
HYGON_CPU: dict[str, Any] = {"cpu_model": "Hygon C86 7390 32-core Processor", "cpu_threads": 128,
             "os": "Kylin Linux Advanced Server V10 (Lance)", "kernel": "4.19.90-52.22.v2207.ky10.x86_64"}

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("h100", HardwareType.GPU, "nvidia", "H100-80GB-HBM3", 8, 81559, 700.0,
            (("550.54.15", {"cuda": "12.4"}, 0.7), ("535.161.08", {"cuda": "12.2"}, 0.3)),
            link_kind="NV18", network=IB),
    Profile("a100", HardwareType.GPU, "nvidia", "A100-SXM4-80GB", 8, 81920, 400.0,
            (("535.129.03", {"cuda": "12.2"}, 0.5), ("550.90.07", {"cuda": "12.4"}, 0.35),
             ("525.105.17", {"cuda": "12.0"}, 0.15)),
            cpu_model="AMD EPYC 7763 64-Core Processor", cpu_threads=256, link_kind="NV12", network=IB),
    Profile("l40s", HardwareType.GPU, "nvidia", "L40S", 4, 46068, 350.0,
            (("550.54.15", {"cuda": "12.4"}, 0.6), ("535.161.08", {"cuda": "12.2"}, 0.4)),
            cpu_threads=128, host_memory_mib=1_031_800, network=ROCE),
    Profile("t4", HardwareType.GPU, "nvidia", "T4", 4, 15360, 70.0,
            (("535.161.08", {"cuda": "12.2"}, 0.5), ("470.239.06", {"cuda": "11.4"}, 0.5)),
            cpu_model="Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz", cpu_threads=96, host_memory_mib=515_900),
    Profile("910b", HardwareType.NPU, "huawei", "Ascend910B3", 8, 65536, 400.0,
            (("24.1.rc2", {"cann": "8.0.RC3"}, 0.6), ("23.0.3", {"cann": "7.0.0"}, 0.4)),
            link_kind="HCCS", network=ROCE, firmware="7.3.0.1.231", **KUNPENG),
    Profile("310p", HardwareType.NPU, "huawei", "Ascend310P3", 4, 24576, 72.0,
            (("24.1.rc1", {"cann": "8.0.RC2"}, 0.5), ("23.0.3", {"cann": "7.0.0"}, 0.5)),
            firmware="7.1.0.6.220", **KUNPENG),
    Profile("k100", HardwareType.DCU, "hygon", "K100_AI", 8, 65536, 300.0,
            (("6.2.17a", {"dtk": "24.04.1"}, 0.7), ("6.2.17a", {"dtk": "24.04"}, 0.3)),
            link_kind="XGMI", network=ROCE, **HYGON_CPU),
    Profile("z100", HardwareType.DCU, "hygon", "Z100", 8, 32768, 300.0,
            (("5.16.15", {"dtk": "23.04.1"}, 1.0),), **HYGON_CPU),
    Profile("mlu370", HardwareType.MLU, "cambricon", "MLU370-X8", 8, 24576, 125.0,
            (("5.10.29", {"neuware": "3.10.1"}, 0.6), ("5.10.22", {"neuware": "3.7.2"}, 0.4)),
            link_kind="MLU-Link", network=ROCE),
    Profile("r200", HardwareType.XPU, "kunlunxin", "R200", 8, 16384, 150.0,
            (("4.31.0", {"xre": "4.31.0"}, 1.0),), cpu_threads=128),
    Profile("p800", HardwareType.XPU, "kunlunxin", "P800", 8, 98304, 400.0,
            (("5.0.21", {"xre": "5.0.21.15"}, 1.0),), link_kind="XPU-Link", network=ROCE),
    Profile("cpu-x86", None, "", "", 0, 0, 0.0, (("", {}, 1.0),), cpu_model="Hygon C86 7285 32-core Processor",
            cpu_threads=128, host_memory_mib=515_900, os="Kylin Linux Advanced Server V10 (Lance)"),
    Profile("cpu-arm", None, "", "", 0, 0, 0.0, (("", {}, 1.0),), arch="aarch64", cpu_model="Phytium S2500",
            cpu_threads=128, host_memory_mib=515_900, os="Kylin Linux Advanced Server V10 (Lance)",
            kernel="4.19.90-52.22.v2207.ky10.aarch64"),
)}

# Hub: large training clusters. Coastal cities: inference and mixed. Inland: domestic chips, CPU.
_HUB_MIX = {"h100": 5, "a100": 5, "910b": 5, "l40s": 2, "k100": 2, "p800": 2, "mlu370": 1, "cpu-x86": 2, "cpu-arm": 1}
_CITY_MIX = {"a100": 2, "l40s": 3, "t4": 3, "910b": 3, "310p": 3, "k100": 2, "z100": 1, "mlu370": 2, "r200": 2,
             "p800": 1, "cpu-x86": 3, "cpu-arm": 2}
_WEIGHT = {"hangzhou": 4.0, "ningbo": 2.0, "wenzhou": 1.5, "jiaxing": 1.2, "shaoxing": 1.0, "jinhua": 1.0,
           "taizhou": 1.0, "huzhou": 0.8, "zhoushan": 0.5, "quzhou": 0.5, "lishui": 0.5}
DEFAULT_HOSTS = 160
_PROFILE_ORDER = tuple(PROFILES)


@dataclass
class HostSpec:
    """One simulated host's fixed facts."""

    host_id: str
    site: str
    profile: Profile
    facts: HostFacts
    devices: list[Device]
    labels: dict[str, str]
    load_bias: float = field(default=1.0)


def _pick_stack(profile: Profile, rng: random.Random) -> Stack:
    return rng.choices(profile.stacks, weights=[s[2] for s in profile.stacks])[0]


def _devices(profile: Profile, host_id: str, rng: random.Random) -> list[Device]:
    if profile.hardware_type is None:
        return []
    driver, runtimes, _ = _pick_stack(profile, rng)
    out = []
    for i in range(profile.count):
        links = [Link(peer_index=j, kind=profile.link_kind) for j in range(profile.count) if j != i] \
            if profile.link_kind else []
        out.append(Device(index=i, hardware_type=profile.hardware_type, vendor=profile.vendor, model=profile.model,
                          memory_mib=profile.memory_mib, driver_version=driver, runtimes=dict(runtimes),
                          firmware_version=profile.firmware, uuid=f"{profile.vendor[:3].upper()}-{host_id}-{i}",
                          pci_bus_id=f"0000:{0x18 + i * 0x10:02x}:00.0", numa_node=0 if i < profile.count // 2 else 1,
                          links=links, health=Health.HEALTHY))
    return out


# CPU model prefix → (vendor key, the features of agent.facts.CPU_FEATURES that line has), from the vendors'
# product pages (Sapphire Rapids: AMX and AVX-512; Cascade Lake: AVX-512 with VNNI; Zen 3 and Hygon C86
# (Zen 1): AVX2 only; Kunpeng 920 and Phytium S2500 (ARMv8.2): NEON (asimd), no SVE).
CPU_LINES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Intel(R) Xeon(R) Platinum 84": ("intel", ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                               "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")),
    "Intel(R) Xeon(R) Gold 62": ("intel", ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")),
    "AMD EPYC 7": ("amd", ("avx", "avx2", "fma", "sha_ni")),
    "Hygon C86": ("hygon", ("avx", "avx2", "fma", "sha_ni")),
    "HiSilicon Kunpeng": ("huawei", ("asimd", "asimdhp", "asimddp", "fphp", "atomics", "crc32", "sha2")),
    "Phytium": ("phytium", ("asimd", "atomics", "crc32", "sha2")),
}
SIM_RESERVED_CPUS = 2  # what a simulated agent keeps back of its host (its own settings' defaults are smaller)
SIM_RESERVED_MEMORY_MIB = 8192


def _facts(profile: Profile, host_id: str) -> HostFacts:
    """A host's facts as its agent would report them: two sockets, one NUMA node each holding half the CPUs
    and memory, allocatable less the simulated agent's reserve."""
    threads = profile.cpu_threads
    vendor, features = next((v for k, v in CPU_LINES.items() if profile.cpu_model.startswith(k)), ("", ()))
    half = threads // 2
    numa = [NumaNode(id=0, cpus=format_cpu_list(range(half)), memory_mib=profile.host_memory_mib // 2),
            NumaNode(id=1, cpus=format_cpu_list(range(half, threads)), memory_mib=profile.host_memory_mib // 2)]
    return HostFacts(hostname=host_id, arch=profile.arch, os=profile.os, kernel=profile.kernel,
                     cpu_model=profile.cpu_model, cpu_sockets=2, cpu_cores=threads // 2, cpu_threads=threads,
                     memory_mib=profile.host_memory_mib, numa_nodes=2, cpu_vendor=vendor,
                     cpu_features=sorted(features), numa=numa, cpu_allocatable=max(0, threads - SIM_RESERVED_CPUS),
                     memory_allocatable_mib=max(0, profile.host_memory_mib - SIM_RESERVED_MEMORY_MIB))


def site_counts(total: int, only: Sequence[str] = ()) -> dict[str, int]:
    """Spread ``total`` hosts over the demo sites (``only`` these, when given) by weight; every site gets at
    least one."""
    known = [s.id for s in DEMO_SITES]
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise ValueError(f"unknown sites {unknown}; the demo sites are {known}")
    sites = [s for s in known if s in only] if only else known
    if total < len(sites):
        return {s: 1 for s in sites[:total]}
    weights = [_WEIGHT.get(s, 1.0) for s in sites]
    scale = (total - len(sites)) / sum(weights)
    counts = {s: 1 + int(w * scale) for s, w in zip(sites, weights, strict=True)}
    rest = total - sum(counts.values())
    for s in sorted(sites, key=lambda s: -_WEIGHT.get(s, 1.0))[:rest]:
        counts[s] += 1
    return counts


def build_fleet(hosts: int | None = None, seed: int = 7, devices_per_host: int | None = None,
                prefix: str = "", sites: Sequence[str] = ()) -> list[HostSpec]:
    """The demo fleet (``DEFAULT_HOSTS`` hosts over 11 cities) or one of the size asked for.

    ``devices_per_host`` (benchmarks): only accelerator hosts, each with that many devices.
    ``prefix`` starts every host id, so that several simulators can share one mesh; ``sites`` (names of
    demo sites) keeps the hosts on those sites only, e.g. to give one simulator's hosts sites of their own.
    """
    rng = random.Random(seed)
    out: list[HostSpec] = []
    for s, (site, n) in enumerate(site_counts(hosts or DEFAULT_HOSTS, sites).items()):
        mix = _HUB_MIX if site == "hangzhou" else _CITY_MIX
        if devices_per_host is not None:
            mix = {k: w for k, w in mix.items() if PROFILES[k].hardware_type is not None}
        names = list(mix)
        # The first hosts of a site cycle through its mix (each site starting elsewhere in it),
        # so even a small fleet shows every kind of hardware.
        chosen = [names[(s + i) % len(names)] for i in range(min(n, len(names)))]
        chosen += rng.choices(names, weights=[mix[k] for k in names], k=n - len(chosen))
        for i, name in enumerate(chosen):
            profile = PROFILES[name]
            if devices_per_host is not None:
                profile = replace(profile, count=devices_per_host)
            host_id = f"{prefix}{site}-{name}-{i:05d}"
            facts = _facts(profile, host_id)
            devices = _devices(profile, host_id, rng)
            labels = derive_labels(facts, devices, dict(profile.network))
            out.append(HostSpec(host_id, site, profile, facts, devices, labels, load_bias=rng.uniform(0.6, 1.3)))
    return out
