"""ExecuTorch .pte programs for the XNNPACK delegate: `export` (torchao quantization, torch.export, lowering,
sidecars and manifest) and `qat` (quantization-aware fine-tuning before the int4 export)."""
