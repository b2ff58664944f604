"""Drivers: vendor-correct docker argument lists, visible-device variables, real processes, sim runs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psutil
import pytest

from agent.drivers import (
    LaunchError,
    LaunchPlan,
    ProcessDriver,
    SimDriver,
    docker_run_args,
    visible_devices_env,
)
from libs.schemas.commands import CommandDevice
from libs.schemas.devices import HardwareType, device_id
from libs.schemas.workload import Variant, WorkloadSpec

TYPES = {"nvidia": "gpu", "amd": "gpu", "hygon": "dcu", "huawei": "npu", "cambricon": "mlu", "kunlunxin": "xpu",
         "iluvatar": "gpu", "metax": "gpu", "mthreads": "gpu", "enflame": "gcu"}


def _devices(vendor: str, indices: list[int], share: float = 1.0) -> list[CommandDevice]:
    return [CommandDevice(id=device_id("h1", vendor, i), index=i, vendor=vendor, hardware_type=HardwareType(TYPES[vendor]),
                          share=share) for i in indices]


def _plan(tmp: Path, vendor: str = "nvidia", indices: list[int] | None = None, *, command: list[str] | None = None,
          image: str | None = "repo/img:1", env: dict[str, str] | None = None, duration: float | None = None,
          share: float = 1.0) -> LaunchPlan:
    variant = Variant(command=command, image=image, env=env or {})
    spec = WorkloadSpec(name="job", hardware={"type": TYPES[vendor], "count": 1}, duration_s=duration)
    return LaunchPlan("wl_1", 0, 1, 1, "h1", "hz", _devices(vendor, indices if indices is not None else [0, 1], share),
                      variant, spec, tmp / "run")


def _pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_drivers_docker_nvidia_gpus_flag_quotes_the_device_list(tmp_path: Path) -> None:
    args = docker_run_args(_plan(tmp_path, "nvidia", [2, 0], command=["python", "train.py"]))
    assert args[:3] == ["docker", "run", "--detach"]
    assert _pairs(args, "--gpus") == ['"device=0,2"']
    assert args[-3:] == ["repo/img:1", "python", "train.py"]
    env = _pairs(args, "--env")
    assert "XPUMESH_WORKLOAD_ID=wl_1" in env and "XPUMESH_DEVICES=h1:nvidia:2,h1:nvidia:0" in env
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in env)


def test_drivers_docker_ascend_passes_davinci_nodes_and_driver_mounts(tmp_path: Path) -> None:
    args = docker_run_args(_plan(tmp_path, "huawei", [3, 5]))
    assert _pairs(args, "--device") == ["/dev/davinci3", "/dev/davinci5", "/dev/davinci_manager", "/dev/devmm_svm",
                                        "/dev/hisi_hdc"]
    mounts = _pairs(args, "-v")
    assert "/usr/local/Ascend/driver:/usr/local/Ascend/driver:ro" in mounts
    assert "/usr/local/bin/npu-smi:/usr/local/bin/npu-smi:ro" in mounts


def test_drivers_docker_amd_and_hygon_pass_kfd_and_dri_and_pick_with_hip(tmp_path: Path) -> None:
    amd = docker_run_args(_plan(tmp_path, "amd", [1]))
    assert _pairs(amd, "--device") == ["/dev/kfd", "/dev/dri"]
    assert "HIP_VISIBLE_DEVICES=1" in _pairs(amd, "--env") and "video" in _pairs(amd, "--group-add")
    hygon = docker_run_args(_plan(tmp_path, "hygon", [0, 3]))
    assert _pairs(hygon, "--device") == ["/dev/kfd", "/dev/dri", "/dev/mkfd"]
    assert "/opt/hyhal:/opt/hyhal:ro" in _pairs(hygon, "-v")
    assert "HIP_VISIBLE_DEVICES=0,3" in _pairs(hygon, "--env")


def test_drivers_docker_cambricon_kunlunxin_and_others_pass_their_nodes(tmp_path: Path) -> None:
    assert _pairs(docker_run_args(_plan(tmp_path, "cambricon", [0, 2])), "--device") == [
        "/dev/cambricon_dev0", "/dev/cambricon_dev2", "/dev/cambricon_ctl"]
    assert _pairs(docker_run_args(_plan(tmp_path, "kunlunxin", [1])), "--device") == ["/dev/xpu1", "/dev/xpuctrl"]
    assert _pairs(docker_run_args(_plan(tmp_path, "iluvatar", [0])), "--device") == ["/dev/iluvatar0", "/dev/itrctl"]
    metax = docker_run_args(_plan(tmp_path, "metax", [4]))
    assert _pairs(metax, "--device") == ["/dev/dri", "/dev/mxcd"] and "CUDA_VISIBLE_DEVICES=4" in _pairs(metax, "--env")
    mt = docker_run_args(_plan(tmp_path, "mthreads", [0, 1]))
    assert _pairs(mt, "--runtime") == ["mthreads"] and "MTHREADS_VISIBLE_DEVICES=0,1" in _pairs(mt, "--env")
    assert _pairs(docker_run_args(_plan(tmp_path, "enflame", [2])), "--device") == ["/dev/gcu2"]


def test_drivers_docker_refuses_unknown_vendor_and_missing_image(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    odd = LaunchPlan(plan.workload_id, 0, 1, 1, "h1", "hz", [CommandDevice(
        id="h1:acme:0", index=0, vendor="acme", hardware_type=HardwareType.GPU)], plan.variant, plan.spec, plan.workdir)
    with pytest.raises(LaunchError, match="acme"):
        docker_run_args(odd)
    with pytest.raises(LaunchError, match="image"):
        docker_run_args(_plan(tmp_path, image=None, command=["true"]))


def test_drivers_visible_device_variables_per_vendor() -> None:
    assert visible_devices_env(_devices("nvidia", [3, 1])) == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert visible_devices_env(_devices("huawei", [0])) == {"ASCEND_RT_VISIBLE_DEVICES": "0"}
    assert visible_devices_env(_devices("amd", [2])) == {"HIP_VISIBLE_DEVICES": "2"}
    assert visible_devices_env(_devices("hygon", [2])) == {"HIP_VISIBLE_DEVICES": "2"}
    assert visible_devices_env(_devices("cambricon", [1])) == {"MLU_VISIBLE_DEVICES": "1"}
    assert visible_devices_env(_devices("kunlunxin", [0, 1])) == {"XPU_VISIBLE_DEVICES": "0,1"}
    assert visible_devices_env(_devices("mthreads", [0])) == {"MUSA_VISIBLE_DEVICES": "0"}
    assert visible_devices_env(_devices("enflame", [5])) == {"TOPS_VISIBLE_DEVICES": "5"}


PRINT_ENV = [sys.executable, "-c",
             "import os, sys; print('cuda=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'));"
             "print('devs=' + os.environ['XPUMESH_DEVICES']); print('share=' + os.environ.get('XPUMESH_SHARE', '-'));"
             "print('extra=' + os.environ.get('EXTRA', '-')); sys.exit(3)"]


async def test_drivers_process_runs_with_visible_devices_and_reports_exit_code(tmp_path: Path) -> None:
    driver = ProcessDriver()
    handle = await driver.start(_plan(tmp_path, "nvidia", [1], command=PRINT_ENV, image=None, env={"EXTRA": "x y"},
                                      share=0.5))
    assert await driver.alive(handle)
    code, _ = await asyncio.wait_for(driver.wait(handle), timeout=10)
    assert code == 3
    text, truncated = await driver.logs(handle, 4096)
    assert "cuda=1\n" in text and "devs=h1:nvidia:1\n" in text and "share=0.5\n" in text and "extra=x y\n" in text
    assert not truncated
    assert not await driver.alive(handle)


async def test_drivers_process_missing_command_is_a_launch_error(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="command"):
        await ProcessDriver().start(_plan(tmp_path, command=None, image=None))
    handle = await ProcessDriver().start(_plan(tmp_path, command=["/nonexistent/binary"], image=None))
    code, _ = await asyncio.wait_for(ProcessDriver().wait(handle), timeout=10)
    assert code == 127


async def test_drivers_process_stop_kills_the_whole_group(tmp_path: Path) -> None:
    driver = ProcessDriver()
    script = "sleep 60 & echo child=$!; wait"
    handle = await driver.start(_plan(tmp_path, command=["/bin/sh", "-c", script], image=None))
    for _ in range(100):
        text, _ = await driver.logs(handle, 1024)
        if "child=" in text:
            break
        await asyncio.sleep(0.05)
    child = int(text.split("child=")[1].split()[0])
    await driver.stop(handle, grace_s=2.0)
    code, message = await asyncio.wait_for(driver.wait(handle), timeout=5)
    assert code is None and "signal" in message
    await asyncio.sleep(0.1)
    try:  # gone, or a zombie waiting for init to reap it
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


async def test_drivers_process_adopted_by_a_new_driver_still_yields_the_exit_code(tmp_path: Path) -> None:
    first = ProcessDriver()
    handle = await first.start(_plan(tmp_path, command=["/bin/sh", "-c", "sleep 0.5; exit 7"], image=None))
    restarted = ProcessDriver(poll_s=0.05)  # a new agent: the process is not its child
    assert await restarted.alive(handle)
    code, _ = await asyncio.wait_for(restarted.wait(handle), timeout=10)
    assert code == 7
    await first.wait(handle)  # reap


async def test_drivers_process_log_stays_bounded(tmp_path: Path) -> None:
    driver = ProcessDriver(log_max_bytes=8192)
    script = "for i in $(seq 1 4000); do echo line-$i-xxxxxxxxxxxxxxxx; done"
    handle = await driver.start(_plan(tmp_path, command=["/bin/sh", "-c", script], image=None))
    await asyncio.wait_for(driver.wait(handle), timeout=20)
    total = sum(p.stat().st_size for p in (tmp_path / "run").glob("output.log*"))
    assert total <= 8192 + 4096
    text, truncated = await driver.logs(handle, 100_000)
    assert truncated and text.rstrip().endswith("line-4000-xxxxxxxxxxxxxxxx")


async def test_drivers_sim_runs_for_its_duration_with_its_exit_code(tmp_path: Path) -> None:
    driver = SimDriver()
    handle = await driver.start(_plan(tmp_path, "nvidia", [0, 1], duration=0.2, env={"XPUMESH_SIM_EXIT_CODE": "2"},
                                      share=0.5))
    assert await driver.alive(handle)
    code, message = await asyncio.wait_for(driver.wait(handle), timeout=5)
    assert code == 2 and message
    assert not await driver.alive(handle)
