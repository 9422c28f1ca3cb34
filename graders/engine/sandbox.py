"""Grader side of the trust boundary: start, talk to and kill the sandboxed worker.

Student code runs only in the worker (``worker_main.py``). This module copies the
lesson's allow-listed module files into a fresh folder under the run's private folder
(``runroot.py``), starts the worker through the strongest launcher this machine has
(``launcher.py``: bubblewrap or unshare, an allow-list file system, a per-worker uid),
in a cgroup of its own (``cgroup.py``), sends it plain-data requests and checks every
reply by exact type (``plaindata.py``). A worker that crashes, hangs or exits is killed
with everything it started (the cgroup, and every process of its uid); the next request
starts a new one. A root grader never runs student code as root: when no sandbox can be
built it raises :class:`SandboxUnavailable` unless weakened modes were allowed. Which
protections were on is reported in :attr:`Worker.protections`.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from graders.engine import launcher, runroot, wire
from graders.engine.cgroup import PREFIX as CGROUP_PREFIX
from graders.engine.cgroup import Cgroup
from graders.engine.launcher import SandboxUnavailable
from graders.engine.plaindata import check_plain, shorten

__all__ = ["Protections", "SandboxUnavailable", "StudentError", "Worker", "WorkerDied", "run_root"]

ENGINE_DIR = Path(__file__).resolve().parent
REPO_ROOT = ENGINE_DIR.parent.parent
MAX_REPLY_BYTES = 1 << 30
MAX_MODULE_BYTES = 1 << 20
PIDS_MAX = 1024  # threads count: a thread bomb stops here, in its own cgroup, not in a concurrent worker
run_root = runroot.run_root


class StudentError(Exception):
    """The student's code raised an exception (the worker is still alive)."""


