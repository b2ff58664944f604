"""What every driver shares: the launch plan, the run handle, the Driver protocol and the
environment a replica gets (its vendor's visible-device variables and ``XPUMESH_*``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from pydantic import BaseModel, Field

from libs.schemas.commands import CommandDevice
from libs.schemas.workload import Variant, WorkloadSpec

# The variable(s) each vendor's runtime reads to pick devices, by the index the vendor's own
# tool prints. AMD: HIP_VISIBLE_DEVICES only (ROCR_VISIBLE_DEVICES would filter first and
# renumber, so setting both with the same indices is wrong). Hygon DTK is HIP. MetaX MACA
# and Iluvatar CoreX are CUDA-compatible and read CUDA_VISIBLE_DEVICES.
VISIBLE_DEVICES_ENV: dict[str, tuple[str, ...]] = {
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
    "amd": ("HIP_VISIBLE_DEVICES",),
    "hygon": ("HIP_VISIBLE_DEVICES",),
    "huawei": ("ASCEND_RT_VISIBLE_DEVICES",),
    "cambricon": ("MLU_VISIBLE_DEVICES",),
    "kunlunxin": ("XPU_VISIBLE_DEVICES",),
    "iluvatar": ("CUDA_VISIBLE_DEVICES",),
    "metax": ("CUDA_VISIBLE_DEVICES",),
    "mthreads": ("MUSA_VISIBLE_DEVICES",),
    "enflame": ("TOPS_VISIBLE_DEVICES",),
}


class LaunchError(Exception):
    """A launch that cannot start; the message is ours and safe to report."""


class RunHandle(BaseModel):
    """Enough to find a running replica again, also after an agent restart (persisted as JSON)."""

    workload_id: str
    replica: int
    attempt: int
    driver: str
    started_at: datetime
    workdir: str | None = None
    pid: int | None = None
    create_time: float | None = Field(default=None, description="Process start time, so a reused pid is not mistaken.")
    container: str | None = None
    duration_s: float | None = None
    exit_code: int = 0


class Exit(NamedTuple):
    code: int | None
    message: str = ""


@dataclass(frozen=True)
class LaunchPlan:
    """What to run: resolved by the executor from a launch command."""

    workload_id: str
    replica: int
    attempt: int
    replicas: int
    host_id: str
    site: str
    devices: Sequence[CommandDevice]
    variant: Variant
    spec: WorkloadSpec
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)


class Driver(Protocol):
    """How replicas run on a host. ``wait`` returns when the replica ends (also for adopted runs)."""

    name: str

    async def start(self, plan: LaunchPlan) -> RunHandle: ...

    async def wait(self, handle: RunHandle) -> Exit: ...

    async def stop(self, handle: RunHandle, grace_s: float) -> None: ...

    async def alive(self, handle: RunHandle) -> bool: ...

    async def logs(self, handle: RunHandle, tail_bytes: int) -> tuple[str, bool]: ...


def visible_devices_env(devices: Sequence[CommandDevice]) -> dict[str, str]:
    """The vendor's visible-device variables for these devices (all of one vendor on one host)."""
    env: dict[str, str] = {}
    by_vendor: dict[str, list[int]] = {}
    for d in devices:
        by_vendor.setdefault(d.vendor, []).append(d.index)
    for vendor, indices in by_vendor.items():
        value = ",".join(str(i) for i in sorted(indices))
        for name in VISIBLE_DEVICES_ENV.get(vendor, ()):
            env[name] = value
    return env


def workload_env(plan: LaunchPlan) -> dict[str, str]:
    """``XPUMESH_*`` variables every replica gets, whatever the driver."""
    devs = plan.devices
    env = {
        "XPUMESH_WORKLOAD_ID": plan.workload_id,
        "XPUMESH_WORKLOAD_NAME": plan.spec.name,
        "XPUMESH_REPLICA": str(plan.replica),
        "XPUMESH_REPLICAS": str(plan.replicas),
        "XPUMESH_ATTEMPT": str(plan.attempt),
        "XPUMESH_HOST": plan.host_id,
        "XPUMESH_SITE": plan.site,
        "XPUMESH_DEVICES": ",".join(d.id for d in devs),
        "XPUMESH_DEVICE_INDICES": ",".join(str(d.index) for d in devs),
    }
    if devs:
        env["XPUMESH_VENDOR"] = devs[0].vendor
        env["XPUMESH_HARDWARE_TYPE"] = str(devs[0].hardware_type)
        if any(d.share < 1 for d in devs):
            env["XPUMESH_SHARE"] = ",".join(f"{d.share:g}" for d in devs)
        if any(d.memory_mib is not None for d in devs):
            env["XPUMESH_MEMORY_MIB"] = ",".join(str(d.memory_mib or 0) for d in devs)
    return env


def read_tail(paths: Sequence[Path], tail_bytes: int) -> tuple[str, bool]:
    """The last ``tail_bytes`` of the concatenation of ``paths`` (older first); truncated flag."""
    chunks: list[bytes] = []
    need = tail_bytes
    more = False
    for p in reversed(paths):
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            continue
        if need <= 0:
            more = more or size > 0
            continue
        with p.open("rb") as f:
            if size > need:
                f.seek(size - need)
                more = True
            data = f.read(need)
        chunks.append(data)
        need -= len(data)
    return b"".join(reversed(chunks)).decode("utf-8", errors="replace"), more
