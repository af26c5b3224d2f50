"""The Docker set-up in docker/: image, Compose files (through ``docker compose config``), the CPU smoke
script and the README section.

The Compose checks run the real ``config`` of Compose v2 (``docker compose``) or of docker-compose 1.x and
skip when neither is installed; the file checks need no Docker at all. The README checks skip until the
``## Multi-GPU hosts`` section is in README.md and enforce it from then on. docker/smoke.sh itself (image
builds and a real run, many minutes as root) is not run here: only its syntax and its use of the
Dockerfile's build arguments are checked.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DASHBOARD = ROOT / "docker" / "compose.dashboard.yaml"
SMOKE = ROOT / "docker" / "smoke.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
SERVICES = {"ray-head", "ray-worker", "runner"}
SECTION = "## Multi-GPU hosts"

# Variables the Compose file reads: cleared so that `config` shows the defaults.
COMPOSE_VARS = ("EXPERIMENT", "DFL_SIM_DATA", "DFL_SIM_ARGS", "GPUS_PER_ACTOR", "RAY_DASHBOARD_PORT",
                "DFL_SIM_UID", "DFL_SIM_GID", "DFL_SIM_IMAGE")


# ------------------------------------------------------------------------------------------ helpers


def compose_command() -> list[str] | None:
    """``docker compose`` where the v2 plugin answers ``version``, else ``docker-compose``, else None."""
    docker = shutil.which("docker")
    if docker:
        try:
            ok = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def compose_config(*files: Path, **env_vars: str) -> dict[str, Any]:
    """``<compose> --profile run -f FILE... config``, parsed (exit code 0 asserted); skips without Compose."""
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS and not k.startswith("COMPOSE_")}
    env.update(env_vars)
    args = [a for f in files for a in ("-f", str(f))]
    proc = subprocess.run([*cmd, "--profile", "run", *args, "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} config failed:\n{proc.stderr}"
    out = yaml.safe_load(proc.stdout)
    assert isinstance(out, dict) and "services" in out, proc.stdout
    return out


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """``docker/compose.yaml`` alone."""
    return compose_config(COMPOSE)


@pytest.fixture(scope="module")
def dashboard_config() -> dict[str, Any]:
    """``docker/compose.yaml`` with the opt-in ``docker/compose.dashboard.yaml`` on top."""
    return compose_config(COMPOSE, DASHBOARD)


def words(value: Any) -> list[str]:
    """A command/entrypoint as a list of words (1.x prints a string command as given, v2 as a list)."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def size_bytes(value: Any) -> int:
    """``8gb``, ``8g``, ``512m`` or a byte count (v2 prints bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)b?\s*", str(value).lower())
    assert m, f"unreadable size {value!r}"
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")


def published(port: Any) -> tuple[str, str]:
    """(host ip, published port) of one ``ports`` entry in short (1.x) or long (v2) form."""
    if isinstance(port, dict):
        return str(port.get("host_ip") or ""), str(port.get("published") or "")
    parts = str(port).split("/")[0].split(":")
    if len(parts) == 3:
        return parts[0], parts[1]
    return "", parts[0] if len(parts) == 2 else ""


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, short (1.x) or long (v2) form."""
    out: dict[str, str] = {}
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out[str(v["target"])] = str(v.get("source", ""))
        else:
            source, target = str(v).split(":")[:2]
            out[target] = source
    return out


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def healthy_dependency(service: dict[str, Any], on: str) -> bool:
    dep = service.get("depends_on") or {}
    return isinstance(dep, dict) and (dep.get(on) or {}).get("condition") == "service_healthy"


def readme_section() -> str:
    """The README's ``## Multi-GPU hosts`` section; skips while it is not merged in."""
    text = README.read_text()
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        pytest.skip(f"README.md has no {SECTION!r} section yet (its text is in docker/README-section.md)")
    end = text.find("\n## ", start + len(SECTION) + 2)
    return text[start:] if end < 0 else text[start:end]


# ------------------------------------------------------------------------------ compose (via config)


def test_compose_config_has_the_three_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


