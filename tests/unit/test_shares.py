"""Shares held by the vendor's mechanism: the handoff the agent picks (MIG, MPS, HAMi-core, advisory) and the
environment and arguments the process and docker drivers build from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.drivers import LaunchPlan, ProcessDriver, docker_run_args
from agent.probes.base import Capture
from agent.probes.nvidia_smi import parse_list
from agent.probes.records import Collector
from agent.shares import (
    DeviceFacts,
    Handoff,
    ShareMechanisms,
    device_facts,
    parse_mig_instances,
    vnpu_template,
)
from libs.schemas.commands import CommandDevice
from libs.schemas.devices import Device, HardwareType, ShareEnforcement, device_id
from libs.schemas.workload import Variant, WorkloadSpec

MIG_LIST = Path(__file__).resolve().parents[1] / "fixtures" / "probes" / "mig" / "nvidia-smi-L-a100x2-mig.txt"
MIG_A = "MIG-6e95ef19-5145-571b-b040-7e731f1c1af3"


def _gpu(index: int = 0, share: float = 0.5, memory_mib: int | None = 20480, vendor: str = "nvidia"
         ) -> CommandDevice:
    return CommandDevice(id=device_id("h1", vendor, index), index=index, vendor=vendor,
                         hardware_type=HardwareType.GPU if vendor == "nvidia" else HardwareType.NPU, share=share,
                         memory_mib=memory_mib)


def _mps_dir(tmp: Path) -> Path:
    d = tmp / "nvidia-mps"
    d.mkdir()
    os.mkfifo(d / "control")  # what nvidia-cuda-mps-control -d leaves in its pipe directory
    return d


def _hami(tmp: Path) -> Path:
    lib = tmp / "vgpu" / "libvgpu.so"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    return lib


def _plan(tmp: Path, devices: list[CommandDevice], share: Handoff, *, image: str | None = None,
          env: dict[str, str] | None = None) -> LaunchPlan:
    spec = WorkloadSpec(name="job", hardware={"type": "gpu", "share": 0.5})
    return LaunchPlan("wl_1", 0, 1, 1, "h1", "hz", devices, Variant(command=["true"], image=image, env=env or {}),
                      spec, tmp / "run", share=share)


def _pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_shares_whole_devices_have_no_enforcement_and_a_bare_host_is_advisory(tmp_path: Path) -> None:
    mech = ShareMechanisms(mps_pipe_directory=None, hami_core_library=tmp_path / "absent.so")
    assert mech.handoff([_gpu(share=1.0)], tmp_path, container=False) == Handoff()
    advisory = mech.handoff([_gpu()], tmp_path, container=False)
    assert advisory.enforcement == ShareEnforcement.ADVISORY and advisory.env == {}
    # a pipe directory without the daemon's control pipe is not a running MPS
    (tmp_path / "empty-mps").mkdir()
    idle = ShareMechanisms(mps_pipe_directory=tmp_path / "empty-mps", hami_core_library=None)
    assert idle.handoff([_gpu()], tmp_path, container=False).enforcement == ShareEnforcement.ADVISORY
    # an Ascend share has no mechanism here: advisory
    assert mech.handoff([_gpu(vendor="huawei")], tmp_path, container=False).enforcement == ShareEnforcement.ADVISORY


def test_shares_mps_sets_thread_percentage_and_pinned_memory_from_the_share(tmp_path: Path) -> None:
    pipes = _mps_dir(tmp_path)
    mech = ShareMechanisms(mps_pipe_directory=pipes, hami_core_library=_hami(tmp_path))
    h = mech.handoff([_gpu(index=3, share=0.25, memory_mib=10240)], tmp_path, container=False)
    assert h.enforcement == ShareEnforcement.MPS  # MPS first when both are there
    assert h.env == {"CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
                     "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=10240M"}  # ordinal 0: the one GPU the client sees
    # no memory reserved: the share of the device's memory the probe reported
    facts = {device_id("h1", "nvidia", 0): DeviceFacts(memory_mib=81920)}
    h = ShareMechanisms(mps_pipe_directory=pipes, hami_core_library=None, facts=facts).handoff(
        [_gpu(share=0.5, memory_mib=None)], tmp_path, container=False)
    assert h.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=40960M"


def test_shares_hami_core_preloads_its_library_with_memory_and_sm_limits(tmp_path: Path) -> None:
    lib = _hami(tmp_path)
    mech = ShareMechanisms(mps_pipe_directory=None, hami_core_library=lib)
    h = mech.handoff([_gpu(index=5, share=0.3, memory_mib=8000)], tmp_path / "run", container=False)
    assert h.enforcement == ShareEnforcement.HAMI_CORE
    assert h.env == {"LD_PRELOAD": str(lib), "CUDA_DEVICE_SM_LIMIT": "30", "CUDA_DEVICE_MEMORY_LIMIT_0": "8000m",
                     "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(tmp_path / "run" / "vgpu.cache")}
    assert h.mounts == ()
    boxed = mech.handoff([_gpu(index=5, share=0.3, memory_mib=8000)], tmp_path / "run", container=True)
    assert boxed.mounts == (str(lib),) and boxed.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/tmp/xpumesh-vgpu.cache"


def test_shares_probe_lists_mig_instances_and_a_share_takes_a_free_one(tmp_path: Path) -> None:
    text = "".join(line for line in MIG_LIST.read_text().splitlines(keepends=True) if not line.startswith("#"))
    col = Collector("nvidia-smi", "nvidia", HardwareType.GPU)
    parse_list(Capture(argv=("nvidia-smi", "-L"), text=text), col)
    first = col.records[0]["extra"]
    assert first["mig_mode"] == "Enabled" and first["mig_instances"] == f"1g.10gb={MIG_A}"
    [inst] = parse_mig_instances(first["mig_instances"])
    assert (inst.slices, inst.memory_mib) == (1, 9536)  # 10 GB

    dev = Device(index=0, hardware_type=HardwareType.GPU, vendor="nvidia", model="A100-SXM4-40GB", memory_mib=40960,
                 extra=dict(first))
    facts = device_facts("h1", [dev])
    mech = ShareMechanisms(mps_pipe_directory=_mps_dir(tmp_path), hami_core_library=None, facts=facts)
    small = _gpu(share=0.1, memory_mib=4096)
    h = mech.handoff([small], tmp_path, container=False)
    assert (h.enforcement, h.mig_uuid, h.env) == (ShareEnforcement.MIG, MIG_A, {"CUDA_VISIBLE_DEVICES": MIG_A})
    # the instance is held: the next share falls to MPS; one too big for the instance never takes it
    assert mech.handoff([small], tmp_path, container=False, mig_busy={MIG_A}).enforcement == ShareEnforcement.MPS
    assert mech.handoff([_gpu(share=0.5, memory_mib=4096)], tmp_path, container=False).enforcement \
        == ShareEnforcement.MPS


def test_shares_process_driver_environment_carries_the_handoff(tmp_path: Path) -> None:
    lib = _hami(tmp_path)
    mech = ShareMechanisms(mps_pipe_directory=None, hami_core_library=lib)
    dev = _gpu(index=2, share=0.5, memory_mib=20480)
    plan = _plan(tmp_path, [dev], mech.handoff([dev], tmp_path / "run", container=False),
                 env={"LD_PRELOAD": "/opt/app/libtrace.so", "CUDA_DEVICE_SM_LIMIT": "100"})
    env = ProcessDriver().environment(plan)
    assert env["LD_PRELOAD"] == f"{lib}:/opt/app/libtrace.so"  # the limiter first, the workload's kept
    assert env["CUDA_DEVICE_SM_LIMIT"] == "50"  # the workload cannot raise its own limit
    assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "20480m" and env["CUDA_VISIBLE_DEVICES"] == "2"
    assert env["XPUMESH_SHARE"] == "0.5" and env["XPUMESH_MEMORY_MIB"] == "20480"
    mig = Handoff(ShareEnforcement.MIG, {"CUDA_VISIBLE_DEVICES": MIG_A}, mig_uuid=MIG_A)
    assert ProcessDriver().environment(_plan(tmp_path, [dev], mig))["CUDA_VISIBLE_DEVICES"] == MIG_A


def test_shares_docker_arguments_for_mps_hami_core_and_mig(tmp_path: Path) -> None:
    dev = _gpu(index=1, share=0.5, memory_mib=20480)
    pipes = _mps_dir(tmp_path)
    mps = ShareMechanisms(mps_pipe_directory=pipes, hami_core_library=None).handoff([dev], tmp_path, container=True)
    args = docker_run_args(_plan(tmp_path, [dev], mps, image="repo/img:1"))
    assert _pairs(args, "--ipc") == ["host"] and f"{pipes}:{pipes}" in _pairs(args, "-v")
    env = _pairs(args, "--env")
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50" in env and "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M" in env
    assert _pairs(args, "--gpus") == ['"device=1"']

    lib = _hami(tmp_path)
    hami = ShareMechanisms(mps_pipe_directory=None, hami_core_library=lib).handoff([dev], tmp_path, container=True)
    args = docker_run_args(_plan(tmp_path, [dev], hami, image="repo/img:1"))
    assert f"{lib}:{lib}:ro" in _pairs(args, "-v") and "--ipc" not in args
    assert {f"LD_PRELOAD={lib}", "CUDA_DEVICE_MEMORY_LIMIT_0=20480m", "CUDA_DEVICE_SM_LIMIT=50"} <= set(
        _pairs(args, "--env"))

    mig = Handoff(ShareEnforcement.MIG, {"CUDA_VISIBLE_DEVICES": MIG_A}, mig_uuid=MIG_A)
    args = docker_run_args(_plan(tmp_path, [dev], mig, image="repo/img:1"))
    assert _pairs(args, "--gpus") == [f'"device={MIG_A}"']
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in _pairs(args, "--env"))


@pytest.mark.parametrize("share", [0.001, 0.999])
def test_shares_percentages_stay_within_one_and_a_hundred(tmp_path: Path, share: float) -> None:
    mech = ShareMechanisms(mps_pipe_directory=_mps_dir(tmp_path), hami_core_library=None)
    pct = int(mech.handoff([_gpu(share=share)], tmp_path, container=False).env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"])
    assert 1 <= pct <= 100 and pct == max(1, round(share * 100))


def test_shares_ascend_vnpu_takes_the_smallest_template_with_the_share_of_ai_cores() -> None:
    assert [vnpu_template("Ascend310P3", s) for s in (0.1, 0.125, 0.25, 0.5, 0.6)] == [
        "vir01", "vir01", "vir02", "vir04", None]  # 8 AI cores: 1, 2 or 4 of them
    assert [vnpu_template("Ascend910", s) for s in (0.05, 0.25, 0.5, 0.75)] == ["vir02", "vir08", "vir16", None]
    assert vnpu_template("Ascend910B3", 0.25) is None and vnpu_template("MLU370-X8", 0.25) is None


def test_shares_ascend_vnpu_only_in_a_container_with_the_runtime_switched_on(tmp_path: Path) -> None:
    npu = _gpu(index=3, share=0.25, memory_mib=6144, vendor="huawei")
    facts = {npu.id: DeviceFacts(memory_mib=24576, model="Ascend310P3")}
    on = ShareMechanisms(mps_pipe_directory=None, hami_core_library=None, ascend_vnpu=True, facts=facts)
    h = on.handoff([npu], tmp_path, container=True)
    assert (h.enforcement, h.vnpu, h.env) == (ShareEnforcement.VNPU, "vir02",
                                              {"ASCEND_VISIBLE_DEVICES": "3", "ASCEND_VNPU_SPECS": "vir02"})
    assert on.handoff([npu], tmp_path, container=False).enforcement == ShareEnforcement.ADVISORY
    off = ShareMechanisms(mps_pipe_directory=None, hami_core_library=None, facts=facts)
    assert off.handoff([npu], tmp_path, container=True).enforcement == ShareEnforcement.ADVISORY
    b3 = ShareMechanisms(mps_pipe_directory=None, hami_core_library=None, ascend_vnpu=True,
                         facts={npu.id: DeviceFacts(model="Ascend910B3")})
    assert b3.handoff([npu], tmp_path, container=True).enforcement == ShareEnforcement.ADVISORY

    args = docker_run_args(_plan(tmp_path, [npu], h, image="repo/cann:8"))
    env = _pairs(args, "--env")
    assert "ASCEND_VISIBLE_DEVICES=3" in env and "ASCEND_VNPU_SPECS=vir02" in env
    assert not any(d.startswith("/dev/davinci") for d in _pairs(args, "--device"))  # the runtime mounts the vNPU
    whole = docker_run_args(_plan(tmp_path, [_gpu(index=3, share=1.0, vendor="huawei")], Handoff(),
                                  image="repo/cann:8"))
    assert "/dev/davinci3" in _pairs(whole, "--device")


def test_shares_host_summary_says_per_vendor_what_may_hold_a_share(tmp_path: Path) -> None:
    def dev(vendor: str, model: str, index: int = 0, **extra: str) -> Device:
        kind = {"nvidia": HardwareType.GPU, "huawei": HardwareType.NPU}.get(vendor, HardwareType.MLU)
        return Device(index=index, hardware_type=kind, vendor=vendor, model=model, extra=dict(extra))

    host = [dev("nvidia", "A100-SXM4-40GB", 0, mig_instances=f"1g.10gb={MIG_A}"), dev("nvidia", "A100-SXM4-40GB", 1),
            dev("huawei", "Ascend310P3"), dev("cambricon", "MLU370-X8")]
    bare = ShareMechanisms(mps_pipe_directory=None, hami_core_library=None)
    assert bare.summary(host) == {"cambricon": ["advisory"], "huawei": ["advisory"], "nvidia": ["mig", "advisory"]}
    full = ShareMechanisms(mps_pipe_directory=_mps_dir(tmp_path), hami_core_library=_hami(tmp_path), ascend_vnpu=True)
    assert full.summary(host) == {"cambricon": ["advisory"], "huawei": ["vnpu", "advisory"],
                                  "nvidia": ["mig", "mps", "hami-core", "advisory"]}
    assert full.summary([dev("huawei", "Ascend910B3")]) == {"huawei": ["advisory"]}
