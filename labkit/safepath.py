"""Reading a submission as untrusted input: no symbolic links anywhere on a path, nothing outside it.

A student controls every name in a submission. A link (``exercises/lesson_03 ->
solutions_private/lesson_03``, a folder linking to a classmate's, ``notes.md ->
/dev/zero``) would make the grader read what the student may not give it, so every
path is walked from the submission's root down with ``O_NOFOLLOW`` and each file is
read as a regular file of bounded size. The root itself is the instructor's (trusted).
Nothing here imports anything but the standard library (it ships in the student release as labkit).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MAX_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafePath(Exception):
    """A submission path is a link, leaves the submission, or is not a regular file of bounded size."""


def _parts(root: Path, path: Path | str) -> tuple[str, ...]:
    """``path`` (absolute under ``root``, or relative to it) as names below ``root``; refuses ``..``."""
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.relative_to(root)
        except ValueError:
            raise UnsafePath(f"{path} is outside the submission {root}") from None
    if any(p == ".." for p in path.parts):
        raise UnsafePath(f"{path} leaves the submission {root} ('..')")
    return tuple(p for p in path.parts if p not in ("", "."))


def _link_error(root: Path, parts: tuple[str, ...], i: int) -> UnsafePath:
    shown = "/".join(parts[: i + 1])
    return UnsafePath(f"{shown} in {root} is a symbolic link: links are refused in submissions (copy the file instead)")


def _open_dir(root: Path, parts: tuple[str, ...]) -> int:
    """An fd of the folder ``root/parts``, opened without following a link at any step below ``root``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise _link_error(root, parts, i) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def kind(root: Path, path: Path | str) -> str:
    """"missing", "dir", "file" or "other" for ``path`` under ``root``; UnsafePath if any step is a link."""
    parts = _parts(root, path)
    if not parts:
        return "dir"
    try:
        fd = _open_dir(root, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    try:
        st = os.lstat(parts[-1], dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    finally:
        os.close(fd)
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(root, parts, len(parts) - 1)
    return "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"


def folder(root: Path, path: Path | str) -> Path:
    """``root/path``, checked to be a real folder with no link on the way; UnsafePath or FileNotFoundError."""
    found = kind(root, path)
    if found == "missing":
        raise FileNotFoundError(f"{Path(root, *_parts(root, path))} does not exist")
    if found != "dir":
        raise UnsafePath(f"{Path(root, *_parts(root, path))} is not a folder")
    return Path(root, *_parts(root, path))


def read_bytes(root: Path, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the regular file ``root/path``, at most ``max_bytes``; never follows a link.

    FileNotFoundError when it is missing; UnsafePath for a link, a device, a FIFO or a file too big.
    """
    parts = _parts(root, path)
    if not parts:
        raise UnsafePath(f"{root} is a folder, not a file")
    fd = _open_dir(root, parts[:-1])
    try:
        try:
            ffd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link_error(root, parts, len(parts) - 1) from None
            if exc.errno == errno.ENOTDIR:
                raise FileNotFoundError(f"{Path(root, *parts)} does not exist") from None
            raise
    finally:
        os.close(fd)
    shown = "/".join(parts)
    try:
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{shown} is not a regular file (a device, FIFO, socket or folder)")
        if st.st_size > max_bytes:
            raise UnsafePath(f"{shown} is {st.st_size} bytes, over the {max_bytes} byte limit")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(ffd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while we read
            raise UnsafePath(f"{shown} is over the {max_bytes} byte limit")
        return b"".join(chunks)
    finally:
        os.close(ffd)


def read_text(root: Path, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """:func:`read_bytes` decoded as UTF-8 (bad bytes replaced)."""
    return read_bytes(root, path, max_bytes).decode("utf-8", errors="replace")


def entries(root: Path, path: Path | str) -> list[tuple[str, str]]:
    """(name, kind) of each entry of the real folder ``root/path``, sorted; kind also "link" here."""
    fd = _open_dir(root, _parts(root, path))
    try:
        out = []
        for name in sorted(os.listdir(fd)):
            mode = os.lstat(name, dir_fd=fd).st_mode
            out.append((name, "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else
                        "file" if stat.S_ISREG(mode) else "other"))  # fmt: skip
        return out
    finally:
        os.close(fd)


def regular_files(root: Path, path: Path | str, limit: int = 10_000) -> Iterator[str]:
    """Paths (relative to ``root/path``) of regular files below it, never entering a linked folder."""
    base = Path(root, *_parts(root, path))
    count = 0
    for here, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(here, d)))
        for name in sorted(files):
            full = os.path.join(here, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                yield os.path.relpath(full, base)
                count += 1
                if count >= limit:
                    return
