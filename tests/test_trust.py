"""Trust properties of the sandbox, each kept as the hostile submission that would break it.

Worker-level tests (``Worker`` driven directly) run under every launcher this machine has
(bubblewrap and the unshare fallback, under root); a few full gradings check what only a
grading shows (a second checkout on disk, a killed grading process).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from graders.engine import cgroup, launcher, lessons, runroot, sandbox
from graders.engine.run import grade
from graders.engine.sandbox import SandboxUnavailable, Worker, WorkerDied
from tests.conftest import REPO, make_submission

ROOT = os.geteuid() == 0
REFERENCE = REPO / "solutions_private" / "lesson_03" / "attention.py"
SHM_KEY = 0x11AA22BB

HOSTILE = r'''
import ctypes, os, signal, threading, time

libc = ctypes.CDLL(None, use_errno=True)

def info():
    return {"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(), "home": os.environ["HOME"],
            "root": sorted(os.listdir("/"))}

def walk_for(name):
    """Every file called ``name`` below /, as a thief looking for a second checkout would."""
    found = []
    for dirpath, dirnames, filenames in os.walk("/"):
        if dirpath in ("/proc", "/sys", "/dev"):
            dirnames[:] = []
            continue
        found += [os.path.join(dirpath, f) for f in filenames if f == name and "solutions_private" in dirpath]
    return found

def readable(paths):
    out = {}
    for p in paths:
        try:
            with open(p, "rb") as f:
                out[p] = bool(f.read(1))
        except OSError:
            out[p] = False
    return out

def listable(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return type(exc).__name__

def writable(path):
    try:
        with open(path, "w") as f:
            f.write("planted")
        return True
    except OSError:
        return False

def signal_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
        return "sent"
    except OSError as exc:
        return type(exc).__name__

def fill(path):
    """Write 1 MiB chunks into ``path`` until the disk is full; return MiB written."""
    chunk, n = b"x" * (1 << 20), 0
    try:
        with open(path, "wb") as f:
            while n < 4096:
                f.write(chunk)
                f.flush()
                n += 1
    except OSError:
        pass
    return n

def write_mib(path, mib):
    with open(path, "wb") as f:
        f.write(b"y" * (mib << 20))
    os.unlink(path)
    return mib

def shm_segment(key, mib):
    """A System V shared memory segment, left behind on purpose."""
    shmid = libc.shmget(key, mib << 20, 0o1000 | 0o600)  # IPC_CREAT
    return shmid

def shm_keys():
    with open("/proc/sysvipc/shm") as f:
        return [int(line.split()[0]) for line in f.readlines()[1:]]

def thread_bomb():
    """Start sleeping threads until no more can be made; keep them."""
    global _held
    threading.stack_size(64 << 10)  # small stacks: the process limit, not memory, is what runs out
    _held, stop = [], threading.Event()
    try:
        while len(_held) < 100000:
            t = threading.Thread(target=stop.wait, daemon=True)
            t.start()
            _held.append(t)
    except (RuntimeError, MemoryError):
        pass
    return len(_held)

def threads(n):
    done = threading.Event()
    ts = [threading.Thread(target=done.wait, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    done.set()
    for t in ts:
        t.join()
    return n

def escape(marker):
    """setsid, double fork, clear the parent-death signal, rename: a process that means to outlive the grading.

    The worker itself also clears its parent-death signal and leaves its session, so killing
    the launcher's process group and the launcher does not end it either.
    """
    libc.prctl(1, 0)
    try:
        os.setsid()
    except OSError:
        pass
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            libc.prctl(1, 0)  # PR_SET_PDEATHSIG: none
            libc.prctl(15, marker.encode())  # PR_SET_NAME
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            while True:
                time.sleep(0.05)
        os._exit(0)
    time.sleep(0.2)
    return True
'''


def _processes_named(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == marker[:15]:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _launchers() -> list[str]:
    if not ROOT:
        return ["default"]
    found = []
    if launcher._bwrap_works(launcher._uid_range()[1]):
        found.append("bwrap")
    if launcher._unshare_works():
        found.append("unshare")
    return found


@pytest.fixture(params=_launchers())
def use_launcher(request, monkeypatch):
    """Run the test under one launcher (the unshare path by making bwrap unavailable)."""
    if request.param == "unshare":
        monkeypatch.setenv(launcher.DISABLE_ENV, "bwrap")
    launcher._bwrap_works.cache_clear()
    launcher._unshare_works.cache_clear()
    yield request.param
    launcher._bwrap_works.cache_clear()
    launcher._unshare_works.cache_clear()


@pytest.fixture
def lesson_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "lesson_99"
    folder.mkdir()
    (folder / "hostile.py").write_text(HOSTILE)
    return folder


def _worker(lesson_dir: Path, **kwargs) -> Worker:
    return Worker(lesson_dir, ("hostile",), timeout=60, **kwargs)


@pytest.fixture
def decoys():
    """Second copies of the reference outside the repository: /srv (a second checkout) and /tmp."""
    tag = secrets.token_hex(4)
    made = []
    for base in (Path("/srv"), Path(tempfile.gettempdir())):
        top = base / f"llmg-decoy-{tag}"
        target = top / "course" / "solutions_private" / "lesson_03" / "attention.py"
        try:
            target.parent.mkdir(parents=True)
        except OSError:
            continue
        shutil.copyfile(REFERENCE, target)
        for path in (top, *target.parents):
            if path.is_relative_to(top):
                os.chmod(path, 0o755)
        os.chmod(target, 0o644)
        made.append((top, target))
    yield [t for _, t in made]
    for top, _ in made:
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------- the view
def test_second_checkout_and_host_folders_are_invisible(use_launcher, lesson_dir: Path, decoys):
    """A world-readable second checkout (/srv, /tmp), the repository, /root and /home do not exist for the worker."""
    with _worker(lesson_dir) as w:
        found = w.call("hostile", "walk_for", ("attention.py",))
        seen = w.call("hostile", "readable", ([str(p) for p in decoys] + [str(REFERENCE)],))
        me = w.call("hostile", "info")
        repo_view = w.call("hostile", "listable", (str(REPO),))
        p = w.protections
        own_folder_writable = w.call("hostile", "writable", (os.path.join(me["cwd"], "planted.py"),))
        home_writable = w.call("hostile", "writable", (os.path.join(me["home"], "notes"),))
    if p.filesystem != "allow-list":
        pytest.skip(f"no allow-list on this machine: {p.summary()}")
    assert found == [], f"the worker found reference copies: {found}"
    assert not any(seen.values()), seen
    assert not {"root", "home", "srv", "mnt", "opt"} & set(me["root"]), me["root"]
    venv = Path(sys.prefix)  # the only part of the checkout it sees, read-only, when the venv lives there
    assert repo_view == ([venv.name] if venv.parent == REPO else "FileNotFoundError"), repo_view
    assert not own_folder_writable, "the worker could write into its own (read-only) folder"
    assert home_writable


def test_grading_a_thief_of_a_second_checkout_scores_zero(grade_lesson, tmp_path: Path, decoys):
    """The headline hole: a submission that walks the disk for solutions_private and runs it scored 28/28."""
    thief = (
        "import os\n"
        "for d, sub, files in os.walk('/'):\n"
        "    if d.startswith(('/proc', '/sys', '/dev')):\n"
        "        sub[:] = []\n"
        "        continue\n"
        "    if d.endswith('solutions_private/lesson_03') and 'attention.py' in files:\n"
        "        exec(open(os.path.join(d, 'attention.py')).read())\n"
        "        break\n"
    )
    res = grade_lesson("03", make_submission(tmp_path / "sub", "03", {"attention.py": thief}))
    if "instructor tree hidden on" not in res["output"]:
        pytest.skip("no allow-list on this machine")
    assert res["score"] == 0, {t["name"]: t["output"] for t in res["tests"] if t["score"]}


# ---------------------------------------------------------------------------- workers apart
def test_concurrent_workers_cannot_read_write_or_signal_each_other(use_launcher, lesson_dir: Path):
    if not ROOT:
        pytest.skip("per-worker uids need a root grader")
    with _worker(lesson_dir) as a, _worker(lesson_dir) as b:
        ia, ib = a.call("hostile", "info"), b.call("hostile", "info")
        assert ia["uid"] != ib["uid"], "two workers share a uid"
        assert a.call("hostile", "writable", ("/tmp/a-secret",))
        assert b.call("hostile", "listable", (ia["cwd"],)) in ("FileNotFoundError", "PermissionError")
        assert b.call("hostile", "readable", ([os.path.join(ia["cwd"], "hostile.py"), "/tmp/a-secret"],)) == {
            os.path.join(ia["cwd"], "hostile.py"): False, "/tmp/a-secret": False}
        assert not b.call("hostile", "writable", (os.path.join(ia["home"], "planted"),))
        assert b.call("hostile", "signal_pid", (a._proc.pid,)) in ("ProcessLookupError", "PermissionError")
        # B's view of the run folder holds at most its own folder: no sight of A's.
        view = b.call("hostile", "listable", (str(runroot.current()),))
        assert view in ("FileNotFoundError", "PermissionError") or Path(ia["cwd"]).name not in view, view
        assert a.call("hostile", "info")["uid"] == ia["uid"], "worker A did not survive B's attempts"


# ---------------------------------------------------------------------------- dies with the grading
def test_escaped_process_is_dead_after_close(use_launcher, lesson_dir: Path):
    marker = f"esc{secrets.token_hex(5)}"
    w = _worker(lesson_dir)
    try:
        w.call("hostile", "info")
        if not w.protections.killed_with_grading:
            pytest.skip(f"this machine cannot promise it: {w.protections.summary()}")
        assert w.call("hostile", "escape", (marker,))
        deadline = time.monotonic() + 5
        while not _processes_named(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_named(marker), "the escape did not happen (test broken)"
        name = w._cgroup.name if w._cgroup is not None else None
    finally:
        w.close()
    time.sleep(0.2)
    assert _processes_named(marker) == [], "a setsid + double-forked process outlived close()"
    if name is not None:
        assert not any(Path(d).exists() for d in (r / name for r in cgroup._roots().values()))


def _grading_children(marker_arg: str) -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if stat[1] == me and marker_arg.encode() in cmd:
                found.append(int(entry))
    return found


def test_sigkilled_grading_leaves_no_process_and_nothing_on_disk(tmp_path: Path):
    """The grading process is SIGKILLed mid-run: the escaped worker process and the run's folders are gone."""
    if not ROOT and not launcher._bwrap_works(None):
        pytest.skip("a plain worker (no root, no bubblewrap) cannot promise this")
    marker = f"esc{secrets.token_hex(5)}"
    source = HOSTILE + f"\nescape({marker!r})\ntime.sleep(120)\n"
    submission = make_submission(tmp_path / "sub", "03", {"attention.py": source})
    out = tmp_path / "out"
    before = set(os.listdir(tempfile.gettempdir()))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(grade(lessons.load("03"), submission, out, call_timeout=200)))
    thread.start()
    deadline = time.monotonic() + 120
    while not _processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_named(marker), "the hostile submission never started"
    children = _grading_children("--llmg-events")
    assert children, "no grading process found"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    time.sleep(0.3)
    assert _processes_named(marker) == [], "an escaped worker process outlived its grading"
    assert result and result["score"] == 0
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith(f"llmg-root-{os.getpid()}-")}
    assert not left, f"the run left {left} in /tmp"


