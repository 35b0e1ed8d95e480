"""One module per engine that runs a model file: llama.cpp for .gguf, ExecuTorch for .pte. Each defines a
`runtime.base.Model`; `edgekit.runtime.load` picks the backend."""
