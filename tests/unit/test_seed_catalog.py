"""The seed device-model catalog and compatibility rules: validity, pinned facts, name matching."""

from __future__ import annotations

import math

import pytest

from libs.catalog import (
    SeedDataError,
    load_catalog,
    load_catalog_entries,
    load_rules,
    match_model,
    parse_catalog,
    parse_rules,
)
from libs.catalog.loader import _keys
from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule
from libs.schemas.devices import HardwareType
from libs.versions import SpecifierSet, Version

VENDORS = set("nvidia huawei hygon cambricon amd kunlunxin iluvatar metax mthreads enflame aws habana intel".split())
RUNTIMES = {"cuda", "cann", "rocm", "dtk", "neuware", "xre", "corex", "maca", "musa", "topsrider"}
FRAMEWORKS = {"pytorch", "mindspore", "paddlepaddle", "tensorflow", "onnxruntime", "vllm"}


@pytest.fixture(scope="module")
def catalog() -> list[DeviceModel]:
    return load_catalog()


@pytest.fixture(scope="module")
def rules() -> tuple[list[CompatRule], list[RuntimeDriverRule]]:
    return load_rules()


def _by_model(catalog: list[DeviceModel]) -> dict[str, DeviceModel]:
    return {m.model: m for m in catalog}


# ------------------------------------------------------------------------- catalog


def test_catalog_every_entry_validates(catalog: list[DeviceModel]) -> None:
    assert len(catalog) >= 50
    assert all(isinstance(m, DeviceModel) for m in catalog)
    for m in catalog:
        DeviceModel.model_validate(m.model_dump())


def test_catalog_models_are_unique(catalog: list[DeviceModel]) -> None:
    keys = [(m.vendor, m.model.lower()) for m in catalog]
    assert len(keys) == len(set(keys))


def test_catalog_names_are_unambiguous_within_a_vendor(catalog: list[DeviceModel]) -> None:
    owner: dict[tuple[str, str], str] = {}
    for m in catalog:
        for name in (m.model, *m.aliases):
            if any(ch in name for ch in "*?["):
                continue
            for key in _keys(name):
                other = owner.setdefault((m.vendor, key), m.model)
                assert other == m.model, f"{name!r} of {m.model} also names {other}"


def test_catalog_every_entry_has_a_source(catalog: list[DeviceModel]) -> None:
    for m in catalog:
        assert len(m.source.strip()) > 20, m.model


def test_catalog_vendors_are_known_keys(catalog: list[DeviceModel]) -> None:
    assert {m.vendor for m in catalog} == VENDORS


def test_catalog_compute_units_follow_the_fp16_rule() -> None:
    for entry in load_catalog_entries():
        m = entry.device
        if m.compute_units_estimated:
            assert m.fp16_tflops is None and m.int8_tops is None and m.compute_units > 0, m.model
            assert entry.notes and entry.notes.startswith("Estimate"), m.model
        elif m.fp16_tflops is not None:
            assert math.isclose(m.compute_units, m.fp16_tflops), m.model
        elif m.int8_tops is not None:
            assert math.isclose(m.compute_units, m.int8_tops / 2), m.model
            assert entry.notes and "INT8" in entry.notes, m.model
        else:
            assert m.compute_units == 0, m.model
            assert entry.notes, m.model


def test_catalog_dense_figures_are_consistent(catalog: list[DeviceModel]) -> None:
    for m in catalog:
        if m.fp16_tflops is not None and m.fp32_tflops is not None:
            assert m.fp16_tflops >= m.fp32_tflops, m.model
        if m.fp16_tflops is not None and m.int8_tops is not None:
            assert m.int8_tops >= m.fp16_tflops, m.model
        assert m.memory_gib > 0, m.model


