"""What one replica asks for: devices (whole, a share, or compute units), or CPUs only, and the host's
CPUs and memory beside them.

``HardwareRequest`` is one alternative of a workload's ``hardware`` (a workload may list several,
tried in order, see ``WorkloadSpec.alternatives``); ``ResourceRequest`` is the host side of a
replica (logical CPUs and host memory), given once for the workload and optionally per
alternative. ``Demand`` is what validation, the quota check and placement read, built in one
place (``HardwareRequest.demand``).

Defaults: a replica that says nothing takes ``DEFAULT_MEMORY_GIB`` GiB of host memory and, when it
asks for devices, ``DEFAULT_CPU`` (no) logical CPUs: it is not pinned and shares the host's CPUs
with the system, as a Kubernetes pod without requests reserves none. A whole CPU by
default would let the CPU count, not the devices, cap how many replicas a host takes (a host with
few CPUs left, or many replicas sharing its devices, would strand its devices). CPU-only work
holds at least ``DEFAULT_CPU_ONLY`` CPU and names its CPUs in ``resources.cpu``.
"""

from __future__ import annotations

import math
import re
from typing import Literal, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.schemas.devices import HardwareType
from libs.versions import Requirement

__all__ = [
    "ARCH_ALIASES",
    "DEFAULT_CPU",
    "DEFAULT_CPU_ONLY",
    "DEFAULT_MEMORY_GIB",
    "Demand",
    "HardwareRequest",
    "ResourceRequest",
    "check_requires",
    "normal_arch",
]

_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_FEATURE = re.compile(r"^[a-z0-9][a-z0-9_.]{0,31}$")
DEFAULT_CPU = 0
DEFAULT_CPU_ONLY = 1
DEFAULT_MEMORY_GIB = 1.0
MAX_MODELS = 16
# What people write for an architecture, as the kernel names it (``uname -m``).
ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "armv8": "aarch64",
                "loong64": "loongarch64", "riscv": "riscv64"}


def normal_arch(arch: str) -> str:
    """``arm64`` → ``aarch64``, ``amd64`` → ``x86_64``; any other name lower-cased as is."""
    a = arch.strip().lower()
    return ARCH_ALIASES.get(a, a)


def check_requires(v: list[str]) -> list[str]:
    """Runtime requirements ('cuda>=12.4', 'cann>=8.1.RC1,<8.2.RC1'): each parses, and no runtime twice."""
    names: set[str] = set()
    for i, text in enumerate(v):
        try:
            req = Requirement.parse(text)
        except ValueError as exc:
            raise ValueError(f"requires[{i}]: {exc}") from None
        if req.name in names:
            raise ValueError(f"requires[{i}]: runtime {req.name!r} listed twice; join the clauses with ','")
        names.add(req.name)
    return v


class Demand(NamedTuple):
    """What one replica asks for, read from the spec in this one place (``HardwareRequest.demand``).

    Validation, the quota check at submit and placement all start from it:

    * ``hardware_type``: the type asked for, None for 'any' ('cpu' for CPU-only work);
    * ``devices``: whole devices per replica, or the fraction of one device when ``shared``;
      0 for a compute-unit request (placement chooses how many devices reach it) and for CPU-only work;
    * ``shared``: the replica takes a fraction of one device;
    * ``compute_units``: per replica, only with type 'any' (None otherwise);
    * ``memory_gib``: per device; with a share, what is reserved on the shared device;
    * ``cpu``: logical CPUs of the host per replica; ``host_memory_mib``: host memory per replica.
    """

    hardware_type: str | None
    devices: float
    shared: bool
    compute_units: float | None
    memory_gib: float | None
    cpu: int = DEFAULT_CPU
    host_memory_mib: int = math.ceil(DEFAULT_MEMORY_GIB * 1024)

    def devices_for(self, replicas: int) -> float:
        """Devices ``replicas`` replicas hold at once (shares as fractions)."""
        return replicas * self.devices

    def compute_units_for(self, replicas: int) -> float | None:
        return None if self.compute_units is None else replicas * self.compute_units


