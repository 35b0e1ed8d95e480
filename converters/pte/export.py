"""Export a Hugging Face checkpoint to an ExecuTorch program (.pte) for the XNNPACK CPU delegate.

The program has one `forward(input_ids[1, n], cache_position[n]) -> logits[1, 1, vocab]` method over a
static KV cache: n is dynamic (1 <= n <= max_prefill), so one program serves chunked prefill and
one-token decode, and only the last position's logits are computed. Constant methods carry the metadata
ExecuTorch's LLM runner reads (get_bos_id, get_eos_ids, get_max_seq_len = tokens per call,
get_max_context_len = cache length, ...). The tokenizer (tokenizer.json, tokenizer_config.json with the
chat template) and `<name>.manifest.json` are written next to the .pte. Every file goes to a temporary
name first and is renamed only on success.

Attention, two ways:
- custom_ops=True (default): the cache is written in place by ExecuTorch's `llama::update_cache` and read
  by `llama::custom_sdpa`, which only visits the filled positions and handles GQA itself. This is what
  ExecuTorch's own LLM export does; its runner links these kernels.
- custom_ops=False: transformers' `TorchExportableModuleWithStaticCache` (what
  `TorchExportableModuleForDecoderOnlyLM` uses) with plain sdpa: portable kernels only, but every decode
  step expands and attends over the whole cache (measured ~10x slower decode at a 2048 context).

Quantization uses torchao source transforms before torch.export, as ExecuTorch's own LLM flow does:
linear layers `8da4w` (int8 dynamic activations, int4 grouped weights), embeddings `4w`/`8w` (weight
only, lowered to quantized_decomposed::embedding_4bit/embedding_byte), or plain `fp32` / `bf16`
(XNNPACK in ExecuTorch 1.5 does not delegate bf16 matmuls: they run on portable kernels).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edgekit.converters import archs
from edgekit.converters.pte.qat import LinearPlan, QatConfig, QatReport, check_config, quantization_aware_finetune
from edgekit.errors import EdgekitError, require
from edgekit.io.checkpoint import open_checkpoint
from edgekit.io.hf import first_line, load_config, load_model, load_tokenizer
from edgekit.io.output import check_output_path, temp_path
from edgekit.progress import human_bytes, peak_rss_bytes
from edgekit.quiet import quiet_torch_logs

QUANTS = {
    "8da4w": "int8 dynamic activations x int4 grouped weights (XNNPACK), float32 elsewhere",
    "fp32": "float32 weights and activations",
    "bf16": "bfloat16 weights, activations and KV cache (matmuls on portable kernels: slow)",
}
EMBEDDING_QUANTS = {
    "4w": "int4 grouped weight-only embeddings (needs the quantized kernels at run time)",
    "8w": "int8 per-row weight-only embeddings (needs the quantized kernels at run time)",
}
GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_MAX_SEQ_LEN = 2048
DEFAULT_MAX_PREFILL = 256     # tokens per forward call: bounds the planned activation memory
MANIFEST_FORMAT = "edgekit-pte-manifest"
MANIFEST_VERSION = 1


@dataclass
class PteConfig:
    quant: str = "8da4w"              # a key of QUANTS
    group_size: int = 32              # int4 group (8da4w linears, 4w embeddings): one of GROUP_SIZES
    embedding_quant: str | None = None  # None (float embeddings) or a key of EMBEDDING_QUANTS
    max_seq_len: int | None = None    # KV-cache length; default min(2048, model context, sliding window)
    max_prefill: int | None = None    # most tokens per forward call; default min(256, max_seq_len)
    custom_ops: bool = True           # ExecuTorch's LLM ops for the KV cache and attention (see below)
    name: str | None = None           # model name in the manifest; default: the source's name
    qat: QatConfig | None = None      # quantization-aware fine-tune before converting (8da4w only)
    recipe: dict[str, Any] | None = None  # the recipe that made the model: stored in the manifest


@dataclass
class PteResult:
    output: Path
    manifest: Path
    tokenizer: Path
    file_bytes: int
    n_params: int
    quant: str
    embedding_quant: str | None
    max_seq_len: int
    max_prefill: int
    seconds: float
    peak_rss: int
    ops: dict[str, int] = field(default_factory=dict)           # "delegated" / "portable" instruction counts
    group_fallbacks: dict[str, int] = field(default_factory=dict)  # layer fqn -> smaller group size used
    qat: QatReport | None = None

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.file_bytes / self.n_params

    def summary(self) -> str:
        q = self.quant + (f" + {self.embedding_quant} embeddings" if self.embedding_quant else "")
        fb = f", {len(self.group_fallbacks)} layers with a smaller group" if self.group_fallbacks else ""
        return (f"wrote {self.output}: {human_bytes(self.file_bytes)}, {self.n_params / 1e6:.2f} M params, "
                f"{q}{fb}, context {self.max_seq_len} (prefill <= {self.max_prefill}/call), "
                f"{self.ops.get('delegated', 0)} XNNPACK calls + {self.ops.get('portable', 0)} portable ops, "
                f"{self.seconds:.1f} s, peak RSS {human_bytes(self.peak_rss)}; sidecars {self.tokenizer.name}, "
                f"{self.manifest.name}" + (f"\n{self.qat.summary()}" if self.qat else ""))


def manifest_path(pte: Path) -> Path:
    pte = Path(pte)
    return pte.with_name(pte.stem + ".manifest.json")


def export_pte(source: str | Path, output: str | Path, cfg: PteConfig | None = None, *,
               log: Callable[[str], None] | None = None, progress: bool = True) -> PteResult:
    """Export a HF checkpoint directory to output (a .pte, its sidecars next to it); raises EdgekitError with a
    one-line message on bad input or an unlowerable model. log gets the stage messages (the CLI prints them to
    stderr); progress: a bar for long steps (QAT)."""
    t0 = time.perf_counter()
    cfg = cfg or PteConfig()
    log = log or (lambda _msg: None)
    _check_options(cfg)
    require("executorch.exir")  # before any work: one line if the pte extra is missing
    require("torchao.quantization")
    out = Path(output)
    check_output_path(out, ".pte")
    src = Path(source)
    ckpt = open_checkpoint(src)
    where = str(src / "config.json")
    archs.get_arch(ckpt.architecture, where)  # the "unsupported architecture" error, before torch loads
    hp = archs.HParams.from_config(ckpt.config, where)
    archs.check_rope(hp, where)
    max_seq_len, max_prefill = _lengths(cfg, ckpt.config, hp, where)
    tok = _tokenizer_files(src, out)  # fails early if it would overwrite another model's tokenizer

    log(f"hashing {src} safetensors")
    shards = sorted({ref.file for ref in ckpt.tensors.values()}, key=lambda p: p.name)
    source_sha = _sha256_files(shards)

    emb = f", {cfg.embedding_quant} embeddings" if cfg.embedding_quant else ""
    log(f"loading {ckpt.architecture} ({cfg.quant}{emb})")
    model, n_params, fallbacks, qat_report = prepare_model(src, cfg.quant, cfg.group_size, cfg.embedding_quant,
                                                           max_seq_len, cfg.qat, log, progress)
    ids = _token_ids(src, model, tok)
    methods = {
        "get_bos_id": ids["bos_id"], "get_eos_ids": ids["eos_ids"],
        "get_max_seq_len": max_prefill, "get_max_context_len": max_seq_len,
        "get_vocab_size": hp.n_vocab, "get_n_layers": hp.n_layer,
        "use_kv_cache": True, "use_sdpa_with_kv_cache": False, "enable_dynamic_shape": True,
    }
    methods = {k: v for k, v in methods.items() if v is not None}  # a model without BOS has no get_bos_id

    with warnings.catch_warnings():
        # Expected and not actionable by the user: deprecations inside ExecuTorch's op registrations, the
        # note that mutable buffers (our KV caches) start uninitialised, and dynamo seeing the wrapper
        # set the cache position (a deliberate side effect).
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
        log(f"torch.export (static KV cache {max_seq_len}, prefill 1..{max_prefill} tokens)")
        program = _export(model, max_seq_len, max_prefill, cfg.custom_ops)
        log("lowering to XNNPACK")
        et_program, ops = _lower(program, methods, cfg.custom_ops)
    del model, program

    tmp_files: list[tuple[Path, Path]] = []
    try:
        pte_tmp = _tmp_name(out)
        tmp_files.append((pte_tmp, out))
        log(f"writing {out}")
        with open(pte_tmp, "wb") as f:
            et_program.write_to_file(f)
        del et_program
        manifest = _manifest(cfg, src, ckpt.architecture, hp, shards, source_sha, pte_tmp, out.name, ops, methods,
                             ids, tok, n_params, max_seq_len, max_prefill, fallbacks, qat_report)
        for name, data in tok.files.items():
            tmp = _tmp_name(out.with_name(name))
            tmp_files.append((tmp, out.with_name(name)))
            tmp.write_bytes(data)
        man = manifest_path(out)
        man_tmp = _tmp_name(man)
        tmp_files.append((man_tmp, man))
        man_tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        # The .pte goes last: a visible .pte always has its sidecars.
        for tmp, final in tmp_files[1:] + tmp_files[:1]:
            os.replace(tmp, final)
    except BaseException as e:
        for tmp, _ in tmp_files:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise EdgekitError(f"{out}: cannot write ({e.strerror or e}); no output was kept") from None
        raise
    return PteResult(output=out, manifest=man, tokenizer=out.with_name("tokenizer.json"),
                     file_bytes=out.stat().st_size, n_params=n_params, quant=cfg.quant,
                     embedding_quant=cfg.embedding_quant, max_seq_len=max_seq_len, max_prefill=max_prefill,
                     seconds=time.perf_counter() - t0, peak_rss=peak_rss_bytes(), ops=ops,
                     group_fallbacks=fallbacks, qat=qat_report)


def _manifest(cfg: PteConfig, src: Path, architecture: str, hp: archs.HParams, shards: list[Path], source_sha: str,
              pte: Path, pte_name: str, ops: dict[str, int], methods: dict[str, Any], ids: dict[str, Any],
              tok: _TokenizerFiles, n_params: int, max_seq_len: int, max_prefill: int,
              fallbacks: dict[str, int], qat: QatReport | None) -> dict[str, Any]:
    """What a runner needs besides the program, and where the program came from."""
    kernels = (["quantized"] if cfg.embedding_quant else []) + (["llm_custom_ops"] if cfg.custom_ops else [])
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "name": cfg.name or src.resolve().name,
        "program": {"file": pte_name, "sha256": _sha256_files([pte]), "bytes": pte.stat().st_size,
                    "method": "forward", "inputs": ["input_ids int64 [1, n]", "cache_position int64 [n]"],
                    "output": f"logits {'bfloat16' if cfg.quant == 'bf16' else 'float32'} [1, 1, vocab] "
                              "(last position)",
                    "backend": "XnnpackBackend", "ops": ops, "needs_kernels": kernels,
                    "constant_methods": methods},
        "source": {"path": str(src.resolve()), "architecture": architecture,
                   "safetensors": [p.name for p in shards], "safetensors_sha256": source_sha},
        "model": {"n_params": n_params, "n_layers": hp.n_layer, "hidden_size": hp.n_embd, "vocab_size": hp.n_vocab},
        "quantization": {"linear": cfg.quant, "group_size": cfg.group_size if cfg.quant == "8da4w" else None,
                         "embedding": cfg.embedding_quant, "embedding_group_size": _embedding_group(cfg),
                         "group_fallbacks": fallbacks, "qat": _qat_manifest(cfg.qat, qat)},
        "max_seq_len": max_seq_len, "max_prefill": max_prefill,
        "bos_id": ids["bos_id"], "eos_ids": ids["eos_ids"], "add_bos": ids["add_bos"],
        "chat_template": tok.chat_template,
        "tokenizer": {"file": "tokenizer.json", "config": "tokenizer_config.json", "sha256": tok.sha256},
        "recipe": cfg.recipe,
        "created_by": _versions(),
    }


class Prepared(NamedTuple):
    model: Any                        # the eager model, quantized in place
    n_params: int                     # float parameter count
    group_fallbacks: dict[str, int]   # layer fqn -> smaller group size used
    qat: QatReport | None             # perplexities before/after, when QAT ran


def _qat_manifest(cfg: QatConfig | None, report: QatReport | None) -> dict[str, Any] | None:
    if cfg is None or report is None:
        return None
    return {"data": [str(p) for p in cfg.data], "steps": cfg.steps, "lr": cfg.lr, "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size, "trained_tokens": report.trained_tokens,
            "heldout_tokens": report.heldout_tokens, "ppl_float": round(report.ppl_float, 4),
            "ppl_before": round(report.ppl_before, 4), "ppl_after": round(report.ppl_after, 4),
            "kl_before": round(report.kl_before, 6), "kl_after": round(report.kl_after, 6)}


def prepare_model(source: Path, quant: str, group_size: int = 32, embedding_quant: str | None = None,
                  max_seq_len: int | None = None, qat: QatConfig | None = None,
                  log: Callable[[str], None] | None = None, progress: bool = True) -> Prepared:
    """The eager transformers model exactly as it will be exported: loaded, configured for inference,
    quantized in place (after a quantization-aware fine-tune when `qat` is given).

    Tests compare the .pte against this model, so it is public."""
    quiet_torch_logs()
    require("torchao.quantization")
    import torch

    if qat is not None and quant != "8da4w":
        raise EdgekitError(f"QAT trains for the int4 weights of 8da4w; --quant {quant} has none")
    dtype = torch.bfloat16 if quant == "bf16" else torch.float32
    config = load_config(Path(source))
    if max_seq_len is not None and (getattr(config, "sliding_window", None) or 0) >= max_seq_len:
        # A window at least as long as the cache never masks anything: plain full attention is the
        # same math, and avoids transformers' hybrid-cache path.
        config.sliding_window = None
        if getattr(config, "layer_types", None):
            config.layer_types = ["full_attention"] * len(config.layer_types)
    model = load_model(Path(source), dtype=dtype, config=config, attention="sdpa")
    for p in model.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            # padding_idx only changes gradients, but an explicit padding_idx argument keeps ExecuTorch's
            # quant-fusion pattern from recognising the quantized embedding lookup.
            m.padding_idx = None
    fallbacks: dict[str, int] = {}
    report = None
    if quant == "8da4w":
        plan = _linear_plan(model, group_size, fallbacks)
        if qat is None:
            from torchao.quantization import quantize_

            for base, names in plan:
                quantize_(model, base, filter_fn=lambda m, fqn, names=names: isinstance(m, torch.nn.Linear)
                          and fqn in names)
        else:
            # Embeddings are quantized after the fine-tune (weight-only: plain rounding of the tuned table).
            report = quantization_aware_finetune(model, plan, Path(source), qat, log=log, progress=progress)
        _round_scales_to_bf16(model)
    if embedding_quant:
        _quantize_embeddings(model, embedding_quant, group_size, fallbacks)
    return Prepared(model, n_params, fallbacks, report)


def _quantize_embeddings(model: Any, scheme: str, group_size: int, fallbacks: dict[str, int]) -> None:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    for fqn, m in model.named_modules():
        if not isinstance(m, torch.nn.Embedding):
            continue
        if scheme == "8w":  # ExecuTorch's flow: int8 embeddings use one scale per row
            cfg = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
        else:
            g = _group_for(m.weight.shape[-1], group_size, fqn, fallbacks)
            cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g))
        quantize_(m, cfg, filter_fn=lambda mod, _fqn: isinstance(mod, torch.nn.Embedding))


def _linear_plan(model: Any, group_size: int, fallbacks: dict[str, int]) -> LinearPlan:
    """One torchao 8da4w config per group size: rows the requested group does not divide get the largest
    that does."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup

    by_group: dict[int, set[str]] = {}
    for fqn, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            by_group.setdefault(_group_for(m.in_features, group_size, fqn, fallbacks), set()).add(fqn)
    return [(Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(g)), names)
            for g, names in sorted(by_group.items())]


