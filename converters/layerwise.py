"""Layer-by-layer calibration: run a Hugging Face decoder one layer at a time on calibration activations.

The model is built on PyTorch's meta device (no memory); the embeddings turn the calibration text into
hidden states, then each decoder layer in turn is loaded from the checkpoint, run over the activations
(collecting, for every linear layer, the Hessian H = Σ x xᵀ of its input and the mean |x| per channel),
handed to a callback that may change its weights (AWQ scaling, GPTQ rounding), run again to give the next
layer its input, and dropped. Peak memory is one decoder layer, its Hessians and the activations, never the
whole float model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.io.checkpoint import open_checkpoint
from edgekit.io.hf import load_config
from edgekit.quiet import quiet_transformers


@dataclass
class LinearStats:
    """What one linear layer saw on the calibration text."""

    hessian: np.ndarray      # Σ x xᵀ over tokens (in × in, float64)
    abs_sum: np.ndarray      # Σ |x| per input channel (float64)
    tokens: int = 0

    @property
    def abs_mean(self) -> np.ndarray:
        return self.abs_sum / max(self.tokens, 1)


@dataclass
class Layer:
    """One decoder layer, loaded, with the statistics of its linear layers (module names as in HF)."""

    index: int
    prefix: str                                # "model.layers.3."
    module: Any                                # the torch decoder layer
    stats: dict[str, LinearStats] = field(default_factory=dict)

    def linears(self) -> dict[str, Any]:
        from torch import nn

        return {n: m for n, m in self.module.named_modules() if isinstance(m, nn.Linear)}


class LayerwiseModel:
    """A HF causal LM whose weights are read from the checkpoint one piece at a time."""

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.hf_dir = Path(hf_dir)
        self.ckpt = open_checkpoint(self.hf_dir)
        self.config = load_config(self.hf_dir)
        with quiet_transformers(), torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, attn_implementation="sdpa")
        self.model.to(torch.float32).eval()  # whatever the checkpoint stores: calibrate in float32
        # RoPE tables are computed, not stored: build them on the CPU.
        self.rotary = type(self.model.model.rotary_emb)(config=self.model.config)

    def load(self, module: Any, prefix: str) -> Any:
        """Materialize a meta submodule with its weights from the checkpoint."""
        import torch

        module.to_empty(device="cpu")
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(torch.from_numpy(self.ckpt.read(prefix + name)))
        return module

    def embed(self, chunks: list[list[int]]) -> list[Any]:
        import torch

        w = torch.from_numpy(self.ckpt.read("model.embed_tokens.weight"))
        return [torch.nn.functional.embedding(torch.tensor([c]), w) for c in chunks]

    def run(self, layer: Any, h: Any) -> Any:
        import torch

        n = h.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        pos = torch.arange(n)[None]
        out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=self.rotary(h, pos))
        return out[0] if isinstance(out, tuple) else out


def _collect(layer: Layer, lm: LayerwiseModel, hs: list[Any]) -> None:
    """Run the layer over the activations with hooks that add every linear input into its statistics."""
    import torch

    last: list[Any] = [None, None]  # q/k/v (and gate/up) read the same tensor: compute its products once

    def products(x: Any) -> tuple[np.ndarray, np.ndarray]:
        if last[0] is not x:
            x2 = x.detach().reshape(-1, x.shape[-1])
            # float32 products per window, float64 sums across windows
            last[0], last[1] = x, ((x2.T @ x2).double().numpy(), x2.abs().sum(0).double().numpy())
        return last[1]

    hooks = []
    for name, mod in layer.linears().items():
        st = layer.stats.setdefault(name, LinearStats(np.zeros((mod.in_features,) * 2), np.zeros(mod.in_features)))

        def hook(_m: Any, args: tuple, st: LinearStats = st) -> None:
            h, a = products(args[0])
            st.hessian += h
            st.abs_sum += a
            st.tokens += args[0].numel() // args[0].shape[-1]

        hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for h in hs:
                lm.run(layer.module, h)
    finally:
        for h in hooks:
            h.remove()


def walk(hf_dir: Path, windows: list[list[int]], on_layer: Callable[[Layer], None], *,
         progress: bool = True) -> dict[str, LinearStats]:
    """Calibrate layer by layer on token windows (edgekit.io.text.text_windows): on_layer(layer) may change
    the layer's weights in place before its output becomes the next layer's input. Returns the statistics of
    the output projection's input ({"lm_head": ...}, after the final norm)."""
    import torch
    from tqdm import tqdm

    lm = LayerwiseModel(hf_dir)
    hs = lm.embed(windows)
    layers = lm.model.model.layers
    for i in tqdm(range(len(layers)), desc="calibrate", unit="layer", leave=False, disable=None if progress else True):
        layer = Layer(i, f"model.layers.{i}.", lm.load(layers[i], f"model.layers.{i}."))
        _collect(layer, lm, hs)
        on_layer(layer)
        with torch.no_grad():
            hs = [lm.run(layer.module, h) for h in hs]
        layers[i].to("meta")  # drop this layer's weights
        layer.stats.clear()
    norm = lm.load(lm.model.model.norm, "model.norm.")
    d = hs[0].shape[-1]
    st = LinearStats(np.zeros((d, d)), np.zeros(d))
    with torch.no_grad():
        for h in hs:
            x = norm(h).reshape(-1, d)
            st.hessian += (x.T @ x).double().numpy()
            st.abs_sum += x.abs().sum(0).double().numpy()
            st.tokens += x.shape[0]
    return {"lm_head": st}
