"""The adapted-model catalog (``models.yaml``) and the one expansion of a model or recipe request into a spec.

A model request names a catalog model instead of saying how to run it::

    {"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}, "precision": "bf16", "count": 2}

``expand_request`` turns it into an ordinary workload spec: one hardware alternative per build published
for the hardware asked for (catalog order), each sized from the catalog (device memory per device for the
precision, split over ``count`` devices), carrying the build's runtime requirements (checked by the placement
rules like any other) and naming the build as its variant, so the placement reports which build it took. A
serving build makes the workload a service on the build's port and health path.

A recipe request (``{"recipe": "onnx-to-om-atc", "recipe_args": {...}}``) becomes a job on one device of
the recipe's vendor running the converter with the arguments filled in.

``WorkloadSpec`` calls ``expand_request`` before validating its fields, so the gateway, the batch submit and
the scheduler all see the same expanded spec; an unknown model or recipe is left for the spec's field
validators to refuse by name.
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
import sysconfig
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from libs.catalog.loader import SeedDataError
from libs.schemas.devices import HardwareType
from libs.schemas.models import Build, ModelCatalog, ModelEntry, ModelView, Precision, Recipe

MODELS_FILE = "models.yaml"
_PACKAGE = __name__.rpartition(".")[0]
# Keys of a model request beside the spec's own fields.
_REQUEST_ONLY = ("count",)
RECIPE_VARIANT = "convert"


def parse_models(text: str, source: str = MODELS_FILE) -> ModelCatalog:
    """Parse and validate catalog YAML; a bad entry raises ``SeedDataError`` naming it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SeedDataError(f"{source}: not valid YAML: {exc}") from exc
    try:
        return ModelCatalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SeedDataError(f"{source}: {where}: {first['msg']}") from exc


@cache
def load_models() -> ModelCatalog:
    """The checked-in catalog, validated once per process."""
    return parse_models(resources.files(_PACKAGE).joinpath(MODELS_FILE).read_text(encoding="utf-8"))


def model_view(entry: ModelEntry) -> ModelView:
    """The entry with its device memory for every precision one of its builds serves."""
    precisions: list[Precision] = []
    for b in entry.builds:
        precisions += [p for p in b.precisions if p not in precisions]
    return ModelView(**entry.model_dump(), memory=[entry.memory_for(p) for p in precisions])


# ------------------------------------------------------------------------------------------ expansion

def expand_request(data: Any, catalog: ModelCatalog | None = None) -> Any:
    """A model or recipe request as a spec's input (a dict), anything else unchanged.

    Left unchanged too: a request that already has variants (an expanded spec read back), and one naming a
    model or recipe the catalog lacks (the spec's field validator refuses it by name). Raises ValueError, its
    text starting with the field, when the request cannot be expanded (no build for the hardware asked, a
    precision no build serves, a bad recipe argument).
    """
    if not isinstance(data, dict) or data.get("variants"):
        return data
    cat = catalog or load_models()
    model, recipe = data.get("model"), data.get("recipe")
    if isinstance(model, str):
        entry = cat.model(model)
        return _expand_model(data, entry) if entry is not None else _unknown(data, model)
    if isinstance(recipe, str):
        found = cat.recipe(recipe)
        return _expand_recipe(data, found) if found is not None else _unknown(data, recipe)
    return data


def _unknown(data: dict[str, Any], wanted: str) -> dict[str, Any]:
    """An unknown model or recipe: refused by name by the spec's field validator, and only that (the name and
    hardware it would have supplied are filled in)."""
    return {**data, "name": data.get("name") or wanted, "hardware": data.get("hardware") or {"type": "any"}}


def _asked(data: dict[str, Any]) -> dict[str, Any]:
    hw = data.get("hardware", {"type": "any"})
    if not isinstance(hw, dict):
        raise ValueError("hardware: a model request takes one hardware request (type, vendor, model, count), "
                         "not a list; the catalog makes the alternatives")
    return hw


def _fits(build: Build, hw: dict[str, Any]) -> bool:
    kind = hw.get("type", "any")
    if kind != "any" and kind != str(build.hardware_type):
        return False
    vendor = hw.get("vendor")
    return vendor is None or build.hardware_type == HardwareType.CPU or vendor == build.vendor


