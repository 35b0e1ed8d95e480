"""Run an edgekit .pte in the ExecuTorch runtime from Python: the program's forward, chunked prefill, logits.

This is the program-level layer; `edgekit.load("m.pte")` (edgekit.runtime.pte) adds the tokenizer, chat
template, shared sampler and KV prefix reuse on top of it.

The program's `forward(input_ids[1, n], cache_position[n])` writes n positions of its static KV cache
starting at cache_position[0] and returns the last position's logits. Positions past the current one
are masked, so starting again at 0 needs no cache reset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


class EtModel:
    """A loaded .pte: `forward`, `prefill` and `logits`, with the program's own metadata. Generation
    (sampling, stop tokens, text) is edgekit.runtime's, shared with the GGUF backend."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgekitError(f"{self.path}: no such file")
        _register_kernels()
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


def _register_kernels() -> None:
    """Kernels edgekit programs may call besides the portable ones and XNNPACK: the quantized embeddings
    (embedding_4bit/embedding_byte) and ExecuTorch's LLM ops (llama::update_cache, llama::custom_sdpa)."""
    from edgekit.converters.executorch_export import quiet_torch_logs

    quiet_torch_logs()
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
