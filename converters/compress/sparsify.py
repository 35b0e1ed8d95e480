"""Unstructured and N:M (semi-structured) pruning: zero individual weights of the decoder's linear layers.

Scores (the lowest go):

* magnitude: |W_ij|.
* wanda: |W_ij| * ||X_j||_2, where ||X_j|| is the L2 norm of the layer's input feature j over every calibration
  token (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"). A weight that
  reads a loud feature is worth more than an equally large one that reads a quiet feature; no weight update.

Which weights compete (`scope`): "row" -- every output row loses the same fraction, as Wanda does (and finds
much better for LLMs than a per-matrix threshold); "layer" -- one threshold per matrix; "global" -- one threshold
over all targeted matrices. An N:M `pattern` (e.g. "2:4") keeps at most N of every M consecutive weights along
each row's input dimension, i.e. sparsity 1 - N/M; the layout NVIDIA's sparse tensor cores accelerate.

Targets: every nn.Linear inside the decoder layers (q/k/v/o or fused qkv, gate/up/down or fused gate_up); never
the embeddings or lm_head. The output is a standard Hugging Face checkpoint of the same architecture and shapes,
with the zeros in place, plus `edgekit_sparsity.json` (method, pattern, scope, sparsity per tensor and overall,
and which tensors carry masks): a fine-tune (distillation) keeps the zeros with `masks_from_dir`,
`mask_gradients` after backward and `apply_masks` after each optimizer step.

What this does and does not buy, honestly: llama.cpp and ExecuTorch's XNNPACK store and multiply the zeros
densely, so unstructured (and 2:4) sparsity gives no speed or size gain at run time today -- the files are the
size of the dense model. The benefit is accuracy per nonzero parameter compared with structured pruning (which
does shrink the model, see prune.py), and readiness for a future sparse kernel. The GGUF and .pte exporters take
the result unchanged. F32/F16/BF16 and the symmetric quant types (Q8_0, Q4_0, Q5_0, Q6_K) keep every zero a zero;
types with a per-block minimum (Q4_1, Q5_1, Q4_K, so also the q4_k_m mix) cannot represent 0 exactly and turn
almost all of them into small values (within one quantization step; measured on a 2:4 random matrix: 1-2 % stay 0).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.converters.compress.model_dir import check_source, save_like_source, write_record
from edgekit.converters.compress.prune import round_half_up
from edgekit.errors import EdgekitError
from edgekit.io.hf import load_model
from edgekit.io.output import atomic_dir, check_output_dir
from edgekit.io.text import text_windows

if TYPE_CHECKING:
    import torch

METHODS = ("magnitude", "wanda")
SCOPES = ("row", "layer", "global")
RECORD = "edgekit_sparsity.json"
_SCOPE_WORDS = {"row": "per row", "layer": "per matrix", "global": "one global threshold"}


@dataclass
class SparsifyConfig:
    """How to choose the weights to zero. With a pattern ("N:M") the sparsity is 1 - N/M and `sparsity` is unused."""

    method: str = "wanda"           # "wanda" (|W| x input norm, needs data) or "magnitude" (|W|, no data)
    sparsity: float = 0.5           # fraction of the targeted weights to zero, in [0, 1)
    pattern: str | None = None      # None (unstructured) or "N:M": at most N nonzeros in every M inputs of a row
    scope: str = "row"              # "row", "layer" or "global": which weights compete (only "row" with a pattern)
    data: list[Path] = field(default_factory=list)  # calibration text files / directories (wanda)
    max_tokens: int = 8192          # calibration tokens at most
    ctx: int = 256                  # tokens per calibration window
    seed: int = 0                   # shuffles the calibration documents before the token budget is taken

    def check(self) -> None:
        """Everything `sparsify` needs, data included."""
        self.check_values()
        if self.method == "wanda" and not self.data:
            raise EdgekitError("wanda needs calibration text (--data FILE|DIR); or use --method magnitude")

    def check_values(self) -> None:
        """The settings alone (compute_masks takes calibration windows instead of data)."""
        if self.method not in METHODS:
            raise EdgekitError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise EdgekitError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise EdgekitError(f"--sparsity must be a fraction in [0, 1) (the part to zero), got {self.sparsity}")
        if self.n_m is not None and self.scope != "row":
            raise EdgekitError(f"--scope {self.scope}: an N:M pattern applies to every row by definition; "
                               "leave --scope out")
        if self.max_tokens < 2 or self.ctx < 2:
            raise EdgekitError("max_tokens and ctx must be at least 2")

    @property
    def n_m(self) -> tuple[int, int] | None:
        """The pattern as (N, M), or None when unstructured."""
        return None if self.pattern is None else parse_pattern(self.pattern)

    @property
    def target(self) -> float:
        """The fraction of the targeted weights that will be zeroed."""
        nm = self.n_m
        return self.sparsity if nm is None else 1 - nm[0] / nm[1]


def parse_pattern(pattern: str) -> tuple[int, int]:
    """A pattern such as "2:4" as (N, M), with 0 < N < M."""
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not found or not 0 < int(found[1]) < int(found[2]):
        raise EdgekitError(f"--pattern {pattern!r}: want N:M with 0 < N < M "
                           "(e.g. 2:4 keeps at most 2 of every 4 consecutive weights)")
    return int(found[1]), int(found[2])


@dataclass
class SparsityStats:
    overall: float                  # fraction of all targeted weights that are pruned
    pruned: int
    total: int                      # targeted weights
    per_tensor: dict[str, float]    # parameter name -> fraction pruned
    pattern: str | None = None
    pattern_ok: bool | None = None  # every tensor has at most N kept in each group of M (None without a pattern)


@dataclass
class SparsifyReport:
    source: Path
    output: Path
    arch: str
    method: str
    pattern: str | None
    scope: str
    sparsity: float                 # the target
    stats: SparsityStats
    params: int                     # every parameter of the model, targeted or not
    calibration_tokens: int
    seconds: float

    def summary(self) -> str:
        how = f"{self.pattern} pattern" if self.pattern else _SCOPE_WORDS[self.scope]
        s = self.stats
        return (f"sparsified {self.source} -> {self.output}: {100 * s.overall:.1f} % of the {s.total / 1e6:.2f}M "
                f"weights in {len(s.per_tensor)} decoder linear layers zeroed ({self.method}, {how}); "
                f"{100 * s.pruned / self.params:.1f} % of all {self.params / 1e6:.2f}M params, "
                f"stored dense; {self.seconds:.1f} s")

    def record(self) -> dict[str, Any]:
        """The content of edgekit_sparsity.json."""
        s = self.stats
        return {"source": str(self.source), "arch": self.arch, "method": self.method, "pattern": self.pattern,
                "scope": None if self.pattern else self.scope, "sparsity": self.sparsity,
                "overall": round(s.overall, 6), "pruned": s.pruned, "total": s.total, "params": self.params,
                "calibration_tokens": self.calibration_tokens,
                "per_tensor": {k: round(v, 6) for k, v in s.per_tensor.items()}, "masked": list(s.per_tensor)}


# ---------------------------------------------------------------------------------------------
# The verb


def sparsify(source_dir: str | Path, output_dir: str | Path, cfg: SparsifyConfig) -> SparsifyReport:
    """Write a copy of the HF model in source_dir with weights zeroed to output_dir (new or empty; atomically)."""
    t0 = time.perf_counter()
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    cfg.check()
    arch = check_source(source_dir, "sparsify")
    check_output_dir(output_dir)
    windows = None
    if cfg.method == "wanda":  # read before the weights: bad data fails fast
        windows = text_windows(source_dir, cfg.data, cfg.ctx, max(1, cfg.max_tokens // cfg.ctx), seed=cfg.seed)
    model = load_model(source_dir)
    masks = compute_masks(model, cfg, windows)
    apply_masks(model, masks)
    pattern = None if cfg.n_m is None else "{}:{}".format(*cfg.n_m)  # as written in the record: "2:4"
    report = SparsifyReport(
        source=source_dir, output=output_dir, arch=arch, method=cfg.method, pattern=pattern, scope=cfg.scope,
        sparsity=cfg.target, stats=sparsity_stats(masks, pattern),
        params=sum(p.numel() for p in model.parameters()), calibration_tokens=sum(map(len, windows or [])),
        seconds=0.0)
    with atomic_dir(output_dir) as tmp:
        save_like_source(model, source_dir, tmp)
        write_record(tmp / RECORD, report.record())
    report.seconds = time.perf_counter() - t0
    return report


# ---------------------------------------------------------------------------------------------
# Masks (in memory: also what a fine-tune uses)


def target_linears(model) -> dict[str, torch.nn.Linear]:
    """Weight parameter name -> nn.Linear, for every linear layer inside the decoder layers."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    prefix = next((name for name, m in model.named_modules() if m is layers), None)
    if prefix is None:
        raise EdgekitError(f"{type(model).__name__}: no decoder layers at model.model.layers")
    return {f"{name}.weight": m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith(prefix + ".")}


