"""`edgekit convert` (HF checkpoint -> .gguf or .pte, optionally pruned/sparsified/distilled first) and
`edgekit imatrix` (activation statistics for the GGUF quantizers)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.cli.common import log_to_stderr, torch_threads
from edgekit.converters import recipe as rc
from edgekit.converters.compress import distributed as dist
from edgekit.converters.convert import convert
from edgekit.converters.gguf import imatrix
from edgekit.converters.gguf.mix import SCHEMES
from edgekit.converters.gguf.writer import GGUFConfig
from edgekit.converters.pte.export import EMBEDDING_QUANTS, GROUP_SIZES, QUANTS, PteConfig
from edgekit.converters.pte.qat import QatConfig
from edgekit.demo import corpus, model_dir
from edgekit.errors import EdgekitError
from edgekit.eval import compression_report


def add_parsers(sub: Any) -> None:
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
               "  edgekit convert ./my-llama -o m.gguf --quant q4_k_m --method awq+gptq --calib calib/\n"
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
    c.add_argument("--method", choices=["rtn", "awq", "gptq", "awq+gptq"], default="rtn",
                   help=".gguf rounding: rtn (default, llama.cpp's own), or calibrated on --calib text, layer by "
                        "layer: awq (activation-aware scales folded into the norms), gptq (error feedback), "
                        "awq+gptq")
    c.add_argument("--calib", type=Path, metavar="FILE|DIR",
                   help="calibration text for --method (.txt/.py files; keep it apart from evaluation text)")
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


def _convert(args: argparse.Namespace) -> int:
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
        args.source, args.name = model_dir(), args.name or "edgekit-demo"
    if args.output.suffix == ".pte":
        if args.method != "rtn" or args.calib:
            raise EdgekitError("--method/--calib: only for .gguf output (the .pte methods are not written yet)")
        config: Any = _pte_config(args)
        torch_threads(args.threads)  # (for GGUF output, --threads are the quantizer's: GGUFConfig.threads)
    else:
        config = _gguf_config(args)
    result = convert(args.source, args.output, config, progress=not args.quiet, log=log_to_stderr(args.quiet))
    print(result.summary())
    _maybe_report(args, result)
    return 0


def _gguf_config(args: argparse.Namespace) -> GGUFConfig | None:
    if args.output.suffix != ".gguf":
        return None  # convert() names the problem
    pte_only = [f for f, v in (("--group-size", args.group_size), ("--embedding-quant", args.embedding_quant),
                               ("--max-seq-len", args.max_seq_len), ("--qat", args.qat or None),
                               ("--qat-data", args.qat_data), ("--qat-steps", args.qat_steps),
                               ("--qat-lr", args.qat_lr)) if v is not None]
    if pte_only:
        raise EdgekitError(f"{', '.join(pte_only)}: only for .pte output")
    quant = args.quant or GGUFConfig.quant
    if quant not in SCHEMES:
        raise EdgekitError(f"--quant {quant} is for .pte output; GGUF schemes: {', '.join(SCHEMES)}")
    return GGUFConfig(quant=quant, imatrix=args.imatrix, threads=args.threads, name=args.name, method=args.method,
                      calib=args.calib)


def _convert_recipe(args: argparse.Namespace) -> int:
    """prune / sparsify / distill, then quantize: from --recipe, or from the flags (the same Recipe)."""
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
    torch_threads(args.threads)
    result = convert(recipe.source, recipe.output, recipe, resume=args.resume, log=log_to_stderr(args.quiet),
                     progress=not args.quiet)
    if not dist.is_main():
        return 0
    if result.student_dir is not None and result.student_dir != result.output:
        print(f"HF student: {result.student_dir}")
    if result.export is not None and result.eval_data:
        print("against the teacher: " + compression_report(result.teacher, result.export, result.eval_data,
                                                           max_windows=_report_windows(args, result.output),
                                                           progress=not args.quiet))
    return 0


def _recipe_from_flags(args: argparse.Namespace) -> rc.Recipe:
    if (args.source is None) == (not args.demo):
        raise EdgekitError("give a model to convert, or --demo for the built-in demo model (not both)")
    if args.output is None:
        raise EdgekitError("give the output: -o FILE.gguf, -o FILE.pte or -o DIR (the HF student only)")
    if args.qat:
        raise EdgekitError("--qat: not with --prune/--distill yet; distill to a directory, then convert it with --qat")
    steps: list[tuple[str, dict]] = []
    if args.prune:
        steps.append(("prune", rc.parse_options(args.prune, "--prune")))
    if args.sparsify:
        steps.append(("sparsify", rc.parse_options(args.sparsify, "--sparsify")))
    if args.distill is not None:
        opts = rc.parse_options(args.distill, "--distill")
        if args.steps:
            opts["steps"] = args.steps
        if args.student:
            opts["student"] = (rc.parse_options(args.student, "--student") if "=" in args.student
                               else str(Path(args.student)))
        steps.append(("distill", opts))
    elif args.steps or args.student:
        raise EdgekitError("--steps, --student: only with --distill")
    if args.output.suffix in (".gguf", ".pte"):
        export = {k: v for k, v in (("quant", args.quant), ("imatrix", args.imatrix and str(args.imatrix)),
                                    ("group_size", args.group_size), ("embedding_quant", args.embedding_quant),
                                    ("max_seq_len", args.max_seq_len), ("name", args.name)) if v is not None}
        steps.append(("export", export))
    return rc.Recipe(source="demo" if args.demo else str(args.source), output=str(args.output), steps=steps,
                     data=[str(p) for p in args.data or []], eval_data=[str(p) for p in args.eval_data or []])


def _report_windows(args: argparse.Namespace, output: Path) -> int:
    # A .pte is scored one token per call (its program returns only the last position): fewer windows.
    return args.eval_windows or (200 if output.suffix == ".gguf" else 24)


def _maybe_report(args: argparse.Namespace, result: Any) -> None:
    """The compression report, on --eval-data or, for the demo, on its documented held-out files."""
    eval_data = args.eval_data
    if args.demo and not eval_data:
        eval_data = corpus.split()[1]
    if eval_data:
        print(compression_report(args.source, result, eval_data, max_windows=_report_windows(args, args.output),
                                 progress=not args.quiet))


def _pte_config(args: argparse.Namespace) -> PteConfig:
    quant = args.quant or PteConfig.quant
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
        data = args.qat_data
        if not data and args.demo:
            data = corpus.split()[0]  # the demo's training files (never its held-out ones)
        if not data:
            raise EdgekitError("--qat needs calibration text: --qat-data FILE|DIR")
        defaults = QatConfig(data=[])
        qat = QatConfig(data=list(data), steps=args.qat_steps or defaults.steps, lr=args.qat_lr or defaults.lr)
    return PteConfig(quant=quant, group_size=args.group_size or PteConfig.group_size,
                     embedding_quant=args.embedding_quant, max_seq_len=args.max_seq_len, name=args.name, qat=qat)


def _imatrix(args: argparse.Namespace) -> int:
    stats = imatrix.collect_file(args.model, args.data, ctx=args.ctx, max_chunks=args.chunks,
                                 threads=args.threads, progress=not args.quiet)
    imatrix.save(args.output, stats, dataset=args.data.name, ctx=args.ctx)
    print(imatrix.summary(args.output, stats, args.ctx))
    return 0
