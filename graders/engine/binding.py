"""The base of every lesson's typed binding: the only way hidden tests reach student code.

A hidden test calls a binding method; the binding sends plain data to the sandboxed
worker and checks every reply (exact type, shape, dtype) before the test sees it. This
base holds what every lesson needs, so a lesson's ``bindings.py`` only states its contract:

- ``call`` / ``tensor`` / ``pair``: one call into the lesson's module, its reply checked;
- ``grads``: gradients w.r.t. some arguments, taken by autograd through the student's code;
- ``make``: a student class built in the worker under a default dtype, in one worker request,
  with weights loaded strictly (the student's ``__init__`` makes float32 parameters, and
  ``load_state_dict`` would cast float64 weights down, so other dtypes are built under that
  default dtype, and the worker always puts the default back).

The plugin's ``lesson`` fixture builds the class named in ``lesson.toml`` on the worker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch

from graders.engine import expect, remote
from graders.engine.remote import Remote
from graders.engine.sandbox import Worker


class Binding:
    """One lesson's binding to the student's code in ``worker``."""

    MODULE: ClassVar[str] = ""  # the student module most calls go to, e.g. "attention"
    threads: ClassVar[int | None] = None  # torch threads in the grader and the worker (None: leave as is)

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A lesson's method must not replace one of these (its tests would call the wrong one)."""
        super().__init_subclass__(**kwargs)
        clash = sorted(n for n in vars(cls) if n in BASE_METHODS)
        if clash:
            raise TypeError(f"{cls.__name__} redefines Binding.{', Binding.'.join(clash)}: give the lesson's method another name")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        if self.threads:
            torch.set_num_threads(self.threads)
        self._configure(worker)

    def _configure(self, worker: Worker) -> None:
        """What every worker of this binding gets before its first call: its torch threads."""
        if self.threads:
            worker.call("torch", "set_num_threads", (self.threads,))

    @contextlib.contextmanager
    def fresh_worker(self) -> Iterator[Worker]:
        """A second worker process for the same submission (``Worker.fresh``), configured like this binding's own
        and closed on exit: a lesson that resumes a checkpoint in a new process."""
        worker = self.worker.fresh()
        try:
            self._configure(worker)
            yield worker
        finally:
            worker.close()

    # ------------------------------------------------------------------ calls
    def call(
        self, function: str, args: tuple | list = (), kwargs: dict | None = None, *, device: str = "cpu",
        timeout: float | None = None, module: str | None = None,
    ) -> object:
        """``module.function(*args, **kwargs)`` in the worker; its plain-data reply, not yet checked."""
        return self.worker.call(module or self.MODULE, function, args, kwargs, device=device, timeout=timeout)

    def tensor(
        self, function: str, args: tuple | list = (), kwargs: dict | None = None, *, what: str | None = None,
        shape: tuple | torch.Size | None = None, dtype: torch.dtype | None = None, device: str = "cpu",
    ) -> torch.Tensor:
        """A call whose reply must be one tensor of ``shape`` and ``dtype`` (``what`` names it in messages)."""
        out = self.call(function, args, kwargs, device=device)
        return expect.tensor(out, what or f"{function}(...)", shape=shape, dtype=dtype)

    def pair(
        self, function: str, args: tuple | list = (), kwargs: dict | None = None, *, what: str | None = None,
        device: str = "cpu",
    ) -> tuple[object, object]:
        """A call whose reply must be a pair (checked further by the caller)."""
        return expect.pair(self.call(function, args, kwargs, device=device), what or function)

    def grads(
        self, function: str, args: tuple | list, kwargs: dict | None, *, wrt: list[int], cotangent: torch.Tensor,
        output: int | None = None, names: tuple[str, ...] | None = None, dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Gradients of sum(function(*args)[output] * cotangent) w.r.t. ``args[i]`` for i in ``wrt``.

        Each is checked to have its argument's shape (and ``dtype`` when given); ``names``
        name them in messages (default ``d<i>``).
        """
        value = self.worker.grad(self.MODULE, function, args, kwargs, wrt=wrt, cotangent=cotangent, output=output)
        assert type(value) is list and len(value) == len(wrt), "gradient reply malformed"
        names = names or tuple(f"d{i}" for i in wrt)
        return tuple(
            expect.tensor(g, n, shape=args[i].shape, dtype=dtype) for g, n, i in zip(value, names, wrt, strict=True)
        )

    # ------------------------------------------------------------------ objects
    def make(
        self, cls: str, *args: object, dtype: torch.dtype = torch.float32, state_dict: dict[str, torch.Tensor] | None = None,
        device: str = "cpu", module: str | None = None, **kwargs: object,
    ) -> Remote:
        """``module.cls(*args, **kwargs)`` built in the worker under default dtype ``dtype``; ``state_dict`` loaded strictly.

        One worker request: the worker sets the default dtype, builds, and puts the previous
        default back even when the constructor fails, so later builds are unaffected.
        """
        obj = remote.new(self.worker, module or self.MODULE, cls, *args, device=device, default_dtype=dtype, **kwargs)
        if state_dict is not None:
            obj.load_state_dict(state_dict)
        return obj

    def new(self, cls: str, *args: object, module: str | None = None, device: str = "cpu", **kwargs: object) -> Remote:
        """``module.cls(*args, **kwargs)`` built in the worker in float32 (a config object, a helper)."""
        return remote.new(self.worker, module or self.MODULE, cls, *args, device=device, **kwargs)


BASE_METHODS = frozenset(n for n, v in vars(Binding).items() if callable(v) and not n.startswith("_"))