def compute_masks(model, cfg: SparsifyConfig, windows: list[list[int]] | None) -> dict[str, torch.Tensor]:
    """Parameter name -> bool mask (True = kept) for every targeted weight. Wanda runs the model over the
    calibration windows (token id lists); magnitude ignores them. The model is not modified."""
    cfg.check_values()
    linears = target_linears(model)
    norms = None
    if cfg.method == "wanda":
        if not windows:
            raise EdgekitError("wanda needs calibration windows (token id lists); or use method magnitude")
        norms = _input_norms(model, linears, windows)

    def score(name: str) -> torch.Tensor:
        w = linears[name].weight.detach().abs()
        # float32 scores: half the memory of float64, and only near-ties could order differently.
        return w.float() if norms is None else (w.double() * norms[name]).float()

    nm = cfg.n_m
    if nm is None and cfg.scope == "global":
        names = list(linears)
        total = sum(linears[n].weight.numel() for n in names)
        kept = round_half_up(total * (1 - cfg.sparsity))
        return dict(zip(names, _drop_lowest([score(n) for n in names], total - kept), strict=True))
    return {name: _mask(name, score(name), cfg, nm) for name in linears}


def apply_masks(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    import torch

    with torch.no_grad():
        for p, keep in _masked_params(model, masks):
            p.masked_fill_(~keep, 0)


def mask_gradients(model, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradients of pruned weights in place: after backward, before optimizer.step (then apply_masks
    after the step, so that no optimizer state or weight decay can bring a pruned weight back)."""
    for p, keep in _masked_params(model, masks):
        if p.grad is not None:
            p.grad.masked_fill_(~keep, 0)


def masks_from_dir(model_dir: Path, model) -> dict[str, torch.Tensor]:
    """The masks of a model written by `sparsify` (its zeros, for the tensors edgekit_sparsity.json lists);
    {} when the directory has no such record."""
    path = Path(model_dir) / RECORD
    if not path.is_file():
        return {}
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["masked"]
        if not isinstance(names, list):
            raise TypeError("'masked' is not a list")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise EdgekitError(f"{path}: not an edgekit sparsity record ({type(e).__name__}: {e})") from None
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise EdgekitError(f"{path}: lists {missing[0]!r}, which the model does not have "
                           f"({len(missing)} such tensors; was the model changed after sparsifying?)")
    return {n: params[n].detach() != 0 for n in names}


def sparsity_stats(masks: dict[str, torch.Tensor], pattern: str | None = None) -> SparsityStats:
    """Fractions pruned per tensor and overall; with a pattern ("N:M"), whether every mask satisfies it."""
    per = {name: 1 - int(m.sum()) / m.numel() for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    pruned = sum(m.numel() - int(m.sum()) for m in masks.values())
    ok = None
    if pattern is not None:
        n, m = parse_pattern(pattern)
        ok = all(check_n_m(mask, n, m) for mask in masks.values())
    return SparsityStats(overall=pruned / total if total else 0.0, pruned=pruned, total=total, per_tensor=per,
                         pattern=pattern, pattern_ok=ok)


def check_n_m(mask: torch.Tensor, n: int, m: int, *, exact: bool = False) -> bool:
    """Every group of m consecutive input weights of every row keeps at most n (exactly n with exact=True).
    A row length that is not a multiple of m cannot satisfy the pattern."""
    if mask.dim() != 2 or mask.shape[1] % m:
        return False
    kept = (mask != 0).reshape(mask.shape[0], -1, m).sum(-1)
    return bool((kept == n).all() if exact else (kept <= n).all())


# ---------------------------------------------------------------------------------------------
# Scores and selection


def _input_norms(model, linears: dict[str, torch.nn.Linear], windows: list[list[int]]) -> dict[str, torch.Tensor]:
    """||X_j||_2 of each target's input features over all calibration tokens (sums of squares in float64)."""
    import torch

    sq = {name: torch.zeros(lin.in_features, dtype=torch.float64, device=lin.weight.device)
          for name, lin in linears.items()}

    def collect(name: str):
        def hook(_m, args):
            x = args[0].detach()
            sq[name].add_(x.reshape(-1, x.shape[-1]).double().pow(2).sum(0))
        return hook

    hooks = [lin.register_forward_pre_hook(collect(name)) for name, lin in linears.items()]
    device = next(model.parameters()).device
    training = model.training
    model.eval()  # no dropout in the statistics; the caller's mode comes back below
    try:
        with torch.no_grad():
            for w in windows:
                model(torch.tensor([w], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return {name: s.sqrt() for name, s in sq.items()}


def _mask(name: str, score: torch.Tensor, cfg: SparsifyConfig, nm: tuple[int, int] | None) -> torch.Tensor:
    """One tensor's mask, for the scopes (and patterns) that need no other tensor: ties keep the lower index."""
    rows, cols = score.shape
    if nm is not None:
        n, m = nm
        if cols % m:
            raise EdgekitError(f"--pattern {cfg.pattern}: {name} has {cols} inputs per row, not a multiple of {m}")
        return _keep_top(score.reshape(rows, cols // m, m), n).reshape(rows, cols)
    if cfg.scope == "row":
        return _keep_top(score, round_half_up(cols * (1 - cfg.sparsity)))
    return _keep_top(score.reshape(1, -1), round_half_up(score.numel() * (1 - cfg.sparsity))).reshape(rows, cols)


def _keep_top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores along the last dimension (ties: the lower index is kept)."""
    import torch

    order = torch.argsort(score, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(score, dtype=torch.bool)
    return keep.scatter_(-1, order[..., :k], True)


def _drop_lowest(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks dropping exactly the k lowest of the non-negative float32 scores of all tensors together (ties at the
    threshold: the later ones go, in tensor then index order). No concatenated copy or sort of all the scores (a
    model's worth): the threshold is found by bisecting int32 bit patterns, whose order is that of the floats."""
    import torch

    if k <= 0:
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]
    bits = [s.contiguous().view(torch.int32) for s in scores]
    lo, hi = 0, max(int(b.max()) for b in bits)
    while lo < hi:  # the smallest t with at least k scores <= t
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if sum(int((b <= mid).sum()) for b in bits) >= k else (mid + 1, hi)
    ties_to_drop = k - sum(int((b < lo).sum()) for b in bits)
    masks = []
    for b in reversed(bits):
        keep = b > lo
        tie = (b == lo).flatten().nonzero().squeeze(1)
        dropped = min(ties_to_drop, len(tie))
        keep.view(-1)[tie[: len(tie) - dropped]] = True
        ties_to_drop -= dropped
        masks.append(keep)
    return masks[::-1]


def _masked_params(model, masks: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        p = params.get(name)
        if p is None:
            raise EdgekitError(f"mask for {name!r}: the model has no such parameter")
        if p.shape != keep.shape:
            raise EdgekitError(f"mask for {name!r}: shape {tuple(keep.shape)}, the weight is {tuple(p.shape)}")
        yield p, keep.to(p.device)
