"""Making files that runtimes load (imported as ``edgekit.converters``): `convert` picks the format.

    archs.py     the one architecture table (HF names -> GGUF names, layout facts every step uses)
    compress/    prune, sparsify, distill (and the training and torchrun helpers they share)
    gguf/        GGUF for llama.cpp: quantization mix, tensor quantizer, tokenizer, imatrix, writer
    pte/         ExecuTorch .pte: export, quantization-aware fine-tuning
    recipe.py    a whole plan (compress steps, then export) as one versioned file
    convert.py   the verb over them all
"""