def _round_scales_to_bf16(model: Any) -> None:
    """XNNPACK stores int4 group scales as bfloat16. Rounding them here makes the eager model compute what
    the .pte computes (otherwise they differ by ~3% of the logit range), so it is a faithful reference."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and hasattr(m.weight, "scale"):
                m.weight.scale.copy_(m.weight.scale.to(torch.bfloat16).float())


def _group_for(row: int, group_size: int, fqn: str, fallbacks: dict[str, int]) -> int:
    for g in [group_size] + [g for g in (128, 64, 32, 16) if g < group_size]:
        if row % g == 0:
            if g != group_size:
                fallbacks[fqn] = g
            return g
    raise EdgekitError(f"{fqn}: row length {row} is not a multiple of 16; int4 groups cannot cover it "
                       "(use --quant fp32/bf16)")


def _export(model: Any, max_seq_len: int, max_prefill: int, custom_ops: bool) -> Any:
    import torch

    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    try:
        wrapper = _CustomOpsDecoder(model, max_seq_len) if custom_ops else _portable_decoder(model, max_seq_len)
        n = min(3, max_prefill)  # an example length other than 1, so export keeps the length symbolic
        seq = torch.export.Dim("seq_len", min=1, max=max_prefill)
        with torch.no_grad():
            # strict (dynamo) tracing: non-strict export of transformers' cache wrapper fails to decompose
            return torch.export.export(
                wrapper, args=(), kwargs={"input_ids": torch.zeros((1, n), dtype=torch.long),
                                          "cache_position": torch.arange(n)},
                dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
    except EdgekitError:
        raise
    except Exception as e:  # torch.export raises many error types; all mean "this model cannot be traced"
        raise EdgekitError(f"torch.export cannot trace the model: {_culprit(e)}") from None


def _portable_decoder(model: Any, max_seq_len: int) -> Any:
    """transformers' static-cache export wrapper (plain sdpa, index_put cache updates), returning only the
    last position's logits: the lm_head runs on one row and the planned output is [1, 1, vocab]."""
    import torch
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    class LastLogits(TorchExportableModuleWithStaticCache):
        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            for layer in self.static_cache.layers:  # the position this call writes from (as the parent does)
                layer.cumulative_length.copy_(cache_position[0])
            return self.model(input_ids=input_ids, attention_mask=None, past_key_values=self.static_cache,
                              use_cache=True, logits_to_keep=1).logits

    return LastLogits(model, batch_size=1, max_cache_len=max_seq_len)


