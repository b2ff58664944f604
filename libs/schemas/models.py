"""The adapted-model catalog: mainstream models, the builds published for each vendor's hardware, the device
memory they need, and the conversion recipes between formats.

The data is ``libs/catalog/models.yaml``, read by ``libs.catalog.models``; every row names its source. Memory
is not typed in: it is computed from the model's published parameter count (``parameters``, with its source)
times the bytes of each precision, plus ``MEMORY_OVERHEAD`` (see ``MemoryRow``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.schemas.devices import HardwareType
from libs.versions import Requirement

__all__ = [
    "BYTES_PER_PARAMETER",
    "MEMORY_METHOD",
    "MEMORY_OVERHEAD",
    "Build",
    "MemoryRow",
    "ModelCatalog",
    "ModelEntry",
    "ModelList",
    "ModelView",
    "Precision",
    "Recipe",
    "RecipeParameter",
]

Key = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
# A build id is a variant key of the expanded spec (libs.schemas.workload._KEY): no dots.
BuildId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Url = Annotated[str, Field(min_length=12, max_length=500, pattern=r"^https://\S+$")]
Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]

# Bytes one parameter takes in each precision.
BYTES_PER_PARAMETER: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
# Device memory beyond the weights, as a fraction of them (activations, KV cache of a modest batch, the runtime's
# own allocations): the 1.2 factor of the widely used serving estimate M = P x (Q/8) x 1.2.
MEMORY_OVERHEAD = 0.2
MEMORY_OVERHEAD_SOURCE = "https://www.substratus.ai/blog/calculating-gpu-memory-for-llm/"
MEMORY_METHOD = (f"parameters x bytes per parameter (fp32 4, bf16/fp16 2, int8 1, int4 0.5) / 2^30, plus "
                 f"{MEMORY_OVERHEAD:.0%} for activations, KV cache and runtime (M = P x Q/8 x 1.2, "
                 f"{MEMORY_OVERHEAD_SOURCE})")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class Build(BaseModel):
    """One published way to serve or train the model on one vendor's hardware."""

    model_config = ConfigDict(extra="forbid")

    id: BuildId = Field(description="Build id, unique within the model; the placement names it.")
    vendor: Key = Field(description="Lower-case vendor key as in Device.vendor ('cpu' for a build on CPUs).")
    hardware_type: HardwareType
    purpose: Literal["serving", "training"] = Field(description="serving: a service workload answering on port; "
                                                     "training: a job.")
    framework: Key = Field(description="What runs it: vllm, vllm-ascend, pytorch, ultralytics, wordllama…")
    framework_version: str = Field(min_length=1, max_length=40)
    image: str | None = Field(default=None, max_length=300, description="Container image, as published.")
    device_models: list[str] = Field(default_factory=list, description="Device model globs the build supports "
                                     "(empty: any of the vendor's); they become the alternative's model.")
    command: list[str] | None = Field(default=None, description="Command and arguments; '{python}' and '{examples}' "
                                      "are the mesh's Python interpreter and its examples folder. Unset keeps the "
                                      "image's.")
    requires: list[str] = Field(default_factory=list, description="Runtime requirements as the placement rules "
                                "read them ('cuda>=12.4', 'cann>=8.1.RC1,<8.2.RC1', 'rocm>=6.3'), from the "
                                "build's published software stack.")
    precisions: list[Precision] = Field(min_length=1, description="Precisions the build serves the model in.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Serving builds: the port it listens on.")
    readiness_path: str | None = Field(default=None, max_length=200, description="Serving builds: its health path.")
    api: Literal["openai-chat", "openai-embeddings", "none"] = "none"
    sources: list[Url] = Field(min_length=1, description="Where the image/command, the runtime requirement and "
                               "the model's support on this build are published.")
    notes: str | None = None

    @field_validator("requires")
    @classmethod
    def _requires(cls, v: list[str]) -> list[str]:
        for text in v:
            Requirement.parse(text)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.image is None and not self.command:
            raise ValueError(f"build {self.id!r} needs an image or a command")
        if self.purpose == "serving" and (self.port is None or self.readiness_path is None):
            raise ValueError(f"serving build {self.id!r} needs port and readiness_path")
        if (self.hardware_type == HardwareType.CPU) != (self.vendor == "cpu"):
            raise ValueError(f"build {self.id!r}: vendor 'cpu' goes with hardware_type 'cpu' and only with it")
        return self


class MemoryRow(BaseModel):
    """Device memory one replica needs in one precision: the weights and the stated overhead."""

    precision: Precision
    weights_gib: float
    total_gib: float = Field(description=f"weights x (1 + {MEMORY_OVERHEAD}), rounded up to 0.1 GiB.")
    method: str = MEMORY_METHOD
    source: str = Field(description="Where the parameter count comes from.")


