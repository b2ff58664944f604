"""The docker driver: ``docker run`` with the vendor's devices, device nodes and driver mounts.

``docker_run_args`` is the whole vendor knowledge, a pure function from a launch plan to
an argument list (tested per vendor; nothing is run to test it):

* NVIDIA: ``--gpus '"device=0,1"'`` (the NVIDIA container toolkit; the quotes keep the
  comma-separated list one value of docker's CSV-parsed flag);
* Huawei Ascend: ``/dev/davinciN`` per device plus ``davinci_manager``, ``devmm_svm``,
  ``hisi_hdc``, and the host driver mounted read-only (``/usr/local/Ascend/driver``,
  ``npu-smi``, ``/usr/local/dcmi``, ``/etc/ascend_install.info``);
* AMD: ``/dev/kfd`` and ``/dev/dri``, group ``video``, and ``HIP_VISIBLE_DEVICES`` to pick;
* Hygon DCU: as AMD plus ``/dev/mkfd`` and ``/opt/hyhal`` (read-only);
* Cambricon: ``/dev/cambricon_devN`` per device plus ``/dev/cambricon_ctl`` and ``cnmon``;
* Kunlunxin: ``/dev/xpuN`` per device plus ``/dev/xpuctrl``;
* Iluvatar: ``/dev/iluvatarN`` plus ``/dev/itrctl`` and ``/usr/local/corex`` (read-only);
* MetaX: ``/dev/dri`` and ``/dev/mxcd``, group ``video``, ``CUDA_VISIBLE_DEVICES`` to pick;
* Moore Threads: the mthreads container runtime with ``MTHREADS_VISIBLE_DEVICES``;
* Enflame: ``/dev/gcuN`` per device.

Inside a container whose device nodes were chosen this way the runtime numbers them from
0, so per-device variables are only set where every device node is passed (AMD, Hygon,
MetaX) and the variable does the choosing.

The container's environment is ``agent.drivers.base.replica_env`` passed one ``--env`` at a
time: the workload's own, the devices' and the agent's ``XPUMESH_*`` workload variables,
never the agent's environment (no ``--env-file``, no bare ``--env NAME`` that docker would
fill from it).

Every container runs as its replica's own uid and gid (``--user``, from the agent's
``UidPool``, the same range the process driver uses: without user-namespace remapping a
container's uid is the host's), with every capability dropped (``--cap-drop ALL``), no way
to gain privileges (``--security-opt no-new-privileges``) and never ``--privileged``. AMD
and Hygon keep ``seccomp=unconfined``, which ROCm needs.

A replica that holds CPUs and host memory gets ``--cpuset-cpus`` (the CPUs the agent picked)
and ``--memory`` (its host memory, a hard limit).

A share of a GPU is handed over as ``agent.shares`` decides: a MIG instance by its UUID in
``--gpus``; MPS with the control daemon's pipe directory mounted and ``--ipc host`` (MPS clients
share the daemon's IPC namespace); HAMi-core with its library mounted read-only at the same
path; an Ascend vNPU as ``ASCEND_VISIBLE_DEVICES`` and ``ASCEND_VNPU_SPECS`` for the Ascend
Docker Runtime, which mounts the vNPU itself (no ``/dev/davinciN`` of ours); the limiter
variables in ``--env`` like the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from datetime import UTC, datetime

from agent.drivers.base import Exit, LaunchError, LaunchPlan, RunHandle, replica_env
from agent.drivers.isolation import PoolExhausted, UidPool
from libs.schemas.devices import format_cpu_list

_NAME_SAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def container_name(plan: LaunchPlan | RunHandle) -> str:
    """The container's name, also what its uid is held under in the ``UidPool``."""
    return _NAME_SAFE.sub("-", f"xpumesh-{plan.workload_id}-{plan.replica}-{plan.attempt}")[:128]


def _devices(paths: list[str]) -> list[str]:
    return [arg for p in paths for arg in ("--device", p)]