def _expand_model(data: dict[str, Any], entry: ModelEntry) -> dict[str, Any]:
    hw = _asked(data)
    precision: Precision = data.get("precision") or entry.default_precision
    count = data.get("count", hw.get("count", 1))
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 64:
        raise ValueError(f"count: devices per replica must be a whole number from 1 to 64, got {count!r}")
    kind = data.get("kind")
    purpose = {"service": "serving", "job": "training"}.get(kind) if isinstance(kind, str) else None
    builds = [b for b in entry.builds if _fits(b, hw) and (purpose is None or b.purpose == purpose)]
    if not builds:
        have = ", ".join(f"{b.id} ({b.vendor} {b.hardware_type}, {b.purpose})" for b in entry.builds)
        raise ValueError(f"hardware: {entry.id} has no published build for {_describe(hw, kind)}; it has {have}")
    served = [b for b in builds if precision in b.precisions]
    if not served:
        offered = sorted({p for b in builds for p in b.precisions})
        raise ValueError(f"precision: no build of {entry.id} for this hardware serves {precision}; they serve "
                         f"{', '.join(offered)}")
    purpose = purpose or served[0].purpose
    served = [b for b in served if b.purpose == purpose][:8]
    memory = entry.memory_for(precision)
    per_device = math.ceil(memory.total_gib / count * 10) / 10
    out = {k: v for k, v in data.items() if k not in _REQUEST_ONLY}
    out.update(name=data.get("name") or entry.id, precision=precision,
               hardware=[_alternative(b, hw, count, per_device, memory.total_gib) for b in served],
               variants={b.id: _variant(b) for b in served})
    if purpose == "serving":
        out["kind"] = "service"
        port, path = served[0].port, served[0].readiness_path
        asked = data.get("service")
        out["service"] = {"port": port, "readiness_path": path, **asked} if isinstance(asked, dict) else (
            asked if asked is not None else {"port": port, "readiness_path": path})
    else:
        out.setdefault("kind", "job")
    return out


def _describe(hw: dict[str, Any], kind: Any) -> str:
    what = " ".join(str(x) for x in (hw.get("vendor"), hw.get("type", "any")) if x)
    return f"{what} as a {kind}" if kind else what


def _alternative(b: Build, hw: dict[str, Any], count: int, per_device: float, total: float) -> dict[str, Any]:
    if b.hardware_type == HardwareType.CPU:
        alt: dict[str, Any] = {"type": "cpu", "variant": b.id, "resources": {"memory_gib": max(1.0, total)}}
        for key in ("arch", "cpu_features", "vendor", "model"):
            if key in hw:
                alt[key] = hw[key]
        return alt
    alt = {"type": str(b.hardware_type), "vendor": b.vendor, "count": count, "memory_gib": per_device,
           "variant": b.id, "requires": list(b.requires)}
    globs = hw.get("model") or (b.device_models or None)
    if globs:
        alt["model"] = globs
    for key in ("arch", "cpu_features", "resources"):
        if key in hw:
            alt[key] = hw[key]
    return alt


def _variant(b: Build) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if b.image is not None:
        out["image"] = b.image
    if b.command:
        out["command"] = [_local(a) for a in b.command]
        if any("{python}" in a for a in b.command):
            python, env = replica_python()
            out["command"] = [a.replace("{python}", python) for a in out["command"]]
            if env:
                out["env"] = env
    return out


def _local(arg: str) -> str:
    """'{examples}': the xpumesh examples folder, as it is where the request is expanded (right for a host beside
    the mesh, as the demo's local host is); '{python}' is ``replica_python``'s."""
    if "{examples}" in arg:
        arg = arg.replace("{examples}", str(resources.files("xpumesh.examples")))
    return arg


def reachable_by_others(path: str) -> bool:
    """Whether a user other than the owner can reach ``path``: every folder above it searchable by others."""
    p = Path(path).resolve()
    try:
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents) and bool(p.stat().st_mode & (stat.S_IROTH
                                                                                  | stat.S_IXOTH))
    except OSError:
        return False


SYSTEM_PYTHON = "/usr/bin/python3"


@cache
def replica_python() -> tuple[str, dict[str, str]]:
    """The interpreter '{python}' is, and the environment it needs, for a replica on a host beside the mesh.

    This process's own, with its packages. But an agent run as root gives each replica a uid of its own
    (``agent.replica_uid_start``), and an interpreter under a folder only its owner may enter (a Python installed
    under /root) is out of that uid's reach: then the system's ``python3`` if it is the same version, with this
    environment's package folders on ``PYTHONPATH`` (they are readable by all, so the replica imports the same
    packages); if there is none such, this process's own all the same (the replica then fails to start and says
    why in its log)."""
    own = sys.executable
    if os.geteuid() != 0 or (reachable_by_others(own) and reachable_by_others(sys.base_prefix)):
        return own, {}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        found = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return own, {}
    paths = [p for p in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))
             if reachable_by_others(p)]
    if found != version or not paths:
        return own, {}
    return SYSTEM_PYTHON, {"PYTHONPATH": os.pathsep.join(paths), "PYTHONNOUSERSITE": "1"}


def _expand_recipe(data: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    args = data.get("recipe_args") or {}
    if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
        raise ValueError("recipe_args: a mapping of parameter names to strings")
    try:
        command = recipe.render(args)
    except ValueError as exc:
        raise ValueError(f"recipe_args: {exc}") from None
    hw = data.get("hardware") or {}
    if not isinstance(hw, dict):
        raise ValueError("hardware: a recipe runs on one device of its vendor; give one hardware request")
    alt: dict[str, Any] = {"type": str(recipe.hardware_type), "vendor": recipe.vendor, "count": 1,
                           "variant": RECIPE_VARIANT, "requires": list(recipe.requires)}
    for key in ("model", "arch", "resources"):
        if key in hw:
            alt[key] = hw[key]
    variant: dict[str, Any] = {"command": command}
    if recipe.image is not None:
        variant["image"] = recipe.image
    out = dict(data)
    out.update(name=data.get("name") or recipe.id, kind="job", hardware=alt, variants={RECIPE_VARIANT: variant})
    out.setdefault("restart_policy", "never")
    return out
