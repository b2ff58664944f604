"""Seed data for the mesh: the device-model catalog and the compatibility rules.

``catalog.yaml`` holds the device models with their published figures (1 compute unit =
1 TFLOPS dense FP16); ``rules.yaml`` holds framework <-> runtime rules and the runtime ->
minimum-driver table. ``loader`` reads and validates both and maps names printed by vendor
tools to catalog entries. The inventory seeds its tables from these files and the
scheduler falls back to them while the inventory cannot be asked.
"""

from libs.catalog.loader import (
    CATALOG_FILE,
    RULES_FILE,
    CatalogEntry,
    SeedDataError,
    load_catalog,
    load_catalog_entries,
    load_rules,
    match_model,
    parse_catalog,
    parse_rules,
)

__all__ = [
    "CATALOG_FILE",
    "RULES_FILE",
    "CatalogEntry",
    "SeedDataError",
    "load_catalog",
    "load_catalog_entries",
    "load_rules",
    "match_model",
    "parse_catalog",
    "parse_rules",
]