def _ro(paths: list[str]) -> list[str]:
    return [arg for p in paths for arg in ("-v", f"{p}:{p}:ro")]


def vendor_args(vendor: str, indices: list[int], mig: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Device arguments and container environment for one vendor's devices (``mig``: the one MIG instance of
    an NVIDIA GPU the replica holds, given to the container toolkit by its UUID)."""
    ids = mig or ",".join(str(i) for i in indices)
    if vendor == "nvidia":
        return ["--gpus", f'"device={ids}"'], {}
    if vendor == "huawei":
        return (_devices([f"/dev/davinci{i}" for i in indices] + ["/dev/davinci_manager", "/dev/devmm_svm",
                                                                 "/dev/hisi_hdc"])
                + _ro(["/usr/local/Ascend/driver", "/usr/local/bin/npu-smi", "/usr/local/dcmi",
                       "/etc/ascend_install.info"]), {})
    if vendor in ("amd", "hygon"):
        args = _devices(["/dev/kfd", "/dev/dri"] + (["/dev/mkfd"] if vendor == "hygon" else []))
        args += ["--group-add", "video", "--security-opt", "seccomp=unconfined"]
        if vendor == "hygon":
            args += _ro(["/opt/hyhal"])
        return args, {"HIP_VISIBLE_DEVICES": ids}
    if vendor == "cambricon":
        return _devices([f"/dev/cambricon_dev{i}" for i in indices] + ["/dev/cambricon_ctl"]) + _ro(["/usr/bin/cnmon"]), {}
    if vendor == "kunlunxin":
        return _devices([f"/dev/xpu{i}" for i in indices] + ["/dev/xpuctrl"]), {}
    if vendor == "iluvatar":
        return _devices([f"/dev/iluvatar{i}" for i in indices] + ["/dev/itrctl"]) + _ro(["/usr/local/corex"]), {}
    if vendor == "metax":
        return [*_devices(["/dev/dri", "/dev/mxcd"]), "--group-add", "video"], {"CUDA_VISIBLE_DEVICES": ids}
    if vendor == "mthreads":
        return ["--runtime", "mthreads"], {"MTHREADS_VISIBLE_DEVICES": ids}
    if vendor == "enflame":
        return _devices([f"/dev/gcu{i}" for i in indices]), {}
    raise LaunchError(f"the docker driver does not know how to expose {vendor!r} devices")


def docker_run_args(plan: LaunchPlan, *, docker: str = "docker", uid: int | None = None) -> list[str]:
    """The full ``docker run`` argument list for a plan (detached, labelled, named per attempt,
    as ``uid`` when given, without capabilities or a way to gain them)."""
    image = plan.variant.image
    if not image:
        raise LaunchError("the variant has no image (the docker driver needs 'image')")
    args = [docker, "run", "--detach", "--name", container_name(plan),
            "--label", f"io.xpumesh.workload={plan.workload_id}", "--label", f"io.xpumesh.replica={plan.replica}",
            "--label", f"io.xpumesh.attempt={plan.attempt}",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if uid is not None:
        args += ["--user", f"{uid}:{uid}"]
    if plan.cpus:
        args += ["--cpuset-cpus", format_cpu_list(plan.cpus)]
    if plan.memory_mib:
        args += ["--memory", f"{plan.memory_mib}m"]
    if plan.service is not None:  # the service's port, published on the free host port the agent picked
        svc = plan.service
        args += ["--publish", f"{svc.address}:{svc.host_port}:{svc.listen_port}"]
    dev_env: dict[str, str] = {}
    vendors: dict[str, list[int]] = {}
    for d in plan.devices:
        vendors.setdefault(d.vendor, []).append(d.index)
    share = plan.share
    for vendor, indices in vendors.items():
        if vendor == "huawei" and share.vnpu:
            continue  # the Ascend Docker Runtime mounts the vNPU it cuts (ASCEND_VISIBLE_DEVICES, ASCEND_VNPU_SPECS)
        vendor_dev_args, vendor_env = vendor_args(vendor, sorted(indices), share.mig_uuid if vendor == "nvidia"
                                                  else None)
        args += vendor_dev_args
        dev_env.update(vendor_env)
    if share.ipc_host:
        args += ["--ipc", "host"]
    for path in share.mounts:
        args += ["-v", f"{path}:{path}" + ("" if share.ipc_host and path == share.env.get("CUDA_MPS_PIPE_DIRECTORY")
                                           else ":ro")]
    # inside the container the toolkit numbers its GPUs from 0: a MIG instance needs no visibility variable
    limits = {k: v for k, v in share.env.items() if not (share.mig_uuid and k == "CUDA_VISIBLE_DEVICES")}
    env = replica_env(plan, {**dev_env, **limits})  # allow-listed: never the agent's own environment
    for k in sorted(env):
        args += ["--env", f"{k}={env[k]}"]
    args.append(image)
    args += plan.variant.command or []
    return args


async def _run(*argv: str, timeout: float | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    return proc.returncode or 0, out.decode(errors="replace").strip()


class DockerDriver:
    name = "docker"

    def __init__(self, docker: str | None = None, *, uids: UidPool | None = None) -> None:
        self.docker = docker or shutil.which("docker") or "docker"
        self.uids = uids

    async def start(self, plan: LaunchPlan) -> RunHandle:
        owner = container_name(plan)
        try:
            uid = self.uids.allocate(owner) if self.uids is not None else None
        except PoolExhausted as exc:
            raise LaunchError(str(exc)) from None
        try:
            args = docker_run_args(plan, docker=self.docker, uid=uid)
            try:
                rc, out = await _run(*args, timeout=300)
            except (OSError, TimeoutError):
                raise LaunchError("docker did not start the container") from None
            if rc != 0:
                raise LaunchError(f"docker run failed with code {rc}: {out[-300:]}")
        except LaunchError:
            self._release(uid, owner)
            raise
        return RunHandle(workload_id=plan.workload_id, replica=plan.replica, attempt=plan.attempt, driver=self.name,
                         started_at=datetime.now(UTC), container=out.splitlines()[-1] if out else owner, uid=uid)

    def _release(self, uid: int | None, owner: str) -> None:
        if uid is not None and self.uids is not None:
            self.uids.release(uid, owner)

    async def wait(self, handle: RunHandle) -> Exit:
        end = await self._wait(handle)
        self._release(handle.uid, container_name(handle))
        return end

    async def _wait(self, handle: RunHandle) -> Exit:
        rc, out = await _run(self.docker, "wait", handle.container or "")
        if rc != 0:
            return Exit(None, "the container is gone")
        try:
            return Exit(int(out.splitlines()[-1]))
        except (ValueError, IndexError):
            return Exit(None, "docker wait gave no exit code")

    async def stop(self, handle: RunHandle, grace_s: float) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            await _run(self.docker, "stop", "--time", str(int(grace_s)), handle.container or "", timeout=grace_s + 30)
            self._release(handle.uid, container_name(handle))  # stopped (the executor may cancel ``wait`` next)

    async def alive(self, handle: RunHandle) -> bool:
        try:
            rc, out = await _run(self.docker, "inspect", "--format", "{{.State.Running}}", handle.container or "",
                                 timeout=30)
        except (OSError, TimeoutError):
            return False
        running = rc == 0 and out == "true"
        if running and handle.uid is not None and self.uids is not None:
            self.uids.claim(handle.uid, container_name(handle))  # adopted: its uid stays its own
        return running

    async def logs(self, handle: RunHandle, tail_bytes: int) -> tuple[str, bool]:
        try:
            _, out = await _run(self.docker, "logs", "--tail", "2000", handle.container or "", timeout=30)
        except (OSError, TimeoutError):
            return "", False
        return out[-tail_bytes:], len(out) > tail_bytes
