"""``llm-grade``: grade submissions (one or a class), keep exercises/ in sync, export to Gradescope, release.

Each command imports what it needs when it runs (torch, nbgrader), so ``llm-grade --help`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from graders.engine import lessons
from graders.engine.launcher import SandboxUnavailable
from graders.engine.lessons import REPO_ROOT  # not sandbox: it imports torch


def _allow_unsandboxed(args: argparse.Namespace) -> None:
    """--allow-unsandboxed reaches every worker this command starts (grading process, rubric rerun, kernels)."""
    import os

    from graders.engine import launcher

    os.environ[launcher.ALLOW_ENV] = "1" if args.allow_unsandboxed else "0"


def _cmd_run(args: argparse.Namespace) -> int:
    from graders.engine import results
    from graders.engine.run import grade

    _allow_unsandboxed(args)
    out = Path(args.out)
    if args.lesson != "all":
        res = grade(lessons.load(args.lesson), Path(args.submission), out, keyword=args.k, call_timeout=args.call_timeout)
        print(results.table(res))
        print(f"results: {out / 'results.json'}")
        return 1 if results.problems(res) else 0  # a grading problem: the score is not final
    # Every lesson with graders, each into out/lesson_NN/; a lesson the submission lacks is reported.
    graded = problems = 0
    for number in lessons.available():
        lesson = lessons.load(number)
        try:
            res = grade(lesson, Path(args.submission), out / lesson.dirname, keyword=args.k, call_timeout=args.call_timeout)
        except lessons.GradingSetupError as exc:
            print(f"lesson {number}: not graded: {exc}\n")
            continue
        graded += 1
        problems += bool(results.problems(res))
        print(results.table(res))
        print(f"results: {out / lesson.dirname / 'results.json'}\n")
    if not graded:
        raise lessons.GradingSetupError(f"submission {args.submission} has no lesson_NN/ folder for any graded lesson")
    return 1 if problems else 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from graders.engine import sync

    root = Path(args.root)
    only = lessons.normalise(args.lesson) if args.lesson else None
    if args.check:
        drifts = sync.check(root, only)
        for d in drifts:
            print(d.diff or f"{d.path}: differs")
        if drifts:
            print(f"{len(drifts)} stub file(s) drifted from solutions_private/: run `llm-grade sync`", file=sys.stderr)
            return 1
        print("exercises/ is in sync with solutions_private/")
        return 0
    written = sync.write(root, only)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} file(s) written" if written else "exercises/ already in sync")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from graders.engine import batch

    if args.allow_unsandboxed:  # else the environment decides, as before (LLMG_ALLOW_UNSANDBOXED)
        _allow_unsandboxed(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    lesson = lessons.load(args.lesson)
    slurm_options = None
    if args.executor == "slurm":
        given = {"partition": args.partition, "gpus_per_job": args.gpus_per_job, "max_parallel": args.max_parallel,
                 "cpus_per_job": args.cpus_per_job, "time_limit_min": args.time_limit}  # fmt: skip
        slurm_options = {k: v for k, v in given.items() if v is not None}
    elif any(v is not None for v in (args.partition, args.gpus_per_job, args.max_parallel, args.cpus_per_job, args.time_limit)):
        raise lessons.GradingSetupError("--partition, --gpus-per-job, --max-parallel, --cpus-per-job and --time-limit "
                                        "need --executor slurm")  # fmt: skip
    try:
        rows = batch.run_batch(
            lesson, Path(args.submissions), out, jobs=args.jobs, force=args.force, call_timeout=args.call_timeout,
            rubric=args.rubric, executor=args.executor, slurm_options=slurm_options,
        )
    except KeyboardInterrupt:
        cancelled = " (the Slurm job array was cancelled)" if args.executor == "slurm" else ""
        print(f"llm-grade: interrupted{cancelled}; a re-run grades only the students still missing", file=sys.stderr)
        return 130
    graded = [r for r in rows if r.status == "graded"]
    reused = sum(r.skipped for r in rows)
    print(f"{len(rows)} student(s): {len(graded)} graded ({reused} from earlier runs), {len(rows) - len(graded)} not graded")
    for r in rows:
        if r.status != "graded":
            print(f"  {r.status}: {r.student}: {r.reason}")
        if r.rubric_reason:
            print(f"  {r.student}: {r.rubric_reason}")
    print(f"grades: {out / 'grades.csv'}\npass rates: {out / 'pass_rates.csv'}\nwall time: {time.perf_counter() - t0:.1f} s")
    if args.rubric:
        _merge_class(lesson.number, out, [r.student for r in rows if r.rubric is not None])
    troubled = [r.student for r in rows if r.problems]
    if troubled:  # the grader failed for these students: their scores are not final
        print(f"llm-grade: {len(troubled)} student(s) with grading problems: {', '.join(troubled[:10])}", file=sys.stderr)
        return 1
    return 0


def _merge_class(lesson: str, out: Path, names: list[str]) -> None:
    from graders.engine import classbook

    t0 = time.perf_counter()
    merge = classbook.merge(lesson, out.resolve(), names)
    fresh = " (made afresh: the notebooks changed; grades given in the earlier class course are gone)" if merge.replaced else ""
    print(f"class course: {merge.course}{fresh}: {len(merge.merged)} merged, {len(merge.kept)} unchanged, "
          f"{len(merge.skipped)} not in it ({time.perf_counter() - t0:.1f} s)")
    for name, why in merge.skipped.items():
        print(f"  not in the class course: {name}: {why}")
    print(f"grade the written answers once for the class in formgrader:\n  {classbook.formgrader_command(merge.course)}")
    print(f"then merge the manual grades: llm-grade gradebook --lesson {lesson} --out {out}")


def _cmd_gradebook(args: argparse.Namespace) -> int:
    from graders.engine import batch

    rows, pending = batch.apply_gradebook(lessons.normalise(args.lesson), Path(args.out))
    scored = [r for r in rows if r.rubric is not None]
    print(f"{len(rows)} student(s): {len(scored) - len(pending)} with final rubric scores, {len(pending)} manual pending")
    for name, why in pending.items():
        print(f"  manual pending: {name}: {why}")
    for r in rows:
        if r.rubric is None:
            print(f"  no rubric: {r.student}: {r.rubric_reason or r.reason or 'not scored'}")
    print(f"grades: {Path(args.out) / 'grades.csv'}")
    return 0


def _cmd_gradescope(args: argparse.Namespace) -> int:
    from graders.engine import gradescope

    names = gradescope.build(lessons.load(args.lesson), Path(args.out))
    print(f"wrote {args.out} ({len(names)} files): upload it as the Gradescope autograder")
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    from graders.engine import release

    entries = release.build(Path(args.out), force=args.force)
    print(f"wrote the student release to {args.out}: {', '.join(e.name for e in entries)}")
    return 0


def _cmd_rubric(args: argparse.Namespace) -> int:
    from graders.engine import rubric

    _allow_unsandboxed(args)
    report = rubric.score(lessons.load(args.lesson), Path(args.submission), Path(args.out))
    print(rubric.render(report))
    print(f"rubric: {Path(args.out) / 'rubric.json'}")
    return 0


UNSANDBOXED_HELP = "as root without bubblewrap or unshare: grade anyway, student code as a per-worker uid (never root)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-grade", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="grade one lesson of one submission")
    run.add_argument("--lesson", required=True, help="lesson number, e.g. 03, or `all` (results in OUT/lesson_NN/)")
    run.add_argument("--submission", required=True, help="a student repo root (with exercises/) or a folder of lesson_NN/")
    run.add_argument("--out", required=True, help="folder for results.json (with --lesson all: OUT/lesson_NN/results.json)")
    run.add_argument("--call-timeout", type=float, default=60.0, help="seconds allowed for one call into student code")
    run.add_argument("-k", help="only hidden tests matching this pytest -k expression (for debugging graders)")
    run.add_argument("--allow-unsandboxed", action="store_true", help=UNSANDBOXED_HELP)
    run.set_defaults(func=_cmd_run)
    rub = sub.add_parser("rubric", help="score the five-criteria rubric (hidden tests, notebooks, runs, rerun, notes)")
    rub.add_argument("--lesson", required=True, help="lesson number, e.g. 03")
    rub.add_argument("--submission", required=True, help="a student repo root (with exercises/, runs/, labs/)")
    rub.add_argument("--out", required=True, help="folder for rubric.json, rubric.md (and results.json if absent)")
    rub.add_argument("--allow-unsandboxed", action="store_true", help=UNSANDBOXED_HELP)
    rub.set_defaults(func=_cmd_rubric)
    syn = sub.add_parser("sync", help="write exercises/ stubs from solutions_private/")
    syn.add_argument("--check", action="store_true", help="exit 1 and show the diff if exercises/ drifted")
    syn.add_argument("--root", default=str(REPO_ROOT), help="repository root (default: this checkout)")
    syn.add_argument("--lesson", help="only this lesson (e.g. 03)")
    syn.set_defaults(func=_cmd_sync)
    bat = sub.add_parser("batch", help="grade one lesson for every student folder; write grades.csv and pass_rates.csv")
    bat.add_argument("--lesson", required=True, help="lesson number, e.g. 03")
    bat.add_argument("--submissions", required=True, help="a folder with one subfolder per student (named as the student)")
    bat.add_argument("--out", required=True, help="folder for OUT/<student>/results.json, grades.csv, pass_rates.csv")
    bat.add_argument("--jobs", type=int, default=1, help="students graded in parallel (each has its own grader and worker)")
    bat.add_argument("--force", action="store_true", help="regrade students that already have results.json")
    bat.add_argument("--call-timeout", type=float, default=60.0, help="seconds allowed for one call into student code")
    bat.add_argument("--rubric", action="store_true",
                     help="also score each student's rubric and merge their notebooks into one class course OUT/nbgrader")
    bat.add_argument("--allow-unsandboxed", action="store_true", help=UNSANDBOXED_HELP)
    bat.add_argument("--executor", choices=("local", "slurm"), default="local",
                     help="local: --jobs threads on this machine (default); slurm: one job per student in a job array")
    bat.add_argument("--partition", help="(slurm) the partition to submit to (default: the cluster's default)")
    bat.add_argument("--gpus-per-job", type=int, help="(slurm) GPUs per job; 0 (default): CPU jobs, gpu tests skipped")
    bat.add_argument("--max-parallel", type=int, help="(slurm) at most K jobs of the array at once (default: no limit)")
    bat.add_argument("--cpus-per-job", type=int, help="(slurm) CPUs per job (default 1)")
    bat.add_argument("--time-limit", type=int, help="(slurm) minutes per job (default 40); one time-out is requeued")
    bat.set_defaults(func=_cmd_batch)
    gbk = sub.add_parser("gradebook", help="merge the manual grades of the class course (formgrader) into rubrics and grades.csv")
    gbk.add_argument("--lesson", required=True, help="lesson number, e.g. 03")
    gbk.add_argument("--out", required=True, help="the OUT of `llm-grade batch --rubric`")
    gbk.set_defaults(func=_cmd_gradebook)
    gsc = sub.add_parser("gradescope", help="build the Gradescope autograder zip for one lesson")
    gsc.add_argument("--lesson", required=True, help="lesson number, e.g. 03")
    gsc.add_argument("--out", required=True, help="path of the zip to write, e.g. autograder.zip")
    gsc.set_defaults(func=_cmd_gradescope)
    rel = sub.add_parser("release", help="write the student repository (no solutions, no hidden tests)")
    rel.add_argument("--out", required=True, help="folder to write; must be empty unless --force")
    rel.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing the release's files")
    rel.set_defaults(func=_cmd_release)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if not isinstance(exc, _setup_errors()):
            raise
        print(f"llm-grade: error: {exc}", file=sys.stderr)
        return 2


# One-line setup errors, by module: a command imports its module only when it runs (a fast --help).
SETUP_ERRORS = {"sync": "SyncError", "gradescope": "ExportError", "release": "ReleaseError"}


def _setup_errors() -> tuple[type[Exception], ...]:
    loaded = [getattr(sys.modules[f"graders.engine.{m}"], name) for m, name in SETUP_ERRORS.items()
              if f"graders.engine.{m}" in sys.modules]  # fmt: skip
    return (lessons.GradingSetupError, SandboxUnavailable, *loaded)


if __name__ == "__main__":
    sys.exit(main())
