"""Structured pruning: a smaller *dense* Hugging Face model, with fewer FFN channels, attention heads and layers.

The output is a standard checkpoint of the same architecture (the same counts in every layer), so
transformers loads it and edgekit's GGUF/.pte exporters convert it like any other model.

What gets ranked, and how (computed once, on the unpruned model, as Minitron does):

* FFN channel j (a row of gate/up, a column of down): the mean |activation| of the intermediate
  (the input of down_proj) over calibration tokens -- Minitron's activation importance (Muralidharan
  et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation").
* KV group g (one key/value head and the query heads that share it, so GQA stays GQA): the mean L2
  norm of each query head's attention output (its slice of o_proj's input), summed over the group
  -- Minitron's head importance, taken per group.
* Layer: ShortGPT's block influence (Men et al. 2024), 1 - cos(input, output) of the layer's hidden
  states averaged over tokens; the layers that change their input least are dropped.

importance="weight" needs no data: magnitude ranking (L2 norms of the weights that read and write a
channel or head, as in norm-based filter pruning, Li et al. 2017); depth then drops the deepest
layers but the last, which Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper
Layers") and ShortGPT both find to be the most redundant.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.converters.archs import ARCHITECTURES
from edgekit.converters.compress.model_dir import check_source, save_like_source, write_record
from edgekit.errors import EdgekitError
from edgekit.io.hf import load_config, load_model
from edgekit.io.output import atomic_dir, check_output_dir
from edgekit.io.text import text_windows
from edgekit.quiet import quiet_transformers

IMPORTANCE = ("activation", "weight")
FFN_MULTIPLE = 32  # kept FFN widths stay a multiple of this where possible: friendlier to quant blocks and kernels



@dataclass
class PruneConfig:
    """What to remove: fractions of FFN channels and attention heads, and a number of whole layers."""

    ffn: float = 0.0                # fraction of FFN intermediate channels to remove, in [0, 1)
    heads: float = 0.0              # fraction of attention heads to remove (whole KV groups), in [0, 1)
    layers: int = 0                 # whole decoder layers to drop
    importance: str = "activation"  # "activation" (needs data) or "weight" (weight norms, no data)
    data: list[Path] = field(default_factory=list)  # calibration text files / directories
    max_tokens: int = 8192          # calibration tokens at most
    ctx: int = 256                  # tokens per calibration window
    seed: int = 0                   # shuffles the calibration documents before the token budget is taken

    def check(self) -> None:
        for name in ("ffn", "heads"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise EdgekitError(f"--{name} must be a fraction in [0, 1) (the part to remove), got {v}")
        if self.layers < 0:
            raise EdgekitError(f"--layers must be >= 0 (layers to drop), got {self.layers}")
        if self.importance not in IMPORTANCE:
            raise EdgekitError(f"importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}")
        if self.importance == "activation" and self.wants_pruning and not self.data:
            raise EdgekitError("activation importance needs calibration text (--data FILE|DIR); "
                               "or use --importance weight")
        if self.max_tokens < 2 or self.ctx < 2:
            raise EdgekitError("max_tokens and ctx must be at least 2")

    @property
    def wants_pruning(self) -> bool:
        return self.ffn > 0 or self.heads > 0 or self.layers > 0


@dataclass
class PruneReport:
    source: Path
    output: Path
    arch: str
    importance: str
    params_before: int
    params_after: int
    ffn: tuple[int, int]            # intermediate size before, after
    heads: tuple[int, int]          # query heads before, after
    kv_heads: tuple[int, int]
    layers: tuple[int, int]
    kept_layers: list[int]          # source layer indices, in order
    kept_ffn: dict[int, list[int]]  # source layer -> kept FFN channels (source numbering)
    kept_groups: dict[int, list[int]]  # source layer -> kept KV groups (= kept KV heads)
    seconds: float

    def summary(self) -> str:
        return (f"pruned {self.source} -> {self.output}: {self.params_before / 1e6:.2f}M -> "
                f"{self.params_after / 1e6:.2f}M params ({100 * self.params_after / self.params_before:.1f} %); "
                f"ffn {self.ffn[0]}->{self.ffn[1]}, heads {self.heads[0]}->{self.heads[1]} "
                f"(kv {self.kv_heads[0]}->{self.kv_heads[1]}), layers {self.layers[0]}->{self.layers[1]}; "
                f"{self.importance} importance, {self.seconds:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"], d["output"] = str(self.source), str(self.output)
        return d


@dataclass
class _Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int

    @property
    def group(self) -> int:  # query heads per KV head
        return self.heads // self.kv_heads


# ---------------------------------------------------------------------------------------------
# The verb


def prune(source_dir: str | Path, output_dir: str | Path, cfg: PruneConfig) -> PruneReport:
    """Write a pruned copy of the HF model in source_dir to output_dir (new or empty; written atomically)."""
    t0 = time.perf_counter()
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    cfg.check()
    arch = check_source(source_dir, "pruning")
    check_output_dir(output_dir)
    shape = _shape(load_config(source_dir))  # every count is checked before the weights are loaded

    keep_ffn = _keep_ffn(shape.ffn, cfg.ffn)
    keep_groups = max(1, round_half_up(shape.kv_heads * (1 - cfg.heads)))  # at least one KV group remains
    family = ARCHITECTURES[arch]
    if keep_groups < shape.kv_heads and family.fixed_heads:
        raise EdgekitError(f"--heads: {family.label} cannot lose attention heads and still run in llama.cpp "
                           "(its graph there needs heads x head_dim = hidden size); prune --ffn/--layers only")
    if cfg.layers >= shape.layers:
        raise EdgekitError(f"--layers {cfg.layers}: the model has only {shape.layers} layers (at least one must stay)")
    model = load_model(source_dir)

    need_width = keep_ffn < shape.ffn or keep_groups < shape.kv_heads
    if cfg.importance == "activation" and cfg.wants_pruning:
        ffn_imp, group_imp, layer_imp = _activation_importance(model, source_dir, shape, cfg)
    else:
        ffn_imp, group_imp = _weight_importance(model, shape, arch) if need_width else ({}, {})
        # Deeper is less important, but the last layer is kept first (see the module docstring).
        layer_imp = [float(shape.layers - i) for i in range(shape.layers)]
        layer_imp[-1] = float(shape.layers + 1)

    kept_layers = sorted(_top(layer_imp, shape.layers - cfg.layers))
    kept_ffn = {i: sorted(_top(ffn_imp[i], keep_ffn)) if keep_ffn < shape.ffn else list(range(shape.ffn))
                for i in kept_layers}
    kept_groups = {i: sorted(_top(group_imp[i], keep_groups)) if keep_groups < shape.kv_heads
                   else list(range(shape.kv_heads)) for i in kept_layers}

    state = _sliced_state(model, shape, arch, kept_layers, kept_ffn, kept_groups)
    new_cfg = _new_config(model.config, shape, len(kept_layers), keep_ffn, keep_groups, kept_layers)
    params_before = sum(p.numel() for p in model.parameters())
    del model

    report = PruneReport(
        source=source_dir, output=output_dir, arch=arch, importance=cfg.importance if cfg.wants_pruning else "none",
        params_before=params_before, params_after=0, ffn=(shape.ffn, keep_ffn),
        heads=(shape.heads, keep_groups * shape.group), kv_heads=(shape.kv_heads, keep_groups),
        layers=(shape.layers, len(kept_layers)), kept_layers=kept_layers, kept_ffn=kept_ffn,
        kept_groups=kept_groups, seconds=0.0)
    report.params_after = _write(source_dir, output_dir, new_cfg, state, report)
    report.seconds = time.perf_counter() - t0
    return report


def _keep_ffn(n: int, frac: float) -> int:
    """FFN channels to keep: a multiple of FFN_MULTIPLE when the width allows it, never zero."""
    if frac == 0:
        return n
    want = n * (1 - frac)
    if n >= 2 * FFN_MULTIPLE:
        return min(n, max(FFN_MULTIPLE, round_half_up(want / FFN_MULTIPLE) * FFN_MULTIPLE))
    return max(1, round_half_up(want))


def round_half_up(x: float) -> int:
    """x rounded to the nearest integer, halves up: a tie keeps more of the model (round() would go to even)."""
    return math.floor(x + 0.5)


def _top(scores, k: int) -> list[int]:
    """Indices of the k largest scores (ties: the lower index wins, so results are deterministic)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[:k]


