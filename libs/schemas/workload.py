"""The workload spec: what a user asks to run, on what, and where.

One model is shared by the gateway (validates the request body), the scheduler (places
it) and the agent (runs the chosen variant). Every field is validated here so the three
agree; errors name the field and the reason.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from libs.schemas.devices import HardwareType
from libs.schemas.hardware import Demand, HardwareRequest, ResourceRequest, check_requires
from libs.versions import Requirement, SpecifierSet, Version

__all__ = [
    "DEVICE_ENV_NAMES",
    "SIM_EXIT_CODE_ENV",
    "Demand",
    "HardwareRequest",
    "PlacementSpec",
    "ResourceRequest",
    "RuntimeSpec",
    "ServiceSpec",
    "Variant",
    "WorkloadSpec",
    "framework_specifier",
    "reserved_env_name",
]

_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,126}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

# Variables that choose which devices a process or container sees: the agent sets the right
# one for the devices it assigned (agent/drivers), so a workload may not set any of them.
# NVIDIA_VISIBLE_DEVICES, ASCEND_VISIBLE_DEVICES and MTHREADS_VISIBLE_DEVICES are read by
# the vendors' container runtimes; ROCR_VISIBLE_DEVICES and GPU_DEVICE_ORDINAL by ROCm.
DEVICE_ENV_NAMES = frozenset({
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL", "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "MLU_VISIBLE_DEVICES",
    "XPU_VISIBLE_DEVICES", "MUSA_VISIBLE_DEVICES", "MTHREADS_VISIBLE_DEVICES", "TOPS_VISIBLE_DEVICES",
})
# The one XPUMESH_* name a workload may set: the exit code a simulated replica ends with
# (read by the sim driver only; the agent never passes it on to a real replica).
SIM_EXIT_CODE_ENV = "XPUMESH_SIM_EXIT_CODE"


def reserved_env_name(name: str) -> bool:
    """True for a name only the agent sets: ``XPUMESH_*`` (any case) and the device variables."""
    upper = name.upper()
    return upper.startswith("XPUMESH_") or upper in DEVICE_ENV_NAMES


class RuntimeSpec(BaseModel):
    """Software the workload needs on the device: a framework version and/or explicit runtimes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"framework": "pytorch", "framework_version": "2.4", "requires": ["cuda>=12.1"]}]},
    )

    framework: str | None = Field(
        default=None,
        description="Lower-case framework key (pytorch, mindspore, paddlepaddle, tensorflow, vllm…); "
        "resolved to runtimes per device through the compatibility rules.",
        examples=["pytorch"],
    )
    framework_version: str | None = Field(
        default=None,
        description="A version ('2.4' means any 2.4.x) or a specifier ('>=2.3,<2.5'). Needs framework.",
        examples=["2.4", ">=2.3,<2.5"],
    )
    requires: list[str] = Field(
        default_factory=list,
        description="Runtime requirements checked against each device's runtimes and driver, e.g. 'cuda>=12.1'.",
        examples=[["cuda>=12.1"], ["cann>=8.0.RC1"]],
    )

    @field_validator("framework")
    @classmethod
    def _framework_key(cls, v: str | None) -> str | None:
        if v is not None and not _KEY.match(v):
            raise ValueError(f"framework must be a lower-case key like 'pytorch', got {v!r}")
        return v

    @field_validator("framework_version")
    @classmethod
    def _framework_version(cls, v: str | None) -> str | None:
        if v is not None:
            framework_specifier(v)  # raises ValueError with the reason
        return v

    @field_validator("requires")
    @classmethod
    def _requires(cls, v: list[str]) -> list[str]:
        return check_requires(v)

    @model_validator(mode="after")
    def _version_needs_framework(self) -> Self:
        if self.framework_version is not None and self.framework is None:
            raise ValueError("framework_version is set but framework is not")
        return self

    def requirements(self) -> list[Requirement]:
        return [Requirement.parse(r) for r in self.requires]