_ET_ATTENTION = "edgekit_executorch_sdpa"


def _load_custom_ops() -> None:
    """ExecuTorch's LLM ops (llama::update_cache, llama::custom_sdpa): registers them with torch for export
    and their kernels with the ExecuTorch runtime of this process."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class _KVCache:
    """A static KV cache in ExecuTorch's layout [1, max_seq_len, kv_heads, head_dim], written in place by
    llama::update_cache. transformers calls `update` from every attention layer."""

    def __init__(self, keys: list[Any], values: list[Any]) -> None:
        self.keys, self.values = keys, values
        self.start_pos: Any = 0  # the first position written by the current call (a SymInt during export)

    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        k, v = self.keys[layer_idx], self.values[layer_idx]
        torch.ops.llama.update_cache(key.transpose(1, 2), k, self.start_pos)
        torch.ops.llama.update_cache(value.transpose(1, 2), v, self.start_pos)
        return k, v


def _et_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention of the new queries over cache positions [0, start_pos + n) only, GQA included: cost
    follows the filled length, not the cache size. Returns [1, n, heads, head_dim] as transformers expects."""
    import torch

    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2), key, value, module.edgekit_cache.start_pos,
                                      None, 0.0, True, scaling)
    return out, None


def _custom_ops_decoder_class() -> type:
    import torch
    from transformers import AttentionInterface

    _load_custom_ops()
    AttentionInterface.register(_ET_ATTENTION, _et_attention)

    class CustomOpsDecoder(torch.nn.Module):
        """forward(input_ids[1, n], cache_position[n]) -> last-position logits [1, 1, vocab], as ExecuTorch's
        LLM runner calls it; the caches are mutable buffers of the program."""

        def __init__(self, model: Any, max_seq_len: int) -> None:
            super().__init__()
            cfg = model.config.get_text_config()
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            shape = (1, max_seq_len, kv_heads, head_dim)
            keys, values = [], []
            for i in range(cfg.num_hidden_layers):
                self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=model.dtype), persistent=False)
                self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=model.dtype), persistent=False)
                keys.append(getattr(self, f"k_cache_{i}"))
                values.append(getattr(self, f"v_cache_{i}"))
            self.cache = _KVCache(keys, values)
            self.max_seq_len = max_seq_len
            self.model = model
            model.set_attn_implementation(_ET_ATTENTION)
            for m in model.modules():
                if hasattr(m, "layer_idx") and hasattr(m, "o_proj"):  # attention modules read the position here
                    m.__dict__["edgekit_cache"] = self.cache   # a plain attribute, not a submodule

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            start = cache_position[0].item()
            torch._check(start >= 0)
            torch._check(start + input_ids.shape[1] <= self.max_seq_len)
            self.cache.start_pos = start
            return self.model(input_ids=input_ids, position_ids=cache_position.unsqueeze(0), attention_mask=None,
                              past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits

    return CustomOpsDecoder


def _CustomOpsDecoder(model: Any, max_seq_len: int) -> Any:  # noqa: N802 - reads as the class it builds
    return _custom_ops_decoder_class()(model, max_seq_len)


def _lower(program: Any, methods: dict[str, Any], custom_ops: bool) -> tuple[Any, dict[str, int]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    # custom_sdpa never reads past the filled positions, but plain sdpa multiplies masked positions by
    # zero: its caches must hold zeros, not whatever the runtime's memory arena held (costs file size).
    passes = [] if custom_ops else [InitializedMutableBufferPass(["key_cache", "value_cache"])]

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=methods)
        et = edge.to_executorch(ExecutorchBackendConfig(
            passes=passes,
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,   # dequantize+embedding -> embedding_4bit/embedding_byte
            run_reinplace_pass=True,               # KV-cache index_put in place, not a full cache copy per token
        ))
    except Exception as e:  # any failure here is an op or pattern ExecuTorch cannot lower
        raise EdgekitError(f"ExecuTorch cannot lower the model: {_culprit(e)}") from None
    # Kernel calls as the runtime sees them; python-level nodes (getitem, memory.alloc, view) are not calls.
    ops = Counter("delegated" if str(n.target) == "executorch_call_delegate" else "portable"
                  for n in et.exported_program().graph.nodes
                  if n.op == "call_function" and not str(n.target).startswith("<"))
    return et, {"delegated": ops["delegated"], "portable": ops["portable"]}


def _culprit(e: BaseException) -> str:
    """One line naming what failed: the operator(s) if the message names any, then the message's first line."""
    msg = str(e)
    ops = sorted(set(re.findall(r"\b(?:aten|torchao|quantized_decomposed|llama|[a-z_]+)::[A-Za-z_][\w.]*", msg)))
    line = first_line(e)
    if ops and not all(op in line for op in ops):
        return f"unsupported operator {', '.join(ops[:5])} ({line})"
    return line


def _check_options(cfg: PteConfig) -> None:
    if cfg.quant not in QUANTS:
        raise EdgekitError(f"unknown --quant {cfg.quant!r} for .pte output (choose from {', '.join(QUANTS)})")
    if cfg.embedding_quant is not None and cfg.embedding_quant not in EMBEDDING_QUANTS:
        raise EdgekitError(f"unknown --embedding-quant {cfg.embedding_quant!r} "
                           f"(choose from {', '.join(EMBEDDING_QUANTS)})")
    if cfg.group_size not in GROUP_SIZES:
        raise EdgekitError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}")
    if cfg.embedding_quant and cfg.quant == "bf16":
        raise EdgekitError("--embedding-quant needs float32 activations (use --quant 8da4w or fp32)")
    if cfg.qat is not None:
        if cfg.quant != "8da4w":
            raise EdgekitError(f"QAT trains for the int4 weights of 8da4w; --quant {cfg.quant} has none")
        check_config(cfg.qat)
    for flag, v in (("--max-seq-len", cfg.max_seq_len), ("--max-prefill", cfg.max_prefill)):
        if v is not None and v < 2:
            raise EdgekitError(f"{flag} must be at least 2")


