"""Train the demo teacher from scratch (seeded, CPU): ``python -m edgekit.demo.train``.

A Llama-architecture model with a Llama-3-style byte-level BPE tokenizer, both trained only on
the training split of edgekit.demo.corpus. The result is written as an fp16 safetensors
checkpoint with its tokenizer and a training.json report (steps, tokens, seconds, losses,
held-out perplexity).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.demo import MODEL_DIR, corpus

# hidden and ffn are multiples of 256 so every K-quant applies without fallbacks.
CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
              tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
VOCAB = 4096
TOKENIZER_TEXT_BYTES = 4_000_000


def tokenize_files(tok, paths: list[Path]) -> np.ndarray:
    """One token stream: each file's tokens followed by eos (the model learns where files end)."""
    ids: list[int] = []
    for p in paths:
        ids += tok.encode(corpus.read(p), add_special_tokens=False) + [tok.eos_token_id]
    return np.asarray(ids, dtype=np.int64)


def heldout_perplexity(model, stream: np.ndarray, ctx: int, max_windows: int) -> float:
    """Mean next-token NLL over non-overlapping windows of ctx tokens, exponentiated."""
    import torch

    n = min(max_windows, (len(stream) - 1) // ctx)
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(n):
            x = torch.from_numpy(stream[i * ctx:(i + 1) * ctx + 1])[None]
            logits = model(x[:, :-1]).logits.float()
            nll += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
            count += ctx
    model.train()
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgekit.io.hf import load_tokenizer
    from edgekit.testing.tokenizers import build_tokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train_files, heldout_files = corpus.split()
    args.out.mkdir(parents=True, exist_ok=True)
    # Trained on plain token streams (files separated by eos), never after a BOS: the tokenizer adds none.
    build_tokenizer(args.out, "llama3", VOCAB, lines=corpus.lines(train_files, TOKENIZER_TEXT_BYTES), add_bos=False)
    tok = load_tokenizer(args.out)
    train = tokenize_files(tok, train_files)
    heldout = tokenize_files(tok, heldout_files)
    print(f"corpus: {len(train_files)} files / {len(train):,} tokens train, {len(heldout_files)} files / "
          f"{len(heldout):,} tokens held out ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         **CONFIG)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    rng = np.random.default_rng(args.seed)
    losses = []
    t_train = time.perf_counter()
    for step in range(args.steps):
        starts = rng.integers(0, len(train) - args.seq, size=args.batch)
        batch = torch.from_numpy(np.stack([train[s:s + args.seq] for s in starts]))
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss  # the model shifts labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            el = time.perf_counter() - t_train
            print(f"step {step:5d}/{args.steps}  loss {np.mean(losses[-50:]):.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{(step + 1) * args.batch * args.seq / el:,.0f} tok/s", file=sys.stderr)
    train_seconds = time.perf_counter() - t_train
    ppl = heldout_perplexity(model, heldout, ctx=args.seq, max_windows=256)
    model.to(torch.float16).save_pretrained(args.out)
    report = {
        "params": n_params, "vocab": len(tok), "config": CONFIG, "steps": args.steps, "batch": args.batch,
        "seq": args.seq, "lr": args.lr, "seed": args.seed, "threads": args.threads,
        "train_tokens_seen": args.steps * args.batch * args.seq, "train_seconds": round(train_seconds, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "heldout_ppl_fp32": round(ppl, 3), "heldout_windows": f"up to 256 x {args.seq} tokens",
        "train_files": len(train_files), "heldout_files": [p.relative_to(corpus.stdlib_dir()).as_posix()
                                                          for p in heldout_files],
        "python": sys.version.split()[0], "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"demo teacher: {n_params / 1e6:.2f} M params, {train_seconds:.0f} s training, held-out PPL {ppl:.2f} "
          f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
