"""The grading engine, in four layers; each uses only the layers above it.

Trust boundary (where student code runs, and what builds its cage):
    worker_main.py, wire.py      the worker: student code runs in this process; copied into the sandbox and
                                 import nothing else of the engine (tests/test_layers.py checks it)
    launch.py                    runs in the sandbox before student code (drops privileges); same rule
    launcher.py, sandbox.py,     the grader's side: build the sandbox (bubblewrap or unshare), one uid and
    cgroup.py, runroot.py,       one cgroup per worker, one 0700 folder per run, talk to the worker and
    plaindata.py, kernel_launch.py, lo_up.py   check every reply; notebook kernels get the same

Grading (hidden tests against one submission):
    binding.py, remote.py, expect.py   the typed binding base, handles to objects in the worker, reply checks
    plugin.py                    pytest plugin: markers, the `worker` and `lesson` fixtures, verdict events
    run.py, server.py, results.py      one grading process per submission (forked from a warm server), results.json
    timing.py                    the one timer of every speed test (worker CPU time vs the reference's, frozen worker)
    safepath.py, provenance.py   reading without following links (a shim over labkit/safepath.py); what a results.json
                                 was graded from

Assessment (what the grades add up to):
    rubric.py, labs.py           the five-criteria rubric (its shared rules: labkit/rubric.py, which students'
                                 `make check` runs too), notebook autograding, sandboxed reruns of logged runs
    batch.py, classbook.py,      a class at once (grades.csv), one class nbgrader course for the formgrader,
    gradescope.py                the Gradescope autograder

Authoring (a lesson is a kit):
    lessons.py                   graders/lesson_NN/lesson.toml (private) and labs/lesson_NN/lab.toml (public) read
                                 and checked; rubric defaults in labkit/rubric_defaults.toml
    sync.py, release.py          exercises/ stubs from solutions_private/; the student repository
    cli.py                       `llm-grade`: imports each command's modules only when it runs
"""
