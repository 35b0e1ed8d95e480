"""Small synthetic artefacts (tokenizers, models) built offline for tests and demos."""