def test_catalog_covers_the_required_models(catalog: list[DeviceModel]) -> None:
    required = {
        "nvidia": [
            "A100-SXM4-80GB",
            "A100-PCIE-40GB",
            "A100-80GB-PCIe",
            "H100-80GB-HBM3",
            "H100-PCIe",
            "H200",
            "L40S",
            "L40",
            "A10",
            "T4",
            "V100-SXM2-32GB",
            "A800-SXM4-80GB",
            "H800",
            "H20",
        ],
        "huawei": [
            "Ascend910A",
            "Ascend910B1",
            "Ascend910B2",
            "Ascend910B2C",
            "Ascend910B3",
            "Ascend910B4",
            "Ascend310",
            "Ascend310P3",
        ],
        "hygon": ["Z100", "Z100L", "K100", "K100_AI"],
        "cambricon": ["MLU370-X4", "MLU370-X8", "MLU370-S4"],
        "amd": ["MI50", "MI100", "MI210", "MI250X", "MI300X", "MI300A", "MI308X"],
        "kunlunxin": ["R200", "R300", "P800"],
        "iluvatar": ["BI-V100", "BI-V150"],
        "metax": ["C500", "C550"],
        "mthreads": ["MTT S4000", "MTT S80", "MTT S5000"],
        "enflame": ["S60"],
    }
    present = {(m.vendor, m.model) for m in catalog}
    missing = [(v, name) for v, names in required.items() for name in names if (v, name) not in present]
    assert not missing


@pytest.mark.parametrize(
    ("model", "fp16", "fp32", "int8"),
    [
        ("A100-SXM4-80GB", 312, 19.5, 624),
        ("H100-80GB-HBM3", 989.4, 67, 1978.9),
        ("T4", 65, 8.1, 130),
        ("L40S", 362.05, 91.6, 733),
        ("MI300X", 1307.4, 163.4, 2614.9),
        ("MI250X", 383, 47.9, 383),
        ("MLU370-X8", 96, 32, 256),
    ],
)
def test_catalog_pins_published_figures(
    catalog: list[DeviceModel], model: str, fp16: float, fp32: float, int8: float
) -> None:
    m = _by_model(catalog)[model]
    assert (m.fp16_tflops, m.fp32_tflops, m.int8_tops) == (fp16, fp32, int8)
    assert m.compute_units == fp16


def test_catalog_unpublished_figures_stay_null(catalog: list[DeviceModel]) -> None:
    by_model = _by_model(catalog)
    assert by_model["T4"].bf16_tflops is None  # Turing has no BF16
    assert by_model["K100_AI"].fp16_tflops is None and by_model["K100_AI"].compute_units_estimated
    assert by_model["K100"].fp16_tflops is None and by_model["K100"].compute_units == 0
    assert by_model["MI308X"].fp16_tflops is None


# --------------------------------------------------------------------------- rules


