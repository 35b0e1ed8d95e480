"""The real `edgekit chat / generate / bundle / serve` commands as subprocesses: over pipes, under a
pseudo-terminal, with SIGINT, and against a real HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PTE_CONTEXT, prompt_tokens, stop_gracefully

EDGEKIT = [sys.executable, "-m", "edgekit"]
FAST = ["--threads", "1"]  # the test machine's cores are shared: one llama.cpp thread is the quickest here


def run(*args, input: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEKIT, *map(str, args)], input=input, capture_output=True, text=True, timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# The .pte variants export a program first (seconds): the slow tier's.
BACKENDS = ["gguf", pytest.param("pte", marks=pytest.mark.slow)]


def _model(backend: str, f32_ggufs: dict[str, Path], request: pytest.FixtureRequest) -> Path:
    """The tiny Llama in that format; the .pte fixture is built only when a test asks for it."""
    return f32_ggufs["llama"] if backend == "gguf" else request.getfixturevalue("llama_pte")


def _opts(model: Path) -> list[str]:
    return FAST if model.suffix == ".gguf" else []


@pytest.mark.parametrize("cmd", ["chat", "generate", "bundle", "serve"])
def test_help(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and f"usage: edgekit {cmd}" in r.stdout and "--seed" in r.stdout


# -- generate -------------------------------------------------------------------------------------------------


def test_generate_greedy_text_equals_transformers(f32_ggufs, tiny_models):
    """The CLI's greedy text (prompt from stdin, F32 KV cache) is transformers' greedy continuation, decoded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for arch in ("llama", "qwen2"):
        src = tiny_models[arch]
        tok = AutoTokenizer.from_pretrained(src)
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        prompt = "def fib(n):\n    return"
        ids = prompt_tokens(src, prompt)
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                              eos_token_id=[tok.eos_token_id], pad_token_id=tok.eos_token_id)[0, len(ids):]
        ref = tok.decode(out, skip_special_tokens=True)
        for backend in ("llamacpp", "native"):
            r = run("generate", f32_ggufs[arch], "-n", 20, "--temp", 0, "--cache-type", "f32", "--backend", backend,
                    *FAST, input=prompt)
            assert r.returncode == 0, r.stderr
            assert len(ref) > 10 and r.stdout == ref, backend  # only the text on stdout: no prompt, banner, newline
        stop = ref[6:9]
        r = run("generate", f32_ggufs[arch], "-n", 20, "--temp", 0, "--cache-type", "f32", "--stop", stop, *FAST,
                input=prompt)
        assert r.stdout == ref[:ref.index(stop)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_text_on_reruns(backend, f32_ggufs, request):
    model = _model(backend, f32_ggufs, request)
    args = ["generate", model, "def fib(n):", "-n", 40, "--temp", 1.0, "--top-k", 0, "--top-p", 1.0, *_opts(model)]
    a, b, c = run(*args, "--seed", 7), run(*args, "--seed", 7), run(*args, "--seed", 8)
    for r in (a, b, c):
        assert r.returncode == 0, r.stderr
    assert a.stdout and a.stdout == b.stdout
    assert c.stdout != a.stdout


@pytest.mark.slow
def test_bad_model_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    (tmp_path / "junk.pte").write_bytes(b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("hello")
    assert_clean_error(run("generate", tmp_path / "junk.gguf", "hi"), "junk.gguf")
    assert_clean_error(run("chat", tmp_path / "notes.txt", input="hi\n"), "notes.txt", "unsupported model file")
    assert_clean_error(run("generate", tmp_path / "missing.gguf", "hi"), "missing.gguf", "no such file")
    assert_clean_error(run("generate", tmp_path / "junk.pte", "hi"), "junk.pte", "ExecuTorch cannot load it")


# -- chat over pipes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_conversation_longer_than_the_context(backend, f32_ggufs, request):
    """Ten turns of ~20 tokens plus 24-token answers in a 128-token context: old turns are dropped (the system
    prompt stays), every turn is answered, a message longer than the context is refused and the chat goes on."""
    model = _model(backend, f32_ggufs, request)
    ctx = ["--ctx", PTE_CONTEXT] if backend == "gguf" else []
    turns = [f"message number {i}: please tell me about the function fib and its {i} friends" for i in range(10)]
    lines = [x for t in turns for x in (t, "/stats")]
    lines[6:6] = ["word " * 400, "/stats"]  # alone too long for the context
    r = run("chat", model, "--system", "You are terse.", "-n", 24, "--ignore-eos", "--seed", 3, *ctx,
            *_opts(model), input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    stats = re.findall(r"context (\d+)/(\d+) used", r.stdout)
    assert len(stats) == 11  # one per /stats
    assert all(int(n) <= int(total) == PTE_CONTEXT for n, total in stats)
    assert "too long" in r.stderr and "dropped" in r.stderr
    assert "> " not in r.stdout and "\x1b" not in r.stdout + r.stderr  # no prompts or terminal codes on a pipe
    again = run("chat", model, "--system", "You are terse.", "-n", 24, "--ignore-eos", "--seed", 3, *ctx,
                *_opts(model), input="\n".join(lines) + "\n")
    strip = re.compile(r"prefill .*\n")  # timings differ between runs; the text must not
    assert strip.sub("", again.stdout) == strip.sub("", r.stdout)


def test_reset_starts_the_conversation_again(f32_ggufs):
    """After /reset the same message gets the same (sampled) answer as at the start: history and random stream
    both start over; without /reset the second answer differs."""
    args = ["chat", f32_ggufs["llama"], "-n", 16, "--ignore-eos", "--seed", 9, "--temp", 1.0, *FAST]
    stats = re.compile(r"prefill .*context \d+/\d+ used.*\n")

    def answers(lines: list[str]) -> list[str]:
        r = run(*args, input="".join(f"{x}\n/stats\n" if not x.startswith("/") else f"{x}\n" for x in lines))
        assert r.returncode == 0, r.stderr
        return stats.split(r.stdout)[:-1]

    a = answers(["hello there", "/reset", "hello there"])
    assert len(a) == 2 and a[0] == a[1] and a[0].strip()
    b = answers(["hello there", "hello there"])
    assert b[0] == a[0] and b[1] != b[0]


def _read_until(fd: int, pattern: str, timeout: float = 120.0, buf: bytes = b"") -> bytes:
    """Read from fd until the decoded text matches pattern."""
    end = time.monotonic() + timeout
    while not re.search(pattern, buf.decode("utf-8", errors="replace")):
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {pattern!r}; got {buf[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # a pty reports EIO once the child has gone
                chunk = b""
            if not chunk:
                raise AssertionError(f"EOF while waiting for {pattern!r}; got {buf[-500:]!r}")
            buf += chunk
    return buf


LONG_CTX = 32768
LONG = ["--ignore-eos", "-n", 100000, "--ctx", LONG_CTX, "--seed", 1, *FAST]  # an answer that takes seconds


def test_sigint_stops_the_answer_not_the_chat(f32_ggufs):
    p = subprocess.Popen([*EDGEKIT, "chat", str(f32_ggufs["llama"]), *map(str, LONG)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"tell me everything\n")
        p.stdin.flush()
        _read_until(p.stdout.fileno(), r"\S")  # the answer is streaming
        p.send_signal(signal.SIGINT)
        p.stdin.write(b"/stats\n")
        p.stdin.flush()
        out = _read_until(p.stdout.fileno(), rf"context \d+/{LONG_CTX} used")
        p.stdin.close()
        rc = p.wait(timeout=60)
        err = p.stderr.read().decode()
    finally:
        p.kill()
    assert rc == 0, err
    assert "(answer stopped)" in err and "Traceback" not in err
    stats = re.search(rf"decode [\d.]+ tok/s \((\d+) tokens, (\w+)\), context (\d+)/{LONG_CTX}", out.decode())
    assert stats and stats.group(2) == "interrupted" and int(stats.group(3)) < LONG_CTX - 100


def test_chat_under_a_terminal(f32_ggufs):
    """A real pseudo-terminal: banner and prompt, Ctrl-C (the terminal's ^C) stops an answer, /stats, /reset,
    then Ctrl-D ends the chat with exit code 0."""
    import pty
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork in a threaded process: the child execs at once
        pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [*EDGEKIT, "chat", str(f32_ggufs["llama"]), *map(str, LONG)])
    try:
        buf = _read_until(fd, rf"edgekit chat: .*context {LONG_CTX} tokens[\s\S]*> ")
        os.write(fd, b"tell me everything\n")
        buf = _read_until(fd, r"tell me everything\r?\n[\s\S]*\S", buf=buf)
        time.sleep(0.3)
        os.write(fd, b"\x03")  # the terminal turns ^C into SIGINT for the foreground process
        buf = _read_until(fd, r"\(answer stopped\)[\s\S]*> ", buf=buf)
        os.write(fd, b"/stats\n")
        buf = _read_until(fd, rf"context \d+/{LONG_CTX} used[\s\S]*> ", buf=buf)
        os.write(fd, b"/reset\n")
        buf = _read_until(fd, r"conversation reset[\s\S]*> ", buf=buf)
        os.write(fd, b"\x04")  # ^D at the start of a line: EOF
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"Traceback" not in buf and b"interrupted" in buf


# -- bundle ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundle_loads_and_a_corrupt_one_is_refused(backend, f32_ggufs, request, tmp_path):
    model = _model(backend, f32_ggufs, request)
    target = "android" if backend == "pte" else "linux"
    out = tmp_path / "app-assets"
    r = run("bundle", model, "--target", target, "-o", out, "--temp", 0.5)
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["schema"] == "edgekit-bundle" and man["schema_version"] == 1 and man["target"] == target
    assert man["format"] == backend and man["default_sampling"]["temperature"] == 0.5
    assert man["chat_template"] and man["stop_strings"] == ["<|eot_id|>"] and man["context_length"] > 0
    assert any(t["text"] == "<|eot_id|>" for t in man["stop_tokens"])
    files = {f["path"] for f in man["files"]}
    assert model.name in files and (backend == "gguf" or {"tokenizer.json", "tokenizer_config.json"} <= files)
    assert target in (out / "README.md").read_text().lower()

    args = ["generate", "def fib(n):", "-n", 12, "--seed", 5, *_opts(model)]
    direct, bundled = run(args[0], model, *args[1:]), run(args[0], out, *args[1:])
    assert bundled.returncode == 0 and bundled.stdout == direct.stdout and direct.stdout

    assert_clean_error(run("bundle", model, "--target", target, "-o", out), "not an empty directory")
    victim = out / model.name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the weights
    victim.write_bytes(bytes(data))
    assert_clean_error(run("generate", out, "hi"), str(victim), "corrupt bundle", "sha256")
    assert_clean_error(run("chat", out, input="hi\n"), "corrupt bundle")
    victim.unlink()
    assert_clean_error(run("generate", out, "hi"), "missing from the bundle")
    (out / "manifest.json").write_text("{not json")
    assert_clean_error(run("generate", out, "hi"), "manifest.json", "unreadable bundle manifest")


# -- serve -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def server(f32_ggufs):
    p = subprocess.Popen([*EDGEKIT, "serve", str(f32_ggufs["llama"]), "--port", "0", "-n", "24", *FAST],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _read_until(p.stderr.fileno(), r"http://127\.0\.0\.1:\d+/v1").decode()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        yield p, port
    finally:
        stop_gracefully(p)


def _post(port: int, body: object) -> tuple[int, bytes, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read(), r.getheader("Content-Type") or ""


def test_server_answers_a_real_http_client(server, f32_ggufs):
    import urllib.request

    p, port = server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as r:
        models = json.load(r)
    assert models["object"] == "list" and models["data"][0]["object"] == "model"

    msgs = [{"role": "user", "content": "Write fib(n) in Python."}]
    status, body, ctype = _post(port, {"model": "x", "messages": msgs, "temperature": 0, "max_tokens": 16})
    assert status == 200 and ctype == "application/json"
    whole = json.loads(body)
    text = whole["choices"][0]["message"]["content"]
    assert whole["object"] == "chat.completion" and whole["choices"][0]["finish_reason"] in ("stop", "length")
    assert whole["usage"]["completion_tokens"] <= 16 and whole["usage"]["prompt_tokens"] > 10

    status, body, ctype = _post(port, {"messages": msgs, "temperature": 0, "max_tokens": 16, "stream": True})
    assert status == 200 and ctype == "text/event-stream"
    events = [ln[len("data: "):] for ln in body.decode().split("\n\n") if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks) and len(chunks) >= 3
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]

    # the same answer as the one-shot command line (independent process, same model and template)
    r = run("generate", f32_ggufs["llama"], "Write fib(n) in Python.", "--chat", "--temp", 0, "-n", 16, *FAST)
    assert text and r.stdout == text
    status, body, _ = _post(port, {"messages": [{"role": "system", "content": "Be brief."}, *msgs], "seed": 1,
                                   "max_completion_tokens": 8, "stop": ["\n"]})
    assert status == 200 and "\n" not in json.loads(body)["choices"][0]["message"]["content"]

    for bad in ({"messages": "hi"}, {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
                {"messages": [{"role": "user", "content": "hi"}], "top_p": 0}):
        status, body, _ = _post(port, bad)
        assert status == 400 and "error" in json.loads(body)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/v1/nothing")
    assert c.getresponse().status == 404
    assert p.poll() is None  # still serving after bad requests
