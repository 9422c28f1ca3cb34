"""`python -m labkit check NN` (self-check) and `python -m labkit submit NN` (the autograder's zip).

NN is a lesson: 5, 05 and lesson_05 are the same. Errors are one line on stderr (exit 2).
"""

from __future__ import annotations

import sys

USAGE = "usage: python -m labkit {check|submit} NN  (NN: a lesson, e.g. 5, 05 or lesson_05)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("check", "submit"):
        print(f"labkit: {USAGE}", file=sys.stderr)
        return 2
    from labkit.submit import SubmitError

    try:
        if args[0] == "submit":
            from labkit import submit

            return submit.main(args[1])
        from labkit import check

        return check.main(args[1])
    except SubmitError as exc:
        print(f"labkit {args[0]}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
