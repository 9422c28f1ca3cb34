"""Root-side launcher for machines without bubblewrap: build the allow-list root, drop to the worker's uid, exec.

Started as ``unshare [--net] --mount --pid --ipc --uts --fork --kill-child --mount-proc
python -I launch.py CONFIG_JSON`` by a root grader. It runs before any student code, as
root, inside the new namespaces: it mounts a fresh tmpfs as the new root, binds the
allow-listed paths into it read-only (the same view bubblewrap gives: system folders,
the venv, the worker's own folder), adds private size-capped ``/tmp``, ``/dev/shm`` and
home, a fresh ``/proc`` and a few device nodes, ``chroot``s into it and replaces itself
with the worker running as its per-worker uid (no capabilities, no new privileges).
Standalone on purpose (``-I``: no engine imports). Any failed step exits with status
97 (``LAUNCH_FAILED``) before student code runs; the grader reads that status and
never runs the worker with less protection than it reports.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys

LAUNCH_FAILED = 97
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _fail(why: str) -> None:
    print(f"launch: {why}", file=sys.stderr, flush=True)
    os._exit(LAUNCH_FAILED)


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
    if _libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        _fail(f"mount {src} on {target}: {os.strerror(ctypes.get_errno())}")


def _placeholder(src: str, target: str) -> None:
    """The mount point in the new root: a folder for a folder, an empty file for anything else."""
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()


def _bind(src: str, root: str, *, read_only: bool) -> None:
    target = root + src
    _placeholder(src, target)
    _mount(src, target, None, MS_BIND)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _tmpfs(target: str, size: int, mode: str, owner: int | None) -> None:
    os.makedirs(target, exist_ok=True)
    opts = f"size={size},mode={mode}" + (f",uid={owner},gid={owner}" if owner else "")
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts)


def build_root(cfg: dict) -> None:
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/dev")
    _mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=0755")
    for name in cfg["devices"]:
        if os.path.exists(f"/dev/{name}"):
            _placeholder(f"/dev/{name}", root + f"/dev/{name}")
            _mount(f"/dev/{name}", root + f"/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + f"/dev/{name}")
    # /tmp and /dev/shm first: the worker's folder may lie below the host's /tmp and is bound on top.
    late = {}
    for path, (size, mode, owner) in cfg["tmpfs"].items():
        if path not in ("/tmp", "/dev/shm"):
            late[path] = (size, mode, owner)
            continue
        _tmpfs(root + path, size, mode, owner)
    for path in cfg["ro"]:
        if not os.path.lexists(path):
            _fail(f"{path} does not exist")
        _bind(path, root, read_only=True)
    for path in cfg["rw"]:
        _bind(path, root, read_only=False)
    for name, target in cfg["links"].items():
        os.symlink(target, root + name)
    if cfg.get("sys"):
        _bind("/sys", root, read_only=True)
    for path, (size, mode, owner) in late.items():  # the worker's home, on top of its read-only folder
        _tmpfs(root + path, size, mode, owner)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)  # the root itself: read-only
    os.chdir(root)
    os.chroot(".")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    ip = next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.path.exists(p)), None)
    if ip is not None:  # some kernels start a new netns with lo down (a notebook kernel needs it)
        subprocess.run([ip, "link", "set", "lo", "up"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    try:
        build_root(cfg)
        for name, value in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        uid, gid = cfg["uid"], cfg["gid"]
        if not uid or not gid:
            _fail("refusing to run student code as root")
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if _libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid binary gives anything back
            _fail("could not set no_new_privs")
        # A change of credentials clears the parent-death signal that `unshare --kill-child`
        # set; set it again so the worker dies with unshare (and unshare with the grader).
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        os.chdir(cfg["cwd"])
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as exc:
        _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