class ModelEntry(BaseModel):
    """A mainstream model and its published builds."""

    model_config = ConfigDict(extra="forbid")

    id: Key = Field(description="Catalog id, as a model request names it ('qwen2.5-7b-instruct').")
    name: str = Field(min_length=1, max_length=120, description="The publisher's name for it.")
    task: Literal["chat", "reasoning", "embeddings", "image-classification", "fill-mask", "object-detection"]
    weights: str = Field(min_length=1, max_length=200, description="Where the weights are: a model hub id, or "
                         "the package that ships them.")
    license: str = Field(min_length=1, max_length=80)
    parameters: int = Field(gt=0, description="Parameter count as published.")
    parameters_source: Url
    default_precision: Precision
    builds: list[Build] = Field(min_length=1)
    recipes: list[Key] = Field(default_factory=list, description="Conversion recipes that apply to it.")

    @model_validator(mode="after")
    def _unique_builds(self) -> Self:
        ids = [b.id for b in self.builds]
        if len(ids) != len(set(ids)):
            raise ValueError(f"model {self.id!r} lists a build id twice")
        if not any(self.default_precision in b.precisions for b in self.builds):
            raise ValueError(f"model {self.id!r}: no build serves its default precision {self.default_precision}")
        return self

    def memory_for(self, precision: Precision) -> MemoryRow:
        weights = self.parameters * BYTES_PER_PARAMETER[precision] / 2**30
        total = -(-round(weights * (1 + MEMORY_OVERHEAD) * 1e6) // 100_000) / 10  # ceil to 0.1 GiB
        return MemoryRow(precision=precision, weights_gib=round(weights, 3), total_gib=total,
                         source=self.parameters_source)


class RecipeParameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
    description: str
    pattern: str = Field(default=r"^[A-Za-z0-9_./:=-]{1,256}$", description="What a value must match.")
    default: str | None = None


class Recipe(BaseModel):
    """A conversion between model formats, run as a job on a host of the target vendor."""

    model_config = ConfigDict(extra="forbid")

    id: Key
    name: str
    source_format: Key
    target_format: Key
    vendor: Key
    hardware_type: HardwareType
    tool: str = Field(description="The vendor's converter (atc, trtexec…).")
    image: str | None = None
    command: list[str] = Field(min_length=1, description="Arguments; {name} takes the parameter of that name.")
    requires: list[str] = Field(default_factory=list)
    parameters: list[RecipeParameter] = Field(default_factory=list)
    sources: list[Url] = Field(min_length=1)
    notes: str | None = None

    @model_validator(mode="after")
    def _placeholders(self) -> Self:
        names = {p.name for p in self.parameters}
        used = {m for arg in self.command for m in _PLACEHOLDER.findall(arg)}
        if used - names:
            raise ValueError(f"recipe {self.id!r} uses undeclared parameters {sorted(used - names)}")
        if names - used:
            raise ValueError(f"recipe {self.id!r} declares unused parameters {sorted(names - used)}")
        for text in self.requires:
            Requirement.parse(text)
        return self

    def render(self, args: dict[str, str]) -> list[str]:
        """The command with every {name} replaced; raises ValueError naming a missing, unknown or bad value."""
        params = {p.name: p for p in self.parameters}
        unknown = sorted(set(args) - set(params))
        if unknown:
            raise ValueError(f"recipe {self.id!r} has no parameter {unknown[0]!r} (it takes {sorted(params)})")
        values: dict[str, str] = {}
        for name, p in params.items():
            value = args.get(name, p.default)
            if value is None:
                raise ValueError(f"recipe {self.id!r} needs parameter {name!r}: {p.description}")
            if not re.match(p.pattern, value):
                raise ValueError(f"recipe parameter {name!r} must match {p.pattern}")
            values[name] = value
        return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.command]


class ModelCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelEntry]
    recipes: list[Recipe] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for what, ids in (("model", [m.id for m in self.models]), ("recipe", [r.id for r in self.recipes])):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise ValueError(f"{what} id {dup[0]!r} listed twice")
        known = {r.id for r in self.recipes}
        for m in self.models:
            missing = sorted(set(m.recipes) - known)
            if missing:
                raise ValueError(f"model {m.id!r} names unknown recipe {missing[0]!r}")
        return self

    def model(self, model_id: str) -> ModelEntry | None:
        return next((m for m in self.models if m.id == model_id), None)

    def recipe(self, recipe_id: str) -> Recipe | None:
        return next((r for r in self.recipes if r.id == recipe_id), None)


class ModelView(ModelEntry):
    """A catalog entry as ``GET /v1/models/{id}`` shows it: with its device memory per precision."""

    memory: list[MemoryRow] = Field(default_factory=list, description="Device memory per precision its builds serve.")


class ModelList(BaseModel):
    items: list[ModelView]
    recipes: list[Recipe]
