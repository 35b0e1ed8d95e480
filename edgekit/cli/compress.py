"""`edgekit prune`, `edgekit sparsify` and `edgekit distill`: smaller HF models before quantization."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.cli.common import log_to_stderr, torch_threads
from edgekit.converters.compress import distributed as dist
from edgekit.converters.compress.distill import TEACHER_DTYPES, DistillConfig, distill
from edgekit.converters.compress.prune import PruneConfig, prune
from edgekit.converters.compress.sparsify import SparsifyConfig, sparsify
from edgekit.converters.compress.training import SCHEDULES
from edgekit.converters.recipe import parse_options
from edgekit.errors import EdgekitError


def add_parsers(sub: Any) -> None:
    pr = sub.add_parser(
        "prune", help="structured pruning: fewer FFN channels, attention heads (whole KV groups) and layers",
        description="Write a smaller dense Hugging Face model of the same architecture (the same counts in every "
                    "layer), ready for `edgekit convert`. Channels and heads are ranked by their activations on "
                    "calibration text (Minitron), layers by how little they change the hidden state (ShortGPT); "
                    "--importance weight ranks by weight norms and needs no data.",
        epilog="examples:\n  edgekit prune ./my-llama -o my-llama-pruned --ffn 0.5 --heads 0.25 --layers 1 "
               "--data calib/\n  edgekit prune ./my-llama -o my-llama-ffn50 --ffn 0.5 --importance weight",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("source", type=Path, help="HF model directory (config.json, *.safetensors, tokenizer)")
    pr.add_argument("-o", "--output", type=Path, required=True, help="output directory (new, or empty)")
    pr.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN channels to remove, in [0, 1)")
    pr.add_argument("--heads", type=float, default=0.0,
                    help="fraction of attention heads to remove, in [0, 1); whole KV groups go together")
    pr.add_argument("--layers", type=int, default=0, help="whole decoder layers to drop")
    pr.add_argument("--data", type=Path, action="append", metavar="FILE|DIR",
                    help="calibration text (.txt/.py files; repeatable); needed by --importance activation")
    pr.add_argument("--importance", choices=["activation", "weight"], default="activation",
                    help="rank by activations on --data (default) or by weight norms (no data)")
    pr.add_argument("--max-tokens", type=int, default=8192, help="calibration tokens at most (default: 8192)")
    pr.add_argument("--seed", type=int, default=0, help="order in which calibration files are sampled")
    pr.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    pr.set_defaults(func=_prune)

    sp = sub.add_parser(
        "sparsify", help="unstructured or 2:4 pruning: zero individual weights (Wanda or magnitude)",
        description="Write a Hugging Face model of the same architecture and shapes with part of the weights of "
                    "every decoder linear layer set to zero, ready for `edgekit convert`. Weights are scored by "
                    "|W| x the norm of their input on calibration text (Wanda) or by |W| (magnitude, no data). "
                    "The zeros are stored densely: the files are no smaller and llama.cpp no faster; what "
                    "sparsity buys is accuracy per remaining weight. What was zeroed is recorded in "
                    "edgekit_sparsity.json.",
        epilog="examples:\n  edgekit sparsify ./my-llama -o my-llama-50 --sparsity 0.5 --data calib/\n"
               "  edgekit sparsify ./my-llama -o my-llama-24 --pattern 2:4 --data calib/\n"
               "  edgekit sparsify ./my-llama -o my-llama-mag --method magnitude --sparsity 0.3 --scope layer",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("source", type=Path, help="HF model directory (config.json, *.safetensors, tokenizer)")
    sp.add_argument("-o", "--output", type=Path, required=True, help="output directory (new, or empty)")
    sp.add_argument("--method", choices=["wanda", "magnitude"], default="wanda",
                    help="score by |W| x input norm on --data (default) or by |W| (no data)")
    sp.add_argument("--sparsity", type=float, metavar="FRACTION",
                    help="fraction of the weights to zero, in [0, 1) (default: 0.5)")
    sp.add_argument("--pattern", metavar="N:M",
                    help="semi-structured instead: at most N nonzeros in every M consecutive weights of a row, "
                         "e.g. 2:4 (sparsity 1 - N/M)")
    sp.add_argument("--scope", choices=["row", "layer", "global"], default="row",
                    help="which weights compete: each output row loses the same fraction (default, as Wanda), "
                         "one threshold per matrix, or one over all matrices")
    sp.add_argument("--data", type=Path, action="append", metavar="FILE|DIR",
                    help="calibration text (.txt/.py files; repeatable); needed by --method wanda")
    sp.add_argument("--max-tokens", type=int, default=8192, help="calibration tokens at most (default: 8192)")
    sp.add_argument("--seed", type=int, default=0, help="order in which calibration files are sampled")
    sp.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    sp.set_defaults(func=_sparsify)

    d = DistillConfig(data=[])
    ds = sub.add_parser(
        "distill", help="knowledge distillation: train a smaller student to imitate a teacher",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a student (a pruned teacher, or a fresh model from config overrides) on\n"
                    "(1-alpha) x CE(next token) + alpha x T^2 x KL(teacher_T || student_T), plus optional\n"
                    "hidden-state (--beta) and attention (--gamma) transfer. Writes an HF model directory.\n"
                    "Runs under torchrun (DDP over gloo on CPU, NCCL on GPUs); --batch-size is the global batch.",
        epilog="examples:\n  edgekit prune ./teacher -o pruned --ffn 0.5 --data corpus/ && \\\n"
               "    edgekit distill ./teacher --student pruned -o student --data corpus/ --steps 2000\n"
               "  edgekit distill ./teacher --student num_hidden_layers=4 -o student --data corpus/ --alpha 0.9\n"
               "  torchrun --nproc_per_node 2 -m edgekit distill ./teacher --student pruned -o student --data corpus/ "
               "--checkpoint-dir ckpt/\n"
               "  edgekit distill ... --checkpoint-dir ckpt/ --resume      # continue an interrupted run")
    ds.add_argument("teacher", type=Path, help="teacher: HF model directory")
    ds.add_argument("-o", "--output", type=Path, required=True, help="student directory to write (new, or empty)")
    ds.add_argument("--student", required=True, metavar="DIR|OPTS",
                    help="HF directory to start from, or config overrides of the teacher's for a fresh student "
                         "(e.g. num_hidden_layers=4,intermediate_size=1024)")
    ds.add_argument("--data", type=Path, action="append", required=True, metavar="FILE|DIR",
                    help="training text (.txt/.py files; repeatable), tokenized with the teacher's tokenizer")
    ds.add_argument("--eval-data", type=Path, action="append", metavar="FILE|DIR",
                    help="held-out text for the perplexities (default: the first windows of --data, never trained on)")
    ds.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default: {d.steps})")
    ds.add_argument("--batch-size", type=int, default=d.batch_size,
                    help=f"sequences per step over all processes (default: {d.batch_size})")
    ds.add_argument("--micro-batch", type=int, default=0,
                    help="sequences per forward pass and process; smaller means gradient accumulation "
                         "(default: the whole share)")
    ds.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per sequence (default: {d.seq_len})")
    ds.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    ds.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="LR decay after warmup")
    ds.add_argument("--warmup", type=float, help=f"fraction of steps warming up (default: {d.warmup})")
    ds.add_argument("--alpha", type=float, default=d.alpha,
                    help=f"weight of the teacher's soft targets; 0 = hard labels only (default: {d.alpha})")
    ds.add_argument("--temperature", type=float, default=d.temperature,
                    help=f"softmax temperature (default: {d.temperature})")
    ds.add_argument("--beta", type=float, default=d.beta, help="weight of the hidden-state loss (default: 0)")
    ds.add_argument("--gamma", type=float, default=d.gamma, help="weight of the attention-transfer loss (default: 0)")
    ds.add_argument("--layer-map", metavar="S:T,...",
                    help="student:teacher layer pairs for --beta/--gamma (default: same relative depth)")
    ds.add_argument("--teacher-dtype", choices=TEACHER_DTYPES, default=d.teacher_dtype,
                    help="run the frozen teacher in lower precision to save memory")
    ds.add_argument("--fsdp", action="store_true",
                    help="under torchrun: shard the student's parameters, gradients and optimizer state, and the "
                         "teacher, over the processes (FSDP2) instead of a full replica in each (DDP)")
    ds.add_argument("--heldout-windows", type=int, default=d.heldout_windows,
                    help=f"held-out windows for the perplexities (default: {d.heldout_windows})")
    ds.add_argument("--checkpoint-dir", type=Path, metavar="DIR", help="write checkpoints here (rank 0)")
    ds.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                    help=f"steps between checkpoints (default: {d.checkpoint_every})")
    ds.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --checkpoint-dir")
    ds.add_argument("--seed", type=int, default=d.seed, help="batch order and fresh-student initialisation")
    ds.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ds.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    ds.set_defaults(func=_distill)



def _prune(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    cfg = PruneConfig(ffn=args.ffn, heads=args.heads, layers=args.layers, importance=args.importance,
                      data=list(args.data or []), max_tokens=args.max_tokens, seed=args.seed)
    print(prune(args.source, args.output, cfg).summary())
    return 0


def _distill(args: argparse.Namespace) -> int:
    torch_threads(args.threads)
    layer_map = None
    if args.layer_map:
        try:
            layer_map = [(int(a), int(b)) for a, b in (p.split(":") for p in args.layer_map.split(","))]
        except ValueError:
            raise EdgekitError(f"--layer-map {args.layer_map!r}: expected pairs like 0:1,1:3,2:5") from None
    student = parse_options(args.student, "--student") if "=" in args.student else Path(args.student)
    d = DistillConfig(data=[])
    cfg = DistillConfig(
        data=list(args.data), student=student, eval_data=list(args.eval_data or []), steps=args.steps,
        seq_len=args.seq_len, batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr,
        schedule=args.schedule,
        warmup=args.warmup if args.warmup is not None else d.warmup, alpha=args.alpha, temperature=args.temperature,
        beta=args.beta, gamma=args.gamma, layer_map=layer_map, teacher_dtype=args.teacher_dtype,
        parallel="fsdp" if args.fsdp else "ddp",
        heldout_windows=args.heldout_windows, checkpoint_every=args.checkpoint_every, seed=args.seed)
    report = distill(args.teacher, args.output, cfg, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                     log=log_to_stderr(args.quiet), progress=not args.quiet)
    if dist.is_main():
        print(report.summary())
    return 0


def _sparsify(args: argparse.Namespace) -> int:
    if args.sparsity is not None and args.pattern is not None:
        raise EdgekitError("give --sparsity or --pattern, not both (a pattern N:M zeroes 1 - N/M of the weights)")
    torch_threads(args.threads)
    cfg = SparsifyConfig(method=args.method, sparsity=0.5 if args.sparsity is None else args.sparsity,
                         pattern=args.pattern, scope=args.scope, data=list(args.data or []),
                         max_tokens=args.max_tokens, seed=args.seed)
    print(sparsify(args.source, args.output, cfg).summary())
    return 0
