"""Cross-process training bookkeeping per project: debounce counter, queued flag, job lock, status.

Two implementations of one small protocol:

* :class:`RedisCoordinator` (``REDIS_URL`` set): shared by every web and worker process. The job
  lock is a key with a short time-to-live that a heartbeat thread renews while the job runs, so
  a worker killed mid-training frees its project within ``lock_ttl_s``.
* :class:`DiskCoordinator` (embedded mode): files under ``<projects_dir>/<project>/state/``,
  updated under ``flock``; the job lock is an ``flock`` held for the whole job, which the kernel
  releases when the process dies.

The operations are atomic across processes:

* :meth:`add_changes` adds accepted-annotation changes and, when the count reaches the
  threshold, resets it and answers ``True`` (exactly one caller sees the crossing);
* :meth:`mark_queued` sets the "a job is queued" flag only if it is not set, so concurrent
  triggers enqueue one job; the job clears it when it starts (the time-to-live only bounds the
  wait after a lost message);
* :meth:`job_lock` lets one training job per project run at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import redis

from xsam_backend.errors import BrokerUnavailable
from xsam_backend.training.versions import check_project

QUEUED_TTL_S = 900.0
LOCK_TTL_S = 30.0


class Coordinator(Protocol):
    """Training bookkeeping shared by the web process and the workers."""

    def add_changes(self, project: str, count: int, threshold: int) -> tuple[bool, int]:
        """Add ``count`` changes; ``(True, 0)`` for the one call that reaches ``threshold`` (the
        counter restarts at 0), else ``(False, pending)``. ``threshold`` ≤ 0 never triggers."""
        ...

    def reset_changes(self, project: str) -> None:
        """Forget pending changes (a job was queued on demand)."""
        ...

    def mark_queued(self, project: str) -> bool:
        """Set the queued flag; ``True`` only for the caller that set it."""
        ...

    def clear_queued(self, project: str) -> None:
        """Clear the queued flag (the job started, or enqueueing failed)."""
        ...

    def job_lock(self, project: str) -> contextlib.AbstractContextManager[bool]:
        """Hold the project's training lock for the ``with`` block; yields whether it was acquired."""
        ...

    def set_status(self, project: str, status: dict[str, Any]) -> None:
        """Record the project's training status (state, percent, message, time)."""
        ...

    def status(self, project: str) -> dict[str, Any] | None:
        """The last recorded status, or ``None``."""
        ...


class DiskCoordinator:
    """:class:`Coordinator` on files under ``projects_dir/<project>/state/`` (one machine)."""

    def __init__(self, projects_dir: Path, queued_ttl_s: float = QUEUED_TTL_S) -> None:
        self.projects_dir = Path(projects_dir)
        self.queued_ttl_s = queued_ttl_s

    def _dir(self, project: str) -> Path:
        path = self.projects_dir / check_project(project) / "state"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _locked(self, project: str) -> Iterator[Path]:
        """The state directory, under an exclusive lock of its ``state.lock``."""
        path = self._dir(project)
        with open(path / "state.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add_changes(self, project: str, count: int, threshold: int) -> tuple[bool, int]:
        with self._locked(project) as path:
            file = path / "changes"
            pending = (int(file.read_text() or 0) if file.is_file() else 0) + count
            crossed = threshold > 0 and pending >= threshold
            _write(file, "0" if crossed else str(pending))
        return crossed, 0 if crossed else pending

    def reset_changes(self, project: str) -> None:
        with self._locked(project) as path:
            _write(path / "changes", "0")

    def mark_queued(self, project: str) -> bool:
        with self._locked(project) as path:
            flag = path / "queued"
            if flag.is_file() and time.time() - flag.stat().st_mtime < self.queued_ttl_s:
                return False
            _write(flag, str(time.time()))
            return True

    def clear_queued(self, project: str) -> None:
        with self._locked(project) as path:
            (path / "queued").unlink(missing_ok=True)

    @contextlib.contextmanager
    def job_lock(self, project: str) -> Iterator[bool]:
        with open(self._dir(project) / "train.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def set_status(self, project: str, status: dict[str, Any]) -> None:
        _write(self._dir(project) / "status.json", json.dumps(status))

    def status(self, project: str) -> dict[str, Any] | None:
        file = self.projects_dir / check_project(project) / "state" / "status.json"
        if not file.is_file():
            return None
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else None


# INCRBY then reset at the threshold, atomically: exactly one caller sees the crossing.
_ADD_CHANGES = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
local threshold = tonumber(ARGV[2])
if threshold > 0 and n >= threshold then
  redis.call('SET', KEYS[1], 0)
  return {1, 0}
end
return {0, n}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisCoordinator:
    """:class:`Coordinator` on Redis keys ``xsam:train:<project>:*`` (any number of machines)."""

    def __init__(
        self,
        client: redis.Redis,
        queued_ttl_s: float = QUEUED_TTL_S,
        lock_ttl_s: float = LOCK_TTL_S,
    ) -> None:
        self.client = client
        self.queued_ttl_s = queued_ttl_s
        self.lock_ttl_s = lock_ttl_s

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 1.5) -> RedisCoordinator:
        return cls(redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s))

    @staticmethod
    def _key(project: str, name: str) -> str:
        return f"xsam:train:{check_project(project)}:{name}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(
                f"training state in Redis is unreachable: {type(exc).__name__}: {exc}"
            ) from exc

    def add_changes(self, project: str, count: int, threshold: int) -> tuple[bool, int]:
        with self._errors():
            answer: Any = self.client.eval(
                _ADD_CHANGES, 1, self._key(project, "changes"), str(count), str(threshold)
            )
        crossed, pending = answer
        return bool(crossed), int(pending)

    def reset_changes(self, project: str) -> None:
        with self._errors():
            self.client.set(self._key(project, "changes"), 0)

    def mark_queued(self, project: str) -> bool:
        with self._errors():
            ok = self.client.set(
                self._key(project, "queued"), str(time.time()), nx=True, px=int(self.queued_ttl_s * 1000)
            )
        return bool(ok)

    def clear_queued(self, project: str) -> None:
        with self._errors():
            self.client.delete(self._key(project, "queued"))

    @contextlib.contextmanager
    def job_lock(self, project: str) -> Iterator[bool]:
        key, token, ttl_ms = self._key(project, "lock"), uuid.uuid4().hex, int(self.lock_ttl_s * 1000)
        with self._errors():
            acquired = bool(self.client.set(key, token, nx=True, px=ttl_ms))
        if not acquired:
            yield False
            return
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(self.lock_ttl_s / 3):
                with contextlib.suppress(redis.RedisError, OSError):
                    self.client.eval(_RENEW, 1, key, token, str(ttl_ms))

        thread = threading.Thread(target=heartbeat, name=f"train-lock-{project}", daemon=True)
        thread.start()
        try:
            yield True
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(redis.RedisError, OSError):
                self.client.eval(_RELEASE, 1, key, token)

    def set_status(self, project: str, status: dict[str, Any]) -> None:
        with self._errors():
            self.client.set(self._key(project, "status"), json.dumps(status))

    def status(self, project: str) -> dict[str, Any] | None:
        with self._errors():
            raw: Any = self.client.get(self._key(project, "status"))
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None


def make_coordinator(redis_url: str | None, projects_dir: Path, timeout_s: float = 1.5) -> Coordinator:
    """Redis when ``redis_url`` is set (every process shares it), else files under ``projects_dir``."""
    if redis_url:
        return RedisCoordinator.from_url(redis_url, timeout_s)
    return DiskCoordinator(projects_dir)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)
