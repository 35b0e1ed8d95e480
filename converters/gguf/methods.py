"""`--method`: how calibrated conversions round the weights (rtn, awq, gptq, awq+gptq).

rtn (the default) is llama.cpp's own quantization, byte for byte, and needs no calibration here. The
others run the HF model layer by layer on the calibration text (edgekit.converters.layerwise): AWQ
rescales and folds each layer, then every linear weight is rounded, by GPTQ or by round-to-nearest
with the Hessian diagonal as the importance matrix, and the next layer sees the quantized layer's
output. The resulting GGUF tensors (ggml blocks, or floats AWQ changed) wait in a temporary directory
until the writer streams them into the file in its own order.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from edgekit.converters import archs
from edgekit.converters.gguf import awq
from edgekit.converters.gguf.gptq import GPTQ_TYPES, dequantize, gptq, rtn
from edgekit.converters.layerwise import Layer, walk
from edgekit.errors import EdgekitError
from edgekit.io.checkpoint import open_checkpoint
from edgekit.io.text import text_windows
from edgekit.progress import peak_rss_bytes

METHODS = ("rtn", "awq", "gptq", "awq+gptq")


@dataclass
class Prepared:
    """GGUF tensors computed ahead of the writer, stored as .npy files (GGUF row order)."""

    dir: tempfile.TemporaryDirectory
    names: set[str] = field(default_factory=set)
    seconds: float = 0.0
    peak_rss: int = 0

    def put(self, name: str, arr: np.ndarray) -> None:
        np.save(Path(self.dir.name) / f"{name}.npy", arr)
        self.names.add(name)

    def get(self, name: str) -> np.ndarray | None:
        """uint8 ggml rows, float32 values to quantize as usual, or None if the writer reads the source."""
        if name not in self.names:
            return None
        return np.load(Path(self.dir.name) / f"{name}.npy", mmap_mode="r")

    def close(self) -> None:
        self.dir.cleanup()


def prepare(hf_dir: Path, calib: list[Path], types: dict[str, GGMLQuantizationType], method: str, *,
            ctx: int = 512, max_windows: int = 64, progress: bool = True) -> Prepared:
    """Run `method` over a HF checkpoint on calibration text (files or folders; at most max_windows windows of
    ctx tokens); types: the GGML type of every GGUF tensor (the writer's plan)."""
    if method not in METHODS or method == "rtn":
        raise EdgekitError(f"unknown calibrated --method {method!r} (choose from {', '.join(METHODS[1:])})")
    t0 = time.perf_counter()
    ckpt = open_checkpoint(hf_dir)
    where = str(Path(hf_dir) / "config.json")
    arch = archs.get_arch(ckpt.architecture, where)
    hp = archs.HParams.from_config(ckpt.config, where)
    out = Prepared(tempfile.TemporaryDirectory(prefix="edgekit-calib-"))
    use_gptq, use_awq = "gptq" in method, "awq" in method

    def to_gguf(gname: str, arr: np.ndarray) -> np.ndarray:
        kind = gname.split(".")[-2]
        heads = {"attn_q": hp.n_head, "attn_k": hp.n_head_kv}.get(kind) if arch.permute_qk else None
        return archs.permute_rope_rows(arr, heads) if heads else arr

    def round_weight(gname: str, w: np.ndarray, h: np.ndarray) -> np.ndarray | None:
        """Store gname's ggml rows; returns the dequantized weight (None if its type is not calibrated)."""
        qtype = types[gname]
        if qtype not in GPTQ_TYPES:
            return None
        data = gptq(w, h, qtype) if use_gptq else rtn(w, h, qtype)
        out.put(gname, to_gguf(gname, data))
        return dequantize(data, qtype)

    def on_layer(layer: Layer) -> None:
        import torch

        def gname(module: str, what: str = "weight") -> str:
            return arch.gguf_name(f"{layer.prefix}{module}.{what}")

        changed: set[str] = set()
        if use_awq:
            for prev, names in awq.groups(layer.module):
                st = layer.stats[names[0]]
                ws = [layer.module.get_submodule(n).weight.detach().numpy() for n in names]
                s = awq.search(ws, [types[gname(n)] for n in names], st.hessian, st.abs_mean)
                awq.fold(layer.module, prev, names, s)
                for n in names:  # the linears now read x / s
                    layer.stats[n].hessian = layer.stats[n].hessian / np.outer(s, s)
                    layer.stats[n].abs_sum = layer.stats[n].abs_sum / s
                changed |= {prev, *names}
        for name, mod in layer.linears().items():
            w = mod.weight.detach().numpy().astype(np.float32)
            wq = round_weight(gname(name), w, layer.stats[name].hessian)
            if wq is not None:
                with torch.no_grad():
                    mod.weight.copy_(torch.from_numpy(wq))
            elif name in changed:
                out.put(gname(name), to_gguf(gname(name), w))
            if name in changed and mod.bias is not None:
                out.put(gname(name, "bias"), to_gguf(gname(name, "bias"), mod.bias.detach().numpy().copy()))
        for name in changed - set(layer.linears()):  # norms that absorbed 1/s
            out.put(gname(name), layer.module.get_submodule(name).weight.detach().numpy().copy())

    try:
        windows = text_windows(Path(hf_dir), calib, ctx, max_windows)
        head = walk(Path(hf_dir), windows, on_layer, progress=progress)["lm_head"]
        name = "token_embd.weight" if hp.tie_embeddings else "output.weight"
        w = ckpt.read("model.embed_tokens.weight" if hp.tie_embeddings else "lm_head.weight")
        round_weight(name, w, head.hessian)
    except BaseException:
        out.close()
        raise
    out.seconds, out.peak_rss = time.perf_counter() - t0, peak_rss_bytes()
    return out
