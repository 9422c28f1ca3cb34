"""Kernelspec entry point: run a Jupyter kernel for student notebook code in the worker's sandbox.

nbgrader (trusted, root, in an empty network namespace with loopback up) starts this
with the connection file. It is the kernel's supervisor: it makes the kernel a folder
under the run's private folder (``runroot.py``) holding a copy of the connection file
(readable by the kernel's uid only), leases a uid of its own, makes a cgroup, and starts
the kernel through the same launcher as a grading worker (``launcher.py``: bubblewrap or
unshare, the allow-list file system with the notebook's folder, private /tmp, /dev/shm
and home, own IPC and pid namespaces; the network is nbgrader's, which the kernel needs).
When the kernel exits, or this process is told to stop, everything the kernel started is
killed (cgroup, uid) and its folder removed; a supervisor killed outright takes the
kernel with it (parent-death signal), and the run's end removes what is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # run with -I: find the engine

from graders.engine import cgroup, launcher, runroot

KERNEL_MEMORY = 8 << 30


def _interrupt(group: cgroup.Cgroup | None, proc: subprocess.Popen) -> None:
    """SIGINT (a Jupyter interrupt) goes to the kernel process itself, not to the launcher around it."""
    pids = group.pids() if group is not None else {proc.pid}
    for pid in pids:
        try:
            if b"ipykernel_launcher" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGINT)
        except (OSError, ProcessLookupError):
            continue


def main() -> int:
    connection_file = sys.argv[1]
    mode, weakened = launcher.choose()  # SandboxUnavailable: the kernel does not start (a grading problem)
    root = os.geteuid() == 0
    lease = launcher.lease_uid() if root else None
    uid = lease.uid if lease else None
    folder = Path(tempfile.mkdtemp(prefix="k-", dir=runroot.current()))
    (folder / "home").mkdir()
    conn = folder / "connection.json"
    shutil.copyfile(connection_file, conn)  # the runtime dir's copy is readable by root only
    if uid is not None:
        for path in (folder, folder / "home", conn):
            os.chown(path, 0 if path != folder / "home" else uid, uid)
        os.chmod(folder, 0o750)
        os.chmod(conn, 0o640)
        os.chmod(folder / "home", 0o700)
    else:
        os.chmod(folder, 0o700)
    home = folder / "home"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home), "LANG": "C.UTF-8",
           "HF_HUB_OFFLINE": "1", "LABKIT_RUNS_DIR": str(home / "runs"),
           "TMPDIR": "/tmp" if mode != "none" else str(home)}
    rlimits = {"RLIMIT_AS": KERNEL_MEMORY, "RLIMIT_CORE": 0, "RLIMIT_FSIZE": 256 << 20}
    if root:
        rlimits["RLIMIT_NPROC"] = 1024
    inner = [sys.executable, "-m", "ipykernel_launcher", "-f", str(conn)]
    cwd = Path.cwd()
    spec = launcher.Spec(folder=folder, argv=inner, env=env, uid=uid, rlimits=rlimits, share_net=True,
                         writable=(cwd,), cwd=cwd)
    group = None
    if root:
        name = f"{cgroup.PREFIX}{runroot.run_id(runroot.current())}-k{os.getpid()}"
        group = cgroup.Cgroup.create(name, pids_max=1024, memory_max=KERNEL_MEMORY)
    set_rlimits = mode != "unshare"
    if mode == "bwrap":
        argv = launcher.bwrap_argv(spec)
    elif mode == "unshare":
        new_root = folder.parent / f"{folder.name}.root"
        new_root.mkdir(mode=0o700)
        argv = launcher.unshare_argv(spec, new_root)
    else:
        argv = inner
    drop_to = uid if mode == "none" else None
    if weakened:
        print(f"llmg kernel: {weakened}", file=sys.stderr, flush=True)

    preexec = launcher.child_setup(group, rlimits if set_rlimits else None, drop_to)
    proc = subprocess.Popen(argv, env=env, cwd=str(cwd) if mode == "none" else "/", preexec_fn=preexec)
    signal.signal(signal.SIGINT, lambda *_: _interrupt(group, proc))
    signal.signal(signal.SIGTERM, lambda *_: proc.kill())
    try:
        code = proc.wait()
    finally:
        if group is not None:
            group.remove()  # everything the kernel started, setsid and double forks included
        if lease is not None:
            lease.release()
        shutil.rmtree(folder.parent / f"{folder.name}.root", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
