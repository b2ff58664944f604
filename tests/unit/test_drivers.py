"""Drivers: vendor-correct docker argument lists, visible-device variables, real processes, sim runs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from agent.drivers import (
    WORKLOAD_ENV_NAMES,
    LaunchError,
    LaunchPlan,
    ProcessDriver,
    SimDriver,
    docker_run_args,
    visible_devices_env,
)
from libs.schemas.commands import CommandDevice
from libs.schemas.devices import HardwareType, device_id
from libs.schemas.workload import DEVICE_ENV_NAMES, Variant, WorkloadSpec

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


# What an agent's environment holds in production (deploy/k8s/agent-daemonset.yaml, docker-compose.yml).
AGENT_SECRETS = {"XPUMESH_NATS_URL": "nats://agent:nats-s3cret@nats:4222",
                 "XPUMESH_DATABASE_URL": "postgresql://xpumesh:db-s3cret@db/xpumesh",
                 "XPUMESH_BOOTSTRAP_ADMIN_KEY": "admin-s3cret", "XPUMESH_GATEWAY__SIGNING_TOKEN": "token-s3cret",
                 "AWS_SECRET_ACCESS_KEY": "aws-s3cret", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}


def _leaky_plan(tmp: Path, *, image: str | None) -> LaunchPlan:
    """A plan whose variant env and plan env carry reserved names past the spec's check."""
    plan = _plan(tmp, "nvidia", [1], command=["env"], image=image, env={"NCCL_DEBUG": "WARN"})
    variant = Variant.model_construct(command=["env"], image=image, env={
        "NCCL_DEBUG": "WARN", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "xpumesh_host": "spoofed"})
    return LaunchPlan(plan.workload_id, 0, 1, 2, "h1", "hz", plan.devices, variant, plan.spec, plan.workdir,
                      {"XPUMESH_PEERS": "h2", "XPUMESH_NATS_URL": AGENT_SECRETS["XPUMESH_NATS_URL"]})


def _no_secret(env: dict[str, str]) -> None:
    for name, value in env.items():
        assert not any(secret in value for secret in AGENT_SECRETS.values() if "s3cret" in secret), name
    assert not {"XPUMESH_NATS_URL", "XPUMESH_DATABASE_URL", "XPUMESH_BOOTSTRAP_ADMIN_KEY",
                "XPUMESH_GATEWAY__SIGNING_TOKEN", "AWS_SECRET_ACCESS_KEY", "xpumesh_host"} & set(env)
    assert {k for k in env if k.upper().startswith("XPUMESH_")} <= WORKLOAD_ENV_NAMES


