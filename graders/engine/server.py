"""Grade many submissions of one lesson in one grading process: a forking "zygote".

Why: every ``python -m pytest`` grading run pays 2-6 s of imports (pytest, torch,
transformers, the lesson's hidden tests) before its first test, and the suite and
``batch`` run hundreds of them. The zygote pays them once: it collects the lesson's
hidden tests (so the modules are imported exactly as pytest imports them, asserts
rewritten) and runs no torch op, so it has one thread and forking it is safe. For
each grading it forks a child that calls ``pytest.main`` with exactly the arguments
:func:`graders.engine.run.grade` would give a subprocess, its output in the same log
file and its own environment; the child makes its own fresh sandboxed worker. A child
that crashes or passes its time limit is killed and reported like a dead subprocess,
so only that submission gets a grading problem.

:class:`GradingServer` offers the one ``subprocess.run`` call ``run.grade`` makes;
:func:`grade_many` grades a list of submissions through one server.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

from graders.engine import launcher

_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 64 << 20
START_TIMEOUT = 600.0  # zygote start-up plus one lesson's imports, on a very busy machine
REPLY_MARGIN = 60.0  # the zygote enforces the run limit; the client waits this much longer before giving up on it
# Read when torch, OpenMP, MKL or the HF libraries load: a zygote serves only requests whose values match.
IMPORT_TIME_ENV = (
    *("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "MALLOC_", "LD_"),
    *("CUDA_", "PYTORCH_", "TORCH", "HF_", "TRANSFORMERS_", "TOKENIZERS_"),
)
_DROP_IN_WARMUP = ("--llmg-events",)


class ServerError(Exception):
    """The zygote could not be started or stopped answering."""


# ---------------------------------------------------------------------------- wire (both sides)
def _send(sock: socket.socket, message: dict, fds: Iterable[int] = ()) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    fds = list(fds)
    if fds:
        sent = socket.send_fds(sock, [payload[:1]], fds)
        payload = payload[sent:]
    sock.sendall(payload)


def _recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the descriptors sent with it; (None, []) when the other side closed."""
    fds: list[int] = []
    head = b""
    while len(head) < _HEADER.size:
        chunk, got, _, _ = socket.recv_fds(sock, _HEADER.size - len(head), 4)
        fds += got
        if not chunk:
            return None, fds
        head += chunk
    (size,) = _HEADER.unpack(head)
    if size > _MAX_MESSAGE:
        raise ServerError(f"message of {size} bytes from the grading server")
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


def import_key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The environment variables a zygote's imports have already read: requests must match them."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)))


