"""What several command groups share: flags for models and sampling, torch threads, the stage log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log_to_stderr(quiet: bool) -> Callable[[str], None] | None:
    """Stage messages as "edgekit: ..." lines on stderr, or none with --quiet."""
    return None if quiet else (lambda msg: print(f"edgekit: {msg}", file=sys.stderr))


def torch_threads(n: int) -> None:
    """--threads for torch work (0: torch's default, all cores)."""
    if n > 0:
        import torch

        torch.set_num_threads(n)


def sampling(args: argparse.Namespace) -> Any:
    """SamplingParams from the sampling flags (invalid settings fail here, before a model loads)."""
    from edgekit.runtime import SamplingParams

    return SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed,
                          max_tokens=args.max_tokens, ignore_eos=args.ignore_eos)


def load_for_run(args: argparse.Namespace) -> Any:
    """The model of a run command, with its --ctx, --threads and --cache-type."""
    from edgekit.runtime import load

    opts = {"threads": args.threads} if args.threads else {}
    if args.cache_type == "f32":
        opts["kv_f32"] = True
    return load(args.model, n_ctx=args.ctx, backend=args.backend, **opts)


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a .gguf (llama.cpp), a .pte (ExecuTorch) or a bundle directory")
    p.add_argument("--ctx", type=int, help="context length in tokens (default: the model's, at most 4096 for "
                                           "GGUF; a .pte's KV cache is fixed at export)")
    add_backend_arg(p)
    p.add_argument("--threads", type=int, default=0, help="GGUF: threads (default: the cores, at most 8)")
    p.add_argument("--cache-type", choices=["f16", "f32"], default="f16",
                   help="GGUF: KV-cache type (default: f16, as llama.cpp; f32 for results equal to transformers')")


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["llamacpp", "native"],
                   help="who runs a .gguf: llamacpp (llama.cpp, the default) or native (edgekit's own C runtime)")