def test_rules_every_row_validates(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    frameworks, drivers = rules
    assert len(frameworks) >= 50 and len(drivers) >= 40
    assert all(isinstance(r, CompatRule) for r in frameworks)
    assert all(isinstance(r, RuntimeDriverRule) for r in drivers)


def test_rules_ids_are_unique(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    ids = [r.id for group in rules for r in group]
    assert len(ids) == len(set(ids))


def test_rules_every_row_has_a_source(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    for group in rules:
        for r in group:
            assert len(r.source.strip()) > 20, r.id


def test_rules_specifiers_and_versions_parse(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    frameworks, drivers = rules
    for r in frameworks:
        assert SpecifierSet.parse(r.framework_versions), r.id
        assert SpecifierSet.parse(r.runtime_versions), r.id
    for d in drivers:
        assert SpecifierSet.parse(d.runtime_versions), d.id
        Version.parse(d.min_driver_version)


def test_rules_ranges_are_not_empty(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    frameworks, drivers = rules
    specs = [(r.id, r.framework_versions) for r in frameworks]
    specs += [(r.id, r.runtime_versions) for r in frameworks]
    specs += [(d.id, d.runtime_versions) for d in drivers]
    for rule_id, text in specs:
        spec = SpecifierSet.parse(text)
        assert spec.overlaps(spec), f"{rule_id}: {text} admits no version"


def test_rules_use_known_keys(
    catalog: list[DeviceModel], rules: tuple[list[CompatRule], list[RuntimeDriverRule]]
) -> None:
    frameworks, drivers = rules
    hardware = {(m.vendor, m.hardware_type) for m in catalog}
    for r in frameworks:
        assert r.framework in FRAMEWORKS, r.id
        assert r.runtime in RUNTIMES, r.id
        assert (r.vendor, r.hardware_type) in hardware, r.id
    for d in drivers:
        assert d.runtime in RUNTIMES and d.vendor in VENDORS, d.id


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [
        ("12.4", "550.54.14"),
        ("12.4.1", "550.54.15"),
        ("12.1", "530.30.02"),
        ("12.1.1", "530.30.02"),
        ("11.8", "520.61.05"),
        ("12.8", "570.26"),
        ("12.9.1", "575.57.08"),
        ("13.0", "580.65.06"),
    ],
)
def test_rules_cuda_minimum_driver_is_pinned(
    rules: tuple[list[CompatRule], list[RuntimeDriverRule]], cuda: str, driver: str
) -> None:
    rows = [
        d for d in rules[1] if d.runtime == "cuda" and SpecifierSet.parse(d.runtime_versions).contains(cuda)
    ]
    assert [d.min_driver_version for d in rows] == [driver]


def test_rules_cuda_rows_cover_every_toolkit_release_exactly_once(
    rules: tuple[list[CompatRule], list[RuntimeDriverRule]],
) -> None:
    releases = (
        "11.0 11.0.2 11.0.3 11.1 11.1.1 11.2 11.2.1 11.2.2 11.3 11.3.1 11.4 11.4.1 "
        "11.4.2 11.4.3 11.4.4 11.5 11.5.1 11.5.2 11.6 11.6.1 11.6.2 11.7 11.7.1 11.8 "
        "12.0 12.0.1 12.1 12.1.1 12.2 12.2.1 12.2.2 12.3 12.3.1 12.3.2 12.4 12.4.1 "
        "12.5 12.5.1 12.6 12.6.1 12.6.2 12.6.3 12.8 12.8.1 12.9 12.9.1 13.0 13.0.1 "
        "13.0.2 13.1"
    ).split()
    cuda_rows = [d for d in rules[1] if d.runtime == "cuda"]
    for release in releases:
        hits = [d.id for d in cuda_rows if SpecifierSet.parse(d.runtime_versions).contains(release)]
        assert len(hits) == 1, f"CUDA {release}: {hits}"


def test_rules_minimum_drivers_rise_with_the_runtime(
    rules: tuple[list[CompatRule], list[RuntimeDriverRule]],
) -> None:
    for runtime in ("cuda", "cann"):
        rows = [d for d in rules[1] if d.runtime == runtime]
        rows.sort(key=lambda d: SpecifierSet.parse(d.runtime_versions).bounds()[0] or ((), True))
        drivers = [Version.parse(d.min_driver_version) for d in rows]
        assert drivers == sorted(drivers), runtime


def test_rules_pin_known_framework_pairings(rules: tuple[list[CompatRule], list[RuntimeDriverRule]]) -> None:
    by_id = {r.id: r for r in rules[0]}
    torch_npu = SpecifierSet.parse(by_id["pytorch-2.1-cann"].runtime_versions)
    assert torch_npu.contains("7.0.0") and torch_npu.contains("8.0.RC1")
    assert not torch_npu.contains("6.3.RC2")
    assert SpecifierSet.parse(by_id["tensorflow-2.18-cuda"].runtime_versions).contains("12.5")
    assert not SpecifierSet.parse(by_id["tensorflow-2.18-cuda"].runtime_versions).contains("12.4")


# ------------------------------------------------------------------------- loader


def test_parse_catalog_error_names_file_and_entry() -> None:
    text = "models:\n  - vendor: nvidia\n    model: X1\n    hardware_type: gpu\n    compute_units: 1\n"
    with pytest.raises(SeedDataError, match=r"catalog\.yaml: entry 0 \(nvidia/X1\): .*memory_gib"):
        parse_catalog(text)


def test_parse_catalog_rejects_compute_units_off_the_fp16_rule() -> None:
    text = (
        "models:\n  - {vendor: nvidia, model: X1, hardware_type: gpu, memory_gib: 8, fp16_tflops: 10,\n"
        "     compute_units: 12, source: somewhere}\n"
    )
    with pytest.raises(SeedDataError, match=r"entry 0 \(nvidia/X1\): compute_units is 12"):
        parse_catalog(text, "test.yaml")


def test_catalog_every_demo_fleet_model_has_compute_units() -> None:
    from agent.sim.fleet import PROFILES
    entries = {(e.device.vendor, e.device.model): e.device for e in load_catalog_entries()}
    for p in PROFILES.values():
        if p.hardware_type is None or p.hardware_type.value == "fpga":
            continue
        m = entries[(p.vendor, p.model)]
        assert m.compute_units > 0, f"{p.vendor}/{p.model} counts 0 CU, so vendor-neutral requests never use it"


@pytest.mark.parametrize(("row", "error"), [
    ("fp16_tflops: 10, compute_units: 12, compute_units_estimated: true, notes: Estimate from x",
     "with a published fp16_tflops"),
    ("compute_units: 12, compute_units_estimated: true, notes: from somewhere", "must start with 'Estimate'"),
    ("compute_units: 0, compute_units_estimated: true, notes: Estimate from x", "must be above 0"),
])
def test_parse_catalog_rejects_estimates_not_marked_as_such(row: str, error: str) -> None:
    text = f"models:\n  - {{vendor: hygon, model: X1, hardware_type: dcu, memory_gib: 8, source: s, {row}}}\n"
    with pytest.raises(SeedDataError, match=error):
        parse_catalog(text, "test.yaml")


def test_parse_catalog_accepts_a_marked_estimate() -> None:
    text = ("models:\n  - {vendor: hygon, model: X1, hardware_type: dcu, memory_gib: 8, source: s, compute_units: 12,"
            " compute_units_estimated: true, notes: Estimate from the X0's figure}\n")
    (entry,) = parse_catalog(text, "test.yaml")
    assert entry.device.compute_units == 12 and entry.device.compute_units_estimated


def test_parse_catalog_rejects_duplicate_models() -> None:
    row = "  - {vendor: amd, model: M1, hardware_type: gpu, memory_gib: 8, fp16_tflops: 1, compute_units: 1, source: s}\n"
    with pytest.raises(SeedDataError, match=r"entry 1 \(amd/M1\): duplicate of entry 0"):
        parse_catalog("models:\n" + row + row)


def test_parse_rules_error_names_file_and_row() -> None:
    text = (
        "runtime_driver: []\nframeworks:\n"
        "  - {id: r1, framework: pytorch, framework_versions: '>=2.4', hardware_type: tpu,\n"
        "     vendor: x, runtime: cuda, runtime_versions: '>=12.1', source: s}\n"
    )
    with pytest.raises(SeedDataError, match=r"rules\.yaml: frameworks\[0\] \(id=r1\): hardware_type"):
        parse_rules(text)


def test_parse_rules_rejects_malformed_yaml() -> None:
    with pytest.raises(SeedDataError, match=r"rules\.yaml: not valid YAML"):
        parse_rules("frameworks: [")


# ------------------------------------------------------------------- match_model

# Names exactly as the vendor tools print them, taken from published outputs
# (nvidia-smi, npu-smi, rocm-smi/amd-smi, hy-smi docs, cnmon, xpu_smi, ixsmi, mx-smi,
# mthreads-gmi, efsmi).
PRINTED_NAMES = [
    ("nvidia", "NVIDIA H100 80GB HBM3", "H100-80GB-HBM3"),
    ("nvidia", "NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
    ("nvidia", "NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
    ("nvidia", "Tesla T4", "T4"),
    ("nvidia", "NVIDIA A10", "A10"),
    ("nvidia", "NVIDIA L40S", "L40S"),
    ("nvidia", "NVIDIA H200", "H200"),
    ("huawei", "910B1", "Ascend910B1"),
    ("huawei", "910B2C", "Ascend910B2C"),
    ("huawei", "910B3", "Ascend910B3"),
    ("huawei", "Ascend 910B3", "Ascend910B3"),
    ("huawei", "910A", "Ascend910A"),
    ("huawei", "Ascend 910A", "Ascend910A"),
    ("huawei", "310", "Ascend310"),
    ("huawei", "310P3", "Ascend310P3"),
    ("hygon", "K100_AI", "K100_AI"),
    ("cambricon", "MLU370-X4", "MLU370-X4"),
    ("cambricon", "MLU370-X8", "MLU370-X8"),
    ("amd", "MI308X", "MI308X"),
    ("amd", "MI300A", "MI300A"),
    ("amd", "Aqua Vanjaram [Instinct MI300A]", "MI300A"),
    ("amd", "Arcturus GL-XL [Instinct MI100]", "MI100"),
    ("amd", "Radeon Instinct MI50 32GB", "MI50"),
    ("kunlunxin", "R300", "R300"),
    ("kunlunxin", "P800 OAM", "P800"),
    ("iluvatar", "Iluvatar BI-V100", "BI-V100"),
    ("iluvatar", "Iluvatar BI-V150", "BI-V150"),
    ("iluvatar", "Iluvatar BI-V150S", "BI-V150S"),
    ("metax", "MetaX C500", "C500"),
    ("metax", "MetaX C550", "C550"),
    ("mthreads", "MTT S4000", "MTT S4000"),
    ("mthreads", "MTT S80", "MTT S80"),
    ("mthreads", "MTT S5000", "MTT S5000"),
    ("enflame", "S60", "S60"),
]

UNKNOWN_NAMES = [
    ("nvidia", "NVIDIA GeForce ..."),  # truncated by the nvidia-smi table
    ("nvidia", "Tesla P100-PCIE-16GB"),
    ("huawei", "910B"),  # first-generation 910 "Pro B" boards print this; not the 910B1..B4 family
    ("huawei", "Ascend910"),  # A3 (910C-class) chips print this
    ("huawei", "IT21HMDC_Bin5"),  # a board product name, not a chip
    ("amd", "Navi 22 [Radeon RX 6700/6700 XT / 6800M]"),
    ("hygon", "DCU xxxx"),  # masked card series
    ("enflame", "Enflame S60G"),
]


@pytest.mark.parametrize(("vendor", "printed", "model"), PRINTED_NAMES)
def test_match_model_maps_printed_names(
    catalog: list[DeviceModel], vendor: str, printed: str, model: str
) -> None:
    found = match_model(vendor, printed, catalog)
    assert found is not None and found.model == model


@pytest.mark.parametrize(("vendor", "printed"), UNKNOWN_NAMES)
def test_match_model_returns_none_for_unknown_names(
    catalog: list[DeviceModel], vendor: str, printed: str
) -> None:
    assert match_model(vendor, printed, catalog) is None


def test_match_model_ignores_case_and_separators(catalog: list[DeviceModel]) -> None:
    for printed in ("nvidia a100 sxm4 80gb", "A100_SXM4_80GB", "  NVIDIA  A100-SXM4-80GB "):
        found = match_model("NVIDIA", printed, catalog)
        assert found is not None and found.model == "A100-SXM4-80GB"


def test_match_model_requires_the_vendor(catalog: list[DeviceModel]) -> None:
    assert match_model("amd", "NVIDIA H100 80GB HBM3", catalog) is None
    assert match_model("unknown", "T4", catalog) is None


def test_match_model_uses_glob_aliases(catalog: list[DeviceModel]) -> None:
    found = match_model("nvidia", "NVIDIA H100 SXM5 80GB", catalog)
    assert found is not None and found.model == "H100-80GB-HBM3"


def test_match_model_maps_every_model_and_alias_to_itself(catalog: list[DeviceModel]) -> None:
    for m in catalog:
        for name in (m.model, *m.aliases):
            if any(ch in name for ch in "*?["):
                continue
            found = match_model(m.vendor, name, catalog)
            assert found is not None and found.model == m.model, name


def test_catalog_hardware_types_are_schema_values(catalog: list[DeviceModel]) -> None:
    assert {m.hardware_type for m in catalog} <= set(HardwareType)


def test_catalog_multi_device_packages_split_their_figures_per_listed_device(catalog: list[DeviceModel]) -> None:
    by_model = _by_model(catalog)
    # rocm-smi lists each MI250X GCD as a 64 GB GPU; cnmon lists each MLU370-X8 chip as a 24 GB card.
    mi250x, x8 = by_model["MI250X"], by_model["MLU370-X8"]
    assert (mi250x.devices_per_package, mi250x.device_compute_units, mi250x.device_memory_gib) == (2, 191.5, 64)
    assert (x8.devices_per_package, x8.device_compute_units, x8.device_memory_gib) == (2, 48, 24)
    assert by_model["MI300X"].device_compute_units == by_model["MI300X"].compute_units


@pytest.mark.parametrize("field,value", [("vendor", ""), ("vendor", "Has Space"), ("model", ""), ("source", "")])
def test_catalog_entry_rejects_empty_or_unsafe_keys(catalog: list[DeviceModel], field: str, value: str) -> None:
    data = catalog[0].model_dump() | {field: value}
    with pytest.raises(ValueError):
        DeviceModel.model_validate(data)
