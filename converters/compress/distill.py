"""Knowledge distillation: train a smaller student to imitate a frozen teacher.

Loss per token (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"):

    (1 - alpha) * CE(student, next token) + alpha * T^2 * KL(teacher_T || student_T)

where _T means softmax(logits / T); the T^2 keeps the soft term's gradients on the same scale whatever T is.
Two optional terms transfer what happens inside the layers, for pairs (student layer i, teacher layer j)
of a layer map (by default each student layer takes the teacher layer at the same relative depth):

* beta  * representation loss: MSE between the student layer's output, through a learned linear projection
  when the widths differ (as TinyBERT does), and the teacher layer's output, divided by the mean square of
  the teacher's (per sequence) so that beta means the same at every depth and model size;
* gamma * attention transfer: KL between the teacher's and the student's attention distributions of each
  query, head by head when the head counts match, else averaged over heads (MiniLM, TinyBERT).

The teacher is frozen and in eval mode, optionally in bf16/fp16 to save memory. The student starts from a
directory (typically the pruned teacher, as Minitron does) or from a config (random init). The text is
tokenized with the teacher's tokenizer and packed into windows of seq_len tokens, each starting with BOS.
With alpha = beta = gamma = 0 this is plain training on hard labels, and the teacher is not run at all.

Scaling out: under `torchrun`, each process takes its share of every global batch (DDP averages the
gradients), so N processes give the same updates as one process with the same global batch. Gradient
accumulation splits each process's share into micro-batches. Only rank 0 writes checkpoints and output.
Resuming reloads the newest checkpoint (weights, optimizer, schedule, step) and continues with the next
step on exactly the batches an uninterrupted run would have seen: the batch order depends only on the
seed and the step.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.converters.compress import distributed as dist
from edgekit.converters.compress.model_dir import check_source, save_like_source, write_record
from edgekit.converters.compress.sparsify import apply_masks, mask_gradients, masks_from_dir, sparsity_stats
from edgekit.converters.compress.training import (
    SCHEDULES,
    heldout_stats,
    kl_divergence,
    lr_schedule,
    train_heldout_windows,
)
from edgekit.errors import EdgekitError
from edgekit.io.hf import load_model
from edgekit.io.output import atomic_dir, check_output_dir, temp_path
from edgekit.io.text import text_windows
from edgekit.quiet import quiet_transformers

TEACHER_DTYPES = ("float32", "bfloat16", "float16")
PARALLEL = ("ddp", "fsdp")
CHECKPOINT_PREFIX = "step-"
# Options that change the training trajectory: a checkpoint written under other values cannot be resumed.
_TRAJECTORY = ("data", "steps", "seq_len", "batch_size", "lr", "schedule", "warmup", "min_lr_ratio",
               "weight_decay", "clip", "alpha", "temperature", "beta", "gamma", "layer_map", "teacher_dtype",
               "heldout_windows", "eval_data", "seed")


@dataclass
class DistillConfig:
    data: list[Path]                    # training text: files, or directories of .txt/.py files
    # Where the student starts: an HF model directory (e.g. the pruned teacher), or a dict of config.json
    # overrides applied to the teacher's config for a freshly initialised student (e.g. fewer layers).
    student: str | Path | dict[str, Any] | None = None
    steps: int = 1000                   # optimizer steps
    seq_len: int = 256                  # tokens per packed sequence (BOS included)
    batch_size: int = 8                 # sequences per optimizer step, over all processes (the global batch)
    micro_batch: int = 0                # sequences per forward pass in each process; 0 = its whole share
    lr: float = 1e-3                    # peak AdamW learning rate
    schedule: str = "cosine"            # after warmup: cosine, linear or constant
    warmup: float = 0.05                # fraction of the steps with a linear warmup
    min_lr_ratio: float = 0.1           # the decay ends at lr x this
    weight_decay: float = 0.0
    clip: float = 1.0                   # gradient-norm clipping; 0 = off
    alpha: float = 0.5                  # weight of the soft-target term (0 = hard labels only)
    temperature: float = 2.0
    beta: float = 0.0                   # weight of the representation (hidden-state) loss
    gamma: float = 0.0                  # weight of the attention-transfer loss
    layer_map: list[tuple[int, int]] | None = None  # (student layer, teacher layer) pairs; None = uniform
    teacher_dtype: str = "float32"      # float32, bfloat16 or float16
    parallel: str = "ddp"               # under torchrun: "ddp" (a full replica per process) or "fsdp" (student
                                        # parameters, gradients and optimizer state sharded, and the teacher too)
    heldout_windows: int = 16           # windows kept out of training (or taken from eval_data) for perplexity
    eval_data: list[Path] = field(default_factory=list)  # held-out text; default: the first windows of data
    checkpoint_every: int = 100         # steps between checkpoints (with a checkpoint directory); 0 = only at the end
    keep_checkpoints: int = 2           # newest checkpoints kept
    seed: int = 0

    def check(self) -> None:
        """Bad options and missing data are reported before any model is loaded."""
        for path in [*self.data, *self.eval_data]:
            if not Path(path).exists():
                raise EdgekitError(f"{path}: data not found")
        if not self.data:
            raise EdgekitError("distillation needs training text (--data FILE|DIR)")
        if self.student is not None and not isinstance(self.student, str | Path | dict):
            raise EdgekitError(f"distill student must be a model directory or a dict of config overrides, got "
                               f"{type(self.student).__name__}")
        for name in ("steps", "batch_size", "heldout_windows", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise EdgekitError(f"distill {name} must be at least 1, got {getattr(self, name)}")
        for name in ("micro_batch", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise EdgekitError(f"distill {name} must be >= 0, got {getattr(self, name)}")
        if self.seq_len < 8:
            raise EdgekitError(f"distill seq_len must be at least 8 tokens, got {self.seq_len}")
        if not self.lr > 0 or not self.temperature > 0:
            raise EdgekitError(f"distill lr and temperature must be positive (lr {self.lr}, T {self.temperature})")
        if not 0 <= self.alpha <= 1:
            raise EdgekitError(f"distill alpha must be in [0, 1], got {self.alpha}")
        if self.beta < 0 or self.gamma < 0 or self.weight_decay < 0 or self.clip < 0:
            raise EdgekitError("distill beta, gamma, weight_decay and clip must be >= 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise EdgekitError("distill warmup must be in [0, 1) and min_lr_ratio in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise EdgekitError(f"distill schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.parallel not in PARALLEL:
            raise EdgekitError(f"distill parallel must be one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise EdgekitError(f"teacher_dtype must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}")
        world = dist.world_size()
        share = self.batch_size // world
        if self.batch_size % world or (self.micro_batch and share % self.micro_batch):
            raise EdgekitError(f"batch_size {self.batch_size} must split evenly over {world} process(es) and "
                               f"then into micro-batches of {self.micro_batch or share}")

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0 or self.beta > 0 or self.gamma > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"], d["eval_data"] = [str(p) for p in self.data], [str(p) for p in self.eval_data]
        d["student"] = str(self.student) if isinstance(self.student, Path) else self.student
        d["layer_map"] = [list(p) for p in self.layer_map] if self.layer_map is not None else None
        return d


@dataclass
class DistillReport:
    output: Path
    steps: int
    start_step: int                     # 0, or where a resumed run picked up
    tokens: int                         # tokens trained on in all steps (global batch x seq_len x steps)
    seconds: float                      # this run's training time (since the resume, if resumed)
    params_teacher: int
    params_student: int
    heldout_tokens: int
    ppl_teacher: float
    ppl_before: float                   # the student before training
    ppl_after: float
    kl_before: float                    # mean KL(teacher || student) per held-out token
    kl_after: float
    world_size: int
    sparsity: float | None = None       # fraction of masked weights kept at zero, when the student is sparse
    losses: list[float] = field(default_factory=list)  # total loss per step (this run)

    def summary(self) -> str:
        resumed = f" (resumed at step {self.start_step + 1})" if self.start_step else ""
        tok_s = (self.steps - self.start_step) / max(self.steps, 1) * self.tokens / max(self.seconds, 1e-9)
        sparse = f"; sparsity {100 * self.sparsity:.1f} % (zeros kept)" if self.sparsity is not None else ""
        return (f"distilled {self.params_teacher / 1e6:.2f}M -> {self.params_student / 1e6:.2f}M params: "
                f"{self.steps} steps{resumed}, {self.tokens:,} tokens, {self.seconds:.0f} s ({tok_s:,.0f} tok/s"
                f"{f' on {self.world_size} processes' if self.world_size > 1 else ''}); held-out PPL "
                f"(on {self.heldout_tokens:,} tokens): teacher {self.ppl_teacher:.3f}, student "
                f"{self.ppl_before:.3f} -> {self.ppl_after:.3f}; KL to teacher {self.kl_before:.4f} -> "
                f"{self.kl_after:.4f}{sparse} -> {self.output}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"output": str(self.output)}


# ---------------------------------------------------------------------------------------------
# Losses


def kd_loss(student_logits: Any, teacher_logits: Any | None, ids: Any, alpha: float,
            temperature: float) -> tuple[Any, Any, Any]:
    """(loss, CE, KL) for logits [batch, seq, vocab] and token ids [batch, seq]: CE on the next token at
    every position but the last, KL(teacher_T || student_T) x T^2 at every position, both token means."""
    import torch

    ce = torch.nn.functional.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    if teacher_logits is None or alpha == 0:
        return ce, ce, torch.zeros_like(ce)
    t = temperature
    kl = kl_divergence(torch.log_softmax(teacher_logits.float() / t, -1),
                       torch.log_softmax(student_logits.float() / t, -1)) * t * t
    return (1 - alpha) * ce + alpha * kl, ce, kl


def representation_loss(student_hidden: Any, teacher_hidden: Any, projection: Any) -> Any:
    """Per sequence MSE(projection(student), teacher) / mean(teacher^2), averaged over the batch: 0 for a perfect
    match, 1 for predicting zeros. Per sequence, so that the mean over a batch equals the mean over its parts
    (gradient accumulation and data parallelism then give the same updates as one big batch)."""
    t = teacher_hidden.float()
    err = ((projection(student_hidden).float() - t) ** 2).flatten(1).mean(1)
    return (err / (t ** 2).flatten(1).mean(1).clamp_min(1e-12)).mean()


def attention_loss(student_attn: Any, teacher_attn: Any) -> Any:
    """Mean over queries of KL(teacher || student) of attention weights [batch, heads, q, k]; heads are
    averaged first when the two models have different head counts."""
    import torch

    s, t = student_attn.float(), teacher_attn.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    return (torch.special.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))).sum(-1).mean()


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Student layer i -> teacher layer at the same relative depth, the last to the last."""
    return [(i, math.floor((i + 1) * n_teacher / n_student + 0.5) - 1) for i in range(n_student)]


