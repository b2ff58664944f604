"""The device-model catalog and the compatibility rules, as the inventory serves them.

The catalog turns any device into a vendor-neutral amount of compute
(``compute_units``); the rules say which framework versions run on which hardware,
with which runtime, and which drivers carry that runtime.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from libs.schemas.devices import HardwareType

# Keys name things in URLs and version rules: short, lower-case, no spaces.
Key = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Spec = Annotated[str, Field(min_length=1, max_length=1000)]

# One compute unit is defined as 1 TFLOPS of dense FP16 (tensor/matrix) throughput.
# FP16 is the one figure every vendor publishes for training/inference parts; where a
# part publishes only INT8 (inference cards), the catalog entry says so and derives CU
# from INT8 / 2 (see the seed file's notes).
COMPUTE_UNIT_DEFINITION = "1 CU = 1 TFLOPS dense FP16"


class DeviceModel(BaseModel):
    """One entry of the catalog: a vendor's model and its published figures."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "vendor": "nvidia", "model": "A100-SXM4-80GB", "aliases": ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM-80GB"],
        "hardware_type": "gpu", "memory_gib": 80, "fp16_tflops": 312, "bf16_tflops": 312, "fp32_tflops": 19.5,
        "int8_tops": 624, "interconnect": "NVLink 3 600 GB/s; PCIe 4.0 x16", "compute_units": 312,
        "source": "NVIDIA A100 Tensor Core GPU datasheet"}]})

    vendor: Key = Field(description="Lower-case vendor key, as in Device.vendor.")
    model: Name = Field(description="Canonical model name, as in Device.model.")
    aliases: list[str] = Field(default_factory=list, description="Other names tools print for this model (globs allowed).")
    hardware_type: HardwareType
    memory_gib: float = Field(ge=0)
    fp16_tflops: float | None = Field(default=None, ge=0, description="Dense FP16 tensor TFLOPS.")
    bf16_tflops: float | None = Field(default=None, ge=0)
    fp32_tflops: float | None = Field(default=None, ge=0)
    int8_tops: float | None = Field(default=None, ge=0)
    interconnect: str | None = Field(default=None, description="e.g. 'NVLink 600 GB/s', 'HCCS', 'PCIe 4.0'.")
    compute_units: float = Field(ge=0, description=COMPUTE_UNIT_DEFINITION + ", per package as published.")
    compute_units_estimated: bool = Field(default=False, description=(
        "True when compute_units is an estimate, not a published FP16/INT8 figure (fp16_tflops and int8_tops "
        "then stay null); source says what the estimate rests on. An operator replaces it with PUT /v1/catalog."))
    devices_per_package: int = Field(default=1, ge=1, le=16, description=(
        "How many devices the vendor tool lists for one package (MI250X: 2 GCDs; MLU370-X8: 2 chips). The figures "
        "above are per package; each listed device holds 1/N of them."))
    source: Spec = Field(description="Where the figures come from (URL or document name).")

    @property
    def device_compute_units(self) -> float:
        """Compute units of one device as the vendor tool lists it."""
        return round(self.compute_units / self.devices_per_package, 3)

    @property
    def device_memory_gib(self) -> float:
        """Memory of one device as the vendor tool lists it."""
        return self.memory_gib / self.devices_per_package


class CompatRule(BaseModel):
    """A framework version range runs on a hardware type/vendor with a runtime range."""

    model_config = ConfigDict(extra="forbid")

    id: Key = Field(description="Stable rule id, e.g. 'pytorch-2.4-cuda'.")
    framework: Key = Field(description="Lower-case framework key: pytorch, mindspore, paddlepaddle, tensorflow, onnxruntime, vllm…")
    framework_versions: Spec = Field(description="Version specifier, e.g. '>=2.4,<2.5'.")
    hardware_type: HardwareType
    vendor: Key
    runtime: Key = Field(description="Runtime key matched against Device.runtimes: cuda, cann, rocm, dtk, neuware, xre…")
    runtime_versions: Spec = Field(description="Runtime versions this framework build supports, e.g. '>=11.8,<12.5'.")
    source: Spec


class RuntimeDriverRule(BaseModel):
    """A runtime version needs at least this driver (e.g. CUDA's minimum driver table)."""

    model_config = ConfigDict(extra="forbid")

    id: Key
    vendor: Key
    runtime: Key
    runtime_versions: Spec = Field(description="Specifier over runtime versions this row covers, e.g. '>=12.4,<12.5'.")
    min_driver_version: Name
    source: Spec
