"""`edgekit chat` and `edgekit generate`: the terminal side of the runtime.

chat reads one message per line. On a terminal it shows a prompt and a banner (on stderr); on a pipe it
writes only the answers, one per line, so `printf 'hi\\n/stats\\n' | edgekit chat m.gguf` is scriptable.
Ctrl-C during an answer stops that answer (the chat goes on); at the prompt it ends the chat; so does EOF.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from edgekit.errors import EdgekitError
from edgekit.runtime import Model
from edgekit.runtime.session import ChatSession

HELP = ("commands: /reset forget the conversation, /stats speed and context use of the last answer, "
        "/help this text, /exit (or Ctrl-D) quit; Ctrl-C stops an answer")


class StopFlag:
    """While active, SIGINT sets a flag (polled between tokens) instead of raising KeyboardInterrupt in
    whatever code happens to run -- the model and its cache stay consistent."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set

    def __enter__(self) -> StopFlag:
        self.set = False
        self._prev = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._prev)


def _write_stream(pieces: Iterator[str], out: TextIO) -> None:
    for piece in pieces:
        out.write(piece)
        out.flush()


def stats_line(session: ChatSession) -> str:
    s = session.model.stats
    if not s.prompt_tokens:
        return "no answer yet"
    dropped = f"; {session.dropped_turns} oldest turn(s) dropped to fit" if session.dropped_turns else ""
    return (f"prefill {s.prefill_tps:.1f} tok/s ({s.prompt_tokens - s.reused_tokens} of {s.prompt_tokens} prompt "
            f"tokens computed, {s.reused_tokens} reused), first token {1000 * s.first_token_s:.0f} ms, decode "
            f"{s.decode_tps:.1f} tok/s ({s.generated_tokens} tokens, {s.finish_reason}), context "
            f"{s.context_used}/{s.n_ctx} used{dropped}")


def run_chat(session: ChatSession, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
             err: TextIO = sys.stderr) -> int:
    tty = stdin.isatty()
    m = session.model
    if tty:
        import readline  # noqa: F401 - line editing and history for input()

        print(f"edgekit chat: {m.name} ({m.format}, {m.backend}), context {m.n_ctx} tokens; {HELP}", file=err)
    while True:
        try:
            line = input("> ") if tty else stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            if tty:
                print(file=out)
            return 130
        if not line:  # EOF
            if tty:
                print(file=out)
            return 0
        text = line.rstrip("\r\n")
        cmd = text.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            session.reset()
            print("(conversation reset)", file=out if tty else err)
            continue
        if cmd == "/stats":
            print(stats_line(session), file=out)
            continue
        if cmd == "/help":
            print(HELP, file=out)
            continue
        before = session.dropped_turns
        with StopFlag() as stop:
            try:
                _write_stream(session.send(text, should_stop=stop), out)
            except EdgekitError as e:  # e.g. one message longer than the whole context: say so, go on
                print(f"edgekit: {e}", file=err)
                continue
        print(file=out)
        out.flush()
        if stop.set:
            print("(answer stopped)", file=err)
        if session.dropped_turns > before:
            print(f"(dropped {session.dropped_turns - before} oldest turn(s) to fit the context of {m.n_ctx})",
                  file=err)


def run_generate(model: Model, prompt: str, params, *, chat: bool = False, stop: Sequence[str] = (),
                 out: TextIO = sys.stdout) -> int:
    """One completion of prompt (raw text, or as a user message with chat=True); only the text on stdout.
    The text ends before the first of the `stop` strings (and, with chat, the template's end-of-turn marker)."""
    if chat:
        ids = model.chat_prompt([{"role": "user", "content": prompt}])
        stop = [*model.stop_strings, *stop]
    else:
        ids = model.tokenize(prompt, add_special=True)
    with StopFlag() as flag:
        _write_stream(model.stream_text(ids, params, stop=stop, should_stop=flag), out)
    if out.isatty():
        out.write("\n")
    out.flush()
    return 130 if flag.set else 0
