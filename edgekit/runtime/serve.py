"""`edgekit serve`: an OpenAI-compatible HTTP endpoint on localhost, on the standard library only.

    POST /v1/chat/completions   {"messages": [...], "stream": true|false, "max_tokens", "temperature",
                                 "top_p", "seed", "stop", and llama.cpp's extras "top_k", "min_p",
                                 "repeat_penalty"}
    GET  /v1/models
    GET  /health

Requests are served by threads, but the model runs one generation at a time (a lock): a device has one
model in memory and one set of cores, and the KV cache belongs to one sequence. Up to `max_queue` requests
wait their turn; more get 429. A request body over MAX_BODY bytes gets 413, a malformed one 400, a failure
inside generation 500 (the server goes on); every error is an OpenAI-style {"error": {...}} object. A client
that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.runtime import Model, SamplingParams

# OpenAI request field -> SamplingParams field
_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
           "repeat_penalty": "repeat_penalty", "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens"}


MAX_BODY = 1 << 20  # bytes: a chat request is text; a megabyte is far more than any context holds
ROLES = ("system", "user", "assistant", "tool")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _request_params(body: dict[str, Any], defaults: SamplingParams) -> tuple[SamplingParams, list[str]]:
    kw = {}
    for key, field in _FIELDS.items():
        v = body.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BadRequest(f"{key} must be a number")
        if field in ("top_k", "seed", "max_tokens") and not float(v).is_integer():
            raise BadRequest(f"{key} must be an integer")
        kw[field] = int(v) if field in ("top_k", "seed", "max_tokens") else float(v)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings")
    try:
        return SamplingParams(**{**defaults.to_dict(), **kw}), stop
    except EdgekitError as e:
        raise BadRequest(str(e)) from None


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list")
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"each message needs a role: one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise BadRequest("message content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return out


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: Model, host: str = "127.0.0.1", port: int = 8080,
                 defaults: SamplingParams | None = None, log: bool = True, max_queue: int = 8) -> None:
        self.model = model
        self.defaults = defaults or SamplingParams()
        self.lock = threading.Lock()      # the model: one generation at a time
        self.queue = threading.Semaphore(max_queue + 1)  # the one generating plus those waiting
        self.log = log
        self.created = int(time.time())
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.0"  # one response per connection: a stream simply ends when the connection closes
    timeout = 60  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            sys.stderr.write(f"edgekit serve: {self.address_string()} {format % args}\n")

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        m = self.server.model
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": m.name, "object": "model", "created": self.server.created, "owned_by": "edgekit",
                 "format": m.format, "backend": m.backend, "context_length": m.n_ctx}]})
        elif self.path.rstrip("/") == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}", "not_found_error")
        try:
            body = self._body()
            messages = _messages(body)
            params, stop = _request_params(body, self.server.defaults)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("stream must be true or false")
            if body.get("n", 1) != 1:
                raise BadRequest("n must be 1 (one answer per request)")
        except BadRequest as e:
            return self._error(e.status, str(e))
        if not self.server.queue.acquire(blocking=False):
            return self._error(429, "busy: too many requests are waiting for the model; retry later",
                               "rate_limit_error")
        try:
            with self.server.lock:
                self._generate(messages, params, stop, stream)
        finally:
            self.server.queue.release()

    def _body(self) -> dict[str, Any]:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise BadRequest("a request body needs a Content-Length", 411)
        try:
            length = int(raw)
        except ValueError:
            raise BadRequest(f"bad Content-Length {raw!r}") from None
        if length < 0:
            raise BadRequest(f"bad Content-Length {raw!r}")
        if length > MAX_BODY:
            self._discard(length)
            raise BadRequest(f"request body of {length:,} bytes; the limit is {MAX_BODY:,}", 413)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _discard(self, length: int) -> None:
        """Read what the client sends (up to 16 MiB), so it can read the 413 instead of a reset connection."""
        self.close_connection = True
        left = min(length, 16 << 20)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _client_gone(self) -> bool:
        """The client closed its end (polled between tokens: nobody is left to read the answer)."""
        try:
            if not select.select([self.connection], [], [], 0)[0]:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _generate(self, messages: list[dict[str, Any]], params: SamplingParams, stop: list[str],
                  stream: bool) -> None:
        m = self.server.model
        try:
            ids = m.chat_prompt(messages)
            if len(ids) >= m.n_ctx:
                raise BadRequest(f"the conversation takes {len(ids)} tokens; the context holds {m.n_ctx}")
        except (EdgekitError, BadRequest) as e:
            return self._error(400, str(e))
        pieces = m.stream_text(ids, params, stop=[*m.stop_strings, *stop], should_stop=self._client_gone)
        cid, model_id = f"chatcmpl-{uuid.uuid4().hex[:24]}", m.name
        if stream:
            return self._stream(pieces, cid, model_id)
        try:
            text = "".join(pieces)
        except Exception as e:  # noqa: BLE001 -- the model failed mid-answer: say so, keep serving
            self._log_failure(e)
            return self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
        if m.stats.finish_reason == "interrupted":
            return  # the client is gone
        self._json(200, {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": _finish(m)}],
            "usage": _usage(m)})

    def _log_failure(self, e: BaseException) -> None:
        sys.stderr.write(f"edgekit serve: generation failed: {type(e).__name__}: {e}\n")

    def _stream(self, pieces: Any, cid: str, model_id: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        try:
            event({"role": "assistant", "content": ""})
            try:
                for piece in pieces:
                    event({"content": piece})
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as e:  # noqa: BLE001 -- headers are sent: the error goes in the stream
                self._log_failure(e)
                error = {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                         "code": 500}
                self.wfile.write(f"data: {json.dumps({'error': error})}\n\n".encode())
                return
            event({}, _finish(self.server.model), usage=_usage(self.server.model))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pieces.close()  # the client left: stop generating


def _finish(m: Model) -> str:
    return "stop" if m.stats.finish_reason == "stop" else "length"


def _usage(m: Model) -> dict[str, int]:
    s = m.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def serve(model: Model, host: str = "127.0.0.1", port: int = 8080, defaults: SamplingParams | None = None,
          log: bool = True, max_queue: int = 8) -> None:
    """Serve until Ctrl-C (or SIGTERM, which the CLI turns into the same KeyboardInterrupt)."""
    server = ChatServer(model, host, port, defaults, log, max_queue)
    h, p = server.server_address[:2]
    print(f"edgekit serve: {model.name} ({model.format}, {model.backend}) at http://{h}:{p}/v1 "
          "(POST /v1/chat/completions, GET /v1/models); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