def _embedding_group(cfg: PteConfig) -> int | None:
    return {"4w": cfg.group_size, "8w": 0}.get(cfg.embedding_quant or "")  # 0 = one scale per row


def _lengths(cfg: PteConfig, config: dict[str, Any], hp: archs.HParams, where: str) -> tuple[int, int]:
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    limit = min(hp.n_ctx, int(window)) if window else hp.n_ctx
    if cfg.max_seq_len is None:
        max_seq_len = min(DEFAULT_MAX_SEQ_LEN, limit)
    elif cfg.max_seq_len > hp.n_ctx:
        raise EdgekitError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's context "
                           f"(max_position_embeddings={hp.n_ctx} in {where})")
    elif window and cfg.max_seq_len > int(window):
        raise EdgekitError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's sliding window ({window}); "
                           "sliding-window attention is not supported in .pte export yet")
    else:
        max_seq_len = cfg.max_seq_len
    return max_seq_len, min(cfg.max_prefill or DEFAULT_MAX_PREFILL, max_seq_len)


@dataclass
class _TokenizerFiles:
    files: dict[str, bytes]          # sidecar name -> content (empty when the output sits in the source dir)
    chat_template: str | None
    sha256: str


def _tokenizer_files(src: Path, out: Path) -> _TokenizerFiles:
    """tokenizer.json and tokenizer_config.json (chat template included) as they will sit next to the .pte."""
    tok_json = src / "tokenizer.json"
    if tok_json.is_file():
        data = tok_json.read_bytes()
    else:  # SentencePiece-only checkpoints: transformers converts tokenizer.model to the fast format
        data = load_tokenizer(src).backend_tokenizer.to_str().encode()
    cfg_path = src / "tokenizer_config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise EdgekitError(f"{cfg_path}: cannot read ({e})") from None
    template = config.get("chat_template")
    jinja = src / "chat_template.jinja"  # transformers 5 may save the template beside the config
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
        config["chat_template"] = template
    files = {"tokenizer.json": data,
             "tokenizer_config.json": (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()}
    sha = hashlib.sha256(data).hexdigest()
    if out.parent.resolve() == src.resolve():
        return _TokenizerFiles({}, template, sha)  # already there: never rewrite the source's files
    for name, content in files.items():
        existing = out.with_name(name)
        if existing.exists() and existing.read_bytes() != content:
            raise EdgekitError(f"{existing} belongs to another model; write the .pte to its own directory")
    return _TokenizerFiles(files, template, sha)


def _token_ids(src: Path, model: Any, tok: _TokenizerFiles) -> dict[str, Any]:
    """bos/eos ids from the generation config, the model config and the tokenizer, in that order."""
    t = load_tokenizer(src)
    eos: list[int] = []
    for v in (model.generation_config.eos_token_id, model.config.eos_token_id, t.eos_token_id):
        for i in v if isinstance(v, list) else [v]:
            if i is not None and int(i) not in eos:
                eos.append(int(i))
    bos = next((int(v) for v in (model.generation_config.bos_token_id, model.config.bos_token_id,
                                 t.bos_token_id) if v is not None), None)
    probe = t.encode("a", add_special_tokens=True)  # whether the tokenizer itself prepends BOS
    return {"bos_id": bos, "eos_ids": eos, "add_bos": bool(bos is not None and probe and probe[0] == bos)}


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgekit", "executorch", "torchao", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _tmp_name(path: Path) -> Path:
    return temp_path(path)