def test_stale_run_folder_of_a_killed_cli_is_removed_by_the_next_run(tmp_path: Path):
    """A CLI killed with SIGKILL cannot clean up; the next run removes its folder."""
    code = "import os, time; from graders.engine import runroot\nwith runroot.run_root() as r:\n    print(r, flush=True)\n    time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    stale = Path(proc.stdout.readline().strip())
    assert stale.is_dir()
    proc.kill()
    proc.wait()
    assert stale.is_dir(), "SIGKILL gave it no chance to clean up (test premise)"
    assert stale in runroot.clean_stale()
    assert not stale.exists()


# ---------------------------------------------------------------------------- shared resources
def test_filling_tmp_and_shm_leaving_ipc_and_thread_bombs_affect_no_other_worker(use_launcher, lesson_dir: Path):
    with _worker(lesson_dir) as a, _worker(lesson_dir) as b:
        a.call("hostile", "info")
        if not a.protections.private_tmp:
            pytest.skip(f"no private /tmp here: {a.protections.summary()}")
        assert a.call("hostile", "fill", ("/tmp/fill",)) < 4096, "/tmp is not size-capped"
        assert a.call("hostile", "fill", ("/dev/shm/fill",)) < 4096, "/dev/shm is not size-capped"
        assert a.call("hostile", "shm_segment", (SHM_KEY, 64)) >= 0
        assert SHM_KEY in a.call("hostile", "shm_keys")
        bombed = a.call("hostile", "thread_bomb")
        assert bombed < 100000
        # The concurrent worker: room in /tmp and /dev/shm, threads, and no sight of A's segment.
        assert b.call("hostile", "write_mib", ("/tmp/room", 64)) == 64
        assert b.call("hostile", "write_mib", ("/dev/shm/room", 64)) == 64
        assert b.call("hostile", "threads", (200,)) == 200
        assert SHM_KEY not in b.call("hostile", "shm_keys")
        assert SHM_KEY not in _host_shm_keys(), "the segment is visible on the host"
    with _worker(lesson_dir) as c:  # the next worker
        assert c.call("hostile", "write_mib", ("/tmp/room", 64)) == 64
        assert c.call("hostile", "threads", (200,)) == 200
        assert SHM_KEY not in c.call("hostile", "shm_keys")
    assert SHM_KEY not in _host_shm_keys(), "a System V segment was left behind"


