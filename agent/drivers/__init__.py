"""How replicas run on a host: ``process`` (a real command), ``docker`` (a container) and
``sim`` (simulated hosts). The executor picks one per launch; see ``agent.executor``."""

from agent.drivers.base import (
    VISIBLE_DEVICES_ENV,
    WORKLOAD_ENV_NAMES,
    Driver,
    Exit,
    LaunchError,
    LaunchPlan,
    RunHandle,
    replica_env,
    visible_devices_env,
    workload_env,
)
from agent.drivers.docker import DockerDriver, docker_run_args
from agent.drivers.process import ProcessDriver
from agent.drivers.sim import SimDriver

__all__ = [
    "VISIBLE_DEVICES_ENV",
    "WORKLOAD_ENV_NAMES",
    "DockerDriver",
    "Driver",
    "Exit",
    "LaunchError",
    "LaunchPlan",
    "ProcessDriver",
    "RunHandle",
    "SimDriver",
    "docker_run_args",
    "replica_env",
    "visible_devices_env",
    "workload_env",
]