# ---------------------------------------------------------------------------------------------
# The verb


def distill(teacher_dir: str | Path, output_dir: str | Path, cfg: DistillConfig, *,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            log: Any = None, progress: bool = True) -> DistillReport:
    """Train cfg.student against the teacher in teacher_dir; write it as an HF model to output_dir (rank 0).
    With checkpoint_dir, checkpoints are written there and `resume` continues from the newest."""
    import torch

    t0 = time.perf_counter()
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    say = log if (log and dist.is_main()) else (lambda _msg: None)
    cfg.check()
    student = cfg.student
    if student is None:
        raise EdgekitError("distillation needs a student: a model directory, or config overrides of the teacher's "
                           "(--student num_hidden_layers=4,...)")
    check_source(teacher_dir, "distillation")
    if isinstance(student, str | Path):
        check_source(Path(student), "distillation")
    if dist.is_main():
        check_output_dir(output_dir)
    existing = _checkpoints(ckpt_dir)
    if existing and not resume:
        raise EdgekitError(f"{ckpt_dir}: holds checkpoints of an earlier run; resume it (--resume) or remove them")
    distributed = dist.init()
    device = dist.device()
    torch.manual_seed(cfg.seed)

    heldout_from_data = 0 if cfg.eval_data else cfg.heldout_windows
    train, heldout = train_heldout_windows(teacher_dir, cfg.data, cfg.seq_len, heldout_from_data,
                                           cfg.steps * cfg.batch_size, "distillation")
    if cfg.eval_data:
        heldout = text_windows(teacher_dir, cfg.eval_data, cfg.seq_len, cfg.heldout_windows)
    data = torch.tensor(train, dtype=torch.int32)  # 4 bytes a token; the Python lists would take ~9x that
    del train

    eager = cfg.gamma > 0  # attention weights exist only in the eager attention implementation
    teacher = load_model(teacher_dir, dtype=getattr(torch, cfg.teacher_dtype),
                         attention="eager" if eager else None).to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    model, student_dir = _student(teacher_dir, teacher, student, eager)
    model.to(device)
    masks = masks_from_dir(student_dir, model) if student_dir else {}  # a sparse student keeps its zeros
    pairs = cfg.layer_map if cfg.layer_map is not None else uniform_layer_map(
        model.config.num_hidden_layers, teacher.config.num_hidden_layers)
    _check_pairs(pairs, model.config.num_hidden_layers, teacher.config.num_hidden_layers)
    before = None  # held-out scores before training: measured now (unsharded), or kept in the checkpoint
    if not existing:
        say(f"distill: measuring teacher and student on {len(heldout)} held-out windows")
        model.eval()
        ppl_teacher, _ = heldout_stats(teacher, teacher, heldout)
        ppl_before, kl_before = heldout_stats(model, teacher, heldout)
        before = {"ppl_teacher": ppl_teacher, "ppl_before": ppl_before, "kl_before": kl_before}
    wrapper = _make_student(model, teacher, pairs if cfg.beta > 0 else [], pairs if cfg.gamma > 0 else [], cfg)
    wrapper.to(device)
    fsdp = distributed and cfg.parallel == "fsdp"
    if fsdp:
        if masks:
            raise EdgekitError("a sparse student cannot train under fsdp (its masks are not sharded); use ddp")
        _shard(teacher, teacher.model.layers)
        _shard(wrapper, model.model.layers)
    trainee = torch.nn.parallel.DistributedDataParallel(wrapper) if distributed and not fsdp else wrapper

    opt = torch.optim.AdamW(wrapper.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.steps, cfg.warmup, cfg.schedule,
                                                               cfg.min_lr_ratio))
    fingerprint = _fingerprint(cfg, teacher_dir, student)
    start = 0
    if existing:
        start, before = _load_checkpoint(existing[-1], fingerprint, wrapper, opt, sched)
        say(f"distill: resuming from {existing[-1]} at step {start + 1} of {cfg.steps}")

    heldout_tokens = len(heldout) * (cfg.seq_len - 1)

    world = dist.world_size()
    share = cfg.batch_size // world
    micro = cfg.micro_batch or share
    accum = share // micro
    losses: list[float] = []
    model.train()
    t_train = time.perf_counter()
    bar = _bar(cfg.steps, start, progress and dist.is_main())
    for step in range(start, cfg.steps):
        sums = [0.0] * 5
        for k in range(accum):
            first = step * cfg.batch_size + dist.rank() * share + k * micro
            ids = data[_batch_rows(first, micro, len(data), cfg.seed)].long().to(device)
            sync = k == accum - 1 or not distributed  # reduce gradients over processes once per step
            if fsdp:
                wrapper.set_requires_gradient_sync(sync)
            with trainee.no_sync() if not sync and not fsdp else nullcontext():
                parts = trainee(ids)
                (parts[0] / accum).backward()
            sums = [s + float(p.detach()) / accum for s, p in zip(sums, parts, strict=True)]
        if masks:
            mask_gradients(model, masks)
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(wrapper.parameters(), cfg.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if masks:
            apply_masks(model, masks)
        loss, ce, kl, rep, att = dist.mean(sums)
        losses.append(loss)
        done = step + 1
        tok_s = (done - start) * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t_train)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.3f} ce {ce:.3f} kl {kl:.3f}" + (f" rep {rep:.3f}" if cfg.beta else "")
                            + (f" att {att:.3f}" if cfg.gamma else "") + f" {tok_s:,.0f} tok/s")
        if bar.disable and (done % max(1, cfg.steps // 20) == 0 or done == cfg.steps):
            say(f"distill: step {done}/{cfg.steps} loss {loss:.4f} (ce {ce:.4f}, kl {kl:.4f}) "
                f"lr {sched.get_last_lr()[0]:.2e} {tok_s:,.0f} tok/s")
        if ckpt_dir is not None and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                     or done == cfg.steps):
            model_state, optim_state = _full_state(wrapper, opt)  # collective under fsdp: every rank calls it
            if dist.is_main():
                _save_checkpoint(ckpt_dir, done, fingerprint, model_state, optim_state, sched, before,
                                 cfg.keep_checkpoints)
            dist.barrier()
    bar.close()
    seconds = time.perf_counter() - t_train

    if fsdp:
        model = _unsharded(model).to(device)  # the plain model scores and saves the same on every rank
    model.eval()
    ppl_after, kl_after = heldout_stats(model, teacher, heldout)
    sparsity = sparsity_stats(masks).overall if masks else None
    params_teacher = sum(p.numel() for p in teacher.parameters())
    del teacher, opt
    report = DistillReport(
        output=output_dir, steps=cfg.steps, start_step=start, tokens=cfg.steps * cfg.batch_size * cfg.seq_len,
        seconds=seconds, params_teacher=params_teacher, params_student=sum(p.numel() for p in model.parameters()),
        heldout_tokens=heldout_tokens, ppl_after=ppl_after, kl_after=kl_after, world_size=world,
        sparsity=sparsity, losses=losses, **before)
    if dist.is_main():
        _write(model.to("cpu"), teacher_dir, student_dir, output_dir, cfg, report)
    dist.barrier()
    say(f"distill: done in {time.perf_counter() - t0:.0f} s")
    return report


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="distill", unit="step", file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=None if enabled else True)