class ResourceRequest(BaseModel):
    """The host's share of a replica: logical CPUs and host memory (besides any devices)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"cpu": 32, "memory_gib": 256}]})

    cpu: int | None = Field(default=None, ge=0, le=4096,
                            description=f"Logical CPUs per replica (whole CPUs, which the agent pins where it can). "
                            f"Unset: {DEFAULT_CPU} beside devices (no CPU reserved, nothing pinned), "
                            f"{DEFAULT_CPU_ONLY} for CPU-only work (which always holds at least that).",
                            examples=[32])
    memory_gib: float | None = Field(default=None, ge=0, le=65536,
                                     description=f"Host memory per replica (GiB), also its limit where the driver "
                                     f"can set one. Unset: {DEFAULT_MEMORY_GIB:g}.", examples=[256])


class HardwareRequest(BaseModel):
    """What each replica needs: whole devices, a fraction of one, an amount of compute, or only CPUs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"type": "gpu", "vendor": "nvidia", "model": "A100*", "count": 8},
                {"type": "npu", "count": 2, "memory_gib": 32},
                {"type": "gpu", "share": 0.5, "memory_gib": 20},
                {"type": "any", "compute_units": 600},
                {"type": "cpu", "arch": "aarch64"},
                {"type": "gpu", "model": ["V100*", "A100*"], "count": 4, "resources": {"cpu": 32}},
            ]
        },
    )

    type: HardwareType | Literal["any"] = Field(
        description="Hardware type, or 'any' to let the scheduler pick (then give compute_units or count). "
        "'cpu': CPU-only work, the CPUs given in resources.cpu.",
        examples=["gpu", "npu", "any", "cpu"],
    )
    vendor: str | None = Field(
        default=None,
        description="Lower-case vendor key (nvidia, huawei, amd, hygon, cambricon…). Unset: any vendor. With type "
        "'cpu', the CPU's vendor (intel, amd, hygon, huawei, phytium, ampere…).",
        examples=["nvidia", "huawei"],
    )
    model: str | list[str] | None = Field(
        default=None,
        description="Model name glob, or a list of globs (any may match), matched case-insensitively against the "
        "catalog model name; with type 'cpu', against the host's CPU model.",
        examples=["A100*", ["V100*", "A100*"], "Kunpeng*"],
    )
    count: int = Field(default=1, ge=1, le=64, description="Devices per replica, all on one host.", examples=[1, 8])
    memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="Minimum memory per device (GiB). With share, the memory reserved on the shared device.",
        examples=[40, 16.5],
    )
    share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of one device in (0, 1], for sharing a device. A share below 1 implies count 1.",
        examples=[0.25, 0.5],
    )
    compute_units: float | None = Field(
        default=None,
        gt=0,
        description="Vendor-neutral amount of compute per replica (1 CU = 1 dense FP16 TFLOPS). Only with "
        "type 'any': the scheduler picks devices of one kind on one host whose compute units add up to it.",
        examples=[300, 1000],
    )
    arch: str | None = Field(default=None, max_length=32,
                             description="The host's CPU architecture as the kernel names it (x86_64, aarch64; "
                             "arm64 and amd64 are accepted). Unset: any.", examples=["aarch64"])
    cpu_features: list[str] = Field(default_factory=list, max_length=16,
                                    description="CPU features the host must have, as /proc/cpuinfo names them "
                                    "(avx2, avx512f, amx_tile, sve, asimd…).", examples=[["avx512f"]])
    resources: ResourceRequest | None = Field(default=None,
                                              description="This alternative's CPUs and host memory per replica, "
                                              "instead of the workload's resources.")
    variant: str | None = Field(default=None, description="The key in variants to run with when this alternative "
                                "is taken (else: vendor, hardware type, default).", examples=["cuda"])
    requires: list[str] = Field(default_factory=list, max_length=8,
                                description="Runtime requirements of this alternative only, beside the workload's "
                                "runtime.requires (e.g. 'cuda>=12.4' for a CUDA build, 'cann>=8.1.RC1' for an Ascend "
                                "one); checked by the same driver/runtime rules.", examples=[["cuda>=12.4"]])

    @field_validator("type", mode="before")
    @classmethod
    def _type_known(cls, v: object) -> object:
        allowed = [t.value for t in HardwareType] + ["any"]
        if not isinstance(v, str) or v not in allowed:
            raise ValueError(f"type must be one of {', '.join(allowed)}; got {v!r}")
        return v

    @field_validator("vendor", "variant")
    @classmethod
    def _vendor_key(cls, v: str | None) -> str | None:
        if v is not None and not _KEY.match(v):
            raise ValueError(f"must be a lower-case key like 'nvidia' or 'huawei', got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _model_glob(cls, v: str | list[str] | None) -> str | list[str] | None:
        globs = [v] if isinstance(v, str) else v or []
        if isinstance(v, list) and not v:
            raise ValueError("model must list at least one glob; leave it unset to accept any model")
        if len(globs) > MAX_MODELS:
            raise ValueError(f"model lists at most {MAX_MODELS} globs")
        if any(not g.strip() for g in globs):
            raise ValueError("model must not be empty; leave it unset to accept any model")
        return v

    @field_validator("requires")
    @classmethod
    def _requires(cls, v: list[str]) -> list[str]:
        return check_requires(v)

    def requirements(self) -> list[Requirement]:
        return [Requirement.parse(r) for r in self.requires]

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is None:
            return None
        a = normal_arch(v)
        if not _KEY.match(a):
            raise ValueError(f"arch must be a machine name like x86_64 or aarch64, got {v!r}")
        return a

    @field_validator("cpu_features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        out = []
        for f in v:
            name = f.strip().lower()
            if not _FEATURE.match(name):
                raise ValueError(f"cpu feature {f!r} must be a /proc/cpuinfo flag name like avx512f or sve")
            out.append(name)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.share is not None and self.share < 1 and self.count != 1:
            raise ValueError(f"share {self.share} < 1 shares one device, so count must be 1 (got count={self.count})")
        if self.compute_units is not None:
            if self.type != "any":
                raise ValueError(f"compute_units is only allowed with type 'any' (got type {self.type!r}); "
                                 "ask for count devices of a given type instead")
            if self.share is not None:
                raise ValueError("compute_units and share cannot be combined")
            if self.count != 1:
                raise ValueError("compute_units and count cannot be combined: the scheduler chooses the device count")
        if self.type == HardwareType.CPU:
            if self.count != 1:
                raise ValueError(f"type 'cpu' takes its CPUs from resources.cpu, not count (got count={self.count})")
            if self.share is not None or self.memory_gib is not None:
                raise ValueError("type 'cpu' has no device to share or device memory; host memory is "
                                 "resources.memory_gib")
            if self.resources is not None and self.resources.cpu == 0:
                raise ValueError("type 'cpu' needs at least one CPU in resources.cpu")
        return self

    @property
    def models(self) -> tuple[str, ...]:
        """The model globs (empty: any model)."""
        if self.model is None:
            return ()
        return (self.model,) if isinstance(self.model, str) else tuple(self.model)

    @property
    def is_shared(self) -> bool:
        """True when a replica takes a fraction of one device rather than whole devices."""
        return self.share is not None and self.share < 1

    @property
    def is_cpu(self) -> bool:
        return self.type == HardwareType.CPU

    def demand_with(self, resources: ResourceRequest | None = None) -> Demand:
        """What one replica asks for (see ``Demand``), this alternative's resources first, then ``resources``
        (the workload's), then the defaults."""
        mine, base = self.resources or ResourceRequest(), resources or ResourceRequest()
        cpu = mine.cpu if mine.cpu is not None else base.cpu if base.cpu is not None else DEFAULT_CPU
        mem_gib = mine.memory_gib if mine.memory_gib is not None else (
            base.memory_gib if base.memory_gib is not None else DEFAULT_MEMORY_GIB)
        if self.is_cpu:
            cpu = max(DEFAULT_CPU_ONLY, cpu)
        shared = self.is_shared
        if self.compute_units is not None or self.is_cpu:
            devices = 0.0
        elif shared:
            devices = float(self.share or 1.0)
        else:
            devices = float(self.count)
        return Demand(None if self.type == "any" else str(self.type), devices, shared, self.compute_units,
                      self.memory_gib, cpu, math.ceil(mem_gib * 1024))

    @property
    def demand(self) -> Demand:
        """What one replica asks for with only this alternative's own resources (else the defaults)."""
        return self.demand_with(None)

    def describe(self) -> str:
        """A short text for explanations and events: '8 x gpu H100*', 'cpu aarch64', '0.5 of a gpu'."""
        if self.is_cpu:
            what = "cpu"
        elif self.compute_units is not None:
            what = f"{self.compute_units:g} CU"
        elif self.is_shared:
            what = f"{self.share:g} of a {self.type}"
        else:
            what = f"{self.count} x {self.type}"
        extra = [x for x in (self.vendor, "|".join(self.models) or None, self.arch,
                             f"variant {self.variant}" if self.variant else None) if x]
        return " ".join([what, *extra])
