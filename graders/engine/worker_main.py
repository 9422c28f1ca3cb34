"""The sandboxed worker: imports student modules and answers the grader's requests.

This file is copied into the sandbox folder and run there as ``python -I``; it must
import nothing from the engine. Student code runs in this process, so nothing here
is trusted by the grader: every answer is plain data that the grader re-checks
(see ``graders/engine/plaindata.py``). No assertion, expected value or reference
solution is ever sent here.

Protocol: one request at a time on fd ``REQ``; one reply on fd ``REP``. Messages are
in the format of ``wire.py`` (JSON plus raw tensor bytes; copied here as ``_llmg_wire.py``).
Requests are dicts with an ``op``; replies are ``{"ok": True, "value": ...}`` or
``{"ok": False, "error": "..."}``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback


def _error_text(exc: BaseException) -> str:
    """The exception and the innermost frames: enough for a student to find the line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__][-3:]
    where = "; ".join(f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" for f in frames)
    return f"{type(exc).__name__}: {exc}"[:2000] + (f" (at {where})" if where else "")


def seeded_inputs(torch, seed: int, count: int, random_args: list, fixed_args: dict, device: str) -> list[list]:
    """``count`` fresh argument lists made from ``seed``: one standard-normal base tensor
    per ``random_args`` entry ([shape, dtype name]), scaled by a different random factor
    in every call (cheap, and no two calls share inputs, so nothing can be memoised),
    and the given tensors at ``fixed_args`` positions. The grader runs this same
    function to know what the worker was given."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    bases = []
    for spec in random_args:
        if spec is None:
            bases.append(None)
            continue
        shape, dtype = spec
        base = torch.randn(*shape, generator=g, dtype=torch.float32)
        bases.append(base.to(device=device, dtype=getattr(torch, dtype)))
    scales = torch.rand(count, len(random_args), generator=g, dtype=torch.float64) + 0.5
    calls = []
    for c in range(count):
        args = []
        for i, base in enumerate(bases):
            if base is None:
                fixed = fixed_args.get(i)
                args.append(fixed.to(device) if fixed is not None else None)
            else:
                args.append(base * float(scales[c, i]))
        calls.append(args)
    return calls


def digests(torch, outputs: object, seed: int) -> list[float]:
    """A random rank-1 projection a^T X b of each output tensor X (viewed as a matrix
    over its last axis): a cheap proof that every output was really computed, without
    sending it back. Any wrong X fails it with probability 1 over the draw of a, b."""
    tensors = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    g = torch.Generator(device="cpu").manual_seed(seed)
    result = []
    for t in tensors:
        t = t.detach()
        b = torch.randn(t.shape[-1], generator=g).to(t.device)
        a = torch.randn(t.shape[:-1].numel(), generator=g).to(t.device)
        result.append(float(((t.float().reshape(-1, t.shape[-1]) @ b) * a).double().sum()))
    return result


def main() -> None:
    req_fd, rep_fd, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, folder)
    import _llmg_wire as wire  # wire.py, copied next to this file
    import torch  # after sys.path: a student file named torch.py is not copied anyway

    def send(obj: object) -> None:
        wire.write_all(rep_fd, wire.encode_parts(obj))

    def to_device(obj: object, device: str) -> object:
        if isinstance(obj, torch.Tensor):
            return obj.to(device)
        if isinstance(obj, (list, tuple)):
            return type(obj)(to_device(x, device) for x in obj)
        if isinstance(obj, dict):
            return {k: to_device(v, device) for k, v in obj.items()}
        return obj

    def to_cpu(obj: object) -> object:
        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu()
        if isinstance(obj, (list, tuple)):
            return type(obj)(to_cpu(x) for x in obj)
        if isinstance(obj, dict):
            return {k: to_cpu(v) for k, v in obj.items()}
        return obj

    objects: dict[int, object] = {}  # handles to objects built by "new" (a model, a tokenizer, ...)

    def function(req: dict):
        module = importlib.import_module(req["module"])
        return getattr(module, req["function"])

    def resolve(obj: object) -> object:
        """Replace {"__handle__": n} anywhere in the arguments by the object it names."""
        if isinstance(obj, dict):
            if set(obj) == {"__handle__"}:
                return objects[obj["__handle__"]]
            return {k: resolve(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(resolve(x) for x in obj)
        return obj

    def target(req: dict):
        """The callable a request names: module.function, or a method of a handle's object."""
        if req.get("handle") is not None:
            return getattr(objects[req["handle"]], req["function"])
        return function(req)

    def arguments(req: dict, device: str) -> tuple[list, dict]:
        return resolve(to_device(req.get("args", []), device)), resolve(to_device(req.get("kwargs", {}), device))

    def sync(device: str) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def handle(req: dict) -> object:
        op = req["op"]
        if op == "ping":
            return {"pid": os.getpid(), "uid": os.getuid(), "torch": str(torch.__version__)}
        if op == "import":
            importlib.import_module(req["module"])
            return True
        device = req.get("device", "cpu")
        if op == "call":
            args, kwargs = arguments(req, device)
            return to_cpu(target(req)(*args, **kwargs))
        if op == "new":
            # Optionally built under a default dtype (a float dtype name), always put back afterwards.
            args, kwargs = arguments(req, device)
            previous = torch.get_default_dtype()
            if req.get("dtype") is not None:
                torch.set_default_dtype(getattr(torch, req["dtype"]))
            try:
                obj = function(req)(*args, **kwargs)
            finally:
                torch.set_default_dtype(previous)
            if device != "cpu" and hasattr(obj, "to"):
                obj = obj.to(device)
            objects[len(objects) + 1] = obj
            return len(objects)
        if op == "state_dict":
            return {k: v.detach().cpu() for k, v in objects[req["handle"]].state_dict().items()}
        if op == "load_state_dict":
            obj = objects[req["handle"]]
            obj.load_state_dict(to_device(req["state_dict"], device), strict=True)
            return None
        if op == "param_grads":
            # Gradients of sum(result[output] * cotangent) w.r.t. every named parameter of a handle's object.
            obj = objects[req["handle"]]
            obj.zero_grad(set_to_none=True)
            args, kwargs = arguments(req, device)
            out = getattr(obj, req["function"])(*args, **kwargs)
            picked = out[req["output"]] if req.get("output") is not None else out
            (picked * to_device(req["cotangent"], device)).sum().backward()
            return {n: (p.grad.detach().cpu() if p.grad is not None else None) for n, p in obj.named_parameters()}
        if op == "batch":
            # Several calls, one round trip: the grader times the whole request.
            fn = function(req)
            calls = [(to_device(a, device), to_device(k, device)) for a, k in req["calls"]]
            outs = [fn(*a, **k) for a, k in calls]
            sync(device)
            return to_cpu(outs)
        if op == "seeded_batch":
            # Timed by the grader: inputs made here from a seed, outputs proved by digests.
            fn = target(req)
            calls = seeded_inputs(torch, req["seed"], req["count"], req["random_args"], req["fixed_args"], device)
            outs = [fn(*args) for args in calls]
            return {
                "digests": [digests(torch, o, req["seed"] + 1 + i) for i, o in enumerate(outs)],
                "first": to_cpu(outs[0]),
            }
        if op == "grad":
            # Gradients of sum(out[index] * cotangent) w.r.t. the tensor args named in wrt.
            fn = target(req)
            args = list(resolve(to_device(req["args"], device)))
            for i in req["wrt"]:
                args[i] = args[i].detach().requires_grad_(True)
            out = fn(*args, **resolve(to_device(req["kwargs"], device)))
            picked = out[req["output"]] if req.get("output") is not None else out
            cot = to_device(req["cotangent"], device)
            grads = torch.autograd.grad((picked * cot).sum(), [args[i] for i in req["wrt"]], allow_unused=True)
            return to_cpu([g if g is not None else torch.zeros_like(args[i]) for g, i in zip(grads, req["wrt"], strict=True)])
        raise ValueError(f"unknown op {op!r}")

    send({"ok": True, "value": "ready"})
    while True:
        try:
            req = wire.read_message(req_fd)
        except EOFError:
            return
        start = time.perf_counter()
        try:
            reply = {"ok": True, "value": handle(req)}
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            reply = {"ok": False, "error": _error_text(exc)}
        reply["worker_seconds"] = time.perf_counter() - start  # informational only, never graded
        try:
            parts = wire.encode_parts(reply)  # all checks first: nothing half-sent
        except Exception as exc:
            parts = wire.encode_parts({"ok": False, "error": f"the return value could not be sent back: {_error_text(exc)}"})
        wire.write_all(rep_fd, parts)


if __name__ == "__main__":
    main()
