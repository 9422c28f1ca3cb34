"""Model backends for the labs: one small interface over a local transformers model and any
OpenAI-compatible HTTP endpoint (vLLM, ``transformers serve``, a hosted API).

    from labkit.backends import make_backend, Settings

    llm = make_backend("transformers:/path/to/model")                  # a local folder, loaded offline
    llm = make_backend("openai:http://127.0.0.1:8000/v1#my-model")     # an OpenAI-compatible server
    out = llm.chat([{"role": "user", "content": "Hi"}], settings=Settings(max_tokens=32))
    out.text, out.finish_reason, out.usage, out.tool_calls, out.logprobs

Both backends return the same :class:`Result`. ``temperature=0`` (the default) is greedy decoding.
Every call can be logged: pass ``log=run`` (a :class:`labkit.Run`) and each request and response
is appended as one JSON line to ``<run dir>/backend_calls.jsonl``; a path or a callable works too.

Errors are one line that names the problem and the fix: :class:`BackendConnectionError` (wrong
host or port, nothing listening, endpoint down), :class:`BackendTimeoutError`,
:class:`ModelNotFoundError` (the server does not serve that model), :class:`BackendUnavailableError`
(429 or 5xx still failing after the retries), :class:`BackendRequestError` (any other refusal).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = [
    "Backend",
    "BackendConnectionError",
    "BackendError",
    "BackendRequestError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CallLog",
    "FunctionBackend",
    "ModelNotFoundError",
    "OpenAIBackend",
    "Result",
    "Settings",
    "TokenLogprob",
    "ToolCall",
    "TransformersBackend",
    "Usage",
    "make_backend",
]

BACKEND_ENV = "LABKIT_BACKEND"
LOG_FILE = "backend_calls.jsonl"

Message = Mapping[str, Any]


# ----------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Settings:
    """Decoding settings, shared by every backend. ``temperature=0`` means greedy decoding.

    ``logprobs=True`` asks for the log-probability of every generated token (the model's raw
    distribution, before temperature and top-p, as vLLM reports it), ``top_logprobs=k`` for the k
    most likely alternatives too. A backend that cannot give them returns ``Result.logprobs = None``.
    ``extra`` goes to the backend unchanged: extra JSON fields for an HTTP server (e.g.
    ``{"chat_template_kwargs": {"enable_thinking": False}}``), extra ``generate`` arguments locally.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if self.max_tokens < 1:
            raise ValueError(f"Settings.max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"Settings.temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Settings.top_p must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0:
            raise ValueError(f"Settings.top_logprobs must be >= 0, got {self.top_logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def _settings(settings: Settings | Mapping | None, overrides: Mapping[str, Any]) -> Settings:
    if settings is None:
        base = Settings()
    elif isinstance(settings, Settings):
        base = settings
    elif isinstance(settings, Mapping):
        return _settings(Settings(), {**settings, **overrides})
    else:
        raise TypeError(f"settings must be a labkit.backends.Settings or a dict, got {type(settings).__name__}")
    unknown = sorted(set(overrides) - {f.name for f in fields(Settings)})
    if unknown:
        names = ", ".join(f.name for f in fields(Settings))
        raise TypeError(f"unknown setting {', '.join(map(repr, unknown))}: the settings are {names}")
    return replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for. ``arguments`` is the parsed JSON object ({} when the
    model wrote something that is not a JSON object: see ``raw_arguments``)."""

    name: str
    arguments: dict
    id: str | None = None
    raw_arguments: str = ""

    def to_openai(self) -> dict:
        """The call as an OpenAI ``tool_calls`` entry (for the assistant message of the next turn)."""
        raw = self.raw_arguments or json.dumps(self.arguments)
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": raw}}


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability, and (when asked) the top alternatives as (token, logprob)."""

    token: str
    logprob: float
    token_id: int | None = None
    top: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Result:
    """What every backend call returns.

    ``finish_reason``: ``"stop"`` (end of turn or a stop string), ``"length"`` (hit max_tokens) or
    ``"tool_calls"``. ``reasoning`` holds the thinking text when the backend separates it.
    ``logprobs`` is one :class:`TokenLogprob` per generated token, or None where not offered.
    """

    text: str
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None
    reasoning: str | None = None
    model: str = ""
    backend: str = ""
    latency_s: float = 0.0
    attempts: int = 1

    def to_message(self) -> dict:
        """The assistant message to append to the conversation for the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [tc.to_openai() for tc in self.tool_calls]
        return message

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.usage is not None:
            out["usage"]["total_tokens"] = self.usage.total_tokens
        return out


# ------------------------------------------------------------------------------------------- errors


class BackendError(RuntimeError):
    """A backend call failed. ``str(error)`` is one line: what went wrong, then the fix."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(_one_line(message, 400))
        self.status = status
        self.attempts = attempts


class BackendConnectionError(BackendError):
    """Nothing answered: wrong host or port, a name that does not resolve, or the server is down."""


class BackendTimeoutError(BackendError):
    """The server did not answer within the timeout."""


class ModelNotFoundError(BackendError):
    """The server answered but does not serve the requested model."""


class BackendUnavailableError(BackendError):
    """HTTP 429 or 5xx, still after every retry: overloaded, rate-limited or broken."""


class BackendRequestError(BackendError):
    """The server refused the request (4xx other than 404/429): bad parameters, authentication, a wrong path."""


def _one_line(text: object, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------ logging


def _lenient(obj: object) -> object:
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, Path | set | frozenset):
        return str(obj) if isinstance(obj, Path) else sorted(obj, key=str)
    if callable(obj):
        return getattr(obj, "__name__", repr(obj))
    return repr(obj)


class CallLog:
    """Where call records go: a labkit Run (``<run dir>/backend_calls.jsonl``), a folder (the same file
    in it), a ``.jsonl`` path, or a callable that receives each record (a dict).

    A record: ``time``, ``backend``, ``model``, ``call`` (chat or generate), ``request`` (what was
    sent: for HTTP, the JSON body), ``response`` (the parsed :class:`Result` and, for HTTP, the raw
    JSON) or ``error``, ``attempts`` and ``latency_s``. ``max_chars`` cuts long strings (a 100k-token
    prompt) in the log only, never in the call.
    """

    def __init__(self, target: Any, *, max_chars: int | None = None) -> None:
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._callback: Callable[[dict], object] | None = None
        self.path: Path | None = None
        run_dir = getattr(target, "dir", None)
        if isinstance(run_dir, Path | str) and not isinstance(target, str | Path):
            self.path = Path(run_dir) / LOG_FILE
        elif isinstance(target, str | Path):
            path = Path(target)
            self.path = path if path.suffix == ".jsonl" else path / LOG_FILE
        elif callable(target):
            self._callback = target
        else:
            raise TypeError(
                f"log= takes a labkit Run, a folder or .jsonl path, or a callable; got {type(target).__name__}"
            )
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, log: Any) -> CallLog | None:
        if log is None or isinstance(log, CallLog):
            return log
        return cls(log)

    def _cut(self, value: Any) -> Any:
        if self.max_chars is None:
            return value
        if isinstance(value, str) and len(value) > self.max_chars:
            return value[: self.max_chars] + f"...[{len(value) - self.max_chars} more chars]"
        if isinstance(value, dict):
            return {k: self._cut(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._cut(v) for v in value]
        return value

    def write(self, record: dict) -> None:
        record = json.loads(json.dumps(record, default=_lenient))  # plain JSON types, what a reader gets back
        record = self._cut(record)
        if self._callback is not None:
            self._callback(record)
            return
        line = json.dumps(record, ensure_ascii=False)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:  # type: ignore[arg-type]
            f.write(line + "\n")


def read_calls(where: Any) -> list[dict]:
    """The records a :class:`CallLog` wrote (a Run, a run folder or the .jsonl path)."""
    log = CallLog(where)
    if log.path is None or not log.path.exists():
        return []
    return [json.loads(line) for line in log.path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------- interface


def _tool_schemas(tools: Sequence[Any] | None) -> list[dict] | None:
    """Tools as OpenAI JSON-schema dicts: dicts pass through, a typed + documented function is converted."""
    if not tools:
        return None
    out = []
    for tool in tools:
        if isinstance(tool, Mapping):
            out.append(dict(tool))
        elif callable(tool):
            from transformers.utils import get_json_schema

            out.append(get_json_schema(tool))
        else:
            raise TypeError(f"a tool is a JSON-schema dict or a documented Python function, got {type(tool).__name__}")
    return out


def _check_messages(messages: Any) -> list[dict]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts (a str prompt goes to generate)")
    out = []
    for index, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise TypeError(f"messages[{index}] must be a dict with a 'role' (and 'content'), got {m!r:.80}")
        out.append(dict(m))
    return out


class Backend(ABC):
    """The interface the labs use. ``chat`` takes messages (and tools); ``generate`` takes a raw
    prompt string (no chat template) or, given messages, is ``chat``. Both return a :class:`Result`.

    Settings come as ``settings=Settings(...)`` (or a dict) and/or keyword overrides:
    ``llm.chat(msgs, max_tokens=16, temperature=0.7, seed=1)``. ``default_settings`` of the
    backend apply when a call passes none.
    """

    kind: str = "backend"
    model_name: str = ""

    def __init__(self, *, log: Any = None, default_settings: Settings | Mapping | None = None) -> None:
        self.log = CallLog.of(log)
        self.default_settings = _settings(default_settings, {})

    # -- public API
    def chat(
        self,
        messages: Sequence[Message],
        tools: Sequence[Any] | None = None,
        settings: Settings | Mapping | None = None,
        **overrides: Any,
    ) -> Result:
        msgs = _check_messages(messages)
        chosen = _settings(settings if settings is not None else self.default_settings, overrides)
        return self._call("chat", {"messages": msgs, "tools": _tool_schemas(tools)}, chosen)

    def generate(
        self,
        prompt: str | Sequence[Message],
        settings: Settings | Mapping | None = None,
        **overrides: Any,
    ) -> Result:
        if not isinstance(prompt, str):
            return self.chat(prompt, None, settings, **overrides)
        chosen = _settings(settings if settings is not None else self.default_settings, overrides)
        return self._call("generate", {"prompt": prompt}, chosen)

    def __call__(self, prompt: str | Sequence[Message], **overrides: Any) -> str:
        """Shorthand: the generated text only."""
        return self.generate(prompt, **overrides).text

    # -- what a backend implements
    @abstractmethod
    def _chat(self, messages: list[dict], tools: list[dict] | None, settings: Settings, record: dict) -> Result: ...

    @abstractmethod
    def _generate(self, prompt: str, settings: Settings, record: dict) -> Result: ...

    # -- shared: timing and logging
    def _call(self, call: str, inputs: dict, settings: Settings) -> Result:
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "backend": self.kind,
            "model": self.model_name,
            "call": call,
            "request": {**{k: v for k, v in inputs.items() if v is not None}, "settings": settings.to_dict()},
        }
        start = time.perf_counter()
        try:
            if call == "chat":
                result = self._chat(inputs["messages"], inputs.get("tools"), settings, record)
            else:
                result = self._generate(inputs["prompt"], settings, record)
        except BackendError as exc:
            record.update(error=f"{type(exc).__name__}: {exc}", attempts=exc.attempts)
            self._write(record, start)
            raise
        except Exception as exc:
            record.update(error=f"{type(exc).__name__}: {_one_line(exc)}")
            self._write(record, start)
            raise
        result.latency_s = round(time.perf_counter() - start, 6)
        result.backend = self.kind
        result.model = result.model or self.model_name
        record["attempts"] = result.attempts
        record["result"] = result.to_dict()
        self._write(record, start)
        return result

    def _write(self, record: dict, start: float) -> None:
        if self.log is None:
            return
        record["latency_s"] = round(time.perf_counter() - start, 6)
        self.log.write(record)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"


# ----------------------------------------------------------------------------- local transformers


class TransformersBackend(Backend):
    """A local transformers causal LM and its tokenizer, with the tokenizer's chat template.

    Give a loaded ``model`` and ``tokenizer``, or use :meth:`from_pretrained` on a local folder
    (nothing is downloaded). ``chat_template`` replaces the tokenizer's; ``chat_template_kwargs``
    (e.g. ``{"enable_thinking": False}``) reach the template on every call. Tool calls and reasoning
    are parsed out of the output when the tokenizer has a ``response_template`` (or one is given),
    exactly as ``transformers serve`` does; otherwise the text comes back as decoded.

    Decoding follows ``transformers serve``: the model's generation config, ``max_new_tokens =
    max_tokens``, greedy at temperature 0, special tokens skipped in the text; so a greedy call here
    and through the server on the same folder give the same text. Differences from the server:
    stop strings are cut from the text (OpenAI semantics), and log-probs are offered.
    """

    kind = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        response_template: Mapping | None = None,
        log: Any = None,
        default_settings: Settings | Mapping | None = None,
    ) -> None:
        super().__init__(log=log, default_settings=default_settings)
        self.model = model.eval() if hasattr(model, "eval") else model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.response_template = response_template
        self.model_name = name or str(getattr(model, "name_or_path", "") or type(model).__name__)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: Any = "auto", **kwargs: Any) -> TransformersBackend:
        """Load model and tokenizer from a local folder (``local_files_only``: never downloads)."""
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise BackendError(
                f"no model at {folder}: the folder has no config.json; fix: pass the folder you saved with "
                "save_pretrained (model and tokenizer), or download it first (hf download ...)"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, device_map=device)
        return cls(model, tokenizer, name=kwargs.pop("name", str(folder)), **kwargs)

    # -- helpers
    @property
    def _device(self):
        return getattr(self.model, "device", "cpu")

    def _template(self) -> Mapping | None:
        if self.response_template is not None:
            return self.response_template
        return getattr(self.tokenizer, "response_template", None)

    @staticmethod
    def _template_messages(messages: Sequence[Message]) -> list[dict]:
        """Messages for the chat template: tool-call arguments given as a JSON string (the OpenAI wire
        format, what ``Result.to_message`` writes) become a dict, as ``transformers serve`` does."""
        out = []
        for message in _check_messages(messages):
            calls = message.get("tool_calls")
            if calls:
                fixed = []
                for call in calls:
                    call = dict(call)
                    if isinstance(call.get("function"), Mapping):
                        fn = dict(call["function"])
                        if isinstance(fn.get("arguments"), str):
                            try:
                                fn["arguments"] = json.loads(fn["arguments"] or "{}")
                            except ValueError:
                                pass
                        call["function"] = fn
                    fixed.append(call)
                message = {**message, "tool_calls": fixed}
            out.append(message)
        return out

    def render(self, messages: Sequence[Message], tools: Sequence[Any] | None = None, **template_kwargs: Any) -> str:
        """The prompt string the model sees for ``messages`` (with the generation prompt)."""
        kwargs = {**self.chat_template_kwargs, **template_kwargs}
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        return self.tokenizer.apply_chat_template(
            self._template_messages(messages), tools=_tool_schemas(tools), add_generation_prompt=True, tokenize=False,
            **kwargs,
        )

    def _chat(self, messages: list[dict], tools: list[dict] | None, settings: Settings, record: dict) -> Result:
        kwargs = dict(self.chat_template_kwargs)
        kwargs.update(settings.extra.get("chat_template_kwargs", {}))
        if self.chat_template is not None:
            kwargs["chat_template"] = self.chat_template
        inputs = self.tokenizer.apply_chat_template(
            self._template_messages(messages), tools=tools, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            **kwargs,
        )
        record["request"]["rendered"] = self.tokenizer.decode(inputs["input_ids"][0])
        return self._run(inputs, settings, record, tools=tools)

    def _generate(self, prompt: str, settings: Settings, record: dict) -> Result:
        inputs = self.tokenizer(prompt, return_tensors="pt")
        return self._run(inputs, settings, record, tools=None, parse=False)

    def _generation_config(self, settings: Settings):
        import copy

        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = settings.max_tokens
        config.max_length = None
        if settings.greedy:
            config.do_sample = False
            config.temperature, config.top_p, config.top_k = None, None, None
        else:
            config.do_sample = True
            config.temperature = settings.temperature
            config.top_p = settings.top_p
        if settings.stop:
            config.stop_strings = list(settings.stop)
        if settings.logprobs or settings.top_logprobs:
            config.return_dict_in_generate = True
            config.output_logits = True
        return config

    def _run(
        self, inputs: Any, settings: Settings, record: dict, *, tools: list[dict] | None, parse: bool = True
    ) -> Result:
        import torch

        inputs = {k: v.to(self._device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        config = self._generation_config(settings)
        extra = {k: v for k, v in settings.extra.items() if k != "chat_template_kwargs"}
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, generation_config=config, tokenizer=self.tokenizer, **extra)
        sequences = out.sequences if hasattr(out, "sequences") else out
        prompt_len = inputs["input_ids"].shape[-1]
        generated = sequences[0, prompt_len:]
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        ids = generated.tolist()  # one sequence: no padding after the end of turn
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if (ids and ids[-1] in eos_ids) else "length" if len(ids) >= settings.max_tokens else "stop"

        logprobs = None
        if settings.logprobs or settings.top_logprobs:
            logprobs = []
            for step, token_id in enumerate(ids):
                lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                top = None
                if settings.top_logprobs:
                    vals, idx = lp.topk(settings.top_logprobs)
                    top = tuple((self.tokenizer.decode([i]), float(v)) for v, i in zip(vals.tolist(), idx.tolist(), strict=True))
                logprobs.append(TokenLogprob(self.tokenizer.decode([token_id]), float(lp[token_id]), token_id, top))

        reasoning, tool_calls = None, []
        template = self._template() if parse else None
        parsed = None
        if template is not None:
            try:
                parsed = self.tokenizer.parse_response(
                    generated, template, prefix=self.tokenizer.decode(inputs["input_ids"][0].tolist()), tools=tools
                )
            except (ValueError, KeyError, TypeError) as exc:  # e.g. a tool call cut off by max_tokens
                record["parse_error"] = _one_line(exc, 200)
                text = self.tokenizer.decode(ids, skip_special_tokens=False)  # the raw output, markers included
        if parsed is not None:
            text = parsed.get("content", "")
            reasoning = next((parsed[k] for k in ("reasoning_content", "thinking") if parsed.get(k) is not None), None)
            for i, call in enumerate(parsed.get("tool_calls") or []):
                tool_calls.append(_tool_call(call.get("function", call), f"call_{i}"))
            if tool_calls:
                finish = "tool_calls"
        if _cut_at_stop(text, settings.stop) != text:  # OpenAI semantics: the text ends before the stop string
            text, finish = _cut_at_stop(text, settings.stop), "stop"
        return Result(
            text=text, finish_reason=finish, tool_calls=tool_calls, usage=Usage(prompt_len, len(ids)),
            logprobs=logprobs, reasoning=reasoning, model=self.model_name,
        )


def _tool_call(function: Mapping, call_id: str | None) -> ToolCall:
    """A ToolCall from an OpenAI-style ``function`` dict whose ``arguments`` are a JSON string or a dict."""
    args = function.get("arguments")
    if isinstance(args, Mapping):
        return ToolCall(str(function.get("name", "")), dict(args), call_id, json.dumps(args))
    raw = "" if args is None else str(args)
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {}
    return ToolCall(str(function.get("name", "")), parsed if isinstance(parsed, dict) else {}, call_id, raw)


# ------------------------------------------------------------------------------- OpenAI-compatible


class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint (vLLM, ``transformers serve``, a hosted API) through the
    ``openai`` client library.

    ``base_url`` ends with ``/v1``. ``api_key`` defaults to $OPENAI_API_KEY, else a placeholder
    (local servers accept any). ``timeout`` bounds each attempt (seconds), ``connect_timeout`` the
    TCP connect. A 429 or 5xx answer is retried ``max_retries`` times with exponential backoff:
    ``backoff * 2**i`` seconds (capped at ``backoff_max``, plus up to ``jitter`` of it at random),
    or the server's Retry-After when that is longer (capped too). Connection failures and timeouts
    are not retried: they fail at once with a one-line error. The ``openai`` client's own retries
    are off, so the count in ``Result.attempts`` and the log is exact.

    The chat call is ``POST {base_url}/chat/completions``; ``generate`` with a string prompt is
    the legacy ``POST {base_url}/completions`` (no chat template). Log-probs are requested when
    asked for and returned when the server sends them (vLLM does; ``transformers serve`` 5.23
    ignores the field, so ``Result.logprobs`` is None there).
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        jitter: float = 0.1,
        log: Any = None,
        default_settings: Settings | Mapping | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        super().__init__(log=log, default_settings=default_settings)
        if not base_url or "://" not in base_url:
            raise ValueError(f"base_url must be a URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not model:
            raise ValueError("model must name the served model (the server's model id)")
        if max_retries < 0 or backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0")
        import openai

        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.timeout = float(timeout)
        self.connect_timeout = float(min(connect_timeout, timeout))
        self.max_retries = int(max_retries)
        self.backoff, self.backoff_max, self.jitter = float(backoff), float(backoff_max), float(jitter)
        self._sleep = sleep
        self._openai = openai
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=openai.Timeout(self.timeout, connect=self.connect_timeout),
            max_retries=0,  # retries are ours: counted, logged and tested
        )

    # -- requests
    def _body(self, settings: Settings) -> dict:
        body: dict[str, Any] = {"model": self.model_name, "max_tokens": settings.max_tokens, "temperature": settings.temperature}
        if settings.top_p != 1.0:
            body["top_p"] = settings.top_p
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.seed is not None:
            body["seed"] = settings.seed
        return body

    def _chat(self, messages: list[dict], tools: list[dict] | None, settings: Settings, record: dict) -> Result:
        body = self._body(settings)
        body["messages"] = messages
        if tools:
            body["tools"] = tools
        if settings.logprobs or settings.top_logprobs:
            body["logprobs"] = True
            if settings.top_logprobs:
                body["top_logprobs"] = settings.top_logprobs
        body.update(settings.extra)
        record["request"] = {"url": f"{self.base_url}/chat/completions", "body": body}
        raw, attempts = self._send(self.client.chat.completions.create, body, record)
        record["response"] = raw
        choice = (raw.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        calls = [_tool_call(tc.get("function") or {}, tc.get("id")) for tc in message.get("tool_calls") or []]
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        return Result(
            text=_cut_at_stop(message.get("content") or "", settings.stop),
            finish_reason=choice.get("finish_reason") or ("tool_calls" if calls else "stop"),
            tool_calls=calls,
            usage=_usage(raw),
            logprobs=_chat_logprobs(choice.get("logprobs")),
            reasoning=reasoning,
            model=raw.get("model") or self.model_name,
            attempts=attempts,
        )

    def _generate(self, prompt: str, settings: Settings, record: dict) -> Result:
        body = self._body(settings)
        body["prompt"] = prompt
        if settings.logprobs or settings.top_logprobs:
            body["logprobs"] = max(settings.top_logprobs, 1) if settings.top_logprobs else 0
        body.update(settings.extra)
        record["request"] = {"url": f"{self.base_url}/completions", "body": body}
        raw, attempts = self._send(self.client.completions.create, body, record)
        record["response"] = raw
        choice = (raw.get("choices") or [{}])[0]
        return Result(
            text=_cut_at_stop(choice.get("text") or "", settings.stop),
            finish_reason=choice.get("finish_reason") or "stop",
            usage=_usage(raw),
            logprobs=_completion_logprobs(choice.get("logprobs"), settings.top_logprobs),
            model=raw.get("model") or self.model_name,
            attempts=attempts,
        )

    def _send(self, create: Callable[..., Any], body: dict, record: dict) -> tuple[dict, int]:
        """One request with our retries; returns (response JSON, attempts) or raises a BackendError."""
        openai = self._openai
        known = {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "tools",
                 "logprobs", "top_logprobs"}  # fmt: skip
        args = {k: v for k, v in body.items() if k in known}
        extra_body = {k: v for k, v in body.items() if k not in known}
        delays: list[float] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                response = create(**args, extra_body=extra_body or None)
                record["delays_s"] = delays
                return response.model_dump(exclude_unset=True), attempt
            except openai.APITimeoutError as exc:
                raise BackendTimeoutError(
                    f"no answer from {self.base_url} within {self.timeout:g} s (model {self.model_name!r}); "
                    "fix: raise timeout=..., ask for fewer max_tokens, or check that the server is not stuck",
                    attempts=attempt,
                ) from exc
            except openai.APIConnectionError as exc:
                record["delays_s"] = delays
                raise BackendConnectionError(self._connection_message(exc), attempts=attempt) from exc
            except openai.APIStatusError as exc:
                status = exc.status_code
                if (status == 429 or status >= 500) and attempt <= self.max_retries:
                    delay = self._delay(attempt, exc.response)
                    delays.append(round(delay, 4))
                    self._sleep(delay)
                    continue
                record["delays_s"] = delays
                raise self._status_error(exc, attempt) from exc

    def _delay(self, attempt: int, response: Any) -> float:
        delay = min(self.backoff_max, self.backoff * 2 ** (attempt - 1))
        delay += delay * self.jitter * random.random()
        retry_after = getattr(response, "headers", {}).get("retry-after") if response is not None else None
        try:
            if retry_after is not None:
                delay = max(delay, min(float(retry_after), self.backoff_max))
        except ValueError:  # an HTTP date: keep ours
            pass
        return delay

    def _connection_message(self, exc: Exception) -> str:
        cause = repr(exc.__cause__ or exc)
        url = self.base_url
        if "Name or service not known" in cause or "nodename nor servname" in cause or "getaddrinfo" in cause:
            return f"cannot resolve the host in {url}: no such host name; fix: check the host in base_url (e.g. http://127.0.0.1:8000/v1)"
        if "refused" in cause.lower():
            return (f"nothing is listening at {url} (connection refused): the server is down or the port is wrong; "
                    "fix: start the server (vllm serve / transformers serve) or correct host:port in base_url")  # fmt: skip
        if "timed out" in cause.lower() or "timeout" in cause.lower():
            return (f"could not connect to {url} within {self.connect_timeout:g} s: the host does not answer; "
                    "fix: check host, port and firewall, or raise connect_timeout")  # fmt: skip
        return f"cannot reach {url} ({_one_line(cause, 120)}): fix: check that the server is up and base_url is right"

    def _status_error(self, exc: Any, attempts: int) -> BackendError:
        status = exc.status_code
        detail = _server_detail(exc)
        where = f"{self.base_url}"
        if status in (400, 404) and _names_model(detail, self.model_name):
            served = self._served_models()
            hint = f"use one of: {', '.join(served)}" if served else "use the model id the server was started with"
            return ModelNotFoundError(
                f"model {self.model_name!r} is not served at {where} (HTTP {status}: {detail}); fix: {hint}",
                status=status, attempts=attempts,
            )
        if status == 404:
            return BackendRequestError(
                f"no OpenAI endpoint at {where} (HTTP 404: {detail}); fix: base_url must end with /v1, "
                "e.g. http://127.0.0.1:8000/v1", status=status, attempts=attempts,
            )
        if status in (401, 403):
            return BackendRequestError(
                f"{where} refused the API key (HTTP {status}: {detail}); fix: pass api_key=... or set OPENAI_API_KEY",
                status=status, attempts=attempts,
            )
        if status == 429 or status >= 500:
            what = "rate-limited" if status == 429 else "down or failing"
            return BackendUnavailableError(
                f"{where} is {what}: HTTP {status} ({detail}) after {attempts} attempt{'s' * (attempts > 1)}; "
                "fix: wait and retry, raise max_retries/backoff, or check the server's log",
                status=status, attempts=attempts,
            )
        return BackendRequestError(
            f"{where} refused the request (HTTP {status}: {detail}); fix: check the settings and messages sent "
            "(see the request in the call log)", status=status, attempts=attempts,
        )

    def _served_models(self) -> list[str]:
        """The server's model ids, best effort (a short call; [] when /models is missing or failing)."""
        try:
            page = self.client.with_options(timeout=min(self.timeout, 5.0), max_retries=0).models.list()
            return [m.id for m in page.data][:10]
        except Exception:
            return []

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> float:
        """Poll the server until it answers (``/health``, else ``/models``); returns the seconds waited.

        Raises :class:`BackendConnectionError` when it does not answer within ``timeout``."""
        import urllib.error
        import urllib.request

        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        start = time.monotonic()
        last = "no answer"
        while True:
            for url in (f"{root}/health", f"{self.base_url}/models"):
                try:
                    with urllib.request.urlopen(url, timeout=min(2.0, timeout)) as reply:
                        if reply.status == 200:
                            return time.monotonic() - start
                except urllib.error.HTTPError as exc:
                    last = f"{url} answered HTTP {exc.code}"
                except (OSError, ValueError) as exc:
                    last = _one_line(exc, 80)
            if time.monotonic() - start > timeout:
                raise BackendConnectionError(
                    f"{self.base_url} not ready after {timeout:g} s ({last}); fix: check the server's log, or wait longer"
                )
            time.sleep(interval)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string. OpenAI and vLLM already leave it out; ``transformers serve``
    (stop -> ``stop_strings``) keeps it: cutting here gives every server the OpenAI semantics."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _server_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, Mapping):
                value = value.get("message") or value
            if value:
                return _one_line(value, 160)
    if isinstance(body, str) and body.strip():
        return _one_line(body, 160)
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    return _one_line(text or getattr(exc, "message", "") or "no detail", 160)


def _names_model(detail: str, model: str) -> bool:
    low = detail.lower()
    return model.lower() in low or ("model" in low and ("not found" in low or "does not exist" in low or "pinned" in low))


def _usage(raw: Mapping) -> Usage | None:
    usage = raw.get("usage")
    if not usage:
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def _chat_logprobs(logprobs: Mapping | None) -> list[TokenLogprob] | None:
    if not logprobs or not logprobs.get("content"):
        return None
    out = []
    for item in logprobs["content"]:
        top = item.get("top_logprobs")
        out.append(TokenLogprob(
            item.get("token", ""), float(item.get("logprob", 0.0)), None,
            tuple((t.get("token", ""), float(t.get("logprob", 0.0))) for t in top) if top else None,
        ))  # fmt: skip
    return out


def _completion_logprobs(logprobs: Mapping | None, top_k: int) -> list[TokenLogprob] | None:
    if not logprobs or not logprobs.get("tokens"):
        return None
    tops = logprobs.get("top_logprobs") or [None] * len(logprobs["tokens"])
    out = []
    for token, lp, top in zip(logprobs["tokens"], logprobs.get("token_logprobs") or [], tops, strict=False):
        alts = tuple(sorted(((t, float(v)) for t, v in top.items()), key=lambda tv: -tv[1])) if top and top_k else None
        out.append(TokenLogprob(token, float(lp if lp is not None else 0.0), None, alts))
    return out


# --------------------------------------------------------------------------------- a plain function


class FunctionBackend(Backend):
    """A Python function as a backend: ``fn(prompt_or_messages, settings) -> str`` (or a Result).

    For scripted models in tests and harnesses (a model whose answers are known in advance):
    no template, no tokens; ``usage`` counts whitespace-separated words.
    """

    kind = "function"

    def __init__(self, fn: Callable[[Any, Settings], Any], *, name: str | None = None, log: Any = None,
                 default_settings: Settings | Mapping | None = None) -> None:  # fmt: skip
        super().__init__(log=log, default_settings=default_settings)
        self.fn = fn
        self.model_name = name or getattr(fn, "__name__", "function")

    def _wrap(self, value: Any, prompt_words: int) -> Result:
        if isinstance(value, Result):
            return value
        text = str(value)
        return Result(text=text, finish_reason="stop", usage=Usage(prompt_words, len(text.split())))

    def _chat(self, messages: list[dict], tools: list[dict] | None, settings: Settings, record: dict) -> Result:
        words = sum(len(str(m.get("content") or "").split()) for m in messages)
        return self._wrap(self.fn(messages, settings), words)

    def _generate(self, prompt: str, settings: Settings, record: dict) -> Result:
        return self._wrap(self.fn(prompt, settings), len(prompt.split()))


# ---------------------------------------------------------------------------------------- factory

_SPEC_HELP = (
    "a backend spec is 'transformers:/path/to/model' or 'openai:http://host:port/v1#model-id' "
    "(or a Backend object); set $LABKIT_BACKEND to choose one without editing the lab"
)


def make_backend(spec: str | Backend | None = None, *, log: Any = None, **options: Any) -> Backend:
    """A backend from a spec string (default: $LABKIT_BACKEND).

    - ``transformers:/path/to/model`` (also ``hf:``): a local folder, loaded offline; options go to
      :meth:`TransformersBackend.from_pretrained` (``device=``, ``chat_template_kwargs=``...).
    - ``openai:http://127.0.0.1:8000/v1#model-id``: an OpenAI-compatible server (also ``http(s)://...#model``
      directly); the model id comes after ``#`` or as ``model=``; options go to :class:`OpenAIBackend`
      (``api_key=``, ``timeout=``, ``max_retries=``...).
    - a :class:`Backend` is returned as it is (``log=`` then replaces its log when given).
    """
    if spec is None:
        spec = os.environ.get(BACKEND_ENV)
        if not spec:
            raise ValueError(f"no backend given and ${BACKEND_ENV} is not set: {_SPEC_HELP}")
    if isinstance(spec, Backend):
        if log is not None:
            spec.log = CallLog.of(log)
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{_SPEC_HELP}; got {type(spec).__name__}")
    scheme, sep, rest = spec.strip().partition(":")
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        scheme, rest, sep = "openai", spec.strip(), ":"
    if not sep or not rest:
        raise ValueError(f"cannot read backend spec {spec!r}: {_SPEC_HELP}")
    if scheme in ("transformers", "hf", "local"):
        return TransformersBackend.from_pretrained(rest, log=log, **options)
    if scheme == "openai":
        url, _, model = rest.partition("#")
        model = options.pop("model", None) or model
        if not model:
            raise ValueError(f"backend spec {spec!r} names no model: write it after '#', e.g. openai:{url}#my-model")
        return OpenAIBackend(url, model, log=log, **options)
    raise ValueError(f"unknown backend {scheme!r} in {spec!r}: {_SPEC_HELP}")
