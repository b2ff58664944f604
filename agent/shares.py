"""How a replica holding a share of a device is held to it: the vendor's own mechanism where this
host has one, else nothing but the advisory ``XPUMESH_SHARE``.

The scheduler decides the share (``CommandDevice.share``, the compute fraction, and
``memory_mib``, the device memory reserved for it); the agent picks how to enforce it, in
this order, and says which in the replica's report (``ShareEnforcement``):

* ``mig``: the device is an NVIDIA GPU in MIG mode and the probe listed a MIG instance no live
  replica holds with at least the share's memory and compute slices: the replica sees only that
  instance (its ``MIG-…`` UUID in ``CUDA_VISIBLE_DEVICES``), a hardware partition.
* ``mps``: an NVIDIA GPU, ``agent.mps_pipe_directory`` set and its MPS control daemon's pipe
  (``control``) present: ``CUDA_MPS_PIPE_DIRECTORY`` names it,
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` is the share's compute fraction in percent (it can only
  lower the daemon's own default) and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` the memory reserved,
  ``<ordinal>=<MiB>M`` per device the client sees (NVIDIA, "Multi-Process Service", appendix
  "Environment Variables").
* ``hami-core``: an NVIDIA GPU and HAMi-core's ``libvgpu.so`` at ``agent.hami_core_library``:
  ``LD_PRELOAD`` loads it first, ``CUDA_DEVICE_MEMORY_LIMIT_<ordinal>`` (``<MiB>m``) caps the
  memory and ``CUDA_DEVICE_SM_LIMIT`` (percent) the SM use, and each replica gets its own
  accounting file (``CUDA_DEVICE_MEMORY_SHARED_CACHE``), as HAMi's device plugin gives each
  container one (Project-HAMi/HAMi-core, README "Usage" and
  ``src/multiprocess/multiprocess_memory_limit.c``). It is cooperative: a process that clears
  ``LD_PRELOAD`` before it starts CUDA escapes it.
* ``vnpu``: a Huawei Ascend chip whose model has published vNPU templates, under the docker
  driver with ``agent.ascend_vnpu`` on (the Ascend Docker Runtime is docker's runtime and
  vNPU restore is off): the smallest template with at least the share of the chip's AI cores,
  as ``ASCEND_VNPU_SPECS`` with the chip in ``ASCEND_VISIBLE_DEVICES``; the runtime cuts the
  vNPU as the container starts and destroys it when it ends (Huawei MindCluster, "Mounting
  vNPUs Using Ascend Docker Runtime", dynamic virtualization). Templates: Atlas inference
  chips (Ascend310P, 8 AI cores) vir01, vir02, vir04; Atlas training chips (Ascend910, 30 or
  32 AI cores, counted as 32) vir02, vir04, vir08, vir16. Other chips (Ascend910B) have none
  here.
* ``advisory``: anything else: ``XPUMESH_SHARE`` and ``XPUMESH_MEMORY_MIB`` tell the replica,
  nothing holds it to them.

Whole devices are not shares: their replicas report no enforcement (None).
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from libs.schemas.commands import CommandDevice
from libs.schemas.devices import Device, ShareEnforcement, device_id

log = logging.getLogger(__name__)

MPS_CONTROL_PIPE = "control"  # the control daemon's named pipe in CUDA_MPS_PIPE_DIRECTORY
HAMI_CACHE = "vgpu.cache"  # HAMi-core's accounting file, one per replica
# A MIG instance as ``nvidia-smi -L`` prints it: "  MIG 3g.40gb     Device  0: (UUID: MIG-…)"
_MIG_PROFILE = re.compile(r"^(\d+)g\.(\d+)gb")


@dataclass(frozen=True)
class MigInstance:
    """One MIG instance of a GPU: its UUID and profile (``3g.40gb``: 3 of the GPU's compute slices, 40 GB)."""

    uuid: str
    profile: str

    @property
    def slices(self) -> int:
        m = _MIG_PROFILE.match(self.profile)
        return int(m.group(1)) if m else 0

    @property
    def memory_mib(self) -> int:
        m = _MIG_PROFILE.match(self.profile)
        return int(m.group(2)) * 1000 * 1000 * 1000 // (1024 * 1024) if m else 0


def parse_mig_instances(text: str) -> list[MigInstance]:
    """The MIG instances listed in a device's ``mig_instances`` extra (``profile=UUID`` joined by ';')."""
    out = []
    for item in text.split(";"):
        profile, _, uuid = item.strip().partition("=")
        if profile and uuid.startswith("MIG-"):
            out.append(MigInstance(uuid, profile))
    return out


# Ascend chip model prefix → (AI cores, dynamic vNPU templates as (name, AI cores)), from Huawei's
# MindCluster documentation of ASCEND_VNPU_SPECS; the longest matching prefix wins.
VNPU_TEMPLATES: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {
    "Ascend310P": (8, (("vir01", 1), ("vir02", 2), ("vir04", 4))),
    "Ascend910": (32, (("vir02", 2), ("vir04", 4), ("vir08", 8), ("vir16", 16))),
}
NO_VNPU = ("Ascend910B", "Ascend910_93")  # Atlas A2/A3 chips: not in that template list


def vnpu_template(model: str, share: float) -> str | None:
    """The smallest dynamic vNPU template of ``model`` with at least ``share`` of its AI cores, or None."""
    if not model or model.startswith(NO_VNPU):
        return None
    prefix = max((p for p in VNPU_TEMPLATES if model.startswith(p)), key=len, default=None)
    if prefix is None:
        return None
    cores, templates = VNPU_TEMPLATES[prefix]
    return next((name for name, n in templates if n >= share * cores - 1e-9), None)


@dataclass(frozen=True)
class DeviceFacts:
    """What the agent's probe said of one device that matters to shares."""

    memory_mib: int = 0
    model: str = ""
    compute_slices: int = 7  # MIG compute slices of a whole GPU (A100, H100: 7)
    mig: tuple[MigInstance, ...] = ()


def device_facts(host_id: str, devices: Sequence[Device]) -> dict[str, DeviceFacts]:
    """What the probe reported of each device that shares need, by device id: its memory, and its MIG
    instances (``mig_instances``, set by the NVIDIA probe from ``nvidia-smi -L``)."""
    return {device_id(host_id, d.vendor, d.index): DeviceFacts(
        memory_mib=d.memory_mib or 0, model=d.model, mig=tuple(parse_mig_instances(d.extra.get("mig_instances", ""))))
        for d in devices}


@dataclass(frozen=True)
class Handoff:
    """How one replica is handed its share: the enforcement, the variables that do it (they replace the
    visible-device variables they name), files a container must see, and the MIG instance it holds."""

    enforcement: ShareEnforcement | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[str, ...] = ()  # host paths a container gets at the same path (the library, the MPS pipes)
    ipc_host: bool = False  # MPS clients in a container share the host's IPC namespace with the daemon
    mig_uuid: str | None = None
    vnpu: str | None = None  # the Ascend vNPU template the container runtime cuts for it


def _percent(share: float) -> int:
    return max(1, min(100, round(share * 100)))


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


class ShareMechanisms:
    """Picks each shared replica's enforcement from what this host has (see the module docstring)."""

    def __init__(self, *, mps_pipe_directory: Path | None, hami_core_library: Path | None,
                 ascend_vnpu: bool = False, facts: Mapping[str, DeviceFacts] | None = None) -> None:
        self.mps_pipe_directory = mps_pipe_directory
        self.hami_core_library = hami_core_library
        self.ascend_vnpu = ascend_vnpu
        self.facts = dict(facts or {})

    def mps_running(self) -> bool:
        return self.mps_pipe_directory is not None and _is_fifo(self.mps_pipe_directory / MPS_CONTROL_PIPE)

    def hami_core_present(self) -> bool:
        return self.hami_core_library is not None and self.hami_core_library.is_file()

    def summary(self, devices: Sequence[Device]) -> dict[str, list[ShareEnforcement]]:
        """Per vendor of ``devices``, what may hold a share of one of them here, in the order tried (for the
        host's facts: ``HostFacts.share_enforcement``)."""
        found: dict[str, set[ShareEnforcement]] = {}
        for d in devices:
            mechs = found.setdefault(d.vendor, set())
            if d.vendor == "nvidia":
                mechs |= {m for m, here in ((ShareEnforcement.MIG, bool(d.extra.get("mig_instances"))),
                                            (ShareEnforcement.MPS, self.mps_running()),
                                            (ShareEnforcement.HAMI_CORE, self.hami_core_present())) if here}
            elif d.vendor == "huawei" and self.ascend_vnpu and vnpu_template(d.model, 1 / 32) is not None:
                mechs.add(ShareEnforcement.VNPU)
        order = list(ShareEnforcement)  # the order handoff tries them in, advisory last
        return {v: sorted(m | {ShareEnforcement.ADVISORY}, key=order.index) for v, m in sorted(found.items())}

    def handoff(self, devices: Sequence[CommandDevice], workdir: Path, *, container: bool,
                mig_busy: Collection[str] = ()) -> Handoff:
        """The handoff for a replica on ``devices`` (its directory ``workdir``; ``container``: under the docker
        driver); ``mig_busy``: MIG instances live replicas hold."""
        shared = [d for d in devices if d.share < 1]
        if not shared:
            return Handoff()
        vendors = {d.vendor for d in shared}
        if vendors == {"nvidia"} and len(devices) == 1:
            mig = self._mig(shared[0], mig_busy)
            if mig is not None:
                return Handoff(ShareEnforcement.MIG, {"CUDA_VISIBLE_DEVICES": mig.uuid}, mig_uuid=mig.uuid)
        if vendors == {"nvidia"}:
            if self.mps_running():
                return self._mps(devices, container)
            if self.hami_core_present():
                return self._hami(devices, workdir, container)
        if vendors == {"huawei"} and container and self.ascend_vnpu and len(devices) == 1:
            spec = vnpu_template(self.facts.get(shared[0].id, DeviceFacts()).model, shared[0].share)
            if spec is not None:
                return Handoff(ShareEnforcement.VNPU, {"ASCEND_VISIBLE_DEVICES": str(shared[0].index),
                                                       "ASCEND_VNPU_SPECS": spec}, vnpu=spec)
        return Handoff(ShareEnforcement.ADVISORY)

    def _memory(self, d: CommandDevice) -> int:
        if d.memory_mib:
            return d.memory_mib
        return round(d.share * self.facts.get(d.id, DeviceFacts()).memory_mib)

    def _mig(self, d: CommandDevice, busy: Collection[str]) -> MigInstance | None:
        facts = self.facts.get(d.id)
        if facts is None or not facts.mig:
            return None
        need_mem, need_slices = self._memory(d), d.share * facts.compute_slices
        fits = [m for m in facts.mig if m.uuid not in busy and m.memory_mib >= need_mem and m.slices >= need_slices]
        return min(fits, key=lambda m: (m.slices, m.memory_mib, m.uuid)) if fits else None

    def _mps(self, devices: Sequence[CommandDevice], container: bool) -> Handoff:
        assert self.mps_pipe_directory is not None
        ordered = sorted(devices, key=lambda d: d.index)  # the client's ordinals follow CUDA_VISIBLE_DEVICES
        share = min(d.share for d in devices)
        env = {"CUDA_MPS_PIPE_DIRECTORY": str(self.mps_pipe_directory),
               "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(_percent(share)),
               "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": ",".join(f"{i}={self._memory(d)}M"
                                                            for i, d in enumerate(ordered) if self._memory(d))}
        if not env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]:
            del env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]
        return Handoff(ShareEnforcement.MPS, env, mounts=(str(self.mps_pipe_directory),) if container else (),
                       ipc_host=container)

    def _hami(self, devices: Sequence[CommandDevice], workdir: Path, container: bool) -> Handoff:
        assert self.hami_core_library is not None
        ordered = sorted(devices, key=lambda d: d.index)
        lib = str(self.hami_core_library)
        env = {"LD_PRELOAD": lib, "CUDA_DEVICE_SM_LIMIT": str(_percent(min(d.share for d in devices))),
               "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"/tmp/xpumesh-{HAMI_CACHE}" if container
               else str(workdir / HAMI_CACHE)}
        for i, d in enumerate(ordered):
            if self._memory(d):
                env[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{self._memory(d)}m"
        return Handoff(ShareEnforcement.HAMI_CORE, env, mounts=(lib,) if container else ())
