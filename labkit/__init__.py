"""labkit: the small, provided toolkit for lab experiments (not a TODO).

    from labkit import start_run, progress

    run = start_run("attention-timing", config={"seq_len": 128}, seeds=[0])
    for step in progress(range(100), desc="timing"):
        run.log(step=step, ms=...)
    run.finish()

Everything lands under ``runs/<run_id>/``: config.json (config, seeds, entrypoint),
env.json (python, packages, device, git commit), metrics.jsonl, artifacts/ and
summary.json. The rubric reads these files and re-runs the experiment from them.

From lesson 11 on, labs reach a model through ``make_backend`` (labkit/backends.py): a local
transformers model or any OpenAI-compatible endpoint, one interface, every call loggable into the run.
"""

from labkit.backends import Settings, make_backend
from labkit.output import new_figure, write_csv
from labkit.paths import exercises
from labkit.runlog import Run, load_run, progress, rerun, start_run

__all__ = ["Run", "Settings", "exercises", "load_run", "make_backend", "new_figure", "progress", "rerun", "start_run", "write_csv"]
