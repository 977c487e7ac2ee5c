"""Install and run a real Label Studio server on 127.0.0.1 for the end-to-end tests.

Label Studio lives in its own virtual environment (``<repo>/.ls-venv``, git-ignored) because its
pins do not fit the backend's environment. Installing takes about two minutes; a file lock keeps two
test sessions from installing into the same directory at once.

Run ``python tests/e2e/labelstudio_server.py`` to install ahead of a test run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from processes import ManagedProcess, free_port, start_process, stop_process, wait_for_http

LABEL_STUDIO_VERSION = "1.23.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".ls-venv"
# First start on a fresh data directory runs every migration (about 50 s on 2 cores).
START_TIMEOUT_S = 240.0


def label_studio_executable(venv: Path) -> Path:
    return venv / "bin" / "label-studio"


def _install_lock_path(venv: Path) -> Path:
    digest = hashlib.sha1(str(venv.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ls-venv-install-{digest}.lock"


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not label_studio_executable(venv).exists() or not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_label_studio(venv: Path = DEFAULT_VENV, version: str = LABEL_STUDIO_VERSION) -> Path:
    """Create ``venv`` with ``label-studio==version`` unless it is already there; return the CLI path.

    Raises ``RuntimeError`` with pip's output when the install fails.
    """
    if _installed_version(venv) == version:
        return label_studio_executable(venv)
    with _install_lock_path(venv).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another session may have finished the install while this one waited for the lock.
        if _installed_version(venv) == version:
            return label_studio_executable(venv)
        log_path = Path(tempfile.gettempdir()) / f"{venv.name}-install.log"
        with log_path.open("w") as log:
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(venv / "bin" / "pip"), "install", "--no-input", f"label-studio=={version}"],
            ]
            for argv in steps:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                returncode = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
                if returncode != 0:
                    tail = log_path.read_text(errors="replace")[-4000:]
                    raise RuntimeError(
                        f"installing Label Studio failed (exit {returncode}); log {log_path}:\n{tail}"
                    )
    if _installed_version(venv) != version:
        raise RuntimeError(f"label-studio {version} is not importable from {venv} after installing")
    return label_studio_executable(venv)


@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio and the facts a test needs about it.

    ``files_root`` is Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``; ``media_dir`` holds uploads
    (``media_dir/upload/<project>/<name>`` serves ``/data/upload/<project>/<name>``).
    """

    url: str
    legacy_token: str
    username: str
    password: str
    data_dir: Path
    files_root: Path
    media_dir: Path
    process: ManagedProcess


def start_label_studio(workdir: Path, venv: Path = DEFAULT_VENV) -> LabelStudioServer:
    """Start Label Studio on a free port with a fresh data directory under ``workdir``.

    Legacy tokens are enabled (the admin's token is returned), local-files serving is on with
    ``workdir/files`` as its document root, and loopback ML backends and webhooks are allowed.
    """
    executable = ensure_label_studio(venv)
    data_dir = workdir / "ls-data"
    files_root = workdir / "files"
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = secrets.token_hex(20)
    username, password = "admin@example.com", secrets.token_urlsafe(12)
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
    }
    process = start_process(
        "label-studio",
        [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)],
        env,
        workdir / "label-studio.log",
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(process, f"{url}/health/", START_TIMEOUT_S)
    except BaseException:
        stop_process(process)
        raise
    return LabelStudioServer(
        url=url,
        legacy_token=token,
        username=username,
        password=password,
        data_dir=data_dir,
        files_root=files_root,
        media_dir=data_dir / "media",
        process=process,
    )


if __name__ == "__main__":
    print(ensure_label_studio())
