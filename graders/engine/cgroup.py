"""One cgroup per sandboxed worker: the grading ends by killing it, so nothing a submission starts survives.

A worker's processes can ``setsid()``, double-fork and clear their parent-death signal;
none of that leaves a cgroup. Each worker gets a fresh group (made by the root grader)
and the launcher writes its own pid into it before it execs anything, so every process
the submission ever starts is in it. The group also caps the worker's processes
(``pids.max``: a thread bomb cannot starve a concurrent worker) and memory, counts its
CPU time (the speed tests' clock) and can freeze it while the grader times the reference.

Two layouts are handled: a pure cgroup v2 machine (``/sys/fs/cgroup/cgroup.controllers``)
and a hybrid one (v2 at ``/sys/fs/cgroup/unified`` without controllers, for
``cgroup.kill``/``cgroup.freeze``/``cpu.stat``, plus v1 ``pids``, ``memory``,
``freezer`` and ``cpuacct``). Groups are made under the grader's own group, named
``llmg-<run>-<n>``, so a killed run's groups are found and removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
PREFIX = "llmg-"


def _own_paths() -> dict[str, str]:
    """Controller name ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _roots() -> dict[str, Path]:
    """Role -> the folder new worker groups are made in; roles: v2, pids, memory, freezer, cpuacct."""
    own = _own_paths()
    roots: dict[str, Path] = {}
    if (CGROUP_FS / "cgroup.controllers").exists():  # pure v2
        if "" in own:
            roots["v2"] = CGROUP_FS / own[""].lstrip("/")
        return roots
    if (CGROUP_FS / "unified" / "cgroup.procs").exists() and "" in own:
        roots["v2"] = CGROUP_FS / "unified" / own[""].lstrip("/")
    for name in ("pids", "memory", "freezer", "cpuacct"):
        if name in own and (CGROUP_FS / name / "cgroup.procs").exists():
            roots[name] = CGROUP_FS / name / own[name].lstrip("/")
    return roots


@dataclass
class Cgroup:
    """A worker's group in every hierarchy we use (``dirs``: role -> folder)."""

    dirs: dict[str, Path]
    limits: dict[str, str] = field(default_factory=dict)  # which limits took effect, for the protections

    # ------------------------------------------------------------------ making
    @classmethod
    def create(cls, name: str, *, pids_max: int, memory_max: int | None) -> Cgroup | None:
        """A fresh group named ``name`` (``llmg-<run>-<n>``), or None where none can be made."""
        if os.geteuid() != 0:
            return None  # a non-root grader cannot move processes between groups it does not own
        dirs: dict[str, Path] = {}
        for role, root in _roots().items():
            path = root / name
            try:
                path.mkdir()
            except FileExistsError:
                pass
            except OSError:
                continue
            dirs[role] = path
        group = cls(dirs)
        if "v2" not in dirs and "freezer" not in dirs:
            group.remove()
            return None  # without a way to freeze or kill the whole group, it is no use
        group._set_limits(pids_max, memory_max)
        return group

    def _set_limits(self, pids_max: int, memory_max: int | None) -> None:
        v2 = self.dirs.get("v2")
        pids_dir = self.dirs.get("pids") or v2
        if v2 is not None and "pids" not in self.dirs:  # pure v2: the parent must hand the controllers down
            _write(v2.parent / "cgroup.subtree_control", "+pids +memory")
        if pids_dir is not None and _write(pids_dir / "pids.max", str(pids_max)):
            self.limits["pids"] = f"pids.max {pids_max}"
        if memory_max:
            mem = self.dirs.get("memory")
            if mem is not None and _write(mem / "memory.limit_in_bytes", str(memory_max)):
                self.limits["memory"] = f"memory.limit_in_bytes {memory_max >> 20} MiB"
            elif v2 is not None and _write(v2 / "memory.max", str(memory_max)):
                _write(v2 / "memory.swap.max", "0")
                self.limits["memory"] = f"memory.max {memory_max >> 20} MiB"

    @property
    def name(self) -> str:
        return next(iter(self.dirs.values())).name

    def procs_files(self) -> list[str]:
        """The files a launcher writes its own pid into, before it execs, to join the group."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def join(self) -> None:
        """Move the calling process into the group (used in the child between fork and exec)."""
        for path in self.procs_files():
            with open(path, "w") as f:
                f.write("0")  # 0: the writing process itself

    # ------------------------------------------------------------------ reading
    def pids(self) -> set[int]:
        """Every process in the group, in any hierarchy."""
        found: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def cpu_seconds(self) -> float | None:
        """CPU seconds (user + system) used by everything that was ever in the group."""
        v2 = self.dirs.get("v2")
        if v2 is not None:
            with contextlib.suppress(OSError, ValueError):
                for line in (v2 / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
        acct = self.dirs.get("cpuacct")
        if acct is not None:
            with contextlib.suppress(OSError, ValueError):
                return int((acct / "cpuacct.usage").read_text()) / 1e9
        return None

    # ------------------------------------------------------------------ freezing
    def freeze(self, timeout: float = 5.0) -> bool:
        """Stop every process in the group; True once the kernel says all are frozen."""
        v2, fz = self.dirs.get("v2"), self.dirs.get("freezer")
        deadline = time.monotonic() + timeout
        if v2 is not None and _write(v2 / "cgroup.freeze", "1"):
            while time.monotonic() < deadline:
                if "frozen 1" in _read(v2 / "cgroup.events"):
                    return True
                time.sleep(0.001)
            return False
        if fz is not None and _write(fz / "freezer.state", "FROZEN"):
            while time.monotonic() < deadline:
                if _read(fz / "freezer.state").strip() == "FROZEN":
                    return True
                time.sleep(0.001)
        return False

    def thaw(self) -> None:
        v2, fz = self.dirs.get("v2"), self.dirs.get("freezer")
        if v2 is not None:
            _write(v2 / "cgroup.freeze", "0")
        if fz is not None:
            _write(fz / "freezer.state", "THAWED")

    # ------------------------------------------------------------------ ending
    def kill(self, timeout: float = 10.0) -> bool:
        """SIGKILL every process in the group until it is empty; True when it is."""
        v2 = self.dirs.get("v2")
        deadline = time.monotonic() + timeout
        killed_by_kernel = v2 is not None and _write(v2 / "cgroup.kill", "1")
        while True:
            pids = self.pids()
            if not pids:
                return True
            if not killed_by_kernel:
                # Freeze first so nothing can fork while we kill; a frozen process still takes SIGKILL.
                self.freeze(timeout=1.0)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                self.thaw()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        return not self.pids()

    def remove(self) -> None:
        """Kill what is left and remove the group's folders."""
        if self.pids():
            self.kill()
        for d in self.dirs.values():
            for _ in range(50):  # a group is removable only once its last process is reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def groups_of_run(run_id: str) -> Iterator[Cgroup]:
    """The groups a run made (``llmg-<run_id>-*``), found in this process's hierarchies."""
    by_name: dict[str, dict[str, Path]] = {}
    for role, root in _roots().items():
        with contextlib.suppress(OSError):
            for d in root.iterdir():
                if d.is_dir() and d.name.startswith(f"{PREFIX}{run_id}-"):
                    by_name.setdefault(d.name, {})[role] = d
    for dirs in by_name.values():
        yield Cgroup(dirs)


def remove_run(run_id: str) -> None:
    """Kill and remove every group a run made (at the end of the run, or for a run that was killed)."""
    for group in groups_of_run(run_id):
        group.remove()
