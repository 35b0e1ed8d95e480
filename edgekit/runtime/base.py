"""The runtime interface every backend implements, and the generation loop they share.

A backend supplies four things: `tokenize`, `detokenize`, `_forward(tokens, start)` (run tokens at
positions start.. and return the last position's logits, forgetting anything cached at or after start)
and its metadata (context length, tokens per call, stop ids, chat template). Everything else -- KV-cache
prefix reuse, sampling, stop ids and stop strings, streaming detokenization, timings -- lives here, so the
backends behave the same and a seed means the same thing on each.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.chat_template import ChatTemplate, Message
from edgekit.runtime.detokenize import TextStream
from edgekit.runtime.sampling import Sampler, SamplingParams

StopCheck = Callable[[], bool]  # polled between forward calls: True stops the generation (e.g. Ctrl-C)


@dataclass
class Stats:
    """Numbers of the last generation (`Model.stats`)."""

    prompt_tokens: int = 0      # tokens of the prompt
    reused_tokens: int = 0      # of those, already in the KV cache from the previous call
    prefill_s: float = 0.0      # time to run the rest of the prompt
    generated_tokens: int = 0   # tokens sampled (a stop token included)
    decode_steps: int = 0       # tokens after the first: one forward call and one sampling each
    decode_s: float = 0.0
    first_token_s: float = 0.0  # from the call to the first sampled token (tokenize + prefill + sample)
    context_used: int = 0       # KV-cache positions in use after the generation
    n_ctx: int = 0
    finish_reason: str = ""     # "stop" (stop token or string), "length" (max tokens or context), "interrupted"

    @property
    def prefill_tps(self) -> float:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps}

    def summary(self) -> str:
        return (f"prompt {self.prompt_tokens} tokens ({self.reused_tokens} reused from the cache), prefill "
                f"{self.prefill_tps:.1f} tok/s; first token {1000 * self.first_token_s:.0f} ms; "
                f"{self.generated_tokens} generated, decode {self.decode_tps:.1f} tok/s; "
                f"context {self.context_used}/{self.n_ctx}")


class Model(ABC):
    """A language model loaded for inference. Use `edgekit.load(path)` to get one."""

    format: str = ""    # "gguf" | "pte"
    backend: str = ""   # "llama.cpp" | "executorch"

    def __init__(self, path: Path, *, n_ctx: int, n_batch: int, stop_ids: set[int], add_bos: bool,
                 template: ChatTemplate, name: str) -> None:
        self.path = path
        self.name = name
        self.n_ctx = n_ctx          # KV-cache positions: prompt plus generated tokens
        self.n_batch = n_batch      # most tokens per forward call
        self.add_bos = add_bos      # whether tokenize(add_special=True) prepends BOS
        self.template = template
        self.stop_strings = template.stop_strings()
        # Template markers that are single (special) tokens stop generation by id, even if the model's
        # metadata lists only its eos: e.g. "<|im_end|>", "<|eot_id|>", "<|end|>".
        for s in self.stop_strings:
            ids = self.tokenize(s.strip())
            if len(ids) == 1 and self.is_special(ids[0]):
                stop_ids.add(ids[0])
        self.stop_ids = stop_ids
        self.cache: list[int] = []  # the token at each KV-cache position of the current sequence
        self.stats = Stats(n_ctx=n_ctx)

    # -- what a backend implements -------------------------------------------------------------

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of text; special-token text ("<|im_end|>") becomes the special token. add_special adds
        what the tokenizer puts around a text by itself (BOS for most models)."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens left out; an incomplete UTF-8 sequence decodes to U+FFFD."""

    @abstractmethod
    def token_text(self, token: int) -> str:
        """A token's own text, special tokens included ("<|eot_id|>"), for manifests and messages."""

    @abstractmethod
    def is_special(self, token: int) -> bool:
        """Whether a token is a control token (not text)."""

    @abstractmethod
    def _forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        """Run 1..n_batch tokens at positions start.. and return the last one's logits (float32 [vocab]).
        Whatever the cache held at positions >= start is forgotten."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory (the object is unusable afterwards)."""

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared: prefill, decode, sample --------------------------------------------------------------

    def prefill(self, ids: Sequence[int], should_stop: StopCheck | None = None) -> np.ndarray | None:
        """Bring the KV cache to `ids` and return the logits after the last one. The longest common prefix
        with what the cache already holds is kept (a chat's earlier turns are not recomputed); the rest is
        run in chunks of n_batch. None if should_stop() turned true between chunks."""
        ids = list(ids)
        if not ids:
            raise EdgekitError("empty prompt")
        if len(ids) > self.n_ctx:
            raise EdgekitError(f"a prompt of {len(ids)} tokens does not fit the context of {self.n_ctx}")
        keep = 0
        for a, b in zip(self.cache, ids, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # the last prompt token always runs: its logits are needed
        self.stats.reused_tokens = keep
        del self.cache[keep:]
        logits = None
        for i in range(keep, len(ids), self.n_batch):
            if should_stop is not None and should_stop():
                return None
            chunk = ids[i:i + self.n_batch]
            logits = self._forward(chunk, i)
            self.cache.extend(chunk)  # only after the call: an interrupted call leaves the list short, not long
        return logits

    def decode(self, token: int) -> np.ndarray:
        """Append one token to the current sequence; the logits after it."""
        if len(self.cache) >= self.n_ctx:
            raise EdgekitError(f"the context of {self.n_ctx} tokens is full")
        logits = self._forward([token], len(self.cache))
        self.cache.append(token)
        return logits

    def reset(self) -> None:
        """Forget the cached sequence (the next prefill recomputes everything)."""
        self.cache.clear()

    def sample(self, logits: np.ndarray, sampler: Sampler) -> int:
        """The next token from logits; the repetition penalty sees the current sequence."""
        return sampler(logits, self.cache)

    # -- shared: generation ------------------------------------------------------------------------------

    def generate_tokens(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
                        sampler: Sampler | None = None, should_stop: StopCheck | None = None) -> Iterator[int]:
        """Yield sampled token ids until a stop id (not yielded), max_tokens, a full context or should_stop().
        `sampler` carries the random state across calls (a chat session); by default a fresh one from params."""
        params = params or SamplingParams()
        sampler = sampler or Sampler(params)
        st = self.stats = Stats(prompt_tokens=len(prompt_ids), n_ctx=self.n_ctx, finish_reason="length")
        t0 = time.perf_counter()
        try:
            logits = self.prefill(prompt_ids, should_stop)
            st.prefill_s = time.perf_counter() - t0
            if logits is None:
                st.finish_reason = "interrupted"
                return
            # The last sampled token is never fed back, so the context allows one more than it has room for.
            budget = min(params.max_tokens, self.n_ctx - len(prompt_ids) + 1)
            banned = np.fromiter(self.stop_ids, dtype=np.int64) if params.ignore_eos else None
            t = t0
            while True:
                if banned is not None:
                    logits = logits.copy()
                    logits[banned[banned < logits.size]] = -np.inf
                token = self.sample(logits, sampler)
                st.generated_tokens += 1
                if st.generated_tokens == 1:
                    st.first_token_s = time.perf_counter() - t0
                else:  # a decode step: the forward call and the sampling, not the caller's time with the token
                    st.decode_s += time.perf_counter() - t
                    st.decode_steps += 1
                if token in self.stop_ids:
                    st.finish_reason = "stop"
                    return
                yield token
                if st.generated_tokens >= budget:
                    return
                if should_stop is not None and should_stop():
                    st.finish_reason = "interrupted"
                    return
                t = time.perf_counter()
                logits = self.decode(token)
        finally:
            st.context_used = len(self.cache)

    def stream_text(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
                    stop: Sequence[str] = (), sampler: Sampler | None = None,
                    should_stop: StopCheck | None = None) -> Iterator[str]:
        """Generated text, piece by piece as it becomes final: whole UTF-8 characters only, and nothing of a
        stop string (the text ends before it)."""
        text = TextStream(self.detokenize, stop)
        tokens = self.generate_tokens(prompt_ids, params, sampler=sampler, should_stop=should_stop)
        try:
            for token in tokens:
                piece = text.push(token)
                if piece:
                    yield piece
                if text.stopped:
                    break
        finally:
            tokens.close()  # also when our caller stops early: the statistics are final either way
        if text.stopped:
            self.stats.finish_reason = "stop"
            return
        piece = text.finish()
        if text.stopped:
            self.stats.finish_reason = "stop"
        if piece:
            yield piece

    def generate(self, prompt: str, *, stream: bool = False, params: SamplingParams | None = None,
                 stop: Sequence[str] = (), **sampling: Any) -> str | Iterator[str]:
        """Continue `prompt` (raw text, no chat template). Sampling settings as keywords (temperature=0,
        max_tokens=64, seed=1, ...) or as `params`. stream=True gives an iterator of text pieces."""
        params = replace(params or SamplingParams(), **sampling)
        ids = self.tokenize(prompt, add_special=True)
        it = self.stream_text(ids, params, stop=stop)
        return it if stream else "".join(it)

    def chat_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of a conversation rendered by the model's chat template, ready for the answer."""
        text = self.template.render(messages, add_generation_prompt=True)
        # As transformers' apply_chat_template: the template writes BOS itself, so nothing is added --
        # except for the plain fallback, which is just text.
        return self.tokenize(text, add_special=self.template.is_plain)

    def chat(self, messages: Sequence[Message], *, stream: bool = False, params: SamplingParams | None = None,
             stop: Sequence[str] = (), **sampling: Any) -> str | Iterator[str]:
        """The assistant's answer to a conversation ([{"role": "user", "content": "hi"}, ...]). The KV cache of
        the previous call is reused for the common prefix, so a growing conversation only runs its new turn."""
        params = replace(params or SamplingParams(), **sampling)
        it = self.stream_text(self.chat_prompt(messages), params, stop=[*self.stop_strings, *stop])
        return it if stream else "".join(it)

    def info(self) -> dict[str, Any]:
        """What the model is, for messages, /v1/models and bundle manifests."""
        return {"name": self.name, "path": str(self.path), "format": self.format, "backend": self.backend,
                "n_ctx": self.n_ctx, "n_batch": self.n_batch, "add_bos": self.add_bos,
                "stop_ids": sorted(self.stop_ids), "stop_strings": self.stop_strings,
                "chat_template": None if self.template.is_plain else self.template.source}