def framework_specifier(text: str) -> SpecifierSet:
    """``'2.4'`` → ``==2.4.*``; ``'>=2.3,<2.5'`` stays as is. Raises ValueError with the reason."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("framework_version must not be empty")
    if stripped[0] in "<>=!~":
        return SpecifierSet.parse(stripped)
    version = Version.parse(stripped)
    if version.pre is None and version.dev is None and version.post is None and not version.local:
        return SpecifierSet.parse("==" + ".".join(str(n) for n in version.release) + ".*")
    return SpecifierSet.parse("==" + stripped)


class Variant(BaseModel):
    """How to run the workload on one vendor or hardware type."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
                                         "command": ["python", "train.py"], "env": {"NCCL_DEBUG": "WARN"}}]},
    )

    command: list[str] | None = Field(default=None, description="Command and arguments; unset keeps the image's.")
    image: str | None = Field(default=None, description="Container image reference.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables. The agent sets XPUMESH_* and the devices' visible-device "
        "variables (CUDA_VISIBLE_DEVICES, ASCEND_RT_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES…); a workload may not "
        "set them.",
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"env name {name!r} must be letters, digits and '_', not starting with a digit")
            if name != SIM_EXIT_CODE_ENV and reserved_env_name(name):
                raise ValueError(f"env name {name!r} is reserved: the agent sets XPUMESH_* and the devices' "
                                 "visible-device variables for each replica")
            if "\x00" in value:
                raise ValueError(f"env {name!r} holds a NUL character")
        return v


class PlacementSpec(BaseModel):
    """Where replicas may go and how they relate to each other."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"sites": ["hangzhou", "ningbo"], "spread": "host",
                                         "data_site": "hangzhou", "data_gib": 500}]},
    )

    sites: list[str] = Field(default_factory=list, description="Allowed sites; empty means any site.")
    avoid_sites: list[str] = Field(default_factory=list, description="Sites never to use.")
    spread: Literal["none", "host", "site"] = Field(
        default="none",
        description="'host': no two replicas on one host. 'site': replicas spread evenly over the eligible "
        "sites (at most ceil(replicas / sites) per site).",
    )
    data_site: str | None = Field(default=None, description="Site holding the input data.")
    data_gib: float = Field(default=0, ge=0, description="Input data size; moving it to another site costs time.")
    topology: Literal["any", "same_host", "same_link_group"] = Field(
        default="any",
        description="'same_link_group': each replica's devices share one link group (NVLink/HCCS island). "
        "'same_host': all replicas on one host. A replica's devices are always on one host.",
    )
    host_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a host must carry (node selector); 'arch' matches the host architecture.",
        examples=[{"arch": "aarch64"}],
    )

    numa: Literal["any", "single"] = Field(
        default="any",
        description="'single': each replica's devices and CPUs from one NUMA node of its host (as Kubernetes' "
        "Topology Manager single-numa-node policy); the node is reported in the placement.")
    mixed_models: bool = Field(
        default=False,
        description="A gang's replicas get one device model (and, unless spread is 'site', one site); true lets "
        "them mix models and sites.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        both = sorted(set(self.sites) & set(self.avoid_sites))
        if both:
            raise ValueError(f"sites and avoid_sites both list {both}")
        if self.data_gib > 0 and self.data_site is None:
            raise ValueError("data_gib > 0 needs data_site")
        return self


class ServiceSpec(BaseModel):
    """How a long-running service replica is reached and known to be ready.

    Each replica gets a free port of its host: as a process it listens on ``$PORT`` (also
    ``XPUMESH_PORT``); in a container it listens on ``port`` and the agent publishes that port on
    the free host port. The agent probes ``readiness_path`` over HTTP; a replica takes requests
    through ``/v1/endpoints/<name>/…`` only while its probe answers 2xx or 3xx.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"port": 8000, "readiness_path": "/healthz", "protocol": "http"},
                                        {"port": 8000, "readiness_path": "/healthz", "callers": ["beta"]}]},
    )

    port: int = Field(default=8000, ge=1, le=65535, description="The port a containerised replica listens on "
                      "(a process replica listens on $PORT, which the agent picks).", examples=[8000])
    readiness_path: str = Field(default="/healthz", max_length=512, description="HTTP path probed for readiness "
                                "(2xx or 3xx: ready).", examples=["/healthz", "/v1/models"])
    protocol: Literal["http"] = Field(default="http", description="What the replica speaks: HTTP/1.1 (chunked "
                                      "transfer and Server-Sent Events stream through).")
    callers: list[str] = Field(default_factory=list, max_length=64, description="Other tenants whose keys may call "
                               "this service's endpoint ('*': every tenant). The owning tenant's keys always may.",
                               examples=[["beta"], ["*"]])
    min_replicas: int | None = Field(default=None, ge=1, le=4096, description="Autoscaling: the fewest replicas "
                                     "(with max_replicas). Unset: the service keeps 'replicas'.", examples=[1])
    max_replicas: int | None = Field(default=None, ge=1, le=4096, description="Autoscaling: the most replicas.",
                                     examples=[8])
    target_in_flight: float = Field(default=4.0, gt=0, le=10_000, description="Autoscaling: requests in flight per "
                                    "replica to aim for (measured by the gateways, averaged over their report "
                                    "interval): more replicas above it, fewer once below it for a while.")

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas and max_replicas go together")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None and self.max_replicas is not None

    @field_validator("readiness_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \x00\r\n#"):
            raise ValueError(f"readiness_path must be an absolute URL path like '/healthz', got {v[:80]!r}")
        return v

    @field_validator("callers")
    @classmethod
    def _callers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != "*" and not _KEY.match(name):
                raise ValueError(f"callers must be tenant names or '*', got {name[:80]!r}")
        return v


