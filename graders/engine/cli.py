"""``llm-grade``: grade submissions and keep exercises/ in sync with solutions_private/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graders.engine import lessons, sync
from graders.engine.sandbox import REPO_ROOT


def _cmd_run(args: argparse.Namespace) -> int:
    from graders.engine import results
    from graders.engine.run import grade

    out = Path(args.out)
    if args.lesson != "all":
        res = grade(lessons.load(args.lesson), Path(args.submission), out, keyword=args.k, call_timeout=args.call_timeout)
        print(results.table(res))
        print(f"results: {out / 'results.json'}")
        return 0
    # Every lesson with graders, each into out/lesson_NN/; a lesson the submission lacks is reported.
    graded = 0
    for number in lessons.available():
        lesson = lessons.load(number)
        try:
            res = grade(lesson, Path(args.submission), out / lesson.dirname, keyword=args.k, call_timeout=args.call_timeout)
        except lessons.GradingSetupError as exc:
            print(f"lesson {number}: not graded: {exc}\n")
            continue
        graded += 1
        print(results.table(res))
        print(f"results: {out / lesson.dirname / 'results.json'}\n")
    if not graded:
        raise lessons.GradingSetupError(f"submission {args.submission} has no lesson_NN/ folder for any graded lesson")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.check:
        drifts = sync.check(root)
        for d in drifts:
            print(d.diff or f"{d.path}: differs")
        if drifts:
            print(f"{len(drifts)} stub file(s) drifted from solutions_private/: run `llm-grade sync`", file=sys.stderr)
            return 1
        print("exercises/ is in sync with solutions_private/")
        return 0
    written = sync.write(root)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} file(s) written" if written else "exercises/ already in sync")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-grade", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="grade one lesson of one submission")
    run.add_argument("--lesson", required=True, help="lesson number, e.g. 03, or `all` (results in OUT/lesson_NN/)")
    run.add_argument("--submission", required=True, help="a student repo root (with exercises/) or a folder of lesson_NN/")
    run.add_argument("--out", required=True, help="folder for results.json (with --lesson all: OUT/lesson_NN/results.json)")
    run.add_argument("--call-timeout", type=float, default=60.0, help="seconds allowed for one call into student code")
    run.add_argument("-k", help="only hidden tests matching this pytest -k expression (for debugging graders)")
    run.set_defaults(func=_cmd_run)
    syn = sub.add_parser("sync", help="write exercises/ stubs from solutions_private/")
    syn.add_argument("--check", action="store_true", help="exit 1 and show the diff if exercises/ drifted")
    syn.add_argument("--root", default=str(REPO_ROOT), help="repository root (default: this checkout)")
    syn.set_defaults(func=_cmd_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (lessons.GradingSetupError, sync.SyncError) as exc:
        print(f"llm-grade: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
