"""Load the seed catalog and rules, and map the names vendor tools print to catalog entries.

The YAML files live next to this module and are read with ``importlib.resources``, so they
work from an installed package as well as from a checkout. Every entry is validated with
the pydantic models of ``libs.schemas.catalog``; a bad entry raises ``SeedDataError`` whose
message names the file and the entry.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule

CATALOG_FILE = "catalog.yaml"
RULES_FILE = "rules.yaml"

_PACKAGE = __name__.rpartition(".")[0]

# Keys the seed files may carry beside the DeviceModel fields.
_SEED_ONLY_KEYS = frozenset({"notes"})

_M = TypeVar("_M", bound=BaseModel)


class SeedDataError(ValueError):
    """The seed data is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class CatalogEntry:
    """A catalog model together with the seed file's free-text notes about it."""

    device: DeviceModel
    notes: str | None = None


# --------------------------------------------------------------------------- loading


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def load_catalog_entries() -> list[CatalogEntry]:
    """Every catalog entry with its notes, validated."""
    return parse_catalog(_read(CATALOG_FILE), CATALOG_FILE)


def load_catalog() -> list[DeviceModel]:
    """The device-model catalog, validated."""
    return [entry.device for entry in load_catalog_entries()]


def load_rules() -> tuple[list[CompatRule], list[RuntimeDriverRule]]:
    """The framework compatibility rules and the runtime -> minimum-driver rules, validated."""
    return parse_rules(_read(RULES_FILE), RULES_FILE)


