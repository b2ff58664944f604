"""What a host is and what it has: the facts an agent reports.

These models cross process boundaries (agent → NATS → inventory/scheduler/metrics),
so they are versioned through the event type that carries them
(``io.xpumesh.host.capability`` with ``schema_version``) and validated on receipt.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


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


class HostFacts(BaseModel):
    """The host itself: CPU, memory, OS."""

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
