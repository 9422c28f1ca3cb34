"""Grader side of the trust boundary: start, talk to and kill the sandboxed worker.

Student code runs only in the worker (``worker_main.py``). This module copies the
lesson's allow-listed module files into a fresh folder, starts the worker with the
strongest protections this machine offers, sends it plain-data requests and
checks every reply by exact type (``plaindata.py``). A worker that crashes, hangs
or exits is killed with its whole process group; the next request starts a new
one. Which protections were on is reported in :attr:`Worker.protections`.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import io
import json
import os
import resource
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graders.engine.plaindata import NotPlainData, check_plain

_HEADER = struct.Struct(">Q")
ENGINE_DIR = Path(__file__).resolve().parent
REPO_ROOT = ENGINE_DIR.parent.parent
NOBODY = 65534
MAX_REPLY_BYTES = 1 << 30
MAX_MODULE_BYTES = 1 << 20


class StudentError(Exception):
    """The student's code raised an exception (the worker is still alive)."""


class WorkerDied(Exception):
    """The worker crashed, hung, exited or sent garbage; it has been killed."""


@dataclass
class Protections:
    """Which sandbox protections are in force; reported in every grading output."""

    isolated_folder: bool = True
    clean_environment: bool = True
    process_group: bool = True
    memory_limit: str = "off"
    network: str = "off"
    uid: str = "off"
    hidden_tree: str = "off"

    def summary(self) -> str:
        return (
            f"sandbox: network {self.network}; uid {self.uid}; instructor tree hidden {self.hidden_tree}; "
            f"memory limit {self.memory_limit}; isolated folder, python -I, clean env, own process group on"
        )


