"""ExecuTorch .pte programs (edgekit's export), run by the ExecuTorch runtime, in two layers:

- `EtModel`, the program: `forward(input_ids[1, n], cache_position[n])` writes n positions of its static KV
  cache starting at cache_position[0] and returns the last position's logits. Positions past the current one
  are masked, so starting again at 0 needs no cache reset. Also chunked prefill, every position's logits
  (evaluation) and the program's constant methods (bos/eos ids, lengths).
- `PteModel`, the runtime `Model` (`edgekit.load("m.pte")`): the program plus its tokenizer (tokenizer.json)
  and chat template (tokenizer_config.json) from next to it, as `edgekit convert` writes them; sampling,
  stops and KV prefix reuse come from runtime.base, shared with the other backends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, require
from edgekit.quiet import native_stderr_dropped, quiet_torch_logs
from edgekit.runtime.base import Model
from edgekit.runtime.chat_template import ChatTemplate


class EtModel:
    """A loaded .pte: `forward`, `prefill` and `logits`, with the program's own metadata. Generation
    (sampling, stop tokens, text) is edgekit.runtime's, shared with the GGUF backend."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgekitError(f"{self.path}: no such file")
        require("executorch.runtime", "running a .pte")
        register_kernels()
        from executorch.runtime import Runtime

        try:
            self.program = Runtime.get().load_program(self.path)
            self._forward = self.program.load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError/ValueError for bad or foreign files
            raise EdgekitError(f"{self.path}: ExecuTorch cannot load it ({str(e).strip().splitlines()[0]})") from None
        self.metadata = {name: self._constant(name) for name in sorted(self.program.method_names)
                         if name != "forward"}
        # The runner's convention: get_max_seq_len = tokens per call, get_max_context_len = cache length.
        # Without them (a foreign program), the input's planned upper bound is all we know.
        planned = int(self._forward.metadata.input_tensor_meta(0).sizes()[-1])
        self.max_prefill = int(self.metadata.get("get_max_seq_len", planned))
        self.max_seq_len = int(self.metadata.get("get_max_context_len", self.max_prefill))
        self.eos_ids = set(self.metadata.get("get_eos_ids", []))
        self.bos_id = self.metadata.get("get_bos_id")
        man = self.path.with_name(self.path.stem + ".manifest.json")
        try:
            self.manifest: dict[str, Any] = json.loads(man.read_text(encoding="utf-8")) if man.is_file() else {}
        except (OSError, ValueError) as e:
            raise EdgekitError(f"{man}: unreadable manifest ({e})") from None
        self.pos = 0  # positions of the KV cache filled by the current sequence

    def _constant(self, name: str) -> Any:
        vals = list(self.program.load_method(name).execute([]))
        vals = [v.item() if hasattr(v, "item") else v for v in vals]
        return vals if name == "get_eos_ids" else (vals[0] if len(vals) == 1 else vals)

    def forward(self, tokens: Sequence[int], start: int) -> np.ndarray:
        """Run tokens at positions start.. (at most max_prefill of them); the last position's logits."""
        import torch

        n = len(tokens)
        if not 1 <= n <= self.max_prefill:
            raise EdgekitError(f"forward takes 1..{self.max_prefill} tokens, got {n}")
        if start + n > self.max_seq_len:
            raise EdgekitError(f"sequence of {start + n} tokens exceeds the program's context ({self.max_seq_len})")
        out = self._forward.execute([torch.tensor([list(tokens)], dtype=torch.long),
                                     torch.arange(start, start + n, dtype=torch.long)])[0]
        self.pos = start + n
        return out.reshape(-1, out.shape[-1])[-1].float().numpy()

    def prefill(self, tokens: Sequence[int], start: int = 0) -> np.ndarray:
        """Feed a prompt in chunks of max_prefill from position start; logits after its last token."""
        if not tokens:
            raise EdgekitError("empty prompt")
        logits = None
        for i in range(0, len(tokens), self.max_prefill):
            logits = self.forward(tokens[i:i + self.max_prefill], start + i)
        assert logits is not None
        return logits

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """[n, vocab] logits of every position of a fresh sequence (for evaluation).

        The program returns only the last position per call, so positions are fed one at a time: the
        first call is a one-token prefill, the rest are ordinary decode steps."""
        return np.stack([self.forward([t], i) for i, t in enumerate(tokens)])


def register_kernels() -> None:
    """Kernels edgekit programs may call besides the portable ones and XNNPACK: the quantized embeddings
    (embedding_4bit/embedding_byte) and ExecuTorch's LLM ops (llama::update_cache, llama::custom_sdpa)."""
    quiet_torch_logs()
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class PteModel(Model):
    """A .pte file with its tokenizer sidecars. n_ctx may lower the program's KV-cache length, not raise it."""

    format = "pte"
    backend = "executorch"

    def __init__(self, path: str | Path, *, n_ctx: int | None = None) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        with native_stderr_dropped():
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
