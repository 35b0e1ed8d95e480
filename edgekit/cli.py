"""The `edgekit` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgekit import __version__
from edgekit.errors import EdgekitError


def _convert(args: argparse.Namespace) -> int:
    from edgekit.converters.gguf_export import ConvertConfig, convert
    from edgekit.converters.mix import SCHEMES

    if args.recipe or args.prune or args.sparsify or args.distill is not None:
        return _convert_recipe(args)
    stray = [f for f, v in (("--data", args.data), ("--steps", args.steps), ("--student", args.student),
                            ("--work-dir", args.work_dir), ("--resume", args.resume),
                            ("--save-recipe", args.save_recipe)) if v]
    if stray:
        raise EdgekitError(f"{', '.join(stray)}: only with --prune, --sparsify, --distill or --recipe")
    if args.output is None:
        raise EdgekitError("give the output file: -o FILE.gguf or -o FILE.pte")
    if (args.source is None) == (not args.demo):
        raise EdgekitError("give a model to convert, or --demo for the built-in demo model (not both)")
    if args.demo:
        from edgekit.demo import model_dir

        args.source, args.name = model_dir(), args.name or "edgekit-demo"
    if args.output.suffix == ".pte":
        return _convert_pte(args)
    if args.output.suffix != ".gguf":
        raise EdgekitError(f"{args.output}: output must be a .gguf (llama.cpp) or .pte (ExecuTorch) file")
    pte_only = [f for f, v in (("--group-size", args.group_size), ("--embedding-quant", args.embedding_quant),
                               ("--max-seq-len", args.max_seq_len), ("--qat", args.qat or None),
                               ("--qat-data", args.qat_data), ("--qat-steps", args.qat_steps),
                               ("--qat-lr", args.qat_lr)) if v is not None]
    if pte_only:
        raise EdgekitError(f"{', '.join(pte_only)}: only for .pte output")
    quant = args.quant or "q4_k_m"
    if quant not in SCHEMES:
        raise EdgekitError(f"--quant {quant} is for .pte output; GGUF schemes: {', '.join(SCHEMES)}")
    result = convert(ConvertConfig(source=args.source, output=args.output, quant=quant,
                                   imatrix=args.imatrix, threads=args.threads, progress=not args.quiet,
                                   name=args.name))
    print(result.summary())
    _maybe_report(args, result)
    return 0


def _convert_recipe(args: argparse.Namespace) -> int:
    """prune / sparsify / distill, then quantize: from --recipe, or from the flags (the same Recipe)."""
    from edgekit.converters import distributed as dist
    from edgekit.converters import recipe as rc

    flags = {"--prune": args.prune, "--sparsify": args.sparsify, "--distill": args.distill is not None,
             "--steps": args.steps, "--student": args.student}
    if args.recipe:
        used = [f for f, v in flags.items() if v]
        if used:
            raise EdgekitError(f"{', '.join(used)}: give the steps either in --recipe or as flags, not both")
        recipe = rc.load(args.recipe)
        if args.demo or args.source:
            recipe.source = "demo" if args.demo else str(args.source)
        if args.output:
            recipe.output = str(args.output)
        if args.data:
            recipe.data = [str(p) for p in args.data]
        if args.eval_data:
            recipe.eval_data = [str(p) for p in args.eval_data]
    else:
        recipe = _recipe_from_flags(args)
    if args.work_dir:
        recipe.work_dir = str(args.work_dir)
    if args.save_recipe:
        rc.write(recipe, args.save_recipe)
    log = None if args.quiet else (lambda msg: print(f"edgekit: {msg}", file=sys.stderr))
    _torch_threads(args.threads)
    result = rc.run(recipe, resume=args.resume, log=log, progress=not args.quiet)
    if not dist.is_main():
        return 0
    if result.student_dir is not None and result.student_dir != result.output:
        print(f"HF student: {result.student_dir}")
    if result.export is not None and result.eval_data:
        windows = args.eval_windows or (200 if result.output.suffix == ".gguf" else 24)
        print("against the teacher: " + _compression_report(result.teacher, result.export, result.eval_data,
                                                            windows, quiet=args.quiet))
    return 0


def _recipe_from_flags(args: argparse.Namespace):
    from edgekit.converters.recipe import Recipe, parse_options

    if (args.source is None) == (not args.demo):
        raise EdgekitError("give a model to convert, or --demo for the built-in demo model (not both)")
    if args.output is None:
        raise EdgekitError("give the output: -o FILE.gguf, -o FILE.pte or -o DIR (the HF student only)")
    if args.qat:
        raise EdgekitError("--qat: not with --prune/--distill yet; distill to a directory, then convert it with --qat")
    steps: list[tuple[str, dict]] = []
    if args.prune:
        steps.append(("prune", parse_options(args.prune, "--prune")))
    if args.sparsify:
        steps.append(("sparsify", parse_options(args.sparsify, "--sparsify")))
    if args.distill is not None:
        opts = parse_options(args.distill, "--distill")
        if args.steps:
            opts["steps"] = args.steps
        if args.student:
            opts["student"] = (parse_options(args.student, "--student") if "=" in args.student
                               else str(Path(args.student)))
        steps.append(("distill", opts))
    elif args.steps or args.student:
        raise EdgekitError("--steps, --student: only with --distill")
    if args.output.suffix in (".gguf", ".pte"):
        export = {k: v for k, v in (("quant", args.quant), ("imatrix", args.imatrix and str(args.imatrix)),
                                    ("group_size", args.group_size), ("embedding_quant", args.embedding_quant),
                                    ("max_seq_len", args.max_seq_len), ("name", args.name)) if v is not None}
        steps.append(("export", export))
    return Recipe(source="demo" if args.demo else str(args.source), output=str(args.output), steps=steps,
                  data=[str(p) for p in args.data or []], eval_data=[str(p) for p in args.eval_data or []])


def _maybe_report(args: argparse.Namespace, result) -> None:
    """The compression report, on --eval-data or, for the demo, on its documented held-out files."""
    eval_data = args.eval_data
    if args.demo and not eval_data:
        from edgekit.demo import corpus

        eval_data = corpus.split()[1]
    if eval_data:
        # A .pte is scored one token per call (its program returns only the last position): fewer windows.
        windows = args.eval_windows or (200 if args.output.suffix == ".gguf" else 24)
        print(_compression_report(args.source, result, eval_data, windows, quiet=args.quiet))


def _convert_pte(args: argparse.Namespace) -> int:
    from edgekit.converters.executorch_export import QUANTS, PteConfig, export_pte

    quant = args.quant or "8da4w"
    if quant not in QUANTS:
        raise EdgekitError(f"--quant {quant} is for .gguf output; .pte schemes: {', '.join(QUANTS)}")
    if args.imatrix:
        raise EdgekitError("--imatrix: only for .gguf output (for .pte, --qat recovers int4 accuracy)")
    qat_flags = [f for f, v in (("--qat-data", args.qat_data), ("--qat-steps", args.qat_steps),
                                ("--qat-lr", args.qat_lr)) if v is not None]
    if qat_flags and not args.qat:
        raise EdgekitError(f"{', '.join(qat_flags)}: only with --qat")
    qat = None
    if args.qat:
        from edgekit.converters.qat import QatConfig

        data = args.qat_data
        if not data and args.demo:
            from edgekit.demo import corpus

            data = corpus.split()[0]  # the demo's training files (never its held-out ones)
        if not data:
            raise EdgekitError("--qat needs calibration text: --qat-data FILE|DIR")
        defaults = QatConfig(data=[])
        qat = QatConfig(data=list(data), steps=args.qat_steps or defaults.steps, lr=args.qat_lr or defaults.lr)
    _torch_threads(args.threads)
    result = export_pte(PteConfig(
        source=args.source, output=args.output, quant=quant, group_size=args.group_size or 32,
        embedding_quant=args.embedding_quant, max_seq_len=args.max_seq_len, name=args.name, qat=qat,
        log=None if args.quiet else lambda msg: print(f"edgekit: {msg}", file=sys.stderr), progress=not args.quiet))
    print(result.summary())
    _maybe_report(args, result)
    return 0


def _compression_report(source: Path, result, data: list[Path], max_windows: int, quiet: bool) -> str:
    """What the conversion cost: size before/after, bits/weight, and accuracy against the source."""
    from edgekit.evaluate import evaluate
    from edgekit.progress import human_bytes

    before = source.stat().st_size if source.is_file() else sum(f.stat().st_size for f in source.glob("*.safetensors"))
    r = evaluate(result.output, data, ref=source, ctx=256, max_windows=max_windows, progress=not quiet)
    return (f"compression report: {human_bytes(before)} -> {human_bytes(result.file_bytes)} "
            f"({before / result.file_bytes:.1f}x smaller, {result.bits_per_weight:.2f} bits/weight); on "
            f"{r.tokens:,} held-out tokens: PPL {r.ref_ppl:.3f} -> {r.ppl:.3f} ({r.delta_ppl_pct:+.2f} %), "
            f"mean KL {r.kl_mean:.5f}, top-1 agreement {100 * r.top1:.2f} %")


def _imatrix(args: argparse.Namespace) -> int:
    from edgekit.converters import imatrix

    stats = imatrix.collect_file(args.model, args.data, ctx=args.ctx, max_chunks=args.chunks,
                                 threads=args.threads, progress=not args.quiet)
    imatrix.save(args.output, stats, dataset=args.data.name, ctx=args.ctx)
    print(imatrix.summary(args.output, stats, args.ctx))
    return 0


def _torch_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _prune(args: argparse.Namespace) -> int:
    from edgekit.converters.prune import PruneConfig, prune

    _torch_threads(args.threads)
    cfg = PruneConfig(ffn=args.ffn, heads=args.heads, layers=args.layers, importance=args.importance,
                      data=list(args.data or []), max_tokens=args.max_tokens, seed=args.seed)
    print(prune(args.source, args.output, cfg).summary())
    return 0


def _distill(args: argparse.Namespace) -> int:
    from edgekit.converters import distributed as dist
    from edgekit.converters.distill import DistillConfig, distill
    from edgekit.converters.recipe import parse_options

    _torch_threads(args.threads)
    layer_map = None
    if args.layer_map:
        try:
            layer_map = [(int(a), int(b)) for a, b in (p.split(":") for p in args.layer_map.split(","))]
        except ValueError:
            raise EdgekitError(f"--layer-map {args.layer_map!r}: expected pairs like 0:1,1:3,2:5") from None
    d = DistillConfig(data=[])
    cfg = DistillConfig(
        data=list(args.data), eval_data=list(args.eval_data or []), steps=args.steps, seq_len=args.seq_len,
        batch_size=args.batch_size, micro_batch=args.micro_batch, lr=args.lr, schedule=args.schedule,
        warmup=args.warmup if args.warmup is not None else d.warmup, alpha=args.alpha, temperature=args.temperature,
        beta=args.beta, gamma=args.gamma, layer_map=layer_map, teacher_dtype=args.teacher_dtype,
        parallel="fsdp" if args.fsdp else "ddp",
        heldout_windows=args.heldout_windows, checkpoint_every=args.checkpoint_every, seed=args.seed)
    student = parse_options(args.student, "--student") if "=" in args.student else Path(args.student)
    log = None if args.quiet else (lambda msg: print(f"edgekit: {msg}", file=sys.stderr))
    report = distill(args.teacher, args.output, cfg, student=student, checkpoint_dir=args.checkpoint_dir,
                     resume=args.resume, log=log, progress=not args.quiet)
    if dist.is_main():
        print(report.summary())
    return 0


def _sparsify(args: argparse.Namespace) -> int:
    from edgekit.converters.sparsify import SparsifyConfig, sparsify

    if args.sparsity is not None and args.pattern is not None:
        raise EdgekitError("give --sparsity or --pattern, not both (a pattern N:M zeroes 1 - N/M of the weights)")
    _torch_threads(args.threads)
    cfg = SparsifyConfig(method=args.method, sparsity=0.5 if args.sparsity is None else args.sparsity,
                         pattern=args.pattern, scope=args.scope, data=list(args.data or []),
                         max_tokens=args.max_tokens, seed=args.seed)
    print(sparsify(args.source, args.output, cfg).summary())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from edgekit.evaluate import evaluate

    result = evaluate(args.model, args.data, ref=args.ref, ctx=args.ctx, stride=args.stride,
                      max_windows=args.max_windows, tokenizer=args.tokenizer, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.report())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from edgekit.inspect import format_report, inspect_gguf

    if args.file.suffix == ".pte":
        from edgekit.inspect_pte import format_report as format_pte
        from edgekit.inspect_pte import inspect_pte

        if args.tensors:
            raise EdgekitError("--tensors: only for .gguf files (a .pte keeps its weights inside delegate blobs)")
        info = inspect_pte(args.file)
        print(json.dumps(info, indent=2, default=str) if args.json else format_pte(info))
        return 0
    info = inspect_gguf(args.file)
    if args.json:
        if not args.tensors:
            info.pop("tensors")
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_report(info, show_tensors=args.tensors))
    return 0


def _sampling(args: argparse.Namespace):
    from edgekit.runtime import SamplingParams

    return SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed,
                          max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)


def _load_for_run(args: argparse.Namespace):
    from edgekit.runtime import load

    opts = {"threads": args.threads} if args.threads else {}
    if args.cache_type == "f32":
        opts["kv_f32"] = True
    return load(args.model, n_ctx=args.ctx, **opts)


def _chat(args: argparse.Namespace) -> int:
    from edgekit.chat_cli import run_chat
    from edgekit.runtime.session import ChatSession

    params = _sampling(args)  # invalid settings fail before the model loads
    with _load_for_run(args) as model:
        return run_chat(ChatSession(model, system=args.system, params=params))


def _generate(args: argparse.Namespace) -> int:
    from edgekit.chat_cli import run_generate

    params = _sampling(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt:
        raise EdgekitError("empty prompt (give one as an argument or on stdin)")
    with _load_for_run(args) as model:
        return run_generate(model, prompt, params, chat=args.chat, stop=args.stop or [])


def _bundle(args: argparse.Namespace) -> int:
    from edgekit.bundle import make_bundle

    out = make_bundle(args.model, args.target, args.output, sampling=_sampling(args))
    print(f"wrote {out}/ for {args.target}: manifest.json, README.md and the model files")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from edgekit.serve import serve

    params = _sampling(args)
    with _load_for_run(args) as model:
        serve(model, args.host, args.port, defaults=params, log=not args.quiet)
    return 0


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    from edgekit.runtime import SamplingParams

    d = SamplingParams()
    g = p.add_argument_group("sampling (edgekit's own sampler, the same on every backend)")
    g.add_argument("--temp", type=float, default=d.temperature,
                   help=f"temperature; 0 = greedy (default: {d.temperature})")
    g.add_argument("--top-k", type=int, default=d.top_k,
                   help=f"keep the k most likely tokens; 0 = off (default: {d.top_k})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling; 1 = off (default: {d.top_p})")
    g.add_argument("--min-p", type=float, default=d.min_p,
                   help=f"drop tokens below min-p x the top probability; 0 = off (default: {d.min_p})")
    g.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty,
                   help=f"penalise recently seen tokens; 1 = off (default: {d.repeat_penalty})")
    g.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n,
                   help=f"tokens the penalty looks back (default: {d.repeat_last_n})")
    g.add_argument("--seed", type=int, help="random seed: the same seed gives the same text (default: random)")
    g.add_argument("-n", "--max-tokens", type=int, default=max_tokens,
                   help=f"most tokens per answer (default: {max_tokens})")
    g.add_argument("--ignore-eos", action="store_true", help="never stop at end-of-generation tokens")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a .gguf (llama.cpp), a .pte (ExecuTorch) or a bundle directory")
    p.add_argument("--ctx", type=int, help="context length in tokens (default: the model's, at most 4096 for "
                                           "GGUF; a .pte's KV cache is fixed at export)")
    p.add_argument("--threads", type=int, default=0, help="GGUF: llama.cpp threads (default: the cores, at most 8)")
    p.add_argument("--cache-type", choices=["f16", "f32"], default="f16",
                   help="GGUF: KV-cache type (default: f16, as llama.cpp; f32 for results equal to transformers')")


def _add_distill_parser(sub) -> None:
    from edgekit.converters.distill import TEACHER_DTYPES, DistillConfig
    from edgekit.converters.training import SCHEDULES

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


def build_parser() -> argparse.ArgumentParser:
    from edgekit.converters.executorch_export import EMBEDDING_QUANTS, GROUP_SIZES, QUANTS
    from edgekit.converters.mix import SCHEMES

    p = argparse.ArgumentParser(prog="edgekit", description="Put language models on the devices people own.")
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quant_help = "\n".join(f"  {k:<7} {s.help}" for k, s in SCHEMES.items())
    pte_help = "\n".join(f"  {k:<7} {h}" for k, h in QUANTS.items())
    emb_help = "\n".join(f"  {k:<7} {h}" for k, h in EMBEDDING_QUANTS.items())
    c = sub.add_parser(
        "convert", help="convert a Hugging Face model to a quantized GGUF (llama.cpp) or .pte (ExecuTorch)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a Hugging Face checkpoint directory, or an F32/F16/BF16 .gguf, into a GGUF "
                    "file that llama.cpp runs, or (HF input) an ExecuTorch .pte program.\n\n"
                    ".gguf schemes (--quant, default q4_k_m):\n" + quant_help
                    + "\n\n.pte schemes (--quant, default 8da4w):\n" + pte_help
                    + "\n\n.pte embeddings (--embedding-quant, default: float):\n" + emb_help,
        epilog="examples:\n  edgekit convert ./Qwen2.5-0.5B-Instruct -o qwen-q4km.gguf --quant q4_k_m\n"
               "  edgekit convert ./my-llama -o my-llama-q8.gguf --quant q8_0 --imatrix calib.txt\n"
               "  edgekit convert model-f16.gguf -o model-q4km.gguf --quant q4_k_m\n"
               "  edgekit convert --demo -o demo.gguf --quant q4_k_m\n"
               "  edgekit convert ./SmolLM2-360M-Instruct -o smol.pte --quant 8da4w --group-size 32\n"
               "  edgekit convert ./my-llama -o my-llama.pte --quant 8da4w --embedding-quant 4w --max-seq-len 2048\n"
               "  edgekit convert ./my-llama -o qat/model.pte --quant 8da4w --qat --qat-data calib/ --qat-steps 200\n"
               "  edgekit convert ./teacher -o student-q4km.gguf --prune ffn=0.5,heads=0.25 --distill --data corpus/ "
               "--steps 2000\n"
               "  edgekit convert --demo -o half.gguf --distill alpha=0.9 --student num_hidden_layers=3 --steps 300\n"
               "  edgekit convert --recipe recipes/demo-prune-distill.yaml\n"
               "  torchrun --nproc_per_node 8 -m edgekit convert --recipe big.yaml")
    c.add_argument("source", type=Path, nargs="?",
                   help="HF model directory (config.json, *.safetensors, tokenizer) or .gguf")
    c.add_argument("--demo", action="store_true",
                   help="convert the built-in demo model (a small Llama trained on Python's standard library)")
    c.add_argument("-o", "--output", type=Path,
                   help="output file: .gguf or .pte (with --prune/--distill also a directory: the HF student only)")
    c.add_argument("--quant", choices=[*SCHEMES, *QUANTS], metavar="SCHEME",
                   help="quantization scheme (default: q4_k_m for .gguf, 8da4w for .pte; see the lists above)")
    c.add_argument("--group-size", type=int, choices=GROUP_SIZES, metavar="N",
                   help=".pte: weights per int4 scale for 8da4w and 4w embeddings: "
                        f"{', '.join(map(str, GROUP_SIZES))} (default: 32)")
    c.add_argument("--embedding-quant", choices=list(EMBEDDING_QUANTS), metavar="SCHEME",
                   help=".pte: quantize the token embeddings too (4w or 8w; default: float)")
    c.add_argument("--max-seq-len", type=int, metavar="N",
                   help=".pte: KV-cache length, prompt plus generated tokens (default: the model's context, "
                        "at most 2048)")
    c.add_argument("--imatrix", type=Path, metavar="FILE",
                   help="calibration text (.txt, run through the model) or activation statistics "
                        "(.gguf/.dat imatrix file) to weight the Q4_K/Q6_K scale search")
    c.add_argument("--eval-data", type=Path, action="append", metavar="FILE|DIR",
                   help="after converting, report perplexity/KL against the source on this text (repeatable; "
                        "--demo uses its held-out split by default)")
    c.add_argument("--eval-windows", type=int, metavar="N",
                   help="at most N windows of 256 tokens for that report (default: 200 for .gguf, 24 for .pte)")
    c.add_argument("--qat", action="store_true",
                   help=".pte 8da4w: quantization-aware fine-tune (distilled from the float model) before "
                        "converting, to recover int4 accuracy; prints held-out perplexity before/after")
    c.add_argument("--qat-data", type=Path, action="append", metavar="FILE|DIR",
                   help="calibration text for --qat (.txt/.py files; --demo uses its training split)")
    c.add_argument("--qat-steps", type=int, metavar="N", help="QAT optimizer steps of 4 x 256 tokens (default: 100)")
    c.add_argument("--qat-lr", type=float, metavar="LR", help="QAT peak learning rate (default: 1e-4)")
    g = c.add_argument_group(
        "make the model smaller first (prune -> sparsify -> distill -> quantize; see `edgekit prune`, "
        "`edgekit sparsify`, `edgekit distill` for every option)")
    g.add_argument("--recipe", type=Path, metavar="FILE",
                   help="run the steps of a YAML/JSON recipe (source and -o, if given, override the recipe's)")
    g.add_argument("--prune", metavar="OPTS", help="structured pruning, e.g. ffn=0.5,heads=0.25,layers=1")
    g.add_argument("--sparsify", metavar="OPTS", help="unstructured pruning, e.g. method=wanda,sparsity=0.5 or "
                                                      "method=magnitude,pattern=2:4")
    g.add_argument("--distill", nargs="?", const="", metavar="OPTS",
                   help="distill the pruned model (or --student) from the source, optionally with options, "
                        "e.g. alpha=0.5,temperature=2,lr=1e-3,batch_size=8")
    g.add_argument("--student", metavar="DIR|OPTS",
                   help="distill into this HF model directory, or a fresh model with these config overrides "
                        "(e.g. num_hidden_layers=4,intermediate_size=1024); default: the pruned model")
    g.add_argument("--data", type=Path, action="append", metavar="FILE|DIR",
                   help="text for pruning and distillation (repeatable; --demo uses its training split)")
    g.add_argument("--steps", type=int, metavar="N", help="distillation optimizer steps (default: 1000)")
    g.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="intermediate models and checkpoints (default: OUTPUT.work next to the output)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its work directory")
    g.add_argument("--save-recipe", type=Path, metavar="FILE", help="also write the plan as a recipe file")
    c.add_argument("--threads", type=int, default=0, help="quantizer/torch threads (default: all cores)")
    c.add_argument("--name", help="model name stored in the file (default: the source's name)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_convert)

    m = sub.add_parser(
        "imatrix", help="collect an importance matrix (activation statistics) from calibration text",
        description="Run a Hugging Face model over calibration text and save, for every linear layer, the "
                    "per-column mean of squared activations in llama.cpp's imatrix GGUF format. "
                    "Pass the file to `edgekit convert --imatrix` (or to llama.cpp's llama-quantize).",
        epilog="example:\n  edgekit imatrix ./my-llama --data calib.txt -o my-llama.imatrix.gguf",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("model", type=Path, help="HF model directory")
    m.add_argument("--data", type=Path, required=True, help="calibration text file (UTF-8)")
    m.add_argument("-o", "--output", type=Path, required=True, help="imatrix file to write (.gguf)")
    m.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    m.add_argument("--chunks", type=int, default=64, help="at most this many chunks (default: 64)")
    m.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_imatrix)

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

    _add_distill_parser(sub)

    from edgekit import doctor

    doctor.add_parser(sub)

    e = sub.add_parser(
        "eval", help="perplexity on text; KL-divergence and top-1 agreement against a reference model",
        description="Score a model (HF directory or .gguf) on held-out text: its perplexity and, with --ref,\n"
                    "the reference's perplexity, ΔPPL, KL-divergence(ref || model) of the next-token\n"
                    "distributions and top-1 agreement. Both models get the same token ids, window by window.",
        epilog="examples:\n  edgekit eval qwen-q4km.gguf --ref ./Qwen2.5-0.5B-Instruct --data wiki.test.txt\n"
               "  edgekit eval ./my-hf-model --data held-out/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", type=Path, help="model to score: HF directory or .gguf file")
    e.add_argument("--ref", type=Path, help="reference model (HF directory or .gguf) to compare with")
    e.add_argument("--data", type=Path, action="append", required=True, metavar="FILE|DIR",
                   help="UTF-8 text file, or a directory of *.txt / *.py files (repeatable)")
    e.add_argument("--tokenizer", type=Path, metavar="DIR",
                   help="HF tokenizer directory (default: the reference's, else the model's; a lone GGUF uses "
                        "llama.cpp's own)")
    e.add_argument("--ctx", type=int, default=512, help="tokens per window (default: 512)")
    e.add_argument("--stride", type=int, help="tokens between window starts (default: a whole window)")
    e.add_argument("--max-windows", type=int, metavar="N", help="score at most N windows")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    i = sub.add_parser("inspect", help="summarise a GGUF or .pte file: architecture, tensors/methods, types, size",
                       description="Show what is inside a GGUF file or an ExecuTorch .pte program.")
    i.add_argument("file", type=Path, help="a .gguf or .pte file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--tensors", action="store_true", help="list every tensor")
    i.set_defaults(func=_inspect)

    raw = argparse.RawDescriptionHelpFormatter
    ch = sub.add_parser(
        "chat", help="chat with a model in the terminal (streaming, multi-turn)", formatter_class=raw,
        description="Interactive chat with a .gguf (llama.cpp) or .pte (ExecuTorch) model, using its own chat "
                    "template.\nOne message per line; /reset, /stats, /help, /exit. Ctrl-C stops an answer, "
                    "Ctrl-D quits.\nOn a pipe, only the answers are written (one per line).",
        epilog="examples:\n  edgekit chat demo.gguf\n"
               "  edgekit chat smol.pte --system \"Be brief.\" --temp 0.7 --top-p 0.9 --seed 1\n"
               "  printf 'hi\\n/stats\\n' | edgekit chat demo.gguf --seed 1")
    _add_model_args(ch)
    ch.add_argument("--system", help="system prompt (kept when old turns are dropped to fit the context)")
    _add_sampling_args(ch, max_tokens=512)
    ch.set_defaults(func=_chat)

    gen = sub.add_parser(
        "generate", help="one-shot text continuation (prompt from the argument or stdin; only text on stdout)",
        description="Continue a prompt and write only the generated text to stdout.", formatter_class=raw,
        epilog="examples:\n  echo 'def fib(n):' | edgekit generate demo.gguf -n 64\n"
               "  edgekit generate smol.pte \"What is a GGUF file?\" --chat --temp 0")
    _add_model_args(gen)
    gen.add_argument("prompt", nargs="?", help="prompt text (default: read stdin)")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    gen.add_argument("--stop", action="append", metavar="TEXT",
                     help="end the text before this string (repeatable; e.g. --stop $'\\n\\n')")
    _add_sampling_args(gen, max_tokens=128)
    gen.set_defaults(func=_generate)

    from edgekit.bundle import TARGETS

    b = sub.add_parser(
        "bundle", help="package a model for an app: model, tokenizer, manifest.json, integration note",
        description="Write a directory an Android, iOS or Linux app can ship: the model file (and a .pte's "
                    "tokenizer), a versioned manifest.json (format, backend, context length, chat template, stop "
                    "tokens, default sampling, sha256 checksums) and a README with the integration steps.",
        epilog="examples:\n  edgekit bundle smol.pte --target android -o app-assets/\n"
               "  edgekit bundle demo.gguf --target linux -o demo-bundle/ && edgekit chat demo-bundle/",
        formatter_class=raw)
    b.add_argument("model", type=Path, help="a .gguf or .pte file (or a bundle to re-target)")
    b.add_argument("--target", required=True, choices=TARGETS, help="the platform the app runs on")
    b.add_argument("-o", "--output", type=Path, required=True, help="bundle directory (new, or empty)")
    _add_sampling_args(b, max_tokens=512)
    b.set_defaults(func=_bundle)

    sv = sub.add_parser(
        "serve", help="OpenAI-compatible /v1/chat/completions on localhost",
        description="Serve a model over HTTP with OpenAI's chat-completions API (streaming and not) and "
                    "/v1/models. One generation runs at a time.", formatter_class=raw,
        epilog="example:\n  edgekit serve demo.gguf --port 8080 &\n"
               "  curl -s localhost:8080/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\","
               "\"content\":\"hi\"}]}'")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this device only)")
    sv.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 picks a free one)")
    sv.add_argument("-q", "--quiet", action="store_true", help="no request log")
    _add_sampling_args(sv, max_tokens=512)
    sv.set_defaults(func=_serve)
    return p


def _quiet_third_party_logs() -> None:
    """torchao (imported by transformers when installed) warns at import about CUDA kernels and
    deprecated pytree registrations: nothing a user of this CPU tool can act on."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party_logs()
    try:
        return args.func(args)
    except EdgekitError as e:
        print(f"edgekit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
