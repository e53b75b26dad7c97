"""File writes that a planted link cannot redirect.

cctrace runs as root (eBPF) and writes into directories other people can write to (under sudo, the
traced program runs as the user and shares the trace directory). Every file is therefore created
with O_NOFOLLOW|O_EXCL relative to a directory descriptor that was opened without following a link
and checked (a directory, owned by us or we are root, not writable by others without the sticky
bit); replacing a file is a rename of a fresh, randomly named file, which never follows a link.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path cctrace refuses to write through; the message says why and what to do."""


def check_dir_fd(fd: int, path: Path) -> None:
    """Refuse a directory that someone else could fill with links under us."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} is not a directory")
    euid = os.geteuid()
    if st.st_uid not in (euid, 0) and euid != 0:
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}; cctrace writes only into directories you own")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"{path} is writable by everyone; use a directory only you can write to")


def open_dir(path: Path, create: bool = False, mode: int = 0o755) -> int:
    """A verified descriptor of directory `path` (made, with its parents, when `create`)."""
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
    try:
        fd = os.open(path, _OPEN_DIR)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link; give the real directory") from None
        raise UnsafePath(f"{path}: {e.strerror}") from None
    try:
        check_dir_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def directory(path: Path, create: bool = False) -> Iterator[int]:
    fd = open_dir(path, create)
    try:
        yield fd
    finally:
        os.close(fd)


def create_file(dir_fd: int, name: str, mode: int = 0o644) -> int:
    """A new file `name` in the directory; fails if anything (a file, a link) is already there."""
    if "/" in name or name in ("", ".", ".."):
        raise UnsafePath(f"{name!r} is not a plain file name")
    return os.open(name, _CREATE, mode, dir_fd=dir_fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: write a fresh randomly named file, then rename it over `path`
    (a crash never leaves half a file, and a link at `path` is replaced, not followed)."""
    path = Path(path)
    with directory(path.parent) as dfd:
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = create_file(dfd, tmp, mode)
        try:
            with os.fdopen(fd, "wb", closefd=True) as f:
                f.write(data)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def remove(dir_fd: int, name: str) -> bool:
    """Unlink `name` (a link is removed, never followed); False when it was not there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def open_output(path: Path, binary: bool = False):
    """A file the user named (export, query -o) opened for writing, refusing a link or a non-file."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not hang us
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link; give a plain file path") from None
        raise UnsafePath(f"cannot write {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file")
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "wb" if binary else "w")


def open_regular(path: Path):
    """(file, stat) of a regular file opened for reading, not through a link and never blocking on a FIFO:
    OSError when it cannot be opened, UnsafePath when it is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file")
    return os.fdopen(fd, "rb"), st


def read_file(path: Path, limit: int) -> bytes:
    """A regular file's bytes, not through a link, never blocking on a FIFO, at most `limit` bytes."""
    path = Path(path)
    try:
        f, st = open_regular(path)
    except UnsafePath:
        raise
    except OSError:
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link; cctrace reads only the files it wrote") from None
        raise
    with f:
        if st.st_size > limit:
            raise UnsafePath(f"{path} is {st.st_size:,} bytes, more than the {limit:,} a cctrace file of its kind can be")
        return f.read(limit + 1)[:limit]


def is_regular(path: Path) -> bool:
    """A plain file, not a link, FIFO or device (what the loader may open)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
