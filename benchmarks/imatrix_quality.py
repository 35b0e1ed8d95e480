"""Does an importance matrix lower quantization error on a *trained* model?

Trains a small Llama-architecture model on the Python standard library's own top-level .py files
(sorted list, seeded; a fixed set of files held out), converts it to q4_k and q4_k_m with and
without `--imatrix`, and measures
  (a) the importance-weighted RMSE of the dequantized weights against the F32 originals, and
  (b) held-out perplexity computed by llama.cpp (llama-cpp-python, F32 KV cache).
Also checks that our imatrix-weighted files are byte-identical to llama.cpp's own quantization
of the same F32 file with the same imatrix.

    .venv/bin/python benchmarks/imatrix_quality.py --work-dir /tmp/edgekit-imatrix-bench

The trained model is cached in --work-dir (reruns skip training). Writes
benchmarks/results/imatrix_quality.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np

from edgekit.converters.gguf import imatrix
from edgekit.runtime.backends.llamacpp import quantize as llama_quantize
from edgekit.testing.tokenizers import build_tokenizer, training_files

# Never trained on and never used for calibration. They sort after io.py, where the tokenizer's
# 2 MB training excerpt of the same sorted list ends, so the tokenizer has not seen them either.
HELD_OUT = ("statistics.py", "textwrap.py", "tokenize.py", "typing.py")
CALIB_EVERY = 8               # calibration text: every 8th training file (sorted), ...
CALIB_CHARS = 200_000         # ... up to this many characters
SEQ = 256                     # training and evaluation window (tokens, BOS included)
MODEL = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
TRAIN = dict(steps=400, batch=16, lr=2e-3, warmup=40, weight_decay=0.1, seed=0)
VARIANTS = [("F32", "f32", False), ("q4_k", "q4_k", False), ("q4_k + imatrix", "q4_k", True),
            ("q4_k_m", "q4_k_m", False), ("q4_k_m + imatrix", "q4_k_m", True)]
ROOT = Path(__file__).resolve().parent.parent


def corpus() -> tuple[list[Path], list[Path]]:
    files = training_files()
    held = [f for f in files if f.name in HELD_OUT]
    assert len(held) == len(HELD_OUT), "a held-out file is missing from this Python's stdlib"
    return [f for f in files if f.name not in HELD_OUT], held


def read(files: list[Path]) -> str:
    return "".join(f.read_text(encoding="utf-8", errors="replace") + "\n" for f in files)


def train(model_dir: Path, train_files: list[Path], steps: int, threads: int, log) -> dict:
    """Train (or reuse) the model; returns what was recorded about training."""
    meta_path = model_dir / "train.json"
    want = {**MODEL, **TRAIN, "steps": steps, "seq": SEQ, "files": [f.name for f in train_files]}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == want and (model_dir / "model.safetensors").exists():
            log(f"reusing trained model in {model_dir}")
            return {**meta, "cached": True}

    import torch
    import transformers
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    build_tokenizer(model_dir, "llama3", vocab_size=2048)
    tok = AutoTokenizer.from_pretrained(model_dir)
    stream = np.concatenate([np.asarray(tok(f.read_text(encoding="utf-8", errors="replace") + "\n",
                                            add_special_tokens=False)["input_ids"]) for f in train_files])
    cfg = transformers.LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   **MODEL)
    torch.manual_seed(TRAIN["seed"])
    model = transformers.LlamaForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], betas=(0.9, 0.95),
                            weight_decay=TRAIN["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / TRAIN["warmup"]) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    rng = np.random.default_rng(TRAIN["seed"])
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        starts = rng.integers(0, len(stream) - SEQ, TRAIN["batch"])
        x = torch.tensor(np.stack([np.concatenate([[tok.bos_token_id], stream[s:s + SEQ - 1]]) for s in starts]))
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    model.save_pretrained(model_dir)
    meta = {"settings": want, "seconds": seconds, "threads": threads, "train_tokens": int(len(stream)),
            "final_loss": float(np.mean(losses[-20:])), "params": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {**meta, "cached": False}


def run(cmd: list[str], log) -> None:
    log("$ " + shlex.join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"command failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr}")


def f32_tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors}


def weight_errors(f32: dict[str, np.ndarray], path: Path,
                  weights: list[dict[str, np.ndarray]]) -> dict[str, list[float]]:
    """Per tensor and weighting w: sqrt(sum_ij w_j (q_ij - x_ij)^2 / (rows * sum_j w_j)).

    Only tensors that have an imatrix entry (the matmul weights) count; w = ones gives plain RMSE.
    """
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name not in weights[0] or t.name not in f32:
            continue
        orig = f32[t.name]
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(orig.shape)
        err2 = (deq.astype(np.float64) - orig) ** 2
        out[t.name] = [math.sqrt(float((err2 @ w[t.name].astype(np.float64)).sum())
                                 / (orig.shape[0] * float(w[t.name].astype(np.float64).sum()))) for w in weights]
    return out


def kind(name: str) -> str:
    """Tensors grouped by the activation they multiply (q, k and v share one input; so do gate and up)."""
    short = name.split(".")[-2]
    return {"attn_q": "attn_q/k/v", "attn_k": "attn_q/k/v", "attn_v": "attn_q/k/v",
            "ffn_gate": "ffn_gate/up", "ffn_up": "ffn_gate/up"}.get(short, short)


def perplexity(path: Path, windows: list[list[int]], threads: int) -> tuple[float, np.ndarray]:
    """Perplexity over all windows, and each window's mean negative log-likelihood (for paired comparisons)."""
    from edgekit.runtime.backends.llamacpp import LlamaCppModel

    per_window = []
    with LlamaCppModel(path, n_ctx=SEQ, n_batch=SEQ, kv_f32=True, flash_attn=False, threads=threads) as llm:
        for w in windows:
            logits = llm.logits_all(w)[: len(w) - 1].astype(np.float64)
            m = logits.max(1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(logits - m).sum(1)))
            per_window.append(float((lse - logits[np.arange(len(w) - 1), w[1:]]).mean()))
    nll = np.array(per_window)
    return math.exp(nll.mean()), nll  # windows are equally long: the mean of means is the token mean


