"""Kernelspec entry point: start a Jupyter kernel for student notebook code in the sandbox.

nbgrader (trusted, root) starts this with the connection file. It runs as root, so it
can make the kernel's sandbox: a mount and pid namespace where the instructor's tree is
hidden and the venv is bind-mounted read-only, and uid 65534 for the kernel itself
(``launch.py`` does the work). The network namespace is nbgrader's own, with only
loopback, which the kernel needs to talk to nbgrader. Standalone (``-I``).
"""

import json
import os
import shutil
import sys
import tempfile

NOBODY = 65534
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    connection_file = sys.argv[1]
    folder = tempfile.mkdtemp(prefix="llmg-kernel-")
    os.chmod(folder, 0o755)
    home = os.path.join(folder, "home")
    os.mkdir(home)
    os.chown(home, NOBODY, NOBODY)
    os.mkdir(os.path.join(folder, "venv"))
    conn = os.path.join(folder, "connection.json")
    shutil.copyfile(connection_file, conn)  # the runtime dir's copy is readable by root only
    os.chown(conn, NOBODY, NOBODY)
    venv = sys.prefix
    python = os.path.join(folder, "venv", "bin", os.path.basename(sys.executable))
    cfg = {
        "hide": json.loads(os.environ.get("LLMG_KERNEL_HIDE", "[]")),
        "venv": venv,
        "venv_mount": os.path.join(folder, "venv"),
        "rlimits": {"RLIMIT_AS": 8 << 30, "RLIMIT_CORE": 0, "RLIMIT_FSIZE": 256 << 20, "RLIMIT_NPROC": 4096},
        "uid": NOBODY,
        "gid": NOBODY,
        "cwd": os.getcwd(),
        "argv": [python, "-m", "ipykernel_launcher", "-f", conn],
        "env": {"PATH": "/usr/bin:/bin", "HOME": home, "MPLCONFIGDIR": home, "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1",
                "LABKIT_RUNS_DIR": os.path.join(home, "runs")},
    }
    argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
    argv += [sys.executable, "-I", os.path.join(ENGINE_DIR, "launch.py"), json.dumps(cfg)]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
