"""GGUF files for llama.cpp: `mix` chooses a type per tensor (llama.cpp's rules), `quantize` turns a tensor
into those bytes (libedgekit for the K-quants and Q8_0), `tokenizer` writes the vocabulary, `imatrix`
collects and reads importance matrices, and `writer` streams a checkpoint into a .gguf."""
