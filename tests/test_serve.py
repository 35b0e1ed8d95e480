"""`edgekit serve` under load and bad requests, against a real HTTP client on 127.0.0.1: bounded bodies
(413), malformed or mistyped requests (400), a failure inside generation (500, and the server goes on), more
clients than the queue holds (429), clients that leave mid-answer (the generation stops)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import stop_gracefully

from edgekit.runtime.serve import MAX_BODY, ChatServer

EDGEKIT = [sys.executable, "-m", "edgekit"]
MSGS = [{"role": "user", "content": "Write fib(n) in Python."}]


def _start(model: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([*EDGEKIT, "serve", str(model), "--port", "0", "--threads", "1", "-q", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert m, line + p.stderr.read()
    return p, int(m.group(1))


def _post(port: int, body: bytes | object, timeout: float = 120) -> tuple[int, dict | None]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read()
    finally:
        c.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, None  # an event stream


def _leave_mid_stream(port: int) -> str:
    """A streaming request whose client reads the first bytes of the answer and hangs up."""
    body = json.dumps({"messages": MSGS, "stream": True, "max_tokens": 64}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        first = s.recv(64)
    return "left" if first.startswith(b"HTTP/1.0 200") else f"bad start {first!r}"


# (name, how to send it, the status it must get)
VALID = {"messages": MSGS, "max_tokens": 4, "temperature": 0}
KINDS = [
    ("valid", lambda port: _post(port, VALID)[0], 200),
    ("stream", lambda port: _post(port, {**VALID, "stream": True})[0], 200),
    ("not json", lambda port: _post(port, b'{"messages": [')[0], 400),
    ("wrong type", lambda port: _post(port, {**VALID, "temperature": "hot"})[0], 400),
    ("bad role", lambda port: _post(port, {"messages": [{"role": "robot", "content": "hi"}]})[0], 400),
    ("stream not bool", lambda port: _post(port, {**VALID, "stream": "yes"})[0], 400),
    ("too big", lambda port: _post(port, b'{"messages": "' + b"x" * (2 * MAX_BODY) + b'"}')[0], 413),
    ("leaves", _leave_mid_stream, "left"),
]


@pytest.mark.slow
def test_200_requests_from_8_threads(f32_ggufs):
    """The load loop: every kind of request, interleaved, from 8 client threads at once; every answer is the
    one its kind must get, and the server is alive and answering afterwards."""
    p, port = _start(f32_ggufs["llama"])
    got: Counter[tuple[str, object]] = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(25):
            name, send, _ = KINDS[(k + i) % len(KINDS)]
            try:
                status: object = send(port)
            except OSError as e:
                status = f"{type(e).__name__}"
            with lock:
                got[name, status] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    seconds = time.perf_counter() - t0
    try:
        assert p.poll() is None, "the server died"
        assert _post(port, VALID)[0] == 200
    finally:
        stop_gracefully(p)
    print(f"\nserve load: {sum(got.values())} requests from 8 threads in {seconds:.1f} s: "
          + ", ".join(f"{n} -> {s}: {c}" for (n, s), c in sorted(got.items(), key=str)))
    assert sum(got.values()) == 200
    expected = {name: want for name, _, want in KINDS}
    wrong = {k: c for k, c in got.items() if k[1] != expected[k[0]]}
    assert not wrong, wrong


@pytest.mark.slow
def test_more_clients_than_the_queue_get_429(f32_ggufs):
    p, port = _start(f32_ggufs["llama"], "--max-queue", "1", "--ignore-eos")
    statuses: list[int] = []

    def long_request() -> None:
        status, body = _post(port, {"messages": MSGS, "max_tokens": 400})
        statuses.append(status)
        if status == 429:
            assert body["error"]["type"] == "rate_limit_error"

    try:
        threads = [threading.Thread(target=long_request) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        stop_gracefully(p)
    # one generating, one waiting: at least two answered; others, arriving meanwhile, turned away
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses


@pytest.mark.slow
def test_a_client_that_leaves_stops_its_generation(f32_ggufs):
    """A 480-token answer nobody waits for must not hold the model: the next request is answered long before
    the abandoned one would have finished."""
    p, port = _start(f32_ggufs["llama"], "--ignore-eos")
    long = {"messages": MSGS, "max_tokens": 480}
    try:
        t = time.perf_counter()
        assert _post(port, long)[0] == 200
        full = time.perf_counter() - t
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/chat/completions", body=json.dumps(long), headers={"Content-Type": "application/json"})
        time.sleep(0.05)
        c.close()  # gone before the answer
        t = time.perf_counter()
        assert _post(port, {"messages": MSGS, "max_tokens": 1})[0] == 200
        after = time.perf_counter() - t
    finally:
        stop_gracefully(p)
    assert after < 0.5 * full, (after, full)


def test_a_failure_inside_generation_is_a_500_and_the_server_goes_on(f32_ggufs):
    """The model's forward pass fails mid-answer (injected: nothing on this machine makes llama.cpp fail on
    demand): the request gets a 500 error object, a stream gets an error event, the next request works."""
    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(f32_ggufs["llama"], threads=1)
    real_decode = model.decode
    failing = {"on": True}

    def decode(token: int):
        if failing["on"] and len(model.cache) > 2 + model.stats.prompt_tokens:
            raise RuntimeError("injected fault in the forward pass")
        return real_decode(token)

    model.decode = decode  # type: ignore[method-assign]
    server = ChatServer(model, port=0, log=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        status, body = _post(port, {**VALID, "max_tokens": 16})
        assert status == 500 and body["error"]["type"] == "server_error", body
        assert "injected fault" in body["error"]["message"]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/chat/completions", body=json.dumps({**VALID, "max_tokens": 16, "stream": True}))
        events = c.getresponse().read().decode().split("\n\n")
        assert any('"server_error"' in e for e in events) and "data: [DONE]" not in events
        failing["on"] = False
        status, body = _post(port, VALID)
        assert status == 200 and body["choices"][0]["message"]["content"] is not None
    finally:
        server.shutdown()
        server.server_close()
        model.close()
