"""ExecuTorch .pte programs (edgekit's export), run by the ExecuTorch runtime through `runtime_et.EtModel`.

The program carries bos/eos ids and its lengths as constant methods; the tokenizer (tokenizer.json) and
the chat template (tokenizer_config.json) sit next to it, as `edgekit convert` writes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.base import Model
from edgekit.runtime.chat_template import ChatTemplate


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """ExecuTorch's CPU probe prints "[cpuinfo_utils.cpp:..] Failed to open midr file" lines straight to file
    descriptor 2 when the runtime starts; they mean nothing to a user, so fd 2 goes to a scratch file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class PteModel(Model):
    """A .pte file with its tokenizer sidecars. n_ctx may lower the program's KV-cache length, not raise it."""

    format = "pte"
    backend = "executorch"

    def __init__(self, path: str | Path, *, n_ctx: int | None = None) -> None:
        from tokenizers import Tokenizer

        from edgekit.runtime_et import EtModel

        path = Path(path)
        with _native_stderr_dropped():
            self.et = EtModel(path)
        tok_file, cfg_file = path.with_name("tokenizer.json"), path.with_name("tokenizer_config.json")
        if not tok_file.is_file():
            raise EdgekitError(f"{path}: no tokenizer.json next to the program (edgekit convert writes one)")
        try:
            self._tok = Tokenizer.from_file(str(tok_file))
            config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        except Exception as e:  # tokenizers raises its own Exception type for a malformed file
            raise EdgekitError(f"{tok_file}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
        self._special = {int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        if n_ctx is not None and n_ctx > self.et.max_seq_len:
            raise EdgekitError(f"{path}: --ctx {n_ctx} exceeds the program's KV cache of {self.et.max_seq_len} "
                               "tokens (export with a larger --max-seq-len)")
        bos_token, eos_token = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        template = ChatTemplate(config.get("chat_template"), bos_token=bos_token, eos_token=eos_token,
                                extra_tokens={k: _token_text(config.get(k)) for k in ("unk_token", "pad_token")})
        stops = set(self.et.eos_ids)
        eos_id = self._tok.token_to_id(eos_token) if eos_token else None
        if eos_id is not None:
            stops.add(eos_id)
        bos = self.et.bos_id
        probe = self._tok.encode("a", add_special_tokens=True).ids
        man = self.et.manifest
        super().__init__(path, n_ctx=n_ctx or self.et.max_seq_len, n_batch=self.et.max_prefill, stop_ids=stops,
                         add_bos=bool(man.get("add_bos", bos is not None and probe[:1] == [bos])),
                         template=template, name=str(man.get("name") or path.stem))

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        return self._tok.id_to_token(token) or ""

    def is_special(self, token: int) -> bool:
        return token in self._special

    def _forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        # The program masks every position after the current one, so restarting at `start` needs no reset.
        return self.et.forward(tokens, start)

    def close(self) -> None:
        self.et = None  # type: ignore[assignment]