def _batch_rows(first: int, n: int, n_windows: int, seed: int) -> list[int]:
    """Rows of the packed data for global sample indices first .. first+n-1: each epoch visits every window
    once, in an order that depends only on the seed and the epoch (so a resumed run sees the same batches)."""
    rows = []
    for g in range(first, first + n):
        epoch, pos = divmod(g, n_windows)
        rows.append(_epoch_order(seed, epoch, n_windows)[pos])
    return rows


@functools.lru_cache(maxsize=2)  # the current epoch, and the next one at an epoch boundary
def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


# ---------------------------------------------------------------------------------------------
# Models


@functools.cache
def _student_class():
    import torch

    class Student(torch.nn.Module):
        """The trainable part (student + projections); forward returns the loss terms, so DDP sees one
        module whose parameters all get gradients in every step."""

        def __init__(self, model, teacher, rep_pairs, att_pairs, cfg: DistillConfig):
            super().__init__()
            self.model = model
            self.teacher = [teacher]  # a list hides it from .parameters(), .to() and state_dict()
            self.rep_pairs, self.att_pairs, self.cfg = rep_pairs, att_pairs, cfg
            ws, wt = model.config.hidden_size, teacher.config.hidden_size
            self.proj = torch.nn.ModuleList(
                torch.nn.Linear(ws, wt, bias=False) if ws != wt else torch.nn.Identity() for _ in rep_pairs)

        def forward(self, ids):
            cfg, teacher = self.cfg, self.teacher[0]
            want_att = bool(self.att_pairs)
            t_logits, t_hidden, t_att = None, {}, None
            if cfg.uses_teacher:
                with torch.no_grad():
                    t_out, t_hidden = _run(teacher, ids, {j for _, j in self.rep_pairs}, want_att)
                t_logits, t_att = t_out.logits, t_out.attentions if want_att else None
            out, s_hidden = _run(self.model, ids, {i for i, _ in self.rep_pairs}, want_att)
            loss, ce, kl = kd_loss(out.logits, t_logits, ids, cfg.alpha, cfg.temperature)
            rep = att = torch.zeros_like(loss)
            if self.rep_pairs:
                rep = sum(representation_loss(s_hidden[i], t_hidden[j], p)
                          for (i, j), p in zip(self.rep_pairs, self.proj, strict=True)) / len(self.rep_pairs)
                loss = loss + cfg.beta * rep
            if want_att:
                att = sum(attention_loss(out.attentions[i], t_att[j]) for i, j in self.att_pairs) / len(self.att_pairs)
                loss = loss + cfg.gamma * att
            return loss, ce, kl, rep, att

    return Student


