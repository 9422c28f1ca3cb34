"""How a sandboxed process is started: which launcher, which uid, which file system view.

The worker (and a notebook kernel) sees an allow-list, never a deny-list: system
folders and the venv read-only, its own folder, private size-capped ``/tmp`` and
``/dev/shm``, its own ``/proc``; nothing else exists for it (no other checkout, no
other worker, no ``/root``, no ``/home``). Launchers, strongest first:

- ``bwrap``: bubblewrap run by ``setpriv`` as a per-worker uid (root grader), or as the
  grader's own uid (non-root grader, unprivileged user namespaces).
- ``unshare``: util-linux ``unshare`` + ``launch.py`` (root grader without bubblewrap):
  a new tmpfs root with the same read-only binds, ``chroot``, then the per-worker uid.
- ``none``: a plain child process. A root grader uses it only when the instructor
  passed ``--allow-unsandboxed``, and even then student code runs as a per-worker uid,
  never as root; a non-root grader (a student self-grading) may use it and says so.

Every root-launched process gets a uid of its own from a reserved range, held (flock)
while it lives, so no worker can read or signal another.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent
LAUNCH_FAILED = 97  # launch.py's exit status when a sandbox step failed (before any student code)
UID_RANGE = (60200, 61183)  # Debian's on-demand range, below systemd's DynamicUser uids (61184+); LLMG_UID_RANGE overrides
UID_LOCKS = Path("/run/llmg-uids")
DISABLE_ENV = "LLMG_SANDBOX_DISABLE"  # "bwrap,unshare": behave as if they were missing (tests, diagnosis)
ALLOW_ENV = "LLMG_ALLOW_UNSANDBOXED"  # "1": the instructor passed --allow-unsandboxed
TMP_BYTES = 512 << 20
SHM_BYTES = 256 << 20
HOME_BYTES = 128 << 20
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "nsswitch.conf", "fonts", "mime.types")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


class SandboxUnavailable(Exception):
    """A root grader cannot build the sandbox, and weakened modes were not allowed."""


FIX = "install bubblewrap (`make setup` does, as root) or pass --allow-unsandboxed to run student code without it"


def _disabled() -> set[str]:
    return {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}


def allowed_unsandboxed() -> bool:
    return os.environ.get(ALLOW_ENV) == "1"


def _which(name: str) -> str | None:
    if name in _disabled():
        return None
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)


# ---------------------------------------------------------------------------- the view
def system_binds() -> tuple[list[str], dict[str, str]]:
    """(read-only paths, symlinks name -> target) that every sandbox holds."""
    ro, links = ["/usr"], {}
    for path in MERGED_USR:
        if os.path.islink(path):
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            ro.append(path)
    ro += [f"/etc/{name}" for name in ETC_FILES if os.path.lexists(f"/etc/{name}")]
    return ro, links


def python_binds() -> list[str]:
    """The venv (at its own path) and the base interpreter's prefix when it is not under /usr."""
    paths = []
    prefix = Path(sys.prefix)
    if (prefix / "pyvenv.cfg").exists():
        paths.append(str(prefix))
    for base in {Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent.parent}:
        if not base.is_relative_to("/usr") and str(base) not in paths:
            paths.append(str(base))
    return paths


def unreadable_for_others(paths: list[str], *, parents: bool = True) -> str | None:
    """The first of ``paths`` (or the interpreter) that a uid other than the owner cannot read, if any.

    ``parents``: also every folder above must be searchable (bubblewrap binds as the worker's
    uid; launch.py binds as root, so there only the files themselves must be readable).
    """
    checks = [Path(sys.executable).resolve(), *(Path(p) for p in paths)]
    for path in checks:
        path = path.resolve()
        for parent in path.parents if parents else ():
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return str(parent)
        mode = os.stat(path).st_mode
        if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
            return str(path)
    return None


