"""Making a model smaller before it is quantized, each step HF directory in, HF directory out: `prune`
(structured: FFN channels, heads, layers), `sparsify` (unstructured and N:M), `distill` (a student trained on
a teacher). `training` and `distributed` hold what the training steps share; `model_dir` the source checks,
saving and records."""
