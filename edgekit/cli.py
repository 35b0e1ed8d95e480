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
                               ("--max-seq-len", args.max_seq_len)) if v is not None]
    if pte_only:
        raise EdgekitError(f"{', '.join(pte_only)}: only for .pte output")
    quant = args.quant or "q4_k_m"
    if quant not in SCHEMES:
        raise EdgekitError(f"--quant {quant} is for .pte output; GGUF schemes: {', '.join(SCHEMES)}")
    result = convert(ConvertConfig(source=args.source, output=args.output, quant=quant,
                                   imatrix=args.imatrix, threads=args.threads, progress=not args.quiet,
                                   name=args.name))
    print(result.summary())
    eval_data = args.eval_data
    if args.demo and not eval_data:
        from edgekit.demo import corpus

        eval_data = corpus.split()[1]  # the demo's documented held-out files
    if eval_data:
        print(_compression_report(args.source, result, eval_data, args.eval_windows, quiet=args.quiet))
    return 0


def _convert_pte(args: argparse.Namespace) -> int:
    from edgekit.converters.executorch_export import QUANTS, PteConfig, export_pte

    quant = args.quant or "8da4w"
    if quant not in QUANTS:
        raise EdgekitError(f"--quant {quant} is for .gguf output; .pte schemes: {', '.join(QUANTS)}")
    for flag, value in (("--imatrix", args.imatrix), ("--eval-data", args.eval_data)):
        if value:
            raise EdgekitError(f"{flag}: only for .gguf output so far")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    result = export_pte(PteConfig(
        source=args.source, output=args.output, quant=quant, group_size=args.group_size or 32,
        embedding_quant=args.embedding_quant, max_seq_len=args.max_seq_len, name=args.name,
        log=None if args.quiet else lambda msg: print(f"edgekit: {msg}", file=sys.stderr)))
    print(result.summary())
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
               "  edgekit convert ./my-llama -o my-llama.pte --quant 8da4w --embedding-quant 4w --max-seq-len 2048")
    c.add_argument("source", type=Path, nargs="?",
                   help="HF model directory (config.json, *.safetensors, tokenizer) or .gguf")
    c.add_argument("--demo", action="store_true",
                   help="convert the built-in demo model (a small Llama trained on Python's standard library)")
    c.add_argument("-o", "--output", type=Path, required=True, help="output file: .gguf or .pte")
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
    c.add_argument("--eval-windows", type=int, default=200, metavar="N",
                   help="at most N windows of 256 tokens for that report (default: 200)")
    c.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
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
