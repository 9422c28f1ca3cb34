"""labkit.backends: the local transformers backend, the OpenAI-compatible HTTP backend against a real
``transformers serve`` on loopback (``slow``), and the HTTP error paths against tiny loopback servers.

The model is a 2-layer Llama built from a config with an offline byte-level BPE tokenizer, trained for
about a hundred steps (~2 s) to answer two prompts: a weather question with a tool call, a greeting with
text. Nothing is downloaded: the server runs with HF_HUB_OFFLINE=1 on the folder the model is saved to.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from labkit import start_run
from labkit.backends import (
    BackendConnectionError,
    BackendError,
    BackendRequestError,
    BackendTimeoutError,
    BackendUnavailableError,
    FunctionBackend,
    ModelNotFoundError,
    OpenAIBackend,
    Settings,
    TransformersBackend,
    make_backend,
    read_calls,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the weather in Paris today? Get the current weather for a city.",
    "Hello there! The sea is calm and the wind is light today.",
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}',
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
TEMPLATE = (  # ChatML with a tools block and <tool_call>{json}</tool_call> calls (Qwen/Hermes style)
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{%- if m.get('tool_calls') %}{% for tc in m['tool_calls'] %}<tool_call>"
    "{{ {'name': tc['function']['name'], 'arguments': tc['function']['arguments']} | tojson }}</tool_call>{% endfor %}"
    "{%- else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
RESPONSE_TEMPLATE = {  # how transformers parses the output back (the qwen2 entry of transformers serve, no thinking)
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open_pattern": r"\s*<tool_call>", "close": "</tool_call>", "repeats": True, "content": "json",
                       "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}  # fmt: skip
WEATHER_TOOL = json.loads(SENTENCES[3])
WEATHER = [{"role": "user", "content": "What is the weather in Paris today?"}]
HELLO = [{"role": "user", "content": "Hello there"}]
TRAINED = [
    (WEATHER, [WEATHER_TOOL], '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>'),
    (HELLO, None, "Hello! The sea is calm today.<|im_end|>"),
]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def _build_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tk.train_from_iterator(SENTENCES, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=[SPECIAL[1], *SPECIAL[3:]])  # fmt: skip
    tok.chat_template = TEMPLATE
    tok.response_template = RESPONSE_TEMPLATE  # saved in tokenizer_config.json: the server parses tool calls with it
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine shared by many: one thread is the fastest here
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        rows = []
        for messages, tools, completion in TRAINED:
            prompt = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
            ids = tok(prompt + completion, return_tensors="pt").input_ids
            labels = ids.clone()
            labels[:, : len(tok(prompt).input_ids)] = -100
            rows.append((ids, labels))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 0.02:
                break
        model.eval()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat-model")
    _build_model(folder)
    return folder


@pytest.fixture(scope="module")
def local(model_dir):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model, shared cores: one thread is the fastest
    yield TransformersBackend.from_pretrained(model_dir)
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and 20 < len(text) <= 400, text
    return text


# ------------------------------------------------------------------------------------ local backend


def test_local_chat_is_greedy_generate_on_the_chat_template(local, tmp_path):
    import torch

    run = start_run("backend-local", {"model": "tiny"}, root=tmp_path)
    llm = TransformersBackend(local.model, local.tokenizer, name="tiny", log=run)
    out = llm.chat(HELLO, max_tokens=12)
    tok = local.tokenizer
    inputs = tok.apply_chat_template(HELLO, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        ref = local.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert out.text == tok.decode(ref, skip_special_tokens=True) == "Hello! The sea is calm today."
    assert out.finish_reason == "stop" and out.tool_calls == []
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (inputs["input_ids"].shape[1], len(ref))
    assert out.logprobs is None and out.backend == "transformers" and out.model == "tiny"
    [call] = read_calls(run)
    assert call["call"] == "chat" and call["backend"] == "transformers" and call["model"] == "tiny"
    assert call["request"]["messages"] == HELLO and call["request"]["settings"]["max_tokens"] == 12
    assert call["request"]["rendered"].endswith("<|im_start|>assistant\n")
    assert call["result"]["text"] == out.text and call["latency_s"] >= 0 and "error" not in call
    assert (run.dir / "backend_calls.jsonl").exists() and (run.dir / "metrics.jsonl").read_text() == ""


def test_local_logprobs_are_the_model_distribution(local):
    import torch

    out = local.chat([{"role": "user", "content": "The quick brown fox"}], max_tokens=6, logprobs=True, top_logprobs=3)
    tok = local.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "The quick brown fox"}], add_generation_prompt=True,
                                     return_dict=True, return_tensors="pt")["input_ids"]  # fmt: skip
    ids = [lp.token_id for lp in out.logprobs]
    assert len(ids) == out.usage.completion_tokens
    with torch.no_grad():
        logits = local.model(torch.cat([prompt, torch.tensor([ids])], dim=1)).logits[0]
    ref = torch.log_softmax(logits[prompt.shape[1] - 1 : -1], dim=-1)
    for step, lp in enumerate(out.logprobs):
        assert lp.logprob == pytest.approx(ref[step, ids[step]].item(), abs=1e-4)
        assert lp.token == tok.decode([ids[step]])
        assert len(lp.top) == 3 and [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0] == (lp.token, pytest.approx(lp.logprob))  # greedy: the chosen token is the top one


def test_local_tool_call_is_parsed_and_goes_back_into_the_conversation(local):
    out = local.chat(WEATHER, tools=[WEATHER_TOOL], max_tokens=40)
    assert out.finish_reason == "tool_calls" and out.text == ""
    [call] = out.tool_calls
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    followup = [*WEATHER, out.to_message(), {"role": "tool", "content": "sunny"}]
    rendered = local.render(followup, tools=[WEATHER_TOOL])
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in rendered
    cut = local.chat(WEATHER, tools=[WEATHER_TOOL], max_tokens=4)  # a call cut off by max_tokens: raw text, no crash
    assert cut.finish_reason == "length" and cut.tool_calls == [] and cut.text.startswith("<tool_call>")


def test_local_generate_prompt_stop_strings_and_seeded_sampling(local):
    raw = local.generate("Hello there", max_tokens=8)
    assert raw.usage.prompt_tokens == len(local.tokenizer("Hello there").input_ids)  # no chat template
    assert raw.usage.completion_tokens <= 8 and raw.finish_reason in ("stop", "length")
    full = local.chat(HELLO, max_tokens=12).text
    stopped = local.chat(HELLO, max_tokens=12, stop=["calm"])
    assert stopped.text == full[: full.index("calm")] and stopped.finish_reason == "stop"
    a, b = (local.chat(HELLO, settings=Settings(max_tokens=8, temperature=1.5, seed=3)) for _ in range(2))
    assert a.text == b.text  # same seed, same sample
    assert local(HELLO, max_tokens=12) == full  # the call shorthand is generate -> chat


def test_settings_and_make_backend_specs(local, model_dir, tmp_path, monkeypatch):
    assert Settings(stop="x").stop == ("x",) and Settings().greedy
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(ValueError):
            Settings(**bad)
    with pytest.raises(TypeError, match="unknown setting 'max_new_tokens'"):
        local.chat(HELLO, max_new_tokens=3)
    assert local.chat(HELLO, settings={"max_tokens": 2}, temperature=0).usage.completion_tokens == 2
    llm = make_backend(f"transformers:{model_dir}", log=tmp_path / "calls.jsonl")
    assert isinstance(llm, TransformersBackend) and llm.model_name == str(model_dir)
    http = make_backend("openai:http://127.0.0.1:9/v1#org/model-1", timeout=3)
    assert isinstance(http, OpenAIBackend) and (http.base_url, http.model_name, http.timeout) == (
        "http://127.0.0.1:9/v1", "org/model-1", 3.0)  # fmt: skip
    assert make_backend("http://h:1/v1#m").model_name == "m"
    assert make_backend(local) is local
    for spec in ("openai:http://h:1/v1", "nope:x", "transformers"):
        with pytest.raises(ValueError) as err:
            make_backend(spec)
        _one_line(err.value)
    with pytest.raises(BackendError) as err:
        make_backend(f"transformers:{tmp_path / 'missing'}")
    assert "config.json" in _one_line(err.value)
    monkeypatch.delenv("LABKIT_BACKEND", raising=False)
    with pytest.raises(ValueError, match="LABKIT_BACKEND"):
        make_backend()


def test_function_backend_logs_to_a_callback():
    seen = []
    llm = FunctionBackend(lambda msgs, s: f"{len(msgs)} messages, {s.max_tokens} tokens", log=seen.append)
    out = llm.chat(HELLO, max_tokens=5)
    assert (out.text, out.finish_reason, out.backend) == ("1 messages, 5 tokens", "stop", "function")
    assert seen[0]["result"]["text"] == out.text and seen[0]["request"]["messages"] == HELLO


# ------------------------------------------------------------- HTTP error paths on loopback servers

CHAT_REPLY = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip


class _Scripted:
    """A loopback HTTP server answering POSTs from a script of (status, body, headers, delay_s)."""

    def __init__(self, script):
        self.script = list(script)
        self.times: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.times.append(time.monotonic())
                status, body, headers, delay = outer.script[min(len(outer.times), len(outer.script)) - 1]
                time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for k, v in {"content-type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made = []

    def make(*script):
        made.append(_Scripted(script))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_retries_429_and_5xx_with_exponential_backoff(scripted, tmp_path):
    srv = scripted((429, {"error": {"message": "slow down"}}, {}, 0), (503, {"detail": "loading"}, {}, 0),
                   (200, CHAT_REPLY, {}, 0))  # fmt: skip
    llm = OpenAIBackend(srv.url, "m", max_retries=3, backoff=0.1, jitter=0.0, log=tmp_path)
    out = llm.chat(HELLO, max_tokens=4)
    assert out.text == "ok" and out.attempts == 3 and len(srv.times) == 3
    gaps = [b - a for a, b in zip(srv.times, srv.times[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # 0.1 s, then 0.2 s: doubled
    [call] = read_calls(tmp_path)
    assert call["attempts"] == 3 and call["delays_s"] == [0.1, 0.2]
    assert call["request"]["body"]["messages"] == HELLO and call["response"]["choices"][0]["message"]["content"] == "ok"
    srv2 = scripted((429, {"error": {"message": "wait"}}, {"retry-after": "0.3"}, 0), (200, CHAT_REPLY, {}, 0))
    OpenAIBackend(srv2.url, "m", backoff=0.01, jitter=0.0).chat(HELLO)
    assert srv2.times[1] - srv2.times[0] >= 0.3  # the server's Retry-After wins over a shorter backoff


def test_endpoint_down_gives_up_after_the_retries(scripted, tmp_path):
    srv = scripted((503, {"detail": "Service Unavailable"}, {}, 0))
    llm = OpenAIBackend(srv.url, "m", max_retries=2, backoff=0.01, log=tmp_path)
    with pytest.raises(BackendUnavailableError) as err:
        llm.chat(HELLO)
    text = _one_line(err.value)
    assert "HTTP 503" in text and "after 3 attempts" in text and "fix:" in text
    assert err.value.attempts == 3 and len(srv.times) == 3 and err.value.status == 503
    [call] = read_calls(tmp_path)
    assert call["error"].startswith("BackendUnavailableError") and call["attempts"] == 3


def test_no_retry_on_client_errors_and_a_wrong_path(scripted):
    srv = scripted((404, {"detail": "Not Found"}, {}, 0))
    with pytest.raises(BackendRequestError) as err:
        OpenAIBackend(srv.url, "m", backoff=0.01).chat(HELLO)
    assert "/v1" in _one_line(err.value) and len(srv.times) == 1
    srv = scripted((404, {"error": {"message": "The model `m2` does not exist."}}, {}, 0))
    with pytest.raises(ModelNotFoundError) as err:
        OpenAIBackend(srv.url, "m2").chat(HELLO)
    assert "'m2'" in _one_line(err.value) and len(srv.times) == 1


def test_wrong_port_fails_fast_with_one_line():
    llm = OpenAIBackend(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout=2, connect_timeout=1)
    start = time.monotonic()
    with pytest.raises(BackendConnectionError) as err:
        llm.chat(HELLO)
    assert time.monotonic() - start < 2 and err.value.attempts == 1
    assert "connection refused" in _one_line(err.value) and "fix:" in str(err.value)


def test_slow_server_times_out(scripted):
    srv = scripted((200, CHAT_REPLY, {}, 1.5))
    start = time.monotonic()
    with pytest.raises(BackendTimeoutError) as err:
        OpenAIBackend(srv.url, "m", timeout=0.3).chat(HELLO)
    assert time.monotonic() - start < 1.2 and "0.3 s" in _one_line(err.value)


# ------------------------------------------------------------------ a real `transformers serve`


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """`transformers serve <folder>` on a free loopback port: the model id is the folder path."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, **OFFLINE_ENV, "HF_HOME": str(log_path.parent / "hf-home")}
    cli = Path(sys.executable).parent / "transformers"  # the console script, else the same entry point by module
    launcher = [str(cli)] if cli.is_file() else [sys.executable, "-m", "transformers.cli.transformers"]
    cmd = [*launcher, "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        llm = OpenAIBackend(f"http://127.0.0.1:{port}/v1", str(model_dir), timeout=30, backoff=0.05)
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                llm.wait_until_ready(timeout=1)
                break
            except BackendConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"transformers serve not ready in 90 s: {log_path.read_text()[-2000:]}")
        llm.process = proc  # test_served_endpoint_down (the last test) stops it
        yield llm
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_served_chat_equals_local_greedy(served, local, tmp_path):
    run = start_run("backend-http", {}, root=tmp_path)
    http = OpenAIBackend(served.base_url, served.model_name, log=run)
    for messages in (HELLO, [{"role": "user", "content": "The quick brown fox"}]):
        want, got = local.chat(messages, max_tokens=12), http.chat(messages, max_tokens=12, logprobs=True)
        assert got.text == want.text and got.usage == want.usage and got.finish_reason == want.finish_reason
        assert got.logprobs is None  # transformers serve 5.23 ignores `logprobs` (vLLM returns them)
    assert got.model == f"{served.model_name}@main" and got.attempts == 1
    want, got = local.chat(HELLO, max_tokens=12, stop=["calm"]), http.chat(HELLO, max_tokens=12, stop=["calm"])
    assert got.text == want.text == "Hello! The sea is "  # the server keeps the stop string; the client cuts it
    calls = read_calls(run)
    assert len(calls) == 3 and calls[1]["request"]["url"].endswith("/v1/chat/completions")
    assert calls[1]["request"]["body"]["max_tokens"] == 12 and calls[1]["request"]["body"]["logprobs"] is True
    assert calls[2]["response"]["usage"]["completion_tokens"] == got.usage.completion_tokens


