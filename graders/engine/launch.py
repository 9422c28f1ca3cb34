"""Root-side launcher, run inside fresh namespaces: hide, limit, drop privileges, exec.

Started as ``unshare --net --mount --pid --fork --kill-child --mount-proc python -I
launch.py CONFIG_JSON`` when the grader is root. It runs before any student code,
as root, inside the new mount/network/pid namespaces, and then replaces itself with
the worker running as an unprivileged uid. Standalone on purpose (``-I``: no engine
imports). A step that fails stops the launch with status 97 and a
``launch:`` line on stderr, so the grader can fall back to a plain worker and say
so, rather than report a protection that did not take effect.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys


def _run(*cmd: str) -> bool:
    exe = shutil.which(cmd[0]) or next(
        (p for p in (f"/usr/sbin/{cmd[0]}", f"/sbin/{cmd[0]}", f"/usr/bin/{cmd[0]}") if os.path.exists(p)), None
    )
    if exe is None:
        return False
    return subprocess.run([exe, *cmd[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


LAUNCH_FAILED = 97  # the grader sees this status and falls back to a plain worker, saying so


def _fail(why: str) -> None:
    """Never run student code with less protection than the grader reported."""
    print(f"launch: {why}", file=sys.stderr, flush=True)
    os._exit(LAUNCH_FAILED)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    _run("ip", "link", "set", "lo", "up")  # some kernels start a new netns with lo down
    # Bind the venv first: hiding the tree it lives in must not hide this view of it.
    venv_mount = cfg.get("venv_mount")
    if venv_mount:  # the interpreter's venv, visible read-only at a neutral path
        if not (_run("mount", "--bind", cfg["venv"], venv_mount) and _run("mount", "-o", "remount,bind,ro", venv_mount)):
            _fail("could not bind the venv into the sandbox")
    for path in cfg["hide"]:  # the instructor's tree, other submissions, the output folder
        if os.path.isdir(path):
            ok = _run("mount", "-t", "tmpfs", "-o", "size=4k,mode=000,ro", "tmpfs", path)
        elif os.path.exists(path):
            ok = _run("mount", "--bind", "/dev/null", path)
        else:
            continue
        if not ok:
            _fail(f"could not hide {path}")
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid, gid = cfg["uid"], cfg["gid"]
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    # A change of credentials clears the parent-death signal that `unshare --kill-child`
    # set; set it again so the worker dies with unshare (and unshare with the grader).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.chdir(cfg["cwd"])
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


if __name__ == "__main__":
    main()
