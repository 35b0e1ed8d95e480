"""`edgekit serve`: an OpenAI-compatible HTTP endpoint on localhost, on the standard library only.

    POST /v1/chat/completions   {"messages": [...], "stream": true|false, "max_tokens", "temperature",
                                 "top_p", "seed", "stop", and llama.cpp's extras "top_k", "min_p",
                                 "repeat_penalty"}
    GET  /v1/models
    GET  /health

Requests are served by threads, but the model runs one generation at a time (a lock): a device has one
model in memory and one set of cores, and the KV cache belongs to one sequence.
"""

from __future__ import annotations

import json
import signal
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


class BadRequest(Exception):
    pass


def _request_params(body: dict[str, Any], defaults: SamplingParams) -> tuple[SamplingParams, list[str]]:
    kw = {}
    for key, field in _FIELDS.items():
        v = body.get(key)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BadRequest(f"{key} must be a number")
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
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a role")
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
                 defaults: SamplingParams | None = None, log: bool = True) -> None:
        self.model = model
        self.defaults = defaults or SamplingParams()
        self.lock = threading.Lock()
        self.log = log
        self.created = int(time.time())
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.0"  # one response per connection: a stream simply ends when the connection closes

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
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            messages = _messages(body)
            params, stop = _request_params(body, self.server.defaults)
        except (ValueError, BadRequest) as e:
            return self._error(400, str(e))
        with self.server.lock:
            m = self.server.model
            try:
                ids = m.chat_prompt(messages)
                if len(ids) >= m.n_ctx:
                    raise BadRequest(f"the conversation takes {len(ids)} tokens; the context holds {m.n_ctx}")
            except (EdgekitError, BadRequest) as e:
                return self._error(400, str(e))
            pieces = m.stream_text(ids, params, stop=[*m.stop_strings, *stop])
            cid, model_id = f"chatcmpl-{uuid.uuid4().hex[:24]}", m.name
            if body.get("stream"):
                self._stream(pieces, cid, model_id)
            else:
                text = "".join(pieces)
                self._json(200, {
                    "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": _finish(m)}],
                    "usage": _usage(m)})

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
            for piece in pieces:
                event({"content": piece})
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(model: Model, host: str = "127.0.0.1", port: int = 8080, defaults: SamplingParams | None = None,
          log: bool = True) -> None:
    server = ChatServer(model, host, port, defaults, log)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is as clean as Ctrl-C
    h, p = server.server_address[:2]
    print(f"edgekit serve: {model.name} ({model.format}, {model.backend}) at http://{h}:{p}/v1 "
          "(POST /v1/chat/completions, GET /v1/models); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
