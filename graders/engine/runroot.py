"""One private folder per grading run for every worker and kernel folder and log.

Sandbox folders used to sit in the shared ``/tmp`` with mode 0755, and a killed run
left them there. Now a run makes one 0700 folder (``/tmp/llmg-root-<pid>-*``, holding an
``owner`` file with the creating process's pid and start time); every worker, kernel
and log of the run lives inside it. The process that made it removes it on exit,
together with the run's cgroups (so a killed grading process leaves nothing running),
and a folder whose owner is gone (a run killed with SIGKILL) is removed by the next run.
The grading child processes find it through ``LLMG_RUN_ROOT``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from graders.engine import cgroup

ENV = "LLMG_RUN_ROOT"
PREFIX = "llmg-root-"


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner_file: Path) -> bool:
    try:
        pid_text, started = owner_file.read_text().split()
        return _start_time(int(pid_text)) == started
    except (OSError, ValueError):
        return False


def run_id(path: Path) -> str:
    return path.name.removeprefix(PREFIX)


def _remove(path: Path) -> None:
    cgroup.remove_run(run_id(path))
    shutil.rmtree(path, ignore_errors=True)


def clean_stale(base: Path | None = None) -> list[Path]:
    """Remove the run folders (and cgroups) of runs whose creating process is gone; return them."""
    base = Path(base or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for path in base.glob(f"{PREFIX}*"):
            if path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.geteuid():
                if (path / "owner").exists() and not _alive(path / "owner"):
                    _remove(path)
                    removed.append(path)
    return removed


def _make() -> Path:
    clean_stale()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    # 0711 under root: the per-worker uids may pass through (bubblewrap binds their folders as
    # them) but not list it; each worker folder is readable by its own uid's group only.
    os.chmod(path, 0o711 if os.geteuid() == 0 else 0o700)
    # Written whole then renamed: another run's clean_stale must never read a half-written owner as dead.
    (path / "owner.new").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    os.replace(path / "owner.new", path / "owner")
    return path


@contextlib.contextmanager
def run_root() -> Iterator[Path]:
    """The run's 0700 folder; nested uses (and child processes) share the outermost one."""
    existing = os.environ.get(ENV)
    if existing and Path(existing).is_dir():
        yield Path(existing)
        return
    path = _make()
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        if os.environ.get(ENV) == str(path):
            del os.environ[ENV]
        _remove(path)


_process_root: Path | None = None


def current() -> Path:
    """The run folder of the run this process belongs to; one for this process alone if there is none.

    (Using ``Worker`` directly, as tests do, gets a folder removed when this process exits.)
    """
    global _process_root
    existing = os.environ.get(ENV)
    if existing and Path(existing).is_dir():
        return Path(existing)
    if _process_root is None or not _process_root.is_dir():
        _process_root = _make()
        atexit.register(_remove, _process_root)
    return _process_root
