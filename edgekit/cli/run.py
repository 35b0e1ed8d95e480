"""`edgekit chat`, `generate`, `serve` and `bundle`: running a converted model (edgekit.runtime)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit.cli.chat import run_chat, run_generate
from edgekit.cli.common import add_model_args, add_sampling_args, load_for_run, sampling
from edgekit.errors import EdgekitError
from edgekit.runtime.bundle import TARGETS, make_bundle
from edgekit.runtime.serve import serve
from edgekit.runtime.session import ChatSession


def add_parsers(sub: Any) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ch = sub.add_parser(
        "chat", help="chat with a model in the terminal (streaming, multi-turn)", formatter_class=raw,
        description="Interactive chat with a .gguf (llama.cpp) or .pte (ExecuTorch) model, using its own chat "
                    "template.\nOne message per line; /reset, /stats, /help, /exit. Ctrl-C stops an answer, "
                    "Ctrl-D quits.\nOn a pipe, only the answers are written (one per line).",
        epilog="examples:\n  edgekit chat demo.gguf\n"
               "  edgekit chat smol.pte --system \"Be brief.\" --temp 0.7 --top-p 0.9 --seed 1\n"
               "  printf 'hi\\n/stats\\n' | edgekit chat demo.gguf --seed 1")
    add_model_args(ch)
    ch.add_argument("--system", help="system prompt (kept when old turns are dropped to fit the context)")
    add_sampling_args(ch, max_tokens=512)
    ch.set_defaults(func=_chat)

    gen = sub.add_parser(
        "generate", help="one-shot text continuation (prompt from the argument or stdin; only text on stdout)",
        description="Continue a prompt and write only the generated text to stdout.", formatter_class=raw,
        epilog="examples:\n  echo 'def fib(n):' | edgekit generate demo.gguf -n 64\n"
               "  edgekit generate smol.pte \"What is a GGUF file?\" --chat --temp 0")
    add_model_args(gen)
    gen.add_argument("prompt", nargs="?", help="prompt text (default: read stdin)")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    gen.add_argument("--stop", action="append", metavar="TEXT",
                     help="end the text before this string (repeatable; e.g. --stop $'\\n\\n')")
    add_sampling_args(gen, max_tokens=128)
    gen.set_defaults(func=_generate)

    b = sub.add_parser(
        "bundle", help="package a model for an app: model, tokenizer, manifest.json, integration note",
        description="Write a directory an Android, iOS or Linux app can ship: the model file (and a .pte's "
                    "tokenizer), a versioned manifest.json (format, backend, context length, chat template, stop "
                    "tokens, default sampling, sha256 checksums) and a README with the integration steps.\nAn "
                    "Android bundle of a GGUF also carries edgekit's C runtime (libedgekit and its JNI glue, built "
                    "for this machine) and the dev.edgekit Java classes.",
        epilog="examples:\n  edgekit bundle smol.pte --target android -o app-assets/\n"
               "  edgekit bundle demo.gguf --target android -o app/\n"
               "  edgekit bundle demo.gguf --target linux -o demo-bundle/ && edgekit chat demo-bundle/",
        formatter_class=raw)
    b.add_argument("model", type=Path, help="a .gguf or .pte file (or a bundle to re-target)")
    b.add_argument("--target", required=True, choices=TARGETS, help="the platform the app runs on")
    b.add_argument("-o", "--output", type=Path, required=True, help="bundle directory (new, or empty)")
    add_sampling_args(b, max_tokens=512)
    b.set_defaults(func=_bundle)

    sv = sub.add_parser(
        "serve", help="OpenAI-compatible /v1/chat/completions on localhost",
        description="Serve a model over HTTP with OpenAI's chat-completions API (streaming and not) and "
                    "/v1/models. One generation runs at a time.", formatter_class=raw,
        epilog="example:\n  edgekit serve demo.gguf --port 8080 &\n"
               "  curl -s localhost:8080/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\","
               "\"content\":\"hi\"}]}'")
    add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this device only)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    sv.add_argument("--max-queue", type=int, default=8, metavar="N",
                    help="requests that may wait for the model while it answers another; more get 429 (default: 8)")
    sv.add_argument("-q", "--quiet", action="store_true", help="no request log")
    add_sampling_args(sv, max_tokens=512)
    sv.set_defaults(func=_serve)


def _chat(args: argparse.Namespace) -> int:
    params = sampling(args)  # invalid settings fail before the model loads
    with load_for_run(args) as model:
        return run_chat(ChatSession(model, system=args.system, params=params))


def _generate(args: argparse.Namespace) -> int:
    params = sampling(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise EdgekitError("empty prompt (give one as an argument or on stdin)")
    with load_for_run(args) as model:
        return run_generate(model, prompt, params, chat=args.chat, stop=args.stop or [])


def _bundle(args: argparse.Namespace) -> int:
    out = make_bundle(args.model, args.target, args.output, sampling=sampling(args))
    print(f"wrote {out}/ for {args.target}: manifest.json, README.md and the model files")
    return 0


def _serve(args: argparse.Namespace) -> int:
    params = sampling(args)
    with load_for_run(args) as model:
        serve(model, args.host, args.port, defaults=params, log=not args.quiet, max_queue=args.max_queue)
    return 0
