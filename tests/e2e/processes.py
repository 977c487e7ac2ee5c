"""Child processes for the end-to-end tests: start in their own process group, wait, stop, show logs.

Every server the tests start (Label Studio, the backend, the Celery worker) runs in a new session so
that stopping it also stops whatever it forked (gunicorn workers, Celery pool processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass(frozen=True)
class ManagedProcess:
    """A child process whose output goes to ``log_path`` (stdout and stderr together)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, max_chars: int = 6000) -> str:
        """The last ``max_chars`` characters of the log, for failure messages."""
        if not self.log_path.exists():
            return f"<{self.name}: no log at {self.log_path}>"
        text = self.log_path.read_text(errors="replace")
        return f"----- {self.name} log ({self.log_path}), last {max_chars} chars -----\n{text[-max_chars:]}"

    def log_text(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_running(self) -> bool:
        return self.popen.poll() is None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path
) -> ManagedProcess:
    """Start ``argv`` in a new process group with exactly ``env``, logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path)


def stop_process(process: ManagedProcess, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``grace_s``."""
    if process.popen.poll() is not None:
        _kill_group(process.popen.pid, signal.SIGKILL)
        return
    _kill_group(process.popen.pid, signal.SIGTERM)
    try:
        process.popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _kill_group(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=grace_s)
    # Children that ignored SIGTERM (e.g. a pool process mid-task) must not outlive the test run.
    _kill_group(process.popen.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def wait_for_http(process: ManagedProcess, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if not process.is_running():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} before {url} answered\n"
                + process.log_tail()
            )
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except requests.RequestException as exc:
            last_error = type(exc).__name__
        time.sleep(0.5)
    raise RuntimeError(
        f"{url} did not answer 200 within {timeout_s:.0f} s ({last_error})\n" + process.log_tail()
    )


def wait_for_log_line(process: ManagedProcess, needle: str, timeout_s: float) -> None:
    """Wait until ``needle`` appears in the process log (e.g. a Celery worker's "ready")."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in process.log_text():
            return
        if not process.is_running():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} before logging {needle!r}\n"
                + process.log_tail()
            )
        time.sleep(0.5)
    raise RuntimeError(
        f"{process.name} did not log {needle!r} within {timeout_s:.0f} s\n" + process.log_tail()
    )