def _load_yaml_mapping(text: str, source: str) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SeedDataError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise SeedDataError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _section(data: Mapping[str, Any], key: str, source: str) -> list[Any]:
    if key not in data:
        raise SeedDataError(f"{source}: missing top-level key {key!r}")
    items = data[key]
    if not isinstance(items, list):
        raise SeedDataError(f"{source}: {key!r} must be a list, got {type(items).__name__}")
    return items


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(entry)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _validate(model: type[_M], data: Mapping[str, Any], label: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SeedDataError(f"{label}: {_describe(exc)}") from exc


def _check_compute_units(device: DeviceModel, notes: str | None, label: str) -> None:
    """1 CU = 1 TFLOPS dense FP16; INT8/2 where only INT8 is published; else 0, or an estimate marked as such."""
    if device.compute_units_estimated:
        if device.fp16_tflops is not None or device.int8_tops is not None:
            raise SeedDataError(f"{label}: compute_units_estimated with a published fp16_tflops/int8_tops; "
                                "the published figure sets compute_units")
        if device.compute_units <= 0 or not (notes or "").startswith("Estimate"):
            raise SeedDataError(f"{label}: an estimated compute_units must be above 0 and its 'notes' must start "
                                "with 'Estimate' and give the reasoning")
        return
    if device.fp16_tflops is not None:
        expected, basis = device.fp16_tflops, "fp16_tflops"
    elif device.int8_tops is not None:
        expected, basis = device.int8_tops / 2, "int8_tops / 2"
    else:
        expected, basis = 0.0, "0 (no FP16 or INT8 figure)"
    if not math.isclose(device.compute_units, expected, rel_tol=0, abs_tol=1e-9):
        raise SeedDataError(
            f"{label}: compute_units is {device.compute_units}, expected {expected} ({basis})"
        )
    if device.fp16_tflops is None and not notes:
        raise SeedDataError(
            f"{label}: no fp16_tflops, so compute_units is {basis}; say so in a 'notes' entry"
        )


def parse_catalog(text: str, source: str = CATALOG_FILE) -> list[CatalogEntry]:
    """Parse and validate catalog YAML (``models:`` list of DeviceModel entries)."""
    data = _load_yaml_mapping(text, source)
    unknown = set(data) - {"models"}
    if unknown:
        raise SeedDataError(f"{source}: unknown top-level keys {sorted(unknown)}")
    entries: list[CatalogEntry] = []
    seen: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(_section(data, "models", source)):
        if not isinstance(raw, Mapping):
            raise SeedDataError(f"{source}: entry {index}: must be a mapping, got {type(raw).__name__}")
        label = f"{source}: entry {index} ({raw.get('vendor')}/{raw.get('model')})"
        fields = {key: value for key, value in raw.items() if key not in _SEED_ONLY_KEYS}
        notes = raw.get("notes")
        if notes is not None and not isinstance(notes, str):
            raise SeedDataError(f"{label}: notes must be a string")
        device = _validate(DeviceModel, fields, label)
        if device.vendor != device.vendor.strip().lower() or not device.vendor:
            raise SeedDataError(f"{label}: vendor must be a non-empty lower-case key")
        if not device.source.strip():
            raise SeedDataError(f"{label}: source must not be empty")
        _check_compute_units(device, notes, label)
        key = (device.vendor, device.model.lower())
        if key in seen:
            raise SeedDataError(f"{label}: duplicate of entry {seen[key]}")
        seen[key] = index
        entries.append(CatalogEntry(device=device, notes=notes))
    return entries


def parse_rules(text: str, source: str = RULES_FILE) -> tuple[list[CompatRule], list[RuntimeDriverRule]]:
    """Parse and validate rules YAML (``frameworks:`` CompatRule rows, ``runtime_driver:`` rows)."""
    data = _load_yaml_mapping(text, source)
    unknown = set(data) - {"frameworks", "runtime_driver"}
    if unknown:
        raise SeedDataError(f"{source}: unknown top-level keys {sorted(unknown)}")
    ids: dict[str, str] = {}

    def rows(section: str, model: type[_M]) -> list[_M]:
        out: list[_M] = []
        for index, raw in enumerate(_section(data, section, source)):
            if not isinstance(raw, Mapping):
                raise SeedDataError(f"{source}: {section}[{index}]: must be a mapping")
            label = f"{source}: {section}[{index}] (id={raw.get('id')})"
            row = _validate(model, raw, label)
            rule_id = str(raw["id"])
            if rule_id in ids:
                raise SeedDataError(f"{label}: duplicate id, also in {ids[rule_id]}")
            ids[rule_id] = f"{section}[{index}]"
            if not str(raw["source"]).strip():
                raise SeedDataError(f"{label}: source must not be empty")
            out.append(row)
        return out

    return rows("frameworks", CompatRule), rows("runtime_driver", RuntimeDriverRule)


# -------------------------------------------------------------------------- matching

_SEPARATORS = re.compile(r"[\s_\-]+")
_BRACKETED = re.compile(r"[\[(]([^\])]+)[\])]")
_WILDCARDS = frozenset("*?[")
# Words vendor tools put in front of the model name.
_VENDOR_WORDS = (
    "nvidia",
    "tesla",
    "huawei",
    "ascend",
    "hygon",
    "dcu",
    "amd",
    "radeon",
    "instinct",
    "cambricon",
    "kunlunxin",
    "iluvatar",
    "metax",
    "moore",
    "threads",
    "mthreads",
    "enflame",
)


def _keys(name: str) -> list[str]:
    """Normalised spellings of one name: lower case, no separators, vendor words dropped."""
    out: list[str] = []

    def add(key: str) -> None:
        if key and key not in out:
            out.append(key)

    sources = [name, *_BRACKETED.findall(name)]
    for text in sources:
        tokens = [token for token in _SEPARATORS.split(text.strip().lower()) if token]
        if not tokens:
            continue
        add("".join(tokens))
        while len(tokens) > 1 and tokens[0] in _VENDOR_WORDS:
            tokens = tokens[1:]
            add("".join(tokens))
        joined = "".join(tokens)
        for word in _VENDOR_WORDS:  # glued prefixes: "Ascend910B3"
            if joined.startswith(word) and len(joined) > len(word):
                add(joined[len(word) :])
    return out


def _literal_length(pattern: str) -> int:
    return sum(1 for char in pattern if char not in _WILDCARDS)


def match_model(vendor: str, printed_name: str, catalog: Iterable[DeviceModel]) -> DeviceModel | None:
    """The catalog entry for a name a vendor tool printed, or None.

    Compares case-insensitively, ignoring spaces, "-" and "_", leading vendor words and
    text outside brackets, against each entry's model and aliases of the same vendor.
    Exact matches win over glob aliases; among glob matches the most specific pattern wins.
    An ambiguous name (two entries match equally well) gives None.
    """
    vendor_key = vendor.strip().lower()
    candidates: Sequence[DeviceModel] = [entry for entry in catalog if entry.vendor == vendor_key]
    wanted = _keys(printed_name)
    if not candidates or not wanted:
        return None

    literal: list[tuple[DeviceModel, set[str]]] = []
    globs: list[tuple[DeviceModel, list[str]]] = []
    for entry in candidates:
        exact: set[str] = set()
        patterns: list[str] = []
        for name in (entry.model, *entry.aliases):
            if _WILDCARDS & set(name):
                patterns.extend(_keys(name))
            else:
                exact.update(_keys(name))
        literal.append((entry, exact))
        globs.append((entry, patterns))

    for key in wanted:
        hits = [entry for entry, keys in literal if key in keys]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None

    best: DeviceModel | None = None
    best_score = -1
    tied = False
    for key in wanted:
        for entry, patterns in globs:
            for pattern in patterns:
                if not fnmatch.fnmatchcase(key, pattern):
                    continue
                score = _literal_length(pattern)
                if score > best_score:
                    best, best_score, tied = entry, score, False
                elif score == best_score and best is not entry:
                    tied = True
    return None if tied else best