MAX_ALTERNATIVES = 8
_ALTERNATIVES = TypeAdapter(list[HardwareRequest])


class WorkloadSpec(BaseModel):
    """A request to run replicas of one program on accelerators or CPUs: a job (runs to its end) or a service
    (long-running replicas answering HTTP through the gateway's ``/v1/endpoints/<name>/``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "llama-finetune",
                    "hardware": {"type": "gpu", "count": 8, "memory_gib": 80},
                    "runtime": {"framework": "pytorch", "framework_version": "2.4"},
                    "variants": {"nvidia": {"image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
                                            "command": ["torchrun", "train.py"]}},
                    "replicas": 4,
                    "gang": True,
                    "priority": 500,
                },
                {
                    "name": "etl",
                    "hardware": {"type": "cpu", "arch": "aarch64"},
                    "resources": {"cpu": 16, "memory_gib": 64},
                    "placement": {"numa": "single"},
                },
                {
                    "name": "pretrain",
                    "hardware": [{"type": "gpu", "model": "H100*", "count": 8},
                                 {"type": "npu", "model": "Ascend910B*", "count": 8, "resources": {"cpu": 48}},
                                 {"type": "gpu", "vendor": "amd", "model": "MI300X*", "count": 8}],
                    "resources": {"cpu": 32, "memory_gib": 512},
                    "replicas": 2,
                    "gang": True,
                },
            ]
        },
    )

    name: str = Field(description="Human-readable name (letters, digits, '.', '_', '-'); a service's endpoint is "
                      "/v1/endpoints/<name>/ of its tenant.", examples=["llama-finetune"])
    kind: Literal["job", "service"] = Field(default="job", description="'job': replicas run to their end. "
                                            "'service': long-running replicas behind a stable endpoint (needs "
                                            "'service'); a replica that ends is restarted per restart_policy.")
    service: ServiceSpec | None = Field(default=None, description="Port, readiness probe and callers of a service.")
    hardware: HardwareRequest | list[HardwareRequest] = Field(
        description="What each replica needs, or an ordered list of alternatives (at most "
        f"{MAX_ALTERNATIVES}): the first that can be placed is taken, and the placement names it.")
    resources: ResourceRequest = Field(default_factory=ResourceRequest,
                                       description="Logical CPUs and host memory per replica (an alternative may "
                                       "give its own).")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    variants: dict[str, Variant] = Field(
        default_factory=dict,
        description="Per vendor ('nvidia', 'huawei'), per hardware type ('npu') or 'default'. When set, only "
        "devices with a matching variant are used; lookup order is vendor, hardware type, default.",
    )
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    replicas: int = Field(default=1, ge=1, le=4096, description="Number of replicas.")
    gang: bool = Field(default=False, description="Place all replicas or none.")
    priority: int = Field(default=100, ge=0, le=1000, description="Higher goes first and may preempt.")
    preemptible: bool = Field(default=False, description="May be stopped for higher-priority work.")
    restart_policy: Literal["never", "on_failure", "always"] = "on_failure"
    max_restarts: int = Field(default=3, ge=0, description="Restarts allowed by the restart policy.")
    tenant: str | None = Field(
        default=None,
        description="Owning tenant. Set by the gateway from the API key; a value in the request body is not trusted.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels on the workload.")
    model: str | None = Field(
        default=None, max_length=64,
        description="A model of the adapted-model catalog (GET /v1/models). Without variants the spec is made from "
        "the catalog: one hardware alternative per build published for the hardware asked ('any': every build), "
        "sized for precision and 'count' devices, and the placement names the build taken (its variant).",
        examples=["qwen2.5-7b-instruct"])
    precision: Literal["fp32", "bf16", "fp16", "int8", "int4"] | None = Field(
        default=None, description="With model: the precision to serve it in (unset: the model's default).")
    recipe: str | None = Field(default=None, max_length=64, description="A conversion recipe of the catalog "
                               "(GET /v1/models): without variants, a job on a device of the recipe's vendor running "
                               "its converter with recipe_args.", examples=["onnx-to-om-atc"])
    recipe_args: dict[str, str] = Field(default_factory=dict, description="The recipe's parameters.",
                                        examples=[{"model": "/data/resnet50.onnx", "output": "/data/resnet50",
                                                   "soc_version": "Ascend910B3"}])
    duration_s: float | None = Field(
        default=None, gt=0, description="Expected run time; simulated hosts finish the workload after it."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_catalog(cls, data: Any) -> Any:
        from libs.catalog.models import expand_request  # the catalog's loader imports this package's schemas

        return expand_request(data)

    @field_validator("model")
    @classmethod
    def _catalog_model(cls, v: str | None) -> str | None:
        from libs.catalog.models import load_models

        if v is not None and load_models().model(v) is None:
            known = ", ".join(m.id for m in load_models().models)
            raise ValueError(f"no model {v!r} in the catalog (GET /v1/models); it has {known}")
        return v

    @field_validator("recipe")
    @classmethod
    def _catalog_recipe(cls, v: str | None) -> str | None:
        from libs.catalog.models import load_models

        if v is not None and load_models().recipe(v) is None:
            known = ", ".join(r.id for r in load_models().recipes)
            raise ValueError(f"no recipe {v!r} in the catalog (GET /v1/models); it has {known}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name must be 1-127 letters, digits, '.', '_' or '-' starting with a letter or digit, got {v!r}")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_keys(cls, v: dict[str, Variant]) -> dict[str, Variant]:
        for key in v:
            if not _KEY.match(key):
                raise ValueError(f"variant key {key!r} must be a lower-case vendor, hardware type or 'default'")
        return v

    @field_validator("hardware", mode="wrap")
    @classmethod
    def _hardware(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> HardwareRequest | list[HardwareRequest]:
        # one form at a time, so an error names hardware.<field> or hardware.<i>.<field>, not the union's arms
        if isinstance(v, HardwareRequest):
            return v
        if isinstance(v, list):
            alts = _ALTERNATIVES.validate_python(v)
            if not 1 <= len(alts) <= MAX_ALTERNATIVES:
                raise ValueError(f"hardware lists 1 to {MAX_ALTERNATIVES} alternatives, got {len(alts)}")
            return alts
        return HardwareRequest.model_validate(v)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "service" and self.service is None:
            raise ValueError("kind 'service' needs 'service' (port, readiness_path)")
        if self.kind == "job" and self.service is not None:
            raise ValueError("'service' is only allowed with kind 'service'")
        if self.kind == "service" and self.gang:
            raise ValueError("a service cannot be a gang: its replicas are independent")
        svc = self.service
        if svc is not None and svc.min_replicas is not None and svc.max_replicas is not None \
                and not svc.min_replicas <= self.replicas <= svc.max_replicas:
            raise ValueError(f"replicas {self.replicas} must lie between service.min_replicas {svc.min_replicas} "
                             f"and service.max_replicas {svc.max_replicas}")
        alts = self.alternatives
        multi = len(alts) > 1
        for i, hw in enumerate(alts):
            where = f"hardware[{i}]" if multi else "hardware"
            if self.placement.topology == "same_host" and self.replicas > 1:
                if self.placement.spread != "none":
                    raise ValueError(
                        f"placement.topology 'same_host' contradicts placement.spread {self.placement.spread!r}")
                if hw.is_shared:
                    raise ValueError(f"placement.topology 'same_host' with {where}.share < 1 is not supported; "
                                     "ask for count devices instead")
            if hw.variant is not None:
                if hw.variant not in self.variants:
                    raise ValueError(f"{where}.variant {hw.variant!r} is not a key of variants")
            elif self.variants and hw.is_cpu:
                if not ({"cpu", "default"} & set(self.variants)):
                    raise ValueError(f"variants has no entry for type 'cpu' or 'default' ({where})")
            elif self.variants and hw.type != "any" and hw.vendor is not None:
                if not ({hw.vendor, str(hw.type), "default"} & set(self.variants)):
                    raise ValueError(
                        f"variants has no entry for vendor {hw.vendor!r}, type {str(hw.type)!r} or 'default'"
                        + (f" ({where})" if multi else ""))
        if self.resources.cpu == 0 and any(hw.is_cpu and (hw.resources is None or hw.resources.cpu is None)
                                           for hw in alts):
            raise ValueError("resources.cpu 0 leaves CPU-only work without a CPU")
        return self

    @property
    def alternatives(self) -> list[HardwareRequest]:
        """The hardware alternatives in order (one when ``hardware`` is a single request)."""
        return self.hardware if isinstance(self.hardware, list) else [self.hardware]

    @property
    def primary(self) -> HardwareRequest:
        """The first (preferred) alternative."""
        return self.alternatives[0]

    def demand(self, alternative: int = 0) -> Demand:
        """What one replica asks for under an alternative (its resources, else the workload's, else defaults)."""
        return self.alternatives[alternative].demand_with(self.resources)

    def variant_key(self, vendor: str, hardware_type: HardwareType | str, alternative: int | None = None
                    ) -> str | None:
        """The key of ``variants`` that runs on this vendor/type: the alternative's own ``variant`` when it names
        one, else vendor, then hardware type, then default (CPU-only work: 'cpu', then default; the CPU's vendor
        is not looked up, so an 'amd' variant meant for ROCm never runs on an EPYC host's CPUs). None when the spec
        has no variants or none fits."""
        if not self.variants:
            return None
        alts = self.alternatives
        if alternative is not None and 0 <= alternative < len(alts) and alts[alternative].variant is not None:
            named = alts[alternative].variant
            return named if named in self.variants else None
        keys = ("cpu", "default") if str(hardware_type) == "cpu" else (vendor, str(hardware_type), "default")
        return next((k for k in keys if k in self.variants), None)

    def variant_for(self, vendor: str, hardware_type: HardwareType | str, alternative: int | None = None
                    ) -> Variant | None:
        """The variant that runs on this vendor/type (``variant_key``); with no variants at all, an empty Variant
        (run as is)."""
        if not self.variants:
            return Variant()
        key = self.variant_key(vendor, hardware_type, alternative)
        return self.variants[key] if key is not None else None

    def placed_on(self, device: tuple[str, str] | None, alternative: int) -> tuple[str, str, int]:
        """What a placed replica's variant is looked up by: (vendor, hardware type, alternative) of its first
        device (``device``: its vendor and type), or for one without devices 'cpu' when its alternative is
        CPU-only. An alternative out of range counts as the first."""
        alts = self.alternatives
        alt = alternative if 0 <= alternative < len(alts) else 0
        if device is not None:
            return device[0], device[1], alt
        return "", "cpu" if alts[alt].is_cpu else "", alt