# ---------------------------------------------------------------------------------------------
# Checks and loading


def _shape(c) -> _Shape:
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    return _Shape(layers=int(c.num_hidden_layers), hidden=int(c.hidden_size), heads=heads, kv_heads=kv,
                  head_dim=head_dim, ffn=int(c.intermediate_size))


# ---------------------------------------------------------------------------------------------
# Importance


def _activation_importance(model, source_dir: Path, shape: _Shape, cfg: PruneConfig):
    """Per layer: FFN channel scores, KV group scores; and ShortGPT block influence per layer."""
    import torch

    windows = text_windows(source_dir, cfg.data, cfg.ctx, max(1, cfg.max_tokens // cfg.ctx), seed=cfg.seed)

    n = shape.layers
    ffn_sum = [torch.zeros(shape.ffn, dtype=torch.float64) for _ in range(n)]
    head_sum = [torch.zeros(shape.heads, dtype=torch.float64) for _ in range(n)]
    bi_sum = [0.0] * n
    tokens = 0
    layer_in: dict[int, torch.Tensor] = {}
    hooks = []

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1, x.shape[-1]).double()

    def on_down(i: int):
        def hook(_m, args):
            ffn_sum[i].add_(flat(args[0]).abs().sum(0))
        return hook

    def on_o(i: int):
        def hook(_m, args):
            x = flat(args[0]).reshape(-1, shape.heads, shape.head_dim)
            head_sum[i].add_(x.norm(dim=-1).sum(0))
        return hook

    def on_layer_in(i: int):
        def hook(_m, args, kwargs):
            layer_in[i] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    def on_layer_out(i: int):
        def hook(_m, _args, _kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(flat(layer_in.pop(i)), flat(y), dim=-1)
            bi_sum[i] += float((1 - cos).sum())
        return hook

    for i, layer in enumerate(model.model.layers):
        hooks += [layer.mlp.down_proj.register_forward_pre_hook(on_down(i)),
                  layer.self_attn.o_proj.register_forward_pre_hook(on_o(i)),
                  layer.register_forward_pre_hook(on_layer_in(i), with_kwargs=True),
                  layer.register_forward_hook(on_layer_out(i), with_kwargs=True)]
    try:
        with torch.no_grad():
            for w in windows:
                model(torch.tensor([w]))
                tokens += len(w)
    finally:
        for h in hooks:
            h.remove()
    ffn_imp = {i: (ffn_sum[i] / tokens).tolist() for i in range(n)}
    group_imp = {i: (head_sum[i] / tokens).reshape(shape.kv_heads, shape.group).sum(1).tolist() for i in range(n)}
    return ffn_imp, group_imp, [b / tokens for b in bi_sum]


def _weight_importance(model, shape: _Shape, arch: str):
    """Magnitude fallback: a channel/head scores the product of the norms of the weights that write and read it."""
    ffn_imp, group_imp = {}, {}
    for i, layer in enumerate(model.model.layers):
        gate, up, down = _ffn_weights(layer, shape, arch)
        ffn_imp[i] = (gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)).tolist()
        _q, _k, v = _qkv_weights(layer, shape, arch)
        o = layer.self_attn.o_proj.weight.detach()
        o_heads = o.reshape(shape.hidden, shape.heads, shape.head_dim).norm(dim=(0, 2))
        v_heads = v.reshape(shape.kv_heads, shape.head_dim, shape.hidden).norm(dim=(1, 2))
        group_imp[i] = (o_heads.reshape(shape.kv_heads, shape.group).sum(1) * v_heads).tolist()
    return ffn_imp, group_imp


def _ffn_weights(layer, shape: _Shape, arch: str):
    mlp = layer.mlp
    if ARCHITECTURES[arch].fused:
        gate_up = mlp.gate_up_proj.weight.detach()  # rows: gate, then up (Phi3MLP chunks it in this order)
        return gate_up[: shape.ffn], gate_up[shape.ffn:], mlp.down_proj.weight.detach()
    return mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach()


def _qkv_weights(layer, shape: _Shape, arch: str):
    att = layer.self_attn
    if ARCHITECTURES[arch].fused:
        qkv = att.qkv_proj.weight.detach()  # rows: q (heads), k (kv heads), v (kv heads)
        nq, nk = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        return qkv[:nq], qkv[nq:nq + nk], qkv[nq + nk:]
    return att.q_proj.weight.detach(), att.k_proj.weight.detach(), att.v_proj.weight.detach()


# ---------------------------------------------------------------------------------------------
# Slicing


def _sliced_state(model, shape: _Shape, arch: str, kept_layers: list[int], kept_ffn: dict[int, list[int]],
                  kept_groups: dict[int, list[int]]) -> dict[str, Any]:
    """The pruned model's state dict: non-layer tensors as they are, kept layers renumbered and sliced."""
    import torch

    hd, r = shape.head_dim, shape.group
    renumber = {old: new for new, old in enumerate(kept_layers)}
    out: dict[str, torch.Tensor] = {}
    prefix = "model.layers."
    for name, t in model.state_dict().items():
        if not name.startswith(prefix):
            out[name] = t.clone()
            continue
        idx, rest = name[len(prefix):].split(".", 1)
        old = int(idx)
        if old not in renumber:
            continue
        ch = torch.tensor(kept_ffn[old])
        groups = kept_groups[old]
        kv_rows = torch.tensor([g * hd + d for g in groups for d in range(hd)])
        q_rows = torch.tensor([(g * r + h) * hd + d for g in groups for h in range(r) for d in range(hd)])
        nq, nk = shape.heads * hd, shape.kv_heads * hd
        if rest.startswith("self_attn.q_proj."):
            t = t[q_rows]
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            t = t[kv_rows]
        elif rest == "self_attn.qkv_proj.weight":
            t = t[torch.cat([q_rows, nq + kv_rows, nq + nk + kv_rows])]
        elif rest == "self_attn.o_proj.weight":
            t = t[:, q_rows]
        elif rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            t = t[ch]
        elif rest == "mlp.gate_up_proj.weight":
            t = t[torch.cat([ch, shape.ffn + ch])]
        elif rest == "mlp.down_proj.weight":
            t = t[:, ch]
        elif "norm" not in rest:  # q_norm/k_norm (per head_dim) and layer norms stay as they are
            raise EdgekitError(f"pruning does not know how to slice {name!r} ({arch})")
        out[f"{prefix}{renumber[old]}.{rest}"] = t.contiguous().clone()
    return out


def _new_config(c, shape: _Shape, n_layers: int, ffn: int, groups: int, kept_layers: list[int]):
    import copy

    new = copy.deepcopy(c)
    new.num_hidden_layers = n_layers
    new.intermediate_size = ffn
    new.num_attention_heads = groups * shape.group
    new.num_key_value_heads = groups
    new.head_dim = shape.head_dim  # explicit: hidden/heads no longer gives it once heads are removed
    layer_types = getattr(c, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == shape.layers:
        new.layer_types = [layer_types[i] for i in kept_layers]
    return new


# ---------------------------------------------------------------------------------------------
# Writing


def _write(source_dir: Path, output_dir: Path, new_cfg, state: dict[str, Any], report: PruneReport) -> int:
    """Build the pruned model (a strict state-dict load checks every shape), save it to a temp dir, rename."""
    import torch
    from transformers import AutoModelForCausalLM

    with atomic_dir(output_dir) as tmp:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_config(new_cfg, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and new_cfg.tie_word_embeddings)]
        if missing or unexpected:
            raise EdgekitError(f"pruned weights do not fit the pruned config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        save_like_source(model, source_dir, tmp)
        params = sum(p.numel() for p in model.parameters())
        d = {k: v for k, v in report.to_dict().items() if k != "seconds"} | {"params_after": params}
        write_record(tmp / "edgekit_prune.json", d)
    return params
