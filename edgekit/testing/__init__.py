"""Scaffolding for edgekit's tests and benchmarks, not for users' code paths: tiny random models of every
supported architecture with trained tokenizers (`models`, `tokenizers`), numpy twins of ggml's quantizers
(`quants_ref`), a GGUF's weights loaded back into transformers (`gguf_weights`) and ggml's own matmul
(`ggml`), each a reference that edgekit's real code is checked against."""