def _make_student(model, teacher, rep_pairs, att_pairs, cfg: DistillConfig):
    return _student_class()(model, teacher, rep_pairs, att_pairs, cfg)


def _run(model, ids, layers: set[int], attentions: bool):
    """The model's output, and the outputs of the decoder layers in `layers` (forward hooks)."""
    hidden: dict[int, Any] = {}
    hooks = [model.model.layers[i].register_forward_hook(
        lambda _m, _a, out, i=i: hidden.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i in layers]
    try:
        out = model(ids, use_cache=False, output_attentions=attentions)
    finally:
        for h in hooks:
            h.remove()
    return out, hidden


def _student(teacher_dir: Path, teacher, spec, eager: bool):
    """(student model in float32, its source directory or None): loaded from a directory, or built from the
    teacher's config with overrides and initialised at random (seeded)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(spec, str | Path):
        model = load_model(Path(spec), attention="eager" if eager else None)
        _check_vocab(model, teacher, str(spec))
        return model, Path(spec)
    c = copy.deepcopy(teacher.config)
    for key, value in spec.items():
        if not hasattr(c, key):
            raise EdgekitError(f"student config: {type(c).__name__} has no option {key!r}")
        setattr(c, key, value)
    if "num_attention_heads" in spec and "head_dim" not in spec:
        c.head_dim = c.hidden_size // c.num_attention_heads
    layer_types = getattr(c, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) != c.num_hidden_layers:
        c.layer_types = layer_types[:1] * c.num_hidden_layers
    if eager:
        c._attn_implementation = "eager"
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_config(c, dtype=torch.float32)
    except (ValueError, TypeError) as e:
        raise EdgekitError(f"student config: transformers cannot build it ({e})") from None
    _check_vocab(model, teacher, "student config")
    return model, None


def _check_vocab(model, teacher, where: str) -> None:
    if model.config.vocab_size != teacher.config.vocab_size:
        raise EdgekitError(f"{where}: the student's vocabulary ({model.config.vocab_size}) differs from the "
                           f"teacher's ({teacher.config.vocab_size}); distillation needs one tokenizer")


def _check_pairs(pairs, n_student: int, n_teacher: int) -> None:
    for i, j in pairs:
        if not (0 <= i < n_student and 0 <= j < n_teacher):
            raise EdgekitError(f"layer map pair ({i}, {j}) is out of range (student has {n_student} layers, "
                               f"teacher {n_teacher})")


# ---------------------------------------------------------------------------------------------
# Sparse students: masked updates keep pruned weights at zero


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _fingerprint(cfg: DistillConfig, teacher_dir: Path, student) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d[k] for k in _TRAJECTORY} | {
        "teacher": str(teacher_dir.resolve()),
        "student": str(Path(student).resolve()) if isinstance(student, str | Path) else student}


def _checkpoints(ckpt_dir: Path | None) -> list[Path]:
    """Complete checkpoints in ckpt_dir, oldest first (a checkpoint appears only once fully written)."""
    if ckpt_dir is None or not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*.pt") if p.is_file())


def _shard(module, layers) -> None:
    """FSDP2: each decoder layer is one unit (gathered for its forward and backward, then freed), the rest another."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(module)


def _unsharded(model):
    """A plain copy of an FSDP-sharded model on CPU, on every rank (each gathers one model's size)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = AutoModelForCausalLM.from_config(model.config)
    missing, unexpected = plain.load_state_dict({k: v.cpu() for k, v in full.items()}, strict=False)
    if unexpected or [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]:
        raise EdgekitError(f"gathering the sharded student lost tensors (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return plain


def _full_state(module, opt) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state keyed by parameter name, on rank 0's CPU (other ranks get empty
    dicts): the same for one process, DDP and FSDP, so a checkpoint resumes under any of them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=o), get_optimizer_state_dict(module, opt, options=o)


def _save_checkpoint(ckpt_dir: Path, step: int, fingerprint, model_state, optim_state, sched, before,
                     keep: int) -> None:
    import torch

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{CHECKPOINT_PREFIX}{step:07d}.pt"
    tmp = temp_path(final)
    torch.save({"step": step, "fingerprint": fingerprint, "model": model_state,
                "optimizer": optim_state, "scheduler": sched.state_dict(), "before": before,
                "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, final)  # a kill before this line leaves the previous checkpoint as the newest
    for old in _checkpoints(ckpt_dir)[:-keep]:
        old.unlink()


def _load_checkpoint(path: Path, fingerprint, wrapper, opt, sched) -> tuple[int, dict[str, float]]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is the same user-facing problem
        raise EdgekitError(f"{path}: not a readable edgekit checkpoint ({type(e).__name__})") from None
    old = state.get("fingerprint", {})
    changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if changed:
        raise EdgekitError(f"{path}: written by a run with different {', '.join(changed)}; resume with the "
                           "same options, or remove the checkpoints to start over")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True)  # every rank reads the file and keeps its own shard
    set_model_state_dict(wrapper, state["model"], options=full)
    set_optimizer_state_dict(wrapper, opt, state["optimizer"], options=full)
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state["before"]


# ---------------------------------------------------------------------------------------------
# Output


def _write(model, teacher_dir: Path, student_dir: Path | None, output_dir: Path, cfg: DistillConfig,
           report: DistillReport) -> None:
    """Save the student like its source (storage precision, tokenizer, records of earlier steps) plus a record."""
    model.config._attn_implementation = "sdpa"  # eager was only for reading attention weights in training
    with atomic_dir(output_dir) as tmp:
        save_like_source(model, student_dir or teacher_dir, tmp)
        write_record(tmp / "edgekit_distill.json", {
            "config": cfg.to_dict(), "teacher": str(teacher_dir), "student_init": str(student_dir or "config"),
            "report": {k: v for k, v in report.to_dict().items() if k != "losses"},
            "losses_every_10_steps": report.losses[::10]})