def test_drivers_process_environment_is_allow_listed_never_the_agents(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AGENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", "/opt/agent/bin:/usr/bin:/bin")
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    plan = _leaky_plan(tmp_path, image=None)
    env = ProcessDriver().environment(plan)
    _no_secret(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["NCCL_DEBUG"] == "WARN" and env["XPUMESH_HOST"] == "h1"
    assert env["PATH"] == "/opt/agent/bin:/usr/bin:/bin" and env["LANG"] == "en_US.UTF-8"
    assert env["HOME"] == str(plan.workdir) and env["XPUMESH_PEERS"] == "h2"
    assert set(env) <= {"PATH", "HOME", "LANG", "NCCL_DEBUG", *WORKLOAD_ENV_NAMES, *DEVICE_ENV_NAMES}
    monkeypatch.delenv("PATH")
    monkeypatch.delenv("LANG")
    bare = ProcessDriver().environment(plan)
    assert bare["PATH"].startswith("/usr/local/sbin:") and bare["LANG"] == "C.UTF-8"


def test_drivers_docker_passes_only_allow_listed_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AGENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    args = docker_run_args(_leaky_plan(tmp_path, image="repo/img:1"))
    assert not any(a.startswith("--env-file") or a == "-e" for a in args)
    pairs = _pairs(args, "--env")
    assert all("=" in p for p in pairs)  # a bare --env NAME would be filled from the agent's environment
    env = dict(p.split("=", 1) for p in pairs)
    _no_secret(env)
    assert "CUDA_VISIBLE_DEVICES" not in env and env["NCCL_DEBUG"] == "WARN" and env["XPUMESH_PEERS"] == "h2"
    assert not any("s3cret" in a for a in args)
    assert set(env) <= {"NCCL_DEBUG", *WORKLOAD_ENV_NAMES, *DEVICE_ENV_NAMES}


@pytest.mark.parametrize("name", ["XPUMESH_NATS_URL", "XPUMESH_HOST", "xpumesh_devices", "CUDA_VISIBLE_DEVICES",
                                  "ASCEND_RT_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                                  "CUDA_VISIBLE_DEVICES=0,1,2,3", "1BAD", ""])
def test_drivers_workload_env_refuses_reserved_and_malformed_names(name: str) -> None:
    with pytest.raises(ValidationError, match="env"):
        Variant(command=["env"], env={name: "x"})


def test_drivers_workload_env_keeps_ordinary_names_and_the_sim_exit_code() -> None:
    assert Variant(env={"NCCL_DEBUG": "WARN", "XPUMESH_SIM_EXIT_CODE": "2", "_x1": ""}).env["NCCL_DEBUG"] == "WARN"
    with pytest.raises(ValidationError, match="NUL"):
        Variant(env={"A": "a\x00b"})


def test_drivers_every_vendor_device_variable_is_reserved() -> None:
    from agent.drivers import VISIBLE_DEVICES_ENV
    from agent.drivers.docker import vendor_args

    names = {n for names in VISIBLE_DEVICES_ENV.values() for n in names}
    names |= {n for v in VISIBLE_DEVICES_ENV for n in vendor_args(v, [0])[1]}
    assert names <= DEVICE_ENV_NAMES


@pytest.mark.parametrize("vendor", sorted(TYPES))
def test_drivers_docker_runs_as_the_replicas_uid_without_capabilities(tmp_path: Path, vendor: str) -> None:
    args = docker_run_args(_plan(tmp_path, vendor, [0], command=["python", "train.py"]), uid=2_100_000_007)
    image = args.index("repo/img:1")
    options = args[:image]  # every flag is docker's, before the image; nothing after it is
    assert _pairs(options, "--user") == ["2100000007:2100000007"]
    assert _pairs(options, "--cap-drop") == ["ALL"] and "--cap-add" not in options
    assert "no-new-privileges" in _pairs(options, "--security-opt")
    assert not any(a.startswith("--privileged") or a.startswith("--userns") or a.startswith("--pid")
                   or a.startswith("--ipc") or a == "--network=host" for a in options)
    assert args[image + 1:] == ["python", "train.py"]


async def test_drivers_docker_driver_gives_each_container_its_own_uid_and_frees_it(tmp_path: Path) -> None:
    from agent.drivers import DockerDriver
    from agent.drivers.isolation import UidPool

    fake = tmp_path / "docker"  # answers `run` with a container id, `wait` with an exit code, records argv
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\ncase "$1" in run) echo c-$$;; wait) echo 0;; esac\n')
    fake.chmod(0o755)
    pool = UidPool(2_100_000_000, 2)
    driver = DockerDriver(str(fake), uids=pool)
    a = await driver.start(_plan(tmp_path))
    b = await driver.start(LaunchPlan("wl_2", 0, 1, 1, "h1", "hz", _devices("nvidia", [1]), Variant(image="i:1"),
                                      _plan(tmp_path).spec, tmp_path / "b"))
    assert {a.uid, b.uid} == {2_100_000_000, 2_100_000_001}
    with pytest.raises(LaunchError, match="in use"):
        await driver.start(LaunchPlan("wl_3", 0, 1, 1, "h1", "hz", [], Variant(image="i:1"), _plan(tmp_path).spec,
                                      tmp_path / "c"))
    assert (await driver.wait(a)).code == 0
    calls = (tmp_path / "calls").read_text()
    assert f"--user {a.uid}:{a.uid}" in calls and f"--user {b.uid}:{b.uid}" in calls
    again = await driver.start(LaunchPlan("wl_4", 0, 1, 1, "h1", "hz", [], Variant(image="i:1"), _plan(tmp_path).spec,
                                          tmp_path / "d"))
    assert again.uid == a.uid  # freed when its container ended