@functools.cache
def namespaces_available() -> bool:
    """True when we are root and util-linux ``unshare`` can make the namespaces we need."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the grading process dies (no orphaned workers)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _readable_by_others(path: Path) -> bool:
    """Can uid 65534 execute ``path``? (every parent searchable, the file readable+executable)."""
    path = path.resolve()
    for parent in path.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)


def _venv_root() -> Path | None:
    """The venv this grader runs in, if any (the worker reuses it read-only)."""
    prefix = Path(sys.prefix)
    return prefix if (prefix / "pyvenv.cfg").exists() else None


@dataclass
class Worker:
    """One sandboxed worker for one lesson folder of one submission.

    ``lesson_dir`` is the submission's ``lesson_NN`` folder; only ``modules`` (file
    stems, e.g. ``("attention",)``) are copied from it. ``hide`` lists extra paths the
    worker must not see (other submissions, the output folder).
    """

    lesson_dir: Path
    modules: tuple[str, ...]
    timeout: float = 60.0
    memory_bytes: int | None = 6 << 30
    hide: tuple[Path, ...] = ()
    cuda: bool = False
    trusted_trees: tuple[Path, ...] = ()  # our own packages the student code may import (e.g. labkit)
    protections: Protections = field(default_factory=Protections)
    max_timeouts: int = 3
    starts: int = 0
    timeouts: int = 0
    broken: str | None = None  # set when the modules cannot be imported or the worker hangs too often
    _launch_failure: str | None = None  # why the namespaced launch failed; later starts go without it
    last_start_seconds: float = 0.0
    _proc: subprocess.Popen | None = None
    _folder: Path | None = None
    _req_w: int = -1
    _rep_r: int = -1
    _log: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    def _prepare_folder(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="llmg-sandbox-"))
        os.chmod(folder, 0o755)
        for stem in self.modules:
            src = self.lesson_dir / f"{stem}.py"
            # Regular files only, no symlinks (a link could point into the instructor's tree).
            if not src.is_file() or src.is_symlink():
                self.broken = f"the submission has no regular file {self.lesson_dir.name}/{src.name}"
            elif src.stat().st_size > MAX_MODULE_BYTES:
                self.broken = f"{self.lesson_dir.name}/{src.name} is over {MAX_MODULE_BYTES >> 20} MiB"
            else:
                shutil.copyfile(src, folder / src.name)
                os.chmod(folder / src.name, 0o644)
        shutil.copyfile(ENGINE_DIR / "worker_main.py", folder / "_llmg_worker.py")
        for tree in self.trusted_trees:
            shutil.copytree(tree, folder / tree.name, ignore=shutil.ignore_patterns("__pycache__"))
        for sub in ("home", "tmp"):
            (folder / sub).mkdir()
        (folder / "venv").mkdir()
        return folder

    def start(self) -> None:
        self.close()
        t0 = time.perf_counter()
        self._folder = folder = self._prepare_folder()
        if self.broken is not None:
            return
        req_r, self._req_w = os.pipe()
        self._rep_r, rep_w = os.pipe()
        for fd in (req_r, rep_w):  # 1 MiB pipes: tensors cross in far fewer context switches
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(folder / "home"),
            "TMPDIR": str(folder / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),
        }
        rlimits = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": 256 << 20}
        if self.memory_bytes:
            # CUDA reserves far more address space than it uses, so a CUDA worker is
            # limited on its writable data instead of its address space.
            kind = "RLIMIT_DATA" if self.cuda else "RLIMIT_AS"
            rlimits[kind] = self.memory_bytes
            self.protections.memory_limit = f"on ({self.memory_bytes >> 30} GiB, {kind})"
        worker_args = [str(req_r), str(rep_w), str(folder)]
        self._log = Path(tempfile.mkstemp(prefix="llmg-worker-", suffix=".log")[1])
        log = open(self._log, "wb")
        venv = _venv_root()
        python = Path(sys.executable)
        if namespaces_available() and self._launch_failure is None:
            drop = venv is not None and _readable_by_others(venv / "bin" / "python")
            if drop:
                python_in = folder / "venv" / "bin" / python.name
                for path in (folder, folder / "home", folder / "tmp"):
                    os.chown(path, NOBODY if path != folder else 0, NOBODY)
                os.chmod(folder / "home", 0o700)
                os.chmod(folder / "tmp", 0o700)
            else:
                python_in = python
            rlimits["RLIMIT_NPROC"] = 4096
            # A hidden path that holds the sandbox folder would hide the worker from itself.
            hide = [str(p) for p in (REPO_ROOT, *self.hide) if not folder.is_relative_to(p.resolve())]
            cfg = {
                "hide": hide,
                "venv": str(venv) if drop else None,
                "venv_mount": str(folder / "venv") if drop else None,
                "rlimits": rlimits,
                "uid": NOBODY if drop else 0,
                "gid": NOBODY if drop else 0,
                "cwd": str(folder),
                "argv": [str(python_in), "-I", str(folder / "_llmg_worker.py"), *worker_args],
                "env": env,
            }
            argv = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
            argv += [str(python), "-I", str(ENGINE_DIR / "launch.py"), json.dumps(cfg)]
            self.protections.network = "on (empty network namespace)"
            self.protections.uid = f"on (uid {NOBODY})" if drop else "off (interpreter not readable by uid 65534)"
            self.protections.hidden_tree = "on (mount namespace)" if drop else "weak (worker is root in its namespace)"
            preexec = _die_with_parent
        else:
            argv = [str(python), "-I", str(folder / "_llmg_worker.py"), *worker_args]
            why = self._launch_failure or ("grader is not root" if os.geteuid() != 0 else "unshare unavailable")
            self.protections.network = f"off ({why})"
            self.protections.uid = f"off ({why})"
            self.protections.hidden_tree = f"off ({why})"

            def preexec() -> None:
                _die_with_parent()
                for name, value in rlimits.items():
                    resource.setrlimit(getattr(resource, name), (value, value))

        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(req_r, rep_w),
                cwd=folder,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
            log.close()
        self.starts += 1
        try:
            self._receive(deadline=time.monotonic() + max(self.timeout, 120.0))  # "ready" after `import torch`
        except WorkerDied as exc:
            if "launch:" not in str(exc) or self._launch_failure is not None:
                raise
            self._launch_failure = f"namespaced launch failed: {str(exc).split('launch:')[-1].strip()[:120]}"
            return self.start()  # again, without namespaces; the protections say so
        self.last_start_seconds = time.perf_counter() - t0
        identity, _ = self._send_and_receive({"op": "ping"}, self.timeout)
        if self.protections.uid.startswith("on") and (type(identity) is not dict or identity.get("uid") != NOBODY):
            self.protections.uid = f"off (worker reported uid {identity.get('uid') if type(identity) is dict else '?'})"
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
        """SIGKILL the worker's process group; return its exit status if it was reaped."""
        if self._proc is None:
            return None
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill the worker's whole process group and remove its folder."""
        self._kill()
        self._proc = None
        for fd in (self._req_w, self._rep_r):
            if fd >= 0:
                os.close(fd)
        self._req_w = self._rep_r = -1
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None

    @property
    def running(self) -> bool:
        """A worker process is up (objects built in it still exist)."""
        return self._proc is not None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _log_tail(self, limit: int = 600) -> str:
        try:
            with open(self._log, "rb") as f:
                f.seek(max(0, os.path.getsize(self._log) - limit))
                return f.read().decode("utf-8", "replace").strip()
        except (OSError, TypeError):
            return ""

    def _died(self, why: str) -> WorkerDied:
        code = self._kill()
        tail = self._log_tail()
        self.close()
        if code is not None and code < 0:
            why += f"; killed by {signal.Signals(-code).name}"
        elif code is not None and code > 128 and code - 128 in signal.Signals._value2member_map_:
            why += f"; killed by {signal.Signals(code - 128).name}"  # unshare reports its child's signal so
        elif code is not None:
            why += f"; exit status {code}"
        if tail:
            why += f"; last output: {tail[-300:]!r}"
        return WorkerDied(why)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._died(f"timed out after {self.timeout:g} s (infinite loop or far too slow?)")
            ready, _, _ = select.select([self._rep_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._rep_r, min(n, 1 << 20))
            if not chunk:
                raise self._died("worker exited or crashed")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _receive(self, deadline: float) -> dict:
        (length,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if length > MAX_REPLY_BYTES:
            raise self._died(f"reply of {length} bytes is over the {MAX_REPLY_BYTES} byte limit")
        data = self._read_exact(length, deadline)
        try:
            reply = check_plain(torch.load(io.BytesIO(data), weights_only=True))
        except (NotPlainData, Exception) as exc:
            raise self._died(f"unreadable reply: {type(exc).__name__}: {exc}") from None
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            raise self._died("malformed reply")
        return reply

    def request(self, req: dict, timeout: float | None = None) -> tuple[object, float]:
        """Send one request; return (value, seconds measured here, send to reply).

        Raises StudentError when the student's code raised, WorkerDied when the worker
        crashed or hung (it is restarted on the next request).
        """
        if self.broken is None and self._proc is None:
            self.start()
        if self.broken is not None:
            raise WorkerDied(self.broken)
        try:
            return self._send_and_receive(req, timeout)
        except WorkerDied as exc:
            if "timed out" in str(exc):
                self.timeouts += 1
                if self.timeouts >= self.max_timeouts:
                    self.broken = f"the submission timed out {self.timeouts} times; later calls are not attempted"
            raise

    def _send_and_receive(self, req: dict, timeout: float | None) -> tuple[object, float]:
        buf = io.BytesIO()
        torch.save(req, buf)
        data = buf.getvalue()
        t0 = time.perf_counter()
        try:
            os.write(self._req_w, _HEADER.pack(len(data)))
            view = memoryview(data)
            while view:
                view = view[os.write(self._req_w, view) :]
        except OSError:
            raise self._died("worker closed its request pipe") from None
        reply = self._receive(deadline=time.monotonic() + (timeout or self.timeout))
        elapsed = time.perf_counter() - t0
        if not reply["ok"]:
            error = reply.get("error")
            raise StudentError(error if type(error) is str else "the student code raised an error")
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
