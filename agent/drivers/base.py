"""What every driver shares: the launch plan, the run handle, the Driver protocol and the
environment a replica gets.

A replica's environment is built from an allow-list, never from the agent's own
environment (which holds the agent's credentials, e.g. ``XPUMESH_NATS_URL`` with its
password): ``replica_env`` takes the workload's own ``env`` (less any reserved name), the
devices' visible-device variables and the ``XPUMESH_*`` variables named in
``WORKLOAD_ENV_NAMES``, over a base the driver gives (the process driver: ``PATH``,
``HOME``, ``LANG``; the docker driver: nothing, the image has its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from pydantic import BaseModel, Field

from agent.shares import Handoff
from libs.schemas.commands import CommandDevice
from libs.schemas.devices import ShareEnforcement, format_cpu_list
from libs.schemas.workload import Variant, WorkloadSpec, reserved_env_name

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

# Every XPUMESH_* variable a replica may see: those the agent sets for it (``workload_env``
# and the executor's ``LaunchPlan.env``). Any other XPUMESH_* name (an agent setting such as
# XPUMESH_NATS_URL or XPUMESH_DATABASE_URL) never reaches a replica, whoever puts it there.
WORKLOAD_ENV_NAMES = frozenset({
    "XPUMESH_WORKLOAD_ID", "XPUMESH_WORKLOAD_NAME", "XPUMESH_REPLICA", "XPUMESH_REPLICAS", "XPUMESH_ATTEMPT",
    "XPUMESH_HOST", "XPUMESH_SITE", "XPUMESH_DEVICES", "XPUMESH_DEVICE_INDICES", "XPUMESH_VENDOR",
    "XPUMESH_HARDWARE_TYPE", "XPUMESH_SHARE", "XPUMESH_MEMORY_MIB", "XPUMESH_PEERS", "XPUMESH_CPUS",
    "XPUMESH_HOST_MEMORY_MIB",
    "XPUMESH_PORT", "XPUMESH_HOST_ADDRESS",
})
# Beyond XPUMESH_*: the port a service replica listens on, under the name most servers read.
SERVICE_ENV_NAMES = frozenset({"PORT"})
# PATH when the agent has none; LANG when the agent has none.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SAFE_LANG = "C.UTF-8"


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
    uid: int | None = Field(default=None, description="The replica's own uid (from the agent's range), held while it lives.")
    cgroup: str | None = Field(default=None, description="The replica's cgroup v2 directory, where it has one.")
    cpus: str | None = Field(default=None, description="The CPUs it is pinned to (a Linux CPU list), held while it lives.")
    share_enforcement: ShareEnforcement | None = Field(default=None, description="What holds it to its device share.")
    mig_uuid: str | None = Field(default=None, description="The MIG instance it holds, while it lives.")
    duration_s: float | None = None
    exit_code: int = 0


class Exit(NamedTuple):
    code: int | None
    message: str = ""


@dataclass(frozen=True)
class ServicePort:
    """Where a service replica is reached: the host address and the free host port the agent picked
    for it, and the port it listens on (the host port for a process, the spec's port in a container)."""

    address: str
    host_port: int
    listen_port: int


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
    cpus: tuple[int, ...] = ()  # the logical CPUs to pin it to (none: unpinned)
    memory_mib: int | None = None  # its host memory limit, where the driver can set one
    share: Handoff = field(default_factory=Handoff)  # how it is held to its device share (agent.shares)
    service: ServicePort | None = None


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


def device_env(plan: LaunchPlan, visible: Mapping[str, str]) -> dict[str, str]:
    """The devices' variables: ``visible`` (the vendor's visible-device variables), then those of the share's
    handoff, which replace any they name (a MIG instance's UUID in place of the GPU's index)."""
    return {**visible, **plan.share.env}


def workload_env(plan: LaunchPlan) -> dict[str, str]:
    """``XPUMESH_*`` variables every replica gets, whatever the driver."""
    devs = plan.devices
    env: dict[str, str] = {
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
    if plan.cpus:
        env["XPUMESH_CPUS"] = format_cpu_list(plan.cpus)
    if plan.memory_mib:
        env["XPUMESH_HOST_MEMORY_MIB"] = str(plan.memory_mib)
    if devs:
        env["XPUMESH_VENDOR"] = devs[0].vendor
        env["XPUMESH_HARDWARE_TYPE"] = str(devs[0].hardware_type)
        if any(d.share < 1 for d in devs):
            env["XPUMESH_SHARE"] = ",".join(f"{d.share:g}" for d in devs)
        if any(d.memory_mib is not None for d in devs):
            env["XPUMESH_MEMORY_MIB"] = ",".join(str(d.memory_mib or 0) for d in devs)
    if plan.service is not None:
        env["PORT"] = env["XPUMESH_PORT"] = str(plan.service.listen_port)
        env["XPUMESH_HOST_ADDRESS"] = plan.service.address
    return env


def host_base_env(home: Path) -> dict[str, str]:
    """The base of a replica run directly on the host: the agent's ``PATH`` and ``LANG`` (or safe
    defaults) and ``HOME`` set to the replica's own directory; nothing else of the agent's."""
    return {"PATH": os.environ.get("PATH") or SAFE_PATH, "HOME": str(home), "LANG": os.environ.get("LANG") or SAFE_LANG}


def replica_env(plan: LaunchPlan, device_env: Mapping[str, str], base: Mapping[str, str] | None = None
                ) -> dict[str, str]:
    """The allow-listed environment of a replica (later wins): ``base``, the workload's own ``env``
    without reserved names (the spec refuses them at submit; this drops them also from a spec
    that skipped that check), the devices' variables, then the agent's ``XPUMESH_*`` variables
    that ``WORKLOAD_ENV_NAMES`` lists."""
    env = dict(base or {})
    own = {k: v for k, v in plan.variant.env.items() if not reserved_env_name(k)}
    env.update(own)
    env.update(device_env)
    if "LD_PRELOAD" in device_env and own.get("LD_PRELOAD"):  # the share's limiter first, then the workload's
        env["LD_PRELOAD"] = f"{device_env['LD_PRELOAD']}:{own['LD_PRELOAD']}"
    ours = {**workload_env(plan), **plan.env}
    env.update({k: v for k, v in ours.items() if k in WORKLOAD_ENV_NAMES or k in SERVICE_ENV_NAMES})
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