# ---------------------------------------------------------------------------- client (the CLI process)
class GradingServer:
    """A zygote for the grading runs of this process; one run at a time (use one server per job slot).

    ``run`` takes the arguments ``run.grade`` gives ``subprocess.run`` and answers like it:
    a ``CompletedProcess`` with the child's exit status (negative: killed by that signal),
    or ``subprocess.TimeoutExpired`` when the child passed ``timeout`` and was killed.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._key: tuple | None = None
        self._lock = threading.Lock()
        self.forks = 0  # gradings this server ran (tests check the server was really used)
        self.starts = 0
        self.zygote_threads = 0  # threads in the zygote at its last fork: 1, or forking it was not safe
        self.child_pid: int | None = None  # the grading process now running, if any

    def __enter__(self) -> GradingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, cwd: str, env: dict[str, str]) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from graders.engine.server import serve; serve()", str(theirs.fileno())],
                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], start_new_session=True, preexec_fn=launcher.die_with_parent,
            )  # fmt: skip
        finally:
            theirs.close()
        self._sock, self._key = ours, import_key(env)
        self.starts += 1

    def close(self) -> None:
        """Stop the zygote (a child still running is killed with it: it dies with its parent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def _wait_reply(self, limit: float) -> dict | None:
        """The zygote's next message; None if none came within ``limit`` s; ServerError if it is gone."""
        assert self._sock is not None
        ready, _, _ = select.select([self._sock], [], [], limit)
        if not ready:
            return None
        message, fds = _recv(self._sock)
        for fd in fds:
            os.close(fd)
        if message is None:
            raise ServerError("the grading server closed the connection")
        return message

    def _begin(self, request: dict, fds: list[int], cwd: str, env: dict[str, str]) -> dict:
        """Hand ``request`` to a zygote (started or restarted as needed); its answer once the child is forked."""
        if self._sock is None or self._key != import_key(env) or self._proc is None or self._proc.poll() is not None:
            self._start(cwd, env)
        assert self._sock is not None
        _send(self._sock, request, fds)
        started = self._wait_reply(START_TIMEOUT)
        if not started or "pid" not in started:
            raise ServerError(f"the grading server did not start the run: {started}")
        return started

    def run(
        self, cmd: list[str], *, cwd: Path | str, env: dict[str, str], stdout, stderr, timeout: float
    ) -> subprocess.CompletedProcess:
        """Run ``python -m pytest ARGS`` (``cmd``) in a child of the zygote, as ``subprocess.run`` would."""
        if list(cmd[:3]) != [sys.executable, "-m", "pytest"]:
            raise ValueError(f"the grading server runs only `{sys.executable} -m pytest ...`, not {cmd[:3]}")
        out_fd = stdout.fileno()
        err_fd = out_fd if stderr == subprocess.STDOUT else stderr.fileno()
        request = {"argv": [str(a) for a in cmd[3:]], "cwd": str(cwd), "env": dict(env), "timeout": float(timeout)}
        with self._lock:
            try:
                started = self._begin(request, [out_fd, err_fd], str(cwd), dict(env))
            except (OSError, ValueError, ServerError) as exc:  # nothing ran yet: grade the plain way
                self.close()
                os.write(
                    out_fd,
                    f"grading server unavailable ({type(exc).__name__}: {exc}); running pytest directly\n".encode(),
                )
                return subprocess.run(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, timeout=timeout)
            self.forks += 1
            self.zygote_threads = int(started.get("zygote_threads", 0))
            self.child_pid = int(started["pid"])
            try:
                reply = self._wait_reply(timeout + REPLY_MARGIN)
            except (OSError, ValueError, ServerError) as exc:  # the zygote died mid-run; its child died with it
                self.close()
                os.write(out_fd, f"\ngrading server: {exc}; the grading process was lost\n".encode())
                return subprocess.CompletedProcess(cmd, -int(signal.SIGKILL))
            finally:
                self.child_pid = None
            if reply is None:  # the zygote did not enforce the limit: stop it, the next run starts a new one
                self.close()
                os.write(out_fd, b"\ngrading server: no answer from the grading process; it was stopped\n")
                raise subprocess.TimeoutExpired(cmd, timeout)
        if reply.get("timeout"):
            raise subprocess.TimeoutExpired(cmd, timeout)
        return subprocess.CompletedProcess(cmd, int(reply["returncode"]))


def grade_many(
    lesson, items: Iterable[tuple[Path, Path]], *, server: GradingServer | None = None, **grade_kwargs
) -> list[dict]:
    """Grade each (submission, out_dir) of ``items`` on ``lesson`` in one grading server; the results, in order.

    Results and every results.json are the same as :func:`graders.engine.run.grade` gives
    one by one (``grade_kwargs`` are its keywords). ``server``: an open server to reuse
    (e.g. one per test session); by default one is started and stopped here. A submission
    that cannot be graded (a setup error) does not stop the others: all are graded, then
    the first such error is raised.
    """
    from graders.engine.run import grade

    done: list[dict] = []
    error: Exception | None = None
    with contextlib.nullcontext(server) if server is not None else GradingServer() as srv:
        for submission, out_dir in items:
            try:
                done.append(grade(lesson, Path(submission), Path(out_dir), server=srv, **grade_kwargs))
            except Exception as exc:
                error = error or exc
    if error is not None:
        raise error
    return done


# ---------------------------------------------------------------------------- zygote (its own process)
def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _warm(argv: list[str]) -> None:
    """Import what this lesson's run imports, as pytest imports it, by collecting its tests once.

    Nothing runs (``--collect-only``), no verdict is logged, and CUDA availability is asked
    through NVML so no CUDA context exists in a process that forks.
    """
    import pytest

    args = [a for a in argv if not a.startswith(_DROP_IN_WARMUP)] + ["--collect-only", "-p", "no:terminal"]
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        with contextlib.suppress(BaseException):
            pytest.main(args)
    finally:
        if saved is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


def _child(request: dict, fds: list[int], sock: socket.socket) -> None:
    """In the forked child: become the grading process ``python -m pytest ARGS`` would be."""
    code = 1
    try:
        sock.close()
        os.setpgid(0, 0)
        launcher.die_with_parent()  # dies with the zygote
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in {null, *fds} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.argv[0], *request["argv"]]
        import pytest

        code = int(pytest.main(request["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float, sock: socket.socket) -> dict:
    """Wait for the child; kill it (its process group) when it passes ``timeout`` or the client goes away."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([pidfd, sock], [], [], max(0.0, left))
            if pidfd in ready:
                _, status = os.waitpid(pid, 0)
                return {"returncode": os.waitstatus_to_exitcode(status)}
            if sock in ready or left <= 0:  # the client closed (or wrote out of turn) / time is up
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                if sock in ready:
                    raise SystemExit(0)
                return {"timeout": True}
    finally:
        os.close(pidfd)


def serve(fd: int | None = None) -> None:
    """The zygote's loop: one request at a time, one forked child per request."""
    sock = socket.socket(fileno=int(sys.argv[1]) if fd is None else fd)
    sys.path[0] = os.getcwd()  # as `python -m pytest` has it
    warmed: set[str] = set()
    while True:
        request, fds = _recv(sock)
        if request is None:
            return
        argv = request["argv"]
        if argv and argv[0] not in warmed:
            _warm(argv)
            warmed.add(argv[0])
        sys.stdout.flush()
        sys.stderr.flush()
        threads = _thread_count()
        pid = os.fork()
        if pid == 0:
            _child(request, fds, sock)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        for f in set(fds):
            os.close(f)
        _send(sock, {"pid": pid, "zygote_threads": threads})
        _send(sock, _wait(pid, request["timeout"], sock))


if __name__ == "__main__":
    serve()