def _host_shm_keys() -> list[int]:
    with open("/proc/sysvipc/shm") as f:
        return [int(line.split()[0]) for line in f.readlines()[1:]]


# ---------------------------------------------------------------------------- fail closed
@pytest.fixture
def no_sandbox(monkeypatch):
    monkeypatch.setenv(launcher.DISABLE_ENV, "bwrap,unshare")
    monkeypatch.delenv(launcher.ALLOW_ENV, raising=False)
    launcher._bwrap_works.cache_clear()
    launcher._unshare_works.cache_clear()
    yield
    launcher._bwrap_works.cache_clear()
    launcher._unshare_works.cache_clear()


def test_root_grader_without_a_sandbox_refuses(no_sandbox, lesson_dir: Path, tmp_path: Path):
    if not ROOT:
        pytest.skip("only a root grader must refuse")
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap.*--allow-unsandboxed"):
        _worker(lesson_dir).call("hostile", "info")
    submission = make_submission(tmp_path / "sub", "03", {"attention.py": REFERENCE.read_text()})
    with pytest.raises(SandboxUnavailable):
        grade(lessons.load("03"), submission, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()


def test_allow_unsandboxed_still_never_runs_student_code_as_root(no_sandbox, lesson_dir: Path):
    if not ROOT:
        pytest.skip("root grader only")
    with _worker(lesson_dir, allow_unsandboxed=True) as w:
        me = w.call("hostile", "info")
        p = w.protections
    assert me["uid"] != 0 and p.per_worker_uid and p.weakened and p.launcher == "none"
    assert "WEAKENED" in p.summary()


def test_a_failed_launch_is_read_from_the_exit_status(use_launcher, lesson_dir: Path, monkeypatch):
    """A launcher that dies before the worker is ready is a setup error under root, never a plain worker."""
    if not ROOT:
        pytest.skip("root grader only")
    launcher.choose()  # probe with the real view first, then break the view for the launch itself
    binds = launcher.system_binds()
    monkeypatch.setattr(launcher, "system_binds", lambda: (binds[0] + ["/nonexistent-llmg-path"], binds[1]))
    expected = "exit status 97" if use_launcher == "unshare" else "exit status 1"  # launch.py's LAUNCH_FAILED; bwrap's
    with pytest.raises(SandboxUnavailable, match=f"launch failed \\({expected}\\)"):
        _worker(lesson_dir).call("hostile", "info")


def test_a_timeout_is_typed_and_says_too_slow(lesson_dir: Path):
    (lesson_dir / "hostile.py").write_text(HOSTILE + "\ndef spin():\n    while True:\n        pass\n")
    with Worker(lesson_dir, ("hostile",), timeout=2) as w:
        with pytest.raises(WorkerDied, match="too slow: over the 2 s budget") as died:
            w.call("hostile", "spin")
    assert died.value.kind == "timeout" and died.value.seconds == 2 and w.deaths == {"timeout": 1}


# ---------------------------------------------------------------------------- lab files (Worker.sources)
def test_sources_copy_a_lab_file_from_another_folder_beside_the_modules(tmp_path: Path):
    """labs/lesson_NN/lab_experiment.py reaches the worker as lab_experiment.py and imports the graded module."""
    graded = tmp_path / "exercises" / "lesson_99"
    lab = tmp_path / "labs" / "lesson_99"
    graded.mkdir(parents=True)
    lab.mkdir(parents=True)
    (graded / "mod.py").write_text("def answer():\n    return 41\n")
    (lab / "lab_experiment.py").write_text("import mod\n\ndef main():\n    return mod.answer() + 1\n")
    with Worker(graded, ("mod",), timeout=60, sources={"lab_experiment": lab / "lab_experiment.py"}) as w:
        assert w.call("lab_experiment", "main") == 42
        assert w.broken is None


def test_sources_refuse_links_and_missing_files(tmp_path: Path):
    graded = tmp_path / "lesson_99"
    graded.mkdir()
    (graded / "mod.py").write_text("X = 1\n")
    (tmp_path / "lab.py").symlink_to(REFERENCE)  # a link could point into the instructor's tree
    for source, why in ((tmp_path / "lab.py", "no regular file"), (tmp_path / "absent.py", "no regular file")):
        with Worker(graded, ("mod",), timeout=60, sources={"lab_experiment": source}) as w:
            with pytest.raises(WorkerDied, match=why) as died:
                w.call("lab_experiment", "main")
        assert died.value.kind == "broken" and source.name in str(died.value)


def test_a_provided_stem_in_sources_keeps_the_reference(tmp_path: Path):
    graded = tmp_path / "lesson_99"
    graded.mkdir()
    (tmp_path / "theirs.py").write_text("WHO = 'student'\ndef who():\n    return WHO\n")
    (tmp_path / "ours.py").write_text("WHO = 'reference'\ndef who():\n    return WHO\n")
    with Worker(graded, ("blocks",), timeout=60, provided={"blocks": tmp_path / "ours.py"},
                sources={"blocks": tmp_path / "theirs.py"}) as w:
        assert w.call("blocks", "who") == "reference"


# ---------------------------------------------------------------------------- notebook kernels
def test_notebook_kernel_is_sandboxed_and_dies_with_the_grading(tmp_path: Path):
    """A kernel that escapes (setsid, double fork) and plants a start-up file is gone after autograde, with its folder."""
    import nbformat

    from graders.engine import labs

    if not ROOT:
        pytest.skip("the kernel sandbox needs a root grader")
    marker = f"esc{secrets.token_hex(5)}"
    source = REPO / "solutions_private" / "lesson_03"
    name = "01_attention_playground.ipynb"
    nb = nbformat.read(source / name, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "attention_entropy")
    cell.source = (
        HOSTILE + f"\nescape({marker!r})\n"
        "startup = os.path.expanduser('~/.ipython/profile_default/startup')\n"
        "os.makedirs(startup, exist_ok=True)\n"
        "open(os.path.join(startup, '00-evil.py'), 'w').write('raise SystemExit')\n"
        "assert 60000 <= os.getuid() < 65534 and os.getuid() != 65534\n"
        f"assert not os.path.exists({str(REPO / 'solutions_private')!r})\n"
        "def attention_entropy(weights):\n"
        "    return -(weights * weights.clamp_min(1e-30).log()).sum(dim=-1)\n"
    )
    folder = tmp_path / "sub" / "lesson_03"
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / name)
    for stem in ("attention", "lab_experiment"):
        shutil.copy(source / f"{stem}.py", folder / f"{stem}.py")
    before = set(os.listdir(tempfile.gettempdir()))
    (grade,), note = labs.autograde(REPO, "03", folder, ("attention", "lab_experiment"), tmp_path / "out")
    cells = {c["cell"]: c["score"] for c in grade.cells}
    assert cells["test_attention_entropy"] == 2.0, grade.cells  # its own uid, no instructor tree
    assert "own uid" in note, note
    time.sleep(0.3)
    assert _processes_named(marker) == [], "a process started by the kernel outlived the autograde"
    new = set(os.listdir(tempfile.gettempdir())) - before
    assert not [n for n in new if n.startswith("llmg-kernel-") or n.startswith(f"llmg-root-{os.getpid()}-")], new
    # The next kernel starts clean: the planted start-up file lived in the first kernel's private home.
    (again,), _ = labs.autograde(REPO, "03", lesson_copy_reference(tmp_path / "sub2"), ("attention", "lab_experiment"),
                                 tmp_path / "out2")
    assert again.score == again.max_score == 4.0


