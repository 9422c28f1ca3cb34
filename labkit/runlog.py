"""Reproducible run logging: seeds, config, environment, metrics and artifacts in one folder."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

RUNS_DIR_ENV = "LABKIT_RUNS_DIR"
PACKAGES = ("torch", "numpy", "transformers", "tokenizers", "peft", "trl", "sentence-transformers", "openai", "labkit")


def set_seeds(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so a run can be repeated."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)  # also seeds every CUDA device
    except ImportError:
        pass


def environment() -> dict:
    """Python, package versions, device and git commit: what a rerun must match."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions, "device": "cpu"}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["device"] = f"cuda: {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _json_default(obj: object) -> object:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable: log numbers, strings, lists or dicts")


@dataclass
class Run:
    """One logged run. Use :func:`start_run` to make one."""

    name: str
    dir: Path
    config: dict
    seeds: list[int]
    _metrics: list[dict] = field(default_factory=list)

    def log(self, **metrics: object) -> None:
        """Append one row of metrics (e.g. ``step=3, loss=2.1``) to metrics.jsonl."""
        row = {"time": round(time.time(), 3), **metrics}
        line = json.dumps(row, default=_json_default)
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._metrics.append(json.loads(line))

    def artifact(self, name: str) -> Path:
        """A path inside artifacts/ to save a figure, table or checkpoint to."""
        path = self.dir / "artifacts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, **summary: object) -> dict:
        """Write summary.json: the final metrics a rerun is compared on (defaults to the last row)."""
        if not summary and self._metrics:
            summary = {k: v for k, v in self._metrics[-1].items() if k != "time"}
        text = json.dumps(summary, indent=2, default=_json_default)
        (self.dir / "summary.json").write_text(text + "\n", encoding="utf-8")
        _record_threads(self.dir / "env.json")
        return json.loads(text)


def _record_threads(path: Path) -> None:
    """env.json's torch_threads, rewritten at finish: a lab sets its thread count after start_run."""
    try:
        import torch

        env = json.loads(path.read_text(encoding="utf-8"))
        env["torch_threads"] = torch.get_num_threads()
        path.write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    except (ImportError, OSError, ValueError, TypeError):
        pass


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: cwd) that holds exercises/."""
    here = (start or Path.cwd()).resolve()
    return next((p for p in (here, *here.parents) if (p / "exercises").is_dir()), None)


def _entrypoint(fn: Callable | None) -> str | None:
    """``path:function`` of the entry point, the path relative to the project root when known."""
    if fn is None:
        return None
    source = getattr(sys.modules.get(fn.__module__), "__file__", None)
    if source is None:
        return None
    source_path = Path(source).resolve()
    root = project_root(source_path.parent)
    return f"{source_path.relative_to(root) if root else source_path}:{fn.__qualname__}"


def runs_root() -> Path:
    """$LABKIT_RUNS_DIR, else runs/ at the project root, else ./runs."""
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    root = project_root()
    return (root / "runs") if root else Path("runs")


def start_run(
    name: str,
    config: dict,
    *,
    seeds: int | list[int] = 0,
    entrypoint: Callable | None = None,
    root: str | Path | None = None,
) -> Run:
    """Seed everything with ``seeds[0]``, make ``runs/<run_id>/`` and record config and environment.

    ``entrypoint`` is the function ``f(config, seed=...) -> Run`` that performs this run; with it the
    rubric can re-execute the run from config.json alone and compare the metrics.
    """
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("start_run needs at least one seed")
    set_seeds(seed_list[0])
    root = Path(root) if root else runs_root()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    run_dir = root / run_id
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{run_id}-{n}"
    run_dir.mkdir(parents=True)
    record = {"name": name, "run_id": run_dir.name, "seeds": seed_list, "config": config, "entrypoint": _entrypoint(entrypoint)}
    (run_dir / "config.json").write_text(json.dumps(record, indent=2, default=_json_default) + "\n", encoding="utf-8")
    (run_dir / "env.json").write_text(json.dumps(environment(), indent=2) + "\n", encoding="utf-8")
    (run_dir / "metrics.jsonl").touch()
    return Run(name=name, dir=run_dir, config=config, seeds=seed_list)


def load_run(run_dir: str | Path) -> dict:
    """Everything a run folder holds, parsed: config, env, metrics rows, summary, artifact names."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} has no config.json: not a labkit run folder")
    metrics_path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
    summary_path = run_dir / "summary.json"
    artifacts = run_dir / "artifacts"
    return {
        "dir": str(run_dir),
        "config": json.loads((run_dir / "config.json").read_text()),
        "env": json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else None,
        "metrics": rows,
        "summary": json.loads(summary_path.read_text()) if summary_path.exists() else None,
        "artifacts": sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file()) if artifacts.exists() else [],
    }


MAX_ARTIFACT_BYTES = 4 << 20  # each file sent back by rerun(); larger ones come back as None
MAX_ARTIFACTS_TOTAL = 12 << 20  # all of them together (the reply must stay small)


def rerun(entry_file: str, function: str, config: dict, seed: int, root: str = "") -> dict:
    """Re-execute a logged run: import ``entry_file``, call ``function(config, seed=seed)`` with the seeds
    reset, under ``root``. Returns ``{"summary": {...}, "artifacts": {name: base64 or None}}``: every file
    of the new run's artifacts/ (None when over the size caps). Used by the rubric, which validates them."""
    os.environ[RUNS_DIR_ENV] = root or os.path.join(os.environ.get("TMPDIR", "/tmp"), "labkit-rerun")
    spec = importlib.util.spec_from_file_location("labkit_rerun_entry", entry_file)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load the run's entrypoint {entry_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    set_seeds(seed)
    result = getattr(module, function)(config, seed=seed)
    if not isinstance(result, Run):
        raise TypeError(f"{function}(config) must return the labkit Run it logged, got {type(result).__name__}")
    summary = result.dir / "summary.json"
    files: dict[str, str | None] = {}
    folder, total = result.dir / "artifacts", 0
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        name = path.relative_to(folder).as_posix()
        if size > MAX_ARTIFACT_BYTES or total + size > MAX_ARTIFACTS_TOTAL:
            files[name] = None
            continue
        total += size
        files[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"summary": json.loads(summary.read_text()) if summary.exists() else {}, "artifacts": files}


def progress(iterable: Iterable, desc: str = "", total: int | None = None):
    """A tqdm progress bar (plain iteration where tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total)
