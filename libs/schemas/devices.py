"""What a host is and what it has: the facts an agent reports.

These models cross process boundaries (agent → NATS → inventory/scheduler/metrics),
so they are versioned through the event type that carries them
(``io.xpumesh.host.capability`` with ``schema_version``) and validated on receipt.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


def device_id(host_id: str, vendor: str, index: int) -> str:
    """The mesh-wide id of a device, ``'<host>:<vendor>:<index>'`` (index within its vendor on the host).

    The inventory, the scheduler, metrics and the agent all name a device by this id."""
    return f"{host_id}:{vendor}:{index}"


def device_host(dev_id: str) -> str:
    """The host of a device id made by ``device_id`` (host ids are subject tokens, so hold no ':')."""
    return dev_id.split(":", 1)[0]


class HardwareType(StrEnum):
    """Vendor-neutral kinds of compute a workload can ask for."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    DCU = "dcu"
    MLU = "mlu"
    XPU = "xpu"
    GCU = "gcu"
    FPGA = "fpga"


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class Link(BaseModel):
    """A device-to-device connection as the vendor tool shows it (NVLink, HCCS, xGMI, PCIe…)."""

    model_config = ConfigDict(extra="forbid")

    peer_index: int = Field(description="Index of the peer device on the same host.")
    kind: str = Field(description="Link kind as shown by the tool, e.g. NV12, HCCS, XGMI, PIX, SYS.")


class Device(BaseModel):
    """One accelerator (or FPGA) as discovered on a host."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="Index of the device within its vendor on this host.")
    hardware_type: HardwareType
    vendor: str = Field(description="Lower-case vendor key: nvidia, amd, huawei, hygon, cambricon, kunlunxin, iluvatar, metax, mthreads, enflame, xilinx, intel.")
    model: str = Field(description="Model name as the catalog knows it, e.g. 'A100-SXM4-80GB', 'Ascend910B3'.")
    memory_mib: int | None = Field(default=None, ge=0, description="Total device memory in MiB.")
    driver_version: str | None = None
    runtimes: dict[str, str] = Field(default_factory=dict, description="Runtime name → version, e.g. {'cuda': '12.4'}, {'cann': '8.0.RC1'}, {'rocm': '6.0.2'}.")
    firmware_version: str | None = None
    uuid: str | None = Field(default=None, description="Vendor UUID or serial number.")
    pci_bus_id: str | None = None
    numa_node: int | None = None
    links: list[Link] = Field(default_factory=list)
    health: Health = Health.UNKNOWN
    extra: dict[str, str] = Field(default_factory=dict, description="Vendor-specific facts worth keeping (chip id, board id, MIG mode…).")


def parse_cpu_list(text: str) -> list[int]:
    """A Linux CPU list (``0-3,8,10-11``, as in ``cpulist`` and ``cpuset.cpus``) as CPU numbers; ValueError
    when malformed. At most 65,536 CPUs."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        a, b = int(lo), int(hi) if sep else int(lo)
        if a < 0 or b < a or b - a > 65535 or len(out) + b - a > 65535:
            raise ValueError(f"bad CPU range {part!r}")
        out.extend(range(a, b + 1))
    return sorted(set(out))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """CPU numbers as a Linux CPU list: ``[0, 1, 2, 3, 8]`` → ``0-3,8``."""
    nums = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)


class NumaNode(BaseModel):
    """One NUMA node of a host: its logical CPUs and memory."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0)
    cpus: str = Field(default="", max_length=4096, description="Its logical CPUs as a Linux CPU list, e.g. '0-47,96-143'.")
    memory_mib: int = Field(default=0, ge=0)

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: str) -> str:
        parse_cpu_list(v)  # raises ValueError with the reason
        return v

    def cpu_ids(self) -> list[int]:
        return parse_cpu_list(self.cpus)


class ShareEnforcement(StrEnum):
    """What holds a replica to its share of a device (``agent.shares``), in the order the agent tries them: a MIG
    instance, NVIDIA MPS's client limits, HAMi-core's limiter, an Ascend vNPU, or nothing (``advisory``: the
    replica is only told its share, in ``XPUMESH_SHARE``)."""

    MIG = "mig"
    MPS = "mps"
    HAMI_CORE = "hami-core"
    VNPU = "vnpu"
    ADVISORY = "advisory"


class HostFacts(BaseModel):
    """The host itself: CPU, memory, OS, and what of its CPUs and memory replicas may take."""

    model_config = ConfigDict(extra="forbid")

    hostname: str
    arch: str = Field(description="Machine architecture as the kernel names it: x86_64, aarch64.")
    os: str = Field(description="Operating system name and version, e.g. 'Ubuntu 22.04.4 LTS'.")
    kernel: str
    cpu_model: str
    cpu_sockets: int = Field(ge=0)
    cpu_cores: int = Field(ge=0, description="Physical cores.")
    cpu_threads: int = Field(ge=0, description="Logical CPUs.")
    cpu_mhz: float | None = None
    memory_mib: int = Field(ge=0)
    numa_nodes: int = Field(default=1, ge=0)
    cpu_vendor: str = Field(default="", max_length=32, description="Lower-case CPU vendor key: intel, amd, hygon, "
                            "zhaoxin, huawei (Kunpeng), phytium, ampere, arm…; empty when unknown.")
    cpu_features: list[str] = Field(default_factory=list, max_length=128,
                                    description="CPU features workloads ask for (avx2, avx512f, amx_tile, sve, asimd…), "
                                    "as /proc/cpuinfo names them; only the ones in agent.facts.CPU_FEATURES.")
    numa: list[NumaNode] = Field(default_factory=list, max_length=64, description="NUMA nodes with their CPUs and memory.")
    cpu_allocatable: int | None = Field(default=None, ge=0, description="Logical CPUs replicas may take (the CPUs the "
                                        "agent may use, less agent.reserved_cpus); unset: not reported.")
    memory_allocatable_mib: int | None = Field(default=None, ge=0, description="Host memory replicas may take (less "
                                               "agent.reserved_memory_gib); unset: not reported.")
    share_enforcement: dict[str, list[ShareEnforcement]] = Field(
        default_factory=dict, max_length=32, description="Per vendor of this host's devices, what may hold a replica "
        "to a share of one, in the order the agent tries them (always ending with 'advisory'; 'vnpu' under the "
        "docker driver only); empty: not reported (simulated hosts).")


class ProbeReport(BaseModel):
    """What one probe found, and what it could not read."""

    model_config = ConfigDict(extra="forbid")

    probe: str
    available: bool = Field(description="False when the vendor tool or library is absent on this host.")
    devices: list[Device] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class Discovery(BaseModel):
    """The output of ``xpumesh agent discover``: host facts plus every probe's report."""

    model_config = ConfigDict(extra="forbid")

    host: HostFacts
    devices: list[Device]
    probes: list[ProbeReport]
    labels: dict[str, str] = Field(default_factory=dict)