@pytest.mark.slow
def test_served_tool_call_and_raw_completion_equal_local(served, local):
    want, got = local.chat(WEATHER, tools=[WEATHER_TOOL], max_tokens=40), served.chat(WEATHER, tools=[WEATHER_TOOL], max_tokens=40)
    assert got.finish_reason == want.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in got.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert [(c.name, c.arguments) for c in want.tool_calls] == [("get_weather", {"city": "Paris"})]
    want, got = local.generate("Hello there", max_tokens=8), served.generate("Hello there", max_tokens=8)
    assert got.text == want.text and got.usage == want.usage  # /v1/completions: the prompt as is, no template


@pytest.mark.slow
def test_served_wrong_model_is_one_line(served, tmp_path):
    llm = OpenAIBackend(served.base_url, "no-such-model", log=tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        llm.chat(HELLO, max_tokens=2)
    text = _one_line(err.value)
    assert "'no-such-model'" in text and "HTTP 400" in text and err.value.attempts == 1
    assert read_calls(tmp_path)[0]["error"].startswith("ModelNotFoundError")


@pytest.mark.slow
def test_served_endpoint_down_is_one_line(served):
    """Last in the module: stops the server, then calls it (the fixture's finaliser copes with a dead process)."""
    served.process.terminate()
    served.process.wait(timeout=15)
    start = time.monotonic()
    with pytest.raises(BackendConnectionError) as err:
        served.chat(HELLO, max_tokens=2)
    assert "server is down" in _one_line(err.value) and time.monotonic() - start < 2
