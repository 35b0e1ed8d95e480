"""Model converters: quantizers and the GGUF writer (imported as ``edgekit.converters``)."""
