"""A real advisory file lock (``fcntl.flock``): the OS releases it when its holder dies.

A lock that is a file's existence (what ``torch.utils.cpp_extension`` uses) outlives a
process killed by SIGKILL, OOM or a timeout and makes every later process wait forever.
``flock`` is tied to the open file description instead, so a dead holder can never block
anyone. The lock file is opened without following symlinks and never truncated, so a
crafted link at the lock's path cannot clobber a file elsewhere. It is never deleted
(deleting a flock file races with a process that has just opened it).
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path


class LockBusy(Exception):
    """Another live process holds the lock."""


class FileLock:
    """``with FileLock(path, timeout=None): ...`` or ``acquire()``/``release()``.

    ``timeout=0`` fails at once with `LockBusy`; None waits for as long as it takes;
    ``on_wait(path)`` is called once if the lock is busy at the first try.
    """

    def __init__(self, path, timeout: float | None = None, on_wait=None):
        self.path = Path(path)
        self.timeout = timeout
        self.on_wait = on_wait
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, f"lock file {self.path} is a symlink; refused") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"lock file {self.path} is not a regular file; refused")
            self._wait(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _wait(self, fd: int) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise LockBusy(f"{self.path} is held by another process")
            if not told and self.on_wait is not None:
                self.on_wait(self.path)
                told = True
            time.sleep(0.05)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