def lesson_copy_reference(root: Path) -> Path:
    source = REPO / "solutions_private" / "lesson_03"
    folder = root / "lesson_03"
    folder.mkdir(parents=True)
    for name in ("01_attention_playground.ipynb", "attention.py", "lab_experiment.py"):
        shutil.copy(source / name, folder / name)
    return folder


def _children(pid: int, marker: str) -> list[int]:
    """Live children of ``pid`` whose command line contains ``marker`` (the sandbox's own /proc walk)."""
    found = []
    for child in sandbox._proc_children().get(pid, []):
        try:
            if marker.encode() in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:  # gone since the walk
            continue
    return found


def test_a_killed_cli_leaves_no_grading_process(tmp_path: Path):
    """SIGKILL of `llm-grade run` ends its grading process (pytest) too: it has the CLI as parent-death
    signal (and would also stop once its run folder, owned by the dead CLI, is cleaned)."""
    hang = "import time\nwhile True:\n    time.sleep(1)\n"  # every call times out: a long grading
    sub = make_submission(tmp_path / "sub", "03", {"attention.py": "def causal_mask(n):\n" + "    " + hang.replace("\n", "\n    ")})
    cli = subprocess.Popen(
        [sys.executable, "-m", "graders.engine.cli", "run", "--lesson", "03", "--submission", str(sub),
         "--out", str(tmp_path / "out"), "--call-timeout", "30"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (grading := _children(cli.pid, "pytest")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert grading, "the CLI never started its grading process"
        time.sleep(3)  # the grading process is running hidden tests against the hanging worker
    finally:
        cli.kill()
        cli.wait()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() for pid in grading) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in grading if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert not alive, f"grading process {alive} outlived the killed CLI"