# ---------------------------------------------------------------------------- uids
@dataclass
class UidLease:
    """A per-worker uid, held by an flock on its lock file while the worker lives."""

    uid: int
    fd: int

    def release(self) -> None:
        kill_uid(self.uid)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _uid_range() -> tuple[int, int]:
    spec = os.environ.get("LLMG_UID_RANGE", "")
    lo, _, hi = spec.partition("-")
    if lo.isdigit() and hi.isdigit() and 1000 <= int(lo) <= int(hi):
        return int(lo), int(hi)
    return UID_RANGE


def lease_uid() -> UidLease:
    """Lock the first free uid of the reserved range (root only); kill anything still running as it."""
    UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
    os.chmod(UID_LOCKS, 0o700)
    lo, hi = _uid_range()
    start = lo + (os.getpid() * 7919 + time.monotonic_ns()) % (hi - lo + 1)
    for i in range(hi - lo + 1):
        uid = lo + (start - lo + i) % (hi - lo + 1)
        try:
            pwd.getpwuid(uid)
            continue  # a real account: never ours
        except KeyError:
            pass
        fd = os.open(UID_LOCKS / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        kill_uid(uid)  # a process left by a killed run must not share this uid with the new worker
        return UidLease(uid, fd)
    raise SandboxUnavailable(f"all {hi - lo + 1} sandbox uids ({lo}-{hi}) are in use; grade fewer submissions at once")


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                        break  # a zombie runs nothing; its reaper (not us) removes it
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_uid(uid: int, timeout: float = 5.0) -> None:
    """SIGKILL every process running as ``uid`` (a leased uid belongs to one worker only)."""
    if os.geteuid() != 0 or uid == 0 or uid == os.getuid():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


# ---------------------------------------------------------------------------- probes
@functools.cache
def _bwrap_works(as_uid: int | None) -> bool:
    bwrap = _which("bwrap")
    if bwrap is None:
        return False
    ro, links = system_binds()
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    for path in ro:
        argv += ["--ro-bind", path, path]
    for name, target in links.items():
        argv += ["--symlink", target, name]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "/usr/bin/true"]
    if as_uid is not None:
        setpriv = _which("setpriv")
        if setpriv is None:
            return False
        argv = [setpriv, "--reuid", str(as_uid), "--regid", str(as_uid), "--clear-groups", *argv]
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _unshare_works() -> bool:
    unshare = _which("unshare")
    if unshare is None or os.geteuid() != 0:
        return False
    probe = [unshare, "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def choose(allow_unsandboxed: bool | None = None) -> tuple[str, str | None]:
    """(launcher, why it is weaker than the full sandbox or None); raises SandboxUnavailable.

    Root: ``bwrap`` (per-worker uid), else ``unshare``, else, only when allowed, ``none``
    (still a per-worker uid). Not root: ``bwrap`` unprivileged if it works, else ``none``.
    """
    if allow_unsandboxed is None:
        allow_unsandboxed = allowed_unsandboxed()
    if os.geteuid() != 0:
        if _bwrap_works(None):
            return "bwrap", "grader is not root: the worker runs as the grader's own uid"
        return "none", "grader is not root and unprivileged bubblewrap is unavailable"
    binds = python_binds()
    unreadable = unreadable_for_others(binds, parents=False)
    if unreadable is None and unreadable_for_others(binds) is None and _bwrap_works(_uid_range()[1]):
        return "bwrap", None
    if unreadable is None and _unshare_works():  # root binds the venv, so its parent folders may be closed
        return "unshare", None
    if unreadable is not None:
        why = f"{unreadable} is not readable by the sandbox uid (run `chmod -R a+rX` on it)"
    else:
        why = f"no working bubblewrap or unshare{_venv_note(binds)}: {FIX}"
    if allow_unsandboxed:
        return "none", f"--allow-unsandboxed: {why}"
    raise SandboxUnavailable(f"the sandbox cannot be built on this machine: {why}")


def _venv_note(binds: list[str]) -> str:
    blocked = unreadable_for_others(binds)
    return f" usable here ({blocked} is closed to the sandbox uid, so bubblewrap cannot bind the venv)" if blocked else ""


# ---------------------------------------------------------------------------- argv
@dataclass
class Spec:
    """What one sandboxed process needs; ``folder`` is its own folder (read-only to it but ``home``)."""

    folder: Path
    argv: list[str]  # the command inside the sandbox (absolute interpreter path first)
    env: dict[str, str]
    uid: int | None  # the per-worker uid (root grader), None for the grader's own
    rlimits: dict[str, int]
    share_net: bool = False  # notebook kernels talk to nbgrader over loopback in nbgrader's namespace
    writable: tuple[Path, ...] = ()  # extra folders bound read-write (a kernel's notebook folder)
    readable: tuple[Path, ...] = ()  # extra files/folders bound read-only (a kernel's connection file)
    cuda: bool = False
    cwd: Path | None = None  # where it starts (default: its folder)


def bwrap_argv(spec: Spec) -> list[str]:
    """setpriv + bwrap command line (bwrap runs as the worker's uid: every bound path must be readable by it)."""
    argv = [_which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if spec.share_net:
        argv.append("--share-net")
    ro, links = system_binds()
    # bwrap mounts in argv order: /tmp and /dev first, so a venv or folder below the host's /tmp is bound on top.
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    argv += ["--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm"]
    for path in ro + python_binds():
        argv += ["--ro-bind", path, path]
    for name, target in links.items():
        argv += ["--symlink", target, name]
    if spec.cuda:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            argv += ["--dev-bind", str(dev), str(dev)]
        argv += ["--ro-bind-try", "/sys", "/sys"]
    argv += ["--ro-bind", str(spec.folder), str(spec.folder)]
    argv += ["--perms", "0700", "--size", str(HOME_BYTES), "--tmpfs", str(spec.folder / "home")]
    for path in spec.readable:
        argv += ["--ro-bind", str(path), str(path)]
    for path in spec.writable:
        argv += ["--bind", str(path), str(path)]
    argv += ["--chdir", str(spec.cwd or spec.folder), "--", *spec.argv]
    if spec.uid is not None:
        argv = [_which("setpriv") or "setpriv", "--reuid", str(spec.uid), "--regid", str(spec.uid), "--clear-groups", *argv]
    return argv


def unshare_config(spec: Spec, new_root: Path) -> dict:
    """launch.py's configuration: the same view as bwrap's, built by root in the new mount namespace."""
    ro, links = system_binds()
    tmpfs = {"/tmp": [TMP_BYTES, "1777", 0], "/dev/shm": [SHM_BYTES, "1777", 0]}
    tmpfs[str(spec.folder / "home")] = [HOME_BYTES, "0700", spec.uid]
    return {
        "root": str(new_root),
        "ro": ro + python_binds() + [str(spec.folder)] + [str(p) for p in spec.readable],
        "rw": [str(p) for p in spec.writable],
        "links": links,
        "devices": list(DEVICES) + ([p.name for p in Path("/dev").glob("nvidia*")] if spec.cuda else []),
        "tmpfs": tmpfs,
        "sys": spec.cuda,
        "rlimits": spec.rlimits,
        "uid": spec.uid,
        "gid": spec.uid,
        "cwd": str(spec.cwd or spec.folder),
        "argv": spec.argv,
        "env": spec.env,
    }


def unshare_argv(spec: Spec, new_root: Path) -> list[str]:
    import json

    argv = [_which("unshare") or "unshare", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
    if not spec.share_net:
        argv.insert(1, "--net")
    return [*argv, sys.executable, "-I", str(ENGINE_DIR / "launch.py"), json.dumps(unshare_config(spec, new_root))]


def child_setup(group: object | None, rlimits: dict[str, int] | None, drop_to: int | None):
    """The ``preexec_fn`` of a sandboxed child (worker or kernel): join its cgroup first (so every
    later process is in it), die with the parent, set the rlimits, and in the weakened root mode drop
    to the per-worker uid: student code is never root."""

    def setup() -> None:
        if group is not None:
            group.join()  # type: ignore[attr-defined]
        die_with_parent()
        if rlimits:
            import resource

            for name, value in rlimits.items():
                resource.setrlimit(getattr(resource, name), (value, value))
        if drop_to is not None:
            os.setgroups([])
            os.setgid(drop_to)
            os.setuid(drop_to)

    return setup


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it if the process that started it dies."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
