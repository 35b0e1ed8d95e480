"""Reading and writing files: Hugging Face checkpoints (`checkpoint` lazily, `hf` through transformers),
GGUF headers (`gguf_reader`), text for calibration and evaluation (`text`), and outputs that appear whole
or not at all (`output`)."""
