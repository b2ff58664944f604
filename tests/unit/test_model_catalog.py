"""The adapted-model catalog: validated, sourced rows, memory computed from parameter counts, and model and
recipe requests expanded into specs (one alternative per published build, sized, naming the build)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from libs.catalog import SeedDataError
from libs.catalog.models import MODELS_FILE, load_models, model_view, parse_models
from libs.schemas.models import BYTES_PER_PARAMETER, MEMORY_OVERHEAD
from libs.schemas.workload import WorkloadSpec
from libs.versions import Requirement

REQUIRED = {"qwen2.5-7b-instruct", "qwen3-8b", "llama-3.1-8b-instruct", "deepseek-r1-distill-qwen-7b", "resnet-50",
            "bert-base-uncased", "yolov8n", "wordllama-l2-supercat-256"}


def test_model_catalog_lists_the_mainstream_models_each_build_with_https_sources() -> None:
    cat = load_models()
    assert REQUIRED <= {m.id for m in cat.models}
    for m in cat.models:
        assert m.parameters_source.startswith("https://")
        for b in m.builds:
            assert b.sources and all(s.startswith("https://") for s in b.sources), (m.id, b.id)
            for r in b.requires:
                Requirement.parse(r)
    assert {r.id for r in cat.recipes} >= {"onnx-to-om-atc", "onnx-to-tensorrt"}
    assert all(r.sources for r in cat.recipes)


def test_model_catalog_memory_is_parameters_times_bytes_plus_the_stated_overhead() -> None:
    qwen = load_models().model("qwen2.5-7b-instruct")
    assert qwen is not None
    view = model_view(qwen)
    rows = {r.precision: r for r in view.memory}
    assert set(rows) == {"bf16", "fp16"}
    weights = 7_610_000_000 * 2 / 2**30
    assert rows["bf16"].weights_gib == pytest.approx(weights, abs=1e-3)  # 14.175 GiB
    assert rows["bf16"].total_gib == math.ceil(weights * (1 + MEMORY_OVERHEAD) * 10) / 10 == 17.1
    assert rows["bf16"].source == qwen.parameters_source and "1.2" in rows["bf16"].method
    assert BYTES_PER_PARAMETER["int4"] * 2 == BYTES_PER_PARAMETER["int8"]


def test_model_catalog_refuses_a_build_without_a_source_or_a_bad_requirement() -> None:
    good = (load_models().model("yolov8n") or pytest.fail()).model_dump(mode="json")
    bad = {"models": [{**good, "builds": [{**good["builds"][0], "sources": []}]}], "recipes": []}
    import yaml
    with pytest.raises(SeedDataError, match="sources"):
        parse_models(yaml.safe_dump(bad), MODELS_FILE)
    worse = {"models": [{**good, "recipes": [], "builds": [{**good["builds"][0], "requires": ["cuda=>12"]}]}]}
    with pytest.raises(SeedDataError, match="requires"):
        parse_models(yaml.safe_dump(worse), MODELS_FILE)


def test_model_request_any_becomes_one_alternative_per_published_build() -> None:
    spec = WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}})
    qwen = load_models().model("qwen2.5-7b-instruct")
    assert qwen is not None
    assert [(a.vendor, a.variant) for a in spec.alternatives] == [(b.vendor, b.id) for b in qwen.builds]
    assert [a.requires for a in spec.alternatives] == [b.requires for b in qwen.builds]
    assert {a.memory_gib for a in spec.alternatives} == {17.1} and {a.count for a in spec.alternatives} == {1}
    assert spec.alternatives[1].models == ("Ascend910B*",)  # vllm-ascend serves Atlas A2 only
    assert spec.kind == "service" and spec.service is not None and spec.service.readiness_path == "/health"
    assert spec.variants["vllm-cuda"].image == "vllm/vllm-openai:v0.8.5"
    assert spec.name == "qwen2.5-7b-instruct" and spec.precision == "bf16" and spec.model == "qwen2.5-7b-instruct"
    assert WorkloadSpec.model_validate(spec.model_dump(mode="json")) == spec  # read back, not expanded again


def test_model_request_count_splits_the_memory_and_vendor_narrows_the_builds() -> None:
    spec = WorkloadSpec.model_validate({"model": "llama-3.1-8b-instruct", "hardware": {"type": "gpu"},
                                        "precision": "fp16", "count": 2})
    assert [a.vendor for a in spec.alternatives] == ["nvidia", "amd"]
    total = 8_030_000_000 * 2 / 2**30 * 1.2
    assert {a.count for a in spec.alternatives} == {2}
    assert {a.memory_gib for a in spec.alternatives} == {math.ceil(math.ceil(total * 10) / 10 / 2 * 10) / 10}
    only = WorkloadSpec.model_validate({"model": "llama-3.1-8b-instruct", "hardware": {"type": "any", "vendor": "amd"}})
    assert [a.variant for a in only.alternatives] == ["vllm-rocm"]


def test_model_request_unknown_model_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        WorkloadSpec.model_validate({"model": "qwen9-1t", "hardware": {"type": "any"}})
    [e] = err.value.errors()
    assert e["loc"] == ("model",) and "qwen9-1t" in e["msg"] and "qwen2.5-7b-instruct" in e["msg"]


def test_model_request_without_a_build_for_the_hardware_or_precision_says_which() -> None:
    with pytest.raises(ValidationError, match=r"hardware: qwen2\.5-7b-instruct has no published build for cpu"):
        WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "hardware": {"type": "cpu"}})
    with pytest.raises(ValidationError, match=r"precision: no build of qwen2\.5-7b-instruct .* serves int4"):
        WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}, "precision": "int4"})
    with pytest.raises(ValidationError, match="count"):
        WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}, "count": 0})


def test_model_request_for_the_packaged_model_is_a_cpu_service_running_the_example() -> None:
    spec = WorkloadSpec.model_validate({"model": "wordllama-l2-supercat-256", "hardware": {"type": "cpu"}})
    [alt] = spec.alternatives
    assert alt.is_cpu and alt.variant == "wordllama-cpu"
    command = spec.variants["wordllama-cpu"].command or []
    assert re.search(r"python", command[0]) and command[1].endswith("xpumesh/examples/embeddings.py")
    assert Path(command[1]).is_file()
    assert spec.kind == "service" and spec.service is not None and spec.service.readiness_path == "/healthz"


def test_recipe_request_becomes_a_job_on_the_target_vendor_with_its_arguments() -> None:
    spec = WorkloadSpec.model_validate({"recipe": "onnx-to-om-atc", "recipe_args": {
        "model": "/data/resnet50.onnx", "output": "/data/out/resnet50", "soc_version": "Ascend910B3"}})
    [alt] = spec.alternatives
    assert (str(alt.type), alt.vendor, alt.count, alt.variant) == ("npu", "huawei", 1, "convert")
    assert spec.kind == "job" and spec.restart_policy == "never"
    assert spec.variants["convert"].command == ["atc", "--model=/data/resnet50.onnx", "--framework=5",
                                                "--output=/data/out/resnet50", "--soc_version=Ascend910B3"]
    trt = WorkloadSpec.model_validate({"recipe": "onnx-to-tensorrt", "hardware": {"model": "L40S"},
                                       "recipe_args": {"model": "/m.onnx", "output": "/m.plan"}})
    assert (trt.primary.vendor, trt.primary.models) == ("nvidia", ("L40S",))


def test_recipe_request_refuses_missing_unknown_and_unsafe_arguments() -> None:
    base = {"model": "/m.onnx", "output": "/m", "soc_version": "Ascend910B3"}
    for args, pattern in (({"model": "/m.onnx", "output": "/m"}, "needs parameter 'soc_version'"),
                          ({**base, "extra": "1"}, "no parameter 'extra'"),
                          ({**base, "model": "/m.onnx; rm -rf /"}, "'model' must match"),
                          ({**base, "soc_version": "H100"}, "'soc_version' must match")):
        with pytest.raises(ValidationError, match=pattern):
            WorkloadSpec.model_validate({"recipe": "onnx-to-om-atc", "recipe_args": args})
    with pytest.raises(ValidationError) as err:
        WorkloadSpec.model_validate({"recipe": "onnx-to-magic", "recipe_args": {}})
    assert [e["loc"] for e in err.value.errors()] == [("recipe",)]


def test_model_request_with_a_malformed_service_is_a_validation_error_not_a_crash() -> None:
    with pytest.raises(ValidationError) as err:
        WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "service": 5})
    assert [e["loc"] for e in err.value.errors()] == [("service",)]
    spec = WorkloadSpec.model_validate({"model": "qwen2.5-7b-instruct", "service": {"callers": ["beta"]}})
    assert spec.service is not None and (spec.service.readiness_path, spec.service.callers) == ("/health", ["beta"])


def test_model_catalog_python_of_a_replica_is_one_its_own_uid_can_run(monkeypatch) -> None:
    """As root the agent runs each replica under a uid of its own: an interpreter under a folder only its owner
    may enter (a Python under /root) is replaced by the system's python3 of the same version, with this
    environment's packages on PYTHONPATH; not as root, or when it is reachable, it is this one."""

    import tempfile
    from pathlib import Path

    import libs.catalog.models as m

    with tempfile.TemporaryDirectory() as base:  # in /tmp, which others may enter (pytest's tmp_path is 0700)
        _check_replica_python(Path(base), monkeypatch, m)


