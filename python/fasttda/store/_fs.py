"""Every file a store touches, opened inside the store only and never through a link.

The store's root is the path the user gave (a link there is the user's choice); below it,
``shards/`` and every file are opened relative to a directory descriptor with
``O_NOFOLLOW``, so a symlink planted in a store (a crafted or copied one) is refused
instead of followed, and no name from a manifest is ever joined onto a path: shard files
are named by the store itself (``shard-NNNNNN.<role>``). Reads use ``O_NONBLOCK`` so a
FIFO planted in a store cannot hang an open. Writes go through ``pwrite`` at offsets the
writer tracks, never through a buffered file: a failed write leaves nothing queued that a
later flush could put back.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path

from fasttda._flock import FileLock, LockBusy
from fasttda.store.errors import CorruptStoreError, StoreLockedError

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
CHUNK = 1 << 24  # bytes per read when hashing a file


def _refuse_link(path: Path, exc: OSError):
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        raise CorruptStoreError(f"{path} is a symlink; a feature store holds no links (refused)", [str(path)]) from None
    if exc.errno == errno.ENOTDIR and os.path.islink(path):
        raise CorruptStoreError(f"{path} is a symlink; a feature store holds no links (refused)", [str(path)]) from None
    if exc.errno == errno.ENOTDIR:
        raise CorruptStoreError(f"{path} is not a directory (refused)", [str(path)]) from None
    raise exc


@contextmanager
def open_dir(path: Path, parent_fd: int | None = None):
    """A descriptor of directory ``path`` (relative to ``parent_fd`` if given); a link there is refused."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if parent_fd is not None else 0)
    try:
        fd = os.open(path.name if parent_fd is not None else path, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        _refuse_link(path, exc)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def shard_dir(shards: Path):
    """A descriptor of ``<store>/shards`` itself: the root may be a link, ``shards`` may not."""
    with open_dir(shards.parent) as root_fd, open_dir(shards, root_fd) as fd:
        yield fd


def is_real_dir(path: Path) -> bool:
    """``path`` exists and is a directory, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def open_file(dir_fd: int, directory: Path, name: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open ``name`` in ``dir_fd`` (a regular file, never a link); returns the descriptor."""
    path = directory / name
    try:
        fd = os.open(name, flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        raise CorruptStoreError(f"{path}: missing", [str(path)]) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, opened for writing
            raise CorruptStoreError(f"{path} is not a regular file (refused)", [str(path)]) from None
        _refuse_link(path, exc)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptStoreError(f"{path} is not a regular file (refused)", [str(path)])
    return fd


def read_all(fd: int, limit: int, path: Path) -> bytes:
    size = os.fstat(fd).st_size
    if size > limit:
        raise CorruptStoreError(f"{path} is {size} bytes, more than the {limit} a manifest may hold", [str(path)])
    parts, left = [], size
    while left > 0:
        block = os.pread(fd, min(CHUNK, left), size - left)
        if not block:
            break
        parts.append(block)
        left -= len(block)
    return b"".join(parts)


def write_all(fd: int, data, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)


def hash_fd(fd: int, nbytes: int) -> "hashlib._Hash":
    """SHA-256 state over the first ``nbytes`` of an open file."""
    h = hashlib.sha256()
    pos = 0
    while pos < nbytes:
        block = os.pread(fd, min(CHUNK, nbytes - pos), pos)
        if not block:
            break
        h.update(block)
        pos += len(block)
    return h


def unlink_quietly(dir_fd: int, name: str) -> None:
    """Remove ``name`` from ``dir_fd`` if it is there (a link is removed, never its target)."""
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def fsync_fd_dir(dir_fd: int) -> None:
    os.fsync(dir_fd)


def write_atomic(directory: Path, name: str, text: str) -> None:
    """Replace ``directory/name`` with ``text`` so that a crash leaves the old or the new file.

    Temp file, fsync, ``rename`` (which replaces a link rather than following it), fsync of
    the directory. On an error before the rename the old file is untouched and the temp
    file is removed.
    """
    tmp = name + ".tmp"
    with open_dir(directory) as dfd:
        unlink_quietly(dfd, tmp)
        try:
            fd = open_file(dfd, directory, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                write_all(fd, text.encode("utf-8"), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                unlink_quietly(dfd, tmp)
            except OSError:
                pass
            raise
        try:
            os.fsync(dfd)
        except OSError as exc:
            exc.manifest_replaced = True  # the new file is in place; only its durability is in doubt
            raise


def writer_lock(path: Path) -> FileLock:
    """Take the store's writer lock file ``path`` (flock: a killed writer's lock is released
    by the OS); a held lock is a `StoreLockedError` naming the store."""
    root = path.parent
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except LockBusy:
        raise StoreLockedError(f"another writer holds {root} (lock {path}); one writer at a time. "
                               "Readers may open it with mode='r' meanwhile.") from None
    except OSError as exc:
        raise CorruptStoreError(f"{path}: cannot take the writer lock: {exc.strerror or exc}",
                                [str(path)]) from None
    return lock