class WorkerDied(Exception):
    """The worker crashed, hung, exited or sent garbage; it has been killed.

    ``kind`` is one of "timeout", "exited", "killed", "protocol", "launch", "broken";
    ``seconds`` is the budget that ran out (timeouts) or None.
    """

    KINDS = ("timeout", "exited", "killed", "protocol", "launch", "broken")

    def __init__(self, message: str, *, kind: str = "exited", seconds: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind if kind in self.KINDS else "exited"
        self.seconds = seconds


@dataclass
class Protections:
    """Which sandbox protections are in force; reported in every grading output (fields and a summary)."""

    launcher: str = "none"  # "bwrap", "unshare" or "none"
    uid: int | None = None  # the uid student code runs as (a per-worker one under a root grader)
    per_worker_uid: bool = False
    filesystem: str = "full"  # "allow-list": only system folders, the venv, its own folder; "full": what the uid can read
    network: bool = False  # an empty network namespace
    pid_namespace: bool = False
    ipc_namespace: bool = False
    private_tmp: bool = False  # private size-capped /tmp, /dev/shm and home
    cgroup: dict[str, str] = field(default_factory=dict)  # limits in force; {} without a cgroup
    killed_with_grading: bool = False  # a cgroup or the per-worker uid: nothing it starts survives close()
    memory_limit: str = "off"
    weakened: str | None = None  # why this is less than the full sandbox; None when it is the full one
    isolated_folder: bool = True
    clean_environment: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        on = {True: "on", False: "off"}
        uid = f"on (uid {self.uid}, one per worker)" if self.per_worker_uid else f"off (the grader's uid {self.uid})"
        hidden = "on (file-system allow-list)" if self.filesystem == "allow-list" else "off (the worker sees the disk)"
        cg = ", ".join(self.cgroup.values()) if self.cgroup else "none"
        text = (
            f"sandbox: launcher {self.launcher}; network {'on (empty network namespace)' if self.network else 'off'}; "
            f"uid {uid}; instructor tree hidden {hidden}; memory limit {self.memory_limit}; cgroup {cg}; "
            f"private /tmp, /dev/shm, IPC {on[self.private_tmp and self.ipc_namespace]}; "
            f"killed with the grading {on[self.killed_with_grading]}; isolated folder, python -I, clean env on"
        )
        return text + (f"; WEAKENED: {self.weakened}" if self.weakened else "")


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (the no-cgroup fallback's view of a worker)."""
    children, found, todo = _proc_children(), [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def _cpu_of(pids: list[int]) -> float:
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


_counter = iter(range(1 << 62))


@dataclass
class Worker:
    """One sandboxed worker for one lesson folder of one submission.

    ``lesson_dir`` is the submission's ``lesson_NN`` folder; only ``modules`` (file
    stems, e.g. ``("attention",)``) are copied from it and imported at start. ``sources``
    (stem -> a submission file elsewhere, e.g. ``labs/lesson_NN/lab_experiment.py``) are copied
    beside them as ``<stem>.py`` with the same checks, not imported at start. ``hide`` is kept for callers
    that list paths the worker must not see; the allow-list view hides them anyway.
    ``allow_unsandboxed`` (default: ``LLMG_ALLOW_UNSANDBOXED=1``) lets a root grader run
    a weakened worker (still a per-worker uid, never root) when no sandbox can be built.
    """

    lesson_dir: Path
    modules: tuple[str, ...]
    timeout: float = 60.0
    memory_bytes: int | None = 6 << 30
    hide: tuple[Path, ...] = ()
    cuda: bool = False
    trusted_trees: tuple[Path, ...] = ()  # our own packages the student code may import (e.g. labkit)
    provided: dict[str, Path] = field(default_factory=dict)  # stem -> trusted file (the reference's), never the student's
    sources: dict[str, Path] = field(default_factory=dict)  # stem -> submission file copied as <stem>.py (lab files)
    protections: Protections = field(default_factory=Protections)
    max_timeouts: int = 3
    allow_unsandboxed: bool | None = None
    starts: int = 0
    timeouts: int = 0
    deaths: dict[str, int] = field(default_factory=dict)  # WorkerDied kind -> how many times
    broken: str | None = None  # set when the modules cannot be imported or the worker hangs too often
    last_start_seconds: float = 0.0
    _launch_failure: str | None = None  # why the sandboxed launch failed (only with allow_unsandboxed)
    _proc: subprocess.Popen | None = None
    _folder: Path | None = None
    _req_w: int = -1
    _rep_r: int = -1
    _log: Path | None = None
    _cgroup: Cgroup | None = None
    _lease: launcher.UidLease | None = None
    _last_exit: int | None = None

    # The fields above that are settings, not the state of a running worker (what `fresh` copies).
    SETTINGS = (
        "lesson_dir", "modules", "timeout", "memory_bytes", "hide", "cuda", "trusted_trees", "provided", "sources",
        "max_timeouts", "allow_unsandboxed",
    )  # fmt: skip

    def fresh(self) -> Worker:
        """A new worker with this one's settings and none of its state: a second process for the same
        submission (a lesson that resumes a checkpoint in a fresh process). Not started until its first request."""
        return Worker(**{name: copy.copy(getattr(self, name)) for name in self.SETTINGS})

    # ------------------------------------------------------------------ lifecycle
    def _prepare_folder(self, mode: str, uid: int | None) -> Path:
        """The worker's folder: its modules, owned by root and group-readable by its uid alone."""
        folder = Path(tempfile.mkdtemp(prefix="w-", dir=runroot.current()))
        copies = {stem: self.lesson_dir / f"{stem}.py" for stem in self.modules if stem not in self.provided}
        copies.update((stem, Path(src)) for stem, src in self.sources.items() if stem not in self.provided)
        for stem, src in copies.items():
            shown = f"{src.parent.name}/{src.name}"
            # Regular files only, no symlinks (a link could point into the instructor's tree).
            if not src.is_file() or src.is_symlink():
                self.broken = f"the submission has no regular file {shown}"
            elif src.stat().st_size > MAX_MODULE_BYTES:
                self.broken = f"{shown} is over {MAX_MODULE_BYTES >> 20} MiB"
            else:
                shutil.copyfile(src, folder / f"{stem}.py")
        for stem, src in self.provided.items():  # given complete to students: graded with our copy, not theirs
            shutil.copyfile(src, folder / f"{stem}.py")
        shutil.copyfile(ENGINE_DIR / "worker_main.py", folder / "_llmg_worker.py")
        shutil.copyfile(ENGINE_DIR / "wire.py", folder / "_llmg_wire.py")  # the worker's half of the wire
        for tree in self.trusted_trees:
            shutil.copytree(tree, folder / tree.name, ignore=shutil.ignore_patterns("__pycache__"))
        (folder / "home").mkdir()  # a private tmpfs is mounted here in the sandbox
        if mode == "none":
            (folder / "tmp").mkdir()
        if uid is None:  # a non-root grader: everything is the grader's own
            os.chmod(folder, 0o700)
            return folder
        # Read-only to the worker (root owns it), readable by its group only: no other worker's uid.
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 0, uid, follow_symlinks=False)
            if not path.is_symlink():
                os.chmod(path, 0o750 if path.is_dir() else 0o640)
        for sub in ("home", "tmp"):
            if (folder / sub).exists():
                os.chown(folder / sub, uid, uid)
                os.chmod(folder / sub, 0o700)
        return folder

    def start(self) -> None:
        self.close()
        t0 = time.perf_counter()
        if self._launch_failure is not None:
            mode, weakened = "none", self._launch_failure
        else:
            mode, weakened = launcher.choose(self.allow_unsandboxed)  # raises SandboxUnavailable (root, no sandbox)
        root = os.geteuid() == 0
        if root:
            self._lease = launcher.lease_uid()
        uid = self._lease.uid if self._lease else os.getuid()
        self._folder = folder = self._prepare_folder(mode, uid if root else None)
        if self.broken is not None:
            return
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        for fd in (req_r, rep_w):  # 1 MiB pipes: tensors cross in far fewer context switches
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        sandboxed = mode != "none"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(folder / "home"),
            "TMPDIR": "/tmp" if sandboxed else str(folder / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        }
        rlimits = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": 256 << 20}
        p = self.protections = Protections(launcher=mode, uid=uid, per_worker_uid=root, weakened=weakened)
        if self.memory_bytes:
            # CUDA reserves far more address space than it uses, so a CUDA worker is
            # limited on its writable data instead of its address space.
            kind = "RLIMIT_DATA" if self.cuda else "RLIMIT_AS"
            rlimits[kind] = self.memory_bytes
            p.memory_limit = f"on ({self.memory_bytes >> 30} GiB, {kind})"
        if root:
            rlimits["RLIMIT_NPROC"] = PIDS_MAX  # counted per uid, and the uid is this worker's alone
            run = runroot.run_id(runroot.current())
            name = f"{CGROUP_PREFIX}{run}-w{os.getpid()}-{next(_counter)}"
            self._cgroup = Cgroup.create(name, pids_max=PIDS_MAX, memory_max=self.memory_bytes)
            p.cgroup = dict(self._cgroup.limits) if self._cgroup else {}
        p.killed_with_grading = root or mode == "bwrap"  # a cgroup and the uid, or bwrap's own pid-namespace init
        inner = [sys.executable, "-I", "-B", str(folder / "_llmg_worker.py"), str(req_r), str(rep_w), str(folder)]
        spec = launcher.Spec(folder=folder, argv=inner, env=env, uid=uid if root else None, rlimits=rlimits, cuda=self.cuda)
        cgroup = self._cgroup
        cwd = "/"
        if mode == "bwrap":
            argv = launcher.bwrap_argv(spec)
            set_rlimits = True
        elif mode == "unshare":
            new_root = folder.parent / f"{folder.name}.root"
            new_root.mkdir(mode=0o700)
            argv = launcher.unshare_argv(spec, new_root)
            set_rlimits = False  # launch.py sets them after its mounts
        else:
            argv, set_rlimits, cwd = inner, True, str(folder)
        if sandboxed:
            p.filesystem, p.network, p.pid_namespace, p.ipc_namespace, p.private_tmp = "allow-list", True, True, True, True
        drop_to = uid if (root and mode == "none") else None

        preexec = launcher.child_setup(cgroup, rlimits if set_rlimits else None, drop_to)

        self._log = folder.parent / f"{folder.name}.log"
        log = open(os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(req_r, rep_w),
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:  # before the launcher ran: nothing of the student's
            self.close()
            why = f"the {mode} launcher could not be started: {type(exc).__name__}: {exc}"
            raise (SandboxUnavailable(f"{why}; {launcher.FIX}") if root else WorkerDied(why, kind="launch")) from None
        finally:
            for fd in (req_r, rep_w):
                os.close(fd)
            log.close()
        self.starts += 1
        try:
            self._receive(deadline=time.monotonic() + max(self.timeout, 120.0))  # "ready" after `import torch`
        except WorkerDied as exc:
            # Nothing of the student's has run yet (modules are imported below): a launch failure.
            status = self._last_exit
            why = f"the {mode} launch failed (exit status {status}): {exc}"
            if mode == "none" or not root:
                raise WorkerDied(why, kind="launch") from None
            allow = launcher.allowed_unsandboxed() if self.allow_unsandboxed is None else self.allow_unsandboxed
            if not allow:
                raise SandboxUnavailable(f"{why[:300]}; {launcher.FIX}") from None
            self._launch_failure = f"--allow-unsandboxed: {why[:200]}"
            return self.start()
        self.last_start_seconds = time.perf_counter() - t0
        identity, _ = self._send_and_receive({"op": "ping"}, self.timeout)
        seen = identity.get("uid") if type(identity) is dict else None
        if root and seen in (0, None):
            self.close()
            raise SandboxUnavailable(f"the worker reported uid {seen!r} under a root grader; refusing to run student code")
        if seen != uid:
            p.weakened = (p.weakened + "; " if p.weakened else "") + f"worker reported uid {seen}"
            p.per_worker_uid = False
        p.uid = seen
        for stem in self.modules:  # import once here: a module that cannot load fails every test fast
            try:
                self._send_and_receive({"op": "import", "module": stem}, self.timeout)
            except WorkerDied as exc:
                self.broken = f"importing {stem}.py stopped the worker: {exc}"
            except StudentError as exc:
                self.broken = f"importing {stem}.py raised {exc}"
            else:
                continue
            break

    def _kill(self) -> int | None:
        """SIGKILL everything the worker started (cgroup, uid, process group); its exit status if reaped."""
        if self._proc is None:
            return None
        if self._cgroup is not None:
            self._cgroup.kill(timeout=0)  # one pass: the kernel kills the group (setsid and double forks included)
        for pid in ([] if self._cgroup is not None else _tree(self._proc.pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        if self._cgroup is not None:
            self._cgroup.kill()
        return code  # (close() also kills every process left with the worker's uid, as it frees the uid)

    def close(self) -> None:
        """Kill everything the worker started, remove its cgroup and folder, free its uid."""
        self._kill()
        self._proc = None
        for fd in (self._req_w, self._rep_r):
            if fd >= 0:
                os.close(fd)
        self._req_w = self._rep_r = -1
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None
        if self._folder is not None:
            new_root = self._folder.parent / f"{self._folder.name}.root"
            if new_root.exists():
                shutil.rmtree(new_root, ignore_errors=True)
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    @property
    def running(self) -> bool:
        """A worker process is up (objects built in it still exist)."""
        return self._proc is not None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ clock and freezing
    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by everything the worker started.

        From its cgroup's ``cpu.stat`` where there is one (threads and processes that
        left the process tree included), else summed over its process tree from /proc.
        """
        if self._cgroup is not None:
            seconds = self._cgroup.cpu_seconds()
            if seconds is not None:
                return seconds
        if self._proc is None:
            return 0.0
        return _cpu_of(_tree(self._proc.pid))

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The whole worker stopped while inside (the grader times its reference undisturbed)."""
        if self._proc is None:
            yield
            return
        if self._cgroup is not None and self._cgroup.freeze():
            try:
                yield
            finally:
                self._cgroup.thaw()
            return
        stopped: set[int] = set()
        for _ in range(20):  # until no new process appears (one may fork while we stop the others)
            fresh = [pid for pid in _tree(self._proc.pid) if pid not in stopped]
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)

    # ------------------------------------------------------------------ transport
    def _log_tail(self, limit: int = 600) -> str:
        try:
            with open(self._log, "rb") as f:
                f.seek(max(0, os.path.getsize(self._log) - limit))
                return f.read().decode("utf-8", "replace").strip()
        except (OSError, TypeError):
            return ""

    def _timed_out(self, seconds: float | None = None) -> WorkerDied:
        """Kill the worker after a request ran past its budget (for the transport's deadline)."""
        seconds = self.timeout if seconds is None else seconds
        return self._died(f"too slow: over the {seconds:g} s budget (an infinite loop, or far too slow?)",
                          kind="timeout", seconds=seconds)

    def _died(self, why: str, kind: str | None = None, seconds: float | None = None) -> WorkerDied:
        if kind is None and why.startswith("timed out"):  # the transport's wording before typed errors
            kind, seconds = "timeout", self.timeout
            why = f"too slow: over the {self.timeout:g} s budget (an infinite loop, or far too slow?)"
        if kind != "timeout" and self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0.5)  # it is exiting on its own: let its status tell why
        code = self._kill()
        self._last_exit = code
        tail = self._log_tail()
        self.close()
        if kind == "timeout":
            pass  # we killed it: its status says nothing
        elif code is not None and code < 0:
            why += f"; killed by {signal.Signals(-code).name}"
            kind = kind or "killed"
        elif code is not None and code > 128 and code - 128 in signal.Signals._value2member_map_:
            why += f"; killed by {signal.Signals(code - 128).name}"  # unshare reports its child's signal so
            kind = kind or "killed"
        elif code is not None:
            why += f"; exit status {code}"
        if tail:
            why += f"; last output: {tail[-300:]!r}"
        return WorkerDied(why, kind=kind or "exited", seconds=seconds)

    def _read_exact(self, n: int, deadline: float, budget: float | None = None) -> bytearray:
        """``n`` bytes of reply by ``deadline``; memory grows only with the bytes really received."""
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(budget)
            ready, _, _ = select.select([self._rep_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._rep_r, min(n - len(buf), 1 << 20))
            if not chunk:
                raise self._died("worker exited or crashed")
            buf += chunk
        return buf

    def _receive(self, deadline: float, budget: float | None = None) -> dict:
        """One reply, decoded by ``wire`` (sizes checked before reading, bounded decoding), then ``check_plain``."""
        limits = wire.Limits(max_data_bytes=MAX_REPLY_BYTES)
        try:
            json_len, data_len = wire.read_header(bytes(self._read_exact(wire.HEADER.size, deadline, budget)), limits)
        except wire.WireError as exc:
            raise self._died(f"unreadable reply: {exc}", kind="protocol") from None
        body = self._read_exact(json_len + data_len, deadline, budget)
        try:
            reply = check_plain(wire.decode_body(body, json_len, limits))
        except Exception as exc:  # WireError, NotPlainData, or torch refusing a buffer: all the worker's doing
            raise self._died(f"unreadable reply: {type(exc).__name__}: {shorten(str(exc), 300)}", kind="protocol") from None
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            raise self._died("malformed reply", kind="protocol")
        return reply

    def request(self, req: dict, timeout: float | None = None) -> tuple[object, float]:
        """Send one request; return (value, seconds measured here, send to reply).

        Raises StudentError when the student's code raised, WorkerDied when the worker
        crashed or hung (it is restarted on the next request); deaths are counted by kind.
        """
        if self.broken is None and self._proc is None:
            self.start()
        if self.broken is not None:
            raise WorkerDied(self.broken, kind="broken")
        try:
            return self._send_and_receive(req, timeout)
        except WorkerDied as exc:
            self.deaths[exc.kind] = self.deaths.get(exc.kind, 0) + 1
            if exc.kind == "timeout":
                self.timeouts += 1
                if self.timeouts >= self.max_timeouts:
                    self.broken = f"the submission timed out {self.timeouts} times; later calls are not attempted"
            raise

    def _send_and_receive(self, req: dict, timeout: float | None) -> tuple[object, float]:
        parts = wire.encode_parts(req)  # the grader's own data: a WireError here is a grading bug, raised as is
        budget = timeout or self.timeout
        ready, _, _ = select.select([self._rep_r], [], [], 0)
        if ready:  # replies come only when asked: bytes already waiting are forged or stale
            stray = os.read(self._rep_r, 64)
            if not stray:
                raise self._died("worker exited or crashed")
            raise self._died(
                "protocol error: the worker wrote to the reply pipe before it was asked (a thread of the submission?)",
                kind="protocol",
            )
        t0 = time.perf_counter()
        deadline = time.monotonic() + budget
        os.set_blocking(self._req_w, False)  # a worker that stops reading cannot stall the grader past the deadline
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out(budget)
                _, writable, _ = select.select([], [self._req_w], [], left)
                try:
                    view = view[os.write(self._req_w, view) :] if writable else view
                except BlockingIOError:
                    continue
                except OSError:
                    raise self._died("worker closed its request pipe") from None
        reply = self._receive(deadline, budget)
        elapsed = time.perf_counter() - t0
        if not reply["ok"]:
            error = reply.get("error")
            raise StudentError(shorten(error, 2000) if type(error) is str else "the student code raised an error")
        return reply.get("value"), elapsed

    # ------------------------------------------------------------------ ops
    def call(
        self,
        module: str,
        function: str,
        args: tuple | list = (),
        kwargs: dict | None = None,
        *,
        device: str = "cpu",
        timeout: float | None = None,
    ) -> object:
        """Call ``module.function(*args, **kwargs)`` in the worker; return its plain-data result.

        Tensors travel on the CPU; with ``device="cuda"`` the worker moves them there
        and brings results back.
        """
        req = {"op": "call", "module": module, "function": function, "args": list(args), "kwargs": kwargs or {}}
        value, _ = self.request({**req, "device": device}, timeout)
        return value

    def timed_batch(
        self,
        module: str,
        function: str,
        calls: list[tuple[tuple, dict]],
        *,
        device: str = "cpu",
        timeout: float | None = None,
    ) -> tuple[list, float]:
        """Run several calls in one round trip; return (results, seconds timed in this process).

        The time includes the transport, so it can only make a submission look slower,
        never faster: the worker cannot report its own time.
        """
        req = {"op": "batch", "module": module, "function": function, "device": device}
        req["calls"] = [[list(a), dict(k)] for a, k in calls]
        value, seconds = self.request(req, timeout)
        if type(value) is not list or len(value) != len(calls):
            raise StudentError("batch reply has the wrong number of results")
        return value, seconds

    def seeded_batch(
        self,
        module: str,
        function: str,
        *,
        seed: int,
        count: int,
        random_args: list,
        fixed_args: dict | None = None,
        device: str = "cpu",
        timeout: float | None = None,
    ) -> tuple[dict, float]:
        """Timed calls on inputs the worker makes from ``seed`` (see ``worker_main.seeded_inputs``).

        Returns ({"digests": [[float per output] per call], "first": first result}, seconds
        timed here). Only a few bytes cross, so the time is the computation's; the
        digests prove every call really ran and the grader recomputes them.
        """
        req = {"op": "seeded_batch", "module": module, "function": function, "seed": seed, "count": count}
        req |= {"random_args": random_args, "fixed_args": fixed_args or {}, "device": device}
        value, seconds = self.request(req, timeout)
        if type(value) is not dict or type(value.get("digests")) is not list or len(value["digests"]) != count:
            raise StudentError("timed batch reply malformed")
        return value, seconds

    def grad(
        self,
        module: str,
        function: str,
        args: tuple | list,
        kwargs: dict | None,
        *,
        wrt: list[int],
        cotangent: torch.Tensor,
        output: int | None = None,
        device: str = "cpu",
        timeout: float | None = None,
    ) -> list:
        """Gradients of ``sum(result[output] * cotangent)`` w.r.t. ``args[i]`` for i in ``wrt``.

        The worker differentiates through the student's code; the grader compares the
        gradients with its own, so a tampered autograd cannot pass.
        """
        req = {"op": "grad", "module": module, "function": function, "args": list(args), "kwargs": kwargs or {}}
        req |= {"wrt": list(wrt), "cotangent": cotangent, "output": output, "device": device}
        value, _ = self.request(req, timeout)
        return value
