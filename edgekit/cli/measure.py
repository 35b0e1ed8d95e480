"""`edgekit eval`: how much a conversion costs in accuracy (perplexity, KL-divergence, top-1 agreement)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgekit.cli.common import add_backend_arg
from edgekit.eval import EvalConfig, evaluate


def add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="perplexity on text; KL-divergence and top-1 agreement against a reference model",
        description="Score a model (HF directory, .gguf or .pte) on held-out text: its perplexity and, with --ref,\n"
                    "the reference's perplexity, ΔPPL, KL-divergence(ref || model) of the next-token\n"
                    "distributions and top-1 agreement. Both models get the same token ids, window by window.",
        epilog="examples:\n  edgekit eval qwen-q4km.gguf --ref ./Qwen2.5-0.5B-Instruct --data wiki.test.txt\n"
               "  edgekit eval ./my-hf-model --data held-out/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", type=Path, help="model to score: HF directory, .gguf or .pte file")
    e.add_argument("--ref", type=Path, help="reference model (HF directory, .gguf or .pte) to compare with")
    e.add_argument("--data", type=Path, action="append", required=True, metavar="FILE|DIR",
                   help="UTF-8 text file, or a directory of *.txt / *.py files (repeatable)")
    e.add_argument("--tokenizer", type=Path, metavar="DIR",
                   help="HF tokenizer directory (default: the reference's, else the model's; a lone GGUF uses "
                        "llama.cpp's own)")
    e.add_argument("--ctx", type=int, default=512, help="tokens per window (default: 512)")
    e.add_argument("--stride", type=int, help="tokens between window starts (default: a whole window)")
    e.add_argument("--max-windows", type=int, metavar="N", help="score at most N windows")
    add_backend_arg(e)
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    cfg = EvalConfig(data=args.data, ref=args.ref, ctx=args.ctx, stride=args.stride, max_windows=args.max_windows,
                     tokenizer=args.tokenizer, backend=args.backend or "llamacpp")
    result = evaluate(args.model, cfg, progress=not args.quiet)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.report())
    return 0