def _check_replica_python(tmp_path: Any, monkeypatch: Any, m: Any) -> None:
    import os
    import sys

    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    exe = private / "bin" / "python"
    exe.write_text("")
    exe.chmod(0o755)
    private.chmod(0o700)
    open_dir = tmp_path / "open"
    (open_dir / "bin").mkdir(parents=True)
    shared = open_dir / "bin" / "python"
    shared.write_text("")
    shared.chmod(0o755)
    for d in (tmp_path, open_dir, open_dir / "bin"):
        d.chmod(0o755)
    assert not m.reachable_by_others(str(exe)) and m.reachable_by_others(str(shared))

    monkeypatch.setattr(sys, "executable", str(exe))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    m.replica_python.cache_clear()
    assert m.replica_python() == (str(exe), {})  # not root: replicas run as this user
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    m.replica_python.cache_clear()
    python, env = m.replica_python()
    if python == m.SYSTEM_PYTHON:  # this machine's python3 is of the same version
        assert env["PYTHONNOUSERSITE"] == "1"
        assert all(m.reachable_by_others(p) for p in env["PYTHONPATH"].split(os.pathsep))
    else:
        assert (python, env) == (str(exe), {})
    monkeypatch.setattr(sys, "executable", str(shared))
    monkeypatch.setattr(sys, "base_prefix", str(open_dir))
    m.replica_python.cache_clear()
    assert m.replica_python() == (str(shared), {})  # reachable: used as it is
    m.replica_python.cache_clear()