def test_worker_reserves_the_nvidia_gpus(config: dict[str, Any]) -> None:
    """Each replica sees every GPU and claims one through the shared lock volume (see ray-worker.sh).

    Not ``count: 1``: Docker gives every replica GPU 0 for ``count: 1``.
    """
    worker = config["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (dev,) = devices
    assert dev["driver"] == "nvidia"
    assert "gpu" in dev["capabilities"]
    assert str(dev.get("count")) in ("all", "-1"), dev  # v2 prints `all` as -1
    assert "container_name" not in worker, "a fixed container name cannot be scaled"
    assert words(worker["entrypoint"]) == ["sh", "/app/docker/ray-worker.sh"]
    assert "/gpu-locks" in mounts(worker) and env_of(worker)["GPU_LOCK_DIR"] == "/gpu-locks"
    assert env_of(worker)["RAY_HEAD"] == "ray-head:6379"
    assert healthy_dependency(worker, "ray-head")
    assert size_bytes(worker["shm_size"]) >= 2 * 1024**3


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_scaled_workers_claim_distinct_gpus(tmp_path: Path) -> None:
    """Three replicas on a host with two GPUs: GPUs 0 and 1 once each, the third exits with a message."""
    bin_dir, locks = tmp_path / "bin", tmp_path / "locks"
    bin_dir.mkdir()
    locks.mkdir()
    fake = {"nvidia-smi": "#!/bin/sh\necho 'GPU 0: Fake (UUID: a)'\necho 'GPU 1: Fake (UUID: b)'\n",
            "nproc": "#!/bin/sh\necho 8\n",
            # the fake `ray start --block` reports what it was given and holds on, like the real one
            "ray": f"#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES $CUDA_DEVICE_ORDER $*\" > {tmp_path}/claim.$$\nexec sleep 30\n"}
    for name, text in fake.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GPU_LOCK_DIR": str(locks)}
    script = str(ROOT / "docker" / "ray-worker.sh")
    replicas = []
    try:
        for _ in range(2):
            replicas.append(subprocess.Popen(["sh", script], env=env, stdout=subprocess.PIPE, text=True))
            assert replicas[-1].stdout is not None
            assert replicas[-1].stdout.readline().startswith("ray-worker: GPU ")
        third = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=30)
        assert third.returncode == 1
        assert "all 2 GPUs are held by other replicas" in third.stderr
        deadline = time.monotonic() + 20
        while len([p for p in tmp_path.glob("claim.*") if p.read_text()]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        claims = sorted(p.read_text().split() for p in tmp_path.glob("claim.*"))
        assert [c[:2] for c in claims] == [["0", "PCI_BUS_ID"], ["1", "PCI_BUS_ID"]]
        for c in claims:
            assert c[2:] == ["start", "--address=ray-head:6379", "--num-gpus=1", "--num-cpus=4", "--block"]
    finally:
        for r in replicas:
            r.kill()
            r.wait()
    # the locks die with the replicas: a new one gets GPU 0 again
    again = subprocess.Popen(["sh", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert again.stdout is not None
        assert again.stdout.readline().startswith("ray-worker: GPU 0 of 2")
    finally:
        again.kill()
        again.wait()


def test_head_runs_ray_head_without_gpus_and_has_a_healthcheck(config: dict[str, Any]) -> None:
    head = config["services"]["ray-head"]
    cmd = words(head["command"])
    for flag in ("--head", "--port=6379", "--num-gpus=0", "--block"):
        assert flag in cmd, cmd
    # the dashboard (no authentication) stays on the head's own loopback unless compose.dashboard.yaml is used
    assert [w for w in cmd if w.startswith("--dashboard-host")] == ["--dashboard-host=127.0.0.1"], cmd
    assert words(head["healthcheck"]["test"])[-2:] == ["ray", "status"]
    assert size_bytes(head["shm_size"]) >= 2 * 1024**3
    assert "deploy" not in head


def test_compose_file_alone_publishes_no_port(config: dict[str, Any]) -> None:
    for name, svc in config["services"].items():
        assert not svc.get("ports"), f"{name} publishes {svc['ports']}; the dashboard is opt-in"
        assert svc.get("network_mode") != "host", name


def test_dashboard_override_publishes_only_the_dashboard_on_loopback(config: dict[str, Any],
                                                                     dashboard_config: dict[str, Any]) -> None:
    services = dashboard_config["services"]
    assert set(services) == SERVICES
    ports = [(name, p) for name, svc in services.items() for p in svc.get("ports") or []]
    assert [name for name, _ in ports] == ["ray-head"], ports
    (_, port), = ports
    assert published(port) == ("127.0.0.1", "8265"), port
    if isinstance(port, dict):
        assert str(port["target"]) == "8265"
    else:
        assert str(port).split("/")[0].split(":")[-1] == "8265"
    assert all(published(p)[1] != "6379" for _, p in ports), "the GCS port must never be published"
    # the head's command is the base one with the dashboard opened to the container network (so that the
    # published port reaches it); the other services are untouched
    base_cmd = words(config["services"]["ray-head"]["command"])
    cmd = words(services["ray-head"]["command"])
    assert cmd == [("--dashboard-host=0.0.0.0" if w.startswith("--dashboard-host") else w) for w in base_cmd]

    def rest(svc: dict[str, Any]) -> dict[str, Any]:  # a service less command/ports; volumes in any order
        return {**{k: v for k, v in svc.items() if k not in ("command", "ports", "volumes")}, "volumes": mounts(svc)}

    for name in SERVICES - {"ray-head"}:
        assert rest(services[name]) == rest(config["services"][name]), name
        assert services[name].get("command") == config["services"][name].get("command"), name
    assert rest(services["ray-head"]) == rest(config["services"]["ray-head"])


def test_dashboard_override_reads_the_host_port_from_the_environment() -> None:
    services = compose_config(COMPOSE, DASHBOARD, RAY_DASHBOARD_PORT="18265")["services"]
    assert [published(p) for p in services["ray-head"]["ports"]] == [("127.0.0.1", "18265")]


def test_runner_joins_the_cluster_and_runs_the_experiment(config: dict[str, Any]) -> None:
    runner = config["services"]["runner"]
    cmd = words(runner["command"])
    assert cmd[:2] == ["dfl-sim", "run"]
    assert cmd[2] == "experiments/ring_cifar10.yaml"
    sets = [cmd[i + 1] for i, w in enumerate(cmd[:-1]) if w == "--set"]
    assert "engine.ray.address=ray-head:6379" in sets
    assert "engine.name=ray" in sets and "device=auto" in sets
    # the driver needs a raylet in its own container: the entrypoint joins with nothing to offer
    entry = " ".join(words(runner["entrypoint"]))
    assert "ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0" in entry
    assert "run" in (runner.get("profiles") or []) or runner.get("restart") == "no"
    assert healthy_dependency(runner, "ray-head")
    m = mounts(runner)
    assert {"/app/experiments", "/app/runs", "/data"} <= set(m)
    assert env_of(runner)["DFL_SIM_DATA"] == "/data"


# ---------------------------------------------------------------------------- files (no Docker)


def test_dashboard_override_only_touches_the_head() -> None:
    doc = yaml.safe_load(DASHBOARD.read_text())
    assert "version" not in doc, "Compose spec: no `version:` key"
    assert set(doc) == {"services"} and set(doc["services"]) == {"ray-head"}
    assert set(doc["services"]["ray-head"]) == {"command", "ports"}
    assert doc["services"]["ray-head"]["ports"] == ["127.0.0.1:${RAY_DASHBOARD_PORT:-8265}:8265"]


def test_compose_file_is_compose_spec_with_a_shared_extension() -> None:
    raw = COMPOSE.read_text()
    doc = yaml.safe_load(raw)
    assert "version" not in doc, "Compose spec: no `version:` key"
    assert set(doc["services"]) == SERVICES
    assert any(k.startswith("x-") for k in doc), "shared image/build settings live in an x- extension"
    assert re.search(r"<<: \*\w", raw), "services merge the shared settings with a YAML anchor"
    for name in SERVICES:
        assert doc["services"][name]["build"]["context"] == ".."


def test_dockerfile_installs_the_ray_extra_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install [^\n]*--no-cache-dir[^\n]*'\.\[ray\]'", text)
    assert re.search(r"^WORKDIR /app$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^CMD \["dfl-sim", "--help"\]$', text, re.M)


def test_dockerfile_base_torch_is_in_the_pyproject_range() -> None:
    specifiers = pytest.importorskip("packaging.specifiers")
    m = re.search(r"^ARG PYTORCH_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda12\.\d+-cudnn\d+-runtime$",
                  DOCKERFILE.read_text(), re.M)
    assert m, "the base must be an official pytorch/pytorch CUDA 12.x runtime tag"
    dep = re.search(r'"torch([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert dep
    assert m.group(1) in specifiers.SpecifierSet(dep.group(1)), (m.group(1), dep.group(1))


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    lines = {ln.strip().rstrip("/") for ln in DOCKERIGNORE.read_text().splitlines()}
    for entry in (".venv", "runs", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert entry in lines, entry
    assert "README.md" not in lines and "pyproject.toml" not in lines  # the build needs both
    # docker/smoke.sh's wheels reach the build through the context (WHEELS=docker/wheels), and stay out of git
    assert not lines & {"docker", "docker/wheels", "docker/*", "*.whl", "**/*.whl"}, lines
    assert "docker/wheels" in {ln.strip().rstrip("/") for ln in (ROOT / ".gitignore").read_text().splitlines()}


def wheels_words(wheels: str) -> list[str]:
    """The pip options the Dockerfile's ``${WHEELS:+...}`` expands to, as /bin/sh expands them."""
    m = re.search(r"pip install [^\n]*?(\$\{WHEELS:\+[^}]*\}[^ ]*)", DOCKERFILE.read_text())
    assert m, "the pip install line should use ${WHEELS:+...}"
    proc = subprocess.run(["sh", "-c", f'for w in {m.group(1)}; do echo "$w"; done'],
                          env={"WHEELS": wheels, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_dockerfile_installs_from_a_wheels_folder_only_when_asked() -> None:
    """``--build-arg WHEELS=docker/wheels``: pip installs offline from it; without it the build is unchanged."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG WHEELS=$", text, re.M), "WHEELS must default to empty"
    assert text.index("ARG WHEELS=") > text.index("FROM ${PYTORCH_IMAGE}"), "declared in the build stage"
    assert wheels_words("") == []
    assert wheels_words("docker/wheels") == ["--no-index", "--find-links", "/app/docker/wheels"]


def test_smoke_script_is_valid_bash_and_builds_on_its_own_base() -> None:
    """docker/smoke.sh: bash -n passes; it builds docker/Dockerfile through its build arguments and cleans up."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = SMOKE.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert "-f docker/Dockerfile" in text
    assert '--build-arg PYTORCH_IMAGE="$BASE_IMAGE"' in text and '--build-arg WHEELS="$WHEELS"' in text
    assert re.search(r"^WHEELS=docker/wheels$", text, re.M)
    assert re.search(r"^trap cleanup EXIT$", text, re.M) and "down -v" in text
    assert "compose.dashboard.yaml" in text and "ray-worker" not in re.sub(r"(?m)^\s*#.*$", "", text)


# ----------------------------------------------------------------------- README (after the merge)


def test_readme_section_matches_the_compose_file() -> None:
    section = readme_section()
    for text in ("docker/compose.yaml", *SERVICES, "127.0.0.1:8265", "engine.ray.gpus_per_actor",
                 "engine.ray.address=", "docker-compose -f docker/compose.yaml config",
                 "docker/compose.dashboard.yaml", "ssh -N -L 8265:127.0.0.1:8265", "sudo bash docker/smoke.sh"):
        assert text in section, f"the {SECTION} section should mention {text!r}"
    # the commands: lines of the section's code blocks, comments dropped
    blocks = re.findall(r"^```\w*\n(.*?)^```", section, re.M | re.S)
    commands = [re.sub(r"(^|\s)#.*$", "", ln).strip() for b in blocks for ln in b.splitlines()]
    compose = [c for c in commands if "docker compose -f docker/compose.yaml " in c]
    assert any(c.endswith(" build") for c in compose)
    assert any(" up -d " in c and "--scale ray-worker=" in c and c.endswith(" ray-head ray-worker") for c in compose)
    assert any(" run --rm runner" in c and "EXPERIMENT=" in c and "DFL_SIM_DATA=" in c for c in compose)
    assert any(c.endswith(" down") for c in compose)
    # the dashboard: only through the override, on top of the base file
    dashboard = [c for c in commands if "docker/compose.dashboard.yaml" in c]
    assert dashboard and all("-f docker/compose.yaml -f docker/compose.dashboard.yaml " in c for c in dashboard)