def same_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    ta = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(b).tensors}
    diff = sorted(n for n in ta if ta[n] != tb.get(n))
    return len(ta) - len(diff), len(ta), diff


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/edgekit-imatrix-bench"))
    p.add_argument("--steps", type=int, default=TRAIN["steps"], help="training steps (16 x 256 tokens each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-windows", type=int, default=128, help="held-out windows of 256 tokens")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imatrix_quality.md")
    args = p.parse_args()
    t_start = time.perf_counter()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    train_files, held_files = corpus()
    meta = train(model_dir, train_files, args.steps, args.threads, log)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    calib_text = read(train_files[::CALIB_EVERY])[:CALIB_CHARS]
    (work / "calib.txt").write_text(calib_text, encoding="utf-8")
    held_text = read(held_files)

    log("collecting the imatrix (calibration text) and, for evaluation weights only, a held-out one")
    im_path = work / "imatrix.gguf"
    calib_stats = imatrix.collect(model_dir, calib_text, ctx=512, max_chunks=64, progress=False)
    imatrix.save(im_path, calib_stats, dataset="calib.txt", ctx=512)
    held_imp = imatrix.importance(imatrix.collect(model_dir, held_text, ctx=512, max_chunks=64, progress=False))
    calib_imp = imatrix.load(im_path).importance()
    ones = {n: np.ones_like(v) for n, v in calib_imp.items()}

    files, commands = {}, []
    for label, quant, with_im in VARIANTS:
        out = work / f"{quant}{'-imatrix' if with_im else ''}.gguf"
        cmd = [sys.executable, "-m", "edgekit", "convert", str(model_dir), "-o", str(out), "--quant", quant, "-q"]
        if with_im:
            cmd += ["--imatrix", str(im_path)]
        run(cmd, log)
        commands.append(shlex.join(["edgekit", *cmd[3:]]).replace(str(work), "$WORK"))
        files[label] = out

    log("llama.cpp's own imatrix quantization of the F32 file, for comparison")
    ident = {
        "q4_k + imatrix": same_tensors(files["q4_k + imatrix"], llama_quantize(
            files["F32"], work / "llamacpp-q4_k-imatrix.gguf", "q4_k", importance=calib_imp)),
        "q4_k_m + imatrix": same_tensors(files["q4_k_m + imatrix"], llama_quantize(
            files["F32"], work / "llamacpp-q4_k_m-imatrix.gguf", "q4_k_m", importance=calib_imp)),
    }

    log("weight errors and perplexities")
    f32 = f32_tensors(files["F32"])
    ids = tok(held_text, add_special_tokens=False)["input_ids"]
    windows = [[tok.bos_token_id, *ids[i:i + SEQ - 1]] for i in range(0, len(ids) - SEQ + 1, SEQ - 1)]
    windows = windows[: args.eval_windows]
    rows = []
    per_tensor, nlls = {}, {}
    for label, _, _ in VARIANTS:
        per_tensor[label] = weight_errors(f32, files[label], [calib_imp, held_imp, ones])
        errs = [sum(v[k] for v in per_tensor[label].values()) for k in range(3)]
        ppl, nlls[label] = perplexity(files[label], windows, args.threads)
        rows.append((label, files[label].stat().st_size, errs, ppl))
        log(f"{label:18s} wRMSE {errs[0]:.5f}  held-out-wRMSE {errs[1]:.5f}  RMSE {errs[2]:.5f}  ppl {ppl:.4f}")
    total = time.perf_counter() - t_start

    base = rows[0][3]
    out = [
        "# Importance matrix (imatrix) on a trained model",
        "",
        "Generated by `benchmarks/imatrix_quality.py`:",
        "",
        "```",
        f".venv/bin/python benchmarks/imatrix_quality.py --work-dir {args.work_dir} --steps {args.steps} "
        f"--threads {args.threads} --eval-windows {args.eval_windows}",
        "```",
        "",
        f"- Machine: {platform.machine()}, {args.threads} threads; Python {platform.python_version()}, "
        f"torch {meta['torch']}; total script time this run {total:.0f} s (training "
        f"{'cached from an earlier run' if meta['cached'] else 'included'}).",
        f"- Model: Llama architecture, {MODEL['num_hidden_layers']} layers, hidden {MODEL['hidden_size']}, "
        f"ffn {MODEL['intermediate_size']}, {MODEL['num_attention_heads']} heads ({MODEL['num_key_value_heads']} KV), "
        f"untied output, vocab {len(tok)} (llama3-style BPE trained by `build_tokenizer`), "
        f"{meta['params'] / 1e6:.2f} M parameters, F32 GGUF {rows[0][1] / 2**20:.1f} MiB.",
        f"- Training: {len(train_files)} top-level `.py` files of the standard library (sorted, "
        f"{meta['train_tokens'] / 1e6:.2f} M tokens), {meta['settings']['steps']} steps x {TRAIN['batch']} x {SEQ} "
        f"tokens ({meta['settings']['steps'] * TRAIN['batch'] * SEQ / meta['train_tokens']:.2f} epochs), AdamW "
        f"lr {TRAIN['lr']} (warmup {TRAIN['warmup']}, cosine), seed {TRAIN['seed']}: "
        f"{meta['seconds']:.0f} s on {meta['threads']} CPU threads; final training loss {meta['final_loss']:.3f}.",
        f"- Held out (never trained on, not in the calibration text, not in the tokenizer's training excerpt): "
        f"{', '.join(HELD_OUT)}.",
        f"- Calibration: every {CALIB_EVERY}th training file, first {CALIB_CHARS:,} characters; imatrix over "
        f"{max(n for _, n in calib_stats.values())} tokens (chunks of 512, BOS first), saved as a llama.cpp GGUF "
        "imatrix and passed to `convert --imatrix`.",
        f"- Perplexity: llama.cpp via llama-cpp-python, F32 KV cache (`type_k=0, type_v=0`), {len(windows)} "
        f"non-overlapping held-out windows of {SEQ} tokens (BOS + {SEQ - 1}), all {SEQ - 1} predictions "
        f"of each window scored ({len(windows) * (SEQ - 1)} tokens).",
        "",
        "| variant | size (MiB) | wRMSE, calib imatrix | wRMSE, held-out imatrix | plain RMSE | held-out PPL | "
        "PPL vs F32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, size, errs, ppl in rows:
        e = ["-"] * 3 if label == "F32" else [f"{x:.5f}" for x in errs]
        delta = "-" if label == "F32" else f"{100 * (ppl / base - 1):+.2f} %"
        out.append(f"| {label} | {size / 2**20:.2f} | {e[0]} | {e[1]} | {e[2]} | {ppl:.4f} | {delta} |")

    by = {label: (errs, ppl) for label, _, errs, ppl in rows}
    out += ["", "Effect of the imatrix (relative change, with vs without):", ""]
    for q in ("q4_k", "q4_k_m"):
        (e0, p0), (e1, p1) = by[q], by[f"{q} + imatrix"]
        gap0, gap1 = p0 - base, p1 - base
        out.append(f"- {q}: weighted RMSE (calib weights) {100 * (e1[0] / e0[0] - 1):+.1f} %, (held-out weights) "
                   f"{100 * (e1[1] / e0[1] - 1):+.1f} %, plain RMSE {100 * (e1[2] / e0[2] - 1):+.1f} %; "
                   f"perplexity {p0:.4f} -> {p1:.4f}, the gap to F32 {gap0:+.4f} -> {gap1:+.4f}"
                   + (f" ({100 * (gap1 / gap0 - 1):+.0f} %)." if gap0 > 0 else "."))
    out += ["", "Is the perplexity change more than noise? Paired over the same windows: mean change of the "
            "per-window log-perplexity with the imatrix, +- 2 standard errors across windows:", ""]
    for q in ("q4_k", "q4_k_m"):
        d = nlls[f"{q} + imatrix"] - nlls[q]
        se = d.std(ddof=1) / math.sqrt(len(d))
        out.append(f"- {q}: {d.mean():+.5f} +- {2 * se:.5f} (F32 vs {q}: "
                   f"{(nlls[q] - nlls['F32']).mean():+.5f}; imatrix better in {int((d < 0).sum())}/{len(d)} windows): "
                   + ("within noise." if abs(d.mean()) < 2 * se else
                      "imatrix better beyond noise." if d.mean() < 0 else "imatrix worse beyond noise."))

    out += ["", "Where the imatrix has something to work with. Spread of the importance over a tensor's columns "
            "(max/mean and coefficient of variation, median over layers) and the change of the weighted RMSE "
            "(calibration weights) with the imatrix, per tensor group:", "",
            "| tensors | importance max/mean | importance CV | q4_k wRMSE change | q4_k_m wRMSE change |",
            "|---|---:|---:|---:|---:|"]
    for k in sorted({kind(n) for n in calib_imp}):
        names = [n for n in calib_imp if kind(n) == k]
        spread = np.median([calib_imp[n].max() / calib_imp[n].mean() for n in names])
        cv = np.median([calib_imp[n].std() / calib_imp[n].mean() for n in names])
        change = []
        for q in ("q4_k", "q4_k_m"):
            e0 = sum(per_tensor[q][n][0] for n in names)
            e1 = sum(per_tensor[f"{q} + imatrix"][n][0] for n in names)
            change.append(f"{100 * (e1 / e0 - 1):+.1f} %")
        out.append(f"| {k} ({len(names)}) | {spread:.1f} | {cv:.2f} | {change[0]} | {change[1]} |")

    out += ["", "Byte identity with llama.cpp (`llama_model_quantize` of the F32 file with the same imatrix; "
            "q4_k compared with its `pure` Q4_K):", ""]
    for label, (same, n, diff) in ident.items():
        out.append(f"- {label}: {same}/{n} tensors identical" + (f"; differ: {', '.join(diff)}" if diff else "."))
    out += [
        "",
        "Metrics. For each matmul weight W (rows x cols) with imatrix entry w (per-column mean of x^2), "
        "wRMSE = sqrt(sum_ij w_j (Q_ij - W_ij)^2 / (rows * sum_j w_j)), Q the dequantized weight; the columns "
        "sum it over tensors. \"calib imatrix\" weights with the imatrix that steered the quantizer; \"held-out "
        "imatrix\" with one collected the same way on the held-out files (a check that the gain is not only "
        "on the statistics that were optimised). Plain RMSE is the unweighted sum. `token_embd.weight` has no "
        "imatrix entry (a row lookup, not a matmul) and is left out of all three.",
        "",
        "Conversions run:",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out))
    print("\n".join(out))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
