"""Student objects (a model, a tokenizer) that live in the worker, driven from the grader.

``new(worker, "gpt", "GPTMini", config)`` builds ``gpt.GPTMini(config)`` in the worker
and returns a :class:`Remote` handle. Its methods send plain data and get plain data
back, so a hidden test can copy weights in, run a forward pass or take parameter
gradients without ever holding the student's object. A handle names an object in
one worker process: if the worker restarted since, the handle fails clearly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graders.engine.sandbox import StudentError, Worker, WorkerDied


@dataclass(frozen=True)
class Remote:
    worker: Worker
    handle: int
    generation: int  # worker.starts when the object was made
    what: str

    def ref(self) -> dict:
        """Pass this as an argument to hand the object itself to another student call."""
        self._check_alive()
        return {"__handle__": self.handle}

    def _check_alive(self) -> None:
        if not self.worker.running or self.worker.starts != self.generation:
            raise WorkerDied(f"the worker restarted since {self.what} was built; its state is lost")

    def _request(self, req: dict, device: str = "cpu") -> object:
        self._check_alive()
        value, _ = self.worker.request({**req, "handle": self.handle, "device": device})
        return value

    def call(self, method: str, *args: object, device: str = "cpu", **kwargs: object) -> object:
        """``obj.method(*args, **kwargs)`` in the worker; plain-data result."""
        return self._request({"op": "call", "function": method, "args": list(args), "kwargs": kwargs}, device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = self._request({"op": "state_dict"})
        if type(sd) is not dict or not all(type(v) is torch.Tensor for v in sd.values()):
            raise StudentError(f"{self.what}.state_dict() did not give a dict of tensors")
        return sd

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """``obj.load_state_dict(state_dict, strict=True)``: names and shapes must match exactly."""
        self._request({"op": "load_state_dict", "state_dict": dict(state_dict)})

    def param_grads(
        self, method: str, args: tuple | list, cotangent: torch.Tensor, *, output: int | None = None, **kwargs: object
    ) -> dict[str, torch.Tensor | None]:
        """Gradient of sum(obj.method(*args)[output] * cotangent) for every named parameter."""
        req = {"op": "param_grads", "function": method, "args": list(args), "kwargs": kwargs}
        grads = self._request({**req, "cotangent": cotangent, "output": output})
        if type(grads) is not dict:
            raise StudentError("parameter gradients reply malformed")
        return grads


def new(
    worker: Worker, module: str, cls: str, *args: object, device: str = "cpu", default_dtype: torch.dtype | None = None,
    **kwargs: object,
) -> Remote:
    """Build ``module.cls(*args, **kwargs)`` in the worker (Remote refs in args are resolved there).

    ``default_dtype``: built under ``torch.set_default_dtype`` in the same request (put back after).
    """
    req = {"op": "new", "module": module, "function": cls, "args": list(args), "kwargs": kwargs, "device": device}
    if default_dtype is not None:
        req["dtype"] = str(default_dtype).removeprefix("torch.")
    handle, _ = worker.request(req)
    if type(handle) is not int:
        raise StudentError(f"building {module}.{cls} gave no handle")
    return Remote(worker, handle, worker.starts, f"{module}.{cls}")
